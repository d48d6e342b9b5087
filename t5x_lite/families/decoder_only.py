"""GPT: the decoder-only family (causal or prefix LM; GPT-1's classifier when fine-tuned).

Generation continues a prompt by sampling through the KV cache; a cloze probe is ranked
by sentence likelihood or continued; label words are scored after the prompt, which with
BOS and the longest word must fit the model's context."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from t5x_lite.downstream import cloze, sampling, scoring
from t5x_lite.errors import UserError
from t5x_lite.families import base
from t5x_lite.models import hf_gpt2


def flops_per_token(model_config, seq_len: int) -> float:
    """6 N (layers and the tied or untied output projection) + 12 L T d_attn."""
    return base.stack_flops_per_token(model_config, seq_len)


class DecoderOnly(base.Family):
    arch = "decoder_only"
    name = "gpt"
    default_config = "pretrain.py:gpt_small"
    hf_model_type = "gpt2"
    hf_format = "hf_gpt2"
    hf_tokenizer_template = "gpt"
    finetune_formats = ("classification",)

    def load_hf(self, hf_dir, rng):
        return hf_gpt2.load_hf_gpt2(hf_dir, rng=rng)

    def hf_tokenizer(self, hf_dir):
        return hf_gpt2.GPT2Tokenizer(hf_dir)

    def export_hf(self, model_config, params, output_dir, *, labels, special_ids):
        return hf_gpt2.export_hf_gpt2(
            model_config, params, output_dir, labels=labels, special_ids=special_ids
        )

    def row_tokens_and_flops(self, model_config, feature_lengths):
        seq_len = max(feature_lengths.values())
        return seq_len, seq_len * flops_per_token(model_config, seq_len)

    def sample_after_training(self, run, params):
        if run.config.sample.max_new_tokens <= 0:
            return None
        return sampling.sample_from_config(run, params)

    def generate(self, run, params, prompts, *, top_n):
        del top_n
        sample = run.config.sample
        new_tokens = base.check_new_tokens(run.config)
        options = dict(temperature=sample.temperature, top_k=sample.top_k, top_p=sample.top_p)
        texts = sampling.generate_batch(
            run.model,
            params,
            run.tokenizer,
            list(prompts),
            max_len=run.config.model.max_len,
            max_new_tokens=new_tokens,
            seed=sample.seed,
            **options,
        )
        how = sampling.describe(**options)
        # generate_batch gives every row what the longest prompt (with BOS) leaves.
        longest = 1 + max((len(run.tokenizer.encode(p)) for p in prompts), default=0)
        budget = min(new_tokens, run.config.model.max_len - longest)
        if budget < new_tokens:
            budget = (
                f"{budget} (of {new_tokens} asked: the context holds {run.config.model.max_len})"
            )
        header = f"--- {how}, up to {budget} new tokens, seed {sample.seed} ---"
        return header + "\n" + "\n\n".join(texts)

    def answer_cloze(self, model, params, tokenizer, probes, *, top_n):
        return cloze.answer_gpt(model, params, tokenizer, probes, top_n=top_n)

    def score_label_words(
        self, model, params, tokenizer, prompt_ids, word_ids, *, batch_size, decoder_start_id
    ):
        """context = [BOS] + prompt, continuation = the word."""
        del decoder_start_id
        longest_word = max(len(ids) for ids in word_ids)
        for index, ids in enumerate(prompt_ids):
            length = 1 + len(ids) + longest_word
            if length > model.max_len:
                raise UserError(
                    f"prompt {index} is {length} tokens with BOS and its longest label word "
                    f"but the model's context is {model.max_len}; use fewer shots, a "
                    "shorter template, or config.icl.fit_context=True"
                )
        contexts = [np.concatenate([[tokenizer.bos_id], ids]) for ids in prompt_ids]
        # Each prompt runs once; every label word is scored from its KV cache.
        return scoring.decoder_every_continuation_log_likelihoods(
            model, params, contexts, word_ids, batch_size=batch_size
        ).reshape(-1)

    def context_fitter(self, model, tokenizer, label_words: Sequence[str]):
        longest_word = max(len(ids) for ids in tokenizer.encode_batch(list(label_words)))
        return lambda prompt: 1 + len(tokenizer.encode(prompt)) + longest_word <= model.max_len
