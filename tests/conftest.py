from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # profiles and notebooks are found from the project root

import memlib  # noqa: E402
from memlib.data import Dataset  # noqa: E402


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return memlib.load_dataset(memlib.load_profile("smoke"))


@pytest.fixture
def smoke(tmp_path) -> memlib.Config:
    """The smoke profile, writing under a temporary results_dir."""
    return memlib.load_profile("smoke").replace(results_dir=str(tmp_path / "results"))


def tiny_dataset(n_train: int = 40, n_test: int = 15, classes: int = 3, seed: int = 0) -> Dataset:
    """Random 1x4x4 images whose pixels are multiples of 1/8, so squared distances are exact."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 9, size=(n_train + n_test, 1, 4, 4)).astype(np.float32) / 8
    y = rng.integers(0, classes, size=n_train + n_test).astype(np.int64)
    return Dataset(
        name="tiny",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        train_index=np.arange(n_train),
        test_index=np.arange(n_test),
        classes=[str(c) for c in range(classes)],
    )


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime, to show that nothing was written."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}
