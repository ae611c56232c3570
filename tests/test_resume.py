"""Resumption: kill the training stage partway (a real SIGKILL), rerun it, and get an uninterrupted run's store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

ARRAYS = ("masks", "train_correct", "test_correct", "train_prob", "test_prob", "completed")


def write_profile(tmp_path: Path, results: Path) -> Path:
    values = {
        **yaml.safe_load(open("configs/smoke.yaml")),
        "results_dir": str(results),
        "num_models": 48,
        "epochs": 12,
        "width": 64,
        "workers": 2,
        "group_size": 4,  # 12 groups of 4 models trained in lockstep, two groups at a time
    }
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def train(profile: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "memlib", "train", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the kill takes the workers too
    )


def completed(store: Path) -> int:
    try:
        return int(np.load(store / "completed.npy", mmap_mode="r").sum())
    except (FileNotFoundError, ValueError):
        return 0


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    profile = write_profile(tmp_path, tmp_path / "killed")
    store = tmp_path / "killed" / "smoke" / "store"
    proc = train(profile)
    deadline = time.time() + 120
    while completed(store) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done_at_kill = completed(store)
    assert 6 <= done_at_kill < 48, f"the kill should land mid-run (finished: {done_at_kill})"
    finished_before = np.load(store / "completed.npy").copy()
    seconds_before = np.load(store / "seconds.npy").copy()
    groups = finished_before.reshape(12, 4)
    assert (groups.all(1) | ~groups.any(1)).all(), "a group's rows are marked complete together"

    rerun = train(profile)
    out = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, out
    # Finished models were not retrained (fault planted: train_subsets, run_jobs and run_group ignoring the
    # completed-mask, which the former check `seconds > 0` let pass): the rerun trained exactly the unfinished
    # models, and the finished rows still hold the first run's measured training times (a retrained row gets its
    # own, new time).
    assert "48 of 48 models finished" in out
    assert f"({48 - done_at_kill} trained" in out, out
    np.testing.assert_array_equal(np.load(store / "seconds.npy")[finished_before], seconds_before[finished_before])

    (tmp_path / "f").mkdir()
    fresh = train(write_profile(tmp_path / "f", tmp_path / "fresh"))
    out = fresh.communicate(timeout=300)[0].decode()
    assert fresh.returncode == 0, out
    fresh_store = tmp_path / "fresh" / "smoke" / "store"
    for name in ARRAYS:
        np.testing.assert_array_equal(np.load(store / f"{name}.npy"), np.load(fresh_store / f"{name}.npy"), name)


def test_rerun_of_a_finished_store_trains_nothing(tmp_path):
    profile = write_profile(tmp_path, tmp_path / "r")
    proc = train(profile)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    store = tmp_path / "r" / "smoke" / "store"
    mtime = (store / "masks.npy").stat().st_mtime_ns
    proc = train(profile)
    out = proc.communicate(timeout=300)[0].decode()
    assert "48/48" in out and (store / "masks.npy").stat().st_mtime_ns == mtime
