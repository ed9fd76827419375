"""Where a template's verified plan was verified: the ranges of its numeric and date literals.

A plan is accepted on a template's tuning instances (:mod:`lqo.tune.accept`). For most
templates the constants hardly change what the best plan is; for some they decide it:
TPC-H q10 selects orders between two dates, its instances select from a few months to
six years of orders (native 77-591 ms), and a plan 0.57x native on its three tuning
instances ran 1.01-1.39x on three others. Such a template shows it while tuning: the
native latencies of its tuning instances differ by more than ``SENSITIVE_SPREAD``. For
those templates only, an instance whose numbers or dates fall outside the ranges the
tuning instances covered is outside what was verified, and runs as written.

Opt-in (``lqo tune --range-guard``, recorded in the book): measured, it costs more than it
saves. On TPC-H SF1 the plan q10 adopted in a later run ran its three held-out instances
(all outside the ranges) at 0.90x, 0.49x and 1.08x, and at sf 0.1 at 0.43x: the guard
sent them all back to native. On TPC-DS SF1 it held back q37 (0.82-0.88x).

(Applied to every template instead, the guard sent 43-44 of the 78-81 TPC-DS SF1
held-out instances served a plan back to native, although the plan ran them at a
geometric mean of 0.77-0.79x: a year or a quantity outside three tuning values rarely
changes the best plan where the native time does not move.)

>>> from lqo.book.template import template_key
>>> sql = "SELECT * FROM t WHERE a > {} AND d < date '{}' AND s = '{}' AND b IN ({})"
>>> tuned = [template_key(sql.format(1, "1994-01-01", "BUILDING", "7, 9")),
...          template_key(sql.format(5, "1995-06-01", "MACHINERY", "8"))]
>>> r = LiteralRanges.build(tuned)
>>> r.spans
((1.0, 5.0), (727929.0, 728445.0), None, (7.0, 9.0))
>>> r.outside(template_key(sql.format(3, "1994-11-30", "HOUSEHOLD", "9, 8, 7"))) is None
True
>>> r.outside(template_key(sql.format(3, "1997-01-01", "BUILDING", "8")))
(1, "'1997-01-01'")
>>> LiteralRanges.from_json(r.to_json()) == r
True
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Sequence

from lqo.book.book import BookEntry, PlanBook
from lqo.book.template import TemplateKey

# Tuning instances whose native latencies differ by more than this factor (largest over
# smallest) make a template constant-sensitive: its verified plan is served only inside
# the literal ranges it was verified on.
SENSITIVE_SPREAD = 2.0


def literal_value(token: str) -> float | None:
    """A literal token as a number: numbers as themselves, ISO dates as day ordinals;
    None for anything else (text, which is compared as a category, not a range).

    >>> literal_value("-2.5"), literal_value("'2000-03-01'"), literal_value("'M'")
    (-2.5, 730180.0, None)
    """
    s = token.strip("'")
    try:
        return float(s)
    except ValueError:
        pass
    if len(s) == 10 and s[4:5] == "-":
        try:
            return float(datetime.date.fromisoformat(s).toordinal())
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class LiteralRanges:
    """Per slot of the template key (a literal, or a list of literals), ``(low, high)``
    over the tuning instances' values, or None where a value is not a number or date."""

    spans: tuple[tuple[float, float] | None, ...]

    @classmethod
    def build(cls, keys: Sequence[TemplateKey]) -> "LiteralRanges":
        """The ranges spanned by the literals of ``keys`` (one template's tuning instances)."""
        per_slot: list[list[float | None]] = []
        for k in keys:
            for i, values in enumerate(_slots(k)):
                if i == len(per_slot):
                    per_slot.append([])
                per_slot[i] += [literal_value(v) for v in values]
        return cls(tuple(_span(vs) for vs in per_slot))

    def outside(self, key: TemplateKey) -> tuple[int, str] | None:
        """The first slot (0-based) with a value outside its range, with that value; None
        when every numeric slot lies inside."""
        for i, (span, values) in enumerate(zip(self.spans, _slots(key))):
            if span is None:
                continue
            for v in values:
                x = literal_value(v)
                if x is None or not span[0] <= x <= span[1]:
                    return i, v
        return None

    def to_json(self) -> list:
        """The ranges as plain JSON data."""
        return [None if s is None else [s[0], s[1]] for s in self.spans]

    @classmethod
    def from_json(cls, data: list) -> "LiteralRanges":
        """Ranges from their JSON."""
        return cls(tuple(None if s is None else (float(s[0]), float(s[1])) for s in data))


def _span(values: list[float | None]) -> tuple[float, float] | None:
    """``(min, max)`` of ``values``; None if there are none or one is None."""
    numbers = [v for v in values if v is not None]
    return (min(numbers), max(numbers)) if numbers and len(numbers) == len(values) else None


def guard_for(book: PlanBook, entry: BookEntry) -> LiteralRanges | None:
    """The ranges ``entry``'s plan is served inside, or None where it is served everywhere:
    the book was tuned without ``--range-guard``, the choice is native, no ranges were
    recorded, or the template is not constant-sensitive."""
    if not book.meta.get("range_guard") or entry.choice == "native" or entry.ranges is None:
        return None
    return LiteralRanges.from_json(entry.ranges) if constant_sensitive(list(entry.native_ms.values())) else None


def constant_sensitive(native_ms: Sequence[float]) -> bool:
    """Whether tuning instances' native latencies differ by more than ``SENSITIVE_SPREAD``.

    >>> constant_sensitive([77.0, 120.0, 591.0]), constant_sensitive([40.0, 44.0, 52.0])
    (True, False)
    """
    ok = [x for x in native_ms if x > 0]
    return len(ok) >= 2 and max(ok) > SENSITIVE_SPREAD * min(ok)


def _slots(key: TemplateKey) -> list[tuple[str, ...]]:
    out, i = [], 0
    for n in key.shape:
        out.append(key.literals[i:i + n])
        i += n
    return out
