"""Bad input gets a clear error before any training starts, and nothing under results/ is overwritten."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import snapshot

import memlib
from memlib.__main__ import main
from memlib.config import Config, ConfigError


@pytest.fixture
def finished(tmp_path, digits):
    """A results dir with a finished smoke run in it (stage 1), to show that a bad config leaves it alone."""
    cfg = memlib.load_profile("smoke").replace(results_dir=str(tmp_path / "results"))
    memlib.train_subsets(cfg, digits)
    return cfg


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
        ({"epochs": 4}, "was made with a different config (epochs: 3 -> 4)"),
        ({"profile": "other"}, "it must match the file name"),
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
    assert memlib.load_profile("digits") == Config()
    assert set(yaml.safe_load(open("configs/digits.yaml"))) == set(Config.keys())


def test_notebook_namespace_builds_the_config():
    ns = {**Config().to_dict(), "epochs": 7, "unrelated": object()}
    assert Config.from_namespace(ns).epochs == 7
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        Config.from_namespace({**ns, "batch_size": 0})


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
