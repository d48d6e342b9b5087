"""The fault battery: damaged checkpoints, a torn metrics line, two trainers, NaN, full
and unwritable disks. Each ends in a one-line UserError or a recovery whose result is
identical to an uninterrupted run.

One tiny GPT run (6 steps, checkpoints at 2, 4 and 6) is trained once per module; each
test damages a copy of it and resumes.
"""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from t5x_lite.errors import Interrupted, UserError
from t5x_lite.train import checkpoints, trainer
from t5x_lite.train import metrics as metrics_lib
from t5x_lite.train import workdir as workdir_lib
from tests.train.test_trainer import tiny_config

RUN = {"train.num_steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [
        f"line {i}: the {w} fox jumps over the lazy dog {i % 7}"
        for i, w in enumerate(["quick", "slow", "red", "brown", "small", "tall"] * 10)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus):
    """The uninterrupted run: its workdir (copied by each test) and its result."""
    workdir = str(tmp_path_factory.mktemp("straight") / "run")
    return workdir, trainer.train(tiny_config(corpus, **RUN), workdir)


@pytest.fixture
def copy(tmp_path, straight):
    workdir = str(tmp_path / "run")
    shutil.copytree(straight[0], workdir)
    return workdir


def _losses(history):
    return [(r["step"], r["train/lm/loss"]) for r in history if "train/lm/loss" in r]


def _assert_same_params(a, b):
    same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert all(jax.tree.leaves(same))


def _assert_resumed_like_straight(result, straight_result, first: int):
    assert _losses(result.history) == [x for x in _losses(straight_result.history) if x[0] > first]
    _assert_same_params(result.state.params, straight_result.state.params)
    assert int(result.state.step) == 6


def _largest_array_file(step_dir: str) -> str:
    return max(glob.glob(f"{step_dir}/state/ocdbt.process_0/d/*"), key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "truncated array file": (lambda s: _truncate(_largest_array_file(s)), "Exception"),
    "missing state item": (lambda s: shutil.rmtree(f"{s}/state"), "state/ is missing"),
    "empty _METADATA": (lambda s: open(f"{s}/state/_METADATA", "w").close(), "empty"),
    "garbled data state": (
        lambda s: open(f"{s}/data/metadata", "w").write('{"0": {"parent": '),
        "data/metadata is not valid JSON",
    ),
    "data state of another pipeline": (
        lambda s: open(f"{s}/data/metadata", "w").write('{"0": {"foo": 1}}'),
        "KeyError",
    ),
    "garbled config item": (
        lambda s: open(f"{s}/config/metadata", "w").write("\x00\x01"),
        "config/metadata is not valid JSON",
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_latest_step_is_set_aside_and_the_previous_resumes(
    kind, copy, straight, corpus, capsys
):
    damage, why = DAMAGE[kind]
    damage(f"{copy}/checkpoints/6")
    # A resume from step 4 logged steps 5 and 6 before: they come again, once each.
    result = trainer.train(tiny_config(corpus, **RUN), copy)
    _assert_resumed_like_straight(result, straight[1], first=4)
    err = capsys.readouterr()
    (warning,) = [line for line in err.err.splitlines() if line.startswith("warning:")]
    assert "checkpoint step 6 is damaged" in warning and why in warning, warning
    assert "resuming from step 4" in err.out
    assert sorted(os.listdir(f"{copy}/checkpoints")) == ["2", "4", "6", "6.damaged"]
    steps = [row["step"] for row in metrics_lib.read_rows(f"{copy}/metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_no_intact_step_is_one_error_and_stays_one(copy, corpus):
    for step in (2, 4, 6):
        open(f"{copy}/checkpoints/{step}/state/_METADATA", "w").close()
    config_before = open(f"{copy}/config.json").read()
    for _ in range(2):  # the steps moved aside do not make the rerun start over
        with pytest.raises(UserError, match="no intact checkpoint .*remove the damaged"):
            trainer.train(tiny_config(corpus, **RUN), copy)
    assert open(f"{copy}/config.json").read() == config_before


def test_generate_passes_over_a_damaged_step_without_moving_it(copy, capsys):
    from t5x_lite.downstream import restore

    open(f"{copy}/checkpoints/6/state/_METADATA", "w").close()
    restored = restore.restore(copy)
    assert restored.step == 4
    assert "checkpoint step 6 is damaged" in capsys.readouterr().err
    assert sorted(os.listdir(f"{copy}/checkpoints")) == ["2", "4", "6"]


def test_torn_metrics_line_is_skipped_and_repaired(copy, corpus):
    with open(f"{copy}/metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/lm/lo')  # a crash in the middle of a write
    assert [r["step"] for r in metrics_lib.read_rows(f"{copy}/metrics.jsonl")][-1] == 6
    trainer.train(tiny_config(corpus, **{**RUN, "train.num_steps": 8}), copy)
    lines = open(f"{copy}/metrics.jsonl").read().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 9))


def test_requested_stop_saves_and_resumes_identically(tmp_path, corpus, straight, monkeypatch):
    workdir = str(tmp_path / "run")
    monkeypatch.setattr(trainer, "_stop_agreed", lambda stop, step, every: step == 3)
    with pytest.raises(Interrupted) as stopped:
        trainer.train(tiny_config(corpus, **RUN), workdir)
    message = str(stopped.value)
    assert message == "stopped at step 3; checkpoint saved; rerun the same command to resume"
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["2", "3"]
    monkeypatch.undo()
    _assert_resumed_like_straight(
        trainer.train(tiny_config(corpus, **RUN), workdir), straight[1], first=3
    )


def test_refused_resume_keeps_config_json(copy, corpus):
    before = open(f"{copy}/config.json").read()
    with pytest.raises(UserError, match="model.d_model: 32 -> 48"):
        trainer.train(tiny_config(corpus, **{**RUN, "model.d_model": 48}), copy)
    with pytest.raises(UserError, match="model.arch: 'decoder_only' -> 'encoder_only'"):
        trainer.train(tiny_config(corpus, "bert_tiny", **RUN), copy)
    assert open(f"{copy}/config.json").read() == before
    assert not os.path.exists(f"{copy}/{workdir_lib.LOCK_FILE}")  # released


def test_a_second_trainer_is_refused_before_writing(tmp_path, corpus):
    workdir = tmp_path / "run"
    workdir.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"host": os.uname().nodename, "pid": other.pid,
                "started": workdir_lib.process_start_time(other.pid)}  # fmt: skip
        (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(UserError, match=f"in use by another trainer \\(pid {other.pid}"):
            trainer.train(tiny_config(corpus, **RUN), str(workdir))
    finally:
        other.kill()
        other.wait()
    assert os.listdir(workdir) == [workdir_lib.LOCK_FILE]  # nothing written


@pytest.mark.parametrize("policy", ["stop", "skip_step"])
def test_non_finite_loss(tmp_path, corpus, policy):
    workdir = str(tmp_path / "run")
    overrides = {
        **RUN,
        "optimizer.learning_rate": 1e6,
        "optimizer.warmup_steps": 0,
        "optimizer.schedule": "constant",
        "train.log_every": 3,
        "train.nan_policy": policy,
    }
    config = tiny_config(corpus, **overrides)
    if policy == "stop":
        with pytest.raises(UserError) as stopped:
            trainer.train(config, workdir)
        message = str(stopped.value)
        assert "not finite" in message and "config.optimizer.learning_rate" in message
        bad_step = int(message.split("at step ")[1].split(";")[0])
        good = [int(n) for n in os.listdir(f"{workdir}/checkpoints") if n.isdigit()]
        assert all(step < bad_step for step in good)
        if good:  # the last good checkpoint restores, finite
            from t5x_lite.downstream import restore

            restored = restore.restore(workdir)
            assert restored.step == max(good)
            leaves = jax.tree.leaves(restored.params)
            assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    else:
        result = trainer.train(config, workdir)
        skipped = sum(r.get("train/skipped_steps", 0) for r in result.history)
        assert skipped >= 1
        leaves = jax.tree.leaves(result.state.params)
        assert all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_full_disk_during_a_save_stops_training(tmp_path, corpus, monkeypatch):
    def no_space(self, step, items):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.Checkpointer, "_write", no_space)
    workdir = str(tmp_path / "run")
    with pytest.raises(UserError, match="saving checkpoint step 2 failed.*no space left") as e:
        trainer.train(tiny_config(corpus, **RUN), workdir)
    assert "\n" not in str(e.value)
    steps = [r["step"] for r in metrics_lib.read_rows(f"{workdir}/metrics.jsonl")]
    assert steps == [1, 2]  # nothing trained past the failed save


def test_full_disk_for_metrics_is_one_line(tmp_path, corpus, monkeypatch):
    def no_space(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics_lib.AppendedLines, "write", no_space)
    with pytest.raises(UserError, match="no space left on the disk of --workdir"):
        trainer.train(tiny_config(corpus, **RUN), str(tmp_path / "run"))


def test_workdir_that_is_a_file_or_unwritable(tmp_path, corpus, monkeypatch):
    afile = tmp_path / "file"
    afile.write_text("not a run")
    with pytest.raises(UserError, match="is a file, not a directory"):
        trainer.train(tiny_config(corpus, **RUN), str(afile))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(workdir_lib.os, "open", denied)
    with pytest.raises(UserError, match="is not writable \\(Permission denied\\)"):
        trainer.train(tiny_config(corpus, **RUN), str(tmp_path / "ro"))


def test_bad_config_fails_before_the_workdir_is_made(tmp_path, corpus):
    for key, value in [("train.log_every", 0), ("train.keep_checkpoints", 0),
                       ("optimizer.learning_rate", -1e-3), ("train.num_steps", -5)]:  # fmt: skip
        with pytest.raises(UserError, match=f"config.{key}="):
            trainer.train(tiny_config(corpus, **{key: value}), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")
