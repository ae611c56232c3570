"""The local executor: which groups go to which worker process or device, with a progress bar.

On a CPU, `workers` processes (one thread each) train groups side by side; on a GPU, one process trains them in
turn. Each group goes through memlib.runs.group.run_group (claimed, trained, written), so a resumed run trains
exactly the groups that are not finished.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import Config
from ..data.dataset import Dataset
from ..data.datasets import load_dataset
from ..train.design import Job
from ..train.engine import NeuralLearner, resolve_device
from .group import job_groups, run_group
from .lifeline import start as lifeline_start
from .store import ArraySpec, Store

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

    Each group is claimed before it trains (see memlib.runs.claims): a group another worker holds is skipped at
    first and waited for at the end, so on return every job's row is finished, each by exactly one worker.

    With workers > 1 (CPU only; default: `worker_count`), groups run in that many spawned processes, each with
    its share of the cores and its own copy of the data and learner; results land in the shared memory-mapped
    store. With a `learner` given (a test's exact learner), or on a GPU, groups run in this process, on `data`.
    `first_group`, called once after the first group this call trains, may return a line to print (stage 1's
    early word on whether the models fit what they train on).
    """
    workers = worker_count(cfg, learner) if workers is None else workers
    groups = job_groups([j for j in jobs if not store.completed[j.row]], cfg.group_size)
    bar = tqdm(total=store.rows, initial=store.done(), desc=desc, unit="model", file=sys.stderr, mininterval=2)
    try:
        if not groups:
            return 0
        if learner is not None or workers <= 1:
            return _run_here(store, groups, cfg.group_size, learner or NeuralLearner(cfg, data), bar, first_group)
        return _run_in_pool(store, groups, cfg, workers, bar, first_group)
    finally:
        bar.close()
        store.reload()


def _run_here(store: Store, groups: list[list[Job]], k: int, learner, bar, first_group) -> int:
    """The groups in this process, in turn; a group another worker holds is waited for after the free ones."""
    trained, held = 0, []
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


def _run_in_pool(store: Store, groups: list[list[Job]], cfg: Config, workers: int, bar, first_group) -> int:
    """The groups in `workers` spawned processes, each with its share of the cores and its own data and learner."""
    k, trained = cfg.group_size, 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    spec = {name: (list(a.shape), a.dtype.name) for name, a in store.arrays.items()}
    ctx = mp.get_context("spawn")
    # the initializer lives in memlib.runs.lifeline, which arms the parent-death signal before any heavy import
    init_args = (
        os.getpid(),
        "memlib.runs.local:_worker_init",
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
    return trained


def _report_first(hook: Callable[[], str | None] | None, n: int | None, bar) -> Callable[[], str | None] | None:
    """Call the first-group hook once a group has trained (printing its line); returns the hook still to call."""
    if hook is None or not n:
        return hook
    line = hook()
    if line:
        bar.write(line, file=sys.stderr)
    return None


def worker_count(cfg: Config, learner=None) -> int:
    """CPU training uses cfg.workers processes; a GPU, or a learner passed in, runs in this process."""
    return 1 if (learner is not None or resolve_device(cfg.device).type == "cuda") else cfg.workers
