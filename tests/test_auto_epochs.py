"""`epochs: auto`: the fewest candidate epochs at which a pilot group fits, chosen once and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

import memlib
from memlib.config import EPOCHS_RECORD, Config, ConfigError
from memlib.stages import train as stage1
from memlib.train import engine
from memlib.train.engine import Outcome


class FitsFrom:
    """A learner whose models fit every example they train on from `needed` epochs on, and none before."""

    built: list[int] = []

    def __init__(self, cfg, data, record_signals=True, needed=40):
        self.cfg, self.data, self.needed = cfg, data, needed
        FitsFrom.built.append(cfg.epochs)

    def fit_eval_group(self, runs):
        outs = []
        for idx, _ in runs:
            train = np.zeros(self.data.n_train, dtype=bool)
            train[idx] = self.cfg.epochs >= self.needed
            test = np.ones(self.data.n_test, dtype=bool)
            outs.append(Outcome(train, train.astype(np.float32), test, test.astype(np.float32)))
        return outs


def test_the_candidates_double_up_to_the_cap():
    assert stage1.auto_candidates(160) == [20, 30, 40, 60, 80, 120, 160]
    assert stage1.auto_candidates(100) == [20, 30, 40, 60, 80, 100]
    assert stage1.auto_candidates(10) == [10]


@pytest.mark.parametrize("value", ["fast", 0, -3, 1.5, True])
def test_epochs_is_auto_or_a_whole_number(value):
    with pytest.raises(ConfigError, match="epochs"):
        Config(epochs=value).validate()
    assert Config().epochs == "auto" and Config(epochs=7).epochs == 7


def test_auto_chooses_the_fewest_epochs_that_fit_and_every_stage_reads_the_choice(smoke, digits, monkeypatch):
    FitsFrom.built = []
    monkeypatch.setattr(engine, "NeuralLearner", FitsFrom)
    cfg = smoke.replace(epochs="auto")
    chosen = stage1.resolve_epochs(cfg, digits)
    assert chosen.epochs == 40 and FitsFrom.built == [20, 30, 40], "20 and 30 did not fit, 40 did: no need for 60"
    record = json.loads((cfg.out_dir / EPOCHS_RECORD).read_text())
    assert record["epochs"] == 40 and [p["in_regime"] for p in record["pilots"]] == [False, False, True]
    # once chosen, a profile loaded for the same settings has the number: stage 3 and 5 train and read with it
    assert memlib.config.with_recorded_epochs(cfg).epochs == 40
    assert stage1.resolve_epochs(cfg, digits).epochs == 40 and FitsFrom.built == [20, 30, 40], "chosen once"
    # other training settings (or another cap) choose again: the record is for the settings it was made with
    assert memlib.config.with_recorded_epochs(cfg.replace(lr=0.05)).epochs == "auto"
    assert memlib.config.with_recorded_epochs(cfg.replace(max_epochs=80)).epochs == "auto"


def test_a_learner_refuses_unresolved_epochs(smoke, digits):
    with pytest.raises(ConfigError, match="chosen by stage 1"):
        engine.NeuralLearner(smoke.replace(epochs="auto"), digits)


def test_an_unreadable_record_says_what_to_do(smoke):
    cfg = smoke.replace(epochs="auto")
    cfg.out_dir.mkdir(parents=True)
    (cfg.out_dir / EPOCHS_RECORD).write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        memlib.config.with_recorded_epochs(cfg)


def test_the_report_says_what_auto_chose(smoke, digits, monkeypatch):
    from memlib.report.prose import headline
    from memlib.report.summary import _auto_epochs

    monkeypatch.setattr(engine, "NeuralLearner", FitsFrom)
    cfg = stage1.resolve_epochs(smoke.replace(epochs="auto"), digits)
    summary = {"epochs": cfg.epochs, **_auto_epochs(cfg), "num_models": 40, "arch": "mem_mlp", "subset_ratio": 0.7}
    models = dict(headline({**_HEADLINE, **summary}))["models"]
    assert "40 epochs (epochs: auto; pilot groups of 20 (does not fit), 30 (does not fit), 40 (fits))" in models
    assert _auto_epochs(smoke.replace(epochs=40, profile="other")) == {}, "no record: nothing to say"


_HEADLINE = {
    "dataset": "digits",
    "n_train": 10,
    "n_test": 5,
    "test_acc_full_data": 0.9,
    "test_acc_subset_models": 0.9,
    "min_models_out": 30,
    "mean_mem_se": 0.1,
    "frac_mem_ge_0.25": 0.1,
    "thresholds": {"infl": 0.15, "mem": 0.25},
    "high_influence_pairs": 0,
}
