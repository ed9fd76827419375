"""Rewrite candidates (lqo.tune.rewrite_arms): proposed where the plan is new, run by the
tuner and served by the book for instances with other constants, each instance's own
rewrite, the rows native's (duplicates, NULL keys); an instance the rendering does not
fit runs as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import duckdb
import pytest

from lqo.book.book import PlanBook
from lqo.book.serve import BookServer
from lqo.book.template import template_key
from lqo.engine.run_result import fingerprint_rows
from lqo.sql.catalog import Catalog
from lqo.sql.rewrite_generation import REWRITE_GENERATION
from lqo.sql.rewrites import apply_rewrite
from lqo.tune.rewrite_arms import rewrite_candidates, rewrite_text
from lqo.tune.trials import recorded_plan, variant

TEMPLATE = ("SELECT d.k, d.a FROM d WHERE d.b > {} * (SELECT avg(y) FROM f WHERE f.k = d.k AND f.g <> {}) "
            "AND d.a IN ({})")


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    path = tmp_path_factory.mktemp("rw") / "rw.duckdb"
    c = duckdb.connect(str(path))
    # duplicate fact rows, NULL keys on both sides, NULL measures, duplicate dimension keys
    c.execute("CREATE TABLE f AS SELECT (i % 7)::INTEGER AS k, (i % 3)::INTEGER AS g, "
              "CASE WHEN i % 11 = 0 THEN NULL ELSE (i % 13)::INTEGER END AS y FROM range(2000) t(i)")
    c.execute("INSERT INTO f VALUES (NULL, 1, 5), (NULL, 2, 9), (3, 1, NULL), (3, 1, NULL)")
    c.execute("CREATE TABLE d AS SELECT (i % 9)::INTEGER AS k, chr(97 + (i % 4)::INTEGER) AS a, "
              "(i % 17)::INTEGER AS b FROM range(60) t(i)")
    c.execute("INSERT INTO d VALUES (NULL, 'a', 16), (NULL, 'b', 0), (8, 'a', 16)")
    yield c
    c.close()


def _book(con: duckdb.DuckDBPyConnection, tuned: str) -> tuple[PlanBook, str]:
    catalog = Catalog.from_connection(con)
    book = PlanBook(schema=catalog.fingerprint)
    e = book.entry(template_key(tuned).key, "t", tuned)
    cands = rewrite_candidates(con, catalog, tuned)
    assert [c.id for c in cands] == ["rewrite:decorrelate:1"]
    e.candidates[cands[0].id] = cands[0]
    e.adopt(cands[0].id)
    return book, cands[0].id


def test_a_served_rewrite_is_each_instances_own_rewrite_with_natives_rows(con: duckdb.DuckDBPyConnection,
                                                                        tmp_path: Path) -> None:
    book, cid = _book(con, TEMPLATE.format("1.0", 0, "'a', 'b'"))
    book.save(tmp_path / "book.json")
    server = BookServer(PlanBook.load(tmp_path / "book.json"))
    cat = Catalog.from_connection(con).tables
    for factor, g, items in [("0.5", 1, "'c', 'a'"), ("1.5", 2, "'b', 'd'"), ("0.0", 0, "'a', 'c'")]:
        sql = TEMPLATE.format(factor, g, items)
        res = server.serve(sql)
        assert res is not None and res.source == "book" and not res.forced and res.rules == ()
        assert res.sql == apply_rewrite(sql, "decorrelate:1", cat) != sql
        assert "lqo_sq1" in res.sql and f"<> {g}" in res.sql
        want = con.execute(sql).fetchall()
        got = res.execute(con)
        assert fingerprint_rows(got) == fingerprint_rows(want) and len(got) == len(want)
        assert got  # the data has rows to lose
    # a list of another length: the rendering was not checked for it, the text runs as written
    other = TEMPLATE.format("1.0", 0, "'a'")
    res = server.serve(other)
    assert res is not None and res.sql == other and not res.forced and res.fallback


@pytest.mark.parametrize("stamp", [None, REWRITE_GENERATION - 1])
def test_a_rewrite_of_another_generator_generation_runs_as_written(con: duckdb.DuckDBPyConnection, tmp_path: Path,
                                                                  stamp: int | None) -> None:
    """A book keeps a rewrite's rendered text: one proposed by an older generator (or
    written before the stamp) may be one the current generator refuses."""
    book, cid = _book(con, TEMPLATE.format("1.0", 0, "'a', 'b'"))
    entry = next(iter(book.entries.values()))
    assert entry.candidates[cid].generation == REWRITE_GENERATION
    data = book.to_json()
    for e in data["templates"]:
        for c in e["candidates"]:
            c.pop("generation")
            if stamp is not None:
                c["generation"] = stamp
    (tmp_path / "book.json").write_text(json.dumps(data))
    server = BookServer(PlanBook.load(tmp_path / "book.json"))
    sql = TEMPLATE.format("0.5", 1, "'c', 'a'")
    res = server.serve(sql)
    assert res is not None and res.source == "book" and res.sql == sql and not res.forced
    assert res.fallback and "generation" in res.fallback, res.fallback
    # the current stamp serves the rewrite
    current = BookServer(book).serve(sql)
    assert current is not None and current.sql != sql and "lqo_sq1" in current.sql


def test_the_tuner_runs_a_rewrite_per_instance(con: duckdb.DuckDBPyConnection) -> None:
    catalog = Catalog.from_connection(con)
    book, cid = _book(con, TEMPLATE.format("1.0", 0, "'a', 'b'"))
    c = next(iter(book.entries.values())).candidates[cid]
    sql = TEMPLATE.format("2.0", 1, "'b', 'c'")
    text, forced, disabled, settings = variant(c, sql, catalog)
    assert (forced, disabled, settings) == (False, (), ())
    assert text == apply_rewrite(sql, "decorrelate:1", catalog.tables)
    assert recorded_plan(c) == {"rewrite": "decorrelate:1"}
    # another list length: the rewrite is made anew for that text
    sql = TEMPLATE.format("2.0", 1, "'b', 'c', 'd'")
    assert rewrite_text(c, sql, catalog) == apply_rewrite(sql, "decorrelate:1", catalog.tables)


def test_no_rewrite_candidate_where_the_generator_refuses(con: duckdb.DuckDBPyConnection) -> None:
    catalog = Catalog.from_connection(con)
    # count(*) is 0 on an empty group: never decorrelated into a join
    sql = "SELECT d.k FROM d WHERE d.b > (SELECT count(*) FROM f WHERE f.k = d.k)"
    assert rewrite_candidates(con, catalog, sql) == []


def test_lqo_connect_serves_a_rewrite_with_natives_rows(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    """A rewrite changes only the text (no tree forced, no rule or setting): the drop-in
    connection ran such a decision as written."""
    import lqo

    book, _ = _book(con, TEMPLATE.format("1.0", 0, "'a', 'b'"))
    book.save(tmp_path / "book.json")
    served = lqo.wrap(con.cursor(), book=tmp_path)
    for factor, g, items in [("0.5", 1, "'c', 'a'"), ("1.5", 2, "'b', 'd'")]:
        sql = TEMPLATE.format(factor, g, items)
        got = served.execute(sql).fetchall()
        assert served.last is not None and served.last.sql == apply_rewrite(sql, "decorrelate:1",
                                                                            Catalog.from_connection(con).tables)
        assert fingerprint_rows(got) == fingerprint_rows(con.execute(sql).fetchall()) and got
    # bound parameters: the literal template's rewrite, the values kept as parameters
    q = TEMPLATE.format("?", "?", "?, ?")
    got = served.execute(q, [1.5, 2, "b", "d"]).fetchall()
    assert served.last is not None and "lqo_sq1" in served.last.sql
    assert fingerprint_rows(got) == fingerprint_rows(con.execute(q, [1.5, 2, "b", "d"]).fetchall())
