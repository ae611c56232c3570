"""Fault campaign on the stage-1 store and the command line: kill, truncate, flip, delete, race, and bad inputs.

    python tests/faults.py            (about 2 minutes on 2 cores; tests/test_faults.py runs it under `make test`)

A small digits profile is trained once (the reference). Each fault is then made on a copy of it, and the
script records what memlib did: whether `check` and stage 2 refused with a message naming the bad rows (and
wrote nothing), whether an estimate came out silently different, and whether `repair` then `train` brought
back exactly the reference without retraining finished rows that were fine. Killed and racing training runs
are compared with the reference too; a parent killed just after it starts its workers must leave none
behind; every bad input must exit with code 2 and a message before anything is written. The summary's
figures should all be 0 lost / 0 silent / every case caught; the exit status is 1 if any is not.

Run it on other code (PYTHONPATH=/path/to/checkout, with this script copied into that checkout's tests/) to
see how that code fares: it only uses the command line and the public API. `--unguarded` skips the inputs
that make code without size checks exhaust the machine (counted as not refused).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)

import memlib  # noqa: E402
from memlib.__main__ import main  # noqa: E402

ARRAYS = ("masks", "train_correct", "test_correct", "train_prob", "test_prob")
PROFILE = {
    **yaml.safe_load(open(ROOT / "configs/smoke.yaml")),
    "num_models": 72,  # more than 64: the old spot-check looked at the first 64 finished rows only
    "epochs": 2,
    "width": 16,
    "workers": 1,
    "group_size": 8,
}


def write_profile(folder: Path, results: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.yaml"
    values = {**PROFILE, "profile": "faults", "results_dir": str(results), **changes}
    path.write_text(yaml.safe_dump(values))
    return path


def cli(*args: str) -> tuple[int, str]:
    """Run the command line in this process: (exit code, stderr); a crash counts as exit 1 with its traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # what a user would see as a traceback
            rc, err = 1, io.StringIO(f"Traceback: {type(exc).__name__}: {exc}")
    return rc, err.getvalue()


def snapshot(path: Path) -> dict:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def load(store: Path) -> dict[str, np.ndarray]:
    return {name: np.load(store / f"{name}.npy") for name in (*ARRAYS, "completed", "seconds")}


def estimate(cfg, data):
    """Stage 2 as the notebook runs it: (estimates or None, error message or None)."""
    try:
        store = memlib.open_subset_store(cfg, data, create=False)
        return memlib.estimate(cfg, store, data), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def same_estimates(a, b) -> bool:
    return np.array_equal(a.mem.value, b.mem.value, equal_nan=True) and a.pairs.keys() == b.pairs.keys()


def changed_rows(store: Path, ref_store: Path) -> set[int]:
    """Rows whose bytes a fault changed or removed, in any array but the completed-mask (compared raw)."""
    changed: set[int] = set()
    for name in (*ARRAYS, "seconds"):
        ref = np.load(ref_store / f"{name}.npy", mmap_mode="r")
        header = ref.offset
        row = ref[0].nbytes if ref.ndim > 1 else ref.itemsize
        old = (ref_store / f"{name}.npy").read_bytes()
        new = (store / f"{name}.npy").read_bytes() if (store / f"{name}.npy").exists() else b""
        for r in range(len(ref)):
            a, b = header + r * row, header + (r + 1) * row
            if old[a:b] != new[a:b]:
                changed.add(r)
    return changed


def differing_rows(store: Path, ref: dict[str, np.ndarray]) -> np.ndarray:
    """Rows of `store` not finished, or not equal to the reference."""
    try:
        now = load(store)
    except Exception:
        return np.arange(len(ref["completed"]))
    bad = ~now["completed"]
    for name in ARRAYS:
        bad |= (now[name] != ref[name]).reshape(len(bad), -1).any(axis=1)
    return np.flatnonzero(bad)


# ------------------------------------------------------------------------------------------------------------
# the faults: each changes a finished store; `names` is what a message must say (the rows, or the file)
def _edit(store: Path, name: str, fn) -> None:
    arr = np.load(store / f"{name}.npy", mmap_mode="r+")
    fn(arr)
    arr.flush()
    del arr


def _truncate(file: Path, fraction: float) -> None:
    os.truncate(file, int(file.stat().st_size * fraction))


def _unfinish_then_zero(store: Path, row: int) -> None:
    for name in (*ARRAYS, "completed"):
        _edit(store, name, lambda a: a.__setitem__(row, 0))
    _edit(store, "completed", lambda a: a.__setitem__(row, True))


FAULTS = {
    "train_correct.npy truncated (80,000 bytes)": (
        lambda s: os.truncate(s / "train_correct.npy", 80_000),
        "rows 61-71",
    ),
    "masks.npy truncated to 80%": (lambda s: _truncate(s / "masks.npy", 0.8), "are cut off"),
    "row 70's mask flipped": (lambda s: _edit(s, "masks", lambda a: a.__setitem__((70, 3), ~a[70, 3])), "rows 70"),
    "row 66 zeroed and marked complete": (lambda s: _unfinish_then_zero(s, 66), "rows 66"),
    "row 5's train_correct zeroed": (lambda s: _edit(s, "train_correct", lambda a: a.__setitem__(5, False)), "rows 5"),
    "one byte of row 12's train_prob flipped": (
        lambda s: _edit(s, "train_prob", lambda a: a.view(np.uint8).__setitem__((12, 7), a.view(np.uint8)[12, 7] ^ 1)),
        "rows 12",
    ),
    "test_prob.npy deleted": (lambda s: (s / "test_prob.npy").unlink(), "test_prob.npy is missing"),
    "completed.npy deleted": (lambda s: (s / "completed.npy").unlink(), "completed.npy is missing"),
    "spec.json deleted": (lambda s: (s / "spec.json").unlink(), "no readable spec.json"),
}


def corruption_campaign(work: Path, ref_results: Path, ref: dict, ref_est, data) -> dict:
    out = {"faults": 0, "detected": 0, "silent": 0, "check_wrote": 0, "lost": 0, "needless": 0, "lines": []}
    for i, (what, (make, names)) in enumerate(FAULTS.items()):
        folder = work / f"fault{i}"
        results = folder / "results"
        shutil.copytree(ref_results, results)
        profile = write_profile(folder, results)
        cfg = memlib.load_profile(str(profile))
        store = cfg.out_dir / "store"
        make(store)
        changed = changed_rows(store, ref_results / "faults" / "store")
        out["faults"] += 1
        before = snapshot(results)
        rc_check, err_check = cli("check", str(profile))
        wrote = snapshot(results) != before
        est, err_est = estimate(cfg, data)
        silent = est is not None and not same_estimates(est, ref_est)
        caught = rc_check == 2 and names in err_check and err_est is not None and names in err_est
        # the fix: repair (clears only the bad rows), then train (redoes them)
        rc_repair, err_repair = cli("repair", str(profile))
        rc_train, err_train = cli("train", str(profile))
        lost = differing_rows(store, ref)
        try:
            retrained = int((np.load(store / "seconds.npy") != ref["seconds"]).sum())
        except Exception:
            retrained = -1
        est_after, _ = estimate(cfg, data)
        out["detected"] += caught
        out["silent"] += silent
        out["check_wrote"] += wrote
        out["lost"] += len(lost)
        out["needless"] += max(0, retrained - len(changed)) if retrained >= 0 else len(ref["completed"])
        status = "caught" if caught else ("SILENT WRONG ESTIMATE" if silent else "missed")
        out["lines"].append(
            f"  {what:<42} {status:<22} check rc {rc_check}{' WROTE' if wrote else ''}; "
            f"repair rc {rc_repair}, train rc {rc_train}: {len(lost)} rows lost, {retrained} retrained "
            f"({len(changed)} changed)"
            + ("" if est_after is not None and same_estimates(est_after, ref_est) else ", estimates differ")
        )
        if not caught:
            out["lines"].append(f"      check said: {err_check.strip()[:200]!r}; stage 2 said: {str(err_est)[:200]!r}")
    return out


# ------------------------------------------------------------------------------------------------------------
def train_proc(profile: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "memlib", "train", *extra, str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def completed_rows(store: Path) -> int:
    try:
        return int(np.load(store / "completed.npy", mmap_mode="r").sum())
    except Exception:
        return 0


def kill_campaign(work: Path, ref: dict, kills: int, rng: random.Random) -> dict:
    """SIGKILL training (all its processes) at random moments, then resume; the store must equal the reference."""
    folder = work / "kills"
    profile = write_profile(folder, folder / "results", workers=2)
    store = folder / "results" / "faults" / "store"
    finished_seen = np.zeros(PROFILE["num_models"], dtype=bool)
    seconds_seen = np.zeros(PROFILE["num_models"], dtype=np.float32)
    retrained = 0
    for k in range(kills):
        proc = train_proc(profile)
        if k == 0:
            time.sleep(rng.uniform(0.1, 0.5))  # early: at start-up or during creation
        else:
            target = rng.randint(1, PROFILE["num_models"] - 8)
            deadline = time.time() + 60
            while completed_rows(store) < target and time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if (store / "seconds.npy").exists():
            now_done = np.load(store / "completed.npy")
            now_sec = np.load(store / "seconds.npy")
            retrained += int((finished_seen & (now_sec != seconds_seen)).sum())
            finished_seen, seconds_seen = now_done.copy(), now_sec.copy()
    proc = train_proc(profile)
    text = proc.communicate(timeout=300)[0].decode()
    lost = differing_rows(store, ref)
    if (store / "seconds.npy").exists():
        retrained += int((finished_seen & (np.load(store / "seconds.npy") != seconds_seen)).sum())
    return {"kills": kills, "rc": proc.returncode, "lost": len(lost), "retrained": retrained, "text": text}


def race_campaign(work: Path, ref: dict, trials: int) -> dict:
    """Three `train --rows` workers with overlapping ranges start together on a fresh store."""
    n = PROFILE["num_models"]
    ranges = [f"0:{n * 5 // 9}", f"{n // 3}:{n}", f"0:{n}"]
    out = {"trials": trials, "clean": 0, "lost": 0, "twice": 0, "lines": []}
    for t in range(trials):
        folder = work / f"race{t}"
        profile = write_profile(folder, folder / "results")
        procs = [train_proc(profile, f"--rows={r}") for r in ranges]
        texts = [p.communicate(timeout=300)[0].decode() for p in procs]
        rcs = [p.returncode for p in procs]
        lost = differing_rows(folder / "results" / "faults" / "store", ref)
        trained = []
        for text in texts:
            marker = [line for line in text.splitlines() if "trained here" in line]
            trained.append(int(marker[-1].split("(")[-1].split()[0]) if marker else None)
        twice = sum(trained) - n if None not in trained else None
        out["clean"] += rcs == [0, 0, 0] and not len(lost)
        out["lost"] += len(lost)
        out["twice"] = None if twice is None or out["twice"] is None else out["twice"] + twice
        out["lines"].append(f"  race {t}: exit codes {rcs}, rows lost {len(lost)}, trained per worker {trained}")
        for rc, text in zip(rcs, texts):
            if rc:
                out["lines"].append(f"      {text.strip().splitlines()[-1][:200]!r}")
    return out


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (tests/test_concurrency.py uses it too)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes()
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if tag.encode() in environ and state != "Z":
                found.append(int(proc.name))
    return found


def spawned_workers(pid: int) -> list[int]:
    """The pool workers `pid` has started: its children that multiprocessing spawned.

    Not any child: `memlib train` also has short-lived children while it starts (a probe under load saw one about
    2 s in, gone within the 10 ms poll), and waiting for "a child" once caught one of those, which had ended before
    the assertion looked again (CI, under load).
    """
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == pid and b"spawn_main" in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
    return out


def orphan_campaign(work: Path, delays: list[float]) -> dict:
    """Kill only the parent 0-1 s after it starts its workers; count the processes left after 10 s.

    A trial in which no worker was spawned before the kill (the parent ended, or took longer than the deadline)
    proves nothing about orphans: it is counted apart (`spawned`), and the campaign passes only if every trial
    spawned its workers."""
    profile = write_profile(work / "orphans", work / "orphans" / "results", workers=2, epochs=20)
    survivors = spawned = 0
    for delay in delays:
        tag = f"MEMLIB_FAULTS_{uuid.uuid4().hex}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "memlib", "train", str(profile)],
            env={**os.environ, tag: "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while not spawned_workers(proc.pid) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        spawned += bool(spawned_workers(proc.pid))
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.time() + 10
        while tagged_processes(tag) and time.time() < deadline:
            time.sleep(0.2)
        left = tagged_processes(tag)
        survivors += len(left)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return {"trials": len(delays), "spawned": spawned, "survivors": survivors}


# ------------------------------------------------------------------------------------------------------------
BAD_VALUES = [
    {"lr": float("nan")},
    {"lr": float("inf")},
    {"lr": 1.0e9},
    {"lr": -0.1},
    {"weight_decay": float("nan")},
    {"momentum": float("nan")},
    {"subset_ratio": float("nan")},
    {"label_smoothing": float("inf")},
    {"grad_clip": 0.0},
    {"grad_clip": float("nan")},
    {"grad_clip": "1.0x"},
    {"infl_threshold": float("nan")},
    {"utility_thresholds": [0.25, float("nan")]},
    {"show_examples": -3},
    {"show_examples": 0},
    {"seed": -1},
    {"num_models": 100_000_000},  # huge: with no size check, masks for 1e8 models fill the memory
    {"width": 100_000_000},
    {"width": 1_000_000},
    {"epochs": 0},
    {"batch_size": -1},
    {"workers": 0},
    {"group_size": 0},
    {"arch": "vit_tiny_patch16_224", "width": None},
    {"arch": "resnet9000"},
    {"dataset": "imagenet21k"},
    {"subset_ratio": 1.0},
    {"num_models": 8, "min_out": 4},
    {"optimizer": "lion"},
    {"epoch": 3},
    {"profile": ".."},
    {"profile": "a/b"},
    {"results_dir": "<file>"},
]
BAD_ROWS = ["abc", "1:2:3", "10:5", "5:5", "0:1000", "-1:3", ":"]


HUGE = ({"num_models": 100_000_000},)


def input_campaign(work: Path, ref_results: Path, unguarded: bool = False) -> dict:
    """Every bad value and --rows: exit code 2, a message (no traceback), nothing written (store or fresh dir)."""
    out = {"inputs": 0, "refused": 0, "lines": []}
    a_file = work / "a_file"
    a_file.write_text("not a folder")
    cases = [("train", values, None) for values in BAD_VALUES]
    cases += [("check", values, None) for values in ({"show_examples": 0}, {"lr": float("nan")}, {"seed": -1})]
    cases += [("train", {}, rows) for rows in BAD_ROWS]
    for i, (command, values, rows) in enumerate(cases):
        for fresh in (False, True):  # beside a finished store (which must stay untouched), and in a fresh folder
            folder = work / f"input{i}{'fresh' if fresh else ''}"
            results = folder / "results"
            if not fresh:
                shutil.copytree(ref_results, results)
            values = {k: (str(a_file) if v == "<file>" else v) for k, v in values.items()}
            profile = write_profile(folder, results, **values)
            before = snapshot(folder)
            args = [command] + ([f"--rows={rows}"] if rows is not None else []) + [str(profile)]
            what = f"{command} " + (f"--rows={rows}" if rows is not None else str(values))
            what += " (fresh results_dir)" if fresh else " (beside a finished store)"
            out["inputs"] += 1
            if unguarded and values in HUGE:
                out["lines"].append(f"  NOT RUN (--unguarded) {what}")
                continue
            rc, err = cli(*args)
            ok = rc == 2 and err.startswith("error: ") and "Traceback" not in err and snapshot(folder) == before
            ok &= a_file.read_text() == "not a folder"
            out["refused"] += ok
            if not ok:
                out["lines"].append(f"  NOT REFUSED {what}: rc {rc}, {err.strip()[-160:]!r}")
    return out


# ------------------------------------------------------------------------------------------------------------
def main_campaign(quick: bool = False, unguarded: bool = False) -> int:
    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="memlib-faults-"))
    started = time.time()
    try:
        ref_results = work / "reference" / "results"
        profile = write_profile(work / "reference", ref_results)
        cfg = memlib.load_profile(str(profile))
        data = memlib.load_dataset(cfg)
        with contextlib.redirect_stderr(io.StringIO()):
            memlib.train_subsets(cfg, data)
        ref = load(cfg.out_dir / "store")
        ref_est = memlib.estimate(cfg, memlib.open_subset_store(cfg, data, create=False), data)

        times = {"reference": time.time() - started}

        def timed(name, fn, *args, **kwargs):
            t0 = time.time()
            result = fn(*args, **kwargs)
            times[name] = time.time() - t0
            return result

        corrupt = timed("corruptions", corruption_campaign, work, ref_results, ref, ref_est, data)
        inputs = timed("inputs", input_campaign, work, ref_results, unguarded)
        kills = timed("kills", kill_campaign, work, ref, kills=1 if quick else 4, rng=rng)
        races = timed("races", race_campaign, work, ref, trials=1 if quick else 3)
        orphans = timed("orphans", orphan_campaign, work, delays=[0.5] if quick else [0.0, 0.3, 0.6, 0.9])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"fault campaign on memlib at {Path(memlib.__file__).parent} ({PROFILE['num_models']} models per store)")
    print(*corrupt["lines"], sep="\n")
    print(*races["lines"], sep="\n")
    print(*inputs["lines"], sep="\n")
    twice = "unknown" if races["twice"] is None else races["twice"]
    rows_lost = corrupt["lost"] + kills["lost"] + races["lost"]
    summary = {
        "corruptions detected, rows named": f"{corrupt['detected']} / {corrupt['faults']}",
        "silent wrong estimates": corrupt["silent"],
        "check wrote to a store": corrupt["check_wrote"],
        "rows lost": rows_lost,
        "finished rows retrained needlessly": corrupt["needless"] + kills["retrained"],
        "kills survived": f"{kills['kills']} / {kills['kills']}" if kills["rc"] == 0 and not kills["lost"] else "no",
        "concurrent starts clean": f"{races['clean']} / {races['trials']}",
        "rows trained twice in races": twice,
        "orphaned workers": f"{orphans['survivors']} (parent killed {orphans['trials']} times, "
        f"{orphans['spawned']} after its workers started)",
        "bad inputs refused, exit 2, nothing written": f"{inputs['refused']} / {inputs['inputs']}",
    }
    print("summary:")
    for k, v in summary.items():
        print(f"  {k:<44} {v}")
    print(
        f"  {'seconds':<44} {time.time() - started:.0f} (" + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + ")"
    )
    good = (
        corrupt["detected"] == corrupt["faults"]
        and corrupt["silent"] == 0
        and corrupt["check_wrote"] == 0
        and rows_lost == 0
        and summary["finished rows retrained needlessly"] == 0
        and kills["rc"] == 0
        and races["clean"] == races["trials"]
        and twice == 0
        and orphans["survivors"] == 0
        and orphans["spawned"] == orphans["trials"]  # a trial with no worker to orphan proves nothing
        and inputs["refused"] == inputs["inputs"]
    )
    print("ALL GOOD" if good else "FAULTS FOUND")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main_campaign(quick="--quick" in sys.argv, unguarded="--unguarded" in sys.argv))
