"""Where a training step of a stacked MLP group spends its time, against this machine's limits (its roofline).

    python benchmarks/roofline.py                     # the fashion-mnist showcase's MLP (its profile), K = 8
    python benchmarks/roofline.py --profile fashion-mnist --models 16 --steps 30 --rounds 3
    python benchmarks/roofline.py --profile digits    # digits: 64-256-256-10

The profile's MLP, K of its runs (70% subsets of the profile's training pool) trained in lockstep as the
engine trains them (one thread: the engine's layout per process), in alternating rounds, each phase's best
round kept, in each of a few ways (`--ways`): `today`, the step before issue 23 (the `by-model` update of
`memlib.train.engine.UPDATES`, the last layer `plain`), and `engine`, the step now (the `fused` update, this
device kind's LAYOUTS entry); or any UPDATE/LAST pair, e.g. `fused/plain`. The phases of a step
(`memlib.train.engine.PHASES`), timed by `train_group` itself through its `phase` hook:

    gather    the batch's images and labels gathered from the resident data (and each epoch's shuffles)
    forward   the forward products, ReLUs and the loss
    signals   the training signals recorded (each step's logits kept, each epoch's pass over them)
    backward  the backward products (autograd)
    update    the gradient clipping (where the profile clips), the optimizer's step and its copies

Beside each phase, its roofline: the time its FLOPs take at the peak (a large square matmul on one thread,
in bf16 where the engine trains in bf16, else fp32) and the time its bytes take at the memory bandwidth (a
large tensor copy_), both measured in the same run, and the fraction of the larger of the two that the phase
reaches (the peak and the bandwidth are measured before the rounds and after them, and the better of the two
counts: on a shared machine, the less disturbed). FLOPs count the matrix products; bytes count what a phase
must read and write at least (each operand once: weights, activations, gradients, momentum; an ideal update
reads weight, gradient and momentum and writes weight and momentum, plus a working copy where there is one).
The step's roofline is the sum of its phases'; the last lines give the whole loop's time per step
(`train_group` itself, untimed inside) and the fraction of the roofline it reaches, and the forward and backward
products alone (one batch held in cache, nothing else in the loop) against their part of the roofline: the most
the products reach on these shapes, so the ceiling of any step built on them. Compare within one run: the
machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memlib  # noqa: E402
from memlib.train.design import subset_jobs  # noqa: E402
from memlib.train.engine import (  # noqa: E402
    PHASES,
    UPDATES,
    NeuralLearner,
    StackedMLP,
    _autocast,
    mlp_layers,
    train_group,
)
from memlib.train.layouts import Layout  # noqa: E402
from memlib.train.signals import SignalRecorder  # noqa: E402

WAYS = {"today": "by-model/plain", "engine": None}  # None: the fused update and this kind's table entry


def way(name: str, table: Layout) -> tuple[str, Layout]:
    """The update and the layout of a way of stepping: 'today', 'engine', or 'UPDATE/LAST' (e.g. fused/plain)."""
    spec = WAYS.get(name, name)
    if spec is None:
        return "fused", table
    update, last = spec.split("/")
    return update, dataclasses.replace(table, last=last)


def matmul_rate(dtype: torch.dtype, device: torch.device, windows: int = 5, seconds: float = 0.6) -> float:
    """FLOP/s of a large square matmul in `dtype`: the best of several short windows (the achievable peak of
    this device and thread layout; the best window is the one least disturbed by other work on the machine)."""
    size = 4096 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    (a @ b).sum().item()
    best = 0.0
    for _ in range(windows):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            c = a @ b
            reps += 1
        c.sum().item()
        best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
    return best


def copy_rate(device: torch.device, windows: int = 5, seconds: float = 0.6, megabytes: int = 256) -> float:
    """Bytes/s moved by a large tensor copy_ (read + written): the memory bandwidth a memory-bound pass can reach."""
    n = megabytes * 2**20 // 4
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    dst.copy_(src)
    best = 0.0
    for _ in range(windows):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            dst.copy_(src)
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * 4 * n * reps / (time.perf_counter() - start))
    return best


def cpu_name() -> str:
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def step_costs(
    dims: list[int], k: int, batch: int, compute: int, data: int, copies: bool, classes_bytes: int = 4
) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) of each phase of one training step of K MLPs with layer sizes `dims` on `batch` rows each.

    `compute`: bytes per element of the products' operands (4 fp32, 2 bf16); `data`: of the stored images;
    `copies`: whether the update writes bf16 working copies of fp32 weights. Bytes are each operand once.
    """
    rows = k * batch
    pairs = list(zip(dims, dims[1:]))
    weights = sum(i * o + o for i, o in pairs) * k  # parameters of the group
    fwd_flops = 2 * rows * sum(i * o for i, o in pairs)
    fwd_bytes = sum(k * i * o * compute + rows * (i + o) * compute for i, o in pairs) + rows * dims[-1] * 4
    # weight gradients on every layer; input gradients on all but the first (its input needs none)
    bwd_flops = fwd_flops + 2 * rows * sum(i * o for i, o in pairs[1:])
    bwd_bytes = sum(rows * (i + o) * compute + k * (i * o + o) * compute for i, o in pairs)
    bwd_bytes += sum(k * i * o * compute + rows * i * compute for i, o in pairs[1:])
    update_bytes = weights * (4 + compute + 4 + 4 + 4 + (2 if copies else 0))
    gather_bytes = rows * dims[0] * (data + compute) + rows * 8 * 3  # images; indices, labels read and written
    signal_bytes = rows * (dims[-1] * classes_bytes + 8 + 8) * 2  # logits, index, label: kept, then read again
    return {
        "gather": (0.0, float(gather_bytes)),
        "forward": (float(fwd_flops), float(fwd_bytes)),
        "backward": (float(bwd_flops), float(bwd_bytes)),
        "update": (0.0, float(update_bytes)),
        "signals": (0.0, float(signal_bytes)),
    }


def eval_costs(dims: list[int], k: int, rows: int, compute: int) -> tuple[float, float]:
    """(FLOPs, bytes) of evaluating K MLPs on `rows` examples that all of them read (the input read once)."""
    pairs = list(zip(dims, dims[1:]))
    flops = 2 * k * rows * sum(i * o for i, o in pairs)
    bytes_ = rows * dims[0] * 4 + k * sum(i * o + o for i, o in pairs) * compute
    bytes_ += k * rows * (sum(o for _, o in pairs) * compute + dims[-1] * 4)
    return float(flops), float(bytes_)


def roofline(costs: dict[str, tuple[float, float]], peak: float, bandwidth: float) -> dict[str, tuple[float, float]]:
    """Each phase's (seconds at the peak, seconds at the bandwidth)."""
    return {name: (flops / peak, bytes_ / bandwidth) for name, (flops, bytes_) in costs.items()}


def group(profile: str, k: int) -> tuple[NeuralLearner, list]:
    """The profile's learner (no signals kept by fit; this script records them itself) and K of its runs."""
    cfg = memlib.load_profile(profile).replace(device="cpu", group_size=k, num_models=max(k, 10), min_out=1)
    data = memlib.load_dataset(cfg)
    runs = [(np.flatnonzero(j.mask), j.seed) for j in subset_jobs(cfg, data.n_train, range(k))]
    return NeuralLearner(cfg, data, path="stacked", record_signals=False), runs


def _stacked(learner: NeuralLearner, runs, layout: Layout) -> StackedMLP:
    dtype = torch.bfloat16 if learner.precision == "bf16" else torch.float32
    return StackedMLP([learner.make_model(seed) for _, seed in runs], dtype, layout)


def timed_phases(learner: NeuralLearner, runs, steps: int, update: str, layout: Layout) -> dict[str, float]:
    """Seconds per step of each phase of `train_group` (signals recorded), timed by its `phase` hook."""
    spent = dict.fromkeys(("setup", *PHASES), 0.0)
    last = [time.perf_counter()]

    def ended(name: str) -> None:
        now = time.perf_counter()
        spent[name] += now - last[0]
        last[0] = now

    loop_step(learner, runs, steps, update, layout, ended)
    return {name: spent[name] / steps for name in PHASES}


def loop_step(learner: NeuralLearner, runs, steps: int, update: str, layout: Layout, phase=None) -> float:
    """Seconds per step of `train_group` itself (signals recorded), the models built beforehand; `phase`, where
    given, is its hook, and also ends "signals" after the last epoch's pass over its kept logits."""
    cfg, dev = learner.cfg, learner.device
    models = _stacked(learner, runs, layout)
    generators = [torch.Generator().manual_seed(seed) for _, seed in runs]
    subsets = [torch.as_tensor(idx, device=dev) for idx, _ in runs]
    recorder = SignalRecorder(len(runs), len(learner.train), cfg.epochs, dev)
    hooked = {} if phase is None else {"phase": phase}
    start = time.perf_counter()
    train_group(
        models, learner.train_input(), subsets, generators, cfg, learner.precision, steps, recorder, update, **hooked
    )
    recorder.flush()
    if phase is not None:
        phase("signals")
    return (time.perf_counter() - start) / steps


def products_alone(learner: NeuralLearner, runs, layout: Layout, rounds: int = 5, reps: int = 20) -> dict[str, float]:
    """Seconds of the group's forward products (and ReLUs) and of its backward products alone, on one batch held
    in cache: no gather, loss, signals or update. What a step's products reach on these shapes at best."""
    models = _stacked(learner, runs, layout)
    x = torch.randn(len(runs), learner.cfg.batch_size, models.weights[0].shape[1], device=learner.device)
    spent = {"forward": np.inf, "backward": np.inf}
    for _ in range(rounds + 1):  # the first round warms up
        fwd = bwd = 0.0
        for _ in range(reps):
            t0 = time.perf_counter()
            with _autocast(learner.device, learner.precision):
                out = models(x)
            t1 = time.perf_counter()
            models.gradients(out.float().sum())
            t2 = time.perf_counter()
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
        spent = {"forward": min(spent["forward"], fwd / reps), "backward": min(spent["backward"], bwd / reps)}
    return spent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="fashion-mnist", help="whose MLP, data and recipe (default fashion-mnist)")
    parser.add_argument("--models", type=int, default=8, help="K, models in lockstep (default 8)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per round (default 40)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each update once per round (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the engine runs 1 per process)")
    parser.add_argument("--ways", default="today,engine", help="comma list: today, engine, UPDATE/LAST pairs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    updates = args.ways.split(",")
    learner, runs = group(args.profile, args.models)
    ways = {name: way(name, learner.layout) for name in updates}
    if any(u not in UPDATES for u, _ in ways.values()):
        parser.error(f"--ways: the update of each must be one of {UPDATES}")
    cfg, dev = learner.cfg, learner.device
    linears = mlp_layers(learner.make_model(0))
    dims = [linears[0].in_features] + [m.out_features for m in linears]
    bf16 = learner.precision == "bf16"
    data_bytes = learner.train_input().x.element_size()
    costs = step_costs(dims, len(runs), cfg.batch_size, 2 if bf16 else 4, data_bytes, bf16)
    print(f"{cpu_name()}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}; {cfg.profile}: layers "
          f"{'-'.join(map(str, dims))}, K = {len(runs)}, batch {cfg.batch_size}, subsets of {len(runs[0][0])}, "
          f"{learner.precision}, layout {learner.layout.name} ({learner.layout_kind})")  # fmt: skip
    peak = matmul_rate(torch.bfloat16 if bf16 else torch.float32, dev)
    bandwidth = copy_rate(dev)
    print(f"peak: {'bf16' if bf16 else 'fp32'} matmul {peak / 1e9:.0f} GFLOP/s; copy_ {bandwidth / 1e9:.1f} GB/s")
    best = {u: {**dict.fromkeys(PHASES, np.inf), "loop": np.inf} for u in updates}
    for name in updates:  # warm-up, untimed
        timed_phases(learner, runs, min(args.steps, 5), *ways[name])
    for r in range(args.rounds):
        for name in updates if r % 2 == 0 else updates[::-1]:
            got = timed_phases(learner, runs, args.steps, *ways[name])
            got["loop"] = loop_step(learner, runs, args.steps, *ways[name])
            best[name] = {p: min(best[name][p], got[p]) for p in best[name]}
            print(f"  round {r + 1}: {name:14s} step {1e3 * got['loop']:7.2f} ms (phases "
                  + ", ".join(f"{p} {1e3 * got[p]:.2f}" for p in PHASES) + ")", flush=True)  # fmt: skip
    alone = products_alone(learner, runs, ways[updates[-1]][1])
    peak = max(peak, matmul_rate(torch.bfloat16 if bf16 else torch.float32, dev))  # again: the better counts
    bandwidth = max(bandwidth, copy_rate(dev))
    print(
        f"peak, the better of before and after the rounds: {peak / 1e9:.0f} GFLOP/s; copy_ {bandwidth / 1e9:.1f} GB/s"
    )
    limits = roofline(costs, peak, bandwidth)
    print(f"\n{'phase':9s} {'GFLOP':>7s} {'MB':>7s} {'at peak':>8s} {'at bw':>7s} {'roofline':>8s}  "
          + "  ".join(f"{u + ' ms':>12s} {'of roofline':>11s}" for u in updates))  # fmt: skip
    total = 0.0
    for p in PHASES:
        (flops, bytes_), (t_flops, t_bytes) = costs[p], limits[p]
        line = max(t_flops, t_bytes)
        total += line
        print(f"{p:9s} {flops / 1e9:7.3f} {bytes_ / 1e6:7.1f} {1e3 * t_flops:8.3f} {1e3 * t_bytes:7.3f} "
              f"{1e3 * line:8.3f}  "
              + "  ".join(f"{1e3 * best[u][p]:12.3f} {line / best[u][p]:11.1%}" for u in updates))  # fmt: skip
    sums = {u: sum(best[u][p] for p in PHASES) for u in updates}
    print(f"{'phases':9s} {'':7s} {'':7s} {'':8s} {'':7s} {1e3 * total:8.3f}  "
          + "  ".join(f"{1e3 * sums[u]:12.3f} {total / sums[u]:11.1%}" for u in updates))  # fmt: skip
    print(f"{'step':9s} {'':7s} {'':7s} {'':8s} {'':7s} {1e3 * total:8.3f}  "
          + "  ".join(f"{1e3 * best[u]['loop']:12.3f} {total / best[u]['loop']:11.1%}" for u in updates)
          + "   (train_group itself)")  # fmt: skip
    products = sum(max(limits[p]) for p in alone)
    print(f"{'products':9s} {'':7s} {'':7s} {'':8s} {'':7s} {1e3 * products:8.3f}  {1e3 * sum(alone.values()):12.3f} "
          f"{products / sum(alone.values()):11.1%}   (forward and backward products alone, operands in cache, "
          f"{updates[-1]}'s layout: the most its products reach on these shapes)")  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.2f}; ways: "
          + ", ".join(f"{n} = {u} update, layout {lay.name}" for n, (u, lay) in ways.items()))  # fmt: skip
    print(
        f"profile={cfg.profile} K={len(runs)} precision={learner.precision} roofline_ms={1e3 * total:.3f} "
        f"frac_products_alone={products / sum(alone.values()):.3f} "
        + " ".join(f"step_ms_{u}={1e3 * best[u]['loop']:.3f} frac_{u}={total / best[u]['loop']:.3f}" for u in updates)
    )


if __name__ == "__main__":
    main()
