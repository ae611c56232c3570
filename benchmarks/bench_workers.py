"""How to spend a CPU's cores on many small models: side-by-side throughput of three schemes, in one run.

    python benchmarks/bench_workers.py [--models 96] [--profile digits]

(a) one process using every core for each model in turn; (b) one process per core, one thread each,
through memlib's store (what the CPU profiles use: `workers`), end to end with the workers' start-up and in
steady state (workers / mean seconds per model); (c) as (a) but evaluating in small batches of 128.
Prints models per second and the ratios to (a). Machines are noisy: compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from memlib.training import NeuralLearner

import memlib
from memlib.store import open_subset_store, run_jobs, subset_jobs


def scheme_a(cfg, data, jobs, eval_batch=4096) -> float:
    torch.set_num_threads(os.cpu_count() or 1)
    learner = NeuralLearner(cfg, data, device="cpu", eval_batch=eval_batch)
    start = time.perf_counter()
    for job in jobs:
        learner.fit_eval(np.flatnonzero(job.mask), job.seed)
    return len(jobs) / (time.perf_counter() - start)


def scheme_b(cfg, data, jobs) -> tuple[float, float]:
    """End to end (start-up included), and steady state: workers / mean seconds per model in a worker."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.replace(results_dir=tmp, workers=os.cpu_count() or 1)
        store = open_subset_store(cfg, data)
        start = time.perf_counter()
        run_jobs(store, jobs, cfg, data, workers=cfg.workers, desc="(b) workers")
        end_to_end = len(jobs) / (time.perf_counter() - start)
        steady = cfg.workers / float(np.asarray(store["seconds"])[: len(jobs)].mean())
        return end_to_end, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=96)
    parser.add_argument("--profile", default="digits")
    args = parser.parse_args()
    cfg = memlib.load_profile(args.profile).replace(device="cpu")
    data = memlib.load_dataset(cfg)
    jobs = subset_jobs(cfg, data.n_train, range(args.models))
    print(f"{args.models} models of profile '{cfg.profile}' ({cfg.arch}, {cfg.epochs} epochs), {os.cpu_count()} cores")
    b_end, b_steady = scheme_b(cfg, data, jobs)
    rates = {
        "(a) one process, all cores per model": scheme_a(cfg, data, jobs),
        "(b) one process per core, end to end": b_end,
        "(b) one process per core, steady state": b_steady,
        "(c) as (a), evaluation in batches of 128": scheme_a(cfg, data, jobs, eval_batch=128),
    }
    base = rates["(a) one process, all cores per model"]
    for name, rate in rates.items():
        print(f"{name:<45} {rate:7.2f} models/s   x{rate / base:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
