"""In-context learning vs shots and model size (a GPT-3 analog, Brown et al. 2020)

Decoders of three sizes, pretrained on the same text for the same number of tokens,
classify SST-2 dev sentences by the likelihood of "negative" / "positive" after k
labelled demonstrations (k = 0, 1, 4, 8; no parameter is updated). A replicate draws
other demonstrations (icl.seed); the 200 scored sentences are the same. Rows are
compared with the smallest model at the same k; k = 0 has no randomness, so its std is
0. At CPU scale the models are far below the size at which GPT-3 saw in-context learning
emerge: expect accuracies near the majority class (reported in each job's
icl_metrics.json) and say so rather than read a trend into noise. The 128-token context
holds about 4 demonstrations; at k = 8 the first ones are dropped (mean shots used are in
icl_metrics.json).

Presets:
  cpu    d_model 64 / 128 / 256 decoders, 1,200 steps each on the 1,800 training movie
         reviews, six demonstration seeds. About 25 minutes on 2 CPU cores with
         --jobs=2.
  paper  GPT-3 Small, Medium and XL shapes (125M, 350M, 1.3B; context 2048) on C4.

    t5x-lite sweep --sweep=experiments/in_context.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Column, Plot, Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "paper")
SHOTS = (0, 1, 4, 8)
CPU_STEPS = 1200
# name: (layers, d_model, heads)
CPU_SIZES = {"d64": (4, 64, 2), "d128": (4, 128, 4), "d256": (4, 256, 8)}
# GPT-3's table 2.1: Small, Medium, XL.
PAPER_SIZES = {"gpt3_small": (12, 768, 12), "gpt3_medium": (24, 1024, 16),
               "gpt3_xl": (24, 2048, 16)}  # fmt: skip


def get_study(preset: str) -> Study:
    paper = preset == "paper"
    sizes = PAPER_SIZES if paper else CPU_SIZES
    pretrainings, rows = {}, []
    for name, (layers, width, heads) in sizes.items():
        shape = {"model.num_layers": layers, "model.d_model": width, "model.num_heads": heads,
                 "model.head_dim": width // heads, "model.d_ff": 4 * width}  # fmt: skip
        if paper:
            corpus = {**common.c4_corpus(), "objective.seq_len": 2048, "data.batch_size": 256,
                      "tokenizer.vocab_size": 50_257, "optimizer.learning_rate": 6e-4,
                      "optimizer.warmup_steps": 375, "train.num_steps": 572_000}  # fmt: skip
        else:
            corpus = {**common.movie_review_corpus(CPU_STEPS), **common.TINY["gpt"][1]}
        params = ["125M", "350M", "1.3B"][list(sizes).index(name)] if paper else ""
        pretrainings[name] = Pretraining(
            f"{common.PRETRAIN}:gpt_tiny", {**corpus, **shape},
            label=f"{layers} layers x {width}" + (f" ({params})" if params else ""),
        )  # fmt: skip
        rows.append(
            Row(name, f"{common.ICL}:sst2", {"task.eval.path": common.data(
                *(("glue", "SST-2") if paper else ("sst2",)), "dev.tsv"),
                "task.train.path": common.data(*(("glue", "SST-2") if paper else ("sst2",)),
                                               "train.tsv")},
                pretraining=name, kind="icl", label=pretrainings[name].label)
        )  # fmt: skip
    columns = tuple(Column(f"k{k}", {"icl.shots": (k,)}, label=f"{k}-shot", x=k) for k in SHOTS)
    return Study(
        name="in_context",
        title="In-context SST-2 accuracy vs shots and model size",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings=pretrainings,
        rows=tuple(rows),
        columns=columns,
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline=next(iter(sizes)),
        plots=(Plot("vs_shots", "demonstrations (k)"),),
    )
