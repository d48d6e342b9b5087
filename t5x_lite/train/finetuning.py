"""What the trainer does differently for a fine-tuning config (one with `config.task`):
the model section and tokenizer from the checkpoint, the recipe that fits the
initialization, steps from epochs, the pretrained weights, a frozen body.

`resolve` runs once on the loaded config, before `train` (the CLI calls it with the keys
the user set on the command line). The other functions are what the trainer calls; each
is a no-op for pretraining configs, so the trainer stays one loop.

Weights (`config.finetune.checkpoint`, `checkpoint_format`; see `train/pretrained.py`): a
t5x_lite run or step directory, or a Hugging Face directory. The checkpoint's model
section replaces `config.model` except `FREE_MODEL_KEYS`; a model key the user set that
the checkpoint contradicts is an error listing every such key. The tokenizer is the
checkpoint's, copied into the run directory. Parameters of the body and of the heads the
checkpoint trained are restored; the classifier, and any head the checkpoint has no
trained weights for, keep their fresh initialization (said once, in one line).
`init=random` keeps every fresh parameter: the no-pretraining baseline with the same
tokenizer and shapes, trained with `finetune.random_init_optimizer` over
`config.optimizer` (which holds the recipe for pretrained weights).
"""

from __future__ import annotations

import json
import math

import jax
import ml_collections
import optax
from flax import traverse_util

from t5x_lite import config as config_lib
from t5x_lite import fileio, models
from t5x_lite.errors import UserError
from t5x_lite.train import distributed, pretrained

# Model keys a fine-tuning run may set differently from its checkpoint.
FREE_MODEL_KEYS = ("num_classes", "dropout_rate", "dtype", "remat_policy", "attention_impl")
INITS = ("pretrained", "random")
HEAD = "classifier"  # the parameters a classification head adds


def is_finetuning(config) -> bool:
    return "task" in config


def resolve(config, explicit_keys=frozenset()) -> None:
    """Complete a fine-tuning config in place: the model section and format from the
    checkpoint, `num_classes` from the labels, the optimizer recipe from `init`. Values
    under `explicit_keys` (dotted, e.g. 'model.d_model') were set by the user: they win
    over the recipe, and contradicting the checkpoint is an error."""
    ft = config.finetune
    _check_init(ft)
    if ft.checkpoint:
        checkpoint = pretrained.open_checkpoint(
            ft.checkpoint, ft.checkpoint_format, "config.finetune.checkpoint_format"
        )
        ft.checkpoint_format = checkpoint.format
        adopt_model(config, checkpoint.model, explicit_keys, checkpoint.path)
        _fit_rows(config, explicit_keys)
    if config.objective.name == "classification" and "model.num_classes" not in explicit_keys:
        config.model.num_classes = len(config.task.labels)
    if ft.init == "random":
        for key, value in ft.random_init_optimizer.items():
            if f"optimizer.{key}" not in explicit_keys:
                config.optimizer[key] = value
    if ft.warmup_fraction > 0 and "optimizer.warmup_steps" in explicit_keys:
        raise UserError(
            f"config.finetune.warmup_fraction={ft.warmup_fraction} sets "
            "config.optimizer.warmup_steps; give --config.finetune.warmup_fraction=0 to set "
            "the steps yourself"
        )


def _fit_rows(config, explicit_keys) -> None:
    """Rows no longer than the checkpoint's position table: the variant's row length is
    cut to it (and said), a length the user gave that does not fit is an error."""
    length, positions = config.objective.get("seq_len", 0), config.model.get("max_len")
    if not positions or length <= positions:
        return
    if "objective.seq_len" in explicit_keys:
        raise UserError(
            f"config.objective.seq_len={length} exceeds the checkpoint's {positions} "
            f"positions (model.max_len); use --config.objective.seq_len={positions} or less"
        )
    config.objective.seq_len = positions
    _say(f"config.objective.seq_len: {length} -> {positions}, the checkpoint's positions")


def _check_init(ft) -> None:
    if ft.init not in INITS:
        raise UserError(f"config.finetune.init={ft.init!r}: use one of {INITS}")
    if ft.init == "pretrained" and not ft.checkpoint:
        raise UserError(
            "config.finetune.checkpoint is empty: give a pretrained run or Hugging Face "
            "directory, or set --config.finetune.init=random for the no-pretraining baseline"
        )


def adopt_model(
    config, checkpoint_model: dict, explicit_keys, where: str, free=FREE_MODEL_KEYS
) -> None:
    """config.model <- the checkpoint's model section, keeping the config's `free` keys
    and failing (once, listing them all) on user-set keys the checkpoint contradicts."""
    current = config_lib.to_dict(config)["model"]
    if checkpoint_model["arch"] != current["arch"]:
        raise UserError(
            f"{where} holds a {checkpoint_model['arch']} model but config.model.arch is "
            f"{current['arch']}; fine-tune it with a variant of its family"
        )
    conflicts = [
        f"{key}: checkpoint {value!r}, --config.model.{key}={current.get(key)!r}"
        for key, value in sorted(checkpoint_model.items())
        if key not in free and f"model.{key}" in explicit_keys and current.get(key) != value
    ]
    if conflicts:
        raise UserError(
            f"the checkpoint {where} contradicts the model settings you gave "
            f"({'; '.join(conflicts)}); drop those overrides: the model comes from the checkpoint"
        )
    adopted = {
        key: current[key] if key in free and key in current else value
        for key, value in checkpoint_model.items()
    }
    # A new section, not assignment into the old one: the variant's model keys may be
    # references to other sections (e.g. vocab_size to tokenizer.vocab_size).
    config.model = ml_collections.ConfigDict(adopted)
    config.lock()


def prepare(config, num_train_examples: int) -> None:
    """Check the fine-tuning settings; train.num_steps from finetune.epochs and
    optimizer.warmup_steps from finetune.warmup_fraction."""
    if not is_finetuning(config):
        return
    ft = config.finetune
    _check_init(ft)
    classifier = config.objective.name == "classification"
    if classifier and config.model.num_classes != len(config.task.labels):
        raise UserError(
            f"config.model.num_classes={config.model.num_classes} but config.task.labels has "
            f"{len(config.task.labels)} labels; make them equal"
        )
    if ft.freeze_body and not classifier:
        raise UserError(
            "config.finetune.freeze_body needs a classifier head; text-to-text models have none"
        )
    if ft.epochs > 0:
        batches = ft.epochs * num_train_examples / config.data.batch_size
        config.train.num_steps = max(1, math.ceil(batches))
    if ft.warmup_fraction > 0:
        config.optimizer.warmup_steps = math.ceil(ft.warmup_fraction * config.train.num_steps)


INPUTS_FILE = "inputs.json"


def report_inputs(run, train_docs, eval_docs, workdir: str) -> None:
    """Fine-tuning: say (and write to `<workdir>/inputs.json`) how many rows of each split
    the row length truncates; nothing for pretraining."""
    if not is_finetuning(run.config):
        return
    from t5x_lite.objectives import tasks as task_objectives

    report = {
        split: task_objectives.truncation(run.objective, run.tokenizer, docs)
        for split, docs in (("train", train_docs), ("eval", eval_docs))
        if docs
    }
    for split, counts in report.items():
        _say(
            f"{split}: {counts['rows']} rows, {counts['truncated_rows']} "
            f"({counts['truncated_share']:.1%}) truncated to fit the row "
            f"({counts['dropped_tokens']} tokens dropped)"
        )
    if jax.process_index() == 0:
        fileio.makedirs(workdir)
        fileio.write_text(fileio.join(workdir, INPUTS_FILE), json.dumps(report, indent=2))


def _checkpoint(config) -> pretrained.Checkpoint:
    ft = config.finetune
    return pretrained.open_checkpoint(
        ft.checkpoint, ft.checkpoint_format, "config.finetune.checkpoint_format"
    )


def load_tokenizer(config, workdir: str):
    """The fine-tuning run's tokenizer, or None for a pretraining config (which trains or
    loads its own). The first start copies the checkpoint's into the run directory (from
    process 0); later ones, and eval/generate/export, read the copy."""
    if not is_finetuning(config) or not config.finetune.checkpoint:
        return None
    if jax.process_index() == 0 and not pretrained.has_tokenizer(workdir):
        pretrained.copy_tokenizer(_checkpoint(config), workdir)
    distributed.barrier("tokenizer copied")
    _check_tokenizer_path(config, workdir)
    return pretrained.load_run_tokenizer(workdir)


def _check_tokenizer_path(config, workdir: str) -> None:
    """config.tokenizer.path may only name the checkpoint's own vocabulary."""
    path = config.tokenizer.path
    copied = fileio.join(workdir, "tokenizer.model")
    if not path:
        return
    if not fileio.exists(path):
        raise UserError(f"config.tokenizer.path={path} does not exist")
    if not fileio.exists(copied) or not fileio.files_equal(path, copied):
        raise UserError(
            f"config.tokenizer.path={path} is not the vocabulary the checkpoint was trained "
            f"with; leave config.tokenizer.path empty"
        )


def wrap_optimizer(config, tx: optax.GradientTransformation, params):
    """With finetune.freeze_body, every update but the classifier head's is zeroed after
    the optimizer (weight decay included), so the body stays bit-identical. `params` may
    be shapes (jax.eval_shape's); only its tree is read. The optimizer still keeps
    moments for the body (zeros, as its gradients are used): simple, and the optimizer
    state keeps the shape that the sharding rules expect."""
    if not is_finetuning(config) or not config.finetune.freeze_body:
        return tx
    flat = traverse_util.flatten_dict(params)
    body = traverse_util.unflatten_dict({path: HEAD not in path for path in flat})
    return optax.chain(tx, optax.masked(optax.set_to_zero(), body))


def initial_params(run, params, workdir: str):
    """Fresh `params` with the body and the checkpoint's trained heads replaced by its
    weights (fine-tuning from a pretrained checkpoint); unchanged otherwise. Writes the
    run's `heads.json` (the heads nothing has trained) and says which heads are fresh."""
    config = run.config
    model_config = config_lib.to_dict(config)["model"]
    trained_now = pretrained.heads_trained_by(model_config["arch"], run.objective.loss_terms)
    untrained = pretrained.model_heads(model_config) - trained_now
    origin = "random initialization"
    if is_finetuning(config) and config.finetune.init == "pretrained":
        checkpoint = _checkpoint(config)
        _check_model(checkpoint.model, config, checkpoint.path)
        keep_fresh = checkpoint.untrained_heads | {HEAD}
        params = _restore_body(run, params, checkpoint, keep_fresh)
        untrained &= checkpoint.untrained_heads
        origin = f"{checkpoint.path} ({checkpoint.format})"
        fresh = sorted(pretrained.model_heads(model_config) & keep_fresh)
        _say(f"initialized from {origin}; fresh heads: {', '.join(fresh) or 'none'}")
    if jax.process_index() == 0:
        pretrained.write_untrained_heads(workdir, untrained, origin)
    return params


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


def _restore_body(run, params, checkpoint, keep_fresh) -> dict:
    arch = run.config.model.arch
    fresh = traverse_util.flatten_dict(params, sep="/")
    wanted = {
        path: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        for path, leaf in fresh.items()
        if models.head_of(arch, path) not in keep_fresh
    }
    loaded = checkpoint.load_params(wanted)
    merged = {}
    for path, leaf in fresh.items():
        if path not in wanted:
            merged[path] = leaf
            continue
        if path not in loaded:
            raise UserError(
                f"the checkpoint {checkpoint.path} has no parameter {path}; it does not match "
                "config.model"
            )
        value = loaded[path]
        if tuple(value.shape) != tuple(leaf.shape):
            raise UserError(
                f"the checkpoint's parameter {path} has shape {tuple(value.shape)} but "
                f"config.model gives {tuple(leaf.shape)}; the architectures differ"
            )
        if isinstance(value, jax.Array):  # restored onto this run's shardings already
            merged[path] = value.astype(leaf.dtype)
        else:  # host arrays (Hugging Face)
            merged[path] = pretrained.to_device(value, leaf.dtype, leaf.sharding)
    return traverse_util.unflatten_dict(merged, sep="/")


def _check_model(saved_model: dict, config, where: str) -> None:
    """Every model key but FREE_MODEL_KEYS must equal the checkpoint's (a config built
    without `resolve`, e.g. in Python); one error lists every difference."""
    current = config_lib.to_dict(config)["model"]
    changed = [
        (key, saved_model.get(key), current.get(key))
        for key in sorted(set(saved_model) | set(current))
        if key not in FREE_MODEL_KEYS and saved_model.get(key) != current.get(key)
    ]
    if changed:
        differences = "; ".join(f"{k}: checkpoint {s!r}, config {c!r}" for k, s, c in changed)
        fix = " ".join(f"--config.model.{k}={s}" for k, s, _ in changed)
        raise UserError(
            f"the checkpoint {where} does not match config.model ({differences}); fine-tune "
            f"with its model settings ({fix}), or through `t5x-lite finetune`, which takes "
            "them from the checkpoint"
        )
