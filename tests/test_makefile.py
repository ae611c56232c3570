"""The Makefile's cases: PROFILE as a name or a YAML path, a clean-results that cannot remove anything else,
`make lab` prepared with a profile's parameters, and Ctrl-C that says how to resume.

make runs with the venv that runs these tests (VENV=sys.prefix, its stamp marked old so nothing is reinstalled).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from conftest import ROOT

import memlib
from memlib.__main__ import main
from memlib.report.artifacts import STAGES, write_json

VENV = Path(sys.prefix)


def make(*args: str, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = ["make", "--no-print-directory", "-o", str(VENV / ".installed"), f"VENV={VENV}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def toy_profile(tmp_path: Path, name: str = "toy", **extra) -> Path:
    """A YAML profile outside configs/: the digits data, a few models, results under tmp_path."""
    values = {"results_dir": str(tmp_path / "results"), "num_models": 24, "mask_design": "balanced", "min_out": 2}
    values.update(epochs=2, workers=1)
    values.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    return path


def test_clean_results_refuses_an_empty_or_unknown_profile():
    cases = (("", "PROFILE is empty"), ("smoke ../configs", "not a .yaml file"), ("nonexistent", "no profile"))
    for profile, says in cases:
        res = make("clean-results", f"PROFILE={profile}")
        assert res.returncode != 0 and says in res.stdout + res.stderr, profile
    assert (ROOT / "results" / "README.md").exists() and (ROOT / "configs" / "smoke.yaml").exists()


def test_clean_results_removes_exactly_the_profiles_folder(tmp_path):
    profile = toy_profile(tmp_path)
    out, other = tmp_path / "results" / "toy", tmp_path / "results" / "other"
    (out / "store").mkdir(parents=True)
    other.mkdir()
    write_json({}, out / "summary.json")  # written by memlib, so recorded as its own
    (other / "keep.txt").write_text("another profile's")
    res = make("clean-results", f"PROFILE={profile}")
    assert res.returncode == 0, res.stderr
    assert not out.exists() and (other / "keep.txt").exists()
    assert "nothing to remove" in make("clean-results", f"PROFILE={profile}").stdout


def test_clean_removes_only_what_memlib_wrote_by_its_own_record(tmp_path, capsys):
    """Catches a clean that matches file names (it deleted a user's own train.npz and labels.json, which look like
    outputs): only files the folder's manifest records, the files a store's spec names, and executed notebooks
    go; the user's files, in the folder, in figures/ and in a store, stay."""
    from memlib.stages.train import training_overview

    profile = toy_profile(tmp_path, name="precious", results_dir=str(tmp_path))
    cfg = memlib.load_profile(str(profile))
    out = tmp_path / "precious"
    store = memlib.open_subset_store(cfg, memlib.load_dataset(cfg))
    training_overview(cfg, store)  # figures/training_overview.png, recorded
    del store
    write_json({"a": 1}, out / "summary.json")
    mine = {
        "thesis.tex": "years of work",
        "train.npz": "my data",
        "labels.json": "{}",
        "figures/my_plot.png": "mine",
        "store/notes.txt": "my notes on this store",
    }
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(["clean", str(profile)]) == 0
    said = capsys.readouterr().out
    assert "kept " in said and "labels.json" in said and "which memlib did not write" in said
    for name, text in mine.items():
        assert (out / name).read_text() == text, name
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == sorted(mine), "everything memlib wrote is gone: the store's arrays, the figure, summary.json"
    for name in mine:
        (out / name).unlink()
    write_json({"a": 1}, out / "summary.json")
    assert main(["clean", str(profile)]) == 0 and not out.exists(), "with nothing of the user's, the folder goes"


def test_check_and_report_take_a_yaml_path(tmp_path):
    profile = toy_profile(tmp_path)
    res = make("check", f"PROFILE={profile}")
    assert res.returncode == 0 and "profile 'toy' is ready" in res.stdout, res.stderr
    res = make("report", f"PROFILE={profile}")
    assert res.returncode != 0 and "no executed notebooks" in res.stderr
    assert not (tmp_path / "results").exists(), "check and a refused report write nothing"


def test_lab_prepares_the_profiles_notebooks_and_runs_as_root(tmp_path):
    profile = toy_profile(tmp_path, lr="1e-2")
    res = make("lab", f"PROFILE={profile}", "JUPYTER=echo jupyter")
    assert res.returncode == 0, res.stderr
    lab = tmp_path / "results" / "toy" / "lab"
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("jupyter lab") and f"--notebook-dir={lab}" in last
    assert ("--allow-root" in last) == (os.geteuid() == 0)
    values = yaml.safe_load((lab / "parameters.yaml").read_text())  # every value the notebooks run with
    assert values == memlib.load_profile(str(profile)).to_dict()
    assert values["lr"] == 0.01 and values["results_dir"] == str(tmp_path / "results")
    for stage in STAGES:
        nb = nbformat.read(lab / f"{stage}.ipynb", as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1, stage
        assert f'profile = "{profile}"' in injected[0].source
        assert f'params = "{lab / "parameters.yaml"}"' in injected[0].source
    (lab / "parameters.yaml").write_text("epochs: 5\n")  # the user's edit
    again = make("lab", f"PROFILE={profile}", "JUPYTER=true")
    assert again.stdout.count("kept ") == len(STAGES) + 1, "a second `make lab` keeps the notebooks you edited"
    assert (lab / "parameters.yaml").read_text() == "epochs: 5\n", "and the values you edited"


def test_lab_names_a_relative_profile_path_so_that_the_notebooks_find_it(tmp_path):
    profile = toy_profile(tmp_path)
    relative = os.path.relpath(profile, ROOT)
    res = make("lab", f"PROFILE={relative}", "JUPYTER=true")
    assert res.returncode == 0, res.stderr
    nb = nbformat.read(tmp_path / "results" / "toy" / "lab" / f"{STAGES[0]}.ipynb", as_version=4)
    [injected] = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert f'profile = "{profile}"' in injected.source


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_how_many_models_are_kept(tmp_path):
    profile = toy_profile(tmp_path, num_models=400, epochs=20, group_size=4)
    store = tmp_path / "results" / "toy" / "store" / "completed.npy"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = ["make", "--no-print-directory", "-o", str(VENV / ".installed"), f"VENV={VENV}", "reproduce"]
    proc = subprocess.Popen(
        [*cmd, f"PROFILE={profile}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
        # a terminal's Ctrl-C reaches processes whose SIGINT is not ignored; a test run started in the background
        # (`cmd &` in a script) inherits SIGINT ignored, so restore it as a terminal would have it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (store.exists() and np.load(store).sum() >= 4):
        time.sleep(1)
    assert store.exists(), "training started"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
    out, _ = proc.communicate(timeout=600)  # a hang guard, not a timing: the kernel and workers take time to stop
    assert proc.returncode != 0
    found = re.search(r"interrupted: rerun to resume \((\d+) models kept\)", out)
    assert found, out[-2000:]
    assert int(found.group(1)) == int(np.load(store).sum()) >= 4
    assert "!! " not in out and "failed" not in out, "an interruption is not reported as a failure"


def test_every_target_imports_memlib_from_this_checkout_whichever_venv_runs_it():
    # A VENV made in another checkout has that checkout's memlib installed; the notebooks' kernels inherit
    # make's environment, so make puts this checkout first on their path (and keeps what the caller had after it).
    show = "show-path:\n\t@echo $$PYTHONPATH"
    for before, after in ((None, str(ROOT)), ("/elsewhere", f"{ROOT}:/elsewhere")):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | ({"PYTHONPATH": before} if before else {})
        res = subprocess.run(
            ["make", "--no-print-directory", "--eval", show, "show-path"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0 and res.stdout.strip() == after, res.stdout + res.stderr


INJECTIONS = ('x";touch {mark};"', "`touch {mark}`", "$$(touch {mark})", "$(touch {mark})", "$(shell touch {mark})")


@pytest.mark.parametrize("target", ["check", "reproduce", "report", "lab", "clean-results"])
def test_no_profile_reaches_a_shell_as_code(tmp_path, target):
    """Catches PROFILE pasted into a recipe's shell string (`"$(PROFILE)"`: `x";touch pwned;"` ran the command) or
    expanded by make (`$(shell ...)`): memlib, papermill and jupyter are replaced by `echo`, so the recipe runs in a
    second and each command shows the profile exactly as given, as one argument."""
    stand_ins = ("MEMLIB=echo memlib", "PAPERMILL=echo papermill", "JUPYTER=echo jupyter")
    for i, injection in enumerate(INJECTIONS):
        mark = tmp_path / f"pwned{i}"
        profile = injection.format(mark=mark)
        res = make(target, f"PROFILE={profile}", *stand_ins, timeout=60)
        assert not mark.exists(), f"make {target} PROFILE={profile} ran a command: {res.stdout}{res.stderr}"
        command = {"reproduce": "check", "clean-results": "clean"}.get(target, target)
        shown = f"-r profile {profile} -r params" if target == "lab" else f"memlib {command} {profile}\n"
        assert shown in res.stdout, f"memlib got it intact: {res.stdout}{res.stderr}"


def test_no_executor_or_device_reaches_a_shell_as_code(tmp_path):
    """Catches EXECUTOR or DEVICE expanded by make or pasted into a recipe (`--device $(DEVICE)` was unquoted)."""
    for i, injection in enumerate(INJECTIONS):
        mark = tmp_path / f"pwned{i}"
        value = injection.format(mark=mark)
        res = make("gpu-check", f"DEVICE={value}", "GPU_PY=echo gpu", timeout=60)
        assert not mark.exists() and f"--device {value}" in res.stdout, res.stdout + res.stderr
        res = make("check", f"EXECUTOR={value}", "MEMLIB=printenv MEMLIB_EXECUTOR", timeout=60)
        assert not mark.exists() and f"\n{value}\n" in res.stdout, res.stdout + res.stderr
