"""End to end, pretrain then fine-tune: a tiny model pretrained on SST-2 sentences and
fine-tuned on 2,000 labelled SST-2 examples beats the majority class on SST-2 dev.

The runs are those of experiments/sst2_transfer.py (the README's table), loaded from the
commands it prints. `finetune_sst2` is shared with the BERT and T5 pretraining tests,
which fine-tune the model they have just pretrained; the GPT one is here."""

import os

import pytest

from experiments import sst2_transfer
from t5x_lite.data import labelled
from t5x_lite.downstream import evaluate, finetune
from t5x_lite.train import trainer


def sst2_pretraining(family, shared_data_dir, workdir, *extra):
    """sst2_transfer's pretraining run of `family` in `workdir`, plus `extra` overrides
    (`--config.key=value`) -> config."""
    command = sst2_transfer.pretrain_command(family, shared_data_dir, str(workdir))
    return sst2_transfer.config_of([*command, *extra])[0]


def finetune_sst2(family, pretrained_workdir, shared_data_dir, workdir):
    """sst2_transfer's fine-tuning of `pretrained_workdir` on 2,000 SST-2 training
    sentences (a seeded sample); score SST-2 dev -> evaluate_task's metrics."""
    command = sst2_transfer.finetune_command(
        family, "pretrained", shared_data_dir, str(pretrained_workdir), str(workdir)
    )
    # Full rows: the recipe these tests' thresholds were set on. Length buckets (the
    # default since) regroup the batches; on the pretrained tiny BERT six seeds gave
    # 60.9 +- 3.3 with buckets against 61.6 +- 1.7 (within noise, sign-flip p 0.5), but
    # seed 0 falls from 59.1 to 55.2, under this file's single-seed margin.
    command += ["--config.data.bucket_multiple=0", "--config.data.bucket_window=0"]
    config = sst2_transfer.config_of(command)[0]
    assert config.task.train.max_examples == 2000
    result = finetune.train(config, str(workdir))
    examples = labelled.load_split(config.task, "eval")
    assert len(examples) == 872
    metrics = evaluate.evaluate_task(
        result.run, result.state.params, examples, os.path.join(workdir, "eval"), {}
    )
    print(family, metrics)
    return metrics


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.full_speed
def test_tiny_gpt_pretrained_on_sst2_then_finetuned_beats_the_majority(tmp_path, shared_data_dir):
    # gpt_tiny with rows of 64 tokens and 1,024 pieces, 400 steps of 16 rows.
    config = sst2_pretraining("gpt", shared_data_dir, tmp_path / "pretrain")
    pretrained = trainer.train(config, str(tmp_path / "pretrain"))
    assert pretrained.history[-1]["eval/lm/loss"] < 5.2  # ln 1024 = 6.93 at the start
    # Fine-tuning takes the model's settings and vocabulary from the checkpoint.
    metrics = finetune_sst2("gpt", tmp_path / "pretrain", shared_data_dir, tmp_path / "sst2")
    metrics = metrics["classifier"]
    # GPT-1's [START] a [DELIM] b [EXTRACT] with the auxiliary LM loss: 0.64 vs 0.51
    # (872 sentences: chance varies by +-0.017).
    assert metrics["num_examples"] == 872
    assert metrics["accuracy"] > metrics["majority_class_accuracy"] + 0.04, metrics
