"""Do length buckets change what fine-tuning learns? (a check of a speed-up)

Fine-tuning rows hold one example padded to 64 tokens; SST-2 sentences fill ~27% of
them. Length buckets (data.bucket_multiple=16, bucket_window=16)
sort 16 batches' worth of examples by length, cut each batch to the multiple of 16
tokens its longest example needs and shuffle the batches; the only change to training is
which examples share a batch. Each family's tiny model is fine-tuned from random
weights on 2,000 SST-2 sentences with full rows (the baseline row) and with buckets, with
the same six seeds, and scored on the 872 dev sentences. The paired difference says
whether the data order costs accuracy; each job's wall time is in provenance.json.

Presets:
  cpu    each family's fine-tuning variant with its random-init recipe (T5: 6 epochs), no
         pretraining: the run trains its tokenizer on the 2,000 sentences. 34 minutes
         measured on 2 CPU cores with --jobs=2.

    t5x-lite sweep --sweep=experiments/length_buckets.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu",)
NO_PAPER_PRESET = "a check of an input-pipeline speed-up, not a result of a paper"
FULL_ROWS = {"data.bucket_multiple": 0, "data.bucket_window": 0}
BUCKETS = {"data.bucket_multiple": 16, "data.bucket_window": 16}
LABELS = {"gpt": "GPT (gpt_tiny)", "bert": "BERT (bert_tiny)", "t5": "T5 (t5_tiny)"}
VARIANTS = {"gpt": "gpt_tiny_sst2", "bert": "bert_tiny_sst2", "t5": "t5_tiny_sst2"}


def get_study(preset: str) -> Study:
    rows = []
    for family, variant in VARIANTS.items():
        config = f"{common.FINETUNE}:{variant}"
        random = {"finetune.init": "random"}
        rows += [
            Row(f"{family}_full", config, {**random, **FULL_ROWS}, baseline=f"{family}_full",
                label=f"{LABELS[family]}, full rows"),
            Row(f"{family}_buckets", config, {**random, **BUCKETS}, baseline=f"{family}_full",
                label=f"{LABELS[family]}, length buckets"),
        ]  # fmt: skip
    return Study(
        name="length_buckets",
        title="Length buckets: fine-tuned accuracy with and without them",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings={},
        rows=tuple(rows),
        columns=(common.sst2_column(2000),),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="gpt_full",
    )
