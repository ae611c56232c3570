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
machine's fp32 and bf16 matmul peak in that layout, so each path is a fraction of the peak:

    (a) loop      `DataLoader(TensorDataset(...), batch_size=128, shuffle=True)`, one model at a time, fp32
    (b) previous  memlib's single-model path (a group of one, data resident), fp32: what memlib did before stacking
    (c) engine    `NeuralLearner` as the profiles use it: K models per step, precision auto

Machines are noisy: compare ratios within one run. The last line is the headline.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memlib  # noqa: E402
from memlib.data.dataset import Dataset
from memlib.train.design import subset_jobs  # noqa: E402
from memlib.train.engine import NeuralLearner, batch_bounds, resolve_device  # noqa: E402

PATHS = ("loop", "previous", "engine")


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
    try:
        cfg = memlib.load_profile("fashion-mnist").replace(
            **base, arch=arch, width=width, train_size=10_000, mask_design="random"
        )
        data = memlib.load_dataset(cfg)
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


def _worker(args, path: str, share: list[int], threads: int, barrier, queue) -> None:
    torch.set_num_threads(threads)
    cfg, data = recipe(args)
    jobs = subset_jobs(cfg, data.n_train, share)
    runs = [(np.flatnonzero(j.mask), j.seed) for j in jobs]
    if path == "peak":
        barrier.wait()
        dev = resolve_device(cfg.device)
        w = args.peak_windows
        queue.put({"fp32": matmul_rate(torch.float32, dev, w), "bf16": matmul_rate(torch.bfloat16, dev, w)})
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
        return {k: sum(r[k] for r in results) for k in ("fp32", "bf16")}
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


def cpu_name() -> str:
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16, help="models per path (default 16)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 10 (the recipe), 30 (--synthetic-cifar)")
    parser.add_argument("--arch", default=None, help="a timm name (default: the recipe's MLP)")
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
    print(f"matmul peak in this layout: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
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
    rows, per_run = {}, {}
    for path in paths:
        r = best[path]
        rate = args.models / r["wall"] * 3600 * (args.steps / per_model if args.steps else 1)
        peak_used = peak["bf16"] if path.startswith("engine") and engine.precision == "bf16" else peak["fp32"]
        frac = flops * args.models / r["wall"] / peak_used
        per_run[path] = np.array([r["accs"][i] for i in sorted(r["accs"])])
        acc, se = _mean_se(per_run[path])
        rows[path] = (rate, frac, acc)
        which = "bf16" if peak_used is peak["bf16"] else "fp32"
        print(f"({path:<12}) {r['wall']:7.1f} s  {rate:9.0f} models/hour  {frac:6.1%} of the {which} peak  "
              f"test accuracy {acc:.4f} (se {se:.4f})", flush=True)  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    eng = rows["engine"]
    loop = rows.get("loop", (float("nan"),) * 3)
    prev = rows.get("previous", (float("nan"),) * 3)
    gap, gap_se, pair = accuracy_gap(per_run)
    if pair:
        z = gap / gap_se if gap_se > 0 else float("inf")
        print(f"accuracy gap {gap:.4f}: {pair[0]} minus {pair[1]} over the same {len(per_run[pair[0]])} runs (masks "
              f"and seeds), paired se {gap_se:.4f}, so {z:.1f} se")  # fmt: skip
    print(f"speedup_vs_loop={eng[0] / loop[0]:.2f} speedup_vs_previous={eng[0] / prev[0]:.2f} "
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
