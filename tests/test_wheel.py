"""A wheel built from the checkout, installed into a fresh environment outside it, imports every module and runs
`python -m memlib check digits` (fault: a package list that misses a subpackage, or profiles left out)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "memlib").rglob("*.py")
    if "__pycache__" not in p.parts
)


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_a_wheel_built_from_the_checkout_runs_outside_it(tmp_path):
    # Built from a copy of the checkout, so that the build leaves nothing in it (build/, *.egg-info).
    source = tmp_path / "source"
    top = {".git", ".venv", "results", "data", "build"}  # the checkout's own, not memlib/data

    def skip(folder: str, names: list[str]) -> set[str]:
        here = top if Path(folder) == ROOT else set()
        return {n for n in names if n in here or n == "__pycache__" or n.endswith((".egg-info", "_cache"))}

    shutil.copytree(ROOT, source, symlinks=True, ignore=skip)
    res = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, ".", cwd=source
    )
    assert res.returncode == 0, res.stdout + res.stderr
    [wheel] = tmp_path.glob("memlib-*.whl")

    # A fresh environment whose only memlib is the wheel's; torch and the rest come from this environment's
    # site-packages as a plain path (its .pth files, such as an editable memlib's finder, are not run there).
    venv = tmp_path / "venv"
    res = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    python = venv / "bin" / "python"
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).stdout.strip()
    )
    (site / "outer.pth").write_text(sysconfig.get_path("purelib") + "\n")
    res = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel, cwd=tmp_path)
    if res.returncode != 0 and "no such option: --python" in res.stderr:  # pip before 22.3: install by the target
        res = run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr

    work = tmp_path / "elsewhere"  # not the checkout, not above it: nothing here to find configs/ in
    work.mkdir()
    code = f"import importlib, memlib; [importlib.import_module(m) for m in {MODULES!r}]; print(memlib.__file__)"
    res = run(python, "-c", code, cwd=work)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).is_relative_to(site), f"memlib was imported from {res.stdout}, not the wheel"
    res = run(python, "-m", "memlib", "check", "digits", cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "digits" in res.stdout and not (work / "results").exists(), "check writes nothing"
