"""`--dry_run`'s report: per-parameter shardings and bytes, totals, compiled memory."""

import ast
import math
import re

import pytest

from t5x_lite.train import dry_run
from tests.train import multi_device_checks

ROW = re.compile(r"^(\S+)\s+(\([\d, ]+\))\s+(\(.*?\))\s+(P\(.*?\))\s+([\d,]+)$")


def _rows(text: str) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Parameter table -> {path: (shape, partition spec, bytes per device)}."""
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            path, shape, _, spec, size = match.groups()
            rows[path] = (ast.literal_eval(shape), spec, int(size.replace(",", "")))
    return rows


def _totals(text: str, what: str) -> tuple[int, int]:
    """'<what>: N values, T bytes in all (...), D bytes per device' -> (T, D)."""
    match = re.search(
        rf"^{what}: [\d,]+ values, ([\d,]+) bytes in all .*, ([\d,]+) bytes per", text, re.M
    )
    return tuple(int(group.replace(",", "")) for group in match.groups())


def test_one_device_report():
    text = dry_run.report(multi_device_checks.load("gpt_tiny"))
    assert text.startswith("mesh: data=1 fsdp=1 tensor=1 (1 x ")
    rows = _rows(text)
    assert rows["token_embed/embedding"] == ((256, 32), "P('tensor', 'fsdp')", 256 * 32 * 4)
    assert rows["layers/mlp/wi/kernel"][:2] == ((2, 32, 64), "P(None, 'fsdp', 'tensor')")
    # float32 params, all of each on the one device.
    param_bytes = sum(math.prod(shape) * 4 for shape, _, _ in rows.values())
    assert all(size == math.prod(shape) * 4 for shape, _, size in rows.values())
    assert _totals(text, "parameters") == (param_bytes, param_bytes)
    # Adam: two moments shaped like the params (plus a step counter).
    opt_total, opt_device = _totals(text, "optimizer state")
    assert opt_total == opt_device and 2 * param_bytes <= opt_total <= 2 * param_bytes + 64
    compiled = re.search(r"^compiled train step per device: arguments ([\d,]+) bytes", text, re.M)
    assert int(compiled.group(1).replace(",", "")) >= param_bytes + opt_total


@pytest.mark.slow
@pytest.mark.longest  # the first caller runs every 8-device check (~80 s)
def test_fsdp_shards_bytes_per_device():
    text = multi_device_checks.results()["dry_run"]  # gpt_tiny on (data, fsdp, tensor) = (2, 4, 1)
    assert text.startswith("mesh: data=2 fsdp=4 tensor=1 (8 x ")
    rows = _rows(text)
    for path in ["token_embed/embedding", "layers/mlp/wi/kernel", "final_norm/scale"]:
        shape, spec, size = rows[path]
        assert "'fsdp'" in spec
        assert size == math.prod(shape) * 4 // 4, path
    total, per_device = _totals(text, "parameters")
    assert per_device == sum(size for _, _, size in rows.values()) < total
