"""Bad input gets a clear error before any training starts, and nothing under results/ is overwritten."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from conftest import snapshot

import memlib
import memlib.data.dataset
from memlib.__main__ import main
from memlib.config import Config, ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A finished smoke run (stage 1), trained once for this module."""
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path_factory.mktemp("trained") / "results"))
    memlib.train_subsets(cfg, digits)
    return cfg


@pytest.fixture
def finished(tmp_path, trained):
    """A results dir with a finished smoke run in it (a copy), to show that a bad config leaves it alone."""
    shutil.copytree(trained.results_dir, tmp_path / "results")
    return trained.replace(results_dir=str(tmp_path / "results"))


def run_cli(tmp_path, capsys, changes: dict, command: str = "train") -> str:
    values = {**yaml.safe_load(open("configs/smoke.yaml")), "results_dir": str(tmp_path / "results"), **changes}
    path = tmp_path / "smoke.yaml"  # the file name is the profile name
    path.write_text(yaml.safe_dump(values))
    capsys.readouterr()  # drop what set-up printed
    assert main([command, str(path)]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epoch": 3}, "unknown key 'epoch' (did you mean 'epochs'?)"),
        ({"subset_ratio": 1.0}, "subset_ratio must lie strictly between 0 and 1"),
        ({"subset_ratio": 0.0}, "subset_ratio must lie strictly between 0 and 1"),
        ({"subset_ratio": -0.5}, "subset_ratio must lie strictly between 0 and 1"),
        ({"num_models": 5, "min_out": 4}, "Raise num_models"),
        ({"num_models": 40, "min_out": 10}, "training examples are left out of fewer than min_out=10 models"),
        ({"arch": "resnet9000"}, "unknown architecture 'resnet9000'"),
        ({"dataset": "imagenet21k"}, "unknown dataset 'imagenet21k'"),
        ({"infl_threshold": 1.5}, "infl_threshold must lie in (0, 1]"),
        ({"mem_threshold": 0.0}, "mem_threshold must lie in (0, 1]"),
        ({"utility_thresholds": [0.25, 2.0]}, "utility_thresholds must each lie in (0, 1]"),
        ({"utility_thresholds": []}, "utility_thresholds must list at least one"),
        ({"num_models": "many"}, "num_models must be of type int"),
        ({"optimizer": "lion"}, "optimizer must be one of sgd, adam"),
        ({"epochs": 4}, "epochs: 3 -> 4"),
        ({"profile": "other"}, "it must match the file name"),
        ({"lr": float("nan")}, "lr must be a finite number, got nan"),
        ({"lr": float("inf")}, "lr must be a finite number, got inf"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        ({"utility_thresholds": [0.25, float("nan")]}, "utility_thresholds must be a finite number"),
        ({"lr": 1.0e9}, "lr must lie in (0, 10]"),
        ({"show_examples": -3}, "show_examples must be at least 1"),
        ({"show_examples": 0}, "show_examples must be at least 1"),
        ({"show_examples": 5000}, "show_examples must be at most 256"),
        ({"seed": -1}, "seed must be a whole number in [0, 2**63)"),
        ({"num_models": 100_000_000}, "num_models must be at most 1,000,000"),
        ({"width": 100_000_000}, "width must be at most 1,048,576"),
        ({"width": 1_000_000}, "parameters; 8 models at once (group_size x workers) need at least"),
        (
            {"arch": "vit_tiny_patch16_224", "width": None},
            "arch 'vit_tiny_patch16_224' does not accept 1x8x8 images of digits",
        ),
    ],
)
def test_bad_config_fails_before_training_and_writes_nothing(tmp_path, capsys, finished, changes, message):
    results = tmp_path / "results"
    before = snapshot(results)
    err = run_cli(tmp_path, capsys, changes)
    assert message in err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    assert snapshot(results) == before


@pytest.mark.parametrize("rows", ["abc", "1:2:3", "10:5", "5:5", "0:41", "-1:3", ":", "3"])
def test_bad_rows_are_refused_before_work(tmp_path, capsys, finished, rows):
    before = snapshot(tmp_path / "results")
    path = tmp_path / "smoke.yaml"
    path.write_text(
        yaml.safe_dump({**yaml.safe_load(open("configs/smoke.yaml")), "results_dir": str(tmp_path / "results")})
    )
    capsys.readouterr()
    assert main(["train", f"--rows={rows}", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rows") and "START" in err and "Traceback" not in err
    assert snapshot(tmp_path / "results") == before


def test_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    path = tmp_path / "smoke.yaml"
    smoke = open("configs/smoke.yaml").read().replace("num_models: 40\n", "")  # a key given twice is refused
    path.write_text(smoke + "lr: 1e-3\nweight_decay: 5e-4\nnum_models: 4e1\n")
    cfg = memlib.load_profile(str(path))
    assert (cfg.lr, cfg.weight_decay, cfg.num_models) == (0.001, 0.0005, 40)


@pytest.mark.parametrize("name", ["...yaml", "a.b.yaml"])
def test_profile_file_name_must_be_plain(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_text(open("configs/smoke.yaml").read().replace("profile: smoke", ""))
    assert main(["check", str(path)]) == 2
    assert "must be plain" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["..", ".", "a/b", "a.b", ""])
def test_profile_key_must_be_plain(profile):
    with pytest.raises(ConfigError, match="profile must be a plain name"):
        Config().replace(profile=profile)


def test_masks_that_cannot_fit_are_refused_before_they_are_built(tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.setattr(memlib.data.dataset, "available_memory", lambda: 2**30)
    start = time.perf_counter()
    err = run_cli(tmp_path, capsys, {"num_models": 1_000_000}, command="check")
    assert "masks of num_models=1,000,000 runs x 1,297 training examples need about 2.4 GiB" in err
    assert "1.0 GiB is free" in err
    assert time.perf_counter() - start < 20  # building them would take minutes


def test_results_dir_that_is_a_file_is_refused_by_check(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = run_cli(tmp_path, capsys, {"results_dir": str(tmp_path / "afile")}, command="check")
    assert "is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "x"


def test_results_dir_without_permission_is_refused_by_check(tmp_path, capsys, monkeypatch):
    import os

    (tmp_path / "locked").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("locked") else real(p, mode))
    err = run_cli(tmp_path, capsys, {"results_dir": str(tmp_path / "locked" / "r")}, command="check")
    assert "no permission" in err
    assert list((tmp_path / "locked").iterdir()) == []


def test_bad_config_writes_nothing_into_a_fresh_results_dir(tmp_path, capsys):
    err = run_cli(tmp_path, capsys, {"subset_ratio": 1.5})
    assert "subset_ratio" in err
    assert not (tmp_path / "results").exists()


def test_unknown_profile_lists_the_known_ones(capsys):
    assert main(["check", "no-such-profile"]) == 2
    err = capsys.readouterr().err
    assert "no profile 'no-such-profile'" in err and "digits" in err and "smoke" in err


def test_every_shipped_profile_is_valid():
    from pathlib import Path

    for path in sorted(Path("configs").glob("*.yaml")):
        cfg = memlib.load_profile(path.stem)
        assert cfg.profile == path.stem


def test_defaults_are_the_digits_profile():
    # (with_recorded_epochs: what `epochs: auto` chose for digits, where a run of it has chosen)
    assert memlib.load_profile("digits") == memlib.config.with_recorded_epochs(Config())
    defaults = Config().to_dict()
    same = [k for k, v in yaml.safe_load(open("configs/digits.yaml")).items() if k != "profile" and v == defaults[k]]
    assert same == [], "digits.yaml holds only what differs from memlib.Config's defaults (so far, nothing)"


def test_params_file_is_laid_over_the_profile(tmp_path):
    params = tmp_path / "parameters.yaml"
    params.write_text("epochs: 7\nlr: 1e-2\n")
    cfg = memlib.load_profile("smoke", params)
    assert cfg == memlib.load_profile("smoke").replace(epochs=7, lr=0.01)
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(memlib.load_profile("smoke-noisy").to_dict()))
    assert memlib.load_profile("smoke-noisy", full) == memlib.load_profile("smoke-noisy")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert memlib.load_profile("smoke", tmp_path / "empty.yaml") == memlib.load_profile("smoke")


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_size: 0\n", "batch_size must be at least 1"),
        ("epoch: 3\n", "unknown key 'epoch' (did you mean 'epochs'?) in {path}"),
        ("profile: digits\n", "{path} says profile: 'digits'; it is given for profile 'smoke'"),
        ("- 3\n", "{path} must be a mapping of parameter names to values"),
        ("3: x\n", "{path}: key 3 is not a name"),
    ],
)
def test_a_bad_params_file_is_refused_with_its_name(tmp_path, text, message):
    params = tmp_path / "parameters.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError) as raised:
        memlib.load_profile("smoke", str(params))
    assert message.format(path=params) in str(raised.value)


def test_check_writes_nothing_to_a_store_cut_short(finished, digits):
    """numpy's r+ memmap would extend a cut file with zeros; check opens read-only and names the cut rows."""
    import os

    store = finished.out_dir / "store"
    os.truncate(store / "train_correct.npy", 30_000)
    before = snapshot(finished.out_dir)
    with pytest.raises(memlib.StoreError, match=r"train_correct.npy is 30000 bytes.*rows 23-39 are cut off"):
        memlib.check(finished, digits)
    assert snapshot(finished.out_dir) == before


def test_check_reports_what_it_found(smoke):
    info = memlib.check(smoke)
    assert info["train examples"] == 1297
    assert info["models"] == smoke.num_models
    assert not smoke.out_dir.exists()  # check writes nothing
    assert np.isfinite(info["parameters"])


def test_check_refuses_a_gpu_where_there_is_none(smoke, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="sees no GPU"):
        memlib.check(smoke.replace(device="cuda"))
    assert memlib.check(smoke.replace(device="auto"))["models"] == smoke.num_models
    assert not smoke.out_dir.exists()
