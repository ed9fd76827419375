"""The README's "From Python:" block runs as written, on a tiny workload and model.

The block's paths (``data/tpch-sf1/...``, ``runs/tpch``) are replaced by a TPC-H sf 0.01
workload and a model trained for one short iteration; everything else runs verbatim.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lqo
from lqo.cli import main
from lqo.engine.run_result import fingerprint_rows
from lqo.train.recipe import Recipe
from lqo.train.trainer import Trainer

README = Path(__file__).resolve().parent.parent / "README.md"
DB, QUERY, MODEL = "data/tpch-sf1/tpch.duckdb", "data/tpch-sf1/q05.sql", "runs/tpch"


def python_block() -> str:
    """The first ```python block after the line starting "From Python"."""
    m = re.search(r"^From Python.*?^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert m, "README.md has no ```python block after 'From Python'"
    return m.group(1)


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
