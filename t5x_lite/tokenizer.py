"""SentencePiece tokenizer with fixed special ids, byte fallback and exact round trips.

Every model trained here has the same layout at the start of its vocabulary, so
objectives and downstream code can use the ids below without asking the model:

    0 <pad>  1 </s>  2 <unk>  3 <s>  4 [MASK]  5 [CLS]  6 [SEP]  7..106 <extra_id_0..99>
    then 256 byte pieces <0x00>..<0xFF>, then the learned pieces.

Byte fallback means no input ever maps to <unk>: a character the model never saw is
spelled as its UTF-8 bytes. Normalization is the identity and whitespace is kept as
is, so `decode(encode(text)) == text` for any text without U+2581 "▁", which
sentencepiece reserves to stand for a space. Encoding prefixes a "▁" (sentencepiece's
dummy prefix) so a word encodes the same at the start of a text as after a space;
decoding drops it again.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from t5x_lite import fileio
from t5x_lite.errors import UserError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3
MASK_ID = 4
CLS_ID = 5
SEP_ID = 6
FIRST_SENTINEL_ID = 7
NUM_SENTINELS = 100

PAD_PIECE = "<pad>"
EOS_PIECE = "</s>"
UNK_PIECE = "<unk>"
BOS_PIECE = "<s>"
MASK_PIECE = "[MASK]"
CLS_PIECE = "[CLS]"
SEP_PIECE = "[SEP]"

MODEL_TYPES = ("bpe", "unigram", "char")
NUM_BYTE_PIECES = 256

# User-defined symbols, in id order from MASK_ID. Being user-defined (not control)
# symbols, they are matched in raw text: "[MASK]" or "<extra_id_3>" typed by a user
# (cloze probes, T5 infilling prompts) encodes to its id.
_USER_SYMBOLS = [MASK_PIECE, CLS_PIECE, SEP_PIECE] + [
    f"<extra_id_{i}>" for i in range(NUM_SENTINELS)
]
NUM_SPECIAL_PIECES = FIRST_SENTINEL_ID + NUM_SENTINELS  # 107
# Smallest vocabulary that holds the specials and the byte pieces (plus one learned piece).
MIN_VOCAB_SIZE = NUM_SPECIAL_PIECES + NUM_BYTE_PIECES + 1

# Training sees text line by line; a longer line is cut into chunks of this many
# characters so that sentencepiece never silently skips it (it drops sentences over
# `max_sentence_length` bytes, and a UTF-8 character is at most 4 bytes).
_MAX_TRAIN_LINE_CHARS = 4096
# Fixed, not os.cpu_count(): unigram training learns different pieces with a
# different thread count, and the same corpus must give the same model on any machine.
_TRAIN_THREADS = 4
_TRAIN_RANDOM_SEED = 0  # seeds sentencepiece's sampling of `max_sentences` lines
_MIN_SAMPLED_SENTENCES = 100  # sentencepiece rejects an input_sentence_size of 1..100


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Documents -> non-empty lines of at most _MAX_TRAIN_LINE_CHARS characters.

    Splitting at newlines keeps sentences short without changing the statistics much:
    newlines themselves are then always spelled by the <0x0A> byte piece.
    """
    for text in texts:
        for line in text.split("\n"):
            for start in range(0, len(line), _MAX_TRAIN_LINE_CHARS):
                chunk = line[start : start + _MAX_TRAIN_LINE_CHARS]
                if chunk.strip():
                    yield chunk


def _vocab_size_error(message: str, vocab_size: int, model_type: str) -> UserError:
    """Turns sentencepiece's vocabulary-size failures into one-line UserErrors."""
    too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        return UserError(
            f"--vocab_size={vocab_size} is too small for this corpus: the special, byte"
            f" and character pieces alone need {too_small.group(1)}; raise --vocab_size"
        )
    too_large = re.search(r"set it to a value <= (\d+)", message)
    if too_large:
        return _too_large_error(vocab_size, int(too_large.group(1)), model_type)
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return UserError(f"sentencepiece could not train a {model_type} tokenizer: {first_line}")


def _too_large_error(vocab_size: int, maximum: int, model_type: str) -> UserError:
    return UserError(
        f"--vocab_size={vocab_size} is too large for this corpus ({model_type} can learn at"
        f" most {maximum} pieces from it); lower --vocab_size to <= {maximum} or add text"
    )


def _trainer_options(vocab_size: int, model_type: str, max_sentences: int) -> dict:
    """sentencepiece trainer flags that give the fixed layout in the module docstring."""
    return dict(
        model_type=model_type,
        vocab_size=vocab_size,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        pad_piece=PAD_PIECE,
        eos_piece=EOS_PIECE,
        unk_piece=UNK_PIECE,
        bos_piece=BOS_PIECE,
        user_defined_symbols=_USER_SYMBOLS,
        byte_fallback=True,
        # Exact round trips: no NFKC, no collapsing of repeated spaces.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        # Indentation runs ("▁▁▁▁") may become pieces; numbers are spelled digit by digit.
        allow_whitespace_only_pieces=True,
        split_digits=True,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        max_sentence_length=4 * _MAX_TRAIN_LINE_CHARS,
        num_threads=_TRAIN_THREADS,
        minloglevel=2,
    )


def train_tokenizer(
    texts: Iterable[str],
    output_prefix: str,
    *,
    vocab_size: int,
    model_type: str,
    max_sentences: int,
) -> str:
    """Trains a tokenizer on `texts` (documents); writes <prefix>.model/.vocab, returns .model.

    `max_sentences` caps how many lines sentencepiece keeps in memory (a seeded uniform
    sample of all lines); the model has exactly `vocab_size` pieces or this raises.
    `output_prefix` may be a URL (gs://...): sentencepiece writes only local files, so it
    trains into a temporary directory and both files are copied to the prefix.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown tokenizer model_type {model_type!r}; use one of {MODEL_TYPES}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"--vocab_size={vocab_size} is too small: {NUM_SPECIAL_PIECES} special and"
            f" {NUM_BYTE_PIECES} byte pieces need at least {MIN_VOCAB_SIZE}; raise --vocab_size"
        )
    if max_sentences <= _MIN_SAMPLED_SENTENCES:
        raise UserError(
            f"max_sentences={max_sentences} is too small; sentencepiece needs more than"
            f" {_MIN_SAMPLED_SENTENCES} sentences"
        )
    lines = _training_lines(texts)
    first = next(lines, None)
    if first is None:
        raise UserError("no text to train the tokenizer on: every document is empty")
    with tempfile.TemporaryDirectory(prefix="t5x_lite-tokenizer-") as local:
        local_prefix = os.path.join(local, "spm")
        _train(_prepend(first, lines), local_prefix, vocab_size, model_type, max_sentences)
        directory = os.path.dirname(output_prefix)
        if directory:
            fileio.makedirs(directory)
        fileio.copy_file(local_prefix + ".vocab", output_prefix + ".vocab")
        model = _with_prefix(fileio.read_bytes(local_prefix + ".model"), output_prefix)
        fileio.write_bytes(output_prefix + ".model", model)  # last: its presence means done
    return output_prefix + ".model"


def load_or_train(
    tokenizer_config,
    workdir: str,
    texts: Iterable[str],
    *,
    model_vocab_size: int,
    process_count: int,
) -> Tokenizer:
    """The tokenizer at `tokenizer_config.path` (`config.tokenizer`), or one trained on
    `texts` (documents) into workdir/tokenizer.model if that is not there yet.

    Only a single process trains: a run of `process_count` > 1 must give the path. The
    tokenizer must fit the model's `model_vocab_size` (`config.model.vocab_size`).
    """
    path = tokenizer_config.path
    if not path:
        path = fileio.join(workdir, "tokenizer.model")
        if not fileio.exists(path):
            if process_count > 1:
                raise UserError(
                    "multi-process runs need a trained tokenizer: set config.tokenizer.path "
                    "(train one with `t5x-lite tokenizer`)"
                )
            fileio.makedirs(workdir)
            try:
                train_tokenizer(
                    texts,
                    path[: -len(".model")],
                    vocab_size=tokenizer_config.vocab_size,
                    model_type=tokenizer_config.model_type,
                    max_sentences=tokenizer_config.max_sentences,
                )
            except UserError as e:  # name the config key, not the tokenizer command's flag
                raise UserError(
                    str(e).replace("--vocab_size", "config.tokenizer.vocab_size")
                ) from None
    tokenizer = Tokenizer(path)
    if tokenizer.vocab_size > model_vocab_size:
        raise UserError(
            f"the tokenizer {path} has {tokenizer.vocab_size} pieces but "
            f"config.model.vocab_size={model_vocab_size}; set "
            f"--config.tokenizer.vocab_size={tokenizer.vocab_size}"
        )
    return tokenizer


def _with_prefix(model_proto: bytes, prefix: str) -> bytes:
    """The model with `prefix` as the one it records being trained to (sentencepiece
    saves its trainer flags in it), so the bytes do not depend on the temporary name."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    proto.trainer_spec.model_prefix = prefix
    return proto.SerializeToString()


def _train(lines, prefix: str, vocab_size: int, model_type: str, max_sentences: int) -> None:
    """sentencepiece training into the local files <prefix>.model/.vocab."""
    spm.set_random_generator_seed(_TRAIN_RANDOM_SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines,
            model_prefix=prefix,
            **_trainer_options(vocab_size, model_type, max_sentences),
        )
    except RuntimeError as error:
        raise _vocab_size_error(str(error), vocab_size, model_type) from None
    learned = spm.SentencePieceProcessor(model_file=prefix + ".model").get_piece_size()
    if learned != vocab_size:  # the char trainer returns fewer pieces instead of failing
        raise _too_large_error(vocab_size, learned, model_type)


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _expected_special_pieces() -> dict[int, str]:
    pieces = {PAD_ID: PAD_PIECE, EOS_ID: EOS_PIECE, UNK_ID: UNK_PIECE, BOS_ID: BOS_PIECE}
    pieces.update({MASK_ID + i: piece for i, piece in enumerate(_USER_SYMBOLS)})
    return pieces


class Tokenizer:
    """A trained sentencepiece model whose special ids match the constants above."""

    def __init__(self, model_path: str):
        self.model_path = model_path
        if not fileio.isfile(model_path):
            raise UserError(f"tokenizer model {model_path} is not a file; fix the model path")
        self._load(fileio.read_bytes(model_path))

    def _load(self, model_proto: bytes) -> None:
        self._model_proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load_from_serialized_proto(model_proto)
        except (RuntimeError, OSError):
            raise UserError(
                f"{self.model_path} is not a sentencepiece model; point the model path at"
                " a .model file written by `t5x-lite tokenizer`"
            ) from None
        for token_id, piece in _expected_special_pieces().items():
            if token_id >= self._sp.get_piece_size() or self._sp.id_to_piece(token_id) != piece:
                raise UserError(
                    f"{self.model_path} has no {piece!r} at id {token_id}: it was not trained"
                    " by t5x_lite; retrain it with `t5x-lite tokenizer`"
                )

    # A SentencePieceProcessor is not picklable; grain worker processes need to be.
    def __getstate__(self):
        return {"model_path": self.model_path, "model_proto": self._model_proto}

    def __setstate__(self, state):
        self.model_path = state["model_path"]
        self._load(state["model_proto"])

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    pad_id = property(lambda self: PAD_ID)
    eos_id = property(lambda self: EOS_ID)
    unk_id = property(lambda self: UNK_ID)
    bos_id = property(lambda self: BOS_ID)
    mask_id = property(lambda self: MASK_ID)
    cls_id = property(lambda self: CLS_ID)
    sep_id = property(lambda self: SEP_ID)

    def encode(self, text: str) -> np.ndarray:
        """Text -> token ids [num_tokens] int32, without BOS or EOS."""
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(texts))]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids -> text. Pad and EOS decode to nothing; callers trim at EOS themselves."""
        return self._sp.decode(np.asarray(ids, dtype=np.int64).reshape(-1).tolist())

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def sentinel_id(self, i: int) -> int:
        """Id of the T5 sentinel <extra_id_i>."""
        if not 0 <= i < NUM_SENTINELS:
            raise ValueError(f"sentinel index {i} is outside [0, {NUM_SENTINELS})")
        return FIRST_SENTINEL_ID + i

    def special_mask(self) -> np.ndarray:
        """[vocab_size] bool: True for pad, eos, unk, bos, [MASK], [CLS], [SEP] and sentinels."""
        return np.arange(self.vocab_size) < NUM_SPECIAL_PIECES

    def word_start_mask(self) -> np.ndarray:
        """[vocab_size] bool: True for pieces that begin a word, i.e. start with "▁".

        Special and byte pieces are never word starts, so a piece after them joins the
        word before it. That is what we want for a word beginning with a character the
        model never saw: it is spelled "▁" + byte pieces, and the "▁" piece starts the
        word. It also means a word right after a newline (a byte piece, no space) is
        glued to the previous word; whole-word masking then masks both together.
        """
        pieces = np.array([self._sp.id_to_piece(i) for i in range(self.vocab_size)])
        return np.char.startswith(pieces, "\u2581") & ~self.special_mask()

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def save_pretrained(self, directory: str, *, template: str) -> list[str]:
        """Writes this model (as hf_spm.MODEL_FILE, which this class reloads) and the
        Hugging Face files `AutoTokenizer.from_pretrained(directory)` reads, whose
        special tokens around a text follow `template` ("bert", "gpt" or "t5"); returns
        their paths. See `hf_spm` for how exactly the two tokenize alike."""
        from t5x_lite import hf_spm  # imports this module

        return hf_spm.save_pretrained(self._model_proto, self.model_path, directory, template)

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)


class SpecialIdsOnly:
    """What objectives read from a tokenizer, without one: the special ids are fixed
    (see the module docstring), every other piece counts as a word start. Builds an
    objective or a run before any tokenizer exists (to check settings, to benchmark)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    pad_id, eos_id, unk_id, bos_id = PAD_ID, EOS_ID, UNK_ID, BOS_ID
    mask_id, cls_id, sep_id = MASK_ID, CLS_ID, SEP_ID
    sentinel_id = staticmethod(lambda i: FIRST_SENTINEL_ID + i)

    def special_mask(self):
        return np.arange(self.vocab_size) < NUM_SPECIAL_PIECES

    def word_start_mask(self):
        return ~self.special_mask()
