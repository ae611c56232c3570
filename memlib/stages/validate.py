"""Stage 5: validate the estimates on the stage-1 store: label-flip recovery, peer scores, FDR-controlled pairs,
and a second architecture trained on the same design."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.estimation import Estimates, Pairs
from ..analysis.peers import PeerInputs, PeerRuns, cleanlab_issues, peer_scores, suspicion
from ..analysis.stability import split_half_from_arrays
from ..analysis.validation import arch_consistency, fdr_pairs, recovery
from ..config import Config
from ..data.dataset import Dataset
from ..runs.store import Store
from .estimate import estimate
from .train import train_subsets


def compare_architecture(cfg: Config, data: Dataset, est: Estimates, store: Store) -> tuple[dict, Estimates, Config]:
    """Train the same design with `cfg.compare_arch` (a store of its own, resumable) and compare the estimates.

    The second run is the profile `<profile>-<arch>` under the same results_dir: same data, masks, seeds and
    recipe; only the architecture differs, at its own default width (`width` sizes the first architecture).
    """
    other = cfg.replace(
        arch=cfg.compare_arch, width=None, profile=f"{cfg.profile}-{cfg.compare_arch}", compare_arch=None
    )
    other_store = train_subsets(other, data)
    other_store.require_complete()
    other_est = estimate(other, other_store, data)
    acc_a = float(np.asarray(store["test_correct"]).mean())
    acc_b = float(np.asarray(other_store["test_correct"]).mean())
    result = {"arch_a": cfg.arch, "arch_b": other.arch, "test_acc_a": acc_a, "test_acc_b": acc_b}
    result.update(arch_consistency(est, other_est, acc_a, acc_b))
    return result, other_est, other


def scores_from_store(cfg: Config, store: Store, data: Dataset, est: Estimates) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every score of the registry (memlib.analysis.peers.PEERS) per training example, raw (mem: stage 2's), cleanlab's
    issue mask, and the out-of-sample class probabilities both cleanlab figures come from."""
    inputs = PeerInputs(PeerRuns.from_store(store), data.y_train, data.num_classes, cfg.epochs)
    scores = peer_scores(inputs, given={"mem": est.mem.value})
    issues = cleanlab_issues(data.y_train, inputs.out_of_sample_probs)
    return scores, issues, inputs.out_of_sample_probs


@dataclass(frozen=True)
class Validation:
    """What stage 5 measured on one store (per-example arrays in the dataset's original order)."""

    scores: dict[str, np.ndarray]  # every registry score, raw (memlib.analysis.peers.PEERS; "mem" is stage 2's)
    flipped: np.ndarray  # bool per training example: its label was flipped (all False without label noise)
    cleanlab_issues: np.ndarray  # bool per training example: cleanlab's find_label_issues flags it
    fdr_pairs: Pairs  # the FDR-controlled high-influence pairs
    fdr_p: np.ndarray  # their p-values
    recovery: list[dict]  # per score: AUROC, AP and precision at k for the flips ([] without label noise)
    summary: dict  # the plain-named figures that go into validation.json


def validate(cfg: Config, store: Store, data: Dataset, est: Estimates) -> Validation:
    """Everything stage 5 reports: recovery of the flips, peers, both pair sets, split-half Jaccards."""
    store.require_complete()
    scores, issues, _ = scores_from_store(cfg, store, data, est)
    flips = data.flips
    flipped = flips.indicator(data.n_train) if flips is not None else np.zeros(data.n_train, dtype=bool)
    signed = {name: suspicion(name, s) for name, s in scores.items()}
    rows = recovery(signed, flipped) if flipped.any() else []
    summary = {
        "profile": cfg.profile,
        "num_models": est.num_models,
        "label_noise": cfg.label_noise,
        "flipped": int(flipped.sum()),
        **_recovery_summary(rows, issues, flipped),
    }
    pair_figures, controlled, p_values = _pair_sets(cfg, store, data, est)
    summary.update(pair_figures)
    return Validation(scores, flipped, issues, controlled, p_values, rows, summary)


def _recovery_summary(rows: list[dict], issues: np.ndarray, flipped: np.ndarray) -> dict:
    """validation.json's figures of the flips found: per score AUROC, AP and precision at k; cleanlab's issues."""
    out = {}
    for r in rows:
        out[f"auroc_{r['score']}"] = r["auroc"]
        out[f"ap_{r['score']}"] = r["ap"]
        out[f"precision_at_k_{r['score']}"] = r["precision_at_k"]
    out["cleanlab_issues"] = int(issues.sum())
    if flipped.any():
        out["cleanlab_issues_precision"] = float(flipped[issues].mean()) if issues.any() else float("nan")
        out["cleanlab_issues_recall"] = float(issues[flipped].mean())
    return out


def _pair_sets(cfg: Config, store: Store, data: Dataset, est: Estimates) -> tuple[dict, Pairs, np.ndarray]:
    """The FDR-controlled pairs and their p-values, and validation.json's figures of both pair sets: their sizes,
    overlap, and split-half agreement (memlib.analysis.stability.split_half_from_arrays, both sets from each half)."""
    masks = np.asarray(store["masks"])
    trc, ttc = np.asarray(store["train_correct"]), np.asarray(store["test_correct"])
    labels, thresholds = (data.y_train, data.y_test), (cfg.infl_threshold, cfg.mem_threshold)
    if est.controlled is not None and est.pair_fdr == cfg.pair_fdr:  # stage 2 selected them
        controlled, p_values, tested = est.controlled, est.controlled_p, est.pairs_tested
    else:
        controlled, p_values, tested = fdr_pairs(masks, ttc, est.mem.value, *labels, *thresholds, cfg.pair_fdr)

    def fdr(m: np.ndarray, test_outcomes: np.ndarray, mem: np.ndarray) -> Pairs:
        return fdr_pairs(m, test_outcomes, mem, *labels, *thresholds, cfg.pair_fdr)[0]

    halves = split_half_from_arrays(masks, trc, ttc, *labels, *thresholds, selectors={"fdr": fdr})
    figures = {
        "pair_fdr": cfg.pair_fdr,
        "pairs_fixed": len(est.pairs),
        "pairs_fdr": len(controlled),
        "pairs_fdr_candidates_tested": tested,
        "pairs_fdr_in_fixed": len(controlled.keys() & est.pairs.keys()),
        **halves.pair_summary(),
    }
    return figures, controlled, p_values


def export(path, est: Estimates, result: Validation, data: Dataset) -> None:
    """Add the validation's arrays to estimates.npz (the authors' keys stay as stage 2 wrote them).

    Added: `tr_flipped` (bool per training example), `tr_labels_clean` (labels before the flips), the peer
    scores as `tr_score_<name>` and `tr_cleanlab_issue` (the FDR-controlled pairs, `fdr_*`, are stage 2's).
    """
    with np.load(path) as f:
        existing = {k: f[k] for k in f.files}
    extra = {
        "tr_flipped": result.flipped,
        "tr_labels_clean": data.y_train_clean,
        "tr_cleanlab_issue": result.cleanlab_issues,
        **{f"tr_score_{name}": np.asarray(s, dtype=np.float64) for name, s in result.scores.items()},
    }
    np.savez_compressed(path, **{**existing, **extra})
