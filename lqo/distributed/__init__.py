"""Exploration and tuning on a Ray cluster (``lqo explore/tune --ray``; extra ``lqo[ray]``).

``executor`` is one read-only DuckDB connection per node running the same measuring
code as the sequential path; ``pool`` connects to Ray, places executors, dispatches
tasks and retries once. Ray is imported only by ``pool``, and only when a pool is made:
without ``--ray`` nothing here is imported. The driver alone writes the experience
store (:mod:`lqo.store.journal`).
"""
