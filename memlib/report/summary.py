"""The headline numbers of a run, each with its uncertainty: what stage 4 writes to summary.json.

summarize returns a plain dict (the JSON as written); the report reads it back from the file, so a summary.json
of an earlier run, lacking a key that came later, still renders (its words read optional keys with .get)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.estimation import Estimates
from ..config import EPOCHS_RECORD, Config
from .artifacts import _jsonable


def _ci(lo: float, hi: float) -> list[float]:
    return [lo, hi]


def summarize(
    cfg: Config,
    est: Estimates,
    utility: pd.DataFrame,
    split: dict,
    subset_test_acc: np.ndarray,
    data_name: str | None = None,
    fit: dict | None = None,
) -> dict[str, Any]:
    """The headline figures of a run, each with its uncertainty, all computed from its artifacts.

    `data_name` (the loaded Dataset's name) is how the report names the data; `dataset` keeps the config's value.
    `fit` (memlib.analysis.regime.fit_report of the stage-1 store) says whether the models are in the paper's regime.
    """
    full = utility[utility["kind"] == "full"].iloc[0]
    mem = est.mem.value
    clipped = [c for c in ("clipped", "pair_clipped") if c in utility]
    return _jsonable(
        {
            "profile": cfg.profile,
            "dataset": cfg.dataset,
            "data_name": data_name or cfg.dataset,
            "arch": cfg.arch,
            "epochs": cfg.epochs,
            **_auto_epochs(cfg),
            "num_models": est.num_models,
            "subset_ratio": cfg.subset_ratio,
            "mask_design": cfg.mask_design,
            "n_train": len(mem),
            "n_test": len(est.tt_labels),
            "test_acc_subset_models": float(np.mean(subset_test_acc)),
            "test_acc_subset_models_sd": float(np.std(subset_test_acc)),
            "test_acc_full_data": full["test_acc"],
            "test_acc_full_data_ci95": [full["ci_low"], full["ci_high"]],
            "retrain_models": int(full["models"]),
            "ci_clipped": bool(utility[clipped].to_numpy().any()) if clipped else False,
            **_memorized_fraction(mem, cfg.mem_threshold),
            "mean_mem": float(np.mean(mem)),
            "mean_mem_se": float(np.nanmean(est.mem.se)),
            "min_models_out": int(np.min(est.mem.n_out)),
            **_pair_figures(est, split),
            "thresholds": {"infl": cfg.infl_threshold, "mem": cfg.mem_threshold},
            "utility": _utility_rows(utility),
            "pairs_removal": _pairs_removal(utility, full),
            "split_half": {k: v for k, v in split.items() if not isinstance(v, np.ndarray)},
            **({"fit": fit} if fit is not None else {}),
        }
    )


def _auto_epochs(cfg: Config) -> dict[str, Any]:
    """With `epochs: auto`, what stage 1 chose and each pilot group's fit (its epochs.json), for the report."""
    path = cfg.out_dir / EPOCHS_RECORD
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    if record.get("epochs") != cfg.epochs:
        return {}
    return {"epochs_auto": {"max_epochs": record["max_epochs"], "pilots": record["pilots"]}}


def _pair_figures(est: Estimates, split: dict) -> dict[str, Any]:
    """Both pair sets with their split-half Jaccards; `pairs_distinct_*` count the set stage 3 removes (the
    controlled one where stage 2 selected it: `pairs_removed_set`)."""
    used = est.replicating_pairs()
    out: dict[str, Any] = {
        "high_influence_pairs": len(est.pairs),  # at the paper's fixed cut-offs
        "pairs_fixed_jaccard": split.get("pairs_jaccard_fixed"),
        "pairs_removed_set": "controlled" if est.controlled is not None else "fixed",
        "pairs_distinct_train": int(len(np.unique(used.tr_pos))),
        "pairs_distinct_test": int(len(np.unique(used.tt_pos))),
    }
    if est.controlled is not None:
        out.update(
            pairs_controlled=len(est.controlled),
            pair_fdr=est.pair_fdr,
            pairs_tested=est.pairs_tested,
            pairs_controlled_jaccard=split.get("pairs_jaccard_fdr"),
        )
    return out


def frac_key(threshold: float) -> str:
    """summary.json's key of the fraction of training examples with mem >= threshold (its 95% CI: + '_ci95')."""
    return f"frac_mem_ge_{threshold:g}"


def _memorized_fraction(mem: np.ndarray, threshold: float) -> dict[str, Any]:
    """The fraction of training examples with mem >= threshold, with its 95% (normal) interval."""
    frac = float(np.mean(mem >= threshold))
    half = 1.96 * float(np.sqrt(frac * (1 - frac) / len(mem)))
    key = frac_key(threshold)
    return {key: frac, f"{key}_ci95": [max(0.0, frac - half), min(1.0, frac + half)]}


def _utility_rows(utility: pd.DataFrame) -> list[dict[str, Any]]:
    """Per mem threshold of stage 3: the accuracy drops from removing those examples and as many random ones."""
    rows = []
    for theta in sorted(utility.loc[utility["kind"] == "mem", "threshold"].unique()):
        mem_row = utility[(utility["kind"] == "mem") & (utility["threshold"] == theta)].iloc[0]
        rnd_row = utility[(utility["kind"] == "random") & (utility["threshold"] == theta)].iloc[0]
        rows.append(
            {
                "threshold": theta,
                "n_removed": mem_row["n_removed"],
                "drop_mem": mem_row["drop"],
                "drop_mem_ci95": _ci(mem_row["drop_ci_low"], mem_row["drop_ci_high"]),
                "drop_random": rnd_row["drop"],
                "drop_random_ci95": _ci(rnd_row["drop_ci_low"], rnd_row["drop_ci_high"]),
                "drop_mem_minus_random": mem_row["drop"] - rnd_row["drop"],
                "drop_mem_minus_random_ci95": _ci(mem_row["gap_ci_low"], mem_row["gap_ci_high"]),
            }
        )
    return rows


def _pairs_removal(utility: pd.DataFrame, full: pd.Series) -> dict[str, Any]:
    """Accuracy on the pairs' test side: full data, their train side removed, as many random removed ({}: none)."""
    if not (utility["kind"] == "pairs").any():
        return {}
    prow = utility[utility["kind"] == "pairs"].iloc[0]
    rrow = utility[utility["kind"] == "pairs_random"].iloc[0]
    return {
        "pair_test_acc_full": full["pair_test_acc"],
        "pair_test_acc_full_ci95": _ci(full["pair_ci_low"], full["pair_ci_high"]),
        "pair_test_acc_sources_removed": prow["pair_test_acc"],
        "pair_test_acc_sources_removed_ci95": _ci(prow["pair_ci_low"], prow["pair_ci_high"]),
        "pair_test_acc_random_removed": rrow["pair_test_acc"],
        "pair_test_acc_random_removed_ci95": _ci(rrow["pair_ci_low"], rrow["pair_ci_high"]),
    }
