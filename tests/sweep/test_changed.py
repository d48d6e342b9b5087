"""A study edited after a partial run: its changed jobs are refused or set aside, never
silently mixed into the table."""

import json

import pytest

from t5x_lite import api
from t5x_lite.errors import UserError
from t5x_lite.sweep import runner
from t5x_lite.sweep import study as study_lib
from tests.sweep.test_study import make_study

ROOT = "/repo"


def _ran(study, tmp_path, names=None, finished=True):
    """Record the study's jobs as run (result.json) or started (log.txt) -> runs dir."""
    runs = runner.runs_dir(str(tmp_path), study)
    for job in study_lib.expand(study, runs, ROOT):
        if names is not None and job.name not in names:
            continue
        job_dir = tmp_path / study.name / "runs" / job.name
        job_dir.mkdir(parents=True)
        command = runner.command_line(job, str(job_dir), ROOT)
        if finished:
            (job_dir / "result.json").write_text(json.dumps({"command": command}))
        else:
            (job_dir / "log.txt").write_text(f"$ {command}\nstep 10: ...\n")
    return runs


def test_an_unchanged_study_has_no_changed_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("T5X_LITE_DATA_DIR", str(tmp_path / "data"))
    study = make_study()
    runs = _ran(study, tmp_path)
    assert runner.changed_jobs(study_lib.expand(study, runs, ROOT), runs, ROOT) == {}
    # The same jobs seen from a moved repository and data directory are unchanged.
    monkeypatch.setenv("T5X_LITE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert runner.changed_jobs(study_lib.expand(study, runs, "/moved"), runs, "/moved") == {}


def test_a_changed_row_and_the_cells_of_a_changed_pretraining(tmp_path):
    study = make_study()
    runs = _ran(study, tmp_path)
    rows = (study.rows[0].__class__("random", study.rows[0].config,
            {"finetune.init": "random", "finetune.epochs": 6.0}, pretraining="p"),
            *study.rows[1:])  # fmt: skip
    edited = make_study(rows=rows)
    changed = runner.changed_jobs(study_lib.expand(edited, runs, ROOT), runs, ROOT)
    assert set(changed) == {job.name for job in study_lib.expand(edited, runs, ROOT)
                            if job.row == "random"}  # fmt: skip
    assert all(why == "now --config.finetune.epochs=6.0" for why in changed.values())
    # A pretraining that changed takes every cell started from it along.
    pretraining = study.pretrainings["p"].__class__(
        "gin_configs/pretrain.py:gpt_tiny", {"train.num_steps": 8}
    )
    edited = make_study(pretrainings={"p": pretraining})
    jobs = study_lib.expand(edited, runs, ROOT)
    changed = runner.changed_jobs(jobs, runs, ROOT)
    expected = {job.name for job in jobs if job.kind == "train" or job.depends_on}
    assert set(changed) == expected
    assert "now --config.train.num_steps=8 was --config.train.num_steps=7" in changed.values()


def test_a_started_job_counts_and_a_job_never_run_does_not(tmp_path):
    study = make_study()
    jobs = study_lib.expand(study, runner.runs_dir(str(tmp_path), study), ROOT)
    started = jobs[-1].name
    runs = _ran(study, tmp_path, names={started}, finished=False)
    edited = make_study(finetune_seeds=(10, 11, 99))
    changed = runner.changed_jobs(study_lib.expand(edited, runs, ROOT), runs, ROOT)
    assert set(changed) == {started}  # the last replicate's seed: 12 -> 99


def test_refused_then_set_aside(tmp_path):
    study = make_study(preset="cpu")
    runs = _ran(study, tmp_path)
    edited = make_study(preset="cpu", finetune_seeds=(10, 11, 99))
    with pytest.raises(UserError, match=r"job\(s\) in .* ran with other settings than s:cpu "
                       r"now gives \(e.g. .*: now --config.seed=99 was --config.seed=12\); "
                       r"add --rerun_changed"):  # fmt: skip
        runner.check_unchanged(edited, str(tmp_path), ROOT)
    lines = []
    runner.check_unchanged(edited, str(tmp_path), ROOT, rerun_changed=True, log=lines.append)
    assert lines and lines[0].startswith("set aside ")
    moved = sorted(p.name for p in (tmp_path / "s" / "runs").iterdir() if ".changed-" in p.name)
    assert moved and all(name.endswith(".changed-1") for name in moved)
    runner.check_unchanged(edited, str(tmp_path), ROOT)  # nothing left to refuse
    assert runs


def test_the_cli_refuses_an_edited_study_before_running_anything(tmp_path):
    study_file = tmp_path / "exp" / "tiny.py"
    study_file.parent.mkdir()
    text = (
        "from t5x_lite.sweep import Column, Row, Study\n"
        "PRESETS = ('cpu',)\n"
        "def get_study(preset):\n"
        "    return Study(name='tiny', title='T', rows=(Row('a', 'x.py:v', {'k': EPOCHS}, "
        "baseline='a'),), columns=(Column('c', {}),), finetune_seeds=(0,))\n"
    )
    study_file.write_text("EPOCHS = 3\n" + text)
    spec, workdir = f"{study_file}:cpu", str(tmp_path / "w")
    study = study_lib.load(spec)
    _ran(study, tmp_path / "w")
    study_file.write_text("EPOCHS = 6\n" + text)
    with pytest.raises(UserError, match="now --config.k=6 was --config.k=3"):
        api.sweep(spec, workdir, aggregate_only=True)
