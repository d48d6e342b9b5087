"""Run a study's jobs: local processes, resumable, or as commands for a scheduler.

Layout under `<workdir>/<study>/`:

    runs/<job>/            the job's workdir (the trainer's files, eval/, icl_metrics.json)
    runs/<job>/log.txt     what the job printed
    runs/<job>/result.json written last, whole: the job is finished when it exists
    table.md, table.csv, table.tex, *.png, provenance.json    (report.py)

Each job runs in a fresh process (spawned: JAX state and memory go with it) through
t5x_lite.api, at most `jobs` at once, a pretraining before the cells that start from it.
A rerun skips finished jobs, and an interrupted one resumes from its last checkpoint
(the trainer's own resumption), so a sweep stopped at any point is finished by running
the same command again. A job that ran with other settings than the study now gives (an
edited study) is refused, or set aside and rerun with --rerun_changed, with the cells
started from it. A failed job is reported with its log and the rest go on
(except the cells that needed it); the exit status is then 1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import shlex
import signal
import sys
import time
import traceback

from t5x_lite import compile_cache, fileio
from t5x_lite.errors import Interrupted, UserError
from t5x_lite.sweep import study as study_lib

RESULT = "result.json"


def runs_dir(workdir: str, study: study_lib.Study) -> str:
    return fileio.join(fileio.absolute(workdir), study.name, "runs")


def claim_workdir(study: study_lib.Study, workdir: str, write: bool = True) -> None:
    """One preset per study directory: job names do not say the preset, so a second
    preset's jobs would find the first one's results and count them as theirs."""
    path = fileio.join(fileio.absolute(workdir), study.name, "preset.txt")
    if fileio.isfile(path):
        held = fileio.read_text(path).strip()
        if held != study.preset:
            raise UserError(
                f"--workdir={workdir} holds preset {held!r} of study {study.name!r}; give "
                f"preset {study.preset!r} another --workdir"
            )
    elif write:
        fileio.makedirs(fileio.join(fileio.absolute(workdir), study.name))
        fileio.write_text(path, study.preset + "\n")


def command_line(job: study_lib.Job, job_dir: str, root: str) -> str:
    """The `t5x-lite` command that runs `job` alone (from the repository root)."""
    path, colon, variant = job.config.partition(":")
    if os.path.abspath(path).startswith(root + os.sep):
        path = os.path.relpath(path, root)
    args = ["t5x-lite", job.kind, f"--config={path}{colon}{variant}", f"--workdir={job_dir}"]
    args += [f"--config.{key}={value}" for key, value in job.overrides]
    return shlex.join(args)


def read_result(job: study_lib.Job, job_dir: str) -> dict | None:
    """A finished job's result: its result.json, or (for a job run by hand from
    --print_commands) what the command leaves; None if it has not finished."""
    path = fileio.join(job_dir, RESULT)
    if fileio.isfile(path):
        return json.loads(fileio.read_text(path))
    metrics = _outputs(job, job_dir)
    if metrics is None:
        return None
    return dict(job=job.name, kind=job.kind, metrics=metrics, wall_s=None)


def _outputs(job: study_lib.Job, job_dir: str) -> dict | None:
    if job.kind == "finetune":
        eval_dir = fileio.join(job_dir, "eval")
        found = sorted(
            fileio.join(eval_dir, name, "metrics.json")
            for name in (fileio.listdir(eval_dir) if fileio.isdir(eval_dir) else ())
            if fileio.isfile(fileio.join(eval_dir, name, "metrics.json"))
        )
        return json.loads(fileio.read_text(found[0])) if len(found) == 1 else None
    if job.kind == "icl":
        path = fileio.join(job_dir, "icl_metrics.json")
        return _icl_metrics(json.loads(fileio.read_text(path))) if fileio.isfile(path) else None
    return None  # a pretraining is finished when its result.json says so


def _icl_metrics(report: dict) -> dict:
    """icl_metrics.json -> the metrics of its one k (a study column sets icl.shots)."""
    shots = report["shots"]
    if len(shots) != 1:
        raise UserError(
            f"an in-context job scores one k per cell, not {sorted(shots)}: set icl.shots "
            "in the study's columns"
        )
    ((k, metrics),) = shots.items()
    return {
        "shots": int(k),
        "majority_class_accuracy": report["majority_class_accuracy"],
        **{key: value for key, value in metrics.items() if key != "predictions"},
    }


def _last_eval(history: list[dict]) -> dict:
    """The last logged row's figures: train loss and the newest held-out metrics."""
    metrics = {}
    for row in history:
        metrics.update({key: value for key, value in row.items() if key.startswith("eval/")})
    if history:
        last = history[-1]
        metrics.update(
            step=last["step"], **{k: v for k, v in last.items() if k.startswith("train/")}
        )
    return metrics


def run_job(job: study_lib.Job, job_dir: str, root: str) -> dict:
    """Run one job in this process and write its result.json -> the result."""
    from t5x_lite import api

    started = time.time()
    fileio.makedirs(job_dir)
    config = api.load_config(job.config, job.overrides)
    keys = [key for key, _ in job.overrides]
    if job.kind == "train":
        metrics = _last_eval(api.train(config, job_dir).history)
    elif job.kind == "finetune":
        metrics = api.finetune(config, job_dir, explicit_keys=keys)
    else:
        api.in_context(config, job_dir)
        metrics = _outputs(job, job_dir)
    result = dict(
        job=job.name,
        kind=job.kind,
        row=job.row,
        column=job.column,
        replicate=job.replicate,
        seed=job.seed,
        metrics=metrics,
        wall_s=round(time.time() - started, 1),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=command_line(job, job_dir, root),
    )
    text = json.dumps(result, indent=2, sort_keys=True, default=_plain)
    fileio.write_text(fileio.join(job_dir, RESULT), text)
    return result


def _plain(value):
    """JSON for numpy and JAX scalars."""
    return value.item() if hasattr(value, "item") else str(value)


def _child(job: study_lib.Job, job_dir: str, root: str) -> dict:
    """run_job in a spawned process, its output into <job_dir>/log.txt -> the result, or
    {"error": one line}."""
    fileio.makedirs(job_dir)
    if not fileio.is_url(job_dir):  # a bucket's jobs print to the runner's output
        log = open(os.path.join(job_dir, "log.txt"), "a", buffering=1, encoding="utf-8")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
    print(f"$ {command_line(job, job_dir, root)}", flush=True)
    compile_cache.enable()  # what `t5x-lite` does: jobs after the first skip compiling
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a running job may be stopped
    try:
        return run_job(job, job_dir, root)
    except BaseException as e:  # noqa: BLE001  (reported to the parent as one line)
        if isinstance(e, Interrupted | UserError):
            print(e, flush=True)  # says what happened and what to do; no traceback
        else:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"error": f"{type(e).__name__}: {first}"}
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_init() -> None:
    """A job process: its own process group (a terminal's Ctrl-C reaches only the
    runner, which passes it on) and deaf to SIGINT until it runs a job (an idle worker
    that died of one would break the pool, and with it the running jobs)."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def print_commands(study: study_lib.Study, workdir: str, root: str) -> str:
    """One `t5x-lite` command per job, pretrainings first, for a scheduler."""
    runs = runs_dir(workdir, study)
    lines = [f"# {study.name} ({study.preset}): run from {root}; pretrainings first"]
    for job in study_lib.expand(study, runs, root):
        lines.append(command_line(job, fileio.join(runs, job.name), root))
    return "\n".join(lines)


def recorded_command(job_dir: str) -> str | None:
    """The command a job ran with: its result.json's, else its log's first line (a job
    that started), None for a job never started here."""
    result = fileio.join(job_dir, RESULT)
    if fileio.isfile(result):
        return json.loads(fileio.read_text(result)).get("command")
    log = fileio.join(job_dir, "log.txt")
    if fileio.isfile(log):
        first = fileio.read_text(log).split("\n", 1)[0]
        return first[2:] if first.startswith("$ ") else None
    return None


def _comparable(command: str, runs: str, root: str) -> list[str]:
    """A command's arguments with the places that may move (the sweep's runs directory,
    the repository, $T5X_LITE_DATA_DIR) as names, and without --workdir."""
    places = [(runs, "<runs>"), (root, "<root>")]
    data = os.environ.get("T5X_LITE_DATA_DIR")
    if data:
        places.append((os.path.abspath(data), "<data>"))
    for path, name in places:
        command = command.replace(path.rstrip("/") + "/", name + "/")
    return [arg for arg in shlex.split(command) if not arg.startswith("--workdir=")]


def changed_jobs(jobs: list[study_lib.Job], runs: str, root: str) -> dict[str, str]:
    """Jobs that ran (or started) with other settings than the study now gives, and the
    cells started from such a pretraining -> {job name: what differs}."""
    changed = {}
    for job in jobs:  # pretrainings come before the cells that need them
        job_dir = fileio.join(runs, job.name)
        recorded = recorded_command(job_dir)
        if recorded is None:
            continue
        was = _comparable(recorded, runs, root)
        now = _comparable(command_line(job, job_dir, root), runs, root)
        if was != now:
            gone = [arg for arg in was if arg not in now]
            new = [arg for arg in now if arg not in was]
            changed[job.name] = (
                " ".join([f"now {arg}" for arg in new[:2]] + [f"was {arg}" for arg in gone[:2]])
                or "the arguments' order"
            )
        elif job.depends_on in changed:
            changed[job.name] = f"its pretraining {job.depends_on} changed"
    return changed


def set_aside(runs: str, names) -> list[str]:
    """Move each job's directory to <job>.changed-<n> (kept, never read again) -> the
    new paths."""
    moved = []
    for name in names:
        source = fileio.join(runs, name)
        n = 1
        while fileio.exists(f"{source}.changed-{n}"):
            n += 1
        fileio.as_path(source).rename(f"{source}.changed-{n}")
        moved.append(f"{source}.changed-{n}")
    return moved


def check_unchanged(
    study: study_lib.Study, workdir: str, root: str, *, rerun_changed: bool = False, log=print
) -> None:
    """Refuse (or, with `rerun_changed`, set aside) the jobs whose recorded command is
    not the one the study gives now: a finished job is never rerun, so a study edited
    after a partial run would otherwise mix old and new settings in one table."""
    runs = runs_dir(workdir, study)
    changed = changed_jobs(study_lib.expand(study, runs, root), runs, root)
    if not changed:
        return
    first, why = next(iter(changed.items()))
    if not rerun_changed:
        raise UserError(
            f"{len(changed)} job(s) in {runs} ran with other settings than "
            f"{study.name}:{study.preset} now gives (e.g. {first}: {why}); add "
            "--rerun_changed to set them aside as <job>.changed-N and run them again, or "
            "give another --workdir"
        )
    set_aside(runs, changed)
    log(f"set aside {len(changed)} job(s) run with other settings (e.g. {first}: {why})")


def run(study: study_lib.Study, workdir: str, root: str, *, jobs: int = 1, log=print) -> list[str]:
    """Run every unfinished job -> the names of the jobs that failed (or were blocked)."""
    if jobs < 1:
        raise UserError(f"--jobs={jobs}: give at least 1")
    runs = runs_dir(workdir, study)
    all_jobs = study_lib.expand(study, runs, root)
    finished = {job.name for job in all_jobs if read_result(job, fileio.join(runs, job.name))}
    pending = [job for job in all_jobs if job.name not in finished]
    log(
        f"{study.name} ({study.preset}): {len(all_jobs)} jobs, {len(finished)} finished, "
        f"{len(pending)} to run, {jobs} at a time; logs under {runs}/<job>/log.txt"
    )
    failed: list[str] = []
    total, count = len(pending), 0
    context = multiprocessing.get_context("spawn")
    # Each job runs in its own process group, so a Ctrl-C at the terminal reaches only
    # this process, which passes it on once (see _stop_children).
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, max_tasks_per_child=1, initializer=_worker_init
    ) as pool:
        running: dict[concurrent.futures.Future, tuple[study_lib.Job, float]] = {}
        try:
            while pending or running:
                for job in list(pending):
                    if job.depends_on in failed:
                        pending.remove(job)
                        failed.append(job.name)
                        count += 1
                        log(f"[{count}/{total}] blocked {job.name}: {job.depends_on} failed")
                    elif len(running) < jobs and (not job.depends_on or job.depends_on in finished):
                        pending.remove(job)
                        future = pool.submit(_child, job, fileio.join(runs, job.name), root)
                        running[future] = (job, time.time())
                if not running:
                    continue
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    job, started = running.pop(future)
                    count += 1
                    try:
                        result = future.result()
                    except Exception as e:  # the process died (killed, out of memory)
                        result = {"error": f"the job's process died: {type(e).__name__}: {e}"}
                    seconds = time.time() - started
                    if "error" in result:
                        failed.append(job.name)
                        log_path = fileio.join(runs, job.name, "log.txt")
                        log(f"[{count}/{total}] FAILED {job.name} after {seconds:.0f} s: "
                            f"{result['error']} (see {log_path})")  # fmt: skip
                    else:
                        finished.add(job.name)
                        log(f"[{count}/{total}] done {job.name} in {seconds:.0f} s"
                            f"{_headline(result)}")  # fmt: skip
        except KeyboardInterrupt:
            log("stopping: each running job checkpoints its current step (again to stop now)")
            _stop_children()
            while True:
                try:
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                except KeyboardInterrupt:  # a second request: the jobs stop at once
                    _stop_children()
            raise
    return failed


def _stop_children() -> None:
    """SIGINT to every running job: the trainer checkpoints the current step and stops
    (a second one stops it at once); the job then reports itself unfinished."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGINT)


def _headline(result: dict) -> str:
    metrics = result.get("metrics") or {}
    for path in ("classifier/accuracy", "generated/accuracy", "accuracy", "eval/lm/loss",
                 "eval/mlm/loss", "train/loss"):  # fmt: skip
        value = metric_value(metrics, path, default=None)
        if value is not None:
            return f": {path} {value:.4f}"
    return ""


# A study's metric 'accuracy' is read from the first scorer a job's metrics hold.
SCORERS = ("classifier", "generated", "ranked")


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Nested metrics -> {'a/b': number}."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def metric_value(metrics: dict, path: str, default=KeyError):
    """`path` ('a/b' into nested dicts) in a job's metrics; a bare name also looks under
    each of SCORERS (a classifier's, or T5's generated label words)."""
    flat = flatten(metrics)
    candidates = [path] if "/" in path else [path, *(f"{s}/{path}" for s in SCORERS)]
    for candidate in candidates:
        if candidate in flat:
            return flat[candidate]
    if default is KeyError:
        raise KeyError(f"no metric {path!r} among {sorted(flat)}")
    return default
