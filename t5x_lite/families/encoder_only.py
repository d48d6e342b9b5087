"""BERT: the encoder-only family (masked LM, NSP; a classifier on the pooled [CLS] when
fine-tuned).

Generation fills each [MASK] with the most likely pieces; a cloze probe is the same with
the blank as [MASK]. An encoder cannot score a label word after a prompt, so in-context
learning is refused."""

from __future__ import annotations

from t5x_lite.downstream import cloze
from t5x_lite.errors import UserError
from t5x_lite.families import base
from t5x_lite.hf_tokenizer import WordPieceTokenizer
from t5x_lite.models import hf_bert


def flops_per_token(model_config, seq_len: int) -> float:
    """6 N (layers, the MLM head's transform and the output projection) + 12 L T d_attn."""
    transform = model_config.d_model * model_config.d_model
    return base.stack_flops_per_token(model_config, seq_len, head_params=transform)


class EncoderOnly(base.Family):
    arch = "encoder_only"
    name = "bert"
    default_config = "pretrain.py:bert_base"
    hf_model_type = "bert"
    hf_format = "hf_bert"
    hf_tokenizer_template = "bert"
    finetune_formats = ("classification",)

    def load_hf(self, hf_dir, rng):
        return hf_bert.load_hf_bert(hf_dir, rng=rng)

    def hf_tokenizer(self, hf_dir):
        return WordPieceTokenizer(hf_dir)

    def hf_heads_present(self, hf_dir):
        return hf_bert.checkpoint_heads(hf_dir)  # e.g. a BertModel has no MLM head

    def export_hf(self, model_config, params, output_dir, *, labels, special_ids):
        return hf_bert.export_hf_bert(
            model_config, params, output_dir, labels=labels, special_ids=special_ids
        )

    def row_tokens_and_flops(self, model_config, feature_lengths):
        seq_len = max(feature_lengths.values())
        return seq_len, seq_len * flops_per_token(model_config, seq_len)

    def sample_after_training(self, run, params):
        del run, params  # an encoder has nothing to continue; see `t5x-lite generate`
        return None

    def generate(self, run, params, prompts, *, top_n):
        lines = []
        for prompt in prompts:
            answers = cloze.fill_masks(run.model, params, run.tokenizer, prompt, top_n=top_n)
            lines.append(prompt)
            for number, candidates in enumerate(answers, start=1):
                lines.append(f"  [MASK] {number}:")
                lines += [f"    {text}  p={probability:.4g}" for text, probability in candidates]
        return "\n".join(lines)

    def answer_cloze(self, model, params, tokenizer, probes, *, top_n):
        return cloze.answer_bert(model, params, tokenizer, probes, top_n=top_n)

    def score_label_words(
        self, model, params, tokenizer, prompt_ids, word_ids, *, batch_size, decoder_start_id
    ):
        raise UserError(
            "in-context learning needs a model that generates text; encoder_only models "
            "cannot score label words (fine-tune them instead)"
        )
