"""GLUE-format TSV tasks: exact examples from hand-made files, and one-line errors."""

import os

import ml_collections
import numpy as np
import pytest

from t5x_lite.data import labelled
from t5x_lite.data.labelled import TaskExample
from t5x_lite.errors import UserError


def _write(tmp_path, content, name="train.tsv") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def _config(
    path, *, kind="classification", labels=("0", "1"), sample_seed=0, **split
) -> ml_collections.ConfigDict:
    columns = {
        "text_a": "sentence",
        "text_b": "",
        "label": "label",
        "target": "",
        "max_examples": 0,
    }
    columns.update(split)
    return ml_collections.ConfigDict(
        {
            "kind": kind,
            "labels": labels,
            "sample_seed": sample_seed,
            "train": {"path": path, **columns},
            "eval": {"path": path, **columns},
        }
    )


def _error(config, split="train") -> str:
    with pytest.raises(UserError) as info:
        labelled.load_split(config, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_single_sentence_classification(tmp_path):
    path = _write(tmp_path, "label\tsentence\n1\t  a  fine  film \n0\tdull .\n\n\n")
    assert labelled.load_split(_config(path), "eval") == [
        TaskExample(text_a="  a  fine  film ", text_b=None, label=1, target="", line=2),
        TaskExample(text_a="dull .", text_b=None, label=0, target="", line=3),
    ]


def test_pair_classification_with_crlf_endings(tmp_path):
    content = (
        "premise\thypothesis\tlabel\r\n"
        "A dog runs.\tAn animal moves.\tentailment\r\n"
        "A dog runs.\tA cat sleeps.\tcontradiction\r\n"
        "A dog runs.\tIt is sunny.\tneutral\r\n"
    )
    config = _config(
        _write(tmp_path, content),
        labels=("entailment", "neutral", "contradiction"),
        text_a="premise",
        text_b="hypothesis",
    )
    assert labelled.load_split(config, "train") == [
        TaskExample("A dog runs.", "An animal moves.", 0, "", 2),
        TaskExample("A dog runs.", "A cat sleeps.", 2, "", 3),
        TaskExample("A dog runs.", "It is sunny.", 1, "", 4),
    ]


def test_max_examples_draws_a_seeded_sample_in_file_order(tmp_path):
    # Sorted by label, as some exports are: the first 50 rows hold label 0 only.
    rows = [f"{label}\tsentence {i}" for i, label in enumerate([0] * 50 + [1] * 50)]
    path = _write(tmp_path, "label\tsentence\n" + "\n".join(rows) + "\n")
    examples = labelled.load_split(_config(path, max_examples=20), "train")
    lines = [example.line for example in examples]
    # The rows numpy's generator with seed 0 draws, sorted: both labels, no repeats.
    expected = labelled.sample_rows(100, 20, 0) + 2
    assert lines == expected.tolist() == sorted(set(lines)) and len(lines) == 20
    assert {example.label for example in examples} == {0, 1}
    for example in examples:
        assert example.text_a == f"sentence {example.line - 2}"
    again = labelled.load_split(_config(path, max_examples=20), "train")
    assert [example.line for example in again] == lines  # the same rows every time
    other = labelled.load_split(_config(path, max_examples=20, sample_seed=1), "train")
    assert [example.line for example in other] != lines
    assert len(labelled.load_split(_config(path, max_examples=100), "train")) == 100
    assert len(labelled.load_split(_config(path, max_examples=500), "train")) == 100


def test_sample_rows_by_hand():
    assert labelled.sample_rows(3, 0, 0).tolist() == [0, 1, 2]  # 0 = every row
    assert labelled.sample_rows(3, 3, 0).tolist() == [0, 1, 2]
    picked = labelled.sample_rows(10, 4, 7)
    assert picked.tolist() == sorted(picked.tolist()) and len(set(picked.tolist())) == 4
    assert picked.tolist() == sorted(np.random.default_rng(7).choice(10, 4, replace=False).tolist())


def test_text_to_text(tmp_path):
    path = _write(tmp_path, "id\tquestion\tanswer\n7\tCapital of France?\tParis\n")
    config = _config(path, kind="text_to_text", labels=(), text_a="question", target="answer")
    assert labelled.load_split(config, "train") == [
        TaskExample("Capital of France?", None, -1, "Paris", 2)
    ]


def test_plain_dict_config(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\nok\t1\n")
    config = _config(path).to_dict()
    assert labelled.load_split(config, "train") == [TaskExample("ok", None, 1, "", 2)]


def test_real_sst2_dev(shared_data_dir):
    path = os.path.join(shared_data_dir, "sst2", "dev.tsv")
    examples = labelled.load_split(_config(path, text_a="content"), "eval")
    assert len(examples) == 872
    assert sum(example.label == 1 for example in examples) == 444
    assert examples[0] == TaskExample("one long string of cliches .", None, 0, "", 2)


def test_missing_file_and_directory(tmp_path):
    missing = str(tmp_path / "nope.tsv")
    assert _error(_config(missing)) == f"config.task.train.path: {missing} does not exist"
    assert _error(_config(str(tmp_path))) == (
        f"config.task.train.path: {tmp_path} is a directory; point it at a TSV file"
    )


def test_empty_file_and_header_only(tmp_path):
    empty = _write(tmp_path, "\n\n", "empty.tsv")
    assert _error(_config(empty)).startswith(f"{empty} is empty")
    header_only = _write(tmp_path, "label\tsentence\n", "header.tsv")
    assert _error(_config(header_only)).startswith(f"{header_only}: no examples")


def test_broken_utf8_reports_the_line(tmp_path):
    path = _write(tmp_path, b"label\tsentence\n0\tfine\n1\tbad \xff byte\n")
    assert _error(_config(path)).startswith(f"{path}:3: invalid UTF-8")


def test_missing_column(tmp_path):
    path = _write(tmp_path, "label\tcontent\n0\tx\n")
    assert _error(_config(path)) == (
        f"{path}: no column 'sentence' (columns: label, content); set config.task.train.text_a"
    )
    message = _error(_config(path, text_a="content", text_b="hypothesis"))
    assert message.endswith("set config.task.train.text_b")


def test_wrong_number_of_fields(tmp_path):
    path = _write(tmp_path, "label\tsentence\n0\tfine\n1\ta\ttab\n")
    assert _error(_config(path)) == (
        f"{path}:3: 3 fields but the header has 2 (a tab inside the text?)"
    )
    path = _write(tmp_path, "label\tsentence\n0\n", "short.tsv")
    assert _error(_config(path)) == f"{path}:2: 1 fields but the header has 2 (a missing tab?)"


def test_blank_line_between_rows(tmp_path):
    path = _write(tmp_path, "label\tsentence\n0\tone\n\n1\ttwo\n")
    assert _error(_config(path)).startswith(f"{path}:3: blank line between rows")


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tmp_path, text):
    path = _write(tmp_path, f"label\tsentence\n0\tok\n1\t{text}\n")
    assert _error(_config(path)) == f"{path}:3: empty text in column 'sentence'"


def test_empty_second_text_and_target(tmp_path):
    path = _write(tmp_path, "a\tb\tlabel\nx\t \t0\n")
    assert _error(_config(path, text_a="a", text_b="b")) == f"{path}:2: empty text in column 'b'"
    path = _write(tmp_path, "q\tanswer\nx\t\n", "t2t.tsv")
    config = _config(path, kind="text_to_text", text_a="q", target="answer")
    assert _error(config) == f"{path}:2: empty text in column 'answer'"


def test_label_not_in_labels(tmp_path):
    path = _write(tmp_path, "label\tsentence\n0\tok\n2\tbad\n")
    assert _error(_config(path)) == (
        f"{path}:3: label '2' is not one of config.task.labels ('0', '1')"
    )
    path = _write(tmp_path, "label\tsentence\n1 \tok\n", "space.tsv")
    assert "label '1 ' is not one of" in _error(_config(path))


def test_bad_task_config(tmp_path):
    path = _write(tmp_path, "label\tsentence\n0\tok\n")
    assert _error(_config(path, kind="regression")).startswith(
        "config.task.kind: unknown kind 'regression'; set it to one of"
    )
    assert _error(_config(path, labels=())).startswith("config.task.labels is empty")
    assert _error(_config(path, labels=("0", "1", "0"))) == (
        "config.task.labels has '0' twice; list each label once"
    )
    assert _error(_config(path, labels=(0, 1))).startswith("config.task.labels: 0 is not a string")
    assert _error(_config(path, max_examples=-1)).startswith("config.task.train.max_examples=-1")


def test_unknown_split_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        labelled.load_split(_config(_write(tmp_path, "label\tsentence\n0\tok\n")), "dev")
