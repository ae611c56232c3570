"""An exact test that a difference of two binomial proportions exceeds a margin, for pairs counted over runs.

An influence estimate is a difference of two proportions: x_in of the n_in runs that trained on a train example
got a test example right, x_out of the n_out runs that did not. The null hypothesis of a high-influence pair's
test is H0: p_in - p_out <= delta. A z-test takes its standard error from the runs themselves, which with a
handful of held-out runs (or a test example every one of them got right) is far too small, and a selection over
millions of candidate pairs then keeps pure noise. This test trusts no standard error: its p-value is the
largest probability, over every pair of proportions that H0 allows, of a difference at least as large as the one
observed (an exact unconditional test; sample points ordered by their difference of proportions, ties counted
in the tail), so P(p-value <= a) <= a under H0 at any number of runs.

For the ordering by the difference, the tail probability grows with p_in and falls with p_out, so its supremum
over H0 lies on the boundary p_in = p_out + delta, p_out in [0, 1 - delta]; it is taken over a grid of GRID
values of p_out. The p-values depend only on (x_in, n_in, x_out, n_out), so one table per (n_in, n_out) serves
every pair that shares them (with a balanced subset design, one table serves all of them).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy import stats

GRID = 401  # values of the nuisance proportion p_out at which the tail is evaluated (the supremum's grid)
_POINTS = 256  # sample points summed at once over the whole grid (256 x GRID float64: 820 kB)


@functools.lru_cache(maxsize=256)
def exceedance_table(n_in: int, n_out: int, delta: float, grid: int = GRID) -> np.ndarray:
    """p-values of H0: p_in - p_out <= delta for every outcome (x_in, x_out): an (n_in + 1, n_out + 1) array.

    Outcomes whose difference of proportions is not above delta get 1 (their p-value is at least about one half).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"an exact test needs runs both in and out, got n_in={n_in}, n_out={n_out}")
    if not 0 <= delta < 1:
        raise ValueError(f"the margin delta must lie in [0, 1), got {delta}")
    y_in, y_out = np.arange(n_in + 1), np.arange(n_out + 1)
    table = np.ones((n_in + 1, n_out + 1))
    rows, cols, tail_end = ordered_points(n_in, n_out, delta)
    if not len(rows):
        return table
    q = np.linspace(0.0, 1.0 - delta, grid)
    pmf_in = stats.binom.pmf(y_in[:, None], n_in, np.minimum(q + delta, 1.0)[None, :])  # (n_in + 1, grid)
    pmf_out = stats.binom.pmf(y_out[:, None], n_out, q[None, :])
    peak = _largest_running_sums(*(torch.from_numpy(a) for a in (pmf_in, pmf_out, rows, cols)))
    best = peak[tail_end]
    table[rows, cols] = np.minimum(best, 1.0)
    return table


def ordered_points(n_in: int, n_out: int, delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample points (x_in, x_out) whose difference of proportions is above delta, largest difference first,
    as (rows, cols), and for each the position of the last point of its tie group (where its tail ends)."""
    # the difference of proportions, scaled by n_in * n_out to an exact integer: ties compare equal
    key = np.arange(n_in + 1)[:, None] * n_out - np.arange(n_out + 1)[None, :] * n_in
    rows, cols = np.nonzero(key > delta * n_in * n_out)
    order = np.argsort(-key[rows, cols], kind="stable")
    rows, cols, k = rows[order], cols[order], key[rows, cols][order]
    last_of_tie = np.r_[np.flatnonzero(k[1:] != k[:-1]), len(k) - 1]
    return rows, cols, np.repeat(last_of_tie, np.diff(np.r_[-1, last_of_tie]))


def _largest_running_sums(pmf_in, pmf_out, rows, cols) -> np.ndarray:
    """For each point i (in the given order), max over the grid of sum_{j <= i} pmf_in[rows[j]] * pmf_out[cols[j]].

    The running sums go down the points in chunks whose rows stay in cache, every grid value at once, each chunk
    carrying on from the last one's sums: the additions happen in the same order as in one long cumulative sum.
    """
    peak, carry = torch.empty(len(rows), dtype=torch.float64), torch.zeros(pmf_in.shape[1], dtype=torch.float64)
    for s in range(0, len(rows), _POINTS):
        tail = pmf_in[rows[s : s + _POINTS]] * pmf_out[cols[s : s + _POINTS]]
        tail[0] += carry
        torch.cumsum(tail, dim=0, out=tail)
        carry = tail[-1].clone()
        peak[s : s + _POINTS] = tail.amax(dim=1)
    return peak.numpy()


def exceedance_p_exact(x_in: np.ndarray, n_in: np.ndarray, x_out: np.ndarray, n_out: np.ndarray, delta: float):
    """Exact p-values of H0: p_in - p_out <= delta for counts of successes x of n runs in and out (any shapes)."""
    x_in, n_in, x_out, n_out = np.broadcast_arrays(*(np.asarray(a, dtype=np.int64) for a in (x_in, n_in, x_out, n_out)))
    p = np.ones(x_in.shape)
    ns = np.stack([n_in.ravel(), n_out.ravel()], axis=1)
    for a, b in np.unique(ns, axis=0):
        at = (n_in == a) & (n_out == b)
        p[at] = exceedance_table(int(a), int(b), float(delta))[x_in[at], x_out[at]]
    return p
