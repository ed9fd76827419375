"""Shared output helpers: human text or ``--json``, and progress bars on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def emit(args: argparse.Namespace, text: str, payload: Any) -> None:
    """Print ``payload`` as JSON when ``--json`` was given, else ``text``."""
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True) -> Any:
    """A progress bar on stderr; without a terminal, a plain line every 10 s instead."""
    if not enabled:
        return iterable
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
    return _log_lines(iterable, total, desc)


def _log_lines(iterable: Iterable, total: int | None, desc: str, every_s: float = 10.0):
    import time

    start = last = time.perf_counter()
    for i, item in enumerate(iterable):
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            print(f"{desc}: {i}/{total if total is not None else '?'} ({now - start:.0f} s)", file=sys.stderr, flush=True)
        yield item
