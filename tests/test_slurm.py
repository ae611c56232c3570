"""executor: slurm against a real single-node SLURM cluster (.ci/slurm-cluster, started here if it can be).

Every store that SLURM array tasks fill is compared, array by array and bit for bit, with the store that the
local executor fills for the same profile (only the recorded seconds, and their checksums, may differ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT

import memlib
from memlib.runs.store import CHECKSUMS, COMPLETED, data_names

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the cluster may take 15 minutes to start

SCRIPT = ROOT / ".ci" / "slurm-cluster"


@pytest.fixture(scope="session")
def cluster(request):
    """A running SLURM cluster: the one already up, or one started now (and stopped at the end)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the test cluster (.ci/slurm-cluster) runs on Linux only")
    conf = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    started = False
    if subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode != 0:
        t0 = time.monotonic()
        proc = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        if proc.returncode == 3:
            pytest.skip(
                f"no SLURM cluster: {proc.stderr.strip().splitlines()[-1]}. These tests start one themselves when "
                "run as root on Debian or Ubuntu (apt-get); or start one with `.ci/slurm-cluster start`."
            )
        assert proc.returncode == 0, f".ci/slurm-cluster start failed:\n{proc.stdout}\n{proc.stderr}"
        started = True
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"\nslurm test cluster started in {time.monotonic() - t0:.1f} s")
    yield conf
    if started:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def write_profile(folder: Path, **changes) -> Path:
    """The smoke profile with `changes`, its results in folder/results (its file: folder/smoke.yaml)."""
    values = {**yaml.safe_load(open(ROOT / "configs" / "smoke.yaml")), "results_dir": str(folder / "results")}
    values.update(slurm_cpus_per_task=1, **changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "smoke.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def memlib_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "memlib", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def store_of(profile: Path, name: str = "store") -> Path:
    return profile.parent / "results" / "smoke" / name


def tasks(store: Path) -> list[dict]:
    return json.loads((store / "slurm" / "tasks.json").read_text())["tasks"]


def assert_same_store(a: Path, b: Path) -> None:
    """Bit-identical arrays, but for the recorded seconds (wall time) and the checksums of those."""
    spec = json.loads((a / "spec.json").read_text())["spec"]
    assert spec == json.loads((b / "spec.json").read_text())["spec"]
    for name in spec:
        if name in ("seconds", CHECKSUMS):
            continue
        x, y = np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), f"{name} differs"
    keep = [i for i, n in enumerate(data_names(spec)) if n != "seconds"]
    assert np.array_equal(np.load(a / f"{CHECKSUMS}.npy")[:, keep], np.load(b / f"{CHECKSUMS}.npy")[:, keep])
    assert np.load(a / f"{COMPLETED}.npy").all()


@pytest.fixture(scope="session")
def local_smoke(tmp_path_factory) -> Path:
    """The smoke profile's stage-1 store, trained by the local executor."""
    profile = write_profile(tmp_path_factory.mktemp("local"), executor="local")
    proc = memlib_cli("train", str(profile))
    assert proc.returncode == 0, proc.stderr
    return store_of(profile)


def test_slurm_stages_1_and_3_equal_the_local_executor(cluster, local_smoke, tmp_path):
    profile = write_profile(tmp_path / "slurm", executor="slurm")
    proc = memlib_cli("train", str(profile))
    assert proc.returncode == 0, proc.stderr
    assert "40 of 40 models finished" in proc.stdout
    store = store_of(profile)
    assert_same_store(local_smoke, store)
    submitted = tasks(store)
    assert sorted(t["group"] for t in submitted) == [0, 1, 2, 3, 4] and {t["attempt"] for t in submitted} == {1}

    # stage 3 (marginal utility) from the same estimates, through each executor
    local_cfg = memlib.load_profile(str(write_profile(tmp_path / "local3", executor="local")))
    slurm_cfg = memlib.load_profile(str(profile))
    data = memlib.load_dataset(slurm_cfg)
    est = memlib.estimate(slurm_cfg, memlib.open_subset_store(slurm_cfg, data, create=False), data)
    slurm_util = memlib.marginal_utility(slurm_cfg, data, est)
    local_util = memlib.marginal_utility(local_cfg, data, est)
    retrain = store_of(profile, "retrain")
    assert_same_store(store_of(tmp_path / "local3" / "smoke.yaml", "retrain"), retrain)
    assert len(tasks(retrain)) >= 1
    cols = ["condition", "test_acc", "pair_test_acc"]
    assert slurm_util.runs[cols].equals(local_util.runs[cols])


def test_cancelled_task_is_resubmitted_a_signalled_one_requeued_and_the_store_equals_an_uninterrupted_run(
    cluster, tmp_path
):
    # two groups of 20 models, their tasks side by side on the 2 CPUs, each still training when the signals come
    # (a group trains for 10 s or more): one is cancelled (scancel: SIGTERM, which submitit lets pass, then SIGKILL;
    # the task was seen to live on up to 5 s), the other gets SIGUSR2, the signal SLURM sends before a time limit
    # (and on pre-emption), on which submitit requeues it
    changes = {"group_size": 20, "epochs": 100}
    local = write_profile(tmp_path / "local", executor="local", **changes)
    profile = write_profile(tmp_path / "slurm", executor="slurm", **changes)
    store = store_of(profile)
    driver = subprocess.Popen(
        [sys.executable, "-m", "memlib", "train", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    running: list[str] = []
    recorded = store / "slurm" / "tasks.json"  # written once sbatch returns, which can be after the tasks start
    deadline = time.time() + 300
    while not (len(running) == 2 and recorded.exists()) and time.time() < deadline and driver.poll() is None:
        squeue = ["squeue", "-h", "-r", "-t", "R", "-o", "%i"]
        out = subprocess.run(squeue, capture_output=True, text=True, timeout=60).stdout
        running = out.split()
        time.sleep(0.2)
    assert len(running) == 2 and recorded.exists(), f"both tasks should run, and be recorded: {running}"
    time.sleep(1.0)  # mid-run: started, not finished
    cancelled, signalled = sorted(running)
    subprocess.run(["scancel", cancelled], check=True, timeout=60)
    subprocess.run(["scancel", "--signal=USR2", signalled], check=True, timeout=60)
    by_job = {t["job"]: t for t in tasks(store)}
    deadline = time.time() + 120  # fault: a cancelled task that never leaves the queue would hang CI without it
    while (
        cancelled
        in subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    ):
        assert time.time() < deadline, f"task {cancelled} is still queued 120 s after scancel"
        time.sleep(0.2)
    done = np.load(store / "completed.npy")
    assert not done[by_job[cancelled]["rows"]].any(), "the cancelled task's rows are unfinished once it is gone"
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    assert "40 of 40 models finished" in out
    record = tasks(store)
    again = [t for t in record if t["group"] == by_job[cancelled]["group"]]
    assert [t["attempt"] for t in again] == [1, 2] and again[0]["job"] == cancelled, record
    assert [t["job"] for t in record if t["group"] == by_job[signalled]["group"]] == [signalled], "requeued, same id"
    assert len(record) == 3, "only the cancelled group was submitted again"
    states = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-o", "JobID,State", "-j", f"{cancelled},{signalled}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert f"{cancelled}|CANCELLED" in " ".join(states), states
    assert f"{signalled}|REQUEUED" in states and f"{signalled}|COMPLETED" in states, states
    log = (Path(by_job[signalled]["folder"]) / f"{signalled}_0_log.err").read_text()
    assert "this job is preempted" in log and "REQUEUE" in log, log
    proc = memlib_cli("train", str(local))
    assert proc.returncode == 0, proc.stderr
    assert_same_store(store_of(local), store)


def test_a_task_that_raises_is_reported_with_its_log_after_the_retries(cluster, tmp_path):
    module = tmp_path / "node_fault.py"
    module.write_text(
        "import os\n\nif 'SLURM_JOB_ID' in os.environ:\n    raise RuntimeError('this node has no model for you')\n"
    )
    profile = write_profile(
        tmp_path / "slurm", executor="slurm", group_size=20, slurm_retries=1, model_module=str(module)
    )
    proc = memlib_cli("train", str(profile))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    store = store_of(profile)
    record = tasks(store)
    assert sorted((t["group"], t["attempt"]) for t in record) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "2 groups" in err and "rows 0-39" in err and "failed 2 times" in err and "slurm_retries: 1" in err
    for t in record:
        log = Path(t["folder"]) / f"{t['job']}_0_log.err"
        assert f"task {t['job']} " in err and str(log) in err and log.exists(), (t, err)
    assert "RuntimeError: this node has no model for you" in err
    assert not np.load(store / "completed.npy").any()
    status = memlib_cli("status", str(profile))
    assert status.returncode == 0 and "failed             40" in status.stdout, status.stdout


def test_reattaching_while_tasks_run_submits_nothing_new(cluster, local_smoke, tmp_path):
    profile = write_profile(tmp_path / "slurm", executor="slurm", slurm_array_parallelism=1)
    first = memlib_cli("submit", str(profile), timeout=120)
    assert first.returncode == 0 and "submitted 5 array tasks" in first.stdout, first.stdout + first.stderr
    store = store_of(profile)
    submitted = tasks(store)
    again = memlib_cli("submit", str(profile), timeout=120)
    assert again.returncode == 0 and "submitted 0 array tasks" in again.stdout, again.stdout + again.stderr
    status = memlib_cli("status", str(profile), timeout=120)
    assert status.returncode == 0 and "pending" in status.stdout and "live tasks" in status.stdout, status.stdout
    assert tasks(store) == submitted
    proc = memlib_cli("train", str(profile))  # what `make reproduce` does in notebook 01: reattach and wait
    assert proc.returncode == 0 and "40 of 40 models finished" in proc.stdout, proc.stderr
    assert tasks(store) == submitted, "reattaching submitted nothing"
    assert_same_store(local_smoke, store)
