"""The HF T5 sentencepiece tokenizer wrapper against transformers' T5Tokenizer, on a
unigram model trained in the test the way T5's was (nmt_nfkc, pad 0 / EOS 1 / UNK 2)."""

import os

import numpy as np
import pytest
import sentencepiece as spm
import transformers

from t5x_lite.errors import UserError
from t5x_lite.models.hf_t5 import T5Tokenizer


def sst2_sentences(data_dir: str) -> list[str]:
    with open(os.path.join(data_dir, "sst2", "train.tsv"), encoding="utf-8") as f:
        return [line.split("\t", 1)[1].strip() for line in f.read().splitlines()[1:4000]]


@pytest.fixture
def t5_dir(tmp_path, shared_data_dir):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sst2_sentences(shared_data_dir)),
        model_prefix=str(tmp_path / "spiece"),
        vocab_size=500,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return str(tmp_path)


def with_sentinels(sentences, rng):
    """Sentences with up to three <extra_id_N> inserted, with and without spaces."""
    for i, sentence in enumerate(sentences):
        words = sentence.split()
        for _ in range(rng.integers(0, 4)):
            words.insert(rng.integers(0, len(words) + 1), f"<extra_id_{rng.integers(0, 100)}>")
        text = " ".join(words)
        yield text.replace(" <extra", "<extra") if i % 3 == 0 else text


def test_ids_and_text_match_transformers(t5_dir, shared_data_dir):
    ours = T5Tokenizer(t5_dir)
    theirs = transformers.T5Tokenizer.from_pretrained(t5_dir)
    assert ours.vocab_size == len(theirs) == 600
    assert [ours.sentinel_id(i) for i in (0, 1, 99)] == theirs.convert_tokens_to_ids(
        ["<extra_id_0>", "<extra_id_1>", "<extra_id_99>"]
    )
    rng = np.random.default_rng(0)
    dev = sst2_sentences(shared_data_dir)[3000:]  # not in the tokenizer's training lines
    checked = 0
    for text in with_sentinels(dev, rng):
        ids = ours.encode(text)
        assert ids.dtype == np.int32
        expected = theirs(text).input_ids
        assert ids.tolist() + [ours.eos_id] == expected, text
        if ours.unk_id not in expected:  # HF spells unknown pieces "<unk>", we " ⁇ "
            decoded = theirs.decode(expected, skip_special_tokens=False).replace("</s>", "")
            assert ours.decode(expected) == decoded
            checked += 1
    assert checked > 500


def test_special_ids_and_errors(t5_dir, tmp_path):
    tokenizer = T5Tokenizer(t5_dir)
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2)
    assert tokenizer.bos_id == 0  # T5's decoder starts from pad
    assert tokenizer.encode("<extra_id_0><extra_id_99>").tolist() == [599, 500]
    assert tokenizer.decode([599, 0, 1]) == "<extra_id_0>"
    with pytest.raises(ValueError, match="outside"):
        tokenizer.encode("<extra_id_100>")
    with pytest.raises(UserError, match="spiece.model does not exist"):
        T5Tokenizer(str(tmp_path / "nothing"))
