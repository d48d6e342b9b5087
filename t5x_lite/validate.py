"""Every numeric config key checked against its valid range before anything is read,
written or compiled, so that a mistyped value is one line naming the key instead of a
ZeroDivisionError after a minute of training (log_every=0) or a run that silently does
nothing (num_steps=-5).

`check(config)` takes any of the shipped configs (pretraining, fine-tuning, in-context):
a key is checked where the config has it. Finer, objective-specific limits (a T5 row
long enough for its sentinels) stay with the objectives; these are the ranges outside
of which no setting can make sense.

`check_linked_overrides` guards keys that follow another (`model.max_len` is
`objective.seq_len` in the pretraining configs): setting the follower alone would
silently change its leader, so the command line must set the leader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import ml_collections

from t5x_lite.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
    accepts: Callable[[float], bool]
    text: str  # completes "config.<key>=<value> must be ..."


AT_LEAST_0 = Range(lambda v: v >= 0, ">= 0")
AT_LEAST_1 = Range(lambda v: v >= 1, ">= 1")
POSITIVE = Range(lambda v: v > 0, "> 0")
UNIT = Range(lambda v: 0 <= v <= 1, "in [0, 1]")
UNIT_BELOW_1 = Range(lambda v: 0 <= v < 1, "in [0, 1)")
UNIT_ABOVE_0 = Range(lambda v: 0 < v <= 1, "in (0, 1]")
MESH_AXIS = Range(lambda v: v == -1 or v >= 1, ">= 1 (or -1: all remaining devices)")

RANGES: dict[str, Range] = {
    "tokenizer.vocab_size": AT_LEAST_1,
    "tokenizer.max_sentences": AT_LEAST_1,
    "data.batch_size": AT_LEAST_1,
    "data.heldout_docs": AT_LEAST_0,
    "data.num_shards": AT_LEAST_0,
    "data.bucket_multiple": AT_LEAST_0,
    "data.bucket_window": AT_LEAST_0,
    "partitioning.mesh.data": MESH_AXIS,
    "partitioning.mesh.fsdp": MESH_AXIS,
    "partitioning.mesh.tensor": MESH_AXIS,
    # Objectives: lengths, rates and the mix of what a selected token becomes.
    "objective.seq_len": AT_LEAST_1,
    "objective.inputs_length": AT_LEAST_1,
    "objective.targets_length": AT_LEAST_1,
    "objective.mask_rate": UNIT,
    "objective.replace_with_mask": UNIT,
    "objective.replace_with_random": UNIT,
    "objective.keep_original": UNIT,
    "objective.noise_density": UNIT,
    "objective.mean_noise_span_length": AT_LEAST_1,
    "objective.span_geometric_p": UNIT_ABOVE_0,
    "objective.span_max_length": AT_LEAST_1,
    "objective.prefix_fraction": UNIT,
    "objective.max_predictions": Range(lambda v: v >= -1, ">= -1 (-1: from seq_len and mask_rate)"),
    # Model shapes.
    "model.vocab_size": AT_LEAST_1,
    "model.d_model": AT_LEAST_1,
    "model.num_layers": AT_LEAST_1,
    "model.num_encoder_layers": AT_LEAST_1,
    "model.num_decoder_layers": AT_LEAST_1,
    "model.num_heads": AT_LEAST_1,
    "model.head_dim": AT_LEAST_1,
    "model.d_ff": AT_LEAST_1,
    "model.max_len": AT_LEAST_1,
    "model.type_vocab_size": AT_LEAST_1,
    "model.relative_attention_num_buckets": AT_LEAST_1,
    "model.relative_attention_max_distance": AT_LEAST_1,
    "model.dropout_rate": UNIT_BELOW_1,
    "model.layer_norm_epsilon": POSITIVE,
    "model.num_classes": AT_LEAST_0,
    # Optimizer and loss.
    "optimizer.learning_rate": POSITIVE,
    "optimizer.warmup_steps": AT_LEAST_0,
    "optimizer.end_lr_fraction": UNIT,
    "optimizer.b1": UNIT_BELOW_1,
    "optimizer.b2": UNIT_BELOW_1,
    "optimizer.eps": AT_LEAST_0,
    "optimizer.weight_decay": AT_LEAST_0,
    "optimizer.adafactor_decay_rate": POSITIVE,
    "optimizer.adafactor_clipping_threshold": AT_LEAST_0,
    "optimizer.grad_clip_norm": AT_LEAST_0,
    "loss.z_loss": AT_LEAST_0,
    "loss.label_smoothing": UNIT_BELOW_1,
    # Trainer.
    "train.num_steps": AT_LEAST_1,
    "train.log_every": AT_LEAST_1,
    "train.eval_every": AT_LEAST_1,
    "train.eval_batches": AT_LEAST_0,
    "train.microbatches": AT_LEAST_1,
    "train.checkpoint_every": AT_LEAST_0,
    # The final step is always kept: 0 would train and leave checkpoints/ empty.
    "train.keep_checkpoints": AT_LEAST_1,
    # Sampling after training and `generate`.
    "sample.max_new_tokens": AT_LEAST_0,
    "sample.temperature": AT_LEAST_0,
    "sample.top_k": AT_LEAST_0,
    "sample.top_p": UNIT_ABOVE_0,
    "sample.beam_size": AT_LEAST_1,
    "sample.length_penalty_alpha": AT_LEAST_0,
    # Fine-tuning and in-context evaluation.
    "finetune.epochs": AT_LEAST_0,
    "finetune.random_init_epochs": AT_LEAST_0,
    "finetune.warmup_fraction": UNIT,
    "finetune.random_init_optimizer.learning_rate": POSITIVE,
    "finetune.random_init_optimizer.end_lr_fraction": UNIT,
    "task.train.max_examples": AT_LEAST_0,
    "task.eval.max_examples": AT_LEAST_0,
    "icl.batch_size": AT_LEAST_1,
}

CHOICES: dict[str, tuple[str, ...]] = {
    "train.nan_policy": ("stop", "skip_step"),
}

# Shares that must add up to 1: what a token selected for prediction becomes.
MIXES = (
    ("objective.replace_with_mask", "objective.replace_with_random", "objective.keep_original"),
)


def check(config: ml_collections.ConfigDict) -> None:
    """A one-line UserError naming the first key whose value is out of its range."""
    values = _flatten(config)
    followers = linked_keys(config)  # reported by their leader's name, not their own
    for key, value in sorted(values.items(), key=lambda item: item[0] in followers):
        if key in RANGES and value is not None:
            _check_range(key, value, RANGES[key])
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"config.{key}={value!r} must be one of {', '.join(CHOICES[key])}")
    for keys in MIXES:
        if all(key in values for key in keys):
            total = sum(values[key] for key in keys)
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                shown = " + ".join(f"config.{key}={values[key]!r}" for key in keys)
                raise UserError(f"{shown} = {total:g}; the shares must sum to 1")
    if values.get("data.bucket_window") and not values.get("data.bucket_multiple"):
        raise UserError(
            f"config.data.bucket_window={values['data.bucket_window']} sorts rows by length "
            "for config.data.bucket_multiple, which is 0: set bucket_multiple > 0, or "
            "bucket_window=0"
        )
    for i, shots in enumerate(values.get("icl.shots") or ()):
        if not isinstance(shots, int) or shots < 0:
            raise UserError(f"config.icl.shots[{i}]={shots!r} must be an int >= 0")


def _check_range(key: str, value, allowed: Range) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"config.{key}={value!r} must be a number {allowed.text}")
    if not math.isfinite(value) or not allowed.accepts(value):
        raise UserError(f"config.{key}={value!r} must be {allowed.text}")


def _flatten(config, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def linked_keys(config: ml_collections.ConfigDict) -> dict[str, str]:
    """{follower: leader} for keys that share one value (a FieldReference): the leader
    is the key the config defines first (`objective.seq_len` for `model.max_len`)."""
    first: dict[int, str] = {}
    followers = {}
    for key, field in _fields(config):
        if isinstance(field, ml_collections.FieldReference):
            leader = first.setdefault(id(field), key)
            if leader != key:
                followers[key] = leader
    return followers


def _fields(config, prefix: str = ""):
    # The stored fields, references included (reading a key resolves its reference).
    for key, field in config._fields.items():
        if isinstance(field, ml_collections.ConfigDict):
            yield from _fields(field, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", field


def check_linked_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, object]]
) -> None:
    """Refuse overrides of a following key (`model.max_len`) that would silently change
    its leader (`objective.seq_len`) or contradict the value the leader is given.
    `overrides` are (dotted key, parsed value) pairs, checked before any is applied."""
    followers = linked_keys(config)
    given = dict(overrides)
    values = _flatten(config)
    for key, value in given.items():
        leader = followers.get(key)
        if leader is None:
            continue
        leader_value = given.get(leader, values[leader])
        if value != leader_value:
            how = "is given" if leader in given else "is"
            raise UserError(
                f"config.{key}={value!r} follows config.{leader}, which {how} "
                f"{leader_value!r}; set config.{leader} alone ({key} follows it)"
            )
