"""Tables, plots and provenance from finished jobs, written by hand here."""

import csv
import io
import json
import os

import pytest

from t5x_lite.sweep import Column, Plot, Row, Study, report, runner
from t5x_lite.sweep import study as study_lib

ACCURACY = {
    # row -> accuracies of replicates 0..5 on column "a"; column "b" adds 0.1
    "base": [0.60, 0.62, 0.61, 0.63, 0.60, 0.62],
    "better": [0.70, 0.71, 0.73, 0.72, 0.70, 0.74],  # +0.1: resolved
    "same": [0.61, 0.61, 0.60, 0.64, 0.59, 0.62],  # within noise
}


def make_study():
    return Study(
        name="toy",
        title="Toy study",
        rows=tuple(Row(name, "/x/finetune.py:v", label=name.upper()) for name in ACCURACY),
        columns=(Column("a", x=100), Column("b", x=1000)),
        finetune_seeds=tuple(range(6)),
        baseline="base",
        paper={"better": {"GLUE": "83.3"}},
        paper_source="T5 Table 1",
        plots=(Plot("curve", "labelled examples", log_x=True),),
        preset="cpu",
    )


def write_results(study, workdir, skip=()):
    runs = runner.runs_dir(workdir, study)
    for job in study_lib.expand(study, runs, "/repo"):
        if job.name in skip:
            continue
        accuracy = ACCURACY[job.row][job.replicate] + (0.1 if job.column == "b" else 0.0)
        os.makedirs(os.path.join(runs, job.name))
        result = {"metrics": {"classifier": {"accuracy": accuracy}}, "wall_s": 2.0}
        with open(os.path.join(runs, job.name, "result.json"), "w") as f:
            json.dump(result, f)


def test_tables_from_finished_jobs(tmp_path):
    study = make_study()
    write_results(study, str(tmp_path), skip={"same--b--r5"})
    text = report.write(study, str(tmp_path), "/repo", wall_s=12.0)
    out = tmp_path / "toy"
    assert (out / "table.md").read_text() == text
    lines = text.splitlines()
    assert "|  | a | b | paper: GLUE |" in lines
    # base on a: mean 61.33, std of [60, 62, 61, 63, 60, 62] = 1.21
    assert "| BASE | 61.3 ± 1.2 (n=6) | 71.3 ± 1.2 (n=6) |  |" in lines
    assert "| BETTER | 71.7 ± 1.6 (n=6) | 81.7 ± 1.6 (n=6) | 83.3 |" in lines
    assert "| SAME | 61.2 ± 1.7 (n=6) | 71.0 ± 1.9 (n=5) |  |" in lines  # one missing
    better = next(line for line in lines if line.startswith("| BETTER | BASE |"))
    assert better.count("**resolved**") == 2 and "+10.3 [" in better and "p=0.031" in better
    same = next(line for line in lines if line.startswith("| SAME | BASE |"))
    assert same.count("(noise)") == 1 and same.count("(too few seeds)") == 1
    words = "\n".join(lines[lines.index("## What resolves at this scale") :])
    assert "- Resolved (p < 0.05, the interval excludes 0): BETTER vs BASE on a: +10.3" in words
    assert "- Within noise at this scale (no claim either way): SAME vs BASE on a: -0.2" in words
    assert "fewer than 6 finished pairs): SAME vs BASE on b: -0.2 (n=5)" in words
    assert "Paper numbers: T5 Table 1" in text

    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(rows) == 6
    row = next(r for r in rows if r["row"] == "better" and r["column"] == "a")
    assert row["n"] == "6" and row["baseline"] == "base" and row["verdict"] == "resolved: higher"
    assert float(row["mean"]) == pytest.approx(71.667, abs=1e-3)
    assert row["values"] == "70 71 73 72 70 74"
    assert next(r for r in rows if r["row"] == "base")["baseline"] == ""

    tex = (out / "table.tex").read_text()
    assert "\\begin{tabular}{lcc}" in tex and "$71.7 \\pm 1.6$" in tex
    assert "\\quad $\\Delta$ vs BASE" in tex

    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["study"] == "toy" and provenance["preset"] == "cpu"
    assert provenance["wall_s"] == {"sweep": 12.0, "jobs_sum": 70.0}  # 35 jobs x 2 s
    assert len(provenance["jobs"]) == 36
    job = provenance["jobs"][0]
    assert job["command"].startswith("t5x-lite finetune --config=/x/finetune.py:v --workdir=")
    assert "--config.seed=0" in job["command"]
    assert set(provenance["git"]) == {"commit", "dirty"}
    assert provenance["machine"]["cpu_count"] == os.cpu_count()
    assert provenance["statistics"]["test"] == "exact two-sided sign-flip permutation"


def test_jobs_run_from_printed_commands_are_read_from_their_outputs(tmp_path):
    """A job run by hand (no result.json) counts once its command's outputs exist."""
    study = Study(
        name="by_hand", title="T",
        rows=(Row("ft", "/x/finetune.py:v"), Row("icl", "/x/icl.py:v", kind="icl")),
        columns=(Column("c"),), finetune_seeds=(0,),
    )  # fmt: skip
    runs = runner.runs_dir(str(tmp_path), study)
    eval_dir = os.path.join(runs, "ft--c--r0", "eval", "dev")
    os.makedirs(eval_dir)
    with open(os.path.join(eval_dir, "metrics.json"), "w") as f:
        json.dump({"generated": {"accuracy": 0.75}, "ranked": {"accuracy": 0.8}}, f)
    os.makedirs(os.path.join(runs, "icl--c--r0"))
    icl = {"majority_class_accuracy": 0.5, "shots": {"4": {"accuracy": 0.55, "predictions": []}}}
    with open(os.path.join(runs, "icl--c--r0", "icl_metrics.json"), "w") as f:
        json.dump(icl, f)
    table = report.collect(study, str(tmp_path), "/repo")
    # T5's generated label words are its accuracy; an ICL cell is its one k.
    assert table.values == {("ft", "c"): [0.75], ("icl", "c"): [0.55]}
    assert table.results["icl--c--r0"]["metrics"]["shots"] == 4


def test_metric_paths():
    metrics = {"classifier": {"accuracy": 0.5, "num_examples": 10}, "eval/lm/loss": 2.0}
    assert runner.metric_value(metrics, "accuracy") == 0.5
    assert runner.metric_value(metrics, "classifier/num_examples") == 10.0
    assert runner.metric_value(metrics, "eval/lm/loss") == 2.0
    with pytest.raises(KeyError, match="no metric 'f1'"):
        runner.metric_value(metrics, "f1")


def test_a_sweep_directory_may_be_a_bucket(memory_gcs):
    """--print_commands and --aggregate_only with a gs:// --workdir: the jobs' workdirs
    stay gs:// URLs, and the tables are read from and written to the bucket."""
    from t5x_lite import fileio

    study = Study(
        name="cloud", title="T", rows=(Row("ft", "/x/finetune.py:v"),), columns=(Column("c"),),
        finetune_seeds=(0, 1), preset="cpu",
    )  # fmt: skip
    workdir = f"{memory_gcs}/sweeps"
    runner.claim_workdir(study, workdir)
    assert fileio.read_text(f"{workdir}/cloud/preset.txt") == "cpu\n"
    commands = runner.print_commands(study, workdir, "/repo").splitlines()[1:]
    assert commands[0].split()[3] == f"--workdir={workdir}/cloud/runs/ft--c--r0"
    for replicate, accuracy in enumerate((0.6, 0.7)):
        fileio.write_text(
            f"{workdir}/cloud/runs/ft--c--r{replicate}/eval/dev/metrics.json",
            json.dumps({"classifier": {"accuracy": accuracy}}),
        )
    text = report.write(study, workdir, "/repo")
    assert "65.0 ± 7.1 (n=2)" in text
    assert fileio.read_text(f"{workdir}/cloud/table.md") == text
    assert json.loads(fileio.read_text(f"{workdir}/cloud/provenance.json"))["study"] == "cloud"
