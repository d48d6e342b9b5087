"""HF export of each family, checked against transformers itself.

Our models get random weights (init plus noise, so that norms and biases are not their
trivial init values), are exported, loaded with transformers and run on the same random
ids; import -> export -> import must give back the same params exactly. Nothing is
downloaded.
"""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file

from t5x_lite.errors import UserError
from t5x_lite.models import build_model, hf_bert, hf_gpt2, hf_t5
from tests.models.helpers import fast_jit

VOCAB, LENGTH, PAD_FROM = 100, 10, 7  # row 1 is padding from PAD_FROM on
KEY = jax.random.key(0, impl="rbg")
COMPUTE = {"dtype": "float32", "remat_policy": "none", "attention_impl": "auto"}

BERT = {
    "arch": "encoder_only",
    "vocab_size": VOCAB,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "head_dim": 8,
    "d_ff": 64,
    "max_len": 16,
    "type_vocab_size": 2,
    "dropout_rate": 0.1,
    "layer_norm": "post",
    "layer_norm_epsilon": 1e-12,
    "activation": "gelu",
    "num_classes": 0,
} | COMPUTE
GPT = {
    "arch": "decoder_only",
    "vocab_size": VOCAB,
    "d_model": 32,
    "num_layers": 2,
    "num_heads": 4,
    "head_dim": 8,
    "d_ff": 48,  # not GPT-2's 4 * d_model: n_inner must carry it
    "max_len": 16,
    "dropout_rate": 0.1,
    "tie_embeddings": True,
    "num_classes": 0,
} | COMPUTE
T5 = {
    "arch": "encoder_decoder",
    "vocab_size": VOCAB,
    "d_model": 32,
    "num_encoder_layers": 2,
    "num_decoder_layers": 3,
    "num_heads": 4,
    "head_dim": 6,  # T5's d_kv is free: 4 * 6 != d_model
    "d_ff": 64,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 20,
    "mlp": "relu",
    "tie_embeddings": True,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
} | COMPUTE
T5_VARIANTS = {
    "t5_1_0": {},  # ReLU, head tied to the embedding and scaled by d_model**-0.5
    "t5_1_1": {"mlp": "gated_gelu", "tie_embeddings": False},
}


def attention_mask() -> np.ndarray:
    mask = np.ones((2, LENGTH), np.int64)
    mask[1, PAD_FROM:] = 0
    return mask


def random_ids(seed: int = 0, length: int = LENGTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (2, length))


def positions(length: int = LENGTH) -> np.ndarray:
    return np.tile(np.arange(length), (2, 1))


def random_params(model_config: dict, batch: dict, seed: int = 0) -> dict:
    """init's params plus N(0, 0.05) noise on every leaf, as float32 numpy."""
    model = build_model(model_config)
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    params = nn.meta.unbox(model.init(KEY, batch, deterministic=True)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: np.asarray(leaf + rng.normal(0, 0.05, leaf.shape), np.float32), params
    )


@functools.cache
def forward_for(config_items: tuple):
    model = build_model(dict(config_items))
    return fast_jit(
        lambda params, batch: model.apply({"params": params}, batch, deterministic=True)
    )


def our_outputs(model_config: dict, params: dict, batch: dict) -> dict[str, np.ndarray]:
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    outputs = forward_for(tuple(sorted(model_config.items())))(params, batch)
    return {k: np.asarray(v) for k, v in outputs.items()}


def torch_outputs(model, output_hidden_states: bool = False, **inputs):
    with torch.no_grad():
        return model.eval()(
            **{k: torch.tensor(v) for k, v in inputs.items()},
            output_hidden_states=output_hidden_states,
        )


def max_error(ours: np.ndarray, theirs, where: np.ndarray | None = None) -> float:
    theirs = theirs.numpy() if isinstance(theirs, torch.Tensor) else theirs
    if where is not None:  # padding queries differ by design
        ours, theirs = ours[where], theirs[where]
    return float(np.max(np.abs(ours - theirs)))


def flat(params: dict) -> dict[str, np.ndarray]:
    return traverse_util.flatten_dict(params, sep="/")


def assert_same_params(ours: dict, theirs: dict, skip: str = "@") -> None:
    ours, theirs = flat(ours), flat(theirs)
    assert set(ours) == set(theirs)
    for path, value in ours.items():
        if not path.startswith(skip):
            np.testing.assert_array_equal(value, theirs[path], err_msg=path)


# ------------------------------------------------------------------------------ BERT


def bert_batch() -> dict[str, np.ndarray]:
    token_types = np.zeros((2, LENGTH), np.int64)
    token_types[:, 4:] = 1
    return {
        "encoder_input_tokens": random_ids(),
        "encoder_token_type_ids": token_types,
        "encoder_segment_ids": attention_mask(),  # 0 = padding, as HF's mask
        "encoder_positions": positions(),
    }


def bert_inputs() -> dict[str, np.ndarray]:
    batch = bert_batch()
    return {
        "input_ids": batch["encoder_input_tokens"],
        "token_type_ids": batch["encoder_token_type_ids"],
        "attention_mask": batch["encoder_segment_ids"],
    }


def test_bert_masked_lm_export_matches_transformers(tmp_path):
    params = random_params(BERT, bert_batch())
    summary = hf_bert.export_hf_bert(BERT, params, str(tmp_path), special_ids={"pad_id": 0})
    assert summary["hf_class"] == "BertForMaskedLM"
    ours = our_outputs(BERT, params, bert_batch())
    real = attention_mask().astype(bool)

    masked_lm = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(masked_lm).__name__ == "BertForMaskedLM"
    outputs = torch_outputs(masked_lm, **bert_inputs(), output_hidden_states=True)
    assert max_error(ours["mlm_logits"], outputs.logits, real) < 1e-4
    assert max_error(ours["hidden"], outputs.hidden_states[-1], real) < 1e-4
    # The pooler is in the file too; BertModel (AutoModel) reads it.
    outputs = torch_outputs(transformers.AutoModel.from_pretrained(tmp_path), **bert_inputs())
    assert max_error(ours["pooled"], outputs.pooler_output) < 1e-4
    assert hf_bert.checkpoint_heads(str(tmp_path)) == {"pooler", "mlm"}


def test_bert_classifier_export_matches_transformers_and_its_keys(tmp_path):
    config = BERT | {"num_classes": 3, "activation": "gelu_tanh"}
    params = random_params(config, bert_batch(), seed=1)
    labels = ("negative", "neutral", "positive")
    summary = hf_bert.export_hf_bert(config, params, str(tmp_path), labels=labels)
    assert summary["hf_class"] == "BertForSequenceClassification"

    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(hf_model).__name__ == "BertForSequenceClassification"
    assert hf_model.config.id2label == dict(enumerate(labels))
    assert hf_model.config.hidden_act == "gelu_new"  # tanh-approximated, as ours
    theirs = torch_outputs(hf_model, **bert_inputs()).logits
    ours = our_outputs(config, params, bert_batch())["class_logits"][:, 0]
    assert max_error(ours, theirs) < 1e-4
    # Exactly BertForSequenceClassification's tensors: nothing unexpected, none missing.
    written = set(load_file(os.path.join(tmp_path, "model.safetensors")))
    assert written == set(hf_model.state_dict())
    assert hf_bert.checkpoint_heads(str(tmp_path)) == {"pooler", "classifier"}


@pytest.fixture(scope="module")
def hf_bert_dirs(tmp_path_factory) -> dict[str, str]:
    """One transformers model per class, random weights, saved."""
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_act="gelu",
        num_labels=3,
    )
    dirs = {}
    for seed, name in enumerate(
        ["BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification"]
    ):
        torch.manual_seed(seed)
        directory = str(tmp_path_factory.mktemp(name))
        getattr(transformers, name)(config).save_pretrained(directory)
        dirs[name] = directory
    return dirs


def test_checkpoint_heads_names_the_heads_each_class_saves(hf_bert_dirs):
    heads = {name: hf_bert.checkpoint_heads(d) for name, d in hf_bert_dirs.items()}
    assert heads == {
        "BertModel": {"pooler"},
        "BertForMaskedLM": {"mlm"},
        "BertForPreTraining": {"pooler", "mlm", "nsp"},
        "BertForSequenceClassification": {"pooler", "classifier"},
    }


@pytest.mark.parametrize(
    "source, dropped", [("BertForPreTraining", "nsp/"), ("BertForSequenceClassification", "@")]
)
def test_bert_import_export_import_is_exact(hf_bert_dirs, tmp_path, source, dropped):
    """The export drops the NSP head (re-import initializes it freshly); all else,
    the classifier included, comes back bit for bit."""
    model_config, params = hf_bert.load_hf_bert(hf_bert_dirs[source], rng=KEY)
    hf_bert.export_hf_bert(model_config, params, str(tmp_path))
    again_config, again = hf_bert.load_hf_bert(str(tmp_path), rng=KEY)
    assert again_config == model_config
    assert_same_params(again, params, skip=dropped)


def test_bert_classifier_import_matches_transformers(hf_bert_dirs):
    model_config, params = hf_bert.load_hf_bert(
        hf_bert_dirs["BertForSequenceClassification"], rng=KEY
    )
    assert model_config["num_classes"] == 3
    hf_model = transformers.BertForSequenceClassification.from_pretrained(
        hf_bert_dirs["BertForSequenceClassification"]
    )
    theirs = torch_outputs(hf_model, **bert_inputs()).logits
    ours = our_outputs(model_config, params, bert_batch())["class_logits"][:, 0]
    assert max_error(ours, theirs) < 1e-4


@pytest.mark.parametrize(
    "change, labels, message",
    [
        ({"layer_norm": "pre"}, (), "layer_norm='pre' has no HF BERT counterpart"),
        ({"head_dim": 4}, (), "head_dim=4 times num_heads=4 is not d_model=32"),
        ({"num_classes": 2}, ("a", "b", "c"), "3 labels given but config.model.num_classes=2"),
        ({"num_classes": 2}, ("a", "a"), "repeat a name"),
        ({"d_ff": 65}, (), r"wi/bias has shape \(2, 64\) but config.model gives \(2, 65\)"),
    ],
)
def test_bert_options_without_hf_counterpart_are_one_line_user_errors(
    tmp_path, change, labels, message
):
    params = random_params(BERT, bert_batch())
    if "num_classes" in change:  # a classifier needs its params
        params["classifier"] = {"dense": {"kernel": np.zeros((32, 2)), "bias": np.zeros(2)}}
    with pytest.raises(UserError, match=message) as raised:
        hf_bert.export_hf_bert(BERT | change, params, str(tmp_path / "out"), labels=labels)
    assert "\n" not in str(raised.value)
    assert not os.path.exists(tmp_path / "out")


# ------------------------------------------------------------------------------- GPT


def gpt_batch() -> dict[str, np.ndarray]:
    """Right padding in row 1; the class is read at each row's last real token."""
    return {
        "decoder_input_tokens": random_ids(2),
        "decoder_segment_ids": attention_mask(),
        "decoder_positions": positions(),
        "class_token_index": np.array([[LENGTH - 1], [PAD_FROM - 1]]),
    }


@pytest.mark.parametrize("tie_embeddings, num_classes", [(True, 0), (False, 3)])
def test_gpt_export_matches_transformers_logits(tmp_path, tie_embeddings, num_classes):
    config = GPT | {"tie_embeddings": tie_embeddings, "num_classes": num_classes}
    params = random_params(config, gpt_batch(), seed=2)
    hf_gpt2.export_hf_gpt2(config, params, str(tmp_path), special_ids={"bos_id": 3, "eos_id": 1})
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(hf_model).__name__ == "GPT2LMHeadModel"
    assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id) == (3, 1)
    batch = gpt_batch()
    outputs = torch_outputs(
        hf_model, input_ids=batch["decoder_input_tokens"], attention_mask=attention_mask()
    )
    ours = our_outputs(config, params, batch)
    assert max_error(ours["logits"], outputs.logits, attention_mask().astype(bool)) < 1e-4


def test_gpt1_classifier_recipe_gives_our_class_logits(tmp_path):
    """classifier_head.json's recipe, followed with transformers' hidden states."""
    config = GPT | {"num_classes": 3}
    params = random_params(config, gpt_batch(), seed=3)
    special_ids = {"bos_id": 3, "sep_id": 6, "cls_id": 5, "eos_id": 1}
    summary = hf_gpt2.export_hf_gpt2(
        config, params, str(tmp_path), labels=("a", "b", "c"), special_ids=special_ids
    )
    names = sorted(os.path.basename(path) for path in summary["files"])
    assert names == ["classifier.safetensors", "classifier_head.json", "config.json",
                     "model.safetensors"]  # fmt: skip
    with open(tmp_path / "classifier_head.json") as f:
        readme = json.load(f)
    assert readme["token_ids"] == {"start": 3, "delim": 6, "extract": 5}
    assert readme["labels"] == ["a", "b", "c"]
    head = load_file(os.path.join(tmp_path, readme["weights"]["file"]))
    assert list(head["weight"].shape) == readme["weights"]["weight"] == [3, 32]

    batch = gpt_batch()
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    hidden = torch_outputs(
        hf_model,
        input_ids=batch["decoder_input_tokens"],
        attention_mask=attention_mask(),
        output_hidden_states=True,
    ).hidden_states[-1]
    extract = hidden.numpy()[[0, 1], batch["class_token_index"][:, 0]]  # [batch, embed]
    theirs = extract @ head["weight"].T + head["bias"]
    ours = our_outputs(config, params, batch)["class_logits"][:, 0]
    assert max_error(ours, theirs) < 1e-4

    # ... and load_hf_gpt2 reads the classifier back.
    again_config, again = hf_gpt2.load_hf_gpt2(str(tmp_path))
    assert again_config == config
    assert_same_params(again, params)


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=False
    )
    directory = str(tmp_path_factory.mktemp("gpt2"))
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(directory)
    return directory


def test_gpt_import_export_import_is_exact(hf_gpt2_dir, tmp_path):
    model_config, params = hf_gpt2.load_hf_gpt2(hf_gpt2_dir)
    assert not model_config["tie_embeddings"]
    hf_gpt2.export_hf_gpt2(model_config, params, str(tmp_path))
    again_config, again = hf_gpt2.load_hf_gpt2(str(tmp_path))
    assert again_config == model_config
    assert_same_params(again, params)


def test_gpt_head_dim_without_hf_counterpart_is_a_user_error(tmp_path):
    config = GPT | {"head_dim": 4}
    with pytest.raises(UserError, match="head_dim=4 times num_heads=4 is not d_model=32"):
        hf_gpt2.export_hf_gpt2(config, {}, str(tmp_path))


# -------------------------------------------------------------------------------- T5

ENCODER_LENGTH, DECODER_LENGTH = LENGTH, 6


def t5_batch() -> dict[str, np.ndarray]:
    return {
        "encoder_input_tokens": random_ids(4),
        "encoder_segment_ids": attention_mask(),
        "encoder_positions": positions(),
        "decoder_input_tokens": random_ids(5, DECODER_LENGTH),
        "decoder_segment_ids": np.ones((2, DECODER_LENGTH)),
        "decoder_positions": positions(DECODER_LENGTH),
    }


@pytest.mark.parametrize("variant", T5_VARIANTS)
def test_t5_export_matches_transformers_logits(tmp_path, variant):
    config = T5 | T5_VARIANTS[variant]
    params = random_params(config, t5_batch(), seed=4)
    special_ids = {"pad_id": 0, "eos_id": 1, "bos_id": 3}
    hf_t5.export_hf_t5(config, params, str(tmp_path), special_ids=special_ids)
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert hf_model.config.decoder_start_token_id == 3  # our BOS starts the decoder
    assert hf_model.config.relative_attention_max_distance == 20
    batch = t5_batch()
    theirs = torch_outputs(
        hf_model,
        input_ids=batch["encoder_input_tokens"],
        attention_mask=attention_mask(),
        decoder_input_ids=batch["decoder_input_tokens"],
    ).logits
    assert max_error(our_outputs(config, params, batch)["logits"], theirs) < 1e-4


@pytest.fixture(scope="module")
def hf_t5_dirs(tmp_path_factory) -> dict[str, str]:
    dirs = {}
    for seed, (variant, proj, tie) in enumerate(
        [("t5_1_0", "relu", True), ("t5_1_1", "gated-gelu", False)]
    ):
        torch.manual_seed(seed)
        hf_config = transformers.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=20,
            feed_forward_proj=proj,
            tie_word_embeddings=tie,
        )
        directory = str(tmp_path_factory.mktemp(variant))
        transformers.T5ForConditionalGeneration(hf_config).save_pretrained(directory)
        dirs[variant] = directory
    return dirs


@pytest.mark.parametrize("variant", ["t5_1_0", "t5_1_1"])
def test_t5_import_export_import_is_exact(hf_t5_dirs, tmp_path, variant):
    model_config, params = hf_t5.load_hf_t5(hf_t5_dirs[variant], rng=KEY)
    hf_t5.export_hf_t5(model_config, params, str(tmp_path))
    again_config, again = hf_t5.load_hf_t5(str(tmp_path), rng=KEY)
    assert again_config == model_config
    assert_same_params(again, params)


def test_t5_labels_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="T5 answers with label words"):
        hf_t5.export_hf_t5(T5, {}, str(tmp_path), labels=("a", "b"))
