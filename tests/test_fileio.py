"""t5x_lite.fileio on a local directory and on an in-memory gs:// bucket: the same
calls give the same results on both, local writes are atomic, and a missing backend or
an unknown scheme is a one-line UserError."""

import os

import pytest
from etils.epath import gpath

from t5x_lite import fileio
from t5x_lite.errors import UserError

from .conftest import MemoryBucket


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path) -> str:
    """A directory on each backend: a local tmp dir, or a prefix of the memory bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("memory_gcs") + "/root"


def _tree(root: str) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `root`."""
    files = {}
    for name in fileio.listdir(root):
        path = fileio.join(root, name)
        if fileio.isdir(path):
            files |= {f"{name}/{key}": value for key, value in _tree(path).items()}
        else:
            files[name] = fileio.read_bytes(path)
    return files


def test_path_strings_keep_urls_intact():
    assert fileio.is_url("gs://bucket/run") and fileio.is_url("s3://b/k")
    assert not fileio.is_url("runs/x") and not fileio.is_url("/abs/gs://odd")
    assert fileio.join("gs://bucket", "run", "config.json") == "gs://bucket/run/config.json"
    assert fileio.join("runs", "x") == os.path.join("runs", "x")
    assert fileio.absolute("gs://bucket/run") == "gs://bucket/run"
    assert os.path.abspath("gs://bucket/run") != "gs://bucket/run"  # what absolute avoids
    assert fileio.absolute("runs/x") == os.path.abspath("runs/x")


def test_write_read_and_queries(root):
    run = fileio.join(root, "run")
    config, weights = fileio.join(run, "config.json"), fileio.join(run, "sub", "w.bin")
    assert not fileio.exists(run) and not fileio.isdir(run)
    fileio.makedirs(fileio.join(run, "sub"))
    fileio.write_text(config, '{"a": "\u00e9"}\r\n')
    fileio.write_bytes(weights, bytes(range(256)))

    assert fileio.read_text(config) == '{"a": "\u00e9"}\r\n'  # line endings as written
    assert fileio.read_bytes(weights) == bytes(range(256))
    assert fileio.read_head(weights, 4) == b"\x00\x01\x02\x03"
    assert fileio.read_head(config, 1000) == '{"a": "\u00e9"}\r\n'.encode()
    assert sorted(fileio.listdir(run)) == ["config.json", "sub"]
    assert fileio.isdir(run) and fileio.isdir(fileio.join(run, "sub"))
    assert fileio.isfile(config) and not fileio.isfile(fileio.join(run, "sub"))
    assert not fileio.isdir(config) and not fileio.exists(fileio.join(run, "missing"))
    assert fileio.files_equal(config, config) and not fileio.files_equal(config, weights)
    assert fileio.modified_ns(config) >= 0

    fileio.write_text(config, "replaced")
    assert fileio.read_text(config) == "replaced"
    assert sorted(fileio.listdir(run)) == ["config.json", "sub"]  # no temporary file left


def test_local_write_is_atomic(tmp_path, monkeypatch):
    """A crash between writing and renaming leaves the old file whole."""
    path = str(tmp_path / "heads.json")
    fileio.write_text(path, "old")

    def crash(source, target):
        raise OSError("crashed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="crashed"):
        fileio.write_text(path, "new")
    assert (tmp_path / "heads.json").read_text() == "old"


def test_append_is_local_only(tmp_path, memory_gcs):
    path = str(tmp_path / "metrics.jsonl")
    for line in ("a\n", "b\n"):
        with fileio.open_for_append(path) as f:
            f.write(line)
    assert fileio.read_text(path) == "a\nb\n"
    with pytest.raises(ValueError, match="cannot append"):
        fileio.open_for_append(f"{memory_gcs}/metrics.jsonl")


def test_bucket_has_no_directories_of_its_own(memory_gcs):
    """As on GCS: makedirs leaves no trace; a prefix exists once it holds an object."""
    run = f"{memory_gcs}/run"
    fileio.makedirs(run)
    assert not fileio.exists(run)
    fileio.write_text(f"{run}/config.json", "{}")
    assert fileio.isdir(run) and fileio.listdir(run) == ["config.json"]


@pytest.mark.parametrize(
    "source_kind, target_kind", [("local", "gs"), ("gs", "gs"), ("gs", "local")]
)
def test_copy_file_and_tree_between_backends(tmp_path, memory_gcs, source_kind, target_kind):
    roots = {"local": str(tmp_path), "gs": memory_gcs}
    source = fileio.join(roots[source_kind], "source")
    files = {"tokenizer.json": b'{"v": 1}', "a/b/vocab.txt": b"[PAD]\n[UNK]\n", "a/x": b"\xff"}
    for name, data in files.items():
        fileio.makedirs(os.path.dirname(fileio.join(source, name)))
        fileio.write_bytes(fileio.join(source, name), data)

    target = fileio.join(roots[target_kind], "copies", "tree")
    fileio.copy_tree(source, target)
    assert _tree(target) == files
    copied = fileio.join(roots[target_kind], "copies", "one.json")
    fileio.copy_file(fileio.join(source, "tokenizer.json"), copied)
    assert fileio.read_bytes(copied) == b'{"v": 1}'
    assert sorted(fileio.listdir(fileio.join(roots[target_kind], "copies"))) == [
        "one.json",
        "tree",
    ]

    fileio.remove_tree(target)
    assert not fileio.exists(target) and fileio.exists(copied)
    fileio.remove_tree(target)  # nothing there: nothing to do


def test_staged_directory_publishes_all_or_nothing(root):
    target = fileio.join(root, "export")
    failing = pytest.raises(RuntimeError, match="exporter failed")
    with failing, fileio.staged_directory(target) as staging:
        fileio.write_text(os.path.join(staging, "config.json"), "{}")
        raise RuntimeError("exporter failed")
    assert not fileio.exists(target)
    if not fileio.is_url(root):  # and no staging directory left beside it
        assert not os.path.exists(root) or os.listdir(root) == []

    with fileio.staged_directory(target) as staging:
        assert not fileio.is_url(staging)  # libraries that write local files can fill it
        fileio.write_text(os.path.join(staging, "config.json"), "{}")
        os.makedirs(os.path.join(staging, "tokenizer"))
        fileio.write_text(os.path.join(staging, "tokenizer", "format.json"), "[]")
    assert _tree(target) == {"config.json": b"{}", "tokenizer/format.json": b"[]"}
    assert fileio.listdir(root) == ["export"]


class _NoBackend(MemoryBucket):
    """gs:// as it is without gcsfs: fsspec cannot find the filesystem."""

    def fs(self, path):
        raise ImportError("Please install gcsfs to access Google Storage")


def test_missing_backend_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", _NoBackend())
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    message = "gs://bucket/run/config.json: gs:// paths need gcsfs; pip install gcsfs"
    with pytest.raises(UserError) as error:
        fileio.write_text("gs://bucket/run/config.json", "{}")
    assert str(error.value) == message
    (tmp_path / "tokenizer.model").write_bytes(b"model")
    with pytest.raises(UserError, match="^gs://bucket/tok.model: gs:// paths need gcsfs"):
        fileio.copy_file(str(tmp_path / "tokenizer.model"), "gs://bucket/tok.model")
    with pytest.raises(
        UserError, match="hdfs:// paths are not supported; use a local path or gs://"
    ):
        fileio.exists("hdfs://namenode/run")
