"""The trainer end to end on tiny models: overfitting, resume exactness, checkpoint safety."""

import json
import os

import jax
import numpy as np
import pytest

from t5x_lite import config as config_lib
from t5x_lite import host_memory
from t5x_lite.data import inputs
from t5x_lite.downstream import search
from t5x_lite.errors import UserError
from t5x_lite.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(ROOT, "gin_configs", "pretrain.py")


def tiny_config(corpus: str, variant: str = "gpt_tiny", **overrides):
    """A very small model of `variant` on `corpus` (a text file, one document per line)."""
    base = {
        "data.train.kind": "text",
        "data.train.path": corpus,
        "data.train.doc_mode": "line",
        "data.eval.kind": "none",
        "data.batch_size": "4",
        "tokenizer.vocab_size": "450",
        "objective.seq_len": "32",
        "model.d_model": "32",
        "model.num_layers": "2",
        "model.num_heads": "2",
        "model.head_dim": "16",
        "model.d_ff": "64",
        "train.progress_bar": "false",
        "train.log_every": "1",
        "optimizer.warmup_steps": "5",
    }
    base.update({k: str(v) for k, v in overrides.items()})
    return config_lib.load(f"{PRETRAIN}:{variant}", list(base.items()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [
        f"line {i}: the {w} fox jumps over the lazy dog {i % 7}"
        for i, w in enumerate(["quick", "slow", "red", "brown", "small", "tall"] * 10)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _losses(history):
    return [(r["step"], r["train/lm/loss"]) for r in history if "train/lm/loss" in r]


@pytest.mark.slow
def test_tiny_model_overfits_two_sentences(tmp_path):
    corpus = tmp_path / "two.txt"
    corpus.write_text("the cat sat on the mat.\na dog ate my homework.\n")
    # Characters, so the one unpredictable token of a document (which sentence follows)
    # weighs little in the mean; a row that starts mid-document is pinned down in a few.
    config = tiny_config(
        str(corpus),
        **{
            "tokenizer.model_type": "char",
            "tokenizer.vocab_size": 380,
            "objective.seq_len": 64,
            "train.num_steps": 200,
            "optimizer.learning_rate": 1e-2,
            "loss.z_loss": 0.0,
            "optimizer.weight_decay": 0.0,
            "optimizer.schedule": "constant",
            "train.checkpoint_every": 0,
            "train.log_every": 10,
        },
    )
    result = trainer.train(config, str(tmp_path / "run"))
    losses = _losses(result.history)
    assert losses[0][1] > 3.0
    assert losses[-1][1] < 0.1, losses


def test_resume_is_exact(tmp_path, corpus):
    # Dropout on, so the resumed run must also reproduce the dropout masks.
    overrides = {
        "train.num_steps": 20,
        "train.checkpoint_every": 10,
        "train.keep_checkpoints": 5,
        "model.dropout_rate": 0.1,
    }
    straight = trainer.train(tiny_config(corpus, **overrides), str(tmp_path / "a"))

    workdir = tmp_path / "b"
    trainer.train(tiny_config(corpus, **overrides), str(workdir))
    # Drop everything after step 10, as if the run had died there.
    os.system(f"rm -rf {workdir}/checkpoints/20")
    resumed = trainer.train(tiny_config(corpus, **overrides), str(workdir))

    assert _losses(resumed.history) == [x for x in _losses(straight.history) if x[0] > 10]
    same = jax.tree.map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
        straight.state.params,
        resumed.state.params,
    )
    assert all(jax.tree.leaves(same))
    assert int(resumed.state.step) == 20


def test_resume_between_two_examples_of_one_document_is_exact(tmp_path, corpus):
    # Deshuffling with rows of 8 cuts each ~15-token line into chunks of 7, one row each:
    # the step-5 checkpoint falls inside a document, which resuming must continue.
    overrides = {
        **T5_SMALL,
        "objective.inputs_length": 8,
        "objective.targets_length": 8,
        "train.num_steps": 10,
        "train.checkpoint_every": 5,
        "train.keep_checkpoints": 5,
    }
    config = t5_config(corpus, "t5_tiny_deshuffling", **overrides)
    straight = trainer.train(config, str(tmp_path / "a"))
    workdir = tmp_path / "b"
    trainer.train(config, str(workdir))
    os.system(f"rm -rf {workdir}/checkpoints/10")
    data_state = (workdir / "checkpoints" / "5" / "data" / "metadata").read_text()
    assert '"next_index_in_buffer": 0' not in data_state  # grain's flat map: mid-document
    resumed = trainer.train(config, str(workdir))
    assert _losses(resumed.history) == [x for x in _losses(straight.history) if x[0] > 5]


def test_partial_checkpoint_is_ignored_and_metrics_written(tmp_path, corpus):
    workdir = tmp_path / "run"
    config = tiny_config(corpus, **{"train.num_steps": 4, "train.checkpoint_every": 2})
    trainer.train(config, str(workdir))
    # A save that died half way leaves an orbax temporary directory behind.
    partial = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "junk").write_text("half written")
    config = tiny_config(corpus, **{"train.num_steps": 6, "train.checkpoint_every": 2})
    result = trainer.train(config, str(workdir))
    assert [s for s, _ in _losses(result.history)] == [5, 6]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.load(open(workdir / "config.json"))["train"]["num_steps"] == 6
    assert any(name.startswith("events") for name in os.listdir(workdir / "tensorboard"))


def test_checkpoint_from_another_model_is_refused(tmp_path, corpus):
    workdir = str(tmp_path / "run")
    trainer.train(
        tiny_config(corpus, **{"train.num_steps": 2, "train.checkpoint_every": 2}), workdir
    )
    other = tiny_config(corpus, **{"train.num_steps": 4, "model.d_model": 48})
    with pytest.raises(UserError, match="model.d_model: 32 -> 48"):
        trainer.train(other, workdir)


def test_the_kept_memory_note_reaches_the_log(tmp_path, corpus, monkeypatch, capsys):
    """host_memory.memory_note's line (peak memory past half the machine's, freed memory
    kept by default) is printed at a log step, once."""
    monkeypatch.setattr(host_memory, "_kept_by_default", True)
    monkeypatch.setattr(host_memory, "_noted", False)
    monkeypatch.setattr(host_memory, "NOTE_SHARE", 0.0)  # any peak passes it
    config = tiny_config(corpus, **{"train.num_steps": 4, "train.log_every": 2})
    trainer.train(config, str(tmp_path / "run"))
    captured = capsys.readouterr()
    log = captured.out + captured.err  # stdout, or the progress bar's stream
    assert log.count("note: peak resident memory") == 1, log
    assert "T5X_LITE_KEEP_FREED_MEMORY=0" in log


@pytest.mark.parametrize("variant", ["bert_tiny", "roberta_tiny", "spanbert_tiny"])
def test_smoke_train_encoder_variants(tmp_path, corpus, variant):
    config = tiny_config(corpus, variant, **{"train.num_steps": 3, "train.checkpoint_every": 0})
    result = trainer.train(config, str(tmp_path / "run"))
    (*_, last) = _rows(result.history, "train/mlm/loss")
    assert np.isfinite(last["train/mlm/loss"]) and last["train/mlm/tokens"] > 0
    if config.objective.next_sentence_prediction:
        assert last["train/nsp/tokens"] == 4  # one NSP label per row of the batch


T5_SMALL = {
    "objective.inputs_length": 32,
    "objective.targets_length": 16,
    "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1,
}


def test_smoke_train_encoder_decoder(tmp_path, corpus):
    overrides = {**T5_SMALL, "train.num_steps": 3, "train.checkpoint_every": 0}
    result = trainer.train(t5_config(corpus, "t5_tiny", **overrides), str(tmp_path / "run"))
    (*_, last) = _rows(result.history, "train/lm/loss")
    assert np.isfinite(last["train/lm/loss"]) and last["train/lm/tokens"] > 0
    # The end-of-run sample: the prompt through the encoder, greedy or beam decoded.
    prompt = result.run.config.sample.prompt
    assert "<extra_id_0>" in prompt
    text, how = search.sample_from_config(result.run, result.state.params)
    assert text.startswith(f"{prompt} -> ") and how == "greedy"
    result.run.config.sample.beam_size = 3
    text, how = search.sample_from_config(result.run, result.state.params)
    assert text.startswith(f"{prompt} -> ") and how == "beam search, 3 beams, length penalty 0.6"


def test_smoke_train_decoder_prefix_lm(tmp_path, corpus):
    """gpt_tiny_prefix_lm: rows carry the prefix mask and the loss covers only the rest."""
    config = tiny_config(corpus, "gpt_tiny_prefix_lm",
                         **{"train.num_steps": 3, "train.checkpoint_every": 0})  # fmt: skip
    docs, _ = inputs.load_documents(config.data)
    result = trainer.train(config, str(tmp_path / "run"))
    batch = next(iter(inputs.train_dataset(config, docs, result.run.tokenizer,
                                           result.run.objective)))  # fmt: skip
    assert batch["decoder_prefix_mask"].sum() > 0
    real = batch["decoder_segment_ids"] > 0
    assert 0 < batch["decoder_loss_weights"].sum() < real.sum()
    # Each example's prefix and scored rest overlap in exactly one position.
    overlap = (batch["decoder_prefix_mask"] * batch["decoder_loss_weights"]).sum(axis=1)
    segments = [len(set(row) - {0}) for row in batch["decoder_segment_ids"].tolist()]
    assert overlap.tolist() == segments
    (*_, last) = _rows(result.history, "train/lm/loss")
    assert np.isfinite(last["train/lm/loss"]) and last["train/lm/tokens"] > 0


@pytest.mark.parametrize(
    "variant", ["t5_tiny_prefix_lm", "t5_tiny_bert_style", "t5_tiny_deshuffling"]
)
def test_every_t5_objective_feeds_the_model_batches(tmp_path, corpus, variant):
    """The other objectives of T5's table: batches with the features the model reads."""
    config = t5_config(corpus, variant, **T5_SMALL)
    docs, _ = inputs.load_documents(config.data)
    run = trainer.build_run(config, inputs.load_or_train_tokenizer(config, str(tmp_path), docs))
    batch = next(iter(inputs.train_dataset(config, docs, run.tokenizer, run.objective)))
    assert batch["encoder_input_tokens"].shape == (4, 32)
    assert batch["decoder_target_tokens"].shape == (4, 16)
    assert batch["decoder_loss_weights"].sum() > 0
    # Every example's inputs and targets share a packing segment.
    for row in range(4):
        enc = set(batch["encoder_segment_ids"][row]) - {0}
        dec = set(batch["decoder_segment_ids"][row]) - {0}
        assert enc == dec


def t5_config(corpus, variant, **overrides):
    """tiny_config's data and trainer settings on an encoder-decoder variant."""
    base = {
        "data.train.kind": "text",
        "data.train.path": corpus,
        "data.train.doc_mode": "line",
        "data.eval.kind": "none",
        "data.batch_size": "4",
        "tokenizer.vocab_size": "450",
        "model.d_model": "32",
        "model.num_heads": "2",
        "model.head_dim": "16",
        "model.d_ff": "64",
        "train.progress_bar": "false",
        "train.log_every": "1",
    }
    base.update({k: str(v) for k, v in overrides.items()})
    return config_lib.load(f"{PRETRAIN}:{variant}", list(base.items()))


def _rows(history, key):
    return [r for r in history if key in r]


def test_objective_must_fit_architecture(tmp_path, corpus):
    config = tiny_config(corpus, **{"objective.name": "masked_lm", "train.num_steps": 1})
    with pytest.raises(UserError, match="config.objective.name"):
        trainer.train(config, str(tmp_path / "run"))


@pytest.mark.parametrize("variant", ["roberta_tiny", "spanbert_tiny"])
def test_masked_positions_head_gives_the_full_heads_loss_and_gradients(tmp_path, corpus, variant):
    """max_predictions: the MLM head at the selected positions only equals the full-length
    head there (same loss sums and gradients, nothing unscored); a cap below the row's
    selections leaves exactly the rest unscored and scores the first ones in row order."""
    configs = {
        cap: tiny_config(corpus, variant, **{"objective.max_predictions": cap})
        for cap in (0, -1, 2)
    }
    docs, _ = inputs.load_documents(configs[0].data)
    tokenizer = inputs.load_or_train_tokenizer(configs[0], str(tmp_path), docs)
    runs = {cap: trainer.build_run(config, tokenizer) for cap, config in configs.items()}
    assert runs[-1].objective.max_predictions == 16  # ceil(1.1 * 0.15 * 32) + 8, to 8s
    batch = next(iter(inputs.train_dataset(configs[0], docs, tokenizer, runs[0].objective)))
    selected = batch["encoder_loss_weights"].sum(axis=1)
    assert 0 < selected.max() <= 16 and (selected > 2).any()
    params = trainer.init_state(runs[0], 0).params

    def loss_and_grads(run):
        def loss(p):
            sums = trainer.loss_sums(run, p, run.objective.device_features(batch), dropout_rng=None)
            return sums["mlm"]["loss_sum"], sums["mlm"]

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, full), full_grads = loss_and_grads(runs[0])
    (_, masked), masked_grads = loss_and_grads(runs[-1])
    assert "unscored_sum" not in full and float(masked["unscored_sum"]) == 0
    for key in ("loss_sum", "correct_sum", "weight_sum"):
        np.testing.assert_allclose(masked[key], full[key], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(masked_grads), jax.tree.leaves(full_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # sums in another order

    (_, capped), _ = loss_and_grads(runs[2])
    assert float(capped["weight_sum"]) == np.minimum(selected, 2).sum()
    assert float(capped["unscored_sum"]) == selected.sum() - np.minimum(selected, 2).sum()
    features = runs[2].objective.device_features(batch)
    for row in range(len(selected)):
        first = np.flatnonzero(batch["encoder_loss_weights"][row])[:2]
        np.testing.assert_array_equal(features["mlm_positions"][row][: len(first)], first)


def test_step_metrics_sum_over_the_interval_and_keep_the_first_nonfinite_step():
    def step(loss, tokens, grad_norm, first_nonfinite):
        sums = {"lm": {"loss": np.float32(loss), "tokens": np.float32(tokens)}}
        extras = {
            "grad_norm": np.float32(grad_norm),
            trainer.FIRST_NONFINITE: np.int32(first_nonfinite),
        }
        return sums, extras

    pending = None
    for metrics in (step(2.5, 10, 1.0, trainer.NO_STEP), step(1.5, 6, 3.0, 7), step(1, 4, 2, 9)):
        pending = trainer.add_step_metrics(pending, metrics)
    sums, extras = jax.device_get(pending)
    assert sums == {"lm": {"loss": 5.0, "tokens": 20.0}}
    assert extras["grad_norm"] == 6.0
    assert extras[trainer.FIRST_NONFINITE] == 7  # the earliest, not a sum
