"""The SLURM backend: stages 1 and 3 as job arrays through submitit, one array task per group of rows.

A task opens the shared store (results/ must be on storage every node sees), builds the data and the learner,
and trains its group with `memlib.runs.group.run_group`, under the group's claim, so a requeued or duplicated task never
trains a group twice and a group's rows complete together. A task that fails, is cancelled or is pre-empted
leaves its rows unfinished, as a killed local worker does; one signalled before its time limit is requeued by
submitit (the task is Checkpointable; its group starts afresh). The driver (`run_array`) resubmits only the
unfinished groups, each at most `slurm_retries` more times, and then stops with an error that names the
failed tasks and their logs.

What was submitted is recorded in <store>/slurm/tasks.json (job id, group, rows, attempt and log folder of
every task), written atomically under a lock, so `status`, a detached `submit` and a later run that
reattaches all see the same jobs: a group whose task is still queued or running is never submitted again.
Which tasks are alive is asked of `squeue`, how they ended of `sacct`; progress is the store's completed-mask.
Each submission logs to its own folder, <store>/slurm/logs/<time>-<id>/ (SLURM job ids restart when a
cluster's state is wiped, so a reused folder could hand back an earlier run's files).
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit
from tqdm import tqdm

from ..config import Config, display_path
from ..data.dataset import Dataset
from ..train.design import Job, group_rows
from .store import Store, describe_rows, read_spec

RECORD_DIR = "slurm"
RECORD_FILE = "tasks.json"
MAX_ARRAY = 1000  # tasks per array: SLURM's default MaxArraySize is 1001
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
ENDED |= {"OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}


class SlurmError(RuntimeError):
    """SLURM work that cannot go on (no SLURM here, or tasks that kept failing); the message says what to do."""


@dataclass
class Task:
    """One submitted array task: the group it trains, and where its logs are."""

    job: str  # SLURM job id: "<array>_<index>", or "<id>" for a lone task
    group: int
    rows: list[int]
    attempt: int
    folder: str  # its submission's log folder
    submitted: float

    @property
    def log(self) -> Path:
        """The task's stderr file, where submitit writes its traceback."""
        return submitit.core.utils.JobPaths(self.folder, self.job).stderr

    @property
    def result(self) -> Path:
        return submitit.core.utils.JobPaths(self.folder, self.job).result_pickle


class GroupTask(submitit.helpers.Checkpointable):
    """An array task: train one group of a store's rows (picklable; requeued as it is when signalled)."""

    def __init__(self, cfg: dict[str, Any], store: str, fingerprint: str, jobs: list[Job]):
        self.cfg, self.store, self.fingerprint, self.jobs = cfg, store, fingerprint, jobs

    def __call__(self) -> int:
        import torch

        from ..data.datasets import load_dataset
        from ..train.engine import NeuralLearner
        from .group import run_group
        from .subsets import check_same_precision

        torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        cfg = Config.from_dict(self.cfg)
        store = open_store(Path(self.store))
        if store.meta.get("fingerprint") != self.fingerprint:
            raise SlurmError(f"{self.store} was replaced by another store after this task was submitted")
        learner = NeuralLearner(cfg, load_dataset(cfg))
        check_same_precision(Path(self.store), store.meta, learner.precision, cfg)  # as recorded where submitted
        trained = run_group(store, learner, self.jobs, cfg.group_size, wait=True) or 0
        print(f"rows {describe_rows(j.row for j in self.jobs)}: {trained} models trained", flush=True)
        return trained


def open_store(path: Path, writable: bool = True) -> Store:
    """Open an existing store, with the spec and meta it records."""
    spec, meta = read_spec(path)
    return Store.open(path, spec, meta, create=False, writable=writable, verify=False)


# ------------------------------------------------------------------------------------------------
def record_dir(store_path: Path) -> Path:
    return Path(store_path) / RECORD_DIR


def read_record(store_path: Path) -> list[Task]:
    """Every task submitted for this store, oldest first ([] if none)."""
    file = record_dir(store_path) / RECORD_FILE
    if not file.exists():
        return []
    return [Task(**t) for t in json.loads(file.read_text())["tasks"]]


def _write_record(store_path: Path, tasks: list[Task]) -> None:
    folder = record_dir(store_path)
    tmp = folder / f".{RECORD_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        f.write('{"tasks": [\n' + ",\n".join(json.dumps(asdict(t)) for t in tasks) + "\n]}\n")  # a task a line
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / RECORD_FILE)


@contextmanager
def _locked(store_path: Path) -> Iterator[None]:
    """Hold the store's submission lock (one driver decides and submits at a time)."""
    folder = record_dir(store_path)
    folder.mkdir(exist_ok=True)
    with open(folder / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def require_slurm() -> None:
    """Raise SlurmError unless SLURM's commands are on this machine."""
    missing = [c for c in ("sbatch", "squeue", "sacct") if shutil.which(c) is None]
    if missing:
        raise SlurmError(
            f"executor: slurm, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on this "
            "machine: run on a login node of a SLURM cluster, or set executor: local (or MEMLIB_EXECUTOR=local)."
        )


def queued(tasks: list[Task]) -> dict[str, str]:
    """State of each of `tasks` that SLURM still has queued or running (squeue), by job id."""
    if not tasks:
        return {}
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T", "-u", getpass.getuser()]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise SlurmError(f"`{' '.join(cmd)}` failed ({str(detail).strip()}): is the SLURM controller up?") from exc
    ours = {t.job for t in tasks}
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return {job: state for job, state in states.items() if job in ours and state not in ENDED}


def final_states(jobs: list[str]) -> dict[str, str]:
    """How ended jobs ended, as sacct says (jobs it does not know are left out)."""
    if not jobs:
        return {}
    cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(jobs)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return {job: states[job].split()[0] for job in jobs if job in states}


def failure_text(task: Task, state: str) -> str:
    """A failed task in one paragraph: its id, rows, how it ended, its log and the last line of its error."""
    tail = ""
    try:
        with open(task.result, "rb") as f:
            outcome, trace = pickle.load(f)
        if outcome == "error":
            tail = [line for line in str(trace).strip().splitlines() if line.strip()][-1]
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, IndexError, AttributeError, ImportError):
        pass
    if not tail and task.log.exists():
        lines = [line for line in task.log.read_text(errors="replace").splitlines() if line.strip()]
        tail = lines[-1] if lines else ""
    text = f"  task {task.job} (rows {describe_rows(task.rows)}, attempt {task.attempt}): {state}; log {task.log}"
    return text + (f"\n      {tail.strip()}" if tail else "")


# ------------------------------------------------------------------------------------------------
def _executor(cfg: Config, folder: Path, name: str) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=folder)
    params: dict[str, Any] = {
        "job_name": name,
        "time": cfg.slurm_time_min,
        "cpus_per_task": cfg.slurm_cpus_per_task,
        "array_parallelism": cfg.slurm_array_parallelism,
    }
    if cfg.slurm_partition:
        params["partition"] = cfg.slurm_partition
    if cfg.slurm_gpus_per_task:
        params["gpus_per_node"] = cfg.slurm_gpus_per_task  # one task per job: a task's GPUs
    if cfg.slurm_mem_gb:
        params["mem"] = f"{cfg.slurm_mem_gb}GB"
    if cfg.slurm_sbatch:
        params["additional_parameters"] = {k.replace("-", "_"): v for k, v in cfg.slurm_sbatch.items()}
    executor.update_parameters(**params)
    return executor


def _submit(store: Store, cfg: Config, groups: dict[int, list[Job]], attempts: dict[int, int]) -> list[Task]:
    """Submit one array task per group (arrays of at most MAX_ARRAY tasks); returns the tasks."""
    tasks = []
    order = sorted(groups)
    fingerprint = str(store.meta.get("fingerprint", ""))
    for start in range(0, len(order), MAX_ARRAY):
        chunk = order[start : start + MAX_ARRAY]
        folder = record_dir(store.path) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        executor = _executor(cfg, folder, f"memlib-{cfg.profile}-{store.path.name}")
        with executor.batch():
            jobs = [executor.submit(GroupTask(cfg.to_dict(), str(store.path), fingerprint, groups[g])) for g in chunk]
        now = time.time()
        for g, job in zip(chunk, jobs):
            rows = [j.row for j in groups[g]]
            tasks.append(Task(str(job.job_id), g, rows, attempts.get(g, 0) + 1, str(folder), now))
    return tasks


def _unfinished(store: Store, groups: dict[int, list[Job]]) -> dict[int, list[Job]]:
    return {g: jobs for g, jobs in groups.items() if not all(store.completed[j.row] for j in jobs)}


def _step(store: Store, cfg: Config, groups: dict[int, list[Job]], tried: Counter, retries: int | None) -> dict:
    """One look at the cluster, under the lock: submit the unfinished groups that have no live task.

    A group is submitted again only while this driver has submitted it at most `retries` times (None: once
    per group that has no live task, as a detached `submit` does). Returns the live, new and given-up tasks.
    """
    with _locked(store.path):
        record = read_record(store.path)
        live = queued(record)  # asked before the store is read: a task that finishes meanwhile counts as done
        store.reload()
        todo = _unfinished(store, groups)
        latest = {t.group: t for t in record}
        active = {t.group for t in record if t.job in live}
        idle = [g for g in todo if g not in active]
        given_up = [g for g in idle if retries is not None and tried[g] > retries]
        submit = {g: todo[g] for g in idle if g not in given_up and (retries is not None or tried[g] == 0)}
        new = []
        if submit:
            attempts = Counter(t.group for t in record)
            new = _submit(store, cfg, submit, attempts)
            _write_record(store.path, record + new)
            tried.update(list(submit))
        return {
            "live": [t for t in record if t.job in live],
            "new": new,
            "given_up": [latest[g] for g in given_up],
            "todo": len(todo),
        }


def submit_array(store: Store, jobs: list[Job], cfg: Config) -> tuple[list[Task], list[Task]]:
    """Submit the unfinished groups that no live task holds, and return at once: (new tasks, live tasks)."""
    require_slurm()
    step = _step(store, cfg, _groups(jobs, cfg.group_size), Counter(), retries=None)
    return step["new"], step["live"]


def _groups(jobs: list[Job], group_size: int) -> dict[int, list[Job]]:
    """The design's groups (memlib.train.design.group_rows) by their index, each group's jobs in row order.

    Not memlib.runs.group.job_groups: that module imports torch, and with it imported here the task that
    tests/test_slurm.py signals (USR2) was submitted again instead of requeued, 3 runs in 3. Keep this light."""
    by_row = {j.row: j for j in jobs}
    return {rows[0] // group_size: [by_row[r] for r in rows] for rows in group_rows(sorted(by_row), group_size)}


def run_array(
    store: Store,
    jobs: list[Job],
    cfg: Config,
    data: Dataset | None = None,
    desc: str = "training",
    first_group: Callable[[], str | None] | None = None,
) -> int:
    """Train the unfinished groups of `jobs` as SLURM array tasks, with a progress bar; returns rows finished.

    An executor of memlib.runs.executors: `data` and `first_group` are taken and not used (each task loads the
    data itself on its node, and the driver has no first group of its own to report on).

    Reattaches to the store's live tasks (nothing that is queued or running is submitted again), resubmits a
    group whose task ended without finishing it at most `slurm_retries` times, and returns once every row is
    complete; raises SlurmError naming the failed tasks and their logs if some group kept failing.
    """
    require_slurm()
    groups = _groups(jobs, cfg.group_size)
    tried: Counter = Counter()
    before = store.done()
    bar = tqdm(total=store.rows, initial=before, desc=desc, unit="model", file=sys.stderr, mininterval=2)
    start = time.monotonic()
    try:
        while True:
            step = _step(store, cfg, groups, tried, cfg.slurm_retries)
            bar.update(store.done() - bar.n)
            if not step["todo"]:
                return store.done() - before
            if step["given_up"] and not step["live"] and not step["new"]:
                raise SlurmError(gave_up_message(store, cfg, step["given_up"]))
            time.sleep(min(10.0, 1.0 + (time.monotonic() - start) / 30))
    finally:
        bar.close()
        store.reload()


def gave_up_message(store: Store, cfg: Config, given_up: list[Task]) -> str:
    """The error of a run that stops: which groups failed how often, and each failed task with its log."""
    record = read_record(store.path)
    groups = {t.group for t in given_up}
    failed = [t for t in record if t.group in groups]
    states = final_states([t.job for t in failed])
    rows = sorted(r for t in given_up for r in t.rows)
    lines = [
        f"{len(groups)} group{'s' if len(groups) != 1 else ''} of {display_path(store.path)} (rows "
        f"{describe_rows(rows)}) failed {cfg.slurm_retries + 1} times (the first try and slurm_retries: "
        f"{cfg.slurm_retries}), so the run stops. Their rows stay unfinished; every finished row is kept. "
        "The failed array tasks:"
    ]
    lines += [failure_text(t, states.get(t.job, "ended")) for t in failed[-12:]]
    if len(failed) > 12:
        lines.append(f"  ... and {len(failed) - 12} earlier tasks (all in {display_path(record_dir(store.path))})")
    lines.append("Fix what the logs show, then rerun: only the unfinished rows are submitted again.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
def status(store: Store) -> dict[str, Any]:
    """Rows of a store by state (finished, running, pending, failed, not submitted) and the failed tasks."""
    record = read_record(store.path)
    if record:
        require_slurm()
    live = queued(record)
    store.reload()
    done = store.completed
    latest: dict[int, Task] = {}
    for t in record:
        latest[t.group] = t
    running, pending, failed = [], [], []
    for t in record:
        if t.job in live:
            (running if live[t.job] in ("RUNNING", "COMPLETING", "CONFIGURING") else pending).append(t)
    live_groups = {t.group for t in running + pending}
    for g, t in latest.items():
        if g not in live_groups and not all(done[r] for r in t.rows):
            failed.append(t)
    rows_of = lambda ts: sorted({r for t in ts for r in t.rows if not done[r]})
    claimed = set(rows_of(running + pending + failed))
    return {
        "finished": [int(r) for r in range(store.rows) if done[r]],
        "running": rows_of(running),
        "pending": rows_of(pending),
        "failed": rows_of(failed),
        "not submitted": [r for r in range(store.rows) if not done[r] and r not in claimed],
        "running tasks": running,
        "pending tasks": pending,
        "failed tasks": failed,
    }


def status_text(store: Store) -> str:
    """`python -m memlib status`: a store's rows by state, its live tasks and its failed tasks with their logs."""
    st = status(store)
    lines = [f"{display_path(store.path)}: {store.rows} rows"]
    for name in ("finished", "running", "pending", "failed", "not submitted"):
        rows = st[name]
        lines.append(f"  {name:<14}{len(rows):>7}" + (f"  rows {describe_rows(rows, limit=6)}" if rows else ""))
    live = st["running tasks"] + st["pending tasks"]
    if live:
        jobs = sorted({t.job.split("_")[0] for t in live})
        lines.append(f"  live tasks: {len(live)} (SLURM job{'s' if len(jobs) > 1 else ''} {', '.join(jobs)})")
    if st["failed tasks"]:
        states = final_states([t.job for t in st["failed tasks"]])
        lines.append("  tasks that ended with their rows unfinished (a run resubmits them):")
        lines += ["  " + failure_text(t, states.get(t.job, "ended")) for t in st["failed tasks"][:12]]
    return "\n".join(lines)
