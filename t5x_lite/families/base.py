"""What every architecture family provides outside the model itself (`Family`), and the
FLOPs formula the Transformer stacks share."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


class Family(abc.ABC):
    """One architecture family: how to generate from it, answer cloze probes, score
    label words in context, count its FLOPs, and read or write it as Hugging Face does.
    Subclasses set the class attributes and implement the methods."""

    arch: str  # config.model.arch
    name: str  # short name in reports: gpt / bert / t5
    # The config a Hugging Face directory's model is dropped into when no --config is
    # given: gin_configs/<file>:<variant>.
    default_config: str
    hf_model_type: str  # config.json's model_type
    hf_format: str  # the checkpoint_format value
    # The special tokens our sentencepiece tokenizer puts around a text for this family,
    # as an exported tokenizer.json does (hf_spm.TEMPLATES).
    hf_tokenizer_template: str
    finetune_formats: tuple[str, ...]  # the fine-tuning objectives it takes

    @abc.abstractmethod
    def load_hf(self, hf_dir: str, rng) -> tuple[dict[str, Any], dict[str, Any]]:
        """A Hugging Face directory -> (config.model dict, params)."""

    @abc.abstractmethod
    def hf_tokenizer(self, hf_dir: str):
        """The tokenizer of a Hugging Face directory (not one exported from our runs)."""

    def hf_heads_present(self, hf_dir: str) -> frozenset:
        """The heads (models/heads.py) a Hugging Face directory has weights for; the
        vocabulary heads of decoders and encoder-decoders are part of the body."""
        del hf_dir
        return frozenset()

    @abc.abstractmethod
    def export_hf(
        self,
        model_config: Mapping[str, Any],
        params: Any,
        output_dir: str,
        *,
        labels: tuple[str, ...],
        special_ids: Mapping[str, int] | None,
    ) -> dict[str, Any]:
        """Params -> config.json + model.safetensors that `transformers` loads."""

    @abc.abstractmethod
    def row_tokens_and_flops(self, model_config, feature_lengths: Mapping[str, int]):
        """-> (tokens in one training row, that row's training FLOPs)."""

    @abc.abstractmethod
    def sample_after_training(self, run, params) -> tuple[str, str] | None:
        """(text, how it was produced) for config.sample at the end of a run, or None."""

    @abc.abstractmethod
    def generate(self, run, params, prompts: Sequence[str], *, top_n: int) -> str:
        """`t5x-lite generate`'s report for `prompts`."""

    @abc.abstractmethod
    def answer_cloze(self, model, params, tokenizer, probes, *, top_n: int) -> list:
        """Per probe, [(answer, probability)] best first, in the family's own format."""

    @abc.abstractmethod
    def score_label_words(
        self,
        model,
        params,
        tokenizer,
        prompt_ids: Sequence[np.ndarray],
        word_ids: Sequence[np.ndarray],
        *,
        batch_size: int,
        decoder_start_id: int | None,
    ) -> np.ndarray:
        """float64 [prompts * words]: log p(word | prompt) for every (prompt, word), prompt
        major: in-context classification."""

    def context_fitter(self, model, tokenizer, label_words) -> Callable[[str], bool] | None:
        """prompt -> whether it fits the model's context with any label word; None when
        the model has no fixed context."""
        del model, tokenizer, label_words
        return None


def stack_flops_per_token(model_config, seq_len: int, *, head_params: int = 0) -> float:
    """Training FLOPs per token of one Transformer stack over rows of `seq_len` (PaLM,
    Chowdhery et al. 2022, app. B): 6 N for the N matmul parameters (layers, the output
    projection and `head_params` more) plus 12 L T d_attn for attention."""
    d, d_attn = model_config.d_model, model_config.num_heads * model_config.head_dim
    per_layer = 4 * d * d_attn + mlp_params(model_config)
    matmul_params = model_config.num_layers * per_layer + model_config.vocab_size * d
    attention = 12 * model_config.num_layers * seq_len * d_attn
    return 6.0 * (matmul_params + head_params) + attention


def mlp_params(model_config) -> int:
    """wi and wo, or T5 1.1's gated wi_0, wi_1 and wo."""
    matrices = 3 if model_config.get("mlp") == "gated_gelu" else 2
    return matrices * model_config.d_model * model_config.d_ff


def check_new_tokens(config) -> int:
    """config.sample.max_new_tokens, which must leave something to generate."""
    new_tokens = config.sample.max_new_tokens
    if new_tokens < 1:
        from t5x_lite.errors import UserError

        raise UserError(
            f"config.sample.max_new_tokens={new_tokens} leaves nothing to generate; pass "
            "--config.sample.max_new_tokens=N with N >= 1"
        )
    return new_tokens
