"""benchmarks/gpu_check.py on the CPU at its tiniest sizes: every part runs to the end on the data there is, lands
in one JSON, and the call succeeds only when every part measured what it was meant to; benchmarks/flops.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

import memlib

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("tests", "throughput", "recipe", "archs", "noisy")
sys.path.insert(0, str(ROOT / "benchmarks"))
import flops  # noqa: E402


def gpu_check(out, *args: str, timeout: int = 1800) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return res, json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_gpu_check_without_fashion_mnist_measures_every_part_on_synthetic_data(tmp_path):
    """A bare machine: Fashion-MNIST is looked for only in an empty folder, as on a device machine without it
    (the system's copy stays where it is). Fault caught: the parts that need it skipped and the call exiting 0."""
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    res, record = gpu_check(out, "--tests-k", "sgd_step or sits_out", "--data-dir", str(tmp_path / "empty"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert record["data"]["kind"] == "synthetic" and "not found" in record["data"]["note"]
    assert "data: synthetic Fashion-MNIST" in res.stdout and "data=synthetic" in record["headline"]
    assert list(record["parts"]) == list(PARTS)
    for name, part in record["parts"].items():
        assert part["status"] == "ok", (name, part, res.stdout[-3000:])
        assert part.get("imported_absent_modules", []) == [], name  # nothing the GPU machine lacks
    parts = record["parts"]
    assert parts["tests"]["passed"] > 0 and parts["tests"]["failures"] == 0
    assert all(v == "passed" for v in parts["tests"]["results"].values())
    assert set(parts["throughput"]["paths"]["paths"]) == {"loop", "previous", "today", "engine"}
    assert parts["throughput"]["large_group"]["headline"]["engine_models_per_hour"] > 0
    assert parts["recipe"]["models_done"] == parts["recipe"]["num_models"] == 16
    assert parts["recipe"]["data"] == "synthetic"
    for arch in ("mem_cnn", "resnet18", "cifar10_fast"):  # both paths timed
        assert parts["archs"][arch]["faster_path"] in ("single", "vmap"), arch
    assert parts["archs"]["cifar10_fast"]["frac_of_h100_peak"] > 0
    assert parts["noisy"]["models_done"] == 16 and parts["noisy"]["flips"] > 0
    assert "parts_ok=5/5" in record["headline"] and "-" not in record["headline"].replace("device=cpu", "")
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == record["headline"] and "total_s=" in lines[-1]
    assert (out / "gpu_check.log").stat().st_size > 0


def test_a_skipped_part_fails_the_call(tmp_path):
    """Fault caught: a part that measured nothing (here no test matched) counted as fine, exit status 0."""
    res, record = gpu_check(tmp_path, "--parts", "tests", "--tests-k", "no_such_test")
    assert res.returncode == 1, res.stdout + res.stderr
    part = record["parts"]["tests"]
    assert part["status"] == "skipped" and "no test ran" in part["reason"], part
    assert "parts_ok=0/1" in record["headline"]


def test_a_timed_out_part_fails_the_call_and_keeps_the_tests_that_finished(tmp_path):
    """The tests part killed at its limit still reports each test that finished (saved as pytest printed it).
    Fault caught: a timeout counted as fine, or the per-test results lost with the killed pytest."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "test_fake.py").write_text(
        "import time\nimport pytest\n\n\n@pytest.mark.device\ndef test_quick():\n    pass\n\n\n"
        "@pytest.mark.device\ndef test_hangs():\n    time.sleep(600)\n"
    )
    fake = str(tmp_path / "fake" / "test_fake.py")
    res, record = gpu_check(tmp_path, "--parts", "tests", "--tests-path", fake, "--limit", "tests=20")
    assert res.returncode == 1, res.stdout + res.stderr
    part = record["parts"]["tests"]
    assert part["status"] == "timeout" and "limit of 20 s" in part["reason"], part
    assert [v for k, v in part["results"].items() if k.endswith("::test_quick")] == ["passed"], part
    assert part["passed"] == 1 and not any(k.endswith("::test_hangs") for k in part["results"])


def test_flops_count_the_forward_pass_and_the_recipe():
    """The MLP's FLOPs are its closed form (2 per multiply-add); a model is 3 forward passes per training example
    and epoch plus one per evaluated example. Fault caught: a FLOP count off by the x2 or the x3."""
    cfg = memlib.load_profile("mnist-paper")
    assert flops.forward_flops(cfg, (1, 28, 28), 10) == 2 * (784 * 512 + 512 * 256 + 256 * 10)
    f = flops.model_flops(cfg)
    assert f["training"] == 3 * f["forward"] * 42_000 * 10 and f["evaluation"] == f["forward"] * 70_000
    # the old CIFAR target: 3,000 ResNet-18s an hour on one H100 would need about 3 times its peak
    old = flops.model_flops(memlib.load_profile("cifar10"))["total"]
    assert 2.9 < 3000 * old / 3600 / flops.H100_BF16_DENSE < 3.1


def test_the_docs_state_the_cifar_fast_target_that_flops_computes():
    """README.md and docs/gpu.md give cifar10-fast's FLOPs and models/hour as benchmarks/flops.py computes them.
    Fault caught: the profile (or the fraction) changed and the stated target left behind."""
    f = flops.model_flops(memlib.load_profile("cifar10-fast"))
    rate = flops.models_per_hour(f["total"], flops.TARGET_FRACTION)
    stated = [f"{f['total'] / 1e15:.2f} PFLOP", f"{round(rate, -2):,.0f} models/hour", f"{flops.TARGET_FRACTION:.0%}"]
    for doc in ("README.md", "docs/gpu.md"):
        text = re.sub(r"\s+", " ", (ROOT / doc).read_text())
        for words in stated:
            assert words in text, (doc, words)
