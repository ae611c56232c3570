"""Does the pair selection keep false pairs? Each selection on a store's real outcomes and on null outcomes.

    python benchmarks/null_pairs.py --profile fashion-mnist [--models 32 64 256] [--seed 0]

Null outcomes: each model's test outcomes are given to another model's mask (rows of test_correct shuffled), so no
training example can influence any test example and every pair selected is false. For the first t models of the
profile's finished stage-1 store, it prints one row per t: pairs selected on the real and on the null outcomes, by
the exact test memlib uses (memlib.analysis.validation.fdr_pairs) and by the z-test it replaced (a one-sided z
from the models' own standard error, then Benjamini-Hochberg), and the candidate pairs tested. Under the null a
selection that controls its false discovery rate at 5% selects nothing in 95% of studies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memlib  # noqa: E402
from memlib.analysis.estimation import influence, memorization  # noqa: E402
from memlib.analysis.validation import benjamini_hochberg, fdr_pairs  # noqa: E402


def z_test_pairs(masks, test, mem, tr_labels, tt_labels, infl_threshold, mem_threshold, fdr) -> int:
    """How many pairs the z-test selection (memlib's before the exact test) keeps: one-sided z from each estimate
    and the standard error the runs give it, then Benjamini-Hochberg over every same-class candidate."""
    cand = np.flatnonzero(mem >= mem_threshold)
    est = influence(masks, test, cand)
    same = tr_labels[cand][:, None] == tt_labels[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.norm.sf((est.value - infl_threshold) / est.se)
    p = np.where(est.se == 0, np.where(est.value > infl_threshold, 0.0, 1.0), p)
    p = np.where(np.isfinite(p), p, 1.0)
    return int(benjamini_hochberg(p[same], fdr).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fashion-mnist")
    parser.add_argument("--models", type=int, nargs="+", default=[32, 64, 256])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = memlib.load_profile(args.profile)
    data = memlib.load_dataset(cfg)
    store = memlib.open_subset_store(cfg, data, create=False)
    done = np.flatnonzero(store.completed)
    masks_all, trc_all, ttc_all = (np.asarray(store[k])[done] for k in ("masks", "train_correct", "test_correct"))
    rng = np.random.default_rng(args.seed)
    cuts = (data.y_train, data.y_test, cfg.infl_threshold, cfg.mem_threshold, cfg.pair_fdr)
    for t in [t for t in args.models if t <= len(done)]:
        masks, trc, ttc = masks_all[:t], trc_all[:t], ttc_all[:t]
        mem = memorization(masks, trc).value
        null = ttc[rng.permutation(t)]
        row = {"profile": cfg.profile, "models": t}
        for name, outcomes in (("real", ttc), ("null", null)):
            pairs, _, tested = fdr_pairs(masks, outcomes, mem, *cuts)
            row[f"exact_{name}"] = len(pairs)
            row[f"z_{name}"] = z_test_pairs(masks, outcomes, mem, *cuts)
        row["candidates"] = tested
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
