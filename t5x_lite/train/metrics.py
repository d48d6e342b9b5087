"""Where metrics go: a JSONL file, TensorBoard event files and a progress bar.

Only process 0 writes; every other process gets writers that do nothing, so the trainer
never branches on the process index.
"""

from __future__ import annotations

import json
import os
import time

import jax
import tqdm


def summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Loss sums from `losses.cross_entropy` -> per-token loss, perplexity, accuracy."""
    weight = max(sums["weight_sum"], 1e-9)
    nll = sums["nll_sum"] / weight
    return {
        f"{prefix}/loss": sums["loss_sum"] / weight,
        f"{prefix}/nll": nll,
        f"{prefix}/perplexity": float(min(2.0**64, pow(2.718281828459045, nll))),
        f"{prefix}/accuracy": sums["correct_sum"] / weight,
        f"{prefix}/z_loss": sums["z_loss_sum"] / weight,
        f"{prefix}/tokens": sums["weight_sum"],
    }


class MetricWriter:
    """Appends `{"step": s, ...}` lines to `<workdir>/metrics.jsonl` and TensorBoard scalars."""

    def __init__(self, workdir: str, start_step: int):
        """`start_step`: the step the run (re)starts from. Rows logged after it by an
        interrupted earlier attempt are dropped, so each step appears once."""
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter  # no TensorFlow needed

        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        _truncate_after(path, start_step)
        self._jsonl = open(path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(name, float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _truncate_after(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


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
