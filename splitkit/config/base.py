"""What every config section shares: frozen dataclasses that reject unknown keys, round-trip
through JSON (``to_dict`` / ``from_dict``) and are replaced, never mutated."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields, is_dataclass
from typing import Any


class ConfigError(ValueError):
    """Bad configuration value; the message says what is allowed."""


def _from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        sub = getattr(cls, "_SUBSECTIONS", {}).get(k)
        if sub is not None:
            kw[k] = _from_dict(sub, v)
        else:
            kw[k] = tuple(v) if isinstance(v, list) else v  # JSON has no tuples
    return cls(**kw)


def _recipe_names() -> tuple[str, ...]:
    """The trainer's registered recipes (``splitkit.train.recipes``): the one list of names."""
    from ..train.recipes import recipe_names

    return recipe_names()


def _recipe_uses_k(name: str) -> bool:
    """Whether recipe ``name``'s sparsity is TopK's k rather than lambda."""
    from ..train.recipes import get_recipe

    return get_recipe(name).uses_k


class _Section:
    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict):
        return _from_dict(cls, d)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


def is_config(obj: Any) -> bool:
    return is_dataclass(obj)
