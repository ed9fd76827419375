"""The model directory has one owner: ``lqo/model_dir.py`` names every file in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lqo
from lqo import model_dir
from lqo.errors import LqoError
from lqo.model_dir import ModelDir

ROOT = Path(lqo.__file__).parent
NAMES = [model_dir.BOOK_FILE, model_dir.FEEDBACK_FILE, model_dir.TUNE_HISTORY_FILE, model_dir.MODEL_FILE,
         model_dir.STATS_FILE, model_dir.CONFIG_FILE, model_dir.TRAIN_HISTORY_FILE, model_dir.TRAIN_STATE_FILE,
         model_dir.STORE_FILE]


def test_every_file_name_is_named_once():
    assert len(set(NAMES)) == len(NAMES)
    constants = {v for k, v in vars(model_dir).items() if k.endswith("_FILE")}
    assert constants == set(NAMES), "a new file name must be added to NAMES here"


def test_file_names_appear_in_model_dir_only():
    """Not in code, help text or docstrings: every other module asks ModelDir."""
    pattern = re.compile("|".join(re.escape(n) for n in NAMES))
    found = {}
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "model_dir.py":
            continue
        hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


def test_holds_and_paths(tmp_path):
    md = ModelDir(tmp_path / "m")
    assert md.holds() == "nothing" and md.read_config() == {} and md.read_train_state() is None
    md.root.mkdir()
    md.book.write_text("{}")
    assert md.holds() == "book" and md.missing_model_files() == [md.model.name, md.stats.name, md.config.name]
    md.model.write_bytes(b"")
    assert md.holds() == "both"
    md.book.unlink()
    assert md.holds() == "model"
    assert md.iteration(3).root == md.root / model_dir.ITERATIONS_DIR / "003"
    assert Path(md) == md.root and model_dir.book_file(md.root) == md.book and model_dir.book_file(md.book) == md.book


def test_small_files_round_trip(tmp_path):
    md = ModelDir(tmp_path)
    md.write_train_state({"iteration": 2})
    md.append_train_history({"iteration": 1})
    md.append_train_history({"iteration": 2})
    md.write_tune_history([{"elapsed_s": 1.0}])
    assert md.read_train_state() == {"iteration": 2}
    assert [h["iteration"] for h in md.read_train_history()] == [1, 2]
    assert md.read_tune_history() == [{"elapsed_s": 1.0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([md.train_state.name, md.train_history.name,
                                                                  md.tune_history.name])  # no temp files left


class _Q:
    def __init__(self, id: str, template: str) -> None:
        self.id, self.template = id, template


def test_split_queries(tmp_path):
    md = ModelDir(tmp_path)
    qs = [_Q("a1", "a"), _Q("a2", "a"), _Q("b1", "b")]
    assert md.split_queries(qs, "all") == qs
    with pytest.raises(LqoError, match="train split has no query"):
        md.split_queries(qs, "train")  # not trained
    md.write_config({"train_templates": ["a"], "test_templates": ["b"]})
    assert [q.id for q in md.split_queries(qs, "train")] == ["a1", "a2"]
    assert [q.id for q in md.split_queries(qs, "test")] == ["b1"]
    assert [q.id for q in md.split_queries(qs, "instances", held_out=["a2"])] == ["a2"]
    with pytest.raises(LqoError, match="no held-out instance"):
        md.split_queries(qs, "instances", held_out=[])
