"""Our sentencepiece `Tokenizer` as Hugging Face tokenizer files (`AutoTokenizer` loads them).

`save_pretrained` writes the sentencepiece model itself (so `Tokenizer` reloads it) and a
`tokenizer.json` built with the `tokenizers` library from the model proto, plus
`tokenizer_config.json` and `special_tokens_map.json` that name our special tokens.
`transformers` is not needed to write them.

How the `tokenizers` pipeline reproduces sentencepiece's encoding:
  special tokens  all 107 (pad, eos, unk, bos, [MASK], [CLS], [SEP], sentinels) are
                  special added tokens, cut out of the raw text first, as sentencepiece
                  matches its user-defined symbols.
  normalizer      spaces become "▁"; nothing else (our models use the identity rule
                  and keep repeated spaces).
  pre-tokenizer   the dummy prefix: one "▁" before the text, always, even when the text
                  starts with a space. `Metaspace` alone skips a text that starts with
                  "▁", so a first Metaspace prepends a " " (which it can always do, as
                  the spaces are already "▁") and a second turns it into "▁". Nothing
                  is split: sentencepiece segments the whole text at once.
  model           unigram: the pieces and their scores. BPE: the merges derived from the
                  pieces (below). char: BPE without merges. Byte fallback for all.
  post-processor  the special tokens our models put around a text (`TEMPLATES`).

Where `AutoTokenizer(text, add_special_tokens=False)` still differs from `encode`
(tests/test_hf_spm.py checks every other text exactly, and these four as stated):
  - unigram only, segmentations that tie (the same pieces in another order, as
    "▁▁" + "▁" and "▁" + "▁▁" in a run of spaces): sentencepiece adds piece scores in
    float32, whose rounding often breaks the tie; `tokenizers` adds them in float64
    and keeps the first. Either is a best segmentation, and both decode to the text.
  - a text that starts with a special token ("[MASK] is ..."): sentencepiece's dummy
    prefix becomes a "▁" token of its own before it. `tokenizers` cuts special tokens
    out before any other step sees the text, so nothing can put a piece before one:
    that first "▁" is missing; the rest is the same.
  - "<pad>", "</s>", "<unk>" or "<s>" typed in the text: one special token here, as
    transformers matches every named special token in raw text; sentencepiece never
    matches control symbols and spells them out.
  - unigram only, a byte piece's name typed in the text ("<0x41>"): `tokenizers`'
    unigram matches every vocabulary entry, sentencepiece skips byte pieces. (Scoring
    them low would not do: `tokenizers` derives the unknown-character penalty from the
    lowest score.)
"""

from __future__ import annotations

import json
import os
import tempfile

import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from t5x_lite import fileio
from t5x_lite import hf_tokenizer as hf_tokenizer_lib
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.errors import UserError

SPACE = "\u2581"  # sentencepiece's "▁"
MODEL_FILE = "tokenizer.model"  # the name a t5x_lite run gives its tokenizer
FILES = (MODEL_FILE, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_NORMAL = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
_TRAINER = sentencepiece_model_pb2.TrainerSpec

# Special tokens `add_special_tokens=True` puts around one text ($A) or a pair ($A, $B),
# ":1" marking token type 1, as each family's objectives lay out their inputs:
#   bert  [CLS] a [SEP] b [SEP], token types 0 through the first [SEP] (masked_lm, finetune_formats)
#   gpt   <s> a [SEP] b: BOS starts every text (causal_lm, sampling); for a pair, [SEP]
#         is GPT-1's [DELIM]. A classifier reads the hidden state at an appended [CLS]
#         ([EXTRACT]); see hf_gpt2's classifier_head.json.
#   t5    a </s> b </s>: EOS ends every encoder input (span_corruption, finetune_formats)
# with the inputs the model's forward takes (GPT-2 would add token type ids to its
# input embeddings, so they must not reach it).
TEMPLATES = {
    "bert": (
        "[CLS]:0 $A:0 [SEP]:0",
        "[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        ["input_ids", "token_type_ids", "attention_mask"],
    ),
    "gpt": ("<s> $A", "<s> $A [SEP] $B", ["input_ids", "attention_mask"]),
    "t5": ("$A </s>", "$A </s> $B </s>", ["input_ids", "attention_mask"]),
}
_TEMPLATE_TOKENS = {
    tokenizer_lib.CLS_PIECE: tokenizer_lib.CLS_ID,
    tokenizer_lib.SEP_PIECE: tokenizer_lib.SEP_ID,
    tokenizer_lib.BOS_PIECE: tokenizer_lib.BOS_ID,
    tokenizer_lib.EOS_PIECE: tokenizer_lib.EOS_ID,
}
# tokenizer_config.json / special_tokens_map.json key -> our piece.
_NAMED_TOKENS = {
    "pad_token": tokenizer_lib.PAD_PIECE,
    "unk_token": tokenizer_lib.UNK_PIECE,
    "bos_token": tokenizer_lib.BOS_PIECE,
    "eos_token": tokenizer_lib.EOS_PIECE,
    "mask_token": tokenizer_lib.MASK_PIECE,
    "cls_token": tokenizer_lib.CLS_PIECE,
    "sep_token": tokenizer_lib.SEP_PIECE,
}


def _parse_proto(model_proto: bytes, source: str) -> sentencepiece_model_pb2.ModelProto:
    """The model proto; a UserError if it normalizes text in a way not reproduced here
    (`t5x-lite tokenizer` models never do)."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    spec = proto.normalizer_spec
    as_trained = (
        spec.name == "identity"
        and not spec.precompiled_charsmap
        and not spec.remove_extra_whitespaces
        and spec.add_dummy_prefix
        and spec.escape_whitespaces
        and not proto.trainer_spec.treat_whitespace_as_suffix
        and proto.trainer_spec.byte_fallback
    )
    if not as_trained:
        raise UserError(
            f"{source} normalizes text unlike `t5x-lite tokenizer` models; retrain it "
            "with `t5x-lite tokenizer` to export it"
        )
    return proto


def bpe_merges(proto: sentencepiece_model_pb2.ModelProto) -> list[tuple[str, str]]:
    """HF BPE merges that make the same choices as sentencepiece's BPE encoder.

    sentencepiece repeatedly merges the adjacent pair whose concatenation is the
    best-scored piece; HF applies the best-ranked merge. So every split of a piece
    into two pieces is a merge, ranked by the whole piece's score. Only normal pieces
    merge (user-defined symbols stay whole; byte pieces are never built from text).
    """
    normal = {piece.piece for piece in proto.pieces if piece.type == _NORMAL}
    by_score = sorted(
        (piece for piece in proto.pieces if piece.type == _NORMAL), key=lambda p: -p.score
    )
    merges = []
    for piece in by_score:
        text = piece.piece
        for cut in range(1, len(text)):
            if text[:cut] in normal and text[cut:] in normal:
                merges.append((text[:cut], text[cut:]))
    return merges


def _model(proto: sentencepiece_model_pb2.ModelProto) -> models.Model:
    pieces = [(piece.piece, piece.score) for piece in proto.pieces]
    model_type = proto.trainer_spec.model_type
    if model_type == _TRAINER.UNIGRAM:
        return models.Unigram(pieces, unk_id=tokenizer_lib.UNK_ID, byte_fallback=True)
    # A char model is BPE without merges: every character is its own piece.
    merges = bpe_merges(proto) if model_type == _TRAINER.BPE else []
    return models.BPE(
        {piece: i for i, (piece, _) in enumerate(pieces)},
        merges,
        unk_token=tokenizer_lib.UNK_PIECE,
        byte_fallback=True,
    )


def hf_tokenizer(model_proto: bytes, template: str, *, source: str) -> tokenizers.Tokenizer:
    """The `tokenizers` equivalent of a sentencepiece model (its serialized proto, read
    from `source`), with the post-processor of `template` (a key of TEMPLATES)."""
    if template not in TEMPLATES:
        raise UserError(f"tokenizer template {template!r} is not one of {', '.join(TEMPLATES)}")
    proto = _parse_proto(model_proto, source)
    tokenizer = tokenizers.Tokenizer(_model(proto))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=" ", prepend_scheme="first", split=False),
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=False),
        ]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),  # the dummy prefix
        ]
    )
    specials = [proto.pieces[i].piece for i in range(tokenizer_lib.NUM_SPECIAL_PIECES)]
    tokenizer.add_special_tokens(
        [tokenizers.AddedToken(piece, special=True, normalized=False) for piece in specials]
    )
    single, pair, _ = TEMPLATES[template]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=list(_TEMPLATE_TOKENS.items())
    )
    return tokenizer


def save_pretrained(model_proto: bytes, source: str, directory: str, template: str) -> list[str]:
    """Writes FILES into `directory` (made if missing): the sentencepiece model as
    MODEL_FILE, tokenizer.json, tokenizer_config.json and special_tokens_map.json;
    returns their paths. A different file of the same name there is a UserError."""
    tokenizer = hf_tokenizer(model_proto, template, source=source)
    config = {
        # The generic class loads tokenizer.json as it is; a model-specific class
        # (T5Tokenizer, BertTokenizer) would rebuild a pipeline of its own.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_NAMED_TOKENS,
        "model_input_names": TEMPLATES[template][2],
        "clean_up_tokenization_spaces": False,
    }
    # Written locally first (`tokenizers` saves to local files only), then copied, so
    # that copy_files can refuse to replace a different file of the same name.
    with tempfile.TemporaryDirectory() as staging:
        model_path, json_path, config_path, names_path = (
            os.path.join(staging, name) for name in FILES
        )
        fileio.write_bytes(model_path, model_proto)
        tokenizer.save(json_path)
        for path, content in ((config_path, config), (names_path, _NAMED_TOKENS)):
            fileio.write_text(path, json.dumps(content, indent=2, ensure_ascii=False))
        return hf_tokenizer_lib.copy_files(staging, FILES, directory)
