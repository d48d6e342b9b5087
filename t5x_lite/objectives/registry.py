"""Name -> objective class(es); `build_objective` turns the config into an instance.

One name may have one class per architecture ("prefix_lm" is an encoder-decoder
objective and a decoder-only one), so a config keeps its objective name when it
switches `model.arch`, and the data pipeline follows the architecture.
"""

from __future__ import annotations

import difflib

from t5x_lite.errors import UserError

_REGISTRY: dict[str, list[type]] = {}


def register(name: str):
    def wrap(cls):
        taken = [arch for other in _REGISTRY.get(name, []) for arch in other.architectures]
        if set(taken) & set(cls.architectures):
            raise ValueError(f"objective {name!r} registered twice for one of {taken}")
        cls.name = name
        _REGISTRY.setdefault(name, []).append(cls)
        return cls

    return wrap


def names() -> list[str]:
    return sorted(_REGISTRY)


def architectures(name: str) -> list[str]:
    """Every `model.arch` that objective `name` fits."""
    return [arch for cls in _classes(name) for arch in cls.architectures]


def _classes(name: str) -> list[type]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; choose from {names()}"
        raise UserError(f"config.objective.name={name!r} is not a registered objective{hint}")
    return _REGISTRY[name]


def get_class(name: str, arch: str | None = None) -> type:
    """The class of objective `name` for `arch` (any `model.arch` value); arch=None only
    for names with a single class."""
    classes = _classes(name)
    if arch is None:
        if len(classes) > 1:
            raise ValueError(f"objective {name!r} has one class per architecture; pass arch")
        return classes[0]
    for cls in classes:
        if arch in cls.architectures:
            return cls
    raise UserError(
        f"config.objective.name={name!r} does not fit config.model.arch={arch!r}; it fits "
        f"{', '.join(architectures(name))}: change one of the two"
    )
