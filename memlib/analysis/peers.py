"""Peer scores from the same runs: what researchers use instead of memorization, beside it.

Each is an average over the models that trained on an example of a signal memlib.train.signals recorded during
training, except cleanlab's, which come from out-of-sample class probabilities: averaged over the models
that did NOT train on the example, rebuilt from each model's stored top-k class probabilities.
`SUSPICIOUS` gives each score's sign such that a higher signed score means more likely mislabeled.
"""

from __future__ import annotations

import numpy as np

from ..train.signals import NOT_SEEN

# score name -> (sign that makes "higher = more suspicious", what it is)
SUSPICIOUS: dict[str, tuple[int, str]] = {
    "mem": (1, "memorization (this study)"),
    "cleanlab": (-1, "cleanlab label quality (self-confidence), out-of-sample probabilities"),
    "loss": (1, "mean training loss on the given label"),
    "margin": (-1, "mean probability margin of the given label in training"),
    "aum": (-1, "area under the margin (logits; Pleiss et al. 2020)"),
    "el2n": (1, "EL2N early in training (Paul et al. 2021)"),
    "forgetting": (1, "forgetting events (Toneva et al. 2019)"),
    "learning_speed": (-1, "learning speed: accuracy over training epochs (C-score proxy, Jiang et al. 2021)"),
}


def in_model_means(masks: np.ndarray, values: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per example, the mean of `values` (runs x n; NaN or NOT_SEEN where unseen) over the runs that trained on it."""
    n = masks.shape[1]
    out = np.full(n, np.nan)
    for s in range(0, n, chunk):
        m = np.asarray(masks[:, s : s + chunk], dtype=bool)
        v = np.asarray(values[:, s : s + chunk])
        v = np.where(v == NOT_SEEN, np.nan, v.astype(np.float64)) if v.dtype == np.uint8 else v.astype(np.float64)
        v = np.where(m, v, 0.0)
        counts = m.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + chunk] = np.nansum(v, 0) / counts
    return out


def training_scores(masks: np.ndarray, signals: dict[str, np.ndarray], epochs: int) -> dict[str, np.ndarray]:
    """Loss, margin, AUM, EL2N, forgetting and learning speed per example, from the stored signals."""
    mean = {name: in_model_means(masks, signals[name]) for name in signals}
    return {
        "loss": mean["loss"],
        "margin": mean["margin"],
        "aum": mean["aum"],
        "el2n": mean["el2n"],
        "forgetting": mean["forgetting"],
        "learning_speed": mean["correct_epochs"] / epochs,
    }


def out_of_sample_probs(
    masks: np.ndarray, topk_prob: np.ndarray, topk_class: np.ndarray, num_classes: int, chunk: int = 2048
) -> np.ndarray:
    """(n, C) class probabilities per example, averaged over the runs that left it out.

    Each run's probabilities are rebuilt from its top k: the rest of the mass is spread evenly over the other
    C - k classes (nothing is lost when k = C). An example that no run left out gets the uniform distribution.
    """
    runs, n, k = topk_prob.shape
    out = np.zeros((n, num_classes))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out_runs = ~np.asarray(masks[:, s:e], dtype=bool)  # (runs, b)
        p = np.asarray(topk_prob[:, s:e], dtype=np.float64) * out_runs[..., None]
        c = np.asarray(topk_class[:, s:e], dtype=np.int64)
        acc = np.zeros((e - s, num_classes))
        rows = np.broadcast_to(np.arange(e - s)[None, :, None], c.shape)
        np.add.at(acc, (rows.ravel(), c.ravel()), p.ravel())
        if k < num_classes:  # each run's leftover mass, evenly over the C - k classes outside its top k
            share = np.clip(1.0 - p.sum(-1), 0.0, None) * out_runs / (num_classes - k)  # (runs, b)
            acc += share.sum(0)[:, None]
            np.add.at(acc, (rows.ravel(), c.ravel()), -np.broadcast_to(share[..., None], c.shape).ravel())
        counts = out_runs.sum(0)
        acc = np.where(counts[:, None] > 0, acc / np.maximum(counts, 1)[:, None], 1.0 / num_classes)
        out[s:e] = acc / acc.sum(1, keepdims=True)
    return out


def cleanlab_scores(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's label-quality scores (self-confidence) and its `find_label_issues` mask, from the library."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    issues = find_label_issues(labels, probs, n_jobs=1)
    return np.asarray(quality, dtype=np.float64), np.asarray(issues, dtype=bool)


def suspicion(name: str, score: np.ndarray) -> np.ndarray:
    """The score signed so that higher means more suspicious; NaN (no estimate) ranks as least suspicious."""
    signed = SUSPICIOUS[name][0] * np.asarray(score, dtype=np.float64)
    return np.where(np.isfinite(signed), signed, -np.inf)
