"""The `t5x-lite` command: train | tokenizer | bench | demo.

    t5x-lite train --config=gin_configs/pretrain.py:gpt_tiny --config.train.num_steps=200 \
        --workdir=runs/x
    t5x-lite tokenizer --input=corpus.txt --vocab_size=4000 --model_type=unigram --output=spm
    t5x-lite bench --config=gin_configs/pretrain.py:gpt_small
    t5x-lite train --config=gin_configs/pretrain.py:t5_small --workdir=runs/x --dry_run

Config overrides are `--config.<dotted key>=<value>` (or `--config.<key> <value>`). Every
mistake a user can make ends in one line `error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from t5x_lite.errors import Interrupted, UserError


def _split_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'), ('c', '2')]."""
    overrides, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise UserError(
                f"unrecognized argument {arg!r}; overrides look like --config.a.b=value"
            )
        key, eq, value = arg[len("--config.") :].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise UserError(f"{arg} needs a value: {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        overrides.append((key, value))
        i += 1
    return overrides


def _load_config(args, extra):
    from t5x_lite import config as config_lib

    return config_lib.load(args.config, _split_overrides(extra))


def cmd_train(args, extra) -> None:
    config = _load_config(args, extra)
    if args.dry_run:
        from t5x_lite.train import distributed, dry_run

        distributed.initialize(config)  # a pod's dry run sees every process's devices
        report = dry_run.report(config)
        if distributed.is_main_process():
            print(report)
        return
    from t5x_lite.train import trainer

    result = trainer.train(config, args.workdir)
    import jax

    # With several processes the parameters live on every process's devices, which the
    # samplers (host arrays in, one process) do not handle yet: sample from a checkpoint.
    if jax.process_count() == 1:
        _print_sample(result)
    if jax.process_index() == 0:
        print(f"run files (config, metrics.jsonl, tensorboard/, checkpoints/): {args.workdir}")


def _print_sample(result) -> None:
    config = result.run.config
    if config.model.arch == "encoder_only" or config.sample.max_new_tokens <= 0:
        return
    from t5x_lite.downstream import sampling, search

    module = sampling if config.model.arch == "decoder_only" else search
    text, how = module.sample_from_config(result.run, result.state.params)
    print(f"\n--- sample ({how}) ---\n{text}\n---")


def cmd_tokenizer(args, extra) -> None:
    if extra:
        raise UserError(f"unrecognized arguments {' '.join(extra)}")
    from ml_collections import ConfigDict

    from t5x_lite import tokenizer as tokenizer_lib
    from t5x_lite.data import sources

    docs = []
    for path in [p for item in args.input for p in item.split(",") if p]:
        docs.extend(
            sources.load_source(
                ConfigDict(
                    dict(
                        kind="text",
                        path=path,
                        column="",
                        doc_mode=args.doc_mode,
                        tfds_name="",
                        split="",
                        tfds_data_dir="",
                    )
                )
            )
        )
    model_path = tokenizer_lib.train_tokenizer(
        docs,
        args.output,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        max_sentences=args.max_sentences,
    )
    tok = tokenizer_lib.Tokenizer(model_path)
    print(f"wrote {model_path} ({tok.vocab_size} pieces)")
    print("example: 'taaaaasty' ->", tok.pieces("taaaaasty"))


def cmd_bench(args, extra) -> None:
    config = _load_config(args, extra)
    from t5x_lite import bench

    bench.run_and_report(config, steps=args.steps, peak_tflops=args.peak_tflops)


def cmd_demo(args, extra) -> None:
    if extra:
        raise UserError(f"unrecognized arguments {' '.join(extra)}")
    from t5x_lite import demo

    result = demo.main(args.workdir)
    _print_sample(result)
    print(
        f"run files: {os.path.abspath(args.workdir)} (config.json, metrics.jsonl, "
        "tensorboard/, checkpoints/, tokenizer.model)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t5x-lite", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="pretrain (or resume) a model")
    train.add_argument("--config", required=True, help="gin_configs/FILE.py:VARIANT")
    train.add_argument("--workdir", required=True, help="run directory; rerun to resume")
    train.add_argument(
        "--dry_run",
        action="store_true",
        help="print the mesh, per-parameter shardings and per-device memory, then exit "
        "(no data read, nothing written)",
    )
    train.set_defaults(fn=cmd_train)

    tok = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer")
    tok.add_argument("--input", required=True, nargs="+", help="text files (or a,b,c)")
    tok.add_argument("--vocab_size", type=int, required=True)
    tok.add_argument("--model_type", choices=["bpe", "unigram", "char"], default="bpe")
    tok.add_argument("--output", default="tokenizer", help="output prefix: PREFIX.model")
    tok.add_argument("--doc_mode", choices=["line", "paragraph"], default="line")
    tok.add_argument("--max_sentences", type=int, default=1_000_000)
    tok.set_defaults(fn=cmd_tokenizer)

    bench = sub.add_parser("bench", help="step time, tokens/s, TFLOP/s, MFU, memory")
    bench.add_argument("--config", required=True)
    bench.add_argument("--steps", type=int, default=10, help="timed steps after warmup")
    bench.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="device peak FLOP/s in TFLOP/s; 0 = measure with a matmul probe",
    )
    bench.set_defaults(fn=cmd_bench)

    demo = sub.add_parser("demo", help="offline end-to-end demo (tokenizer + tiny GPT)")
    demo.add_argument("--workdir", default="runs/demo")
    demo.set_defaults(fn=cmd_demo)
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
    # A preempted or killed job (SIGTERM) stops the way Ctrl-C does: cleanly, between steps.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    sys.exit(main())


if __name__ == "__main__":
    run()
