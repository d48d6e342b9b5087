"""What a study declares, and the jobs it expands into.

A study file, `experiments/<study>.py`, defines `get_study(preset) -> Study`:

    Study(
        name="pretraining_helps",
        title="Does pretraining help?",
        pretrainings={"gpt": Pretraining("gin_configs/pretrain.py:gpt_tiny", {...})},
        rows=(Row("gpt_random", "gin_configs/finetune.py:gpt_tiny_sst2",
                  {"finetune.init": "random"}, pretraining="gpt"),
              Row("gpt_ours", "gin_configs/finetune.py:gpt_tiny_sst2", pretraining="gpt",
                  baseline="gpt_random")),
        columns=(Column("sst2", {"task.train.path": ...}),),
        pretrain_seeds=(0,), finetune_seeds=(0, 1, 2, 3, 4),
    )

A table cell is (row, column): the row's config file and overrides, then the column's,
fine-tuned (or scored in context) once per fine-tuning seed. Replicate i uses
fine-tuning seed `finetune_seeds[i]` and, when the row starts from a pretraining run,
pretraining seed `pretrain_seeds[i % len(pretrain_seeds)]`; so replicate i of a row and
of its baseline row share their seeds, and their difference is a paired one
(t5x_lite/sweep/stats.py). Pretraining runs are shared by every row that names them.

Job names are the directories under `<workdir>/<study>/runs/`: `pre-<pretraining>-s<seed>`
and `<row>--<column>--r<replicate>`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

from t5x_lite.errors import UserError

KINDS = ("train", "finetune", "icl")
# The config key each kind's seed goes to.
SEED_KEYS = {"train": "seed", "finetune": "seed", "icl": "icl.seed"}
# The config key a downstream job's pretrained checkpoint goes to.
CHECKPOINT_KEYS = {"finetune": "finetune.checkpoint", "icl": "icl.checkpoint"}
_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclasses.dataclass(frozen=True)
class Pretraining:
    """One pretraining run per pretraining seed, shared by the rows that name it."""

    config: str  # FILE.py:VARIANT, relative to the repository root or absolute
    overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
    label: str = ""


@dataclasses.dataclass(frozen=True)
class Row:
    """A table row: how a model is fine-tuned (or scored in context)."""

    name: str
    config: str  # FILE.py:VARIANT of gin_configs/finetune.py or gin_configs/icl.py
    overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # A Study.pretrainings key: the job starts from that run (finetune.checkpoint or
    # icl.checkpoint); '' = the overrides say where the weights come from.
    pretraining: str = ""
    # The row this one is compared with: '' = the study's baseline; its own name = none.
    baseline: str = ""
    kind: str = "finetune"  # finetune | icl
    label: str = ""
    # The result's metric for this row, when it is not the study's (e.g. T5's scorer).
    metric: str = ""
    # {column: overrides} applied after that column's: what a column means for this
    # row's config (e.g. a longer input is objective.seq_len for a classifier but
    # objective.inputs_length for T5).
    cell_overrides: Mapping[str, Mapping[str, object]] = dataclasses.field(default_factory=dict)
    # The columns this row runs ('' = every one); its other cells stay empty.
    columns: Sequence[str] = ()

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: overrides every row gets (a task, a data size, a shot count)."""

    name: str
    overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)
    label: str = ""
    x: float | None = None  # the column's position on the study's plots
    # > 0: start from this step of the row's pretraining run instead of its last one.
    checkpoint_step: int = 0

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Plot:
    """A learning curve: the study's metric against the columns' x, one line per row."""

    name: str  # the PNG's file name, without .png
    xlabel: str
    rows: Sequence[str] = ()  # '' = every row
    columns: Sequence[str] = ()  # the x axis's columns; '' = every column
    log_x: bool = False
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    title: str
    rows: Sequence[Row]
    columns: Sequence[Column]
    finetune_seeds: Sequence[int]
    pretrain_seeds: Sequence[int] = (0,)
    pretrainings: Mapping[str, Pretraining] = dataclasses.field(default_factory=dict)
    # A dotted path into a job's metrics, e.g. 'accuracy' (see runner.metric_value).
    metric: str = "accuracy"
    metric_label: str = "accuracy (%)"
    scale: float = 100.0  # the table shows metric * scale
    baseline: str = ""  # the default baseline row
    # The published numbers to print beside ours: {row: {paper column: value}}.
    paper: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    paper_source: str = ""
    plots: Sequence[Plot] = ()
    description: str = ""  # printed under the title (what the study asks, how to read it)
    preset: str = ""

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def plot_columns(self, plot: Plot) -> list[Column]:
        return [c for c in self.columns if not plot.columns or c.name in plot.columns]

    def baseline_of(self, row: Row) -> str:
        """The row `row` is compared with, or '' for none."""
        name = row.baseline or self.baseline
        return "" if name == row.name else name

    def validate(self) -> None:
        """Mistakes in the declaration, one line each (configs are checked by tests)."""
        where = f"study {self.name!r}"
        if not self.rows or not self.columns or not self.finetune_seeds:
            raise UserError(f"{where}: rows, columns and finetune_seeds must be non-empty")
        for kind, names in (
            ("row", [r.name for r in self.rows]),
            ("column", [c.name for c in self.columns]),
            ("pretraining", list(self.pretrainings)),
        ):
            for name in names:
                if not _NAME.match(name):
                    raise UserError(f"{where}: {kind} name {name!r} may hold only [A-Za-z0-9_.]")
            if len(set(names)) != len(names):
                raise UserError(f"{where}: two {kind}s share a name in {names}")
        if len(set(self.finetune_seeds)) != len(self.finetune_seeds):
            raise UserError(f"{where}: finetune_seeds repeat a seed")
        if not self.pretrain_seeds:
            raise UserError(f"{where}: pretrain_seeds must be non-empty")
        row_names = {r.name for r in self.rows}
        for row in self.rows:
            if row.kind not in CHECKPOINT_KEYS:
                raise UserError(f"{where}: row {row.name!r} kind {row.kind!r} is not one of "
                                f"{sorted(CHECKPOINT_KEYS)}")  # fmt: skip
            if row.pretraining and row.pretraining not in self.pretrainings:
                known = sorted(self.pretrainings)
                raise UserError(
                    f"{where}: row {row.name!r} names an unknown pretraining "
                    f"{row.pretraining!r}; known: {known}"
                )
            column_names = {c.name for c in self.columns}
            unknown = sorted((set(row.cell_overrides) | set(row.columns)) - column_names)
            if unknown:
                raise UserError(f"{where}: row {row.name!r} names unknown columns {unknown}")
            baseline = self.baseline_of(row)
            if baseline and baseline not in row_names:
                raise UserError(f"{where}: row {row.name!r} is compared with an unknown row "
                                f"{baseline!r}")  # fmt: skip
        for plot in self.plots:
            columns = self.plot_columns(plot)
            if len(columns) != len(plot.columns or self.columns):
                raise UserError(f"{where}: plot {plot.name!r} names unknown columns")
            if any(c.x is None for c in columns):
                raise UserError(f"{where}: plot {plot.name!r} needs an x on each of its columns")
            unknown = sorted(set(plot.rows) - row_names)
            if unknown:
                raise UserError(f"{where}: plot {plot.name!r} names unknown rows {unknown}")
        for row in self.paper:
            if row not in row_names:
                raise UserError(f"{where}: paper numbers for an unknown row {row!r}")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run: a pretraining (kind 'train') or a cell replicate."""

    name: str  # its directory under runs/
    kind: str  # train | finetune | icl
    config: str  # FILE.py:VARIANT (absolute path)
    overrides: tuple[tuple[str, str], ...]  # in order; all of them count as set by hand
    depends_on: str = ""  # the pretraining job whose checkpoint it starts from
    row: str = ""
    column: str = ""
    replicate: int = -1
    seed: int = 0
    pretraining: str = ""


def override_text(value) -> str:
    """A study's override value as the command line writes it (--config.KEY=TEXT)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return repr(tuple(value))
    return str(value)


def _spec(spec: str, root: str) -> str:
    path, colon, variant = spec.partition(":")
    return (path if os.path.isabs(path) else os.path.join(root, path)) + colon + variant


def pretrain_job_name(pretraining: str, seed: int) -> str:
    return f"pre-{pretraining}-s{seed}"


def cell_job_name(row: str, column: str, replicate: int) -> str:
    return f"{row}--{column}--r{replicate}"


def expand(study: Study, runs_dir: str, root: str) -> list[Job]:
    """Every job of `study`, pretrainings first, each with its workdir under runs_dir.
    Config paths are made absolute against `root` (the repository root)."""
    jobs: dict[str, Job] = {}
    for replicate, seed in enumerate(study.finetune_seeds):
        pretrain_seed = study.pretrain_seeds[replicate % len(study.pretrain_seeds)]
        for row in study.rows:
            depends_on = ""
            if row.pretraining:
                depends_on = pretrain_job_name(row.pretraining, pretrain_seed)
                if depends_on not in jobs:
                    pretraining = study.pretrainings[row.pretraining]
                    jobs[depends_on] = Job(
                        name=depends_on,
                        kind="train",
                        config=_spec(pretraining.config, root),
                        overrides=tuple(
                            (k, override_text(v))
                            for k, v in {**pretraining.overrides, "seed": pretrain_seed}.items()
                        ),
                        seed=pretrain_seed,
                        pretraining=row.pretraining,
                    )
            for column in study.columns:
                if row.columns and column.name not in row.columns:
                    continue
                overrides = {
                    **row.overrides,
                    **column.overrides,
                    **row.cell_overrides.get(column.name, {}),
                    SEED_KEYS[row.kind]: seed,
                }
                if depends_on:
                    checkpoint = os.path.join(runs_dir, depends_on)
                    if column.checkpoint_step:
                        checkpoint = os.path.join(
                            checkpoint, "checkpoints", str(column.checkpoint_step)
                        )
                    overrides[CHECKPOINT_KEYS[row.kind]] = checkpoint
                name = cell_job_name(row.name, column.name, replicate)
                jobs[name] = Job(
                    name=name,
                    kind=row.kind,
                    config=_spec(row.config, root),
                    overrides=tuple((k, override_text(v)) for k, v in overrides.items()),
                    depends_on=depends_on,
                    row=row.name,
                    column=column.name,
                    replicate=replicate,
                    seed=seed,
                    pretraining=row.pretraining,
                )
    pretrainings = [job for job in jobs.values() if job.kind == "train"]
    return pretrainings + [job for job in jobs.values() if job.kind != "train"]


def load(spec: str) -> Study:
    """`experiments/<study>.py:<preset>` -> the validated Study."""
    from t5x_lite import config as config_lib

    path, _, preset = spec.partition(":")
    if not path.endswith(".py"):
        raise UserError(f"--sweep={spec!r}: give a study file, e.g. experiments/<study>.py:cpu")
    module = config_lib.import_file(path)
    if not hasattr(module, "get_study"):
        raise UserError(f"--sweep file {path!r} defines no get_study(preset)")
    presets = getattr(module, "PRESETS", ())
    preset = preset or (presets[0] if presets else "")
    if presets and preset not in presets:
        raise UserError(
            f"--sweep={spec}: unknown preset {preset!r}; choose from {', '.join(presets)}"
        )
    study = module.get_study(preset)
    study = dataclasses.replace(study, preset=preset)
    study.validate()
    return study
