"""Stores remember their data, `check` validates every stage's store, and stage 3 reuses unchanged retrained models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import snapshot, tiny_dataset
from test_experiments import fake_estimates

import memlib
from memlib.analysis.estimation import Pairs
from memlib.runs.store import StoreError
from memlib.stages.utility import marginal_utility, retrain_store_path


class CountingLearner(memlib.NearestNeighbourLearner):
    """The exact 1-NN learner, counting the models it trains."""

    def __init__(self, data):
        super().__init__(data)
        self.trained = 0

    def fit_eval(self, train_idx, seed):
        self.trained += 1
        return super().fit_eval(train_idx, seed)


def shuffled_labels(data: memlib.Dataset) -> memlib.Dataset:
    y = data.y_train.copy()
    y[:2] = y[[1, 0]] if y[0] != y[1] else (y[:2] + 1) % data.num_classes
    return dataclasses.replace(data, y_train=y)


def test_stage1_store_refuses_other_data_and_says_what_changed(smoke):
    data = tiny_dataset()
    memlib.train_subsets(smoke, data, learner=memlib.NearestNeighbourLearner(data), rows=range(8))
    assert memlib.check(smoke, data)["models already finished"] == 8
    for other, changed in (
        (shuffled_labels(data), "train labels changed"),
        (dataclasses.replace(data, x_test=data.x_test[::-1].copy()), "test images changed"),
    ):
        before = snapshot(smoke.out_dir)
        with pytest.raises(StoreError, match=f"trained on other data: {changed}"):
            memlib.check(smoke, other)
        with pytest.raises(StoreError, match="Point the profile back at the data"):
            memlib.train_subsets(smoke, other, learner=memlib.NearestNeighbourLearner(other))
        assert snapshot(smoke.out_dir) == before, "nothing written"


def test_a_store_does_not_mix_precisions_when_auto_resolves_otherwise(smoke, monkeypatch):
    import memlib.runs.subsets

    data = tiny_dataset()
    memlib.train_subsets(smoke, data, learner=memlib.NearestNeighbourLearner(data), rows=range(4))
    made_in = memlib.runs.subsets.stored_meta(smoke.out_dir / "store")["precision"]
    other = "fp32" if made_in == "bf16" else "bf16"
    monkeypatch.setattr(memlib.runs.subsets, "resolve_precision", lambda name, device: other)  # another machine
    before = snapshot(smoke.out_dir)
    with pytest.raises(
        StoreError, match=f"trained in {made_in}, but on this machine precision: auto trains in {other}"
    ):
        memlib.train_subsets(smoke, data, learner=memlib.NearestNeighbourLearner(data), rows=range(4, 8))
    assert snapshot(smoke.out_dir) == before, "nothing written"
    assert memlib.check(smoke, data)["models already finished"] == 4  # reading it needs no particular precision


def test_data_fingerprint_is_computed_once_per_load_and_sees_every_part(digits):
    fp = digits.fingerprint
    assert digits.fingerprint is fp, "cached on the loaded dataset"
    assert set(fp) >= {"train labels", "train images", "test labels", "test images"}
    assert memlib.load_dataset(memlib.load_profile("smoke")).fingerprint == fp, "the same data, the same hashes"
    assert shuffled_labels(digits).fingerprint["train labels"] != fp["train labels"]


def _pair_estimates(data, mem):
    est = fake_estimates(mem, data=data)
    est.tr_labels, est.tt_labels = data.y_train, data.y_test
    est.tr_index, est.tt_index = data.train_index, data.test_index
    est.pairs = Pairs(np.array([0, 1]), np.array([4, 9]), np.full(2, 0.5), np.zeros(2), mem[[0, 1]])
    return est


def test_changing_thresholds_retrains_only_the_new_conditions(tmp_path):
    data = tiny_dataset(n_train=60, n_test=30)
    mem = np.linspace(0, 0.9, 60)
    est = _pair_estimates(data, mem)
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path), utility_thresholds=[0.5], retrain_models=2)
    first = CountingLearner(data)
    res1 = marginal_utility(cfg, data, est, learner=first)
    assert first.trained == 2 * 5  # full, mem >= 0.5, its random twin, pairs, their random twin
    more = cfg.replace(utility_thresholds=[0.5, 0.75], retrain_models=3)
    second = CountingLearner(data)
    res2 = marginal_utility(more, data, est, learner=second)
    assert second.trained == 3 * 7 - 2 * 5, "only the new conditions and the third repeat train"
    shared = res1.runs.merge(res2.runs, on=["condition", "repeat"], suffixes=("_1", "_2"))
    assert len(shared) == 10
    np.testing.assert_array_equal(shared["test_acc_1"], shared["test_acc_2"])
    assert not list(tmp_path.rglob("*.prev")) and not list(tmp_path.rglob("*.next")), "the swap leaves nothing"
    third = CountingLearner(data)
    marginal_utility(cfg, data, est, learner=third)  # back to the first thresholds: all kept
    assert third.trained == 0


def test_check_validates_the_retrain_store_before_anything_runs(tmp_path):
    data = tiny_dataset(n_train=60, n_test=30)
    est = _pair_estimates(data, np.linspace(0, 0.9, 60))
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path), utility_thresholds=[0.5], retrain_models=2)
    marginal_utility(cfg, data, est, learner=memlib.NearestNeighbourLearner(data))
    assert memlib.check(cfg, data)["retrained models already finished (stage 3)"] == 10
    assert memlib.check(cfg.replace(utility_thresholds=[0.3, 0.5]), data), "new thresholds are fine: jobs are keyed"
    before = snapshot(retrain_store_path(cfg))
    with pytest.raises(StoreError, match=r"retrain store .* another training config \(epochs: 3 -> 4\)"):
        memlib.check(cfg.replace(epochs=4), data)
    with pytest.raises(StoreError, match="retrain.*trained on other data: train labels changed"):
        memlib.check(cfg, shuffled_labels(data))
    assert snapshot(retrain_store_path(cfg)) == before


def test_the_training_overview_counts_only_the_finished_models(tmp_path):
    """Stage 1's overview of a store that is not finished (interrupted, or filled by other machines) reads the
    finished rows only. Fault caught: every row read, when an unfinished row's arrays are still zeros: 3 perfect
    models of 40 showed a test accuracy of 0.075, and their fit NaN (a division by the unfinished rows' empty masks)."""
    from memlib.stages.train import training_overview
    from memlib.train.design import subset_masks

    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path))
    data = memlib.load_dataset(cfg)
    store = memlib.open_subset_store(cfg, data)
    masks = subset_masks(cfg, data.n_train)
    for r in range(3):
        row = {"masks": masks[r], "train_correct": masks[r].copy(), "test_correct": np.ones(data.n_test, dtype=bool)}
        store.write_row(r, {**row, "seconds": np.float32(2.0)})
    rows = training_overview(cfg, store)
    assert rows["models finished"] == f"3 of {cfg.num_models}"
    assert rows["test accuracy (mean ± sd over models)"] == "1.000 ± 0.000"
    assert rows["accuracy on own training subset (mean ± sd over models)"] == "1.000 ± 0.000"
    assert rows["seconds per model (mean, per worker)"] == "2.000"
    assert (cfg.out_dir / "figures" / "training_overview.png").exists()
