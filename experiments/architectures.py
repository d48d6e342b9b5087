"""Which architecture? (an analog of Table 2 of the T5 paper)

Four pretrained models of about the same size on one corpus and one budget: an
encoder-decoder trained with span corruption (T5's choice, the baseline row) and as a
prefix LM, a decoder-only model trained as a prefix LM (bidirectional over a random
prefix) and as a plain causal LM; plus each architecture from random weights. Encoder-
decoders are fine-tuned text-to-text (the generated label word is scored), decoders with
GPT-1's classifier at [EXTRACT] (the T5 paper fine-tuned its decoders text-to-text; here
each family uses its own fine-tuning format, so the rows also differ in that). At tiny
size the encoder-decoder (2 + 2 layers of 128) and the decoder (4 layers of 128) have
about the same parameters; per token the encoder-decoder does about the same work
(each token goes through 2 layers of one stack and the cross-attention), not the
paper's equal-FLOPs pairing of 2L and L layers.

Presets:
  cpu    1,200 pretraining steps on the 1,800 training movie reviews, one pretraining
         seed, six fine-tuning seeds, SST-2 with 2,000 labelled sentences. 66 minutes
         measured on 2 CPU cores with --jobs=2 (2.2 h of job time).
  paper  T5-base sized models on C4 (2^19 steps of 128 x 512), all of SST-2.

    t5x-lite sweep --sweep=experiments/architectures.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "paper")
CPU_STEPS = 1200
# name: (family, pretraining variant at tiny / at paper size, label)
ARCHITECTURES = {
    "encdec_span": ("t5", "t5_tiny", "t5_base", "encoder-decoder, span corruption"),
    "encdec_prefix_lm": ("t5", "t5_tiny_prefix_lm", "t5_base_prefix_lm",
                         "encoder-decoder, prefix LM"),
    "dec_prefix_lm": ("gpt", "gpt_tiny_prefix_lm", "gpt_tiny_prefix_lm",
                      "decoder-only, prefix LM"),
    "dec_lm": ("gpt", "gpt_tiny", "gpt_tiny", "decoder-only, LM"),
}  # fmt: skip
# A decoder at T5-base's width and twice its depth (the paper's "P params" decoder).
PAPER_DECODER = {"objective.seq_len": 512, "model.num_layers": 24, "model.d_model": 768,
                 "model.num_heads": 12, "model.head_dim": 64, "model.d_ff": 2048,
                 "tokenizer.vocab_size": 32_128, "data.batch_size": 128,
                 "train.num_steps": 524_288}  # fmt: skip
# Table 2 of the T5 paper, GLUE average: the denoising row for span corruption, the "LM"
# objective rows for the prefix-LM ones.
PAPER = {
    "encdec_span": {"T5 GLUE avg": "83.28"},
    "encdec_prefix_lm": {"T5 GLUE avg": "79.56"},
    "dec_prefix_lm": {"T5 GLUE avg": "79.68"},
    "dec_lm": {"T5 GLUE avg": "73.78"},
}


def get_study(preset: str) -> Study:
    paper = preset == "paper"
    pretrainings, rows = {}, []
    for name, (family, tiny, base, label) in ARCHITECTURES.items():
        if paper:
            overrides = {**common.c4_corpus(), **(PAPER_DECODER if family == "gpt" else {})}
        else:
            overrides = {**common.movie_review_corpus(CPU_STEPS), **common.TINY[family][1]}
        pretrainings[name] = Pretraining(
            f"{common.PRETRAIN}:{base if paper else tiny}", overrides, label=label
        )
        config = f"{common.FINETUNE}:{common.FINETUNE_VARIANT[family]}"
        recipe = {} if paper else common.SAME_RECIPE[family]
        rows.append(Row(name, config, recipe, pretraining=name, label=label))
    for family, pretraining, label in (("t5", "encdec_span", "encoder-decoder"),
                                       ("gpt", "dec_lm", "decoder-only")):  # fmt: skip
        config = f"{common.FINETUNE}:{common.FINETUNE_VARIANT[family]}"
        recipe = {} if paper else common.SAME_RECIPE[family]
        rows.append(
            Row(f"{family}_random", config, {**recipe, "finetune.init": "random"},
                pretraining=pretraining, label=f"{label}, random init")
        )  # fmt: skip
    return Study(
        name="architectures",
        title="Architectures and their objectives",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=(common.glue_sst2_column() if paper else common.sst2_column(2000),),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="encdec_span",
        paper=PAPER,
        paper_source="Raffel et al. 2020, Table 2 (GLUE average)",
    )
