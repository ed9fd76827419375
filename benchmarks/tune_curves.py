"""Tuning curves of several `lqo tune` runs: workload time under the book vs minutes.

Usage: python benchmarks/tune_curves.py LABEL=DIR [LABEL=DIR ...] [--png OUT] [--json OUT]

Each DIR is a `lqo tune --out` directory (its tune_history.json). Prints, per run, the
final ratio (tuning instances under the book / native) and the minutes at which it first
reached each of a few ratios, and the minutes each run needed to reach the *last* run's
final ratio (put the random-order run last to read "learned reaches random's final
workload time in X% of its time").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

THRESHOLDS = (0.97, 0.96, 0.95, 0.94, 0.93)


def curve(directory: str) -> list[tuple[float, float]]:
    history = json.loads((Path(directory) / "tune_history.json").read_text())
    return [(p["elapsed_s"] / 60, p["book_ms"] / p["native_ms"]) for p in history if p["native_ms"]]


def first_at(points: list[tuple[float, float]], ratio: float) -> float | None:
    return next((round(m, 2) for m, r in points if r <= ratio + 1e-9), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=DIR")
    ap.add_argument("--png")
    ap.add_argument("--json")
    args = ap.parse_args()
    curves = {}
    for spec in args.runs:
        label, _, directory = spec.partition("=")
        curves[label] = curve(directory)
    reference = list(curves.values())[-1][-1][1]
    out = {}
    for label, pts in curves.items():
        out[label] = {"final_ratio": round(pts[-1][1], 4), "minutes": round(pts[-1][0], 2),
                      "reached": {str(t): first_at(pts, t) for t in THRESHOLDS},
                      "reached_last_runs_final": first_at(pts, reference)}
        print(f"{label:>12}: final {pts[-1][1]:.4f} at {pts[-1][0]:.1f} min; reached "
              + ", ".join(f"{t} at {first_at(pts, t)}" for t in THRESHOLDS)
              + f"; the last run's final {reference:.4f} at {first_at(pts, reference)} min")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, pts in curves.items():
            ax.plot([m for m, _ in pts], [r for _, r in pts], label=label, drawstyle="steps-post")
        ax.set_xlabel("tuning minutes")
        ax.set_ylabel("tuning instances under the book / native")
        ax.set_title("What tuning buys, by exploration order")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
