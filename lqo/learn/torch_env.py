"""A scoped torch environment: threads, deterministic kernels and a seeded RNG for the
duration of a call, then everything back as it was (a library must not change the
caller's torch state).

>>> import torch
>>> before = torch.get_num_threads()
>>> with torch_env(1, seed=0):
...     a = torch.rand(1).item()
>>> with torch_env(1, seed=0):
...     b = torch.rand(1).item()
>>> a == b, torch.get_num_threads() == before
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_env(n_threads: int | None, seed: int | None = None) -> Iterator[None]:
    """Threads, deterministic kernels and seeded RNG for the duration of a call, then
    everything back as it was: a library must not change the caller's torch state."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if n_threads is not None and n_threads != old_threads:
        torch.set_num_threads(n_threads)
    try:
        if seed is None:
            yield
        else:
            torch.use_deterministic_algorithms(True, warn_only=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                yield
    finally:
        if seed is not None:
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        if torch.get_num_threads() != old_threads:
            torch.set_num_threads(old_threads)
