"""Document sources: parsing of each kind and one-line errors for every bad input."""

import json

import ml_collections
import pytest

from t5x_lite.data import sources
from t5x_lite.errors import UserError


def source_config(**overrides) -> ml_collections.ConfigDict:
    """A source config with every key present, as the real configs have."""
    cfg = {
        "kind": "text",
        "path": "",
        "column": "",
        "doc_mode": "line",
        "tfds_name": "",
        "split": "",
        "tfds_data_dir": "",
    }
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def assert_one_line_error(cfg, *fragments):
    with pytest.raises(UserError) as error:
        sources.load_source(cfg)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_text_lines(tmp_path):
    path = write(tmp_path, "a.txt", "first doc\n\n   \nsecond\tdoc  \r\nthird\n")
    assert sources.load_source(source_config(path=path)) == ["first doc", "second\tdoc  ", "third"]


def test_text_paragraphs(tmp_path):
    text = "\n\npara one\nstill one\n  \n\n  indented two\n\n\nthree\n"
    path = write(tmp_path, "a.txt", text)
    docs = sources.load_source(source_config(path=path, doc_mode="paragraph"))
    assert docs == ["para one\nstill one", "  indented two", "three"]


def test_tsv_column(tmp_path):
    path = write(tmp_path, "a.tsv", "id\ttext\n1\thello world\n2\tsecond row\n")
    assert sources.load_source(source_config(kind="tsv", path=path, column="text")) == [
        "hello world",
        "second row",
    ]


def test_jsonl_column(tmp_path):
    rows = [{"text": "one", "n": 1}, {"text": "two ü"}]
    path = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert sources.load_source(source_config(kind="jsonl", path=path, column="text")) == [
        "one",
        "two ü",
    ]


def test_pydoc_corpus_is_sorted_paragraphs():
    docs = sources.load_source(source_config(kind="pydoc"))
    assert len(docs) > 1000
    assert all(doc.strip() and "\n\n" not in doc for doc in docs)
    assert docs == sources.load_source(source_config(kind="pydoc"))


def test_file_errors(tmp_path):
    missing = str(tmp_path / "missing.txt")
    assert_one_line_error(source_config(path=missing), missing, "does not exist", "`path`")
    assert_one_line_error(source_config(path=str(tmp_path)), "is a directory", "`path`")
    empty = write(tmp_path, "empty.txt", " \n\n")
    assert_one_line_error(source_config(path=empty), empty, "empty", "`path`")
    bad = write(tmp_path, "bad.txt", b"ok line\nsecond \xff line\n")
    assert_one_line_error(source_config(path=bad), f"{bad}:2", "invalid UTF-8", "offset 15")


def test_unknown_kind_and_doc_mode(tmp_path):
    path = write(tmp_path, "a.txt", "doc\n")
    assert_one_line_error(source_config(kind="csv", path=path), "'csv'", "`kind`")
    assert_one_line_error(source_config(path=path, doc_mode="page"), "'page'", "`doc_mode`")


def test_tsv_errors(tmp_path):
    path = write(tmp_path, "a.tsv", "id\ttext\n1\tfine\n2\t \n")
    assert_one_line_error(
        source_config(kind="tsv", path=path, column="body"), "'body'", "['id', 'text']"
    )
    assert_one_line_error(source_config(kind="tsv", path=path, column="text"), f"{path}:3", "empty")
    ragged = write(tmp_path, "b.tsv", "id\ttext\n1\tfine\n2\tone\textra\n")
    assert_one_line_error(source_config(kind="tsv", path=ragged, column="text"), f"{ragged}:3")
    header_only = write(tmp_path, "c.tsv", "id\ttext\n")
    assert_one_line_error(
        source_config(kind="tsv", path=header_only, column="text"), "no documents"
    )


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ('{"body": "x"}', "no key 'text'"),
        ('["text"]', "no key 'text'"),
        ('{"text": 3}', "not a string"),
        ('{"text": "  "}', "empty"),
    ],
)
def test_jsonl_errors(tmp_path, line, fragment):
    path = write(tmp_path, "a.jsonl", '{"text": "good"}\n' + line + "\n")
    assert_one_line_error(
        source_config(kind="jsonl", path=path, column="text"), f"{path}:2", fragment
    )


def test_split_heldout():
    docs = ["a", "b", "c", "d", "e"]
    train, held = sources.split_heldout(docs, 2)
    assert list(train) == ["a", "b", "c"] and list(held) == ["d", "e"]
    assert held[-1] == "e" and train[1:] == ["b", "c"]
    with pytest.raises(IndexError):
        held[2]
    train, held = sources.split_heldout(docs, 0)
    assert len(train) == 5 and len(held) == 0
    with pytest.raises(UserError, match="leaves none for training"):
        sources.split_heldout(docs, 5)


def test_tfds_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = source_config(kind="tfds", tfds_name="imdb_reviews", split="train", column="text")
    # USE_CODE builds random examples from the dataset's own feature spec: nothing is
    # downloaded and no TensorFlow is needed.
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        docs = sources.load_source(cfg)
        assert len(docs) == 7
        assert all(isinstance(doc, str) and doc for doc in docs)
        assert docs[3] == docs[3]  # random access is repeatable
        train, held = sources.split_heldout(docs, 2)
        assert list(held) == [docs[5], docs[6]]
        assert_one_line_error(
            source_config(**{**cfg.to_dict(), "column": "body"}), "'body'", "label"
        )


def test_tfds_unknown_dataset_is_a_user_error():
    cfg = source_config(kind="tfds", tfds_name="no_such_dataset_xyz", split="train", column="text")
    assert_one_line_error(cfg, "no_such_dataset_xyz", "`tfds_name`")
