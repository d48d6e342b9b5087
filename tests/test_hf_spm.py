"""Our sentencepiece Tokenizer as Hugging Face files: AutoTokenizer must encode exactly as
`Tokenizer.encode` does, for BPE, unigram and char models trained here."""

import json
import math
import os
import random

import pytest
import sentencepiece as spm
import transformers

from t5x_lite import hf_spm
from t5x_lite import tokenizer as tok_lib
from t5x_lite.errors import UserError

# fmt: off
_WORDS = [
    "the", "a", "model", "models", "learns", "learned", "learning", "tasty", "food", "is",
    "good", "and", "we", "eat", "it", "daily", "with", "friends", "quick", "brown", "fox",
    "jumps", "over", "lazy", "dog", "data", "train", "trains", "token", "tokens", "small",
    "sentence", "piece", "pieces", "byte", "never", "unknown", "there", "their", "other",
    "another", "mother", "brother", "weather", "whether", "rather", "gather", "together",
]
# Unseen words, digits, punctuation, non-ASCII that needs byte fallback, runs of spaces,
# tabs and newlines, and special tokens inside a text.
_ODD = [
    "taaaaasty", "modles", "vocabularyy", "Brother", "THE", "3.14159", "2024-01-01", "x=42;",
    "(hello)", "'quoted'", "\"q\"", "naïve", "café", "東京", "🙂", "Ünïcödé", "ß", "—", "ｆｕｌｌ",
    "x\u00a0y", "a\tb", "line\nbreak", "cr\r\nlf", "  ", "   ", "[MASK]", "<extra_id_0>",
    "<extra_id_42>", "[CLS]", "[SEP]", "!!", "?!", "...", "100%", "$5", "e-mail", "l'été",
]
# fmt: on


def sentences(num: int, seed: int, odd_rate: float) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(num):
        words = [
            rng.choice(_ODD) if rng.random() < odd_rate else rng.choice(_WORDS)
            for _ in range(rng.randint(1, 14))
        ]
        text = "".join(word + rng.choice([" ", " ", " ", "", "  ", ", ", "\n"]) for word in words)
        texts.append(rng.choice(["", "", " ", "  ", "\t"]) + text.rstrip(" "))
    return texts


# Texts sentencepiece and tokenizers segment alike (see hf_spm's docstring for the rest):
# none starts with a special token.
TEXTS = [
    text
    for text in sentences(400, seed=1, odd_rate=0.3)
    + ["", " ", "   x", "trailing   ", "\n", "taaaaasty", "naïve café 東京", "[SEP][CLS]x"]
    if not any(text.startswith(special) for special in ("[MASK]", "<extra_id", "[CLS]", "[SEP]"))
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("spm")
    corpus = sentences(2000, seed=0, odd_rate=0.05)
    sizes = {"bpe": 700, "unigram": 700, "char": 420}
    return {
        model_type: tok_lib.train_tokenizer(
            corpus,
            str(root / model_type / "tok"),
            vocab_size=size,
            model_type=model_type,
            max_sentences=10_000,
        )
        for model_type, size in sizes.items()
    }


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory) -> dict[str, str]:
    """Each model saved with the T5 template."""
    dirs = {}
    for model_type, path in models.items():
        directory = str(tmp_path_factory.mktemp(f"hf_{model_type}"))
        tok_lib.Tokenizer(path).save_pretrained(directory, template="t5")
        dirs[model_type] = directory
    return dirs


@pytest.mark.parametrize("model_type", ["bpe", "unigram", "char"])
def test_auto_tokenizer_encodes_and_decodes_exactly_as_ours(models, saved, model_type):
    """Exact, but where unigram segmentations tie (see hf_spm): then both must score the
    same, to float64 precision."""
    ours = tok_lib.Tokenizer(models[model_type])
    theirs = transformers.AutoTokenizer.from_pretrained(saved[model_type])
    scores = spm.SentencePieceProcessor(model_file=models[model_type])
    assert len(theirs) == ours.vocab_size
    assert len(TEXTS) > 300
    byte_fallbacks, ties = 0, 0
    for text in TEXTS:
        expected = ours.encode(text).tolist()
        assert theirs.decode(expected) == ours.decode(expected) == text
        byte_fallbacks += any(piece.startswith("<0x") for piece in ours.pieces(text))
        got = theirs(text, add_special_tokens=False)["input_ids"]
        if got != expected and model_type == "unigram":
            total = [sum(map(scores.get_score, ids)) for ids in (got, expected)]
            assert math.isclose(*total, abs_tol=1e-9) and theirs.decode(got) == text
            ties += 1
            continue
        assert got == expected, repr(text)
    assert byte_fallbacks > 50  # the texts do exercise byte fallback
    assert ties < len(TEXTS) // 10
    batch = theirs(TEXTS[:20], add_special_tokens=False)["input_ids"]
    assert batch == [ours.encode(text).tolist() for text in TEXTS[:20]]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_the_documented_differences_are_as_documented(models, saved, model_type):
    ours = tok_lib.Tokenizer(models[model_type])
    theirs = transformers.AutoTokenizer.from_pretrained(saved[model_type])

    def hf_ids(text):
        return theirs(text, add_special_tokens=False)["input_ids"]

    # A leading special token loses sentencepiece's lone "▁" before it.
    space = ours.piece_to_id(hf_spm.SPACE)
    for text in ["[MASK] is good", "<extra_id_0> x", "[CLS]"]:
        assert ours.encode(text).tolist() == [space] + hf_ids(text)
    # Control tokens typed in text are one special token in transformers.
    assert (
        hf_ids("a <s> b")
        == ours.encode("a ").tolist() + [tok_lib.BOS_ID] + ours.encode("b").tolist()
    )
    assert tok_lib.BOS_ID not in ours.encode("a <s> b")
    # A byte piece's name in text: unigram matches it, BPE spells it out as we do.
    byte_a = ours.piece_to_id("<0x41>")
    assert (byte_a in hf_ids("x <0x41>")) == (model_type == "unigram")
    assert byte_a not in ours.encode("x <0x41>")


@pytest.mark.parametrize(
    "template, single, pair",
    [
        ("bert", [5, "a", 6], [5, "a", 6, "b", 6]),
        ("gpt", [3, "a"], [3, "a", 6, "b"]),
        ("t5", ["a", 1], ["a", 1, "b", 1]),
    ],
)
def test_templates_put_our_special_tokens_around_texts(models, tmp_path, template, single, pair):
    ours = tok_lib.Tokenizer(models["bpe"])
    ours.save_pretrained(str(tmp_path), template=template)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    texts = {"a": "the quick fox", "b": "jumps  over 東京"}

    def expand(layout):
        return sum(
            ([i] if isinstance(i, int) else ours.encode(texts[i]).tolist() for i in layout), []
        )

    encoded = theirs(texts["a"])
    assert encoded["input_ids"] == expand(single)
    encoded = theirs(texts["a"], texts["b"])
    assert encoded["input_ids"] == expand(pair)
    if template == "bert":  # token type 1 from the second text on, its [SEP] included
        first = len(expand(single))
        assert encoded["token_type_ids"] == [0] * first + [1] * (len(expand(pair)) - first)
    else:  # GPT-2 would add token type embeddings; T5 takes none
        assert "token_type_ids" not in encoded
    special = {name: getattr(theirs, name) for name in ("pad_token", "cls_token", "mask_token")}
    assert special == {"pad_token": "<pad>", "cls_token": "[CLS]", "mask_token": "[MASK]"}
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.sep_token_id) == (3, 1, 6)


def test_save_pretrained_files_reload_with_our_class(models, tmp_path):
    ours = tok_lib.Tokenizer(models["unigram"])
    paths = ours.save_pretrained(str(tmp_path), template="bert")
    assert sorted(os.path.basename(path) for path in paths) == sorted(hf_spm.FILES)
    reloaded = tok_lib.Tokenizer(str(tmp_path / hf_spm.MODEL_FILE))
    assert all(reloaded.encode(t).tolist() == ours.encode(t).tolist() for t in TEXTS)
    with open(tmp_path / "special_tokens_map.json") as f:
        assert json.load(f)["sep_token"] == "[SEP]"
    # Saving again is harmless; another model's files are never replaced.
    ours.save_pretrained(str(tmp_path), template="bert")
    with pytest.raises(UserError, match="tokenizer.model exists and differs"):
        tok_lib.Tokenizer(models["bpe"]).save_pretrained(str(tmp_path), template="bert")
    with pytest.raises(UserError, match="template 'roberta' is not one of bert, gpt, t5"):
        ours.save_pretrained(str(tmp_path / "other"), template="roberta")


def test_bpe_merges_rank_splits_by_the_whole_pieces_score(models):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(models["bpe"], "rb") as f:
        proto.ParseFromString(f.read())
    merges = hf_spm.bpe_merges(proto)
    scores = {piece.piece: piece.score for piece in proto.pieces}
    merged_scores = [scores[left + right] for left, right in merges]
    assert merged_scores == sorted(merged_scores, reverse=True)
    assert all(left in scores and right in scores for left, right in merges)
    assert ("▁", "t") in merges and len(merges) > 300
