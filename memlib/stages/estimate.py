"""Stage 2: memorization and influence estimates from a finished stage-1 store, the high-influence pairs both at
the paper's fixed cut-offs and with their false discovery rate controlled, and their split-half stability; it writes
estimates.npz, split_half.json and replication.json (and their figures) and comparison.json."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..analysis.estimation import Estimates, estimate_from_arrays
from ..analysis.published import compare_published
from ..analysis.stability import FIXED, PairSelector, SplitHalf, pair_keys, replication_curve, split_half_from_arrays
from ..analysis.validation import fdr_pairs
from ..config import Config
from ..data.dataset import Dataset
from ..report import plots
from ..report.artifacts import SPLIT_HALF_FILE, read_json, write_json, write_output
from ..runs.store import Store


def estimate(cfg: Config, store: Store, data: Dataset) -> Estimates:
    """Stage 2: estimates from a complete subset store, with the FDR-controlled pairs (`Estimates.controlled`)."""
    store.require_complete()
    masks, ttc = np.asarray(store["masks"]), np.asarray(store["test_correct"])
    est = estimate_from_arrays(
        masks, np.asarray(store["train_correct"]), ttc, data, cfg.infl_threshold, cfg.mem_threshold
    )
    pairs, p, tested = controlled_selection(cfg, data)(masks, ttc, est.mem.value, with_p=True)
    return replace(est, controlled=pairs, controlled_p=p, pair_fdr=cfg.pair_fdr, pairs_tested=tested)


def controlled_selection(cfg: Config, data: Dataset):
    """The FDR-controlled selection at the config's cut-offs and rate, as a function of (masks, test outcomes, mem)."""

    def select(masks: np.ndarray, test_outcomes: np.ndarray, mem: np.ndarray, with_p: bool = False):
        labels, cuts = (data.y_train, data.y_test), (cfg.infl_threshold, cfg.mem_threshold)
        out = fdr_pairs(masks, test_outcomes, mem, *labels, *cuts, cfg.pair_fdr)
        return out if with_p else out[0]

    return select


CONTROLLED = "fdr"  # the name of the FDR-controlled pair set in every split (beside the paper's, FIXED)


def pair_selectors(cfg: Config, data: Dataset) -> dict[str, PairSelector]:
    """The pair sets a split selects beside the paper's fixed cut-offs (which split_half_from_arrays adds)."""
    return {CONTROLLED: controlled_selection(cfg, data)}


def _split_inputs(cfg: Config, store: Store, data: Dataset) -> tuple:
    """What split_half_from_arrays and replication_curve read, in their order: the runs, labels, cut-offs and the
    controlled selection (beside the fixed cut-offs, which they add themselves)."""
    masks, trc, ttc = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    return masks, trc, ttc, data.y_train, data.y_test, cfg.infl_threshold, cfg.mem_threshold, pair_selectors(cfg, data)


def halves(cfg: Config, store: Store, data: Dataset) -> SplitHalf:
    """Stage 2: the estimates from two disjoint halves of a store's runs (split_half_from_arrays), both pair sets
    (`fixed`: the paper's cut-offs; `fdr`: the controlled selection) selected in each."""
    return split_half_from_arrays(*_split_inputs(cfg, store, data))


def split_half(cfg: Config, store: Store, data: Dataset) -> dict:
    """Stage 2: Spearman of mem and the Jaccard of each pair set between the halves (`SplitHalf.summary`)."""
    return halves(cfg, store, data).summary()


def replication(
    cfg: Config, store: Store, data: Dataset, counts: list[int] | None = None, full: SplitHalf | None = None
) -> dict[str, list]:
    """Stage 2: split-half agreement of mem and of both pair sets against the number of models (replication_curve;
    `full`: `halves` of the whole store where the caller has it)."""
    return replication_curve(*_split_inputs(cfg, store, data), counts, full)


def estimate_stage(cfg: Config, store: Store, data: Dataset) -> Estimates:
    """Stage 2: `estimate`, written to estimates.npz (atomically: a fault leaves the previous complete file)."""
    est = estimate(cfg, store, data)
    write_output(cfg.out_dir / "estimates.npz", est.write)
    return est


def split_selection(cfg: Config, num_models: int) -> dict:
    """What a split's pair figures depend on beyond the store: written beside them, so a reader can tell that they
    are the figures of its own selection."""
    return {
        "num_models": num_models,
        "infl_threshold": cfg.infl_threshold,
        "mem_threshold": cfg.mem_threshold,
        "pair_fdr": cfg.pair_fdr,
    }


def stored_pair_agreement(cfg: Config, num_models: int) -> dict | None:
    """split_half.json's pair figures (`SplitHalf.pair_summary`) where stage 2 wrote them for this selection of
    `num_models` models; None where it wrote none, wrote them at other cut-offs, rate or models, or lacks a set."""
    path = cfg.out_dir / SPLIT_HALF_FILE
    if not path.exists():
        return None
    sh = read_json(path)
    if sh.get("selection") != split_selection(cfg, num_models):
        return None
    keys = [key for name in (FIXED, CONTROLLED) for key in pair_keys(name)]
    return {key: sh[key] for key in keys} if all(key in sh for key in keys) else None


def split_half_stage(cfg: Config, store: Store, data: Dataset) -> SplitHalf:
    """Stage 2: `halves`, its figures (`SplitHalf.summary`, with `split_selection`) written to split_half.json;
    draws figures/split_half.png. Returns the split, the last point of replication_stage's curve."""
    full = halves(cfg, store, data)
    sh = full.summary()
    scalars = {k: v for k, v in sh.items() if not isinstance(v, np.ndarray)}
    scalars["selection"] = split_selection(cfg, store.rows)
    write_json(scalars, cfg.out_dir / SPLIT_HALF_FILE)
    plots.split_half(sh, path=cfg.out_dir / "figures/split_half.png")
    return full


def comparison_stage(cfg: Config, est: Estimates) -> dict:
    """Stage 2: the comparison with the published estimates (compare_published), written to comparison.json when
    the profile names published files; {} when it names none."""
    comparison = compare_published(cfg, est)
    if comparison:
        write_json(comparison, cfg.out_dir / "comparison.json")
    return comparison


def replication_stage(cfg: Config, store: Store, data: Dataset, full: SplitHalf | None = None) -> dict[str, list]:
    """Stage 2: `replication`, written to replication.json; draws figures/replication.png (the report's 0.5 line).
    `full`: split_half_stage's split of the whole store, the curve's last point (computed again without it)."""
    from ..report.prose import MIN_PAIR_JACCARD

    curve = replication(cfg, store, data, full=full)
    write_json(curve, cfg.out_dir / "replication.json")
    plots.replication(curve, MIN_PAIR_JACCARD, path=cfg.out_dir / "figures/replication.png")
    return curve
