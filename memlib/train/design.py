"""The study's design: which examples each run trains on (its mask) and with which seed.

The run index gives the seed, and the seed gives the subset (the authors' scheme), so a run's mask and seed
are the same whichever worker, group or machine trains it. Runs train in groups of `group_size`: group g is
rows [g * group_size, (g + 1) * group_size), a function of the config alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..config import Config, ConfigError
from ..seeds import derive_seed


def run_seed(cfg: Config, row: int) -> int:
    """The training seed of stage-1 run `row` (initial weights, shuffles, augmentation)."""
    return derive_seed(cfg.seed, 1, row)


def subset_mask(seed: int, index: int, n: int, ratio: float) -> np.ndarray:
    """Random design: the subset of run `index` is exactly round(ratio * n) examples, drawn from the run's seed."""
    rng = np.random.default_rng(derive_seed(seed, 0, index))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(ratio * n), replace=False)] = True
    return mask


def balanced_masks(seed: int, runs: int, n: int, ratio: float, chunk: int = 4096) -> np.ndarray:
    """Balanced design: every example is in exactly round(ratio * runs) of the runs (which ones: seeded)."""
    k = round(ratio * runs)
    masks = np.zeros((runs, n), dtype=bool)
    for c, start in enumerate(range(0, n, chunk)):
        cols = np.arange(start, min(start + chunk, n))
        rng = np.random.default_rng(derive_seed(seed, 4, c))
        chosen = np.argsort(rng.random((runs, len(cols)), dtype=np.float32), axis=0)[:k]
        masks[chosen, cols[None, :]] = True
    return masks


@functools.lru_cache(maxsize=4)
def _design(seed: int, runs: int, n: int, ratio: float, design: str) -> np.ndarray:
    if design == "balanced":
        masks = balanced_masks(seed, runs, n, ratio)
    else:
        masks = np.stack([subset_mask(seed, t, n, ratio) for t in range(runs)])
    masks.flags.writeable = False
    return masks


def subset_masks(cfg: Config, n: int) -> np.ndarray:
    """All runs' masks (num_models x n, read-only); cheap, so configs can be checked before any training."""
    return _design(cfg.seed, cfg.num_models, n, cfg.subset_ratio, cfg.mask_design)


def check_out_counts(cfg: Config, n_train: int) -> np.ndarray:
    """Per-example number of models that leave it out; ConfigError if any is below cfg.min_out."""
    out = cfg.num_models - subset_masks(cfg, n_train).sum(0)
    if out.min() < cfg.min_out:
        raise ConfigError(
            f"with num_models={cfg.num_models} and subset_ratio={cfg.subset_ratio}, {int((out < cfg.min_out).sum())} "
            f"training examples are left out of fewer than min_out={cfg.min_out} models (fewest: {out.min()}). "
            "Raise num_models or lower min_out."
        )
    return out


@dataclass(frozen=True)
class Job:
    """Train on the examples of `mask` with `seed`, and write the outcome to `row` of a store."""

    row: int
    mask: np.ndarray
    seed: int


def subset_jobs(cfg: Config, n_train: int, rows: Iterable[int]) -> list[Job]:
    """Stage-1 jobs: run t trains on its design mask with the seed that t gives."""
    masks = subset_masks(cfg, n_train)
    return [Job(t, masks[t], run_seed(cfg, t)) for t in rows]


def group_rows(rows: Iterable[int], group_size: int) -> list[list[int]]:
    """Split rows into the design's groups: row r belongs to group r // group_size (rows kept in order)."""
    groups: dict[int, list[int]] = {}
    for r in rows:
        groups.setdefault(int(r) // group_size, []).append(int(r))
    return [groups[g] for g in sorted(groups)]
