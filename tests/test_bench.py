"""Benchmark accounting: FLOPs per token by hand, and a real (tiny) bench run."""

import jax
import ml_collections
import pytest

from t5x_lite import bench
from t5x_lite import config as config_lib
from t5x_lite.errors import UserError
from t5x_lite.families import decoder_only, encoder_decoder, encoder_only
from tests.train.test_trainer import PRETRAIN


def test_flops_per_token_by_hand():
    model = ml_collections.ConfigDict(
        dict(d_model=512, num_heads=8, head_dim=64, d_ff=2048, num_layers=8, vocab_size=8192)
    )
    # Per layer: q, k, v, out = 4 * 512 * 512; MLP = 2 * 512 * 2048. Output layer 8192 * 512.
    matmul_params = 8 * (4 * 512 * 512 + 2 * 512 * 2048) + 8192 * 512
    attention = 12 * 8 * 512 * 512
    assert decoder_only.flops_per_token(model, 512) == 6 * matmul_params + attention
    assert decoder_only.flops_per_token(model, 512) == pytest.approx(201.3e6, rel=1e-3)


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
    expected = result.tokens_per_s * decoder_only.flops_per_token(config.model, 16) / 1e12
    assert result.model_tflops == pytest.approx(expected)
    assert result.mfu == pytest.approx(result.model_tflops / 1.0)
    assert result.peak_source == "given" and result.state_memory_mb > 0


def test_encoder_decoder_flops_by_hand():
    model = ml_collections.ConfigDict(
        dict(d_model=512, num_heads=6, head_dim=64, d_ff=1024, num_encoder_layers=8,
             num_decoder_layers=8, vocab_size=32128, mlp="gated_gelu")
    )  # fmt: skip
    # T5 1.1 small, 512 inputs and 114 targets. Attention projections 4 * 512 * 384; the
    # gated MLP has three matrices; the decoder adds cross-attention and the output layer.
    attn, mlp = 4 * 512 * 384, 3 * 512 * 1024
    encoder_token = 6 * 8 * (attn + mlp) + 12 * 8 * 512 * 384
    decoder_token = 6 * (8 * (2 * attn + mlp) + 32128 * 512) + 12 * 8 * (114 + 512) * 384
    expected = 512 * encoder_token + 114 * decoder_token
    assert encoder_decoder.row_flops(model, 512, 114) == expected
    # ReLU MLPs (T5 1.0) have two matrices.
    model.mlp = "relu"
    relu = encoder_decoder.row_flops(model, 512, 114)
    assert expected - relu == 6 * 512 * 1024 * 8 * (512 + 114)


@pytest.mark.parametrize(
    "variant, lengths, row_tokens",
    [
        ("roberta_tiny", [("objective.seq_len", "16")], 16),
        ("t5_tiny", [("objective.inputs_length", "16"), ("objective.targets_length", "8")], 24),
    ],
)
def test_bench_runs_every_family(variant, lengths, row_tokens):
    config = config_lib.load(
        f"{PRETRAIN}:{variant}",
        [("data.batch_size", "2"), ("tokenizer.vocab_size", "512"), *lengths],
    )
    result = bench.benchmark(config, steps=1, peak_tflops=1.0)
    assert result.tokens_per_s == pytest.approx(2 * row_tokens / result.step_time_s)
    if variant == "t5_tiny":
        row_flops = encoder_decoder.row_flops(config.model, 16, 8)
    else:  # the MLM head's d x d transform on top of the layers
        row_flops = 16 * encoder_only.flops_per_token(config.model, 16)
        assert encoder_only.flops_per_token(config.model, 16) == pytest.approx(
            6 * (2 * (4 * 128 * 128 + 2 * 128 * 512) + 512 * 128 + 128 * 128) + 12 * 2 * 16 * 128
        )
    assert result.model_flops_per_token == pytest.approx(row_flops / row_tokens)


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5", 459.0),
        ("TPU v4", 275.0),
    ],
)
def test_published_peaks_by_device_kind(kind, peak):
    assert bench.published_peak_tflops(kind) == peak * jax.device_count()


def test_an_unknown_device_kind_asks_for_a_peak():
    with pytest.raises(UserError, match=r"device kind 'cpu' .* pass --peak_tflops=X instead"):
        bench.published_peak_tflops("cpu")
