"""memlib.analysis.stability against the formulas it replaced, written out here as they were (estimation.se_curve,
estimation.split_half, validation.convergence and validation.pair_sets_split_half): the same numbers, bit for bit."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_dataset
from scipy import stats

import memlib
from memlib.analysis import stability
from memlib.analysis.estimation import estimate_from_arrays, high_influence_pairs, memorization
from memlib.analysis.validation import fdr_pairs
from memlib.report.artifacts import SPLIT_HALF_FILE, write_json
from memlib.train.design import subset_mask

HALVES = [slice(0, None, 2), slice(1, None, 2)]


def synthetic(runs: int = 80, n: int = 30, m: int = 12, seed: int = 0):
    """Masks, and train and test correctness with memorized, easy, hard and noisy examples and planted pairs."""
    rng = np.random.default_rng(seed)
    masks = np.stack([subset_mask(seed, i, n, 0.7) for i in range(runs)])
    masks[:6, 0] = True  # example 0 is in each of the first 6 runs: no estimate from them
    train = rng.random((runs, n)) < 0.5 + 0.4 * masks
    train[:, 1:6] = masks[:, 1:6]  # memorized: right exactly when trained on
    train[:, 6:9] = True  # easy: always right (no error at any t)
    train[:, 9:11] = False  # never fit
    test = rng.random((runs, m)) < 0.6
    test[:, :4] = masks[:, 1:5]  # test j is decided by train j + 1
    data = tiny_dataset(n_train=n, n_test=m)
    data.y_test[:4] = data.y_train[1:5]
    return masks, train, test, data


def old_paper_bound(t, p):
    p = min(p, 1 - p)
    t = np.asarray(t, dtype=np.float64)
    return 1 / (p * t) + 1 / ((1 - p) * t) + np.exp(-p * t / 16) / 2


def old_convergence(masks, outcomes, ratio, counts=None):
    """validation.convergence as it was."""
    total = len(masks)
    if counts is None:
        counts = sorted({int(c) for c in np.geomspace(min(10, total // 2), total // 2, 8)})
    rows = {"models": [], "mean_se": [], "observed_rms": [], "spearman": [], "bound_rms": []}
    for t in counts:
        a, b = memorization(masks[:t], outcomes[:t]), memorization(masks[-t:], outcomes[-t:])
        ok = np.isfinite(a.value) & np.isfinite(b.value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(stats.spearmanr(a.value[ok], b.value[ok]).statistic) if ok.sum() > 2 else float("nan")
        rows["models"].append(t)
        rows["mean_se"].append(float(np.nanmean(a.se)))
        rows["observed_rms"].append(float(np.sqrt(np.mean((a.value[ok] - b.value[ok]) ** 2) / 2)))
        rows["spearman"].append(rho)
        rows["bound_rms"].append(float(np.sqrt(old_paper_bound(t, ratio))))
    return {k: np.array(v) for k, v in rows.items()}


def old_se_curve(masks, outcomes, counts=None):
    """estimation.se_curve as it was."""
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


def old_split_half(masks, trc, ttc, data, infl_threshold, mem_threshold):
    """estimation.split_half as it was, from arrays."""
    est = [estimate_from_arrays(masks[h], trc[h], ttc[h], data, infl_threshold, mem_threshold) for h in HALVES]
    a, b = est[0].pairs.keys(), est[1].pairs.keys()
    union = a | b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a_mem, b_mem = est[0].mem.value, est[1].mem.value
        ok = np.isfinite(a_mem) & np.isfinite(b_mem)
        spearman = float(stats.spearmanr(a_mem[ok], b_mem[ok]).statistic)
        pearson = float(np.corrcoef(a_mem[ok], b_mem[ok])[0, 1])
    high_a = set(np.flatnonzero(est[0].mem.value >= mem_threshold).tolist())
    high_b = set(np.flatnonzero(est[1].mem.value >= mem_threshold).tolist())
    return {
        "mem_a": est[0].mem.value,
        "mem_b": est[1].mem.value,
        "models_per_half": [int(len(masks[h])) for h in HALVES],
        "mem_spearman": spearman,
        "mem_pearson": pearson,
        "examples_compared": int(ok.sum()),
        "high_mem_jaccard": len(high_a & high_b) / max(len(high_a | high_b), 1),
        "pairs_a": len(a),
        "pairs_b": len(b),
        "pairs_both": len(a & b),
        "pairs_jaccard": len(a & b) / len(union) if union else float("nan"),
    }


def old_pair_sets_split_half(masks, trc, ttc, tr_labels, tt_labels, infl_threshold, mem_threshold, fdr):
    """validation.pair_sets_split_half as it was."""
    out, sets = {}, {"fixed": [], "fdr": []}
    for h in HALVES:
        m, tr, tt = masks[h], trc[h], ttc[h]
        mem = memorization(m, tr).value
        fixed = high_influence_pairs(m, tt, mem, tr_labels, tt_labels, infl_threshold, mem_threshold)
        controlled, _, _ = fdr_pairs(m, tt, mem, tr_labels, tt_labels, infl_threshold, mem_threshold, fdr)
        sets["fixed"].append(fixed.keys())
        sets["fdr"].append(controlled.keys())
    for name, (a, b) in sets.items():
        out[f"pairs_{name}_half_a"], out[f"pairs_{name}_half_b"] = len(a), len(b)
        out[f"pairs_{name}_both_halves"] = len(a & b)
        union = a | b
        out[f"pairs_jaccard_{name}"] = len(a & b) / len(union) if union else float("nan")
    return out


# stage 2's names for the fixed cut-offs' figures as they were, and the one scheme of every pair set's now
OLD_NAMES = {
    "pairs_a": "pairs_fixed_half_a",
    "pairs_b": "pairs_fixed_half_b",
    "pairs_both": "pairs_fixed_both_halves",
    "pairs_jaccard": "pairs_jaccard_fixed",
}


def renamed(old: dict) -> dict:
    """`old` with its fixed cut-offs' figures under today's names (the order kept)."""
    return {OLD_NAMES.get(k, k): v for k, v in old.items()}


def assert_same(new: dict, old: dict) -> None:
    """The same keys in the same order, and equal values (NaN equal to NaN)."""
    assert list(new) == list(old)
    for key, value in old.items():
        np.testing.assert_array_equal(new[key], value, err_msg=key)


@pytest.mark.parametrize("kind", ["correctness", "probability"])
def test_convergence_reproduces_both_curves_it_replaced(kind):
    masks, train, _, _ = synthetic()
    if kind == "probability":
        train = np.where(train, 0.9, 0.2) * np.random.default_rng(1).random(train.shape) ** 0.1
    curve = stability.convergence(masks, train, 0.7)
    assert curve.models.tolist() == [10, 12, 14, 18, 22, 26, 32, 40]  # 8 from 10 to half the runs
    assert_same(curve.summary(), old_convergence(masks, train, 0.7))
    assert np.isfinite(curve.spearman).all()
    counts = sorted({int(c) for c in np.geomspace(20, 80, 12)})  # se_curve's, up to every run
    old = old_se_curve(masks, train)
    curve = stability.convergence(masks, train, 0.7, counts=counts)
    np.testing.assert_array_equal(curve.models, old["models"])
    np.testing.assert_array_equal(curve.mean_se_varying, old["mean_se"])
    np.testing.assert_array_equal(curve.observed_rms_varying, old["observed_error"])
    assert curve.examples_varying == old["examples"] == (25 if kind == "correctness" else 30)
    late = curve.models > 40  # no disjoint last t runs: observed errors and Spearman undefined
    assert np.isnan(curve.observed_rms[late]).all() and np.isnan(curve.spearman[late]).all()
    assert np.isfinite(curve.observed_rms[~late]).all()


def test_convergence_without_any_varying_outcome_reports_no_error():
    masks, train, _, _ = synthetic()
    always = np.ones_like(train)
    curve = stability.convergence(masks, always, 0.7)
    old = old_se_curve(masks, always, counts=curve.models.tolist())
    assert curve.examples_varying == 0
    np.testing.assert_array_equal(curve.mean_se_varying, old["mean_se"])
    np.testing.assert_array_equal(curve.observed_rms_varying, old["observed_error"])
    assert_same(curve.summary(), old_convergence(masks, always, 0.7))


def test_split_half_reproduces_stage_two_and_stage_five_figures():
    masks, train, test, data = synthetic()
    old = old_split_half(masks, train, test, data, 0.15, 0.25)
    assert old["pairs_both"] > 0 and 0 < old["high_mem_jaccard"] < 1, "the case exercises every figure"
    want = old_pair_sets_split_half(masks, train, test, data.y_train, data.y_test, 0.15, 0.25, 0.05)
    assert want["pairs_fdr_both_halves"] > 0, "the case exercises the controlled set"
    cfg = SimpleNamespace(infl_threshold=0.15, mem_threshold=0.25, pair_fdr=0.05)
    store = {"masks": masks, "train_correct": train, "test_correct": test}
    # stage 2's figures as they were, the fixed cut-offs' under stage 5's names, then the controlled set's
    controlled = {k: v for k, v in want.items() if "fdr" in k}
    assert_same(memlib.split_half(cfg, store, data), {**renamed(old), **controlled})

    def fdr(m, test_outcomes, mem):
        return fdr_pairs(m, test_outcomes, mem, data.y_train, data.y_test, 0.15, 0.25, 0.05)[0]

    halves = stability.split_half_from_arrays(
        masks, train, test, data.y_train, data.y_test, 0.15, 0.25, selectors={"fdr": fdr}
    )
    assert_same(halves.pair_summary(), want)


def test_split_half_where_nothing_reaches_the_threshold_keeps_a_zero_jaccard():
    masks, train, test, data = synthetic()
    old = old_split_half(masks, train, test, data, 0.15, 2.0)
    new = stability.split_half_from_arrays(masks, train, test, data.y_train, data.y_test, 0.15, 2.0).summary()
    assert_same(new, renamed(old))
    assert new["high_mem_jaccard"] == 0.0 and np.isnan(new["pairs_jaccard_fixed"])


def test_jaccard_and_correlations():
    assert stability.jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert np.isnan(stability.jaccard(set(), set())) and stability.jaccard(set(), set(), empty=0.0) == 0.0
    a = np.array([1.0, 2.0, np.nan, 4.0, 3.0])
    b = np.array([2.0, 4.0, 1.0, 9.0, np.inf])
    assert stability.correlations(a, b) == (1.0, pytest.approx(np.corrcoef([1, 2, 4], [2, 4, 9])[0, 1]), 3)
    spearman, pearson, n = stability.correlations(a, np.ones(5))
    assert np.isnan(spearman) and np.isnan(pearson) and n == 4, "a constant score has no correlation"


def test_the_replication_curve_is_split_half_agreement_of_the_first_t_models():
    masks, train, test, data = synthetic()
    labels = (data.y_train, data.y_test)

    def fdr(m, test_outcomes, mem):
        return fdr_pairs(m, test_outcomes, mem, *labels, 0.15, 0.25, 0.05)[0]

    curve = stability.replication_curve(masks, train, test, *labels, 0.15, 0.25, {"fdr": fdr}, counts=[20, 40, 80])
    assert curve["models"] == [20, 40, 80]
    for k, t in enumerate(curve["models"]):  # each point is split_half_from_arrays on the first t runs
        want = stability.split_half_from_arrays(masks[:t], train[:t], test[:t], *labels, 0.15, 0.25, {"fdr": fdr})
        assert curve["mem_spearman"][k] == want.mem_agreement()["mem_spearman"]
        for key in ("pairs_jaccard_fdr", "pairs_jaccard_fixed", "pairs_fdr_both_halves"):
            np.testing.assert_equal(curve[key][k], want.pair_summary()[key])  # (NaN: no pair in either half)
    assert curve["pairs_fdr_both_halves"][-1] > 0, "the planted pairs replicate at 80 models"
    assert curve["mem_spearman"][-1] > curve["mem_spearman"][0], "more models, more agreement"
    default = stability.replication_curve(masks, train, test, *labels, 0.15, 0.25)
    assert default["models"] == [16, 32, 64, len(masks)] and "pairs_jaccard_fdr" not in default


def test_the_replication_curve_takes_the_whole_split_as_its_last_point_only(monkeypatch):
    """Stage 2 passes its split of all the runs (`full`): the curve is the same, that split is its last point
    and not computed again, and no other point uses it (a curve that took `full` at every t would fail)."""
    masks, train, test, data = synthetic()
    labels = (data.y_train, data.y_test)
    counts = [20, 40, len(masks)]
    full = stability.split_half_from_arrays(masks, train, test, *labels, 0.15, 0.25)
    want = stability.replication_curve(masks, train, test, *labels, 0.15, 0.25, counts=counts)
    calls = []
    real = stability.split_half_from_arrays
    monkeypatch.setattr(stability, "split_half_from_arrays", lambda m, *a: calls.append(len(m)) or real(m, *a))
    got = stability.replication_curve(masks, train, test, *labels, 0.15, 0.25, counts=counts, full=full)
    assert calls == [20, 40], "the whole split is not computed again"
    for key, values in want.items():
        np.testing.assert_equal(got[key], values)


class _Rows(dict):
    """A store's arrays by name, with its number of rows (what stage 2 reads of a Store)."""

    rows = 80

    def require_complete(self) -> None:
        pass


def test_stage_five_takes_stage_twos_split_only_where_it_was_made_at_its_selection(tmp_path):
    """Stage 5 copies split_half.json's pair figures rather than splitting again, and splits again where the config
    selects otherwise. Fails when the file is read whatever selection made it (the changed rate and the other model
    count then get stage 2's figures), and when stage 5 never reads it."""
    from memlib.stages import estimate as stage2
    from memlib.stages import validate as stage5

    masks, train, test, data = synthetic()
    store = _Rows(masks=masks, train_correct=train, test_correct=test)
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path))
    written = stage2.split_half_stage(cfg, store, data).pair_summary()
    assert written["pairs_fdr_both_halves"] > 0, "the case selects pairs in both halves"
    assert stage2.stored_pair_agreement(cfg, len(masks)) == pytest.approx(written, abs=1e-6)  # (JSON keeps 6 digits)
    assert stage2.stored_pair_agreement(cfg.replace(pair_fdr=0.2), len(masks)) is None
    assert (
        stage2.stored_pair_agreement(cfg, len(masks)).keys()
        == written.keys()
        == {key for name in (stability.FIXED, stage2.CONTROLLED) for key in stability.pair_keys(name)}
    ), "exactly the figures of both pair sets"
    assert stage2.stored_pair_agreement(cfg, len(masks) - 2) is None
    # stage 5's figures: stage 2's where they match, a split of its own where they do not (sizes differ at 0.2)
    est = stage2.estimate(cfg, store, data)
    mark = {**written, "pairs_jaccard_fdr": -1.0}  # a value no split gives: seen only if the file is read
    write_json({**mark, "selection": stage2.split_selection(cfg, len(masks))}, cfg.out_dir / SPLIT_HALF_FILE)
    assert stage5._pair_sets(cfg, store, data, est)[0]["pairs_jaccard_fdr"] == -1.0
    other = cfg.replace(pair_fdr=0.2)
    figures = stage5._pair_sets(other, store, data, est)[0]
    assert figures["pairs_jaccard_fdr"] != -1.0
    fresh = stability.split_half_from_arrays(
        masks,
        train,
        test,
        data.y_train,
        data.y_test,
        0.15,
        0.25,
        selectors=stage2.pair_selectors(other, data),
    ).pair_summary()
    assert_same({k: figures[k] for k in fresh}, fresh)


def test_a_split_file_without_a_pair_sets_figures_is_not_taken(tmp_path):
    """A split_half.json at this selection that lacks the controlled set's figures (written by another version, or
    cut short by hand) is not taken in part: stage 5 splits again. Fails when its figures are picked by their
    names' prefix, which takes whatever pair figures the file holds."""
    from memlib.stages import estimate as stage2

    masks, train, test, data = synthetic()
    store = _Rows(masks=masks, train_correct=train, test_correct=test)
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path))
    written = stage2.split_half_stage(cfg, store, data).pair_summary()
    fixed_only = {k: v for k, v in written.items() if k in stability.pair_keys(stability.FIXED)}
    write_json({**fixed_only, "selection": stage2.split_selection(cfg, len(masks))}, cfg.out_dir / SPLIT_HALF_FILE)
    assert stage2.stored_pair_agreement(cfg, len(masks)) is None
