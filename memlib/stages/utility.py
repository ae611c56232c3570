"""Stage 3: marginal utility of memorized examples, by filtering and retraining on the full remaining set."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..analysis.estimation import Estimates
from ..config import TRAINING_KEYS, Config, display_path
from ..data.dataset import Dataset
from ..report.artifacts import write_csv
from ..runs.executors import run_jobs
from ..runs.store import COMPLETED, Store, StoreMismatch
from ..runs.subsets import check_same_data, data_record, stored_meta
from ..seeds import derive_seed
from ..train.design import Job
from .train import resolve_epochs


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
    sources = np.unique(est.replicating_pairs().tr_pos)
    if len(sources):
        out.append(Condition("train side of high-influence pairs", "pairs", np.nan, len(sources), sources))
        out.append(Condition("random, as many as pair sources", "pairs_random", np.nan, len(sources), None))
    return out


def condition_code(cond: Condition) -> int:
    """A number for the condition's kind and threshold, so its random draws do not depend on the other conditions."""
    return int(hashlib.sha256(f"{cond.kind}:{cond.threshold:g}".encode()).hexdigest()[:8], 16)


def retrain_jobs(cfg: Config, conds: list[Condition], n_train: int) -> tuple[list[Job], pd.DataFrame]:
    """R jobs per condition; the r-th job of every condition shares its training seed (paired comparison)."""
    jobs, rows = [], []
    for cond in conds:
        for r in range(cfg.retrain_models):
            removed = cond.removed
            if removed is None:
                rng = np.random.default_rng(derive_seed(cfg.seed, 3, condition_code(cond), r))
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


RETRAIN_DIR = "retrain"


def job_key(cfg: Config, data: Dataset, job: Job) -> str:
    """What identifies a retrained model: training config, data, its training mask and its seed."""
    h = hashlib.sha256(cfg.training_fingerprint().encode())
    h.update(json.dumps(data.fingerprint, sort_keys=True).encode())
    h.update(np.packbits(job.mask).tobytes())
    h.update(str(job.seed).encode())
    return h.hexdigest()[:16]


def _retrain_spec(rows: int, data: Dataset) -> dict:
    return Store.spec_of(
        rows, {"masks": ((data.n_train,), "bool"), "test_correct": ((data.n_test,), "bool"), "seconds": ((), "float32")}
    )


def retrain_store_path(cfg: Config) -> Path:
    return cfg.out_dir / RETRAIN_DIR


def check_retrain_store(cfg: Config, data: Dataset) -> int:
    """Raise StoreError if an existing retrain store was made with another training config or other data.

    Returns how many retrained models it holds (0 if there is none). Writes nothing.
    """
    path = retrain_store_path(cfg)
    meta = stored_meta(path)
    if meta is None:
        return 0
    check_same_data(path, meta, data)
    if meta.get("training") != cfg.training_fingerprint():
        old_cfg, new_cfg = meta.get("config", {}), cfg.to_dict()
        diffs = [f"{k}: {old_cfg.get(k)!r} -> {new_cfg[k]!r}" for k in TRAINING_KEYS if old_cfg.get(k) != new_cfg[k]]
        raise StoreMismatch(
            f"the retrain store at {display_path(path)} was made with another training config "
            f"({'; '.join(diffs) or 'other inputs'}).",
            f"Use another profile name, or delete {display_path(path)} to retrain.",
            path,
        )
    done = np.load(path / f"{COMPLETED}.npy", mmap_mode="r")
    return int(np.count_nonzero(done))


def _recover_swap(path: Path) -> None:
    """Undo a swap of retrain stores that was interrupted (see `open_retrain_store`), and remove leftovers."""
    prev, nxt = path.with_name(path.name + ".prev"), path.with_name(path.name + ".next")
    if prev.exists() and not path.exists():
        prev.rename(path)  # interrupted between the two renames: the old store is still whole
    for leftover in (prev, nxt):
        if leftover.exists():
            shutil.rmtree(leftover)


def open_retrain_store(cfg: Config, data: Dataset, jobs: list[Job]) -> Store:
    """The stage-3 store: per job its training mask and per-test-example correctness.

    Each row is keyed by its job (condition's mask and seed). When the jobs change (new thresholds, more
    models), a new store is made beside the old one, the finished models whose keys remain are copied into it,
    and it replaces the old one: only new jobs train.
    """
    path = retrain_store_path(cfg)
    _recover_swap(path)
    check_retrain_store(cfg, data)
    keys = [job_key(cfg, data, j) for j in jobs]
    spec = _retrain_spec(len(jobs), data)
    meta = {
        "kind": "retrain",
        "fingerprint": hashlib.sha256("".join(keys).encode()).hexdigest()[:16],
        "training": cfg.training_fingerprint(),
        "config": cfg.to_dict(),
        "data": data_record(data),
        "keys": keys,
    }
    old_meta = stored_meta(path)
    if old_meta is None or old_meta["fingerprint"] == meta["fingerprint"]:
        return Store.open(path, spec, meta)
    old = Store.open(path, _retrain_spec(len(old_meta["keys"]), data), old_meta, create=False)
    old_rows = {k: r for r, k in enumerate(old_meta["keys"]) if old.completed[r]}
    nxt = path.with_name(path.name + ".next")
    new = Store.open(nxt, spec, meta)
    keep = {row: old_rows[k] for row, k in enumerate(keys) if k in old_rows}
    if keep:
        names = [n for n in new.arrays if n != COMPLETED]
        new.write_rows({row: {n: old[n][src] for n in names} for row, src in keep.items()})
    del old, new
    prev = path.with_name(path.name + ".prev")
    path.rename(prev)
    nxt.rename(path)
    dropped = len(old_rows) - len(keep)
    if dropped:  # finished models of conditions no longer asked for: set aside, never deleted
        aside = path.with_name(f"{path.name}.superseded-{old_meta['fingerprint']}")
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{os.getpid()}")
        prev.rename(aside)
        print(f"retrain store: {dropped} finished models of conditions this config no longer has are kept in {aside}")
    else:
        shutil.rmtree(prev)  # every finished model was carried over
    print(f"retrain store: kept {len(keep)} finished models whose jobs are unchanged; {len(jobs) - len(keep)} to train")
    return Store.open(path, spec, meta)


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-distribution confidence interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
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
    """Stage 3: retrain R models per condition (resumable) and summarise test accuracy with 95% CIs; writes
    utility.csv (per condition) and utility_runs.csv (per model)."""
    cfg = resolve_epochs(cfg, data) if learner is None else cfg  # stage 1's choice, for `epochs: auto`
    conds = conditions(cfg, est)
    jobs, runs = retrain_jobs(cfg, conds, data.n_train)
    store = open_retrain_store(cfg, data, jobs)
    run_jobs(store, jobs, cfg, data, learner=learner, desc="retraining")
    store.require_complete()
    correct = np.asarray(store["test_correct"])
    pair_tests = np.unique(est.replicating_pairs().tt_pos)
    runs["test_acc"] = correct.mean(1)
    runs["pair_test_acc"] = correct[:, pair_tests].mean(1) if len(pair_tests) else np.nan
    runs["seconds"] = np.asarray(store["seconds"])
    result = UtilityResult(runs, summarize(runs), len(pair_tests))
    write_csv(result.table, cfg.out_dir / "utility.csv")
    write_csv(result.runs, cfg.out_dir / "utility_runs.csv")
    return result


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per condition: mean accuracy (all test, and pair test examples) with 95% CI, and drop from full data.

    Accuracy intervals are clipped to [0, 1] (`clipped` says where). Drops are paired: the r-th model of a
    condition against the r-th full-data model (same seed), and `gap` is a mem condition's accuracy below that
    of its random counterpart, paired the same way; each with its 95% CI.
    """
    key = ["condition", "kind", "threshold", "n_removed"]
    full = runs[runs["kind"] == "full"].set_index("repeat")
    rows = []
    for (name, kind, theta, k), g in runs.groupby(key, sort=False, dropna=False):
        g = g.set_index("repeat")
        row = {"condition": name, "kind": kind, "threshold": theta, "n_removed": k, "models": len(g)}
        for col, prefix in (("test_acc", ""), ("pair_test_acc", "pair_")):
            acc, lo, hi = mean_ci(g[col].to_numpy())
            row[col] = acc
            row[f"{prefix}ci_low"], row[f"{prefix}ci_high"] = max(lo, 0.0), min(hi, 1.0)
            row[f"{prefix}clipped"] = bool(lo < 0.0 or hi > 1.0)
            drop, dlo, dhi = mean_ci((full[col] - g[col]).dropna().to_numpy())
            row[f"{prefix}drop"], row[f"{prefix}drop_ci_low"], row[f"{prefix}drop_ci_high"] = drop, dlo, dhi
        if kind == "mem":
            match = runs[(runs["kind"] == "random") & (runs["threshold"] == theta)].set_index("repeat")
            row["gap"], row["gap_ci_low"], row["gap_ci_high"] = mean_ci(
                (match["test_acc"] - g["test_acc"]).dropna().to_numpy()
            )
        rows.append(row)
    return pd.DataFrame(rows)
