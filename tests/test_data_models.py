"""Data loading, the timm-registered architectures, and on-device augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import memlib
from memlib.config import ConfigError
from memlib.train.engine import random_crop_flip
from memlib.train.models import MEMLIB_ARCHS, build_model


def test_digits_split_keeps_original_order(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert (digits.n_train, digits.n_test) == (1297, 500)
    assert digits.x_train.shape == (1297, 1, 8, 8) and digits.x_train.dtype == np.float32
    assert 0 <= digits.x_train.min() and digits.x_train.max() <= 1
    both = np.concatenate([digits.train_index, digits.test_index])
    assert sorted(both) == list(range(1797)), "train and test partition the dataset"
    assert (np.diff(digits.train_index) > 0).all() and (np.diff(digits.test_index) > 0).all()
    np.testing.assert_array_equal(digits.y_train, raw.target[digits.train_index])
    np.testing.assert_allclose(digits.x_train[:, 0], raw.images[digits.train_index] / 16)
    again = memlib.load_dataset(memlib.load_profile("digits"))
    np.testing.assert_array_equal(again.train_index, digits.train_index)


@pytest.mark.parametrize("arch", MEMLIB_ARCHS)
def test_registered_archs_build_through_timm(arch):
    assert timm.is_model(arch)
    size = 28 if arch == "mem_mlp_mnist" else 8
    model = timm.create_model(arch, num_classes=7, in_chans=1, img_size=size)
    assert model(torch.zeros(3, 1, size, size)).shape == (3, 7)


def test_any_timm_model_name_works_and_unknown_ones_fail(smoke):
    model = build_model(smoke.replace(arch="resnet18", width=None), in_chans=3, img_size=32, num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="takes no width parameter.*width: null"):
        build_model(smoke.replace(arch="resnet18", width=32), in_chans=3, img_size=32, num_classes=10)
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model(smoke.replace(arch="not_a_model"), in_chans=1, img_size=8, num_classes=10)


def test_crop_flip_moves_pixels_but_keeps_shape_and_values():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    unpadded = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    for a, b in zip(unpadded, x):  # with no padding only flips remain
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    assert set(out.unique().tolist()) <= set(x.unique().tolist())


def test_neural_learner_is_deterministic_per_seed(smoke, digits):
    learner = memlib.NeuralLearner(smoke.replace(epochs=2), digits, device="cpu")
    idx = np.arange(0, digits.n_train, 2)
    a, b = learner.fit_eval(idx, seed=5), learner.fit_eval(idx, seed=5)
    np.testing.assert_array_equal(a.train_correct, b.train_correct)
    np.testing.assert_array_equal(a.test_prob, b.test_prob)
    c = learner.fit_eval(idx, seed=6)
    assert not np.array_equal(a.test_prob, c.test_prob)


def test_augmented_training_runs(smoke, digits):
    cfg = smoke.replace(arch="mem_cnn", width=8, epochs=1, augment="flip_crop")
    out = memlib.NeuralLearner(cfg, digits, device="cpu").fit_eval(np.arange(200), seed=0)
    assert out.train_correct.shape == (digits.n_train,) and out.test_correct.shape == (digits.n_test,)


def test_mnist_paper_profile_is_the_released_demos_recipe():
    from memlib.train.engine import schedule_table

    cfg = memlib.load_profile("mnist-paper")
    assert (cfg.num_models, cfg.subset_ratio, cfg.epochs, cfg.batch_size) == (2000, 0.7, 10, 128)
    model = build_model(cfg, in_chans=1, img_size=28, num_classes=10)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(784, 512), (512, 256), (256, 10)]
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay) == ("sgd", 0.1, 0.9, False, 0.0)
    lrs, moms = schedule_table(cfg, 100)
    assert np.all(lrs == 0.1) and np.all(moms == 0.9), "the demo keeps lr (and momentum) constant"
    # the CPU profiles keep Nesterov momentum (momentum 0 turns it off whatever the flag says: test_engine)
    digits = memlib.load_profile("digits")
    assert digits.nesterov is True and digits.momentum > 0
