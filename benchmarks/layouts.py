"""Which layout of the stacked path's products is fastest on this machine: the entry for memlib.train.layouts.

    python benchmarks/layouts.py                 # this CPU, one thread (the engine's layout per process)
    python benchmarks/layouts.py --device cuda   # a GPU

Three layouts, side by side in one run, on the released demo's recipe (MLP 784-512-256-10, K models in
lockstep, batch 128, Fashion-MNIST; digits when it is absent):
    plain   view/bmm                  autograd's own weight gradients; evaluation's first layer as K batched products
    other   contiguous/wide           weight gradients from a contiguous operand; the first layer as one wide product
    narrow  view/bmm/transposed-last  plain, but the last layer's products through its weight's transpose
First the products alone (GFLOP/s, beside a square matmul's rate in the same precision), then the engine itself:
the same K runs trained for --steps steps and evaluated on the test split with each layout, in alternating
rounds, each layout's best round kept; then, in the table's layout, the time per model-step at a few group sizes
(--groups), for a profile's `group_size` on this machine. The two layouts compute the same sums in another
order, so the script also prints how many test predictions they share.

It prints the LAYOUTS entry its figures choose (a layout wins where it is at least 5% faster) and, as its last
line, the headline. Compare ratios within one run: the machine is shared. Below 30 steps or 2 rounds the ratios
are noise (3 steps once read x1.34 where 60 steps read x0.94), so such a run marks its entry "too short to choose"
and its headline `enough=0`: paste only an entry from a run with `enough=1`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_throughput import cpu_name, matmul_rate, recipe  # noqa: E402

from memlib.stages.train import git_commit  # noqa: E402
from memlib.train.design import subset_jobs  # noqa: E402
from memlib.train.engine import NeuralLearner, evaluate, mlp_layers, resolve_device  # noqa: E402
from memlib.train.layouts import PLAIN, Layout, device_kind  # noqa: E402

OTHER = Layout("contiguous", "wide", "the layout benchmarks/layouts.py weighs against the plain one")
NARROW = Layout("view", "bmm", "the last layer benchmarks/layouts.py weighs against the plain one", "transposed")
WINS = 1.05  # a layout is chosen where it is at least this much faster
ENOUGH = {"steps": 30, "rounds": 2}  # the least run whose ratios choose an entry


def _rate(fn, flops: float, device: torch.device, seconds: float = 0.4, windows: int = 3) -> float:
    """FLOP/s of fn(): the best of a few short windows."""
    fn()
    best = 0.0
    for _ in range(windows):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, flops * reps / (time.perf_counter() - start))
    return best


def products(k: int, batch: int, eval_rows: int, dims: list[int], dtype: torch.dtype, device) -> list[str]:
    """The products each layout chooses between, alone: GFLOP/s of each, as printable lines."""
    lines = []
    for d_in, d_out in zip(dims, dims[1:]):
        h = torch.randn(k, batch, d_in, device=device).to(dtype)
        g = torch.randn(k, batch, d_out, device=device).to(dtype)
        flops = 2 * k * batch * d_in * d_out
        view = _rate(lambda h=h, g=g: torch.bmm(h.transpose(1, 2), g), flops, device)
        contiguous = _rate(lambda h=h, g=g: torch.bmm(h.transpose(1, 2).contiguous(), g), flops, device)
        lines.append(f"weight gradient {k} x ({d_in}x{batch})({batch}x{d_out}): view {view / 1e9:.0f}, "
                     f"contiguous {contiguous / 1e9:.0f} GFLOP/s (x{contiguous / view:.2f})")  # fmt: skip
    d_in, d_out = dims[-2], dims[-1]
    h, w = torch.randn(k, batch, d_in, device=device).to(dtype), torch.randn(k, d_in, d_out, device=device).to(dtype)
    g, wt = torch.randn(k, batch, d_out, device=device).to(dtype), w.transpose(1, 2).contiguous()
    flops = 2 * k * batch * d_in * d_out
    fwd, fwd_t = (
        _rate(lambda: torch.bmm(h, w), flops, device),
        _rate(lambda: torch.bmm(h, wt.transpose(1, 2)), flops, device),
    )
    wg, wg_t = (
        _rate(lambda: torch.bmm(h.transpose(1, 2), g), flops, device),
        _rate(lambda: torch.bmm(g.transpose(1, 2), h), flops, device),
    )
    lines.append(f"last layer {k} x ({batch}x{d_in})({d_in}x{d_out}): forward {fwd / 1e9:.0f}, transposed "
                 f"{fwd_t / 1e9:.0f} GFLOP/s (x{fwd_t / fwd:.2f}); weight gradient {wg / 1e9:.0f}, transposed "
                 f"{wg_t / 1e9:.0f} GFLOP/s (x{wg_t / wg:.2f})")  # fmt: skip
    rows = max(256, eval_rows // k)
    x = torch.randn(rows, dims[0], device=device).to(dtype)
    w = torch.randn(k, dims[0], dims[1], device=device).to(dtype)
    wide_w = w.transpose(0, 1).reshape(dims[0], -1)
    flops = 2 * k * rows * dims[0] * dims[1]
    bmm = _rate(lambda: torch.bmm(x.unsqueeze(0).expand(k, *x.shape), w), flops, device)
    wide = _rate(lambda: x @ wide_w, flops, device)
    lines.append(f"evaluation's first layer, {k} models x ({rows}x{dims[0]})({dims[0]}x{dims[1]}): bmm "
                 f"{bmm / 1e9:.0f}, wide {wide / 1e9:.0f} GFLOP/s (x{wide / bmm:.2f})")  # fmt: skip
    return lines


def engine_round(learner: NeuralLearner, layout: Layout, runs, steps: int) -> tuple[float, float, np.ndarray]:
    """Seconds to train the group `steps` steps, seconds to evaluate it on the test split, its predictions."""
    learner.layout = layout
    sync = torch.cuda.synchronize if learner.device.type == "cuda" else lambda: None
    start = time.perf_counter()
    models = learner.fit_group(runs, steps)
    sync()
    trained = time.perf_counter() - start
    start = time.perf_counter()
    correct, _ = evaluate(models, learner.test, learner.precision, len(runs), learner.eval_rows)
    sync()
    return trained, time.perf_counter() - start, correct


def group_sizes(learner: NeuralLearner, cfg, data, sizes: list[int], steps: int, rounds: int) -> list[str]:
    """Training time per model-step at each group size K, with this kind's table layout: printable lines."""
    per_step, cfg = {}, cfg.replace(num_models=max(cfg.num_models, *sizes))
    for k in sizes:  # warm-up, untimed
        engine_round(learner, learner.layout, [(np.arange(100), 0)] * k, min(steps, 5))
    for _ in range(rounds):
        for k in sizes:
            runs = [(np.flatnonzero(j.mask), j.seed) for j in subset_jobs(cfg, data.n_train, range(k))]
            trained, _, _ = engine_round(learner, learner.layout, runs, steps)
            per_step[k] = min(per_step.get(k, np.inf), trained / (k * steps))
    base = per_step[sizes[0]]
    return [f"K = {k:3d}: {1e3 * t:6.3f} ms per model-step (x{base / t:.2f} against K = {sizes[0]})"
            for k, t in per_step.items()]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the engine runs 1 per process)")
    parser.add_argument("--models", type=int, default=8, help="K, models in lockstep (the profiles' group)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--groups", default="4,8,16", help="group sizes K to time with the table's layout ('': none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, data = recipe(
        argparse.Namespace(
            models=args.models, epochs=10, device=args.device, group_size=args.models, precision="auto",
            synthetic_cifar=False, arch=None, width=None, batch_size=None,
        )
    )  # fmt: skip
    device = resolve_device(cfg.device)
    kind = device_kind(device)
    learner = NeuralLearner(cfg, data, record_signals=False)
    table = learner.layout  # this kind's entry now; the rounds below set each layout in turn
    if learner.path != "stacked":
        raise SystemExit(f"{cfg.arch} trains on the {learner.path} path here; layouts are the stacked path's")
    dtype = torch.bfloat16 if learner.precision == "bf16" else torch.float32
    cpu = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    linears = mlp_layers(learner.make_model(0))
    dims = [linears[0].in_features] + [m.out_features for m in linears]
    layers = "-".join(map(str, dims))
    print(f"{cpu} ({kind}), {args.threads} thread(s), {learner.precision}; K = {args.models}, batch "
          f"{cfg.batch_size}, layers {layers}; LAYOUTS[{kind!r}] is now {table.name}")  # fmt: skip
    print(f"square {dtype} matmul: {matmul_rate(dtype, device, 3, 0.4) / 1e9:.0f} GFLOP/s")
    for line in products(args.models, cfg.batch_size, learner.eval_rows, dims, dtype, device):
        print("  " + line)
    runs = [(np.flatnonzero(j.mask), j.seed) for j in subset_jobs(cfg, data.n_train, range(args.models))]
    candidates = (PLAIN, OTHER, NARROW)
    best = {layout.name: [np.inf, np.inf] for layout in candidates}
    predictions = {}
    for layout in candidates:  # warm-up, untimed: the first round of a size allocates its buffers
        engine_round(learner, layout, runs, min(args.steps, 5))
    for r in range(args.rounds):
        for layout in candidates if r % 2 == 0 else candidates[::-1]:
            trained, evaluated, predictions[layout.name] = engine_round(learner, layout, runs, args.steps)
            best[layout.name] = [min(best[layout.name][0], trained), min(best[layout.name][1], evaluated)]
            print(f"  round {r + 1}: {layout.name:16s} {args.steps} steps {trained:6.2f} s, "
                  f"evaluation {evaluated:5.2f} s")  # fmt: skip
    learner.layout = table
    sizes = [int(k) for k in args.groups.split(",") if k.strip()]
    if sizes:
        print(f"group sizes, {table.name}, {args.steps} steps, best of {args.rounds}:")
        for line in group_sizes(learner, cfg, data, sizes, args.steps, args.rounds):
            print("  " + line)
    (t_plain, e_plain), (t_other, e_other) = best[PLAIN.name], best[OTHER.name]
    (t_narrow, e_narrow) = best[NARROW.name]
    train_x, eval_x, last_x, last_eval_x = t_plain / t_other, e_plain / e_other, t_plain / t_narrow, e_plain / e_narrow
    same = min(float((predictions[PLAIN.name] == predictions[o.name]).mean()) for o in (OTHER, NARROW))
    print(f"contiguous/wide against view/bmm: training step x{train_x:.2f}, evaluation x{eval_x:.2f}; the last "
          f"layer transposed: training step x{last_x:.2f}, evaluation x{last_eval_x:.2f} (above 1: faster); test "
          f"predictions shared {same:.4f}")  # fmt: skip
    chosen = Layout(
        "contiguous" if train_x >= WINS else "view",
        "wide" if eval_x >= WINS else "bmm",
        "",
        "transposed" if last_x >= WINS else "plain",
    )
    commit = git_commit()
    enough = args.steps >= ENOUGH["steps"] and args.rounds >= ENOUGH["rounds"]
    measured = (
        ("" if enough else f"TOO SHORT TO CHOOSE ({args.steps} steps, {args.rounds} round(s)): ")
        + f"python benchmarks/layouts.py, {cpu}, {args.threads} thread(s), {datetime.date.today()}, commit {commit}: "
        f"training step x{train_x:.2f} and evaluation x{eval_x:.2f} with contiguous/wide against view/bmm, "
        f"x{last_x:.2f} and x{last_eval_x:.2f} with the last layer transposed"
    )
    text = "\n".join(f'        "{part}"' for part in textwrap.wrap(measured, 100, drop_whitespace=False))
    if enough:
        print("\nthe entry these figures choose, for memlib/train/layouts.py:\n")
    else:
        print(f"\ntoo short to choose: rerun with --steps {ENOUGH['steps']} or more and --rounds {ENOUGH['rounds']} or "
              "more before pasting an entry. Its form only:\n")  # fmt: skip
    print(f'    "{kind}": Layout(\n        "{chosen.weight_grad}",\n        "{chosen.eval_first}",\n{text},\n'
          f'        "{chosen.last}",\n    ),\n')  # fmt: skip
    print(f"kind={kind} train_x={train_x:.2f} eval_x={eval_x:.2f} last_x={last_x:.2f} predictions_shared={same:.4f} "
          f"chosen={chosen.name} table={table.name} enough={int(enough)}")  # fmt: skip


if __name__ == "__main__":
    main()
