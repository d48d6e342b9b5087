"""The features every encoder-decoder objective produces, and the loss that reads them.

An example is the inputs + EOS for the encoder, and the targets + EOS for the decoder,
which reads them shifted right by BOS (T5 starts the decoder with pad, id 0; we have a
dedicated BOS id, and pad stays padding only). Every target token, EOS included, is
scored. Span corruption, prefix LM, the other rows of T5's objective table and T5's
text-to-text fine-tuning all build their examples here.
"""

from __future__ import annotations

import numpy as np

from t5x_lite.objectives import base

ENCODER_DECODER_LOSS = (
    base.LossTerm("lm", "logits", "decoder_target_tokens", "decoder_loss_weights"),
)


def encoder_decoder_example(inputs, targets, *, bos_id: int, eos_id: int) -> dict:
    """Inputs and targets (no EOS) -> the encoder-decoder features, int32.

    Every target token, EOS included, is scored; the decoder reads targets shifted
    right by BOS.
    """
    decoder_targets = np.concatenate([targets, [eos_id]]).astype(np.int32)
    return {
        "encoder_input_tokens": np.concatenate([inputs, [eos_id]]).astype(np.int32),
        "decoder_input_tokens": np.concatenate([[bos_id], decoder_targets[:-1]]).astype(np.int32),
        "decoder_target_tokens": decoder_targets,
        "decoder_loss_weights": np.ones_like(decoder_targets),
    }


def encoder_decoder_lengths(inputs_length: int, targets_length: int) -> dict[str, int]:
    return {
        "encoder_input_tokens": inputs_length,
        "decoder_input_tokens": targets_length,
        "decoder_target_tokens": targets_length,
        "decoder_loss_weights": targets_length,
    }
