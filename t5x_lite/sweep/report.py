"""A study's finished jobs -> table.md, table.csv, table.tex, learning curves (PNG) and
provenance.json under `<workdir>/<study>/`.

Cells missing some replicates (a sweep still running, or a failed job) are shown with
the n they have; a comparison uses the replicates both rows have.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
import sys
import time

from t5x_lite import fileio
from t5x_lite.sweep import runner, stats
from t5x_lite.sweep import study as study_lib


@dataclasses.dataclass
class Table:
    study: study_lib.Study
    # (row, column) -> one value per replicate (None: not finished)
    values: dict[tuple[str, str], list[float | None]]
    summaries: dict[tuple[str, str], stats.Summary]
    comparisons: dict[tuple[str, str], stats.Comparison]  # rows with a baseline
    results: dict[str, dict]  # job name -> result
    jobs: list[study_lib.Job]


def collect(study: study_lib.Study, workdir: str, root: str) -> Table:
    runs = runner.runs_dir(workdir, study)
    jobs = study_lib.expand(study, runs, root)
    results = {}
    for job in jobs:
        result = runner.read_result(job, fileio.join(runs, job.name))
        if result is not None:
            results[job.name] = result
    replicates = len(study.finetune_seeds)
    values = {(r.name, c.name): [None] * replicates for r in study.rows for c in study.columns}
    for job in jobs:
        if job.kind != "train" and job.name in results:
            metric = study.row(job.row).metric or study.metric
            value = runner.metric_value(results[job.name]["metrics"], metric)
            values[job.row, job.column][job.replicate] = value
    summaries = {
        key: stats.summarize([v for v in vals if v is not None]) for key, vals in values.items()
    }
    comparisons = {}
    for row in study.rows:
        baseline = study.baseline_of(row)
        if baseline:
            for column in study.columns:
                comparisons[row.name, column.name] = stats.compare(
                    values[row.name, column.name], values[baseline, column.name]
                )
    return Table(study, values, summaries, comparisons, results, jobs)


def _paper_columns(study: study_lib.Study) -> list[str]:
    names: list[str] = []
    for numbers in study.paper.values():
        names += [name for name in numbers if name not in names]
    return names


def markdown(table: Table) -> str:
    study, scale = table.study, table.study.scale
    paper_columns = _paper_columns(study)
    n_seeds = len(study.finetune_seeds)
    lines = [f"# {study.title}", "", f"Study `{study.name}`, preset `{study.preset}`."]
    if study.description:
        lines += ["", study.description.strip()]
    lines += [
        "",
        f"{study.metric_label}: mean ± std over seeds (n = finished seeds of {n_seeds}; "
        f"std with the n - 1 divisor). Fine-tuning seeds {tuple(study.finetune_seeds)}, "
        f"pretraining seeds {tuple(study.pretrain_seeds)}.",
        "",
    ]
    header = ["", *(c.display for c in study.columns)]
    header += [f"paper: {name}" for name in paper_columns]
    lines += [_md_row(header), _md_row(["---"] * len(header))]
    for row in study.rows:
        cells = [row.display]
        cells += [table.summaries[row.name, c.name].format(scale) for c in study.columns]
        cells += [study.paper.get(row.name, {}).get(name, "") for name in paper_columns]
        lines.append(_md_row(cells))
    if study.paper_source:
        lines += ["", f"Paper numbers: {study.paper_source}"]
    if table.comparisons:
        lines += [
            "",
            "## Against the baseline",
            "",
            "Δ = row − baseline row, replicate by replicate (the same seeds), in points; "
            "[95% paired bootstrap interval, expanded percentile, 10,000 resamples]; "
            "p = exact two-sided sign-flip permutation test. A difference is resolved when "
            "p < 0.05 and the interval excludes 0 (this needs at least "
            f"{stats.MIN_PAIRS} pairs).",
            "",
        ]
        header = ["row", "baseline", *(c.display for c in study.columns)]
        lines += [_md_row(header), _md_row(["---"] * len(header))]
        for row in study.rows:
            baseline = study.baseline_of(row)
            if not baseline:
                continue
            cells = [row.display, study.row(baseline).display]
            for column in study.columns:
                comparison = table.comparisons[row.name, column.name]
                cells.append(f"{comparison.format(scale)} {_mark(comparison)}".strip())
            lines.append(_md_row(cells))
        lines += ["", "## What resolves at this scale", "", *verdicts(table)]
    return "\n".join(lines) + "\n"


def _mark(comparison: stats.Comparison) -> str:
    if comparison.n < stats.MIN_PAIRS:
        return "(too few seeds)" if comparison.n else ""
    return "**resolved**" if comparison.resolved else "(noise)"


def verdicts(table: Table) -> list[str]:
    """The comparisons in words: which differences resolve, which are within noise."""
    study, scale = table.study, table.study.scale
    groups: dict[str, list[str]] = {"resolved": [], "noise": [], "few": []}
    for row in study.rows:
        baseline = study.baseline_of(row)
        if not baseline:
            continue
        for column in study.columns:
            c = table.comparisons[row.name, column.name]
            if c.n == 0:
                continue
            what = (
                f"{row.display} vs {study.row(baseline).display} on {column.display}: "
                f"{scale * c.diff:+.1f}"
            )
            if c.n < stats.MIN_PAIRS:
                groups["few"].append(f"{what} (n={c.n})")
            else:
                interval = f"[{scale * c.low:+.1f}, {scale * c.high:+.1f}], p={c.p_value:.2g}"
                groups["resolved" if c.resolved else "noise"].append(f"{what} {interval}, n={c.n}")
    lines = []
    titles = {
        "resolved": "Resolved (p < 0.05, the interval excludes 0)",
        "noise": "Within noise at this scale (no claim either way)",
        "few": f"Not testable yet (fewer than {stats.MIN_PAIRS} finished pairs)",
    }
    for key, title in titles.items():
        if groups[key]:
            lines.append(f"- {title}: " + "; ".join(groups[key]) + ".")
    return lines or ["- No finished comparisons yet."]


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def csv_text(table: Table) -> str:
    study, scale = table.study, table.study.scale
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["study", "preset", "row", "column", "n", "mean", "std", "values", "baseline",
         "diff", "low", "high", "p_value", "verdict"]
    )  # fmt: skip
    for row in study.rows:
        for column in study.columns:
            s = table.summaries[row.name, column.name]
            values = [v for v in table.values[row.name, column.name] if v is not None]
            c = table.comparisons.get((row.name, column.name))
            writer.writerow(
                [study.name, study.preset, row.name, column.name, s.n, _num(s.mean, scale),
                 _num(s.std, scale), " ".join(_num(v, scale) for v in values),
                 study.baseline_of(row), *(_num(x, scale) for x in
                 ((c.diff, c.low, c.high) if c else (math.nan,) * 3)),
                 _num(c.p_value, 1.0) if c else "", c.verdict if c and c.n else ""]
            )  # fmt: skip
    return out.getvalue()


def _num(value: float, scale: float) -> str:
    return "" if value is None or math.isnan(value) else f"{scale * value:.6g}"


def latex(table: Table) -> str:
    """A booktabs tabular: mean ± std per cell, and Δ [interval] under each compared row."""
    study, scale = table.study, table.study.scale
    columns = study.columns
    lines = [
        "% " + study.title + f" (study {study.name}, preset {study.preset})",
        "\\begin{tabular}{l" + "c" * len(columns) + "}",
        "\\toprule",
        " & ".join(["", *(_tex(c.display) for c in columns)]) + " \\\\",
        "\\midrule",
    ]
    for row in study.rows:
        cells = [_tex(row.display)]
        for column in columns:
            s = table.summaries[row.name, column.name]
            cells.append(
                "--" if s.n == 0 else
                f"${scale * s.mean:.1f}$" if s.n == 1 else
                f"${scale * s.mean:.1f} \\pm {scale * s.std:.1f}$"
            )  # fmt: skip
        lines.append(" & ".join(cells) + " \\\\")
        if study.baseline_of(row):
            cells = [f"\\quad $\\Delta$ vs {_tex(study.row(study.baseline_of(row)).display)}"]
            for column in columns:
                c = table.comparisons[row.name, column.name]
                cells.append(
                    "--" if c.n < 2 else
                    f"${scale * c.diff:+.1f}$ [${scale * c.low:+.1f}, {scale * c.high:+.1f}$]"
                    + ("$^*$" if c.resolved else "")
                )  # fmt: skip
            lines.append(" & ".join(cells) + " \\\\")
    lines += [
        "\\bottomrule",
        "\\end{tabular}",
        "% mean $\\pm$ std over seeds; $\\Delta$: paired bootstrap 95\\% interval; "
        "$^*$: resolved (sign-flip permutation p $<$ 0.05 and the interval excludes 0)",
    ]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


def plots(table: Table, out_dir: str) -> list[str]:
    """One PNG per study plot: mean vs the columns' x, a band of ± one std, per row."""
    if not table.study.plots:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study, scale = table.study, table.study.scale
    paths = []
    for plot in study.plots:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for row in study.rows:
            if plot.rows and row.name not in plot.rows:
                continue
            points = [
                (c.x, table.summaries[row.name, c.name])
                for c in study.plot_columns(plot)
                if table.summaries[row.name, c.name].n
            ]
            if not points:
                continue
            xs = [x for x, _ in points]
            means = [scale * s.mean for _, s in points]
            stds = [scale * s.std if s.n > 1 else 0.0 for _, s in points]
            (line,) = ax.plot(xs, means, marker="o", label=row.display)
            ax.fill_between(
                xs,
                [m - d for m, d in zip(means, stds, strict=True)],
                [m + d for m, d in zip(means, stds, strict=True)],
                color=line.get_color(),
                alpha=0.2,
            )
        if plot.log_x:
            ax.set_xscale("log")
        ax.set_xlabel(plot.xlabel)
        ax.set_ylabel(study.metric_label)
        ax.set_title(plot.title or study.title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.text(0.01, 0.01, "mean ± std over seeds", fontsize=7, alpha=0.7)
        fig.tight_layout()
        path = fileio.join(out_dir, f"{plot.name}.png")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        fileio.write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def provenance(table: Table, workdir: str, root: str, wall_s: float | None = None) -> dict:
    study = table.study
    runs = runner.runs_dir(workdir, study)
    jobs = []
    configs = {}
    for job in table.jobs:
        result = table.results.get(job.name)
        job_dir = fileio.join(runs, job.name)
        jobs.append(
            dict(
                name=job.name,
                command=runner.command_line(job, job_dir, root),
                finished=result is not None,
                wall_s=(result or {}).get("wall_s"),
            )
        )
        # One resolved config per pretraining and per cell (replicate 0); the others
        # differ from it in their seed and workdir only.
        config_path = fileio.join(job_dir, "config.json")
        first = job.replicate == 0 or (job.kind == "train" and job.seed == study.pretrain_seeds[0])
        if first and fileio.isfile(config_path):
            configs[job.name] = json.loads(fileio.read_text(config_path))
    job_seconds = [j["wall_s"] for j in jobs if j["wall_s"] is not None]
    return dict(
        study=study.name,
        preset=study.preset,
        title=study.title,
        generated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        git=_git(root),
        machine=_machine(),
        versions=_versions(),
        seeds=dict(finetune=list(study.finetune_seeds), pretrain=list(study.pretrain_seeds)),
        statistics=dict(
            interval="paired bootstrap, expanded percentile (Hesterberg 2015)",
            resamples=stats.RESAMPLES,
            confidence=stats.CONFIDENCE,
            test="exact two-sided sign-flip permutation",
            min_pairs=stats.MIN_PAIRS,
        ),
        wall_s=dict(
            sweep=None if wall_s is None else round(wall_s, 1),
            jobs_sum=round(sum(job_seconds), 1),
        ),
        jobs=jobs,
        configs=configs,
    )


def _git(root: str) -> dict:
    def git(*args):
        done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return dict(commit=commit, dirty=bool(status) if status is not None else None)


def _machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return dict(
        platform=platform.platform(), cpu=cpu, cpu_count=os.cpu_count(),
        python=sys.version.split()[0], host=platform.node(),
    )  # fmt: skip


def _versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("t5x_lite", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write(study: study_lib.Study, workdir: str, root: str, wall_s: float | None = None) -> str:
    """Every output of the study from its finished jobs -> the markdown table."""
    table = collect(study, workdir, root)
    out_dir = fileio.join(fileio.absolute(workdir), study.name)
    fileio.makedirs(out_dir)
    text = markdown(table)
    fileio.write_text(fileio.join(out_dir, "table.md"), text)
    fileio.write_text(fileio.join(out_dir, "table.csv"), csv_text(table))
    fileio.write_text(fileio.join(out_dir, "table.tex"), latex(table))
    plots(table, out_dir)
    fileio.write_text(
        fileio.join(out_dir, "provenance.json"),
        json.dumps(provenance(table, workdir, root, wall_s), indent=2, sort_keys=True),
    )
    return text
