"""Every shipped profile is wired up: its data loads from the on-disk format and its first stage trains on CPU.

The GPU profiles' full runs need a GPU and real data; here each trains a few of its models, with its own
architecture, on tiny files written in the exact format of its dataset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from test_loaders import make_idx_dir, write_cifar

import memlib
import memlib.data.builtin
from memlib.__main__ import main

GPU_PROFILES = ["fashion-mnist-full", "mnist-paper", "cifar10", "cifar10-fast", "cifar100-paper"]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny_data_for(cfg: memlib.Config, root: Path, monkeypatch) -> None:
    if cfg.dataset in ("mnist", "fashion-mnist"):
        folder = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[cfg.dataset]
        make_idx_dir(root / folder / "raw", n_train=20, n_test=8)
    else:
        md5, _ = write_cifar(root, cfg.dataset, n_per_batch=20 if cfg.dataset == "cifar100" else 4)
        monkeypatch.setitem(memlib.data.builtin.CIFAR_MD5, cfg.dataset, md5)  # the tiny files' own checksums


@pytest.mark.slow
@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_profile_trains_its_first_models_on_cpu(tmp_path, monkeypatch, name):
    cfg = memlib.load_profile(name)
    assert cfg.num_models >= 2000 and cfg.subset_ratio == 0.7
    tiny_data_for(cfg, tmp_path / "data", monkeypatch)
    small = cfg.replace(
        data_dir=str(tmp_path / "data"),
        results_dir=str(tmp_path / "results"),
        train_size=None,
        num_models=24,
        min_out=1,
        epochs=1,
        batch_size=8,
        device="cpu",
        workers=1,
    )
    info = memlib.check(small)
    assert info["architecture"] == cfg.arch
    data = memlib.load_dataset(small)
    store = memlib.train_subsets(small, data, rows=range(3))
    assert store.done() == 3
    assert np.asarray(store["train_correct"])[:3].shape == (3, data.n_train)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_gpu_profile_without_data_stops_before_work_with_the_ways_to_get_it(tmp_path, capsys, monkeypatch, name):
    monkeypatch.delenv("MEMLIB_DATA_DIR", raising=False)
    cfg = memlib.load_profile(name)
    for key, src in memlib.data.builtin.IDX_SOURCES.items():  # as on a machine without the Debian package
        if src.debian_dir:
            absent = dataclasses.replace(src, debian_dir=str(tmp_path / "not-installed"))
            monkeypatch.setitem(memlib.data.builtin.IDX_SOURCES, key, absent)
    assert main(["check", name]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "download: true" in err and "MEMLIB_DATA_DIR" in err
    if cfg.dataset == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in err


@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package():
    cfg = memlib.load_profile("fashion-mnist")
    data = memlib.load_dataset(cfg)
    assert (data.n_train, data.n_test) == (cfg.train_size, 10000)
    assert data.x_train.shape[1:] == (1, 28, 28)
    assert np.bincount(data.y_test).tolist() == [1000] * 10  # the official test set is balanced
    full = memlib.load_dataset(cfg.replace(train_size=None))
    assert full.n_train == 60000
    np.testing.assert_array_equal(full.y_train[data.train_index], data.y_train)
