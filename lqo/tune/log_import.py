"""``lqo workload import``: an application's queries as a workload lqo can tune.

The source is a query log in any of three forms: a ``.sql`` file of statements
separated by ``;``, a directory of such files, or a capture (``.jsonl``, written by
``lqo.connect(..., capture=PATH)``) with each statement's bind parameters and latency.
Each statement is split with DuckDB's own parser and kept only if it is one SELECT that
binds on the database; a parameterized one is kept with its values written in as
literals (:mod:`lqo.book.params`: the same literal template a served call with those
values maps to). Kept statements are grouped by template key, the grouping ``lqo tune``
uses, so every command that reads the workload (``info``, ``train``, ``compare``,
``report``, ``tune``) sees the same templates and a template's instances never
straddle a train/test split. Templates are named after the tables they read
(``t03_orders_lineitem``); instances are numbered in the order the application first
ran them (``lqo tune`` tunes on the first ones and holds out the later ones) and carry
how often it ran them (the manifest's ``weight``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from lqo.book.params import bind_literals
from lqo.book.template import bind_parameters, template_key
from lqo.errors import MissingFileError, WorkloadError
from lqo.workloads.query_log import LoggedQuery, read_query_log
from lqo.workloads.workload import Workload, staging_dir, write_workload

_NAME_PART = re.compile(r"[^A-Za-z0-9_]+")


@dataclass
class _Template:
    key: str
    # an instance (its literals) -> its first text and the times it ran, in first-run order;
    # texts that differ only in spacing, comments or keyword case are one instance
    texts: dict[tuple[tuple[str, ...], tuple[int, ...]], list[Any]] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    """What an import kept and skipped: ``skipped`` maps a reason to its count, with
    ``examples`` holding the first statement skipped for each reason."""

    workload: Workload
    statements: int
    kept: int
    skipped: dict[str, int]
    examples: dict[str, str]


def read_statements(source: str | os.PathLike[str]) -> Iterator[LoggedQuery]:
    """The statements of a ``.sql`` file, a directory of them (sorted by name), or a
    capture (``.jsonl``), in order."""
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingFileError(f"query log not found: {path}")
    if path.is_dir():
        files = sorted(path.glob("*.sql"))
        if not files:
            raise WorkloadError(f"no *.sql files in {path}")
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from read_query_log(path)
        return
    else:
        files = [path]
    splitter = duckdb.connect()
    try:
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace")
            try:
                statements = splitter.extract_statements(text)
            except duckdb.Error as err:
                raise WorkloadError(f"{f}: DuckDB cannot split it into statements: "
                                    f"{str(err).splitlines()[0]}") from None
            for st in statements:
                yield LoggedQuery(st.query.strip(), None, None, None)
    finally:
        splitter.close()


def import_log(source: str | os.PathLike[str], database: str | os.PathLike[str], out: str | os.PathLike[str], *,
               force: bool = False, name: str | None = None,
               progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> ImportResult:
    """Write the workload of ``source``'s SELECTs on ``database`` to ``out`` (nothing is
    written unless it succeeds); ``WorkloadError`` if no statement can be kept."""
    db = Path(database).expanduser()
    if not db.is_file():
        raise MissingFileError(f"database file not found: {db}")
    statements = list(read_statements(source))
    con = duckdb.connect(str(db), read_only=True)
    templates: dict[str, _Template] = {}
    skipped: dict[str, int] = {}
    examples: dict[str, str] = {}
    verdicts: dict[str, str | None] = {}  # a text's check, once per distinct text
    kept = 0
    try:
        for st in (progress(statements) if progress is not None else statements):
            text, why = _literal_text(st)
            if text is not None:
                if text not in verdicts:
                    verdicts[text] = _check(con, text)
                why = verdicts[text]
            if why is not None or text is None:
                reason = why or "unknown"
                skipped[reason] = skipped.get(reason, 0) + 1
                examples.setdefault(reason, st.sql[:200])
                continue
            kept += 1
            tk = template_key(text)
            t = templates.get(tk.key)
            if t is None:
                t = templates[tk.key] = _Template(tk.key, tables=_tables(con, text))
            t.texts.setdefault((tk.literals, tk.shape), [text, 0])[1] += 1
    finally:
        con.close()
    if not templates:
        detail = "; ".join(f"{n} {why}" for why, n in skipped.items()) or "it is empty"
        raise WorkloadError(f"no SELECT of {source} can be imported ({detail})")
    rows = _rows(templates)
    label = name or Path(out).expanduser().absolute().name
    with staging_dir(out, force) as tmp:
        write_workload(tmp, label, db.absolute(), rows)
    return ImportResult(Workload.load(out), len(statements), kept, skipped, examples)


def _literal_text(st: LoggedQuery) -> tuple[str | None, str | None]:
    """The statement as a literal text, or None with why it cannot be one."""
    found = bind_parameters(st.sql)
    if st.params:
        bound = bind_literals(st.sql, st.params)
        if bound is None:
            return None, "parameters lqo cannot write as literals (a NULL, boolean, list or other type)"
        return bound.sql, None
    if found:
        return None, "bind parameters without recorded values"
    return st.sql.rstrip().rstrip(";").rstrip(), None


def _check(con: duckdb.DuckDBPyConnection, text: str) -> str | None:
    """Why ``text`` is not one SELECT that binds on the database (None when it is)."""
    try:
        statements = con.extract_statements(text)
    except duckdb.Error:
        return "not valid SQL"
    if len(statements) != 1:
        return "several statements in one entry"
    if statements[0].type != duckdb.StatementType.SELECT:
        return "not a SELECT"
    try:
        con.execute("EXPLAIN " + text).fetchall()
    except duckdb.Error as err:
        return f"does not bind on this database ({type(err).__name__})"
    return None


def _tables(con: duckdb.DuckDBPyConnection, text: str) -> list[str]:
    """The tables a query reads, for naming its template (DuckDB's own list, in the
    order the text first names them)."""
    try:
        names = con.get_table_names(text)
    except duckdb.Error:
        return []
    low = text.lower()
    return sorted(names, key=lambda t: (low.find(t.lower()) % (len(low) + 1), t))


def _rows(templates: dict[str, _Template]) -> list[tuple[str, str, str, float]]:
    """Manifest rows: templates named in first-run order, instances numbered likewise."""
    rows: list[tuple[str, str, str, float]] = []
    width = max(2, len(str(len(templates))))
    for n, t in enumerate(templates.values(), 1):
        tables = "_".join(_NAME_PART.sub("_", x).strip("_").lower() for x in t.tables[:3])[:40].strip("_")
        label = f"t{n:0{width}d}" + (f"_{tables}" if tables else "")
        iw = max(3, len(str(len(t.texts))))
        for i, (text, count) in enumerate(t.texts.values(), 1):
            rows.append((f"{label}_{i:0{iw}d}", label, text, float(count)))
    return rows
