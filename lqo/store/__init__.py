"""The experience store: every query, plan and run lqo has seen, in one DuckDB file.

``experience`` is the store, ``schema`` its file's tables and version, ``journal`` the
writes a remote task holds back for the one process that owns the store, ``keys`` the
stable keys of queries and plans. Written by exploration, tuning, ``lqo run`` and
training; read by training and scheduling.
"""
