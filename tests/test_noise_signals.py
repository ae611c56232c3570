"""Injected label noise and the per-epoch training signals, on cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import memlib
from memlib.columns import SIGNAL_COLUMNS
from memlib.data.noise import label_flips
from memlib.runs.subsets import open_subset_store
from memlib.train.engine import NeuralLearner
from memlib.train.signals import NOT_SEEN, SignalRecorder, el2n_epoch


def test_flips_are_reproducible_never_to_the_same_class_and_the_requested_fraction():
    labels = np.random.default_rng(1).integers(0, 3, size=1000)
    a, b = label_flips(7, 0.1, labels, 3), label_flips(7, 0.1, labels, 3)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    assert len(a) == 100 and len(np.unique(a.positions)) == 100
    assert np.all(a.noisy != a.clean) and np.all((a.noisy >= 0) & (a.noisy < 3))
    np.testing.assert_array_equal(a.clean, labels[a.positions])
    other = label_flips(8, 0.1, labels, 3)
    assert not np.array_equal(other.positions, a.positions), "another seed flips other examples"
    assert len(label_flips(7, 0.0, labels, 3)) == 0


def test_loaded_noisy_data_differs_exactly_at_the_recorded_flips_which_the_store_keeps(tmp_path):
    cfg = memlib.load_profile("smoke-noisy").replace(results_dir=str(tmp_path))
    clean = memlib.load_dataset(cfg.replace(label_noise=0.0))
    noisy = memlib.load_dataset(cfg)
    changed = np.flatnonzero(noisy.y_train != clean.y_train)
    np.testing.assert_array_equal(changed, noisy.flips.positions)
    assert len(changed) == round(0.1 * clean.n_train)
    np.testing.assert_array_equal(noisy.y_train_clean, clean.y_train)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)
    assert cfg.training_fingerprint() != cfg.replace(label_noise=0.0).training_fingerprint()
    store = open_subset_store(cfg, noisy)
    record = store.meta["label_noise"]
    assert record["positions"] == changed.tolist() and record["fraction"] == 0.1
    assert record["noisy_labels"] == noisy.y_train[changed].tolist()
    assert record["clean_labels"] == clean.y_train[changed].tolist()


def _replay(recorder: SignalRecorder, logits_by_epoch: list[list[float]], label: int) -> dict:
    """Feed one model's logits for example 0 (of 2), one presentation per epoch."""
    for epoch, logits in enumerate(logits_by_epoch):
        recorder.update(epoch, torch.tensor([[0]]), torch.tensor([[logits]]), torch.tensor([[label]]))
    return recorder.result()[0]


def test_an_example_forgotten_twice_has_forgetting_count_two():
    # correct, wrong, correct, wrong, correct
    seq = [[2.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.0]]
    out = _replay(SignalRecorder(1, 2, 5, torch.device("cpu")), seq, label=0)
    assert out["forgetting"][0] == 2
    assert out["correct_epochs"][0] == 3
    assert out["learned_epoch"][0] == 4, "wrong last in epoch 3: learned for good from epoch 4"
    np.testing.assert_allclose(float(out["aum"][0]), (2 - 1 + 2 - 3 + 1) / 5, rtol=1e-3)
    assert out["forgetting"][1] == NOT_SEEN and np.isnan(out["aum"][1]), "example 1 was never trained on"


def test_an_example_learned_at_epoch_e_has_the_learning_speed_that_implies():
    epochs, e = 6, 2
    seq = [[0.0, 1.0]] * e + [[1.0, 0.0]] * (epochs - e)
    out = _replay(SignalRecorder(1, 2, epochs, torch.device("cpu")), seq, label=0)
    assert out["learned_epoch"][0] == e and out["forgetting"][0] == 0
    assert out["correct_epochs"][0] / epochs == pytest.approx((epochs - e) / epochs)


def test_loss_margin_and_el2n_equal_their_definitions():
    epochs = 3
    seq = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]]
    out = _replay(SignalRecorder(1, 2, epochs, torch.device("cpu")), seq, label=0)
    probs = [np.exp(s) / np.exp(s).sum() for s in map(np.array, seq)]
    loss = np.mean([-np.log(p[0]) for p in probs])
    margin = np.mean([p[0] - p[1:].max() for p in probs])
    p_early = probs[el2n_epoch(epochs)]
    el2n = np.linalg.norm(p_early - np.eye(3)[0])
    assert float(out["loss"][0]) == pytest.approx(loss, rel=1e-3)
    assert float(out["margin"][0]) == pytest.approx(margin, rel=1e-3, abs=1e-3)
    assert float(out["el2n"][0]) == pytest.approx(el2n, rel=1e-3)
    assert out["learned_epoch"][0] == 3, "wrong in the last epoch: never learned"


@pytest.mark.parametrize("path", ["stacked", "vmap"])
def test_stacked_paths_record_the_signals_the_single_path_records(smoke, digits, path):
    cfg = smoke.replace(epochs=2, batch_size=64)
    n = digits.n_train
    runs = [(np.arange(0, n - 300), 11), (np.arange(150, n), 12)]  # uneven subsets: padded last steps
    got, ref = [], []
    NeuralLearner(cfg, digits, path=path, precision="fp32").fit_group(runs, signals=got)
    NeuralLearner(cfg, digits, path="single", precision="fp32").fit_group(runs, signals=ref)
    # fault: a path that records nothing (the loop below would then check nothing and pass)
    assert len(got) == len(ref) == len(runs)
    for g, r, (idx, _) in zip(got, ref, runs):
        seen = np.zeros(n, dtype=bool)
        seen[idx] = True
        assert set(g) == set(r) == set(SIGNAL_COLUMNS), "every signal, on every path"
        for name in g:
            if g[name].dtype == np.uint8:
                np.testing.assert_array_equal(g[name][~seen], NOT_SEEN)
                assert np.mean(g[name][seen] == r[name][seen]) > 0.99, name  # fp32 rounding may flip a tie
            else:
                assert np.all(np.isnan(g[name][~seen].astype(float)))
                np.testing.assert_allclose(g[name][seen].astype(float), r[name][seen].astype(float), atol=2e-2)
        assert g["forgetting"][seen].max() <= 1 and g["correct_epochs"][seen].max() <= 2
