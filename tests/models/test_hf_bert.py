"""HF BERT import and WordPiece tokenizer, checked against transformers itself.

Every HF model here is built with random weights (torch.manual_seed) and saved to a
temporary directory; nothing is downloaded.
"""

import functools
import json
import os
import pickle
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from t5x_lite.errors import UserError
from t5x_lite.hf_tokenizer import WordPieceTokenizer
from t5x_lite.models import build_model
from t5x_lite.models.hf_bert import load_hf_bert
from tests.models.helpers import fast_jit

VOCAB, LENGTH, PAD_FROM = 100, 12, 9  # row 1 is padding from PAD_FROM on
KEY = jax.random.key(0, impl="rbg")
# Unoptimized CPU codegen: compile time, not compute, dominates these tiny models.


def hf_config() -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
    )


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    """One saved model per HF class, each with its own random weights."""
    dirs = {}
    for seed, cls in enumerate(
        [transformers.BertModel, transformers.BertForMaskedLM, transformers.BertForPreTraining]
    ):
        torch.manual_seed(seed)
        directory = str(tmp_path_factory.mktemp(cls.__name__))
        cls(hf_config()).eval().save_pretrained(directory)
        dirs[cls.__name__] = directory
    return dirs


def random_inputs() -> dict[str, np.ndarray]:
    """HF-style inputs: token types with sentence B from the middle, padding in row 1."""
    input_ids = np.random.default_rng(0).integers(0, VOCAB, (2, LENGTH))
    token_type_ids = np.zeros((2, LENGTH), np.int64)
    token_type_ids[:, 5:] = 1
    attention_mask = np.ones((2, LENGTH), np.int64)
    attention_mask[1, PAD_FROM:] = 0
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
    }


def hf_outputs(hf_dir: str, cls) -> dict[str, np.ndarray]:
    model = cls.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        outputs = model(
            **{k: torch.tensor(v) for k, v in random_inputs().items()}, output_hidden_states=True
        )
    return {k: v.numpy() for k, v in outputs.items() if isinstance(v, torch.Tensor)} | {
        "hidden": outputs.hidden_states[-1].numpy()
    }


@functools.cache
def forward_for(config_items: tuple):
    model = build_model(dict(config_items))
    return fast_jit(
        lambda params, batch: model.apply({"params": params}, batch, deterministic=True)
    )


@functools.cache
def imported(hf_dir: str) -> tuple[dict, dict]:
    """load_hf_bert once per directory: initializing missing heads costs a compile."""
    return load_hf_bert(hf_dir, rng=KEY)


def our_outputs(hf_dir: str) -> dict[str, np.ndarray]:
    """Import `hf_dir` and run it on random_inputs(): HF's attention mask becomes segment
    id 1 (real tokens) / 0 (padding), positions are 0..n-1."""
    model_config, params = imported(hf_dir)
    inputs = random_inputs()
    batch = {
        "encoder_input_tokens": inputs["input_ids"],
        "encoder_token_type_ids": inputs["token_type_ids"],
        "encoder_segment_ids": inputs["attention_mask"],
        "encoder_positions": np.tile(np.arange(LENGTH), (2, 1)),
    }
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    outputs = forward_for(tuple(sorted(model_config.items())))(params, batch)
    return {k: np.asarray(v) for k, v in outputs.items()}


def max_error_on_real_tokens(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Padding queries differ by design (HF lets them see real tokens, we do not)."""
    real = random_inputs()["attention_mask"].astype(bool)
    return float(np.max(np.abs(ours[real] - theirs[real])))


def test_masked_lm_import_matches_hf_hidden_states_and_logits(hf_dirs):
    theirs = hf_outputs(hf_dirs["BertForMaskedLM"], transformers.BertForMaskedLM)
    ours = our_outputs(hf_dirs["BertForMaskedLM"])
    assert max_error_on_real_tokens(ours["hidden"], theirs["hidden"]) < 1e-4
    assert max_error_on_real_tokens(ours["mlm_logits"], theirs["logits"]) < 1e-4


def test_bert_model_import_matches_hidden_states_and_pooled_output(hf_dirs):
    theirs = hf_outputs(hf_dirs["BertModel"], transformers.BertModel)
    ours = our_outputs(hf_dirs["BertModel"])
    assert max_error_on_real_tokens(ours["hidden"], theirs["hidden"]) < 1e-4
    np.testing.assert_allclose(ours["pooled"], theirs["pooler_output"], rtol=0, atol=1e-4)


def test_pretraining_import_matches_mlm_and_nsp_logits(hf_dirs):
    theirs = hf_outputs(hf_dirs["BertForPreTraining"], transformers.BertForPreTraining)
    ours = our_outputs(hf_dirs["BertForPreTraining"])
    assert max_error_on_real_tokens(ours["mlm_logits"], theirs["prediction_logits"]) < 1e-4
    np.testing.assert_allclose(
        ours["nsp_logits"][:, 0], theirs["seq_relationship_logits"], rtol=0, atol=1e-4
    )


def test_config_and_params_match_encoder_only_init_exactly(hf_dirs):
    model_config, params = imported(hf_dirs["BertForPreTraining"])
    assert model_config == {
        "arch": "encoder_only",
        "vocab_size": VOCAB,
        "d_model": 32,
        "num_layers": 2,
        "num_heads": 4,
        "head_dim": 8,
        "d_ff": 64,
        "max_len": 64,
        "type_vocab_size": 2,
        "dropout_rate": 0.1,
        "layer_norm": "post",
        "layer_norm_epsilon": 1e-12,
        "activation": "gelu",
        "dtype": "float32",
        "remat_policy": "none",
        "attention_impl": "auto",
        "num_classes": 0,
    }
    model = build_model(model_config)
    batch = {name: jnp.zeros((1, 4), jnp.int32) for name in ("encoder_input_tokens",)}
    batch |= {
        name: jnp.zeros((1, 4), jnp.int32)
        for name in ("encoder_segment_ids", "encoder_positions", "encoder_token_type_ids")
    }
    abstract = jax.eval_shape(functools.partial(model.init, deterministic=True), KEY, batch)
    expected = nn.meta.unbox(abstract["params"])
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    for ours, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        assert isinstance(ours, np.ndarray)
        assert (ours.shape, ours.dtype) == (want.shape, want.dtype)


def test_missing_heads_are_freshly_initialized(hf_dirs):
    _, params = imported(hf_dirs["BertModel"])  # no MLM or NSP head
    np.testing.assert_array_equal(params["mlm_bias"], np.zeros(VOCAB, np.float32))
    np.testing.assert_array_equal(params["mlm_norm"]["scale"], np.ones(32, np.float32))
    assert 0.01 < float(np.std(params["mlm_transform"]["kernel"])) < 1.0
    _, params = imported(hf_dirs["BertForMaskedLM"])  # no pooler
    assert float(np.std(params["pooler"]["kernel"])) > 0.01


def edited_checkpoint(source: str, target: str, edit) -> str:
    """A copy of `source` whose tensors dict went through `edit` (in place)."""
    shutil.copytree(source, target)
    tensors = load_file(os.path.join(source, "model.safetensors"))
    edit(tensors)
    save_file(tensors, os.path.join(target, "model.safetensors"))
    return target


def test_tied_decoder_copies_and_position_ids_buffer_are_accepted(hf_dirs, tmp_path):
    def add_legacy_tensors(tensors):
        tensors["cls.predictions.decoder.weight"] = tensors[
            "bert.embeddings.word_embeddings.weight"
        ]
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
        tensors["bert.embeddings.position_ids"] = np.arange(64)[None]

    source = hf_dirs["BertForPreTraining"]  # every head present: nothing to initialize
    legacy = edited_checkpoint(source, tmp_path / "legacy", add_legacy_tensors)
    _, params = load_hf_bert(str(legacy), rng=KEY)
    _, reference = imported(source)
    jax.tree.map(np.testing.assert_array_equal, params, reference)


def _untie(tensors):
    tensors["cls.predictions.decoder.weight"] = np.ones((VOCAB, 32), np.float32)


def _add_unused(tensors):
    tensors["bert.encoder.layer.2.output.dense.bias"] = np.zeros(32, np.float32)


def _reshape_query(tensors):
    tensors["bert.encoder.layer.1.attention.self.query.weight"] = np.zeros((32, 16), np.float32)


def _drop_part_of_mlm_head(tensors):
    del tensors["cls.predictions.transform.dense.bias"]


def _drop_embedding(tensors):
    del tensors["bert.embeddings.token_type_embeddings.weight"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_untie, "cls.predictions.decoder.weight is not tied"),
        (_add_unused, "unused tensor.*bert.encoder.layer.2.output.dense.bias"),
        (_reshape_query, r"layer.1.attention.self.query.weight has shape \(32, 16\)"),
        (_drop_part_of_mlm_head, "lacks tensor cls.predictions.transform.dense.bias"),
        (_drop_embedding, "lacks tensor bert.embeddings.token_type_embeddings.weight"),
    ],
)
def test_bad_checkpoints_raise_user_errors_naming_the_tensor(hf_dirs, tmp_path, edit, message):
    broken = edited_checkpoint(hf_dirs["BertForMaskedLM"], tmp_path / "broken", edit)
    with pytest.raises(UserError, match=message):
        load_hf_bert(str(broken), rng=KEY)


def test_unsupported_activation_is_a_user_error(hf_dirs, tmp_path):
    directory = shutil.copytree(hf_dirs["BertModel"], tmp_path / "relu")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"hidden_act": "relu"}))
    with pytest.raises(UserError, match="hidden_act='relu'"):
        load_hf_bert(str(directory), rng=KEY)


# ---------------------------------------------------------------------------- tokenizer

# fmt: off
VOCAB_PIECES = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "cat", "sat", "on", "mat", "##s", "hello", "world", ".", ",", "!",
    "un", "##aff", "##able", "a", "##b",
]
# fmt: on
TEXTS = [
    "Hello, the cats sat!",
    "unaffable xyz [MASK] on a mat.",
    "HÉLLO   wörld\tthe cat",
    "",
]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("wordpiece")
    (directory / "vocab.txt").write_text("\n".join(VOCAB_PIECES) + "\n")
    return str(directory)


@pytest.fixture(scope="module")
def tokenizer_json_dir(vocab_dir, tmp_path_factory) -> str:
    """What `save_pretrained` writes today: tokenizer.json + tokenizer_config.json."""
    directory = str(tmp_path_factory.mktemp("wordpiece_json"))
    transformers.BertTokenizer.from_pretrained(vocab_dir).save_pretrained(directory)
    assert os.path.isfile(os.path.join(directory, "tokenizer.json"))
    return directory


@pytest.mark.parametrize("source", ["vocab_dir", "tokenizer_json_dir"])
def test_wordpiece_encode_matches_hf_without_cls_and_sep(source, request, vocab_dir):
    tokenizer = WordPieceTokenizer(request.getfixturevalue(source))
    reference = transformers.BertTokenizer.from_pretrained(vocab_dir)
    for text in TEXTS:
        expected = reference(text, add_special_tokens=False)["input_ids"]
        encoded = tokenizer.encode(text)
        assert encoded.dtype == np.int32
        assert encoded.tolist() == expected, text
    batch = tokenizer.encode_batch(TEXTS)
    assert [ids.tolist() for ids in batch] == [tokenizer.encode(t).tolist() for t in TEXTS]


def test_wordpiece_special_ids_pieces_and_round_trip(vocab_dir):
    tokenizer = WordPieceTokenizer(vocab_dir)
    assert tokenizer.vocab_size == len(VOCAB_PIECES)
    ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id)
    assert ids + (tokenizer.mask_id,) == (0, 1, 2, 3, 4)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (tokenizer.cls_id, tokenizer.sep_id)
    assert tokenizer.pieces("the cats") == ["the", "cat", "##s"]
    assert tokenizer.id_to_piece(10) == "##s"
    assert tokenizer.piece_to_id("##s") == 10
    assert tokenizer.piece_to_id("zebra") == tokenizer.unk_id
    text = "the cats sat on a mat."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # [CLS], [SEP] and [PAD] decode to nothing; [MASK] stays visible.
    assert tokenizer.decode([2, 5, 4, 3, 0, 0]) == "the [MASK]"
    restored = pickle.loads(pickle.dumps(tokenizer))  # grain worker processes need this
    assert restored.encode(text).tolist() == tokenizer.encode(text).tolist()


def test_wordpiece_special_and_word_start_masks(vocab_dir):
    tokenizer = WordPieceTokenizer(vocab_dir)
    special = tokenizer.special_mask()
    assert special.dtype == bool
    assert special.nonzero()[0].tolist() == [0, 1, 2, 3, 4]
    word_start = tokenizer.word_start_mask()
    expected = [not piece.startswith("##") for piece in VOCAB_PIECES]
    expected[:5] = [False] * 5
    assert word_start.tolist() == expected


def test_wordpiece_errors(tmp_path):
    with pytest.raises(UserError, match="neither tokenizer.json nor vocab.txt"):
        WordPieceTokenizer(str(tmp_path))
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    with pytest.raises(UserError, match=r"no \[MASK\]"):
        WordPieceTokenizer(str(tmp_path))
