"""Stage 2: memorization and influence estimates from a finished stage-1 store, the high-influence pairs both at
the paper's fixed cut-offs and with their false discovery rate controlled, and their split-half stability."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..analysis.estimation import Estimates, estimate_from_arrays
from ..analysis.stability import PairSelector, replication_curve, split_half_from_arrays
from ..analysis.validation import fdr_pairs
from ..config import Config
from ..data.dataset import Dataset
from ..runs.store import Store


def estimate(cfg: Config, store: Store, data: Dataset) -> Estimates:
    """Stage 2: estimates from a complete subset store, with the FDR-controlled pairs (`Estimates.controlled`)."""
    store.require_complete()
    masks, ttc = np.asarray(store["masks"]), np.asarray(store["test_correct"])
    est = estimate_from_arrays(
        masks, np.asarray(store["train_correct"]), ttc, data, cfg.infl_threshold, cfg.mem_threshold
    )
    pairs, p, tested = _controlled(cfg, data)(masks, ttc, est.mem.value, with_p=True)
    return replace(est, controlled=pairs, controlled_p=p, pair_fdr=cfg.pair_fdr, pairs_tested=tested)


def _controlled(cfg: Config, data: Dataset):
    """The FDR-controlled selection at the config's cut-offs and rate, as a function of (masks, test outcomes, mem)."""

    def select(masks: np.ndarray, test_outcomes: np.ndarray, mem: np.ndarray, with_p: bool = False):
        labels, cuts = (data.y_train, data.y_test), (cfg.infl_threshold, cfg.mem_threshold)
        out = fdr_pairs(masks, test_outcomes, mem, *labels, *cuts, cfg.pair_fdr)
        return out if with_p else out[0]

    return select


def split_half(cfg: Config, store: Store, data: Dataset) -> dict:
    """Stage 2: the estimates from two disjoint halves of a store's runs: Spearman of mem, Jaccard of each pair set
    (`fixed`: the paper's cut-offs; `fdr`: the controlled selection). `SplitHalf.summary` of split_half_from_arrays.
    """
    masks, trc, ttc = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    selectors: dict[str, PairSelector] = {"fdr": _controlled(cfg, data)}
    halves = split_half_from_arrays(
        masks, trc, ttc, data.y_train, data.y_test, cfg.infl_threshold, cfg.mem_threshold, selectors=selectors
    )
    return halves.summary()


def replication(cfg: Config, store: Store, data: Dataset, counts: list[int] | None = None) -> dict[str, list]:
    """Stage 2: split-half agreement of mem and of both pair sets against the number of models (replication_curve)."""
    masks, trc, ttc = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    selectors: dict[str, PairSelector] = {"fdr": _controlled(cfg, data)}
    return replication_curve(
        masks, trc, ttc, data.y_train, data.y_test, cfg.infl_threshold, cfg.mem_threshold, selectors, counts
    )
