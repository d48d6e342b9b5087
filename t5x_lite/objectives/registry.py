"""Name -> objective class(es); `build` turns `config.objective` into an instance.

One name may have one class per architecture ("prefix_lm" is an encoder-decoder
objective and a decoder-only one), so a config keeps its objective name when it
switches `model.arch`, and the data pipeline follows the architecture.
"""

from __future__ import annotations

import difflib
import inspect

from t5x_lite.errors import UserError
from t5x_lite.tokenizer import SpecialIdsOnly

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


def build(objective_config, arch: str, tokenizer):
    """The objective `config.objective` (`objective_config`: its name and knobs) for
    `model.arch` `arch`, reading its ids from `tokenizer`. The knobs must be exactly the
    class's constructor arguments, less those it reads from the tokenizer."""
    cls = get_class(objective_config["name"], arch)
    knobs = {k: v for k, v in objective_config.items() if k != "name"}
    parameters = dict(inspect.signature(cls.__init__).parameters)
    parameters.pop("self")
    expected = set(parameters)
    # Knobs with a default may be absent: configs written before the knob existed.
    required = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty}
    missing = sorted(required - set(knobs) - set(cls.ids_from_tokenizer))
    unknown = sorted(set(knobs) - expected)
    if missing or unknown:
        raise UserError(
            f"config.objective for {cls.name!r}: missing keys {missing}, unknown keys {unknown}; "
            "start from a variant of this objective in gin_configs/"
        )
    return cls.build(tokenizer, **knobs)


def check(objective_config, arch: str, vocab_size: int) -> None:
    """Build the objective once with placeholder pieces (`SpecialIdsOnly`) so that its
    settings (lengths, rates, the architecture it needs) fail before any data is read or
    tokenizer trained."""
    build(objective_config, arch, SpecialIdsOnly(vocab_size))
