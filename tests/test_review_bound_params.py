"""Reproducers from an adversarial review of bind parameters served from a plan book, the
long-list fast path of ``template_key`` and the query log: each was a failure, each is
fixed, and they stay as regression tests."""

from __future__ import annotations

import decimal

import duckdb
import pytest

import lqo
from lqo.book import template
from lqo.book.book import Candidate, PlanBook
from lqo.book.slots import SlotRendering
from lqo.book.template import template_key
from lqo.errors import WorkloadError
from lqo.sql.catalog import Catalog
from lqo.trees.query import prepare
from lqo.workloads import query_log
from lqo.workloads.query_log import QueryLog, read_query_log

J = "FROM customer, orders, nation WHERE c_custkey = o_custkey AND c_nationkey = n_nationkey"
DATE_T = f"SELECT count(*) AS n {J} AND o_orderdate < DATE {{}}"
INTERVAL_T = f"SELECT count(*) AS n {J} AND o_orderdate < DATE '1995-01-01' + INTERVAL {{0}} DAY AND o_orderkey > {{0}}"
TREE = ("SELECT n_name, count(*) AS n FROM customer, orders, nation WHERE c_custkey = o_custkey "
        "AND c_nationkey = n_nationkey AND o_orderstatus IN ({}) AND c_acctbal > {} GROUP BY n_name ORDER BY n_name")
NAMES = ["'Customer#%09d'" % i for i in range(1, 301)]
LONG_T = "SELECT count(*) AS n FROM customer, orders WHERE c_custkey = o_custkey AND c_name IN ({})"


@pytest.fixture(scope="module")
def served(tpch_db, tmp_path_factory):
    """A book whose templates run a forced tree (DuckDB's own join order, rendered
    explicitly): the connection serving it and a plain DuckDB connection."""
    path = tmp_path_factory.mktemp("review_book")
    con = duckdb.connect(str(tpch_db), read_only=True)
    catalog = Catalog.from_connection(con)
    book = PlanBook(schema=catalog.fingerprint)
    tuned = [DATE_T.format("'1995-01-01'"), INTERVAL_T.format(30), TREE.format("'F', 'O'", 100),
             LONG_T.format(", ".join(NAMES))]
    for i, sql in enumerate(tuned):
        e = book.entry(template_key(sql).key, f"t{i}", sql)
        plan = prepare(sql, con, catalog).native_plan
        e.candidates["tree:n"] = Candidate("tree:n", "tree", (), plan.to_json(),
                                           SlotRendering.build(sql, catalog, plan).to_json())
        e.adopt("tree:n")
    con.close()
    book.save(path / "book.json")
    app = lqo.connect(tpch_db, book=path)
    native = duckdb.connect(str(tpch_db), read_only=True)
    yield app, native
    app.close()
    native.close()


def _outcome(con, sql, params=None):
    try:
        return "rows", con.execute(sql, params).fetchall()
    except Exception as err:  # noqa: BLE001 - the exception's class is the outcome
        return "error", type(err).__name__


# ----- bind parameters ---------------------------------------------------------------------

def test_a_type_name_before_a_parameter_is_not_a_typed_literal(served):
    app, native = served
    sql = DATE_T.format("?")
    assert _outcome(native, sql, ["1995-01-01"]) == ("error", "ParserException")
    assert _outcome(app, sql, ["1995-01-01"]) == ("error", "ParserException")


def test_a_parameter_rendered_inside_quotes_is_never_served(served):
    app, native = served
    sql = INTERVAL_T.format("$1")
    assert _outcome(native, sql, [30]) == ("error", "ParserException")
    assert _outcome(app, sql, [30]) == ("error", "ParserException")


def test_numpy_array_parameters_run_as_duckdb_runs_them(served):
    np = pytest.importorskip("numpy")
    app, native = served
    sql, params = TREE.format("?, ?", "?"), np.array(["F", "O", 100], dtype=object)
    expected = _outcome(native, sql, params)
    assert expected[0] == "rows"
    assert _outcome(app, sql, params) == expected


def test_a_dict_with_a_non_string_key_gets_duckdbs_error(served):
    app, native = served
    sql, params = TREE.format("$a", "$b"), {"a": "F", "b": 5, 3: 4}
    assert _outcome(native, sql, params) == ("error", "InvalidInputException")
    assert _outcome(app, sql, params) == ("error", "InvalidInputException")


# ----- long lists ---------------------------------------------------------------------------

@pytest.mark.parametrize("space", ["\x0b", "\x1c", "\x85", "\u2028", "\xa0"])
def test_cut_key_with_odd_whitespace_between_strings(space):
    sql = LONG_T.format(("," + space).join(NAMES[:100])) + " AND c_comment <> '" + "p" * template.LONG_TEXT + "'"
    assert template_key(sql) == template._template_key(sql)


def test_a_long_list_duckdb_cannot_parse_is_not_served(served):
    app, native = served
    sql = LONG_T.format(",\x0b".join(NAMES[:250]))
    assert _outcome(native, sql) == ("error", "ParserException")
    assert _outcome(app, sql) == ("error", "ParserException")


# ----- query log ----------------------------------------------------------------------------

def test_a_last_line_torn_after_a_typed_value_is_skipped(tmp_path):
    log = QueryLog(tmp_path / "q.jsonl")
    log.record("SELECT 1 WHERE ? > 0", [decimal.Decimal("1.5")], 1.0)
    log.close()
    text = (tmp_path / "q.jsonl").read_text()
    torn = text.splitlines()[0]
    torn = torn[:torn.index("}") + 1]  # '{"sql": ..., "params": [{"decimal": "1.5"}'
    (tmp_path / "torn.jsonl").write_text(text + torn)
    try:
        got = list(read_query_log(tmp_path / "torn.jsonl"))
    except WorkloadError:
        got = None
    assert got is not None and len(got) == 1


def test_the_capture_limit_is_in_bytes(tmp_path):
    log = QueryLog(tmp_path / "q.jsonl", limit_mb=0.0002)  # 200 bytes
    for _ in range(10):
        log.record("SELECT '" + "\u20ac" * 30 + "'", None, 1.0)
    log.close()
    assert (tmp_path / "q.jsonl").stat().st_size <= 200


def test_a_record_racing_close_is_dropped(tmp_path, monkeypatch):
    log = QueryLog(tmp_path / "q.jsonl")

    class _Clock:  # the other thread's close() lands between the check and the lock
        @staticmethod
        def time() -> float:
            log.close()
            return 0.0

    monkeypatch.setattr(query_log, "time", _Clock)
    log.record("SELECT 1", None, 1.0)  # documented: records after close are dropped
