"""Benchmark accounting: FLOPs per token by hand, and a real (tiny) bench run."""

import ml_collections
import pytest

from t5x_lite import bench
from t5x_lite import config as config_lib
from tests.train.test_trainer import PRETRAIN


def test_flops_per_token_by_hand():
    model = ml_collections.ConfigDict(
        dict(d_model=512, num_heads=8, head_dim=64, d_ff=2048, num_layers=8, vocab_size=8192)
    )
    # Per layer: q, k, v, out = 4 * 512 * 512; MLP = 2 * 512 * 2048. Output layer 8192 * 512.
    matmul_params = 8 * (4 * 512 * 512 + 2 * 512 * 2048) + 8192 * 512
    attention = 12 * 8 * 512 * 512
    assert bench.flops_per_token(model, 512) == 6 * matmul_params + attention
    assert bench.flops_per_token(model, 512) == pytest.approx(201.3e6, rel=1e-3)


def test_bench_runs_and_reports_consistent_figures():
    config = config_lib.load(
        f"{PRETRAIN}:gpt_tiny",
        [
            ("data.batch_size", "2"),
            ("objective.seq_len", "16"),
            ("model.num_layers", "1"),
            ("tokenizer.vocab_size", "512"),
        ],
    )
    result = bench.benchmark(config, steps=2, peak_tflops=1.0)
    assert result.tokens_per_s == pytest.approx(2 * 16 / result.step_time_s)
    expected = result.tokens_per_s * bench.flops_per_token(config.model, 16) / 1e12
    assert result.model_tflops == pytest.approx(expected)
    assert result.mfu == pytest.approx(result.model_tflops / 1.0)
    assert result.peak_source == "given" and result.state_memory_mb > 0
