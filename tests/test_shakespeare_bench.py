"""benchmarks/shakespeare_char.py and its PyTorch reference (benchmarks/char_gpt_torch.py):
the reference follows the recipe our `pretrain.py:shakespeare_char` config states, and
the driver runs both end to end."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from t5x_lite import config as config_lib
from t5x_lite.train import optim

from .conftest import data_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "benchmarks", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_schedule_is_our_configs_after_warmup():
    torch_ref = _load("char_gpt_torch")
    cfg = config_lib.load(os.path.join(ROOT, "gin_configs", "pretrain.py") + ":shakespeare_char")
    ours = optim.learning_rate_schedule(cfg.optimizer, cfg.train.num_steps)
    # Hand-worked: nanoGPT's warmup is (step + 1) / 101 of the peak; the cosine runs
    # from 1e-3 at step 100 to 1e-4 at step 2000, halfway (1,050) at 5.5e-4.
    assert torch_ref.learning_rate(0) == pytest.approx(1e-3 / 101)
    assert torch_ref.learning_rate(1050) == pytest.approx(5.5e-4)
    assert torch_ref.learning_rate(2000) == pytest.approx(1e-4)
    for step in (100, 400, 1050, 1700, 1999, 2000):
        assert float(ours(step)) == pytest.approx(torch_ref.learning_rate(step), rel=1e-5)
    for step in (0, 50, 99):  # ours warms up from 0: at most 1% of the peak apart
        assert abs(float(ours(step)) - torch_ref.learning_rate(step)) <= 1e-5


def test_reference_model_has_the_recipes_shapes():
    torch_ref = _load("char_gpt_torch")
    model = torch_ref.CharGPT(vocab=65, block=64)
    # Hand count: embeddings 65x128 + 64x128; per layer two norms (2 x 128), qkv 128x384,
    # out 128x128, MLP 128x512 + 512x128; a final norm; the head is tied to the embedding.
    per_layer = 2 * 128 + 128 * 384 + 128 * 128 + 2 * 128 * 512
    assert sum(p.numel() for p in model.parameters()) == 65 * 128 + 64 * 128 + 4 * per_layer + 128
    import torch

    torch.manual_seed(0)
    ids, targets = torch.randint(65, (2, 2, 64))  # unrelated targets: no copying to learn
    loss = model(ids, targets)  # at init every character is about equally likely
    assert math.isclose(loss.item(), math.log(65), rel_tol=0.05)


@pytest.mark.e2e
def test_driver_runs_both_recipes_and_prints_the_table(tmp_path):
    env = {**os.environ, "T5X_LITE_DATA_DIR": data_dir()}
    out_json = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "shakespeare_char.py"), "--steps=4",
         "--rounds=1", "--cold_cache", f"--output_json={out_json}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| t5x_lite (pretrain.py:shakespeare_char) |" in proc.stdout
    (row,) = json.loads(out_json.read_text())
    assert row["ours"]["step"] == 4 and row["ours"]["first_step_s"] > 0
    for side, vocab in (("ours", 422), ("torch", 65)):  # 4 steps: still near uniform
        assert 0.5 * math.log(vocab) < row[side]["val_loss"] < 1.2 * math.log(vocab)
    assert row["ratio"] == pytest.approx(row["torch"]["wall_s"] / row["ours"]["wall_s"])
