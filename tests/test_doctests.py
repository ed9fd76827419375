"""The runnable examples in module docstrings stay true."""

import doctest
import importlib

import pytest

MODULES = ["lqo.trees.plan", "lqo.trees.enumerate", "lqo.trees.render", "lqo.sql.join_graph", "lqo.sql.relations", "lqo.train.recipe", "lqo.sql.catalog"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
