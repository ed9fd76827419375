"""The plan book: per template, its candidate plans, their verdicts and the verified choice.

One small JSON file (:attr:`lqo.model_dir.ModelDir.book`), loaded without torch or
sqlglot in milliseconds and schema-fingerprinted like a model. A template's choice is
``native`` unless a candidate passed the acceptance rule (:mod:`lqo.tune.accept`); the
figures of that verdict are kept with the choice.

Candidates are either *trees* (a whole-query ``Plan``, forced; served from a slot
rendering) or *arms* (the native text run with some DuckDB optimizer rules disabled, or
some DuckDB operator settings changed: no tree is forced, so no forcing penalty).

>>> book = PlanBook(schema="sha1:abc")
>>> e = book.entry("k1", template="q07", sample_sql="SELECT 1")
>>> e.candidates["arm:join_filter_pushdown"] = Candidate("arm:join_filter_pushdown", "arm", ("join_filter_pushdown",))
>>> PlanBook.from_json(book.to_json()).entries["k1"].choice
'native'
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lqo.errors import BookError, SchemaMismatchError
from lqo.model_dir import BOOK_FILE, book_file  # noqa: F401 (BOOK_FILE: re-exported for scripts)

FORMAT = "lqo-plan-book/2"  # /2: typed template keys and slot renderings with list slots


@dataclass(frozen=True)
class AcceptanceVerdict:
    """The figures of one acceptance test (:func:`lqo.tune.accept.judge`), kept in the book."""

    accepted: bool
    reason: str
    median_ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    worst_instance: float | None = None
    instances: int = 0
    rounds: int = 0
    node: str | None = None  # the Ray node all paired rounds ran on (``--ray``); None: the tuning machine

    def to_json(self) -> dict:
        """The verdict as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "AcceptanceVerdict":
        """A verdict from its JSON (keys it does not know are ignored)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Candidate:
    """``id``: ``native``, ``arm:<rules and settings>``, ``tree:<plan key>`` or
    ``rewrite:<family>:<site>`` (the text rewritten, :mod:`lqo.sql.rewrites`); ``plan``:
    the Plan's JSON (trees); ``slots``: its slot rendering's JSON (trees, when it could be
    cut; a rewrite always has one); ``disabled``: DuckDB optimizer rules it runs with off (beyond a tree's forcing);
    ``settings``: DuckDB operator settings (name, value) it runs under (a setting arm);
    ``generation``: a rewrite's generator generation (:mod:`lqo.sql.rewrite_generation`;
    None in books written before the stamp: such a rewrite is served as written).

    >>> c = Candidate(arm_id((), (("late_materialization_max_rows", "0"),)), "arm",
    ...               settings=(("late_materialization_max_rows", "0"),))
    >>> c.id, Candidate.from_json(c.to_json()) == c
    ('arm:late_materialization_max_rows=0', True)
    """

    id: str
    kind: str  # "native" | "arm" | "tree" | "rewrite"
    disabled: tuple[str, ...] = ()
    plan: str | None = None
    slots: list | None = None
    origin: str = ""  # how it was proposed: "arm", "star", "random", "model", ...
    settings: tuple[tuple[str, str], ...] = ()  # (setting, value), sorted by name
    generation: int | None = None  # rewrites: the generation of the generator that proved it

    def to_json(self) -> dict:
        """The candidate as plain JSON data (``settings`` and ``generation`` only where
        it has them: a book without setting arms or rewrites reads as before)."""
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "disabled": list(self.disabled), "plan": self.plan,
             "slots": self.slots, "origin": self.origin}
        if self.settings:
            d["settings"] = [list(p) for p in self.settings]
        if self.generation is not None:
            d["generation"] = self.generation
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Candidate":
        """A candidate from its JSON (books written before setting arms have none, and
        before the rewrite generation stamp no ``generation``)."""
        settings = tuple(sorted((str(n), str(v)) for n, v in d.get("settings") or ()))
        generation = d.get("generation")
        return cls(d["id"], d["kind"], tuple(d.get("disabled") or ()), d.get("plan"), d.get("slots"),
                   d.get("origin", ""), settings, int(generation) if isinstance(generation, int) else None)


def arm_id(rules: tuple[str, ...], settings: tuple[tuple[str, str], ...] = ()) -> str:
    """The id of the arm that disables ``rules`` and sets ``settings``: ``arm:a,b,name=value``.

    >>> arm_id(("join_order",), (("merge_join_threshold", "0"),))
    'arm:join_order,merge_join_threshold=0'
    """
    return "arm:" + ",".join([*rules, *(f"{n}={v}" for n, v in settings)])


def arm_from_id(cid: str) -> Candidate:
    """The arm an ``arm:`` id names (rules, and ``name=value`` settings).

    >>> arm_from_id("arm:join_order,merge_join_threshold=0").settings
    (('merge_join_threshold', '0'),)
    """
    parts = [p for p in cid[4:].split(",") if p]
    settings = tuple(sorted((n, v) for n, _, v in (p.partition("=") for p in parts if "=" in p)))
    return Candidate(cid, "arm", tuple(p for p in parts if "=" not in p), origin=cid, settings=settings)


NATIVE = Candidate("native", "native")


@dataclass
class BookEntry:
    """One template key's page of the book: its instances, native figures, candidates, verdicts and choice."""

    key: str
    template: str
    sample_sql: str
    instances: list[str] = field(default_factory=list)  # tuning instances (query ids)
    held_out: list[str] = field(default_factory=list)  # instances never run while tuning
    weight_ms: float = 0.0  # mean native time x runs of the template in the workload (priority weight)
    native_ms: dict[str, float] = field(default_factory=dict)  # per tuning instance, median
    fingerprints: dict[str, str] = field(default_factory=dict)  # per tuning instance: native result
    choice: str = "native"
    candidates: dict[str, Candidate] = field(default_factory=dict)
    verdicts: dict[str, AcceptanceVerdict] = field(default_factory=dict)
    screened: dict[str, float] = field(default_factory=dict)  # candidate -> screening ratio (inf: timed out)
    verified_at: str | None = None
    note: str | None = None  # e.g. why the template is left native without trying anything
    ranges: list | None = None  # ``LiteralRanges`` JSON of the tuning instances' literals

    @property
    def adopted_ratio(self) -> float:
        """The verified median ratio to native of the adopted plan; 1.0 while native."""
        v = self.verdicts.get(self.choice)
        return v.median_ratio if self.choice != "native" and v is not None and v.median_ratio is not None else 1.0

    @property
    def chosen(self) -> Candidate:
        """The adopted candidate (``NATIVE`` while the choice is native)."""
        return self.candidates.get(self.choice, NATIVE)

    def to_json(self) -> dict:
        """The entry as plain JSON data (an unbounded screening ratio as null)."""
        return {
            "key": self.key, "template": self.template, "sample_sql": self.sample_sql,
            "instances": self.instances, "held_out": self.held_out, "weight_ms": self.weight_ms,
            "native_ms": self.native_ms, "fingerprints": self.fingerprints,
            "choice": self.choice, "candidates": [c.to_json() for c in self.candidates.values()],
            "verdicts": {k: v.to_json() for k, v in self.verdicts.items()},
            "screened": {k: (None if v == float("inf") else v) for k, v in self.screened.items()},
            "verified_at": self.verified_at, "note": self.note, "ranges": self.ranges,
        }

    @classmethod
    def from_json(cls, d: dict) -> "BookEntry":
        """An entry from its JSON; ``BookError`` if its choice is not among its candidates."""
        e = cls(d["key"], d["template"], d["sample_sql"], instances=list(d.get("instances", [])),
                held_out=list(d.get("held_out", [])), weight_ms=float(d.get("weight_ms", 0.0)),
                choice=d.get("choice", "native"))
        e.native_ms = {k: float(v) for k, v in d.get("native_ms", {}).items()}
        e.fingerprints = dict(d.get("fingerprints", {}))
        e.candidates = {c["id"]: Candidate.from_json(c) for c in d.get("candidates", [])}
        e.verdicts = {k: AcceptanceVerdict.from_json(v) for k, v in d.get("verdicts", {}).items()}
        e.screened = {k: (float("inf") if v is None else float(v)) for k, v in d.get("screened", {}).items()}
        e.verified_at, e.note, e.ranges = d.get("verified_at"), d.get("note"), d.get("ranges")
        for cid in [e.choice, *e.verdicts]:
            # Books written before arms of untreeable templates were recorded: an arm is
            # fully named by its id.
            if cid.startswith("arm:") and cid not in e.candidates:
                e.candidates[cid] = arm_from_id(cid)
        if e.choice != "native" and e.choice not in e.candidates:
            raise BookError(f"template {e.template}: choice {e.choice} is not among its candidates")
        return e

    def adopt(self, candidate_id: str) -> None:
        """Make ``candidate_id`` the choice, stamped with the time (UTC)."""
        self.choice = candidate_id
        self.verified_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class PlanBook:
    """The plan book: per template key an entry, the schema fingerprint it was tuned for, and run metadata."""

    schema: str = ""
    entries: dict[str, BookEntry] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def entry(self, key: str, template: str, sample_sql: str) -> BookEntry:
        """The entry of template key ``key``, created (with its label and a sample text) if new."""
        if key not in self.entries:
            self.entries[key] = BookEntry(key, template, sample_sql)
        return self.entries[key]

    def held_out_ids(self) -> set[str]:
        """Every template's held-out instances (query ids never run while tuning)."""
        return {i for e in self.entries.values() for i in e.held_out}

    def by_template(self) -> dict[str, BookEntry]:
        """Entries by template label."""
        return {e.template: e for e in self.entries.values()}

    def to_json(self) -> dict:
        """The book as plain JSON data (what its file holds)."""
        return {"format": FORMAT, "schema": self.schema, "meta": self.meta,
                "templates": [e.to_json() for e in self.entries.values()]}

    @classmethod
    def from_json(cls, d: Any) -> "PlanBook":
        """A book from its JSON; ``BookError`` for another format or a malformed entry."""
        if isinstance(d, dict) and d.get("format") == "lqo-plan-book/1":
            raise BookError("a plan book from an older lqo, whose template keys no longer match: "
                            "run lqo tune again")
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BookError(f"not a plan book (expected format {FORMAT})")
        try:
            entries = [BookEntry.from_json(e) for e in d.get("templates", [])]
        except (KeyError, TypeError, ValueError) as err:
            raise BookError(f"malformed plan book entry: {err}") from None
        return cls(str(d.get("schema", "")), {e.key: e for e in entries}, dict(d.get("meta", {})))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a reader sees the old book or the new one, never half."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), separators=(",", ":")))
            tmp.replace(p)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_schema: str | None = None) -> "PlanBook":
        """Read a book (``path``: the file, or a model directory holding one); ``BookError``
        if missing or corrupt, ``SchemaMismatchError`` if it was tuned for another schema
        than ``expected_schema``."""
        p = book_file(path)
        if not p.is_file():
            raise BookError(f"plan book not found: {p}")
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BookError(f"corrupt plan book {p}: {err}") from None
        try:
            book = cls.from_json(data)
        except BookError as err:
            raise BookError(f"{p}: {err}") from None
        if expected_schema is not None and book.schema and book.schema != expected_schema:
            raise SchemaMismatchError(f"plan book {p} was tuned for schema {book.schema}, "
                                      f"this database has schema {expected_schema}")
        return book
