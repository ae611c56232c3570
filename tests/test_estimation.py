"""The estimators against cases whose answer is known exactly, and against the definition computed directly."""

from __future__ import annotations

import tracemalloc
from functools import partial

import numpy as np
import pytest
import torch
from conftest import tiny_dataset

import memlib
from memlib.analysis import estimation
from memlib.analysis.estimation import (
    estimate_from_arrays,
    export_influence,
    high_influence_pairs,
    influence,
    influence_chunks,
    is_binary,
    memorization,
)
from memlib.runs.local import run_jobs
from memlib.runs.store import Store
from memlib.runs.subsets import subset_store_spec
from memlib.train.design import subset_jobs, subset_mask
from memlib.train.engine import NearestNeighbourLearner, Outcome


def random_masks(t: int, n: int, seed: int = 0) -> np.ndarray:
    return np.stack([subset_mask(seed, i, n, 0.7) for i in range(t)])


def direct(masks: np.ndarray, outcomes: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """The definition, one pair at a time: mean over runs with i in, minus over runs with i out; and its SE."""
    inside = [outcomes[t, j] for t in range(len(masks)) if masks[t, i]]
    outside = [outcomes[t, j] for t in range(len(masks)) if not masks[t, i]]
    diff = np.mean(inside) - np.mean(outside)
    se = np.sqrt(np.var(inside, ddof=1) / len(inside) + np.var(outside, ddof=1) / len(outside))
    return float(diff), float(se)


def test_always_right_when_in_wrong_when_out_gives_mem_one():
    masks = random_masks(50, 30)
    d = memorization(masks, masks.copy())
    np.testing.assert_array_equal(d.value, 1.0)
    np.testing.assert_array_equal(d.se, 0.0)


def test_outcome_independent_of_mask_gives_mem_zero():
    masks = random_masks(50, 30)
    always = np.ones_like(masks)
    np.testing.assert_array_equal(memorization(masks, always).value, 0.0)
    never = np.zeros_like(masks)
    np.testing.assert_array_equal(memorization(masks, never).value, 0.0)


def test_hand_computed_example():
    # example 0 is in runs 0 and 1; right in run 0 only -> 1/2 - 0/2 = 0.5; se = sqrt(0.5/2 + 0/2) = 0.5
    # example 1 is in runs 1, 2, 3; right in runs 0, 1, 2 -> 2/3 - 1/1 = -1/3; se = sqrt((1/3)/3 + nan) -> nan
    masks = np.array([[1, 0], [1, 1], [0, 1], [0, 1]], dtype=bool)
    right = np.array([[1, 1], [0, 1], [0, 1], [0, 0]], dtype=bool)
    d = memorization(masks, right)
    assert d.value[0] == pytest.approx(0.5)
    assert d.se[0] == pytest.approx(0.5)
    assert d.value[1] == pytest.approx(-1 / 3)
    assert np.isnan(d.se[1])  # one run out: no sample variance, so no standard error
    np.testing.assert_array_equal(d.n_in, [2, 3])
    np.testing.assert_array_equal(d.n_out, [2, 1])


@pytest.mark.parametrize("kind", ["binary", "probability"])
def test_memorization_and_influence_equal_the_definition(kind):
    rng = np.random.default_rng(1)
    t, n, m = 60, 12, 9
    masks = random_masks(t, n, seed=3)
    if kind == "binary":
        train_out = rng.random((t, n)) < 0.3 + 0.5 * masks
        test_out = rng.random((t, m)) < 0.6
    else:
        train_out = np.clip(rng.random((t, n)) * 0.5 + 0.4 * masks, 0, 1)
        test_out = rng.random((t, m))
    mem = memorization(masks, train_out)
    infl = influence(masks, test_out)
    for i in range(n):
        v, se = direct(masks, train_out, i, i)
        assert mem.value[i] == pytest.approx(v, abs=1e-12)
        assert mem.se[i] == pytest.approx(se, abs=1e-9)
        for j in range(m):
            v, se = direct(masks, test_out, i, j)
            assert infl.value[i, j] == pytest.approx(v, abs=1e-6)
            assert infl.se[i, j] == pytest.approx(se, abs=1e-6)
    part = influence(masks, test_out, rows=np.array([3, 7]))
    np.testing.assert_allclose(part.value, infl.value[[3, 7]])


def test_pairs_equal_a_brute_force_filter_whatever_the_chunk():
    rng = np.random.default_rng(2)
    t, n, m = 80, 25, 20
    masks = random_masks(t, n)
    train_out = rng.random((t, n)) < 0.2 + 0.6 * masks
    test_out = rng.random((t, m)) < 0.5
    tr_labels, tt_labels = rng.integers(0, 2, n), rng.integers(0, 2, m)
    mem = memorization(masks, train_out).value
    infl = influence(masks, test_out).value
    want = {
        (i, j)
        for i in range(n)
        for j in range(m)
        if infl[i, j] >= 0.1 and mem[i] >= 0.2 and tr_labels[i] == tt_labels[j]
    }
    assert want, "the case should have some pairs"
    for chunk in (1, 4, 1000):
        got = high_influence_pairs(masks, test_out, mem, tr_labels, tt_labels, 0.1, 0.2, chunk=chunk)
        assert got.keys() == want
        np.testing.assert_allclose(got.infl, [infl[i, j] for i, j in zip(got.tr_pos, got.tt_pos)], atol=1e-6)
        np.testing.assert_allclose(got.mem, mem[got.tr_pos])


class PlantedLearner:
    """Train i right iff trained on; test j right iff trained on its planted source train example."""

    def __init__(self, n_train: int, sources: np.ndarray):
        self.n_train, self.sources = n_train, sources

    def fit_eval(self, train_idx, seed):
        inside = np.zeros(self.n_train, dtype=bool)
        inside[train_idx] = True
        test = inside[self.sources]
        return Outcome(inside, inside.astype(np.float32), test, test.astype(np.float32))


def test_planted_influence_through_the_store(tmp_path):
    data = tiny_dataset(n_train=30, n_test=10)
    data.y_test = data.y_train[np.arange(10) * 3]  # test j shares the label of its source 3j
    sources = np.arange(10) * 3
    cfg = memlib.load_profile("smoke").replace(num_models=200, min_out=20, results_dir=str(tmp_path))
    store = _fill(tmp_path, cfg, data, PlantedLearner(data.n_train, sources))
    est = memlib.estimate(cfg, store, data)
    np.testing.assert_array_equal(est.mem.value, 1.0)
    infl = influence(np.asarray(store["masks"]), np.asarray(store["test_correct"])).value
    np.testing.assert_array_equal(infl[sources, np.arange(10)], 1.0)
    assert {(s, j) for j, s in enumerate(sources)} <= est.pairs.keys()


@pytest.mark.filterwarnings("error")
def test_a_stores_read_only_arrays_are_estimated_without_a_warning(tmp_path):
    """A store's arrays are read-only memory maps; torch's warning about them showed in every executed notebook."""
    rng = np.random.default_rng(0)
    for name, a in {"masks": rng.random((60, 20)) < 0.7, "correct": rng.random((60, 20)) < 0.5}.items():
        np.save(tmp_path / f"{name}.npy", a)
    masks, correct = (np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("masks", "correct"))
    assert not masks.flags.writeable
    got = memorization(masks, correct)
    np.testing.assert_array_equal(got.value, memorization(np.array(masks), np.array(correct)).value)
    influence(masks, correct)


def _fill(tmp_path, cfg, data, learner) -> Store:
    spec, meta = subset_store_spec(cfg, data)
    store = Store.open(tmp_path / "store", spec, meta)
    jobs = subset_jobs(cfg, data.n_train, range(cfg.num_models))
    run_jobs(store, jobs, cfg, data, learner=learner)
    return store


def nearest_neighbour_direct(data, subset: np.ndarray, x: np.ndarray) -> np.ndarray:
    """1-NN labels for rows of x from the training examples in `subset`, written independently of memlib:
    for every query, the smallest squared distance, ties to the lowest index."""
    out = []
    flat_train = data.x_train.reshape(data.n_train, -1).astype(np.float64)
    for q in x.reshape(len(x), -1).astype(np.float64):
        best, best_i = None, None
        for i in sorted(subset):
            d = float(((flat_train[i] - q) ** 2).sum())
            if best is None or d < best:
                best, best_i = d, i
        out.append(data.y_train[best_i])
    return np.array(out)


def test_nearest_neighbour_runs_through_store_equal_the_definition(tmp_path):
    data = tiny_dataset(n_train=40, n_test=15)
    cfg = memlib.load_profile("smoke").replace(num_models=30, min_out=3, results_dir=str(tmp_path))
    store = _fill(tmp_path, cfg, data, NearestNeighbourLearner(data))
    est = estimate_from_arrays(
        np.asarray(store["masks"]), np.asarray(store["train_correct"]), np.asarray(store["test_correct"]),
        data, infl_threshold=0.15, mem_threshold=0.25,
    )  # fmt: skip
    # The definition, directly over the same subsets (each run's mask is the one its seed gives).
    runs = [np.flatnonzero(subset_mask(cfg.seed, t, data.n_train, cfg.subset_ratio)) for t in range(cfg.num_models)]
    right_train = np.array([nearest_neighbour_direct(data, s, data.x_train) == data.y_train for s in runs])
    right_test = np.array([nearest_neighbour_direct(data, s, data.x_test) == data.y_test for s in runs])
    for i in range(data.n_train):
        inside = [right_train[t, i] for t, s in enumerate(runs) if i in s]
        outside = [right_train[t, i] for t, s in enumerate(runs) if i not in s]
        assert est.mem.value[i] == pytest.approx(np.mean(inside) - np.mean(outside), abs=1e-12)
    want = set()
    for i in range(data.n_train):
        for j in range(data.n_test):
            inside = [right_test[t, j] for t, s in enumerate(runs) if i in s]
            outside = [right_test[t, j] for t, s in enumerate(runs) if i not in s]
            infl = np.mean(inside) - np.mean(outside)
            if infl >= 0.15 and est.mem.value[i] >= 0.25 and data.y_train[i] == data.y_test[j]:
                want.add((i, j))
    assert len(want) > 0, "the definition finds pairs here (fault: both sides empty, so equal whatever they hold)"
    assert est.pairs.keys() == want
    assert (est.mem.value > 0).any()


def test_estimates_round_trip_with_published_keys(tmp_path, digits):
    rng = np.random.default_rng(0)
    masks = random_masks(40, digits.n_train)
    train_out = rng.random(masks.shape) < 0.5 + 0.4 * masks
    test_out = rng.random((40, digits.n_test)) < 0.8
    est = estimate_from_arrays(masks, train_out, test_out, digits, 0.15, 0.25)
    path = est.save(tmp_path / "estimates.npz")
    with np.load(path) as f:
        for key in ("tr_mem", "tr_mem_se", "tr_labels", "tt_labels", "tr_idx", "tt_idx", "infl", "mem"):
            assert key in f.files
        # pair indices are original dataset indices
        np.testing.assert_array_equal(f["tr_idx"], digits.train_index[est.pairs.tr_pos])
        np.testing.assert_array_equal(f["tt_idx"], digits.test_index[est.pairs.tt_pos])
    back = memlib.Estimates.load(path)
    np.testing.assert_array_equal(back.mem.value, est.mem.value)
    np.testing.assert_array_equal(back.pairs.tr_pos, est.pairs.tr_pos)
    np.testing.assert_array_equal(back.pairs.tt_pos, est.pairs.tt_pos)
    assert back.num_models == 40


def test_split_half_and_convergence_on_planted_signal(tmp_path):
    data = tiny_dataset(n_train=30, n_test=10)
    sources = np.arange(10) * 3
    data.y_test = data.y_train[sources]
    cfg = memlib.load_profile("smoke").replace(num_models=200, min_out=20, results_dir=str(tmp_path))
    store = _fill(tmp_path, cfg, data, PlantedLearner(data.n_train, sources))
    sh = memlib.split_half(cfg, store, data)
    assert sh["models_per_half"] == [100, 100]
    np.testing.assert_array_equal(sh["mem_a"], 1.0)
    assert sh["pairs_jaccard_fixed"] > 0
    curve = memlib.convergence(np.asarray(store["masks"]), np.asarray(store["train_correct"]), cfg.subset_ratio)
    assert curve.models[-1] == 100 and curve.total_models == 200
    for errors in (curve.mean_se, curve.mean_se_varying, curve.observed_rms, curve.observed_rms_varying):
        np.testing.assert_array_equal(errors, 0.0)  # no noise in a planted learner


def test_standard_errors_are_calibrated():
    """Outcomes right with probability 0.3 + 0.4 * in: the formula's se matches the error seen between halves."""
    rng = np.random.default_rng(0)
    masks = random_masks(400, 300)
    noisy = rng.random(masks.shape) < 0.3 + 0.4 * masks
    curve = memlib.convergence(masks, noisy, 0.7, counts=[25, 50, 100, 200, 400])
    assert curve.examples_varying == 300
    for mean_se, observed in ((curve.mean_se, curve.observed_rms), (curve.mean_se_varying, curve.observed_rms_varying)):
        assert mean_se[0] > 3.5 * mean_se[-1]  # 25 -> 400 models: sqrt(16) = 4 times smaller
        np.testing.assert_allclose(observed[:4] / mean_se[:4], 1.0, atol=0.15)
        assert np.isnan(observed[-1])  # no disjoint halves of 400 runs of 400
    assert np.isnan(curve.spearman[-1]) and np.all(np.abs(curve.spearman[:4]) < 0.3)  # every true mem is 0.4


@pytest.mark.parametrize("flags", [frozenset(), frozenset({"avx512_vnni"})], ids=["fp32-counts", "int8-counts"])
@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32, np.float64])
def test_zero_one_outcomes_give_the_definition_exactly_whatever_their_dtype(dtype, flags, monkeypatch):
    """0/1 outcomes take the exact integer-count path, by float32 or int8 products as the CPU's flags choose:
    values equal the float64 definition bit for bit either way (a count product that rounded would fail)."""
    monkeypatch.setattr(estimation, "cpu_flags", lambda: flags)
    rng = np.random.default_rng(4)
    t, n, m = 70, 11, 13
    masks = random_masks(t, n, seed=5)
    train_out = (rng.random((t, n)) < 0.3 + 0.5 * masks).astype(dtype)
    test_out = (rng.random((t, m)) < 0.5).astype(dtype)
    mem, infl = memorization(masks, train_out), influence(masks, test_out)
    train64, test64 = train_out.astype(np.float64), test_out.astype(np.float64)
    for i in range(n):
        assert mem.value[i] == direct(masks, train64, i, i)[0]
        for j in range(m):
            v, se = direct(masks, test64, i, j)
            assert infl.value[i, j] == v
            assert infl.se[i, j] == pytest.approx(se, rel=1e-12)
    as_bool = influence(masks, test_out.astype(bool))
    np.testing.assert_array_equal(infl.value, as_bool.value)
    np.testing.assert_array_equal(infl.se, as_bool.se)


def test_count_products_follow_the_cpu():
    """int8 products where the CPU has int8 dot products (VNNI, AMX), float32 elsewhere, and int8 whenever float32
    could not hold the counts exactly; both give the same int32 counts."""
    assert estimation.count_dtype(4000, frozenset({"avx2", "fma"})) == torch.float32
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert estimation.count_dtype(4000, frozenset({"avx2", flag})) == torch.int8
    assert estimation.count_dtype(2**24, frozenset({"avx2"})) == torch.int8
    rng = np.random.default_rng(7)
    a, b = rng.random((2000, 17)) < 0.7, rng.random((2000, 23)) < 0.5  # counts near 700: a bf16 product rounds
    want = a.T.astype(np.int64) @ b.astype(np.int64)
    for dtype in (torch.int8, torch.float32):
        got = estimation.count_product(estimation.count_operand(a, dtype).T, estimation.count_operand(b, dtype))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_binary_detection():
    assert is_binary(np.array([[0, 1], [1, 1]], dtype=np.float32))
    assert is_binary(np.zeros((3, 2), dtype=bool))
    assert not is_binary(np.array([[0, 1], [0.5, 1]]))
    assert not is_binary(np.array([[0, 2]]))


def test_chunks_cover_the_rows_in_order_and_never_exceed_the_chunk():
    rng = np.random.default_rng(6)
    masks = random_masks(40, 23)
    test_out = rng.random((40, 7)) < 0.5
    rows = np.array([2, 3, 5, 8, 13, 21, 22])
    whole = influence(masks, test_out, rows)
    for chunk in (1, 3, 100):
        got = list(influence_chunks(masks, test_out, rows, chunk=chunk))
        assert all(len(r) <= chunk for r, _ in got)
        np.testing.assert_array_equal(np.concatenate([r for r, _ in got]), rows)
        np.testing.assert_array_equal(np.concatenate([d.value for _, d in got]), whole.value)
        np.testing.assert_array_equal(np.concatenate([d.se for _, d in got]), whole.se)
    with pytest.raises(ValueError, match="chunk"):
        next(influence_chunks(masks, test_out, rows, chunk=0))


def test_memorization_is_the_same_whatever_the_column_chunk():
    """Exactly so for 0/1 outcomes; probabilities' float64 sums may round differently (one column sums pairwise)."""
    rng = np.random.default_rng(7)
    masks = random_masks(50, 31)
    for out, check in (
        (rng.random((50, 31)) < 0.3 + 0.5 * masks, np.testing.assert_array_equal),
        (rng.random((50, 31)), lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)),
    ):
        whole = memorization(masks, out)
        for chunk in (1, 4, 30):
            part = memorization(masks, out, chunk=chunk)
            check(part.value, whole.value)
            check(part.se, whole.se)
            np.testing.assert_array_equal(part.n_in, whole.n_in)


@pytest.mark.parametrize("kind", ["binary", "probability"])
def test_export_writes_the_influence_matrix(tmp_path, kind):
    """Exactly influence() for 0/1 outcomes; for probabilities within float32 sums (chunks change their order)."""
    rng = np.random.default_rng(8)
    masks = random_masks(45, 17)
    test_out = rng.random((45, 6)) < 0.5 if kind == "binary" else rng.random((45, 6))
    check = np.testing.assert_array_equal if kind == "binary" else partial(np.testing.assert_allclose, atol=1e-6)
    want = influence(masks, test_out)
    export_influence(masks, test_out, tmp_path / "infl.npy", tmp_path / "se.npy", dtype=np.float64, chunk=4)
    check(np.load(tmp_path / "infl.npy"), want.value)
    check(np.load(tmp_path / "se.npy"), want.se)
    export_influence(masks, test_out, tmp_path / "half.npy", dtype=np.float16, chunk=5, progress=False)
    half = np.load(tmp_path / "half.npy")
    assert half.dtype == np.float16 and half.shape == (17, 6)
    np.testing.assert_allclose(half, want.value, atol=1e-3)


def test_export_memory_is_a_chunk_not_the_matrix(tmp_path):
    """Memory traced while exporting a 3,000 x 400 matrix (19 MB in float64, with its se) stays near a chunk's."""
    rng = np.random.default_rng(9)
    masks = rng.random((30, 3000)) < 0.7
    test_out = rng.random((30, 400)) < 0.5
    matrix_bytes = 2 * 3000 * 400 * 8
    tracemalloc.start()
    try:
        export_influence(masks, test_out, tmp_path / "v.npy", tmp_path / "se.npy", chunk=50, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < matrix_bytes / 4, f"traced peak {peak} bytes"
    assert np.load(tmp_path / "v.npy", mmap_mode="r").shape == (3000, 400)
