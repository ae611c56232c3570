"""Stage 5: validate the estimates on the stage-1 store: label-flip recovery, peer scores, FDR-controlled pairs,
and a second architecture trained on the same design. It writes its own files (validation.npz, scores.csv,
validation.json, its figures) and only reads stage 2's."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..analysis.estimation import Estimates, Pairs, influence_chunks
from ..analysis.peers import PeerInputs, PeerRuns, cleanlab_issues, peer_scores, suspicion
from ..analysis.stability import Convergence, convergence, split_half_from_arrays
from ..analysis.validation import arch_consistency, proxy_agreement, proxy_summary, recovery
from ..config import Config
from ..data.dataset import Dataset
from ..report import plots_validation
from ..report.artifacts import SCORES_FILE, write_csv, write_json, write_output, write_parquet
from ..runs.store import Store
from .estimate import CONTROLLED, estimate, pair_selectors, stored_pair_agreement
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
    overlap, and split-half agreement (stage 2's split_half.json where it was made at this config's selection,
    else split_half_from_arrays again, both sets from each half)."""
    masks = np.asarray(store["masks"])
    trc, ttc = np.asarray(store["train_correct"]), np.asarray(store["test_correct"])
    labels, thresholds = (data.y_train, data.y_test), (cfg.infl_threshold, cfg.mem_threshold)
    selectors = pair_selectors(cfg, data)  # stage 2's selections, at this config's cut-offs and rate
    select = selectors[CONTROLLED]
    if est.controlled is not None and est.pair_fdr == cfg.pair_fdr:  # stage 2 selected them
        controlled, p_values, tested = est.controlled, est.controlled_p, est.pairs_tested
    else:
        controlled, p_values, tested = select(masks, ttc, est.mem.value, with_p=True)
    agreement = stored_pair_agreement(cfg, len(masks))  # stage 2's, where it selected at this config's cut-offs
    if agreement is None:
        agreement = split_half_from_arrays(masks, trc, ttc, *labels, *thresholds, selectors).pair_summary()
    figures = {
        "pair_fdr": cfg.pair_fdr,
        "pairs_fixed": len(est.pairs),
        "pairs_fdr": len(controlled),
        "pairs_fdr_candidates_tested": tested,
        "pairs_fdr_in_fixed": len(controlled.keys() & est.pairs.keys()),
        **agreement,
    }
    return figures, controlled, p_values


@dataclass(frozen=True)
class Checks:
    """Stage 5's further checks: the cheap proxies against mem, convergence, a second architecture, and the
    figures drawn of them (closed; display them with IPython's display)."""

    agreement: dict  # memlib.analysis.validation.proxy_agreement
    convergence: Convergence
    arch: dict | None  # compare_architecture's figures, None without compare_arch
    other_est: Estimates | None
    figures: dict[str, plt.Figure]  # name -> figure, as written under figures/<name>.png


def validate_stage(cfg: Config, store: Store, data: Dataset, est: Estimates) -> tuple[Validation, Checks]:
    """Stage 5: `validate`, the proxies, convergence and `compare_architecture`; writes validation.npz, scores.csv
    (and scores.parquet where pandas has an engine), the figures, and validation.json last. Stage 2's files are
    only read."""
    result = validate(cfg, store, data, est)
    flipped = result.flipped
    runs = PeerRuns.from_store(store)
    agreement = proxy_agreement(runs, data.y_train, data.num_classes, cfg.epochs, flipped if flipped.any() else None)
    result.summary.update(proxy_summary(agreement))
    curve = convergence(np.asarray(store["masks"]), np.asarray(store["train_correct"]), cfg.subset_ratio)
    result.summary.update({f"convergence_{k}": v for k, v in curve.summary().items()})
    arch = other_est = None
    if cfg.compare_arch:
        arch, other_est, _ = compare_architecture(cfg, data, est, store)
        result.summary.update(arch)
    top = most_influenced(store)
    out = cfg.out_dir
    write_output(out / "validation.npz", lambda f: np.savez_compressed(f, **validation_arrays(est, result, data, top)))
    table = scores_table(est, result, data, top)
    write_csv(table, out / SCORES_FILE)
    write_parquet(table, out / "scores.parquet")
    figures = _figures(cfg, est, result, agreement, curve, arch, other_est)
    write_json(result.summary, out / "validation.json")
    return result, Checks(agreement, curve, arch, other_est, figures)


def _figures(cfg: Config, est, result: Validation, agreement, curve, arch, other_est) -> dict[str, plt.Figure]:
    """Stage 5's figures, each written to figures/<name>.png and closed."""
    path = cfg.out_dir / "figures"
    figures = {}
    if result.flipped.any():
        signed = {name: suspicion(name, s) for name, s in result.scores.items()}
        figures["roc_flips"] = plots_validation.roc_curves(signed, result.flipped, path=path / "roc_flips.png")
    figures["proxies"] = plots_validation.proxy_curves(agreement, path=path / "proxies.png")
    figures["convergence"] = plots_validation.convergence(curve, path=path / "convergence.png")
    if arch is not None:
        names = (cfg.arch, cfg.compare_arch)
        figures["arch"] = plots_validation.arch_scatter(est, other_est, names, arch, path=path / "arch.png")
    for fig in figures.values():
        plt.close(fig)
    return figures


@dataclass(frozen=True)
class TopInfluence:
    """Per training example (dataset order): the test example it influences most, that influence and its se."""

    tt_pos: np.ndarray  # position in the test set, -1 where no influence could be estimated
    infl: np.ndarray
    infl_se: np.ndarray


def most_influenced(store: Store, chunk: int = 1024) -> TopInfluence:
    """For every training example, the test example with the highest influence estimate (memory O(chunk x tests))."""
    masks, outcomes = np.asarray(store["masks"]), np.asarray(store["test_correct"])
    n = masks.shape[1]
    pos, infl, se = np.full(n, -1, dtype=np.int64), np.full(n, np.nan), np.full(n, np.nan)
    for rows, d in influence_chunks(masks, outcomes, chunk=chunk):
        value = np.where(np.isfinite(d.value), d.value, -np.inf)
        best = value.argmax(1)
        pick = np.arange(len(rows)), best
        ok = np.isfinite(value[pick])
        pos[rows[ok]], infl[rows[ok]], se[rows[ok]] = best[ok], d.value[pick][ok], d.se[pick][ok]
    return TopInfluence(pos, infl, se)


def validation_arrays(est: Estimates, result: Validation, data: Dataset, top: TopInfluence) -> dict[str, np.ndarray]:
    """validation.npz: stage 5's per-example arrays and pairs, in the dataset's original order (stage 2's stay in
    estimates.npz, which stage 5 never writes).

    `tr_index` (original index of each position), `tr_flipped`, `tr_labels_clean` (labels before the flips),
    `tr_cleanlab_issue`, the scores as `tr_score_<name>`, the most influenced test example as `tr_top_tt_idx`
    (original index, -1 where none), `tr_top_infl`, `tr_top_infl_se` (the FDR-controlled pairs are stage 2's,
    `fdr_*` in estimates.npz).
    """
    return {
        "tr_index": est.tr_index,
        "tr_flipped": result.flipped,
        "tr_labels_clean": data.y_train_clean,
        "tr_cleanlab_issue": result.cleanlab_issues,
        **{f"tr_score_{name}": np.asarray(s, dtype=np.float64) for name, s in result.scores.items()},
        "tr_top_tt_idx": np.where(top.tt_pos >= 0, est.tt_index[np.maximum(top.tt_pos, 0)], -1),
        "tr_top_infl": top.infl,
        "tr_top_infl_se": top.infl_se,
    }


def scores_table(est: Estimates, result: Validation, data: Dataset, top: TopInfluence) -> pd.DataFrame:
    """scores.csv: one row per training example in the dataset's original order.

    Columns: `index` (original), `label` and `label_name` (as given), with label flips `label_clean` and
    `flipped`; `mem`, `mem_se`; `score_<name>` for every peer score (raw, memlib.analysis.peers.PEERS);
    `cleanlab_issue`; the test example it influences most (`top_test_index`, -1 where none; `top_infl`,
    `top_infl_se`); `in_pair` (a high-influence pair at the fixed cut-offs) and `in_fdr_pair` (an FDR-controlled
    pair).
    """
    n = len(est.tr_index)
    columns = {"index": est.tr_index, "label": data.y_train, "label_name": np.asarray(data.classes)[data.y_train]}
    if data.flips is not None:
        columns.update(label_clean=data.y_train_clean, flipped=result.flipped)
    columns.update(mem=est.mem.value, mem_se=est.mem.se)
    columns.update({f"score_{k}": np.asarray(v, dtype=np.float64) for k, v in result.scores.items() if k != "mem"})
    columns["cleanlab_issue"] = result.cleanlab_issues
    columns["top_test_index"] = np.where(top.tt_pos >= 0, est.tt_index[np.maximum(top.tt_pos, 0)], -1)
    columns.update(top_infl=top.infl, top_infl_se=top.infl_se)
    columns["in_pair"] = np.isin(np.arange(n), est.pairs.tr_pos)
    columns["in_fdr_pair"] = np.isin(np.arange(n), result.fdr_pairs.tr_pos)
    return pd.DataFrame(columns)
