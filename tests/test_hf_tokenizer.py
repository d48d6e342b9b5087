"""save_pretrained of the tokenizers read from HF directories (WordPiece, T5, GPT-2): the
copy reloads with the same class, and with AutoTokenizer, to identical behaviour."""

import json
import os

import pytest
import sentencepiece as spm
import transformers
from tokenizers import pre_tokenizers

from t5x_lite.errors import UserError
from t5x_lite.hf_tokenizer import TOKENIZER_FILES, WordPieceTokenizer, copy_files
from t5x_lite.models.hf_gpt2 import END_OF_TEXT, GPT2Tokenizer
from t5x_lite.models.hf_t5 import T5Tokenizer

TEXTS = [
    "Hello, the cats sat!",
    "unaffable xyz [MASK] on a mat.",
    "HÉLLO   wörld\tthe cat <extra_id_3> hello",
    "  hello world wo 😀\n",
    "",
]
# fmt: off
WORDPIECE_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "cat", "sat", "on", "mat", "##s", "hello", "world", ".", ",", "!",
    "un", "##aff", "##able", "a", "##b",
]
# fmt: on


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    """One tokenizer directory per class, each as transformers saves it (plus a
    vocab.txt-only BERT directory)."""
    dirs = {}
    vocab_only = tmp_path_factory.mktemp("vocab_txt")
    (vocab_only / "vocab.txt").write_text("\n".join(WORDPIECE_VOCAB) + "\n")
    dirs["vocab_txt"] = str(vocab_only)
    dirs["wordpiece"] = str(tmp_path_factory.mktemp("wordpiece"))
    transformers.BertTokenizer.from_pretrained(dirs["vocab_txt"]).save_pretrained(dirs["wordpiece"])

    dirs["t5"] = str(tmp_path_factory.mktemp("t5"))
    words = ["hello", "world", "the", "cat", "sat", "on", "a", "mat", "unaffable", "tokens"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(words[i:] + words[:i]) for i in range(200)),
        model_prefix=os.path.join(dirs["t5"], "spiece"),
        vocab_size=30,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    transformers.T5Tokenizer.from_pretrained(dirs["t5"]).save_pretrained(dirs["t5"])

    dirs["gpt2"] = str(tmp_path_factory.mktemp("gpt2"))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("Ġw", "o")]
    pieces = alphabet + ["".join(pair) for pair in merges] + [END_OF_TEXT]
    with open(os.path.join(dirs["gpt2"], "vocab.json"), "w") as f:
        json.dump({piece: i for i, piece in enumerate(pieces)}, f)
    with open(os.path.join(dirs["gpt2"], "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return dirs


CLASSES = {
    "vocab_txt": WordPieceTokenizer,
    "wordpiece": WordPieceTokenizer,
    "t5": T5Tokenizer,
    "gpt2": GPT2Tokenizer,
}


@pytest.mark.parametrize("source", CLASSES)
def test_copy_reloads_with_the_same_class_to_identical_behaviour(hf_dirs, tmp_path, source):
    cls = CLASSES[source]
    original = cls(hf_dirs[source])
    assert set(original.files) == set(os.listdir(hf_dirs[source])) & set(TOKENIZER_FILES)
    paths = original.save_pretrained(str(tmp_path / "copy"))
    assert sorted(os.path.basename(path) for path in paths) == sorted(original.files)
    copy = cls(str(tmp_path / "copy"))
    assert copy.files == original.files
    assert copy.vocab_size == original.vocab_size
    assert (copy.bos_id, copy.eos_id) == (original.bos_id, original.eos_id)
    for text in TEXTS:
        ids = original.encode(text)
        assert copy.encode(text).tolist() == ids.tolist(), text
        assert copy.decode(ids) == original.decode(ids)


@pytest.mark.parametrize("source", ["wordpiece", "t5"])
def test_auto_tokenizer_reads_the_copy_as_the_original(hf_dirs, tmp_path, source):
    CLASSES[source](hf_dirs[source]).save_pretrained(str(tmp_path))
    original = transformers.AutoTokenizer.from_pretrained(hf_dirs[source])
    copy = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(copy) is type(original)
    for text in TEXTS:
        assert copy(text)["input_ids"] == original(text)["input_ids"], text


def test_saving_never_replaces_a_different_file(hf_dirs, tmp_path):
    tokenizer = WordPieceTokenizer(hf_dirs["wordpiece"])
    tokenizer.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))  # the same files again: nothing to do
    tokenizer.save_pretrained(hf_dirs["wordpiece"])  # onto itself
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(UserError, match="tokenizer_config.json exists and differs") as raised:
        tokenizer.save_pretrained(str(tmp_path))
    assert "\n" not in str(raised.value)
    assert (tmp_path / "tokenizer_config.json").read_text() == "{}"
    assert copy_files(hf_dirs["wordpiece"], (), str(tmp_path / "new")) == []
