"""Comparison with the authors' published estimates (CIFAR-100/ImageNet pairs, C-scores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from ..config import Config, resolve
from .estimation import Estimates
from .stability import jaccard

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
    their_tests, our_tests = {j for _, j in theirs}, {j for _, j in ours}
    return {
        "reproduced_pairs": len(ours),
        "published_pairs": len(theirs),
        "pairs_in_both": len(ours & theirs),
        "pairs_jaccard": jaccard(ours, theirs),
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
