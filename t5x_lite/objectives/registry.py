"""Name -> objective class; `build_objective` turns the config into an instance."""

from __future__ import annotations

import difflib

from t5x_lite.errors import UserError

_REGISTRY: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_class(name: str) -> type:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; choose from {names()}"
        raise UserError(f"config.objective.name={name!r} is not a registered objective{hint}")
    return _REGISTRY[name]
