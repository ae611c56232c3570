"""Scores from the same runs as memorization: what researchers use instead of it, beside it.

`PEERS` is the registry: per score its sign, what it is, and how it is computed from the runs (`PeerInputs`).
Adding a score is one entry there; stage 5 ranks the flips by it, compares it with mem against the number of
models, exports it and reports it, each by looping over the registry.

The training scores average over the models that trained on an example a signal memlib.train.signals recorded
during training; cleanlab's come from out-of-sample class probabilities: averaged over the models that did
NOT train on the example, rebuilt from each model's stored top-k class probabilities. An undefined value (an
example no run trained on, or none left out) is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..columns import SIGNAL_COLUMNS
from ..columns import SIGNAL_NOT_SEEN as NOT_SEEN


@dataclass(frozen=True)
class PeerRuns:
    """What mem and the peer scores are computed from: per run its mask, train correctness, training signals
    (memlib.train.signals, by name) and top-k class probabilities of every training example."""

    masks: np.ndarray
    train_correct: np.ndarray
    signals: dict[str, np.ndarray]
    topk_prob: np.ndarray
    topk_class: np.ndarray

    @classmethod
    def from_store(cls, store) -> PeerRuns:
        """The arrays of a subset store (memlib.runs.store.Store), read once."""
        return cls(
            np.asarray(store["masks"]),
            np.asarray(store["train_correct"]),
            {name: np.asarray(store[f"signal_{name}"]) for name in SIGNAL_COLUMNS},
            np.asarray(store["train_topk_prob"]),
            np.asarray(store["train_topk_class"]),
        )

    def rows(self, rows: np.ndarray | slice) -> PeerRuns:
        """The same arrays for some of the runs."""
        signals = {k: v[rows] for k, v in self.signals.items()}
        return PeerRuns(
            self.masks[rows], self.train_correct[rows], signals, self.topk_prob[rows], self.topk_class[rows]
        )


@dataclass
class PeerInputs:
    """Everything a score may use: the runs, the labels they trained on, the number of classes and of epochs,
    and what several scores share, computed once (the out-of-sample probabilities)."""

    runs: PeerRuns
    labels: np.ndarray
    num_classes: int
    epochs: int

    @cached_property
    def out_of_sample_probs(self) -> np.ndarray:
        """(n, C) class probabilities per example, averaged over the runs that left it out."""
        return out_of_sample_probs(self.runs.masks, self.runs.topk_prob, self.runs.topk_class, self.num_classes)

    def in_model_mean(self, signal: str) -> np.ndarray:
        """Per example, the mean of a recorded training signal over the runs that trained on it."""
        return in_model_means(self.runs.masks, self.runs.signals[signal])


@dataclass(frozen=True)
class Peer:
    """A per-example score: `sign` makes "higher = more memorized / more likely mislabeled"; `doc` says what it
    is (the report's table); `score` computes it, raw (unsigned), from `PeerInputs`."""

    sign: int
    doc: str
    score: Callable[[PeerInputs], np.ndarray]


def _mem(x: PeerInputs) -> np.ndarray:
    from .estimation import memorization  # here, not above: regime (and so stage 1's training) imports this module

    return memorization(x.runs.masks, x.runs.train_correct).value


def _self_confidence(x: PeerInputs) -> np.ndarray:
    """cleanlab's self-confidence: the out-of-sample probability of the given label, as
    cleanlab.rank.get_label_quality_scores(method="self_confidence") computes it; NaN where no run left it out."""
    score = x.out_of_sample_probs[np.arange(len(x.labels)), x.labels]
    score[(~np.asarray(x.runs.masks, dtype=bool)).sum(0) == 0] = np.nan
    return score


# score name -> its sign, what it is, and how it is computed. mem is this study's; the others are its peers.
PEERS: dict[str, Peer] = {
    "mem": Peer(1, "memorization (this study)", _mem),
    "cleanlab": Peer(-1, "cleanlab label quality (self-confidence), out-of-sample probabilities", _self_confidence),
    "loss": Peer(1, "mean training loss on the given label", lambda x: x.in_model_mean("loss")),
    "margin": Peer(-1, "mean probability margin of the given label in training", lambda x: x.in_model_mean("margin")),
    "aum": Peer(-1, "area under the margin (logits; Pleiss et al. 2020)", lambda x: x.in_model_mean("aum")),
    "el2n": Peer(1, "EL2N early in training (Paul et al. 2021)", lambda x: x.in_model_mean("el2n")),
    "forgetting": Peer(1, "forgetting events (Toneva et al. 2019)", lambda x: x.in_model_mean("forgetting")),
    "learning_speed": Peer(
        -1,
        "learning speed: accuracy over training epochs (C-score proxy, Jiang et al. 2021)",
        lambda x: x.in_model_mean("correct_epochs") / x.epochs,
    ),
}


def peer_scores(inputs: PeerInputs, given: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Every registered score per training example, raw (unsigned), in the registry's order.

    `given` supplies scores already computed (stage 5 passes stage 2's mem) instead of computing them again.
    """
    given = given or {}
    return {name: np.asarray(given[name] if name in given else peer.score(inputs)) for name, peer in PEERS.items()}


def signed(name: str, score: np.ndarray) -> np.ndarray:
    """A registered score signed so that higher means more memorized / suspicious; NaN stays NaN."""
    return PEERS[name].sign * np.asarray(score, dtype=np.float64)


def signed_scores(runs: PeerRuns, labels: np.ndarray, num_classes: int, epochs: int) -> dict[str, np.ndarray]:
    """mem and every peer score from these runs alone, signed (`signed`); undefined values are NaN."""
    scores = peer_scores(PeerInputs(runs, labels, num_classes, epochs))
    return {name: signed(name, score) for name, score in scores.items()}


def suspicion(name: str, score: np.ndarray) -> np.ndarray:
    """The score signed so that higher means more suspicious; NaN (no estimate) ranks as least suspicious."""
    s = signed(name, score)
    return np.where(np.isfinite(s), s, -np.inf)


def descriptions() -> dict[str, str]:
    """What each registered score is (for the report's table)."""
    return {name: peer.doc for name, peer in PEERS.items()}


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


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's `find_label_issues` mask, from the library, given out-of-sample class probabilities."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels, probs, n_jobs=1), dtype=bool)
