"""The `t5x-lite` command: train | finetune | eval | generate | cloze | icl | tokenizer |
bench | demo.

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


def _explicit_keys(extra) -> set[str]:
    """The dotted config keys the command line sets."""
    return {key for key, _ in _split_overrides(extra)}


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


def cmd_finetune(args, extra) -> None:
    config = _load_config(args, extra)
    if "task" not in config:
        raise UserError(
            f"--config={args.config} has no task section; fine-tune with a config from "
            "gin_configs/finetune.py (pretraining uses `t5x-lite train`)"
        )
    from t5x_lite.train import finetuning, restore, trainer

    finetuning.resolve(config, _explicit_keys(extra))
    result = trainer.train(config, args.workdir)
    _evaluate(restore.from_result(result), args.workdir, "")


def _restore(args, extra, workdir: str | None = None):
    from t5x_lite.train import restore

    return restore.restore(
        workdir or args.workdir,
        _split_overrides(extra),
        config_spec=getattr(args, "config", "") or "",
        checkpoint_format=getattr(args, "checkpoint_format", "auto"),
    )


def cmd_eval(args, extra) -> None:
    restored = _restore(args, extra)
    if "task" not in restored.run.config:
        raise UserError(
            f"{args.workdir} is not a fine-tuning run (its config has no task); for a Hugging "
            "Face directory give --config=gin_configs/finetune.py:VARIANT"
        )
    if restored.run.config.objective.name == "classification":
        restored.check_output("class_logits", args.allow_fresh_heads)
    _evaluate(restored, args.workdir, args.output_dir)


def _evaluate(restored, workdir: str, output_dir: str) -> None:
    import json

    from t5x_lite.downstream import evaluate

    config = restored.run.config
    out_dir = output_dir or evaluate.results_dir(workdir, config.task.eval.path)
    metrics = evaluate.evaluate_restored(restored, out_dir)
    rows = metrics["scored"]["num_rows"]
    print(f"eval on {config.task.eval.path} ({rows} rows), {restored.source}:")
    print(json.dumps(metrics, indent=2, sort_keys=True))
    print(f"predictions and metrics: {out_dir}/predictions.tsv, metrics.json")


# Short family names for output columns, by config.model.arch.
FAMILY_NAMES = {"decoder_only": "gpt", "encoder_only": "bert", "encoder_decoder": "t5"}


def cmd_generate(args, extra) -> None:
    """Continue (GPT), infill sentinel spans (T5) or fill [MASK]s (BERT) in each prompt,
    with the run's config.sample settings (overridable)."""
    restored = _restore(args, extra)
    run, params = restored.run, restored.params
    arch = run.config.model.arch
    if arch == "encoder_only":
        restored.check_output("mlm_logits", args.allow_fresh_heads)
        _fill_masks(run, params, args.prompt, args.top_n)
        return
    new_tokens = run.config.sample.max_new_tokens
    if new_tokens < 1:
        raise UserError(
            f"config.sample.max_new_tokens={new_tokens} leaves nothing to generate; pass "
            "--config.sample.max_new_tokens=N with N >= 1"
        )
    if arch == "decoder_only":
        _continue_prompts(run, params, args.prompt)
    else:
        _infill_spans(run, params, args.prompt)


def _continue_prompts(run, params, prompts: list[str]) -> None:
    from t5x_lite.downstream import sampling

    sample = run.config.sample
    options = dict(temperature=sample.temperature, top_k=sample.top_k, top_p=sample.top_p)
    texts = sampling.generate_batch(
        run.model,
        params,
        run.tokenizer,
        prompts,
        max_len=run.config.model.max_len,
        max_new_tokens=sample.max_new_tokens,
        seed=sample.seed,
        **options,
    )
    how = sampling.describe(**options)
    print(f"--- {how}, up to {sample.max_new_tokens} new tokens, seed {sample.seed} ---")
    print("\n\n".join(texts))


def _infill_spans(run, params, prompts: list[str]) -> None:
    from t5x_lite.downstream import search

    sample = run.config.sample
    inputs_length = run.config.objective.inputs_length
    for number, prompt in enumerate(prompts, start=1):
        length = len(run.tokenizer.encode(prompt)) + 1
        if length > inputs_length:
            raise UserError(
                f"--prompt {number} is {length} tokens with EOS but the model's inputs hold "
                f"{inputs_length} (config.objective.inputs_length); shorten the prompt"
            )
    outputs = search.generate_text(
        run.model,
        params,
        run.tokenizer,
        prompts,
        inputs_length=inputs_length,
        max_length=sample.max_new_tokens,
        beam_size=sample.beam_size,
        length_penalty_alpha=sample.length_penalty_alpha,
    )
    how = "greedy"
    if sample.beam_size > 1:
        how = f"beam search, {sample.beam_size} beams, length penalty {sample.length_penalty_alpha}"
    print(f"--- {how}, up to {sample.max_new_tokens} tokens ---")
    for prompt, output in zip(prompts, outputs):
        print(f"{prompt} -> {output}")
        for sentinel, span in _sentinel_spans(prompt, output):
            print(f"  {sentinel} -> {span}")


def _sentinel_spans(prompt: str, output: str) -> list[tuple[str, str]]:
    """(sentinel, the output's text after it up to the next sentinel) for each sentinel
    of the prompt, in prompt order; '(not generated)' when the output lacks it."""
    import re

    sentinel = re.compile(r"<extra_id_\d+>")
    spans = {}
    texts_after = sentinel.split(output)[1:]
    for name, text in zip(sentinel.findall(output), texts_after):
        spans.setdefault(name, text.strip())
    return [(name, spans.get(name, "(not generated)")) for name in sentinel.findall(prompt)]


def _fill_masks(run, params, prompts: list[str], top_n: int) -> None:
    from t5x_lite.downstream import cloze

    for prompt in prompts:
        answers = cloze.fill_masks(run.model, params, run.tokenizer, prompt, top_n=top_n)
        print(prompt)
        for number, candidates in enumerate(answers, start=1):
            print(f"  [MASK] {number}:")
            for text, probability in candidates:
                print(f"    {text}  p={probability:.4g}")


def cmd_cloze(args, extra) -> None:
    """Answer every probe with each run, in its family's format; one column per run."""
    if extra:
        raise UserError(f"unrecognized arguments {' '.join(extra)}")
    from t5x_lite.downstream import cloze

    repeated = sorted({w for w in args.workdir if args.workdir.count(w) > 1})
    if repeated:
        raise UserError(f"--workdir {repeated[0]} is given twice; give each run once")
    probes = cloze.read_probes(args.probes)
    answer = {
        "encoder_only": cloze.answer_bert,
        "encoder_decoder": cloze.answer_t5,
        "decoder_only": cloze.answer_gpt,
    }
    answers_by_family = {}
    for workdir in args.workdir:
        restored = _restore(args, [], workdir)
        run = restored.run
        arch = run.config.model.arch
        if arch == "encoder_only":
            restored.check_output("mlm_logits", args.allow_fresh_heads)
        answers_by_family[f"{FAMILY_NAMES[arch]} ({workdir})"] = answer[arch](
            run.model, restored.params, run.tokenizer, probes, top_n=args.top_n
        )
    print(cloze.format_table(probes, answers_by_family), end="")


def cmd_icl(args, extra) -> None:
    """k-shot in-context classification of config.task's eval split for every k."""
    config = _load_config(args, extra)
    if "icl" not in config or "task" not in config:
        raise UserError(
            f"--config={args.config} has no icl and task sections; use gin_configs/icl.py"
        )
    if not config.icl.checkpoint:
        raise UserError("config.icl.checkpoint is empty; pass --config.icl.checkpoint=RUN")
    if not config.icl.shots:
        raise UserError("config.icl.shots is empty; pass e.g. --config.icl.shots='(0, 1, 4)'")
    if config.task.kind != "classification":
        raise UserError(
            f"config.task.kind={config.task.kind!r}: in-context evaluation scores label "
            "words, so it needs a classification task"
        )
    from t5x_lite.train import restore

    restored = restore.restore(config.icl.checkpoint)
    run, params = restored.run, restored.params
    from t5x_lite.data import tasks
    from t5x_lite.downstream import icl

    eval_examples = tasks.load_split(config.task, "eval")
    results = icl.evaluate(
        run.config.model.arch,
        run.model,
        params,
        run.tokenizer,
        tasks.load_split(config.task, "train"),
        eval_examples,
        shots=config.icl.shots,
        template=config.icl.template,
        label_words=config.task.label_words,
        seed=config.icl.seed,
        batch_size=config.icl.batch_size,
        decoder_start_id=run.tokenizer.bos_id,
        fit_context=config.icl.fit_context,
    )
    _report_icl(config, run, eval_examples, results, args.workdir)


def _report_icl(config, run, eval_examples, results, workdir: str | None) -> None:
    """Print shots -> accuracy, macro-F1 and write them to <workdir>/icl_metrics.json."""
    import collections
    import json

    from t5x_lite import config as config_lib
    from t5x_lite import fileio

    label_counts = collections.Counter(example.label for example in eval_examples)
    majority = max(label_counts.values()) / len(eval_examples)
    print(
        f"in-context learning: {config.icl.checkpoint} ({run.config.model.arch}) on "
        f"{config.task.eval.path} ({len(eval_examples)} examples)"
    )
    print(f"{'shots':>5}  {'accuracy':>8}  {'macro_f1':>8}  {'mean shots used':>15}")
    for k, m in results.items():
        print(f"{k:>5}  {m['accuracy']:>8.4f}  {m['macro_f1']:>8.4f}  {m['mean_shots']:>15.2f}")
    print(f"majority class accuracy: {majority:.4f}")
    if not workdir:
        return
    report = dict(
        checkpoint=config.icl.checkpoint,
        family=run.config.model.arch,
        majority_class_accuracy=majority,
        shots={
            str(k): {
                key: metrics[key]
                for key in ("accuracy", "macro_f1", "num_examples", "mean_shots", "predictions")
            }
            for k, metrics in results.items()
        },
        config=config_lib.to_dict(config),
    )
    fileio.makedirs(workdir)
    path = fileio.join(workdir, "icl_metrics.json")
    fileio.write_text(path, json.dumps(report, indent=2, sort_keys=True))
    print(f"metrics: {path}")


def cmd_export(args, extra) -> None:
    """The run's model, tokenizer and (for classifiers) labels as a directory that
    `transformers` loads with `from_pretrained`."""
    if extra:
        raise UserError(f"unrecognized arguments {' '.join(extra)}")
    import jax

    from t5x_lite import config as config_lib
    from t5x_lite import models
    from t5x_lite.downstream import export

    restored = _restore(args, [])
    config = restored.run.config
    model = config_lib.to_dict(config)["model"]
    needed = "class_logits" if model.get("num_classes") else models.LM_OUTPUT[model["arch"]]
    restored.check_output(needed, args.allow_fresh_heads)
    labels = tuple(config.task.labels) if "task" in config and model.get("num_classes") else ()
    summary = export.export_hf(
        model, jax.device_get(restored.params), restored.run.tokenizer, args.output, labels=labels
    )
    print(f"exported {restored.source} to {args.output}: {summary}")


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
    from t5x_lite import demo, fileio

    result = demo.main(args.workdir)
    _print_sample(result)
    demo.finetune_on_sst2(args.workdir)
    print(
        f"run files: {fileio.absolute(args.workdir)} (config.json, metrics.jsonl, "
        "tensorboard/, checkpoints/, tokenizer.model; sst2_*/eval/ when fine-tuned)"
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

    finetune = sub.add_parser(
        "finetune", help="fine-tune on a labelled task, then score its eval split"
    )
    finetune.add_argument("--config", required=True, help="gin_configs/finetune.py:VARIANT")
    finetune.add_argument("--workdir", required=True, help="run directory; rerun to resume")
    finetune.set_defaults(fn=cmd_finetune)

    evaluate = sub.add_parser(
        "eval", help="score a fine-tuned run: predictions TSV and metrics JSON"
    )
    evaluate.add_argument(
        "--workdir", required=True, help="a fine-tuning run, or a Hugging Face classifier"
    )
    _model_source_arguments(evaluate, "a Hugging Face directory's task: finetune.py:VARIANT")
    evaluate.add_argument(
        "--output_dir", default="", help="default: <workdir>/eval/<eval file stem>"
    )
    evaluate.set_defaults(fn=cmd_eval)

    generate = sub.add_parser(
        "generate", help="continue (GPT), infill spans (T5) or fill [MASK]s (BERT) of prompts"
    )
    generate.add_argument(
        "--workdir", required=True, help="a trained run, or a Hugging Face directory"
    )
    _model_source_arguments(generate, "a Hugging Face directory's sampling settings")
    generate.add_argument(
        "--prompt", required=True, action="append", help="repeat for several prompts"
    )
    generate.add_argument(
        "--top_n", type=int, default=5, help="encoder_only: candidates shown per [MASK]"
    )
    generate.set_defaults(fn=cmd_generate)

    cloze = sub.add_parser("cloze", help="answer fill-in-the-blank probes, runs side by side")
    cloze.add_argument("--probes", required=True, help="one sentence with ___ per line")
    cloze.add_argument(
        "--workdir", required=True, action="append", help="a trained run; repeat for several"
    )
    cloze.add_argument("--top_n", type=int, default=3, help="answers shown per run and probe")
    _fresh_heads_argument(cloze)
    cloze.set_defaults(fn=cmd_cloze)

    icl = sub.add_parser("icl", help="k-shot in-context classification of a task's eval split")
    icl.add_argument("--config", required=True, help="gin_configs/icl.py:VARIANT")
    icl.add_argument("--workdir", help="optional: where to write icl_metrics.json")
    icl.set_defaults(fn=cmd_icl)

    export = sub.add_parser(
        "export", help="write a run as a Hugging Face directory (from_pretrained loads it)"
    )
    export.add_argument("--workdir", required=True, help="a trained or fine-tuned run")
    export.add_argument("--output", required=True, help="a new (or empty) directory")
    _fresh_heads_argument(export)
    export.set_defaults(fn=cmd_export)

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


def _model_source_arguments(parser, config_help: str) -> None:
    parser.add_argument(
        "--config",
        default="",
        help=f"Hugging Face directories only: FILE.py:VARIANT for {config_help} (default: "
        "the family's variant of gin_configs/pretrain.py)",
    )
    parser.add_argument(
        "--checkpoint_format",
        default="auto",
        help="auto (detected) | t5x_lite | hf_bert | hf_t5 | hf_gpt2",
    )
    _fresh_heads_argument(parser)


def _fresh_heads_argument(parser) -> None:
    parser.add_argument(
        "--allow_fresh_heads",
        action="store_true",
        help="run a head the checkpoint has no trained weights for (its outputs are random)",
    )


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
    # turns both into a stop after the current step; see trainer._stop_requests).
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    sys.exit(main())


if __name__ == "__main__":
    run()
