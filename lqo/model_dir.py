"""The model directory: what ``lqo train`` and ``lqo tune`` write and ``Optimizer.load`` reads.

One directory may hold a plan book (``lqo tune``), a trained model (``lqo train``), or
both (:meth:`ModelDir.holds`). :class:`ModelDir` names every file in it, reads and writes
its small JSON files, and knows its train/test split; no other module spells one of
these file names (``tests/test_model_dir.py`` checks).

==========================  ==============================================================
file                        what it holds
==========================  ==============================================================
``book.json``               the plan book (``lqo tune``; :class:`lqo.book.book.PlanBook`)
``feedback.jsonl``          served latencies (``Optimizer.load(..., record=True)``)
``tune_history.json``       ``lqo tune``'s learning curve, one point per step
``model.lqo``               the trained plan model (``lqo train``)
``stats.json``              lqo's statistics of the database (training and tuning)
``optimizer.json``          the optimizer's settings, its triage and train/test templates
``history.jsonl``           ``lqo train``: one line per iteration
``state.json``              ``lqo train``'s resume state
``iterations/NNN/``         every training iteration's model (a model directory itself)
``experience.duckdb``       the experience store of what training and tuning ran here
``workload/``               ``lqo tune --log``: the workload imported from the query log
==========================  ==============================================================

A workload directory keeps an experience store of the same name for what ``lqo explore``
and ``lqo run`` measure (:func:`workload_store`).

>>> import tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> md = ModelDir(tmp.name)
>>> md.holds()
'nothing'
>>> _ = md.book.write_text("{}")
>>> md.holds(), md.book.name
('book', 'book.json')
>>> md.write_config({"train_templates": ["q1"], "test_templates": ["q2"]})
>>> sorted(md.split_templates("test"))
['q2']
>>> tmp.cleanup()
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lqo.errors import LqoError

BOOK_FILE = "book.json"
FEEDBACK_FILE = "feedback.jsonl"
TUNE_HISTORY_FILE = "tune_history.json"
MODEL_FILE = "model.lqo"
STATS_FILE = "stats.json"
CONFIG_FILE = "optimizer.json"
TRAIN_HISTORY_FILE = "history.jsonl"
TRAIN_STATE_FILE = "state.json"
ITERATIONS_DIR = "iterations"
STORE_FILE = "experience.duckdb"
WORKLOAD_DIR = "workload"

SPLITS = ("all", "train", "test", "instances")


class _Instance(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def template(self) -> str: ...


Q = TypeVar("Q", bound=_Instance)


def workload_store(workload_root: str | os.PathLike[str]) -> Path:
    """A workload directory's own experience store (``lqo explore``, ``lqo run``)."""
    return Path(workload_root) / STORE_FILE


def book_file(path: str | os.PathLike[str]) -> Path:
    """The plan book a user named: a model directory's ``book.json``, or the file itself."""
    p = Path(path)
    return p / BOOK_FILE if p.is_dir() else p


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename: a kill mid-write leaves the old file whole."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class ModelDir:
    """A model directory at ``root`` (which need not exist yet): its files and their contents."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.root)!r})"

    # ----- where each file lives ---------------------------------------------------------
    @property
    def book(self) -> Path:
        """The plan book (``lqo tune``)."""
        return self.root / BOOK_FILE

    @property
    def feedback(self) -> Path:
        """Latencies of executions served from the book, appended when recording."""
        return self.root / FEEDBACK_FILE

    @property
    def tune_history(self) -> Path:
        """``lqo tune``'s learning curve (a JSON list)."""
        return self.root / TUNE_HISTORY_FILE

    @property
    def model(self) -> Path:
        """The trained plan model (``lqo train``)."""
        return self.root / MODEL_FILE

    @property
    def stats(self) -> Path:
        """lqo's statistics of the database the directory was made for."""
        return self.root / STATS_FILE

    @property
    def config(self) -> Path:
        """The optimizer's settings, triage, feature ranges and train/test templates."""
        return self.root / CONFIG_FILE

    @property
    def train_history(self) -> Path:
        """``lqo train``'s history: one JSON line per iteration."""
        return self.root / TRAIN_HISTORY_FILE

    @property
    def train_state(self) -> Path:
        """``lqo train``'s resume state."""
        return self.root / TRAIN_STATE_FILE

    @property
    def store(self) -> Path:
        """The experience store of what training and tuning ran for this directory."""
        return self.root / STORE_FILE

    @property
    def workload(self) -> Path:
        """The workload ``lqo tune --log`` imported from a query log and tuned on."""
        return self.root / WORKLOAD_DIR

    def iteration(self, n: int) -> ModelDir:
        """Training iteration ``n``'s model, itself a model directory."""
        return ModelDir(self.root / ITERATIONS_DIR / f"{n:03d}")

    # ----- what it holds -----------------------------------------------------------------
    def has_book(self) -> bool:
        """Whether ``lqo tune`` wrote a plan book here."""
        return self.book.is_file()

    def has_model(self) -> bool:
        """Whether ``lqo train`` wrote a model here."""
        return self.model.is_file()

    def holds(self) -> str:
        """``"book"``, ``"model"``, ``"both"`` or ``"nothing"``."""
        book, model = self.has_book(), self.has_model()
        return "both" if book and model else "book" if book else "model" if model else "nothing"

    def missing_model_files(self) -> list[str]:
        """The files a trained model needs that are not here (none: it can be loaded)."""
        return [p.name for p in (self.model, self.stats, self.config) if not p.is_file()]

    # ----- reading and writing its small files -------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The optimizer's JSON settings; ``{}`` where none was written."""
        return json.loads(self.config.read_text()) if self.config.is_file() else {}

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the optimizer's settings in one rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(config, indent=2, default=str))
        tmp.replace(self.config)

    def read_train_state(self) -> dict[str, Any] | None:
        """``lqo train``'s resume state, None before the first iteration finished."""
        return json.loads(self.train_state.read_text()) if self.train_state.is_file() else None

    def write_train_state(self, state: dict[str, Any]) -> None:
        """Replace the resume state in one rename."""
        tmp = self.root / (TRAIN_STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.train_state)

    def read_train_history(self) -> list[dict[str, Any]]:
        """One dict per training iteration (none before the first)."""
        if not self.train_history.is_file():
            return []
        return [json.loads(line) for line in self.train_history.read_text().splitlines() if line.strip()]

    def append_train_history(self, line: dict[str, Any]) -> None:
        """Add one training iteration's line."""
        with open(self.train_history, "a") as fh:
            fh.write(json.dumps(line) + "\n")

    def read_tune_history(self) -> list[dict[str, Any]]:
        """``lqo tune``'s learning curve so far (empty before the first run)."""
        return json.loads(self.tune_history.read_text()) if self.tune_history.is_file() else []

    def write_tune_history(self, history: list[dict[str, Any]]) -> None:
        """Replace the learning curve atomically."""
        write_atomic(self.tune_history, json.dumps(history))

    # ----- the train/test split ----------------------------------------------------------
    def split_templates(self, split: str) -> set[str]:
        """The template labels ``lqo train`` put in its ``train`` or ``test`` split
        (empty where this directory holds no trained model)."""
        return set(self.read_config().get(f"{split}_templates", []))

    def split_queries(self, queries: Iterable[Q], split: str, held_out: Collection[str] | None = None) -> list[Q]:
        """The queries of a split: ``all``; the model's ``train`` or ``test`` templates; or
        ``instances``, the ``held_out`` instance ids (a plan book's, never run while
        tuning). ``LqoError`` when the split leaves nothing."""
        if split == "all":
            return list(queries)
        if split == "instances":
            held = set(held_out or ())
            out = [q for q in queries if q.id in held]
            if not out:
                raise LqoError("the plan book holds no held-out instance of this workload (tune with "
                               "--tune-instances below the instances per template)")
            return out
        templates = self.split_templates(split)
        out = [q for q in queries if q.template in templates]
        if not out:
            raise LqoError(f"the model's {split} split has no query in this workload")
        return out
