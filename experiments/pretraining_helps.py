"""Does pretraining help? (an analog of Table 1 of the T5 paper, Raffel et al. 2020)

Each family's model is fine-tuned from our pretraining and from random weights of the
same shapes with the same recipe and seeds; a real pretrained BERT (all-MiniLM-L6-v2,
imported from Hugging Face) and its random-weights twin are the positive control: the
size of effect real pretraining buys, measured by the same pipeline. Columns: SST-2
(2,000 labelled sentences, the 872 dev sentences scored) and, in cpu_full, the
movie-review documents (1,800 reviews to train, 200 to score, each cut to its first 128
tokens).

Presets:
  cpu       tiny models pretrained on the 1,800 training movie reviews (GPT and T5:
            800 steps of 16 x 128 tokens; BERT: 600 of 32 x 128), one pretraining
            seed, six fine-tuning seeds per cell (MiniLM: one epoch, T5 six, the others three),
            SST-2 only. The verdicts are about fine-tuning seeds given that one
            pretraining run per family. About 85 minutes on 2 CPU cores, --jobs=2.
  cpu_full  the same plus the movie-review column for our models (each of those
            runs takes 3-4 minutes here). About 2.5 hours.
  paper     T5-base, BERT-base and a GPT-1-sized decoder pretrained on C4 as published
            (T5: 2^19 steps of 128 x 512 tokens), fine-tuned on all of GLUE's SST-2;
            MiniLM stays the positive control. Meant for a Cloud TPU pod slice
            (--print_commands gives one command per job for a scheduler).

    t5x-lite sweep --sweep=experiments/pretraining_helps.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "cpu_full", "paper")
FAMILY_LABEL = {"gpt": "GPT (decoder)", "bert": "BERT (encoder)", "t5": "T5 (encoder-decoder)"}
# ~1.6M tokens for GPT and T5 (16 rows of 128), ~2.5M for BERT (32 rows of 128).
CPU_STEPS = {"gpt": 800, "bert": 600, "t5": 800}
# The T5 paper's Table 1, GLUE average (not SST-2 alone), for orientation: its baseline
# pretrained on C4 against no pretraining (the same model and fine-tuning).
PAPER = {"t5_ours": {"T5 GLUE avg": "83.28"}, "t5_random": {"T5 GLUE avg": "66.22"}}


def family_rows(family: str, reviews: bool) -> tuple[Row, Row]:
    variant = common.FINETUNE_VARIANT[family]
    config = f"{common.FINETUNE}:{variant}"
    recipe = common.SAME_RECIPE[family]
    cells = common.reviews_cell(variant) if reviews else {}
    label = FAMILY_LABEL[family]
    return (
        Row(f"{family}_random", config, {**recipe, "finetune.init": "random"},
            pretraining=family, baseline=f"{family}_random", label=f"{label}, random init",
            cell_overrides=cells),
        Row(f"{family}_ours", config, recipe, pretraining=family,
            baseline=f"{family}_random", label=f"{label}, our pretraining",
            cell_overrides=cells),
    )  # fmt: skip


def get_study(preset: str) -> Study:
    families = ("gpt", "bert", "t5")
    if preset == "paper":
        return paper_study(families)
    pretrainings = {}
    for family in families:
        variant, overrides = common.TINY[family]
        pretrainings[family] = Pretraining(
            f"{common.PRETRAIN}:{variant}",
            {**common.movie_review_corpus(CPU_STEPS[family]), **overrides},
            label=f"{variant} on movie reviews, {CPU_STEPS[family]} steps",
        )
    full = preset == "cpu_full"
    rows = [row for family in families for row in family_rows(family, reviews=full)]
    # MiniLM on SST-2 only: a run on the reviews takes ~7 minutes here (paper: both).
    rows += common.minilm_rows(reviews=False, epochs=1, columns=("sst2",))
    return Study(
        name="pretraining_helps",
        title="Does pretraining help? Fine-tuning from our pretraining, from random "
        "weights, and from a real pretrained BERT",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=(common.sst2_column(2000),) + ((common.movie_reviews_column(),) if full else ()),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        paper=PAPER,
        paper_source="Raffel et al. 2020, Table 1 (GLUE average of T5-base; ours: SST-2 "
        "accuracy of tiny models)",
    )


def paper_study(families) -> Study:
    published = {
        # family: (pretraining variant, its overrides beyond the variant's published ones).
        # GPT-1's shapes, vocabulary, batch, rate and warmup (Radford et al. 2018); it
        # trained 100 epochs of BooksCorpus, here a fixed 100k steps of C4.
        "gpt": ("gpt_small", {"objective.seq_len": 512, "model.num_layers": 12,
                              "model.d_model": 768, "model.num_heads": 12,
                              "model.d_ff": 3072, "tokenizer.vocab_size": 40_000,
                              "data.batch_size": 64, "optimizer.learning_rate": 2.5e-4,
                              "optimizer.warmup_steps": 2000, "train.num_steps": 100_000}),
        "bert": ("bert_base", {}),
        "t5": ("t5_base", {}),
    }  # fmt: skip
    pretrainings = {
        family: Pretraining(
            f"{common.PRETRAIN}:{variant}",
            {**common.c4_corpus(), **overrides, "train.checkpoint_every": 10_000},
            label=f"{variant} on C4",
        )
        for family, (variant, overrides) in published.items()
    }
    # Fine-tuning as published: each variant's own recipe from the pretrained weights.
    rows = []
    for family in families:
        config = f"{common.FINETUNE}:{common.FINETUNE_VARIANT[family]}"
        # T5: 2^18 steps of 128 rows of 512 tokens (section 3.1.3); BERT and GPT-1: 3
        # epochs of batch 32 (their variants' defaults) on rows of 128 tokens.
        extra = {"objective.seq_len": 128}
        if family == "t5":
            extra = {"data.batch_size": 128, "finetune.epochs": 0, "train.num_steps": 262_144,
                     "objective.inputs_length": 512}  # fmt: skip
        label = FAMILY_LABEL[family]
        rows += [
            Row(f"{family}_random", config, {**extra, "finetune.init": "random"},
                pretraining=family, baseline=f"{family}_random", label=f"{label}, random init"),
            Row(f"{family}_ours", config, extra, pretraining=family,
                baseline=f"{family}_random", label=f"{label}, our pretraining"),
        ]  # fmt: skip
    rows += common.minilm_rows(reviews=False)
    return Study(
        name="pretraining_helps",
        title="Does pretraining help? (published scale)",
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=(common.glue_sst2_column(),),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        paper=PAPER,
        paper_source="Raffel et al. 2020, Table 1 (GLUE average)",
    )
