"""lqo.sql.rewrites: every rewrite returns the original's bag of rows (duplicates, NULL
keys, empty groups), and shapes it cannot prove are refused."""

from __future__ import annotations

from typing import Iterator

import duckdb
import pytest

from lqo.engine.run_result import fingerprint_rows
from lqo.sql.catalog import Catalog
from lqo.sql.rewrites import Columns, parse, rewrites


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    # Adversarial data: duplicate fact rows, NULL keys on both sides, NULL measures, a
    # dimension key with duplicates (the join is N:M), groups with only NULL measures,
    # outer keys with no inner group.
    c.execute("CREATE TABLE f (k INTEGER, g INTEGER, x DECIMAL(7,2), y INTEGER)")
    c.execute("""INSERT INTO f VALUES (1, 1, 1.50, 1), (1, 1, 1.50, 1), (1, 2, NULL, NULL), (2, 1, 4.00, 7),
                 (NULL, 1, 9.00, 2), (NULL, NULL, 3.00, 3), (3, 2, NULL, NULL), (5, 1, 2.25, 4), (5, 1, 2.25, 4)""")
    c.execute("CREATE TABLE d (k INTEGER, a VARCHAR, b INTEGER)")
    c.execute("""INSERT INTO d VALUES (1, 'p', 10), (1, 'q', 10), (2, 'p', 20), (3, NULL, 30), (NULL, 'p', 40),
                 (4, 'r', 50), (5, 'p', 60)""")
    c.execute("CREATE TABLE e (g INTEGER, c VARCHAR)")
    c.execute("INSERT INTO e VALUES (1, 'one'), (1, 'uno'), (2, 'two'), (NULL, 'none')")
    c.execute("CREATE TABLE fl (k DOUBLE, v INTEGER)")
    c.execute("INSERT INTO fl VALUES (0.0, 1), (-0.0, 2)")
    yield c
    c.close()


@pytest.fixture(scope="module")
def cat(con: duckdb.DuckDBPyConnection) -> Columns:
    return Catalog.from_connection(con).tables


def _same(con: duckdb.DuckDBPyConnection, sql: str, rewritten: str) -> None:
    want = con.execute(sql).fetchall()
    got = con.execute(rewritten).fetchall()
    assert fingerprint_rows(got) == fingerprint_rows(want), (sql, rewritten, want, got)
    assert len(got) == len(want)


def _all(con: duckdb.DuckDBPyConnection, cat: Columns, sql: str, family: str, n: int | None = None) -> list:
    rws = [r for r in rewrites(sql, cat) if r.family == family]
    if n is not None:
        assert len(rws) == n, [r.label for r in rws]
    for r in rws:
        _same(con, sql, r.sql)
    return rws


DECORRELATE_OK = [
    "SELECT d.k, d.a FROM d WHERE d.b > (SELECT avg(y) FROM f WHERE f.k = d.k)",
    "SELECT d.k, d.a FROM d WHERE d.b / 10 >= (SELECT 0.5 * sum(y) FROM f WHERE f.k = d.k AND f.g = 1)",
    "SELECT d.* FROM d WHERE d.b > 2 * (SELECT min(x) FROM f WHERE f.k = d.k) AND d.a = 'p'",
    "SELECT d.a, e.c FROM d, e WHERE e.g = (SELECT max(g) FROM f WHERE f.k = d.k AND f.y = d.k)",
    # the subquery in an IN subquery's WHERE, correlated to that subquery
    "SELECT * FROM e WHERE e.g IN (SELECT d.k FROM d WHERE d.b > (SELECT sum(y) FROM f WHERE f.k = d.k))",
    # duplicates in the outer rows and an unqualified outer column
    "SELECT a FROM d WHERE b >= (SELECT avg(y) FROM f WHERE f.g = d.k)",
]


@pytest.mark.parametrize("sql", DECORRELATE_OK)
def test_decorrelate_keeps_the_bag(con: duckdb.DuckDBPyConnection, cat: Columns, sql: str) -> None:
    assert _all(con, cat, sql, "decorrelate", 1)


DECORRELATE_REFUSED = [
    # count is 0 on an empty group, not NULL: the join would drop outer rows
    "SELECT d.k FROM d WHERE d.b > (SELECT count(*) FROM f WHERE f.k = d.k)",
    "SELECT d.k FROM d WHERE d.b > (SELECT coalesce(sum(y), 0) FROM f WHERE f.k = d.k)",
    # not a WHERE conjunct: under OR or NOT the NULL does not drop the row
    "SELECT d.k FROM d WHERE d.b > (SELECT sum(y) FROM f WHERE f.k = d.k) OR d.a = 'p'",
    # a correlation other than an equality of columns
    "SELECT d.k FROM d WHERE d.b > (SELECT sum(y) FROM f WHERE f.k < d.k)",
    "SELECT d.k FROM d WHERE d.b > (SELECT sum(y) FROM f WHERE f.k = d.k AND f.y = d.b / 10)",
    # a float key: grouping and = may differ (-0.0 and 0.0)
    "SELECT d.k FROM d WHERE d.b > (SELECT sum(v) FROM fl WHERE fl.k = d.k)",
    # LIMIT, GROUP BY in the subquery
    "SELECT d.k FROM d WHERE d.b > (SELECT sum(y) FROM f WHERE f.k = d.k LIMIT 1)",
    # SELECT * would read the added derived table
    "SELECT * FROM d WHERE d.b > (SELECT sum(y) FROM f WHERE f.k = d.k)",
    # an uncorrelated subquery
    "SELECT d.k FROM d WHERE d.b > (SELECT sum(y) FROM f)",
]


@pytest.mark.parametrize("sql", DECORRELATE_REFUSED)
def test_decorrelate_refuses(con: duckdb.DuckDBPyConnection, cat: Columns, sql: str) -> None:
    con.execute(sql).fetchall()  # the query itself is valid
    assert not [r for r in rewrites(sql, cat) if r.family == "decorrelate"]


EAGER_OK = [
    "SELECT d.a, sum(f.x), count(*), count(f.x), min(f.y), max(f.y) FROM f, d WHERE f.k = d.k GROUP BY d.a",
    "SELECT a, sum(y), sum(x), count(x) FROM f JOIN d ON f.k = d.k WHERE f.g = 1 AND d.b > 5 GROUP BY a",
    # two dimensions, the fact's own column grouped, a filter on the fact
    "SELECT e.c, f.g, sum(x) s FROM f, d, e WHERE f.k = d.k AND f.g = e.g AND y IS NOT NULL GROUP BY e.c, f.g "
    "HAVING sum(x) > 1 ORDER BY s",
    # an aggregate under a window, a join predicate mixing fact and dimension
    "SELECT d.a, sum(sum(f.y)) OVER (PARTITION BY d.a) FROM f, d WHERE f.k = d.k AND f.y < d.b GROUP BY d.a, d.b",
]


@pytest.mark.parametrize("sql", EAGER_OK)
def test_eager_aggregation_keeps_the_bag(con: duckdb.DuckDBPyConnection, cat: Columns, sql: str) -> None:
    assert _all(con, cat, sql, "eager_agg", 1)


EAGER_REFUSED = [
    "SELECT d.a, count(DISTINCT f.y) FROM f, d WHERE f.k = d.k GROUP BY d.a",
    "SELECT d.a, sum(f.y) FROM f LEFT JOIN d ON f.k = d.k GROUP BY d.a",
    "SELECT d.a, sum(f.y + d.b) FROM f, d WHERE f.k = d.k GROUP BY d.a",
    "SELECT d.a, sum(f.y) FROM f, d WHERE f.k = d.k GROUP BY ROLLUP (d.a)",
    "SELECT sum(f.y) FROM f, d WHERE f.k = d.k",  # no GROUP BY: count of no rows is 0
    "SELECT d.a, sum(f.y) FROM f, d WHERE f.k = d.k AND f.g IN (SELECT g FROM e) GROUP BY d.a",
    "SELECT d.a, sum(f.y) FILTER (WHERE f.g = 1) FROM f, d WHERE f.k = d.k GROUP BY d.a",
    # avg divides otherwise than DuckDB; a computed argument is computed on rows the joins drop
    "SELECT a, avg(y) FROM f JOIN d ON f.k = d.k GROUP BY a",
    "SELECT a, sum(x * 2) FROM f JOIN d ON f.k = d.k GROUP BY a",
]


@pytest.mark.parametrize("sql", EAGER_REFUSED)
def test_eager_aggregation_refuses(con: duckdb.DuckDBPyConnection, cat: Columns, sql: str) -> None:
    con.execute(sql).fetchall()
    assert not [r for r in rewrites(sql, cat) if r.family == "eager_agg"]


def test_cte_marks_each_cte_against_duckdbs_default(con: duckdb.DuckDBPyConnection, cat: Columns) -> None:
    sql = ("WITH once AS (SELECT k, sum(y) s FROM f GROUP BY k), twice AS (SELECT k, a FROM d WHERE b > 10) "
           "SELECT * FROM once JOIN twice t1 USING (k) JOIN twice t2 ON t1.a = t2.a")
    rws = _all(con, cat, sql, "cte", 2)
    assert sorted(r.label for r in rws) == ["cte:once=materialized", "cte:twice=not_materialized"]
    assert "once AS MATERIALIZED" in rws[0].sql or "once AS MATERIALIZED" in rws[1].sql


@pytest.mark.parametrize("sql", [
    "WITH c AS (SELECT k FROM f LIMIT 2) SELECT * FROM c a, c b",           # LIMIT: which rows differs per read
    "WITH c AS (SELECT k, random() r FROM f) SELECT * FROM c a, c b",       # volatile
    "WITH c AS MATERIALIZED (SELECT k FROM f) SELECT * FROM c a, c b",      # written by the user: kept
    "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT * FROM c",
])
def test_cte_refuses(con: duckdb.DuckDBPyConnection, cat: Columns, sql: str) -> None:
    assert not [r for r in rewrites(sql, cat) if r.family == "cte"]


def test_unparsable_text_has_no_rewrite(cat: Columns) -> None:
    assert parse("SELECT (") is None
    assert rewrites("SELECT (", cat) == []
    assert rewrites("SELECT 1; SELECT 2", cat) == []
