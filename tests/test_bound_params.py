"""Bind parameters: served by the plan of their literal template, with the parameters
kept as parameters, always DuckDB's result; captured into a query log; imported."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import threading

import duckdb
import pytest
from test_connection import TREE
from test_connection import _book as _connection_book

import lqo
from lqo.book.book import PlanBook
from lqo.book.params import bind_literals, literal_kinds, sql_literal
from lqo.book.serve import BookServer
from lqo.book.slots import SlotRendering
from lqo.book.template import bind_parameters, template_key
from lqo.cli import main
from lqo.workloads.query_log import QueryLog, read_query_log
from lqo.workloads.workload import Workload

ARM = "SELECT count(*) AS n FROM lineitem, orders WHERE l_orderkey = o_orderkey AND o_orderkey % {} = 0"


def _book(path, con) -> None:
    """TREE forced with DuckDB's own tree, ARM (no current_setting column) under an arm."""
    _connection_book(path, con, ARM)


@pytest.fixture(scope="module")
def book_dir(tpch_db, tmp_path_factory):
    path = tmp_path_factory.mktemp("book")
    con = duckdb.connect(str(tpch_db), read_only=True)
    _book(path, con)
    con.close()
    return path


def test_literals_are_written_as_their_template_reads_them():
    assert [sql_literal(v) for v in (0, -7, 1e-05, decimal.Decimal("2.50"), "a'b",
                                     dt.datetime(2000, 1, 2, 3, 4, 5))] == [
        "0", "-7", "1e-05", "2.50", "'a''b'", "'2000-01-02 03:04:05'"]
    assert [sql_literal(v) for v in (True, None, b"x", [1], float("nan"), decimal.Decimal("1E+3"),
                                     dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))] == [None] * 7
    # the same template key as the literal text a user would have written
    b = bind_literals("SELECT * FROM t WHERE a = ? AND b IN (?, ?) AND c = 'k'", [5, "x", "y"])
    assert template_key(b.sql).key == template_key("SELECT * FROM t WHERE a=9 AND b IN ('p','q','r') AND c='z'").key
    assert b.tokens == ("$1", "$2", "$3", "'k'")


@pytest.mark.parametrize("sql, params", [
    ("SELECT * FROM t WHERE a = ? AND b = ?", [1]),              # too few values
    ("SELECT * FROM t WHERE a = ? AND b = $2", [1, 2]),          # mixed styles
    ("SELECT * FROM t WHERE a = $x", [1]),                       # a name, but a list
    ("SELECT * FROM t WHERE a = ?", {"a": 1}),                   # a dict for '?'
    ("SELECT * FROM t WHERE a - ? > 0", [-5]),                   # never 'a --5'
    ("SELECT * FROM t WHERE a = -?", [5]),                       # a sign outside the value
    ("SELECT * FROM t WHERE a = ?", [None]),
    ("SELECT * FROM t WHERE a = ?", [True]),
    ("SELECT * FROM t WHERE a = 'unterminated", []),
])
def test_what_cannot_be_written_exactly_is_refused(sql, params):
    b = bind_literals(sql, params)
    if b is not None:  # 'a - ?' with -5 is written 'a - -5', one literal of its own
        assert "--" not in b.sql and template_key(b.sql).literals == ("-5", "0")
        assert b.tokens == ("$1", "0")


def test_parameters_are_found_by_duckdbs_tokens_not_in_strings_or_names():
    assert bind_parameters("SELECT '?' AS \"$1\", ? FROM t -- ?\n WHERE x = $2") == [(20, 21, ""), (45, 47, "2")]
    assert bind_parameters("SELECT data ?| ARRAY['a'] FROM t") is None
    assert literal_kinds({"b": 1, "a": "x"}) == literal_kinds({"a": "y", "b": 2})


def test_a_bound_text_runs_its_verified_plan_with_the_parameters_kept(tpch_db, book_dir):
    native = duckdb.connect(str(tpch_db), read_only=True)
    con = lqo.connect(tpch_db, book=book_dir)
    cases = [
        (TREE.format("?, ?", "?"), ["F", "O", 100]),
        (TREE.format("?, ?, ?", "?"), ["P", "O", "F", -250]),    # another list length, a negative value
        (TREE.format("?", "?"), ["F", 9000]),
        (TREE.format("$2, $3", "$1"), [500, "O", "F"]),           # numbered out of order
        (TREE.format("$a, $b", "$bal"), {"bal": 0, "a": "F", "b": "it's"}),
        (TREE.format("'F', ?", "?"), ["O", 10]),                  # a literal of its own next to a parameter
    ]
    for sql, params in cases:
        rows = con.execute(sql, params).fetchall()
        assert con.last is not None and con.last.forced, (sql, con.last and con.last.why)
        kept = {n for _, _, n in bind_parameters(con.last.sql)}
        assert kept == {n for _, _, n in bind_parameters(sql)} - {""} | ({str(i + 1) for i in range(sql.count("?"))})
        assert rows == native.execute(sql, params).fetchall(), sql
        assert con.sql(sql, params=params).fetchall() == rows
    # a float where the book verified an integer is another template: as written, right
    sql, params = TREE.format("?", "?"), ["F", 100.5]
    assert con.execute(sql, params).fetchall() == native.execute(sql, params).fetchall() and con.last is None
    # an arm: the text as written, under the arm's rules, with the caller's values
    assert con.execute(ARM.format("?"), [7]).fetchall() == native.execute(ARM.format(7)).fetchall()
    assert con.last is not None and con.last.disabled == ("join_filter_pushdown",) and con.last.sql == ARM.format("?")
    # values lqo cannot write as literals: DuckDB's own answer, unchanged
    for params in (["F", None], [None, 5]):
        sql = TREE.format("?", "?")
        assert con.execute(sql, params).fetchall() == native.execute(sql, params).fetchall()
        assert con.last is None
    con.close()
    native.close()


def test_a_rendering_that_drops_a_parameter_is_never_served(tpch_db, book_dir):
    book = PlanBook.load(book_dir / "book.json")
    tuned = TREE.format("'F', 'O'", 100)
    e = book.entries[template_key(tuned).key]
    c = e.candidates["tree:n"]
    rendering = SlotRendering.from_json(c.slots)
    # the same rendering with the balance slot written in as a constant: a parameter lost
    parts = tuple("100" if p == (1, 0) else p for p in rendering.parts)
    e.candidates["tree:n"] = dataclasses.replace(c, slots=SlotRendering(parts, rendering.shape).to_json())
    server = BookServer(book)
    res = server.serve_bound(TREE.format("?, ?", "?"), ["F", "O", 5])
    assert res is not None and not res.forced and "keeps these parameters" in res.fallback


def test_threads_with_bound_values_get_duckdbs_answers(tpch_db, book_dir):
    con = lqo.connect(tpch_db, book=book_dir)
    native = duckdb.connect(str(tpch_db), read_only=True)
    sql = TREE.format("?, ?", "?")
    values = [["F", "O", b] for b in range(-500, 9500, 500)]
    expected = {v[2]: native.execute(sql, v).fetchall() for v in values}
    wrong: list = []

    def work(i: int) -> None:
        cur = con.cursor()
        for v in values[i::4] * 3:
            if cur.execute(sql, v).fetchall() != expected[v[2]]:
                wrong.append(v)
            if cur.execute("SELECT current_setting('disabled_optimizers')").fetchone() != ("",):
                wrong.append("rules leaked")
        cur.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    con.close()


def test_capture_records_selects_with_their_values_and_stops_at_its_limit(tpch_db, tmp_path):
    log = tmp_path / "q.jsonl"
    with lqo.connect(tpch_db, capture=log) as con:
        con.execute("SELECT count(*) FROM nation WHERE n_regionkey = ? AND n_name > ?", [1, "B"]).fetchall()
        con.execute("SELECT 1 WHERE ? > DATE '1999-01-01'", [dt.date(2000, 1, 2)]).fetchall()
        con.sql("/* dashboard */ WITH x AS (SELECT 1 AS a) SELECT * FROM x").fetchall()
        con.execute("SET threads = 2")  # not a SELECT: not recorded
        cur = con.cursor()
        cur.execute("SELECT $n + 1", {"n": decimal.Decimal("1.5")}).fetchall()
        cur.close()
        con.log.close()
    got = list(read_query_log(log))
    assert [g.sql[:16] for g in got] == ["SELECT count(*) ", "SELECT 1 WHERE ?", "/* dashboard */ ", "SELECT $n + 1"]
    assert got[0].params == [1, "B"] and got[1].params == [dt.date(2000, 1, 2)]
    assert got[3].params == {"n": decimal.Decimal("1.5")}
    assert got[0].ms is not None and got[0].ms > 0 and got[2].ms is None
    small = QueryLog(tmp_path / "small.jsonl", limit_mb=0.0002)  # 200 bytes
    for i in range(10):
        small.record("SELECT 1", [i], 1.0)
    small.close()
    assert 0 < (tmp_path / "small.jsonl").stat().st_size <= 200 and small.full
    # a torn last line (a crash mid-write) is skipped; a torn line elsewhere is an error
    text = (tmp_path / "small.jsonl").read_text()
    (tmp_path / "torn.jsonl").write_text(text + '{"sql": "SELECT 2", "par')
    assert len(list(read_query_log(tmp_path / "torn.jsonl"))) == len(text.splitlines())
    (tmp_path / "bad.jsonl").write_text('{"sql": "SELECT 2", "par\n' + text)
    with pytest.raises(lqo.errors.WorkloadError, match="bad.jsonl:1"):
        list(read_query_log(tmp_path / "bad.jsonl"))


def test_import_groups_a_log_by_template_and_keeps_what_it_can(tpch_db, tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    lines = [
        {"sql": TREE.format("?, ?", "?"), "params": ["F", "O", 100], "ms": 5.0},
        {"sql": TREE.format("?, ?", "?"), "params": ["F", "O", 100], "ms": 5.0},   # run twice
        {"sql": TREE.format("?, ?", "?"), "params": ["O", "P", 2000], "ms": 4.0},
        {"sql": TREE.format("'F', 'O'", 7), "params": None, "ms": 4.0},           # the same template, literal
        {"sql": ARM.format("$k"), "params": {"k": 3}, "ms": 9.0},
        {"sql": ARM.format("?"), "params": [{"unsupported": "bytes"}], "ms": 1.0},
        {"sql": "SELECT * FROM no_such_table", "params": None, "ms": 1.0},
        {"sql": "CREATE TABLE t (x INT)", "params": None, "ms": 1.0},
    ]
    log.write_text("".join(json.dumps(d) + "\n" for d in lines))
    out = tmp_path / "w"
    assert main(["workload", "import", str(log), "--db", str(tpch_db), "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["kept"] == 5 and payload["statements"] == 8 and sum(payload["skipped"].values()) == 3
    w = Workload.load(out)
    groups = w.by_template()
    assert list(groups) == ["t01_customer_orders_nation", "t02_lineitem_orders"]
    tree = groups["t01_customer_orders_nation"]
    assert [q.weight for q in tree] == [2.0, 1.0, 1.0]
    assert len({template_key(q.sql).key for q in w}) == 2  # the manifest's templates are the key's
    assert "IN ('F', 'O') AND c_acctbal > 100" in tree[0].sql
    # nothing half-written on a failure
    empty = tmp_path / "empty.sql"
    empty.write_text("INSERT INTO t VALUES (1);")
    assert main(["workload", "import", str(empty), "--db", str(tpch_db), "--out", str(tmp_path / "w2")]) == 2
    assert not (tmp_path / "w2").exists()
    assert main(["workload", "import", str(tmp_path / "nope.sql"), "--db", str(tpch_db), "--out",
                 str(tmp_path / "w3")]) == 2


def test_from_captured_traffic_to_a_served_book_in_four_commands(tpch_db, tmp_path, capsys):
    """Capture -> lqo tune --log -> lqo book show -> lqo compare, then serve new values."""
    cap, runs = tmp_path / "traffic.jsonl", tmp_path / "runs"
    join = ("SELECT o_orderpriority, count(*) AS n FROM orders, lineitem WHERE o_orderkey = l_orderkey "
            "AND l_shipdate > ? AND o_totalprice > ? GROUP BY 1 ORDER BY 1")
    with lqo.connect(tpch_db, capture=cap) as con:
        for i in range(6):
            con.execute(join, [dt.date(1993 + i % 5, 1 + i, 1), 1000.0 * i]).fetchall()
            con.execute("SELECT count(*) FROM customer WHERE c_acctbal > $b", {"b": 100 * i}).fetchall()
        con.log.close()
    assert main(["tune", "--log", str(cap), "--db", str(tpch_db), "--budget", "0.3", "--out", str(runs),
                 "--tune-instances", "3", "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["templates"] == 2 and tuned["wrong"] == 0
    assert main(["book", "show", str(runs)]) == 0
    shown = capsys.readouterr().out
    assert "t01_orders_lineitem" in shown and "t02_customer" in shown
    assert main(["compare", str(runs / "workload"), "--model", str(runs), "--split", "instances",
                 "--repeat", "1", "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    # held out: the later instances of each template, never the three tuned on
    assert sorted(q["id"][-3:] for q in compared["queries"]) == ["004", "004", "005", "005", "006", "006"]
    assert compared["totals"]["wrong_results"] == 0
    # a second --log into the same directory would re-number the instances its book was tuned on
    assert main(["tune", "--log", str(cap), "--db", str(tpch_db), "--budget", "0.1", "--out", str(runs)]) == 2
    native = duckdb.connect(str(tpch_db), read_only=True)
    with lqo.connect(tpch_db, book=runs) as con:
        for i in range(6, 9):
            params = [dt.date(1992 + i % 6, 2, 3), 777.5 * i]
            assert con.execute(join, params).fetchall() == native.execute(join, params).fetchall()
    native.close()


def test_a_parameter_the_rendering_quotes_is_caught_even_where_its_name_recurs():
    """``$1`` filled into a quoted slot is text, not a parameter: the rendering is refused
    although ``$1`` also stands as a parameter elsewhere (the set of names alone matches)."""
    from lqo.book.params import BoundText
    from lqo.book.template import TemplateKey

    slots = SlotRendering(("SELECT * FROM t WHERE a = ", (0, 0), " AND b = ", (1, 0), " AND c = '", (2, 0), "'"),
                          (1, 1, 1))
    server = BookServer(PlanBook())
    bound = BoundText("unused", ("$1", "$2", "$1"))
    assert server._bound_rendering(TemplateKey("k", (), (1, 1, 1)), bound, slots) is None
    plain = SlotRendering(("SELECT * FROM t WHERE a = ", (0, 0), " AND b = ", (1, 0), " AND c = ", (2, 0)), (1, 1, 1))
    assert server._bound_rendering(TemplateKey("k2", (), (1, 1, 1)), bound, plain) == \
        "SELECT * FROM t WHERE a =  $1 AND b =  $2 AND c =  $1"
