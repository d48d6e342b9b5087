"""The PyTorch side of `t5x-lite bench --compare=hf`, in a process of its own.

`TorchSide` starts this module in a child process and asks it, one message at a time
over a pipe, to probe torch's matmul peaks, to load and warm up transformers' model of
an exported directory, and to time steps of it. Our JAX step runs in the parent, which
never imports torch: the two frameworks share no thread pools, no allocator and no
heap, and each is timed in a process set up as its users run it. While one side runs
its steps, the other waits on the pipe.

This module imports neither JAX nor torch at its top: the parent imports it for
`TorchSide` and `best_tflops`, the child imports torch when it starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from t5x_lite import host_memory

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def best_tflops(matmul_of_size: Callable[[int], Callable[[], object]], sizes, seconds) -> float:
    """The best square-matmul TFLOP/s over `sizes`, smallest first, each timed for about
    `seconds`; a size whose one matmul takes longer than that ends the probe."""
    best = 0.0
    for size in sizes:
        matmul, spent, runs = matmul_of_size(size), 0.0, 0
        while runs < 2 or spent < seconds:  # the first run compiles
            start = time.perf_counter()
            matmul()
            elapsed = time.perf_counter() - start
            spent, runs, best = spent + elapsed, runs + 1, max(best, 2 * size**3 / elapsed)
        if elapsed > seconds:
            break
    return best / 1e12


def timed(step, steps: int) -> list[float]:
    """Seconds of each of `steps` calls of `step`."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def rss_growth():
    """Samples the process's resident memory every millisecond while the block runs;
    yields a dict whose "mb" is then its growth to the peak (NaN where there is no /proc)."""
    growth = {"mb": math.nan}
    if not os.path.exists("/proc/self/statm"):
        yield growth
        return

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    start, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield growth
    finally:
        done.set()
        thread.join()
    growth["mb"] = (max(peak[0], rss()) - start) / 2**20


def hf_matmul_params(model) -> int:
    """Every linear layer's weight (GPT-2's Conv1D too; a tied output layer counted)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    linear = (torch.nn.Linear, Conv1D)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, linear))


class TheirStep:
    """transformers' model of an exported directory trained with torch's AdamW; a call
    runs one step and waits for it. `optimizer` holds our config's AdamW settings:
    learning_rate, b1, b2, eps, weight_decay, grad_clip_norm."""

    def __init__(self, torch, device, hf_dir, optimizer, inputs, *, bf16, torch_compile):
        import transformers

        self.torch, self.device, self.bf16 = torch, device, bf16
        self.hf_model = transformers.AutoConfig.from_pretrained(hf_dir).architectures[0]
        model = getattr(transformers, self.hf_model).from_pretrained(hf_dir, dtype=torch.float32)
        model = model.to(device).train()
        self.matmul_params, self.params = hf_matmul_params(model), list(model.parameters())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=optimizer["learning_rate"], betas=(optimizer["b1"], optimizer["b2"]),
            eps=optimizer["eps"], weight_decay=optimizer["weight_decay"], fused=True,
        )  # fmt: skip
        self.clip = optimizer["grad_clip_norm"]
        self.model = torch.compile(model) if torch_compile else model
        self.inputs = {
            name: torch.as_tensor(value, dtype=torch.long, device=device)
            for name, value in inputs.items()
        }

    def __call__(self) -> None:
        with self.torch.autocast(self.device, dtype=self.torch.bfloat16, enabled=self.bf16):
            loss = self.model(**self.inputs).loss
        loss.backward()
        if self.clip > 0:
            self.torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()


class _Child:
    """What the child process holds between messages: torch, and the loaded step."""

    def __init__(self):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()  # load reports, tied-weights notes
        transformers.utils.logging.disable_progress_bar()
        self.torch, self.step = torch, None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def hello(self) -> str:
        torch = self.torch
        threads = torch.get_num_threads()
        malloc = "freed memory kept" if host_memory.kept() else "malloc's default"
        return f"PyTorch {torch.__version__} on {self.device} ({threads} threads, {malloc})"

    def peaks(self, sizes: Sequence[int], seconds: float) -> dict[str, float]:
        torch, device = self.torch, self.device

        def of_size(size, dtype):
            a = torch.ones((size, size), dtype=getattr(torch, dtype), device=device)
            return lambda: (a @ a, device == "cuda" and torch.cuda.synchronize())

        return {
            f"torch_{name}": best_tflops(lambda n, d=dtype: of_size(n, d), sizes, seconds)
            for name, dtype in DTYPES.items()
        }

    def load(self, hf_dir, optimizer, inputs, bf16, torch_compile) -> dict:
        """Loads and warms up the step: its first step's seconds (torch.compile's
        compiling included), memory MB (CUDA peak, or RSS growth through the warm-up)."""
        self.step = None
        torch, device = self.torch, self.device
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with rss_growth() as memory:
            step = TheirStep(
                torch, device, hf_dir, optimizer, inputs, bf16=bf16, torch_compile=torch_compile
            )
            first_s = timed(step, 1)[0]
            step()
        self.step = step
        cuda_mb = device == "cuda" and torch.cuda.max_memory_allocated() / 2**20
        return dict(
            hf_model=step.hf_model, matmul_params=step.matmul_params, first_step_s=first_s,
            memory_mb=cuda_mb or memory["mb"],
        )  # fmt: skip

    def time(self, steps: int) -> list[float]:
        return timed(self.step, steps)


def _serve(requests, replies) -> None:
    """The child's loop over pickled messages: ("method", *args) -> ("ok", result) or
    ("error", traceback); ("close",) or the parent's end ends it. Without torch, every
    request answers ("missing", why)."""
    try:
        child, missing = _Child(), ""
    except ImportError as e:
        child, missing = None, f"HF columns skipped: {e} (pip install torch transformers)"
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:  # the parent is gone
            return
        if request[0] == "close":
            return
        if child is None:
            reply = ("missing", missing)
        else:
            try:
                reply = ("ok", getattr(child, request[0])(*request[1:]))
            except Exception:
                reply = ("error", traceback.format_exc())
        pickle.dump(reply, replies)
        replies.flush()


class TorchSide:
    """A child process (`python -m t5x_lite.bench_torch`) that holds torch and
    transformers; `hello()` is its one-line description, or None with `missing` saying
    why there is no torch. Messages travel pickled over two pipes of their own, so
    whatever torch prints reaches the terminal as it is."""

    def __init__(self, keep_freed_memory: bool = False):
        child_reads, self._requests_fd = os.pipe()
        self._replies_fd, child_writes = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "t5x_lite.bench_torch", str(child_reads), str(child_writes)]
            + (["--keep_freed_memory"] if keep_freed_memory else []),
            pass_fds=(child_reads, child_writes),
        )
        os.close(child_reads)
        os.close(child_writes)
        self._requests = os.fdopen(self._requests_fd, "wb")
        self._replies = os.fdopen(self._replies_fd, "rb")
        self.missing = ""

    def _ask(self, method: str, *args):
        try:
            pickle.dump((method, *args), self._requests)
            self._requests.flush()
            status, result = pickle.load(self._replies)
        except (EOFError, BrokenPipeError):
            code = self._process.wait(10)
            raise RuntimeError(
                f"the PyTorch side of bench --compare exited (code {code}) during {method}"
                + ("; killed, out of memory?" if code == -9 else "")
            ) from None
        if status == "error":
            raise RuntimeError(f"the PyTorch side of bench --compare failed:\n{result}")
        if status == "missing":
            self.missing = result
            return None
        return result

    def hello(self) -> str | None:
        return self._ask("hello")

    def peaks(self, sizes: Sequence[int], seconds: float) -> dict[str, float]:
        return self._ask("peaks", tuple(sizes), seconds) or {}

    def load(self, hf_dir, optimizer: dict, inputs: dict, *, bf16: bool, torch_compile: bool):
        return self._ask("load", hf_dir, optimizer, inputs, bf16, torch_compile)

    def time(self, steps: int) -> list[float]:
        return self._ask("time", steps)

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                pickle.dump(("close",), self._requests)
                self._requests.flush()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for pipe in (self._requests, self._replies):
            with contextlib.suppress(OSError):
                pipe.close()

    def __enter__(self) -> TorchSide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    if "--keep_freed_memory" in sys.argv[3:]:  # before torch starts its threads
        host_memory.keep_freed_memory()
    with (
        os.fdopen(int(sys.argv[1]), "rb") as requests,
        os.fdopen(int(sys.argv[2]), "wb") as replies,
    ):
        _serve(requests, replies)
