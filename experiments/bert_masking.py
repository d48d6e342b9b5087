"""What should a selected token become? (an analog of Table 8 of the BERT paper)

One encoder (roberta_tiny: masked LM without next-sentence prediction, dynamic masks),
pretrained with BERT's 80/10/10 mix of [MASK] / the token kept / a random token for the
15% of tokens selected, and with the paper's five alternatives. Each is scored on SST-2
twice: fine-tuned (all weights; BERT's "fine-tune" column) and as a frozen body under a
trained linear classifier on [CLS] (a stand-in for the paper's feature-based NER
column: the mismatch of seeing [MASK] in pretraining but never in fine-tuning matters
most when the body cannot adapt). 80/10/10 is the baseline row.

Presets:
  cpu    1,500 pretraining steps on the 1,800 training movie reviews, one pretraining
         seed, six fine-tuning seeds, 2,000 labelled sentences. About 50 minutes on 2
         CPU cores with --jobs=2.
  paper  BERT-base on C4 as published (1M steps of 256 x 512), all of SST-2.

    t5x-lite sweep --sweep=experiments/bert_masking.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Column, Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "paper")
CPU_STEPS = 1500
# name: (MASK, SAME, RND) in percent, as the paper's table writes them.
MIXES = {
    "m80_s10_r10": (80, 10, 10),
    "m100_s0_r0": (100, 0, 0),
    "m80_s0_r20": (80, 0, 20),
    "m80_s20_r0": (80, 20, 0),
    "m0_s20_r80": (0, 20, 80),
    "m0_s0_r100": (0, 0, 100),
}
# BERT's Table 8: MNLI dev accuracy (fine-tuned) and NER dev F1 (feature-based).
PAPER = {
    "m80_s10_r10": {"MNLI": "84.2", "NER feature-based": "94.9"},
    "m100_s0_r0": {"MNLI": "84.3", "NER feature-based": "94.0"},
    "m80_s0_r20": {"MNLI": "84.1", "NER feature-based": "94.6"},
    "m80_s20_r0": {"MNLI": "84.4", "NER feature-based": "94.7"},
    "m0_s20_r80": {"MNLI": "83.7", "NER feature-based": "94.6"},
    "m0_s0_r100": {"MNLI": "83.6", "NER feature-based": "94.6"},
}


def get_study(preset: str) -> Study:
    paper = preset == "paper"
    if paper:
        spec, corpus = f"{common.PRETRAIN}:roberta_base", common.c4_corpus()
    else:
        spec = f"{common.PRETRAIN}:roberta_tiny"
        corpus = {**common.movie_review_corpus(CPU_STEPS), **common.TINY["bert"][1]}
    pretrainings, rows = {}, []
    config = f"{common.FINETUNE}:roberta_tiny_sst2"
    recipe = {} if paper else common.SAME_RECIPE["bert"]
    for name, (mask, same, rnd) in MIXES.items():
        label = f"{mask}% [MASK], {same}% same, {rnd}% random"
        pretrainings[name] = Pretraining(
            spec,
            {**corpus, "objective.replace_with_mask": mask / 100,
             "objective.keep_original": same / 100, "objective.replace_with_random": rnd / 100},
            label=label,
        )  # fmt: skip
        rows.append(Row(name, config, recipe, pretraining=name, label=label))
    rows.append(
        Row("random", config, {**recipe, "finetune.init": "random"},
            pretraining="m80_s10_r10", label="no pretraining (random init)")
    )  # fmt: skip
    task = common.glue_sst2_column() if paper else common.sst2_column(2000)
    frozen = Column(
        "frozen", {**task.overrides, "finetune.freeze_body": True},
        label=f"{task.display}, frozen body (linear probe)",
    )  # fmt: skip
    return Study(
        name="bert_masking",
        title="BERT's masking mix",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=(task, frozen),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="m80_s10_r10",
        paper=PAPER,
        paper_source="Devlin et al. 2019, Table 8 (BERT-base; MNLI fine-tuned, NER feature-based)",
    )
