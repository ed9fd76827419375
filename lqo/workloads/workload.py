"""Workloads: a set of SELECT queries over one DuckDB database, described by a manifest.

A workload is a directory holding ``workload.toml`` and the query files it names::

    name = "tpch-sf1"
    database = "tpch.duckdb"   # relative to the workload dir, or absolute
    kind = "tpch"              # optional: "tpch", "tpcds" or "custom"
    scale_factor = 1           # optional

    [[queries]]
    id = "q01"
    template = "q01"           # optional, defaults to the id
    file = "q01.sql"

Without a ``[[queries]]`` list every ``*.sql`` file in the directory is a query, its id
the file stem. See ``plans/README.md`` for the full format.

>>> w = Workload.load("workloads/tpch-sf1")  # doctest: +SKIP
>>> len(w), w.templates[:2]                   # doctest: +SKIP
(22, ['q01', 'q02'])
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb

from lqo.errors import MissingFileError, WorkloadError
from lqo.sql.syntax import describe_parser_error

MANIFEST = "workload.toml"
KINDS = ("tpch", "tpcds", "custom")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Query:
    """One query of a workload: ``template`` groups instances of the same query shape.

    >>> Query("q07_v3", "q07", "SELECT 1", Path("q07_v3.sql")).template
    'q07'
    """

    id: str
    template: str
    sql: str
    path: Path
    weight: float = 1.0  # how often the application ran it (``lqo workload import``); 1 otherwise


@dataclass
class Workload:
    """A loaded, validated workload. ``database`` and query paths are absolute.

    >>> w = Workload.load("workloads/tpch-sf1")  # doctest: +SKIP
    >>> con = w.connect()                       # read-only  # doctest: +SKIP
    >>> con.execute(w.query("q06").sql).fetchall()  # doctest: +SKIP
    """

    root: Path
    database: Path
    queries: list[Query]
    name: str = ""
    kind: str = "custom"
    scale_factor: float | None = None
    _by_id: dict[str, Query] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id = {q.id: q for q in self.queries}
        if not self.name:
            self.name = Path(self.root).name

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[Query]:
        return iter(self.queries)

    @property
    def templates(self) -> list[str]:
        """Distinct template ids, in query order."""
        return list(dict.fromkeys(q.template for q in self.queries))

    def by_template(self) -> dict[str, list[Query]]:
        """Queries grouped by template id (for train/test splits by template)."""
        groups: dict[str, list[Query]] = {}
        for q in self.queries:
            groups.setdefault(q.template, []).append(q)
        return groups

    def query(self, query_id: str) -> Query:
        """The query with this id; ``WorkloadError`` if there is none."""
        try:
            return self._by_id[query_id]
        except KeyError:
            raise WorkloadError(f"workload {self.name!r} has no query {query_id!r}") from None

    def subset(self, query_ids: Iterable[str]) -> "Workload":
        """The same workload restricted to ``query_ids`` (in the given order)."""
        queries = [self.query(q.strip()) for q in query_ids if q.strip()]
        return Workload(self.root, self.database, queries, self.name, self.kind, self.scale_factor)

    def connect(self, threads: int | None = None) -> duckdb.DuckDBPyConnection:
        """A read-only connection to the workload's database."""
        from lqo.engine.db import connect_read_only

        return connect_read_only(self.database, threads=threads)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Workload":
        """Read and validate ``root/workload.toml``, the query files and the database path.

        Raises ``MissingFileError`` (no such dir, manifest, query file or database) or
        ``WorkloadError`` (malformed manifest, non-SELECT query).

        >>> Workload.load("workloads/tpch-sf1").kind  # doctest: +SKIP
        'tpch'
        """
        root = Path(root).expanduser().absolute()
        manifest, data = _read_manifest(root)
        name, db, kind, sf = _manifest_fields(root, manifest, data)
        queries = _load_queries(root, manifest, _query_entries(root, manifest, data))
        database = _resolve(root, db)
        if not database.is_file():
            raise MissingFileError(f"database file not found: {database} (named in {manifest})")
        return cls(root, database, queries, name=name, kind=kind, scale_factor=sf)


def _malformed(manifest: Path, msg: str) -> WorkloadError:
    return WorkloadError(f"malformed manifest {manifest}: {msg}")


def _nonempty_str(manifest: Path, val: object, what: str) -> str:
    """``val`` if it is a non-empty string, else the error naming ``what``."""
    if not isinstance(val, str) or not val:
        raise _malformed(manifest, f"{what} must be a non-empty string")
    return val


def _read_manifest(root: Path) -> tuple[Path, dict[str, Any]]:
    """``root``'s manifest path and its TOML, or the error naming what is missing or wrong."""
    if not root.exists():
        raise MissingFileError(f"workload directory not found: {root}")
    if not root.is_dir():
        raise WorkloadError(f"workload path is not a directory: {root}")
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise MissingFileError(f"workload manifest not found: {manifest}")
    try:
        return manifest, tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise WorkloadError(f"malformed manifest {manifest}: {err}") from None


def _manifest_fields(root: Path, manifest: Path, data: dict[str, Any]) -> tuple[str, str, str, Any]:
    """The manifest's checked ``name``, ``database``, ``kind`` and ``scale_factor``."""
    name = data.get("name", root.name)
    if not isinstance(name, str) or not name:
        raise _malformed(manifest, "'name' must be a non-empty string")
    db = data.get("database")
    if not isinstance(db, str) or not db:
        raise _malformed(manifest, "'database' (path of the DuckDB file) is required and must be a string")
    kind = data.get("kind", "custom")
    if kind not in KINDS:
        raise _malformed(manifest, f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
    sf = data.get("scale_factor")
    if sf is not None and (isinstance(sf, bool) or not isinstance(sf, (int, float)) or sf <= 0):
        raise _malformed(manifest, "'scale_factor' must be a positive number")
    return name, db, kind, sf


def _query_entries(root: Path, manifest: Path, data: dict[str, Any]) -> list[Any]:
    """The ``[[queries]]`` tables, or one per ``*.sql`` file (natural order) without them."""
    entries = data.get("queries")
    if entries is None:
        files = sorted(root.glob("*.sql"), key=lambda p: _natural_key(p.stem))
        entries = [{"id": p.stem, "file": p.name} for p in files]
    elif not isinstance(entries, list):
        raise _malformed(manifest, "'queries' must be an array of tables ([[queries]])")
    if not entries:
        raise WorkloadError(f"workload {root} has no queries")
    return entries


def _load_queries(root: Path, manifest: Path, entries: list[Any]) -> list[Query]:
    """Every entry checked (id, file, template; unique ids) and its file read as one SELECT."""
    checker = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    queries: list[Query] = []
    seen: set[str] = set()
    try:
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise _malformed(manifest, f"queries[{i}] must be a table")
            qid = _nonempty_str(manifest, entry.get("id"), f"queries[{i}].id")
            qfile = _nonempty_str(manifest, entry.get("file"), f"queries[{i}].file")
            template = _nonempty_str(manifest, entry.get("template", qid), f"queries[{i}].template")
            if not _ID_RE.match(qid):
                raise _malformed(manifest, f"query id {qid!r} may only use letters, digits, '_', '.', '-'")
            if qid in seen:
                raise _malformed(manifest, f"duplicate query id {qid!r}")
            seen.add(qid)
            path = _resolve(root, qfile)
            if not path.is_file():
                raise MissingFileError(f"query file not found: {path} (query {qid!r} in {manifest})")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise _malformed(manifest, f"queries[{i}].weight must be a positive number")
            queries.append(Query(qid, template, _read_select(path, checker), path, float(weight)))
    finally:
        checker.close()
    return queries


def _resolve(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _read_select(path: Path, checker: duckdb.DuckDBPyConnection) -> str:
    """The text of a query file, checked with DuckDB's parser to be one SELECT statement."""
    try:
        sql = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WorkloadError(f"query file {path} is not UTF-8 text") from None
    try:
        statements = checker.extract_statements(sql)
    except duckdb.ParserException as err:  # a syntax error, with its line and column
        raise WorkloadError(f"query file {path} is not valid SQL: {describe_parser_error(str(err), sql)}") from None
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkloadError(f"query file {path} is not valid SQL: {first}") from None
    if not statements:
        raise WorkloadError(f"query file {path} is empty")
    if len(statements) != 1:
        raise WorkloadError(f"query file {path} must hold exactly one statement, not {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise WorkloadError(f"query file {path} is not a SELECT statement ({statements[0].type.name})")
    return sql


# --- writing --------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML basic-string escapes
    return text.replace("\x7f", "\\u007F")


def _toml_number(value: float) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return str(value) if isinstance(value, int) else repr(float(value))


def write_workload(
    root: str | os.PathLike,
    name: str,
    database: str | os.PathLike,
    queries: Iterable[tuple[str, str, str] | tuple[str, str, str, float]],
    kind: str = "custom",
    scale_factor: float | None = None,
) -> Path:
    """Write ``(id, template, sql[, weight])`` queries as ``<id>.sql`` files plus ``workload.toml``
    into the existing directory ``root``. A database inside ``root`` is recorded relative
    to it, any other as an absolute path. Returns the manifest path.

    >>> write_workload("out", "mine", "/data/my.duckdb", [("a", "a", "SELECT 1")])  # doctest: +SKIP
    """
    root = Path(root).absolute()
    db = Path(database).expanduser().absolute()
    try:
        db_text = db.relative_to(root).as_posix()
    except ValueError:
        db_text = str(db)
    if kind not in KINDS:
        raise WorkloadError(f"unknown workload kind {kind!r} (expected one of {', '.join(KINDS)})")
    lines = [f"name = {_toml_str(name)}", f"database = {_toml_str(db_text)}", f"kind = {_toml_str(kind)}"]
    if scale_factor is not None:
        lines.append(f"scale_factor = {_toml_number(scale_factor)}")
    seen: set[str] = set()
    for qid, template, sql, *weight in queries:
        if not _ID_RE.match(qid) or qid in seen:
            raise WorkloadError(f"bad or duplicate query id {qid!r}")
        seen.add(qid)
        text = sql if sql.endswith("\n") else sql + "\n"
        (root / f"{qid}.sql").write_text(text, encoding="utf-8")
        lines += ["", "[[queries]]", f"id = {_toml_str(qid)}", f"template = {_toml_str(template)}",
                  f"file = {_toml_str(qid + '.sql')}"]
        if weight and weight[0] != 1:
            lines.append(f"weight = {_toml_number(weight[0])}")
    manifest = root / MANIFEST
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def check_out_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Check that ``out`` may receive a new workload and return it as an absolute path.

    ``out`` must not exist or be an empty directory; with ``force`` it may also be an
    existing workload directory (one holding ``workload.toml``), which is then replaced.
    Anything else is refused with ``WorkloadError`` before anything is written.
    """
    out = Path(out).expanduser().absolute()
    if not out.exists():
        return out
    if not out.is_dir():
        raise WorkloadError(f"output path exists and is not a directory: {out}")
    if not any(out.iterdir()):
        return out
    if not force:
        raise WorkloadError(f"output directory is not empty: {out} (use --force to replace it)")
    if not (out / MANIFEST).is_file():
        raise WorkloadError(f"refusing to replace {out}: --force only replaces a workload directory (no {MANIFEST})")
    return out


@contextlib.contextmanager
def staging_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a workload in a temporary sibling of ``out``, then move it into place.

    On success the staging directory is renamed to ``out`` (replacing an old workload
    there when ``force``); on any error or interrupt it is removed, so ``out`` is never
    left half-written.

    >>> with staging_dir("out") as tmp:  # doctest: +SKIP
    ...     write_workload(tmp, "mine", "/data/my.duckdb", [("a", "a", "SELECT 1")])
    """
    out = check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()  # unlike mkdtemp, honours the umask
    try:
        yield tmp
        out = check_out_dir(out, force)  # re-check: something may have appeared meanwhile
        old = None
        if out.exists():
            old = out.with_name(f"{tmp.name}.old")
            out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            if old is not None:
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
