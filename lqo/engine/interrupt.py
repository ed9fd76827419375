"""Ctrl-C while DuckDB runs: the latch the CLI sets, and telling a user's interrupt apart.

DuckDB's client checks for signals while a query runs; one that lands as the query
finishes can be consumed without an exception. The CLI's SIGINT handler
(:func:`install_sigint_latch`) also sets a process-wide latch, and every harness run
checks it (:func:`sigint_seen`), so such a Ctrl-C still stops the work.
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb

# Process-wide by nature, like the signal itself.
_SIGINT_SEEN = threading.Event()


def install_sigint_latch() -> None:
    """Make Ctrl-C (when not ignored) also set the latch ``Harness.run`` checks."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        def _handler(signum: Any, frame: Any) -> None:
            _SIGINT_SEEN.set()
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _handler)


def is_user_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, as Python raises it or as DuckDB wraps it (an
    ``InterruptException`` counts once the CLI's latch has seen a Ctrl-C)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, duckdb.InterruptException):
        return _SIGINT_SEEN.is_set()
    return isinstance(exc, RuntimeError) and (
        isinstance(exc.__cause__, KeyboardInterrupt) or "Query interrupted" in str(exc)
    )


def sigint_seen() -> bool:
    """Whether the CLI's latch has seen a Ctrl-C in this process."""
    return _SIGINT_SEEN.is_set()
