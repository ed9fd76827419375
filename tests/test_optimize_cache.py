"""``lqo.optimize(sql, con, model=PATH)`` loads a directory once, until its files change."""

from __future__ import annotations

import os

import duckdb

import lqo
from lqo import optimizer


def test_optimize_by_path_reuses_the_loaded_directory_until_it_changes(tpch_db, tmp_path):
    from test_connection import TREE, _book

    con = duckdb.connect(str(tpch_db), read_only=True)
    _book(tmp_path, con)
    sql = TREE.format("'F'", 10)
    first = lqo.optimize(sql, con, model=tmp_path)
    loaded = dict(optimizer._LOADED)
    assert first.source == "book" and first.forced
    assert lqo.optimize(sql, con, model=str(tmp_path)).sql == first.sql
    assert dict(optimizer._LOADED) == loaded  # the same Optimizer, no reload
    book = tmp_path / "book.json"
    os.utime(book, (book.stat().st_atime, book.stat().st_mtime + 5))  # the book changed: loaded again
    lqo.optimize(sql, con, model=tmp_path)
    assert len(set(optimizer._LOADED.values()) - set(loaded.values())) == 1
    con.close()
