"""MetricWriter on a local workdir and on a gs:// one (in memory): a resumed run drops
the rows an interrupted attempt logged past its checkpoint, every log leaves complete
files in the workdir, and the TensorBoard events reach `<workdir>/tensorboard/`."""

import json
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2

from t5x_lite import fileio
from t5x_lite.train import metrics


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("memory_gcs") + "/run"


def _rows(workdir: str) -> list[dict]:
    text = fileio.read_text(fileio.join(workdir, "metrics.jsonl"))
    assert text.endswith("\n")  # whole lines only
    return [json.loads(line) for line in text.splitlines()]


def _scalars(events: bytes) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in a TensorBoard event file: records of an
    8-byte length, its 4-byte CRC, the Event proto, the proto's 4-byte CRC."""
    scalars, offset = [], 0
    while offset < len(events):
        (length,) = struct.unpack_from("<Q", events, offset)
        event = event_pb2.Event.FromString(events[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.append((value.tag, event.step, round(value.simple_value, 6)))
    return scalars


def test_resume_drops_later_rows_and_each_log_is_complete(workdir):
    fileio.makedirs(workdir)
    earlier = "".join(json.dumps({"step": s, "train/loss": 9.0}) + "\n" for s in range(1, 6))
    fileio.write_text(fileio.join(workdir, "metrics.jsonl"), earlier)

    writer = metrics.MetricWriter(workdir, start_step=3)  # resumed from step 3's checkpoint
    assert [row["step"] for row in _rows(workdir)] == [1, 2, 3]
    writer.write(4, {"train/loss": 0.5})
    assert [(row["step"], row["train/loss"]) for row in _rows(workdir)] == [
        (1, 9.0),
        (2, 9.0),
        (3, 9.0),
        (4, 0.5),
    ]
    tensorboard = fileio.join(workdir, "tensorboard")
    (events,) = fileio.listdir(tensorboard)  # already there after the first log
    assert events.startswith("events.out.tfevents.")
    writer.write(5, {"train/loss": 0.25, "eval/loss": 0.75})
    writer.close()

    assert [row["step"] for row in _rows(workdir)] == [1, 2, 3, 4, 5]
    assert _rows(workdir)[-1]["eval/loss"] == 0.75
    assert _scalars(fileio.read_bytes(fileio.join(tensorboard, events))) == [
        ("train/loss", 4, 0.5),
        ("train/loss", 5, 0.25),
        ("eval/loss", 5, 0.75),
    ]


def test_a_fresh_run_starts_the_file(workdir):
    writer = metrics.MetricWriter(workdir, start_step=0)
    writer.write(1, {"train/loss": 2.0})
    writer.close()
    assert [(row["step"], row["train/loss"]) for row in _rows(workdir)] == [(1, 2.0)]


def test_a_torn_last_line_is_skipped_and_dropped_on_resume(tmp_path):
    workdir = str(tmp_path / "run")
    fileio.makedirs(workdir)
    path = fileio.join(workdir, "metrics.jsonl")
    whole = "".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (1, 2))
    fileio.write_text(path, whole + '{"step": 3, "train/lo')  # killed mid-write
    assert [row["step"] for row in metrics.read_rows(path)] == [1, 2]
    writer = metrics.MetricWriter(workdir, start_step=2)
    writer.write(3, {"train/loss": 0.5})
    writer.close()
    assert [(row["step"], row["train/loss"]) for row in _rows(workdir)] == [
        (1, 1.0),
        (2, 1.0),
        (3, 0.5),
    ]


def test_the_writer_leaves_torch_unimported(tmp_path):
    """tensorboardX imports PyTorch when it is installed (~1.3 s of every command's
    start); our writer keeps it out, and torch still imports afterwards."""
    code = f"""
import importlib.util, sys
from t5x_lite.train import metrics
writer = metrics.MetricWriter({str(tmp_path / "run")!r}, start_step=0)
writer.write(1, {{"train/loss": 2.0}})
writer.close()
assert "torch" not in sys.modules, "the metric writer imported torch"
assert "tensorboardX" in sys.modules
if importlib.util.find_spec("torch") is not None:
    import torch
    assert torch.ones(2).sum().item() == 2.0
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
