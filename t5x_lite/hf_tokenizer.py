"""A Hugging Face BERT WordPiece tokenizer behind the interface of `tokenizer.Tokenizer`.

Lets objectives and downstream code run on the vocabulary of an imported BERT checkpoint
(see `models/hf_bert.py`). Special ids come from the vocabulary rather than being fixed:
BERT has no BOS/EOS, so `bos_id` is [CLS] and `eos_id` is [SEP], the tokens that open and
close a BERT input.

Unlike our sentencepiece models this is lossy: BERT normalization lowercases (for uncased
models), strips accents and splits off punctuation, and unknown words become [UNK].

Also what every tokenizer read from an HF directory (this one, hf_t5's T5Tokenizer,
hf_gpt2's GPT2Tokenizer) does to `save_pretrained`: copy the files it was read from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from t5x_lite import fileio
from t5x_lite.errors import UserError

PAD_PIECE = "[PAD]"
UNK_PIECE = "[UNK]"
CLS_PIECE = "[CLS]"
SEP_PIECE = "[SEP]"
MASK_PIECE = "[MASK]"
SPECIAL_PIECES = (PAD_PIECE, UNK_PIECE, CLS_PIECE, SEP_PIECE, MASK_PIECE)
CONTINUATION_PREFIX = "##"  # WordPiece marks a piece that continues a word

# Files of an HF tokenizer directory, whichever exist: the fast tokenizer, its config,
# and each family's own vocabulary (BERT's vocab.txt, T5's spiece.model, GPT-2's
# vocab.json + merges.txt).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "spiece.model",
    "vocab.json",
    "merges.txt",
)


def tokenizer_files(hf_dir: str) -> tuple[str, ...]:
    """The TOKENIZER_FILES that `hf_dir` has."""
    return tuple(name for name in TOKENIZER_FILES if fileio.isfile(fileio.join(hf_dir, name)))


def copy_files(source_dir: str, names: tuple[str, ...], directory: str) -> list[str]:
    """Copies `names` from `source_dir` into `directory` (made if missing); their new
    paths. An existing different file of the same name is a UserError, never replaced."""
    fileio.makedirs(directory)
    paths = []
    for name in names:
        source, target = fileio.join(source_dir, name), fileio.join(directory, name)
        if fileio.exists(target) and not fileio.files_equal(source, target):
            raise UserError(
                f"{target} exists and differs from {source}; save into another directory"
            )
        if not fileio.exists(target):
            fileio.copy_file(source, target)
        paths.append(target)
    return paths


def _bert_options(hf_dir: str) -> dict:
    """Normalizer options from tokenizer_config.json; absent keys (or file) take the
    values HF's BertTokenizer uses, so the same directory tokenizes the same in both."""
    options = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}
    path = fileio.join(hf_dir, "tokenizer_config.json")
    if fileio.isfile(path):
        saved = json.loads(fileio.read_text(path))
        options.update({key: saved[key] for key in options if key in saved})
    return options


def _from_vocab_txt(hf_dir: str) -> tokenizers.Tokenizer:
    """BERT's tokenizer as HF builds it from vocab.txt: BERT normalizer and
    pre-tokenizer, greedy longest-match WordPiece, special tokens matched in raw text."""
    vocab_path = fileio.join(hf_dir, "vocab.txt")
    if not fileio.isfile(vocab_path):
        raise UserError(f"{hf_dir} has neither tokenizer.json nor vocab.txt")
    options = _bert_options(hf_dir)
    vocab = read_vocab_txt(fileio.read_text(vocab_path))
    tokenizer = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=UNK_PIECE))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=options["tokenize_chinese_chars"],
        strip_accents=options["strip_accents"],
        lowercase=options["do_lower_case"],
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    # Only pieces the vocabulary has: a missing one would otherwise be appended with an
    # id past the model's embedding table. WordPieceTokenizer reports missing ones.
    tokenizer.add_special_tokens(
        [piece for piece in SPECIAL_PIECES if tokenizer.token_to_id(piece) is not None]
    )
    return tokenizer


def read_vocab_txt(text: str) -> dict[str, int]:
    """vocab.txt -> {piece: id}: one piece per line, its id the line's index, trailing
    whitespace dropped (as `WordPiece.from_file` reads it; a repeated piece keeps the
    last id)."""
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no piece
        lines.pop()
    return {line.rstrip(): index for index, line in enumerate(lines)}


class WordPieceTokenizer:
    """tokenizer.json if `hf_dir` has one, else vocab.txt (+ tokenizer_config.json)."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        json_path = fileio.join(hf_dir, "tokenizer.json")
        if fileio.isfile(json_path):
            self._tokenizer = tokenizers.Tokenizer.from_str(fileio.read_text(json_path))
        else:
            self._tokenizer = _from_vocab_txt(hf_dir)
        # Rows are cut and padded by our packer, never by the tokenizer.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self._special_id(piece) for piece in SPECIAL_PIECES
        )
        self.bos_id, self.eos_id = self.cls_id, self.sep_id
        self.files = tokenizer_files(hf_dir)  # what save_pretrained copies

    def save_pretrained(self, directory: str) -> list[str]:
        """Copies the tokenizer files of `hf_dir` (`files`) into `directory`, where this
        class and `AutoTokenizer` load them as from `hf_dir`; returns their paths."""
        return copy_files(self.hf_dir, self.files, directory)

    def _special_id(self, piece: str) -> int:
        token_id = self._tokenizer.token_to_id(piece)
        if token_id is None:
            raise UserError(f"{self.hf_dir}: the vocabulary has no {piece}; not a BERT tokenizer")
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        """Text -> token ids [num_tokens] int32, without [CLS] or [SEP]."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids -> text. [PAD], [CLS] and [SEP] decode to nothing (as pad, BOS and EOS do
        in `Tokenizer`); [MASK] and [UNK] stay visible."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        kept = flat[~np.isin(flat, [self.pad_id, self.cls_id, self.sep_id])]
        return self._tokenizer.decode(kept.tolist(), skip_special_tokens=False)

    def pieces(self, text: str) -> list[str]:
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def id_to_piece(self, i: int) -> str:
        piece = self._tokenizer.id_to_token(int(i))
        if piece is None:
            raise IndexError(f"id {i} is outside the vocabulary of {self.vocab_size}")
        return piece

    def piece_to_id(self, piece: str) -> int:
        """Unknown pieces map to [UNK], as sentencepiece's piece_to_id does."""
        token_id = self._tokenizer.token_to_id(piece)
        return self.unk_id if token_id is None else token_id

    def special_mask(self) -> np.ndarray:
        """bool [vocab_size]: True for special tokens ([PAD], [CLS], [MASK], ... and any
        other token the tokenizer marks special)."""
        mask = np.zeros(self.vocab_size, dtype=bool)
        added = self._tokenizer.get_added_tokens_decoder()
        mask[[token_id for token_id, token in added.items() if token.special]] = True
        return mask

    def word_start_mask(self) -> np.ndarray:
        """bool [vocab_size]: True for ids that start a word (no '##' prefix, not special),
        which whole-word masking groups their continuations behind."""
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        continues = np.zeros(self.vocab_size, dtype=bool)
        continues[[i for piece, i in vocab.items() if piece.startswith(CONTINUATION_PREFIX)]] = True
        return ~continues & ~self.special_mask()
