"""The paper's regime: in-sample accuracy read off a store, the caveat it puts first, and the proxies beside mem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report import write_run

import memlib
from memlib.analysis import regime, validation
from memlib.report.artifacts import write_json
from memlib.report.html import render_report
from memlib.report.prose import proxy_row
from memlib.train.engine import NearestNeighbourLearner


def test_fit_report_on_a_case_counted_by_hand():
    # 4 models x 6 examples; example 5 is flipped. In-mask pairs: model 0 {0,1,2}, 1 {1,3,5}, 2 {0,4,5}, 3 {2,3,4}
    masks = np.array(
        [[1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0]],
        dtype=bool,
    )
    correct = np.array(
        [[1, 1, 0, 1, 1, 1], [0, 1, 0, 1, 0, 0], [1, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 0]],
        dtype=bool,
    )
    labels = np.array([0, 0, 1, 1, 1, 0])
    flipped = np.array([0, 0, 0, 0, 0, 1], dtype=bool)
    test = np.array([[1, 0], [1, 1], [0, 0], [1, 1]], dtype=bool)
    fit = regime.fit_report(masks, correct, test, labels, ["a", "b"], 0.99, flipped)
    # per model: 2/3, 2/3, 3/3, 3/3
    assert fit["in_sample_acc"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert fit["in_sample_acc_min_model"] == pytest.approx(2 / 3)
    # clean (model, example) pairs in the masks: 10; wrong ones: (0, 2) only -> 9 / 10
    assert fit["in_sample_acc_clean"] == pytest.approx(9 / 10)
    # the flipped example 5 is in models 1 and 2; model 2 fits it, model 1 does not
    assert fit["in_sample_acc_flipped"] == pytest.approx(1 / 2)
    # class a (label 0, clean): examples 0 and 1 -> pairs (0,0) ok, (2,0) ok, (0,1) ok, (1,1) ok
    assert fit["in_sample_acc_per_class"] == {"a": pytest.approx(1.0), "b": pytest.approx(5 / 6)}
    assert fit["held_out_acc"] == pytest.approx(5 / 8)
    assert fit["fit_target_flipped"] == pytest.approx(0.95)
    assert not fit["in_regime"] and fit["worst_classes"][0] == "b"
    assert "Not the paper's regime" in regime.caveat(fit) and "90.0%" in regime.caveat(fit)
    perfect = regime.fit_report(masks, masks, test, labels, ["a", "b"], 0.99, flipped)
    assert perfect["in_regime"] and regime.caveat(perfect) is None


def test_an_under_fitted_store_gets_the_caveat_first_and_a_fitted_one_none(smoke, digits, tmp_path, capsys):
    under = smoke.replace(epochs=1, width=8, lr=0.01)
    store = memlib.train_subsets(under, digits)
    said = capsys.readouterr().err
    assert "warning: the first 8 models are not in the paper's regime" in said, "said after the first group"
    checked = memlib.check(under, digits)["regime"]
    assert checked.startswith("40 finished models") and "NOT in the paper's regime" in checked
    fit_under = memlib.store_fit(under, store, digits)
    assert not fit_under["in_regime"] and fit_under["in_sample_acc_clean"] < 0.99
    exact = smoke.replace(profile="exact")  # 1-nearest-neighbour fits every example it trains on
    fit_exact = memlib.store_fit(exact, memlib.train_subsets(exact, digits, NearestNeighbourLearner(digits)), digits)
    assert "first 8 models: in-sample accuracy 1.0000" in capsys.readouterr().err
    assert fit_exact["in_regime"] and fit_exact["in_sample_acc_clean"] == 1.0

    for name, fit, shown in (("under", fit_under, True), ("exact", fit_exact, False)):
        out = tmp_path / name
        write_run(out, min_out=300.0)
        summary = json.loads((out / "summary.json").read_text())
        write_json({**summary, "fit": fit}, out / "summary.json")
        html = render_report(out).read_text()
        assert ("Not the paper's regime" in html) == shown
        if shown:  # the first banner, above every other caveat and the findings
            assert html.index("Not the paper's regime") < html.index("training examples,")
            assert html.index("Not the paper's regime") < html.index("Only 2 retrained models")
        verdict = "NOT in the paper's regime" if shown else "(in the paper's regime"
        assert verdict in html, "the headline table says which regime the models are in"


def test_proxy_agreement_on_scores_whose_agreement_is_known():
    rng = np.random.default_rng(0)
    runs, n, classes = 64, 50, 3
    masks = rng.random((runs, n)) < 0.7
    hard = np.arange(n) < 20  # fit only when trained on: mem 1; the easy ones are always right: mem 0
    correct = masks | ~hard[None, :]
    labels = rng.integers(0, classes, n)
    signals = {
        "loss": np.where(masks, hard[None, :] * 1.0, np.nan).astype(np.float16),  # high exactly where mem is
        "aum": np.where(masks, rng.random((runs, n)), np.nan).astype(np.float16),  # unrelated
        "margin": np.where(masks, 0.5, np.nan).astype(np.float16),
        "el2n": np.where(masks, 0.5, np.nan).astype(np.float16),
        "correct_epochs": np.where(masks, 5, 255).astype(np.uint8),
        "forgetting": np.where(masks, 0, 255).astype(np.uint8),
        "learned_epoch": np.where(masks, 0, 255).astype(np.uint8),
    }
    topk_class = np.broadcast_to(np.arange(classes, dtype=np.uint8), (runs, n, classes)).copy()
    topk_prob = np.full((runs, n, classes), 1 / classes, dtype=np.float16)
    runs = validation.PeerRuns(masks, correct, signals, topk_prob, topk_class)
    agreement = validation.proxy_agreement(runs, labels, classes, 5)
    assert agreement["with_mem"]["loss"]["spearman"] == pytest.approx(1.0)
    assert agreement["with_mem"]["loss"]["pearson"] == pytest.approx(1.0)
    assert abs(agreement["with_mem"]["aum"]["spearman"]) < 0.5
    assert np.isnan(agreement["with_mem"]["margin"]["spearman"]), "a constant score has no rank correlation"
    curve = agreement["curve"]
    assert curve["reference_models"] == 32 and curve["models"] == [1, 2, 4, 8, 16, 32]
    assert curve["spearman_mem"][-1] == pytest.approx(1.0) and curve["spearman_loss"][-1] == pytest.approx(1.0)
    # one model defines mem nowhere (no model both in and out); it scores the loss on its own subset
    assert curve["defined_mem"][0] == 0.0 and 0.5 < curve["defined_loss"][0] < 0.9
    summary = validation.proxy_summary(agreement)
    assert summary["proxy_spearman_loss"] == pytest.approx(1.0) and summary["proxy_curve_models"][-1] == 32
    row = proxy_row(summary)
    assert row[0] == "cheap proxies of mem" and "best proxy loss" in row[1] and "from 8 models" in row[1]


def test_the_recipe_benchmark_prices_models_at_the_steady_rate(tmp_path, monkeypatch):
    """benchmarks/regime.py's row: seconds per model at the steady rate (the store's per-model seconds over the
    workers), the start-up apart, and the models a budget affords after the start-up. Fault caught: the wall clock
    over the models trained, which charges a short run's start-up to every model (64 models: 0.61 s a model where
    the steady rate is 0.42) and prices a 20-minute study at two thirds of what it affords."""
    import importlib.util

    import numpy as np
    from conftest import ROOT

    import memlib

    spec = importlib.util.spec_from_file_location("regime_bench", ROOT / "benchmarks" / "regime.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    trained = []
    train = memlib.train_subsets
    monkeypatch.setattr(memlib, "train_subsets", lambda cfg, data: trained.append(train(cfg, data)) or trained[-1])
    base = memlib.load_profile("smoke-noisy").replace(device="cpu", mask_design="balanced")
    row = bench.measure(base, {"epochs": 2}, models=20, budget=100.0, under=str(tmp_path))
    rate = float(np.asarray(trained[0]["seconds"]).mean()) / base.workers
    assert row["s_per_model"] == rate and row["startup_s"] >= 0
    assert row["affordable"] == int((100.0 - row["startup_s"]) / rate)
