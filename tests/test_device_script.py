"""benchmarks/device.sh, the accelerator benchmark, run at toy shapes on the CPU so that it
keeps working between the rare sessions that have a GPU or TPU."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.e2e
def test_device_script_benchmarks_both_models_at_toy_shapes():
    env = {**os.environ, "DEVICE_SMOKE": "1", "STEPS": "1", "PYTHON": sys.executable}
    out = subprocess.run(
        [os.path.join(ROOT, "benchmarks", "device.sh")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "== decoder, ~1B parameters" in out.stdout and "== T5-base" in out.stdout
    assert out.stdout.count("MFU ") == 2 and out.stdout.count("(fp32 matmul probe)") == 2
