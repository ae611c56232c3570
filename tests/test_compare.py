"""Comparison with the authors' published estimates, on synthetic files of the same form with a known overlap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import memlib
from memlib.analysis.estimation import Estimates, MaskedDiff, Pairs
from memlib.analysis.published import compare_cscores, compare_pairs, compare_published


def estimates(n=100, m=40) -> Estimates:
    rng = np.random.default_rng(0)
    mem = rng.random(n)
    # reproduced pairs, by position; the train set is a pool (original indices 0, 2, 4, ...)
    tr_pos = np.array([1, 1, 5, 7, 9])
    tt_pos = np.array([3, 4, 3, 8, 10])
    return Estimates(
        mem=MaskedDiff(mem, np.zeros(n), np.full(n, 7.0), np.full(n, 3.0)),
        pairs=Pairs(tr_pos, tt_pos, np.full(5, 0.5), np.zeros(5), mem[tr_pos]),
        tr_labels=np.arange(n) % 10,
        tt_labels=np.arange(m) % 10,
        tr_index=np.arange(n) * 2,
        tt_index=np.arange(m),
        num_models=10,
    )


def test_pair_overlap_counts(tmp_path):
    est = estimates()
    # ours in original indices: (2,3) (2,4) (10,3) (14,8) (18,10); theirs shares (2,3) and (14,8)
    path = tmp_path / "pairs.npz"
    np.savez(path, tr_idx=np.array([2, 14, 50, 60]), tt_idx=np.array([3, 8, 8, 20]), infl=np.ones(4), mem=np.ones(4))
    got = compare_pairs(est, path)
    assert got["reproduced_pairs"] == 5 and got["published_pairs"] == 4
    assert got["pairs_in_both"] == 2
    assert got["pairs_jaccard"] == pytest.approx(2 / 7)
    assert got["published_test_examples"] == 3  # 3, 8, 20
    assert got["published_test_examples_recovered"] == 2  # 3 and 8
    assert got["published_train_examples"] == 4


def test_cscore_spearman_is_aligned_by_original_index(tmp_path):
    est = estimates()
    scores = np.zeros(200)
    scores[est.tr_index] = -est.mem.value  # typical examples (high C-score) are memorized least
    labels = np.zeros(200, dtype=np.int64)
    labels[est.tr_index] = est.tr_labels
    path = tmp_path / "cscores.npz"
    np.savez(path, labels=labels, scores=scores)
    got = compare_cscores(est, path)
    assert got["spearman_mem_vs_cscore"] == pytest.approx(-1.0)
    assert got["labels_agree"] == 1.0
    noisy = scores + np.random.default_rng(1).normal(0, 0.3, 200)
    np.savez(path, labels=labels, scores=noisy)
    want = stats.spearmanr(est.mem.value, noisy[est.tr_index]).statistic
    assert compare_cscores(est, path)["spearman_mem_vs_cscore"] == pytest.approx(want)


def test_compare_published_follows_the_config(tmp_path):
    est = estimates()
    cfg = memlib.load_profile("smoke")
    assert compare_published(cfg, est) == {}
    with pytest.raises(FileNotFoundError, match="pluskid/influence-memorization"):
        compare_published(cfg.replace(published_pairs=str(tmp_path / "nope.npz")), est)
    np.savez(tmp_path / "bad.npz", tr_idx=np.zeros(2))
    with pytest.raises(ValueError, match="lacks keys"):
        compare_published(cfg.replace(published_pairs=str(tmp_path / "bad.npz")), est)
