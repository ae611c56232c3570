"""Stage 2: memorization and influence estimates from a finished stage-1 store, and their split-half stability."""

from __future__ import annotations

import numpy as np

from ..analysis.estimation import Estimates, estimate_from_arrays
from ..analysis.stability import split_half_from_arrays
from ..config import Config
from ..data.dataset import Dataset
from ..runs.store import Store


def estimate(cfg: Config, store: Store, data: Dataset) -> Estimates:
    """Stage 2: estimates from a complete subset store."""
    store.require_complete()
    return estimate_from_arrays(
        np.asarray(store["masks"]),
        np.asarray(store["train_correct"]),
        np.asarray(store["test_correct"]),
        data,
        cfg.infl_threshold,
        cfg.mem_threshold,
    )


def split_half(cfg: Config, store: Store, data: Dataset) -> dict:
    """Stage 2: the estimates from two disjoint halves of a store's runs: Spearman of mem, Jaccard of the pairs.

    `SplitHalf.summary` of `split_half_from_arrays` at the config's cut-offs.
    """
    masks, trc, ttc = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    halves = split_half_from_arrays(masks, trc, ttc, data.y_train, data.y_test, cfg.infl_threshold, cfg.mem_threshold)
    return halves.summary()
