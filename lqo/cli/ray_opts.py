"""``--ray [ADDRESS]``, ``--ray-slots``, ``--ray-threads``: shared by ``explore`` and ``tune``.

Without ``--ray`` nothing of :mod:`lqo.distributed` (nor Ray) is imported.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

from lqo.errors import LqoError


def add_ray_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Ray (extra lqo[ray])")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the measurements on Ray executors: without ADDRESS a local Ray instance on this machine; "
                   "'auto' the cluster `ray start` runs here; HOST:PORT a cluster's head. Every node needs the "
                   "workload's database at the same path")
    g.add_argument("--ray-slots", type=int, default=1, metavar="N",
                   help="executors per node (default 1), each with its own read-only connection")
    g.add_argument("--ray-threads", type=int, metavar="N",
                   help="DuckDB threads per executor (default: the node's CPUs / slots)")


@contextmanager
def ray_pool(args: argparse.Namespace, database: Any, quiet: bool = False) -> Iterator[Any]:
    """The executor pool ``--ray`` asks for (closed, actors killed, on the way out), or None."""
    if args.ray is None:
        if args.ray_slots != 1 or args.ray_threads is not None:
            raise LqoError("--ray-slots and --ray-threads need --ray")
        with nullcontext() as none:
            yield none
        return
    import importlib.util

    try:  # a missing extra, told apart from other errors
        missing = importlib.util.find_spec("ray") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        raise LqoError("--ray needs Ray: pip install 'lqo[ray]'")
    from lqo.distributed.pool import ExecutorPool

    log = (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    with ExecutorPool(database, address=args.ray, slots=args.ray_slots, threads=args.ray_threads, log=log) as pool:
        yield pool


def format_nodes(nodes: list[dict] | None) -> str:
    """One line per node: what it ran."""
    if not nodes:
        return ""
    return "\n".join(f"node {n['node']} ({n['host']}): {n['executors']} executor(s) x {n['threads']} threads, "
                     f"{n['tasks']} tasks, {n['runs']} runs, {n['retries']} retries, busy {n['busy_s']:.0f} s"
                     for n in nodes)
