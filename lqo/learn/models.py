"""Plan-scoring models behind one scikit-learn-style interface.

Constructor arguments are hyperparameters only; :meth:`PlanModel.fit` learns the
state (attributes ending in ``_``). A model is a small *deep ensemble*: ``n_members``
independently initialized copies of one network (tree or graph convolution), trained
together on the same batches. The ensemble, not MC dropout, gives the uncertainty:
disagreement between independently initialized members grows off the training
distribution more reliably than dropout noise does, it is deterministic (the same
plans always get the same std, which a fallback-to-native rule needs), and it costs one
stacked forward pass (tree conv) or ``n_members`` passes (graph conv) instead of the
20-odd a dropout estimate needs.

Example (toy plans; real ones come from :class:`lqo.learn.features.Featurizer`)::

    >>> from lqo.learn.featurized import example_join as toy
    >>> plans = [toy(float(a), float(b)) for a in range(1, 5) for b in range(1, 5)]
    >>> latencies_ms = np.array([10.0 * p.x[1, 1] + p.x[2, 1] for p in plans])
    >>> query_ids = np.repeat(np.arange(4), 4)  # 4 queries, 4 plans each
    >>> from lqo.learn.model_kinds import make_model, load_model
    >>> model = make_model("tree_conv", loss="combined", epochs=3)
    >>> model = model.fit(plans, latencies_ms, groups=query_ids)
    >>> mean_ms, std_log = model.predict_with_uncertainty(plans[:2])
    >>> mean_ms.shape, bool((mean_ms > 0).all() and (std_log > 0).all())  # 3 members disagree a little
    ((2,), True)
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model.save(f"{tmp.name}/example.lqo", vocabulary={"a": 1, "b": 2}, schema="abc")
    >>> again = load_model(f"{tmp.name}/example.lqo", expected_schema="abc")
    >>> np.array_equal(again.predict(plans), model.predict(plans)), again.vocabulary_
    (True, {'a': 1, 'b': 2})
    >>> tmp.cleanup()
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from lqo.errors import LqoError, SchemaMismatchError
from lqo.learn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lqo.learn.featurized import FlatPlan
from lqo.learn.greedy_lr import GreedyLR
from lqo.learn.losses import LOSS_KINDS, group_batches, plan_loss, ranking_pairs, split_groups
from lqo.learn.torch_env import torch_env

LR_SCHEDULES = ("greedy", "cosine")
_PREDICT_CHUNK = 2048  # plans per forward pass when predicting, to bound memory


def _labels(plans: Sequence[FlatPlan], ms: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Checked latencies and dense group ids 0..G-1 (each plan its own group when None)."""
    y = np.asarray(ms, dtype=np.float64)
    if len(plans) == 0 or y.shape != (len(plans),) or not np.all(np.isfinite(y)) or (y < 0).any():
        raise ValueError("need one finite, non-negative latency per plan and at least one plan")
    gid = np.arange(len(y)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if gid.shape != y.shape:
        raise ValueError(f"groups has {gid.shape[0]} ids for {len(y)} plans")
    return y, gid


def _feature_stats(arrays: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    stacked = np.concatenate(arrays).astype(np.float64)
    std = stacked.std(axis=0)
    # Constant features (e.g. an unused one-hot slot) keep scale 1 instead of exploding.
    std[std < 1e-6] = 1.0
    return torch.tensor(stacked.mean(axis=0), dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _to_ms(log1p_ms: np.ndarray) -> np.ndarray:
    # A ranking-only model's scores have no absolute scale; clip so expm1 stays finite.
    return np.expm1(np.clip(log1p_ms, 0.0, 700.0))


class PlanModel:
    """Common estimator: fit on (plan, latency) pairs, predict latency in ms.

    Args:
        channels: convolution widths, e.g. ``(64, 64, 32)``.
        hidden: width of the MLP head.
        table_dim: table-embedding width.
        n_tables: table-vocabulary size; None infers ``max table id + 1`` at fit time. Ids
            at or above it are read as 0 (unknown), whose embedding was trained, rather
            than an untrained one.
        dropout: dropout in the head (regularization only; uncertainty comes from the ensemble).
        norm: per-node LayerNorm after each convolution. Off by default: it normalizes away
            the size of cardinality features, so predictions saturate past the training range
            and members agree there (synthetic plans: rho 0.95 vs 0.98 without; far-out-of-range
            ensemble std about equal to in-range vs several times it without).
        loss: ``"regression"``, ``"ranking"`` or ``"combined"``. A ranking-only model orders
            plans of one query well but its absolute ms are not calibrated.
        rank_weight: weight of the ranking term in ``"combined"``.
        lr, weight_decay: Adam settings.
        lr_schedule: ``"greedy"`` (GreedyLR on the validation loss, once per epoch) or ``"cosine"``.
        batch_size: plans per minibatch (rounded up to whole groups).
        epochs: maximum epochs; ``fit(epochs=...)`` overrides.
        patience: early-stopping patience in epochs without a better validation loss.
        val_fraction: share of groups held out when ``fit`` gets no ``val``.
        n_members: ensemble size (>= 2 for a nonzero uncertainty).
        time_budget_s: wall-clock cap on training; ``fit(time_budget_s=...)`` overrides.
        seed: seeds init, shuffling and the split; equal seeds give equal models on CPU.
        n_threads: torch threads during fit/predict (restored afterwards); None leaves them.
            Tiny batches run fastest on 1 thread, and the global setting is never touched
            at import.
    """

    kind: ClassVar[str] = ""
    _EXTRA_PARAMS: ClassVar[tuple[str, ...]] = ()
    _COMMON_PARAMS: ClassVar[tuple[str, ...]] = (
        "channels", "hidden", "table_dim", "n_tables", "dropout", "norm", "loss", "rank_weight", "lr",
        "weight_decay", "lr_schedule", "batch_size", "epochs", "patience", "val_fraction",
        "n_members", "time_budget_s", "seed", "n_threads",
    )

    def __init__(
        self, *, channels: Sequence[int] = (64, 64, 32), hidden: int = 32, table_dim: int = 8,
        n_tables: int | None = None, dropout: float = 0.0, norm: bool = False, loss: str = "regression",
        rank_weight: float = 1.0, lr: float = 1e-3, weight_decay: float = 0.0, lr_schedule: str = "greedy",
        batch_size: int = 64, epochs: int = 100, patience: int = 15, val_fraction: float = 0.1,
        n_members: int = 3, time_budget_s: float | None = None, seed: int = 0, n_threads: int | None = 1,
    ) -> None:
        # Stored as given, scikit-learn style (checked in fit()): one attribute per name of
        # _COMMON_PARAMS, which get_params() reads back.
        self.channels = tuple(int(c) for c in channels)
        self.hidden, self.table_dim, self.n_tables, self.dropout, self.norm = hidden, table_dim, n_tables, dropout, norm
        self.loss, self.rank_weight, self.lr, self.weight_decay = loss, rank_weight, lr, weight_decay
        self.lr_schedule, self.batch_size, self.epochs, self.patience = lr_schedule, batch_size, epochs, patience
        self.val_fraction, self.n_members, self.time_budget_s = val_fraction, n_members, time_budget_s
        self.seed, self.n_threads = seed, n_threads
        self.vocabulary_: dict[str, int] = {}
        self.schema_: str | None = None

    # ----- hooks for the concrete kinds -------------------------------------------------
    def _build_net(self) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def _batch(plans: Sequence[FlatPlan]) -> Any:
        raise NotImplementedError

    def _net_params(self) -> dict[str, Any]:
        return {"channels": self.channels, "table_dim": self.table_dim, "hidden": self.hidden,
                "dropout": self.dropout, "norm": self.norm, "members": self.n_members}

    # ----- parameters -------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict (what a checkpoint stores)."""
        params = {name: getattr(self, name) for name in self._COMMON_PARAMS + self._EXTRA_PARAMS}
        params["channels"] = list(self.channels)
        return params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check_params(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {LOSS_KINDS}, got {self.loss!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.n_members < 1 or self.batch_size < 1 or not self.channels or not 0 <= self.val_fraction < 1:
            raise ValueError("need n_members >= 1, batch_size >= 1, channels, 0 <= val_fraction < 1")

    # ----- training ---------------------------------------------------------------------
    def fit(
        self,
        plans: Sequence[FlatPlan],
        latencies_ms: np.ndarray,
        groups: np.ndarray | None = None,
        val: tuple[Sequence[FlatPlan], np.ndarray, np.ndarray | None] | None = None,
        *,
        epochs: int | None = None,
        time_budget_s: float | None = None,
    ) -> PlanModel:
        """Train on ``plans`` with measured ``latencies_ms``; ``groups`` (one id per plan,
        e.g. the query) scopes the ranking loss and the validation split. ``val`` is an
        optional ``(plans, latencies_ms, groups)``; without it ``val_fraction`` of the
        groups is held out. Stops at ``epochs``, on ``patience`` or on ``time_budget_s``
        (``stop_reason_``), and keeps the epoch with the best validation loss.

        Example::

            >>> from lqo.learn.featurized import example_join as toy
            >>> plans = [toy(float(a), float(b)) for a in range(1, 5) for b in range(1, 5)]
            >>> ms, query_ids = np.array([10.0 * p.x[1, 1] + p.x[2, 1] for p in plans]), np.repeat(np.arange(4), 4)
            >>> from lqo.learn.model_kinds import TreeConvModel
            >>> model = TreeConvModel(epochs=4).fit(plans, ms, groups=query_ids)
            >>> model.history_[-1]  # doctest: +ELLIPSIS
            {'epoch': 3, 'train_loss': ..., 'val_loss': ..., 'lr': ..., 'time_s': ...}
            >>> model.stop_reason_
            'epochs'
        """
        self._check_params()
        y, gid = _labels(plans, latencies_ms, groups)
        rng = np.random.default_rng(self.seed)
        start = time.perf_counter()
        with torch_env(self.n_threads, self.seed):
            if val is None:
                tr, va = split_groups(gid, self.val_fraction, rng)
                val_plans, val_y, val_g = [plans[i] for i in va], y[va], gid[va]
                plans, y, gid = [plans[i] for i in tr], y[tr], gid[tr]
            else:
                val_plans = list(val[0])
                val_y, val_g = _labels(val_plans, val[1], val[2]) if val_plans else (np.zeros(0), np.zeros(0, np.int64))
            self._init_state(plans, val_plans, np.log1p(y))
            one_group = groups is None  # no query ids: rank every plan in a batch against every other
            train = (plans, self._scale(y), gid, one_group)
            val_set = (val_plans, self._scale(val_y), val_g, one_group) if len(val_plans) else None
            if val_set is not None and self.loss == "ranking":  # nothing to rank there: watch the train loss
                g = torch.zeros(len(val_y), dtype=torch.int64) if one_group else torch.from_numpy(val_g)
                val_set = val_set if ranking_pairs(g, val_set[1])[0].numel() else None
            self._train(train, val_set, self.epochs if epochs is None else epochs,
                        self.time_budget_s if time_budget_s is None else time_budget_s, rng, start)
        self.fit_time_s_ = time.perf_counter() - start
        return self

    def _scale(self, y: np.ndarray) -> Tensor:
        return torch.tensor((np.log1p(y) - self.label_mean_) / self.label_std_, dtype=torch.float32)

    def _loss_sum(self, idx: np.ndarray, data: tuple) -> Tensor:
        """Loss on one batch summed over members. Members are independent, so one
        backward over the sum trains each exactly as alone (Adam is per-parameter)."""
        plans, target, gid, one_group = data
        batch = self._batch([plans[i] for i in idx])
        t, g = target[idx], (None if one_group else torch.from_numpy(gid[idx]))
        return plan_loss(self.loss, self.net_(batch), t, g, self.rank_weight)

    def _train(self, train: tuple, val: tuple | None, epochs: int, budget: float | None,
               rng: np.random.Generator, start: float) -> None:
        nets = self.net_
        # fused: one kernel for ~100 small tensors; the per-tensor loop was a third of the step time.
        opt = torch.optim.Adam(nets.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)
        sched: Any = (
            GreedyLR(opt, factor=0.8, patience=2, smooth=True, window=3, min_lr=self.lr * 1e-2)
            if self.lr_schedule == "greedy"
            else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=self.lr * 1e-2)
        )
        # Validation in whole-group chunks, so no ranking pair is cut apart.
        val_chunks = group_batches(val[2], _PREDICT_CHUNK, np.random.default_rng(0)) if val else []
        best, best_state, bad = math.inf, copy.deepcopy(nets.state_dict()), 0
        self.history_: list[dict[str, Any]] = []
        self.stop_reason_, self.best_epoch_ = "epochs", -1
        for epoch in range(epochs):
            nets.train()
            total, seen = 0.0, 0
            for idx in group_batches(train[2], self.batch_size, rng):
                loss = self._loss_sum(idx, train)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
                if budget is not None and time.perf_counter() - start > budget:
                    self.stop_reason_ = "time_budget"
                    break
            train_loss = total / (self.n_members * seen)
            val_loss = None
            if val is not None:
                nets.eval()
                with torch.no_grad():
                    val_loss = sum(float(self._loss_sum(i, val)) * len(i) for i in val_chunks)
                val_loss /= self.n_members * len(val[0])
            watched = val_loss if val_loss is not None else train_loss
            self.history_.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                  "lr": float(opt.param_groups[0]["lr"]), "time_s": time.perf_counter() - start})
            if watched < best - 1e-6:
                best, best_state, bad, self.best_epoch_ = watched, copy.deepcopy(nets.state_dict()), 0, epoch
            else:
                bad += 1
            if self.stop_reason_ == "time_budget":
                break
            if bad >= self.patience:
                self.stop_reason_ = "patience"
                break
            sched.step(watched) if self.lr_schedule == "greedy" else sched.step()
        nets.load_state_dict(best_state)
        nets.eval()
        self.best_loss_ = best

    def _init_state(self, plans: Sequence[FlatPlan], val_plans: Sequence[FlatPlan], log_y: np.ndarray) -> None:
        """Infer dimensions and scaling from the training plans and build fresh members."""
        every = list(plans) + list(val_plans)
        self.n_features_ = int(plans[0].x.shape[1])
        self.n_query_ = int(plans[0].query.shape[0])
        self._check_dims(every)
        inferred = max(int(p.table.max(initial=0)) for p in every) + 1
        self.n_tables_ = int(self.n_tables) if self.n_tables is not None else inferred
        self.label_mean_ = float(log_y.mean())
        self.label_std_ = float(log_y.std()) if log_y.std() > 1e-6 else 1.0
        # Stats over real nodes only: the null rows are padding, not data.
        x_mean, x_std = _feature_stats([p.x[1:] for p in plans])
        q_mean, q_std = _feature_stats([p.query[None, :] for p in plans])
        torch.manual_seed(self.seed)
        self.net_ = self._build_net()
        # Module.__getattr__ types any attribute Tensor | Module; every kind's net defines set_scaling.
        self.net_.set_scaling(x_mean, x_std, q_mean, q_std)  # type: ignore[operator]

    def _check_dims(self, plans: Sequence[FlatPlan]) -> None:
        for p in plans:
            if p.x.shape[1] != self.n_features_ or p.query.shape[0] != self.n_query_:
                raise SchemaMismatchError(
                    f"plan has {p.x.shape[1]} node / {p.query.shape[0]} query features, "
                    f"the model expects {self.n_features_} / {self.n_query_}"
                )

    # ----- inference --------------------------------------------------------------------
    def _predict_log(self, plans: Sequence[FlatPlan]) -> np.ndarray:
        """Per-member predictions of log1p(ms), shape [n_members, n_plans]."""
        if not hasattr(self, "net_"):
            raise LqoError(f"{type(self).__name__} is not fitted; call fit() or load() first")
        if len(plans) == 0:
            return np.zeros((self.n_members, 0))
        self._check_dims(plans)
        outs = []
        with torch_env(self.n_threads), torch.inference_mode():
            for lo in range(0, len(plans), _PREDICT_CHUNK):
                batch = self._batch(plans[lo : lo + _PREDICT_CHUNK])
                outs.append(self.net_(batch))
        scaled = torch.cat(outs, dim=1).double().numpy()
        return scaled * self.label_std_ + self.label_mean_

    def predict(self, plans: Sequence[FlatPlan]) -> np.ndarray:
        """Predicted latency in ms, one per plan (ensemble mean in log space).

        Example (needs a fitted model or its file; the module example runs them)::

            >>> best = plans[int(np.argmin(model.predict(plans)))]  # doctest: +SKIP
        """
        return _to_ms(self._predict_log(plans).mean(axis=0))

    def predict_with_uncertainty(self, plans: Sequence[FlatPlan]) -> tuple[np.ndarray, np.ndarray]:
        """``(mean_ms, std_log)``: the prediction and the ensemble's spread in log1p(ms) units
        (0.1 is about +-10%). Zero when ``n_members == 1``.

        Example (needs a fitted model or its file; the module example runs them)::

            >>> ms, std = model.predict_with_uncertainty(plans)  # doctest: +SKIP
            >>> use_native = std[best] > 0.5  # doctest: +SKIP
        """
        log = self._predict_log(plans)
        return _to_ms(log.mean(axis=0)), log.std(axis=0)

    # ----- persistence ------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, vocabulary: dict[str, int] | None = None,
             schema: str | None = None) -> None:
        """Write a checkpoint (see :mod:`lqo.learn.checkpoint`) with the caller's table
        vocabulary and schema fingerprint (defaults: those the model was loaded with).

        Example (needs a fitted model or its file; the module example runs them)::

            >>> model.save("example.lqo", vocabulary={"title": 1, "cast_info": 2}, schema="sha1:...")  # doctest: +SKIP
        """
        if not hasattr(self, "net_"):
            raise LqoError(f"{type(self).__name__} is not fitted; nothing to save")
        save_checkpoint(path, Checkpoint(
            kind=self.kind, params=self.get_params(),
            dims={"n_features": self.n_features_, "n_query": self.n_query_, "n_tables": self.n_tables_},
            tensors=dict(self.net_.state_dict()),
            vocabulary=dict(vocabulary if vocabulary is not None else self.vocabulary_),
            schema=schema if schema is not None else self.schema_,
            label_stats={"mean": self.label_mean_, "std": self.label_std_},
            extra={"history": getattr(self, "history_", []), "best_epoch": getattr(self, "best_epoch_", -1)},
        ))

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_schema: str | None = None) -> PlanModel:
        """Rebuild a model of this kind from :meth:`save`'s file. Raises MissingFileError,
        SchemaMismatchError (when ``expected_schema`` differs) or LqoError (another kind:
        :func:`lqo.learn.model_kinds.load_model` picks the kind from the file).

        Example (needs a fitted model or its file; the module example runs them)::

            >>> model = TreeConvModel.load("example.lqo", expected_schema=catalog.fingerprint)  # doctest: +SKIP
        """
        return cls.from_checkpoint(load_checkpoint(path, expected_schema), path)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, path: str | os.PathLike[str] = "checkpoint") -> PlanModel:
        """Rebuild a model of this class from a loaded checkpoint of the same kind."""
        if ckpt.kind != getattr(cls, "kind", None):
            raise LqoError(f"{path} holds a {ckpt.kind!r} model, not a {cls.__name__}")
        model = cls(**ckpt.params)
        model.n_features_, model.n_query_ = int(ckpt.dims["n_features"]), int(ckpt.dims["n_query"])
        model.n_tables_ = int(ckpt.dims["n_tables"])
        model.label_mean_, model.label_std_ = float(ckpt.label_stats["mean"]), float(ckpt.label_stats["std"])
        model.net_ = model._build_net()
        try:
            model.net_.load_state_dict(ckpt.tensors, strict=True)
        except RuntimeError as exc:
            raise LqoError(f"{path}: weights do not fit a {ckpt.kind} model: {exc}") from exc
        model.net_.eval()
        model.vocabulary_, model.schema_ = dict(ckpt.vocabulary), ckpt.schema
        model.history_ = list(ckpt.extra.get("history", []))
        model.best_epoch_ = int(ckpt.extra.get("best_epoch", -1))
        return model
