"""Serving a recurring query from the plan book: template look-up, no model, no parse.

Known template, choice native -> the text as written. Known, a setting arm -> the text
with the arm's optimizer rules disabled and its settings set. Known, a rewrite -> the
verified rewritten text filled with this instance's literals, run under DuckDB's own
rules (an instance its slot rendering does not fit runs as written, and so does every
instance of a rewrite stamped by another generation of the rewrite generator than the
current one, :mod:`lqo.sql.rewrite_generation`: the generator may now refuse it). Known, a forced tree -> the verified plan,
filled with this instance's literals from the template's slot rendering; where no slot
rendering fits (the instance has another number of literals), ``render_full`` renders
the plan for this text (a parse, still no model). With ``lqo tune --range-guard``, a
constant-sensitive template (its tuning instances' native times differ widely) serves
its plan only to instances whose numbers and dates lie inside the ranges it was verified
on (:mod:`lqo.book.ranges`); others run as written. Unknown template -> None.

>>> server = BookServer(PlanBook.load("runs/tpcds"))     # doctest: +SKIP
>>> res = server.serve(sql)                              # doctest: +SKIP
>>> res.source, res.planning_ms                          # doctest: +SKIP
('book', 0.04)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import duckdb

from lqo.book.book import BookEntry, PlanBook
from lqo.book.long_lists import LONG_TEXT
from lqo.book.params import BoundText, bind_literals, literal_kinds
from lqo.book.ranges import LiteralRanges, guard_for
from lqo.book.slots import SlotRendering
from lqo.book.template import TemplateKey, bind_parameters, literal_free_text, template_key
from lqo.errors import LqoError
from lqo.optimized import Optimized
from lqo.sql.rewrite_generation import REWRITE_GENERATION
from lqo.trees.plan import Plan

_DOLLAR = re.compile(r"\$")
# (sql, plan) -> the plan rendered for this text; raises LqoError when it does not fit.
FullRenderer = Callable[[str, Plan], str]


class BookServer:
    """Serves known template keys from a plan book, with a cache of recent texts; thread-safe."""

    def __init__(self, book: PlanBook, render_full: FullRenderer | None = None, cache_size: int = 4096,
                 feedback: str | os.PathLike | None = None) -> None:
        self.book = book
        self.render_full = render_full
        # Opt-in: executions of served plans append their latency here (``lqo tune``
        # re-checks a verified choice whose latencies drift above its verified figures).
        self.feedback = Path(feedback) if feedback is not None else None
        # Exact texts recur too (a dashboard's refresh): those skip even the key.
        self._texts: OrderedDict[str, Optimized | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # callers on several threads share the cache
        # Parameterized texts: (text, literal kinds of the values) -> the literal template
        # the values give (its key computed on the first instance) and its parameter tokens.
        self._kinds: dict[tuple[str, tuple[object, ...]], tuple[TemplateKey, BoundText] | None] = {}
        # (literal key, shape, parameter tokens) -> the rendering with the parameters kept.
        self._bound: dict[tuple[str, tuple[int, ...], tuple[str, ...]], str | None] = {}
        # Everything a look-up needs is decoded once, here: plans, slot renderings.
        self._served: dict[str, tuple[BookEntry, Plan | None, SlotRendering | None]] = {}
        # ``lqo tune --range-guard``: constant-sensitive templates' verified literal ranges.
        self._guards: dict[str, LiteralRanges] = {}
        for key, e in book.entries.items():
            c = e.chosen
            plan = Plan.from_json(c.plan) if c.kind == "tree" and c.plan else None
            slots = SlotRendering.from_json(c.slots) if c.kind in ("tree", "rewrite") and c.slots else None
            self._served[key] = (e, plan, slots)
            if (guard := guard_for(book, e)) is not None:
                self._guards[key] = guard
        # Templates kept native, found by their text without literals (a regex, no
        # tokenizer): the look-up is most of what a short native query pays lqo. Only
        # where no other template of the book shares that text: a text that matches by
        # mistake (another query, or an instance of a template not in the book) is then
        # run as written, which is always a right answer, never another template's plan.
        sharing: dict[str, list[BookEntry]] = {}
        for e in book.entries.values():
            sharing.setdefault(literal_free_text(e.sample_sql), []).append(e)
        self._native_by_text = {text: es[0] for text, es in sharing.items()
                                if len(es) == 1 and es[0].chosen.kind == "native"}

    def __contains__(self, sql: str) -> bool:
        return template_key(sql).key in self._served

    def serve(self, sql: str, check: Callable[[str], duckdb.Statement] | None = None) -> Optimized | None:
        """The book's verified choice for ``sql``, or None for an unknown template.

        ``check`` (a text -> DuckDB's parse of it, or an exception) is called once per
        distinct text that the choice runs as written; its parse is kept with the
        choice (``Optimized.statement``)."""
        start = time.perf_counter()
        with self._lock:
            found = sql in self._texts
            if found:
                self._texts.move_to_end(sql)
                hit = self._texts[sql]
        if found:
            return None if hit is None else dataclasses.replace(hit, planning_ms=_ms(start))
        result = self._serve(sql, start)
        if result is not None and check is not None and not result.forced:
            result.statement = check(sql)
        if result is not None and self.feedback is not None:
            result.on_latency = self._record
        with self._lock:
            self._texts[sql] = result
            if len(self._texts) > self._cache_size:
                self._texts.popitem(last=False)
        return result

    def _serve(self, sql: str, start: float) -> Optimized | None:
        # (a long text skips the shortcut: its regular expression would cost more than the key)
        native = self._native_by_text.get(literal_free_text(sql)) if len(sql) <= LONG_TEXT else None
        if native is not None:
            return _as_written(sql, native, start)
        tk = template_key(sql)
        hit = self._served.get(tk.key)
        if hit is None:
            return None
        entry, plan, slots = hit
        if (unforced := self._unforced(sql, entry, lambda: tk, start)) is not None:
            return unforced
        text = slots.fill(tk.literals, tk.shape) if slots is not None else None
        if text is None and self.render_full is not None and plan is not None:
            try:
                text = self.render_full(sql, plan)
            except LqoError as err:
                return Optimized.as_written(sql, f"plan book: the verified plan does not render for this text "
                                            f"({err}): run as written", _ms(start), source="book")
        if text is None:
            why = ("its literal lists have lengths the verified rendering was not checked for"
                   if slots is not None else "the verified plan has no slot rendering")
            return Optimized.as_written(sql, f"plan book: {why}, and rendering the plan anew needs a "
                                        f"model directory with a model: run as written", _ms(start), source="book")
        return _verified(sql, text, plan, entry, start)

    def serve_bound(self, sql: str, params: Any) -> Optimized | None:
        """The book's verified choice for a text with bind parameters and their values
        (:mod:`lqo.book.params`): the plan of the literal template the values give,
        rendered with the parameters kept; None where the book does not know it."""
        start = time.perf_counter()
        kinds = literal_kinds(params)
        if kinds is None:
            return None
        with self._lock:
            cached = (sql, kinds) in self._kinds
            known = self._kinds.get((sql, kinds))
        if not cached:
            bound = bind_literals(sql, params)
            known = None if bound is None else (template_key(bound.sql), bound)
            with self._lock:
                self._kinds[(sql, kinds)] = known
                if len(self._kinds) > self._cache_size:
                    self._kinds.pop(next(iter(self._kinds)))
        if known is None:
            return None
        tk, bound = known
        hit = self._served.get(tk.key)
        if hit is None:
            return None
        entry, _plan, slots = hit

        def literal_key() -> TemplateKey | None:  # this call's values, for a range guard only
            values = bind_literals(sql, params)
            return template_key(values.sql) if values is not None else None

        if (unforced := self._unforced(sql, entry, literal_key, start)) is not None:
            return unforced
        text = self._bound_rendering(tk, bound, slots)
        if text is None:
            return Optimized.as_written(sql, "plan book: the verified plan has no rendering that keeps these "
                                        "parameters: run as written", _ms(start), source="book")
        return _verified(sql, text, _plan, entry, start)

    def _unforced(self, sql: str, entry: BookEntry, literal_key: Callable[[], TemplateKey | None],
                  start: float) -> Optimized | None:
        """The decision for a known template that runs its text as written: native, an
        instance outside a range-guarded template's verified ranges (``literal_key`` gives
        the instance's literals, read only where a guard needs them), a setting arm, or a
        rewrite of another generator generation; None for a tree or a current rewrite,
        which the caller renders."""
        c = entry.chosen
        if c.kind == "native":
            return _as_written(sql, entry, start)
        if c.kind == "rewrite" and c.generation != REWRITE_GENERATION:
            stamp = "no generation" if c.generation is None else f"generation {c.generation}"
            return Optimized.as_written(sql, f"plan book: the rewrite {c.id} of template {entry.template} was "
                                        f"proposed by {stamp} of the rewrite generator, not the current "
                                        f"{REWRITE_GENERATION} (retune to serve it): run as written",
                                        _ms(start), source="book")
        guard = self._guards.get(entry.key)
        if guard is not None:
            tk = literal_key()
            out = guard.outside(tk) if tk is not None else (0, "a value")
            if out is not None:
                return Optimized.as_written(sql, f"plan book: template {entry.template} is constant-sensitive and "
                                            f"{out[1]} lies outside the range its plan was verified on",
                                            _ms(start), source="book")
        if c.kind == "arm":
            return Optimized.as_written(sql, None, _ms(start), disabled=c.disabled, source="book",
                                        settings=c.settings)
        return None

    def _bound_rendering(self, tk: TemplateKey, bound: BoundText, slots: SlotRendering | None) -> str | None:
        """The slot rendering filled with the parameters, only where every parameter is
        in it once filled (a rendering that drops one would bind the values wrongly)."""
        if slots is None:
            return None
        cache_key = (tk.key, tk.shape, bound.tokens)
        with self._lock:
            if cache_key in self._bound:
                return self._bound[cache_key]
        text = slots.fill(bound.fill(), tk.shape)
        if text is not None:
            found = bind_parameters(text)
            wanted = {t[1:] for t in bound.tokens if t[:1] == "$"}
            # every '$' of the rendering must be a parameter token: a slot the rendering
            # quotes (``INTERVAL ' $1' DAY``) or a '$' inside a string is not
            if (found is None or {n for _, _, n in found} != wanted
                    or {m.start() for m in _DOLLAR.finditer(text)} != {s for s, _, _ in found}):
                text = None
        with self._lock:
            self._bound[cache_key] = text
            if len(self._bound) > self._cache_size:
                self._bound.pop(next(iter(self._bound)))
        return text


    def _record(self, res: Optimized, ms: float) -> None:
        entry = self._served.get(template_key(res.original_sql).key)
        if entry is None or self.feedback is None:
            return
        line = json.dumps({"key": entry[0].key, "choice": entry[0].choice, "ms": round(ms, 3), "at": round(time.time(), 1)})
        with open(self.feedback, "a") as fh:  # one short line per write: appends do not interleave
            fh.write(line + "\n")


def read_feedback(path: str | os.PathLike) -> dict[tuple[str, str], list[float]]:
    """Recorded latencies per (template key, choice); a torn last line is skipped."""
    out: dict[tuple[str, str], list[float]] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            d = json.loads(line)
            out.setdefault((d["key"], d["choice"]), []).append(float(d["ms"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _verified(sql: str, text: str, plan: Plan | None, entry: BookEntry, start: float) -> Optimized:
    """The entry's verified choice with this instance's literals: a rewrite runs its text
    as written, a tree forced (with its extra rules and settings)."""
    c = entry.chosen
    if c.kind == "rewrite":
        return Optimized.rewritten(sql, text, _ms(start))
    return Optimized.from_book(sql, text, plan, _ms(start), disabled=c.disabled, settings=c.settings)


def _as_written(sql: str, entry: BookEntry, start: float) -> Optimized:
    why = (f"plan book: native verified for template {entry.template}" if entry.native_ms
           else f"plan book: template {entry.template} left native ({entry.note or 'not measured'})")
    return Optimized.as_written(sql, why, _ms(start), source="book")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
