"""Stage 4: the headline numbers of a finished study, each with its uncertainty, written to summary.json."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis.estimation import Estimates
from ..config import Config
from ..data.dataset import Dataset
from ..report.artifacts import SPLIT_HALF_FILE, read_json, write_json
from ..report.summary import summarize
from ..runs.store import Store
from .train import store_fit


def summary_stage(cfg: Config, store: Store, data: Dataset, est: Estimates, utility: pd.DataFrame) -> dict:
    """Stage 4: `memlib.report.summary.summarize` of stages 1-3's results, written to summary.json."""
    split = read_json(cfg.out_dir / SPLIT_HALF_FILE)
    subset_acc = np.asarray(store["test_correct"]).mean(1)
    fit = store_fit(cfg, store, data)
    summary = summarize(cfg, est, utility, split, subset_acc, data_name=data.name, fit=fit)
    write_json(summary, cfg.out_dir / "summary.json")
    return summary
