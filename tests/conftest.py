"""Shared test fixtures."""

import os

import pytest


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
