"""Sampling from a decoder: greedy equals a hand-rolled argmax loop; temperature is seeded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.downstream import sampling
from t5x_lite.errors import UserError
from t5x_lite.models.decoder_only import DecoderOnly


class _Ids:
    """Stands in for a tokenizer: text is space-separated ids."""

    bos_id, eos_id, vocab_size = 3, 1, 40

    def encode(self, text):
        return np.array([int(t) for t in text.split()], np.int32)

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


MODEL = DecoderOnly(
    vocab_size=40,
    d_model=16,
    num_layers=1,
    num_heads=2,
    head_dim=8,
    d_ff=32,
    max_len=12,
    dropout_rate=0.0,
    tie_embeddings=True,
    dtype="float32",
    remat_policy="none",
    attention_impl="einsum",
)


@pytest.fixture(scope="module")
def params():
    batch = {
        k: jnp.zeros((1, 12), jnp.int32)
        for k in ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")
    }
    return MODEL.init(jax.random.key(0), batch, deterministic=True)["params"]


def _greedy_by_hand(params, prompt, num_new):
    tokens = [3, *prompt]
    for _ in range(num_new):
        n = len(tokens)
        batch = {
            "decoder_input_tokens": jnp.array([tokens]),
            "decoder_segment_ids": jnp.ones((1, n), jnp.int32),
            "decoder_positions": jnp.arange(n)[None],
        }
        logits = MODEL.apply({"params": params}, batch, deterministic=True)["logits"]
        tokens.append(int(jnp.argmax(logits[0, -1])))
    return tokens[1:]


def test_greedy_matches_step_by_step_argmax(params):
    text = sampling.generate(
        MODEL, params, _Ids(), "7 8", max_len=12, max_new_tokens=5, temperature=0.0, seed=0
    )
    expected = _greedy_by_hand(params, [7, 8], 5)
    if 1 in expected[2:]:  # stop at EOS as generate does
        expected = expected[: 2 + expected[2:].index(1)]
    assert text == " ".join(map(str, expected))


def test_temperature_sampling_is_seeded(params):
    run = lambda seed: sampling.generate(
        MODEL, params, _Ids(), "7", max_len=12, max_new_tokens=8, temperature=5.0, seed=seed
    )
    assert run(0) == run(0)
    assert len({run(s) for s in range(4)}) > 1


def test_ids_past_the_tokenizer_vocabulary_are_never_sampled(params):
    class Small(_Ids):
        vocab_size = 10

    for seed in range(3):
        text = sampling.generate(
            MODEL, params, Small(), "7", max_len=12, max_new_tokens=10, temperature=50.0, seed=seed
        )
        assert all(int(t) < 10 for t in text.split())


def test_prompt_longer_than_context_is_refused(params):
    with pytest.raises(UserError, match="context is 12"):
        sampling.generate(
            MODEL,
            params,
            _Ids(),
            " ".join(["7"] * 12),
            max_len=12,
            max_new_tokens=2,
            temperature=0.0,
            seed=0,
        )
