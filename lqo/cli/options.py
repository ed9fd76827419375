"""Options several commands share, each defined once: name, type and default live here,
each command says what the option means for it (``help``). ``--json`` is
:func:`lqo.cli.output.add_json_flag`.

>>> import argparse
>>> p = argparse.ArgumentParser()
>>> add_seed(p); add_out(p, "output directory", required=True)
>>> p.parse_args(["--out", "d"]).seed
0
"""

from __future__ import annotations

import argparse


def add_seed(parser: argparse.ArgumentParser, help: str | None = "random seed (default 0)",
             default: int | None = 0) -> None:
    """``--seed N`` (an int; ``default`` None: the recipe's)."""
    parser.add_argument("--seed", type=int, default=default, help=help)


def add_out(parser: argparse.ArgumentParser, help: str, *, required: bool = False, metavar: str | None = None) -> None:
    """``--out DIR``: where a command writes."""
    parser.add_argument("--out", required=required, metavar=metavar, help=help)


def add_model(parser: argparse.ArgumentParser, help: str, *, required: bool = False,
              metavar: str | None = None) -> None:
    """``--model DIR``: a model directory (``lqo train`` and/or ``lqo tune``)."""
    parser.add_argument("--model", required=required, metavar=metavar, help=help)


def add_repeat(parser: argparse.ArgumentParser, default: int, help: str) -> None:
    """``--repeat N``: runs per query or plan."""
    parser.add_argument("--repeat", type=int, default=default, help=help)


def add_timeout(parser: argparse.ArgumentParser, help: str = "per-run timeout in seconds (default 300)") -> None:
    """``--timeout S``: seconds a run may take (default 300)."""
    parser.add_argument("--timeout", type=float, default=300.0, help=help)
