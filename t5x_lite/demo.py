"""`make demo`: train a tokenizer and a tiny GPT offline, show the loss falling and a sample.

The corpus is Tiny Shakespeare when `$T5X_LITE_DATA_DIR/tinyshakespeare/input.txt`
exists, else the language reference that ships inside CPython (`pydoc_data`), so the
demo needs no download.
"""

from __future__ import annotations

import os
import shutil

from t5x_lite import config as config_lib

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "gin_configs", "pretrain.py")
NUM_STEPS = 400


def demo_overrides() -> tuple[str, list[tuple[str, str]]]:
    """(corpus description, config overrides) for the data found on this machine."""
    data_dir = os.environ.get("T5X_LITE_DATA_DIR", "")
    shakespeare = os.path.join(data_dir, "tinyshakespeare", "input.txt")
    overrides = [
        ("train.num_steps", str(NUM_STEPS)),
        ("train.eval_every", "100"),
        ("train.log_every", "50"),
    ]
    if data_dir and os.path.isfile(shakespeare):
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
    if os.path.isdir(workdir):
        shutil.rmtree(workdir)  # the demo always starts fresh
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
