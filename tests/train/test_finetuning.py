"""Fine-tuning through the one trainer: weights from a pretraining checkpoint, a fresh
head, a frozen body, and the errors for checkpoints that do not fit."""

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util

from t5x_lite import api
from t5x_lite import config as config_lib
from t5x_lite.data import inputs, labelled
from t5x_lite.downstream import evaluate, finetune
from t5x_lite.errors import UserError
from t5x_lite.train import trainer

from .test_trainer import ROOT, tiny_config

FINETUNE = os.path.join(ROOT, "gin_configs", "finetune.py")
# One xdist worker runs the whole module (`--dist loadgroup`), so the module-scoped
# pretraining fixture below runs once, not once per worker.
pytestmark = pytest.mark.xdist_group("finetuning")
SMALL_MODEL = {
    "model.d_model": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.head_dim": 16,
    "model.d_ff": 64,
    "tokenizer.vocab_size": 450,
    "model.vocab_size": 450,
}
WORDS = ["the", "a", "movie", "film", "plot", "actors", "story", "scenes", "music"]
WORDS += ["ending", "was", "is", "quite", "very"]


def _toy_rows(n: int, seed: int) -> list[tuple[int, str]]:
    """Sentences of filler words with one cue word: 'great' -> 1, 'awful' -> 0."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 8))))
        words.insert(int(rng.integers(len(words) + 1)), "great" if label else "awful")
        rows.append((label, " ".join(words)))
    return rows


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """A separable SST-2-shaped task: train header label/sentence, eval label/content."""
    directory = tmp_path_factory.mktemp("toy_task")
    for name, column, n, seed in (("train", "sentence", 256, 0), ("dev", "content", 64, 1)):
        lines = [f"label\t{column}"] + [f"{y}\t{text}" for y, text in _toy_rows(n, seed)]
        (directory / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def _pretrain(tmp_path_factory, toy_task, variant: str) -> str:
    """A 2-step run of the pretraining `variant` on the toy sentences: its workdir."""
    workdir = str(tmp_path_factory.mktemp(f"{variant}_pretrained"))
    config = tiny_config(
        str(toy_task / "train.tsv"),
        variant,
        **{
            "data.train.kind": "tsv",
            "data.train.column": "sentence",
            "train.num_steps": 2,
            "train.checkpoint_every": 2,
        },
    )
    trainer.train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, toy_task):
    return _pretrain(tmp_path_factory, toy_task, "bert_tiny")


def finetune_config(toy_task, variant="bert_tiny_sst2", resolve=True, **overrides):
    """The config `t5x-lite finetune` would run, every override set on its command line
    (resolve=False: as loaded, before `finetune.resolve`)."""
    base = {
        **SMALL_MODEL,
        "model.max_len": 32,  # the pretraining run's position table
        "objective.seq_len": 16,
        "task.train.path": str(toy_task / "train.tsv"),
        "task.eval.path": str(toy_task / "dev.tsv"),
        "data.batch_size": 16,
        "train.progress_bar": False,
        "train.log_every": 10,
        "train.checkpoint_every": 0,
    }
    base.update(overrides)
    config = config_lib.load(f"{FINETUNE}:{variant}", [(k, str(v)) for k, v in base.items()])
    if resolve:
        finetune.resolve(config, set(base))
    return config


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _checkpoint_params(workdir):
    return _flat(api.restore(workdir).params)


def _initial_params(config, workdir):
    """(fresh params, the params the fine-tuning run starts from)."""
    begin = finetune.start(config, str(workdir))
    run = trainer.build_run(config, begin.tokenizer, wrap_optimizer=begin.wrap_optimizer)
    params = trainer.init_state(run, config.seed).params
    initial = begin.initial_params(run, params) if begin.initial_params else params
    return _flat(params), _flat(initial)


def test_body_comes_from_the_checkpoint_and_the_head_is_fresh(toy_task, pretrained, tmp_path):
    config = finetune_config(toy_task, **{"finetune.checkpoint": pretrained})
    saved = _checkpoint_params(pretrained)
    fresh, initial = _initial_params(config, tmp_path / "a")
    heads = [path for path in initial if path.startswith("classifier/")]
    assert heads == ["classifier/dense/bias", "classifier/dense/kernel"]
    for path, value in initial.items():
        expected = fresh[path] if path in heads else saved[path]
        np.testing.assert_array_equal(value, expected, err_msg=path)
    # The baseline: same shapes and tokenizer, nothing from the checkpoint.
    config = finetune_config(
        toy_task, **{"finetune.checkpoint": pretrained, "finetune.init": "random"}
    )
    fresh, initial = _initial_params(config, tmp_path / "b")
    for path, value in initial.items():
        np.testing.assert_array_equal(value, fresh[path], err_msg=path)
    assert not np.array_equal(initial["token_embed/embedding"], saved["token_embed/embedding"])


def test_frozen_body_trains_only_the_classifier(toy_task, pretrained, tmp_path):
    config = finetune_config(
        toy_task,
        **{"finetune.checkpoint": pretrained, "finetune.freeze_body": True, "finetune.epochs": 0},
        **{"train.num_steps": 3},
    )
    result = finetune.train(config, str(tmp_path / "probe"))
    saved = _checkpoint_params(pretrained)
    after = _flat(result.state.params)
    for path, value in after.items():
        if path.startswith("classifier/"):
            assert not np.array_equal(value, 0 * value), path  # trained away from zero bias
        else:
            np.testing.assert_array_equal(value, saved[path], err_msg=path)


@pytest.mark.parametrize("variant", ["bert_tiny_sst2", "gpt_tiny_sst2"])
def test_classifier_head_learns_a_separable_task(toy_task, tmp_path, variant):
    config = finetune_config(
        toy_task,
        variant,
        **{"finetune.init": "random", "finetune.epochs": 4.0, "model.max_len": 16},
    )
    result = finetune.train(config, str(tmp_path / "run"))
    assert config.train.num_steps == 64  # ceil(4 epochs * 256 examples / 16)
    examples = labelled.load_split(config.task, "eval")
    metrics = evaluate.evaluate_task(
        result.run, result.state.params, examples, str(tmp_path), {"step": 64}
    )
    assert metrics["scored"] == {"step": 64}
    assert metrics["truncation"]["rows"] == 64
    assert metrics["classifier"]["accuracy"] >= 0.95, metrics
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["classifier"]["num_examples"] == 64
    rows = (tmp_path / "predictions.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["line", "text_a", "label", "prediction", "p_0", "p_1"]
    assert len(rows) == 65
    first = rows[1].split("\t")
    assert first[0] == "2" and first[1] == examples[0].text_a


def test_checkpoints_that_do_not_fit_are_refused(toy_task, pretrained, tmp_path):
    settings = {"finetune.checkpoint": pretrained, "model.d_ff": 128, "model.d_model": 64}
    with pytest.raises(
        UserError,
        match=r"contradicts the model settings you gave \(d_ff: checkpoint 64, "
        r"--config.model.d_ff=128; d_model: checkpoint 32, --config.model.d_model=64\); drop",
    ):
        finetune_config(toy_task, **settings)
    wider = finetune_config(toy_task, resolve=False, **settings)
    with pytest.raises(
        UserError,
        match=r"config.model \(d_ff: checkpoint 64, config 128; d_model: checkpoint 32, config "
        r"64\); fine-tune with its model settings \(--config.model.d_ff=64 "
        r"--config.model.d_model=32\)",
    ):
        _initial_params(wider, tmp_path / "wider")
    other_vocab = tmp_path / "other.model"
    other_vocab.write_bytes(b"not the same pieces")
    config = finetune_config(
        toy_task, **{"finetune.checkpoint": pretrained, "tokenizer.path": str(other_vocab)}
    )
    with pytest.raises(UserError, match="not the vocabulary the checkpoint was trained with"):
        finetune.load_tokenizer(config, str(tmp_path / "other_vocab"))
    with pytest.raises(UserError, match="holds no checkpoint"):
        finetune_config(toy_task, **{"finetune.checkpoint": str(tmp_path)})


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"finetune.checkpoint": ""}, "config.finetune.checkpoint is empty"),
        (
            {"model.num_classes": 3, "finetune.init": "random"},
            "num_classes=3 but config.task.labels has 2",
        ),
        ({"finetune.init": "scratch"}, "config.finetune.init='scratch'"),
    ],
)
def test_bad_finetune_settings(toy_task, overrides, needle):
    config = finetune_config(toy_task, resolve=False, **overrides)
    with pytest.raises(UserError, match=needle):
        finetune.prepare(config, 100)


def test_freezing_a_text_to_text_model_is_an_error(toy_task):
    config = config_lib.load(
        f"{FINETUNE}:t5_tiny_sst2", [("finetune.freeze_body", "true"), ("finetune.init", "random")]
    )
    with pytest.raises(UserError, match="freeze_body needs a classifier head"):
        finetune.prepare(config, 100)


def _resolved(toy_task, pretrained_dir, explicit: dict, variant="bert_tiny_sst2"):
    """`t5x-lite finetune` given only `explicit` (and the toy task's files)."""
    overrides = {
        "task.train.path": str(toy_task / "train.tsv"),
        "task.eval.path": str(toy_task / "dev.tsv"),
        **({"finetune.checkpoint": pretrained_dir} if pretrained_dir else {}),
        **explicit,
    }
    config = config_lib.load(f"{FINETUNE}:{variant}", [(k, str(v)) for k, v in overrides.items()])
    finetune.resolve(config, set(overrides))
    return config


def test_model_section_comes_from_the_checkpoint(toy_task, pretrained):
    config = _resolved(toy_task, pretrained, {})
    saved = config_lib.load_saved(pretrained).model.to_dict()
    model = config.model.to_dict()
    # Every shape of the run it starts from, not the variant's d_model 128 / vocab 2048;
    # dropout and the classifier are the variant's (fine-tuning's own choices).
    for key in saved:
        if key not in finetune.FREE_MODEL_KEYS:
            assert model[key] == saved[key], key
    assert (model["d_model"], model["vocab_size"], model["max_len"]) == (32, 450, 32)
    assert (model["dropout_rate"], model["num_classes"]) == (0.1, 2)
    assert config.finetune.checkpoint_format == "t5x_lite"  # 'auto', detected
    # The config can be saved and loaded like any other: no references left behind.
    assert config.tokenizer.vocab_size == 2048


def test_num_classes_follows_the_labels_unless_set(toy_task, pretrained):
    labels = "('0', '1', '2')"
    assert _resolved(toy_task, pretrained, {"task.labels": labels}).model.num_classes == 3
    config = _resolved(toy_task, pretrained, {"task.labels": labels, "model.num_classes": 5})
    assert config.model.num_classes == 5
    with pytest.raises(UserError, match="num_classes=5 but config.task.labels has 3"):
        finetune.prepare(config, 100)


@pytest.mark.parametrize(
    "variant, pretrained_recipe, random_recipe",
    [
        ("bert_tiny_sst2", ("adamw", "linear", 1e-4, 0.1, 3), ("adamw", "cosine", 1e-3, 0.1, 3)),
        (
            "gpt_tiny_sst2",
            ("adamw", "linear", 6.25e-5, 0.002, 3),
            ("adamw", "cosine", 1e-3, 0.002, 3),
        ),
        (  # T5 from random weights: 6 epochs (finetune.random_init_epochs)
            "t5_tiny_sst2",
            ("adafactor", "constant", 1e-3, 0.0, 3),
            ("adafactor", "constant", 1e-2, 0.0, 6),
        ),
    ],
)
def test_the_recipe_follows_the_initialization(toy_task, variant, pretrained_recipe, random_recipe):
    def recipe(config):
        opt, ft = config.optimizer, config.finetune
        return (opt.name, opt.schedule, opt.learning_rate, ft.warmup_fraction, ft.epochs)

    # No checkpoint is opened for these: init=random needs none; 'pretrained' is only
    # loaded to read its recipe.
    loaded = config_lib.load(f"{FINETUNE}:{variant}")
    assert recipe(loaded) == pretrained_recipe
    config = _resolved(toy_task, "", {"finetune.init": "random"}, variant)
    assert recipe(config) == random_recipe
    # A key given on the command line wins over either recipe.
    config = _resolved(
        toy_task, "", {"finetune.init": "random", "optimizer.learning_rate": 5e-4}, variant
    )
    assert config.optimizer.learning_rate == 5e-4
    assert config.optimizer.schedule == random_recipe[1]
    config = _resolved(toy_task, "", {"finetune.init": "random", "finetune.epochs": 2}, variant)
    assert config.finetune.epochs == 2


def test_warmup_is_a_fraction_of_the_steps(toy_task):
    config = _resolved(toy_task, "", {"finetune.init": "random", "model.vocab_size": 450})
    finetune.prepare(config, 100)  # 3 epochs of 100 examples, batch 32
    assert config.train.num_steps == 10
    assert config.optimizer.warmup_steps == 1  # ceil(0.1 * 10)
    with pytest.raises(UserError, match="warmup_fraction=0.1 sets config.optimizer.warmup_steps"):
        _resolved(toy_task, "", {"finetune.init": "random", "optimizer.warmup_steps": 5})
    config = _resolved(
        toy_task,
        "",
        {"finetune.init": "random", "optimizer.warmup_steps": 5, "finetune.warmup_fraction": 0},
    )
    finetune.prepare(config, 100)
    assert config.optimizer.warmup_steps == 5


ONE_STEP = {"finetune.epochs": 0, "train.num_steps": 1, "train.progress_bar": False}


def _heads_file(workdir) -> dict:
    return json.loads((workdir / "heads.json").read_text())


@pytest.fixture(scope="module")
def roberta_pretrained(tmp_path_factory, toy_task):
    """No NSP: its pooler and NSP head stay untrained."""
    return _pretrain(tmp_path_factory, toy_task, "roberta_tiny")


def test_heads_record_what_nothing_trained(
    toy_task, pretrained, roberta_pretrained, tmp_path, capsys
):
    # Pretraining: BERT's MLM + NSP trains every head; RoBERTa's MLM leaves two untrained.
    assert _heads_file(Path(pretrained))["untrained"] == []
    assert _heads_file(Path(roberta_pretrained))["untrained"] == ["nsp", "pooler"]
    # Fine-tuning trains the classifier and the pooler under it; what the checkpoint
    # left untrained (RoBERTa's NSP head) stays so. The heads that start fresh are said.
    for source, untrained, fresh in (
        (pretrained, [], "classifier"),
        (roberta_pretrained, ["nsp"], "classifier, nsp, pooler"),
    ):
        workdir = tmp_path / os.path.basename(source)
        finetune.train(_resolved(toy_task, source, ONE_STEP), str(workdir))
        assert _heads_file(workdir)["untrained"] == untrained
        out = capsys.readouterr().out
        assert out.count("fresh heads") == 1
        # Start-up phases: the task's files and the tokenizer are not counted as imports.
        assert re.search(
            r"first step [\d.]+ s after start \(imports and config [\d.]+ s, task and "
            r"tokenizer [\d.]+ s, data and tokenizer [\d.]+ s, state [\d.]+ s, compile and "
            r"first step [\d.]+ s\)",
            out,
        ), out
        assert f"initialized from {source} (t5x_lite); fresh heads: {fresh}\n" in out
    # From random weights nothing but the classifier and pooler is trained.
    workdir = tmp_path / "random"
    config = _resolved(toy_task, pretrained, {"finetune.init": "random", **ONE_STEP})
    finetune.train(config, str(workdir))
    assert _heads_file(workdir)["untrained"] == ["mlm", "nsp"]


def test_the_run_keeps_its_own_tokenizer(toy_task, pretrained, tmp_path):
    workdir = tmp_path / "run"
    _initial_params(_resolved(toy_task, pretrained, {}), workdir)
    assert (workdir / "tokenizer.model").read_bytes() == (
        Path(pretrained) / "tokenizer.model"
    ).read_bytes()


BUCKET_SHAPES = {  # small models of each family, on the toy task's tokenizer
    "gpt_tiny_sst2": {**SMALL_MODEL, "objective.seq_len": 32},
    "bert_tiny_sst2": {**SMALL_MODEL, "objective.seq_len": 32},
    "t5_tiny_sst2": {
        **{k: v for k, v in SMALL_MODEL.items() if k != "model.num_layers"},
        "model.num_encoder_layers": 1,
        "model.num_decoder_layers": 1,
        "objective.inputs_length": 32,
    },
}


@pytest.mark.parametrize("variant", list(BUCKET_SHAPES))
def test_length_buckets_change_no_loss_and_no_prediction(toy_task, tmp_path, variant):
    """Batches cut to their length bucket (config.data.bucket_multiple) give the eval
    losses and the per-example predictions of full rows."""
    config = _resolved(toy_task, "", {"finetune.init": "random", **BUCKET_SHAPES[variant]}, variant)
    config.data.batch_size = 16
    begin = finetune.start(config, str(tmp_path / "run"))
    run = trainer.build_run(config, begin.tokenizer)
    params = trainer.init_state(run, config.seed).params
    eval_step = trainer.make_eval_step(run)
    examples = labelled.load_split(config.task, "eval")
    losses, predictions, lengths = {}, {}, {}
    for multiple in (0, 8):
        config.data.bucket_multiple = multiple
        dataset = inputs.eval_dataset(
            config, examples, run.tokenizer, run.objective, process_index=0, process_count=1
        )
        lengths[multiple] = {b[next(iter(b))].shape[1] for b in dataset}
        losses[multiple] = trainer.evaluate_loss(run, eval_step, params, dataset, 0)
        out = tmp_path / f"eval_{multiple}"
        evaluate.evaluate_task(run, params, examples, str(out), {})
        predictions[multiple] = (out / "predictions.tsv").read_text()
    assert lengths[0] == {32} and max(lengths[8]) < 32  # the toy sentences need <= 16
    assert losses[8].keys() == losses[0].keys()
    for key, value in losses[0].items():
        assert losses[8][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert predictions[8] == predictions[0]


def test_a_multi_process_run_feeds_full_rows_and_says_so(toy_task, monkeypatch, capsys):
    """Fine-tuning's default length buckets would give each process its own batch shape;
    a multi-process run turns them off before anything is read, and its config says so."""
    config = finetune_config(toy_task, **{"finetune.init": "random"})
    assert inputs.bucketing(config.data) == (16, 16)  # the fine-tuning default
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    trainer._full_rows_across_processes(config)
    assert inputs.bucketing(config.data) == (0, 0)
    assert "length buckets need a single process; this 2-process run feeds full rows" in (
        capsys.readouterr().out
    )
    inputs.owned_shards(config.data, 0, 2)  # which refuses buckets across processes
