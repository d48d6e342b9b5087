"""EncoderOnly: output shapes, init scale, logical names, bidirectional packed masking,
LayerNorm placements, remat, dropout and config errors."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from t5x_lite.errors import UserError
from t5x_lite.models import ARCHITECTURES, build_model
from t5x_lite.models.encoder_only import EncoderOnly
from tests.models.helpers import LOGICAL_NAMES, fast_jit

BATCH, LENGTH, VOCAB = 2, 16, 128


def tiny_config(**overrides) -> dict:
    config = {
        "arch": "encoder_only",
        "vocab_size": VOCAB,
        "d_model": 32,
        "num_layers": 2,
        "num_heads": 4,
        "head_dim": 8,
        "d_ff": 64,
        "max_len": LENGTH,
        "type_vocab_size": 2,
        "dropout_rate": 0.1,
        "layer_norm": "post",
        "layer_norm_epsilon": 1e-12,
        "activation": "gelu",
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "dot_product_attention",
        "num_classes": 0,
    }
    config.update(overrides)
    return config


def random_batch(seed: int) -> dict[str, jax.Array]:
    """Two unpacked rows, sentence A then sentence B (token type 1 from the middle)."""
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH))
    token_types = np.zeros((BATCH, LENGTH), np.int32)
    token_types[:, LENGTH // 2 :] = 1
    return {
        "encoder_input_tokens": jnp.asarray(tokens, jnp.int32),
        "encoder_segment_ids": jnp.ones((BATCH, LENGTH), jnp.int32),
        "encoder_positions": jnp.tile(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, 1)),
        "encoder_token_type_ids": jnp.asarray(token_types),
        "mlm_targets": jnp.asarray(tokens, jnp.int32),  # ignored by the model
    }


@functools.cache
def variables_for(layer_norm: str):
    """Initialized once per placement ('rbg' keys: cheaper to compile, same distributions)."""
    model = build_model(tiny_config(layer_norm=layer_norm))
    init = fast_jit(functools.partial(model.init, deterministic=True))
    return init(jax.random.key(0, impl="rbg"), random_batch(0))


@functools.cache
def forward_for(**overrides):
    """(model, jitted deterministic forward(variables, batch)) for tiny_config(**overrides)."""
    model = build_model(tiny_config(**overrides))
    forward = fast_jit(lambda variables, batch: model.apply(variables, batch, deterministic=True))
    return model, forward


def boxed_leaves(variables) -> dict[str, nn.LogicallyPartitioned]:
    is_box = lambda leaf: isinstance(leaf, nn.LogicallyPartitioned)
    flat = jax.tree_util.tree_leaves_with_path(variables, is_leaf=is_box)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def mean_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


@pytest.mark.parametrize("layer_norm", ["post", "pre"])
def test_output_shapes_dtypes_and_initial_mlm_loss_near_uniform(layer_norm):
    _, forward = forward_for(layer_norm=layer_norm)
    batch = random_batch(1)
    outputs = forward(variables_for(layer_norm), batch)
    assert outputs["mlm_logits"].shape == (BATCH, LENGTH, VOCAB)
    assert outputs["mlm_logits"].dtype == jnp.float32
    assert outputs["nsp_logits"].shape == (BATCH, 1, 2)
    assert outputs["nsp_logits"].dtype == jnp.float32
    assert outputs["pooled"].shape == (BATCH, 32)
    assert outputs["hidden"].shape == (BATCH, LENGTH, 32)
    loss = float(mean_loss(outputs["mlm_logits"], batch["encoder_input_tokens"]))
    assert abs(loss - math.log(VOCAB)) < 0.3
    nsp_loss = float(mean_loss(outputs["nsp_logits"], jnp.zeros((BATCH, 1), jnp.int32)))
    assert abs(nsp_loss - math.log(2)) < 0.3


def test_every_param_has_logical_names_and_layers_are_stacked():
    leaves = boxed_leaves(variables_for("post"))
    assert len(leaves) == len(jax.tree_util.tree_leaves(nn.meta.unbox(variables_for("post"))))
    for path, leaf in leaves.items():
        assert isinstance(leaf, nn.LogicallyPartitioned), path
        assert len(leaf.names) == leaf.value.ndim, path
        assert set(leaf.names) <= LOGICAL_NAMES, path
        if path.startswith("params/layers/"):
            assert leaf.names[0] == "layers", path
            assert leaf.value.shape[0] == 2, path
    expected = {
        "token_embed/embedding": ("vocab", "embed"),
        "position_embed/embedding": (None, "embed"),
        "token_type_embed/embedding": (None, "embed"),
        "embed_norm/scale": ("embed",),
        "layers/attention/query/kernel": ("layers", "embed", "heads", "kv"),
        "layers/attention/out/kernel": ("layers", "heads", "kv", "embed"),
        "layers/mlp/wi/kernel": ("layers", "embed", "mlp"),
        "layers/post_attention_norm/scale": ("layers", "embed"),
        "layers/post_mlp_norm/scale": ("layers", "embed"),
        "mlm_transform/kernel": ("embed", "mlp"),
        "mlm_norm/scale": ("embed",),
        "mlm_bias": ("vocab",),
        "pooler/kernel": ("embed", "mlp"),
        "nsp/kernel": ("embed", None),
    }
    for path, names in expected.items():
        assert leaves[f"params/{path}"].names == names, path
    assert leaves["params/token_type_embed/embedding"].value.shape == (2, 32)
    assert leaves["params/nsp/kernel"].value.shape == (32, 2)


def test_pre_ln_has_final_norm_instead_of_embedding_norm():
    post = {path.removeprefix("params/") for path in boxed_leaves(variables_for("post"))}
    pre = {path.removeprefix("params/") for path in boxed_leaves(variables_for("pre"))}
    assert post - pre == {
        "embed_norm/scale",
        "embed_norm/bias",
        "layers/post_attention_norm/scale",
        "layers/post_attention_norm/bias",
        "layers/post_mlp_norm/scale",
        "layers/post_mlp_norm/bias",
    }
    assert {"final_norm/scale", "layers/pre_attention_norm/scale"} <= pre - post


def test_bidirectional_changing_a_later_token_changes_earlier_logits():
    variables = variables_for("post")
    _, forward = forward_for()
    batch = random_batch(2)
    perturbed = dict(batch)
    perturbed["encoder_input_tokens"] = batch["encoder_input_tokens"].at[:, 10].add(1) % VOCAB
    logits = forward(variables, batch)["mlm_logits"]
    logits_perturbed = forward(variables, perturbed)["mlm_logits"]
    # Every earlier position sees the change (a causal model would leave them exactly equal).
    assert float(jnp.min(jnp.max(jnp.abs(logits[:, :10] - logits_perturbed[:, :10]), -1))) > 1e-5


def test_token_types_change_the_output():
    variables = variables_for("post")
    _, forward = forward_for()
    batch = random_batch(3)
    swapped = dict(batch, encoder_token_type_ids=1 - batch["encoder_token_type_ids"])
    hidden = forward(variables, batch)["hidden"]
    assert not np.allclose(hidden, forward(variables, swapped)["hidden"], atol=1e-3)


def packed_and_alone_rows(first_doc: list[int], second_doc: list[int]) -> dict[str, jax.Array]:
    """Row 0 packs doc 1 (4 tokens) and doc 2 (3 tokens, positions restart at 0), then
    padding; row 1 holds doc 2 alone at the start of its row, then padding."""
    pad = [0] * (LENGTH - 7)
    rest = [0] * (LENGTH - 3)
    return {
        "encoder_input_tokens": jnp.array(
            [first_doc + second_doc + pad, second_doc + rest], jnp.int32
        ),
        "encoder_segment_ids": jnp.array(
            [[1, 1, 1, 1, 2, 2, 2] + pad, [1, 1, 1] + rest], jnp.int32
        ),
        "encoder_positions": jnp.array([[0, 1, 2, 3, 0, 1, 2] + pad, [0, 1, 2] + rest], jnp.int32),
        "encoder_token_type_ids": jnp.array(
            [[0, 0, 1, 1, 0, 0, 1] + pad, [0, 0, 1] + rest], jnp.int32
        ),
    }


@pytest.mark.parametrize("impl", ["dot_product_attention", "einsum"])
def test_packed_segments_are_isolated_and_padding_is_finite(impl):
    variables = variables_for("post")
    _, forward = forward_for(attention_impl=impl)
    second_doc = [7, 8, 9]
    outputs = forward(variables, packed_and_alone_rows([1, 2, 3, 4], second_doc))
    other = forward(variables, packed_and_alone_rows([50, 60, 70, 80], second_doc))
    logits, other_logits = outputs["mlm_logits"], other["mlm_logits"]
    # Segment 2 ignores segment 1 ...
    np.testing.assert_allclose(logits[0, 4:7], other_logits[0, 4:7], rtol=0, atol=1e-6)
    assert not np.allclose(logits[0, :4], other_logits[0, :4], atol=1e-3)
    # ... and matches the same document alone at the start of a row.
    np.testing.assert_allclose(logits[0, 4:7], logits[1, :3], rtol=0, atol=1e-5)
    for output in outputs.values():  # padding queries (segment 0) see padding: no NaN
        assert bool(jnp.all(jnp.isfinite(output)))


def test_all_padding_row_is_finite():
    _, forward = forward_for()
    batch = dict(random_batch(4), encoder_segment_ids=jnp.zeros((BATCH, LENGTH), jnp.int32))
    for output in forward(variables_for("post"), batch).values():
        assert bool(jnp.all(jnp.isfinite(output)))


def test_remat_gives_identical_loss_and_grads():
    """'full' against 'none'. Every policy goes through the same stack.scanned_stack,
    which test_decoder_only checks with all of them."""
    variables = variables_for("post")
    batch = random_batch(5)
    results = {}
    for policy in ("none", "full"):
        model = build_model(tiny_config(remat_policy=policy))

        def loss_fn(params, model=model):
            outputs = model.apply(params, batch, deterministic=True)
            nsp_targets = jnp.zeros((BATCH, 1), jnp.int32)
            return mean_loss(outputs["mlm_logits"], batch["mlm_targets"]) + mean_loss(
                outputs["nsp_logits"], nsp_targets
            )

        results[policy] = fast_jit(jax.value_and_grad(loss_fn))(variables)
    (loss_none, grads_none), (loss, grads) = results["none"], results["full"]
    np.testing.assert_allclose(loss, loss_none, rtol=0, atol=1e-6)
    # Recomputation may round differently: gradients of size ~5 differ by ~1e-6.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        nn.meta.unbox(grads),
        nn.meta.unbox(grads_none),
    )


def test_dropout_reproducible_when_deterministic_and_random_otherwise():
    variables = variables_for("post")
    model, forward = forward_for()
    batch = random_batch(6)

    @fast_jit
    def train_forward(dropout_key):
        outputs = model.apply(variables, batch, deterministic=False, rngs={"dropout": dropout_key})
        return outputs["mlm_logits"]

    first = train_forward(jax.random.key(1, impl="rbg"))
    np.testing.assert_array_equal(first, train_forward(jax.random.key(1, impl="rbg")))
    assert not np.allclose(first, train_forward(jax.random.key(2, impl="rbg")), atol=1e-3)
    assert not np.allclose(first, forward(variables, batch)["mlm_logits"], atol=1e-3)


def test_build_model_registry_name():
    assert ARCHITECTURES["encoder_only"] is EncoderOnly
    model = build_model(ml_collections.ConfigDict(tiny_config()))
    assert isinstance(model, EncoderOnly)
    assert model.type_vocab_size == 2


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (tiny_config(layer_norm="sandwich"), "layer_norm='sandwich'.*pre, post"),
        (tiny_config(activation="relu"), "activation='relu'.*gelu, gelu_tanh"),
        (tiny_config(remat_policy="some"), "remat_policy='some'.*dots_saveable"),
        (tiny_config(dtype="float16"), "dtype='float16'.*bfloat16"),
        (tiny_config(attention_impl="flash"), "attention_impl='flash'.*einsum"),
        (tiny_config(tie_embeddings=True), "unknown field.*tie_embeddings"),
        (
            {k: v for k, v in tiny_config().items() if k != "type_vocab_size"},
            "missing field.*type_vocab_size",
        ),
    ],
)
def test_build_model_errors_name_the_bad_key(config, message):
    with pytest.raises(UserError, match=message):
        build_model(ml_collections.ConfigDict(config))


def test_mlm_head_at_positions_equals_the_full_head_there():
    variables = variables_for("post")
    _, forward = forward_for()
    batch = random_batch(1)
    positions = jnp.array([[3, 0, 15], [7, 7, 2]], jnp.int32)
    full = forward(variables, batch)
    at = forward(variables, {**batch, "mlm_positions": positions})
    assert at["mlm_logits"].shape == (BATCH, 3, VOCAB)
    expected = jnp.take_along_axis(full["mlm_logits"], positions[..., None], axis=1)
    np.testing.assert_allclose(at["mlm_logits"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(at["pooled"], full["pooled"])
