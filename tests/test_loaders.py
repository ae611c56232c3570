"""Dataset loaders, on tiny files written in each exact on-disk format: IDX (MNIST, Fashion-MNIST) and CIFAR pickles."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import memlib
import memlib.data.builtin
from memlib.data.builtin import CIFAR_LAYOUT, CIFAR_MD5, load_cifar_dataset, load_idx_dataset, read_idx
from memlib.data.dataset import DataError


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def make_idx_dir(d: Path, n_train=30, n_test=12, gz=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        write_idx(d / name, a, gz)
    return arrays


def cfg_for(dataset: str, data_dir: Path | None, **changes) -> memlib.Config:
    return memlib.load_profile("smoke").replace(
        dataset=dataset, data_dir=str(data_dir) if data_dir else None, **changes
    )


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
@pytest.mark.parametrize("key, folder", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_idx_loader_reads_torchvision_raw_layout(tmp_path, key, folder, gz):
    arrays = make_idx_dir(tmp_path / folder / "raw", gz=gz)
    data = load_idx_dataset(key, cfg_for(key, tmp_path))
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(data.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-3)
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.train_index, np.arange(30))  # original order
    assert len(data.classes) == 10


def test_idx_loader_takes_env_var_and_plain_folder(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "flat")
    data = load_idx_dataset("fashion-mnist", cfg_for("fashion-mnist", tmp_path / "flat"))
    assert data.n_train == 30
    make_idx_dir(tmp_path / "root" / "FashionMNIST" / "raw", n_train=20)
    monkeypatch.setenv("MEMLIB_DATA_DIR", str(tmp_path / "root"))
    assert load_idx_dataset("fashion-mnist", cfg_for("fashion-mnist", None)).n_train == 20
    assert data.classes[0] == "T-shirt/top"


def test_train_size_draws_a_fixed_pool_in_original_order(tmp_path):
    arrays = make_idx_dir(tmp_path / "MNIST" / "raw", n_train=50)
    a = load_idx_dataset("mnist", cfg_for("mnist", tmp_path, train_size=20))
    b = load_idx_dataset("mnist", cfg_for("mnist", tmp_path, train_size=20, seed=7))
    assert a.n_train == 20 and a.n_test == 12
    assert (np.diff(a.train_index) > 0).all()
    np.testing.assert_array_equal(a.train_index, b.train_index)  # the pool does not move with the seed
    np.testing.assert_array_equal(a.y_train, arrays["train-labels-idx1-ubyte"][a.train_index])
    with pytest.raises(memlib.ConfigError, match="has only 50"):
        load_idx_dataset("mnist", cfg_for("mnist", tmp_path, train_size=60))


def block_means(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 -> (N, size, size): the mean of each (H/size) x (W/size) block, divided by 255."""
    n, h, w = images.shape
    return images.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4)) / 255.0


@pytest.mark.parametrize("size", [14, 7])
def test_image_size_area_averages_the_idx_images(tmp_path, size):
    arrays = make_idx_dir(tmp_path / "MNIST" / "raw", n_train=50)
    data = load_idx_dataset("mnist", cfg_for("mnist", tmp_path, train_size=20, image_size=size))
    full = load_idx_dataset("mnist", cfg_for("mnist", tmp_path, train_size=20))
    assert data.x_train.shape == (20, 1, size, size) and data.x_test.shape == (12, 1, size, size)
    assert data.x_train.dtype == np.float32
    want = block_means(arrays["train-images-idx3-ubyte"][data.train_index], size)  # the pool's images, in order
    np.testing.assert_allclose(data.x_train[:, 0], want, atol=1e-6)
    np.testing.assert_allclose(data.x_test[:, 0], block_means(arrays["t10k-images-idx3-ubyte"], size), atol=1e-6)
    np.testing.assert_array_equal(data.train_index, full.train_index)  # the same pool, only smaller images
    assert load_idx_dataset("mnist", cfg_for("mnist", tmp_path, image_size=28)).x_train.shape[2:] == (28, 28)


def test_truncated_idx_file_is_refused(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(f)
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_missing_data_names_every_way_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMLIB_DATA_DIR", raising=False)
    src = memlib.data.builtin.IDX_SOURCES["fashion-mnist"]
    monkeypatch.setitem(
        memlib.data.builtin.IDX_SOURCES, "fashion-mnist", replace(src, debian_dir=str(tmp_path / "no-debian"))
    )
    with pytest.raises(DataError) as err:
        load_idx_dataset("fashion-mnist", cfg_for("fashion-mnist", tmp_path / "empty"))
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text
    assert "data_dir" in text and "MEMLIB_DATA_DIR" in text and "download: true" in text
    assert str(tmp_path / "empty") in text
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar_dataset("cifar10", cfg_for("cifar10", tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------------


def write_cifar(root: Path, key: str, n_per_batch: int = 6, seed: int = 0) -> tuple[dict[str, str], dict]:
    """Tiny files in torchvision's CIFAR python layout; returns their md5s and what was written."""
    lay = CIFAR_LAYOUT[key]
    d = root / lay["folder"]
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {"train": [], "test": []}
    classes = 10 if key == "cifar10" else 100
    for split in ("train", "test"):
        for f in lay[split]:
            data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, n_per_batch).tolist()
            batch = {"batch_label": f"tiny {f}", "data": data, lay["labels"]: labels}
            if key == "cifar100":
                batch["coarse_labels"] = [c // 5 for c in labels]
            with open(d / f, "wb") as fh:
                pickle.dump(batch, fh, protocol=2)
            written[split].append((data, labels))
    with open(d / lay["meta"], "wb") as fh:
        pickle.dump({lay["names"]: [f"class{c}" for c in range(classes)]}, fh, protocol=2)
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in d.iterdir()}
    return md5, written


@pytest.mark.parametrize("key", ["cifar10", "cifar100"])
def test_cifar_loader_reads_torchvision_python_layout(tmp_path, key):
    md5, written = write_cifar(tmp_path, key)
    data = load_cifar_dataset(key, cfg_for(key, tmp_path), checksums=md5)
    n_train = 6 * len(CIFAR_LAYOUT[key]["train"])
    assert data.x_train.shape == (n_train, 3, 32, 32) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (6, 3, 32, 32)
    first = written["train"][0][0][0].reshape(3, 32, 32)
    np.testing.assert_allclose(data.x_train[0] * 255, first, atol=1e-3)  # channels-first, row-major, in order
    np.testing.assert_array_equal(data.y_train, np.concatenate([lab for _, lab in written["train"]]))
    np.testing.assert_array_equal(data.y_test, written["test"][0][1])
    assert len(data.classes) == (10 if key == "cifar10" else 100)  # fine labels for CIFAR-100


def test_image_size_area_averages_cifar_images(tmp_path):
    md5, written = write_cifar(tmp_path, "cifar10")
    data = load_cifar_dataset("cifar10", cfg_for("cifar10", tmp_path, image_size=16), checksums=md5)
    assert data.x_train.shape == (30, 3, 16, 16) and data.x_test.shape == (6, 3, 16, 16)
    first = written["train"][0][0][0].reshape(3, 32, 32)
    np.testing.assert_allclose(data.x_train[0], block_means(first, 16), atol=1e-6)  # each channel on its own


def test_cifar_official_checksums_are_the_default(tmp_path):
    write_cifar(tmp_path, "cifar10")
    assert CIFAR_MD5["cifar10"]["data_batch_1"] == "c99cafc152244af753f735de768cd75f"
    with pytest.raises(DataError, match="fails its checksum"):
        load_cifar_dataset("cifar10", cfg_for("cifar10", tmp_path))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tampered_cifar_file_is_refused_before_unpickling(tmp_path):
    md5, _ = write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "unpickled"
    target = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    target.write_bytes(pickle.dumps(_Evil(marker)))  # unpickling this would create the marker file
    with pytest.raises(DataError, match="fails its checksum.*was not unpickled"):
        load_cifar_dataset("cifar10", cfg_for("cifar10", tmp_path), checksums=md5)
    assert not marker.exists()
    # even a file whose checksum was accepted may hold only arrays and containers
    md5["data_batch_1"] = hashlib.md5(target.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_cifar_dataset("cifar10", cfg_for("cifar10", tmp_path), checksums=md5)
    assert not marker.exists()
