"""What the downstream scoring / in-context / cloze tests share: a small trained
tokenizer and tiny models of the three architectures with random numpy params."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import tokenizer as tok_lib
from t5x_lite.models.decoder_only import DecoderOnly
from t5x_lite.models.encoder_decoder import EncoderDecoder
from t5x_lite.models.encoder_only import EncoderOnly

# The models' vocabulary is padded past the tokenizer's 500 pieces, as real runs may be.
TOKENIZER_VOCAB, MODEL_VOCAB = 500, 508
WORDS = [
    "stanford",
    "university",
    "is",
    "located",
    "in",
    "palo",
    "alto",
    "berkeley",
    "california",
    "paris",
    "the",
    "capital",
    "of",
    "france",
    "is",
    "a",
    "city",
    "review",
    "sentiment",
    "great",
    "terrible",
    "movie",
    "film",
    "good",
    "bad",
    "plot",
    "acting",
    "positive",
    "negative",
]


def train_tokenizer(directory: str) -> tok_lib.Tokenizer:
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(200)]
    path = tok_lib.train_tokenizer(
        corpus,
        f"{directory}/tok",
        vocab_size=TOKENIZER_VOCAB,
        model_type="bpe",
        max_sentences=1000,
    )
    return tok_lib.Tokenizer(path)


COMMON = dict(
    vocab_size=MODEL_VOCAB,
    d_model=16,
    num_heads=2,
    head_dim=8,
    d_ff=32,
    dropout_rate=0.1,  # every downstream function runs deterministic: must not matter
    dtype="float32",
    remat_policy="none",
    attention_impl="einsum",
)


DECODER = DecoderOnly(num_layers=2, max_len=64, tie_embeddings=True, num_classes=0, **COMMON)
ENCODER = EncoderOnly(
    num_classes=0,
    num_layers=2,
    max_len=64,
    type_vocab_size=2,
    layer_norm="post",
    layer_norm_epsilon=1e-12,
    activation="gelu",
    **COMMON,
)
ENCODER_DECODER = EncoderDecoder(
    num_encoder_layers=1,
    num_decoder_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    mlp="gated_gelu",
    tie_embeddings=False,
    layer_norm_epsilon=1e-6,
    **COMMON,
)

_FEATURES = {
    DECODER: ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions"),
    ENCODER: (
        "encoder_input_tokens",
        "encoder_segment_ids",
        "encoder_positions",
        "encoder_token_type_ids",
    ),
    ENCODER_DECODER: tuple(
        f"{side}_{feature}"
        for side in ("encoder", "decoder")
        for feature in ("input_tokens", "segment_ids", "positions")
    ),
}


@functools.cache
def random_params(model: nn.Module, seed: int = 0) -> dict:
    """Params of init's shapes drawn in numpy (no init compile), large enough that the
    model's distributions are far from uniform."""
    batch = {name: jnp.ones((1, 4), jnp.int32) for name in _FEATURES[model]}
    init = functools.partial(model.init, deterministic=True)
    abstract = jax.eval_shape(init, jax.random.key(0), batch)
    leaves, treedef = jax.tree.flatten(nn.meta.unbox(abstract["params"]))
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [rng.normal(0.0, 0.5, leaf.shape).astype(np.float32) for leaf in leaves]
    )


def checksum(params) -> float:
    return float(
        sum(np.abs(np.asarray(leaf, np.float64)).sum() for leaf in jax.tree.leaves(params))
    )
