"""Each way of bringing your own data (and model) runs `make reproduce` end to end on files this test writes,
from a YAML profile outside configs/; and swapping the data under the finished store is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_loaders import make_idx_dir
from test_makefile import make
from test_own_data import USER_DATA, USER_MODEL, write_imagefolder, write_npz

TINY = {
    "num_models": 12,
    "mask_design": "balanced",
    "min_out": 2,
    "epochs": 2,
    "batch_size": 16,
    "width": 16,
    "workers": 1,
    "group_size": 4,
    "retrain_models": 2,
    "utility_thresholds": "[0.3]",
    "show_examples": 4,
    "lr": "5e-2",
}


def own_data(kind: str, d: Path) -> tuple[dict, int]:
    """Files for one way of bringing data, and the profile keys that point at them; returns (keys, n_train)."""
    if kind == "npz":
        write_npz(d / "toy.npz", n_train=60, n_test=30)
        return {"dataset": "npz", "data_path": str(d / "toy.npz")}, 60
    if kind == "imagefolder":
        write_imagefolder(d / "bugs", per_class=(20, 8), sizes=(9, 11))
        return {"dataset": "imagefolder", "data_path": str(d / "bugs"), "image_size": 8}, 40
    if kind == "torchvision":
        make_idx_dir(d / "KMNIST" / "raw", n_train=40, n_test=20, gz=False)
        return {"dataset": "torchvision:KMNIST", "data_dir": str(d)}, 40
    (d / "mydata.py").write_text(USER_DATA)
    (d / "mymodels.py").write_text(USER_MODEL)
    keys = {"dataset": f"{d / 'mydata.py'}:blobs", "arch": "my_tiny_net", "model_module": str(d / "mymodels.py")}
    return keys, 30


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "imagefolder", "torchvision", "function"])
def test_make_reproduce_runs_on_your_own_data(tmp_path, kind):
    keys, n_train = own_data(kind, tmp_path)
    profile = tmp_path / f"own-{kind}.yaml"
    values = {**TINY, **keys, "results_dir": str(tmp_path / "results")}
    profile.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    res = make("reproduce", f"PROFILE={profile}", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "results" / f"own-{kind}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == n_train and summary["num_models"] == 12
    assert summary["dataset"] == keys["dataset"]
    html = (out / "report.html").read_text()
    assert "These numbers mean nothing" in html and "This report does not show one consistent run" not in html
    if kind == "npz":  # the same path, other labels: refused before anything runs
        with np.load(tmp_path / "toy.npz") as f:
            arrays = dict(f)
        arrays["y_train"] = np.roll(arrays["y_train"], 1)
        np.savez(tmp_path / "toy.npz", **arrays)
        res = make("check", f"PROFILE={profile}")
        assert res.returncode != 0
        assert "trained on other data: train labels changed" in res.stderr
