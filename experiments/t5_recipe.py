"""Why did T5 fine-tuned from random weights vary so much by seed? (the recipe probe)

One encoder-decoder (t5_tiny, the shapes and tokenizer of pretraining_helps' T5 run),
fine-tuned text-to-text from random weights on 2,000 SST-2 sentences and scored by the
generated label word on the 872 dev sentences, under the recipe of pretraining_helps
at the time (Adafactor, constant 1e-2, 3 epochs: 188 steps; the baseline row) and the
levers tried against its seed-to-seed spread: a decaying rate, a lower rate, AdamW with
warmup, no dropout, and more epochs (6: the recipe now, finetune.random_init_epochs).
Each row has the same six seeds (initialization, data order and dropout).

Presets:
  cpu    the tokenizer comes from a t5_tiny pretraining on the 1,800 training movie
         reviews (800 steps, pretraining_helps' run; only its tokenizer and shapes are
         used), six fine-tuning seeds per row. About 60 minutes on 2 CPU cores with
         --jobs=2.

    t5x-lite sweep --sweep=experiments/t5_recipe.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu",)
NO_PAPER_PRESET = "a probe of the tiny model's fine-tuning recipe; the paper's T5 is pretrained"
ADAMW = {"optimizer.name": "adamw", "optimizer.b1": 0.9, "optimizer.b2": 0.999,
         "optimizer.eps": 1e-6, "optimizer.weight_decay": 0.01, "optimizer.grad_clip_norm": 1.0,
         "optimizer.schedule": "cosine", "optimizer.end_lr_fraction": 0.0,
         "finetune.warmup_fraction": 0.1}  # fmt: skip
BEFORE = {"optimizer.learning_rate": 1e-2, "optimizer.schedule": "constant",
          "finetune.epochs": 3.0}  # fmt: skip
# name: (overrides on top of BEFORE, label)
ROWS = {
    "before": ({}, "Adafactor 1e-2 constant, 3 epochs (before)"),
    "linear": ({"optimizer.schedule": "linear", "optimizer.end_lr_fraction": 0.0},
               "... linear decay to 0"),
    "lr3e3": ({"optimizer.learning_rate": 3e-3}, "... at 3e-3"),
    "adamw1e3": ({**ADAMW, "optimizer.learning_rate": 1e-3}, "AdamW 1e-3, warmup, cosine"),
    "nodrop": ({"model.dropout_rate": 0.0}, "... dropout 0"),
    "epochs6": ({"finetune.epochs": 6.0}, "... 6 epochs (the recipe now)"),
}  # fmt: skip


def get_study(preset: str) -> Study:
    variant, overrides = common.TINY["t5"]
    pretraining = Pretraining(
        f"{common.PRETRAIN}:{variant}",
        {**common.movie_review_corpus(800), **overrides},
        label=f"{variant} on movie reviews (its tokenizer and shapes only)",
    )
    config = f"{common.FINETUNE}:t5_tiny_sst2"
    rows = tuple(
        Row(name, config, {**BEFORE, **changes, "finetune.init": "random"}, pretraining="t5",
            baseline="before", label=label)
        for name, (changes, label) in ROWS.items()
    )  # fmt: skip
    return Study(
        name="t5_recipe",
        title="T5 from random weights: seed-to-seed spread under each recipe",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings={"t5": pretraining},
        rows=rows,
        columns=(common.sst2_column(2000),),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="before",
    )
