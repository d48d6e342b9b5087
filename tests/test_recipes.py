"""Reference recipes: what `shakespeare_char` promises before anything trains."""

import os

import numpy as np

from t5x_lite import config as config_lib
from t5x_lite.data import inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shakespeare_char_has_one_token_per_character(shared_data_dir, monkeypatch, tmp_path):
    """nanoGPT's character-level setting: the tokenizer trained by the run gives one
    piece per character (a newline is one byte-fallback piece) after the word-start
    piece sentencepiece puts before each passage, the held-out passages
    are about the last 10% of the text, and the row is nanoGPT's block of 64."""
    monkeypatch.setenv("T5X_LITE_DATA_DIR", shared_data_dir)
    config = config_lib.load(os.path.join(ROOT, "gin_configs", "pretrain.py:shakespeare_char"))
    train, heldout = inputs.load_documents(config.data)
    tokenizer = inputs.load_or_train_tokenizer(config, str(tmp_path), train)
    assert tokenizer.vocab_size == config.model.vocab_size == 422
    for passage in heldout[:50]:
        ids = tokenizer.encode(passage)
        assert len(ids) == 1 + len(passage), passage
        assert tokenizer.decode(ids) == passage
    text = open(config.data.train.path, encoding="utf-8").read()
    share = sum(len(p) for p in heldout) / len(text)
    assert 0.09 < share < 0.11, share
    assert config.objective.seq_len == 64 and config.data.batch_size == 12
    assert np.isclose(config.optimizer.learning_rate * config.optimizer.end_lr_fraction, 1e-4)
