"""DecoderOnly: shapes, init scale, logical names, masking (causal, packed, prefix LM),
remat, dtype, dropout, and cached decoding against the full forward pass."""

import functools
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from t5x_lite.errors import UserError
from t5x_lite.models import ARCHITECTURES, build_model, layers, stack
from t5x_lite.models.decoder_only import DecoderOnly, init_decode_cache
from tests.models.helpers import LOGICAL_NAMES, fast_jit

BATCH, LENGTH, VOCAB = 2, 16, 128


def tiny_config(**overrides) -> dict:
    config = {
        "arch": "decoder_only",
        "vocab_size": VOCAB,
        "d_model": 32,
        "num_layers": 2,
        "num_heads": 4,
        "head_dim": 8,
        "d_ff": 64,
        "max_len": LENGTH,
        "dropout_rate": 0.1,
        "tie_embeddings": True,
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "dot_product_attention",
        "num_classes": 0,
    }
    config.update(overrides)
    return config


def unpacked_batch(seed: int) -> dict[str, jax.Array]:
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH))
    return {
        "decoder_input_tokens": jnp.asarray(tokens, jnp.int32),
        "decoder_segment_ids": jnp.ones((BATCH, LENGTH), jnp.int32),
        "decoder_positions": jnp.tile(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, 1)),
        "decoder_target_tokens": jnp.asarray(tokens, jnp.int32),  # ignored by the model
    }


@functools.cache
def untied_variables():
    """Initialized once: compiling init is the slowest step of these tests.

    The tied model's params are exactly these minus 'logits_kernel', so every
    configuration below reuses them. The 'rbg' key (same distributions, different bit
    generator) halves init compile time on CPU compared with the default threefry.
    """
    model = build_model(tiny_config(tie_embeddings=False))
    init = fast_jit(functools.partial(model.init, deterministic=True))
    return init(jax.random.key(0, impl="rbg"), unpacked_batch(0))


def variables_for(tie_embeddings: bool):
    variables = untied_variables()
    if not tie_embeddings:
        return variables
    params = {k: v for k, v in variables["params"].items() if k != "logits_kernel"}
    return {"params": params}


@functools.cache
def forward_for(**overrides):
    """(model, jitted deterministic forward(variables, batch)) for tiny_config(**overrides)."""
    model = build_model(tiny_config(**overrides))
    forward = fast_jit(lambda variables, batch: model.apply(variables, batch, deterministic=True))
    return model, forward


def mean_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


def boxed_leaves(variables) -> dict[str, nn.LogicallyPartitioned]:
    is_box = lambda leaf: isinstance(leaf, nn.LogicallyPartitioned)
    flat = jax.tree_util.tree_leaves_with_path(variables, is_leaf=is_box)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_logits_shape_dtype_and_initial_loss_near_uniform(tie_embeddings):
    variables = variables_for(tie_embeddings)
    _, forward = forward_for(tie_embeddings=tie_embeddings)
    batch = unpacked_batch(1)
    logits = forward(variables, batch)["logits"]
    assert logits.shape == (BATCH, LENGTH, VOCAB)
    assert logits.dtype == jnp.float32
    loss = float(mean_loss(logits, batch["decoder_input_tokens"]))
    assert abs(loss - math.log(VOCAB)) < 0.3


def test_forward_compiles_in_seconds_with_default_optimization():
    model = build_model(tiny_config())
    batch = unpacked_batch(0)
    abstract = jax.eval_shape(
        functools.partial(model.init, deterministic=True), jax.random.key(0), batch
    )
    start = time.perf_counter()
    forward = jax.jit(lambda variables: model.apply(variables, batch, deterministic=True))
    forward.lower(abstract).compile()
    # Minutes would mean a compile that grows badly with depth (CPU unrolls the layers).
    assert time.perf_counter() - start < 30


def test_every_param_has_logical_names_and_layers_are_stacked():
    variables = variables_for(tie_embeddings=True)
    leaves = boxed_leaves(variables)
    unboxed = jax.tree_util.tree_leaves(nn.meta.unbox(variables))
    assert len(leaves) == len(unboxed)  # no param escaped boxing
    for path, leaf in leaves.items():
        assert isinstance(leaf, nn.LogicallyPartitioned), path
        assert len(leaf.names) == leaf.value.ndim, path
        assert set(leaf.names) <= LOGICAL_NAMES, path
        if path.startswith("params/layers/"):
            assert leaf.names[0] == "layers", path
            assert leaf.value.shape[0] == 2, path
    assert leaves["params/token_embed/embedding"].names == ("vocab", "embed")
    assert leaves["params/layers/mlp/wi/kernel"].names == ("layers", "embed", "mlp")
    assert leaves["params/layers/mlp/wi/kernel"].value.shape == (2, 32, 64)
    assert leaves["params/layers/attention/query/kernel"].names == (
        "layers",
        "embed",
        "heads",
        "kv",
    )
    specs = nn.get_partition_spec(variables)
    assert specs["params"]["token_embed"]["embedding"] == jax.sharding.PartitionSpec(
        "vocab", "embed"
    )


def test_tied_head_has_no_output_kernel_untied_has_embed_vocab_kernel():
    def param_shapes(tie_embeddings):
        model = build_model(tiny_config(tie_embeddings=tie_embeddings))
        init = functools.partial(model.init, deterministic=True)
        return boxed_leaves(jax.eval_shape(init, jax.random.key(0), unpacked_batch(0)))

    tied, untied = param_shapes(True), param_shapes(False)
    assert set(untied) - set(tied) == {"params/logits_kernel"}
    assert set(tied) <= set(untied)
    kernel = untied["params/logits_kernel"]
    assert kernel.names == ("embed", "vocab")
    assert kernel.value.shape == (32, VOCAB)


IMPLS = pytest.mark.parametrize("impl", ["dot_product_attention", "einsum"])


@IMPLS
def test_causal_changing_token_t_leaves_earlier_logits_exactly_unchanged(impl):
    variables = variables_for(tie_embeddings=True)
    _, forward = forward_for(attention_impl=impl)
    batch = unpacked_batch(2)
    t = 5
    perturbed = dict(batch)
    perturbed["decoder_input_tokens"] = batch["decoder_input_tokens"].at[:, t].add(1) % VOCAB
    logits = forward(variables, batch)["logits"]
    logits_perturbed = forward(variables, perturbed)["logits"]
    np.testing.assert_array_equal(logits[:, :t], logits_perturbed[:, :t])
    assert float(jnp.min(jnp.max(jnp.abs(logits[:, t] - logits_perturbed[:, t]), -1))) > 1e-4


def packed_and_alone_rows(first_doc: list[int], second_doc: list[int]) -> dict[str, jax.Array]:
    """Row 0 packs doc 1 (4 tokens) and doc 2 (3 tokens, positions restart at 0), then
    padding; row 1 holds doc 2 alone at the start of its row."""
    pad = [0] * (LENGTH - 7)
    return {
        "decoder_input_tokens": jnp.array(
            [first_doc + second_doc + pad, second_doc + [0] * (LENGTH - 3)], jnp.int32
        ),
        "decoder_segment_ids": jnp.array(
            [[1, 1, 1, 1, 2, 2, 2] + pad, [1, 1, 1] + [0] * (LENGTH - 3)], jnp.int32
        ),
        "decoder_positions": jnp.array(
            [[0, 1, 2, 3, 0, 1, 2] + pad, [0, 1, 2] + [0] * (LENGTH - 3)], jnp.int32
        ),
    }


@IMPLS
def test_packed_documents_do_not_attend_across_segments(impl):
    variables = variables_for(tie_embeddings=True)
    _, forward = forward_for(attention_impl=impl)
    second_doc = [7, 8, 9]
    logits = forward(variables, packed_and_alone_rows([1, 2, 3, 4], second_doc))["logits"]
    logits_other_first = forward(variables, packed_and_alone_rows([50, 60, 70, 80], second_doc))[
        "logits"
    ]
    # Segment 2 ignores segment 1 ...
    np.testing.assert_allclose(logits[0, 4:7], logits_other_first[0, 4:7], rtol=0, atol=1e-6)
    assert not np.allclose(logits[0, :4], logits_other_first[0, :4], atol=1e-3)
    # ... and matches the same document run alone from the start of a row.
    np.testing.assert_allclose(logits[0, 4:7], logits[1, :3], rtol=0, atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(logits)))  # padding queries are never all-masked


PREFIX_LENGTH = 5


def with_prefix(batch: dict[str, jax.Array], prefix_length: int) -> dict[str, jax.Array]:
    prefix = (jnp.arange(LENGTH) < prefix_length).astype(jnp.int32)
    return dict(batch, decoder_prefix_mask=jnp.tile(prefix, (BATCH, 1)))


@IMPLS
def test_prefix_lm_prefix_is_bidirectional_and_targets_stay_causal(impl):
    variables = variables_for(tie_embeddings=True)
    _, forward = forward_for(attention_impl=impl)
    batch = with_prefix(unpacked_batch(2), PREFIX_LENGTH)
    logits = forward(variables, batch)["logits"]

    def perturbed_logits(t):
        tokens = batch["decoder_input_tokens"].at[:, t].add(1) % VOCAB
        return forward(variables, dict(batch, decoder_input_tokens=tokens))["logits"]

    # A later prefix token (3) changes the logits at an earlier prefix position (1) ...
    later_prefix = perturbed_logits(3)
    assert float(jnp.min(jnp.max(jnp.abs(logits[:, 1] - later_prefix[:, 1]), -1))) > 1e-4
    # ... and the whole prefix, but not a target position's logits before a later token.
    t = 8
    later_target = perturbed_logits(t)
    np.testing.assert_array_equal(logits[:, :t], later_target[:, :t])
    assert float(jnp.min(jnp.max(jnp.abs(logits[:, t] - later_target[:, t]), -1))) > 1e-4


@IMPLS
def test_all_zero_prefix_mask_is_exactly_the_causal_model(impl):
    variables = variables_for(tie_embeddings=True)
    _, forward = forward_for(attention_impl=impl)
    batch = unpacked_batch(3)
    causal = forward(variables, batch)["logits"]
    zero_prefix = forward(variables, with_prefix(batch, 0))["logits"]
    np.testing.assert_array_equal(zero_prefix, causal)


def test_init_decode_cache_is_zero_buffers_per_layer():
    model = build_model(tiny_config())
    cache = init_decode_cache(model, variables_for(True)["params"], batch_size=3, max_length=10)
    attention = cache["layers"]["attention"]
    assert attention["cached_key"].shape == (
        2,
        3,
        10,
        4,
        8,
    )  # [layers, batch, max_length, heads, kv]
    assert attention["cached_value"].shape == (2, 3, 10, 4, 8)
    assert cache["index"].shape == (3,) and cache["index"].dtype == jnp.int32
    assert cache["prefix_mask"].shape == (3, 10)
    assert all(not jnp.any(leaf) for leaf in jax.tree.leaves(cache))
    with pytest.raises(ValueError, match="max_len 16"):
        init_decode_cache(model, variables_for(True)["params"], batch_size=1, max_length=17)


@functools.cache
def decode_step_for(impl: str):
    model = build_model(tiny_config(attention_impl=impl))

    def step(variables, cache, batch):
        outputs, mutated = model.apply(
            {**variables, "cache": cache},
            batch,
            deterministic=True,
            decode=True,
            mutable=["cache"],
        )
        return outputs["logits"], mutated["cache"]

    return model, fast_jit(step)


@IMPLS
@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_prefill_then_one_token_per_call_matches_full_forward(impl, prefix_lm):
    """Two prompts of different lengths (5 and 3, right-padded) are prefilled in one call,
    then each row is fed its next tokens one per call at its own cache index."""
    variables = variables_for(tie_embeddings=True)
    model, step = decode_step_for(impl)
    batch = unpacked_batch(6)
    tokens = batch["decoder_input_tokens"]
    prompt_lengths = np.array([5, 3])
    prompt_mask = (np.arange(LENGTH)[None] < prompt_lengths[:, None]).astype(np.int32)
    if prefix_lm:  # the prompt is the bidirectional prefix
        batch = dict(batch, decoder_prefix_mask=jnp.asarray(prompt_mask))
    expected = forward_for(attention_impl=impl)[1](variables, batch)["logits"]

    cache = init_decode_cache(model, variables["params"], BATCH, LENGTH)
    prefill = {
        "decoder_input_tokens": tokens[:, :5] * prompt_mask[:, :5],
        "decoder_segment_ids": jnp.asarray(prompt_mask[:, :5]),
    }
    if prefix_lm:
        prefill["decoder_prefix_mask"] = jnp.asarray(prompt_mask[:, :5])
    logits, cache = step(variables, cache, prefill)
    for row, length in enumerate(prompt_lengths):
        np.testing.assert_allclose(logits[row, :length], expected[row, :length], atol=1e-5)

    positions = prompt_lengths.copy()  # each row's next position
    while positions.max() < LENGTH:
        one_token = {
            "decoder_input_tokens": tokens[np.arange(BATCH), positions][:, None],
            "decoder_segment_ids": jnp.ones((BATCH, 1), jnp.int32),
        }
        logits, cache = step(variables, cache, one_token)
        for row, position in enumerate(positions):
            np.testing.assert_allclose(logits[row, 0], expected[row, position], atol=1e-5)
        positions += 1
    np.testing.assert_array_equal(cache["index"], positions)


def test_attention_impls_agree():
    variables = variables_for(tie_embeddings=True)
    batch = packed_and_alone_rows([1, 2, 3, 4], [7, 8, 9])
    reference = forward_for()[1](variables, batch)["logits"]
    einsum = forward_for(attention_impl="einsum")[1](variables, batch)["logits"]
    np.testing.assert_allclose(einsum, reference, rtol=0, atol=1e-5)


def test_remat_policies_give_identical_loss_and_grads():
    variables = variables_for(tie_embeddings=True)
    batch = unpacked_batch(3)
    results = {}
    for policy in ("none", "full", "dots_saveable"):
        model = build_model(tiny_config(remat_policy=policy))

        def loss_fn(params, model=model):
            logits = model.apply(params, batch, deterministic=True)["logits"]
            return mean_loss(logits, batch["decoder_input_tokens"])

        results[policy] = fast_jit(jax.value_and_grad(loss_fn))(variables)
    loss_none, grads_none = results["none"]
    for policy in ("full", "dots_saveable"):
        loss, grads = results[policy]
        np.testing.assert_allclose(loss, loss_none, rtol=0, atol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
            nn.meta.unbox(grads),
            nn.meta.unbox(grads_none),
        )


def test_unrolled_layers_equal_the_scanned_loop(monkeypatch):
    """On CPU `stack.layer_unroll` unrolls every layer; the loss and gradients, dropout
    included, equal those of the one-layer-per-iteration loop accelerators run."""
    variables = variables_for(tie_embeddings=True)
    batch = unpacked_batch(5)
    model = build_model(tiny_config())
    rngs = {"dropout": jax.random.key(7)}

    def loss_fn(params):
        logits = model.apply(params, batch, deterministic=False, rngs=rngs)["logits"]
        return mean_loss(logits, batch["decoder_input_tokens"])

    def lowered_and_results():
        step = fast_jit(jax.value_and_grad(loss_fn))
        return step.lower(variables).as_text(), step(variables)

    assert stack.layer_unroll(2) == 2  # CPU
    unrolled_text, (loss, grads) = lowered_and_results()
    monkeypatch.setattr(stack, "layer_unroll", lambda num_layers: 1)
    looped_text, (loss_looped, grads_looped) = lowered_and_results()
    # The layer loop is gone (threefry's own loops remain in both).
    assert unrolled_text.count("stablehlo.while") < looped_text.count("stablehlo.while")
    np.testing.assert_allclose(loss, loss_looped, rtol=0, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6),
        nn.meta.unbox(grads),
        nn.meta.unbox(grads_looped),
    )


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
    variables = variables_for(tie_embeddings=True)  # float32 params for both runs
    _, forward32 = forward_for()
    _, forward16 = forward_for(dtype="bfloat16")
    batch = unpacked_batch(4)
    logits32 = forward32(variables, batch)["logits"]
    logits16 = forward16(variables, batch)["logits"]
    assert logits16.dtype == jnp.float32
    difference = float(jnp.max(jnp.abs(logits16 - logits32)))
    assert 0 < difference < 0.02  # nonzero: bf16 compute really happened


def test_dropout_reproducible_when_deterministic_and_random_otherwise():
    variables = variables_for(tie_embeddings=True)
    model, forward = forward_for()
    batch = unpacked_batch(5)
    np.testing.assert_array_equal(
        forward(variables, batch)["logits"], forward(variables, batch)["logits"]
    )

    @fast_jit
    def train_forward(dropout_key):
        outputs = model.apply(variables, batch, deterministic=False, rngs={"dropout": dropout_key})
        return outputs["logits"]

    first = train_forward(jax.random.key(1, impl="rbg"))
    np.testing.assert_array_equal(first, train_forward(jax.random.key(1, impl="rbg")))
    assert not np.allclose(first, train_forward(jax.random.key(2, impl="rbg")), atol=1e-3)
    assert not np.allclose(first, forward(variables, batch)["logits"], atol=1e-3)


def test_build_model_accepts_config_dict_and_registry_names():
    model = build_model(ml_collections.ConfigDict(tiny_config()))
    assert isinstance(model, DecoderOnly)
    assert model.num_layers == 2
    assert ARCHITECTURES["decoder_only"] is DecoderOnly


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (tiny_config(arch="gpt"), "config.model.arch='gpt'.*decoder_only"),
        ({k: v for k, v in tiny_config().items() if k != "arch"}, "config.model.arch"),
        (tiny_config(n_layers=3), "unknown field.*n_layers"),
        ({k: v for k, v in tiny_config().items() if k != "d_ff"}, "missing field.*d_ff"),
        (tiny_config(remat_policy="some"), "remat_policy='some'.*dots_saveable"),
        (tiny_config(dtype="float16"), "dtype='float16'.*bfloat16"),
    ],
)
def test_build_model_errors_name_the_bad_key(config, message):
    with pytest.raises(UserError, match=message):
        build_model(ml_collections.ConfigDict(config))


def test_auto_attention_is_einsum_on_cpu_and_gives_its_logits():
    assert layers.resolve_attention_impl("auto") == "einsum"
    assert layers.resolve_attention_impl("dot_product_attention") == "dot_product_attention"
    variables = variables_for(tie_embeddings=True)
    batch = unpacked_batch(2)
    auto = forward_for(attention_impl="auto")[1](variables, batch)["logits"]
    einsum = forward_for(attention_impl="einsum")[1](variables, batch)["logits"]
    np.testing.assert_array_equal(auto, einsum)
