"""The `t5x-lite` command in a subprocess: a real run end to end, and one-line errors."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.data.batch_size=4",
    "--config.objective.seq_len=32",
    "--config.model.d_model=32",
    "--config.model.num_layers=1",
    "--config.model.num_heads=2",
    "--config.model.head_dim=16",
    "--config.model.d_ff=64",
    "--config.tokenizer.vocab_size=450",
    "--config.data.heldout_docs=4",
]


def cli(*args, timeout=300, env=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "t5x_lite.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "corpus.txt"
    syllables = ["ka", "lo", "mi", "ren", "tas", "po", "qui", "sel", "dor", "va", "ne", "zu"]
    words = [a + b + c for a in syllables for b in syllables[3:8] for c in syllables[5:]]
    lines = [" ".join(words[(i * 7 + j * 13) % len(words)] for j in range(9)) for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.slow
def test_train_end_to_end(tmp_path, corpus):
    workdir = tmp_path / "run"
    args = [
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={workdir}",
        "--config.data.train.kind=text",
        f"--config.data.train.path={corpus}",
        "--config.data.train.doc_mode=line",
        "--config.train.num_steps=6",
        "--config.train.log_every=3",
        "--config.train.eval_every=6",
        "--config.train.checkpoint_every=3",
        "--config.sample.max_new_tokens=5",
        *TINY,
    ]
    # The command's own compilation cache (the suite's JAX_* one set aside), keeping
    # every compile, however short.
    cache = tmp_path / "jax_cache"
    env = {"T5X_LITE_COMPILATION_CACHE": str(cache), "JAX_COMPILATION_CACHE_DIR": "",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    out = cli(*args, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--- sample" in out.stdout and str(workdir) in out.stdout
    assert re.search(r"first step [\d.]+ s after start \(imports and config [\d.]+ s, "
                     r"data and tokenizer [\d.]+ s, state [\d.]+ s, compile and first step "
                     r"[\d.]+ s\)", out.stdout), out.stdout  # fmt: skip
    assert any(name.startswith("jit_train_step") for name in os.listdir(cache))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train/lm/loss" in r] == [3, 6]
    assert any("eval/lm/perplexity" in r for r in rows)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    assert json.load(open(workdir / "config.json"))["train"]["num_steps"] == 6
    assert os.path.exists(workdir / "tokenizer.model")
    # Rerunning the finished command resumes at the end and trains nothing more.
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(open(workdir / "metrics.jsonl").readlines()) == len(rows)


def _one_line_error(out, *needles):
    assert out.returncode == 2, (out.stdout[-1000:], out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_config_key(tmp_path):
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}",
        "--config.train.num_stepz=3",
    )
    _one_line_error(out, "train.num_stepz", "train.num_steps")


def test_wrong_type(tmp_path):
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}",
        "--config.train.num_steps=many",
    )
    _one_line_error(out, "train.num_steps", "int")


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "does not exist"),
        (b"", "empty"),
        (b"good line\n\xff\xfe bad bytes\n", "UTF-8"),
    ],
)
def test_bad_data_files(tmp_path, content, needle):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}/run",
        "--config.data.train.kind=text",
        f"--config.data.train.path={path}",
    )
    _one_line_error(out, needle, "data.txt")


@pytest.mark.parametrize(
    "variant,overrides,needles",
    [
        ("t5_tiny", ["objective.inputs_length=2"],
         ["config.objective.inputs_length=2 is too short", "inputs_length >= 3"]),
        ("t5_tiny", ["objective.targets_length=2"], ["config.objective.targets_length=2"]),
        ("t5_tiny", ["objective.inputs_length=1024", "objective.targets_length=1024",
                     "objective.noise_density=0.5", "objective.mean_noise_span_length=2.0"],
         ["noise spans but there are 100 sentinels", "raise mean_noise_span_length"]),
        ("t5_tiny_prefix_lm", ["objective.targets_length=1"],
         ["config.objective.targets_length=1 must be >= 2"]),
        ("gpt_tiny", ["objective.name=span_corruption"],
         ["does not fit config.model.arch='decoder_only'", "encoder_decoder"]),
        ("bert_tiny", ["objective.name=prefix_lm"],
         ["does not fit config.model.arch='encoder_only'", "encoder_decoder, decoder_only"]),
    ],
)  # fmt: skip
def test_objective_settings_fail_before_reading_data(tmp_path, variant, overrides, needles):
    # The data path does not exist: the objective is checked before anything is read.
    out = cli(
        "train",
        f"--config=gin_configs/pretrain.py:{variant}",
        f"--workdir={tmp_path}/run",
        "--config.data.train.kind=text",
        f"--config.data.train.path={tmp_path}/missing.txt",
        *(f"--config.{override}" for override in overrides),
    )
    _one_line_error(out, *needles)


def test_mesh_that_does_not_divide_devices(tmp_path, corpus):
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}/run",
        "--config.data.train.kind=text",
        f"--config.data.train.path={corpus}",
        "--config.data.train.doc_mode=line",
        "--config.partitioning.mesh.data=3",
        *TINY,
    )
    _one_line_error(out, "config.partitioning.mesh")


@pytest.mark.parametrize(
    "overrides,needles",
    [
        (["train.log_every=0"], ["config.train.log_every=0 must be >= 1"]),
        (["train.keep_checkpoints=0"], ["config.train.keep_checkpoints=0 must be >= 1"]),
        (["optimizer.learning_rate=-0.1"], ["config.optimizer.learning_rate=-0.1 must be > 0"]),
        (["model.max_len=64"], ["config.model.max_len=64 follows config.objective.seq_len"]),
    ],
)
def test_bad_values_are_one_line_before_anything_runs(tmp_path, overrides, needles):
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}/run",
        *(f"--config.{override}" for override in overrides),
    )
    _one_line_error(out, *needles)
    assert not os.path.exists(tmp_path / "run")


def test_workdir_that_is_a_file(tmp_path, corpus):
    (tmp_path / "file").write_text("not a run")
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}/file",
        "--config.data.train.kind=text",
        f"--config.data.train.path={corpus}",
        *TINY,
    )
    _one_line_error(out, "is a file, not a directory")


def test_tokenizer_command(tmp_path, corpus):
    out = cli(
        "tokenizer",
        f"--input={corpus}",
        "--vocab_size=420",
        "--model_type=unigram",
        f"--output={tmp_path}/spm",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.exists(tmp_path / "spm.model")
    assert "taaaaasty" in out.stdout and "<unk>" not in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_the_latest_checkpoint_and_resumes(tmp_path, corpus, sig):
    workdir = tmp_path / "run"
    args = [
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={workdir}",
        "--config.data.train.kind=text",
        f"--config.data.train.path={corpus}",
        "--config.data.train.doc_mode=line",
        "--config.train.log_every=1",
        "--config.train.checkpoint_every=3",
        "--config.train.progress_bar=false",
        "--config.sample.max_new_tokens=0",
        *TINY,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "t5x_lite.main", *args, "--config.train.num_steps=100000"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "6").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert not [x for x in stderr.splitlines() if x.startswith("error:")], stderr[-2000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("stopped at step ")]
    assert line.endswith("; checkpoint saved; rerun the same command to resume")
    assert "stopping after this step" in stderr
    latest = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert latest >= 6 and line.startswith(f"stopped at step {latest};")
    # It stopped between steps and checkpointed the step it had finished, not only the
    # last multiple of checkpoint_every: the metrics end at the checkpointed step.
    logged = [json.loads(x)["step"] for x in open(workdir / "metrics.jsonl")]
    assert logged[-1] == latest, (logged[-3:], latest)
    # The latest checkpoint restores: a rerun continues from it to a new end.
    out = cli(*args, f"--config.train.num_steps={latest + 2}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming from step {latest} (" in out.stdout
    rows = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    steps = [r["step"] for r in rows if "train/lm/loss" in r]
    assert steps == list(range(1, latest + 3)), (steps, latest)  # each step once


@pytest.mark.slow
def test_dry_run_reads_no_data_and_writes_nothing(tmp_path):
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:bert_tiny",
        f"--workdir={tmp_path}/run",
        "--config.data.train.kind=text",
        f"--config.data.train.path={tmp_path}/missing.txt",
        "--dry_run",
        *TINY,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mesh: data=1 fsdp=1 tensor=1 (1 x ")
    assert any(line.startswith("token_embed/embedding ") for line in lines)
    assert any(line.startswith("train state: ") for line in lines)
    assert any(line.startswith("compiled train step per device: ") for line in lines)
    assert not os.path.exists(tmp_path / "run")


def test_dry_run_rejects_heads_that_do_not_split(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")
    out = cli(
        "train",
        "--config=gin_configs/pretrain.py:gpt_tiny",
        f"--workdir={tmp_path}/run",
        "--dry_run",
        "--config.partitioning.mesh.data=1",
        "--config.partitioning.mesh.tensor=2",
        *TINY,
        "--config.model.num_heads=3",
    )
    _one_line_error(out, "'heads', size 3", "config.model.num_heads", "mesh.tensor=2")


def test_generated_text_is_printed_with_control_characters_escaped():
    from t5x_lite import main

    assert main.printable("a\x1b[31mred\x07\r\nnext\tend") == "a\\x1b[31mred\\x07\\r\nnext\tend"
