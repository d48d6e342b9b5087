"""A trained model, ready to use: a t5x_lite run at its latest checkpoint, or a Hugging
Face directory, as a `Run` (model, tokenizer, objective, mesh) and its parameters.

`eval`, `generate`, `cloze`, `icl` and `export` all start here. A run brings its own
config (`config.json`); a Hugging Face directory brings only the model, so its other
settings (sampling, objective lengths, the task) come from a config file: `--config`, or
the family's variant of `gin_configs/pretrain.py` (`Family.default_config`).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import traverse_util

from t5x_lite import config as config_lib
from t5x_lite import families, fileio
from t5x_lite.data import inputs
from t5x_lite.downstream import pretrained
from t5x_lite.errors import UserError
from t5x_lite.train import checkpoints, trainer

# The config a Hugging Face directory's model is dropped into when no --config is given.
# Model keys that describe how to compute, not what was trained: a restored model takes
# them from the config (e.g. --config.model.dtype=bfloat16), everything else from the
# checkpoint.
COMPUTE_KEYS = ("dtype", "remat_policy", "attention_impl")


@dataclasses.dataclass
class Restored:
    run: trainer.Run
    params: dict
    path: str  # the run or Hugging Face directory
    source: str  # what was restored, for reports: 'DIR, step N' or 'DIR (hf_bert)'
    step: int | None  # the checkpoint's step; None for a Hugging Face directory
    untrained_heads: frozenset  # heads with random weights (see models/heads.py)

    def check_output(self, output: str, allow_fresh: bool) -> None:
        """A one-line error if computing model output `output` needs an untrained head."""
        pretrained.check_heads(
            self.untrained_heads, self.run.config.model.arch, output, self.source, allow_fresh
        )


def restore(
    workdir: str,
    overrides=(),
    *,
    config_spec: str = "",
    checkpoint_format: str = "auto",
) -> Restored:
    """The model in `workdir` (a run, or a Hugging Face directory), with the config
    `overrides` ((dotted key, string value) pairs) applied."""
    found = pretrained.detect_format(workdir, checkpoint_format)
    if found == "t5x_lite":
        if config_spec:
            raise UserError(
                f"--config is for Hugging Face directories; the run {workdir} has its own "
                "config.json (change its keys with --config.KEY=VALUE)"
            )
        return _restore_run(workdir, overrides)
    return _restore_hf(workdir, found, overrides, config_spec)


def _restore_run(workdir: str, overrides) -> Restored:
    config = config_lib.load_saved(workdir, overrides)
    run = trainer.build_run(config, _run_tokenizer(config, workdir))
    # Reading only: a damaged step is passed over (with a warning), not moved.
    ckpt = checkpoints.Checkpointer(workdir, every=0, keep=1, set_aside_damaged=False)
    try:
        restored = ckpt.restore(run.abstract_state, config)
    finally:
        ckpt.close()
    if restored is None:
        raise UserError(f"{workdir} has no checkpoint; train it first")
    step, state, _ = restored
    untrained = checkpoints.read_untrained_heads(workdir)
    source = f"{workdir}, step {step}"
    return Restored(run, state.params, fileio.absolute(workdir), source, step, untrained)


def from_result(result: trainer.TrainResult) -> Restored:
    """The model a training run just finished with, as `restore` would give it."""
    step = int(jax.device_get(result.state.step))
    untrained = checkpoints.read_untrained_heads(result.workdir)
    source = f"{result.workdir}, step {step}"
    path = fileio.absolute(result.workdir)
    return Restored(result.run, result.state.params, path, source, step, untrained)


def _restore_hf(path: str, found: str, overrides, config_spec: str) -> Restored:
    checkpoint = pretrained.open_checkpoint(path, found)
    arch = checkpoint.model["arch"]
    config = config_lib.load(config_spec or _family_spec(arch, path), overrides)
    free = [key for key in COMPUTE_KEYS if key in config.model]
    pretrained.adopt_model(
        config, checkpoint.model, {key for key, _ in overrides}, checkpoint.path, free
    )
    run = trainer.build_run(config, checkpoint.load_tokenizer())
    shardings = traverse_util.flatten_dict(run.state_shardings.params, sep="/")
    abstract = traverse_util.flatten_dict(run.abstract_state.params, sep="/")
    params = {
        name: pretrained.to_device(checkpoint.hf_params[name], leaf.dtype, shardings[name])
        for name, leaf in abstract.items()
    }
    params = traverse_util.unflatten_dict(params, sep="/")
    source = f"{checkpoint.path} ({found})"
    return Restored(run, params, checkpoint.path, source, None, checkpoint.untrained_heads)


def _run_tokenizer(config, workdir: str):
    """The tokenizer a run keeps (fine-tuning copies its checkpoint's in), or the one
    its config names (a pretraining run given config.tokenizer.path)."""
    if pretrained.has_tokenizer(workdir):
        return pretrained.load_run_tokenizer(workdir)
    if not config.tokenizer.path:
        raise UserError(
            f"{workdir} has no tokenizer.model (and its config.tokenizer.path is empty); "
            "restore the file from the run, or pass --config.tokenizer.path=TOKENIZER.model"
        )
    return inputs.load_or_train_tokenizer(config, workdir, None)


def _family_spec(arch: str, path: str) -> str:
    spec = families.get(arch).default_config
    file, _, _ = spec.partition(":")
    shipped = config_lib.shipped_config(file)
    if shipped is None:
        raise UserError(
            f"{path} is a Hugging Face {arch} model; give --config=FILE.py:VARIANT for its "
            f"other settings (e.g. gin_configs/{spec})"
        )
    return shipped + spec[len(file) :]
