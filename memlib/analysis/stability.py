"""How stable the estimates are: agreement of two estimates, split halves of the runs, convergence with runs.

The one home of three ideas that stages 2, 4 and 5 share:

- `jaccard` of two sets and `correlations` (Spearman, Pearson) of two scores: how much two estimates agree;
- `split_half`: every estimate again from two disjoint halves of the runs (even- and odd-indexed);
- `convergence`: mem's error against the number of runs t, from the standard-error formula and as observed
  between two disjoint sets of t runs, beside the paper's bound.

Pure numpy and scipy over runs x examples arrays; the estimators are memlib.analysis.estimation's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from .estimation import MaskedDiff, Pairs, high_influence_pairs, memorization

if TYPE_CHECKING:
    pass

# ---------------------------------------------------------------------------------------------------
# Agreement of two estimates
# ---------------------------------------------------------------------------------------------------


def jaccard(a: set, b: set, empty: float = float("nan")) -> float:
    """|a & b| / |a | b|; `empty` when both sets are empty (NaN: there is no agreement to measure)."""
    union = a | b
    return len(a & b) / len(union) if union else empty


def correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Spearman and Pearson of two scores over the examples where both are finite, and how many those are.

    Both are NaN where fewer than 3 examples are comparable or either score is constant on them.
    """
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), float("nan"), int(ok.sum())
    return float(stats.spearmanr(a[ok], b[ok]).statistic), float(np.corrcoef(a[ok], b[ok])[0, 1]), int(ok.sum())


# ---------------------------------------------------------------------------------------------------
# Split halves
# ---------------------------------------------------------------------------------------------------

# The two halves of the runs: even- and odd-indexed, disjoint, each spread over the whole order of training.
HALVES = (slice(0, None, 2), slice(1, None, 2))

# A way to select high-influence pairs from some runs: (masks, test outcomes, mem from those runs) -> pairs.
PairSelector = Callable[[np.ndarray, np.ndarray, np.ndarray], Pairs]
FIXED = "fixed"  # the name of the paper's pair set (its fixed cut-offs), which every split selects


def pair_keys(name: str) -> tuple[str, str, str, str]:
    """The names of a pair set's split-half figures: its size in half a, in half b, in both, and their Jaccard."""
    return f"pairs_{name}_half_a", f"pairs_{name}_half_b", f"pairs_{name}_both_halves", f"pairs_jaccard_{name}"


@dataclass
class SplitHalf:
    """mem and the pair sets estimated from each half of the runs (`HALVES`), and how well the halves agree.

    `pairs` maps a pair set's name to its keys from half a and from half b; FIXED is the paper's cut-offs.
    """

    mem_a: np.ndarray
    mem_b: np.ndarray
    models_per_half: list[int]
    pairs: dict[str, tuple[set, set]]
    mem_threshold: float

    def mem_agreement(self) -> dict:
        """Spearman and Pearson of the halves' mem, over the examples both define; Jaccard of mem >= threshold.

        The Jaccard is 0 (not NaN) when no example reaches the threshold in either half, as stage 2 always wrote it.
        """
        spearman, pearson, compared = correlations(self.mem_a, self.mem_b)
        high_a = set(np.flatnonzero(self.mem_a >= self.mem_threshold).tolist())
        high_b = set(np.flatnonzero(self.mem_b >= self.mem_threshold).tolist())
        return {
            "mem_spearman": spearman,
            "mem_pearson": pearson,
            "examples_compared": compared,
            "high_mem_jaccard": jaccard(high_a, high_b, empty=0.0),
        }

    def pair_agreement(self, name: str) -> tuple[int, int, int, float]:
        """A pair set's size in half a, in half b, in both, and the Jaccard of the two."""
        a, b = self.pairs[name]
        return len(a), len(b), len(a & b), jaccard(a, b)

    def summary(self) -> dict:
        """Stage 2's figures (split_half.json: the scalars), with both halves' mem beside them (arrays): mem's
        agreement and every pair set's (`pair_summary`)."""
        return {
            "mem_a": self.mem_a,
            "mem_b": self.mem_b,
            "models_per_half": self.models_per_half,
            **self.mem_agreement(),
            **self.pair_summary(),
        }

    def pair_summary(self) -> dict:
        """Each pair set's size in each half and in both, and its Jaccard: `pairs_<set>_half_a`, `pairs_<set>_half_b`,
        `pairs_<set>_both_halves`, `pairs_jaccard_<set>` (split_half.json's names, which stage 5 copies)."""
        return {key: value for name in self.pairs for key, value in zip(pair_keys(name), self.pair_agreement(name))}


def split_half_from_arrays(
    masks: np.ndarray,
    train_outcomes: np.ndarray,
    test_outcomes: np.ndarray,
    tr_labels: np.ndarray,
    tt_labels: np.ndarray,
    infl_threshold: float,
    mem_threshold: float,
    selectors: dict[str, PairSelector] | None = None,
) -> SplitHalf:
    """mem and the high-influence pairs from each half of the runs (even- and odd-indexed), for comparing them.

    Each half selects the paper's pairs at the fixed cut-offs (`fixed`) and, by name, any pair set of
    `selectors` (stage 5: the FDR-controlled ones), each from that half's mem.
    """
    selectors = {FIXED: _fixed(tr_labels, tt_labels, infl_threshold, mem_threshold), **(selectors or {})}
    mems, sets = [], {name: [] for name in selectors}
    for h in HALVES:
        m, ttc = masks[h], test_outcomes[h]
        mem = memorization(m, train_outcomes[h]).value
        mems.append(mem)
        for name, select in selectors.items():
            sets[name].append(select(m, ttc, mem).keys())
    halves = [int(len(masks[h])) for h in HALVES]
    return SplitHalf(mems[0], mems[1], halves, {k: (a, b) for k, (a, b) in sets.items()}, mem_threshold)


def replication_curve(
    masks: np.ndarray,
    train_outcomes: np.ndarray,
    test_outcomes: np.ndarray,
    tr_labels: np.ndarray,
    tt_labels: np.ndarray,
    infl_threshold: float,
    mem_threshold: float,
    selectors: dict[str, PairSelector] | None = None,
    counts: list[int] | None = None,
    full: SplitHalf | None = None,
) -> dict[str, list]:
    """Split-half agreement against the number of models: for each t of `counts`, the first t runs split in halves.

    Per t: mem's split-half Spearman, and each pair set's sizes in both halves and Jaccard (the fixed cut-offs and
    every one of `selectors`), so that a reader sees how many models a stable pair set needs. `counts` defaults to
    16, 32, 64, ... and all the runs. `full`, the split of all the runs with the same selectors where the caller
    has it (stage 2's split_half), is the last point rather than computed again.
    """
    total = len(masks)
    if counts is None:
        counts = sorted({*(2**i for i in range(4, int(np.log2(max(total, 1))) + 1)), total})
    out: dict[str, list] = {"models": []}
    for t in [c for c in counts if 4 <= c <= total]:
        if full is not None and t == total:
            halves = full
        else:
            halves = split_half_from_arrays(
                masks[:t], train_outcomes[:t], test_outcomes[:t], tr_labels, tt_labels, infl_threshold,
                mem_threshold, selectors,
            )  # fmt: skip
        out["models"].append(int(t))
        out.setdefault("mem_spearman", []).append(halves.mem_agreement()["mem_spearman"])
        for key, value in halves.pair_summary().items():
            out.setdefault(key, []).append(value)
    return out


def _fixed(tr_labels, tt_labels, infl_threshold: float, mem_threshold: float) -> PairSelector:
    """The paper's selection: same label, infl >= infl_threshold, mem >= mem_threshold."""

    def select(masks: np.ndarray, test_outcomes: np.ndarray, mem: np.ndarray) -> Pairs:
        return high_influence_pairs(masks, test_outcomes, mem, tr_labels, tt_labels, infl_threshold, mem_threshold)

    return select


# ---------------------------------------------------------------------------------------------------
# Convergence with the number of runs
# ---------------------------------------------------------------------------------------------------


def paper_bound(t: np.ndarray, p: float) -> np.ndarray:
    """The paper's bound on E[(est - infl_m)^2] for t runs at subset ratio p: 1/(pt) + 1/((1-p)t) + e^(-pt/16)/2."""
    p = min(p, 1 - p)
    t = np.asarray(t, dtype=np.float64)
    return 1 / (p * t) + 1 / ((1 - p) * t) + np.exp(-p * t / 16) / 2


@dataclass
class Convergence:
    """mem's error against the number of runs t (one value per t in `models`).

    Two sets of examples are averaged over, kept side by side (stage 5 and stage 4 each used one):
    - over every example: `mean_se` (the standard-error formula, from the first t runs), `observed_rms` (the rms
      difference of mem from the first t and from the last t runs, over sqrt 2: the error of one estimate from
      t runs, the two being independent) and their `spearman`, over the examples both estimates define;
    - over the `examples_varying` examples whose outcome varies across all the runs (the rest have no error at
      any t): `mean_se_varying` and `observed_rms_varying`, 0 when none varies.
    Observed errors and Spearman need disjoint runs: NaN where 2t exceeds the `total_models` runs.
    `bound_rms` is the square root of the paper's bound (an rms error) at the subset ratio.
    """

    models: np.ndarray
    mean_se: np.ndarray
    observed_rms: np.ndarray
    spearman: np.ndarray
    bound_rms: np.ndarray
    mean_se_varying: np.ndarray
    observed_rms_varying: np.ndarray
    examples_varying: int
    total_models: int

    def summary(self) -> dict[str, np.ndarray]:
        """The figures validation.json keeps (as `convergence_<name>`)."""
        names = ("models", "mean_se", "observed_rms", "spearman", "bound_rms")
        return {name: getattr(self, name) for name in names}


def convergence(masks: np.ndarray, outcomes: np.ndarray, ratio: float, counts: list[int] | None = None) -> Convergence:
    """mem's error against the number of runs t (subsampling the recorded runs), with the paper's bound.

    `counts` defaults to 8 values of t spread geometrically from 10 up to half the runs (two disjoint sets).
    """
    masks, outcomes = np.asarray(masks), np.asarray(outcomes)
    total = len(masks)
    if counts is None:
        counts = sorted({int(c) for c in np.geomspace(min(10, total // 2), total // 2, 8)})
    varies = outcomes.min(0) != outcomes.max(0)
    rows: dict[str, list[float]] = {name: [] for name in _ROW}
    for t in counts:
        first = memorization(masks[:t], outcomes[:t])
        last = memorization(masks[-t:], outcomes[-t:]) if 2 * t <= total else None
        for name, value in _errors(first, last, varies).items():
            rows[name].append(value)
    return Convergence(
        models=np.array(counts),
        **{name: np.array(values) for name, values in rows.items()},
        bound_rms=np.sqrt(paper_bound(np.array(counts), ratio)),
        examples_varying=int(varies.sum()),
        total_models=total,
    )


_ROW = ("mean_se", "mean_se_varying", "observed_rms", "observed_rms_varying", "spearman")


def _errors(first: MaskedDiff, last: MaskedDiff | None, varies: np.ndarray) -> dict[str, float]:
    """One row of `Convergence` from mem of the first t runs and, where disjoint from them, of the last t runs."""
    nan = float("nan")
    any_varies = bool(varies.any())
    row = {
        "mean_se": float(np.nanmean(first.se)),
        "mean_se_varying": float(np.nanmean(first.se[varies])) if any_varies else 0.0,
        "observed_rms": nan,
        "observed_rms_varying": nan,
        "spearman": nan,
    }
    if last is not None:
        diff = first.value - last.value  # NaN where either estimate is undefined
        ok = np.isfinite(diff)
        row["observed_rms"] = float(np.sqrt(np.mean(diff[ok] ** 2) / 2))
        row["observed_rms_varying"] = float(np.sqrt(np.nanmean(diff[varies] ** 2) / 2)) if any_varies else 0.0
        row["spearman"] = correlations(first.value, last.value)[0]
    return row
