"""The learned policy: a graph-convolution network scores waiting queries (Decima/LSched style).

Per waiting query:

- its physical plan (``features.PlanGraph``) is encoded by ``layers`` GCN layers
  (torch-geometric ``GCNConv``) over vertex features [operator one-hot, log estimated
  cardinality / 20], mean+max pooled into an embedding (computed once per query);
- query features: log1p(latency at 1 thread, ms) / 10 (``latency_source``: ``known``,
  the best figure lqo has before running the query, see ``knowledge.py``; older
  checkpoints: ``measured``, the profile's), its speed-up at the largest thread option
  minus 1 (0 if unmeasured), log1p(seconds waited), and whether that latency was
  measured (on the query or its template) rather than predicted or estimated;
- load features: running / workers, free threads / budget, log1p(waiting) / 5,
  log1p(total 1-thread seconds waiting) / 5, plus the mean embedding of all waiting queries.

A priority head turns [embedding, query, load, waiting summary] into one score per
waiting query (softmax over them: which runs next); a thread head turns [embedding,
query, load] into logits over ``thread_options`` (options above the free threads are
masked). A thread option of 0 means *hold*: start nothing now, though a worker is free
(admission control: fewer queries at once); it is only allowed while another query
runs, so the machine never idles with work waiting. Deployed, both heads are argmax; in
training they are sampled (``train_policy.py``). With ``use_graph=False`` the plan
encoder is off (the embedding is zero): the policy then reads latencies and load only.

With ``sjf_prior=True`` the priority is a *correction* to shortest-job-first on the
latency feature: ``prio = head(...) - w x log1p(latency ms)``, ``w`` a learned weight
starting at 3 (a query half as long is about 8x likelier to go first). Untrained, the
policy is already SJF on what lqo knows; training only moves it where that pays, so an
unfamiliar plan graph cannot overturn a good latency figure. With ``correct_known_only``
as well, the correction applies only to queries whose latency lqo measured (on the query
or its template): a query known only by its estimate or a prediction is ordered by plain
SJF on that figure, because on never-seen templates the network's corrections are
extrapolation (held-out templates, split 1: 1.5x sjf-known's mean completion without the
gate). The thread head still decides threads and holds for every query.

Checkpoints use ``lqo.learn.checkpoint`` (kind ``sched_gcn``): tensors plus JSON
metadata (hyper-parameters, the operator vocabulary, thread options, latency source,
training history), loaded with ``weights_only`` semantics, never an unpickled object.

>>> pol = LearnedPolicy.load("models/sched/scheduler.lqo")   # doctest: +SKIP
>>> Scheduler(policy=pol, workers=2).simulate(stream)         # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool

from lqo.errors import LqoError
from lqo.learn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from lqo.sched.jobs import OPS, Job, PlanGraph, QueryFeatures
from lqo.sched.policy import Assignment, Load, Policy

KIND = "sched_gcn"
N_QUERY = 4
N_LOAD = 4
_EMPTY_GRAPH = PlanGraph([0], [0.0], [])


class SchedNet(nn.Module):
    """Plan encoder plus priority and thread-count heads (see module docs)."""

    def __init__(self, n_ops: int = len(OPS), hidden: int = 32, layers: int = 2, n_threads: int = 2,
                 use_graph: bool = True, sjf_prior: bool = False, correct_known_only: bool = False) -> None:
        super().__init__()
        self.n_ops, self.hidden, self.layers, self.n_threads = n_ops, hidden, layers, n_threads
        self.use_graph = bool(use_graph)
        self.sjf_prior = bool(sjf_prior)
        self.correct_known_only = bool(correct_known_only) and self.sjf_prior
        self.lat_weight = nn.Parameter(torch.tensor(3.0)) if self.sjf_prior else None
        self.inp = nn.Linear(n_ops + 1, hidden)
        self.convs = nn.ModuleList(GCNConv(hidden, hidden) for _ in range(layers))
        self.pool = nn.Linear(2 * hidden, hidden)
        self.prio = nn.Sequential(nn.Linear(2 * hidden + N_QUERY + N_LOAD, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.thr = nn.Sequential(nn.Linear(hidden + N_QUERY + N_LOAD, hidden), nn.ReLU(), nn.Linear(hidden, n_threads))

    def params(self) -> dict[str, int]:
        """The constructor arguments, to rebuild the network from a checkpoint."""
        return {"n_ops": self.n_ops, "hidden": self.hidden, "layers": self.layers, "n_threads": self.n_threads,
                "use_graph": self.use_graph, "sjf_prior": self.sjf_prior,
                "correct_known_only": self.correct_known_only}

    def encode(self, graphs: Sequence[PlanGraph]) -> Tensor:
        """One embedding per graph, batched: shape ``[len(graphs), hidden]``."""
        if not self.use_graph:
            return torch.zeros(len(graphs), self.hidden)
        ops: list[int] = []
        est: list[float] = []
        src: list[int] = []
        dst: list[int] = []
        batch: list[int] = []
        off = 0
        for g, graph in enumerate(graphs):
            ops.extend(op if op < self.n_ops else 0 for op in graph.ops)  # newer ops -> OTHER
            est.extend(graph.log_est)
            for c, p in graph.edges:  # both directions: a plan is read up and down
                src += [c + off, p + off]
                dst += [p + off, c + off]
            batch.extend([g] * len(graph.ops))
            off += len(graph.ops)
        x = torch.cat([nn.functional.one_hot(torch.tensor(ops), self.n_ops).float(),
                       torch.tensor(est, dtype=torch.float32).unsqueeze(1) / 20.0], dim=1)
        edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
        b = torch.tensor(batch, dtype=torch.long)
        h = torch.relu(self.inp(x))
        for conv in self.convs:
            h = torch.relu(conv(h, edge_index)) + h
        pooled = torch.cat([global_mean_pool(h, b, len(graphs)), global_max_pool(h, b, len(graphs))], dim=1)
        return torch.relu(self.pool(pooled))

    def heads(self, emb: Tensor, qf: Tensor, load: Tensor) -> tuple[Tensor, Tensor]:
        """Priority logits ``[n]`` and thread logits ``[n, n_threads]`` for ``n`` waiting queries."""
        n = emb.shape[0]
        ld = load.unsqueeze(0).expand(n, -1)
        summary = emb.mean(dim=0, keepdim=True).expand(n, -1)
        prio = self.prio(torch.cat([emb, qf, ld, summary], dim=1)).squeeze(1)
        if self.correct_known_only:  # qf[:, 3] is 1 where the latency was measured
            prio = prio * qf[:, 3]
        if self.lat_weight is not None:  # qf[:, 0] is log1p(latency ms) / 10
            prio = prio - self.lat_weight * qf[:, 0] * 10.0
        thr = self.thr(torch.cat([emb, qf, ld], dim=1))
        return prio, thr


KNOWN_SOURCES = frozenset({"measured", "template", "book"})


def latency1_ms(f: QueryFeatures, source: str) -> float | None:
    """The 1-thread latency the policy sees: ``known`` (the knowledge's), else measured,
    else (``source='predicted'``) predicted."""
    if source == "known":
        return f.known_ms
    if source == "measured" and f.lat_ms:
        return f.latency_s(1) * 1000.0
    return f.pred_ms if f.pred_ms is not None else (f.latency_s(1) * 1000.0 if f.lat_ms else None)


def _assign(index: int, threads: int) -> Assignment | None:
    """The policy's answer: ``None`` for the hold option (0 threads)."""
    return Assignment(index, threads) if threads > 0 else None


class LearnedPolicy(Policy):
    """Deployable policy around a ``SchedNet``. ``greedy=False`` samples (training).

    While ``self.trace`` is a list, every decision appends ``(log_prob, entropy, now)``;
    while ``self.teacher`` is set, it appends the student's cross-entropy on the teacher's
    choice instead (imitation) and follows the teacher, or with probability
    ``student_mix`` its own greedy choice (DAgger-style: it learns the teacher's answer in
    the states its own mistakes lead to).
    """

    name = "learned"

    def __init__(self, net: SchedNet, thread_options: Sequence[int] = (1, 2), latency_source: str = "measured",
                 greedy: bool = True, meta: dict[str, Any] | None = None) -> None:
        if len(thread_options) != net.n_threads:
            raise LqoError(f"network has {net.n_threads} thread options, got {list(thread_options)}")
        self.net = net
        self.thread_options = [int(t) for t in thread_options]
        self.latency_source = latency_source
        self.needs = frozenset({"graph", {"measured": "lat", "known": "known"}.get(latency_source, "pred")})
        self.greedy = greedy
        self.meta = meta or {}
        self.thread_budget = self.meta.get("thread_budget") or None
        self.trace: list[tuple[Tensor, Tensor, float]] | None = None
        self.teacher: Policy | None = None
        self.student_mix = 0.0
        self._rng = torch.Generator().manual_seed(0)
        self._emb: Tensor | None = None
        self._row: dict[int, int] = {}
        self._lat: dict[int, float] = {}
        self._speedup: dict[int, float] = {}
        self._measured: dict[int, float] = {}

    def begin(self, jobs: Sequence[Job]) -> None:
        """Embed every query of the schedule once, before it starts."""
        feats: dict[int, QueryFeatures] = {}
        for j in jobs:
            feats.setdefault(id(j.f), j.f)
        self._row = {k: i for i, k in enumerate(feats)}
        graphs = [f.graph or _EMPTY_GRAPH for f in feats.values()]
        with torch.set_grad_enabled(self.trace is not None):
            self._emb = self.net.encode(graphs) if graphs else None
        top = max(self.thread_options)
        for k, f in feats.items():
            lat = latency1_ms(f, self.latency_source)
            if lat is None:
                raise LqoError(f"learned policy: no latency for query {f.key} (profile or --model needed)")
            self._lat[k] = lat
            if self.latency_source == "known":  # never the profile: held-out queries are not in it
                self._speedup[k] = min(float(top), f.known_speedup) - 1.0 if f.known_speedup else 0.0
                self._measured[k] = 1.0 if f.known_source in KNOWN_SOURCES else 0.0
            else:
                self._speedup[k] = f.parallelism(top) - 1.0 if f.lat_ms else 0.0
                self._measured[k] = 1.0 if f.lat_ms else 0.0

    def _inputs(self, embedded: Tensor, waiting: Sequence[Job], load: Load) -> tuple[Tensor, Tensor, Tensor]:
        keys = [id(j.f) for j in waiting]
        emb = embedded[torch.tensor([self._row[k] for k in keys])]
        qf = torch.tensor([[math.log1p(self._lat[k]) / 10.0, self._speedup[k],
                            math.log1p(max(0.0, load.now - j.arrival_s)), self._measured[k]]
                           for k, j in zip(keys, waiting)], dtype=torch.float32)
        total = sum(self._lat[k] for k in keys) / 1000.0
        ld = torch.tensor([len(load.running) / load.workers, load.free_threads / load.budget,
                           math.log1p(len(waiting)) / 5.0, math.log1p(total) / 5.0], dtype=torch.float32)
        return emb, qf, ld

    def pick(self, waiting: Sequence[Job], load: Load) -> Assignment | None:
        """The waiting query to start and its threads (or hold), by the network's scores."""
        if self._emb is None:
            raise LqoError("LearnedPolicy.begin() was not called")
        trace = self.trace
        train = trace is not None
        with torch.set_grad_enabled(train):
            emb, qf, ld = self._inputs(self._emb, waiting, load)
            prio, thr = self.net.heads(emb, qf, ld)
            allowed = torch.tensor([(t <= max(1, load.free_threads)) if t > 0 else bool(load.running)
                                    for t in self.thread_options])
            if not bool(allowed.any()):
                allowed[min((t, k) for k, t in enumerate(self.thread_options) if t > 0)[1]] = True
            thr = thr.masked_fill(~allowed.unsqueeze(0), -1e9)
            if self.teacher is not None:
                d = self.teacher.pick(waiting, load)
                if d is None:
                    raise LqoError(f"teacher policy {self.teacher.name} held with {len(waiting)} queries waiting: "
                                   "nothing to imitate")
                t_opt = min(range(len(self.thread_options)),
                            key=lambda k: (not allowed[k], abs(self.thread_options[k] - d.threads)))
                ce = nn.functional.cross_entropy(prio.unsqueeze(0), torch.tensor([d.index])) + \
                    nn.functional.cross_entropy(thr[d.index].unsqueeze(0), torch.tensor([t_opt]))
                if trace is not None:
                    trace.append((ce, torch.zeros(()), load.now))
                if self.student_mix > 0 and float(torch.rand((), generator=self._rng)) < self.student_mix:
                    i = int(prio.argmax())
                    return _assign(i, self.thread_options[int(thr[i].argmax())])
                return _assign(d.index, self.thread_options[t_opt])
            if self.greedy and not train:
                i = int(prio.argmax())
                return _assign(i, self.thread_options[int(thr[i].argmax())])
            pd = torch.distributions.Categorical(logits=prio)
            i = pd.sample()
            td = torch.distributions.Categorical(logits=thr[i])
            k = td.sample()
            if trace is not None:
                trace.append((pd.log_prob(i) + td.log_prob(k), pd.entropy() + td.entropy(), load.now))
            return _assign(int(i), self.thread_options[int(k)])

    # ----- checkpoints -----------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the weights and JSON metadata atomically (``lqo.learn.checkpoint``)."""
        ckpt = Checkpoint(kind=KIND, params=self.net.params(), dims={"n_query": N_QUERY, "n_load": N_LOAD},
                          tensors=dict(self.net.state_dict()), vocabulary={op: i for i, op in enumerate(OPS)},
                          extra={"thread_options": self.thread_options, "latency_source": self.latency_source,
                                 **self.meta, **(extra or {})})
        return save_checkpoint(path, ckpt)

    @classmethod
    def load(cls, path: str | Path) -> "LearnedPolicy":
        """Read a checkpoint written by :meth:`save` (``MissingFileError`` / ``LqoError``)."""
        p = Path(path)
        if p.is_dir():
            p = p / "scheduler.lqo"
        ckpt = load_checkpoint(p)
        if ckpt.kind != KIND:
            raise LqoError(f"{p} holds a {ckpt.kind!r} model, not a learned scheduler ({KIND!r})")
        if any(i >= len(OPS) or OPS[i] != op for op, i in ckpt.vocabulary.items()):
            raise LqoError(f"{p} was trained with another operator vocabulary")
        net = SchedNet(**ckpt.params)
        try:
            net.load_state_dict(ckpt.tensors)
        except RuntimeError as exc:
            raise LqoError(f"{p}: weights do not fit the network ({str(exc).splitlines()[0]})") from None
        net.eval()
        extra = dict(ckpt.extra)
        return cls(net, extra.pop("thread_options", [1, 2]), extra.pop("latency_source", "measured"), meta=extra)
