"""Estimation at paper scale: memorization, influence and pair selection on synthetic runs, timed and checked.

    python benchmarks/estimate_scale.py [--n 50000] [--m 10000] [--T 4000] [--mem-frac 0.25] [--export DIR]

Synthetic runs with the paper's shape (CIFAR-100: n = 50,000 train, m = 10,000 test, T = 4,000 models): masks
drawn at ratio 0.7, and 0/1 outcomes with planted structure, so that a fraction `--mem-frac` of the train
examples are memorized (right far more often when trained on) and some test examples have a planted source
among them (right more often when their source was trained on, and of its label). Times (a) memorization with
standard errors, (b) influence with standard errors for every candidate row (mem >= 0.25), (c) pair selection
(infl >= 0.15, same label); then checks (a) and (b) exactly against a dense float64 reference written from the
definition (numpy means and variances over the runs in and out) on a slice of rows, and the pairs on that slice.
Peak memory is the process's peak resident set (ru_maxrss), data and all, taken right after the estimation.
--export DIR also writes the full train x test influence matrix and its standard errors to DIR (float32 .npy
files, 4 GB at paper scale), timed, with the peak resident set after it.
Last line: estimate_seconds=<s> peak_gb=<g> max_abs_diff=<d> n=<n> m=<m> T=<T>.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from memlib.analysis.estimation import (
    count_dtype,
    count_operand,
    count_product,
    export_influence,
    influence_chunks,
    memorization,
    select_pairs,
)

MEM_THRESHOLD, INFL_THRESHOLD, CLASSES = 0.25, 0.15, 100


def synthetic_runs(n: int, m: int, runs: int, mem_frac: float, seed: int = 0, block: int = 250) -> dict:
    """Masks at ratio 0.7 and 0/1 outcomes with planted memorized train examples and planted influence sources."""
    rng = np.random.default_rng(seed)
    tr_labels = rng.integers(0, CLASSES, n)
    memorized = rng.random(n) < mem_frac
    p_in = np.where(memorized, 0.97, 0.95).astype(np.float32)  # right when trained on
    p_out = np.where(memorized, rng.uniform(0.1, 0.6, n), 0.9).astype(np.float32)  # right when not
    sources = np.full(m, -1)
    has_source = rng.random(m) < 0.3
    pool = np.flatnonzero(memorized)
    if len(pool):
        sources[has_source] = rng.choice(pool, has_source.sum())
    tt_labels = np.where(sources >= 0, tr_labels[sources], rng.integers(0, CLASSES, m))
    masks = np.empty((runs, n), dtype=bool)
    train = np.empty((runs, n), dtype=bool)
    test = np.empty((runs, m), dtype=bool)
    for a in range(0, runs, block):  # a block of runs at a time, so the random numbers never take 4 bytes per entry
        b = min(a + block, runs)
        masks[a:b] = rng.random((b - a, n), dtype=np.float32) < 0.7
        train[a:b] = rng.random((b - a, n), dtype=np.float32) < np.where(masks[a:b], p_in, p_out)
        src_in = masks[a:b][:, np.maximum(sources, 0)] & (sources >= 0)
        p_test = np.where(sources >= 0, np.where(src_in, 0.8, 0.3), 0.7).astype(np.float32)
        test[a:b] = rng.random((b - a, m), dtype=np.float32) < p_test
    return dict(masks=masks, train=train, test=test, tr_labels=tr_labels, tt_labels=tt_labels)


def reference(mask: np.ndarray, outcomes: np.ndarray, block: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The definition, for one train example and columns of outcomes, in float64: mean over the runs it was in
    minus mean over the runs it was out, and sqrt(var_in / n_in + var_out / n_out) with ddof=1 variances."""
    value, se = [], []
    for c in range(0, outcomes.shape[1], block):
        inside = outcomes[mask, c : c + block].astype(np.float64)
        outside = outcomes[~mask, c : c + block].astype(np.float64)
        value.append(inside.mean(0) - outside.mean(0))
        se.append(np.sqrt(inside.var(0, ddof=1) / len(inside) + outside.var(0, ddof=1) / len(outside)))
    return np.concatenate(value), np.concatenate(se)


def timed(chunks: Iterator, clock: list[float]) -> Iterator:
    """The chunks, adding the seconds spent producing them to clock[0]."""
    while True:
        start = time.perf_counter()
        item = next(chunks, None)
        clock[0] += time.perf_counter() - start
        if item is None:
            return
        yield item


def peak_gb() -> float:
    """Peak resident set of this process so far, in GB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def cpu_name() -> str:
    """The CPU's model name (lscpu's), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


def count_products(masks: np.ndarray, test: np.ndarray, rows: int, repeats: int = 2) -> None:
    """Times the count product of one influence chunk (rows x T x m) in int8 and in float32, side by side in one
    run, and says which this CPU uses (count_dtype): on a CPU without int8 dot products int8 runs far slower."""
    a, b = masks[:, :rows], test
    times = {}
    for dtype in (torch.int8, torch.float32):
        x, y = count_operand(a, dtype).T, count_operand(b, dtype)
        count_product(x, y)  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            count_product(x, y)
        times[dtype] = (time.perf_counter() - t) / repeats
    ops = 2 * rows * a.shape[0] * b.shape[1]
    i8, f32 = times[torch.int8], times[torch.float32]
    print(
        f"count product {rows} x {a.shape[0]} x {b.shape[1]}: int8 {i8:.3f} s ({ops / i8 / 1e9:.0f} GOP/s), "
        f"float32 {f32:.3f} s ({ops / f32 / 1e9:.0f} GFLOP/s), int8/float32 time {i8 / f32:.2f}; "
        f"this CPU uses {str(count_dtype(a.shape[0])).replace('torch.', '')}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="train examples")
    ap.add_argument("--m", type=int, default=10_000, help="test examples")
    ap.add_argument("--T", type=int, default=4_000, help="models (runs)")
    ap.add_argument("--mem-frac", type=float, default=0.25, help="fraction of train examples planted as memorized")
    ap.add_argument("--chunk", type=int, default=1024, help="train rows per influence chunk")
    ap.add_argument("--check-rows", type=int, default=16, help="candidate rows checked against the reference")
    ap.add_argument("--check-mem", type=int, default=2000, help="train examples whose mem is checked")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", type=Path, help="also write the full influence matrix and its se here")
    args = ap.parse_args(argv)
    n, m, runs = args.n, args.m, args.T

    print(f"cpu: {cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    data = synthetic_runs(n, m, runs, args.mem_frac, args.seed)
    masks, train, test = data["masks"], data["train"], data["test"]
    size = sum(a.nbytes for a in (masks, train, test)) / 1e9
    print(f"synthetic runs: {time.perf_counter() - start:.1f} s, {size:.2f} GB")
    print(f"resident before estimation: {peak_gb():.2f} GB (python, torch, the runs)")
    count_products(masks, test, min(256, n))

    # (a) memorization, (b) influence for every candidate row, (c) pair selection; (b) and (c) interleave by chunk.
    t0 = time.perf_counter()
    mem = memorization(masks, train)
    t_mem = time.perf_counter() - t0
    cand = np.flatnonzero(mem.value >= MEM_THRESHOLD)
    check = cand[: args.check_rows]
    kept: dict[str, np.ndarray] = {}
    clock = [0.0]

    def chunks() -> Iterator:
        for rows, d in influence_chunks(masks, test, cand, chunk=args.chunk):
            if not kept:
                kept.update(rows=rows[: len(check)], value=d.value[: len(check)].copy(), se=d.se[: len(check)].copy())
                kept.update(n_in=d.n_in[: len(check), 0].copy())
            yield rows, d

    t1 = time.perf_counter()
    pairs = select_pairs(timed(chunks(), clock), mem.value, data["tr_labels"], data["tt_labels"], INFL_THRESHOLD)
    t_pairs_total = time.perf_counter() - t1
    total = time.perf_counter() - t0
    peak = peak_gb()
    t_infl, t_select = clock[0], t_pairs_total - clock[0]
    print(f"(a) memorization with se, {n} train examples: {t_mem:.2f} s")
    print(f"(b) influence with se, {len(cand)} candidate rows x {m} test: {t_infl:.2f} s")
    print(f"(c) pair selection: {t_select:.2f} s, {len(pairs)} pairs, {len(set(pairs.tr_pos.tolist()))} train examples")
    print(f"estimation: {total:.2f} s; peak resident {peak:.2f} GB")

    # The reference, from the definition, on a slice.
    t2 = time.perf_counter()
    cols = np.union1d(np.arange(min(args.check_mem, n)), check)
    ref_mem = np.array([reference(masks[:, i], train[:, [i]]) for i in cols])[:, :, 0]
    diffs = [np.abs(mem.value[cols] - ref_mem[:, 0]).max(initial=0)]
    se_diffs = [np.abs(mem.se[cols] - ref_mem[:, 1]).max(initial=0)]
    counts_ok = np.array_equal(mem.n_in[cols], masks[:, cols].sum(0))
    assert np.array_equal(kept.get("rows", check), check)
    ref_pairs, got_pairs = set(), {(i, j) for i, j in pairs.keys() if i in set(check.tolist())}
    for k, i in enumerate(check):
        value, se = reference(masks[:, i], test)
        diffs.append(np.abs(kept["value"][k] - value).max())
        se_diffs.append(np.abs(kept["se"][k] - se).max())
        counts_ok &= kept["n_in"][k] == masks[:, i].sum()
        ref_mem_i = ref_mem[np.searchsorted(cols, i), 0]
        hit = (value >= INFL_THRESHOLD) & (data["tt_labels"] == data["tr_labels"][i]) & (ref_mem_i >= MEM_THRESHOLD)
        ref_pairs |= {(int(i), int(j)) for j in np.flatnonzero(hit)}
    max_abs_diff, se_diff = float(max(diffs)), float(max(se_diffs))
    pairs_ok = ref_pairs == got_pairs
    print(
        f"check against the float64 definition ({time.perf_counter() - t2:.1f} s): mem on {len(cols)} examples, "
        f"influence on {len(check)} candidate rows x {m} test: max_abs_diff {max_abs_diff:g} (values), "
        f"{se_diff:.1e} (standard errors), counts equal {bool(counts_ok)}, "
        f"pairs on those rows equal {pairs_ok} ({len(ref_pairs)})"
    )
    if args.export is not None:
        t3 = time.perf_counter()
        value_path, se_path = args.export / "influence.npy", args.export / "influence_se.npy"
        export_influence(masks, test, value_path, se_path, chunk=args.chunk)
        written = np.load(value_path, mmap_mode="r")
        same = np.array_equal(written[check], kept["value"].astype(np.float32))
        print(
            f"export of the full {n} x {m} matrix and its se (float32): {time.perf_counter() - t3:.1f} s, "
            f"{(value_path.stat().st_size + se_path.stat().st_size) / 1e9:.1f} GB on disk, peak resident "
            f"{peak_gb():.2f} GB, checked rows equal {same}"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(f"estimate_seconds={total:.2f} peak_gb={peak:.2f} max_abs_diff={max_abs_diff:g} n={n} m={m} T={runs}")
    return 0 if pairs_ok and counts_ok and se_diff < 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
