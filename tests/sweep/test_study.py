"""A study expands into the jobs it declares: shared pretrainings, paired seeds."""

import pytest

from t5x_lite.errors import UserError
from t5x_lite.sweep import Column, Plot, Pretraining, Row, Study
from t5x_lite.sweep import study as study_lib


def make_study(**changes):
    fields = dict(
        name="s",
        title="S",
        pretrainings={"p": Pretraining("gin_configs/pretrain.py:gpt_tiny", {"train.num_steps": 7})},
        rows=(
            Row("random", "gin_configs/finetune.py:gpt_tiny_sst2", {"finetune.init": "random"},
                pretraining="p"),
            Row("ours", "gin_configs/finetune.py:gpt_tiny_sst2", pretraining="p",
                baseline="random"),
            Row("hf", "gin_configs/finetune.py:bert_tiny_sst2", {"finetune.checkpoint": "/m"},
                baseline="hf"),
        ),
        columns=(
            Column("small", {"task.train.max_examples": 100}, x=100),
            Column("early", {"task.train.max_examples": 100}, x=1, checkpoint_step=3),
        ),
        finetune_seeds=(10, 11, 12),
        pretrain_seeds=(0, 1),
    )  # fmt: skip
    fields.update(changes)
    return Study(**fields)


def test_expand_shares_pretrainings_and_pairs_seeds():
    jobs = {job.name: job for job in study_lib.expand(make_study(), "/w/runs", "/repo")}
    # Two pretrainings (seeds 0 and 1), first; 3 rows x 2 columns x 3 replicates.
    names = list(jobs)
    assert names[:2] == ["pre-p-s0", "pre-p-s1"] and len(names) == 2 + 18
    pre = jobs["pre-p-s1"]
    assert pre.kind == "train" and pre.config == "/repo/gin_configs/pretrain.py:gpt_tiny"
    assert pre.overrides == (("train.num_steps", "7"), ("seed", "1"))
    # Replicate 2 uses fine-tuning seed 12 and pretraining seed 0 (2 mod 2), in both rows.
    for row in ("random", "ours"):
        job = jobs[f"{row}--small--r2"]
        assert job.seed == 12 and job.depends_on == "pre-p-s0"
        assert dict(job.overrides)["seed"] == "12"
        assert dict(job.overrides)["finetune.checkpoint"] == "/w/runs/pre-p-s0"
        assert dict(job.overrides)["task.train.max_examples"] == "100"
    assert dict(jobs["random--small--r1"].overrides)["finetune.checkpoint"] == "/w/runs/pre-p-s1"
    # A column may start from an earlier checkpoint of the pretraining run.
    early = dict(jobs["ours--early--r1"].overrides)
    assert early["finetune.checkpoint"] == "/w/runs/pre-p-s1/checkpoints/3"
    # A row with no pretraining keeps its own checkpoint and depends on nothing.
    hf = jobs["hf--small--r0"]
    assert hf.depends_on == "" and dict(hf.overrides)["finetune.checkpoint"] == "/m"


def test_cell_overrides_follow_the_column():
    t5 = Row("t5", "gin_configs/finetune.py:t5_tiny_sst2",
             cell_overrides={"small": {"objective.inputs_length": 128}})  # fmt: skip
    jobs = {j.name: j for j in study_lib.expand(make_study(rows=(t5,)), "/w/runs", "/repo")}
    small, early = dict(jobs["t5--small--r0"].overrides), dict(jobs["t5--early--r0"].overrides)
    assert small["objective.inputs_length"] == "128" and small["task.train.max_examples"] == "100"
    assert "objective.inputs_length" not in early
    # A row may run only some columns.
    only = Row("only", "gin_configs/finetune.py:t5_tiny_sst2", columns=("early",))
    names = [j.name for j in study_lib.expand(make_study(rows=(only,)), "/w/runs", "/repo")]
    assert names == ["only--early--r0", "only--early--r1", "only--early--r2"]


def test_baselines_and_values():
    study = make_study(baseline="random")
    assert study.baseline_of(study.row("ours")) == "random"
    assert study.baseline_of(study.row("random")) == ""  # itself: no comparison
    assert study.baseline_of(study.row("hf")) == ""  # baseline="hf": none
    assert study_lib.override_text(True) == "true" and study_lib.override_text((0, 1)) == "(0, 1)"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(rows=()), "must be non-empty"),
        (dict(columns=(Column("a b"),)), "may hold only"),
        (dict(columns=(Column("a"), Column("a"))), "share a name"),
        (dict(finetune_seeds=(1, 1)), "repeat a seed"),
        (dict(rows=(Row("r", "x.py:v", pretraining="nope"),)), "unknown pretraining 'nope'"),
        (dict(rows=(Row("r", "x.py:v", baseline="nope"),)), "unknown row 'nope'"),
        (dict(rows=(Row("r", "x.py:v", kind="train"),)), "kind 'train'"),
        (dict(rows=(Row("r", "x.py:v", cell_overrides={"nope": {}}),)), "unknown columns"),
        (dict(rows=(Row("r", "x.py:v", columns=("nope",)),)), "unknown columns"),
        (dict(plots=(Plot("p", "x", columns=("nope",)),)), "unknown columns"),
        (dict(plots=(Plot("p", "x"),), columns=(Column("c"),)), "needs an x"),
    ],
)
def test_validation_names_the_mistake(changes, message):
    with pytest.raises(UserError, match=message):
        make_study(**changes).validate()


def test_load_checks_the_file_and_preset(tmp_path):
    path = tmp_path / "study.py"
    path.write_text(
        "from t5x_lite.sweep import Column, Row, Study\n"
        "PRESETS = ('cpu', 'paper')\n"
        "def get_study(preset):\n"
        "    return Study('s', 'S', (Row('r', 'x.py:v'),), (Column('c'),), (0,))\n"
    )
    assert study_lib.load(f"{path}:paper").preset == "paper"
    assert study_lib.load(str(path)).preset == "cpu"  # the first preset
    with pytest.raises(UserError, match="unknown preset 'gpu'; choose from cpu, paper"):
        study_lib.load(f"{path}:gpu")
    with pytest.raises(UserError, match="give a study file"):
        study_lib.load("experiments/study:cpu")


def test_a_workdir_holds_one_preset_of_a_study(tmp_path):
    from t5x_lite.sweep import runner

    study = make_study(preset="cpu")
    runner.claim_workdir(study, str(tmp_path))
    runner.claim_workdir(study, str(tmp_path))  # the same preset again: fine
    assert (tmp_path / "s" / "preset.txt").read_text() == "cpu\n"
    paper = make_study(preset="paper")
    with pytest.raises(UserError, match="holds preset 'cpu' of study 's'; give preset 'paper'"):
        runner.claim_workdir(paper, str(tmp_path), write=False)
