"""A results store declared by a small spec: preallocated .npy arrays plus a completed-mask.

Workers are idempotent and addressed by row index: a worker writes a row's arrays, flushes them, and only
then marks the row completed. A worker killed at any point leaves its row not completed, so the next run
redoes it; a completed row is never trained again and never written twice.
"""

from __future__ import annotations

import ctypes
import functools
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .config import Config, ConfigError
from .data import Dataset, load_dataset
from .training import NeuralLearner, Outcome, derive_seed, resolve_device

SPEC_FILE = "spec.json"
COMPLETED = "completed"


class StoreError(RuntimeError):
    """A store that does not match the config, or is corrupt; the message says what to do."""


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: str


class Store:
    """Named arrays with a leading row axis, memory-mapped from `path`, plus `completed[row]`."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.path, self.arrays, self.meta = path, arrays, meta

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def spec_of(rows: int, columns: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, ArraySpec]:
        """A store spec: each array is `rows` x shape; a bool completed-mask is added."""
        spec = {name: ArraySpec((rows, *shape), dtype) for name, (shape, dtype) in columns.items()}
        spec[COMPLETED] = ArraySpec((rows,), "bool")
        return spec

    @classmethod
    def open(cls, path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any], create: bool = True) -> Store:
        """Open the store at `path`, creating it if absent; raise StoreError if it was made differently."""
        path = Path(path)
        if not (path / SPEC_FILE).exists():
            if not create:
                raise StoreError(f"no store at {path}: run the training stage first")
            return cls._create(path, spec, meta)
        check_compatible(path, spec, meta)
        arrays = {}
        for name, s in spec.items():
            arrays[name] = _load_array(path / f"{name}.npy", s, mode="r+")
        return cls(path, arrays, meta)

    @classmethod
    def _create(cls, path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> Store:
        if path.exists():  # a creation that was interrupted before spec.json was written
            shutil.rmtree(path)
        tmp = path.with_name(path.name + ".creating")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for name, s in spec.items():
            arr = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.dtype(s.dtype), shape=s.shape)
            arr.flush()
            del arr
        doc = {"spec": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in spec.items()}, "meta": meta}
        (tmp / SPEC_FILE).write_text(json.dumps(doc, indent=1, default=str))
        tmp.rename(path)
        return cls.open(path, spec, meta)

    # ------------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def completed(self) -> np.ndarray:
        return self.arrays[COMPLETED]

    @property
    def rows(self) -> int:
        return len(self.completed)

    def done(self) -> int:
        return int(np.count_nonzero(self.completed))

    def pending(self, rows: Iterable[int] | None = None) -> list[int]:
        """Rows not yet completed (among `rows`, default all)."""
        rows = range(self.rows) if rows is None else rows
        return [int(r) for r in rows if not self.completed[r]]

    def write_row(self, row: int, values: dict[str, np.ndarray]) -> None:
        """Write one row's arrays durably, then mark it completed."""
        for name, value in values.items():
            self.arrays[name][row] = value
            self.arrays[name].flush()
        self.completed[row] = True
        self.completed.flush()

    def require_complete(self) -> None:
        """Raise StoreError unless every row is completed."""
        missing = self.rows - self.done()
        if missing:
            raise StoreError(
                f"{self.path} has {missing} of {self.rows} rows unfinished: rerun the stage that fills it "
                "(finished rows are kept)"
            )

    def reload(self) -> None:
        """Re-read completed-mask and arrays written by other processes."""
        for name in self.arrays:
            self.arrays[name] = _load_array(self.path / f"{name}.npy", None, mode="r+")


def _load_array(file: Path, spec: ArraySpec | None, mode: str) -> np.ndarray:
    try:
        arr = np.load(file, mmap_mode=mode)
    except FileNotFoundError as exc:
        raise StoreError(f"{file} is missing: the store is incomplete. Delete {file.parent} and rerun.") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(
            f"{file} is corrupt ({exc}). The store's finished rows cannot be trusted: delete {file.parent} "
            "and rerun the stage."
        ) from exc
    if spec is not None and (tuple(arr.shape) != spec.shape or arr.dtype != np.dtype(spec.dtype)):
        raise StoreError(
            f"{file} holds {arr.dtype}{list(arr.shape)}, expected {spec.dtype}{list(spec.shape)}: the store is "
            f"corrupt or from another version. Delete {file.parent} and rerun."
        )
    return arr


def check_compatible(path: Path, spec: dict[str, ArraySpec], meta: dict[str, Any]) -> None:
    """Raise StoreError if the store at `path` was made with a different spec or config. Writes nothing."""
    try:
        doc = json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path / SPEC_FILE} is unreadable ({exc}): delete {path} and rerun.") from exc
    old_meta = doc.get("meta", {})
    if old_meta.get("fingerprint") != meta.get("fingerprint"):
        old_cfg, new_cfg = old_meta.get("config", {}), meta.get("config", {})
        diffs = [f"{k}: {old_cfg.get(k)!r} -> {new_cfg.get(k)!r}" for k in new_cfg if old_cfg.get(k) != new_cfg.get(k)]
        raise StoreError(
            f"the store at {path} was made with a different config ({'; '.join(diffs) or 'other inputs'}). "
            f"Its models do not answer this config. Use another profile name (or results_dir), or delete {path} "
            "to start afresh."
        )
    old_spec = {k: (tuple(v["shape"]), v["dtype"]) for k, v in doc.get("spec", {}).items()}
    new_spec = {k: (v.shape, v.dtype) for k, v in spec.items()}
    if old_spec != new_spec:
        raise StoreError(f"the store at {path} has arrays {old_spec}, expected {new_spec}: delete {path} and rerun.")


# ---------------------------------------------------------------------------------------------------
# Stage 1: the subset store
# ---------------------------------------------------------------------------------------------------


def subset_mask(seed: int, index: int, n: int, ratio: float) -> np.ndarray:
    """Random design: the subset of run `index` is exactly round(ratio * n) examples, drawn from the run's seed."""
    rng = np.random.default_rng(derive_seed(seed, 0, index))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(ratio * n), replace=False)] = True
    return mask


def balanced_masks(seed: int, runs: int, n: int, ratio: float, chunk: int = 4096) -> np.ndarray:
    """Balanced design: every example is in exactly round(ratio * runs) of the runs (which ones: seeded)."""
    k = round(ratio * runs)
    masks = np.zeros((runs, n), dtype=bool)
    for c, start in enumerate(range(0, n, chunk)):
        cols = np.arange(start, min(start + chunk, n))
        rng = np.random.default_rng(derive_seed(seed, 4, c))
        chosen = np.argsort(rng.random((runs, len(cols)), dtype=np.float32), axis=0)[:k]
        masks[chosen, cols[None, :]] = True
    return masks


@functools.lru_cache(maxsize=4)
def _design(seed: int, runs: int, n: int, ratio: float, design: str) -> np.ndarray:
    if design == "balanced":
        masks = balanced_masks(seed, runs, n, ratio)
    else:
        masks = np.stack([subset_mask(seed, t, n, ratio) for t in range(runs)])
    masks.flags.writeable = False
    return masks


def subset_masks(cfg: Config, n: int) -> np.ndarray:
    """All runs' masks (num_models x n, read-only); cheap, so configs can be checked before any training."""
    return _design(cfg.seed, cfg.num_models, n, cfg.subset_ratio, cfg.mask_design)


def subset_store_spec(cfg: Config, n_train: int, n_test: int) -> tuple[dict[str, ArraySpec], dict[str, Any]]:
    """Spec and meta of the stage-1 store: per run its mask, per-example correctness and true-label prob."""
    spec = Store.spec_of(
        cfg.num_models,
        {
            "masks": ((n_train,), "bool"),
            "train_correct": ((n_train,), "bool"),
            "test_correct": ((n_test,), "bool"),
            "train_prob": ((n_train,), "float16"),
            "test_prob": ((n_test,), "float16"),
            "seconds": ((), "float32"),
        },
    )
    meta = {"kind": "subsets", "fingerprint": cfg.training_fingerprint(), "config": cfg.to_dict()}
    return spec, meta


def subset_store_path(cfg: Config) -> Path:
    return cfg.out_dir / "store"


def check_out_counts(cfg: Config, n_train: int) -> np.ndarray:
    """Per-example number of models that leave it out; ConfigError if any is below cfg.min_out."""
    out = cfg.num_models - subset_masks(cfg, n_train).sum(0)
    if out.min() < cfg.min_out:
        raise ConfigError(
            f"with num_models={cfg.num_models} and subset_ratio={cfg.subset_ratio}, {int((out < cfg.min_out).sum())} "
            f"training examples are left out of fewer than min_out={cfg.min_out} models (fewest: {out.min()}). "
            "Raise num_models or lower min_out."
        )
    return out


def open_subset_store(cfg: Config, data: Dataset, create: bool = True) -> Store:
    """Open (or create) the stage-1 store, checking it matches the config and its masks are the seeded ones."""
    spec, meta = subset_store_spec(cfg, data.n_train, data.n_test)
    store = Store.open(subset_store_path(cfg), spec, meta, create=create)
    done = np.flatnonzero(store.completed)
    design = subset_masks(cfg, data.n_train)
    for t in done[: min(len(done), 64)]:  # spot-check: a finished run's stored mask is the one its seed gives
        if not np.array_equal(store["masks"][t], design[t]):
            raise StoreError(
                f"run {t} in {store.path} has a mask its seed does not give: the store is corrupt or was made by "
                f"other code. Delete {store.path} and rerun."
            )
    return store


# ---------------------------------------------------------------------------------------------------
# Running many idempotent jobs, in this process or in worker processes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Train on the examples of `mask` with `seed`, and write the outcome to `row` of the store."""

    row: int
    mask: np.ndarray
    seed: int


def subset_jobs(cfg: Config, n_train: int, rows: Iterable[int]) -> list[Job]:
    """Stage-1 jobs: run t trains on its design mask with the seed that t gives."""
    masks = subset_masks(cfg, n_train)
    return [Job(t, masks[t], derive_seed(cfg.seed, 1, t)) for t in rows]


def _row_values(job: Job, out: Outcome, seconds: float, columns: Sequence[str]) -> dict[str, np.ndarray]:
    values = {
        "masks": job.mask,
        "train_correct": out.train_correct,
        "test_correct": out.test_correct,
        "train_prob": out.train_prob.astype(np.float16),
        "test_prob": out.test_prob.astype(np.float16),
        "seconds": np.float32(seconds),
    }
    return {k: v for k, v in values.items() if k in columns}


def run_job(store: Store, learner, job: Job) -> None:
    """Train and evaluate one job and write its row, unless the row is already completed."""
    if store.completed[job.row]:
        return
    start = time.perf_counter()
    out = learner.fit_eval(np.flatnonzero(job.mask), job.seed)
    store.write_row(job.row, _row_values(job, out, time.perf_counter() - start, store.arrays))


_WORKER: dict[str, Any] = {}


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die when the parent dies
        except OSError:
            pass


def _worker_init(cfg_dict: dict, store_path: str, spec, meta, threads: int) -> None:
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)
    cfg = Config.from_dict(cfg_dict)
    data = load_dataset(cfg)
    _WORKER["store"] = Store.open(Path(store_path), spec, meta, create=False)
    _WORKER["learner"] = NeuralLearner(cfg, data)


def _worker_run(job: Job) -> int:
    run_job(_WORKER["store"], _WORKER["learner"], job)
    return job.row


def run_jobs(
    store: Store,
    jobs: list[Job],
    cfg: Config,
    data: Dataset,
    learner=None,
    workers: int | None = None,
    desc: str = "training",
) -> None:
    """Run the jobs whose rows are not completed, with a progress bar.

    With workers > 1 (CPU only; default: `worker_count`), jobs run in that many spawned processes, each with
    its share of the cores and its own copy of the data and learner; results land in the shared memory-mapped
    store. With a `learner` given (a test's exact learner), or on a GPU, jobs run in this process, on `data`.
    """
    workers = worker_count(cfg, learner) if workers is None else workers
    todo = [j for j in jobs if not store.completed[j.row]]
    bar = tqdm(total=store.rows, initial=store.done(), desc=desc, unit="model", file=sys.stderr, mininterval=2)
    try:
        if not todo:
            return
        if learner is not None or workers <= 1:
            learner = learner or NeuralLearner(cfg, data)
            for job in todo:
                run_job(store, learner, job)
                bar.update(1)
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        spec = {k: ArraySpec(tuple(v.shape), v.dtype.name) for k, v in store.arrays.items()}
        ctx = mp.get_context("spawn")
        init_args = (cfg.to_dict(), str(store.path), spec, store.meta, threads)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=init_args) as pool:
            pending = {pool.submit(_worker_run, job) for job in todo}
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    fut.result()  # re-raises a worker's exception here
                    bar.update(1)
    finally:
        bar.close()
    store.reload()


def train_subsets(cfg: Config, data: Dataset, learner=None, rows: Iterable[int] | None = None) -> Store:
    """Stage 1: fill the subset store (resuming: finished runs are kept, never retrained)."""
    check_out_counts(cfg, data.n_train)
    store = open_subset_store(cfg, data)
    rows = range(cfg.num_models) if rows is None else rows
    jobs = subset_jobs(cfg, data.n_train, store.pending(rows))
    run_jobs(store, jobs, cfg, data, learner=learner, desc="subset models")
    return store


def worker_count(cfg: Config, learner=None) -> int:
    """CPU training uses cfg.workers processes; a GPU, or a learner passed in, runs in this process."""
    return 1 if (learner is not None or resolve_device(cfg.device).type == "cuda") else cfg.workers
