"""GPT-style causal language modeling: predict every next token of a document."""

from __future__ import annotations

import numpy as np

from t5x_lite.data import packing
from t5x_lite.objectives import base
from t5x_lite.objectives.registry import register


@register("causal_lm")
class CausalLM(base.Objective):
    """Targets are the document followed by EOS; inputs are the targets shifted right by BOS.

    The shift happens per document, before packing, so a packed row never feeds one
    document's last token to the next document's first prediction. A document is one
    example however long (`chunk_length` None): concat packing cuts it across rows,
    continuing with the already shifted inputs, so every token is a target once per
    epoch and none is lost at a row boundary.
    """

    architectures = ("decoder_only",)
    pack_mode = packing.PACK_CONCAT
    loss_terms = (base.LossTerm("lm", "logits", "decoder_target_tokens", "decoder_loss_weights"),)

    def __init__(self, *, seq_len: int, bos_id: int, eos_id: int):
        self.seq_len = seq_len
        self.bos_id = bos_id
        self.eos_id = eos_id

    ids_from_tokenizer = ("bos_id", "eos_id")

    def feature_lengths(self):
        return {
            "decoder_input_tokens": self.seq_len,
            "decoder_target_tokens": self.seq_len,
            "decoder_loss_weights": self.seq_len,
        }

    def make_example(self, tokens, rng):
        del rng  # deterministic
        targets = np.concatenate([tokens, [self.eos_id]]).astype(np.int32)
        inputs = np.concatenate([[self.bos_id], targets[:-1]]).astype(np.int32)
        return {
            "decoder_input_tokens": inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones_like(targets),
        }
