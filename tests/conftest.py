"""Shared test fixtures, and how the suite spends its two cores.

Most tests run tiny models for a few steps: compiling dominates them, and XLA's cheap
compile settings (`CHEAP_COMPILE`) take a fifth off the suite. The end-to-end checks
marked `full_speed` train for minutes, where those settings would make every step 2.4x
slower, so each runs in a pytest subprocess of its own with the caller's XLA flags.
"""

import os
import subprocess
import sys

import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

# One persistent XLA compilation cache per test run, shared by the xdist workers and
# the CLI subprocesses: many tests compile the same tiny models.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", f"/tmp/t5x_lite_test_jax_cache_{_RUN_ID}")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

CHEAP_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The XLA flags the suite was started with, kept by the first process (xdist's workers
# inherit the controller's environment, cheap flags included).
_CALLER_XLA_FLAGS = os.environ.setdefault(
    "T5X_LITE_TEST_CALLER_XLA_FLAGS", os.environ.get("XLA_FLAGS", "")
)
_OWN_PROCESS = "T5X_LITE_TEST_OWN_PROCESS"  # set in a full_speed test's own process
if _OWN_PROCESS not in os.environ:  # before any test module imports JAX
    os.environ["XLA_FLAGS"] = f"{_CALLER_XLA_FLAGS} {CHEAP_COMPILE}".strip()


def pytest_collection_modifyitems(config, items):
    """Longest tests first (`e2e`, then `longest`), so that xdist starts them at once on
    different workers and the many short tests fill in around them instead of queueing
    after them."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("e2e") is None,
            item.get_closest_marker("longest") is None,
        )
    )
    if _OWN_PROCESS not in os.environ:
        for item in items:
            if item.get_closest_marker("full_speed"):
                item.runtest = _in_own_process(item)


def _in_own_process(item):
    """item.runtest replaced by one that runs the test in `pytest` in a subprocess."""

    def runtest():
        env = {**os.environ, "XLA_FLAGS": _CALLER_XLA_FLAGS, _OWN_PROCESS: "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
             "-p", "no:xdist", f"--rootdir={item.config.rootpath}", item.nodeid],
            cwd=item.config.rootpath, env=env, capture_output=True, text=True,
        )  # fmt: skip
        sys.stdout.write(proc.stdout)  # captured by the caller as the test's output
        sys.stderr.write(proc.stderr)
        summary = (proc.stdout.strip().splitlines()[-1:] or ["no output"])[0]
        if proc.returncode != 0:
            pytest.fail(f"in its own process: {summary} (output below)", pytrace=False)
        if " skipped" in summary and " passed" not in summary:
            pytest.skip(f"in its own process: {summary}")

    return runtest


def data_dir() -> str:
    """The shared data directory `$T5X_LITE_DATA_DIR`.

    Tests that need it fail on CI (env `CI` set), where missing data is a setup bug,
    and are skipped elsewhere.
    """
    path = os.environ.get("T5X_LITE_DATA_DIR", "")
    if not path or not os.path.isdir(path):
        message = f"shared data dir T5X_LITE_DATA_DIR={path!r} is not set or missing"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return os.path.abspath(path)  # tests may change directory; CI passes a relative path


@pytest.fixture
def shared_data_dir() -> str:
    return data_dir()


class MemoryBucket(epath_backend._FileSystemSpecBackend):
    """gs:// held in memory, behaving as a bucket does where it matters to t5x_lite: no
    appending, and no directories apart from the objects under a prefix (`makedirs`
    makes nothing; a prefix is a directory once a file is written under it).

    Only what goes through etils.epath lands here. Orbax writes array data with
    tensorstore's own gs:// driver, which this does not intercept: tests keep
    checkpoints on local paths.
    """

    def __init__(self):
        self.memory = MemoryFileSystem(skip_instance_cache=True)
        self.memory.store, self.memory.pseudo_dirs = {}, [""]  # this bucket's alone

    def fs(self, path):
        return self.memory if os.fspath(path).startswith("gs://") else super().fs(path)

    def open(self, path, mode):
        if "a" in mode:
            raise OSError(f"{path}: a bucket cannot append")
        return super().open(path, mode)

    def makedirs(self, path, *, exist_ok=False, mode=None):
        pass

    def mkdir(self, path, *, exist_ok=False, mode=None):
        pass


@pytest.fixture
def memory_gcs(monkeypatch) -> str:
    """An empty in-memory `gs://` bucket for this test (see MemoryBucket); its URL."""
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", MemoryBucket())
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # TF would take gs://
    return "gs://test-bucket"
