"""Real processes started together: group claims, overlapping row ranges, and workers that die with their parent."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_dataset
from faults import spawned_workers, tagged_processes

import memlib
from memlib.runs import claims
from memlib.runs.local import run_jobs
from memlib.runs.subsets import open_subset_store
from memlib.train.design import subset_jobs
from memlib.train.engine import Outcome

FORK = mp.get_context("fork")


def _claim_at_once(folder, barrier, queue):
    barrier.wait()
    lease = claims.claim(folder, 0)
    queue.put(lease is not None)
    time.sleep(0.2)  # hold it while the others try


def test_one_claim_wins_among_processes_started_together(tmp_path):
    for trial in range(20):
        barrier, queue = FORK.Barrier(6), FORK.Queue()
        procs = [FORK.Process(target=_claim_at_once, args=(tmp_path / str(trial), barrier, queue)) for _ in range(6)]
        for p in procs:
            p.start()
        won = [queue.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=60)  # a deadline: a stuck child fails the exit-code check below
        assert sum(won) == 1, f"trial {trial}: {sum(won)} processes hold the same group"


def test_a_dead_workers_lease_is_taken_over_and_a_live_one_is_not(tmp_path):
    dead = FORK.Process(target=claims.claim, args=(tmp_path, 3))
    dead.start()
    dead.join(timeout=60)  # it took the lease and died holding it
    assert dead.exitcode == 0
    assert (tmp_path / "group-000003.lease").exists()
    lease = claims.claim(tmp_path, 3)
    assert lease is not None and lease.held()
    assert claims.claim(tmp_path, 3) is None  # this process holds it now
    lease.release()
    assert not (tmp_path / "group-000003.lease").exists()
    # another host's lease: live while refreshed within the ttl, dead after
    file = tmp_path / "group-000004.lease"
    file.write_text('{"host": "elsewhere", "pid": 1, "token": "x"}')
    assert claims.claim(tmp_path, 4, ttl=60) is None
    os.utime(file, (time.time() - 120, time.time() - 120))
    assert claims.claim(tmp_path, 4, ttl=60) is not None


class LoggingLearner:
    """A fast exact learner that appends every row it trains to a log shared by all processes."""

    def __init__(self, data, log: Path):
        self.data, self.log = data, log

    def fit_eval(self, idx, seed):
        with open(self.log, "a") as f:
            f.write(f"{seed}\n")
        time.sleep(0.01)
        inside = np.zeros(self.data.n_train, dtype=bool)
        inside[idx] = True
        test = np.zeros(self.data.n_test, dtype=bool)
        return Outcome(inside, inside.astype(np.float32), test, test.astype(np.float32))


def _train_rows(cfg, data, rows, log, barrier, queue):
    barrier.wait()
    try:
        store = open_subset_store(cfg, data)  # a fresh store: the processes race to create it too
        jobs = subset_jobs(cfg, data.n_train, store.pending(rows))
        queue.put(run_jobs(store, jobs, cfg, data, learner=LoggingLearner(data, log)))
    except Exception as exc:  # reported to the test
        queue.put(repr(exc))


def test_overlapping_row_ranges_train_every_row_exactly_once(tmp_path):
    """Four workers with overlapping --rows ranges start together on a fresh store, ten times."""
    data = tiny_dataset(n_train=30, n_test=10)
    ranges = [range(0, 24), range(8, 32), range(16, 40), range(0, 40)]
    for trial in range(10):
        cfg = memlib.Config(
            profile="race", results_dir=str(tmp_path / str(trial)), num_models=40, min_out=2, group_size=4
        )
        log = tmp_path / f"log{trial}"
        barrier, queue = FORK.Barrier(len(ranges)), FORK.Queue()
        procs = [FORK.Process(target=_train_rows, args=(cfg, data, rows, log, barrier, queue)) for rows in ranges]
        for p in procs:
            p.start()
        counts = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)  # a deadline: a stuck child fails the exit-code check below
        assert all(isinstance(c, int) for c in counts), counts
        trained = log.read_text().split()
        assert len(trained) == len(set(trained)) == 40 == sum(counts), f"trial {trial}: {sorted(trained)}"
        assert open_subset_store(cfg, data, create=False).done() == 40


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_when_the_parent_is_killed_in_its_first_second(tmp_path):
    """SIGKILL only the parent, 0-1 s after it starts its workers: no worker outlives it by more than seconds."""
    values = {**yaml.safe_load(open("configs/smoke.yaml")), "results_dir": str(tmp_path / "r"), "workers": 2}
    profile = tmp_path / "smoke.yaml"
    profile.write_text(yaml.safe_dump(values))
    for delay in (0.0, 0.9):
        tag = f"MEMLIB_ORPHAN_TEST_{uuid.uuid4().hex}"
        env = {**os.environ, tag: "1"}
        parent = subprocess.Popen(
            [sys.executable, "-m", "memlib", "train", str(profile)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"stderr{delay}", "w"),
        )
        deadline = time.time() + 120
        while not spawned_workers(parent.pid) and time.time() < deadline and parent.poll() is None:
            time.sleep(0.01)
        assert spawned_workers(parent.pid), (
            f"the parent never started its workers (exit {parent.poll()}): {(tmp_path / f'stderr{delay}').read_text()}"
        )
        time.sleep(delay + random.uniform(0, 0.1))
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=60)
        deadline = time.time() + 15
        while tagged_processes(tag) and time.time() < deadline:
            time.sleep(0.2)
        survivors = tagged_processes(tag)
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"{len(survivors)} workers outlived their parent killed {delay:.1f} s after spawning"


def test_a_worker_arms_its_parent_death_signal_before_importing_torch():
    """What a spawned worker imports before its initializer runs (memlib, the parent's main module) is light."""
    code = (
        "import sys, memlib, memlib.__main__, memlib.runs.lifeline; "
        "heavy = [m for m in ('torch', 'timm', 'sklearn', 'pandas', 'scipy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
