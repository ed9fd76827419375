"""The runnable examples in module docstrings stay true."""

import doctest
import importlib

import pytest

MODULES = ["lqo.plan", "lqo.enumerate", "lqo.render", "lqo.join_graph", "lqo.relations", "lqo.recipe", "lqo.catalog"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
