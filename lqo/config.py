"""Configuration: plain dataclasses built from parsed TOML, checked field by field.

A component owns its config dataclass (``search.SearchConfig``,
``decision.DecisionConfig``, ...); a recipe composes them. Unknown keys and wrong types
are errors naming the key, so a typo never silently falls back to a default.

>>> from lqo.search import SearchConfig
>>> dataclass_from_toml(SearchConfig, {"width": 8}).width
8
>>> dataclass_from_toml(SearchConfig, {"widht": 8})
Traceback (most recent call last):
...
lqo.errors.RecipeError: unknown key widht
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lqo.errors import RecipeError


def dataclass_from_toml(cls: Any, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` (nested dataclasses included) from parsed TOML, checking
    keys and types against the fields' defaults; ``RecipeError`` names the bad key."""
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise RecipeError(f"unknown key {prefix}{key}")
        factory = fields[key].default_factory  # MISSING (not callable) when the field has a plain default
        default = factory() if callable(factory) else fields[key].default
        if dataclasses.is_dataclass(default):
            kwargs[key] = dataclass_from_toml(type(default), value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, default, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, name: str):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise RecipeError(f"{name} must be {type(default).__name__}, got {value!r}")
    return value
