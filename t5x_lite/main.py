"""The `t5x-lite` command: train | finetune | eval | generate | cloze | icl | sweep |
export | tokenizer | bench | demo.

    t5x-lite train --config=gin_configs/pretrain.py:gpt_tiny --config.train.num_steps=200 \
        --workdir=runs/x
    t5x-lite finetune --config=gin_configs/finetune.py:bert_tiny_sst2 \
        --config.finetune.checkpoint=runs/bert --workdir=runs/bert_sst2
    t5x-lite eval --workdir=runs/bert_sst2 [--config.task.eval.path=other.tsv]
    t5x-lite generate --workdir=runs/gpt --prompt "The " [--config.sample.top_k=5]
    t5x-lite generate --workdir=runs/t5 --prompt "The <extra_id_0> of the <extra_id_1> ."
    t5x-lite generate --workdir=runs/bert --prompt "The [MASK] of the play ." --top_n=5
    t5x-lite cloze --probes=probes.txt --workdir=runs/bert --workdir=runs/t5 --workdir=runs/gpt
    t5x-lite icl --config=gin_configs/icl.py:sst2 --config.icl.checkpoint=runs/gpt \
        [--workdir=runs/gpt_icl]
    t5x-lite sweep --sweep=experiments/pretraining_helps.py:cpu --workdir=sweeps --jobs=2
    t5x-lite tokenizer --input=corpus.txt --vocab_size=4000 --model_type=unigram --output=spm
    t5x-lite bench --config=gin_configs/pretrain.py:gpt_small
    t5x-lite export --workdir=runs/bert_sst2 --output=runs/bert_sst2_hf
    t5x-lite train --config=gin_configs/pretrain.py:t5_small --workdir=runs/x --dry_run

Config overrides are `--config.<dotted key>=<value>` (or `--config.<key> <value>`). Every
mistake a user can make ends in one line `error: ...` and exit status 2. This file is
argparse and dispatch: the work is in `t5x_lite.api`, which Python callers use too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from t5x_lite import api
from t5x_lite.errors import Interrupted, UserError


def _config(args, extra):
    """The command's config and the dotted keys its command line sets."""
    overrides = api.parse_overrides(extra)
    return api.load_config(args.config, overrides), {key for key, _ in overrides}


def _restore(args, extra):
    return api.restore(
        args.workdir,
        api.parse_overrides(extra),
        config=getattr(args, "config", ""),
        checkpoint_format=getattr(args, "checkpoint_format", "auto"),
    )


def _no_extra(extra) -> None:
    if extra:
        raise UserError(f"unrecognized arguments {' '.join(extra)}")


def cmd_train(args, extra) -> None:
    config, _ = _config(args, extra)
    if args.dry_run:
        print(api.dry_run(config), end="")
        return
    result = api.train(config, args.workdir)
    _print_sample(result)
    if api.is_main_process():
        print(f"run files (config, metrics.jsonl, tensorboard/, checkpoints/): {args.workdir}")


def _print_sample(result) -> None:
    sampled = api.sample(result)
    if sampled:
        text, how = sampled
        print(f"\n--- sample ({how}) ---\n{text}\n---")


def cmd_finetune(args, extra) -> None:
    config, explicit_keys = _config(args, extra)
    if "task" not in config:
        raise UserError(
            f"--config={args.config} has no task section; fine-tune with a config from "
            "gin_configs/finetune.py (pretraining uses `t5x-lite train`)"
        )
    _print_metrics(config, api.finetune(config, args.workdir, explicit_keys), args.workdir)


def cmd_eval(args, extra) -> None:
    restored = _restore(args, extra)
    metrics = api.evaluate(restored, args.output_dir, allow_fresh_heads=args.allow_fresh_heads)
    _print_metrics(restored.run.config, metrics, restored.source)


def _print_metrics(config, metrics: dict, source: str) -> None:
    rows = metrics["scored"]["num_rows"]
    print(f"eval on {config.task.eval.path} ({rows} rows), {source}:")
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"predictions and metrics: {metrics['output_dir']}/predictions.tsv, metrics.json")


def cmd_generate(args, extra) -> None:
    """Continue (GPT), infill sentinel spans (T5) or fill [MASK]s (BERT) in each prompt,
    with the run's config.sample settings (overridable)."""
    restored = _restore(args, extra)
    options = dict(top_n=args.top_n, allow_fresh_heads=args.allow_fresh_heads)
    print(api.generate(restored, args.prompt, **options))


def cmd_cloze(args, extra) -> None:
    """Answer every probe with each run, in its family's format; one column per run."""
    _no_extra(extra)
    options = dict(top_n=args.top_n, allow_fresh_heads=args.allow_fresh_heads)
    print(api.cloze(args.workdir, args.probes, **options), end="")


def cmd_icl(args, extra) -> None:
    """k-shot in-context classification of config.task's eval split for every k."""
    config, _ = _config(args, extra)
    print(api.in_context(config, args.workdir or ""))


def cmd_sweep(args, extra) -> None:
    """Run a study's cells over seeds and write its tables (resumable)."""
    _no_extra(extra)
    try:
        text, failed = api.sweep(
            args.sweep,
            args.workdir,
            jobs=args.jobs,
            print_commands=args.print_commands,
            aggregate_only=args.aggregate_only,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "sweep stopped; running jobs saved their checkpoints; rerun the same command "
            "to resume (finished jobs are kept)"
        ) from None
    print(text)
    if failed:
        raise UserError(
            f"{len(failed)} job(s) failed or were blocked ({', '.join(failed[:3])}"
            f"{', ...' if len(failed) > 3 else ''}); see their log.txt, fix, and rerun the "
            "same command (finished jobs are kept)"
        )


def cmd_export(args, extra) -> None:
    _no_extra(extra)
    restored = _restore(args, [])
    summary = api.export(restored, args.output, allow_fresh_heads=args.allow_fresh_heads)
    print(f"exported {restored.source} to {args.output}: {summary}")


def cmd_tokenizer(args, extra) -> None:
    _no_extra(extra)
    paths = [p for item in args.input for p in item.split(",") if p]
    tok = api.train_tokenizer(
        paths,
        args.output,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        doc_mode=args.doc_mode,
        max_sentences=args.max_sentences,
    )
    print(f"wrote {args.output}.model ({tok.vocab_size} pieces)")
    print("example: 'taaaaasty' ->", tok.pieces("taaaaasty"))


def cmd_bench(args, extra) -> None:
    config, _ = _config(args, extra)
    api.bench(config, steps=args.steps, peak_tflops=args.peak_tflops)


def cmd_demo(args, extra) -> None:
    from t5x_lite import demo, fileio

    _no_extra(extra)
    _print_sample(demo.main(args.workdir))
    demo.finetune_on_sst2(args.workdir)
    print(
        f"run files: {fileio.absolute(args.workdir)} (config.json, metrics.jsonl, "
        "tensorboard/, checkpoints/, tokenizer.model; sst2_*/eval/ when fine-tuned)"
    )


def _arg(flag: str, help: str = "", **options) -> tuple[str, dict]:
    return flag, dict(help=help, **options)


_WORKDIR = _arg("--workdir", "run directory; rerun to resume", required=True)
# Commands that read a model take a run or a Hugging Face directory.
_MODEL = _arg("--workdir", "a run, or a Hugging Face directory", required=True)
_HF_CONFIG = _arg(
    "--config", "Hugging Face directories only: FILE.py:VARIANT for the other settings "
    "(default: the family's variant of gin_configs/pretrain.py)", default="",
)  # fmt: skip
_FORMAT = _arg("--checkpoint_format", "auto | t5x_lite | hf_bert | hf_t5 | hf_gpt2", default="auto")
_FRESH = _arg("--allow_fresh_heads", "run heads with no trained weights", action="store_true")
# name -> (function, help, arguments)
COMMANDS = {
    "train": (cmd_train, "pretrain (or resume) a model", [
        _arg("--config", "gin_configs/FILE.py:VARIANT", required=True), _WORKDIR,
        _arg("--dry_run", "print the mesh, shardings and per-device memory; read no data",
             action="store_true"),
    ]),
    "finetune": (cmd_finetune, "fine-tune on a labelled task, then score its eval split", [
        _arg("--config", "gin_configs/finetune.py:VARIANT", required=True), _WORKDIR,
    ]),
    "eval": (cmd_eval, "score a fine-tuned model: predictions TSV and metrics JSON", [
        _MODEL, _HF_CONFIG, _FORMAT, _FRESH,
        _arg("--output_dir", "default: <workdir>/eval/<eval file stem>", default=""),
    ]),
    "generate": (cmd_generate, "continue (GPT), infill spans (T5) or fill [MASK]s (BERT)", [
        _MODEL, _HF_CONFIG, _FORMAT, _FRESH,
        _arg("--prompt", "repeat for several prompts", required=True, action="append"),
        _arg("--top_n", "BERT: candidates shown per [MASK]", type=int, default=5),
    ]),
    "cloze": (cmd_cloze, "answer fill-in-the-blank probes, models side by side", [
        _arg("--probes", "one sentence with ___ per line", required=True),
        _arg("--workdir", "a run or Hugging Face directory; repeat for several",
             required=True, action="append"),
        _arg("--top_n", "answers shown per model and probe", type=int, default=3), _FRESH,
    ]),
    "icl": (cmd_icl, "k-shot in-context classification of a task's eval split", [
        _arg("--config", "gin_configs/icl.py:VARIANT", required=True),
        _arg("--workdir", "optional: where to write icl_metrics.json"),
    ]),
    "sweep": (cmd_sweep, "run a study (experiments/<study>.py:<preset>) over seeds -> tables", [
        _arg("--sweep", "experiments/STUDY.py:PRESET", required=True),
        _arg("--workdir", "the sweep's directory; rerun to resume", required=True),
        _arg("--jobs", "jobs run at once, each in its own process", type=int, default=1),
        _arg("--print_commands", "print one t5x-lite command per job; run nothing",
             action="store_true"),
        _arg("--aggregate_only", "the tables from the finished jobs; run nothing",
             action="store_true"),
    ]),
    "export": (cmd_export, "write a run as a Hugging Face directory (from_pretrained)", [
        _arg("--workdir", "a trained or fine-tuned run", required=True),
        _arg("--output", "a new (or empty) directory", required=True), _FRESH,
    ]),
    "tokenizer": (cmd_tokenizer, "train a sentencepiece tokenizer", [
        _arg("--input", "text files (or a,b,c)", required=True, nargs="+"),
        _arg("--vocab_size", type=int, required=True),
        _arg("--model_type", choices=["bpe", "unigram", "char"], default="bpe"),
        _arg("--output", "output prefix: PREFIX.model", default="tokenizer"),
        _arg("--doc_mode", choices=["line", "paragraph"], default="line"),
        _arg("--max_sentences", type=int, default=1_000_000),
    ]),
    "bench": (cmd_bench, "step time, tokens/s, TFLOP/s, MFU, memory", [
        _arg("--config", required=True),
        _arg("--steps", "timed steps after warmup", type=int, default=10),
        _arg("--peak_tflops", "device peak in TFLOP/s; 0 = a matmul probe measures it",
             type=float, default=0.0),
    ]),
    "demo": (cmd_demo, "offline end-to-end demo (tokenizer + tiny GPT)", [
        _arg("--workdir", default="runs/demo"),
    ]),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5x-lite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_text, arguments) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        for flag, options in arguments:
            command.add_argument(flag, **options)
        command.set_defaults(fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        args.fn(args, extra)
    except Interrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A preempted or killed job (SIGTERM) stops the way Ctrl-C does (the training loop
    # turns both into a stop after the current step; see trainer.stop_requests).
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    sys.exit(main())


if __name__ == "__main__":
    run()
