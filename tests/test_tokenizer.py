"""Tokenizer: fixed special ids, byte fallback, exact round trips, clear vocab errors."""

import pickle
import random

import numpy as np
import pytest
import sentencepiece as spm

from t5x_lite import tokenizer as tok_lib
from t5x_lite.errors import UserError

# fmt: off
_WORDS = [
    "the", "a", "an", "model", "models", "learns", "learned", "learning", "tasty", "food", "is",
    "good", "and", "we", "eat", "it", "daily", "with", "friends", "quick", "brown", "fox",
    "jumps", "over", "lazy", "dog", "data", "train", "trains", "test", "tests", "token",
    "tokens", "vocabulary", "small", "large", "sentence", "piece", "pieces", "byte", "fallback",
    "never", "maps", "unknown",
]
# fmt: on

VOCAB_SIZE = 430  # 363 specials and bytes, ~40 characters, the rest learned


def make_corpus(num_lines: int = 300) -> list[str]:
    """Deterministic sentences over a small lexicon, with punctuation and digits."""
    rng = random.Random(0)
    lines = []
    for i in range(num_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words) + rng.choice([".", "!", "?", ","]) + f" {i * 7}")
    return lines


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model paths by model type, each trained once on the inline corpus."""
    root = tmp_path_factory.mktemp("tokenizers")
    corpus = make_corpus()
    return {
        model_type: tok_lib.train_tokenizer(
            corpus,
            str(root / model_type / "tok"),
            vocab_size=VOCAB_SIZE if model_type != "char" else 400,
            model_type=model_type,
            max_sentences=10_000,
        )
        for model_type in tok_lib.MODEL_TYPES
    }


@pytest.fixture(scope="module")
def bpe(models):
    return tok_lib.Tokenizer(models["bpe"])


def test_special_ids_are_fixed(bpe):
    assert (bpe.pad_id, bpe.eos_id, bpe.unk_id, bpe.bos_id) == (0, 1, 2, 3)
    assert (bpe.mask_id, bpe.cls_id, bpe.sep_id) == (4, 5, 6)
    expected = ["<pad>", "</s>", "<unk>", "<s>", "[MASK]", "[CLS]", "[SEP]", "<extra_id_0>"]
    assert [bpe.id_to_piece(i) for i in range(8)] == expected
    assert bpe.id_to_piece(106) == "<extra_id_99>"
    assert bpe.id_to_piece(107) == "<0x00>"  # byte pieces follow the specials
    assert (bpe.sentinel_id(0), bpe.sentinel_id(99)) == (7, 106)
    assert bpe.piece_to_id("<extra_id_5>") == 12
    assert bpe.vocab_size == VOCAB_SIZE
    with pytest.raises(ValueError):
        bpe.sentinel_id(100)


TEXTS = [
    "the quick brown fox, jumps!",
    "numbers 3.14159 and 2024-01-01 (x=42)",
    "  leading spaces,   runs   of spaces and trailing  ",
    "line one\nline two\n\n\ttabbed\tcell\r\n",
    "naïve café 東京 🙂",
    "a [MASK] and <extra_id_3> in text",
    "",
]


@pytest.mark.parametrize("model_type", tok_lib.MODEL_TYPES)
def test_round_trip_is_exact(models, model_type):
    tok = tok_lib.Tokenizer(models[model_type])
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.dtype == np.int32
        assert tok_lib.UNK_ID not in ids
        assert tok.decode(ids) == text
    batch = tok.encode_batch(TEXTS)
    assert all((a == tok.encode(t)).all() for a, t in zip(batch, TEXTS, strict=True))


def test_decode_ignores_pad_and_eos(bpe):
    ids = bpe.encode("tasty food")
    assert bpe.decode(np.concatenate([[0, 0], ids, [1, 0, 0]])) == "tasty food"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_unseen_words_split_into_known_pieces(models, model_type):
    tok = tok_lib.Tokenizer(models[model_type])
    for word in ["taaaaasty", "modles", "lerned", "vocabularyy"]:
        ids = tok.encode(word)
        assert tok_lib.UNK_ID not in ids
        assert len(ids) > 1
        # Every letter was seen in training, so no byte pieces either.
        assert not any(piece.startswith("<0x") for piece in tok.pieces(word))
        assert tok.decode(ids) == word


@pytest.mark.parametrize("model_type", tok_lib.MODEL_TYPES)
def test_unseen_emoji_falls_back_to_bytes(models, model_type):
    tok = tok_lib.Tokenizer(models[model_type])
    ids = tok.encode("🙂")  # UTF-8: F0 9F 99 82
    assert tok.pieces("🙂")[-4:] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]
    assert ids[-4:].tolist() == [107 + 0xF0, 107 + 0x9F, 107 + 0x99, 107 + 0x82]
    assert tok_lib.UNK_ID not in ids


def test_char_model_uses_single_characters(models):
    tok = tok_lib.Tokenizer(models["char"])
    assert tok.pieces("tasty food") == ["▁", "t", "a", "s", "t", "y", "▁", "f", "o", "o", "d"]
    assert tok.vocab_size == 400


def test_special_pieces_in_text_map_to_their_ids(bpe):
    ids = bpe.encode("the [MASK] is <extra_id_0> and <extra_id_99>[SEP]").tolist()
    assert tok_lib.MASK_ID in ids
    assert ids.count(7) == 1 and ids.count(106) == 1 and ids.count(6) == 1
    assert bpe.encode("[CLS]").tolist()[-1] == tok_lib.CLS_ID


def test_training_is_deterministic(tmp_path):
    pieces = []
    for run in range(2):
        path = tok_lib.train_tokenizer(
            make_corpus(),
            str(tmp_path / f"run{run}"),
            vocab_size=VOCAB_SIZE,
            model_type="unigram",
            max_sentences=200,  # sampling 200 of 300 lines is seeded
        )
        tok = tok_lib.Tokenizer(path)
        pieces.append([tok.id_to_piece(i) for i in range(tok.vocab_size)])
    assert pieces[0] == pieces[1]


@pytest.mark.parametrize(
    ("vocab_size", "model_type", "match"),
    [
        (300, "bpe", "at least 364"),
        (370, "unigram", "too small for this corpus"),  # letters do not fit
        (5000, "bpe", "too large for this corpus"),
        (5000, "char", "too large for this corpus"),
    ],
)
def test_bad_vocab_size_is_a_one_line_user_error(tmp_path, vocab_size, model_type, match):
    with pytest.raises(UserError, match=match) as error:
        tok_lib.train_tokenizer(
            make_corpus(50),
            str(tmp_path / "tok"),
            vocab_size=vocab_size,
            model_type=model_type,
            max_sentences=1000,
        )
    assert "\n" not in str(error.value) and "--vocab_size" in str(error.value)


def test_bad_model_type_and_empty_corpus(tmp_path):
    with pytest.raises(UserError, match="model_type"):
        tok_lib.train_tokenizer(
            ["x"], str(tmp_path / "t"), vocab_size=400, model_type="word", max_sentences=1000
        )
    with pytest.raises(UserError, match="no text"):
        tok_lib.train_tokenizer(
            ["", "  \n"], str(tmp_path / "t"), vocab_size=400, model_type="bpe", max_sentences=1000
        )


def test_loading_rejects_bad_models(tmp_path):
    with pytest.raises(UserError, match="is not a file"):
        tok_lib.Tokenizer(str(tmp_path / "missing.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a sentencepiece model"):
        tok_lib.Tokenizer(str(tmp_path / "junk.model"))
    # A plain sentencepiece model: <unk> at 0, no [MASK] or sentinels.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(make_corpus(50)),
        model_prefix=str(tmp_path / "plain"),
        vocab_size=60,
        minloglevel=2,
    )
    with pytest.raises(UserError, match="not trained by t5x_lite"):
        tok_lib.Tokenizer(str(tmp_path / "plain.model"))


def test_pickle_round_trip(bpe):
    clone = pickle.loads(pickle.dumps(bpe))
    assert clone.encode("tasty food").tolist() == bpe.encode("tasty food").tolist()
