"""benchmarks/gpu_check.py on the CPU at its tiniest sizes: every part runs to the end and lands in one JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("tests", "throughput", "recipe", "archs", "noisy")
NEEDS_FASHION = ("recipe", "noisy")


def gpu_check(out, *args: str, timeout: int = 1800) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return res, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    res, record = gpu_check(tmp_path, "--tests-k", "sgd_step or sits_out")
    assert list(record["parts"]) == list(PARTS), res.stdout + res.stderr
    fashion = record["data"]["kind"] != "absent"
    for name, part in record["parts"].items():
        if name in NEEDS_FASHION and not fashion:  # Fashion-MNIST absent: skipped, with the reason
            assert part["status"] == "skipped" and "Fashion-MNIST not found" in part["reason"], part
        else:
            assert part["status"] == "ok", (name, part, res.stdout[-3000:])
        assert part.get("imported_absent_modules", []) == [], name  # nothing the GPU machine lacks
    parts = record["parts"]
    assert parts["tests"]["passed"] > 0 and parts["tests"]["failures"] == 0
    assert set(parts["throughput"]["paths"]["paths"]) == {"loop", "previous", "engine"}
    assert parts["throughput"]["large_group"]["headline"]["engine_models_per_hour"] > 0
    assert parts["archs"]["resnet18"]["faster_path"] in ("single", "vmap")  # both paths timed
    if fashion:
        assert parts["recipe"]["models_done"] == parts["recipe"]["num_models"] == 16
        assert parts["noisy"]["models_done"] == 16 and parts["noisy"]["flips"] > 0
        assert parts["archs"]["mem_cnn"]["faster_path"] in ("single", "vmap")
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == record["headline"] and "parts_ok=" in lines[-1] and "total_s=" in lines[-1]
    assert (tmp_path / "gpu_check.log").stat().st_size > 0


def test_gpu_check_skips_the_parts_that_need_absent_data(tmp_path):
    res, record = gpu_check(tmp_path, "--parts", "recipe,noisy", "--data-dir", str(tmp_path / "nothing-here"))
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("recipe", "noisy"):
        part = record["parts"][name]
        assert part["status"] == "skipped" and "Fashion-MNIST not found" in part["reason"], part
        assert "--synthetic-data" in part["reason"]
