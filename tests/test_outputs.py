"""Every output is written atomically and recorded: a full disk or a kill mid-write leaves the previous complete
file and no temporary one; each name written is one of memlib.report.artifacts.OUTPUTS, which results/README.md
shows."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

import memlib.files
from memlib.analysis.estimation import Estimates, estimate_from_arrays
from memlib.report import artifacts


class _Full(io.BufferedWriter):
    """A file that takes `room` bytes, then fails as a full disk does."""

    room = 100

    def write(self, b) -> int:
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def _estimates(seed: int) -> Estimates:
    rng = np.random.default_rng(seed)
    masks = rng.random((40, 30)) < 0.7
    labels = type("L", (), {"y_train": np.arange(30) % 3, "y_test": np.arange(12) % 3,
                            "train_index": np.arange(30), "test_index": np.arange(12)})  # fmt: skip
    return estimate_from_arrays(masks, masks.copy(), rng.random((40, 12)) < 0.5, labels, 0.15, 0.25)


def _writes(out: Path) -> dict:
    """One writer per kind of output, each writing a version `v` of its file."""
    return {
        "estimates.npz": lambda v: artifacts.write_output(out / "estimates.npz", _estimates(v).write),
        "summary.json": lambda v: artifacts.write_json({"version": v, "pad": "x" * 500}, out / "summary.json"),
        "utility.csv": lambda v: artifacts.write_csv(pd.DataFrame({"v": [v] * 200}), out / "utility.csv"),
        "figures/mem_hist.png": lambda v: artifacts.save_figure(plt.figure(), out / "figures/mem_hist.png"),
    }


def test_a_full_disk_mid_write_leaves_the_previous_complete_file(tmp_path, monkeypatch):
    """Catches an output written straight to its final path (a full disk left a truncated estimates.npz)."""
    before = {}
    for name, write in _writes(tmp_path).items():
        write(1)
        before[name] = (tmp_path / name).read_bytes()
    monkeypatch.setattr(memlib.files.os, "fdopen", lambda fd, mode: _Full(io.FileIO(fd, "wb")))  # the disk fills
    for name, write in _writes(tmp_path).items():
        with pytest.raises(OSError, match="No space left"):
            write(2)
        assert (tmp_path / name).read_bytes() == before[name], f"{name} is still the complete first version"
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert Estimates.load(tmp_path / "estimates.npz").num_models == 40


def test_estimates_save_is_atomic_too(tmp_path, monkeypatch):
    """Catches Estimates.save writing in place: an exception inside numpy's write leaves the previous file."""
    path = _estimates(1).save(tmp_path / "estimates.npz")
    first = path.read_bytes()

    def fails(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(np, "savez_compressed", fails)
    with pytest.raises(OSError):
        _estimates(2).save(path)
    assert path.read_bytes() == first and not list(tmp_path.glob(".*.tmp"))


def test_an_output_keeps_the_permissions_of_a_new_file(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        artifacts.write_json({}, tmp_path / "summary.json")
    finally:
        os.umask(mask)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644, "readable by others, as open() makes it"


def test_only_outputs_of_the_table_are_written_and_each_is_recorded(tmp_path):
    """Catches a file written outside the table (its name then has no home: not in results/README.md, not
    removable by clean) and a write that clean would not know of."""
    with pytest.raises(ValueError, match="not a file of memlib.report.artifacts.OUTPUTS"):
        artifacts.write_json({}, tmp_path / "extra.json")
    artifacts.write_json({}, tmp_path / "summary.json")
    artifacts.write_json({}, tmp_path / "summary.json")
    artifacts.save_figure(plt.figure(), tmp_path / "figures" / "fit.png")
    assert artifacts.written(tmp_path) == {"summary.json", "figures/fit.png"}
    assert (tmp_path / artifacts.MANIFEST).read_text().count("summary.json") == 1


def test_results_readme_shows_the_outputs_table():
    """Catches a file added to OUTPUTS (or the README edited) without the other: the README's table is the table."""
    readme = (ROOT / "results" / "README.md").read_text()
    assert artifacts.outputs_table() in readme, "paste artifacts.outputs_table() into results/README.md"
