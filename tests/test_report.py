"""``lqo report`` on a plan book: the held-out instances by default, and every report
says which split it measured."""

from __future__ import annotations

import json

import pytest

from lqo.book.book import PlanBook
from lqo.cli import main
from lqo.workloads.workload import Workload, write_workload
from test_tune_progress import TEMPLATES


@pytest.fixture(scope="module")
def book(tpch_db, tmp_path_factory):
    """Three templates of four instances (three tuned on, one held out) and their book."""
    root = tmp_path_factory.mktemp("report-book")
    rows = [(f"{t}_v{i + 1}", t, sql.format(q=q)) for t, sql in TEMPLATES.items() for i, q in enumerate((3, 9, 15, 21))]
    (root / "w").mkdir()
    write_workload(root / "w", "report-book", tpch_db, rows)
    assert main(["tune", str(root / "w"), "--budget", "0.1", "--out", str(root / "book"), "--json"]) == 0
    return Workload.load(root / "w"), root / "book"


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_on_a_book_measures_only_held_out_instances(book, tmp_path, capsys):
    wl, model = book
    held_out = PlanBook.load(model).held_out_ids()
    assert held_out == {f"{t}_v4" for t in TEMPLATES}
    out = tmp_path / "r"
    code, stdout, err = run(capsys, "report", wl.root, "--model", model, "--out", out, "--repeat", 1, "--json")
    assert code == 0, err  # a book alone: no "the model's test split has no query"
    payload = json.loads(stdout)
    assert payload["split"] == "instances" and "never run while tuning" in payload["split_text"]
    rep = json.loads((out / "report.json").read_text())
    assert {q["id"] for q in rep["compare"]["queries"]} == held_out  # never a tuning instance
    assert rep["split"] == "instances" and rep["summary"]["queries"] == 3
    md = (out / "report.md").read_text()
    assert "instances split" in md and "--split instances" in md and "3 queries" in md
    assert "Measured on the instances split: the held-out instances" in md

    code, stdout, err = run(capsys, "report", wl.root, "--model", model, "--out", out, "--repeat", 1, "--split", "all",
                            "--no-trees")
    assert code == 0, err
    assert "measured on the all split" in stdout and "9 of them are instances `lqo tune` tuned on" in stdout
    md = (out / "report.md").read_text()
    assert "9 of them are instances `lqo tune` tuned on" in md  # their wins are not held-out evidence
    everything = json.loads((out / "report.json").read_text())["compare"]

    # A reused comparison: reported as the split its queries make up, refused under a split it exceeds.
    cmp = tmp_path / "compare.json"
    cmp.write_text(json.dumps(everything))
    code, stdout, err = run(capsys, "report", wl.root, "--model", model, "--out", out, "--compare-json", cmp,
                            "--no-trees", "--json")
    assert code == 0, err
    assert json.loads(stdout)["split"] == "all"
    code, stdout, err = run(capsys, "report", wl.root, "--model", model, "--out", out, "--compare-json", cmp,
                            "--split", "instances", "--no-trees")
    assert code == 2 and "9 queries outside the instances split" in err and stdout == ""
    cmp.write_text(json.dumps({**everything, "queries": [q for q in everything["queries"] if q["id"] in held_out]}))
    code, stdout, err = run(capsys, "report", wl.root, "--model", model, "--out", out, "--compare-json", cmp,
                            "--no-trees")
    assert code == 0 and "measured on the instances split" in stdout
    code, stdout, err = run(capsys, "report", wl.root, "--model", model, "--out", tmp_path / "t", "--split", "test")
    assert code == 2 and "test split has no query" in err and not (tmp_path / "t").exists()
