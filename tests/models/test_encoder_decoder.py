"""EncoderDecoder: registry, logical names, initial loss, packing isolation, KV-cache decoding."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite.errors import UserError
from t5x_lite.models import ARCHITECTURES, build_model
from t5x_lite.models.encoder_decoder import (
    EncoderDecoder,
    gather_cache,
    init_decode_cache,
    repeat_cache,
)
from tests.models.helpers import fast_jit

BATCH, ENCODER_LENGTH, DECODER_LENGTH, VOCAB = 2, 9, 6, 128
LOGICAL_NAMES = {"embed", "heads", "kv", "mlp", "vocab", "layers", "relpos_buckets"}
KEY = jax.random.key(0, impl="rbg")


def tiny_config(**overrides) -> dict:
    config = {
        "arch": "encoder_decoder",
        "vocab_size": VOCAB,
        "d_model": 32,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "head_dim": 8,
        "d_ff": 64,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 20,
        "mlp": "relu",
        "tie_embeddings": True,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "dot_product_attention",
    }
    return config | overrides


def row_batch(encoder_segments, decoder_segments, seed: int = 0) -> dict[str, jax.Array]:
    """Rows packed from per-row lists of segment lengths; the rest is padding (segment 0).
    Positions restart at 0 in every segment."""
    rng = np.random.default_rng(seed)

    def features(lengths_per_row, length):
        segment_ids = np.zeros((len(lengths_per_row), length), np.int32)
        positions = np.zeros_like(segment_ids)
        for row, lengths in enumerate(lengths_per_row):
            start = 0
            for segment, segment_length in enumerate(lengths, start=1):
                segment_ids[row, start : start + segment_length] = segment
                positions[row, start : start + segment_length] = np.arange(segment_length)
                start += segment_length
        tokens = rng.integers(1, VOCAB, segment_ids.shape) * (segment_ids > 0)
        return tokens, segment_ids, positions

    batch = {}
    for side, lengths, length in [
        ("encoder", encoder_segments, ENCODER_LENGTH),
        ("decoder", decoder_segments, DECODER_LENGTH),
    ]:
        tokens, segment_ids, positions = features(lengths, length)
        batch |= {
            f"{side}_input_tokens": tokens,
            f"{side}_segment_ids": segment_ids,
            f"{side}_positions": positions,
        }
    return {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}


# Row 1's encoder input is padded from position 6; decoders are full.
UNPACKED = ([[ENCODER_LENGTH], [6]], [[DECODER_LENGTH], [DECODER_LENGTH]])


def test_registered_and_validated():
    assert ARCHITECTURES["encoder_decoder"] is EncoderDecoder
    with pytest.raises(UserError, match="model.mlp"):
        build_model(tiny_config(mlp="swiglu"))
    with pytest.raises(UserError, match="attention_impl"):
        build_model(tiny_config(attention_impl="flash"))


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_every_param_has_logical_names(tie_embeddings):
    model = build_model(tiny_config(tie_embeddings=tie_embeddings, mlp="gated_gelu"))
    abstract = jax.eval_shape(
        functools.partial(model.init, deterministic=True), KEY, row_batch(*UNPACKED)
    )
    boxed = jax.tree.leaves(
        abstract["params"], is_leaf=lambda leaf: isinstance(leaf, nn.Partitioned)
    )
    assert all(isinstance(leaf, nn.Partitioned) for leaf in boxed)
    for leaf in boxed:
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= LOGICAL_NAMES
    params = abstract["params"]
    for stack_name in ("encoder", "decoder"):
        assert params[stack_name]["relpos"]["rel_embedding"].names == ("relpos_buckets", "heads")
    assert ("logits_kernel" in params["decoder"]) is not tie_embeddings


def _copy_segment(batch, source_row: int, target_row: int, spans) -> dict[str, jax.Array]:
    """`batch` with row `target_row` replaced by one segment of `source_row`, moved to the
    start of the row; spans = {side: (start, length)}."""
    batch = dict(batch)
    for side, (start, length) in spans.items():
        for feature in ("input_tokens", "segment_ids", "positions"):
            values = batch[f"{side}_{feature}"]
            row = (
                jnp.zeros(values.shape[1], jnp.int32)
                .at[:length]
                .set(values[source_row, start : start + length])
            )
            if feature == "segment_ids":
                row = jnp.where(row > 0, 1, 0)
            batch[f"{side}_{feature}"] = values.at[target_row].set(row)
    return batch


def packed_batch() -> dict[str, jax.Array]:
    """Row 0 packs example A (encoder 4, decoder 3) then B (encoder 3, decoder 2); rows
    1 and 2 hold A and B alone."""
    packed = row_batch([[4, 3], [4], [3]], [[3, 2], [3], [2]], seed=1)
    packed = _copy_segment(packed, 0, 1, {"encoder": (0, 4), "decoder": (0, 3)})
    return _copy_segment(packed, 0, 2, {"encoder": (4, 3), "decoder": (3, 2)})


def random_params(model: EncoderDecoder) -> dict:
    """Params of init's shapes drawn in numpy: no init compile, and weights larger than
    init's so that every path (relative bias included) visibly moves the logits."""
    abstract = jax.eval_shape(
        functools.partial(model.init, deterministic=True), KEY, row_batch(*UNPACKED)
    )
    leaves, treedef = jax.tree.flatten(nn.meta.unbox(abstract["params"]))
    rng = np.random.default_rng(0)
    values = [rng.normal(0.0, 0.3, leaf.shape).astype(np.float32) for leaf in leaves]
    return jax.tree.unflatten(treedef, values)


def test_initial_loss_is_near_uniform():
    model = build_model(tiny_config())
    batch = row_batch(*UNPACKED)

    @fast_jit
    def run(key):
        variables = model.init(key, batch, deterministic=True)
        return model.apply(variables, batch, deterministic=True)["logits"]

    logits = run(KEY)
    assert logits.shape == (BATCH, DECODER_LENGTH, VOCAB) and logits.dtype == jnp.float32
    targets = jax.random.randint(KEY, (BATCH, DECODER_LENGTH), 0, VOCAB)
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))
    assert abs(float(loss) - math.log(VOCAB)) < 0.1


def test_packed_segments_are_isolated_and_dropout_is_active():
    """Packing must not change either example's logits; train mode must."""
    model = build_model(tiny_config())
    batch = packed_batch()

    @fast_jit
    def run(params, key):
        evaluated = model.apply({"params": params}, batch, deterministic=True)["logits"]
        trained = model.apply({"params": params}, batch, deterministic=False, rngs={"dropout": key})
        return evaluated, trained["logits"]

    logits, dropped_out = (np.asarray(x) for x in run(random_params(model), KEY))
    np.testing.assert_allclose(logits[0, :3], logits[1, :3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:5], logits[2, :2], rtol=0, atol=1e-5)
    assert np.all(np.isfinite(dropped_out)) and not np.allclose(dropped_out, logits)


def _decode_step(model, params, cache, tokens):
    """tokens [batch] -> (cache, logits [batch, vocab]). After the cache-creating call the
    model reads neither the encoder output (None here) nor encoder_segment_ids."""
    logits, mutated = model.apply(
        {"params": params, "cache": cache},
        None,
        {"decoder_input_tokens": tokens[:, None]},
        deterministic=True,
        decode=True,
        method="decode",
        mutable=["cache"],
    )
    return mutated["cache"], logits[:, 0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"mlp": "relu", "tie_embeddings": True},
        {"mlp": "gated_gelu", "tie_embeddings": False, "attention_impl": "einsum"},
    ],
    ids=["t5_1_0", "t5_1_1_einsum"],
)
def test_cached_decoding_matches_full_forward(overrides):
    """Token-by-token decoding with the self- and cross-attention caches (steps under
    lax.scan, all in one compile) reproduces the teacher-forced logits; row 1's encoder
    input is padded. Steps get no encoder output, so the cross-attention keys/values
    and the encoder mask can only come from the cache."""
    model = build_model(tiny_config(**overrides))
    batch = row_batch(*UNPACKED, seed=2)

    @fast_jit
    def run(params):
        full = model.apply({"params": params}, batch, deterministic=True)["logits"]
        encoded = model.apply({"params": params}, batch, deterministic=True, method="encode")
        cache = init_decode_cache(
            model, params, encoded, batch["encoder_segment_ids"], DECODER_LENGTH
        )
        cross_key = cache["decoder"]["layers"]["cross_attention"]["cached_key"]
        final, stepped = jax.lax.scan(
            functools.partial(_decode_step, model, params),
            cache,
            batch["decoder_input_tokens"].T,
        )
        return full, jnp.swapaxes(stepped, 0, 1), final["decoder"]["index"], cross_key

    full, stepped, index, cross_key = run(random_params(model))
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), rtol=0, atol=1e-5)
    assert int(index) == DECODER_LENGTH
    # [layers, batch, encoder_length, heads, kv], projected once at cache creation.
    assert cross_key.shape == (2, BATCH, ENCODER_LENGTH, 4, 8)


def test_repeat_and_gather_cache_follow_rows():
    """A cache repeated per beam decodes every copy like its source row, and a gathered
    cache decodes like the rows it was gathered from (the shared 'index' stays scalar)."""
    model = build_model(tiny_config())
    batch = row_batch(*UNPACKED, seed=3)
    beams, order = 3, jnp.array([5, 0, 3, 3, 1, 2], jnp.int32)
    tokens = batch["decoder_input_tokens"][:, :2]  # [batch, 2]

    @fast_jit
    def run(params):
        encoded = model.apply({"params": params}, batch, deterministic=True, method="encode")
        cache = init_decode_cache(
            model, params, encoded, batch["encoder_segment_ids"], DECODER_LENGTH
        )
        cache, _ = _decode_step(model, params, cache, tokens[:, 0])
        _, logits = _decode_step(model, params, cache, tokens[:, 1])
        repeated = repeat_cache(cache, beams)
        _, repeated_logits = _decode_step(model, params, repeated, jnp.repeat(tokens[:, 1], beams))
        gathered = gather_cache(repeated, order)
        _, gathered_logits = _decode_step(
            model, params, gathered, jnp.repeat(tokens[:, 1], beams)[order]
        )
        return logits, repeated_logits, gathered_logits, gathered["decoder"]["index"]

    logits, repeated_logits, gathered_logits, index = run(random_params(model))
    expected = np.repeat(np.asarray(logits), beams, axis=0)
    np.testing.assert_allclose(np.asarray(repeated_logits), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(gathered_logits), expected[np.asarray(order)], rtol=0, atol=1e-5
    )
    assert index.shape == () and int(index) == 1
