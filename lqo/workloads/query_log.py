"""An application's query log: what ``lqo.connect(..., capture=PATH)`` records and
``lqo workload import`` / ``lqo tune --log`` read.

One JSON line per SELECT the application ran (written out at least every half second,
and on ``close``/``flush``): its text, its bind parameters (typed, so
they come back as the values the application bound), its latency in milliseconds and
when it ran. Capturing is opt-in and bounded: past ``limit_mb`` the log stops growing
(``full`` turns true) rather than fill a disk.

>>> import tempfile, datetime, os
>>> path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
>>> log = QueryLog(path)
>>> log.record("SELECT * FROM t WHERE d > ? AND x = ?", [datetime.date(2000, 1, 2), 5], 3.25)
>>> log.close()
>>> [(e.sql, e.params, e.ms) for e in read_query_log(path)]
[('SELECT * FROM t WHERE d > ? AND x = ?', [datetime.date(2000, 1, 2), 5], 3.25)]
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lqo.errors import MissingFileError, WorkloadError

# Statements worth recording: the ones that may be SELECTs (``lqo workload import``
# checks each with DuckDB's parser); comments before the first word are skipped.
_MAY_SELECT = re.compile(r"(?:\s+|--[^\n]*\n|/\*.*?\*/)*\(*\s*(?:select|with|from|values|table)\b", re.I | re.S)


@dataclass(frozen=True)
class LoggedQuery:
    """One recorded statement: ``params`` as bound (a list, a dict for ``$name``, or None)."""

    sql: str
    params: list[Any] | dict[str, Any] | None
    ms: float | None
    at: float | None


class QueryLog:
    """Appends the SELECTs an application runs to a JSONL file; thread-safe (cursors of one
    connection share it)."""

    def __init__(self, path: str | os.PathLike[str], limit_mb: float = 64.0) -> None:
        self.path = Path(path)
        self.limit_bytes = int(limit_mb * 1e6)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._size = self.path.stat().st_size
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self.full = self._size >= self.limit_bytes

    @staticmethod
    def wanted(sql: object) -> bool:
        """Whether ``sql`` may be a SELECT (the log keeps only those)."""
        return isinstance(sql, str) and _MAY_SELECT.match(sql) is not None

    def record(self, sql: str, params: Any, ms: float | None) -> None:
        """Append one statement (dropped once the log is full); ``ms`` None where the
        latency is not known (a relation from ``sql()`` runs when it is fetched)."""
        if self.full:
            return
        line = json.dumps({"sql": sql, "params": encode_params(params), "ms": None if ms is None else round(ms, 3),
                           "at": round(time.time(), 3)}, ensure_ascii=False) + "\n"
        size = len(line.encode("utf-8"))
        with self._lock:
            if self.full:  # closed (or filled) by another thread meanwhile
                return
            if self._size + size > self.limit_bytes:
                self.full = True
                return
            self._fh.write(line)
            now = time.monotonic()
            if now - self._flushed > 0.5:  # a crash loses at most the last half second
                self._fh.flush()
                self._flushed = now
            self._size += size

    def close(self) -> None:
        """Write out what is buffered and close the file (records after this are dropped)."""
        with self._lock:
            self.full = True
            self._fh.close()

    def flush(self) -> None:
        """Write out what is buffered (a reader sees every record so far)."""
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()


def encode_params(params: Any) -> Any:
    """Bind parameters as JSON data that :func:`decode_params` turns back into the same
    Python values (a type tag per value that JSON would lose)."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return {str(k): _encode(v) for k, v in params.items()}
    if isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        return [_encode(v) for v in params]
    return [_encode(params)]


def _encode(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str)) or isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if v == v and v not in (float("inf"), float("-inf")) else {"float": repr(v)}
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    if isinstance(v, dt.datetime):
        return {"timestamp": v.isoformat()}
    if isinstance(v, dt.date):
        return {"date": v.isoformat()}
    return {"unsupported": type(v).__name__}


def decode_params(data: Any) -> list[Any] | dict[str, Any] | None:
    """The values :func:`encode_params` recorded (an unsupported one comes back as an
    ``Unsupported`` marker, which nothing binds)."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {k: _decode(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_decode(v) for v in data]
    raise ValueError(f"parameters must be a list or an object, not {type(data).__name__}")


class Unsupported:
    """A recorded value of a type the log does not keep (bytes, lists, ...)."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"Unsupported({self.type_name})"


def _decode(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    (tag, text), = v.items()
    if tag == "float":
        return float(text)
    if tag == "decimal":
        return decimal.Decimal(text)
    if tag == "timestamp":
        return dt.datetime.fromisoformat(text)
    if tag == "date":
        return dt.date.fromisoformat(text)
    return Unsupported(str(text))


def read_query_log(path: str | os.PathLike[str]) -> Iterator[LoggedQuery]:
    """The recorded statements in order; a torn last line (a crash mid-write) is skipped,
    any other malformed line is a ``WorkloadError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"query log not found: {p}")
    with open(p, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().split("\n")
    # every line a writer finished ends in a newline: a last line without one is torn
    torn = len(lines) if lines[-1] else None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            yield LoggedQuery(str(d["sql"]), decode_params(d.get("params")),
                              float(d["ms"]) if d.get("ms") is not None else None, d.get("at"))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            if n == torn:
                return  # the torn last line of a log being written (a crash mid-write)
            raise WorkloadError(f"{p}:{n}: not a query log line ({err})") from None
