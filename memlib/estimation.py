"""Memorization and influence estimates: masked averages over runs, with standard errors.

For a run t let m_t[i] say whether train example i was in its subset and v_t[j] a per-example outcome
(correctness, or the true-label probability). Then

    estimate[i, j] = mean(v_t[j] : m_t[i]) - mean(v_t[j] : not m_t[i])

with the standard error of a difference of two independent means,
sqrt(s_in^2 / n_in + s_out^2 / n_out), where s^2 are sample variances (ddof=1). Memorization is the
diagonal (v = train outcome, j = i); influence uses test outcomes. Every array is in the dataset's
original order; index arrays beside it map positions to original indices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from .config import Config, resolve
from .data import Dataset
from .store import Store


@dataclass
class MaskedDiff:
    """Estimate, its standard error, and the numbers of runs in and out, per example (or pair)."""

    value: np.ndarray
    se: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def _finish(s_in, q_in, s_out, q_out, n_in, n_out) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_in, mean_out = s_in / n_in, s_out / n_out
        var_in = np.maximum(q_in - n_in * mean_in**2, 0) / (n_in - 1)
        var_out = np.maximum(q_out - n_out * mean_out**2, 0) / (n_out - 1)
        se = np.sqrt(var_in / n_in + var_out / n_out)
    return mean_in - mean_out, se


def memorization(masks: np.ndarray, outcomes: np.ndarray) -> MaskedDiff:
    """Self-influence of each train example: mean outcome when trained on it minus when not (T x n inputs)."""
    m = np.asarray(masks, dtype=bool)
    v = np.asarray(outcomes, dtype=np.float64)
    if m.shape != v.shape:
        raise ValueError(f"masks {m.shape} and outcomes {v.shape} must both be runs x train examples")
    n_in = m.sum(0).astype(np.float64)
    n_out = m.shape[0] - n_in
    s_in, q_in = (v * m).sum(0), (v * v * m).sum(0)
    s_out, q_out = v.sum(0) - s_in, (v * v).sum(0) - q_in
    value, se = _finish(s_in, q_in, s_out, q_out, n_in, n_out)
    return MaskedDiff(value, se, n_in, n_out)


def influence(masks: np.ndarray, outcomes: np.ndarray, rows: np.ndarray | slice = slice(None)) -> MaskedDiff:
    """Influence of train examples `rows` on every example of `outcomes` (T x m): a (len(rows) x m) MaskedDiff.

    Sums are matrix products in float32, exact for counts below 2**24.
    """
    m = np.asarray(masks[:, rows], dtype=np.float32)
    v = np.asarray(outcomes, dtype=np.float32)
    if m.shape[0] != v.shape[0]:
        raise ValueError(f"masks have {m.shape[0]} runs but outcomes have {v.shape[0]}")
    n_in = m.sum(0, dtype=np.float64)[:, None]
    n_out = m.shape[0] - n_in
    s_in = (m.T @ v).astype(np.float64)
    q_in = (m.T @ (v * v)).astype(np.float64)
    s_out = v.sum(0, dtype=np.float64)[None] - s_in
    q_out = (v * v).sum(0, dtype=np.float64)[None] - q_in
    value, se = _finish(s_in, q_in, s_out, q_out, n_in, n_out)
    return MaskedDiff(value, se, np.broadcast_to(n_in, value.shape), np.broadcast_to(n_out, value.shape))


@dataclass
class Pairs:
    """High-influence pairs, by position in the train and test arrays."""

    tr_pos: np.ndarray
    tt_pos: np.ndarray
    infl: np.ndarray
    infl_se: np.ndarray
    mem: np.ndarray

    def __len__(self) -> int:
        return len(self.tr_pos)

    def keys(self) -> set[tuple[int, int]]:
        return set(zip(self.tr_pos.tolist(), self.tt_pos.tolist()))


def high_influence_pairs(
    masks: np.ndarray,
    test_outcomes: np.ndarray,
    mem: np.ndarray,
    tr_labels: np.ndarray,
    tt_labels: np.ndarray,
    infl_threshold: float = 0.15,
    mem_threshold: float = 0.25,
    chunk: int = 1024,
) -> Pairs:
    """Pairs (i, j) with infl >= infl_threshold, mem[i] >= mem_threshold and the same label.

    Only train examples that pass the mem threshold are scored, in chunks, so memory stays bounded.
    """
    cand = np.flatnonzero(mem >= mem_threshold)
    parts = []
    for s in range(0, len(cand), chunk):
        rows = cand[s : s + chunk]
        d = influence(masks, test_outcomes, rows)
        hit = (d.value >= infl_threshold) & (tr_labels[rows][:, None] == tt_labels[None, :])
        r, j = np.nonzero(hit)
        parts.append((rows[r], j, d.value[r, j], d.se[r, j]))
    if not parts:
        empty = np.zeros(0)
        return Pairs(empty.astype(np.int64), empty.astype(np.int64), empty, empty, empty)
    tr, tt, infl, se = (np.concatenate(p) for p in zip(*parts))
    order = np.lexsort((tt, tr))
    return Pairs(tr[order], tt[order], infl[order], se[order], mem[tr[order]])


# ---------------------------------------------------------------------------------------------------
# The study's estimates
# ---------------------------------------------------------------------------------------------------


@dataclass
class Estimates:
    """Per-example memorization and high-influence pairs, in original order, with their uncertainty."""

    mem: MaskedDiff
    pairs: Pairs
    tr_labels: np.ndarray
    tt_labels: np.ndarray
    tr_index: np.ndarray
    tt_index: np.ndarray
    num_models: int
    thresholds: dict = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        """Write an npz with the authors' published key names (indices in the dataset's original order)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            tr_mem=self.mem.value,
            tr_mem_se=self.mem.se,
            tr_n_in=self.mem.n_in.astype(np.int32),
            tr_n_out=self.mem.n_out.astype(np.int32),
            tr_labels=self.tr_labels,
            tt_labels=self.tt_labels,
            tr_index=self.tr_index,
            tt_index=self.tt_index,
            tr_idx=self.tr_index[self.pairs.tr_pos],
            tt_idx=self.tt_index[self.pairs.tt_pos],
            infl=self.pairs.infl,
            infl_se=self.pairs.infl_se,
            mem=self.pairs.mem,
            num_models=np.int64(self.num_models),
            infl_threshold=np.float64(self.thresholds.get("infl", np.nan)),
            mem_threshold=np.float64(self.thresholds.get("mem", np.nan)),
        )
        return path

    @classmethod
    def load(cls, path: Path) -> Estimates:
        """Read an npz written by `save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run the estimation stage (02_estimate) first")
        with np.load(path) as f:
            d = {k: f[k] for k in f.files}
        tr_pos = np.searchsorted(d["tr_index"], d["tr_idx"])
        tt_pos = np.searchsorted(d["tt_index"], d["tt_idx"])
        return cls(
            mem=MaskedDiff(d["tr_mem"], d["tr_mem_se"], d["tr_n_in"], d["tr_n_out"]),
            pairs=Pairs(tr_pos, tt_pos, d["infl"], d["infl_se"], d["mem"]),
            tr_labels=d["tr_labels"],
            tt_labels=d["tt_labels"],
            tr_index=d["tr_index"],
            tt_index=d["tt_index"],
            num_models=int(d["num_models"]),
            thresholds={"infl": float(d["infl_threshold"]), "mem": float(d["mem_threshold"])},
        )

    def top_memorized(self, k: int) -> np.ndarray:
        """Positions of the k training examples with the highest mem."""
        return np.argsort(-self.mem.value, kind="stable")[:k]


def estimate_from_arrays(
    masks: np.ndarray,
    train_outcomes: np.ndarray,
    test_outcomes: np.ndarray,
    data: Dataset,
    infl_threshold: float,
    mem_threshold: float,
) -> Estimates:
    """Memorization and high-influence pairs from runs' masks and outcomes."""
    mem = memorization(masks, train_outcomes)
    pairs = high_influence_pairs(
        masks, test_outcomes, mem.value, data.y_train, data.y_test, infl_threshold, mem_threshold
    )
    return Estimates(
        mem=mem,
        pairs=pairs,
        tr_labels=data.y_train,
        tt_labels=data.y_test,
        tr_index=data.train_index,
        tt_index=data.test_index,
        num_models=len(masks),
        thresholds={"infl": infl_threshold, "mem": mem_threshold},
    )


def estimate(cfg: Config, store: Store, data: Dataset) -> Estimates:
    """Stage 2: estimates from a complete subset store."""
    store.require_complete()
    return estimate_from_arrays(
        np.asarray(store["masks"]),
        np.asarray(store["train_correct"]),
        np.asarray(store["test_correct"]),
        data,
        cfg.infl_threshold,
        cfg.mem_threshold,
    )


def split_half(cfg: Config, store: Store, data: Dataset) -> dict:
    """Estimates from two disjoint halves of the runs (even and odd indices): Spearman of mem, Jaccard of pairs."""
    masks, trc, ttc = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    halves = [slice(0, None, 2), slice(1, None, 2)]
    est = [estimate_from_arrays(masks[h], trc[h], ttc[h], data, cfg.infl_threshold, cfg.mem_threshold) for h in halves]
    a, b = est[0].pairs.keys(), est[1].pairs.keys()
    union = a | b
    with warnings.catch_warnings():  # constant halves (a noiseless learner) have no rank correlation: nan
        warnings.simplefilter("ignore")
        a_mem, b_mem = est[0].mem.value, est[1].mem.value
        ok = np.isfinite(a_mem) & np.isfinite(b_mem)  # an example left out of no model of a half has no estimate
        spearman = float(stats.spearmanr(a_mem[ok], b_mem[ok]).statistic)
        pearson = float(np.corrcoef(a_mem[ok], b_mem[ok])[0, 1])
    high_a = set(np.flatnonzero(est[0].mem.value >= cfg.mem_threshold).tolist())
    high_b = set(np.flatnonzero(est[1].mem.value >= cfg.mem_threshold).tolist())
    return {
        "mem_a": est[0].mem.value,
        "mem_b": est[1].mem.value,
        "models_per_half": [int(len(masks[h])) for h in halves],
        "mem_spearman": spearman,
        "mem_pearson": pearson,
        "examples_compared": int(ok.sum()),
        "high_mem_jaccard": len(high_a & high_b) / max(len(high_a | high_b), 1),
        "pairs_a": len(a),
        "pairs_b": len(b),
        "pairs_both": len(a & b),
        "pairs_jaccard": len(a & b) / len(union) if union else float("nan"),
    }


def se_curve(masks: np.ndarray, outcomes: np.ndarray, counts: list[int] | None = None) -> dict[str, np.ndarray]:
    """Memorization's error against the number of runs k: the mean standard error from the first k runs, and
    the error seen between the first k and the last k runs (two disjoint estimates; rms difference / sqrt 2).

    Both are averaged over the examples whose outcome varies across all runs (the rest have zero error).
    If the standard errors are calibrated, the two curves agree.
    """
    total = len(masks)
    if counts is None:
        counts = sorted({int(c) for c in np.geomspace(min(20, total), total, 12)})
    varies = np.asarray(outcomes).min(0) != np.asarray(outcomes).max(0)
    mean_se, seen = [], []
    for k in counts:
        first = memorization(masks[:k], outcomes[:k])
        mean_se.append(float(np.nanmean(first.se[varies])) if varies.any() else 0.0)
        if 2 * k <= total:
            last = memorization(masks[-k:], outcomes[-k:])
            diff = (first.value - last.value)[varies]
            seen.append(float(np.sqrt(np.nanmean(diff**2) / 2)) if varies.any() else 0.0)
        else:
            seen.append(np.nan)
    return {
        "models": np.array(counts),
        "mean_se": np.array(mean_se),
        "observed_error": np.array(seen),
        "examples": int(varies.sum()),
    }


# ---------------------------------------------------------------------------------------------------
# Comparison with the authors' published estimates
# ---------------------------------------------------------------------------------------------------


PUBLISHED_SOURCES = (
    "The authors publish CIFAR-100/ImageNet pairs in pluskid/influence-memorization (docs/data/) and C-scores in "
    "pluskid/structural-regularity (docs/cscores/); set published_pairs / published_cscores to where you saved "
    "them, or null."
)


def _published(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    path = resolve(path)
    if not path.is_file():
        raise FileNotFoundError(f"published file {path} not found. {PUBLISHED_SOURCES}")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in keys if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks keys {missing} (has {f.files})")
        return {k: f[k] for k in keys}


def compare_pairs(est: Estimates, published_path: str | Path) -> dict:
    """Overlap of the reproduced high-influence pairs with published ones (indices in original order)."""
    pub = _published(published_path, ("tr_idx", "tt_idx", "infl", "mem"))
    ours = set(zip(est.tr_index[est.pairs.tr_pos].tolist(), est.tt_index[est.pairs.tt_pos].tolist()))
    theirs = set(zip(pub["tr_idx"].tolist(), pub["tt_idx"].tolist()))
    both = ours & theirs
    their_tests, our_tests = {j for _, j in theirs}, {j for _, j in ours}
    return {
        "reproduced_pairs": len(ours),
        "published_pairs": len(theirs),
        "pairs_in_both": len(both),
        "pairs_jaccard": len(both) / len(ours | theirs) if ours | theirs else float("nan"),
        "published_test_examples": len(their_tests),
        "published_test_examples_recovered": len(their_tests & our_tests),
        "published_train_examples": len({i for i, _ in theirs}),
    }


def compare_cscores(est: Estimates, cscores_path: str | Path) -> dict:
    """Spearman correlation of reproduced mem with published C-scores (expected negative: typical = high C)."""
    pub = _published(cscores_path, ("labels", "scores"))
    if est.tr_index.max() >= len(pub["scores"]):
        raise ValueError(f"C-scores cover {len(pub['scores'])} examples; this run indexes up to {est.tr_index.max()}")
    labels_agree = float(np.mean(pub["labels"][est.tr_index] == est.tr_labels))
    scores = pub["scores"][est.tr_index]
    return {
        "examples": len(scores),
        "labels_agree": labels_agree,
        "spearman_mem_vs_cscore": float(stats.spearmanr(est.mem.value, scores).statistic),
    }


def compare_published(cfg: Config, est: Estimates) -> dict:
    """Both comparisons the config asks for (published_pairs / published_cscores); {} when it asks for none."""
    out = {}
    if cfg.published_pairs:
        out["pairs"] = compare_pairs(est, cfg.published_pairs)
    if cfg.published_cscores:
        out["cscores"] = compare_cscores(est, cfg.published_cscores)
    return out
