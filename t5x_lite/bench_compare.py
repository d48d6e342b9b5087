"""`t5x-lite bench --compare=hf`: our train step beside Hugging Face transformers'
PyTorch model of the same shapes, each in its own process, alternating between the two.

    t5x-lite bench --compare=hf --precision=fp32,bf16 [--config=A.py:x,B.py:y] \
        [--config.data.batch_size=2 ...] [--torch_compile] [--torch_malloc=same|default] \
        [--output_json=PATH]

Both train the same step: the config's batch (the same random tokens), AdamW with its
settings (torch's fused AdamW, as the transformers Trainer) and gradient clipping,
dropout 0, no z-loss (`SAME_STEP`, set after the user's overrides; an override applies
to each config that has its key). Their model is what `t5x-lite export` writes for
ours, with our initial weights: the shapes match by construction (matmul parameters of
both are counted). After two warm-up steps each, `reps` rounds of `steps` timed steps
alternate (ours, theirs, ours, ...), so a busy stretch of a shared machine slows both.
Ours runs here; theirs in a child process (bench_torch.py), so this one never imports
torch, and each side waits while the other runs.
Both are credited with our family's FLOPs (bench.py). bf16 is bf16 compute with fp32
params on both sides (model.dtype=bfloat16; torch.autocast). MFU is over each side's own
framework's square-matmul peak at that precision, and over the better of the two.
Where torch's matmul at a precision runs 10x or more below its fp32 rate (bf16 on a CPU
without bf16 instructions), that precision's HF column is skipped with a note.
Memory: ours is the train state plus XLA's step temporaries; theirs its process's RSS
growth from loading the model through its warm-up steps (Linux; the first row's includes
torch's one-time allocations), or torch's CUDA peak. torch uses its default threads
(OMP_NUM_THREADS sets them): on a CPU that other jobs keep busy its OpenMP threads stall
each other (a tiny T5 step: 6 ms on 1 thread, 1.3 s on 2 of 2 busy cores), so compare
there with OMP_NUM_THREADS=1, or on a quiet machine.
Allocator: the `t5x-lite` command keeps freed memory by default (host_memory.py), and by
default (`--torch_malloc=same`) the PyTorch process then does too, so the ratio compares
the frameworks rather than two malloc settings: kept, PyTorch's own GPT fp32 step ran
1.1-1.25x faster at the issue's shapes (two runs, 2-core EPYC).
`T5X_LITE_KEEP_FREED_MEMORY=0` gives both malloc's default; `--torch_malloc=default`
leaves PyTorch's alone while ours keeps its memory, where PyTorch ran slower than with
either setting on both sides (README).

Left unequal: our BERT also runs its pooler and NSP layer on [CLS] (d_model**2 +
2 d_model matmul parameters, once per row), which BertForMaskedLM lacks; HF GPT-2
shifts the labels, so its loss covers T - 1 of T positions; torch's AdamW decays every
parameter, ours not biases and LayerNorm scales.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from t5x_lite import bench, bench_torch, families, host_memory
from t5x_lite import config as config_lib
from t5x_lite.errors import UserError

DEFAULT_VARIANTS = ("gpt_small", "roberta_small", "t5_small")  # of gin_configs/pretrain.py
SAME_STEP = (
    ("model.dropout_rate", "0.0"),
    ("optimizer.name", "adamw"),  # T5's configs train with Adafactor, which torch lacks
    ("loss.z_loss", "0.0"),  # transformers has none
    ("loss.label_smoothing", "0.0"),
)
DTYPES = bench_torch.DTYPES
# Square matmul probes, smallest first; a size whose one matmul takes longer than the
# seconds each size gets ends the probe (torch's bf16 on a CPU without bf16 instructions
# is ~20x slower than its fp32).
PROBE_SIZES, PROBE_SECONDS = (512, 1024, 2048), 1.0
# torch at a precision whose square matmul runs this many times below its fp32 rate has no
# kernels for it on this machine (bf16 on an AVX2 CPU: ~100x); a step would take hours, so
# that precision's HF column is skipped with a note.
SLOW_PRECISION_FACTOR = 10


def default_configs() -> list[str]:
    path = config_lib.shipped_config("pretrain.py")
    if path is None:
        raise UserError("no gin_configs/pretrain.py next to the package; pass --config=...")
    return [f"{path}:{variant}" for variant in DEFAULT_VARIANTS]


def load_configs(specs: Sequence[str], overrides, precision: str) -> list:
    """Each spec with the overrides whose key its config has (a key no config has is an
    error), then `SAME_STEP` and the precision."""
    if precision not in DTYPES:
        raise UserError(f"--precision={precision!r}; use fp32, bf16 or fp32,bf16")
    keys = {spec: config_lib.flatten(config_lib.load(spec)) for spec in specs}
    unknown = [key for key, _ in overrides if not any(key in k for k in keys.values())]
    if unknown:
        raise UserError(f"no config of {', '.join(specs)} has the key {unknown[0]!r}")
    fixed = [*SAME_STEP, ("model.dtype", DTYPES[precision])]
    return [
        config_lib.load(spec, [(k, v) for k, v in overrides if k in keys[spec]] + fixed)
        for spec in specs
    ]


def matmul_peaks(torch_side: bench_torch.TorchSide | None) -> dict[str, float]:
    """Square-matmul TFLOP/s, the best over sizes and repeats, of each framework at each
    precision (JAX's times its device count, as bench.py's; torch's in its own process).
    JAX's bf16 matmul outputs float32, as our bf16 products do (models/matmul.py): on
    XLA:CPU that is its fast bf16 path, a bf16 output its slow one."""
    jax_matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    peaks = {}
    for name, dtype in DTYPES.items():

        def jax_of_size(size, dtype=dtype):
            a = jnp.ones((size, size), dtype)
            return lambda: jax_matmul(a, a).block_until_ready()

        best = bench_torch.best_tflops(jax_of_size, PROBE_SIZES, PROBE_SECONDS)
        peaks[f"jax_{name}"] = best * jax.device_count()
    if torch_side is not None:
        peaks.update(torch_side.peaks(PROBE_SIZES, PROBE_SECONDS))
    return peaks


def slow_torch_note(precision: str, peaks: dict[str, float]) -> str:
    """Why the HF side is skipped at this precision, or '' to run it."""
    fp32, here = peaks.get("torch_fp32"), peaks.get(f"torch_{precision}")
    if not fp32 or here is None or here * SLOW_PRECISION_FACTOR >= fp32:
        return ""
    return (
        f"HF {precision} skipped: torch's {precision} matmul reaches {here:.4f} TFLOP/s "
        f"here, {fp32 / here:.0f}x below its fp32 (no {precision} kernels on this machine)"
    )


def our_matmul_params(params) -> int:
    """Every kernel, and the token embedding where it is also the output layer."""
    flat = traverse_util.flatten_dict(params)
    kernels = sum(value.size for path, value in flat.items() if path[-1].endswith("kernel"))
    tied = not any(path[-1] == "logits_kernel" for path in flat)
    return kernels + (flat["token_embed", "embedding"].size if tied else 0)


def hf_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our batch -> the input_ids and labels every transformers model here takes: the
    encoder's inputs (decoder-only: the decoder's) and the decoder's targets
    (encoder-only: the encoder's)."""

    def first_of(*names: str) -> np.ndarray:
        return next(batch[name] for name in names if name in batch)

    return {
        "input_ids": first_of("encoder_input_tokens", "decoder_input_tokens"),
        "labels": first_of("decoder_target_tokens", "encoder_target_tokens"),
    }


def _load_theirs(torch_side, family, config, ours: bench.CompiledStep, precision, torch_compile):
    """Exports our initial weights (before our first step donates them) and has the
    PyTorch side load them and warm up: -> its hf_model, matmul_params, first_step_s
    (torch.compile's compiling included) and memory_mb."""
    ids = {name: getattr(ours.vocab, name) for name in ("bos_id", "eos_id", "pad_id")}
    opt = config.optimizer
    optimizer = dict(
        learning_rate=opt.learning_rate, b1=opt.b1, b2=opt.b2, eps=opt.eps,
        weight_decay=opt.weight_decay, grad_clip_norm=opt.grad_clip_norm,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as hf_dir:
        family.export_hf(config.model, ours.state.params, hf_dir, labels=(), special_ids=ids)
        return torch_side.load(
            hf_dir, optimizer, hf_inputs(ours.host_batch),
            bf16=precision == "bf16", torch_compile=torch_compile,
        )  # fmt: skip


def compare_one(spec, config, precision, torch_side, peaks, *, steps, reps, torch_compile):
    """One config at one precision -> its row: both sides' figures ('theirs_*' NaN
    without torch) and their ratio, theirs / ours step time (> 1: ours is faster)."""
    family = families.get(config.model.arch)
    ours = bench.CompiledStep(config)
    tokens, flops = ours.tokens_and_flops()
    row = dict(
        config=os.path.basename(spec), family=family.name, precision=precision,
        batch_size=config.data.batch_size, row_tokens=tokens, hf_model="",
        flops_per_step=config.data.batch_size * flops, ours_compile_s=ours.compile_s,
        ours_memory_mb=ours.state_memory_mb + ours.temp_memory_mb,
        ours_matmul_params=our_matmul_params(ours.state.params),
        theirs_first_step_s=math.nan, theirs_memory_mb=math.nan, theirs_matmul_params=0,
        note=slow_torch_note(precision, peaks) if torch_side is not None else "",
    )  # fmt: skip
    theirs = torch_side is not None and not row["note"]
    if theirs:
        loaded = _load_theirs(torch_side, family, config, ours, precision, torch_compile)
        row["hf_model"] = loaded["hf_model"] + (" + torch.compile" if torch_compile else "")
        row["theirs_first_step_s"], row["theirs_memory_mb"] = (
            loaded["first_step_s"], loaded["memory_mb"],
        )  # fmt: skip
        row["theirs_matmul_params"] = loaded["matmul_params"]
    ours()
    ours()  # warm-up, as theirs had
    times, row["rep_ratios"] = {"ours": [], "theirs": []}, []
    for _ in range(reps):
        times["ours"] += bench.timed(ours, steps)
        if theirs:
            times["theirs"] += torch_side.time(steps)
            rep = np.median(times["theirs"][-steps:]) / np.median(times["ours"][-steps:])
            row["rep_ratios"].append(float(rep))
    best = max(peaks.get(f"{framework}_{precision}", 0.0) for framework in ("jax", "torch"))
    for side, framework in (("ours", "jax"), ("theirs", "torch")):
        step_s = float(np.median(times[side])) if times[side] else math.nan
        own = peaks.get(f"{framework}_{precision}")
        tflops = row["flops_per_step"] / step_s / 1e12
        row[f"{side}_step_s"], row[f"{side}_tflops"] = step_s, tflops
        row[f"{side}_tokens_per_s"] = config.data.batch_size * tokens / step_s
        row[f"{side}_mfu_own"] = tflops / own if own else math.nan
        row[f"{side}_mfu_best"] = tflops / best
    row["ratio"] = row["theirs_step_s"] / row["ours_step_s"]
    return row


def open_torch_side(keep_freed_memory=False) -> tuple[bench_torch.TorchSide | None, str]:
    """The PyTorch side in its own process and a line on it, or None and a note on why
    there is no HF column (no torch or transformers here). `keep_freed_memory`: its malloc
    keeps what it frees, as our CLI's does by default (host_memory.py)."""
    side = bench_torch.TorchSide(keep_freed_memory)
    line = side.hello()
    if line is None:
        side.close()
        return None, side.missing
    return side, line


def compare(
    specs,
    overrides=(),
    *,
    precisions=("fp32",),
    steps=5,
    reps=3,
    torch_compile=False,
    torch_malloc="same",
):
    """-> (rows, matmul peaks, a line on the frameworks): every spec at every precision.
    `torch_malloc`: "same", the PyTorch process keeps freed memory where ours does (so the
    ratio compares the frameworks, not two allocator settings); "default", malloc's own."""
    if torch_malloc not in ("same", "default"):
        raise UserError(f"--torch_malloc={torch_malloc!r}; use same or default")
    configs = {
        precision: load_configs(specs, list(overrides), precision) for precision in precisions
    }
    torch_side, torch_line = open_torch_side(torch_malloc == "same" and host_memory.kept())
    with torch_side or contextlib.nullcontext():
        peaks = matmul_peaks(torch_side)
        options = dict(steps=steps, reps=reps, torch_compile=torch_compile)
        rows = [
            compare_one(spec, config, precision, torch_side, peaks, **options)
            for precision in precisions
            for spec, config in zip(specs, configs[precision])
        ]
    malloc = "freed memory kept" if host_memory.kept() else "malloc's default"
    jax_line = (
        f"JAX {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind} ({malloc})"
    )
    return rows, peaks, f"{jax_line}; {torch_line}"


COLUMNS = (  # header, row key, format
    ("config", "config", ""), ("HF model", "hf_model", ""), ("precision", "precision", ""),
    ("batch", "batch_size", "d"), ("tokens/row", "row_tokens", "d"),
    ("ours ms", "ours_step_s", ".1f"), ("HF ms", "theirs_step_s", ".1f"),
    ("ours vs HF", "ratio", ".2f"), ("ours tok/s", "ours_tokens_per_s", ".0f"),
    ("HF tok/s", "theirs_tokens_per_s", ".0f"), ("ours TFLOP/s", "ours_tflops", ".3f"),
    ("HF TFLOP/s", "theirs_tflops", ".3f"), ("ours MFU own", "ours_mfu_own", ".1%"),
    ("ours MFU best", "ours_mfu_best", ".1%"), ("HF MFU own", "theirs_mfu_own", ".1%"),
    ("HF MFU best", "theirs_mfu_best", ".1%"), ("ours compile s", "ours_compile_s", ".1f"),
    ("ours MB", "ours_memory_mb", ".0f"), ("HF MB", "theirs_memory_mb", ".0f"),
)  # fmt: skip


def markdown_table(rows: Sequence[dict]) -> str:
    """One line per row, '-' where a figure is missing (no torch)."""

    def cell(key: str, spec: str, value) -> str:
        if value == "" or value != value:  # NaN
            return "-"
        return format(value * 1e3 if key.endswith("_step_s") else value, spec)

    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(k, f, row[k]) for _, k, f in COLUMNS) + " |")
    return "\n".join(lines)


def run_and_report(specs, overrides, *, output_json: str = "", steps: int, reps: int, **options):
    """Compare and print the frameworks, their peaks and the markdown table; -> rows."""
    rows, peaks, frameworks = compare(
        specs or default_configs(), overrides, steps=steps, reps=reps, **options
    )
    print(frameworks)
    print("square-matmul peak TFLOP/s: " + ", ".join(f"{k} {v:.3f}" for k, v in peaks.items()))
    print(
        f"step time: the median of {reps} alternating rounds of {steps} steps per side; "
        "ours vs HF = HF's step time / ours (> 1: ours is faster)\n"
    )
    print(markdown_table(rows))
    for note in dict.fromkeys(row["note"] for row in rows if row["note"]):
        print(note)
    if output_json:
        rows_json = [{k: None if v != v else v for k, v in row.items()} for row in rows]  # NaN
        os.makedirs(os.path.dirname(output_json) or ".", exist_ok=True)
        with open(output_json, "w") as f:
            json.dump(dict(frameworks=frameworks, peaks=peaks, rows=rows_json), f, indent=2)
        print(f"\nwrote {output_json}")
    return rows
