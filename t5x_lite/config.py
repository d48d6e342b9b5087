"""Load an ml_collections config file, apply `--config.a.b=value` overrides, save it.

A config spec is `path/to/file.py:variant`; the file defines `get_config(arg)`. Overrides
are type-checked against the value already in the config, and an unknown key fails with
a one-line error naming the key and the nearest valid ones.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Iterable

import ml_collections

from t5x_lite import fileio, validate
from t5x_lite.errors import UserError


def import_file(path: str):
    """The Python file at `path` as a module, without touching sys.path.

    Config files use it to build on a sibling: `import_file(os.path.join(
    os.path.dirname(__file__), "pretrain.py"))`.
    """
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UserError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(
        f"_t5x_lite_config_{abs(hash(path))}", path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load(spec: str, overrides: Iterable[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """`file.py[:variant]` plus (dotted key, string value) overrides -> locked ConfigDict."""
    path, _, variant = spec.partition(":")
    # A local file: it is imported as a Python module (a run's saved config.json, which
    # `load_saved` reads, may be anywhere `fileio` reads).
    if not os.path.isfile(path):
        raise UserError(f"--config file {path!r} does not exist")
    module = import_file(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config file {path!r} defines no get_config(arg)")
    try:
        config = module.get_config(variant or None)
    except (KeyError, ValueError) as e:
        raise UserError(f"--config={spec}: {str(e).strip(chr(39))}") from None
    config.lock()
    overrides = list(overrides)
    keys = flatten(config)
    validate.check_linked_overrides(
        config, [(key, parse_value(key, raw, keys[key])) for key, raw in overrides if key in keys]
    )
    for key, raw in overrides:
        set_value(config, key, raw)
    return config


def shipped_config(name: str) -> str | None:
    """The path of `gin_configs/<name>` in the checkout the package runs from, if any
    (an editable install, as `make install` makes; a wheel carries no configs)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "gin_configs", name)
    return path if os.path.isfile(path) else None


def load_saved(
    workdir: str, overrides: Iterable[tuple[str, str]] = ()
) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `<workdir>/config.json`, plus overrides."""
    path = fileio.join(workdir, "config.json")
    if not fileio.isfile(path):
        raise UserError(f"--workdir {workdir} has no config.json; give the directory of a run")
    config = ml_collections.ConfigDict(_tuples(json.loads(fileio.read_text(path))))
    config.lock()
    for key, raw in overrides:
        set_value(config, key, raw)
    return config


def _tuples(value):
    """JSON lists back to the tuples the config files write (rules, labels, shots)."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    """Every leaf of the config under its dotted key."""
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def set_value(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Set `config.<key>` from the command-line string `raw`, parsed to the current type."""
    keys = flatten(config)
    if key not in keys:
        raise UserError(f"unknown config key {key!r}{_suggest(key, keys)}")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = parse_value(key, raw, keys[key])


def parse_value(key: str, raw: str, current: object) -> object:
    """Parse `raw` to the type of `current`; a mismatch is a one-line UserError."""
    expected = type(current)
    if isinstance(current, bool):
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise UserError(f"--config.{key} expects a bool (true/false), got {raw!r}")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise UserError(
            f"--config.{key} expects {expected.__name__}, got {raw!r} (not a literal)"
        ) from None
    if current is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return expected(value)
    if type(value) is not expected:
        raise UserError(
            f"--config.{key} expects {expected.__name__}, got {raw!r} ({type(value).__name__})"
        )
    return value


def _suggest(key: str, keys: Iterable[str]) -> str:
    """Nearest valid keys: by the whole dotted key, then by the last component alone."""
    keys = list(keys)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
    close_leaves = set(difflib.get_close_matches(leaf, leaves.values(), n=3, cutoff=0.7))
    close += [k for k, v in leaves.items() if v in close_leaves and k not in close]
    if not close:
        return "; see the config file for the valid keys"
    return "; did you mean " + " or ".join(close[:3]) + "?"


def to_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def save(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Write the resolved config as `<workdir>/config.json`; returns the path."""
    fileio.makedirs(workdir)
    path = fileio.join(workdir, "config.json")
    fileio.write_text(path, json.dumps(to_dict(config), indent=2, sort_keys=True))
    return path


def diff(saved: dict, config: ml_collections.ConfigDict, sections: Iterable[str]) -> list[str]:
    """Dotted keys under `sections` whose values differ between a saved and a live config."""
    current = flatten(ml_collections.ConfigDict(to_dict(config)))
    before = flatten(ml_collections.ConfigDict(saved))
    changed = []
    for key in sorted(set(current) | set(before)):
        if key.split(".", 1)[0] in sections and current.get(key) != before.get(key):
            changed.append(f"{key}: {before.get(key)!r} -> {current.get(key)!r}")
    return changed
