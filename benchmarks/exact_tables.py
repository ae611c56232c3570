"""How fast the exact test's tables are built, against the plain formulation, side by side in one run.

    python benchmarks/exact_tables.py [--runs 179,77 717,307 1433,614] [--repeats 2]

A table holds the exact test's p-values for every outcome of n_in runs in and n_out out
(memlib.analysis.exact.exceedance_table). Each point's p-value is the largest, over a grid of the nuisance
proportion, of a running sum down the sample points in order of their difference. `plain` is that sum written
as one cumulative sum over all the points, a few grid values at a time (memlib's before df6c313); `memlib`
is exceedance_table itself. For each (n_in, n_out) the script prints both times (the better of `--repeats`),
their ratio, and whether the two tables are equal to the bit. A split half of a 4,096-model balanced store
has about 1,433 runs in and 614 out per example, and stage 2 builds one table per distinct pair of counts.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memlib.analysis.exact import GRID, exceedance_table, ordered_points  # noqa: E402


def plain_table(n_in: int, n_out: int, delta: float, grid: int = GRID, rows_at_once: int = 16) -> np.ndarray:
    """The same table by one cumulative sum over all the sample points per grid value, rows_at_once at a time."""
    y_in, y_out = np.arange(n_in + 1), np.arange(n_out + 1)
    table = np.ones((n_in + 1, n_out + 1))
    rows, cols, tail_end = ordered_points(n_in, n_out, delta)  # the same points in the same order: only the sums differ
    best = np.zeros(len(rows))
    q = np.linspace(0.0, 1.0 - delta, grid)
    for s in range(0, grid, rows_at_once):
        qs = q[s : s + rows_at_once, None]
        p_in = stats.binom.pmf(y_in[None, :], n_in, np.minimum(qs + delta, 1.0))
        p_out = stats.binom.pmf(y_out[None, :], n_out, qs)
        tail = np.cumsum(p_in[:, rows] * p_out[:, cols], axis=1)[:, tail_end]
        np.maximum(best, tail.max(axis=0), out=best)
    table[rows, cols] = np.minimum(best, 1.0)
    return table


def best_time(build, repeats: int) -> tuple[float, np.ndarray]:
    """The least of `repeats` timings of build() and its last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = build()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    """Print one row per (n_in, n_out): the plain and memlib's seconds, their ratio and whether they agree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["179,77", "717,307", "1433,614"], help="n_in,n_out pairs")
    parser.add_argument("--delta", type=float, default=0.15)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"{'n_in':>6} {'n_out':>6} {'plain s':>9} {'memlib s':>9} {'ratio':>7}  equal to the bit")
    for text in args.runs:
        n_in, n_out = (int(v) for v in text.split(","))
        t_plain, a = best_time(functools.partial(plain_table, n_in, n_out, args.delta), args.repeats)
        t_memlib, b = best_time(functools.partial(exceedance_table.__wrapped__, n_in, n_out, args.delta), args.repeats)
        same = np.array_equal(a, b)
        print(f"{n_in:>6} {n_out:>6} {t_plain:>9.3f} {t_memlib:>9.3f} {t_plain / t_memlib:>7.2f}  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
