"""`make demo`: train a tokenizer and a tiny GPT offline, show the loss falling and a sample;
then, when SST-2 is at hand, fine-tune that GPT and compare it with a from-scratch baseline.

The corpus is Tiny Shakespeare when `$T5X_LITE_DATA_DIR/tinyshakespeare/input.txt`
exists, else the language reference that ships inside CPython (`pydoc_data`), so the
demo needs no download. With `$T5X_LITE_DATA_DIR/sst2/{train,dev}.tsv` the pretrained
model is fine-tuned (GPT-1's recipe, gin_configs/finetune.py:gpt_tiny_sst2) on the first
2,000 labelled training sentences, and so is the same model from random weights; both
are scored on the 872 dev sentences.
"""

from __future__ import annotations

import os

from t5x_lite import config as config_lib
from t5x_lite import fileio

# The configs of the checkout the demo runs from (local files, imported as modules).
CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gin_configs", "pretrain.py")
FINETUNE_FILE = os.path.join(os.path.dirname(CONFIG_FILE), "finetune.py")
NUM_STEPS = 400
FINETUNE_EXAMPLES = 2000


def demo_overrides() -> tuple[str, list[tuple[str, str]]]:
    """(corpus description, config overrides) for the data found on this machine."""
    data_dir = os.environ.get("T5X_LITE_DATA_DIR", "")
    shakespeare = fileio.join(data_dir, "tinyshakespeare", "input.txt")
    overrides = [
        ("train.num_steps", str(NUM_STEPS)),
        ("train.eval_every", "100"),
        ("train.log_every", "50"),
    ]
    if data_dir and fileio.isfile(shakespeare):
        overrides += [
            ("data.train.kind", "text"),
            ("data.train.path", shakespeare),
            ("data.train.doc_mode", "paragraph"),
            ("sample.prompt", "ROMEO:"),
        ]
        return f"Tiny Shakespeare ({shakespeare})", overrides
    return (
        "CPython's embedded language reference (pydoc_data); set T5X_LITE_DATA_DIR to a "
        "folder with tinyshakespeare/input.txt to train on that instead"
    ), overrides


def main(workdir: str):
    from t5x_lite.train import trainer

    corpus, overrides = demo_overrides()
    config = config_lib.load(f"{CONFIG_FILE}:gpt_tiny", overrides)
    fileio.remove_tree(workdir)  # the demo always starts fresh
    print(f"corpus: {corpus}")
    print(
        f"model: GPT, d_model {config.model.d_model}, {config.model.num_layers} layers, "
        f"sequence {config.objective.seq_len}; {NUM_STEPS} steps of batch {config.data.batch_size}"
    )
    result = trainer.train(config, workdir)
    tok = result.run.tokenizer
    print(f"tokenizer: {tok.vocab_size} BPE pieces; 'taaaaasty' -> {tok.pieces('taaaaasty')}")
    train_losses = [(r["step"], r["train/lm/loss"]) for r in result.history if "train/lm/loss" in r]
    evals = [(r["step"], r["eval/lm/loss"]) for r in result.history if "eval/lm/loss" in r]
    print("train loss: " + "  ".join(f"{s}:{v:.2f}" for s, v in train_losses))
    print("eval loss:  " + "  ".join(f"{s}:{v:.2f}" for s, v in evals))
    return result


def sst2_dir() -> str | None:
    data_dir = os.environ.get("T5X_LITE_DATA_DIR", "")
    sst2 = fileio.join(data_dir, "sst2")
    found = all(fileio.isfile(fileio.join(sst2, f)) for f in ("train.tsv", "dev.tsv"))
    return sst2 if data_dir and found else None


def finetune_on_sst2(pretrained_workdir: str) -> dict | None:
    """Fine-tune the demo model and the same model from random weights on SST-2; prints
    dev accuracy side by side (or how to get the data) -> {init: metrics} or None."""
    from t5x_lite import api

    sst2 = sst2_dir()
    if sst2 is None:
        print(
            "\nfine-tuning: point T5X_LITE_DATA_DIR at a folder holding sst2/train.tsv and "
            "sst2/dev.tsv (GLUE SST-2), e.g. `T5X_LITE_DATA_DIR=../shared/data make demo`, "
            "to also fine-tune this model on SST-2 and compare it with a from-scratch model"
        )
        return None
    results = {}
    for init in ("pretrained", "random"):
        overrides = [
            ("finetune.checkpoint", pretrained_workdir),
            ("finetune.init", init),
            ("task.train.path", fileio.join(sst2, "train.tsv")),
            ("task.eval.path", fileio.join(sst2, "dev.tsv")),
            ("task.train.max_examples", str(FINETUNE_EXAMPLES)),
            ("train.eval_every", "1000"),  # the dev set is scored once, at the end
            # One recipe for both, so that they differ only in the initial weights: the
            # rate for random weights. GPT-1's 6.25e-5 assumes a model pretrained at scale
            # and barely moves this one in 190 steps.
            ("optimizer.learning_rate", "1e-3"),
            ("optimizer.schedule", "cosine"),
        ]
        config = api.load_config(f"{FINETUNE_FILE}:gpt_tiny_sst2", overrides)
        workdir = fileio.join(pretrained_workdir, f"sst2_{init}")
        print(f"\nfine-tuning ({init} weights) on {FINETUNE_EXAMPLES} SST-2 sentences -> {workdir}")
        # As `t5x-lite finetune` does: the overrides given are the explicit keys.
        metrics = api.finetune(config, workdir, [key for key, _ in overrides])
        results[init] = metrics["classifier"]
    majority = results["pretrained"]["majority_class_accuracy"]
    print(f"\nSST-2 dev accuracy ({results['pretrained']['num_examples']} sentences):")
    print(f"  pretrained, then fine-tuned   {results['pretrained']['accuracy']:.3f}")
    print(f"  fine-tuned from scratch       {results['random']['accuracy']:.3f}")
    print(f"  majority class                {majority:.3f}")
    return results
