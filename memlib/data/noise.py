"""Injected label noise: a seeded set of training examples whose label is flipped to a different class.

A model can fit a flipped example only by memorizing it, so the flips are ground truth for any score that
claims to find memorized or mislabeled examples. The flips are a function of (seed, label_noise, pool size,
number of classes) alone: `label_flips` draws round(label_noise * n) positions of the training pool without
replacement and, for each, an offset in 1..C-1, so the new label (y + offset) mod C is never the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Config
from ..seeds import derive_seed

NOISE_STREAM = 5  # derive_seed stream of the flips (0: random masks, 1: runs, 2-3: retraining, 4: balanced masks)


@dataclass(frozen=True)
class LabelFlips:
    """Positions in the training pool whose labels were flipped, their clean labels and their new ones."""

    positions: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def indicator(self, n: int) -> np.ndarray:
        """A bool vector over the n training examples: True where the label was flipped."""
        out = np.zeros(n, dtype=bool)
        out[self.positions] = True
        return out

    def record(self) -> dict[str, Any]:
        """A JSON-able record (for the store's meta and the report)."""
        return {
            "flipped": len(self),
            "positions": self.positions.tolist(),
            "clean_labels": self.clean.tolist(),
            "noisy_labels": self.noisy.tolist(),
        }


def label_flips(seed: int, fraction: float, labels: np.ndarray, num_classes: int) -> LabelFlips:
    """Flip round(fraction * n) of `labels` (clean) to another class, reproducibly from `seed`."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng(derive_seed(seed, NOISE_STREAM))
    count = round(fraction * n)
    positions = np.sort(rng.choice(n, size=count, replace=False)) if count else np.zeros(0, dtype=np.int64)
    offsets = rng.integers(1, num_classes, size=len(positions))
    clean = labels[positions]
    return LabelFlips(positions.astype(np.int64), clean, (clean + offsets) % num_classes)


def flips_for(cfg: Config, clean_labels: np.ndarray, num_classes: int) -> LabelFlips:
    """The flips a config injects into a training pool with these clean labels (none when label_noise is 0)."""
    return label_flips(cfg.seed, cfg.label_noise, clean_labels, num_classes)
