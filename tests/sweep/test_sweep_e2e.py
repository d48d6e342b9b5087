"""`t5x-lite sweep` end to end: a 2-row, 2-seed study of a tiny GPT, stopped by Ctrl-C
(SIGINT to the runner) while a fine-tuning job trains, then rerun: the finished jobs are
not run again, the stopped one resumes from its checkpoint, and the tables appear."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = """
import os
from t5x_lite.sweep import Column, Pretraining, Row, Study

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
PRESETS = ("cpu",)
TINY = {"model.num_layers": 1, "model.d_model": 32, "model.d_ff": 64, "model.num_heads": 2,
        "model.head_dim": 16}


def get_study(preset):
    train, dev = os.path.join(DATA, "train.tsv"), os.path.join(DATA, "dev.tsv")
    finetune = "@ROOT@/gin_configs/finetune.py:gpt_tiny_sst2"
    return Study(
        name="tiny",
        title="Tiny",
        pretrainings={"gpt": Pretraining("@ROOT@/gin_configs/pretrain.py:gpt_tiny", {
            "data.train.kind": "tsv", "data.train.path": train, "data.train.column": "sentence",
            "data.heldout_docs": 20, "tokenizer.vocab_size": 400, "objective.seq_len": 32,
            **TINY, "train.num_steps": 3, "train.eval_every": 3, "train.eval_batches": 1,
            "train.progress_bar": False, "sample.max_new_tokens": 0, "data.batch_size": 4,
            "optimizer.warmup_steps": 1})},
        rows=(Row("random", finetune, {"finetune.init": "random"}, pretraining="gpt"),
              Row("pretrained", finetune, pretraining="gpt", baseline="random")),
        columns=(Column("sst2", {"task.train.path": train, "task.eval.path": dev,
                                 "task.eval.text_a": "sentence",
                                 "task.train.max_examples": 64, "finetune.epochs": 250.0,
                                 "train.checkpoint_every": 20, "train.log_every": 100,
                                 "train.progress_bar": False, "data.batch_size": 16}),),
        finetune_seeds=(0, 1),
    )
"""
WORDS = {"1": ["good", "great", "fine", "lovely", "warm"], "0": ["bad", "dull", "poor", "cold"]}


def write_data(directory):
    rng = random.Random(0)
    os.makedirs(directory)
    for name, rows in (("train.tsv", 300), ("dev.tsv", 40)):
        lines = ["label\tsentence"]
        for _ in range(rows):
            label = rng.choice("01")
            words = [rng.choice(WORDS[label]), "movie", "and", rng.choice(WORDS[label]), "story"]
            lines.append(f"{label}\t{' '.join(words)}")
        with open(os.path.join(directory, name), "w") as f:
            f.write("\n".join(lines) + "\n")


def _default_sigint() -> None:
    """The runner under test must see the Ctrl-C the test sends, whatever SIGINT
    disposition the test process hands down (a process that inherits SIGINT ignored keeps
    it ignored under Python: a non-interactive shell's background job, or an earlier
    test's leftover). Twice in full `make test-e2e` runs under xdist the runner never
    reacted to the signal; the inherited disposition is the suspected cause, unproven."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sweep(args, **kwargs):
    command = [sys.executable, "-m", "t5x_lite.main", "sweep", *args]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_default_sigint, **kwargs,
    )  # fmt: skip


def test_sweep_stops_on_ctrl_c_and_resumes_without_rerunning(tmp_path):
    write_data(tmp_path / "data")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tiny.py").write_text(STUDY.replace("@ROOT@", ROOT))
    spec = f"--sweep={tmp_path}/experiments/tiny.py:cpu"
    workdir = tmp_path / "sweeps"
    runs = workdir / "tiny" / "runs"
    args = [spec, f"--workdir={workdir}", "--jobs=1"]

    printed = sweep([*args, "--print_commands"]).communicate(timeout=120)[0]
    commands = [line for line in printed.splitlines() if line.startswith("t5x-lite ")]
    assert len(commands) == 5 and commands[0].startswith("t5x-lite train ")

    first = sweep(args)
    stopped, finished_before = None, {}
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None:
        done = {p.parent.name: p.stat().st_mtime for p in runs.glob("*--*/result.json")}
        training = [
            p.parent.parent.name
            for p in runs.glob("*--*/checkpoints/[0-9]*")
            if p.parent.parent.name not in done
        ]
        if done and training:
            first.send_signal(signal.SIGINT)
            stopped, finished_before = training[0], done
            break
        time.sleep(0.05)
    output = first.communicate(timeout=300)[0]
    assert stopped, f"no job was caught training:\n{output}"
    assert first.returncode == 130, output
    assert "rerun the same command to resume" in output
    assert not (runs / stopped / "result.json").exists()

    second = sweep(args)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    # Finished jobs were not touched; the stopped one resumed from its checkpoint.
    for name, mtime in finished_before.items():
        assert (runs / name / "result.json").stat().st_mtime == mtime
        assert (runs / name / "log.txt").read_text().count("$ t5x-lite ") == 1
    log = (runs / stopped / "log.txt").read_text()
    assert log.startswith("$ t5x-lite finetune ") and log.count("$ t5x-lite ") == 2
    assert "resuming from step" in log
    for job in ("random--sst2--r0", "random--sst2--r1", "pretrained--sst2--r0",
                "pretrained--sst2--r1"):  # fmt: skip
        result = json.loads((runs / job / "result.json").read_text())
        assert 0.0 <= result["metrics"]["classifier"]["accuracy"] <= 1.0
    table = (workdir / "tiny" / "table.md").read_text()
    assert "± " in table and "(n=2)" in table
    provenance = json.loads((workdir / "tiny" / "provenance.json").read_text())
    assert len(provenance["jobs"]) == 5

    again = sweep([*args, "--aggregate_only"])
    assert again.wait(timeout=120) == 0
