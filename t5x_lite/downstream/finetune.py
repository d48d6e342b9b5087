"""Fine-tuning, a use of the one trainer: a pretrained checkpoint (or random weights)
trained on a labelled task (`config.task`).

`resolve` completes the loaded config from the checkpoint: the model section and format,
`num_classes` from the labels, the recipe that fits the initialization (the CLI calls
it with the keys the user set on the command line). `train` then builds the trainer's
`Start`: the task's examples, steps from epochs, the checkpoint's tokenizer copied into
the run directory, the pretrained weights and a frozen body.

Weights (`config.finetune.checkpoint`, `checkpoint_format`; see `pretrained.py`): a
t5x_lite run or step directory, or a Hugging Face directory. The checkpoint's model
section replaces `config.model` except `FREE_MODEL_KEYS`; a model key the user set that
the checkpoint contradicts is an error listing every such key. Parameters of the body
and of the heads the checkpoint trained are restored; the classifier, and any head the
checkpoint has no trained weights for, keep their fresh initialization (said once, in
one line). `init=random` keeps every fresh parameter: the no-pretraining baseline with
the same tokenizer and shapes, trained with `finetune.random_init_optimizer` over
`config.optimizer` (which holds the recipe for pretrained weights).
"""

from __future__ import annotations

import functools
import json
import math

import jax
import optax
from flax import traverse_util

from t5x_lite import config as config_lib
from t5x_lite import fileio, validate
from t5x_lite.data import inputs, labelled
from t5x_lite.downstream import pretrained
from t5x_lite.errors import UserError
from t5x_lite.models import heads
from t5x_lite.objectives import finetune_formats
from t5x_lite.train import distributed, startup, trainer
from t5x_lite.train import workdir as run_dir

# Model keys a fine-tuning run may set differently from its checkpoint.
FREE_MODEL_KEYS = ("num_classes", "dropout_rate", "dtype", "remat_policy", "attention_impl")
INITS = ("pretrained", "random")
HEAD = "classifier"  # the parameters a classification head adds


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
        pretrained.adopt_model(
            config, checkpoint.model, explicit_keys, checkpoint.path, FREE_MODEL_KEYS
        )
        _fit_rows(config, explicit_keys)
    if _has_classifier(config) and "model.num_classes" not in explicit_keys:
        config.model.num_classes = len(config.task.labels)
    if ft.init == "random":
        for key, value in ft.random_init_optimizer.items():
            if f"optimizer.{key}" not in explicit_keys:
                config.optimizer[key] = value
        if ft.get("random_init_epochs", 0) > 0 and "finetune.epochs" not in explicit_keys:
            ft.epochs = ft.random_init_epochs
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


def prepare(config, num_train_examples: int) -> None:
    """Check the fine-tuning settings; train.num_steps from finetune.epochs and
    optimizer.warmup_steps from finetune.warmup_fraction."""
    ft = config.finetune
    _check_init(ft)
    classifier = _has_classifier(config)
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


def _report_truncation(objective, tokenizer, train_examples, eval_examples, workdir) -> None:
    """Say (and write to `<workdir>/inputs.json`) how many rows of each split the row
    length truncates."""
    report = {
        split: finetune_formats.truncation(objective, tokenizer, examples)
        for split, examples in (("train", train_examples), ("eval", eval_examples))
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
    """The checkpoint's tokenizer, copied into the run directory by the first start (from
    process 0); later ones, and eval/generate/export, read the copy. None without a
    checkpoint: the trainer then loads config.tokenizer.path or trains one."""
    if not config.finetune.checkpoint:
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


def freeze_body(tx: optax.GradientTransformation, params):
    """Every update but the classifier head's zeroed after the optimizer (weight decay
    included), so the body stays bit-identical. `params` may be shapes (jax.eval_shape's);
    only its tree is read. The optimizer still keeps moments for the body (zeros, as its
    gradients are used): simple, and the optimizer state keeps the shape that the
    sharding rules expect."""
    flat = traverse_util.flatten_dict(params)
    body = traverse_util.unflatten_dict({path: HEAD not in path for path in flat})
    return optax.chain(tx, optax.masked(optax.set_to_zero(), body))


def initialize(run, params, checkpoint: pretrained.Checkpoint):
    """Fresh `params` with the body and the checkpoint's trained heads replaced by its
    weights; says which heads start fresh."""
    _check_model(checkpoint.model, run.config, checkpoint.path)
    keep_fresh = checkpoint.untrained_heads | {HEAD}
    params = _restore_body(run, params, checkpoint, keep_fresh)
    fresh = sorted(heads.of_model(config_lib.to_dict(run.config)["model"]) & keep_fresh)
    _say(f"initialized from {_origin(checkpoint)}; fresh heads: {', '.join(fresh) or 'none'}")
    return params


def _origin(checkpoint: pretrained.Checkpoint) -> str:
    return f"{checkpoint.path} ({checkpoint.format})"


def start(config, workdir: str) -> trainer.Start:
    """How the fine-tuning run described by the resolved `config` starts."""
    train_examples = labelled.load_split(config.task, "train")
    eval_examples = labelled.load_split(config.task, "eval")
    prepare(config, len(train_examples))
    tokenizer = load_tokenizer(config, workdir) or inputs.load_or_train_tokenizer(
        config, workdir, train_examples
    )
    objective = inputs.build_objective(config, tokenizer)
    _report_truncation(objective, tokenizer, train_examples, eval_examples, workdir)
    ft = config.finetune
    begin = trainer.Start(
        documents=(train_examples, eval_examples),
        tokenizer=tokenizer,
        wrap_optimizer=freeze_body if ft.freeze_body else None,
    )
    if ft.init == "pretrained":
        checkpoint = _checkpoint(config)
        begin.initial_params = functools.partial(initialize, checkpoint=checkpoint)
        begin.untrained_heads = checkpoint.untrained_heads
        begin.origin = _origin(checkpoint)
    return begin


def train(config, workdir: str) -> trainer.TrainResult:
    """Fine-tune (or resume) the run of the resolved `config` in `workdir`."""
    validate.check(config)
    distributed.initialize(config)  # before anything touches devices
    clock = startup.Clock()
    clock.mark("imports and config")
    # The lock before the tokenizer is copied in: one trainer per workdir.
    with run_dir.hold(workdir, enabled=jax.process_index() == 0):
        begin = start(config, workdir)
        clock.mark("task and tokenizer")  # the labelled files, the tokenizer (may train)
        return trainer.train(config, workdir, begin, clock=clock)


def _has_classifier(config) -> bool:
    """Whether the model carries a classification head: the decoder's and the encoder's
    fine-tuning formats classify; the encoder-decoder's writes the label as text."""
    return "num_classes" in config.model


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


def _restore_body(run, params, checkpoint, keep_fresh) -> dict:
    arch = run.config.model.arch
    fresh = traverse_util.flatten_dict(params, sep="/")
    wanted = {
        path: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        for path, leaf in fresh.items()
        if heads.head_of(arch, path) not in keep_fresh
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
