"""host_memory: with glibc keeping freed memory, XLA:CPU's large per-call buffers reuse
pages instead of faulting in fresh ones; the CLI's default (on) and its note, and errors."""

import os
import platform
import subprocess
import sys

import pytest

from t5x_lite import host_memory
from t5x_lite.errors import UserError

GLIBC = platform.libc_ver()[0] == "glibc" and sys.platform.startswith("linux")

# A fresh interpreter imports what the CLI imports, optionally keeps freed memory, then
# calls a jitted function 30 times whose 128 MB temporary (a @ b, 4096 x 8192 floats) is
# above any of glibc's mmap thresholds (at most 32 MB), as a train step's temporaries
# are; -> the page faults of the last 10 calls, once the heap has settled.
FAULTS = """
import resource, sys
from t5x_lite import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_memory()
from t5x_lite import main
import jax, jax.numpy as jnp
g = jax.jit(lambda a, b, c: (a @ b) @ c)
a, b, c = jnp.ones((4096, 64)), jnp.ones((64, 8192)), jnp.ones((8192, 1))
for _ in range(20):
    g(a, b, c).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    g(a, b, c).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""
PAGES = 128 * 2**20 // 4096  # of the temporary


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def _transparent_huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.skipif(_transparent_huge_pages_always(), reason="faults come in 2 MB pages")
def test_kept_memory_spares_the_page_faults_of_a_large_temporary():
    """malloc's default maps the temporary afresh on every call: 32,768 faults each.
    Kept, the calls reuse the heap; a call now and then still grows it while freed
    chunks settle (host_memory.py says why; seen: 0 or 1 of 10 settled calls)."""
    default, kept = _faults("default"), _faults("keep")
    assert default > 9 * PAGES, default
    assert kept < 3 * PAGES, kept


@pytest.mark.parametrize(
    "value, expected", [(None, True), ("1", True), ("yes", True), ("0", False), ("off", False)]
)
def test_on_unless_the_environment_says_0(monkeypatch, value, expected):
    monkeypatch.delenv("T5X_LITE_KEEP_FREED_MEMORY", raising=False)
    if value is not None:
        monkeypatch.setenv("T5X_LITE_KEEP_FREED_MEMORY", value)
    assert host_memory.wanted() is expected


@pytest.fixture
def fresh_note(monkeypatch):
    monkeypatch.setattr(host_memory, "_noted", False)
    monkeypatch.setattr(host_memory, "_kept_by_default", True)


def test_the_memory_note_comes_once_past_half_the_machine(fresh_note):
    gib = 2**30
    assert host_memory.memory_note(peak_bytes=8 * gib, total_bytes=16 * gib) == ""
    note = host_memory.memory_note(peak_bytes=9 * gib, total_bytes=16 * gib)
    assert note.startswith("note: peak resident memory 9.0 of 16.0 GiB;")
    assert "T5X_LITE_KEEP_FREED_MEMORY=0" in note and "\n" not in note
    assert host_memory.memory_note(peak_bytes=15 * gib, total_bytes=16 * gib) == ""


def test_no_memory_note_when_kept_memory_was_asked_for(fresh_note, monkeypatch):
    monkeypatch.setattr(host_memory, "_kept_by_default", False)
    assert host_memory.memory_note(peak_bytes=15 * 2**30, total_bytes=16 * 2**30) == ""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
@pytest.mark.parametrize(
    "value, kept, by_default", [(None, True, True), ("1", True, False), ("0", False, False)]
)
def test_the_cli_setting(monkeypatch, value, kept, by_default):
    """In a fresh interpreter (mallopt's arena setting is for the whole process)."""
    code = (
        "from t5x_lite import host_memory as h; "
        "print(h.apply_setting(), h._kept_by_default, h.memory_note(2, 3) != '')"
    )
    env = {k: v for k, v in os.environ.items() if k != "T5X_LITE_KEEP_FREED_MEMORY"}
    if value is not None:
        env["T5X_LITE_KEEP_FREED_MEMORY"] = value
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(kept), str(by_default), str(by_default)]


def test_a_bad_setting_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("T5X_LITE_KEEP_FREED_MEMORY", "maybe")
    with pytest.raises(UserError, match=r"T5X_LITE_KEEP_FREED_MEMORY='maybe'; use 1 .* or 0"):
        host_memory.wanted()
    code = "import sys; sys.argv = ['t5x-lite', 'validate']; from t5x_lite.main import run; run()"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env={**os.environ, "T5X_LITE_KEEP_FREED_MEMORY": "maybe"},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: T5X_LITE_KEEP_FREED_MEMORY='maybe'; use 1 (keep freed memory) or 0 "
        "(malloc's default)"
    ]
