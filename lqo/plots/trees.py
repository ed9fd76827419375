"""Join trees drawn with matplotlib: native and lqo side by side, rows per node.

>>> from lqo.plots import join_trees
>>> fig = join_trees(["a", "b"], ["b", "a"], {frozenset("ab"): (10, 12)})
"""

from __future__ import annotations

from typing import Any, Mapping

from lqo.plots.style import LOSS, Figure, plt
from lqo.trees.plan import Join, Leaf, Tree, tree_from_json


def _fmt(n: float | None) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _as_tree(t: Any) -> Tree:
    return t if isinstance(t, (Leaf, Join)) else tree_from_json(t)


def _layout(tree: Tree) -> tuple[dict[int, tuple[float, float]], int, int]:
    """x = in-order leaf slot (joins centred over their children), y = -depth."""
    pos: dict[int, tuple[float, float]] = {}
    slot = [0]
    depth_max = [0]

    def go(t: Tree, d: int) -> float:
        depth_max[0] = max(depth_max[0], d)
        if isinstance(t, Leaf):
            x = float(slot[0])
            slot[0] += 1
        else:
            x = (go(t.probe, d + 1) + go(t.build, d + 1)) / 2
        pos[id(t)] = (x, -d)
        return x

    go(tree, 0)
    return pos, slot[0], depth_max[0]


def _qerr(est: float | None, act: float | None) -> float | None:
    if est is None or act is None:
        return None
    e, a = max(float(est), 1.0), max(float(act), 1.0)
    return max(e, a) / min(e, a)


def draw_tree(ax: Any, tree: Any, cards: Mapping[frozenset, tuple[float | None, float | None]] | None = None,
              names: Mapping[str, str] | None = None, title: str = "") -> None:
    """Draw one binary join tree on ``ax``: leaves are relations (alias, table when it
    differs), join nodes show ``est N / act M`` rows; probe side left, build side right.
    Nodes whose estimate is off by more than 10x are outlined red.

    ``cards`` maps a node's relation set to (estimated, actual) rows.
    """
    tree = _as_tree(tree)
    cards, names = cards or {}, names or {}
    pos, width, depth = _layout(tree)

    def visit(t: Tree) -> None:
        x, y = pos[id(t)]
        est, act = cards.get(t.rels, (None, None))
        q = _qerr(est, act)
        edge = LOSS if q is not None and q > 10 else "0.3"
        card = f"est {_fmt(est)} / act {_fmt(act)}" if (est is not None or act is not None) else ""
        if isinstance(t, Leaf):
            label = t.rel + (f"\n({names[t.rel]})" if names.get(t.rel, t.rel) != t.rel else "")
            ax.text(x, y, label, ha="center", va="center", fontsize=9, zorder=3,
                    bbox=dict(boxstyle="round,pad=0.3", fc="#e8f0fb", ec=edge, lw=1.5 if edge == LOSS else 0.8))
            if card:
                ax.text(x, y - (0.32 if "\n" in label else 0.2), card, ha="center", va="top", fontsize=7.5,
                        color="0.25")
            return
        for child, side in ((t.probe, "probe"), (t.build, "build")):
            cx, cy = pos[id(child)]
            ax.plot([x, cx], [y, cy], color="0.5", lw=1, zorder=1, ls="-" if side == "probe" else "--")
            visit(child)
        ax.text(x, y, "⋈\n" + (card or "join"), ha="center", va="center", fontsize=8, zorder=3,
                bbox=dict(boxstyle="round,pad=0.3", fc="#fdf0e4", ec=edge, lw=1.5 if edge == LOSS else 0.8))

    visit(tree)
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-depth - 0.7, 0.4)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)


def join_trees(native: Any, lqo: Any, native_cards: Mapping | None = None, lqo_cards: Mapping | None = None,
               names: Mapping[str, str] | None = None, titles: tuple[str, str] = ("DuckDB native", "lqo"),
               suptitle: str = "") -> Figure:
    """Native and lqo join trees side by side (``draw_tree`` for each); trees as
    ``lqo.trees.plan`` trees or their JSON (``["a", ["b", "c"]]``).

    >>> f = join_trees(["a", "b"], ["b", "a"], {frozenset("ab"): (10, 12)})
    >>> [a.get_title() for a in f.axes]
    ['DuckDB native', 'lqo']
    """
    t1, t2 = _as_tree(native), _as_tree(lqo)
    n = max(len(t1.rels), len(t2.rels))
    depth = max(_layout(t1)[2], _layout(t2)[2])
    # About an inch per leaf and per level: labels stay readable at any tree size.
    fig, axes = plt.subplots(1, 2, figsize=(max(9.0, 2 * 1.15 * n + 0.5), 1.5 + 0.95 * (depth + 1)),
                             layout="constrained")
    draw_tree(axes[0], t1, native_cards, names, titles[0])
    draw_tree(axes[1], t2, lqo_cards, names, titles[1])
    if suptitle:
        fig.suptitle(suptitle + "\n(solid edge = probe side, dashed = build side; red = estimate off > 10x)",
                     fontsize=10)
    return fig


def tree_case(case: Mapping[str, Any]) -> Figure:
    """``join_trees`` for one case of ``lqo.evaluate.tree_cases.tree_cases`` (query, kind, times).

    >>> c = {"query": "q1", "kind": "win", "ratio": 0.5, "native_ms": 10.0, "lqo_ms": 5.0, "block": 0,
    ...      "fallback": None, "names": {}, "native": {"tree": ["a", "b"], "cards": [[["a", "b"], 5, 7]]},
    ...      "lqo": {"tree": ["b", "a"], "cards": []}}
    >>> tree_case(c).axes[1].get_title()
    'lqo: 5 ms'
    """
    def cards(side: Mapping) -> dict:
        return {frozenset(r): (e, a) for r, e, a in side.get("cards", [])}

    def ms(v: Any) -> str:
        return "?" if v is None else f"{v:.3g} ms"

    note = f"lqo kept native: {case['fallback']}" if case.get("fallback") else \
        f"lqo/native {case['ratio']:.2f}x" if case.get("ratio") else ""
    lqo_title = f"lqo: {ms(case.get('lqo_ms'))}" + (" (timed out when profiled)" if case["lqo"].get("timed_out") else "")
    return join_trees(case["native"]["tree"], case["lqo"]["tree"], cards(case["native"]), cards(case["lqo"]),
                      case.get("names"), (f"DuckDB native: {ms(case.get('native_ms'))}", lqo_title),
                      f"{case['query']} ({case['kind']}), block {case.get('block', 0)}: {note}")
