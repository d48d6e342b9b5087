"""In-context learning configs: GPT-3-style k-shot classification with a pretrained model.

Pretrain, then classify SST-2's dev sentences by the likelihood of each label word after
k labelled demonstrations (no parameter is updated):

    t5x-lite train --config=gin_configs/pretrain.py:gpt_tiny --workdir=runs/gpt
    t5x-lite icl --config=gin_configs/icl.py:sst2 --config.icl.checkpoint=runs/gpt \
        --workdir=runs/gpt_icl

`icl` prints shots -> accuracy, macro-F1 and the mean number of demonstrations that fit
the model's context (with the eval split's majority-class accuracy for reference) and,
given --workdir, writes them to `<workdir>/icl_metrics.json`. The checkpoint is a
decoder_only or encoder_decoder run, or a Hugging Face GPT-2 or T5 directory (e.g.
`--config.icl.checkpoint=path/to/gpt2`); encoder_only models cannot generate a label word.
Prompts are built as t5x_lite/downstream/icl.py's docstring shows.

Variants:
  sst2        SST-2 (GLUE TSV files under $T5X_LITE_DATA_DIR/sst2), 0/1/4/8 shots.
  sst2_local  the "run locally" size: 0 and 1 shots on the first 50 dev sentences.
  pair        a sentence-pair task (columns premise, hypothesis); point
              config.task.{train,eval}.path at your TSV files.
"""

import os

import ml_collections

from t5x_lite.config import import_file

# The sibling config file (the task sections: files, columns, labels, label words).
finetune = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py"))


def icl_config(task: dict, template: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Demonstrations are drawn from the train split; the eval split is classified.
    config.task = task
    # The first N eval rows (0 = all): each costs one scoring row per label word and k.
    config.task.eval.max_examples = 200
    config.icl = dict(
        # A run (its latest checkpoint) or a Hugging Face directory; required.
        checkpoint="",
        shots=(0, 1, 4, 8),  # k demonstrations per prompt; each k is one table row
        # One example as text: {a} = text_a, {b} = text_b; a demonstration is followed
        # by " " + its label word (config.task.label_words).
        template=template,
        seed=0,  # eval example i at k shots draws its demonstrations with [seed, k, i]
        batch_size=16,  # scoring rows per forward pass
        # A decoder prompt longer than the model's context: True drops its first
        # demonstrations until it fits (the report gives the mean shots actually used),
        # False stops with an error.
        fit_context=True,
    )
    return config


def sst2():
    return icl_config(finetune.sst2_task(), "Review: {a}\nSentiment:")


def sst2_local():
    config = sst2()
    config.icl.shots = (0, 1)
    config.task.eval.max_examples = 50
    return config


def pair():
    return icl_config(finetune.pair_task(), "{a}\nQuestion: {b}? Answer:")


VARIANTS = {"sst2": sst2, "sst2_local": sst2_local, "pair": pair}


def get_config(arg=None):
    variant = arg or "sst2"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[variant]()
