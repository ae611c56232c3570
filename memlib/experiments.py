"""Stage 3: marginal utility of memorized examples, by filtering and retraining on the full remaining set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .config import Config
from .data import Dataset
from .design import Job, derive_seed
from .estimation import Estimates
from .runner import repair_command, run_jobs
from .store import Store


@dataclass(frozen=True)
class Condition:
    """One way of removing training examples; `removed` is fixed, or None for a fresh random draw per seed."""

    name: str
    kind: str  # full | mem | random | pairs | pairs_random
    threshold: float
    n_removed: int
    removed: np.ndarray | None


def conditions(cfg: Config, est: Estimates) -> list[Condition]:
    """Full data; for each θ, mem >= θ removed and as many random examples removed; the same for pair sources."""
    n = len(est.mem.value)
    out = [Condition("full data", "full", 0.0, 0, np.zeros(0, dtype=np.int64))]
    for theta in sorted(cfg.utility_thresholds):
        removed = np.flatnonzero(est.mem.value >= theta)
        if len(removed) == 0 or len(removed) > n - 10:
            continue  # nothing to remove (same as full data), or too little left to train on
        out.append(Condition(f"mem >= {theta:g}", "mem", theta, len(removed), removed))
        out.append(Condition(f"random, as many as mem >= {theta:g}", "random", theta, len(removed), None))
    sources = np.unique(est.pairs.tr_pos)
    if len(sources):
        out.append(Condition("train side of high-influence pairs", "pairs", np.nan, len(sources), sources))
        out.append(Condition("random, as many as pair sources", "pairs_random", np.nan, len(sources), None))
    return out


def retrain_jobs(cfg: Config, conds: list[Condition], n_train: int) -> tuple[list[Job], pd.DataFrame]:
    """R jobs per condition; the r-th job of every condition shares its training seed (paired comparison)."""
    jobs, rows = [], []
    for c_i, cond in enumerate(conds):
        for r in range(cfg.retrain_models):
            removed = cond.removed
            if removed is None:
                rng = np.random.default_rng(derive_seed(cfg.seed, 3, c_i, r))
                removed = rng.choice(n_train, size=cond.n_removed, replace=False)
            mask = np.ones(n_train, dtype=bool)
            mask[removed] = False
            row = len(jobs)
            jobs.append(Job(row, mask, derive_seed(cfg.seed, 2, r)))
            rows.append(
                {"row": row, "condition": cond.name, "kind": cond.kind, "threshold": cond.threshold,
                 "n_removed": cond.n_removed, "repeat": r}
            )  # fmt: skip
    return jobs, pd.DataFrame(rows)


def _jobs_fingerprint(cfg: Config, jobs: list[Job]) -> str:
    h = hashlib.sha256(cfg.training_fingerprint().encode())
    for job in jobs:
        h.update(np.packbits(job.mask).tobytes())
        h.update(str(job.seed).encode())
    return h.hexdigest()[:16]


def open_retrain_store(cfg: Config, data: Dataset, jobs: list[Job]) -> Store:
    """The stage-3 store: per job its training mask and per-test-example correctness."""
    spec = Store.spec_of(
        len(jobs),
        {"masks": ((data.n_train,), "bool"), "test_correct": ((data.n_test,), "bool"), "seconds": ((), "float32")},
    )
    meta = {"kind": "retrain", "fingerprint": _jobs_fingerprint(cfg, jobs), "config": cfg.to_dict()}
    return Store.open(cfg.out_dir / "retrain", spec, meta, fix=repair_command(cfg))


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-distribution confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


@dataclass
class UtilityResult:
    runs: pd.DataFrame  # one row per retrained model
    table: pd.DataFrame  # one row per condition: accuracy with 95% CI, drop from full data
    pair_test_examples: int


def marginal_utility(cfg: Config, data: Dataset, est: Estimates, learner=None) -> UtilityResult:
    """Stage 3: retrain R models per condition (resumable) and summarise test accuracy with 95% CIs."""
    conds = conditions(cfg, est)
    jobs, runs = retrain_jobs(cfg, conds, data.n_train)
    store = open_retrain_store(cfg, data, jobs)
    run_jobs(store, jobs, cfg, data, learner=learner, desc="retraining")
    store.require_complete()
    correct = np.asarray(store["test_correct"])
    pair_tests = np.unique(est.pairs.tt_pos)
    runs["test_acc"] = correct.mean(1)
    runs["pair_test_acc"] = correct[:, pair_tests].mean(1) if len(pair_tests) else np.nan
    runs["seconds"] = np.asarray(store["seconds"])
    return UtilityResult(runs, summarize(runs), len(pair_tests))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per condition: mean accuracy (all test, and pair test examples) with 95% CI, and drop from full data."""
    rows = []
    for (name, kind, theta, k), g in runs.groupby(
        ["condition", "kind", "threshold", "n_removed"], sort=False, dropna=False
    ):
        acc, lo, hi = mean_ci(g["test_acc"].to_numpy())
        pacc, plo, phi = mean_ci(g["pair_test_acc"].to_numpy())
        rows.append(
            {"condition": name, "kind": kind, "threshold": theta, "n_removed": k, "models": len(g),
             "test_acc": acc, "ci_low": lo, "ci_high": hi,
             "pair_test_acc": pacc, "pair_ci_low": plo, "pair_ci_high": phi}
        )  # fmt: skip
    table = pd.DataFrame(rows)
    full = table.loc[table["kind"] == "full"].iloc[0]
    table["drop"] = full["test_acc"] - table["test_acc"]
    table["pair_drop"] = full["pair_test_acc"] - table["pair_test_acc"]
    return table
