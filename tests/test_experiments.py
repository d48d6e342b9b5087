"""experiments/: every command a sweep prints is a config that loads, and the tables are
built from the runs' metrics files as written."""

import json

import pytest

from experiments import sst2_transfer


def config_of(command):
    config, _ = sst2_transfer.config_of(command, resolve=False)  # no checkpoint yet
    return config


@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
def test_sst2_transfer_commands_are_configs_that_load(family, tmp_path):
    pretrain = sst2_transfer.pretrain_command(family, "/data", str(tmp_path / "pre"))
    config = config_of(pretrain)
    assert pretrain[:2] == ["t5x-lite", "train"]
    assert config.data.train.path == "/data/sst2/train.tsv"
    assert config.train.eval_every == config.train.num_steps  # one held-out score, at the end
    settings = sst2_transfer.settings_of(family)
    assert settings == (
        ["pretrained", "random", "published"] if family == "t5" else list(sst2_transfer.SETTINGS)
    )
    for setting in settings:
        command = sst2_transfer.finetune_command(
            family, setting, "/data", str(tmp_path / "pre"), str(tmp_path / setting)
        )
        tuned = config_of(command)
        assert tuned.finetune.checkpoint == str(tmp_path / "pre")
        assert tuned.finetune.init == ("random" if setting == "random" else "pretrained")
        assert tuned.finetune.freeze_body == (setting == "frozen")
        assert tuned.task.train.max_examples == 2000
        # The model's shapes come from the checkpoint: the command sets none of them.
        assert not [arg for arg in command if arg.startswith("--config.model.")]
        # Every column but the published recipe's runs the study's one recipe.
        rate = dict(sst2_transfer.SAME_RECIPE[family])["optimizer.learning_rate"]
        if setting == "published":
            assert (
                tuned.optimizer.learning_rate == {"gpt": 6.25e-5, "bert": 1e-4, "t5": 1e-3}[family]
            )
        else:
            assert tuned.optimizer.learning_rate == rate


def test_sst2_transfer_table_from_metrics(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        json.dumps({"step": 100, "train/lm/loss": 6.0})
        + "\n"
        + json.dumps({"step": 400, "eval/lm/loss": 4.781, "eval/lm/accuracy": 0.1})
        + "\n"
    )
    classifier = {"classifier": {"accuracy": 0.6479, "majority_class_accuracy": 0.5092}}
    t5 = {"generated": {"accuracy": 0.6502}, "ranked": {"accuracy": 0.6491}}
    results = {
        "gpt": {
            "pretraining": sst2_transfer.pretraining_summary("gpt", str(log)),
            "pretrained": classifier,
            "random": {"classifier": {"accuracy": 0.6}},
            "frozen": {"classifier": {"accuracy": 0.5149}},
            "published": {"classifier": {"accuracy": 0.5321}},
        },
        "t5": {"pretraining": "p", "pretrained": t5, "random": t5},
    }
    lines = sst2_transfer.table(results).splitlines()
    assert lines[0].count("|") == 7 and lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == (
        "| GPT | `gpt_tiny`, 400 steps; held-out loss 4.78 | 64.8% | 60.0% | 51.5% | 53.2% |"
    )
    assert lines[3] == (
        "| T5 | p | 65.0% generated, 64.9% ranked | 65.0% generated, 64.9% ranked | - | - |"
    )


def test_sst2_transfer_without_data_says_where_to_point(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sst2_transfer.main([f"--data_dir={tmp_path}", "--print_only"])
    assert "has no sst2/train.tsv" in capsys.readouterr().err
