"""Stage 1: train the subset models into the stage-1 store, and say whether they fit what they train on."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..analysis.regime import fit_report, in_sample_by_example, summary_line
from ..config import AUTO, EPOCHS_RECORD, Config, auto_epochs_key, project_root, with_recorded_epochs
from ..data.dataset import Dataset
from ..report import plots
from ..report.artifacts import ENVIRONMENT_FILE, write_json
from ..runs.executors import run_jobs
from ..runs.store import Store
from ..runs.subsets import open_subset_store, reopen_subset_store
from ..train.design import check_out_counts, subset_jobs
from ..train.engine import resolve_device, resolve_precision
from ..train.layouts import layout_for


def store_fit(cfg: Config, store: Store, data: Dataset, rows: np.ndarray | slice | None = None) -> dict:
    """The regime of a stage-1 store's finished rows (or `rows`): memlib.analysis.regime.fit_report on its arrays."""
    rows = np.flatnonzero(store.completed) if rows is None else rows
    if len(rows) == store.rows:  # every row: the memory-mapped arrays as they are (read in chunks, not copied)
        rows = slice(None)
    flips = data.flips
    return fit_report(
        store["masks"][rows],
        store["train_correct"][rows],
        store["test_correct"][rows],
        data.y_train,
        data.classes,
        cfg.fit_target,
        flips.indicator(data.n_train) if flips is not None else None,
    )


def early_fit_line(cfg: Config, store: Store, data: Dataset) -> str | None:
    """After stage 1's first group: do its models fit what they train on? A warning line when they do not."""
    store.reload()
    rows = np.flatnonzero(store.completed)
    if not len(rows):
        return None
    fit = store_fit(cfg, store, data, rows)
    if fit["in_regime"]:
        return f"first {len(rows)} models: {summary_line(fit)}"
    return (
        f"warning: the first {len(rows)} models are not in the paper's regime: {summary_line(fit)}. Their "
        "memorization estimates will understate memorization; stop (Ctrl-C, finished models are kept) and train "
        "longer (see the report's caveat), or let it run."
    )


AUTO_FIRST = 20  # `epochs: auto` tries 20, 30, 40, 60, 80, 120, ... epochs (two steps an octave), up to max_epochs


def auto_candidates(max_epochs: int) -> list[int]:
    """The epochs `epochs: auto` tries, in order: 20, 30, 40, 60, 80, 120, 160, ... and max_epochs last.

    Two steps an octave, so that a recipe that just misses at one candidate pays at most 1.5 times what it needs
    (fashion-mnist-noisy on a 5,000-example pool: 94.9% of the flips fitted at 40 epochs, where 0.95 is asked).
    """
    out, octave = [], AUTO_FIRST
    while octave < max_epochs:
        out += [e for e in (octave, octave * 3 // 2) if e < max_epochs]
        octave *= 2
    return out + [max_epochs]


def resolve_epochs(cfg: Config, data: Dataset) -> Config:
    """`epochs: auto` made a number: the fewest candidate epochs (auto_candidates) at which a pilot group fits.

    The pilot is the design's first group (its masks and seeds), trained at each candidate in turn until its
    in-sample accuracy reaches the regime (memlib.analysis.regime.fit_report: clean examples fit_target, flipped
    ones fit_target - 0.04); its models are then thrown away (stage 1 trains that group again, into the store).
    The choice and every pilot's figures go to <out_dir>/epochs.json, which memlib.load_profile reads from then on:
    the study chooses once. A config with a number of epochs is returned as it is.
    """
    from ..train.engine import NeuralLearner

    cfg = with_recorded_epochs(cfg)
    if cfg.epochs != AUTO:
        return cfg
    jobs = subset_jobs(cfg.replace(epochs=AUTO_FIRST), data.n_train, range(min(cfg.group_size, cfg.num_models)))
    runs = [(np.flatnonzero(j.mask), j.seed) for j in jobs]
    masks = np.stack([j.mask for j in jobs])
    flips = data.flips
    flipped = flips.indicator(data.n_train) if flips is not None else None
    pilots = []
    for epochs in auto_candidates(cfg.max_epochs):
        start = time.perf_counter()
        learner = NeuralLearner(cfg.replace(epochs=epochs), data, record_signals=False)
        outs = learner.fit_eval_group(runs)
        train_correct = np.stack([o.train_correct for o in outs])
        test_correct = np.stack([o.test_correct for o in outs])
        fit = fit_report(masks, train_correct, test_correct, data.y_train, data.classes, cfg.fit_target, flipped)
        pilots.append({"epochs": epochs, "seconds": time.perf_counter() - start, "models": len(runs), **_brief(fit)})
        print(f"epochs: auto: {len(runs)} pilot models of {epochs} epochs: {summary_line(fit)}", flush=True)
        if fit["in_regime"]:
            break
    chosen = pilots[-1]["epochs"]
    if not pilots[-1]["in_regime"]:
        print(f"warning: epochs: auto: not in the regime even at max_epochs={cfg.max_epochs}; training {chosen}")
    record = {"epochs": chosen, "key": auto_epochs_key(cfg), "max_epochs": cfg.max_epochs, "pilots": pilots}
    write_json(record, cfg.out_dir / EPOCHS_RECORD)
    return cfg.replace(epochs=chosen)


def _brief(fit: dict) -> dict:
    """A pilot's regime figures as epochs.json keeps them."""
    keys = ("in_regime", "in_sample_acc_clean", "in_sample_acc_flipped", "held_out_acc")
    return {k: fit.get(k) for k in keys}


def train_subsets(
    cfg: Config, data: Dataset, learner=None, rows: Iterable[int] | None = None, store: Store | None = None
) -> Store:
    """Stage 1: fill the subset store (resuming: finished runs are kept, never retrained).

    With `epochs: auto` it first chooses the epochs (resolve_epochs). After the first group it trains, it prints
    whether the finished models fit what they trained on. A caller that trains in chunks (`rows`) passes the store
    the first call returned as `store`: it is not opened and verified again, only the rows others finished in the
    meantime are (memlib.runs.subsets.reopen_subset_store).
    """
    cfg = resolve_epochs(cfg, data) if learner is None else cfg
    check_out_counts(cfg, data.n_train)
    store = open_subset_store(cfg, data) if store is None else reopen_subset_store(cfg, data, store)
    rows = range(cfg.num_models) if rows is None else rows
    jobs = subset_jobs(cfg, data.n_train, store.pending(rows))
    hook = functools.partial(early_fit_line, cfg, store, data)  # an executor with no first group never calls it
    store.trained = run_jobs(store, jobs, cfg, data, learner=learner, desc="subset models", first_group=hook)
    return store


def record_environment(cfg: Config) -> dict[str, Any]:
    """Stage 1: what the run is made with (`environment`), written to environment.json."""
    env = environment(cfg.device, cfg.precision)
    write_json(env, cfg.out_dir / ENVIRONMENT_FILE)
    return env


def training_overview(cfg: Config, store: Store) -> dict[str, str]:
    """Stage 1: what the finished models learned, as (label, value) rows; draws figures/training_overview.png.

    Only finished rows count: an unfinished row's arrays are still zeros, which read as a model at accuracy 0."""
    done = np.flatnonzero(store.completed)
    masks = np.asarray(store["masks"])[done]
    test_acc = np.asarray(store["test_correct"])[done].mean(1)
    fit = (np.asarray(store["train_correct"])[done] & masks).sum(1) / masks.sum(1)
    models_in = masks.sum(0)
    plots.training_overview(test_acc, len(done) - models_in, path=cfg.out_dir / "figures/training_overview.png")
    design = " (every example in exactly the same number of models)" if cfg.mask_design == "balanced" else ""
    rows = {"models finished": f"{store.done()} of {store.rows}", "mask design": cfg.mask_design + design}
    if not len(done):
        return rows
    return {
        **rows,
        "models per example, in (min-max)": f"{models_in.min()}-{models_in.max()}",
        "accuracy on own training subset (mean ± sd over models)": f"{fit.mean():.3f} ± {fit.std():.3f}",
        "test accuracy (mean ± sd over models)": f"{test_acc.mean():.3f} ± {test_acc.std():.3f}",
        "seconds per model (mean, per worker)": f"{np.asarray(store['seconds'])[done].mean():.3f}",
    }


def record_fit(cfg: Config, store: Store, data: Dataset) -> dict:
    """Stage 1: the store's regime (`store_fit`), written to fit.json; draws figures/fit.png."""
    fit = store_fit(cfg, store, data)
    write_json(fit, cfg.out_dir / "fit.json")
    flips = data.flips
    flipped = flips.indicator(data.n_train) if flips is not None else None
    per_example = in_sample_by_example(np.asarray(store["masks"]), np.asarray(store["train_correct"]))
    plots.fit_overview(per_example, fit, flipped, path=cfg.out_dir / "figures/fit.png")
    return fit


def environment(device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """What the run was made with: commit, library versions, processor, and the device and precision that train."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions = {}
    for pkg in ("torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "papermill"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    dev = resolve_device(device)
    accelerator = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (CPU)"
    prec = resolve_precision(precision, dev)
    kind, layout = layout_for(dev)
    return {
        "commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "training_device": str(dev),
        "training_precision": prec + (" (bf16 autocast, fp32 master weights)" if prec == "bf16" else ""),
        "stacked_layout": f"{layout.name} (for MLPs: the {kind} entry of LAYOUTS, memlib/train/layouts.py)",
        "accelerator": accelerator,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "versions": versions,
    }


def git_commit() -> str:
    """The checkout's commit (with '+dirty' if it has uncommitted changes), or 'unknown'."""
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"
