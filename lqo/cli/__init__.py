"""The ``lqo`` command line: a thin layer over the Python API.

Each sub-command lives in its own module with ``register(subparsers)``; the handler it
sets returns an exit code. An ``LqoError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from lqo.engine.interrupt import install_sigint_latch, is_user_interrupt
from lqo.errors import LqoError

# Modules that add sub-commands; each has register(subparsers).
_COMMAND_MODULES = ["workload_cmd", "explain_cmd", "run_cmd", "explore_cmd", "train_cmd", "optimize_cmd", "compare_cmd",
                    "schedule_cmd", "train_scheduler_cmd", "profile_cmd", "report_cmd", "tune_cmd"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    import duckdb

    from lqo import __version__

    parser = argparse.ArgumentParser(prog="lqo", description="A learned query optimizer and scheduler for DuckDB.")
    parser.add_argument("--version", action="version", version=f"lqo {__version__} (duckdb {duckdb.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # the `lqo` process itself, not a call from Python code or tests
        install_sigint_latch()
        # sqlglot warns on stderr when it falls back to a bare command (EXPLAIN ...); the
        # error lqo raises for such a text is the one line the user needs.
        import logging

        logging.getLogger("sqlglot").setLevel(logging.ERROR)
    try:
        return int(args.handler(args) or 0)
    except LqoError as err:
        print(f"lqo: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (KeyboardInterrupt, RuntimeError) as err:
        if not is_user_interrupt(err):
            raise
        print("lqo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
