"""``lqo tune``'s progress: the Tuner's callback and the bar the CLI draws from it."""

from __future__ import annotations

import json

import pytest

from lqo.cli import main
from lqo.cli.tune_cmd import TuneBar
from lqo.model_dir import ModelDir
from lqo.tune.inputs import TuneConfig
from lqo.tune.tuner import TuneProgress, Tuner
from lqo.workloads.workload import Workload, write_workload

TEMPLATES = {
    "big": """SELECT n_name, count(*) AS lines FROM customer, orders, lineitem, nation
WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND c_nationkey = n_nationkey AND l_quantity > {q}
GROUP BY n_name""",
    "mid": """SELECT o_orderpriority, count(*) AS n FROM orders, customer
WHERE o_custkey = c_custkey AND c_acctbal > {q} GROUP BY o_orderpriority""",
    "small": "SELECT count(*) AS n FROM nation, region WHERE n_regionkey = r_regionkey AND n_nationkey > {q}",
}


@pytest.fixture(scope="module")
def workload(tpch_db, tmp_path_factory):
    """Three templates of four instances each (three tuned on, one held out)."""
    root = tmp_path_factory.mktemp("progress")
    rows = [(f"{t}_v{i + 1}", t, sql.format(q=q)) for t, sql in TEMPLATES.items() for i, q in enumerate((3, 9, 15, 21))]
    write_workload(root, "progress", tpch_db, rows)
    return Workload.load(root)


def _rising(values: list) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))


def test_tuner_reports_rising_counts_then_done(workload, tmp_path):
    seen: list[TuneProgress] = []
    result = Tuner(workload, tmp_path / "m", TuneConfig(budget_min=0.4, seed=1), log=lambda _: None,
                   progress=seen.append).run()
    phases = [p.phase for p in seen]
    assert phases[0] == "baseline" and phases[-1] == "done" and phases.count("done") == 1
    assert phases == sorted(phases, key=["baseline", "tune", "done"].index)  # one phase after the other
    base = [p.baselined for p in seen if p.phase == "baseline"]
    assert base == [1, 2, 3]  # one call per template baselined
    assert all(p.templates == 3 for p in seen) and seen[-1].baselined == 3
    for counts in ([p.screened for p in seen], [p.tested for p in seen], [p.adopted for p in seen],
                   [p.elapsed_s for p in seen]):
        assert _rising(counts)
    assert _rising([-p.left_s for p in seen]) and seen[0].budget_s == 24
    tune = [p for p in seen if p.phase == "tune"]
    assert tune[0].screened == 0 and tune[0].to_screen > 0
    assert len(tune) == result.screened + result.retested + 1  # once queued, then after every step
    last = seen[-1]
    assert (last.screened, last.tested, last.adopted) == (result.screened, result.tested, result.adopted) > (0, 0, 0)
    point = ModelDir(tmp_path / "m").read_tune_history()[-1]  # the same ratio as the learning curve
    assert last.ratio == pytest.approx(point["book_ms"] / point["native_ms"], rel=1e-3)
    assert last.book_ms <= last.native_ms

    resumed: list[TuneProgress] = []  # a rerun counts what was baselined before as done
    Tuner(workload, tmp_path / "m", TuneConfig(budget_min=0.01, seed=1), log=lambda _: None,
          progress=resumed.append).run()
    assert [p.baselined for p in resumed if p.phase == "baseline"] == [1, 2, 3]


def _progress(phase: str, n: int, total: int, **kw) -> TuneProgress:
    fields = {"templates": total, "baselined": n if phase == "baseline" else total, "screened": 0, "to_screen": 0,
              "tested": 0, "adopted": 0, "book_ms": 90.0, "native_ms": 100.0, "elapsed_s": 5.0, "budget_s": 125.0}
    if phase == "tune":
        fields.update(screened=n, to_screen=total - n)
    fields.update(kw)
    return TuneProgress(phase, **fields)


def test_bar_on_a_terminal_and_lines_without_one(capsys):
    bar = TuneBar(tty=True)
    bar(_progress("baseline", 2, 22))
    bar.write("tune: q01 adopts arm:x")
    bar(_progress("tune", 7, 40, tested=3, adopted=1))
    bar(_progress("done", 40, 40))
    out, err = capsys.readouterr()
    assert out == "tune: q01 adopts arm:x\n"  # log lines on stdout, the bar on stderr
    assert "2/22 templates baselined" in err and "7/40 candidates screened" in err
    assert "3 tested, 1 adopted, book 0.900x native, 2:00 of the budget left" in err
    assert bar.bar is None  # done takes it off

    quiet = TuneBar(tty=False, every_s=0.0)  # no terminal: a plain line per report here
    quiet(_progress("tune", 7, 40, native_ms=0.0))
    quiet.write("a log line")
    out, err = capsys.readouterr()
    assert out == "a log line\n"
    assert err == "tune: 7/40 candidates screened, 0 tested, 0 adopted, book - native, 2:00 of the budget left\n"
    slow = TuneBar(tty=False)  # the default: every 10 s, as lqo's other commands
    slow(_progress("tune", 1, 40))
    assert capsys.readouterr().err == ""


def test_tune_json_stays_clean_on_stdout(workload, tmp_path, capsys):
    capsys.readouterr()
    assert main(["tune", str(workload.root), "--budget", "0.05", "--out", str(tmp_path / "m"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["templates"] == 3
