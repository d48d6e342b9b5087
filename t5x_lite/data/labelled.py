"""Fine-tuning tasks read from GLUE-format TSV files.

A task config (`config.task`, an ml_collections ConfigDict) has:

    kind      'classification' | 'text_to_text'
    labels    classification: the allowed values of the label column, in class-index
              order, e.g. ('0', '1') for SST-2
    train, eval   one split each:
        path          TSV file; the first row is the header
        text_a        column of the (first) text
        text_b        column of the second text of a pair task; '' = single-sentence task
        label         classification: label column
        target        text_to_text: target text column
        max_examples  0 = every row; N = N data rows drawn at random without replacement
                      (all of them if the file is shorter), in file order
    sample_seed   the seed of that draw (the same rows for every fine-tuning seed)

The format is GLUE's: one row per line, fields separated by tabs, no quoting. A line is
split on '\\t' exactly and only its '\\n' / '\\r\\n' ending is removed; text is kept as it
is. Each line is decoded as UTF-8 on its own so that a broken byte is reported with its
line number.

Every problem is a UserError with one line that says where (`path:line` or the config
key) and what to fix: a missing file, broken UTF-8, an empty file or one with only a
header, a column the header lacks, a row with more or fewer fields than the header, a
blank line between rows, an empty (or whitespace-only) text, a label not in `labels`, an
unknown kind, and empty or duplicated `labels`. A bad row is never skipped: that would
silently shift every label after it. Blank lines at the end of the file are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from t5x_lite import fileio
from t5x_lite.errors import UserError

KINDS = ("classification", "text_to_text")
SPLITS = ("train", "eval")


class TaskExample(NamedTuple):
    text_a: str
    text_b: str | None  # None for single-sentence tasks
    label: int  # index into task_config.labels; -1 for text_to_text tasks
    target: str  # target text for text_to_text tasks; "" for classification
    line: int  # 1-based line number in the file (the header is line 1)


def load_split(task_config, split: str) -> list[TaskExample]:
    """The examples of `split` ('train' or 'eval') of the task `task_config`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kind = task_config["kind"]
    if kind not in KINDS:
        raise UserError(f"config.task.kind: unknown kind {kind!r}; set it to one of {KINDS}")
    labels = _checked_labels(task_config["labels"]) if kind == "classification" else ()
    split_config = task_config[split]
    key = f"config.task.{split}"
    path = split_config["path"]
    max_examples = split_config["max_examples"]
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise UserError(f"{key}.max_examples={max_examples!r}; set it to 0 (all rows) or N > 0")

    lines = _read_lines(path, f"{key}.path")
    header = _decode(lines[0], path, 1).removeprefix("\ufeff").split("\t")  # drop a BOM
    fields_used = ["text_a"] + (["text_b"] if split_config["text_b"] else [])
    fields_used.append("label" if kind == "classification" else "target")
    column = {  # TaskExample field -> index into the header
        field: _column_index(header, split_config[field], path, f"{key}.{field}")
        for field in fields_used
    }

    line_numbers = sample_rows(len(lines) - 1, max_examples, task_config["sample_seed"]) + 2
    examples = []
    for line_number in line_numbers.tolist():
        raw = lines[line_number - 1]
        cells = _split_row(raw, len(header), path, line_number)
        for field, index in column.items():
            if field != "label" and not cells[index].strip():
                raise UserError(f"{path}:{line_number}: empty text in column {header[index]!r}")
        label, target = -1, ""
        if kind == "classification":
            value = cells[column["label"]]
            if value not in labels:
                raise UserError(
                    f"{path}:{line_number}: label {value!r} is not one of config.task.labels"
                    f" {labels}"
                )
            label = labels.index(value)
        else:
            target = cells[column["target"]]
        text_b = cells[column["text_b"]] if "text_b" in column else None
        examples.append(TaskExample(cells[column["text_a"]], text_b, label, target, line_number))
    return examples


def texts(documents) -> Iterable[str]:
    """Documents as text, e.g. to train a tokenizer on: labelled examples give their
    texts (and targets); text documents are their own text."""
    if documents and isinstance(documents[0], TaskExample):
        return (text for e in documents for text in (e.text_a, e.text_b, e.target) if text)
    return documents


def sample_rows(num_rows: int, max_examples: int, seed: int) -> np.ndarray:
    """Indices of the rows to read, ascending: all of them, or `max_examples` drawn at
    random. The first N rows of a file sorted by label would hold one label only."""
    if not max_examples or max_examples >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).choice(num_rows, max_examples, replace=False))


def _checked_labels(labels) -> tuple[str, ...]:
    labels = tuple(labels)
    if not labels:
        raise UserError(
            "config.task.labels is empty; list the label column's values in class-index"
            " order, e.g. ('0', '1')"
        )
    for value in labels:
        if not isinstance(value, str):
            raise UserError(
                f"config.task.labels: {value!r} is not a string; write the labels as they"
                " appear in the file, e.g. ('0', '1')"
            )
        if labels.count(value) > 1:
            raise UserError(f"config.task.labels has {value!r} twice; list each label once")
    return labels


def _read_lines(path: str, key: str) -> list[bytes]:
    """The file's lines as bytes without their endings or trailing blank lines; at least
    a header and one row."""
    if not fileio.exists(path):
        raise UserError(f"{key}: {path} does not exist")
    if fileio.isdir(path):
        raise UserError(f"{key}: {path} is a directory; point it at a TSV file")
    try:
        data = fileio.read_bytes(path)
    except OSError as error:
        raise UserError(f"{key}: cannot read {path} ({error.strerror or error})") from None
    lines = [line.removesuffix(b"\r") for line in data.split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{path} is empty; it needs a header row and one row per example")
    if len(lines) == 1:
        raise UserError(f"{path}: no examples, only a header row; add one row per example")
    return lines


def _decode(raw: bytes, path: str, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}:{line_number}: invalid UTF-8 at byte {error.start} of the line;"
            " re-encode the file as UTF-8"
        ) from None


def _column_index(header: list[str], name: str, path: str, key: str) -> int:
    if name not in header:
        raise UserError(f"{path}: no column {name!r} (columns: {', '.join(header)}); set {key}")
    if header.count(name) > 1:
        raise UserError(f"{path}:1: the header has column {name!r} twice; rename one")
    return header.index(name)


def _split_row(raw: bytes, num_columns: int, path: str, line_number: int) -> list[str]:
    line = _decode(raw, path, line_number)
    if not line.strip():
        raise UserError(
            f"{path}:{line_number}: blank line between rows; remove it or fill in the row"
        )
    fields = line.split("\t")
    if len(fields) != num_columns:
        hint = "a tab inside the text?" if len(fields) > num_columns else "a missing tab?"
        raise UserError(
            f"{path}:{line_number}: {len(fields)} fields but the header has {num_columns} ({hint})"
        )
    return fields
