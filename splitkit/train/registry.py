"""The recipe registry: every recipe object under its name.

The registry sits below everything else in ``train/`` so that the step, the nested step and the
trainer config can look a recipe up by name while the recipes (:mod:`.recipes`) call those steps:
imports then run one way. The recipes register themselves when :mod:`.recipes` is imported, which
the package's ``__init__`` does before anything in it can ask.
"""

from __future__ import annotations

from typing import Any

_REGISTRY: dict[str, Any] = {}  # name -> the one instance of a registered Recipe subclass


def register(cls: type) -> type:
    """Class decorator: make ``cls`` (a :class:`~.recipes.Recipe` with a unique ``name``) available by name."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"recipe name {cls.name!r} is empty or taken")
    _REGISTRY[cls.name] = cls()
    return cls


def recipe_names() -> tuple[str, ...]:
    """The registered recipes' names, in registration order."""
    return tuple(_REGISTRY)


def get_recipe(recipe: Any) -> Any:
    """The recipe object of ``recipe``: a registered name, or a recipe object, returned as it is."""
    if not isinstance(recipe, str):
        return recipe
    if recipe not in _REGISTRY:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[recipe]
