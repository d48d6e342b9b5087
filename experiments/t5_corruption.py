"""How much to corrupt, and in spans of what length? (an analog of Tables 6 and 7 of the
T5 paper)

One encoder-decoder (t5_tiny) pretrained with span corruption at corruption rates of 10,
15, 25 and 50% (mean span 3) and at mean span lengths of 2, 3, 5 and 10 (rate 15%); 15% in
spans of mean 3 is T5's choice and the baseline row. Fine-tuned text-to-text on 2,000
SST-2 sentences with one recipe and scored by the generated label word. Higher rates and
longer spans give shorter encoder inputs and longer targets for the same raw text; the
rows keep the input and target lengths and the steps fixed, so each sees the same
number of raw tokens per step only approximately.

Presets:
  cpu    1,200 pretraining steps each on the 1,800 training movie reviews, one
         pretraining seed, six fine-tuning seeds. 98 minutes on 2 CPU cores
         with --jobs=2 (measured, other work beside it part of the time).
  paper  T5-base on C4 (2^19 steps of 128 x 512), all of SST-2.

    t5x-lite sweep --sweep=experiments/t5_corruption.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "paper")
CPU_STEPS = 1200
# name: (noise_density, mean_noise_span_length); the targets grow with the rate, so the
# target length follows (T5: 114 targets for 512 inputs at 15%).
SETTINGS = {
    "rate10": (0.10, 3.0),
    "rate15_span3": (0.15, 3.0),
    "rate25": (0.25, 3.0),
    "rate50": (0.50, 3.0),
    "span2": (0.15, 2.0),
    "span5": (0.15, 5.0),
    "span10": (0.15, 10.0),
}
# Tables 6 (rates) and 7 (span lengths) of the T5 paper, GLUE average.
PAPER = {
    "rate10": {"T5 GLUE avg": "82.82"},
    "rate15_span3": {"T5 GLUE avg": "83.28 (15%) / 83.49 (span 3)"},
    "rate25": {"T5 GLUE avg": "83.00"},
    "rate50": {"T5 GLUE avg": "81.27"},
    "span2": {"T5 GLUE avg": "83.54"},
    "span5": {"T5 GLUE avg": "83.40"},
    "span10": {"T5 GLUE avg": "82.85"},
}


def label(rate: float, span: float) -> str:
    return f"{rate:.0%} corrupted, mean span {span:g}"


def get_study(preset: str) -> Study:
    paper = preset == "paper"
    inputs = 512 if paper else 128
    pretrainings = {}
    for name, (rate, span) in SETTINGS.items():
        corpus = common.c4_corpus() if paper else {
            **common.movie_review_corpus(CPU_STEPS), **common.TINY["t5"][1]}  # fmt: skip
        # Room for every target: the corrupted tokens, one sentinel per span and EOS.
        targets = int(inputs * rate * (1 + 1 / span) * 1.25) + 2
        pretrainings[name] = Pretraining(
            f"{common.PRETRAIN}:{'t5_base' if paper else 't5_tiny'}",
            {**corpus, "objective.noise_density": rate,
             "objective.mean_noise_span_length": span,
             "objective.inputs_length": inputs, "objective.targets_length": targets},
            label=label(rate, span),
        )  # fmt: skip
    config = f"{common.FINETUNE}:t5_tiny_sst2"
    recipe = {} if paper else common.SAME_RECIPE["t5"]
    rows = [
        Row(name, config, recipe, pretraining=name, label=pretrainings[name].label)
        for name in SETTINGS
    ]
    return Study(
        name="t5_corruption",
        title="Corruption rate and span length of span corruption",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=(common.glue_sst2_column() if paper else common.sst2_column(2000),),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="rate15_span3",
        paper=PAPER,
        paper_source="Raffel et al. 2020, Tables 6-7 (GLUE average)",
    )
