"""One profiled run of a query: DuckDB's operator tree with actual cardinalities."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import duckdb

from lqo.engine.settings import disabled_optimizers, forced_settings, profiling_settings


def profile_json(con: duckdb.DuckDBPyConnection, sql: str, forced: bool = False, timeout_s: float = 60.0,
                 disabled: Sequence[str] = ()) -> dict[str, Any] | None:
    """Run ``sql`` once with profiling (forced settings if ``forced``, and the optimizer
    rules ``disabled`` off); DuckDB's profiling JSON, or None on timeout
    (``lqo.trees.physical.profile_nodes`` reads it)."""
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        con.interrupt()

    timer = threading.Timer(timeout_s, interrupt)
    timer.daemon = True
    rules = forced_settings(con, disabled) if forced else disabled_optimizers(con, disabled) if disabled else nullcontext()
    with profiling_settings(con), rules:
        timer.start()
        try:
            con.execute(sql).fetchall()
        except duckdb.InterruptException:
            if not fired.is_set():
                raise
            return None
        finally:
            timer.cancel()
            timer.join()  # an interrupt firing now must not hit the statements below
        # Read inside the settings' scope: restoring them runs SETs that replace the profile.
        return json.loads(con.get_profiling_information(format="json"))
