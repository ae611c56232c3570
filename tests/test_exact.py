"""The exact test of memlib.analysis.exact against answers known in closed form, a brute-force enumeration, its
exact size at the boundary of the null, and null data on which a z-test keeps false pairs."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from scipy import stats

import memlib.analysis.exact as exact
from memlib.analysis.exact import exceedance_p_exact, exceedance_table
from memlib.analysis.validation import fdr_pairs

# the selection memlib made before the exact test: the planted fault the null-data test catches
_spec = importlib.util.spec_from_file_location("null_pairs", ROOT / "benchmarks" / "null_pairs.py")
null_pairs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(null_pairs)
_spec = importlib.util.spec_from_file_location("exact_tables", ROOT / "benchmarks" / "exact_tables.py")
exact_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(exact_tables)


def test_the_most_extreme_outcome_has_its_closed_form_p_value():
    # (x_in, x_out) = (n_in, 0) is the only point with difference 1: its tail is (q + d)^a (1 - q)^b, largest at
    # q* = (a - b d) / (a + b)
    a, b, d = 20, 9, 0.15
    q = (a - b * d) / (a + b)
    assert exceedance_table(a, b, d)[a, 0] == pytest.approx((q + d) ** a * (1 - q) ** b, rel=1e-4)


def _brute_force(n_in: int, n_out: int, d: float, grid: int) -> np.ndarray:
    """The same p-values by plain loops over every sample point and a finer grid (an independent implementation)."""
    points = [(x, y) for x in range(n_in + 1) for y in range(n_out + 1)]
    out = np.ones((n_in + 1, n_out + 1))
    qs = np.linspace(0, 1 - d, grid)
    for x, y in points:
        if x / n_in - y / n_out <= d + 1e-12:
            continue
        tail_points = [(u, v) for u, v in points if u * n_out - v * n_in >= x * n_out - y * n_in]
        best = 0.0
        for q in qs:
            pr = sum(
                math.comb(n_in, u)
                * (q + d) ** u
                * (1 - q - d) ** (n_in - u)
                * math.comb(n_out, v)
                * q**v
                * (1 - q) ** (n_out - v)
                for u, v in tail_points
            )
            best = max(best, pr)
        out[x, y] = min(best, 1.0)
    return out


def test_the_table_matches_a_brute_force_enumeration():
    n_in, n_out, d = 7, 4, 0.15
    exact = _brute_force(n_in, n_out, d, grid=2001)
    table = exceedance_table(n_in, n_out, d)
    np.testing.assert_allclose(table, exact, rtol=2e-3, atol=1e-12)
    assert (table <= exact * (1 + 1e-9) + 1e-15).all(), "a coarser grid can only miss the supremum from below"


@pytest.mark.parametrize("n_in, n_out", [(22, 10), (45, 19), (179, 77)])
def test_its_size_never_exceeds_the_level_anywhere_on_the_null_boundary(n_in, n_out):
    # P(p <= alpha) computed exactly (a sum over the sample space, no simulation) at p_in = p_out + d
    d = 0.15
    table = exceedance_table(n_in, n_out, d)
    for q in np.linspace(0, 1 - d, 37):
        joint = np.outer(
            stats.binom.pmf(np.arange(n_in + 1), n_in, q + d), stats.binom.pmf(np.arange(n_out + 1), n_out, q)
        )
        for alpha in (1e-6, 1e-3, 0.01, 0.05, 0.2):
            assert joint[table <= alpha].sum() <= alpha * (1 + 1e-3), (q, alpha)


def test_chunked_running_sums_equal_one_long_sum_to_the_bit():
    # the tails are summed a chunk of points at a time, each chunk carrying on from the last: the same additions
    # in the same order as one cumulative sum over all the points (3.5 chunks here, so the carries matter)
    rng = np.random.default_rng(0)
    pmf_in, pmf_out = rng.random((40, 9)) / 40, rng.random((30, 9)) / 30
    n = int(3.5 * exact._POINTS)
    rows, cols = rng.integers(0, 40, n), rng.integers(0, 30, n)
    want = np.cumsum(pmf_in[rows] * pmf_out[cols], axis=0).max(axis=1)
    got = exact._largest_running_sums(*(torch.from_numpy(a) for a in (pmf_in, pmf_out, rows, cols)))
    np.testing.assert_array_equal(got, want)


def test_the_table_equals_the_plain_formulation_to_the_bit(capsys):
    # 14,000 sample points above the margin: 55 chunks of running sums against one cumulative sum per grid value
    np.testing.assert_array_equal(exceedance_table(179, 77, 0.15), exact_tables.plain_table(179, 77, 0.15))
    assert exact_tables.main(["--runs", "22,10", "--repeats", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("True")


def test_p_values_are_looked_up_per_pair_of_run_counts():
    p = exceedance_p_exact([5, 5, 0], [5, 6, 5], [0, 0, 3], [3, 3, 3], 0.15)
    assert p[0] == exceedance_table(5, 3, 0.15)[5, 0] and p[1] == exceedance_table(6, 3, 0.15)[5, 0]
    assert p[2] == 1.0, "a difference below the margin is never evidence for it"
    with pytest.raises(ValueError, match="runs both in and out"):
        exceedance_table(0, 3, 0.15)


@pytest.mark.parametrize("runs", [32, 64, 256])
def test_on_null_data_the_controlled_selection_keeps_no_false_pair_at_any_number_of_runs(runs):
    # Outcomes drawn independently of the masks (as when each model's test outcomes are shuffled to another model's
    # mask): no train example influences any test example, so every selected pair is false and FDR control at 5%
    # allows a selection only in 5% of such studies. Most test examples are easy, as for a trained classifier, so
    # the held-out runs often get one right every time and a z-test's standard error collapses.
    rng = np.random.default_rng(runs)
    n_train, n_test = 300, 3000
    masks = rng.random((runs, n_train)) < 0.7
    test = rng.random((runs, n_test)) < rng.beta(8, 1, size=n_test)
    tr_labels, tt_labels = rng.integers(0, 2, n_train), rng.integers(0, 2, n_test)
    mem = np.ones(n_train)
    pairs, _, tested = fdr_pairs(masks, test, mem, tr_labels, tt_labels, 0.15, 0.25, 0.05)
    assert tested > 400_000 and len(pairs) == 0
    if runs == 32:
        assert null_pairs.z_test_pairs(masks, test, mem, tr_labels, tt_labels, 0.15, 0.25, 0.05) > 0, "z keeps noise"


def test_planted_influence_is_found_at_a_few_dozen_runs():
    rng = np.random.default_rng(3)
    runs, n_train, n_test = 48, 200, 2000
    masks = rng.random((runs, n_train)) < 0.7
    test = rng.random((runs, n_test)) < rng.beta(8, 1, size=n_test)
    test[:, :5] = masks[:, :5]  # train i decides test i, for i < 5: influence 1
    labels = np.zeros(n_train, dtype=np.int64), np.zeros(n_test, dtype=np.int64)
    pairs, p, _ = fdr_pairs(masks, test, np.ones(n_train), *labels, 0.15, 0.25, 0.05)
    assert {(i, i) for i in range(5)} <= pairs.keys() and (p < 1e-6).all()
    assert len(pairs) == 5
