"""nanoGPT's CPU recipe, ours against eager PyTorch on one machine: runs
`t5x-lite train --config=gin_configs/pretrain.py:shakespeare_char` and
`benchmarks/char_gpt_torch.py` (the recipe in plain PyTorch) in alternation, each in a
fresh process and, for ours, a fresh workdir, and prints every run's whole-command wall
time and final validation loss, then a markdown table of medians and the ratio of wall
times per round.

    T5X_LITE_DATA_DIR=../shared/data python benchmarks/shakespeare_char.py --rounds=3
    make bench-shakespeare        # the same, 3 rounds

Ours runs with the CLI's defaults, so its persistent compilation cache is whatever the
user's is (warm after the first run); `--cold_cache` gives each of our runs an empty
one. `--steps` shortens both recipes (a smoke run: tests/test_shakespeare_bench.py).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_ours(steps: int, workdir: str, cache_dir: str | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "t5x_lite.main",
        "train",
        "--config=gin_configs/pretrain.py:shakespeare_char",
        f"--workdir={workdir}",
        f"--config.train.num_steps={steps}",
        "--config.train.progress_bar=false",
    ]
    if steps < 2000:  # keep evaluations and the checkpoint within a short run
        every = max(1, steps // 2)
        command += [
            f"--config.train.eval_every={every}",
            f"--config.train.checkpoint_every={steps}",
            f"--config.optimizer.warmup_steps={min(100, steps // 2)}",
        ]
    env = dict(os.environ)
    if cache_dir is not None:
        env["T5X_LITE_COMPILATION_CACHE"] = cache_dir
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"shakespeare_char: our run failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = [r for r in rows if any(k.startswith("eval/") and k.endswith("/loss") for k in r)]
    last = evals[-1]
    loss = next(v for k, v in last.items() if k.startswith("eval/") and k.endswith("/loss"))
    first = re.search(r"first step ([0-9.]+) s after start", proc.stdout + proc.stderr)
    return {
        "wall_s": wall,
        "val_loss": loss,
        "step": last["step"],
        "first_step_s": float(first.group(1)) if first else None,
    }


def run_torch(steps: int, data: str, keep_freed_memory: bool = False) -> dict:
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "char_gpt_torch.py"),
        f"--steps={steps}",
        f"--data={data}",
    ] + (["--keep_freed_memory"] if keep_freed_memory else [])
    if steps < 2000:
        command.append(f"--eval_every={max(1, steps // 2)}")
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"shakespeare_char: the PyTorch run failed:\n{proc.stderr[-3000:]}")
    result = re.search(r"result: val_loss=([0-9.]+) loop_s=([0-9.]+)", proc.stdout)
    return {"wall_s": wall, "val_loss": float(result.group(1)), "loop_s": float(result.group(2))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--cold_cache", action="store_true")
    parser.add_argument(
        "--torch_keep_freed_memory",
        action="store_true",
        help="also run the PyTorch reference with malloc keeping what it frees, as ours does",
    )
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    data_dir = os.environ.get("T5X_LITE_DATA_DIR")
    if not data_dir:
        raise SystemExit("shakespeare_char: set T5X_LITE_DATA_DIR (e.g. ../shared/data)")
    data = os.path.join(os.path.abspath(data_dir), "tinyshakespeare", "input.txt")
    if not os.path.exists(data):
        raise SystemExit(f"shakespeare_char: no Tiny Shakespeare at {data} (T5X_LITE_DATA_DIR)")
    os.environ["T5X_LITE_DATA_DIR"] = os.path.abspath(data_dir)

    results = []
    with tempfile.TemporaryDirectory(prefix="shakespeare_char_") as scratch:
        for i in range(args.rounds):
            cache = os.path.join(scratch, f"cache{i}") if args.cold_cache else None
            # Alternate which side goes first, so neither always runs on a warmer host.
            sides = ["ours", "torch"] + (["torch_kept"] if args.torch_keep_freed_memory else [])
            order = sides if i % 2 == 0 else sides[::-1]
            row = {}
            for side in order:
                if side == "ours":
                    row[side] = run_ours(args.steps, os.path.join(scratch, f"run{i}"), cache)
                else:
                    row[side] = run_torch(args.steps, data, side == "torch_kept")
                print(
                    f"round {i + 1} {side}: {row[side]['wall_s']:.1f} s, "
                    f"val loss {row[side]['val_loss']:.4f}",
                    flush=True,
                )
            row["ratio"] = row["torch"]["wall_s"] / row["ours"]["wall_s"]
            if "torch_kept" in row:
                row["ratio_kept"] = row["torch_kept"]["wall_s"] / row["ours"]["wall_s"]
            results.append(row)

    def median(side, key):
        return statistics.median(r[side][key] for r in results)

    ratios = ", ".join(f"{r['ratio']:.2f}" for r in results)
    print(f"\n{args.steps} steps, {args.rounds} alternated rounds, medians:\n")
    print("| | val loss | wall time (whole command) |")
    print("|---|---|---|")
    print(
        f"| PyTorch eager (benchmarks/char_gpt_torch.py) | {median('torch', 'val_loss'):.3f} | "
        f"{median('torch', 'wall_s'):.1f} s (loop {median('torch', 'loop_s'):.1f} s) |"
    )
    if args.torch_keep_freed_memory:
        print(
            f"| PyTorch eager, freed memory kept | {median('torch_kept', 'val_loss'):.3f} | "
            f"{median('torch_kept', 'wall_s'):.1f} s "
            f"(loop {median('torch_kept', 'loop_s'):.1f} s) |"
        )
    print(
        f"| t5x_lite (pretrain.py:shakespeare_char) | {median('ours', 'val_loss'):.3f} | "
        f"{median('ours', 'wall_s'):.1f} s (first step at "
        f"{median('ours', 'first_step_s'):.1f} s) |"
    )
    print(f"\nours vs PyTorch, wall time per round: {ratios}")
    if args.torch_keep_freed_memory:
        kept = ", ".join(f"{r['ratio_kept']:.2f}" for r in results)
        print(f"ours vs PyTorch with freed memory kept, per round: {kept}")
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
