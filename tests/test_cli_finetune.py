"""`t5x-lite finetune | eval | generate` on a tiny BERT run, as a user types them: the
model's shapes come from the checkpoint, runs carry their own tokenizer and know which
heads nothing trained, and every scored file keeps its own results."""

import json
import os
import shutil

import numpy as np
import pytest

from t5x_lite.main import main

from .test_cli_downstream import one_line_error, run_cli

pytestmark = pytest.mark.xdist_group("cli_finetune")

WORDS = ["the", "a", "film", "movie", "plot", "was", "is", "very", "quite", "story"]
# Tiny pretraining shapes, given once: fine-tuning must not need them again.
SHAPES = [
    "--config.model.d_model=32",
    "--config.model.num_heads=2",
    "--config.model.head_dim=16",
    "--config.model.d_ff=64",
    "--config.model.num_layers=1",
    "--config.objective.seq_len=32",
    "--config.tokenizer.vocab_size=400",
]


def _rows(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        words = [*rng.choice(WORDS, 5), "great" if label else "awful"]
        rows.append(f"{label}\t{' '.join(words)}")
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_finetune")
    (root / "train.tsv").write_text("\n".join(["label\tsentence", *_rows(200, 0)]) + "\n")
    (root / "dev.tsv").write_text("\n".join(["label\tcontent", *_rows(40, 1)]) + "\n")
    other = root / "other"
    other.mkdir()
    (other / "dev.tsv").write_text("\n".join(["label\tcontent", *_rows(10, 2)]) + "\n")
    pretrained = root / "pretrained"
    status = main(
        [
            "train",
            "--config=gin_configs/pretrain.py:bert_tiny",
            f"--workdir={pretrained}",
            "--config.data.train.kind=tsv",
            f"--config.data.train.path={root / 'train.tsv'}",
            "--config.data.train.column=sentence",
            "--config.data.eval.kind=none",
            "--config.data.batch_size=8",
            "--config.train.num_steps=2",
            "--config.train.progress_bar=false",
            *SHAPES,
        ]
    )
    assert status == 0
    return root


def _finetune(files, workdir, *extra):
    return main(
        [
            "finetune",
            "--config=gin_configs/finetune.py:bert_tiny_sst2",
            f"--workdir={workdir}",
            f"--config.finetune.checkpoint={files / 'pretrained'}",
            f"--config.task.train.path={files / 'train.tsv'}",
            f"--config.task.eval.path={files / 'dev.tsv'}",
            "--config.task.train.max_examples=64",
            "--config.finetune.epochs=1",
            "--config.train.progress_bar=false",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def finetuned(files, tmp_path_factory):
    """A fine-tuned run, whose pretraining run has then been moved away."""
    workdir = tmp_path_factory.mktemp("finetuned") / "run"
    assert _finetune(files, workdir) == 0
    return workdir


def test_finetune_takes_the_shapes_from_the_checkpoint(files, finetuned):
    config = json.loads((finetuned / "config.json").read_text())
    saved = json.loads((files / "pretrained" / "config.json").read_text())
    for key in ("d_model", "d_ff", "num_layers", "vocab_size", "max_len", "head_dim"):
        assert config["model"][key] == saved["model"][key], key
    assert config["finetune"]["checkpoint_format"] == "t5x_lite"
    assert config["objective"]["seq_len"] == 32  # the checkpoint's 32 positions, not 64
    # The recipe for pretrained weights: BERT's, 10% warmup of the 2 steps (64 / 32).
    assert config["optimizer"]["learning_rate"] == 1e-4
    assert (config["train"]["num_steps"], config["optimizer"]["warmup_steps"]) == (2, 1)


def test_finetune_scores_dev_into_its_own_directory(finetuned):
    metrics = json.loads((finetuned / "eval" / "dev" / "metrics.json").read_text())
    assert metrics["scored"]["step"] == 2
    assert metrics["scored"]["num_rows"] == 40
    assert metrics["scored"]["eval_file"].endswith("dev.tsv")
    assert metrics["scored"]["checkpoint"] == str(finetuned)
    assert metrics["truncation"] == {
        "rows": 40,
        "truncated_rows": 0,
        "truncated_share": 0.0,
        "dropped_tokens": 0,
    }
    inputs = json.loads((finetuned / "inputs.json").read_text())
    assert inputs["train"]["rows"] == 64 and inputs["eval"]["rows"] == 40
    rows = (finetuned / "eval" / "dev" / "predictions.tsv").read_text().splitlines()
    assert len(rows) == 41


def test_eval_keeps_each_files_results(files, finetuned, capsys):
    before = (finetuned / "eval" / "dev" / "metrics.json").read_text()
    # Another file with the same stem: its own directory, dev's results untouched.
    result = run_cli(
        capsys, "eval", f"--workdir={finetuned}", f"--config.task.eval.path={files}/other/dev.tsv"
    )
    assert result[0] == 0, result[2]
    assert (finetuned / "eval" / "dev" / "metrics.json").read_text() == before
    other = json.loads((finetuned / "eval" / "dev_2" / "metrics.json").read_text())
    assert other["scored"]["num_rows"] == 10
    assert "(10 rows)" in result[1]
    # The same file again: the same directory, the same numbers (same checkpoint step).
    assert run_cli(capsys, "eval", f"--workdir={finetuned}")[0] == 0
    again = json.loads((finetuned / "eval" / "dev" / "metrics.json").read_text())
    assert again["classifier"] == json.loads(before)["classifier"]


def test_a_finetuned_run_survives_its_checkpoint_moving(files, finetuned, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(finetuned, moved)
    shutil.move(str(files / "pretrained"), str(files / "pretrained_elsewhere"))
    try:
        out_dir = tmp_path / "scores"
        result = run_cli(capsys, "eval", f"--workdir={moved}", f"--output_dir={out_dir}")
        assert result[0] == 0, result[2]
        original = json.loads((finetuned / "eval" / "dev" / "metrics.json").read_text())
        assert (
            json.loads((out_dir / "metrics.json").read_text())["classifier"]
            == (original["classifier"])
        )
    finally:
        shutil.move(str(files / "pretrained_elsewhere"), str(files / "pretrained"))


def test_generate_refuses_a_head_nothing_trained(files, tmp_path, capsys):
    # From random weights, fine-tuning trains the classifier and pooler, never [MASK].
    workdir = tmp_path / "scratch"
    assert _finetune(files, workdir, "--config.finetune.init=random") == 0
    assert json.loads((workdir / "heads.json").read_text())["untrained"] == ["mlm", "nsp"]
    result = run_cli(capsys, "generate", f"--workdir={workdir}", "--prompt=the [MASK] film")
    one_line_error(result, "has no trained mlm head", "--allow_fresh_heads")
    result = run_cli(
        capsys,
        "generate",
        f"--workdir={workdir}",
        "--prompt=the [MASK] film",
        "--allow_fresh_heads",
    )
    assert result[0] == 0 and "[MASK] 1:" in result[1]


def test_finetune_refuses_shapes_that_contradict_the_checkpoint(files, tmp_path, capsys):
    result = run_cli(
        capsys,
        "finetune",
        "--config=gin_configs/finetune.py:bert_tiny_sst2",
        f"--workdir={tmp_path / 'bad'}",
        f"--config.finetune.checkpoint={files / 'pretrained'}",
        "--config.model.d_model=64",
        "--config.model.num_layers=3",
        "--config.finetune.checkpoint_format=auto",
    )
    one_line_error(
        result,
        "(d_model: checkpoint 32, --config.model.d_model=64; "
        "num_layers: checkpoint 1, --config.model.num_layers=3)",
    )
    assert not os.path.exists(tmp_path / "bad" / "config.json")
    result = run_cli(
        capsys,
        "finetune",
        "--config=gin_configs/finetune.py:bert_tiny_sst2",
        f"--workdir={tmp_path / 'bad'}",
        f"--config.finetune.checkpoint={files / 'pretrained'}",
        "--config.finetune.checkpoint_format=hf_bert",
    )
    one_line_error(result, "holds a t5x_lite checkpoint", "checkpoint_format=t5x_lite or auto")


def test_an_exported_classifier_scores_as_its_run(files, finetuned, tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    assert run_cli(capsys, "export", f"--workdir={finetuned}", f"--output={hf_dir}")[0] == 0
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "0", "1": "1"}
    result = run_cli(
        capsys,
        "eval",
        f"--workdir={hf_dir}",
        "--config=gin_configs/finetune.py:bert_tiny_sst2",
        f"--config.task.eval.path={files / 'dev.tsv'}",
        f"--output_dir={tmp_path / 'scores'}",
    )
    assert result[0] == 0, result[2]
    scores = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    original = json.loads((finetuned / "eval" / "dev" / "metrics.json").read_text())
    assert scores["classifier"] == original["classifier"]
    assert scores["scored"]["step"] is None and scores["scored"]["checkpoint"] == str(hf_dir)
    # Export never writes over a directory that holds files.
    one_line_error(
        run_cli(capsys, "export", f"--workdir={finetuned}", f"--output={hf_dir}"),
        "is not empty",
    )
