"""T5: the encoder-decoder family (span corruption and T5's other objectives; text to
text when fine-tuned).

Generation encodes the prompt and decodes by greedy or beam search, showing what it
puts at each sentinel; a cloze probe's blank is <extra_id_0>; label words are scored as
targets after the prompt, with relative positions and so no fixed context."""

from __future__ import annotations

import re

import numpy as np

from t5x_lite.downstream import cloze, scoring, search
from t5x_lite.errors import UserError
from t5x_lite.families import base
from t5x_lite.models import hf_t5

_SENTINEL = re.compile(r"<extra_id_\d+>")


def row_flops(model_config, inputs_length: int, targets_length: int) -> float:
    """Training FLOPs of one row: encoder tokens through the encoder layers, decoder
    tokens through the decoder layers (self- and cross-attention) and the output
    projection."""
    d, d_attn = model_config.d_model, model_config.num_heads * model_config.head_dim
    attention_params, mlp_params = 4 * d * d_attn, base.mlp_params(model_config)
    encoder_params = model_config.num_encoder_layers * (attention_params + mlp_params)
    decoder_params = (
        model_config.num_decoder_layers * (2 * attention_params + mlp_params)
        + model_config.vocab_size * d
    )
    encoder = 6.0 * encoder_params + 12 * model_config.num_encoder_layers * inputs_length * d_attn
    decoder = (
        6.0 * decoder_params
        + 12 * model_config.num_decoder_layers * (targets_length + inputs_length) * d_attn
    )
    return inputs_length * encoder + targets_length * decoder


def sentinel_spans(prompt: str, output: str) -> list[tuple[str, str]]:
    """(sentinel, the output's text after it up to the next sentinel) for each sentinel
    of the prompt, in prompt order; '(not generated)' when the output lacks it."""
    spans = {}
    texts_after = _SENTINEL.split(output)[1:]
    for name, text in zip(_SENTINEL.findall(output), texts_after):
        spans.setdefault(name, text.strip())
    return [(name, spans.get(name, "(not generated)")) for name in _SENTINEL.findall(prompt)]


class EncoderDecoder(base.Family):
    arch = "encoder_decoder"
    name = "t5"
    default_config = "pretrain.py:t5_base"
    hf_model_type = "t5"
    hf_format = "hf_t5"
    hf_tokenizer_template = "t5"
    finetune_formats = ("text_to_text",)

    def load_hf(self, hf_dir, rng):
        return hf_t5.load_hf_t5(hf_dir, rng=rng)

    def hf_tokenizer(self, hf_dir):
        return hf_t5.T5Tokenizer(hf_dir)

    def export_hf(self, model_config, params, output_dir, *, labels, special_ids):
        return hf_t5.export_hf_t5(
            model_config, params, output_dir, labels=labels, special_ids=special_ids
        )

    def row_tokens_and_flops(self, model_config, feature_lengths):
        inputs_length = feature_lengths["encoder_input_tokens"]
        targets_length = feature_lengths["decoder_target_tokens"]
        return inputs_length + targets_length, row_flops(
            model_config, inputs_length, targets_length
        )

    def sample_after_training(self, run, params):
        if run.config.sample.max_new_tokens <= 0:
            return None
        return search.sample_from_config(run, params)

    def generate(self, run, params, prompts, *, top_n):
        del top_n
        sample = run.config.sample
        new_tokens = base.check_new_tokens(run.config)
        inputs_length = run.config.objective.inputs_length
        for number, prompt in enumerate(prompts, start=1):
            length = len(run.tokenizer.encode(prompt)) + 1
            if length > inputs_length:
                raise UserError(
                    f"--prompt {number} is {length} tokens with EOS but the model's inputs "
                    f"hold {inputs_length} (config.objective.inputs_length); shorten the prompt"
                )
        outputs = search.generate_text(
            run.model,
            params,
            run.tokenizer,
            list(prompts),
            inputs_length=inputs_length,
            max_length=new_tokens,
            beam_size=sample.beam_size,
            length_penalty_alpha=sample.length_penalty_alpha,
        )
        how = search.describe(sample.beam_size, sample.length_penalty_alpha)
        lines = [f"--- {how}, up to {new_tokens} tokens ---"]
        for prompt, output in zip(prompts, outputs):
            lines.append(f"{prompt} -> {output}")
            lines += [f"  {name} -> {span}" for name, span in sentinel_spans(prompt, output)]
        return "\n".join(lines)

    def answer_cloze(self, model, params, tokenizer, probes, *, top_n):
        return cloze.answer_t5(model, params, tokenizer, probes, top_n=top_n)

    def score_label_words(
        self, model, params, tokenizer, prompt_ids, word_ids, *, batch_size, decoder_start_id
    ):
        """inputs = prompt + EOS, targets = word + EOS."""
        if decoder_start_id is None:
            raise UserError("encoder_decoder in-context learning needs decoder_start_id")
        inputs = [np.append(ids, tokenizer.eos_id) for ids in prompt_ids]
        targets = [np.append(ids, tokenizer.eos_id) for ids in word_ids]
        # Each prompt is encoded once; every label word is decoded against it.
        return scoring.encoder_decoder_every_target_log_likelihoods(
            model, params, inputs, targets, batch_size=batch_size,
            decoder_start_id=decoder_start_id,
        ).reshape(-1)  # fmt: skip
