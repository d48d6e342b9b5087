"""Start-up: the compilation cache's directory and the first-step timing line."""

import os
import subprocess
import sys
import time

import jaxlib.version
import pytest

from t5x_lite import compile_cache
from t5x_lite.train import startup


def test_cache_directory_follows_the_environment():
    choose = compile_cache.choose_dir
    default = compile_cache.default_dir()
    assert choose({}) == default
    assert choose({"T5X_LITE_COMPILATION_CACHE": "/c"}) == "/c"
    for off in ("off", "OFF", "0", "false", " none "):
        assert (
            choose({"T5X_LITE_COMPILATION_CACHE": off, "JAX_COMPILATION_CACHE_DIR": "/j"}) is None
        )
    # JAX's own setting wins over ours; an empty one counts as unset.
    assert choose({"T5X_LITE_COMPILATION_CACHE": "/c", "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"
    assert choose({"JAX_COMPILATION_CACHE_DIR": ""}) == default


def test_default_directory_is_per_jaxlib_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = compile_cache.default_dir()
    version, machine = path.rsplit("/", 1)[1].rsplit("-", 1)
    assert path.startswith(str(tmp_path / "t5x_lite" / "jax"))
    assert version == jaxlib.version.__version__
    assert len(machine) == 12 and machine == compile_cache.machine_id()


def test_off_enables_nothing(monkeypatch):
    monkeypatch.setenv("T5X_LITE_COMPILATION_CACHE", "off")
    assert compile_cache.enable() is None


def test_clock_phases_and_one_report(monkeypatch):
    now = iter([103.0, 104.5, 110.0])
    monkeypatch.setattr(time, "time", lambda: next(now))
    clock = startup.Clock(origin=100.0)
    for phase in ("imports and config", "state", "compile and first step"):
        clock.mark(phase)
    line, row = clock.report()
    assert line == (
        "first step 10.0 s after start (imports and config 3.0 s, state 1.5 s, "
        "compile and first step 5.5 s)"
    )
    assert row == {
        "startup/imports_and_config_s": 3.0,
        "startup/state_s": 1.5,
        "startup/compile_and_first_step_s": 5.5,
        "startup/total_s": 10.0,
    }
    assert clock.report() == ("", {})


def test_process_start_is_in_the_past():
    started = startup.process_start()
    assert started is None or 0 < time.time() - started < 24 * 3600


@pytest.mark.skipif(not os.path.exists("/proc/uptime"), reason="Linux's /proc")
def test_process_start_falls_between_the_parents_clock_readings():
    """A child's start, as it computes it, lies between the parent's readings before
    and after spawning it, to the clock tick and uptime's 0.01 s (the boot time in
    whole seconds, used before, was off by up to a second)."""
    code = "from t5x_lite.train import startup; print(repr(startup.process_start()))"
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    after = time.time()
    started = float(child.communicate()[0])
    slack = 2 / os.sysconf("SC_CLK_TCK") + 0.02
    assert before - slack <= started <= after + slack, (before, started, after)
