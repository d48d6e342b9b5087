"""Score a fine-tuned model on a task split: predictions TSV + metrics JSON.

Classifiers (GPT-1 / BERT heads) predict the argmax of `class_logits`. Text-to-text
models are scored two ways, as in T5: `generated`, greedy decoding whose output must be
exactly one of the label words (anything else is counted wrong and as `invalid`), and
`ranked`, the label word of highest log-likelihood given the input (always valid).
Generation tasks (QA) are scored by exact match and token F1 of the greedy output.

Every metric block has `num_examples`; classification adds the accuracy of always
predicting the eval split's most frequent label (`majority_class_accuracy`), the bar a
model has to beat.
"""

from __future__ import annotations

import collections
import itertools
import json
import os

import jax
import numpy as np

from t5x_lite import fileio
from t5x_lite.data import inputs, labelled, pipeline
from t5x_lite.downstream import scoring, search, task_metrics
from t5x_lite.objectives import finetune_formats


def results_dir(workdir: str, eval_path: str) -> str:
    """`<workdir>/eval/<stem of the eval file>`: each scored file keeps its own results.
    Another file with the same stem gets `<stem>_2`, `_3`, ..., so no result is
    replaced by another file's."""
    stem = os.path.splitext(os.path.basename(eval_path))[0] or "eval"
    scored = fileio.absolute(eval_path)
    for number in itertools.count(1):
        directory = fileio.join(workdir, "eval", stem if number == 1 else f"{stem}_{number}")
        metrics_path = fileio.join(directory, "metrics.json")
        if not fileio.exists(metrics_path):
            return directory
        saved = json.loads(fileio.read_text(metrics_path))
        if saved.get("scored", {}).get("eval_file") == scored:
            return directory
    raise AssertionError("unreachable")


def evaluate_restored(restored, out_dir: str) -> dict:
    """Score a restored model (`t5x_lite.train.restore`) on its config's eval split."""
    task = restored.run.config.task
    examples = labelled.load_split(task, "eval")
    scored = {
        "checkpoint": restored.path,
        "step": restored.step,
        "eval_file": fileio.absolute(task.eval.path),
        "num_rows": len(examples),
    }
    return evaluate_task(restored.run, restored.params, examples, out_dir, scored)


def evaluate_task(run, params, examples, out_dir: str, scored: dict) -> dict:
    """Predict every example of `examples` (in order) -> metrics; writes
    `out_dir/predictions.tsv` and `out_dir/metrics.json`, which also holds `scored` (what
    was scored: checkpoint, step, file, rows) and how many rows were truncated."""
    config = run.config
    if config.objective.name == "classification":
        rows, metrics = _classify(run, params, examples)
    elif config.task.kind == "classification":
        rows, metrics = _text_to_text_labels(run, params, examples)
    else:
        rows, metrics = _text_to_text_generation(run, params, examples)
    metrics["scored"] = scored
    metrics["truncation"] = finetune_formats.truncation(run.objective, run.tokenizer, examples)
    fileio.makedirs(out_dir)
    _write_tsv(fileio.join(out_dir, "predictions.tsv"), rows)
    # Last: a directory with metrics.json holds a complete result (see results_dir).
    fileio.write_text(
        fileio.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True)
    )
    return metrics


def _batches(run, examples):
    """The examples in order, one per row, in batches of config.data.batch_size (the last
    filled with empty rows), each cut to its length bucket (config.data.bucket_multiple)."""
    return pipeline.make_dataset(
        examples,
        run.tokenizer,
        run.objective,
        batch_size=run.config.data.batch_size,
        seed=run.config.seed,
        shuffle=False,
        num_epochs=1,
        shard_index=0,
        shard_count=1,
        pad_final_batch=True,
        bucket_multiple=inputs.bucketing(run.config.data)[0],
    )


def _classify(run, params, examples):
    @jax.jit
    def probabilities(params, batch):
        outputs = run.model.apply({"params": params}, batch, deterministic=True)
        return jax.nn.softmax(outputs["class_logits"][:, 0], axis=-1)

    probs = []
    for batch in _batches(run, examples):
        real = batch["class_weights"][:, 0] > 0
        probs.append(np.asarray(probabilities(params, batch))[real])
    probs = np.concatenate(probs)[: len(examples)]
    predictions = probs.argmax(-1)
    labels = run.config.task.labels
    rows = [
        _row(example, labels)
        | {"prediction": labels[p]}
        | {f"p_{label}": f"{q:.4f}" for label, q in zip(labels, row_probs)}
        for example, p, row_probs in zip(examples, predictions, probs)
    ]
    return rows, {"classifier": _label_metrics(examples, predictions, len(labels))}


def _text_to_text_labels(run, params, examples):
    words = list(run.objective.label_words)
    generated = _generate(run, params, examples)
    word_index = {word: i for i, word in enumerate(words)}
    from_generation = np.array([word_index.get(text.strip(), -1) for text in generated])
    # Ranked: log p(word | input) for every label word, each input encoded once.
    inputs = [_encoder_ids(run, example) for example in examples]
    word_ids = [_target_ids(run, word) for word in words]
    scores = scoring.encoder_decoder_every_target_log_likelihoods(
        run.model,
        params,
        inputs,
        word_ids,
        batch_size=run.config.data.batch_size,
        decoder_start_id=run.tokenizer.bos_id,
    )
    ranked = scores.argmax(-1)
    labels = run.config.task.labels
    rows = [
        _row(example, labels)
        | {"generated": text, "ranked": labels[r]}
        | {f"logp_{label}": f"{s:.4f}" for label, s in zip(labels, row_scores)}
        for example, text, r, row_scores in zip(examples, generated, ranked, scores)
    ]
    gold = np.array([e.label for e in examples])
    metrics = {
        "generated": {
            "accuracy": float(np.mean(from_generation == gold)),
            "invalid": float(np.mean(from_generation < 0)),
            "num_examples": len(examples),
        },
        "ranked": _label_metrics(examples, ranked, len(labels)),
    }
    return rows, metrics


def _text_to_text_generation(run, params, examples):
    generated = _generate(run, params, examples)
    rows = [
        {"line": e.line, "input": e.text_a, "target": e.target, "generated": text}
        for e, text in zip(examples, generated)
    ]
    references = [e.target for e in examples]
    return rows, {"generated": task_metrics.text_to_text_metrics(generated, references)}


def _generate(run, params, examples) -> list[str]:
    """Greedy outputs (text before EOS), batch by batch through the pipeline's rows."""
    texts = []
    for batch in _batches(run, examples):
        encoder = {
            name: batch[name]
            for name in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
        }
        tokens, _ = search.greedy_decode(
            run.model,
            params,
            encoder,
            max_length=run.config.objective.targets_length,
            eos_id=run.tokenizer.eos_id,
            bos_id=run.tokenizer.bos_id,
            num_ids=run.tokenizer.vocab_size,
        )
        for row, real in zip(np.asarray(tokens), batch["decoder_loss_weights"].any(-1)):
            if real:
                eos = np.flatnonzero(row == run.tokenizer.eos_id)
                texts.append(run.tokenizer.decode(row[: eos[0]] if eos.size else row))
    return texts[: len(examples)]


def _encoder_ids(run, example) -> np.ndarray:
    ids, _ = run.objective.encode(run.tokenizer, example)
    return np.append(ids[: run.objective.inputs_length - 1], run.tokenizer.eos_id)


def _target_ids(run, text: str) -> np.ndarray:
    return np.append(run.tokenizer.encode(text), run.tokenizer.eos_id)


def _label_metrics(examples, predictions, num_classes: int) -> dict:
    gold = np.array([e.label for e in examples])
    metrics = task_metrics.classification_metrics(gold, np.asarray(predictions), num_classes)
    most_common = collections.Counter(gold.tolist()).most_common(1)[0][1]
    metrics["majority_class_accuracy"] = most_common / len(gold)
    return metrics


def _row(example, labels) -> dict:
    row = {"line": example.line, "text_a": example.text_a}
    if example.text_b is not None:
        row["text_b"] = example.text_b
    row["label"] = labels[example.label]
    return row


def _write_tsv(path: str, rows: list[dict]) -> None:
    """Tabs and newlines inside a field become spaces, so every row stays one line."""
    columns = list(rows[0]) if rows else ["line"]

    def clean(value) -> str:
        return str(value).replace("\t", " ").replace("\n", " ").replace("\r", " ")

    lines = ["\t".join(columns)] + ["\t".join(clean(row[c]) for c in columns) for row in rows]
    fileio.write_text(path, "".join(line + "\n" for line in lines))
