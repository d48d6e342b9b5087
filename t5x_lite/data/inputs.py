"""From the config to ready inputs: documents, tokenizer, objective and datasets.

Shared by `train`, `bench` and the downstream commands so they all read data the same way.
"""

from __future__ import annotations

import inspect
import os

import jax
import numpy as np

from t5x_lite import objectives
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.data import pipeline, sources
from t5x_lite.errors import UserError


def load_documents(data_config):
    """-> (train documents, eval documents or None) as the config's sources say."""
    train_docs = _load("train", data_config.train)
    kind = data_config.eval.kind
    if kind == "heldout":
        return sources.split_heldout(train_docs, data_config.heldout_docs)
    if kind == "none":
        return train_docs, None
    return train_docs, _load("eval", data_config.eval)


def _load(split: str, source_config):
    try:
        return sources.load_source(source_config)
    except UserError as e:  # say which source: its keys live under config.data.<split>
        raise UserError(f"config.data.{split}: {e}") from None


def load_or_train_tokenizer(config, workdir: str, train_docs) -> tokenizer_lib.Tokenizer:
    """The tokenizer at `config.tokenizer.path`, or one trained on the documents into workdir.

    Only process 0 trains; a multi-process run must give `tokenizer.path`.
    """
    tok_config = config.tokenizer
    path = tok_config.path
    if not path:
        path = os.path.join(workdir, "tokenizer.model")
        if not os.path.exists(path):
            if jax.process_count() > 1:
                raise UserError(
                    "multi-process runs need a trained tokenizer: set config.tokenizer.path "
                    "(train one with `t5x-lite tokenizer`)"
                )
            os.makedirs(workdir, exist_ok=True)
            try:
                tokenizer_lib.train_tokenizer(
                    train_docs,
                    path[: -len(".model")],
                    vocab_size=tok_config.vocab_size,
                    model_type=tok_config.model_type,
                    max_sentences=tok_config.max_sentences,
                )
            except UserError as e:  # name the config key, not the tokenizer command's flag
                raise UserError(
                    str(e).replace("--vocab_size", "config.tokenizer.vocab_size")
                ) from None
    tokenizer = tokenizer_lib.Tokenizer(path)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise UserError(
            f"the tokenizer {path} has {tokenizer.vocab_size} pieces but "
            f"config.model.vocab_size={config.model.vocab_size}; set "
            f"--config.tokenizer.vocab_size={tokenizer.vocab_size}"
        )
    return tokenizer


def build_objective(config, tokenizer) -> objectives.Objective:
    cls = objectives.get_class(config.objective.name, config.model.arch)
    knobs = {k: v for k, v in config.objective.items() if k != "name"}
    expected = set(inspect.signature(cls.__init__).parameters) - {"self"}
    missing = sorted(expected - set(knobs) - set(cls.ids_from_tokenizer))
    unknown = sorted(set(knobs) - expected)
    if missing or unknown:
        raise UserError(
            f"config.objective for {cls.name!r}: missing keys {missing}, unknown keys {unknown}; "
            "start from a variant of this objective in gin_configs/"
        )
    return cls.build(tokenizer, **knobs)


class _SpecialIdsOnly:
    """What objectives read from a tokenizer, without one: the special ids are fixed
    (see t5x_lite.tokenizer), every other piece counts as a word start."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    pad_id, eos_id, unk_id, bos_id = (tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID,
                                      tokenizer_lib.UNK_ID, tokenizer_lib.BOS_ID)  # fmt: skip
    mask_id, cls_id, sep_id = tokenizer_lib.MASK_ID, tokenizer_lib.CLS_ID, tokenizer_lib.SEP_ID
    sentinel_id = staticmethod(lambda i: tokenizer_lib.FIRST_SENTINEL_ID + i)

    def special_mask(self):
        return np.arange(self.vocab_size) < tokenizer_lib.NUM_SPECIAL_PIECES

    def word_start_mask(self):
        return ~self.special_mask()


def check_objective(config) -> None:
    """Build the objective once with placeholder pieces so that its settings (lengths,
    rates, the architecture it needs) fail before any data is read or tokenizer trained."""
    build_objective(config, _SpecialIdsOnly(config.model.vocab_size))


def process_batch_size(global_batch: int) -> int:
    return global_batch // jax.process_count()


def train_dataset(config, docs, tokenizer, objective):
    """Endless, shuffled (if configured) batches of this process's shard."""
    return _dataset(config, docs, tokenizer, objective, training=True)


def eval_dataset(config, docs, tokenizer, objective):
    """One ordered pass over this process's shard; the last batch padded with empty rows."""
    return _dataset(config, docs, tokenizer, objective, training=False)


def _dataset(config, docs, tokenizer, objective, *, training: bool):
    return pipeline.make_dataset(
        docs,
        tokenizer,
        objective,
        batch_size=process_batch_size(config.data.batch_size),
        seed=config.seed,
        shuffle=training and config.data.shuffle,
        num_epochs=None if training else 1,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        pad_final_batch=not training,
    )
