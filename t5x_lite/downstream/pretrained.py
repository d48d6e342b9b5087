"""What a pretrained checkpoint holds, whoever wrote it: a t5x_lite run or a Hugging Face
directory. Fine-tuning starts from one; `eval`, `generate`, `cloze` and `icl` read one.

Formats (`config.finetune.checkpoint_format`, `--checkpoint_format`):
  auto      detect: a `config.json` with HF's `model_type` is a Hugging Face directory,
            anything with `checkpoints/<step>` (or a step directory) a t5x_lite run.
  t5x_lite  a run directory (its latest step), its `checkpoints/` or one step directory.
  hf_bert / hf_t5 / hf_gpt2   a `save_pretrained` directory (config.json, model.safetensors
            and the tokenizer files), read by `t5x_lite.models.hf_*`.

A checkpoint gives the model section (`model`), the tokenizer, the parameters, and which
output heads it has no trained weights for (`untrained_heads`: e.g. the MLM head of a
BertModel, or the NSP head of a RoBERTa-style run), so that nothing runs a random head
without saying so.

A run directory is self-contained: it keeps its tokenizer (`tokenizer.model` for ours,
`tokenizer/` for a Hugging Face vocabulary, with `tokenizer/format.json` naming the
class) and `heads.json` (the heads its training never trained).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from t5x_lite import config as config_lib
from t5x_lite import families, fileio
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.errors import UserError
from t5x_lite.models import heads
from t5x_lite.train import checkpoints

FORMATS = ("auto", "t5x_lite", *families.BY_HF_FORMAT)
# Where a run keeps a Hugging Face tokenizer, and the file that names its format.
HF_TOKENIZER_DIR = "tokenizer"
_TOKENIZER_FORMAT_FILE = "format.json"


def _read_json(path: str) -> dict | None:
    if not fileio.isfile(path):
        return None
    try:
        return json.loads(fileio.read_text(path))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not readable JSON ({error}); restore or remove it") from None


def detect_format(path: str, declared: str = "auto", key: str = "--checkpoint_format") -> str:
    """The format of the checkpoint at `path`; `declared` (not auto) must agree with it."""
    if declared not in FORMATS:
        raise UserError(f"{key}={declared!r}: use one of {', '.join(FORMATS)}")
    if not fileio.isdir(path):
        raise UserError(f"{path} is not a directory; give a run directory or a Hugging Face one")
    hf_config = _read_json(fileio.join(path, "config.json")) or {}
    if "model_type" in hf_config:
        model_type = hf_config["model_type"]
        if model_type not in families.BY_HF_MODEL_TYPE:
            raise UserError(
                f"{path} holds a Hugging Face {model_type!r} model; t5x_lite reads "
                f"{', '.join(families.BY_HF_MODEL_TYPE)}"
            )
        found = families.BY_HF_MODEL_TYPE[model_type].hf_format
    else:
        if "model" not in hf_config:  # not a run's own config.json either
            step_dir(path)  # fails with what to give instead
        found = "t5x_lite"
    if declared not in ("auto", found):
        raise UserError(
            f"{key}={declared} but {path} holds a {found} checkpoint; set {key}={found} or auto"
        )
    return found


def step_dir(path: str) -> tuple[str, int]:
    """A run directory, its checkpoints/ directory or one step directory -> (checkpoints
    directory, step)."""
    path = fileio.absolute(path)
    for directory in (fileio.join(path, "checkpoints"), path):
        if fileio.isdir(directory):
            steps = [int(name) for name in fileio.listdir(directory) if name.isdigit()]
            if steps:
                return directory, max(steps)
    parent, name = os.path.split(path)
    if name.isdigit() and fileio.isdir(fileio.join(path, "state")):
        return parent, int(name)
    raise UserError(
        f"{path} holds no checkpoint (no checkpoints/<step>, and no Hugging Face config.json "
        "with a model_type); give a run directory, a step directory or a Hugging Face one"
    )


def _run_dir(checkpoints_dir: str) -> str:
    """The run directory above a checkpoints directory (or a bare step directory's parent)."""
    if os.path.basename(checkpoints_dir) == "checkpoints":
        return os.path.dirname(checkpoints_dir)
    return checkpoints_dir


@dataclasses.dataclass
class Checkpoint:
    """A pretrained checkpoint, opened: its format, model section and heads."""

    path: str
    format: str
    model: dict  # the checkpoint's config.model
    untrained_heads: frozenset  # heads it has no trained weights for
    step: int | None = None  # t5x_lite: the step restored
    checkpoints_dir: str = ""  # t5x_lite: where the step lives
    hf_params: dict | None = None  # Hugging Face: every parameter, flat, on the host

    @property
    def is_hf(self) -> bool:
        return self.format != "t5x_lite"

    @property
    def tokenizer_dir(self) -> str:
        """The directory whose tokenizer files this checkpoint uses."""
        return self.path if self.is_hf else _run_dir(self.checkpoints_dir)

    def load_tokenizer(self):
        """A Hugging Face directory exported from a t5x_lite run carries our
        sentencepiece model (`tokenizer.model`) beside the HF files: that one is read."""
        spm_path = fileio.join(self.path, "tokenizer.model")
        if self.is_hf and not fileio.isfile(spm_path):
            return families.BY_HF_FORMAT[self.format].hf_tokenizer(self.path)
        return load_run_tokenizer(self.tokenizer_dir)

    def load_params(self, wanted: dict) -> dict:
        """{'a/b/c': array} of the checkpoint's parameters at the `wanted` paths (a flat
        dict of ShapeDtypeStructs with shardings): jax arrays on those shardings for a
        t5x_lite run, host arrays for a Hugging Face one."""
        if self.is_hf:
            return {path: self.hf_params[path] for path in wanted if path in self.hf_params}
        target = {"params": traverse_util.unflatten_dict(wanted, sep="/")}
        restored = ocp.PyTreeCheckpointer().restore(
            fileio.join(self.checkpoints_dir, str(self.step), "state"),
            args=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            ),
        )
        return traverse_util.flatten_dict(restored["params"], sep="/")


def open_checkpoint(path: str, declared: str = "auto", key: str = "--checkpoint_format"):
    """The checkpoint at `path` (format `declared`, or detected) -> Checkpoint. A Hugging
    Face checkpoint is read whole here (the heads it lacks are fresh, and listed in
    `untrained_heads`)."""
    found = detect_format(path, declared, key)
    if found == "t5x_lite":
        directory, step = step_dir(path)
        manager = ocp.CheckpointManager(directory, item_names=("state", "config"))
        try:
            restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        finally:
            manager.close()
        untrained = checkpoints.read_untrained_heads(_run_dir(directory))
        return Checkpoint(path, found, restored.config["model"], untrained, step, directory)
    weights = fileio.join(path, "model.safetensors")
    mtime = fileio.modified_ns(weights) if fileio.exists(weights) else 0
    return _open_hf(fileio.absolute(path), found, mtime)


# Fine-tuning opens the checkpoint to resolve its config, then to load its weights; the
# file's modification time is part of the key, so a rewritten checkpoint is read anew.
@functools.lru_cache(maxsize=1)
def _open_hf(path: str, found: str, mtime_ns: int) -> Checkpoint:
    family = families.BY_HF_FORMAT[found]
    model, params = family.load_hf(path, jax.random.key(0))
    untrained = heads.of_model(model) - family.hf_heads_present(path)
    flat = traverse_util.flatten_dict(params, sep="/")
    return Checkpoint(path, found, model, frozenset(untrained), hf_params=flat)


def to_device(value: np.ndarray, dtype, sharding) -> jax.Array:
    """A host array placed on `sharding`; each process places its own shards."""
    return jax.make_array_from_callback(
        value.shape, sharding, lambda index: np.asarray(value[index], dtype)
    )


# --- A run's own files: tokenizer and heads ------------------------------------------


def has_tokenizer(run_dir: str) -> bool:
    names = (HF_TOKENIZER_DIR, "tokenizer.model")
    return any(fileio.exists(fileio.join(run_dir, name)) for name in names)


def load_run_tokenizer(run_dir: str):
    """The tokenizer a run keeps: `tokenizer/` (a Hugging Face vocabulary) or
    `tokenizer.model` (sentencepiece)."""
    hf_dir = fileio.join(run_dir, HF_TOKENIZER_DIR)
    saved = _read_json(fileio.join(hf_dir, _TOKENIZER_FORMAT_FILE))
    if saved is not None:
        return families.BY_HF_FORMAT[saved["format"]].hf_tokenizer(hf_dir)
    path = fileio.join(run_dir, "tokenizer.model")
    if not fileio.isfile(path):
        raise UserError(
            f"{run_dir} has no tokenizer (tokenizer.model or tokenizer/); it is not a complete "
            "t5x_lite run"
        )
    return tokenizer_lib.Tokenizer(path)


def copy_tokenizer(checkpoint: Checkpoint, run_dir: str) -> None:
    """Copy the checkpoint's tokenizer into `run_dir` (unless it has one), so that the
    run keeps working when the checkpoint moves."""
    fileio.makedirs(run_dir)
    if has_tokenizer(run_dir):
        return
    source = checkpoint.tokenizer_dir
    if not checkpoint.is_hf:  # a run's own, whichever kind it keeps
        for name in (HF_TOKENIZER_DIR, "tokenizer.model"):
            _copy(fileio.join(source, name), fileio.join(run_dir, name))
        return
    tokenizer = checkpoint.load_tokenizer()
    if isinstance(tokenizer, tokenizer_lib.Tokenizer):  # exported from a t5x_lite run
        _copy(fileio.join(source, "tokenizer.model"), fileio.join(run_dir, "tokenizer.model"))
        return
    # format.json last: a directory without it is not taken for a tokenizer.
    with fileio.staged_directory(fileio.join(run_dir, HF_TOKENIZER_DIR)) as staging:
        tokenizer.save_pretrained(staging)
        format_json = json.dumps({"format": checkpoint.format})
        fileio.write_text(fileio.join(staging, _TOKENIZER_FORMAT_FILE), format_json)


def _copy(source: str, target: str) -> None:
    """A file or directory, if it exists, copied whole (see fileio.copy_file/copy_tree)."""
    if not fileio.exists(source):
        return
    if fileio.isdir(source):
        fileio.copy_tree(source, target)
    else:
        fileio.copy_file(source, target)


def check_heads(untrained, arch: str, output: str, where: str, allow_fresh: bool) -> None:
    """One line naming the untrained heads that computing `output` needs."""
    missing = sorted(set(heads.OUTPUT_HEADS[arch].get(output, ())) & set(untrained))
    if missing and not allow_fresh:
        raise UserError(
            f"{where} has no trained {', '.join(missing)} head (needed for {output}); its "
            "weights would be random. Use a checkpoint with that head (e.g. BertForMaskedLM "
            "for [MASK] filling), or pass --allow_fresh_heads to run a fresh one anyway"
        )


def adopt_model(config, checkpoint_model: dict, explicit_keys, where: str, free) -> None:
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
