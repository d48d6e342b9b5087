"""Where metrics go: a JSONL file, TensorBoard event files and a progress bar.

Only process 0 writes; every other process gets writers that do nothing, so the trainer
never branches on the process index.

On a local workdir `metrics.jsonl` is appended to, one whole line per log, flushed; the
event files go straight to `<workdir>/tensorboard/`. Object stores (a gs:// workdir)
cannot append, so there the writer keeps the file's rows in memory and uploads it
whole at each log (it is small: one line per `train.log_every` steps). tensorboardX
writes to gs:// only through the `google-cloud-storage` package, not through fsspec, so
for a URL workdir its event files are written to a local temporary directory and
copied to `<workdir>/tensorboard/` after each log's flush (and at close). Either way
every log leaves complete files in the workdir.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import jax
import tqdm

from t5x_lite import fileio


def summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Loss sums from `losses.cross_entropy` -> per-token loss, perplexity, accuracy."""
    weight = max(sums["weight_sum"], 1e-9)
    nll = sums["nll_sum"] / weight
    unscored = {f"{prefix}/unscored": sums["unscored_sum"]} if "unscored_sum" in sums else {}
    return {
        f"{prefix}/loss": sums["loss_sum"] / weight,
        f"{prefix}/nll": nll,
        f"{prefix}/perplexity": float(min(2.0**64, pow(2.718281828459045, nll))),
        f"{prefix}/accuracy": sums["correct_sum"] / weight,
        f"{prefix}/z_loss": sums["z_loss_sum"] / weight,
        f"{prefix}/tokens": sums["weight_sum"],
    } | unscored


class MetricWriter:
    """Appends `{"step": s, ...}` lines to `<workdir>/metrics.jsonl` and TensorBoard scalars."""

    def __init__(self, workdir: str, start_step: int):
        """`start_step`: the step the run (re)starts from. Rows logged after it by an
        interrupted earlier attempt are dropped, so each step appears once."""
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        fileio.makedirs(workdir)
        path = fileio.join(workdir, "metrics.jsonl")
        kept = _truncate_after(path, start_step)
        remote = fileio.is_url(workdir)
        self._jsonl = RewrittenFile(path, kept) if remote else AppendedLines(path)
        tensorboard_dir = fileio.join(workdir, "tensorboard")
        self._tb = _CopiedTensorBoard(tensorboard_dir) if remote else _tensorboard(tensorboard_dir)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")  # one write per row: whole lines
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(name, float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl file. A line cut short by a crash mid-write (only
    the last can be) is skipped, as is any other line that is not a JSON row."""
    if not fileio.exists(path):
        return []
    return [row for _, row in _parsed_lines(fileio.read_text(path))]


def _parsed_lines(text: str) -> list[tuple[str, dict]]:
    parsed = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            parsed.append((line, row))
    return parsed


def _truncate_after(path: str, step: int) -> list[str]:
    """Drops the rows logged after `step`, and a torn last line, from the file
    (rewritten whole); returns the lines kept, each ending in a newline."""
    if not fileio.exists(path):
        return []
    lines = _parsed_lines(fileio.read_text(path))
    kept = [line + "\n" for line, row in lines if row["step"] <= step]
    fileio.write_text(path, "".join(kept))
    return kept


class AppendedLines:
    """A local file appended to with one unbuffered `write` per line, so a crash leaves
    whole lines and at most a torn last one (which readers skip), never a line split
    across buffer flushes."""

    def __init__(self, path: str):
        self._file = open(path, "ab", buffering=0)

    def write(self, text: str) -> None:
        self._file.write(text.encode("utf-8"))

    def flush(self) -> None:
        pass  # nothing buffered

    def close(self) -> None:
        self._file.close()


class RewrittenFile:
    """A file that only grows, on a store that cannot append: every flush uploads the
    lines written so far, whole."""

    def __init__(self, path: str, lines: list[str]):
        self.path = path
        self._lines = list(lines)

    def write(self, text: str) -> None:
        self._lines.append(text)

    def flush(self) -> None:
        fileio.write_text(self.path, "".join(self._lines))

    def close(self) -> None:
        self.flush()


def _tensorboard(logdir: str):
    return _summary_writer_class()(logdir)


def _summary_writer_class():
    """tensorboardX's SummaryWriter (no TensorFlow needed), imported without PyTorch:
    where torch is installed tensorboardX imports it at once, only to accept its tensors,
    which cost every train and finetune command ~1.3 s of start-up. We log Python floats.
    While `sys.modules["torch"]` is None an `import torch` raises ImportError, which
    tensorboardX catches; torch stays importable afterwards."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class _CopiedTensorBoard:
    """A SummaryWriter on a local temporary directory whose event files are copied to
    `logdir` (a URL) at every flush, and once more at close."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._local = tempfile.mkdtemp(prefix="t5x_lite-tensorboard-")
        self._writer = _tensorboard(self._local)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        self._writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self._writer.flush()  # returns once the events are in the local file
        self._upload()

    def close(self) -> None:
        self._writer.close()
        self._upload()
        fileio.remove_tree(self._local)

    def _upload(self) -> None:
        for name in fileio.listdir(self._local):
            fileio.copy_file(fileio.join(self._local, name), fileio.join(self.logdir, name))


class Progress:
    """A tqdm bar over training steps with loss and tokens/s; silent off process 0."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled and jax.process_index() == 0:
            self.bar = tqdm.tqdm(
                initial=start, total=total, unit="step", dynamic_ncols=True, desc="train"
            )

    def update(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def set_postfix(self, **postfix) -> None:
        """Shown from the next update on."""
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        elif jax.process_index() == 0:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
