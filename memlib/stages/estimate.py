"""Stage 2: memorization and influence estimates from a finished stage-1 store, and their split-half stability;
it writes estimates.npz, split_half.json (and its figure) and comparison.json."""

from __future__ import annotations

import numpy as np

from ..analysis.estimation import Estimates, estimate_from_arrays
from ..analysis.published import compare_published
from ..analysis.stability import split_half_from_arrays
from ..config import Config
from ..data.dataset import Dataset
from ..report import plots
from ..report.artifacts import write_json, write_output
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


def estimate_stage(cfg: Config, store: Store, data: Dataset) -> Estimates:
    """Stage 2: `estimate`, written to estimates.npz (atomically: a fault leaves the previous complete file)."""
    est = estimate(cfg, store, data)
    write_output(cfg.out_dir / "estimates.npz", est.write)
    return est


def split_half_stage(cfg: Config, store: Store, data: Dataset) -> dict:
    """Stage 2: `split_half`, its figures written to split_half.json; draws figures/split_half.png."""
    sh = split_half(cfg, store, data)
    write_json({k: v for k, v in sh.items() if not isinstance(v, np.ndarray)}, cfg.out_dir / "split_half.json")
    plots.split_half(sh, path=cfg.out_dir / "figures/split_half.png")
    return sh


def comparison_stage(cfg: Config, est: Estimates) -> dict:
    """Stage 2: the comparison with the published estimates (compare_published), written to comparison.json when
    the profile names published files; {} when it names none."""
    comparison = compare_published(cfg, est)
    if comparison:
        write_json(comparison, cfg.out_dir / "comparison.json")
    return comparison
