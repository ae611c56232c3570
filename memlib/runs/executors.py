"""Where a stage's runs train: one entry per executor, chosen by the config's `executor`.

Every executor trains the design's groups through memlib.runs.group.run_group into the same store, so a store
started by one can be finished by another. An executor is `function(store, jobs, cfg, data, desc, first_group)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..config import Config
from ..data.dataset import Dataset
from ..train.design import Job
from .store import Store

# name -> (where its runs train, the function that runs them: module:function, imported when used)
EXECUTORS: dict[str, tuple[str, str]] = {
    "local": (
        "this machine: `workers` processes on a CPU, one process on a GPU (memlib.runs.local)",
        "memlib.runs.local:run_jobs",
    ),
    "slurm": (
        "a SLURM job array, one task per group, into the shared store (memlib.runs.slurm)",
        "memlib.runs.slurm:run_array",
    ),
}


def executor(name: str) -> Callable[..., int]:
    """The function of the executor `name` (imported now: memlib.runs.slurm needs submitit)."""
    module, function = EXECUTORS[name][1].split(":")
    return getattr(importlib.import_module(module), function)


def run_jobs(
    store: Store,
    jobs: list[Job],
    cfg: Config,
    data: Dataset,
    learner=None,
    desc: str = "training",
    first_group: Callable[[], str | None] | None = None,
) -> int:
    """Run the unfinished jobs on the config's executor; returns models trained.

    A `learner` given (a test's exact learner) always runs here, on the local executor, in this process.
    `first_group`, called once after the first group trains, may return a line to print (the local executor's).
    """
    if learner is not None:
        return executor("local")(store, jobs, cfg, data, learner=learner, desc=desc, first_group=first_group)
    return executor(cfg.executor)(store, jobs, cfg, data, desc=desc, first_group=first_group)
