"""The public Python API: what the `t5x-lite` CLI, `experiments/` and notebooks call.

    from t5x_lite import api

    config = api.load_config("gin_configs/pretrain.py:gpt_tiny", {"train.num_steps": 200})
    result = api.train(config, "runs/gpt")
    config = api.load_config("gin_configs/finetune.py:gpt_tiny_sst2",
                             {"finetune.checkpoint": "runs/gpt"})
    metrics = api.finetune(config, "runs/gpt_sst2", explicit_keys={"finetune.checkpoint"})
    model = api.restore("runs/gpt")          # a run, or a Hugging Face directory
    print(api.generate(model, ["the film was"]))

Overrides are `{dotted key: value}` (or (key, value) pairs); a string value is parsed as
the command line parses it, against the type already in the config. Every mistake a user
can make raises `t5x_lite.errors.UserError` with one line that says what to fix.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping, Sequence

from t5x_lite import config as config_lib
from t5x_lite.errors import UserError

# The rest is imported where it is used: `t5x-lite --help` and a mistyped config key
# answer before JAX loads.

Overrides = Mapping[str, object] | Iterable[tuple[str, object]]


def load_config(spec: str, overrides: Overrides = ()):
    """`FILE.py:VARIANT` plus overrides -> the locked config."""
    return config_lib.load(spec, _pairs(overrides))


def parse_overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    """Command-line overrides, ['--config.a.b=1', '--config.c', '2'] -> [('a.b', '1'),
    ('c', '2')]."""
    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--config."):
            raise UserError(
                f"unrecognized argument {arg!r}; overrides look like --config.a.b=value"
            )
        key, eq, value = arg[len("--config.") :].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"{arg} needs a value: {arg}=VALUE")
            value, i = argv[i + 1], i + 1
        overrides.append((key, value))
        i += 1
    return overrides


def _pairs(overrides: Overrides) -> list[tuple[str, str]]:
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    return [(key, value if isinstance(value, str) else repr(value)) for key, value in items]


def train(config, workdir: str):
    """Pretrain (or resume) -> trainer.TrainResult (run, state, history, workdir)."""
    from t5x_lite.train import trainer

    return trainer.train(config, workdir)


def is_main_process() -> bool:
    """Whether this process prints and writes for the job (process 0)."""
    from t5x_lite.train import distributed

    return distributed.is_main_process()


def sample(result) -> tuple[str, str] | None:
    """(text, how) for config.sample from a finished run, or None (an encoder, or
    max_new_tokens 0). Multi-process runs sample from their checkpoint instead."""
    import jax

    from t5x_lite import families

    if jax.process_count() > 1:
        return None
    family = families.get(result.run.config.model.arch)
    return family.sample_after_training(result.run, result.state.params)


def resolve_finetuning(config, explicit_keys: Iterable[str] = ()) -> None:
    """Complete a fine-tuning config from its checkpoint (downstream/finetune.py).
    `explicit_keys` are the dotted keys the user set: they win over the recipe, and
    contradicting the checkpoint is an error."""
    from t5x_lite.downstream import finetune

    if "task" not in config or "finetune" not in config:
        raise UserError(
            "the config has no task section; fine-tune with a config from "
            "gin_configs/finetune.py (pretraining uses `t5x-lite train`)"
        )
    finetune.resolve(config, frozenset(explicit_keys))


def finetune(config, workdir: str, explicit_keys: Iterable[str] = ()) -> dict:
    """Resolve, fine-tune (or resume) in `workdir`, and score the task's eval split into
    `<workdir>/eval/<file stem>/` -> its metrics."""
    from t5x_lite.downstream import finetune as finetune_lib
    from t5x_lite.downstream import restore as restore_lib

    resolve_finetuning(config, explicit_keys)
    result = finetune_lib.train(config, workdir)
    return evaluate(restore_lib.from_result(result))


def restore(
    workdir: str, overrides: Overrides = (), *, config: str = "", checkpoint_format: str = "auto"
):
    """A trained model ready to use -> downstream.restore.Restored: a run at its latest
    checkpoint, or a Hugging Face directory (its other settings from `config`, by
    default its family's variant of gin_configs/pretrain.py)."""
    from t5x_lite.downstream import restore as restore_lib

    return restore_lib.restore(
        workdir, _pairs(overrides), config_spec=config, checkpoint_format=checkpoint_format
    )


def evaluate(restored, output_dir: str = "", *, allow_fresh_heads: bool = False) -> dict:
    """Score a fine-tuned model on its config's eval split; writes predictions.tsv and
    metrics.json to `output_dir` (default `<workdir>/eval/<file stem>/`) -> the metrics,
    and `output_dir`."""
    from t5x_lite.downstream import evaluate as evaluate_lib

    config = restored.run.config
    if "task" not in config:
        raise UserError(
            f"{restored.path} is not a fine-tuning run (its config has no task); for a "
            "Hugging Face directory give --config=gin_configs/finetune.py:VARIANT"
        )
    if "num_classes" in config.model:
        restored.check_output("class_logits", allow_fresh_heads)
    out_dir = output_dir or evaluate_lib.results_dir(restored.path, config.task.eval.path)
    return {**evaluate_lib.evaluate_restored(restored, out_dir), "output_dir": out_dir}


def generate(
    restored, prompts: Sequence[str], *, top_n: int = 5, allow_fresh_heads: bool = False
) -> str:
    """Continue (GPT), infill sentinel spans (T5) or fill [MASK]s (BERT) in each prompt,
    with the model's config.sample settings -> the report to print."""
    from t5x_lite import families
    from t5x_lite.models import heads

    run = restored.run
    arch = run.config.model.arch
    restored.check_output(heads.LM_OUTPUT[arch], allow_fresh_heads)
    return families.get(arch).generate(run, restored.params, prompts, top_n=top_n)


def cloze(
    workdirs: Sequence[str], probes_path: str, *, top_n: int = 3, allow_fresh_heads=False
) -> str:
    """Every probe answered by each model in its family's format -> a table, one column
    per model."""
    from t5x_lite import families
    from t5x_lite.downstream import cloze as cloze_lib
    from t5x_lite.models import heads

    repeated = sorted({w for w in workdirs if workdirs.count(w) > 1})
    if repeated:
        raise UserError(f"--workdir {repeated[0]} is given twice; give each run once")
    probes = cloze_lib.read_probes(probes_path)
    answers = {}
    for workdir in workdirs:
        restored = restore(workdir)
        run = restored.run
        family = families.get(run.config.model.arch)
        restored.check_output(heads.LM_OUTPUT[family.arch], allow_fresh_heads)
        answers[f"{family.name} ({workdir})"] = family.answer_cloze(
            run.model, restored.params, run.tokenizer, probes, top_n=top_n
        )
    return cloze_lib.format_table(probes, answers)


def in_context(config, output_dir: str = "") -> str:
    """GPT-3-style k-shot classification of config.task's eval split with the model at
    config.icl.checkpoint, for every k in config.icl.shots -> the report to print; with
    `output_dir`, also `<output_dir>/icl_metrics.json`."""
    from t5x_lite import fileio
    from t5x_lite.data import labelled
    from t5x_lite.downstream import icl

    _check_icl_config(config)
    try:
        restored = restore(config.icl.checkpoint)
    except UserError as error:  # restore speaks of --workdir; here the key is the icl's
        message = str(error).replace(f"--workdir {config.icl.checkpoint}", "it")
        raise UserError(f"config.icl.checkpoint={config.icl.checkpoint}: {message}") from None
    run = restored.run
    eval_examples = labelled.load_split(config.task, "eval")
    results = icl.evaluate_in_context(
        run.config.model.arch,
        run.model,
        restored.params,
        run.tokenizer,
        labelled.load_split(config.task, "train"),
        eval_examples,
        shots=config.icl.shots,
        template=config.icl.template,
        label_words=config.task.label_words,
        seed=config.icl.seed,
        batch_size=config.icl.batch_size,
        decoder_start_id=run.tokenizer.bos_id,
        fit_context=config.icl.fit_context,
    )
    label_counts = collections.Counter(example.label for example in eval_examples)
    majority = max(label_counts.values()) / len(eval_examples)
    lines = [
        f"in-context learning: {config.icl.checkpoint} ({run.config.model.arch}) on "
        f"{config.task.eval.path} ({len(eval_examples)} examples)",
        f"{'shots':>5}  {'accuracy':>8}  {'macro_f1':>8}  {'mean shots used':>15}",
    ]
    for k, m in results.items():
        lines.append(
            f"{k:>5}  {m['accuracy']:>8.4f}  {m['macro_f1']:>8.4f}  {m['mean_shots']:>15.2f}"
        )
    lines.append(f"majority class accuracy: {majority:.4f}")
    if output_dir:
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
        fileio.makedirs(output_dir)
        path = fileio.join(output_dir, "icl_metrics.json")
        fileio.write_text(path, json.dumps(report, indent=2, sort_keys=True))
        lines.append(f"metrics: {path}")
    return "\n".join(lines)


def sweep(
    spec: str,
    workdir: str,
    *,
    jobs: int = 1,
    print_commands: bool = False,
    aggregate_only: bool = False,
    rerun_changed: bool = False,
    log=print,
) -> tuple[str, list[str]]:
    """Run the study `experiments/<study>.py:<preset>` in `workdir` (finished jobs are
    kept, interrupted ones resume) and write its tables -> (table.md's text, the jobs
    that failed). `print_commands`: the `t5x-lite` commands instead, nothing run;
    `aggregate_only`: the tables from the jobs already finished. Jobs run with other
    settings than the study now gives are refused (`rerun_changed`: set aside and run
    again; aggregating, left out of the tables). Config paths in a study
    are relative to the directory above the study file (the repository root for
    experiments/)."""
    import os
    import time

    from t5x_lite.sweep import report, runner
    from t5x_lite.sweep import study as study_lib

    study = study_lib.load(spec)
    root = os.path.dirname(os.path.dirname(os.path.abspath(spec.partition(":")[0])))
    runner.claim_workdir(study, workdir, write=not print_commands)
    if print_commands:
        return runner.print_commands(study, workdir, root), []
    runner.check_unchanged(study, workdir, root, rerun_changed=rerun_changed, log=log)
    started = time.time()
    failed = [] if aggregate_only else runner.run(study, workdir, root, jobs=jobs, log=log)
    wall_s = None if aggregate_only else time.time() - started
    return report.write(study, workdir, root, wall_s), failed


def _check_icl_config(config) -> None:
    if "icl" not in config or "task" not in config:
        raise UserError("the config has no icl and task sections; use gin_configs/icl.py")
    if not config.icl.checkpoint:
        raise UserError("config.icl.checkpoint is empty; pass --config.icl.checkpoint=RUN")
    if not config.icl.shots:
        raise UserError("config.icl.shots is empty; pass e.g. --config.icl.shots='(0, 1, 4)'")
    if config.task.kind != "classification":
        raise UserError(
            f"config.task.kind={config.task.kind!r}: in-context evaluation scores label "
            "words, so it needs a classification task"
        )


def export(restored, output_dir: str, *, allow_fresh_heads: bool = False) -> dict:
    """The model, its tokenizer and (for classifiers) labels as a directory that
    `transformers` loads with `from_pretrained` -> {hf_class, output_dir, files}."""
    import jax

    from t5x_lite.downstream import export as export_lib
    from t5x_lite.models import heads

    config = restored.run.config
    model = config_lib.to_dict(config)["model"]
    classifier = bool(model.get("num_classes"))
    restored.check_output(
        "class_logits" if classifier else heads.LM_OUTPUT[model["arch"]], allow_fresh_heads
    )
    task = config.get("task")  # a fine-tuned classifier names its labels
    labels = tuple(task.labels) if classifier and task else ()
    return export_lib.export_hf(
        model, jax.device_get(restored.params), restored.run.tokenizer, output_dir, labels=labels
    )


def train_tokenizer(
    paths: Sequence[str],
    output: str,
    *,
    vocab_size: int,
    model_type: str = "bpe",
    doc_mode: str = "line",
    max_sentences: int = 1_000_000,
):
    """A sentencepiece model trained on text files -> the loaded Tokenizer."""
    from t5x_lite import tokenizer as tokenizer_lib
    from t5x_lite.data import sources

    docs = []
    for path in paths:
        source = dict(
            kind="text", path=path, column="", doc_mode=doc_mode, tfds_name="", split="",
            tfds_data_dir="",
        )  # fmt: skip
        docs.extend(sources.load_source(_config_dict(source)))
    model_path = tokenizer_lib.train_tokenizer(
        docs, output, vocab_size=vocab_size, model_type=model_type, max_sentences=max_sentences
    )
    return tokenizer_lib.Tokenizer(model_path)


def _config_dict(values: dict):
    import ml_collections

    return ml_collections.ConfigDict(values)


def bench(config, *, steps: int = 10, peak_tflops: float = 0.0):
    """Time the config's train step -> bench.BenchResult (and print the report)."""
    from t5x_lite import bench as bench_lib

    return bench_lib.run_and_report(config, steps=steps, peak_tflops=peak_tflops)


def dry_run(config) -> str:
    """The mesh, every parameter's sharding and the per-device memory, as text (only
    process 0 gets it; the others get '')."""
    from t5x_lite.train import distributed
    from t5x_lite.train import dry_run as dry_run_lib

    distributed.initialize(config)  # a pod's dry run sees every process's devices
    report = dry_run_lib.report(config)
    return report if distributed.is_main_process() else ""
