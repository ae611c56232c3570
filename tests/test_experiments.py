"""Stage 3: the removal conditions, paired seeds, confidence intervals, and retraining with an exact learner."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_dataset
from scipy import stats

import memlib
from memlib.analysis.estimation import Estimates, MaskedDiff, Pairs
from memlib.stages.utility import conditions, marginal_utility, mean_ci, retrain_jobs


def fake_estimates(mem: np.ndarray, pair_sources=(), data=None) -> Estimates:
    n = len(mem)
    src = np.asarray(pair_sources, dtype=np.int64)
    tt = np.arange(len(src), dtype=np.int64)
    return Estimates(
        mem=MaskedDiff(mem, np.zeros(n), np.full(n, 30.0), np.full(n, 10.0)),
        pairs=Pairs(src, tt, np.full(len(src), 0.5), np.zeros(len(src)), mem[src]),
        tr_labels=np.zeros(n, dtype=np.int64),
        tt_labels=np.zeros(max(len(src), 1), dtype=np.int64),
        tr_index=np.arange(n),
        tt_index=np.arange(max(len(src), 1)),
        num_models=40,
    )


def test_mean_ci_matches_the_t_interval():
    mean, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0]))
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2 - half, 2 + half))
    assert np.isnan(mean_ci(np.array([1.0]))[1])


def test_conditions_remove_what_they_say(smoke):
    mem = np.array([0.0, 0.1, 0.3, 0.6, 0.9] * 20)
    cfg = smoke.replace(utility_thresholds=[0.25, 0.5, 0.95], retrain_models=3)
    conds = conditions(cfg, fake_estimates(mem, pair_sources=[3, 3, 8]))
    names = [c.name for c in conds]
    assert names[0] == "full data"
    assert "mem >= 0.95" not in names, "a threshold that removes nothing is the full-data condition"
    by = {c.name: c for c in conds}
    assert by["mem >= 0.25"].n_removed == 60 and by["mem >= 0.5"].n_removed == 40
    np.testing.assert_array_equal(by["mem >= 0.5"].removed, np.flatnonzero(mem >= 0.5))
    assert by["train side of high-influence pairs"].n_removed == 2  # distinct sources
    jobs, table = retrain_jobs(cfg, conds, len(mem))
    assert len(jobs) == 3 * len(conds)
    for job, row in zip(jobs, table.itertuples()):
        assert (~job.mask).sum() == row.n_removed
    seeds = table.assign(seed=[j.seed for j in jobs]).groupby("repeat")["seed"].nunique()
    assert (seeds == 1).all(), "the r-th model of every condition shares its seed"
    random_sets = [frozenset(np.flatnonzero(~j.mask)) for j, k in zip(jobs, table["kind"]) if k == "random"]
    assert len(set(random_sets)) == len(random_sets), "each random removal is a fresh draw"


def test_retraining_with_exact_learner_measures_the_right_accuracy(tmp_path):
    data = tiny_dataset(n_train=60, n_test=30)
    mem = np.zeros(60)
    mem[:12] = 0.8
    est = fake_estimates(mem, pair_sources=[0, 1], data=data)
    est.tr_labels, est.tt_labels = data.y_train, data.y_test
    est.tr_index, est.tt_index = data.train_index, data.test_index
    est.pairs = Pairs(np.array([0, 1]), np.array([4, 9]), np.full(2, 0.5), np.zeros(2), mem[[0, 1]])
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path), utility_thresholds=[0.5], retrain_models=2)
    learner = memlib.NearestNeighbourLearner(data)
    res = marginal_utility(cfg, data, est, learner=learner)
    keep = np.ones(60, dtype=bool)
    keep[:12] = False
    _, pred = learner.predict(np.flatnonzero(keep))
    want = (pred == data.y_test).mean()
    got = res.runs.loc[res.runs["condition"] == "mem >= 0.5", "test_acc"]
    np.testing.assert_allclose(got, want)  # 1-NN does not depend on the seed
    _, full_pred = learner.predict(np.arange(60))
    full = res.table.set_index("kind").loc["full"]
    assert full["test_acc"] == pytest.approx((full_pred == data.y_test).mean())
    assert full["pair_test_acc"] == pytest.approx((full_pred == data.y_test)[[4, 9]].mean())
    assert res.table.set_index("kind").loc["mem", "drop"] == pytest.approx(full["test_acc"] - want)
    # resumable like stage 1: a second call trains nothing and gives the same table
    again = marginal_utility(cfg, data, est, learner=None)
    np.testing.assert_allclose(again.table["test_acc"], res.table["test_acc"])
