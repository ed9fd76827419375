"""Notebooks, plots and ``lqo report``.

- every notebook in ``notebooks/`` runs headless top to bottom (nbclient, on a kernel of
  this interpreter registered in a temporary Jupyter path) with parameters injected
  after its ``parameters`` cell, papermill style; any cell error fails the test; a
  probe cell appended at the end reads back what it computed, and the tables it
  displayed are checked (query counts, 0 wrong results, one row per policy and mode);
- notebooks use lqo's public interface only (``import lqo``, names of ``lqo.__all__``,
  and the ``lqo`` command through ``lqo.cli.main``);
- notebooks are committed with the outputs of a real run, top to bottom: every code cell
  executed in order, no errors, their figures, no absolute path of the machine that ran
  them, under 1 MB;
- ``lqo.plots`` on synthetic data: the expected axes, scales and artists;
- ``lqo report`` on a tiny trained model: non-empty PNGs, report.md with the totals,
  report.json; bad inputs exit 2 and write nothing.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import nbformat
import pytest
from nbclient import NotebookClient

from lqo import plots
from lqo.cli import main
from lqo.trees.plan import Join, Leaf
from lqo.trees.query import prepare
from lqo.train.recipe import Recipe
from lqo.evaluate.tree_cases import parse_plan, pick_cases, tree_cases
from lqo.train.trainer import Trainer
from lqo.workloads.workload import Workload, write_workload

from conftest import tpc_queries

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Per notebook: parameters that keep the run tiny and inside the test's tmp dir.
OVERRIDES = {
    "compare_optimizer": {"TUNE_MINUTES": 0.5, "REPEAT": 1},
    "scheduler": {"N_QUERIES": 10},
}
MIN_IMAGES = {"compare_optimizer": 3, "scheduler": 3}
TPCH_IDS = ["q03", "q05", "q07", "q08", "q09", "q10", "q12", "q14"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- notebooks


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec for this interpreter in a private Jupyter path: no user-level install,
    works in a fresh checkout, and leaves ~/.jupyter and ~/.ipython alone."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "data" / "kernels" / "lqo-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lqo test kernel", "language": "python",
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root / "data"))
        for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")):
            mp.setenv(var, str(root / sub))
        mp.setenv("JUPYTER_PLATFORM_DIRS", "1")
        yield "lqo-test"


def inject(nb, values: dict) -> None:
    """Add a cell setting ``values`` right after the ``parameters`` cell (as papermill does)."""
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    declared = nb.cells[idx].source
    for name in values:
        assert f"\n{name} = " in "\n" + declared, f"{name} is not a parameter of this notebook"
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"compare_optimizer", "scheduler"}


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def images(nb) -> list:
    return [o for c in code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_the_public_interface_only(path):
    import lqo as package

    nb = nbformat.read(path, as_version=4)
    for c in code_cells(nb):
        for line in c.source.splitlines():
            if re.match(r"\s*(from|import)\s+lqo\b", line):
                assert line.strip() in ("import lqo", "from lqo.cli import main"), line
        for name in re.findall(r"\blqo\.(\w+)", c.source):
            assert name in package.__all__ or name == "cli", f"lqo.{name} is not public: {c.source}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_with_the_outputs_of_a_run(path):
    assert path.stat().st_size < 1_000_000, "keep the notebook small: fewer or smaller figures"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = code_cells(nb)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged `parameters`"
    # executed top to bottom in one run, nothing failed, nothing injected left behind
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom, then commit"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert all(not {"injected-parameters", "test-probe"} & set(c.metadata.get("tags", [])) for c in code)
    assert all(c.outputs for c in code[1:]), "every cell after the parameters shows what it did"
    assert len(images(nb)) >= MIN_IMAGES[path.stem]
    # no path of the machine that ran it
    text = json.dumps([c.outputs for c in code])
    for root in ("/tmp/", "/work/", "/home/", "/root/", "/Users/", str(ROOT), str(Path.home())):
        assert root not in text, f"an output shows the absolute path {root}"


PROBE = "lqo-test-probe "


def probe(nb, setup: str, names: list[str]) -> None:
    """Append a cell that runs ``setup`` and prints the kernel's ``names`` as JSON after
    PROBE: what the notebook computed, read back by the test."""
    cell = nbformat.v4.new_code_cell(
        f"import json as _json\n{setup}\n"
        f"print({PROBE!r} + _json.dumps({{n: globals()[n] for n in {names!r}}}, default=str))")
    cell.metadata["tags"] = ["test-probe"]
    nb.cells.append(cell)


def probed(nb) -> dict:
    (text,) = [line[len(PROBE):] for o in nb.cells[-1].outputs if o.get("name") == "stdout"
               for line in o["text"].splitlines() if line.startswith(PROBE)]
    return json.loads(text)


def markdown_tables(nb) -> list[list[dict[str, str]]]:
    """The markdown tables the notebook displayed, in order, as rows of header -> cell text."""
    tables = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            md = o.get("data", {}).get("text/markdown")
            if md and md.lstrip().startswith("|"):
                lines = [[x.strip() for x in line.strip().strip("|").split("|")] for line in md.strip().splitlines()]
                tables.append([dict(zip(lines[0], row)) for row in lines[2:]])
    return tables


def check_compare_optimizer(nb) -> None:
    got = probed(nb)
    cmp, n = got["cmp"], len(TPCH_IDS)
    # my workload: exactly the QUERIES asked for; tuned on all instances but the last of each template
    assert got["probe_workload_ids"] == got["QUERIES"] == TPCH_IDS
    assert {t["template"] for t in got["book"]["templates"]} == set(TPCH_IDS)
    assert all(t["instances"] == got["VARY_INSTANCES"] - 1 and t["held_out"] == 1 for t in got["book"]["templates"])
    # compared on the held-out instances only, each served by the book, none wrong
    held_out = sorted(f"{q}_v{got['VARY_INSTANCES']}" for q in TPCH_IDS)
    assert sorted(got["held_out"]) == sorted(q["id"] for q in cmp["queries"]) == held_out
    assert all(q["source"] == "book" and not q["wrong"] for q in cmp["queries"]), cmp["queries"]
    assert cmp["totals"]["queries"] == n and cmp["totals"]["wrong_results"] == 0 and not cmp["totals"]["interrupted"]
    assert all(q["native_ms"] > 0 and q["lqo_ms"] > 0 and q["ratio"] > 0 for q in cmp["queries"]), cmp["queries"]
    instances, book, per_instance, totals = markdown_tables(nb)
    assert [r["template"] for r in instances] == TPCH_IDS
    assert [r["template"] for r in book] == TPCH_IDS
    assert sorted(r["id"] for r in per_instance) == held_out and all(r["wrong"] == "False" for r in per_instance)
    shown = {r["figure"]: r["value"] for r in totals}
    assert shown["queries"] == str(n) and shown["wrong_results"] == "0", shown
    # the report's figures were shown, and the application got DuckDB's rows
    assert got["probe_pngs"] and len(images(nb)) >= len(got["probe_pngs"]), got["probe_pngs"]
    assert got["app_rows"] == got["duckdb_rows"] and got["app_rows"]


def check_scheduler(nb) -> None:
    got = probed(nb)
    policies, n = got["policies"], got["N_QUERIES"]
    assert n == OVERRIDES["scheduler"]["N_QUERIES"] and got["REAL"]
    assert {"fifo", "sjf-known", "oracle", "all"} <= set(policies), policies
    (table,) = markdown_tables(nb)
    # one row per policy and mode, every query counted, relative to that mode's FIFO
    assert [(r["policy"], r["mode"]) for r in table] == [(p, m) for m in ("sim", "real") for p in policies], table
    assert all(r["queries"] == str(n) for r in table), table
    assert all(float(r["mean_vs_fifo"]) == 1 and r["failed"] == "0" for r in table if r["policy"] == "fifo"), table
    assert all(float(r[c]) > 0 for r in table for c in ("mean_s", "p95_s", "makespan_s", "mean_vs_fifo")), table
    # every policy ran the same stream; every real query succeeded with the same result
    results = got["probe_sim"] + got["probe_real"]
    assert len(got["probe_sim"]) == len(got["probe_real"]) == len(policies)
    streams = {tuple(q["query_id"] for q in r["queries"]) for r in results}
    assert len(streams) == 1 and len(next(iter(streams))) == n, streams
    fingerprints: dict[str, set] = {}
    for r in got["probe_real"]:
        assert r["mode"] == "real" and not r["errors"], r["errors"]
        for q in r["queries"]:
            assert q["ok"] and q["fingerprint"], q
            fingerprints.setdefault(q["query_id"], set()).add(q["fingerprint"])
    assert all(len(f) == 1 for f in fingerprints.values()), fingerprints


# Per notebook: the kernel variables the test reads back, and what they and the
# displayed tables must show.
PROBES = {
    "compare_optimizer": ("probe_workload_ids = [q.id for q in workload]\n"
                          "probe_pngs = sorted(p.name for p in Path('report').glob('*.png'))",
                          ["cmp", "book", "held_out", "probe_workload_ids", "probe_pngs", "QUERIES", "VARY_INSTANCES",
                           "app_rows", "duckdb_rows"],
                          check_compare_optimizer),
    "scheduler": ("probe_sim = [r.to_json() for r in sim]\nprobe_real = [r.to_json() for r in real]",
                  ["probe_sim", "probe_real", "policies", "N_QUERIES", "REAL"], check_scheduler),
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_and_shows_its_tables(path, kernel, tmp_path):
    assert path.stem in PROBES, "say what this notebook's tables must show"
    setup, names, check = PROBES[path.stem]
    nb = nbformat.read(path, as_version=4)
    inject(nb, {**OVERRIDES.get(path.stem, {}), "WORKDIR": str(tmp_path)})
    probe(nb, setup, names)
    # execute() raises CellExecutionError, naming the cell, if any cell errors.
    NotebookClient(nb, kernel_name=kernel, timeout=240, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert len(images(nb)) >= MIN_IMAGES[path.stem], "the notebook should show its figures"
    check(nb)


# --------------------------------------------------------------------------- plots


def synthetic_compare(n: int = 12, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        native = rng.uniform(20, 2000)
        ratio = [0.4, 0.8, 1.0, 1.1, 1.6, 3.0][i % 6]
        out.append({"id": f"q{i:02d}", "template": f"q{i:02d}", "native_ms": native, "lqo_ms": native * ratio,
                    "planning_ms": rng.uniform(1, 30), "ratio": ratio, "forced_native_ms": native * 1.02,
                    "fallback": None if ratio != 1.0 else "predicted gain 2% is below 10%", "chosen": None})
    return out


def test_ratio_cdf_and_planning_overhead():
    qs = synthetic_compare()
    ax = plots.ratio_cdf(qs).axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylim()[1] >= 1
    assert len(ax.lines) >= 2  # lqo and forced-native curves (plus reference lines)
    ys = ax.lines[0].get_ydata()
    assert ys[-1] == pytest.approx(1.0) and list(ys) == sorted(ys)
    ax = plots.planning_overhead(qs).axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(qs)
    assert "planning" in ax.get_ylabel()


def history(iterations: int = 3) -> list[dict]:
    out = []
    for it in range(1, iterations + 1):
        mh = [{"epoch": e, "train_loss": 2.0 / (e + it), "val_loss": 2.5 / (e + it), "lr": 1e-3 * 0.9 ** e}
              for e in range(5)]
        out.append({"iteration": it, "workload_ms": 1000 - 100 * it, "native_ms": 1000, "ratio": 1 - 0.1 * it,
                    "model_history": mh})
    return out


def test_training_and_lr_schedule_curves():
    fig = plots.training_curve(history())
    assert [a.get_title() for a in fig.axes] == ["Training workload time", "Model loss",
                                                  "Learning rate (GreedyLR or cosine)"]
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[0].lines[1].get_xdata()) == 3
    assert len(fig.axes[1].lines[0].get_xdata()) == 15  # every epoch of every iteration
    assert plots.training_curve([]).axes[0].texts  # no history: says so, no crash
    runs = {"greedy": {"history": history(1)[0]["model_history"]}, "cosine": history(1)[0]["model_history"]}
    fig = plots.lr_schedule_curves(runs)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["GreedyLR", "cosine"]
    assert "learning rate" in fig.axes[1].get_ylabel()


def test_join_trees_side_by_side_with_cardinalities():
    native = Join(Join(Leaf("a"), Leaf("b")), Leaf("c"))
    lqo = [["c", "b"], "a"]  # JSON form works too
    cards = {frozenset("ab"): (10, 12), frozenset("abc"): (5, 500), frozenset("a"): (100, 90)}
    fig = plots.join_trees(native, lqo, cards, {frozenset("bc"): (3, 4)}, names={"a": "orders"})
    left, right = fig.axes
    texts = [t.get_text() for t in left.texts]
    assert "est 10 / act 12" in "\n".join(texts) and "est 5 / act 500" in "\n".join(texts)
    assert any(t.startswith("a\n(orders)") for t in texts)  # leaf: alias and table
    assert any("est 3 / act 4" in t.get_text() for t in right.texts)
    assert len(left.lines) == 4  # one edge per child
    # the 100x-off estimate is outlined red
    red = [t for t in left.texts if t.get_bbox_patch() and t.get_bbox_patch().get_edgecolor()[:3] == matplotlib.colors.to_rgb(plots.LOSS)]
    assert len(red) == 1 and "act 500" in red[0].get_text()


def schedule(policy: str, shared: bool = False) -> dict:
    qs = []
    t = [0.0, 0.0]
    for i in range(6):
        w = i % 2
        start = 0.0 if shared else t[w]
        end = start + 0.1 * (i + 1)
        t[w] = end
        qs.append({"idx": i, "query_id": f"q{i}", "arrival_s": 0.0, "start_s": start, "end_s": end,
                   "threads": 2 if shared else 1, "worker": -1 if shared else w, "ok": True, "completion_s": end})
    comp = sorted(q["completion_s"] for q in qs)
    return {"policy": policy, "mode": "real", "mean_s": sum(comp) / len(comp), "p50_s": comp[3], "p95_s": comp[-1],
            "makespan_s": comp[-1], "queries": qs}


def test_completion_cdf_gantt_and_tables():
    results = [schedule("fifo"), schedule("all", shared=True)]
    ax = plots.completion_cdf(results).axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) == 2
    fig = plots.gantt(results)
    assert len(fig.axes) == 2
    assert all(len(a.patches) == 6 for a in fig.axes)  # one bar per query
    assert fig.axes[0].get_ylabel() == "worker" and len(fig.axes[0].get_yticks()) == 2
    assert len(fig.axes[1].get_yticks()) == 6  # shared run: one lane per concurrent query
    table = plots.markdown_table([{"policy": "fifo", "mean_s": 1.0}, {"policy": "x", "mean_s": None}])
    assert table.splitlines()[2:] == ["| fifo | 1 |", "| x | - |"]
    assert len(plots.table_figure([{"policy": "fifo", "mean_s": 1.0}]).axes[0].tables) == 1


def test_parse_plan_and_pick_cases():
    for text in ["#0 ((a b) c)", "#0 (a (b c)); #3 ((d e) (f g))", "#1 x"]:
        assert str(parse_plan(text)) == text
    with pytest.raises(ValueError):
        parse_plan("#0 ((a b)")
    qs = synthetic_compare()
    picks = pick_cases({"queries": qs})
    assert [k for _, k in picks] == ["win", "win", "win", "regression"]
    worst = max(qs, key=lambda q: q["ratio"])
    assert picks[-1][0] == worst["id"]
    assert pick_cases({"queries": [{"id": "a", "ratio": 1.0}]}) == []


# --------------------------------------------------------------------------- lqo report


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tpch_db):
    """A TPC-H sf 0.01 workload of 8 queries and a model trained on it for 1 iteration."""
    root = tmp_path_factory.mktemp("report")
    wl = root / "tpch"
    wl.mkdir()
    queries = tpc_queries("tpch")
    write_workload(wl, "tpch-tiny", tpch_db, [(q, q, queries[q]) for q in TPCH_IDS], kind="tpch")
    recipe = Recipe.from_toml_text("iterations = 1\ntime_budget_min = 2.0\n[model]\nepochs = 12\nensemble = 2\n"
                                   "hidden = 16\n[exploration]\nbootstrap_plans = 3\n[split]\ntest_fraction = 0.4\n")
    recipe.workload, recipe.out = str(wl), str(root / "model")
    Trainer(recipe, log=lambda line: None).run()
    return wl, root / "model"


def lqo(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_writes_figures_markdown_and_json(tiny, tmp_path, capsys):
    wl, model = tiny
    sched = []
    for p in ("fifo", "sjf-est"):
        sched.append(tmp_path / f"{p}.json")
        sched[-1].write_text(json.dumps(schedule(p)))
    out = tmp_path / "results"
    code, stdout, err = lqo(capsys, "report", wl, "--model", model, "--out", out, "--split", "all", "--repeat", 1,
                            "--lr-compare", 4, "--scheduler-json", *sched, "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    files = set(payload["files"])
    for name in ("speedup.png", "ratio_cdf.png", "planning.png", "training.png", "lr_schedules.png",
                 "sched_cdf.png", "sched_gantt.png", "report.md", "report.json"):
        assert name in files and (out / name).stat().st_size > 0, name
    pngs = sorted(out.glob("*.png"))
    assert any(p.name.startswith("trees_") for p in pngs)
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in pngs)
    rep = json.loads((out / "report.json").read_text())
    s = rep["summary"]
    assert s["queries"] == len(TPCH_IDS) and s["wrong_results"] == 0
    md = (out / "report.md").read_text()
    assert f"{s['ratio']:.3f}x" in md and f"native {s['native_ms']:.1f} ms" in md
    assert "worst regression" in md and "planning overhead" in md and "lqo report" in md
    assert "| fifo |" in md and "GreedyLR vs cosine" in md
    assert [r["policy"] for r in rep["scheduler"]] == ["fifo", "sjf-est"]
    assert rep["scheduler"][0]["mean_vs_fifo"] == 1.0
    for case in rep["cases"]:
        assert case["native"]["cards"] and all(a is not None for _, _, a in case["native"]["cards"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind

    # Reuse the comparison; an earlier report in --out is replaced whole.
    cmp = tmp_path / "compare.json"
    cmp.write_text(json.dumps(rep["compare"]))
    code, stdout, err = lqo(capsys, "report", wl, "--model", model, "--out", out, "--compare-json", cmp, "--no-trees")
    assert code == 0, err
    assert "report written to" in stdout
    assert not list(out.glob("trees_*.png")) and not (out / "sched_cdf.png").exists()
    assert json.loads((out / "report.json").read_text())["compare"] == rep["compare"]


def test_tree_cases_read_actuals_of_a_forced_plan(tiny):
    wl_dir, model = tiny
    wl = Workload.load(wl_dir)
    with wl.connect() as con:
        pq = prepare(wl.query("q05").sql, con)
    plan = pq.random_plans(1, random.Random(5))[0]
    cmp = {"queries": [{"id": "q05", "ratio": 0.5, "native_ms": 10.0, "lqo_ms": 5.0, "fallback": None,
                        "chosen": str(plan)}]}
    (case,) = tree_cases(wl, model, cmp)
    assert case["kind"] == "win" and case["lqo"]["forced"] and case["blocks_changed"] == [case["block"]]
    assert case["lqo"]["plan"] == str(plan) and case["native"]["tree"] != case["lqo"]["tree"]
    root = frozenset(plan.tree(case["block"]).rels)
    cards = {frozenset(r): (e, a) for r, e, a in case["lqo"]["cards"]}
    assert cards[root][1] is not None and cards[root][0] is not None  # actual and estimated rows of the root
    assert len(cards) == 2 * len(root) - 1  # every node of the forced tree was matched
    assert plots.tree_case(case).axes[1].texts


def test_report_bad_inputs_exit_2_and_write_nothing(tiny, tmp_path, capsys):
    wl, model = tiny
    out = tmp_path / "out"
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    not_sched = tmp_path / "not_sched.json"
    not_sched.write_text(json.dumps({"policy": "fifo"}))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    cases = [
        (["report", wl, "--model", tmp_path / "nope", "--out", out], "model not found"),
        (["report", tmp_path / "nowl", "--model", model, "--out", out], "workload directory not found"),
        (["report", wl, "--model", model, "--out", out, "--compare-json", bad_json], "not valid JSON"),
        (["report", wl, "--model", model, "--out", out, "--compare-json", tmp_path / "missing.json"], "not found"),
        (["report", wl, "--model", model, "--out", out, "--scheduler-json", not_sched], "lacks"),
        (["report", wl, "--model", model, "--out", out, "--repeat", 0], "--repeat"),
        (["report", wl, "--model", model, "--out", busy], "not empty"),
    ]
    for argv, words in cases:
        code, stdout, err = lqo(capsys, *argv)
        assert code == 2 and stdout == "", (argv, code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lqo: error: ") and words in lines[0], (argv, err)
        assert not out.exists()
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "busy", "not_sched.json"]
