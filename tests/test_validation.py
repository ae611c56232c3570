"""Stage 5's statistics against answers computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from memlib.estimation import influence
from memlib.peers import cleanlab_scores, in_model_means, out_of_sample_probs, suspicion, training_scores
from memlib.signals import NOT_SEEN
from memlib.stability import paper_bound
from memlib.validation import (
    auroc,
    average_precision,
    benjamini_hochberg,
    exceedance_p,
    fdr_pairs,
    precision_at_k,
    recovery,
)


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


def test_exceedance_p_value_of_an_estimate_and_its_standard_error():
    p = exceedance_p(np.array([0.15 + 1.6448536, 0.15, 0.5, 0.1, 0.3]), np.array([1.0, 1.0, 0.0, 0.0, np.nan]), 0.15)
    np.testing.assert_allclose(p, [0.05, 0.5, 0.0, 1.0, 1.0], atol=1e-6)


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
    scores = training_scores(masks, signals, epochs=4)
    np.testing.assert_allclose(scores["aum"], [2.0, 3.0, -1.0])
    np.testing.assert_allclose(scores["learning_speed"], [0.25, 0.125, 0.75])
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
    quality, issues = cleanlab_scores(labels, probs)
    assert quality.argmin() == 5 and issues[5] and issues.sum() == 1


@pytest.mark.slow
def test_a_second_architecture_trains_the_same_design_and_is_compared(smoke, digits):
    import memlib
    from memlib.validation import compare_architecture

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
