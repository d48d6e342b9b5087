"""Every numeric config key is range-checked before anything runs: one line naming the
key and its range; keys that follow another cannot silently change it."""

import os

import pytest

from t5x_lite import config as config_lib
from t5x_lite import validate
from t5x_lite.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "gin_configs")


def _load(spec: str, **overrides):
    path, _, variant = spec.partition(":")
    pairs = [(key, str(value)) for key, value in overrides.items()]
    return config_lib.load(f"{os.path.join(CONFIGS, path)}:{variant}", pairs)


@pytest.mark.parametrize(
    "spec",
    ["pretrain.py:gpt_tiny", "pretrain.py:bert_tiny", "pretrain.py:spanbert_tiny",
     "pretrain.py:t5_tiny", "pretrain.py:t5_tiny_bert_style", "pretrain.py:gpt_tiny_prefix_lm",
     "finetune.py:bert_tiny_sst2", "finetune.py:t5_tiny_qa", "icl.py:sst2"],
)  # fmt: skip
def test_shipped_configs_pass(spec):
    validate.check(_load(spec))


BAD = [
    ("pretrain.py:gpt_tiny", "optimizer.learning_rate", -1e-3, "> 0"),
    ("pretrain.py:gpt_tiny", "optimizer.learning_rate", 0.0, "> 0"),
    ("pretrain.py:gpt_tiny", "train.num_steps", -5, ">= 1"),
    ("pretrain.py:gpt_tiny", "train.log_every", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "train.eval_every", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "train.keep_checkpoints", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "train.microbatches", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "train.checkpoint_every", -1, ">= 0"),
    ("pretrain.py:gpt_tiny", "train.nan_policy", "ignore", "one of stop, skip_step"),
    ("pretrain.py:gpt_tiny", "objective.seq_len", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "objective.seq_len", -4, ">= 1"),
    ("pretrain.py:gpt_tiny", "model.num_heads", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "model.d_model", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "model.dropout_rate", 1.0, "in [0, 1)"),
    ("pretrain.py:gpt_tiny", "model.dropout_rate", -0.1, "in [0, 1)"),
    ("pretrain.py:gpt_tiny", "data.batch_size", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "tokenizer.vocab_size", 0, ">= 1"),
    ("pretrain.py:gpt_tiny", "optimizer.b2", 1.0, "in [0, 1)"),
    ("pretrain.py:gpt_tiny", "optimizer.warmup_steps", -1, ">= 0"),
    ("pretrain.py:gpt_tiny", "loss.label_smoothing", 1.5, "in [0, 1)"),
    ("pretrain.py:gpt_tiny", "sample.top_p", 0.0, "in (0, 1]"),
    ("pretrain.py:gpt_tiny", "sample.max_new_tokens", -1, ">= 0"),
    ("pretrain.py:gpt_tiny", "partitioning.mesh.data", 0, "-1"),
    ("pretrain.py:bert_tiny", "objective.mask_rate", 1.5, "in [0, 1]"),
    ("pretrain.py:spanbert_tiny", "objective.span_geometric_p", 0.0, "in (0, 1]"),
    ("pretrain.py:t5_tiny", "objective.noise_density", -0.1, "in [0, 1]"),
    ("pretrain.py:t5_tiny", "objective.mean_noise_span_length", 0.5, ">= 1"),
    ("pretrain.py:t5_tiny", "objective.inputs_length", 0, ">= 1"),
    ("pretrain.py:t5_tiny", "model.num_encoder_layers", 0, ">= 1"),
    ("finetune.py:bert_tiny_sst2", "finetune.warmup_fraction", 2.0, "in [0, 1]"),
    ("finetune.py:bert_tiny_sst2", "finetune.epochs", -1.0, ">= 0"),
    ("finetune.py:bert_tiny_sst2", "data.bucket_multiple", -8, ">= 0"),
    ("finetune.py:bert_tiny_sst2", "data.bucket_window", -1, ">= 0"),
    ("icl.py:sst2", "icl.batch_size", 0, ">= 1"),
]


@pytest.mark.parametrize("spec,key,value,allowed", BAD)
def test_out_of_range_is_one_line_naming_key_and_range(spec, key, value, allowed):
    config = _load(spec, **{key: value})
    with pytest.raises(UserError) as error:
        validate.check(config)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"config.{key}=") and allowed in message, message


def test_mask_mix_must_sum_to_one():
    config = _load("pretrain.py:bert_tiny", **{"objective.replace_with_mask": 0.5})
    with pytest.raises(UserError, match="config.objective.replace_with_mask=0.5 .* sum to 1"):
        validate.check(config)


def test_sorting_by_length_needs_length_buckets():
    overrides = {"data.bucket_multiple": 0, "data.bucket_window": 16}
    config = _load("finetune.py:bert_tiny_sst2", **overrides)
    with pytest.raises(UserError, match="config.data.bucket_window=16 .* bucket_multiple > 0"):
        validate.check(config)


def test_icl_shots_are_counts():
    with pytest.raises(UserError, match=r"config.icl.shots\[1\]=-1"):
        validate.check(_load("icl.py:sst2", **{"icl.shots": "(0, -1)"}))


def test_followers_cannot_change_their_leader():
    assert validate.linked_keys(_load("pretrain.py:gpt_tiny")) == {
        "model.max_len": "objective.seq_len",
        "model.vocab_size": "tokenizer.vocab_size",
    }
    with pytest.raises(UserError, match="config.model.max_len=64 follows config.objective.seq_len"):
        _load("pretrain.py:gpt_tiny", **{"model.max_len": 64})
    with pytest.raises(UserError, match="which is given 32; set config.objective.seq_len alone"):
        _load("pretrain.py:gpt_tiny", **{"model.max_len": 64, "objective.seq_len": 32})
    config = _load("pretrain.py:gpt_tiny", **{"objective.seq_len": 64, "model.max_len": 64})
    assert (config.objective.seq_len, config.model.max_len) == (64, 64)
    config = _load("pretrain.py:gpt_tiny", **{"objective.seq_len": 48})
    assert config.model.max_len == 48  # the leader alone: the follower follows
