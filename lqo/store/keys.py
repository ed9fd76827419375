"""Stable keys of queries and plans in the experience store (and everywhere a query or a
plan must be named the same way twice: thread profiles, the plan book, Ray task ids).

>>> query_key("SELECT 1", "db") == query_key("  SELECT 1 ", "db") != query_key("SELECT 1", "other")
True
>>> plan_key("q", '{"a": 1, "b": 2}', "SELECT 1") == plan_key("q", '{"b":2,"a":1}', "SELECT 1")
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") must differ
    return h.hexdigest()[:24]


def query_key(sql: str, database: str | None = None) -> str:
    """Stable key of a query text on a database (pass the same ``database`` string each time)."""
    return _hash("q", database or "", sql.strip())


def canonical_plan_json(plan_json: Any) -> str | None:
    """Plans are opaque, but key order or spacing must not make two keys for one plan."""
    if plan_json is None:
        return None
    obj = json.loads(plan_json) if isinstance(plan_json, (str, bytes)) else plan_json
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def plan_key(qkey: str, plan_json: Any, sql: str | None) -> str:
    """Stable key of a plan: its query, its JSON, and whether it runs natively or forced."""
    return _hash("p", qkey, canonical_plan_json(plan_json) or "", "native" if sql is None else "forced")
