"""The persistent compilation cache: a compiled step is kept on disk, so the next
command with the same model, shapes and flags skips XLA's compile (the larger part of a
small run's start-up, and of every job of a sweep after the first).

On by default for the `t5x-lite` command and for sweep jobs, in
`$XDG_CACHE_HOME/t5x_lite/jax/<jaxlib version>-<CPU id>` (`~/.cache/...` by default).
`T5X_LITE_COMPILATION_CACHE` names another directory, or `off` turns it off; JAX's own
`JAX_COMPILATION_CACHE_DIR` and other `JAX_*` cache settings, when set, win. Python
callers opt in with `enable()`. Compiles that take over 0.1 s are kept: a fine-tuning
command's evaluation and scoring functions compile in 0.4-0.6 s and load from the cache
in 0.02-0.04 s (JAX's default, 1 s, recompiled them in every command). The cache is
capped at 4 GiB (least recently used entries go first).
"""

from __future__ import annotations

import hashlib
import os
import platform

import jax
import jaxlib.version

ENV = "T5X_LITE_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "none")
MAX_BYTES = 4 * 2**30
MIN_COMPILE_S = 0.1


def default_dir() -> str:
    """One directory per jaxlib version and CPU: a compiled CPU program carries the
    instruction set it was built for, and a home directory may outlive the machine."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "t5x_lite", "jax", f"{jaxlib.version.__version__}-{machine_id()}")


def machine_id() -> str:
    """A short hash of the CPU's model name and instruction-set flags (Linux), or of the
    platform's description elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        text = "".join(sorted(set(lines)))
    except OSError:
        text = ""
    text = text or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def choose_dir(environ=None) -> str | None:
    """The directory the cache goes to, or None when it is off."""
    environ = os.environ if environ is None else environ
    setting = environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return None
    return environ.get("JAX_COMPILATION_CACHE_DIR") or setting or default_dir()


def enable() -> str | None:
    """Turn the cache on (before the first compile) -> its directory, or None when it is
    off or the directory cannot be created (then every command compiles, as before).
    JAX's own JAX_* environment settings of the cache are kept."""
    path = choose_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # a read-only home: run uncached rather than fail
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
