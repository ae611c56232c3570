"""Which recipe puts a profile's models in the paper's regime, and what it costs: recipes trained side by side.

    python benchmarks/regime.py --profile fashion-mnist-noisy --models 96 \
        --recipe epochs=20 --recipe epochs=40,weight_decay=0 [--budget 840]

Each `--recipe` is a list of profile overrides (key=value, YAML values). Every recipe trains the profile's
design (its masks and seeds, `--models` of them) into its own store under results/regime/, and the script prints
one row per recipe: seconds per model at the steady rate (each model's share of its group's seconds, over the
profile's workers side by side), the start-up the wall clock spent beyond that (paid once a run), how many
models the stage-1 `--budget` affords (the budget less the start-up, at the steady rate), in-sample accuracy on
clean and flipped examples, held-out accuracy, the AUROC with which mem and the best peer score rank the flips,
and the split-half Spearman of mem. A store already there is reused (rerun to resume), so its seconds are those
of the run that trained it. The rows are measured in one run, one recipe after the other: compare them with each
other, on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memlib  # noqa: E402
from memlib.analysis import regime, validation  # noqa: E402
from memlib.analysis.peers import suspicion  # noqa: E402
from memlib.stages.validate import scores_from_store  # noqa: E402


def parse_recipe(text: str) -> dict:
    """`a=1,b=x` -> {'a': 1, 'b': 'x'} (values read as YAML)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def fit_epochs(masks: np.ndarray, learned: np.ndarray, flipped: np.ndarray | None, epochs: int) -> np.ndarray:
    """Per model, the first epoch (1-based) after which it has learned (for good) 99% of its clean examples and
    95% of its flipped ones, by the signal `learned_epoch` (epochs + 1 where it never gets there): where a fit
    criterion would have stopped it, under the same schedule."""
    flipped = np.zeros(masks.shape[1], dtype=bool) if flipped is None else flipped
    out = np.full(len(masks), epochs + 1)
    for m in range(len(masks)):
        ok = True
        stop = 0
        for sel, target in ((masks[m] & ~flipped, 0.99), (masks[m] & flipped, 0.95)):
            if not sel.any():
                continue
            when = np.sort(learned[m, sel].astype(np.int64))  # epochs from which each example stays correct
            need = when[int(np.ceil(target * len(when))) - 1]
            ok &= need < epochs
            stop = max(stop, need + 1)
        out[m] = stop if ok else epochs + 1
    return out


def measure(base: memlib.Config, changes: dict, models: int, budget: float, under: str = "results/regime") -> dict:
    """Train one recipe (resuming its store under `under`) and read off its regime, flip recovery and stability."""
    name = "-".join(f"{k}{v}" for k, v in changes.items()) or "as-shipped"
    spread = 0.9 if changes.get("mask_design", base.mask_design) == "balanced" else 0.6  # random masks scatter
    cfg = base.replace(
        **{"min_out": min(base.min_out, int(models * (1 - base.subset_ratio) * spread)), **changes},
        num_models=models,
        profile=f"{base.profile}-{name}".replace(".", "p"),
        results_dir=under,
    )
    data = memlib.load_dataset(cfg)
    start = time.perf_counter()
    store = memlib.train_subsets(cfg, data)
    wall = time.perf_counter() - start
    trained = getattr(store, "trained", 0)
    # the steady rate: each model's share of its group's seconds, over the workers that train side by side; the
    # start-up (processes, data, the first group's warm-up) is what the wall clock spent beyond it, paid once
    per_model = float(np.asarray(store["seconds"]).mean()) / cfg.workers
    startup = max(0.0, wall - trained * per_model) if trained else float("nan")
    flips = data.flips
    flipped = flips.indicator(data.n_train) if flips is not None else None
    masks, trc, ttc = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    fit = regime.fit_report(masks, trc, ttc, data.y_train, data.classes, 0.99, flipped)
    est = memlib.estimate(cfg, store, data)
    stop = fit_epochs(masks, np.asarray(store["signal_learned_epoch"]), flipped, cfg.epochs)
    groups = stop[: len(stop) // cfg.group_size * cfg.group_size].reshape(-1, cfg.group_size).max(1)
    row = {
        "recipe": name,
        "models": models,
        "s_per_model": per_model,
        "startup_s": startup,
        "affordable": int((budget - (0.0 if np.isnan(startup) else startup)) / per_model),
        "in_clean": fit["in_sample_acc_clean"],
        "in_flipped": fit["in_sample_acc_flipped"],
        "held_out": fit["held_out_acc"],
        "split_half_spearman": memlib.split_half(cfg, store, data)["mem_spearman"],
        "fit_stop_epoch_mean": float(np.mean(stop)),  # a fit criterion's stopping epoch (epochs + 1: never fits)
        "fit_stop_group_mean": float(np.mean(groups)),  # the same for lockstep groups (the slowest model decides)
    }
    if flipped is not None and flipped.any():
        scores, _, _ = scores_from_store(cfg, store, data, est)
        rows = validation.recovery({k: suspicion(k, v) for k, v in scores.items()}, flipped)
        by = {r["score"]: r for r in rows}
        best = max((r for r in rows if r["score"] != "mem"), key=lambda r: r["auroc"])
        row.update(auroc_mem=by["mem"]["auroc"], ap_mem=by["mem"]["ap"], best_peer=best["score"])
        row.update(auroc_best_peer=best["auroc"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fashion-mnist-noisy")
    parser.add_argument("--models", type=int, default=96)
    parser.add_argument("--recipe", action="append", default=[], help="key=value,... (repeatable)")
    parser.add_argument("--budget", type=float, default=840.0, help="stage-1 seconds to price models against")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    base = memlib.load_profile(args.profile)
    rows = []
    for text in args.recipe or [""]:
        row = measure(base, parse_recipe(text), args.models, args.budget)
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
