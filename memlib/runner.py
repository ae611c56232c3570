"""The runner: which rows go to which worker or device, in groups, with a progress bar.

A run's journey: row -> mask and seed (design) -> group of models (engine) -> device -> stored row (store).
Groups are the design's (rows [g K, (g + 1) K) for K = group_size), so a resumed run trains exactly the same
groups; a group's rows are written, flushed and marked complete together, after all its models finish. On a
CPU, `workers` processes (one thread each) train groups side by side; on a GPU, one process trains them in
turn. With `executor: slurm` the groups run as SLURM array tasks instead (memlib.slurm), into the same store.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .claims import Lease, claim, wait_claim
from .config import Config, display_path, profile_argument
from .data import Dataset, load_dataset
from .design import Job, check_out_counts, group_rows, subset_jobs, subset_masks
from .engine import TOPK_CLASSES, NeuralLearner, Outcome, resolve_device, resolve_precision
from .lifeline import start as lifeline_start
from .noise import dataset_flips
from .regime import fit_report, summary_line
from .signals import COLUMNS as SIGNAL_COLUMNS
from .store import CLAIMS_DIR, SPEC_FILE, ArraySpec, Store, StoreError, check_compatible


def subset_store_spec(cfg: Config, data: Dataset) -> tuple[dict[str, ArraySpec], dict[str, Any]]:
    """Spec and meta of the stage-1 store: per run its mask, per-example correctness and true-label prob.

    Also per run, for the peer scores of the validation stage: the training signals of memlib.signals
    (`signal_<name>`, 11 bytes per training example) and the k = min(classes, 10) largest class probabilities
    of every training example with their classes (`train_topk_prob` float16, `train_topk_class` uint8), 3k
    bytes per example: all classes up to 10; for CIFAR-100 (50,000 x 100) 1.5 MB a model instead of the
    10 MB that all 100 would take. With the rest, a CIFAR-100 model's row is about 2.3 MB.
    The meta records the config's training fingerprint and the data's (hashes of its labels and images).
    """
    n_train, n_test, num_classes = data.n_train, data.n_test, data.num_classes
    k = min(num_classes, TOPK_CLASSES)
    class_dtype = "uint8" if num_classes <= 256 else "uint16"
    spec = Store.spec_of(
        cfg.num_models,
        {
            "masks": ((n_train,), "bool"),
            "train_correct": ((n_train,), "bool"),
            "test_correct": ((n_test,), "bool"),
            "train_prob": ((n_train,), "float16"),
            "test_prob": ((n_test,), "float16"),
            "seconds": ((), "float32"),
            **{f"signal_{name}": ((n_train,), dtype) for name, dtype in SIGNAL_COLUMNS.items()},
            "train_topk_prob": ((n_train, k), "float16"),
            "train_topk_class": ((n_train, k), class_dtype),
        },
    )
    meta = {
        "kind": "subsets",
        "fingerprint": cfg.training_fingerprint(),
        "config": cfg.to_dict(),
        "data": data_record(data),
    }
    return spec, meta


def data_record(data: Dataset) -> dict[str, str]:
    """What a store remembers of its data: where it was read, its size, and the hashes of its parts."""
    return {
        "source": data.source,
        "examples": f"{data.n_train} train / {data.n_test} test, {data.num_classes} classes",
        **data.fingerprint,
    }


def stored_meta(path: Path, fix: str | None = None) -> dict[str, Any] | None:
    """The meta of the store at `path` (None if there is none); raises StoreError if it is unreadable.

    `fix` is the repair command the message offers where repair can rebuild the spec from the config (stage 1's
    store: it keeps every finished row that verifies), so the message never says to delete work it can recover.
    """
    file = Path(path) / SPEC_FILE
    if not file.exists():
        return None
    try:
        meta = json.loads(file.read_text()).get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError("its meta is not a mapping")
        return meta
    except (OSError, ValueError, AttributeError) as exc:
        if fix is None:
            how = f"Move {display_path(path)} away and rerun the stage that made it (it cannot be read without it)."
        else:
            how = (
                f"Run `{fix}`: it rewrites it from the profile and keeps every finished model that verifies under it "
                f"(none is retrained). If another profile made this store, move {display_path(path)} away instead."
            )
        raise StoreError(f"{display_path(file)} is unreadable ({exc}). Nothing was changed. {how}") from None


def check_same_data(path: Path, meta: dict[str, Any], data: Dataset) -> None:
    """Raise StoreError, saying what changed, unless the store's meta records this very data."""
    old = meta.get("data")
    if not old:
        raise StoreError(
            f"the store at {display_path(path)} was made by an older memlib that did not record which data trained "
            f"it, so it cannot be checked against this data. Delete {display_path(path)} and rerun."
        )
    new = data_record(data)
    changed = [k for k in data.fingerprint if old.get(k) != new[k]]
    if changed:
        raise StoreError(
            f"the store at {display_path(path)} was trained on other data: {', '.join(changed)} changed "
            f"(then: {old.get('examples')} from {old.get('source')}; now: {new['examples']} from {new['source']}). "
            "Its models do not answer this data. Point the profile back at the data it was made with, use another "
            f"profile name (or results_dir), or delete {display_path(path)} to start afresh."
        )


def training_precision(cfg: Config) -> str:
    """The precision this machine trains the config's models in (`precision: auto` resolved for its device)."""
    return resolve_precision(cfg.precision, resolve_device(cfg.device))


def check_same_precision(path: Path, meta: dict[str, Any], precision: str, cfg: Config) -> None:
    """Raise StoreError unless new rows would train in the precision the store's rows trained in."""
    old = meta.get("precision")
    if old is not None and old != precision:
        raise StoreError(
            f"the store at {display_path(path)} holds models trained in {old}, but on this machine "
            f"precision: {cfg.precision} trains in {precision}; one store must not mix the two. Set "
            f"precision: {old} in the profile to add models to it here (or run where {old} is the default), "
            "or use another profile name (or results_dir)."
        )


def subset_store_path(cfg: Config) -> Path:
    return cfg.out_dir / "store"


def repair_command(cfg: Config) -> str:
    """The command that clears a profile's bad rows (the message of every bad-row error offers it)."""
    return f"python -m memlib repair {profile_argument(cfg)}"


def open_subset_store(cfg: Config, data: Dataset, create: bool = True) -> Store:
    """Open (or create) the stage-1 store, checking it matches the config and data and every finished row verifies.

    With `create=False` (every stage that only reads it, and `check`) the store is opened read-only.
    """
    spec, meta = subset_store_spec(cfg, data)
    flips = dataset_flips(data)
    if flips is not None:  # the flipped labels are recorded with the store (its fingerprint has label_noise)
        meta["label_noise"] = {"fraction": cfg.label_noise, **flips.record()}
    old = stored_meta(subset_store_path(cfg), repair_command(cfg))
    if old is not None:
        check_same_data(subset_store_path(cfg), old, data)
    if create:  # a store trains in one precision: `auto` resolves per machine, so a store records what it became
        meta["precision"] = training_precision(cfg)
        if old is not None:
            check_same_precision(subset_store_path(cfg), old, meta["precision"], cfg)
    store = Store.open(subset_store_path(cfg), spec, meta, create=create, fix=repair_command(cfg))
    bad = wrong_masks(cfg, store)
    if len(bad):
        raise StoreError(store.bad_rows_message(bad, "hold a mask that their seed does not give"))
    return store


def wrong_masks(cfg: Config, store: Store) -> np.ndarray:
    """Finished rows whose stored mask is not the one their seed gives (all of them, compared in blocks)."""
    design = subset_masks(cfg, store["masks"].shape[1])
    done = np.flatnonzero(store.completed)
    bad = [
        rows[(np.asarray(store["masks"][rows]) != design[rows]).any(axis=1)]
        for rows in np.array_split(done, max(1, len(done) // 256))
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def repair_subset_store(cfg: Config, data: Dataset) -> list[int]:
    """Clear the completed flags of the stage-1 rows that fail their checksums or masks; returns them."""
    spec, meta = subset_store_spec(cfg, data)
    path = subset_store_path(cfg)
    if (path / "spec.json").exists():
        try:
            check_compatible(path, spec, meta)
        except StoreError as exc:
            if "unreadable" not in str(exc) and "before stored rows carried checksums" not in str(exc):
                raise
    return Store.repair(path, spec, meta, extra_bad=lambda store: wrong_masks(cfg, store))


def _row_values(job: Job, out: Outcome, seconds: float, columns: Sequence[str]) -> dict[str, np.ndarray]:
    values = {
        "masks": job.mask,
        "train_correct": out.train_correct,
        "test_correct": out.test_correct,
        "train_prob": out.train_prob.astype(np.float16),
        "test_prob": out.test_prob.astype(np.float16),
        "seconds": np.float32(seconds),
    }
    if out.signals is not None:
        values.update({f"signal_{name}": v for name, v in out.signals.items()})
    if out.train_topk_prob is not None:
        values.update(train_topk_prob=out.train_topk_prob, train_topk_class=out.train_topk_class)
    return {k: v for k, v in values.items() if k in columns}


def run_group(store: Store, learner, jobs: list[Job], group_size: int, wait: bool = True) -> int | None:
    """Claim the group, train and evaluate its unfinished jobs together and write their rows; returns how many.

    The claim is on the design's group (row // group_size), so workers with overlapping row ranges never
    train a row twice. Returns None, without waiting, if a live worker holds the claim and `wait` is False.
    """
    if all(store.completed[j.row] for j in jobs):
        return 0
    group = jobs[0].row // group_size
    if any(j.row // group_size != group for j in jobs):
        raise ValueError(f"rows {[j.row for j in jobs]} span several groups of {group_size}")
    folder = store.path / CLAIMS_DIR
    lease: Lease | None = wait_claim(folder, group) if wait else claim(folder, group)
    if lease is None:
        return None
    with lease:
        todo = [j for j in jobs if not store.completed[j.row]]  # another worker may have finished some
        if not todo:
            return 0
        start = time.perf_counter()
        runs = [(np.flatnonzero(j.mask), j.seed) for j in todo]
        if hasattr(learner, "fit_eval_group"):
            outs = learner.fit_eval_group(runs)
        else:
            outs = [learner.fit_eval(idx, seed) for idx, seed in runs]
        seconds = (time.perf_counter() - start) / len(todo)  # per model, in this worker
        store.write_rows({j.row: _row_values(j, out, seconds, store.arrays) for j, out in zip(todo, outs)})
    return len(todo)


_WORKER: dict[str, Any] = {}


def _worker_init(cfg_dict: dict, store_path: str, spec: dict, meta: dict, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    cfg = Config.from_dict(cfg_dict)
    data = load_dataset(cfg)
    spec = {k: ArraySpec(tuple(shape), dtype) for k, (shape, dtype) in spec.items()}
    _WORKER["store"] = Store.open(Path(store_path), spec, meta, create=False, writable=True, verify=False)
    _WORKER["learner"] = NeuralLearner(cfg, data)


def _worker_run(jobs: list[Job], group_size: int, wait: bool) -> int | None:
    return run_group(_WORKER["store"], _WORKER["learner"], jobs, group_size, wait=wait)


def job_groups(jobs: list[Job], group_size: int) -> list[list[Job]]:
    """The jobs in the design's groups (row r in group r // group_size)."""
    by_row = {j.row: j for j in jobs}
    return [[by_row[r] for r in rows] for rows in group_rows(by_row, group_size)]


def run_jobs(
    store: Store,
    jobs: list[Job],
    cfg: Config,
    data: Dataset,
    learner=None,
    workers: int | None = None,
    desc: str = "training",
    first_group: Callable[[], str | None] | None = None,
) -> int:
    """Run the jobs whose rows are not completed, group by group, with a progress bar; returns models trained.

    Each group is claimed before it trains (see memlib.claims): a group another worker holds is skipped at
    first and waited for at the end, so on return every job's row is finished, each by exactly one worker.

    With workers > 1 (CPU only; default: `worker_count`), groups run in that many spawned processes, each with
    its share of the cores and its own copy of the data and learner; results land in the shared memory-mapped
    store. With a `learner` given (a test's exact learner), or on a GPU, groups run in this process, on `data`.
    With `executor: slurm` (and no learner given) every group is a SLURM array task (memlib.slurm.run_array).
    `first_group`, called once after the first group this call trains, may return a line to print (stage 1's
    early word on whether the models fit what they train on).
    """
    if cfg.executor == "slurm" and learner is None:
        from .slurm import run_array

        return run_array(store, jobs, cfg, desc=desc)
    workers = worker_count(cfg, learner) if workers is None else workers
    todo = [j for j in jobs if not store.completed[j.row]]
    groups = job_groups(todo, cfg.group_size)
    k = cfg.group_size
    trained = 0
    bar = tqdm(total=store.rows, initial=store.done(), desc=desc, unit="model", file=sys.stderr, mininterval=2)
    try:
        if not groups:
            return 0
        if learner is not None or workers <= 1:
            learner = learner or NeuralLearner(cfg, data)
            held = []  # groups another worker is training: waited for after the free ones
            for group in groups:
                n = run_group(store, learner, group, k, wait=False)
                held += [group] if n is None else []
                trained += n or 0
                bar.update(n or 0)
                first_group = _report_first(first_group, n, bar)
            for group in held:
                n = run_group(store, learner, group, k, wait=True) or 0
                trained += n
                bar.update(n)
            return trained
        threads = max(1, (os.cpu_count() or 1) // workers)
        spec = {name: (list(a.shape), a.dtype.name) for name, a in store.arrays.items()}
        ctx = mp.get_context("spawn")
        # the initializer lives in memlib.lifeline, which arms the parent-death signal before any heavy import
        init_args = (
            os.getpid(),
            "memlib.runner:_worker_init",
            cfg.to_dict(),
            str(store.path),
            spec,
            store.meta,
            threads,
        )
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=lifeline_start, initargs=init_args) as pool:
            pending = {pool.submit(_worker_run, group, k, False): group for group in groups}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    group = pending.pop(fut)
                    n = fut.result()  # re-raises a worker's exception here
                    if n is None:  # held by another worker: wait for it, after the free groups
                        pending[pool.submit(_worker_run, group, k, True)] = group
                    else:
                        trained += n
                        bar.update(n)
                        first_group = _report_first(first_group, n, bar)
    finally:
        bar.close()
        store.reload()
    return trained


def _report_first(hook: Callable[[], str | None] | None, n: int | None, bar) -> Callable[[], str | None] | None:
    """Call the first-group hook once a group has trained (printing its line); returns the hook still to call."""
    if hook is None or not n:
        return hook
    line = hook()
    if line:
        bar.write(line, file=sys.stderr)
    return None


def store_fit(cfg: Config, store: Store, data: Dataset, rows: np.ndarray | slice | None = None) -> dict:
    """The regime of a stage-1 store's finished rows (or `rows`): memlib.regime.fit_report on its arrays."""
    rows = np.flatnonzero(store.completed) if rows is None else rows
    if len(rows) == store.rows:  # every row: the memory-mapped arrays as they are (read in chunks, not copied)
        rows = slice(None)
    flips = dataset_flips(data)
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


def train_subsets(cfg: Config, data: Dataset, learner=None, rows: Iterable[int] | None = None) -> Store:
    """Stage 1: fill the subset store (resuming: finished runs are kept, never retrained).

    After the first group it trains, it prints whether the finished models fit what they trained on.
    """
    check_out_counts(cfg, data.n_train)
    store = open_subset_store(cfg, data)
    rows = range(cfg.num_models) if rows is None else rows
    jobs = subset_jobs(cfg, data.n_train, store.pending(rows))
    hook = (lambda: early_fit_line(cfg, store, data)) if cfg.executor != "slurm" or learner is not None else None
    store.trained = run_jobs(store, jobs, cfg, data, learner=learner, desc="subset models", first_group=hook)
    return store


def worker_count(cfg: Config, learner=None) -> int:
    """CPU training uses cfg.workers processes; a GPU, or a learner passed in, runs in this process."""
    return 1 if (learner is not None or resolve_device(cfg.device).type == "cuda") else cfg.workers
