"""Stage 5's statistics against answers computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from memlib.analysis import peers, validation
from memlib.analysis.estimation import influence, memorization
from memlib.analysis.peers import (
    PEERS,
    Peer,
    PeerInputs,
    PeerRuns,
    cleanlab_issues,
    in_model_means,
    out_of_sample_probs,
    signed_scores,
    suspicion,
)
from memlib.analysis.stability import paper_bound
from memlib.analysis.validation import (
    auroc,
    average_precision,
    benjamini_hochberg,
    fdr_pairs,
    precision_at_k,
    recovery,
)
from memlib.report.prose import validation_rows
from memlib.stages.validate import scores_from_store
from memlib.train.signals import NOT_SEEN


def test_ranking_metrics_on_scores_whose_values_are_known():
    positive = np.array([1, 0, 1, 0, 0], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    # positives beat 3 of 3 and 2 of 3 negatives: (3 + 2) / 6
    assert auroc(score, positive) == pytest.approx(5 / 6)
    # ranked: +, -, +: precision 1 at the first positive, 2/3 at the second
    assert average_precision(score, positive) == pytest.approx((1 + 2 / 3) / 2)
    assert precision_at_k(score, positive) == pytest.approx(1 / 2)  # k = 2 positives: {0.9 +, 0.8 -}
    assert precision_at_k(score, positive, k=3) == pytest.approx(2 / 3)
    assert auroc(-score, positive) == pytest.approx(1 / 6), "reversing the score reverses the ranking"
    assert auroc(np.ones(5), positive) == pytest.approx(0.5), "ties count one half"
    perfect = np.array([3.0, 0.0, 2.0, 0.0, 1.0])
    assert auroc(perfect, positive) == 1 and average_precision(perfect, positive) == 1
    rows = recovery({"good": perfect, "bad": -perfect}, positive)
    assert [r["score"] for r in rows] == ["good", "bad"] and rows[1]["precision_at_k"] == 0


def test_benjamini_hochberg_against_a_hand_computed_case():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.5])
    # sorted: 0.005 0.01 0.03 0.04 0.2 0.5 against k * 0.05 / 6 = .0083 .0167 .025 .0333 .0417 .05:
    # passes at k = 1, 2 only (0.03 > 0.025, 0.04 > 0.0333): reject 0.005 and 0.01
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.05), [True, False, False, True, False, False])
    # at 0.1 the bounds double: .0167 .0333 .05 .0667: all four smallest pass (0.04 <= 0.0667)
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.1), [True, True, True, True, False, False])
    # a step-up rule: a later pass rescues an earlier failure
    np.testing.assert_array_equal(benjamini_hochberg(np.array([0.02, 0.021]), 0.05), [True, True])
    # the same p-values in a family of 60 tests: bound 0.05 * k / 60, only 0.005 <= 0.00083? no: nothing
    assert not benjamini_hochberg(p, 0.05, m=60).any()
    assert benjamini_hochberg(np.array([0.0001]), 0.05, m=60).all()


def test_fdr_pairs_select_a_planted_pair_and_count_every_candidate_tested():
    rng = np.random.default_rng(0)
    runs, n_train, n_test = 400, 6, 4
    masks = rng.random((runs, n_train)) < 0.7
    test = rng.random((runs, n_test)) < 0.5  # coin flips: no influence anywhere...
    test[:, 0] = masks[:, 2]  # ...except train 2 decides test 0 completely
    tr_labels = np.array([0, 1, 0, 1, 0, 1])
    tt_labels = np.array([0, 0, 1, 1])
    mem = np.array([0.5, 0.0, 0.5, 0.5, 0.1, 0.5])  # candidates: train 0, 2, 3, 5
    pairs, p, tested = fdr_pairs(masks, test, mem, tr_labels, tt_labels, 0.15, 0.25, 0.05)
    assert tested == 4 * 2, "each candidate has two same-class test examples"
    assert pairs.keys() == {(2, 0)}
    assert p[0] < 1e-10 and pairs.infl[0] == pytest.approx(influence(masks, test, [2]).value[0, 0])


def test_paper_bound_is_the_formula():
    t, p = np.array([100.0]), 0.7
    assert paper_bound(t, p)[0] == pytest.approx(1 / 30 + 1 / 70 + np.exp(-30 / 16) / 2)
    assert paper_bound(t, 0.3)[0] == pytest.approx(paper_bound(t, 0.7)[0])


def test_peer_scores_average_over_the_models_that_trained_on_each_example():
    masks = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    forgetting = np.array([[2, 0, NOT_SEEN], [0, NOT_SEEN, NOT_SEEN], [NOT_SEEN, 1, 3]], dtype=np.uint8)
    np.testing.assert_allclose(in_model_means(masks, forgetting), [1.0, 0.5, 3.0])
    aum = np.where(masks, np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, -1.0]]), np.nan).astype(np.float16)
    signals = {"forgetting": forgetting, "correct_epochs": forgetting, "aum": aum, "margin": aum, "loss": aum}
    signals["el2n"] = aum
    inputs = PeerInputs(PeerRuns(masks, masks, signals, None, None), np.zeros(3, dtype=np.int64), 3, epochs=4)
    scores = {name: PEERS[name].score(inputs) for name in ("aum", "learning_speed", "forgetting")}
    np.testing.assert_allclose(scores["aum"], [2.0, 3.0, -1.0])
    np.testing.assert_allclose(scores["learning_speed"], [0.25, 0.125, 0.75])
    np.testing.assert_allclose(scores["forgetting"], [1.0, 0.5, 3.0])
    assert suspicion("aum", scores["aum"]).argmax() == 2, "low AUM is suspicious"
    assert suspicion("mem", np.array([np.nan, 0.1])).argmax() == 1, "no estimate ranks last"


def test_out_of_sample_probabilities_average_the_models_that_left_each_example_out():
    masks = np.array([[1, 0], [0, 0], [0, 1]], dtype=bool)  # example 0 out of runs 1, 2; example 1 of 0, 1
    full = np.array(
        [[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], [[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], [[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]]
    )
    classes = np.argsort(-full, axis=-1)
    top = np.take_along_axis(full, classes, -1)
    exact = out_of_sample_probs(masks, top, classes.astype(np.uint8), 3)
    np.testing.assert_allclose(exact[0], (full[1, 0] + full[2, 0]) / 2, atol=1e-12)
    np.testing.assert_allclose(exact[1], (full[0, 1] + full[1, 1]) / 2, atol=1e-12)
    # keeping the top 1 only: the rest of each run's mass is spread over its other two classes
    one = out_of_sample_probs(masks, top[..., :1], classes[..., :1].astype(np.uint8), 3)
    run1, run2 = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])  # tops: class 0 (0.5), class 2 (0.5)
    np.testing.assert_allclose(one[0], (run1 + run2) / 2)
    np.testing.assert_allclose(one.sum(1), 1.0)


def test_cleanlab_flags_the_example_whose_label_its_probabilities_contradict():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    probs = np.full((90, 3), 0.05)
    probs[np.arange(90), labels] = 0.9
    probs += rng.random((90, 3)) * 0.01
    probs[5] = [0.02, 0.96, 0.02]  # labelled 0, predicted 1 with confidence
    probs /= probs.sum(1, keepdims=True)
    issues = cleanlab_issues(labels, probs)
    assert issues[5] and issues.sum() == 1


def peer_runs(runs: int = 24, n: int = 40, classes: int = 3, seed: int = 0) -> tuple[PeerRuns, np.ndarray]:
    """Random runs with every recorded signal and top-k probabilities; and the labels they trained on."""
    rng = np.random.default_rng(seed)
    masks = rng.random((runs, n)) < 0.7
    signals = {
        name: np.where(masks, rng.random((runs, n)), np.nan).astype(np.float16)
        for name in ("loss", "margin", "aum", "el2n")
    }
    for name in ("correct_epochs", "forgetting", "learned_epoch"):
        signals[name] = np.where(masks, rng.integers(0, 5, (runs, n)), NOT_SEEN).astype(np.uint8)
    probs = rng.dirichlet(np.ones(classes), (runs, n))
    topk_class = np.argsort(-probs, axis=-1).astype(np.uint8)
    topk_prob = np.take_along_axis(probs, topk_class, -1).astype(np.float16)
    correct = rng.random((runs, n)) < 0.5 + 0.4 * masks
    return PeerRuns(masks, correct, signals, topk_prob, topk_class), rng.integers(0, classes, n)


def test_the_registry_scores_mem_and_cleanlab_as_their_definitions():
    from cleanlab.rank import get_label_quality_scores

    runs, labels = peer_runs()
    inputs = PeerInputs(runs, labels, 3, epochs=5)
    scores = peers.peer_scores(inputs)
    assert list(scores) == list(PEERS) == list(peers.descriptions())
    np.testing.assert_array_equal(scores["mem"], memorization(runs.masks, runs.train_correct).value)
    quality = get_label_quality_scores(labels, inputs.out_of_sample_probs, method="self_confidence")
    np.testing.assert_array_equal(scores["cleanlab"], quality)
    signed = signed_scores(runs, labels, 3, 5)
    for name, peer in PEERS.items():
        np.testing.assert_array_equal(signed[name], peer.sign * scores[name])
    given = peers.peer_scores(inputs, given={"mem": np.ones(40)})
    np.testing.assert_array_equal(given["mem"], 1.0)


def memorized_and_typical_runs(runs: int = 20, epochs: int = 5) -> tuple[PeerRuns, np.ndarray]:
    """Two examples of label 0, each in every other run: example 0 typical (right in and out of training, low loss,
    high margin, learned at once, never forgotten, its label likely out of sample), example 1 what every score
    should find (right only when trained on, high loss, negative margin, learned last, forgotten, its label unlikely
    out of sample). Written from what the signals mean, not from PEERS."""
    masks = np.zeros((runs, 2), dtype=bool)
    masks[::2, 0] = masks[1::2, 1] = True
    correct = np.ones((runs, 2), dtype=bool)
    correct[:, 1] = masks[:, 1]
    per_example = {
        "loss": (0.05, 2.5),
        "margin": (0.9, -0.4),
        "aum": (6.0, -1.5),
        "el2n": (0.1, 1.2),
        "correct_epochs": (epochs, 1),
        "forgetting": (0, 2),
        "learned_epoch": (0, epochs - 1),
    }
    signals = {}
    for name, (typical, odd) in per_example.items():
        dtype = np.uint8 if name in ("correct_epochs", "forgetting", "learned_epoch") else np.float16
        values = np.broadcast_to(np.array([typical, odd], dtype=np.float64), (runs, 2))
        signals[name] = np.where(masks, values, NOT_SEEN if dtype == np.uint8 else np.nan).astype(dtype)
    probs = np.array([[0.95, 0.03, 0.02], [0.05, 0.9, 0.05]])  # out of sample: class 0 likely for 0, not for 1
    topk_class = np.broadcast_to(np.argsort(-probs, -1), (runs, 2, 3)).astype(np.uint8)
    topk_prob = np.broadcast_to(np.take_along_axis(probs, np.argsort(-probs, -1), -1), (runs, 2, 3)).astype(np.float16)
    return PeerRuns(masks, correct, signals, topk_prob, topk_class), np.zeros(2, dtype=np.int64)


def test_every_signed_score_ranks_the_memorized_example_above_the_typical_one():
    """The signs against an independent expectation (fault planted: a peer's sign reversed, e.g. margin's +1,
    which comparing signed_scores with `peer.sign * score` cannot catch: it is the same computation)."""
    runs, labels = memorized_and_typical_runs()
    signed = signed_scores(runs, labels, 3, 5)
    assert set(signed) == set(PEERS)
    for name, score in signed.items():
        assert score[1] > score[0], f"{name}: {score[1]} for the memorized example, {score[0]} for the typical one"


def test_a_peer_registered_once_reaches_every_table(monkeypatch):
    """One entry in PEERS: signed scores, recovery, the proxy comparison, stage 5's scores and the report take it."""
    runs, labels = peer_runs()
    doc = "negative mean learned epoch (a toy score)"
    monkeypatch.setitem(PEERS, "toy", Peer(-1, doc, lambda x: x.in_model_mean("learned_epoch")))
    signed = signed_scores(runs, labels, 3, 5)
    np.testing.assert_array_equal(signed["toy"], -in_model_means(runs.masks, runs.signals["learned_epoch"]))
    assert peers.descriptions()["toy"] == doc
    flipped = np.zeros(40, dtype=bool)
    flipped[:6] = True
    assert "toy" in {row["score"] for row in recovery({k: suspicion(k, v) for k, v in signed.items()}, flipped)}
    agreement = validation.proxy_agreement(runs, labels, 3, 5, flipped)
    assert "toy" in agreement["with_mem"]
    assert len(agreement["curve"]["spearman_toy"]) == len(agreement["curve"]["auroc_toy"]) == 5  # t = 1, 2, 4, 8, 12
    figures = validation.proxy_summary(agreement)
    assert {"proxy_spearman_toy", "proxy_pearson_toy", "proxy_curve_spearman_toy"} <= set(figures)
    store = {"masks": runs.masks, "train_correct": runs.train_correct, "train_topk_prob": runs.topk_prob}
    store |= {"train_topk_class": runs.topk_class, **{f"signal_{k}": v for k, v in runs.signals.items()}}
    cfg, data = SimpleNamespace(epochs=5), SimpleNamespace(y_train=labels, num_classes=3)
    est = SimpleNamespace(mem=SimpleNamespace(value=signed["mem"]))
    scores, _, _ = scores_from_store(cfg, store, data, est)
    np.testing.assert_array_equal(scores["toy"], -signed["toy"])
    checks = {"flipped": 6, "auroc_mem": 0.5, "precision_at_k_mem": 0.2, "auroc_toy": 0.9, "precision_at_k_toy": 0.5}
    assert "best peer score toy 0.900" in dict(validation_rows(checks))["finding flipped labels"]


@pytest.mark.slow
def test_a_second_architecture_trains_the_same_design_and_is_compared(smoke, digits):
    import memlib
    from memlib.stages.validate import compare_architecture

    cfg = smoke.replace(
        num_models=12, min_out=2, mask_design="balanced", epochs=1, group_size=4, width=8, compare_arch="mem_cnn"
    )
    store = memlib.train_subsets(cfg, digits)
    est = memlib.estimate(cfg, store, digits)
    result, other, other_cfg = compare_architecture(cfg, digits, est, store)
    assert other_cfg.arch == "mem_cnn" and other_cfg.profile == "smoke-mem_cnn" and other_cfg.width is None
    other_store = memlib.open_subset_store(other_cfg, digits, create=False)
    np.testing.assert_array_equal(other_store["masks"], store["masks"])  # the same design
    assert result["arch_a"] == "mem_mlp" and result["arch_b"] == "mem_cnn"
    assert -1 <= result["spearman_arch"] <= 1 and 0 <= result["top_mem_jaccard_arch"] <= 1
    assert result["test_accuracy_gap_arch"] == pytest.approx(result["test_acc_a"] - result["test_acc_b"])
    diff = est.mem.value - other.mem.value
    assert result["mean_mem_difference_arch"] == pytest.approx(np.mean(diff[np.isfinite(diff)]))


def test_average_precision_ranks_a_missing_estimate_last_instead_of_failing():
    # suspicion() gives an example with no estimate -inf; sklearn's average_precision_score raised on it (the
    # fault), which stopped benchmarks/regime.py on a 16-model run where some examples had no held-out model
    positive = np.array([1, 0, 1, 0], dtype=bool)
    with_inf = np.array([0.9, 0.8, -np.inf, 0.1])
    assert average_precision(with_inf, positive) == pytest.approx(
        average_precision(np.array([0.9, 0.8, -5, 0.1]), positive)
    )
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.2]), positive) == pytest.approx((1 + 2 / 3) / 2)


def test_stage_5_finds_the_flips_by_mem_where_the_models_fit_them(tmp_path):
    """mem's AUROC on the flips above a floor, through stage 1's store, stage 2's estimates and stage 5's signing
    and recovery, where the models fit what they train on: 1-NN gets every example it trained on right, so a
    flipped label is right only when trained on (mem near 1), a clean one mostly either way (mem near 0). Fault:
    mem's sign reversed (AUROC near 0), or mem paired with the wrong examples (near 0.5). smoke-noisy's 3-epoch
    MLPs do not fit their flips (mem's AUROC 0.48 there), so the notebook test cannot bound mem, only the peers."""
    import memlib
    from memlib.analysis.estimation import estimate_from_arrays
    from memlib.runs.local import run_jobs
    from memlib.runs.subsets import open_subset_store
    from memlib.train.design import subset_jobs
    from memlib.train.engine import NearestNeighbourLearner

    cfg = memlib.load_profile("smoke-noisy").replace(results_dir=str(tmp_path))
    data = memlib.load_dataset(cfg)
    store = open_subset_store(cfg, data)
    run_jobs(store, subset_jobs(cfg, data.n_train, range(cfg.num_models)), cfg, data, NearestNeighbourLearner(data))
    arrays = (np.asarray(store[k]) for k in ("masks", "train_correct", "test_correct"))
    est = estimate_from_arrays(*arrays, data, cfg.infl_threshold, cfg.mem_threshold)
    flipped = data.flips.indicator(data.n_train)  # as stage 5 takes them (1-NN records no peer signals)
    [row] = recovery({"mem": suspicion("mem", est.mem.value)}, flipped)
    assert flipped.sum() == 130 and row["auroc"] > 0.9, row
