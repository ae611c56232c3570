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

from .estimation import Estimates, Pairs, _finish, influence_counts, memorization
from .exact import exceedance_p_exact
from .peers import PeerRuns, signed_scores
from .stability import correlations, jaccard

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
    # sklearn refuses infinite scores; ranks keep their order (suspicion ranks a missing estimate as -inf, last)
    ranks = stats.rankdata(np.asarray(score, dtype=np.float64))
    return float(average_precision_score(positive, ranks))


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
    tested (H0: infl <= infl_threshold) by the exact test of memlib.analysis.exact, which trusts no standard
    error estimated from the runs (a z-test does, and at a few dozen runs it kept pure noise), and
    Benjamini-Hochberg runs over all of them. `test_outcomes` must be 0/1 (correctness). Returns the selected
    pairs, their p-values, and the number of candidate pairs tested.
    """
    cand = np.flatnonzero(mem >= mem_threshold)
    runs = np.asarray(masks).shape[0]
    parts, tested = [], 0
    for rows, x_in, n_in, x_all in influence_counts(masks, test_outcomes, cand, chunk):
        same = tr_labels[rows][:, None] == tt_labels[None, :]
        tested += int(same.sum())
        n_out = runs - n_in
        value = x_in / np.maximum(n_in, 1) - (x_all - x_in) / np.maximum(n_out, 1)
        # only a difference above the margin can have a p-value below one half, let alone below fdr
        r, j = np.nonzero(same & (value > infl_threshold) & (n_in > 0) & (n_out > 0))
        if not len(r):
            continue
        xi, ni, xo, no = x_in[r, j], n_in[r, 0], x_all[0, j] - x_in[r, j], n_out[r, 0]
        p = exceedance_p_exact(xi, ni, xo, no, infl_threshold)
        keep = p <= fdr  # BH never rejects a p-value above alpha: keep only those
        r, j, xi, ni, xo, no, p = (a[keep] for a in (r, j, xi, ni, xo, no, p))
        diff, se = proportion_difference(xi, ni, xo, no)
        parts.append((rows[r], j, diff, se, p))
    if not parts or not sum(len(x[0]) for x in parts):
        empty = np.zeros(0)
        return Pairs(empty.astype(np.int64), empty.astype(np.int64), empty, empty, empty), empty, tested
    tr, tt, infl, se, p = (np.concatenate(x) for x in zip(*parts))
    chosen = benjamini_hochberg(p, fdr, tested)
    tr, tt, infl, se, p = tr[chosen], tt[chosen], infl[chosen], se[chosen], p[chosen]
    order = np.lexsort((tt, tr))
    pairs = Pairs(tr[order], tt[order], infl[order], se[order], mem[tr[order]])
    return pairs, p[order], tested


def proportion_difference(x_in, n_in, x_out, n_out) -> tuple[np.ndarray, np.ndarray]:
    """x_in / n_in - x_out / n_out and its standard error (sample variances, ddof = 1), as the estimates report it."""
    f = [np.asarray(a, dtype=np.float64) for a in (x_in, n_in, x_out, n_out)]
    return _finish(f[0], f[0], f[0] + f[2], f[0] + f[2], f[1], f[1] + f[3])


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
