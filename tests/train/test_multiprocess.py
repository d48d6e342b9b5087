"""Multi-process runs: `distributed.initialize` from the config, a two-process CPU run
on localhost whose checkpoint resumes on one process with the same losses, and a signal
to one process that stops both after the same step."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest
from ml_collections import ConfigDict

from t5x_lite.errors import UserError
from t5x_lite.train import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
    "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
)  # fmt: skip


def dist_config(initialize="auto", coordinator_address="", num_processes=0, process_id=-1):
    return ConfigDict(dict(distributed=dict(initialize=initialize, process_id=process_id,
                                            coordinator_address=coordinator_address,
                                            num_processes=num_processes)))  # fmt: skip


@pytest.fixture
def no_cluster(monkeypatch):
    """A plain environment, and a fake `jax.distributed.initialize` that records its args."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    return calls


def test_auto_initializes_only_for_a_multi_process_job(no_cluster, monkeypatch):
    assert not distributed.initialize(dist_config("auto"))
    assert not distributed.initialize(dist_config("off", "host:1", 2, 0))
    assert no_cluster == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize(dist_config("auto"))
    # Config keys win over the environment; JAX reads JAX_COORDINATOR_ADDRESS itself.
    assert distributed.initialize(dist_config("on", num_processes=4, process_id=3))
    assert no_cluster == [
        dict(num_processes=2, process_id=1),
        dict(num_processes=4, process_id=3),
    ]


def test_on_leaves_unset_keys_to_jax_detection(no_cluster, monkeypatch):
    assert distributed.initialize(dist_config("on"))  # e.g. a GCE TPU slice's metadata
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_PROCID="0",
                 SLURM_LOCALID="0", SLURM_NTASKS="2")  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    assert distributed.initialize(dist_config("auto"))
    assert no_cluster == [{}, {}]


def test_already_initialized_is_kept(no_cluster, monkeypatch):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert distributed.initialize(dist_config("on", "host:1", 2, 0))
    assert no_cluster == []


@pytest.mark.parametrize(
    "config, match",
    [
        (dist_config("sometimes"), r"initialize='sometimes': use one of"),
        (
            dist_config("auto", num_processes=2),
            r"set config.distributed.coordinator_address, "
            r"process_id",
        ),  # fmt: skip
        (dist_config("on", "host:1", 2, 2), r"process_id=2 is outside \[0, 2\)"),
        (dist_config("on", "host:1", process_id=0), r"set config.distributed.num_processes"),
    ],
)
def test_inconsistent_settings_are_user_errors(no_cluster, config, match):
    with pytest.raises(UserError, match=match):
        distributed.initialize(config)
    assert no_cluster == []


# End to end: two processes x 4 CPU devices, then one process x 8 devices.

TINY = [
    "--config.objective.seq_len=32",
    "--config.model.d_model=32",
    "--config.model.num_layers=1",
    "--config.model.num_heads=2",
    "--config.model.head_dim=16",
    "--config.model.d_ff=64",
    "--config.data.heldout_docs=16",  # 2 eval documents per data shard
    "--config.data.num_shards=8",
    "--config.data.batch_size=8",
    "--config.partitioning.mesh.data=-1",
    "--config.train.num_steps=6",
    "--config.train.log_every=1",
    "--config.train.eval_every=6",
    "--config.train.checkpoint_every=3",
    "--config.train.keep_checkpoints=2",
    "--config.train.progress_bar=False",
    "--config.sample.max_new_tokens=0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(args, num_devices: int, stdout=subprocess.PIPE, **cluster):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(num_devices)}
    for name in CLUSTER_VARIABLES:
        env.pop(name, None)
    env.update({name: str(value) for name, value in cluster.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "t5x_lite.main", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=240):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output[-3000:]


def _losses(workdir, key) -> dict[int, float]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [row["step"] for row in rows if key in row]
    # Once each: only process 0 writes (two unconnected processes would both write).
    assert len(steps) == len(set(steps)), steps
    return {row["step"]: row[key] for row in rows if key in row}


def _job_args(tmp_path, workdir):
    """A corpus, its tokenizer, and the `train` arguments of a tiny GPT job on them."""
    corpus = tmp_path / "corpus.txt"
    syllables = ["ka", "lo", "mi", "ren", "tas", "po", "qui", "sel", "dor", "va", "ne", "zu"]
    words = [a + b + c for a in syllables for b in syllables[3:8] for c in syllables[5:]]
    corpus.write_text(
        "".join(
            " ".join(words[(i * 7 + j * 13) % len(words)] for j in range(9)) + "\n"
            for i in range(80)
        )  # fmt: skip
    )
    tokenizer = subprocess.run(
        [sys.executable, "-m", "t5x_lite.main", "tokenizer", f"--input={corpus}",
         "--vocab_size=450", f"--output={tmp_path / 'tok'}"],  # fmt: skip
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tokenizer.returncode == 0, tokenizer.stderr[-2000:]
    return [
        "train", "--config=gin_configs/pretrain.py:gpt_tiny", f"--workdir={workdir}",
        "--config.data.train.kind=text", f"--config.data.train.path={corpus}",
        "--config.data.train.doc_mode=line", f"--config.tokenizer.path={tmp_path / 'tok.model'}",
        *TINY,
    ]  # fmt: skip


@pytest.mark.e2e  # ~50 s: with make test-e2e, which CI runs, to keep make test under 10 min
def test_two_processes_resume_on_one(tmp_path):
    workdir = tmp_path / "two"
    args = _job_args(tmp_path, workdir)
    address = f"localhost:{_free_port()}"
    processes = [
        _launch(args, 4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=i)
        for i in range(2)
    ]
    for process in processes:
        _finish(process)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]

    # The same job from step 3 on one process with all 8 devices.
    resumed = tmp_path / "one"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    args[2] = f"--workdir={resumed}"
    _finish(_launch(args, 8))

    two, one = _losses(workdir, "train/lm/loss"), _losses(resumed, "train/lm/loss")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert one[step] == pytest.approx(two[step], abs=1e-5), step
    eval_two, eval_one = _losses(workdir, "eval/lm/loss"), _losses(resumed, "eval/lm/loss")
    assert eval_one[6] == pytest.approx(eval_two[6], abs=1e-5)


@pytest.mark.e2e  # ~50 s: with make test-e2e, which CI runs
def test_signal_to_one_process_stops_both_after_the_same_step(tmp_path):
    workdir = tmp_path / "two"
    args = _job_args(tmp_path, workdir)
    address = f"localhost:{_free_port()}"
    # Output to files: a pipe that nobody reads fills up and blocks a long run.
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]
    long_run = [*args, "--config.train.num_steps=100000"]
    processes = [
        _launch(
            long_run,
            4,
            logs[i],
            JAX_COORDINATOR_ADDRESS=address,
            JAX_NUM_PROCESSES=2,
            JAX_PROCESS_ID=i,
        )
        for i in range(2)
    ]
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / "3").exists() and time.time() < deadline:
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)  # process 0 is not told
    outputs = []
    for process, log in zip(processes, logs):
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()  # hung in a collective the other process never joined
            process.wait()
        log.seek(0)
        outputs.append(log.read())
        assert process.returncode == 130, outputs[-1][-3000:]
    assert "SIGTERM: stopping after this step" in outputs[1]
    assert all("rerun the same command" in output for output in outputs)
    latest = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    logged = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
    assert latest > 3 and logged[-1] == latest, (latest, logged[-3:])

    # The step both checkpointed is complete: one process resumes it to a new end.
    _finish(_launch([*args, f"--config.train.num_steps={latest + 2}"], 8))
    steps = [row["step"] for row in map(json.loads, open(workdir / "metrics.jsonl"))
             if "train/lm/loss" in row]  # fmt: skip
    assert steps == list(range(1, latest + 3)), (steps, latest)
