"""Fine-tuning objectives: labelled examples in each family's input format.

A fine-tuning "document" is a task example with `text_a`, `text_b` (None for
single-sentence tasks), `label` (class index, or -1) and `target` (text); see
`t5x_lite.data.labelled`. `encode` tokenizes its fields; `make_example` lays them out,
one example per labelled row (`chunk_length` stays None):

  classification, decoder_only (GPT-1, Radford et al. 2018, Figure 1):
      [START] a [DELIM] b [EXTRACT]     START = BOS, DELIM = [SEP], EXTRACT = [CLS]
      A linear classifier reads the final hidden state at [EXTRACT] (`class_token_index`).
      With `aux_lm_weight` > 0 the LM loss on the text tokens is added with that weight
      (GPT-1's L3 = L2 + lambda * L1, lambda 0.5).
  classification, encoder_only (BERT):
      [CLS] a [SEP] b [SEP]              token types 0 through the first [SEP], 1 after
      The classifier reads the pooled [CLS].
  text_to_text, encoder_decoder (T5): the encoder reads `input_template` filled with the
      example's texts ("sst2 sentence: {a}") + EOS; the decoder predicts the label's word
      (`label_words[label]`) or, for generation tasks, the target text, + EOS.

Texts too long for the row are cut longest-first (the longer text loses tokens from its
end until both are equal, then they lose one each in turn, `a` first), as BERT does, so
the special tokens always survive; `truncation` counts the rows this cuts. Labels
travel as one-position features (`class_labels`, `class_weights`), scored like NSP: one
example per row (PACK_NONE).
"""

from __future__ import annotations

import string

import numpy as np

from t5x_lite.data import packing
from t5x_lite.errors import UserError
from t5x_lite.objectives import base
from t5x_lite.objectives.encoder_decoder import (
    ENCODER_DECODER_LOSS,
    encoder_decoder_example,
    encoder_decoder_lengths,
)
from t5x_lite.objectives.registry import register

CLASS_LOSS = base.LossTerm("class", "class_logits", "class_labels", "class_weights")
_EMPTY = np.zeros(0, np.int32)


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths to keep of two texts so that they fit `budget` tokens, longest first."""
    excess = len_a + len_b - budget
    if excess <= 0:
        return len_a, len_b
    if len_b == 0:
        return budget, 0
    longer_cut = min(excess, abs(len_a - len_b))
    if len_a > len_b:
        len_a -= longer_cut
    else:
        len_b -= longer_cut
    rest = excess - longer_cut  # now len_a == len_b: cut in turn, a first
    return len_a - (rest + 1) // 2, len_b - rest // 2


def _check_seq_len(seq_len: int, minimum: int) -> None:
    if seq_len < minimum:
        raise UserError(
            f"config.objective.seq_len={seq_len} cannot hold the special tokens and a token "
            f"of each text; use >= {minimum}"
        )


class _Classification(base.Objective):
    """Shared by both classifiers: a task example -> (ids of a, ids of b, [label])."""

    pack_mode = packing.PACK_NONE
    dynamic_randomness = False  # nothing is drawn
    ids_from_tokenizer = ("special_ids",)

    def encode(self, tokenizer, example):
        if example.label < 0:
            raise UserError(
                f"line {example.line}: classification needs a label; set config.task.kind"
            )
        text_b = _EMPTY if example.text_b is None else tokenizer.encode(example.text_b)
        return tokenizer.encode(example.text_a), text_b, np.array([example.label], np.int32)

    def dropped_tokens(self, tokens) -> int:
        """How many text tokens `make_example` cuts from this example to fit the row."""
        text_a, text_b, _ = tokens
        pair = len(text_b) > 0
        return max(0, len(text_a) + len(text_b) - (self.seq_len - 2 - pair))

    def _label_features(self, label) -> dict[str, np.ndarray]:
        return {"class_labels": label, "class_weights": np.ones(1, np.int32)}


@register("classification")
class DecoderClassification(_Classification):
    """GPT-1's format; see the module docstring."""

    architectures = ("decoder_only",)

    def __init__(self, *, seq_len: int, aux_lm_weight: float, special_ids: dict[str, int]):
        _check_seq_len(seq_len, 5)
        if aux_lm_weight < 0:
            raise UserError(f"config.objective.aux_lm_weight={aux_lm_weight} must be >= 0")
        self.seq_len, self.aux_lm_weight = seq_len, aux_lm_weight
        self.start_id, self.delim_id = special_ids["bos_id"], special_ids["sep_id"]
        self.extract_id = special_ids["cls_id"]
        lm = base.LossTerm(
            "lm", "logits", "decoder_target_tokens", "decoder_loss_weights", aux_lm_weight
        )
        self.loss_terms = (CLASS_LOSS, lm) if aux_lm_weight > 0 else (CLASS_LOSS,)

    def feature_lengths(self):
        return {
            "decoder_input_tokens": self.seq_len,
            "decoder_target_tokens": self.seq_len,
            "decoder_loss_weights": self.seq_len,
            "class_labels": 1,
            "class_weights": 1,
            "class_token_index": 1,
        }

    def make_example(self, tokens, rng):
        del rng
        text_a, text_b, label = tokens
        pair = len(text_b) > 0
        keep_a, keep_b = truncate_pair(len(text_a), len(text_b), self.seq_len - 2 - pair)
        pieces = [[self.start_id], text_a[:keep_a]]
        if pair:
            pieces += [[self.delim_id], text_b[:keep_b]]
        inputs = np.concatenate(pieces + [[self.extract_id]]).astype(np.int32)
        # The auxiliary LM predicts each next token where that token is text.
        targets = np.concatenate([inputs[1:], [0]]).astype(np.int32)
        is_text = np.ones(len(inputs), bool)
        is_text[[0, -1]] = False
        if pair:
            is_text[1 + keep_a] = False  # [DELIM]
        return {
            "decoder_input_tokens": inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": np.concatenate([is_text[1:], [False]]).astype(np.int32),
            "class_token_index": np.array([len(inputs) - 1], np.int32),
            **self._label_features(label),
        }


@register("classification")
class EncoderClassification(_Classification):
    """BERT's format; see the module docstring."""

    architectures = ("encoder_only",)
    loss_terms = (CLASS_LOSS,)

    def __init__(self, *, seq_len: int, special_ids: dict[str, int]):
        _check_seq_len(seq_len, 5)
        self.seq_len = seq_len
        self.cls_id, self.sep_id = special_ids["cls_id"], special_ids["sep_id"]

    def feature_lengths(self):
        return {
            "encoder_input_tokens": self.seq_len,
            "encoder_token_type_ids": self.seq_len,
            "class_labels": 1,
            "class_weights": 1,
        }

    def make_example(self, tokens, rng):
        del rng
        text_a, text_b, label = tokens
        pair = len(text_b) > 0
        keep_a, keep_b = truncate_pair(len(text_a), len(text_b), self.seq_len - 2 - pair)
        first = np.concatenate([[self.cls_id], text_a[:keep_a], [self.sep_id]])
        second = np.concatenate([text_b[:keep_b], [self.sep_id]]) if pair else _EMPTY
        return {
            "encoder_input_tokens": np.concatenate([first, second]).astype(np.int32),
            "encoder_token_type_ids": np.concatenate(
                [np.zeros(len(first)), np.ones(len(second))]
            ).astype(np.int32),
            **self._label_features(label),
        }


def template_fields(template: str) -> set[str]:
    """The `{field}` names a template uses."""
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def fill_template(template: str, example) -> str:
    """`template` with {a} / {b} replaced by the example's texts."""
    if "b" in template_fields(template) and example.text_b is None:
        raise UserError(
            f"line {example.line}: the template {template!r} uses {{b}} but the task has no "
            "second text (config.task.<split>.text_b)"
        )
    return template.format(a=example.text_a, b=example.text_b)


@register("text_to_text")
class TextToText(base.Objective):
    """T5's text-to-text format; see the module docstring."""

    architectures = ("encoder_decoder",)
    pack_mode = packing.PACK_NONE
    dynamic_randomness = False
    loss_terms = ENCODER_DECODER_LOSS
    ids_from_tokenizer = ("bos_id", "eos_id")

    def __init__(
        self,
        *,
        inputs_length: int,
        targets_length: int,
        input_template: str,
        label_words: tuple[str, ...],
        bos_id: int,
        eos_id: int,
    ):
        for key, length in (("inputs_length", inputs_length), ("targets_length", targets_length)):
            if length < 2:
                raise UserError(f"config.objective.{key}={length} must be >= 2 (text and EOS)")
        unknown = template_fields(input_template) - {"a", "b"}
        if unknown or "a" not in template_fields(input_template):
            raise UserError(
                f"config.objective.input_template={input_template!r} must use {{a}} (and "
                f"may use {{b}}), not {sorted(unknown)}"
            )
        self.inputs_length, self.targets_length = inputs_length, targets_length
        self.input_template, self.label_words = input_template, tuple(label_words)
        self.bos_id, self.eos_id = bos_id, eos_id

    def target_text(self, example) -> str:
        """The label's word for classification examples, else the example's target."""
        if example.label < 0:
            return example.target
        if example.label >= len(self.label_words):
            raise UserError(
                f"label {example.label} has no word in config.objective.label_words "
                f"{self.label_words}: give one word per label"
            )
        return self.label_words[example.label]

    def encode(self, tokenizer, example):
        inputs = tokenizer.encode(fill_template(self.input_template, example))
        return inputs, tokenizer.encode(self.target_text(example))

    def feature_lengths(self):
        return encoder_decoder_lengths(self.inputs_length, self.targets_length)

    def dropped_tokens(self, tokens) -> int:
        """How many input and target tokens `make_example` cuts (each keeps room for EOS)."""
        inputs, targets = tokens
        return max(0, len(inputs) - self.inputs_length + 1) + max(
            0, len(targets) - self.targets_length + 1
        )

    def make_example(self, tokens, rng):
        del rng
        inputs, targets = tokens
        return encoder_decoder_example(
            inputs[: self.inputs_length - 1],
            targets[: self.targets_length - 1],
            bos_id=self.bos_id,
            eos_id=self.eos_id,
        )


def truncation(objective, tokenizer, examples) -> dict:
    """How many of `examples` the objective truncates: {'rows', 'truncated_rows',
    'truncated_share', 'dropped_tokens'}."""
    dropped = np.array(
        [objective.dropped_tokens(objective.encode(tokenizer, e)) for e in examples], np.int64
    )
    rows = len(examples)
    truncated = int(np.count_nonzero(dropped))
    return {
        "rows": rows,
        "truncated_rows": truncated,
        "truncated_share": truncated / rows if rows else 0.0,
        "dropped_tokens": int(dropped.sum()),
    }
