"""`t5x-lite bench --compare=hf` on tiny shapes: it runs for every family, the PyTorch
model it builds does the matmuls we credit it with, and the table has its columns. No
timing is asserted: the step times only have to exist."""

import json
import math
import os
import pickle
import platform
import subprocess
import sys
import threading

import pytest

from t5x_lite import bench_compare, bench_torch, host_memory, main
from t5x_lite.errors import UserError
from tests.train.test_trainer import PRETRAIN

pytestmark = pytest.mark.xdist_group("bench_compare")  # one module fixture

SPECS = [f"{PRETRAIN}:{variant}" for variant in ("gpt_tiny", "roberta_tiny", "t5_tiny")]
TINY_GPT = [
    ("model.d_model", "32"), ("model.num_heads", "2"), ("model.head_dim", "16"),
    ("model.d_ff", "64"), ("model.num_layers", "1"), ("objective.seq_len", "16"),
    ("data.batch_size", "2"), ("tokenizer.vocab_size", "300"),
]  # fmt: skip
# Each override goes to the configs that have its key (T5 has no num_layers, GPT no
# inputs_length).
TINY = TINY_GPT + [
    ("model.num_encoder_layers", "1"), ("model.num_decoder_layers", "1"),
    ("objective.inputs_length", "16"), ("objective.targets_length", "8"),
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def tiny_probes():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench_compare, "PROBE_SIZES", (64,))
        patch.setattr(bench_compare, "PROBE_SECONDS", 0.01)
        yield


@pytest.fixture(scope="module")
def compared(tiny_probes):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return bench_compare.compare(SPECS, TINY, precisions=("fp32",), steps=1, reps=1)


def test_every_family_runs_on_both_sides(compared):
    rows, peaks, frameworks = compared
    assert [row["hf_model"] for row in rows] == [
        "GPT2LMHeadModel", "BertForMaskedLM", "T5ForConditionalGeneration",
    ]  # fmt: skip
    assert [row["row_tokens"] for row in rows] == [16, 16, 16 + 8]
    for row in rows:
        assert row["ours_step_s"] > 0 and row["theirs_step_s"] > 0
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0
        assert row["ratio"] == pytest.approx(row["theirs_step_s"] / row["ours_step_s"])
        assert len(row["rep_ratios"]) == 1 and row["ours_compile_s"] > 0
        for side in ("ours", "theirs"):
            assert 0 < row[f"{side}_mfu_best"] <= row[f"{side}_mfu_own"]
    assert set(peaks) == {"jax_fp32", "jax_bf16", "torch_fp32", "torch_bf16"}
    assert "PyTorch" in frameworks


def test_hf_model_has_our_matmul_params(compared):
    """The same matmuls on both sides, but for our BERT's pooler and NSP layer on [CLS]
    (d x d + d x 2), which BertForMaskedLM lacks; and they are the matmuls our FLOP count
    credits: 6 N per token plus 12 L T d for attention (decoder-only and encoder-only)."""
    gpt, bert, t5 = compared[0]
    d, seq_len = 32, 16
    assert gpt["theirs_matmul_params"] == gpt["ours_matmul_params"]
    assert t5["theirs_matmul_params"] == t5["ours_matmul_params"]
    assert bert["ours_matmul_params"] - bert["theirs_matmul_params"] == d * d + d * 2
    for row in (gpt, bert):
        per_token = row["flops_per_step"] / (2 * seq_len)
        assert per_token == 6 * row["theirs_matmul_params"] + 12 * 1 * seq_len * d


def test_table_has_a_line_per_row_and_every_column(compared):
    table = bench_compare.markdown_table(compared[0]).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [column[0] for column in bench_compare.COLUMNS]
    for column in ("ours ms", "HF ms", "ours vs HF", "ours MFU own", "HF MFU best", "HF MB"):
        assert column in header
    assert len(table) == 2 + 3
    for line in table[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header) and "-" not in cells


def test_without_torch_the_hf_columns_are_empty(monkeypatch, capsys):
    note = "HF columns skipped: No module named 'torch' (pip install torch transformers)"
    monkeypatch.setattr(bench_compare, "open_torch_side", lambda keep_freed_memory: (None, note))
    rows = bench_compare.run_and_report(SPECS[:1], TINY_GPT, precisions=("bf16",), steps=1, reps=1)
    assert rows[0]["ours_step_s"] > 0 and math.isnan(rows[0]["theirs_step_s"])
    out = capsys.readouterr().out
    assert note in out and "torch_fp32" not in out
    assert out.strip().splitlines()[-1].split("|")[2].strip() == "-"  # HF model


def test_the_torch_side_gets_our_malloc_setting_unless_told_otherwise(monkeypatch):
    asked = []

    def no_torch(keep_freed_memory):
        asked.append(keep_freed_memory)
        return None, "no torch"

    monkeypatch.setattr(bench_compare, "open_torch_side", no_torch)
    monkeypatch.setattr(bench_compare, "load_configs", lambda *args: [])
    monkeypatch.setattr(bench_compare, "matmul_peaks", lambda side: {})
    for ours_kept, torch_malloc, expected in (
        (True, "same", True), (False, "same", False), (True, "default", False)
    ):  # fmt: skip
        monkeypatch.setattr(host_memory, "_kept", ours_kept)
        rows, _, frameworks = bench_compare.compare([], torch_malloc=torch_malloc)
        assert asked[-1] is expected and rows == []
        assert ("freed memory kept" if ours_kept else "malloc's default") in frameworks
    with pytest.raises(UserError, match="--torch_malloc='mine'; use same or default"):
        bench_compare.compare([], torch_malloc="mine")


def test_cli_writes_the_table_and_json(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr(bench_compare, "SLOW_PRECISION_FACTOR", math.inf)  # run HF's bf16
    output = tmp_path / "compare.json"
    overrides = [f"--config.{key}={value}" for key, value in TINY_GPT]
    argv = ["bench", "--compare=hf", f"--config={SPECS[0]}", "--precision=bf16", "--steps=1"]
    assert main.main([*argv, "--reps=1", f"--output_json={output}", *overrides]) == 0
    assert "| config | HF model | precision |" in capsys.readouterr().out
    (row,) = json.loads(output.read_text())["rows"]
    assert row["precision"] == "bf16" and row["hf_model"] == "GPT2LMHeadModel"
    assert row["theirs_step_s"] > 0


def test_a_key_no_config_has_is_an_error():
    with pytest.raises(UserError, match="has the key 'model.num_layerz'"):
        bench_compare.load_configs(SPECS, [("model.num_layerz", "1")], "fp32")
    with pytest.raises(UserError, match="use fp32, bf16"):
        bench_compare.load_configs(SPECS, [], "fp16")


def test_a_precision_torch_has_no_kernels_for_is_skipped_with_a_note():
    peaks = {"jax_fp32": 0.3, "jax_bf16": 0.2, "torch_fp32": 0.35, "torch_bf16": 0.001}
    note = bench_compare.slow_torch_note("bf16", peaks)
    assert note == (
        "HF bf16 skipped: torch's bf16 matmul reaches 0.0010 TFLOP/s here, 350x below its "
        "fp32 (no bf16 kernels on this machine)"
    )
    assert bench_compare.slow_torch_note("fp32", peaks) == ""
    assert bench_compare.slow_torch_note("bf16", {**peaks, "torch_bf16": 2.0}) == ""  # AMX
    assert bench_compare.slow_torch_note("bf16", {**peaks, "torch_bf16": 0.035}) == ""  # 10x
    assert bench_compare.slow_torch_note("bf16", {"jax_bf16": 0.2}) == ""  # no torch


def test_our_step_runs_in_a_process_without_torch(tmp_path):
    """The point of the PyTorch side's own process: ours shares no threads, allocator or
    heap with torch, so the process that times our step never imports it."""
    pytest.importorskip("transformers")
    script = f"""
import sys
from t5x_lite import bench_compare
bench_compare.PROBE_SIZES, bench_compare.PROBE_SECONDS = (64,), 0.01
rows, peaks, frameworks = bench_compare.compare(
    [{SPECS[0]!r}], {TINY_GPT!r}, precisions=("fp32",), steps=1, reps=1
)
assert rows[0]["theirs_step_s"] > 0 and "torch_fp32" in peaks, rows
assert "PyTorch" in frameworks, frameworks
assert "torch" not in sys.modules and "transformers" not in sys.modules
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr


def _pipe():
    read_fd, write_fd = os.pipe()
    return os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")


def test_the_torch_side_keeps_freed_memory_only_when_asked():
    """--torch_keep_freed_memory: the PyTorch process's malloc as ours by default, set in
    the child before torch starts its threads; the line on the frameworks says which."""
    pytest.importorskip("transformers")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt's settings are glibc's")
    with bench_torch.TorchSide() as side:
        assert side.hello().endswith("threads, malloc's default)")
    with bench_torch.TorchSide(keep_freed_memory=True) as side:
        assert side.hello().endswith("threads, freed memory kept)")


def test_the_torch_side_reports_its_errors_and_a_missing_torch(monkeypatch):
    pytest.importorskip("transformers")
    with bench_torch.TorchSide() as side:
        assert side.hello().startswith("PyTorch ")
        options = dict(bf16=False, torch_compile=False)
        with pytest.raises(RuntimeError, match="PyTorch side of bench --compare failed"):
            side.load("/nonexistent/hf_dir", {}, {}, **options)
        assert side.hello().startswith("PyTorch ")  # still serving after the error
    with bench_torch.TorchSide() as side:
        side._process.kill()
        with pytest.raises(RuntimeError, match=r"exited \(code -9\) during hello; killed"):
            side.hello()

    def no_torch():
        raise ImportError("No module named 'torch'")

    monkeypatch.setattr(bench_torch, "_Child", no_torch)
    (requests_r, requests_w), (replies_r, replies_w) = _pipe(), _pipe()
    server = threading.Thread(target=bench_torch._serve, args=(requests_r, replies_w))
    server.start()
    for request in (("hello",), ("close",)):
        pickle.dump(request, requests_w)
        requests_w.flush()
    assert pickle.load(replies_r) == (
        "missing", "HF columns skipped: No module named 'torch' (pip install torch transformers)"
    )  # fmt: skip
    server.join(10)
    assert not server.is_alive()
