"""The README's Python blocks run as written, on a tiny workload, book and model.

The "From Python:" block's paths (``data/tpch-sf1/...``, ``runs/tpch``) are replaced by a
TPC-H sf 0.01 workload and a model trained for one short iteration; everything else runs
verbatim. The first screen's ``lqo.connect`` example runs with its database, book and
query replaced by that workload's, a plan book tuned on it and q05 with a bind parameter,
and must give what the DuckDB line it replaces gives.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

import lqo
from lqo.cli import main
from lqo.engine.run_result import fingerprint_rows
from lqo.train.recipe import Recipe
from lqo.train.trainer import Trainer

README = Path(__file__).resolve().parent.parent / "README.md"
DB, QUERY, MODEL = "data/tpch-sf1/tpch.duckdb", "data/tpch-sf1/q05.sql", "runs/tpch"
# the first screen's example: its database, book, query and value
SHOP, BOOK, SHOP_SQL, SHOP_PARAMS = '"shop.duckdb"', '"runs/shop"', '"SELECT ... WHERE region = ?"', '["EU"]'


def python_block() -> str:
    """The first ```python block after the line starting "From Python"."""
    m = re.search(r"^From Python.*?^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert m, "README.md has no ```python block after 'From Python'"
    return m.group(1)


def connect_block() -> tuple[int, str]:
    """The first ```python block that calls lqo.connect, and the line it starts on."""
    text = README.read_text()
    m = re.search(r"^```python\n(?=(?:(?!^```).)*lqo\.connect\()(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no ```python block with lqo.connect"
    return text[:m.start()].count("\n") + 1, m.group(1)


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    out = tmp_path_factory.mktemp("readme") / "tpch"
    assert main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def model(workload, tmp_path_factory):
    out = tmp_path_factory.mktemp("readme_model") / "m"
    recipe = Recipe.from_toml_text(
        "iterations = 1\ntime_budget_min = 2.0\n[model]\nepochs = 5\nensemble = 2\nhidden = 16\n"
        "[exploration]\nbootstrap_plans = 2\n[split]\ntest_fraction = 0.3\n"
    )
    recipe.workload, recipe.out = str(workload), str(out)
    assert Trainer(recipe, log=lambda line: None).run().iterations == 1
    return out


def test_block_uses_only_the_public_api():
    code = python_block()
    imports = [line.strip() for line in code.splitlines() if re.match(r"\s*(import|from)\s", line)]
    assert imports == ["import lqo"]
    names = set(re.findall(r"\blqo\.(\w+)", code))
    assert names and names <= set(lqo.__all__), names - set(lqo.__all__)
    assert {"connect_read_only", "prepare", "Harness", "optimize", "Optimizer"} <= names


def test_block_runs(workload, model, capsys):
    code = python_block()
    for path in (DB, QUERY, MODEL):
        assert path in code, path
    code = (code.replace(DB, str(workload / "tpch.duckdb")).replace(QUERY, str(workload / "q05.sql"))
            .replace(MODEL, str(model)))
    ns: dict = {}
    capsys.readouterr()
    exec(compile(code, str(README), "exec"), ns)
    printed = capsys.readouterr().out.splitlines()
    con = ns["con"]
    try:
        sql = (workload / "q05.sql").read_text()
        pq = ns["pq"]
        assert pq.forceable and printed[0] == str(pq.native_plan)
        # the native trees, rendered and forced, give DuckDB's own result
        native = lqo.Harness(con).run(sql)
        run = ns["run"]
        assert run.ok and run.rows == native.rows > 0 and run.fingerprint == native.fingerprint
        assert printed[1].split() == [str(run.latency_ms), run.fingerprint]
        # optimize: a decision, its rows are native's, the settings are back as they were
        res = ns["res"]
        assert res.original_sql == sql and (res.fallback is None) == res.forced
        assert fingerprint_rows(ns["rows"]) == native.fingerprint
        assert con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0] == ""
        assert len(printed) == 4
        # the drop-in connection: DuckDB's API, the optimizer's decision behind it
        app = ns["app"]
        assert isinstance(app, lqo.Connection)
        assert fingerprint_rows(app.execute(sql).fetchall()) == native.fingerprint
        # the loaded Optimizer decides the same
        again = ns["again"]
        assert isinstance(ns["opt"], lqo.Optimizer)
        assert (again.sql, again.fallback, again.forced) == (res.sql, res.fallback, res.forced)
    finally:
        con.close()


@pytest.fixture(scope="module")
def book(workload, tmp_path_factory):
    out = tmp_path_factory.mktemp("readme_book") / "shop"
    assert main(["tune", str(workload), "--budget", "0.2", "--out", str(out), "--json"]) == 0
    return out


def test_connect_example_is_on_the_first_screen():
    line, code = connect_block()
    assert line <= 45, f"the lqo.connect example starts on line {line} of README.md"
    lines = [ln for ln in code.splitlines() if ln.strip()]
    assert lines[0] == "import lqo" and len(lines) == 3, lines


def test_connect_example_runs(workload, book):
    _, code = connect_block()
    for placeholder in (SHOP, BOOK, SHOP_SQL, SHOP_PARAMS):
        assert placeholder in code, placeholder
    was = re.search(r"# was: (duckdb\.connect\(.*\))\s*$", code, re.M)
    assert was, "the example names the DuckDB line it replaces"
    q05 = (workload / "q05.sql").read_text()
    assert q05.count("'ASIA'") == 1
    db = repr(str(workload / "tpch.duckdb"))
    code = (code.replace(SHOP, db).replace(BOOK, repr(str(book)))
            .replace(SHOP_SQL, repr(q05.replace("'ASIA'", "?"))).replace(SHOP_PARAMS, '["ASIA"]'))
    lines = code.rstrip().splitlines()
    assert lines[-1].startswith("con.execute(")
    lines[-1] = "result = " + lines[-1]
    ns: dict = {}
    exec(compile("\n".join(lines), str(README), "exec"), ns)
    con = ns["con"]
    try:
        assert isinstance(con, lqo.Connection)
        assert con.last is None or con.last.source == "book"
        plain = eval(was.group(1).replace(SHOP, db), {"duckdb": duckdb})
        try:
            native = plain.execute(q05).fetchall()
        finally:
            plain.close()
        assert len(native) > 0 and fingerprint_rows(ns["result"]) == fingerprint_rows(native)
        # the book knows q05's template: the parameterized text was served by it
        assert lqo.Optimizer.load(book, con.duckdb).optimize(q05, con.duckdb).source == "book"
    finally:
        con.close()
