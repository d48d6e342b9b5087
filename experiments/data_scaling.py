"""How does transfer grow with pretraining tokens and with labelled examples?

One decoder (gpt_tiny) pretrained on the 1,800 training movie reviews (in-domain text
for SST-2; the SST-2 sentences themselves are left to fine-tuning), fine-tuned on SST-2
from several checkpoints of the same run (pretraining tokens on the x axis; random
weights are the point at 0 tokens) and, from its last checkpoint, on 100 to 3,000
labelled sentences against random weights (labelled examples on the x axis). Every
fine-tuning run uses the same recipe (3 epochs, so the smallest sets take few steps).
Curves: vs_tokens.png and vs_examples.png (mean ± std over seeds).

Presets:
  cpu    2,400 pretraining steps of 16 x 128 tokens (~4.9M tokens, ~2.7 passes over the
         reviews) with checkpoints every 300 steps; one pretraining seed, six
         fine-tuning seeds. 100 minutes measured on 2 CPU cores with --jobs=2 and
         other work beside it (2.8 h of job time; results/data_scaling/).
  paper  a GPT-1-sized decoder on C4, checkpoints every 10k of 100k steps, the same
         labelled-example sizes of GLUE's SST-2.

    t5x-lite sweep --sweep=experiments/data_scaling.py:cpu --workdir=runs/sweeps --jobs=2
"""

import os

from t5x_lite.config import import_file
from t5x_lite.sweep import Column, Plot, Pretraining, Row, Study

common = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "common.py"))

PRESETS = ("cpu", "paper")
EXAMPLES = (100, 300, 1000, 3000)
TOKEN_EXAMPLES = 1000  # labelled examples of the pretraining-tokens curve


def get_study(preset: str) -> Study:
    paper = preset == "paper"
    if paper:
        helps = import_file(os.path.join(common.HERE, "pretraining_helps.py"))
        pretraining = helps.paper_study(("gpt",)).pretrainings["gpt"]
        steps, every = 100_000, 10_000
        pretraining = Pretraining(
            pretraining.config,
            {
                **pretraining.overrides,
                "train.checkpoint_every": every,
                "train.keep_checkpoints": 10,
            },
            label=pretraining.label,
        )
        tokens_per_step = 64 * 512
        checkpoints = (10_000, 20_000, 50_000, 100_000)
    else:
        steps, every = 2400, 300
        variant, overrides = common.TINY["gpt"]
        pretraining = Pretraining(
            f"{common.PRETRAIN}:{variant}",
            {**common.movie_review_corpus(steps), **overrides,
             "train.checkpoint_every": every, "train.keep_checkpoints": steps // every},
            label=f"{variant} on movie reviews",
        )  # fmt: skip
        tokens_per_step = 16 * 128
        checkpoints = (300, 600, 1200, 2400)
    task = common.glue_sst2_column if paper else common.sst2_column

    def sized(examples: int, name: str, x: float, step: int = 0) -> Column:
        column = common.sst2_column(examples) if not paper else task()
        overrides = {**column.overrides, "task.train.max_examples": examples}
        return Column(name, overrides, label=name, x=x, checkpoint_step=step)

    token_columns = [sized(TOKEN_EXAMPLES, "tok0", 0)] + [
        sized(TOKEN_EXAMPLES, f"tok{step}", step * tokens_per_step, step) for step in checkpoints
    ]
    example_columns = [sized(n, f"ex{n}", n) for n in EXAMPLES]
    config = f"{common.FINETUNE}:gpt_tiny_sst2"
    recipe = {} if paper else common.SAME_RECIPE["gpt"]
    tok = [c.name for c in token_columns]
    ex = [c.name for c in example_columns]
    rows = (
        Row("random", config, {**recipe, "finetune.init": "random"}, pretraining="gpt",
            label="random init", columns=(tok[0], *ex)),
        Row("pretrained", config, recipe, pretraining="gpt", baseline="random",
            label="pretrained", columns=(*tok[1:], *ex)),
    )  # fmt: skip
    return Study(
        name="data_scaling",
        title="Fine-tuned SST-2 accuracy vs pretraining tokens and labelled examples",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        pretrainings={"gpt": pretraining},
        rows=rows,
        columns=(*token_columns, *example_columns),
        pretrain_seeds=(0,),
        finetune_seeds=(0, 1, 2, 3, 4, 5),
        baseline="random",
        plots=(
            Plot(
                "vs_tokens",
                f"pretraining tokens ({TOKEN_EXAMPLES:,} labelled examples)",
                columns=tok,
            ),
            Plot("vs_examples", "labelled SST-2 examples", columns=ex, log_x=True),
        ),  # fmt: skip
    )
