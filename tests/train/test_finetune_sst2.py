"""End to end, pretrain then fine-tune: a tiny model pretrained on SST-2 sentences and
fine-tuned on 2,000 labelled SST-2 examples beats the majority class on SST-2 dev.

`finetune_sst2` is shared with the BERT and T5 pretraining tests, which fine-tune the
model they have just pretrained; the GPT one is here."""

import os

import pytest

from t5x_lite import config as config_lib
from t5x_lite.data import tasks
from t5x_lite.downstream import evaluate
from t5x_lite.train import trainer
from tests.train.test_trainer import PRETRAIN

FINETUNE = os.path.join(os.path.dirname(PRETRAIN), "finetune.py")
NUM_EXAMPLES = 2000


def sst2_pretraining(variant, shared_data_dir, overrides):
    """pretrain.py:`variant` on SST-2's training sentences, the last 500 held out,
    evaluated and checkpointed only at the end, plus `overrides` -> config."""
    return config_lib.load(
        f"{PRETRAIN}:{variant}",
        [
            ("data.train.kind", "tsv"),
            ("data.train.column", "sentence"),
            ("data.train.path", os.path.join(shared_data_dir, "sst2", "train.tsv")),
            ("data.heldout_docs", "500"),
            ("train.eval_batches", "0"),
            ("train.log_every", "100"),
            ("train.checkpoint_every", "0"),
            ("train.progress_bar", "false"),
            *overrides,
        ],
    )


def finetune_sst2(variant, pretrained_workdir, shared_data_dir, workdir, overrides=()):
    """Fine-tune `pretrained_workdir` with finetune.py:`variant` on the first 2,000
    SST-2 training sentences; score SST-2 dev -> evaluate_task's metrics."""
    sst2 = os.path.join(shared_data_dir, "sst2")
    config = config_lib.load(
        f"{FINETUNE}:{variant}",
        [
            ("finetune.checkpoint", str(pretrained_workdir)),
            ("task.train.path", os.path.join(sst2, "train.tsv")),
            ("task.eval.path", os.path.join(sst2, "dev.tsv")),
            ("task.train.max_examples", str(NUM_EXAMPLES)),
            ("train.eval_every", "100000"),  # dev is scored once, below
            ("train.checkpoint_every", "0"),
            ("train.progress_bar", "false"),
            *overrides,
        ],
    )
    result = trainer.train(config, str(workdir))
    examples = tasks.load_split(config.task, "eval")
    assert len(examples) == 872
    metrics = evaluate.evaluate_task(
        result.run, result.state.params, examples, os.path.join(workdir, "eval")
    )
    print(variant, metrics)
    return metrics


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.full_speed
def test_tiny_gpt_pretrained_on_sst2_then_finetuned_beats_the_majority(tmp_path, shared_data_dir):
    config = sst2_pretraining(
        "gpt_tiny",
        shared_data_dir,
        [
            ("objective.seq_len", "64"),
            ("tokenizer.vocab_size", "1024"),
            ("train.num_steps", "400"),
            ("train.eval_every", "400"),
            ("optimizer.warmup_steps", "20"),
        ],
    )
    pretrained = trainer.train(config, str(tmp_path / "pretrain"))
    assert pretrained.history[-1]["eval/lm/loss"] < 5.2  # ln 1024 = 6.93 at the start
    # Fine-tuning keeps the pretraining run's model settings (the vocabulary comes with
    # the checkpoint; a model that does not match it is refused).
    same_model = [("model.vocab_size", "1024"), ("model.max_len", "64")]
    metrics = finetune_sst2(
        "gpt_tiny_sst2", tmp_path / "pretrain", shared_data_dir, tmp_path / "sst2", same_model
    )["classifier"]
    # GPT-1's [START] a [DELIM] b [EXTRACT] with the auxiliary LM loss: 0.65 vs 0.51
    # (872 sentences: chance varies by +-0.017).
    assert metrics["num_examples"] == 872
    assert metrics["accuracy"] > metrics["majority_class_accuracy"] + 0.04, metrics
