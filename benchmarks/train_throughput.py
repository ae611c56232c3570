"""Models per hour: a plain PyTorch loop, memlib's previous single-model path and the engine, side by side.

    python benchmarks/train_throughput.py                  # the released demo's MLP on Fashion-MNIST
    python benchmarks/train_throughput.py --arch mem_cnn   # the profiles' CNN
    python benchmarks/train_throughput.py --synthetic-cifar --models 2 --steps 20   # CIFAR-shaped, random data
    python benchmarks/train_throughput.py --arch mem_cnn --width 32 --paths engine,engine:vmap --steps 20
                                                           # one model at a time against a vmap group

The recipe (google-research/heldout-influence-estimation's MNIST demo): MLP 784-512-256-10, SGD with
momentum 0.9, lr 0.1, batch 128, 10 epochs, on 70% of a 10,000-example Fashion-MNIST pool (digits when
Fashion-MNIST is absent), then evaluation of every model on the 10,000 pool and 10,000 test images.

Every path runs the same runs (masks and seeds) in the same layout: on a CPU, `--procs` processes with one
thread each, each training its share of the models; on a GPU, one process. The script also measures the
machine's fp32 and bf16 matmul peak and its memory bandwidth (a large tensor copy_) in that layout, before the
paths and after them (the better of the two counts: on a shared machine, the less disturbed), so each
path is a fraction of the peak and, for MLPs, of its roofline (benchmarks/roofline.py: each phase of a step
at the larger of its FLOPs' time at the peak and its bytes' time at the bandwidth, plus evaluation):

    (a) loop      `DataLoader(TensorDataset(...), batch_size=128, shuffle=True)`, one model at a time, fp32
    (b) previous  memlib's single-model path (a group of one, data resident), fp32: what memlib did before stacking
    (c) today     the engine's step before issue 23: K models per step, the `by-model` update, the last layer plain
    (d) engine    `NeuralLearner` as the profiles use it: K models per step, precision auto

Machines are noisy: compare ratios within one run. The last line is the headline; its `roofline_frac` is the
engine's fraction of its roofline, `gap_vs_today` its test accuracy minus today's step's over the same runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roofline import copy_rate, cpu_name, eval_costs, matmul_rate, step_costs  # noqa: E402  (benchmarks/roofline.py)

import memlib  # noqa: E402
from memlib.data.dataset import Dataset
from memlib.train.design import subset_jobs  # noqa: E402
from memlib.train.engine import NeuralLearner, batch_bounds, mlp_layers, resolve_device  # noqa: E402

PATHS = ("loop", "previous", "today", "engine")


def recipe(args) -> tuple[memlib.Config, Dataset]:
    """The benchmark's config and data."""
    base = dict(
        profile="bench",
        num_models=max(args.models, 10),
        min_out=1,
        epochs=args.epochs,
        batch_size=128,
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        optimizer="sgd",
        schedule="constant",
        device=args.device,
        group_size=args.group_size,
        precision=args.precision,
    )
    if args.synthetic_cifar:
        cfg = memlib.load_profile("cifar10").replace(**{**base, "batch_size": 512, "lr": 0.2, "schedule": "onecycle"})
        cfg = cfg.replace(num_models=max(args.models, 10), epochs=args.epochs, nesterov=True, weight_decay=5e-4)
        cfg = _overrides(cfg, args)
        n, m = args.synthetic_train, max(args.synthetic_train // 5, 1)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, size=(n + m, 3, 32, 32), dtype=np.uint8).astype(np.float32) / 255
        y = rng.integers(0, 10, size=n + m).astype(np.int64)
        data = Dataset("synthetic-cifar", x[:n], y[:n], x[n:], y[n:],
                       np.arange(n), np.arange(m), [str(c) for c in range(10)])  # fmt: skip
        return cfg, data
    arch = args.arch or "mem_mlp_mnist"
    width = None if arch == "mem_mlp_mnist" else memlib.load_profile("fashion-mnist").width  # 784-512-256-10 fixed
    if not getattr(args, "digits", False):
        try:
            cfg = memlib.load_profile("fashion-mnist").replace(
                **base, arch=arch, width=width, train_size=10_000, mask_design="random"
            )
            return _overrides(cfg, args), memlib.load_dataset(cfg)
        except memlib.DataError:
            print("Fashion-MNIST not found: using digits (8x8) instead", file=sys.stderr)
    arch = args.arch or "mem_mlp"
    cfg = memlib.load_profile("digits").replace(**base, arch=arch)
    data = memlib.load_dataset(cfg)
    return _overrides(cfg, args), data


def _overrides(cfg: memlib.Config, args) -> memlib.Config:
    """--width and --batch-size, where given, over the recipe's."""
    if args.width is not None:
        cfg = cfg.replace(width=args.width)
    return cfg if args.batch_size is None else cfg.replace(batch_size=args.batch_size)


def loop_path(cfg: memlib.Config, data: Dataset, runs, device) -> list[float]:
    """(a) what a user would write: a DataLoader over the subset, one model at a time, fp32."""
    from torch.utils.data import DataLoader, TensorDataset

    x_train, x_test = data.normalized()
    xt = torch.as_tensor(x_train)
    evals = [(xt, torch.as_tensor(data.y_train)), (torch.as_tensor(x_test), torch.as_tensor(data.y_test))]
    c, h, _ = data.image_shape
    accs = []
    for idx, seed in runs:
        torch.manual_seed(seed)
        model = memlib.train.models.build_model(cfg, c, h, data.num_classes).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        subset = TensorDataset(xt[idx], torch.as_tensor(data.y_train[idx]))
        loader = DataLoader(subset, batch_size=cfg.batch_size, shuffle=True)
        model.train()
        for _ in range(cfg.epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            for k, (x, y) in enumerate(evals):
                right = torch.cat([model(x[s : s + 1000].to(device)).argmax(1).cpu() == y[s : s + 1000]
                                   for s in range(0, len(x), 1000)])  # fmt: skip
                if k == 1:
                    accs.append(float(right.float().mean()))
    return accs


def run_path(path: str, cfg: memlib.Config, data: Dataset, runs, steps: int | None) -> list[float]:
    """Train and evaluate `runs` on one path; returns each model's test accuracy."""
    device = resolve_device(cfg.device)
    if path == "loop":
        return loop_path(cfg, data, runs, device)
    if path == "previous":
        learner = NeuralLearner(cfg, data, precision="fp32", path="single")
        group_size = 1
    elif path == "today":
        learner = today(cfg, data)
        group_size = cfg.group_size
    else:
        learner = NeuralLearner(cfg, data, path=None if path == "engine" else path.split(":")[1])
        group_size = cfg.group_size
    accs = []
    for s in range(0, len(runs), group_size):
        group = runs[s : s + group_size]
        if steps is None:
            accs += [o.test_correct.mean() for o in learner.fit_eval_group(group)]
        else:
            learner.fit_group(group, steps)
    return accs


def today(cfg: memlib.Config, data: Dataset) -> NeuralLearner:
    """The engine with the step it took before issue 23: the by-model update, the last layer multiplied plain."""
    learner = NeuralLearner(cfg, data, update="by-model")
    learner.layout = dataclasses.replace(learner.layout, last="plain")
    return learner


def _worker(args, path: str, share: list[int], threads: int, barrier, queue) -> None:
    torch.set_num_threads(threads)
    cfg, data = recipe(args)
    jobs = subset_jobs(cfg, data.n_train, share)
    runs = [(np.flatnonzero(j.mask), j.seed) for j in jobs]
    if path == "peak":
        barrier.wait()
        dev = resolve_device(cfg.device)
        w = args.peak_windows
        rates = {"fp32": matmul_rate(torch.float32, dev, w), "bf16": matmul_rate(torch.bfloat16, dev, w)}
        queue.put({**rates, "copy": copy_rate(dev, w)})
        return
    NeuralLearner(cfg, data)  # warm caches (data on the device, timm registry) outside the timing
    barrier.wait()
    start = time.perf_counter()
    accs = run_path(path, cfg, data, runs, args.steps)
    if cfg.device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    queue.put({"seconds": time.perf_counter() - start, "accs": dict(zip(share, accs))})  # run index -> accuracy


class _Inline:
    """The barrier and the queue of the one worker that --inline runs in this process."""

    def __init__(self):
        self.items: list = []

    def wait(self) -> None:
        pass

    def put(self, item) -> None:
        self.items.append(item)


def measure(args, path: str, procs: int) -> dict:
    """Run `path` in `procs` processes started together; wall time from the common start to the last finish.

    With --inline (one process), `path` runs in this process instead: no process to start per path."""
    threads = max(1, (os.cpu_count() or 1) // procs) if args.threads is None else args.threads
    if args.inline:
        box = _Inline()
        _worker(args, path, list(range(args.models)), threads, box, box)
        r = box.items[0]
        return r if path == "peak" else {"wall": r["seconds"], "accs": r["accs"]}
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs + 1), ctx.Queue()
    shares = [list(range(args.models))[p::procs] for p in range(procs)]
    workers = [ctx.Process(target=_worker, args=(args, path, shares[p], threads, barrier, queue)) for p in range(procs)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    results = [queue.get() for _ in workers]
    wall = time.perf_counter() - start
    for w in workers:
        w.join()
    if path == "peak":
        return {k: sum(r[k] for r in results) for k in ("fp32", "bf16", "copy")}
    return {"wall": wall, "accs": {i: a for r in results for i, a in r["accs"].items()}}


def flops_per_model(cfg: memlib.Config, data: Dataset, steps: int | None) -> float:
    """Matmul FLOPs of training (3 x forward) and evaluating one model, counted with torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = data.image_shape
    model = memlib.train.models.build_model(cfg, c, h, data.num_classes)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w))
    per_image = counter.get_total_flops()
    n_sub = round(cfg.subset_ratio * data.n_train)
    trained = cfg.epochs * n_sub if steps is None else steps * cfg.batch_size
    evaluated = 0 if steps is not None else data.n_train + data.n_test
    return per_image * (3 * trained + evaluated)


def roofline_seconds(path: str, cfg: memlib.Config, data: Dataset, bf16: bool, steps: int | None, peak: dict):
    """Seconds one model's share of the path's work takes at its roofline (benchmarks/roofline.py's phases at
    the larger of their FLOPs' and bytes' times, plus evaluation), or None for a network that is not an MLP."""
    c, h, _ = data.image_shape
    linears = mlp_layers(memlib.train.models.build_model(cfg, c, h, data.num_classes))
    if linears is None:
        return None
    dims = [linears[0].in_features] + [m.out_features for m in linears]
    k = cfg.group_size if path in ("today", "engine") else 1
    compute, rate = (2, peak["bf16"]) if bf16 else (4, peak["fp32"])
    costs = step_costs(dims, k, cfg.batch_size, compute, 2 if bf16 and cfg.augment == "none" else 4, bf16)
    step = sum(max(f / rate, b / peak["copy"]) for f, b in costs.values())
    n_steps = cfg.epochs * len(batch_bounds(round(cfg.subset_ratio * data.n_train), cfg.batch_size))
    seconds = (n_steps if steps is None else steps) * step / k
    if steps is None:
        f, b = eval_costs(dims, k, data.n_train + data.n_test, compute)
        seconds += max(f / rate, b / peak["copy"]) / k
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16, help="models per path (default 16)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 10 (the recipe), 30 (--synthetic-cifar)")
    parser.add_argument("--arch", default=None, help="a timm name (default: the recipe's MLP)")
    parser.add_argument("--digits", action="store_true", help="the digits profile's data (8x8) and MLP instead")
    parser.add_argument("--synthetic-cifar", action="store_true", help="32x32x3 random images, the cifar network")
    parser.add_argument("--synthetic-train", type=int, default=50_000, help="--synthetic-cifar's training images")
    parser.add_argument("--width", type=int, default=None, help="the network's width (default: the profile's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (the recipe), 512 (cifar)")
    parser.add_argument("--steps", type=int, default=None, help="train only this many steps per group (timing)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="the engine's precision (auto, fp32, bf16)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--procs", type=int, default=None, help="processes (default: cores on a CPU, 1 on a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="threads per process (default cores / procs)")
    parser.add_argument("--paths", default=None, help="comma list, e.g. loop,previous,engine,engine:vmap")
    parser.add_argument("--inline", action="store_true", help="one process: run the paths in this one, in turn")
    parser.add_argument("--peak-windows", type=int, default=5, help="0.6 s windows of the matmul peak (best counts)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the paths this many times in turn; each path's best round counts"
    )
    args = parser.parse_args()
    args.epochs = args.epochs or (30 if args.synthetic_cifar else 10)
    cfg, data = recipe(args)
    device = resolve_device(cfg.device)
    procs = args.procs or (1 if device.type == "cuda" or args.inline else (os.cpu_count() or 1))
    if args.inline and procs != 1:
        parser.error("--inline runs one process: leave out --procs or give --procs 1")
    paths = args.paths.split(",") if args.paths else (["previous", "engine"] if args.synthetic_cifar else list(PATHS))
    engine = NeuralLearner(cfg, data)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    shape = "x".join(map(str, data.image_shape))
    print(f"{cfg.arch} on {data.name} ({data.n_train} train, {data.n_test} test, {shape}), {args.models} models per "
          f"path, {cfg.epochs} epochs, batch {cfg.batch_size}; {procs} process(es) x {threads} thread(s) on {device} "
          f"({name}); engine: {engine.path}, {engine.precision}, K = {cfg.group_size}"
          + (f", layout {engine.layout.name} ({engine.layout_kind})" if engine.path == "stacked" else ""))  # fmt: skip
    peak = measure(args, "peak", procs)
    print(f"matmul peak in this layout: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s; "
          f"copy_ {peak['copy'] / 1e9:.1f} GB/s")  # fmt: skip
    flops = flops_per_model(cfg, data, args.steps)
    per_model = cfg.epochs * len(batch_bounds(round(cfg.subset_ratio * data.n_train), cfg.batch_size))
    if args.steps:
        print(f"timing {args.steps} steps per model of {per_model}: models/hour extrapolated from them (training "
              "only, no evaluation)")  # fmt: skip
    best: dict[str, dict] = {}
    for round_ in range(args.rounds):  # paths in turn, so that a burst of load from elsewhere hits them alike
        for path in paths:
            r = measure(args, path, procs)
            if args.rounds > 1:
                print(f"  round {round_ + 1}: {path} {r['wall']:.1f} s", flush=True)
            if path not in best or r["wall"] < best[path]["wall"]:
                best[path] = r
    again = measure(args, "peak", procs)  # the peak once more: the best window of both, the least disturbed
    peak = {key: max(peak[key], again[key]) for key in peak}
    print(f"the peak measured again after the paths: fp32 {again['fp32'] / 1e9:.0f} GFLOP/s, copy_ "
          f"{again['copy'] / 1e9:.1f} GB/s; the fractions below take the better of the two")  # fmt: skip
    rows, per_run, roof = {}, {}, {}
    for path in paths:
        r = best[path]
        rate = args.models / r["wall"] * 3600 * (args.steps / per_model if args.steps else 1)
        bf16 = path.startswith(("engine", "today")) and engine.precision == "bf16"
        peak_used = peak["bf16"] if bf16 else peak["fp32"]
        frac = flops * args.models / r["wall"] / peak_used
        seconds = roofline_seconds(path, cfg, data, bf16, args.steps, peak)
        roof[path] = float("nan") if seconds is None else seconds * args.models / r["wall"]
        per_run[path] = np.array([r["accs"][i] for i in sorted(r["accs"])])
        acc, se = _mean_se(per_run[path])
        rows[path] = (rate, frac, acc)
        which = "bf16" if bf16 else "fp32"
        print(f"({path:<12}) {r['wall']:7.1f} s  {rate:9.0f} models/hour  {frac:6.1%} of the {which} peak  "
              f"test accuracy {acc:.4f} (se {se:.4f})  {roof[path]:6.1%} of its roofline", flush=True)  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    eng = rows["engine"]
    loop = rows.get("loop", (float("nan"),) * 3)
    prev = rows.get("previous", (float("nan"),) * 3)
    old = rows.get("today", (float("nan"),) * 3)
    vs_today, vs_today_se = float("nan"), float("nan")
    if "today" in per_run and len(per_run["today"]) and len(per_run["engine"]):
        vs_today, vs_today_se = _mean_se(per_run["engine"] - per_run["today"])
        print(f"engine against today's step: x{eng[0] / old[0]:.2f} models/hour; test accuracy {vs_today:+.4f} "
              f"(engine minus today, the same {len(per_run['engine'])} runs), paired se {vs_today_se:.4f}")  # fmt: skip
    gap, gap_se, pair = accuracy_gap(per_run)
    if pair:
        z = gap / gap_se if gap_se > 0 else float("inf")
        print(f"accuracy gap {gap:.4f}: {pair[0]} minus {pair[1]} over the same {len(per_run[pair[0]])} runs (masks "
              f"and seeds), paired se {gap_se:.4f}, so {z:.1f} se")  # fmt: skip
    print(f"roofline_frac={roof['engine']:.2f} today_roofline_frac={roof.get('today', float('nan')):.2f} "
          f"speedup_vs_today={eng[0] / old[0]:.2f} gap_vs_today={vs_today:.4f} gap_vs_today_se={vs_today_se:.4f} "
          f"speedup_vs_loop={eng[0] / loop[0]:.2f} speedup_vs_previous={eng[0] / prev[0]:.2f} "
          f"engine_models_per_hour={eng[0]:.0f} frac_of_peak={eng[1]:.2f} acc_gap={gap:.4f} acc_gap_se={gap_se:.4f} "
          f"device={str(device) + ':' + name.replace(' ', '_')}")  # fmt: skip


def _mean_se(a: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of per-model accuracies (nan for none; se nan for one)."""
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


def accuracy_gap(per_run: dict[str, np.ndarray]) -> tuple[float, float, tuple[str, str] | None]:
    """The largest difference of mean test accuracy between two paths, with its paired standard error.

    Every path trains the same runs (masks and seeds), so the se is that of the per-run differences: the noise of
    training a model, not the spread of runs, decides whether a gap of a few tenths of a point is real.
    """
    measured = {p: a for p, a in per_run.items() if len(a)}
    if len(measured) < 2:
        return float("nan"), float("nan"), None
    hi = max(measured, key=lambda p: measured[p].mean())
    lo = min(measured, key=lambda p: measured[p].mean())
    gap, se = _mean_se(measured[hi] - measured[lo])
    return gap, se, (hi, lo)


if __name__ == "__main__":
    main()
