"""Document sources: a text corpus as a random-access sequence of document strings.

A source config (ml_collections) has every key below; a kind ignores keys it does
not use:

    kind       'text' | 'tsv' | 'jsonl' | 'tfds' | 'pydoc'
    path       text/tsv/jsonl file
    column     tsv column (first row is the header) | jsonl key | tfds feature
    doc_mode   text: 'line' (one document per non-empty line) or 'paragraph'
               (blocks separated by blank lines)
    tfds_name, split, tfds_data_dir   tfds: a prepared dataset read with tfds.data_source

Files are small next to the models trained on them, so they are read once, eagerly,
and every malformed row is an error: skipping one would silently shift the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from t5x_lite import fileio
from t5x_lite.errors import UserError

KINDS = ("text", "tsv", "jsonl", "tfds", "pydoc")
DOC_MODES = ("line", "paragraph")

# One or more blank (whitespace-only) lines end a paragraph.
_PARAGRAPH_BREAK = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


class DocumentSlice(Sequence[str]):
    """Documents [start, stop) of another sequence, without copying them."""

    def __init__(self, docs: Sequence[str], start: int, stop: int):
        self._docs = docs
        self._start = start
        self._stop = stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        return self._docs[self._start + index % len(self)]


class TfdsTextSource(Sequence[str]):
    """One text feature of a prepared TFDS split, read lazily by index."""

    def __init__(self, data_source, column: str, description: str):
        self._data_source = data_source
        self._column = column
        self._description = description

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        # Bounds are checked here: iteration stops at IndexError, which TFDS data
        # sources (and their test mocks) do not reliably raise.
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} out of range for {len(self)} documents")
        value = self._data_source[index % len(self)][self._column]
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if not isinstance(value, str):
            raise UserError(
                f"{self._description} feature {self._column!r} holds {type(value).__name__},"
                " not text; set `column` to a text feature"
            )
        return value


def load_source(cfg) -> Sequence[str]:
    """Source config -> sequence of document strings (see the module docstring)."""
    loaders: dict[str, Callable[..., Sequence[str]]] = {
        "text": _load_text,
        "tsv": _load_tsv,
        "jsonl": _load_jsonl,
        "tfds": _load_tfds,
        "pydoc": lambda cfg: _load_pydoc(),
    }
    if cfg.kind not in loaders:
        raise UserError(f"unknown source kind {cfg.kind!r}; set `kind` to one of {KINDS}")
    docs = loaders[cfg.kind](cfg)
    if len(docs) == 0:
        if cfg.kind == "tfds":
            raise UserError(f"tfds split {cfg.tfds_name}/{cfg.split} is empty; change `split`")
        raise UserError(f"{cfg.path} has no documents; point `path` at a non-empty corpus")
    return docs


def split_heldout(docs: Sequence[str], num_docs: int) -> tuple[Sequence[str], Sequence[str]]:
    """(train, eval): eval is the last `num_docs` documents, train all the others."""
    if num_docs < 0:
        raise UserError(f"config.data.heldout_docs={num_docs} must be >= 0")
    if num_docs >= len(docs):
        raise UserError(
            f"holding out {num_docs} of {len(docs)} documents leaves none for training;"
            " lower config.data.heldout_docs"
        )
    split = len(docs) - num_docs
    return DocumentSlice(docs, 0, split), DocumentSlice(docs, split, len(docs))


def _read_text_file(path: str) -> str:
    """UTF-8 text of `path` with '\\r\\n' as '\\n'; UserError for anything unreadable."""
    if not fileio.exists(path):
        raise UserError(f"data file {path} does not exist; fix `path`")
    if fileio.isdir(path):
        raise UserError(f"data path {path} is a directory; set `path` to a file")
    data = fileio.read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(
            f"{path}:{line}: invalid UTF-8 at byte offset {error.start}; re-encode the file"
            " as UTF-8 or change `path`"
        ) from None
    if not text.strip():
        raise UserError(f"data file {path} is empty; fix `path`")
    return text.replace("\r\n", "\n")


def split_paragraphs(text: str) -> list[str]:
    """Blocks separated by blank lines, without their surrounding newlines."""
    blocks = (block.strip("\n") for block in _PARAGRAPH_BREAK.split(text))
    return [block for block in blocks if block.strip()]


def _load_text(cfg) -> list[str]:
    if cfg.doc_mode not in DOC_MODES:
        raise UserError(f"unknown doc_mode {cfg.doc_mode!r}; set `doc_mode` to one of {DOC_MODES}")
    text = _read_text_file(cfg.path)
    if cfg.doc_mode == "paragraph":
        return split_paragraphs(text)
    return [line for line in text.split("\n") if line.strip()]


def _data_lines(text: str) -> list[str]:
    """Lines of a row-per-line file; a single trailing newline does not make a row."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _load_tsv(cfg) -> list[str]:
    lines = _data_lines(_read_text_file(cfg.path))
    header = lines[0].split("\t")
    if cfg.column not in header:
        raise UserError(
            f"{cfg.path}: column {cfg.column!r} is not in the header; set `column` to one of"
            f" {header}"
        )
    column = header.index(cfg.column)
    docs = []
    for line_number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise UserError(
                f"{cfg.path}:{line_number}: {len(cells)} tab-separated cells but the header"
                f" has {len(header)}; fix that row"
            )
        if not cells[column].strip():
            raise UserError(
                f"{cfg.path}:{line_number}: column {cfg.column!r} is empty; fix that row"
            )
        docs.append(cells[column])
    return docs


def _load_jsonl(cfg) -> list[str]:
    docs = []
    for line_number, line in enumerate(_data_lines(_read_text_file(cfg.path)), start=1):
        if not line.strip():
            continue  # blank lines hold no record, so skipping them shifts nothing
        where = f"{cfg.path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: invalid JSON ({error.msg}); fix that line") from None
        if not isinstance(record, dict) or cfg.column not in record:
            raise UserError(f"{where}: no key {cfg.column!r}; fix that line or set `column`")
        value = record[cfg.column]
        if not isinstance(value, str):
            raise UserError(
                f"{where}: {cfg.column!r} is {type(value).__name__}, not a string; fix that line"
            )
        if not value.strip():
            raise UserError(f"{where}: {cfg.column!r} is empty; fix that line")
        docs.append(value)
    return docs


def _load_tfds(cfg) -> TfdsTextSource:
    # Imported here: TFDS is slow to import and only this source kind needs it.
    import tensorflow_datasets as tfds

    description = f"tfds dataset {cfg.tfds_name!r} split {cfg.split!r}"
    try:
        data_source = tfds.data_source(
            cfg.tfds_name, split=cfg.split, data_dir=cfg.tfds_data_dir or None
        )
    except Exception as error:  # TFDS raises many types for a missing or unprepared dataset
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"cannot read {description}: {reason}; check `tfds_name`, `split` and"
            " `tfds_data_dir`, or prepare it with `tfds build`"
        ) from None
    if len(data_source) and cfg.column not in data_source[0]:
        raise UserError(
            f"{description} has no feature {cfg.column!r}; set `column` to one of"
            f" {sorted(data_source[0])}"
        )
    return TfdsTextSource(data_source, cfg.column, description)


def _load_pydoc() -> list[str]:
    """Paragraphs of CPython's bundled language-reference topics: an offline corpus."""
    from pydoc_data.topics import topics

    return [paragraph for topic in sorted(topics) for paragraph in split_paragraphs(topics[topic])]
