"""What the trainer does differently for a fine-tuning config (one with `config.task`):
steps from epochs, the pretrained checkpoint's tokenizer and weights, a frozen body.

Every function here is a no-op for pretraining configs, so the trainer calls them
unconditionally and stays one loop.

Weights (`config.finetune.checkpoint`, `checkpoint_format`):
  t5x_lite  a pretraining workdir (its latest step) or one step directory. Its saved
            config must match config.model in every key but `FREE_MODEL_KEYS`, and the
            run uses its `tokenizer.model` unless config.tokenizer.path names a file with
            the same pieces.
  hf_bert / hf_t5 / hf_gpt2   a Hugging Face directory, read by t5x_lite.models.hf_*;
            its tokenizer is the directory's own vocabulary.
Parameters the checkpoint lacks (the new `classifier`) keep their fresh initialization;
any other missing parameter, or one of another shape, is a one-line error.
`init=random` keeps every fresh parameter: the no-pretraining baseline with the same
tokenizer and shapes.
"""

from __future__ import annotations

import filecmp
import math
import os

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util

from t5x_lite import config as config_lib
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.errors import UserError

# Model keys a fine-tuning run may set differently from its checkpoint.
FREE_MODEL_KEYS = ("num_classes", "dropout_rate", "dtype", "remat_policy", "attention_impl")
FORMATS = ("t5x_lite", "hf_bert", "hf_t5", "hf_gpt2")
INITS = ("pretrained", "random")
HEAD = "classifier"  # the parameters a classification head adds


def is_finetuning(config) -> bool:
    return "task" in config


def prepare(config, num_train_examples: int) -> None:
    """Check the fine-tuning settings and set train.num_steps from finetune.epochs."""
    if not is_finetuning(config):
        return
    ft = config.finetune
    if ft.checkpoint_format not in FORMATS:
        raise UserError(
            f"config.finetune.checkpoint_format={ft.checkpoint_format!r}: use one of {FORMATS}"
        )
    if ft.init not in INITS:
        raise UserError(f"config.finetune.init={ft.init!r}: use one of {INITS}")
    if ft.init == "pretrained" and not ft.checkpoint:
        raise UserError(
            "config.finetune.checkpoint is empty: give a pretraining workdir, or set "
            "--config.finetune.init=random for the no-pretraining baseline"
        )
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


def checkpoint_step_dir(path: str) -> tuple[str, int]:
    """A workdir, its checkpoints/ directory or one step directory -> (checkpoints dir, step)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise UserError(f"config.finetune.checkpoint={path} is not a directory")
    for directory in (os.path.join(path, "checkpoints"), path):
        steps = [int(name) for name in _listdir(directory) if name.isdigit()]
        if steps:
            return directory, max(steps)
    parent, name = os.path.split(path)
    if name.isdigit():
        return parent, int(name)
    raise UserError(
        f"config.finetune.checkpoint={path} holds no checkpoint (no checkpoints/<step>); "
        "give a pretraining workdir or a step directory"
    )


def _listdir(directory: str) -> list[str]:
    return os.listdir(directory) if os.path.isdir(directory) else []


def load_tokenizer(config):
    """The fine-tuning run's tokenizer, or None for a pretraining config (which trains or
    loads its own)."""
    if not is_finetuning(config) or not config.finetune.checkpoint:
        return None
    ft = config.finetune
    if ft.checkpoint_format == "hf_bert":
        from t5x_lite.hf_tokenizer import WordPieceTokenizer

        return WordPieceTokenizer(ft.checkpoint)
    if ft.checkpoint_format == "hf_t5":
        from t5x_lite.models.hf_t5 import T5Tokenizer

        return T5Tokenizer(ft.checkpoint)
    if ft.checkpoint_format == "hf_gpt2":
        from t5x_lite.models.hf_gpt2 import GPT2Tokenizer

        return GPT2Tokenizer(ft.checkpoint)
    directory, _ = checkpoint_step_dir(ft.checkpoint)
    pretrained = os.path.join(os.path.dirname(directory), "tokenizer.model")
    if not os.path.exists(pretrained):
        raise UserError(f"the pretraining run has no tokenizer at {pretrained}")
    path = config.tokenizer.path or pretrained
    if not os.path.exists(path):
        raise UserError(f"config.tokenizer.path={path} does not exist")
    if not filecmp.cmp(path, pretrained, shallow=False):
        raise UserError(
            f"config.tokenizer.path={path} is not the vocabulary the checkpoint was trained "
            f"with ({pretrained}); leave config.tokenizer.path empty"
        )
    return tokenizer_lib.Tokenizer(path)


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


def initial_params(run, params):
    """Fresh `params` with every body parameter replaced by the pretrained checkpoint's;
    unchanged for pretraining configs and init=random."""
    config = run.config
    if not is_finetuning(config) or config.finetune.init != "pretrained":
        return params
    fresh = traverse_util.flatten_dict(params, sep="/")
    wanted = {path: leaf for path, leaf in fresh.items() if HEAD not in path.split("/")}
    loaded = _load(config, run, wanted)
    merged = {}
    for path, leaf in fresh.items():
        if path not in wanted:
            merged[path] = leaf
            continue
        if path not in loaded:
            raise UserError(
                f"the checkpoint {config.finetune.checkpoint} has no parameter {path}; it does "
                "not match config.model"
            )
        value = loaded[path]
        if tuple(value.shape) != tuple(leaf.shape):
            raise UserError(
                f"the checkpoint's parameter {path} has shape {tuple(value.shape)} but "
                f"config.model gives {tuple(leaf.shape)}; the architectures differ"
            )
        if isinstance(value, jax.Array):  # restored onto this run's shardings already
            merged[path] = value.astype(leaf.dtype)
        else:  # host arrays (Hugging Face): each process places its own shards
            merged[path] = jax.make_array_from_callback(
                leaf.shape,
                leaf.sharding,
                lambda index, v=value, dtype=leaf.dtype: np.asarray(v[index], dtype),
            )
    return traverse_util.unflatten_dict(merged, sep="/")


def _load(config, run, wanted: dict) -> dict:
    """{path: array} of the checkpoint's parameters at the `wanted` paths."""
    ft = config.finetune
    if ft.checkpoint_format == "t5x_lite":
        return _load_t5x_lite(config, run, wanted)
    from t5x_lite.models import hf_bert, hf_gpt2, hf_t5

    loader = {"hf_bert": hf_bert.load_hf_bert, "hf_t5": hf_t5.load_hf_t5}.get(
        ft.checkpoint_format, hf_gpt2.load_hf_gpt2
    )
    model_config, params = loader(ft.checkpoint, rng=jax.random.key(config.seed))
    _check_model(model_config, config, ft.checkpoint)
    return traverse_util.flatten_dict(params, sep="/")


def _check_model(saved_model: dict, config, where: str) -> None:
    current = config_lib.to_dict(config)["model"]
    changed = [
        (key, saved_model.get(key), current.get(key))
        for key in sorted(set(saved_model) | set(current))
        if key not in FREE_MODEL_KEYS and saved_model.get(key) != current.get(key)
    ]
    if changed:
        differences = "; ".join(f"{k}: checkpoint {s!r}, config {c!r}" for k, s, c in changed[:3])
        key, saved, _ = changed[0]
        raise UserError(
            f"the checkpoint {where} does not match config.model ({differences}); fine-tune "
            f"with the pretraining run's model settings, e.g. --config.model.{key}={saved}"
        )


def _load_t5x_lite(config, run, wanted: dict) -> dict:
    directory, step = checkpoint_step_dir(config.finetune.checkpoint)
    manager = ocp.CheckpointManager(directory, item_names=("state", "config"))
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    where = os.path.join(directory, str(step))
    _check_model(saved["model"], config, where)
    target = {
        "params": traverse_util.unflatten_dict(
            {
                path: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
                for path, leaf in wanted.items()
            },
            sep="/",
        )
    }
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.join(where, "state"),
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    manager.close()
    del run
    return traverse_util.flatten_dict(restored["params"], sep="/")
