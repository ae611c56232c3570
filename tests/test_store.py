"""The store: rows written durably, completed-mask, and clear errors for mismatched or corrupt stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

import memlib
from memlib.design import subset_mask, subset_masks
from memlib.runner import open_subset_store
from memlib.store import Store, StoreError


def make(tmp_path, fingerprint="a"):
    spec = Store.spec_of(4, {"x": ((3,), "float32"), "ok": ((5,), "bool")})
    return Store.open(tmp_path / "s", spec, {"fingerprint": fingerprint, "config": {"k": fingerprint}}), spec


def test_rows_persist_and_completed_mask(tmp_path):
    store, spec = make(tmp_path)
    assert store.pending() == [0, 1, 2, 3]
    store.write_row(2, {"x": np.array([1, 2, 3], np.float32), "ok": np.ones(5, bool)})
    again = Store.open(tmp_path / "s", spec, store.meta)
    assert again.pending() == [0, 1, 3]
    assert again.done() == 1
    np.testing.assert_array_equal(again["x"][2], [1, 2, 3])
    with pytest.raises(StoreError, match="3 of 4 rows unfinished"):
        again.require_complete()


def test_other_config_is_refused_and_names_the_difference(tmp_path):
    _, spec = make(tmp_path, "a")
    with pytest.raises(StoreError, match=r"different config \(k: 'a' -> 'b'\)"):
        Store.open(tmp_path / "s", spec, {"fingerprint": "b", "config": {"k": "b"}})


def test_other_shape_is_refused(tmp_path):
    make(tmp_path)
    spec = Store.spec_of(5, {"x": ((3,), "float32"), "ok": ((5,), "bool")})
    with pytest.raises(StoreError, match="expected"):
        Store.open(tmp_path / "s", spec, {"fingerprint": "a", "config": {"k": "a"}})


def test_truncated_array_is_reported_as_corrupt(tmp_path):
    store, spec = make(tmp_path)
    file = store.path / "x.npy"
    del store
    file.write_bytes(file.read_bytes()[:60])
    with pytest.raises(StoreError, match="corrupt"):
        Store.open(tmp_path / "s", spec, {"fingerprint": "a", "config": {"k": "a"}})


def test_unreadable_spec_is_reported(tmp_path):
    store, spec = make(tmp_path)
    (store.path / "spec.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        Store.open(tmp_path / "s", spec, store.meta)


def test_interrupted_creation_is_redone(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.npy").write_bytes(b"half")  # no spec.json: creation never finished
    store, _ = make(tmp_path)
    assert store.pending() == [0, 1, 2, 3]


def test_subset_masks_are_exact_and_seeded():
    a = subset_mask(0, 5, 100, 0.7)
    assert a.sum() == 70
    np.testing.assert_array_equal(a, subset_mask(0, 5, 100, 0.7))
    assert not np.array_equal(a, subset_mask(0, 6, 100, 0.7))
    assert not np.array_equal(a, subset_mask(1, 5, 100, 0.7))


def test_tampered_mask_in_finished_row_is_caught(smoke, digits):
    store = open_subset_store(smoke, digits)
    mask = subset_mask(smoke.seed, 0, digits.n_train, smoke.subset_ratio)
    store.write_row(0, {"masks": ~mask})
    with pytest.raises(StoreError, match="mask its seed does not give"):
        open_subset_store(smoke, digits)


def test_store_remembers_its_config(smoke, digits):
    store = open_subset_store(smoke, digits)
    doc = json.loads((store.path / "spec.json").read_text())
    assert doc["meta"]["config"]["num_models"] == smoke.num_models
    assert doc["spec"]["masks"]["shape"] == [smoke.num_models, digits.n_train]
    assert subset_masks(smoke, digits.n_train).shape == (smoke.num_models, digits.n_train)
    # fields that do not change the models (workers, thresholds) leave the store usable
    open_subset_store(smoke.replace(workers=2, infl_threshold=0.3), digits)
    with pytest.raises(StoreError, match="epochs"):
        open_subset_store(smoke.replace(epochs=4), digits)


def test_train_subsets_fills_every_row_and_fits_subsets(smoke, digits):
    store = memlib.train_subsets(smoke, digits)
    assert store.done() == smoke.num_models
    masks = np.asarray(store["masks"])
    np.testing.assert_array_equal(masks, subset_masks(smoke, digits.n_train))
    probs = np.asarray(store["train_prob"], dtype=np.float32)
    assert ((probs >= 0) & (probs <= 1)).all()
    # correctness agrees with the true-label probability (a right answer gives the true label the most mass)
    right = np.asarray(store["train_correct"])
    assert probs[right].mean() > probs[~right].mean()
    assert np.asarray(store["test_correct"]).mean() > 0.5


def test_balanced_design_puts_every_example_in_the_same_number_of_runs(smoke, digits):
    cfg = smoke.replace(mask_design="balanced", num_models=20, min_out=6)
    masks = subset_masks(cfg, digits.n_train)
    np.testing.assert_array_equal(masks.sum(0), 14)  # round(0.7 * 20) runs per example
    assert abs(masks.sum(1).mean() - 0.7 * digits.n_train) < 1
    store = memlib.train_subsets(cfg, digits)  # the runs train on the design's masks
    np.testing.assert_array_equal(np.asarray(store["masks"]), masks)
    assert not np.array_equal(masks, subset_masks(cfg.replace(mask_design="random"), digits.n_train))
