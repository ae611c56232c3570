"""Datasets, in their original order, with the index arrays that map back to the source files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import Config, ConfigError


class DataError(RuntimeError):
    """Data that is missing or unreadable; the message says how to get it."""


@dataclass
class Dataset:
    """Images as float32 (N, C, H, W) in [0, 1], int64 labels, and original indices of every example."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    classes: list[str]

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def normalized(self) -> tuple[np.ndarray, np.ndarray]:
        """Train and test images standardized per channel with the training statistics."""
        mean = self.x_train.mean(axis=(0, 2, 3), keepdims=True)
        std = self.x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
        return (self.x_train - mean) / std, (self.x_test - mean) / std

    def describe(self) -> dict:
        """A one-row summary for display."""
        return {
            "dataset": self.name,
            "train examples": self.n_train,
            "test examples": self.n_test,
            "image shape": "x".join(map(str, self.image_shape)),
            "classes": self.num_classes,
        }

    def validate(self) -> None:
        """Check shapes, dtypes and labels; raise DataError on anything inconsistent."""
        for split, x, y, idx in (
            ("train", self.x_train, self.y_train, self.train_index),
            ("test", self.x_test, self.y_test, self.test_index),
        ):
            if x.ndim != 4 or x.dtype != np.float32:
                raise DataError(f"{self.name} {split} images must be float32 (N, C, H, W), got {x.dtype} {x.shape}")
            if not (len(x) == len(y) == len(idx)):
                raise DataError(f"{self.name} {split}: {len(x)} images, {len(y)} labels, {len(idx)} indices")
            if y.dtype != np.int64 or y.min() < 0 or y.max() >= self.num_classes:
                raise DataError(f"{self.name} {split} labels must be int64 in [0, {self.num_classes})")
            if np.any(np.diff(idx) <= 0):
                raise DataError(f"{self.name} {split} indices must be strictly increasing (original order)")


DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0


def load_digits_dataset(cfg: Config | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (shipped inside the package): a fixed seeded split of 1,297 train / 500 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    test_index = np.sort(perm[:DIGITS_TEST_SIZE])
    train_index = np.sort(perm[DIGITS_TEST_SIZE:])
    return Dataset(
        name="digits",
        x_train=images[train_index],
        y_train=labels[train_index],
        x_test=images[test_index],
        y_test=labels[test_index],
        train_index=train_index,
        test_index=test_index,
        classes=[str(c) for c in range(10)],
    )


LOADERS: dict[str, Callable[[Config | None], Dataset]] = {
    "digits": load_digits_dataset,
}


def load_dataset(cfg: Config) -> Dataset:
    """Load the dataset a config names, validated."""
    if cfg.dataset not in LOADERS:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}; known datasets: {', '.join(sorted(LOADERS))}")
    data = LOADERS[cfg.dataset](cfg)
    data.validate()
    return data
