"""What one run of a query gives: :class:`RunResult`, its result fingerprint, its profile
flattened, and latency summaries over several runs.

>>> median_latency([RunResult(10.0), RunResult(30.0), RunResult(5.0, timed_out=True, timeout_ms=20.0)])
30.0
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# extra_info keys worth keeping per operator: they let a caller match an operator to the
# join / scan of its own plan. Projections, filters etc. are long and not needed for that.
_KEPT_INFO = ("Table", "Join Type", "Conditions")


def utcnow() -> _dt.datetime:
    """Now in UTC, without a time zone (how runs and stores record times)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


@dataclass
class RunResult:
    """Outcome of one execution.

    ``latency_ms`` is wall time around execute+fetchall; for a timed-out run it is the
    time until the interrupt took effect. ``rows`` is 0 and ``fingerprint`` None unless
    the query completed. ``operators`` is the profile flattened in pre-order: dicts with
    ``type``, ``rows`` (actual), ``est`` (DuckDB's estimate or None), ``ms`` (operator
    time), ``depth``, ``parent`` (index into the list, -1 for the root) and, where
    present, ``info`` (Table / Join Type / Conditions). ``operators`` is empty when not
    profiled, and also when DuckDB reports no tree (aggregates it answers from table
    statistics, e.g. ``SELECT count(*) FROM t``: its JSON is ``{"result": "error"}``).
    """

    latency_ms: float
    timed_out: bool = False
    error: str | None = None
    rows: int = 0
    fingerprint: str | None = None
    operators: list[dict[str, Any]] = field(default_factory=list)
    profile_latency_ms: float | None = None
    timeout_ms: float | None = None
    forced: bool = False
    threads: int | None = None
    started_at: _dt.datetime = field(default_factory=lambda: utcnow())

    @property
    def ok(self) -> bool:
        """True when the query completed (no timeout, no error)."""
        return not self.timed_out and self.error is None


# --------------------------------------------------------------------------- fingerprint

def _norm(value: Any) -> Any:
    """A canonical, hashable form of one value; floats to 6 significant digits."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str, bytes)):
        return value
    if isinstance(value, (float, Decimal)):
        # Decimals too: a forced plan may sum in another order and some aggregates
        # (avg) move between DECIMAL and DOUBLE; both must compare equal.
        x = float(value)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if abs(x) < 1e-9:  # summation noise around zero (1e-17 vs -2e-17)
            return 0.0
        return float(f"{x:.6g}")
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    return str(value)  # dates, times, UUIDs, intervals: their text is canonical


def fingerprint_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Order-insensitive multiset hash of a result, robust to float noise.

    Rows are hashed one by one and the sorted digests hashed again: equal multisets of
    rows give equal fingerprints whatever their order (ties under ORDER BY may come back
    in any order), duplicates still count.

    >>> fingerprint_rows([(1, 0.1 + 0.2), (2, 'x')]) == fingerprint_rows([(2, 'x'), (1, 0.3)])
    True
    """
    digests = sorted(hashlib.blake2b(repr(_norm(r)).encode(), digest_size=16).digest() for r in rows)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(len(digests)).encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


# --------------------------------------------------------------------------- profile

def _parse_estimate(text: Any) -> int | None:
    try:
        return int(str(text).strip().lstrip("~"))
    except (TypeError, ValueError):
        return None


def flatten_profile(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten DuckDB's JSON profile tree (root keys skipped) into a pre-order list."""
    out: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], depth: int, parent: int) -> None:
        extra = node.get("extra_info") or {}
        op: dict[str, Any] = {
            "type": node.get("operator_type") or node.get("operator_name"),
            "rows": node.get("operator_cardinality"),
            "est": _parse_estimate(extra.get("Estimated Cardinality")),
            "ms": round(float(node.get("operator_timing") or 0.0) * 1000.0, 4),
            "depth": depth,
            "parent": parent,
        }
        info = {k: extra[k] for k in _KEPT_INFO if k in extra}
        if info:
            op["info"] = info
        out.append(op)
        me = len(out) - 1
        for child in node.get("children") or []:
            walk(child, depth + 1, me)

    for top in profile.get("children") or []:
        walk(top, 0, -1)
    return out


# --------------------------------------------------------------------------- summaries

def censored_latency(r: RunResult) -> float:
    """Latency for ranking: a timed-out run counts as at least its timeout."""
    if r.timed_out:
        return max(r.latency_ms, r.timeout_ms or 0.0)
    return r.latency_ms


def median_latency(results: Sequence[RunResult]) -> float | None:
    """Median latency in ms over completed and timed-out runs (errors ignored).

    Timed-out runs rank above every completed run, at ``censored_latency``; if the
    median lands on one, the value returned is a lower bound. None if nothing counts.

    >>> median_latency([RunResult(10.0), RunResult(30.0), RunResult(5.0, timed_out=True, timeout_ms=20.0)])
    30.0
    """
    counted = [r for r in results if r.error is None]
    if not counted:
        return None
    done = sorted(r.latency_ms for r in counted if not r.timed_out)
    timed = sorted(censored_latency(r) for r in counted if r.timed_out)
    # Timeouts go last even if a completed run was slower than some timeout value.
    ranked = done + [max(t, done[-1] if done else t) for t in timed]
    return float(statistics.median(ranked))
