"""Stage 1: train the subset models into the stage-1 store, and say whether they fit what they train on."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..analysis.regime import fit_report, summary_line
from ..config import Config
from ..data.datasets import Dataset
from ..runs.executors import run_jobs
from ..runs.store import Store
from ..runs.subsets import open_subset_store
from ..train.design import check_out_counts, subset_jobs


def store_fit(cfg: Config, store: Store, data: Dataset, rows: np.ndarray | slice | None = None) -> dict:
    """The regime of a stage-1 store's finished rows (or `rows`): memlib.analysis.regime.fit_report on its arrays."""
    rows = np.flatnonzero(store.completed) if rows is None else rows
    if len(rows) == store.rows:  # every row: the memory-mapped arrays as they are (read in chunks, not copied)
        rows = slice(None)
    flips = data.flips
    return fit_report(
        store["masks"][rows],
        store["train_correct"][rows],
        store["test_correct"][rows],
        data.y_train,
        data.classes,
        cfg.fit_target,
        flips.indicator(data.n_train) if flips is not None else None,
    )


def early_fit_line(cfg: Config, store: Store, data: Dataset) -> str | None:
    """After stage 1's first group: do its models fit what they train on? A warning line when they do not."""
    store.reload()
    rows = np.flatnonzero(store.completed)
    if not len(rows):
        return None
    fit = store_fit(cfg, store, data, rows)
    if fit["in_regime"]:
        return f"first {len(rows)} models: {summary_line(fit)}"
    return (
        f"warning: the first {len(rows)} models are not in the paper's regime: {summary_line(fit)}. Their "
        "memorization estimates will understate memorization; stop (Ctrl-C, finished models are kept) and train "
        "longer (see the report's caveat), or let it run."
    )


def train_subsets(cfg: Config, data: Dataset, learner=None, rows: Iterable[int] | None = None) -> Store:
    """Stage 1: fill the subset store (resuming: finished runs are kept, never retrained).

    After the first group it trains, it prints whether the finished models fit what they trained on.
    """
    check_out_counts(cfg, data.n_train)
    store = open_subset_store(cfg, data)
    rows = range(cfg.num_models) if rows is None else rows
    jobs = subset_jobs(cfg, data.n_train, store.pending(rows))
    hook = (lambda: early_fit_line(cfg, store, data)) if cfg.executor != "slurm" or learner is not None else None
    store.trained = run_jobs(store, jobs, cfg, data, learner=learner, desc="subset models", first_group=hook)
    return store
