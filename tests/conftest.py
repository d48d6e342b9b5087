"""Shared test fixtures."""

import os

import pytest

# One persistent XLA compilation cache per test run, shared by the xdist workers and
# the CLI subprocesses: many tests compile the same tiny models.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", f"/tmp/t5x_lite_test_jax_cache_{_RUN_ID}")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def pytest_collection_modifyitems(config, items):
    """Longest tests first, so that xdist starts them at once on different workers and
    the many short tests fill in around them instead of queueing after them."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)


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
