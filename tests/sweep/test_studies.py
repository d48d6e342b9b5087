"""Every study in experiments/ loads in each preset, every job it expands to is a config
that loads (each override names a real key with a valid value), the CPU presets can
resolve a difference, and the paper presets' pretraining runs pass `--dry_run`."""

import glob
import os

import pytest

from t5x_lite import api
from t5x_lite.config import import_file
from t5x_lite.sweep import stats
from t5x_lite.sweep import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDIES = sorted(
    path
    for path in glob.glob(os.path.join(ROOT, "experiments", "*.py"))
    if "def get_study" in open(path).read()
)
NAMES = [os.path.basename(path)[:-3] for path in STUDIES]
PRESETS = [(path, preset) for path in STUDIES for preset in import_file(path).PRESETS]


def test_the_issue_studies_exist():
    assert set(NAMES) >= {
        "pretraining_helps", "data_scaling", "t5_objectives", "architectures",
        "t5_corruption", "bert_masking", "in_context",
    }  # fmt: skip


def jobs_of(path, preset):
    study = study_lib.load(f"{path}:{preset}")
    return study, study_lib.expand(study, "/sweep/runs", ROOT)


def test_every_study_has_a_cpu_and_a_paper_preset():
    """Unless it says why not (NO_PAPER_PRESET: a probe of the tiny models' own recipe)."""
    for path in STUDIES:
        module = import_file(path)
        assert "cpu" in module.PRESETS, path
        assert "paper" in module.PRESETS or getattr(module, "NO_PAPER_PRESET", ""), path


@pytest.mark.parametrize(
    "path, preset", PRESETS, ids=[f"{os.path.basename(p)[:-3]}-{s}" for p, s in PRESETS]
)
def test_every_job_is_a_config_that_loads(path, preset):
    study, jobs = jobs_of(path, preset)
    assert study.name == os.path.basename(path)[:-3] and study.preset == preset
    # A study without pretrainings fine-tunes random weights only (a recipe probe).
    assert any(job.kind == "train" for job in jobs) == bool(study.pretrainings)
    for job in jobs:
        config = api.load_config(job.config, list(job.overrides))  # unknown keys raise
        if job.kind == "train":
            assert config.seed == job.seed
            continue
        key = study_lib.CHECKPOINT_KEYS[job.kind]
        checkpoint = config.icl.checkpoint if job.kind == "icl" else config.finetune.checkpoint
        if job.kind == "finetune" and config.finetune.init == "random" and not checkpoint:
            assert not job.depends_on  # random weights, a tokenizer trained on the task
            continue
        assert checkpoint, f"{job.name}: {key} is empty"
        if job.depends_on:
            assert checkpoint.startswith(f"/sweep/runs/{job.depends_on}")


@pytest.mark.parametrize("path", STUDIES, ids=NAMES)
def test_cpu_presets_can_resolve_their_comparisons(path):
    study, jobs = jobs_of(path, "cpu")
    assert len(study.finetune_seeds) >= stats.MIN_PAIRS
    compared = [row for row in study.rows if study.baseline_of(row)]
    assert compared, "a table with no baseline makes no claim"
    assert study.description, "the table says what it asks"
    # Compared rows share their seeds with their baselines: the pairing the tests need.
    for row in compared:
        base = study.baseline_of(row)
        for column in study.columns:
            mine = {
                j.replicate: j.seed for j in jobs if (j.row, j.column) == (row.name, column.name)
            }
            theirs = {j.replicate: j.seed for j in jobs if (j.row, j.column) == (base, column.name)}
            shared = set(mine) & set(theirs)
            assert all(mine[r] == theirs[r] for r in shared)


@pytest.mark.parametrize("path", STUDIES, ids=NAMES)
def test_cpu_presets_read_the_shared_data(path, shared_data_dir, monkeypatch):
    monkeypatch.setenv("T5X_LITE_DATA_DIR", shared_data_dir)
    _, jobs = jobs_of(path, "cpu")
    for job in jobs:
        config = api.load_config(job.config, list(job.overrides))
        files = []
        if job.kind == "train":
            files.append(config.data.train.path)
        else:
            files += [config.task.train.path, config.task.eval.path]
        for file in files:
            assert os.path.isfile(file), f"{job.name}: {file} is missing"


def _paper_pretrainings():
    """One job per distinct model and batch layout among the paper presets' pretrainings
    (the objective's own settings do not change what --dry_run lays out)."""
    shaping = ("model.", "tokenizer.", "data.batch_size", "objective.seq_len")
    distinct = {}
    for path in STUDIES:
        if "paper" not in import_file(path).PRESETS:
            continue
        for job in jobs_of(path, "paper")[1]:
            if job.kind == "train":
                variant = job.config.rsplit(":", 1)[1]
                shape = tuple((k, v) for k, v in job.overrides if k.startswith(shaping))
                distinct.setdefault((variant, shape), job)
    return sorted(distinct.values(), key=lambda job: job.config + str(job.overrides))


PAPER_PRETRAININGS = _paper_pretrainings()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "job", PAPER_PRETRAININGS, ids=[f"{j.config.rsplit(':', 1)[1]}-{i}" for i, j in
                                     enumerate(PAPER_PRETRAININGS)]
)  # fmt: skip
def test_paper_pretrainings_pass_dry_run(job):
    """The published-scale runs fit the config schema, lay out on a mesh and compile:
    what `t5x-lite train ... --dry_run` prints (here on this machine's one CPU device)."""
    report = api.dry_run(api.load_config(job.config, list(job.overrides)))
    assert "compiled train step per device" in report
