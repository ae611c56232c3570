"""Stage 5: checks of the estimates that do not trust the paper.

- Label-noise recovery: how well each score ranks the injected flips first (AUROC, average precision,
  precision at k = the number of flips).
- Statistically controlled pairs: Benjamini-Hochberg over every candidate pair tested, beside the paper's
  fixed cut-offs, and the split-half Jaccard of both sets (memlib.analysis.stability).
- Memorization against its cheap proxies, every score of the registry memlib.analysis.peers.PEERS.
- Cross-architecture consistency (the paper's Figure 7).

Convergence (the error of mem against the number of models, with the paper's bound) is memlib.analysis.stability's.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..config import Config
from ..data.datasets import Dataset
from ..runs.store import Store
from ..stages.train import train_subsets
from .estimation import Estimates, Pairs, estimate, influence, memorization
from .peers import PeerInputs, PeerRuns, cleanlab_issues, descriptions, peer_scores, signed_scores, suspicion
from .stability import correlations, jaccard, split_half_from_arrays

# ---------------------------------------------------------------------------------------------------
# Ranking metrics
# ---------------------------------------------------------------------------------------------------


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties counting one half."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(np.asarray(score, dtype=np.float64))  # average ranks of ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Average precision: the mean over positives of the precision at the cut-off that admits it (sklearn's
    definition, ties admitted together)."""
    from sklearn.metrics import average_precision_score

    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return float("nan")
    return float(average_precision_score(positive, np.asarray(score, dtype=np.float64)))


def precision_at_k(score: np.ndarray, positive: np.ndarray, k: int | None = None) -> float:
    """Fraction of positives among the k highest scores (k: the number of positives); ties broken by position."""
    positive = np.asarray(positive, dtype=bool)
    k = int(positive.sum()) if k is None else k
    if k == 0:
        return float("nan")
    top = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")[:k]
    return float(positive[top].mean())


def roc_points(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates of the ROC curve."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(positive, dtype=bool), np.asarray(score, dtype=np.float64))
    return fpr, tpr


def recovery(scores: dict[str, np.ndarray], flipped: np.ndarray) -> list[dict]:
    """Per score (signed: higher = more suspicious), AUROC, AP and precision at k of finding the flips."""
    rows = []
    for name, score in scores.items():
        rows.append(
            {
                "score": name,
                "auroc": auroc(score, flipped),
                "ap": average_precision(score, flipped),
                "precision_at_k": precision_at_k(score, flipped),
            }
        )
    return sorted(rows, key=lambda r: -np.nan_to_num(r["auroc"], nan=-1))


# ---------------------------------------------------------------------------------------------------
# Statistically controlled pairs
# ---------------------------------------------------------------------------------------------------


def benjamini_hochberg(p: np.ndarray, alpha: float, m: int | None = None) -> np.ndarray:
    """Which hypotheses BH rejects at false discovery rate `alpha`, among `m` tested (default len(p)).

    Rejects the k smallest p-values for the largest k with p_(k) <= k alpha / m. Passing m larger than len(p)
    lets a caller keep only the p-values that could be rejected (those <= alpha) of a larger family.
    """
    p = np.asarray(p, dtype=np.float64)
    m = len(p) if m is None else m
    if m < len(p):
        raise ValueError(f"m={m} hypotheses tested, but {len(p)} p-values given")
    order = np.argsort(p, kind="stable")
    passed = np.flatnonzero(p[order] <= alpha * np.arange(1, len(p) + 1) / max(m, 1))
    reject = np.zeros(len(p), dtype=bool)
    if len(passed):
        reject[order[: passed[-1] + 1]] = True
    return reject


def exceedance_p(value: np.ndarray, se: np.ndarray, threshold: float) -> np.ndarray:
    """One-sided p-value of H0: true value <= threshold, from an estimate and its standard error (normal).

    A zero standard error gives 0 above the threshold and 1 otherwise; an undefined one gives 1.
    """
    value, se = np.asarray(value, dtype=np.float64), np.asarray(se, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (value - threshold) / se
    p = stats.norm.sf(z)
    p = np.where(se == 0, np.where(value > threshold, 0.0, 1.0), p)
    return np.where(np.isfinite(p), p, 1.0)


def fdr_pairs(
    masks: np.ndarray,
    test_outcomes: np.ndarray,
    mem: np.ndarray,
    tr_labels: np.ndarray,
    tt_labels: np.ndarray,
    infl_threshold: float,
    mem_threshold: float,
    fdr: float,
    chunk: int = 1024,
) -> tuple[Pairs, np.ndarray, int]:
    """Pairs whose influence exceeds `infl_threshold` with the false discovery rate controlled at `fdr`.

    Candidates are the paper's: every same-class pair whose train example has mem >= mem_threshold. Each is
    tested (H0: infl <= infl_threshold, one-sided z from its estimate and standard error), and BH runs over
    all of them. Returns the selected pairs, their p-values, and the number of candidate pairs tested.
    """
    cand = np.flatnonzero(mem >= mem_threshold)
    parts, tested = [], 0
    for s in range(0, len(cand), chunk):
        rows = cand[s : s + chunk]
        d = influence(masks, test_outcomes, rows)
        same = tr_labels[rows][:, None] == tt_labels[None, :]
        tested += int(same.sum())
        p = exceedance_p(d.value, d.se, infl_threshold)
        keep = same & (p <= fdr)  # BH never rejects a p-value above alpha: keep only those
        r, j = np.nonzero(keep)
        parts.append((rows[r], j, d.value[r, j], d.se[r, j], p[r, j]))
    if not parts or not sum(len(x[0]) for x in parts):
        empty = np.zeros(0)
        return Pairs(empty.astype(np.int64), empty.astype(np.int64), empty, empty, empty), empty, tested
    tr, tt, infl, se, p = (np.concatenate(x) for x in zip(*parts))
    chosen = benjamini_hochberg(p, fdr, tested)
    tr, tt, infl, se, p = tr[chosen], tt[chosen], infl[chosen], se[chosen], p[chosen]
    order = np.lexsort((tt, tr))
    pairs = Pairs(tr[order], tt[order], infl[order], se[order], mem[tr[order]])
    return pairs, p[order], tested


# ---------------------------------------------------------------------------------------------------
# Memorization against its cheap proxies
# ---------------------------------------------------------------------------------------------------


def proxy_agreement(
    runs: PeerRuns,
    labels: np.ndarray,
    num_classes: int,
    epochs: int,
    flipped: np.ndarray | None = None,
    counts: list[int] | None = None,
) -> dict:
    """Can a cheap proxy stand in for mem? Agreement of every score with mem, and against the number of models.

    `with_mem`: each peer score from all T runs against mem from the same runs (Spearman, Pearson).
    `curve`: each score (mem included) from the first t runs, for t in `counts` (up to T/2), against mem from
    the last T/2 runs, a reference that shares no model with it: Spearman over the examples both define, and
    the fraction of examples the t runs define (mem needs a run in and a run out). With `flipped`, also each
    score's AUROC for the flips from t runs. All scores are signed as `validation.recovery` ranks them.
    """
    total = len(runs.masks)
    full = signed_scores(runs, labels, num_classes, epochs)
    with_mem = {}
    for name, score in full.items():
        if name != "mem":
            rho, r, _ = correlations(score, full["mem"])
            with_mem[name] = {"spearman": rho, "pearson": r}
    half = total // 2
    last = runs.rows(slice(total - half, None))
    reference = memorization(last.masks, last.train_correct).value if half else None
    if counts is None:
        counts = sorted({*(2**i for i in range(int(np.log2(max(half, 1))) + 1)), half}) if half else []
    curve: dict[str, list] = {"models": [], "reference_models": half}
    for t in counts:
        part = signed_scores(runs.rows(slice(0, t)), labels, num_classes, epochs)
        curve["models"].append(int(t))
        for name, score in part.items():
            rho, _, defined = correlations(score, reference)
            curve.setdefault(f"spearman_{name}", []).append(rho)
            curve.setdefault(f"defined_{name}", []).append(defined / len(labels))
            if flipped is not None and np.any(flipped):
                curve.setdefault(f"auroc_{name}", []).append(auroc(np.nan_to_num(score, nan=-np.inf), flipped))
    return {"with_mem": with_mem, "curve": curve}


def proxy_summary(agreement: dict) -> dict:
    """The plain-named figures of `proxy_agreement` that go into validation.json."""
    out = {}
    for name, v in agreement["with_mem"].items():
        out[f"proxy_spearman_{name}"] = v["spearman"]
        out[f"proxy_pearson_{name}"] = v["pearson"]
    curve = agreement["curve"]
    out["proxy_curve_reference_models"] = curve["reference_models"]
    out.update({f"proxy_curve_{k}": v for k, v in curve.items() if k != "reference_models"})
    return out


# ---------------------------------------------------------------------------------------------------
# Cross-architecture consistency
# ---------------------------------------------------------------------------------------------------


def arch_consistency(a: Estimates, b: Estimates, acc_a: float, acc_b: float, top: float = 0.1) -> dict:
    """Agreement of two architectures' estimates on the same examples (the paper's Figure 7)."""
    ma, mb = a.mem.value, b.mem.value
    ok = np.isfinite(ma) & np.isfinite(mb)
    spearman, _, _ = correlations(ma, mb)
    k = max(1, int(round(top * ok.sum())))
    top_a = set(np.flatnonzero(ok)[np.argsort(-ma[ok], kind="stable")[:k]].tolist())
    top_b = set(np.flatnonzero(ok)[np.argsort(-mb[ok], kind="stable")[:k]].tolist())
    return {
        "spearman_arch": spearman,
        "top_mem_fraction": top,
        "top_mem_jaccard_arch": jaccard(top_a, top_b),
        "pairs_jaccard_arch": jaccard(a.pairs.keys(), b.pairs.keys()),
        "pairs_a": len(a.pairs),
        "pairs_b": len(b.pairs),
        "mean_mem_difference_arch": float(np.mean(ma[ok] - mb[ok])),
        "test_accuracy_gap_arch": float(acc_a - acc_b),
    }


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


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------


def scores_from_store(cfg: Config, store: Store, data: Dataset, est: Estimates) -> tuple[dict, np.ndarray, np.ndarray]:
    """Every score of the registry (memlib.analysis.peers.PEERS) per training example, raw (mem: stage 2's), cleanlab's
    issue mask, and the out-of-sample class probabilities both cleanlab figures come from."""
    inputs = PeerInputs(PeerRuns.from_store(store), data.y_train, data.num_classes, cfg.epochs)
    scores = peer_scores(inputs, given={"mem": est.mem.value})
    issues = cleanlab_issues(data.y_train, inputs.out_of_sample_probs)
    return scores, issues, inputs.out_of_sample_probs


def validate(cfg: Config, store: Store, data: Dataset, est: Estimates) -> dict:
    """Everything stage 5 reports: recovery of the flips, peers, both pair sets, split-half Jaccards.

    Returns a dict with the per-example scores (`scores`), the flips (`flipped`, all False without label noise),
    cleanlab's issue mask, the FDR pairs with their p-values, the recovery rows and the plain-named figures
    that go into validation.json (`summary`).
    """
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
    return {
        "scores": scores,
        "flipped": flipped,
        "cleanlab_issues": issues,
        "fdr_pairs": controlled,
        "fdr_p": p_values,
        "recovery": rows,
        "summary": summary,
    }


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


def export(path, est: Estimates, result: dict, data: Dataset) -> None:
    """Add the validation's arrays to estimates.npz (the authors' keys stay as stage 2 wrote them).

    Added: `tr_flipped` (bool per training example), `tr_labels_clean` (labels before the flips), the peer
    scores as `tr_score_<name>`, `tr_cleanlab_issue`, and the FDR-controlled pairs as `fdr_tr_idx`, `fdr_tt_idx`,
    `fdr_infl`, `fdr_infl_se`, `fdr_p`, `fdr_mem` (indices in the dataset's original order).
    """
    with np.load(path) as f:
        existing = {k: f[k] for k in f.files}
    pairs = result["fdr_pairs"]
    extra = {
        "tr_flipped": result["flipped"],
        "tr_labels_clean": data.y_train_clean,
        "tr_cleanlab_issue": result["cleanlab_issues"],
        **{f"tr_score_{name}": np.asarray(s, dtype=np.float64) for name, s in result["scores"].items()},
        "fdr_tr_idx": est.tr_index[pairs.tr_pos],
        "fdr_tt_idx": est.tt_index[pairs.tt_pos],
        "fdr_infl": pairs.infl,
        "fdr_infl_se": pairs.infl_se,
        "fdr_p": result["fdr_p"],
        "fdr_mem": pairs.mem,
    }
    np.savez_compressed(path, **{**existing, **extra})


def score_descriptions() -> dict[str, str]:
    """What each score is (for the report's table): memlib.analysis.peers.PEERS's docs."""
    return descriptions()
