"""The stacked path's layouts (memlib.train.layouts): each computes the same model, and each device kind gets its own.

The layouts differ only in how they lay out the same products, so their gradients, trained weights and predictions
agree to rounding; which one a machine uses is looked up by its kind (never timed at start-up).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import memlib
from memlib.train import layouts
from memlib.train.design import subset_jobs
from memlib.train.engine import NeuralLearner, StackedMLP
from memlib.train.layouts import LAYOUTS, PLAIN, Layout, device_kind
from memlib.train.models import build_model

OTHER = Layout("contiguous", "wide", "the layout the tests weigh against the plain one")
NARROW = Layout("view", "bmm", "the last layer the tests weigh against the plain one", "transposed")
BACKWARD = {OTHER: "_ContiguousWeightGradBackward", NARROW: "_TransposedLastBackward"}  # each layout's own node


def _models(device: str, k: int = 3, width: int = 64) -> list[torch.nn.Module]:
    cfg = memlib.load_profile("smoke").replace(width=width)
    torch.manual_seed(0)
    return [build_model(cfg, 1, 8, 10).to(device) for _ in range(k)]


@pytest.mark.parametrize("layout", [OTHER, NARROW], ids=["contiguous-wide", "transposed-last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_each_layout_gives_the_plain_gradients_and_logits(device, dtype, layout):
    """Catches a layout's own products computing other sums: a weight gradient in the wrong orientation, a
    missing bias gradient, evaluation's products out of step with the weights after an update."""
    models = _models(device)
    plain, other = StackedMLP(models, dtype, PLAIN), StackedMLP(models, dtype, layout)
    torch.manual_seed(1)
    x, y = torch.randn(3, 40, 1, 8, 8, device=device), torch.randint(0, 10, (120,), device=device)
    grads = {}
    for name, group in (("plain", plain), ("other", other)):
        loss = F.cross_entropy(group(x).float().flatten(0, 1), y)
        grads[name] = torch.autograd.grad(loss, group.leaves)
    assert BACKWARD[layout] in _grad_fns(other(x)), "the layout's own products were not used"
    tol = 1e-6 if dtype == torch.float32 else 1 / 64  # bf16: a rounding of the same sums in another order
    for g, r in zip(grads["other"], grads["plain"]):
        assert g.dtype == r.dtype and g.shape == r.shape and g.is_contiguous()
        assert float((g.float() - r.float()).abs().max()) <= tol * max(float(r.float().abs().max()), 1e-3)
    shared = torch.randn(50, 1, 8, 8, device=device)
    with torch.no_grad():
        wide, expanded = other.shared(shared).float(), plain(shared.unsqueeze(0).expand(3, *shared.shape)).float()
    assert wide.shape == expanded.shape == (3, 50, 10)
    assert float((wide - expanded).abs().max()) <= tol * float(expanded.abs().max())
    with torch.no_grad():  # a step changes the weights in place: the wide copy of them must follow
        for group in (plain, other):
            group.leaves[0].mul_(-1)
        wide, expanded = other.shared(shared).float(), plain(shared.unsqueeze(0).expand(3, *shared.shape)).float()
    assert float((wide - expanded).abs().max()) <= tol * float(expanded.abs().max())


def _grad_fns(out: torch.Tensor) -> list[str]:
    """The names of the backward nodes behind `out`."""
    seen, todo = [], [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and type(fn).__name__ not in seen:
            seen.append(type(fn).__name__)
            todo += [f for f, _ in fn.next_functions]
    return seen


def test_a_group_trained_in_either_layout_ends_with_the_same_weights(smoke, digits, device):
    cfg = smoke.replace(device=device, precision="fp32", epochs=2, width=64)
    runs = [(np.flatnonzero(j.mask), j.seed) for j in subset_jobs(cfg, digits.n_train, range(3))]
    torch.set_num_threads(1)
    got = {}
    for layout in (PLAIN, OTHER, NARROW):
        learner = NeuralLearner(cfg, digits, path="stacked", layout=layout, record_signals=False)
        got[layout.name] = (learner.fit_group(runs).state_dicts(), learner.fit_eval_group(runs))
    plain_w, plain_out = got[PLAIN.name]
    start = NeuralLearner(cfg, digits).make_model(runs[0][1]).state_dict()
    assert max(float((plain_w[0][k] - start[k]).abs().max()) for k in start) > 1e-2, "training moved the weights"
    for other_w, other_out in (got[OTHER.name], got[NARROW.name]):
        for a, b in zip(plain_w, other_w):
            assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
        for a, b in zip(plain_out, other_out):  # evaluation: the wide first layer, the transposed last one
            assert np.mean(a.test_correct == b.test_correct) > 0.99 and np.abs(a.test_prob - b.test_prob).max() < 1e-4


def test_each_device_kind_has_its_layout_and_says_what_measured_it():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device_kind(cpu, frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})) == "cpu-amx"
    assert device_kind(cpu, frozenset({"avx512f", "avx512_bf16"})) == "cpu-avx512-bf16"
    assert device_kind(cpu, frozenset({"avx2"})) == "cpu" and device_kind(cpu, frozenset()) == "cpu"
    assert device_kind(cuda, frozenset({"amx_bf16"})) == "cuda"
    assert set(LAYOUTS) == {"cpu-amx", "cpu-avx512-bf16", "cpu", "cuda"}
    assert all(len(entry.measured) > 40 for entry in LAYOUTS.values())
    with pytest.raises(ValueError, match="unknown layout"):
        Layout("transposed", "bmm", "a typo")
    with pytest.raises(ValueError, match="unknown layout"):
        Layout("view", "bmm", "a typo", "sideways")


def test_an_amx_cpu_trains_with_the_amx_entry(smoke, digits, monkeypatch):
    monkeypatch.setattr(layouts, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    learner = NeuralLearner(smoke.replace(device="cpu"), digits, record_signals=False)
    assert (learner.layout_kind, learner.layout) == ("cpu-amx", LAYOUTS["cpu-amx"])
    group = learner.fit_group([(np.arange(100), 0)], steps=1)
    assert group.layout is LAYOUTS["cpu-amx"]
    x = torch.zeros(1, 4, *digits.image_shape)
    assert ("_ContiguousWeightGradBackward" in _grad_fns(group(x))) == (LAYOUTS["cpu-amx"].weight_grad == "contiguous")
    env = memlib.environment("cpu")
    assert env["stacked_layout"].startswith(f"{LAYOUTS['cpu-amx'].name} (for MLPs: the cpu-amx entry of LAYOUTS")


def test_the_layouts_benchmark_prints_an_entry_the_table_takes():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "benchmarks/layouts.py", "--steps", "2", "--rounds", "1", "--models", "2"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    headline = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert headline["kind"] == device_kind(torch.device("cpu")) and headline["table"] == LAYOUTS[headline["kind"]].name
    assert float(headline["train_x"]) > 0 and float(headline["eval_x"]) > 0 and float(headline["last_x"]) > 0
    entry = out[out.index(f'"{headline["kind"]}": Layout(') :].split("\n\n")[0]
    layout = eval("{" + entry + "}", {"Layout": Layout})[headline["kind"]]
    assert layout.name == headline["chosen"] and "benchmarks/layouts.py" in layout.measured
    # 2 steps in 1 round choose nothing: the entry says so, and so does the headline
    assert headline["enough"] == "0" and layout.measured.startswith("TOO SHORT TO CHOOSE (2 steps, 1 round(s))")
    assert "too short to choose: rerun with --steps 30" in out


def test_the_rooflines_flops_are_what_torch_counts_for_a_step():
    """benchmarks/roofline.py's FLOPs of a step's forward and backward products are torch's own count for a
    stacked group; catches a miscount such as an input gradient for the first layer, whose input needs none."""
    import sys

    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, "benchmarks")
    from roofline import step_costs

    k, batch, dims = 3, 16, [64, 32, 24, 10]
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
              for _ in range(k)]  # fmt: skip
    for layout in (PLAIN, NARROW):
        group = StackedMLP(models, torch.float32, layout)
        x = torch.randn(k, batch, 1, 8, 8)
        with FlopCounterMode(display=False) as forward:
            out = group(x)
        with FlopCounterMode(display=False) as backward:
            torch.autograd.grad(out.square().sum(), group.leaves)
        costs = step_costs(dims, k, batch, 4, 4, False)
        assert costs["forward"][0] == forward.get_total_flops(), layout.name
        assert costs["backward"][0] == backward.get_total_flops(), layout.name


def test_the_roofline_benchmark_runs_the_engines_loop():
    """benchmarks/roofline.py runs to its headline on the smoke profile: it times train_group through its phase
    hook, so an engine change it did not follow breaks it (when it copied the loop, the epoch draws' new API once
    did, silently, as nothing ran it)."""
    import subprocess
    import sys

    args = ["--profile", "smoke", "--steps", "3", "--rounds", "1", "--models", "2"]
    out = subprocess.run(
        [sys.executable, "benchmarks/roofline.py", *args], capture_output=True, text=True, timeout=600, check=True
    ).stdout
    headline = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert headline["profile"] == "smoke" and headline["K"] == "2" and float(headline["frac_products_alone"]) > 0
    for way in ("today", "engine"):
        assert float(headline[f"step_ms_{way}"]) > 0 and float(headline[f"frac_{way}"]) > 0
