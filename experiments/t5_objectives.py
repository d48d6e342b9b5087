"""Which pretraining objective? (an analog of Tables 3 and 4 of the T5 paper)

One encoder-decoder (t5_tiny), one corpus, one budget (the same steps, batch and input
and target lengths for every objective), pretrained with each of the paper's objectives:
prefix language modeling, BERT-style denoising (15% of tokens masked or replaced, the
whole text as target), deshuffling, i.i.d. token corruption with each corrupted run
replaced by a sentinel (mean span 1) or dropped, and span corruption (mean span 3, T5's
choice and the baseline row); plus random weights. Each is fine-tuned text-to-text on
2,000 SST-2 sentences with one recipe and scored by the generated label word on the 872
dev sentences. Pretraining losses of different objectives are not comparable, so only
the fine-tuned score is.

Presets:
  cpu    pretrained on the 1,800 training movie reviews, 1,200 steps each, one
         pretraining seed, six fine-tuning seeds. About 45 minutes on 2 CPU cores
         with --jobs=2. The verdicts are about fine-tuning noise given one pretraining
         run per objective, not about pretraining seeds.
  paper  T5-base on C4 at the paper's scale (2^19 steps of 128 x 512), fine-tuned on
         all of GLUE's SST-2.

    t5x-lite sweep --sweep=experiments/t5_objectives.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "paper")
CPU_STEPS = 1200
# name: (t5_objective name or '' for span corruption, objective overrides, label)
OBJECTIVES = {
    "prefix_lm": ("prefix_lm", {}, "prefix LM"),
    "bert_style": ("bert_style", {}, "BERT-style"),
    "deshuffling": ("deshuffling", {}, "deshuffling"),
    "iid_replace": ("", {"objective.mean_noise_span_length": 1.0},
                    "i.i.d. noise, replace spans"),
    "iid_drop": ("", {"objective.mean_noise_span_length": 1.0,
                      "objective.corrupted_span": "drop"}, "i.i.d. noise, drop tokens"),
    "span": ("", {}, "span corruption (mean 3)"),
}  # fmt: skip
# GLUE averages of T5-base (Table 3: prefix LM, BERT-style, deshuffling; Table 4: the
# corrupted-span variants, whose "replace corrupted spans" row is i.i.d. noise).
PAPER = {
    "prefix_lm": {"T5 GLUE avg": "80.69"},
    "bert_style": {"T5 GLUE avg": "82.96"},
    "deshuffling": {"T5 GLUE avg": "73.17"},
    "iid_replace": {"T5 GLUE avg": "83.28"},
    "iid_drop": {"T5 GLUE avg": "84.44"},
}


def variant(size: str, objective: str) -> str:
    return f"t5_{size}_{objective}" if objective else f"t5_{size}"


def get_study(preset: str) -> Study:
    paper = preset == "paper"
    corpus = common.c4_corpus() if paper else {
        **common.movie_review_corpus(CPU_STEPS), **common.TINY["t5"][1]}  # fmt: skip
    pretrainings = {}
    for name, (objective, overrides, label) in OBJECTIVES.items():
        spec = f"{common.PRETRAIN}:{variant('base' if paper else 'tiny', objective)}"
        pretrainings[name] = Pretraining(spec, {**corpus, **overrides}, label=label)
    config = f"{common.FINETUNE}:t5_tiny_sst2"
    recipe = {} if paper else common.SAME_RECIPE["t5"]
    rows = [
        Row(name, config, recipe, pretraining=name, label=label)
        for name, (_, _, label) in OBJECTIVES.items()
    ]
    rows.append(
        Row("random", config, {**recipe, "finetune.init": "random"}, pretraining="span",
            label="no pretraining (random init)")
    )  # fmt: skip
    return Study(
        name="t5_objectives",
        title="Pretraining objectives for one encoder-decoder",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=(common.glue_sst2_column() if paper else common.sst2_column(2000),),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="span",
        paper=PAPER,
        paper_source="Raffel et al. 2020, Tables 3-4 (GLUE average of T5-base)",
    )
