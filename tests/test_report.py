"""The report leads with its findings, says plainly when its numbers mean little, and shouts when stages disagree."""

from __future__ import annotations

import datetime as dt
import json
import re
from html import escape
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from test_experiments import fake_estimates

import memlib
from memlib.report.artifacts import ENVIRONMENT_FILE, STAGES, write_json
from memlib.report.figures import FIGURES, FINDINGS_FIGURES, figure_path
from memlib.report.html import render_report
from memlib.report.prose import caveats, headline, headline_sentence, validation_rows
from memlib.report.summary import summarize
from memlib.stages.utility import summarize as summarize_utility

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def fake_runs(acc: dict[str, list[float]]) -> pd.DataFrame:
    kinds = {"full data": ("full", 0.0, 0), "mem >= 0.25": ("mem", 0.25, 30), "random, as many": ("random", 0.25, 30)}
    rows = []
    for name, values in acc.items():
        kind, theta, k = kinds[name]
        for r, a in enumerate(values):
            rows.append({"row": len(rows), "condition": name, "kind": kind, "threshold": theta, "n_removed": k,
                         "repeat": r, "test_acc": a, "pair_test_acc": np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def test_utility_intervals_are_clipped_to_0_1_and_drops_are_paired():
    runs = fake_runs({"full data": [0.99, 1.0], "mem >= 0.25": [0.90, 0.96], "random, as many": [0.98, 0.99]})
    table = summarize_utility(runs).set_index("kind")
    assert table.loc["full", "ci_high"] == 1.0 and table.loc["full", "clipped"]
    assert 0.0 <= table["ci_low"].min() and table["ci_high"].max() <= 1.0
    assert table.loc["mem", "drop"] == pytest.approx(0.065)
    lo, hi = table.loc["mem", ["drop_ci_low", "drop_ci_high"]]
    assert lo < 0.065 < hi, "the paired differences 0.09 and 0.04 give the drop's interval"
    assert table.loc["mem", "gap"] == pytest.approx(0.055)


def write_run(out: Path, status: dict[str, str] | None = None, min_out: float = 10.0) -> None:
    """Four executed-looking notebooks (papermill metadata, a progress bar on stderr) and a summary.json."""
    status = status or {}
    out.mkdir(parents=True, exist_ok=True)
    for k, stage in enumerate(STAGES):
        start = T0 + dt.timedelta(minutes=10 * k)
        if status.get(stage) == "stale":
            start = T0 - dt.timedelta(hours=1)
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("x = 1")
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stderr", text="training: 40%|████ | 16/40 [00:04<00:06]\n"),
            nbformat.v4.new_output("stream", name="stdout", text=f"output of {stage}\n"),
        ]
        env_cell = nbformat.v4.new_code_cell("env")
        env_cell.metadata["tags"] = ["appendix"]
        env_cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="CONFIG-DUMP-IN-STAGE-BODY\n")]
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {stage}"), cell, env_cell]
        nb.metadata["papermill"] = {
            "start_time": start.isoformat(),
            "end_time": (start + dt.timedelta(minutes=5)).isoformat(),
            "duration": 300.0,
            "exception": status.get(stage) == "failed",
        }
        nbformat.write(nb, out / f"{stage}.ipynb")
    mem = np.array([0.0, 0.1, 0.3, 0.6, 0.9] * 20)
    est = fake_estimates(mem)
    est.mem.n_out[:] = min_out
    runs = fake_runs({"full data": [0.99, 1.0], "mem >= 0.25": [0.90, 0.96], "random, as many": [0.98, 0.99]})
    cfg = memlib.load_profile("smoke")
    split = {"mem_spearman": 0.5, "pairs_jaccard_fixed": None, "models_per_half": [20, 20]}
    summary = summarize(cfg, est, summarize_utility(runs), split, np.array([0.9, 0.92]))
    write_json(summary, out / "summary.json")
    (out / "parameters.yaml").write_text("profile: smoke\nlr: 0.1\n")
    write_json({"commit": "abc", "cuda": None, "versions": {"torch": "2"}}, out / ENVIRONMENT_FILE)


def test_findings_come_first_with_uncertainty_contents_and_a_collapsed_appendix(tmp_path):
    out = tmp_path / "smoke"
    write_run(out)
    html = render_report(out).read_text()
    sentence = html.index("training examples,")
    assert "Contents:" in html and html.index("Contents:") < sentence < html.index('id="stage-1"')
    assert "95% CI" in html[sentence : sentence + 2000], "numbers carry their uncertainty"
    assert "These numbers mean nothing" in html, "too few models: said plainly"
    assert "were clipped to it" in html and "Only 2 retrained models per condition" in html
    assert "This report does not show one consistent run" not in html
    appendix = html.index('id="appendix"')
    assert "<details>" in html[appendix:] and "Configuration" in html[appendix:]
    assert "training: 40%" not in html, "no progress bars"
    assert "output of 02_estimate" in html
    assert "CONFIG-DUMP-IN-STAGE-BODY" not in html, "configuration and environment only in the appendix"
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=\s]+", "", html)  # the figures' bytes aside
    assert "NaN" not in text and ">nan<" not in text
    assert str(ROOT) not in text and str(Path.home()) + "/" not in text


@pytest.mark.parametrize(
    "status, says",
    [({"03_filter_retrain": "failed"}, "failed"), ({"02_estimate": "stale"}, "stale")],
    ids=["failed", "stale"],
)
def test_a_failed_or_stale_stage_puts_a_banner_on_top(tmp_path, status, says):
    out = tmp_path / "smoke"
    write_run(out, status=status)
    html = render_report(out).read_text()
    banner = html.index("This report does not show one consistent run")
    assert banner < html.index("training examples,"), "above the headline"
    assert says in html[banner : banner + 600]


def test_enough_models_no_caveat(tmp_path):
    out = tmp_path / "big"
    write_run(out, min_out=300.0)
    summary = json.loads((out / "summary.json").read_text())
    summary["retrain_models"], summary["ci_clipped"] = 8, False
    assert caveats(summary) == []


def test_headline_carries_stage_five_figures_when_there_are_some(tmp_path):
    out = tmp_path / "smoke"
    write_run(out)
    html = render_report(out).read_text()
    assert "finding flipped labels" not in html and "validation.json" not in html[: html.index('id="stage-1"')]
    checks = {
        "flipped": 130,
        "auroc_mem": 0.61,
        "precision_at_k_mem": 0.25,
        "auroc_loss": 0.97,
        "precision_at_k_loss": 0.8,
        "auroc_cleanlab": 0.99,
        "precision_at_k_cleanlab": 0.9,
        "pair_fdr": 0.05,
        "pairs_fixed": 120,
        "pairs_fdr": 7,
        "pairs_jaccard_fixed": 0.1,
        "pairs_jaccard_fdr": 0.5,
        **{"arch_a": "mem_mlp", "arch_b": "mem_cnn", "spearman_arch": 0.42, "top_mem_fraction": 0.1},
        **{"top_mem_jaccard_arch": 0.3, "pairs_jaccard_arch": 0.2, "pairs_a": 12, "pairs_b": 9},
        **{"mean_mem_difference_arch": 0.013, "test_accuracy_gap_arch": -0.011},
    }
    write_json(checks, out / "validation.json")
    findings = render_report(out).read_text()
    findings = findings[: findings.index('id="stage-1"')]
    rows = dict(validation_rows(checks))
    assert rows["finding flipped labels"] == (
        "130 flips: AUROC of mem 0.610 (precision at k 0.25); best peer score cleanlab 0.990 (precision at k 0.90)"
    )
    assert rows["pairs, FDR ≤ 0.05"] == (
        "7 of the 120 pairs at the fixed cut-offs; split-half Jaccard 0.50 (fixed cut-offs: 0.10)"
    )
    assert rows["mem_mlp vs mem_cnn"].startswith("Spearman of mem 0.420; Jaccard of the top 10% by mem 0.30")
    assert "mean mem difference +0.013 beside a test accuracy gap of -0.011" in rows["mem_mlp vs mem_cnn"]
    for label in rows:
        assert escape(label) in findings, "in the headline table, before stage 1"


@pytest.mark.parametrize("threshold", [0.25, 0.5])
def test_the_memorized_fraction_follows_mem_threshold(threshold):
    mem = np.array([0.0, 0.1, 0.3, 0.6, 0.9] * 20)
    runs = fake_runs({"full data": [0.99, 1.0], "mem >= 0.25": [0.90, 0.96], "random, as many": [0.98, 0.99]})
    cfg = memlib.load_profile("smoke").replace(mem_threshold=threshold)
    s = summarize(cfg, fake_estimates(mem), summarize_utility(runs), {}, np.array([0.9]))
    frac = float(np.mean(mem >= threshold))  # 0.6 at 0.25, 0.4 at 0.5
    half = 1.96 * np.sqrt(frac * (1 - frac) / len(mem))
    assert [k for k in s if k.startswith("frac_mem_ge_")] == [
        f"frac_mem_ge_{threshold:g}",
        f"frac_mem_ge_{threshold:g}_ci95",
    ]
    assert s[f"frac_mem_ge_{threshold:g}"] == pytest.approx(frac)
    assert s[f"frac_mem_ge_{threshold:g}_ci95"] == pytest.approx([frac - half, frac + half], abs=1e-6)
    said = f"{frac:.1%} (95% CI {frac - half:.1%} to {frac + half:.1%})"
    assert f"{said} are memorized (mem ≥ {threshold:g};" in headline_sentence(s)
    assert dict(headline(s))["memorization"].startswith(f"{said} of training examples have mem ≥ {threshold:g}")


def test_the_findings_show_the_figures_of_the_table_with_its_captions(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = tmp_path / "smoke"
    write_run(out)
    for name in FIGURES:
        fig = plt.figure(figsize=(1, 1))
        figure_path(out, name).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure_path(out, name))
        plt.close(fig)
    findings = render_report(out).read_text()
    findings = findings[: findings.index('id="stage-1"')]
    assert findings.count("<img") == len(FINDINGS_FIGURES)
    at = [findings.index(escape(FIGURES[name].caption)) for name in FINDINGS_FIGURES]
    assert at == sorted(at), "each figure with its caption, in the table's order"


def _powered_run(out: Path, jaccard_fixed: float, jaccard_controlled: float) -> str:
    """A run with enough models out (no other caveat) whose pair sets replicate as given; its rendered report."""
    write_run(out, min_out=77.0)
    summary = json.loads((out / "summary.json").read_text())
    summary.update(retrain_models=8, ci_clipped=False, high_influence_pairs=9196, pairs_fixed_jaccard=jaccard_fixed)
    summary.update(pairs_controlled=47, pair_fdr=0.05, pairs_tested=12_345_678)
    summary.update(pairs_controlled_jaccard=jaccard_controlled)
    write_json(summary, out / "summary.json")
    return render_report(out).read_text()


def test_an_under_powered_pair_count_comes_with_its_caveat_first(tmp_path):
    # The fault it guards against: a report that opens with a fixed-cut-off pair count that does not replicate
    # (fashion-mnist-noisy at 256 models: 9,196 pairs, split-half Jaccard 0.04) and no word of it.
    html = _powered_run(tmp_path / "weak", 0.04, 0.43)
    first = html.index("do not replicate")
    assert first < html.index("training examples,") < html.index('id="stage-1"'), "the caveat comes first"
    assert "Jaccard 0.04" in html[first : first + 600] and "num_models" in html[first : first + 2000]
    assert html.index("replicate only in part") < html.index("training examples,"), "the controlled set's too"
    sentence = html[html.index("training examples,") :][:1500]
    assert sentence.index("47 high-influence pairs with their false discovery rate controlled") < sentence.index(
        "9,196 at the paper's fixed cut-offs, Jaccard 0.04"
    ), "the headline leads with the controlled pairs; the fixed count comes only with its Jaccard"


def test_pair_sets_that_replicate_carry_no_caveat(tmp_path):
    html = _powered_run(tmp_path / "strong", 0.72, 0.81)
    assert "do not replicate" not in html and "replicate only in part" not in html
    summary = json.loads((tmp_path / "strong" / "summary.json").read_text())
    assert caveats(summary) == []
    rows = dict(headline(summary))
    assert "split-half Jaccard 0.81" in rows["high-influence pairs"] and "0.72" in rows["pairs at fixed cut-offs"]


def test_replication_figure_labels_model_counts_that_do_not_collide():
    """The replication figure labels each model count on its log axis unless it sits under a neighbour's label:
    1,024 beside a last point of 1,536 once printed "10241536" (labelling every count fails here)."""
    from memlib.report import plots

    assert plots.spaced_ticks([16, 32, 64, 128, 256, 512, 1024, 1536]) == [16, 32, 64, 128, 256, 512, 1536]
    assert plots.spaced_ticks([16, 32, 64, 128]) == [16, 32, 64, 128]
    assert plots.spaced_ticks([16, 20]) == [20] and plots.spaced_ticks([]) == []
    n = 1536
    curve = {"models": [16, 32, 64, 128, 256, 512, 1024, n], "mem_spearman": [0.5] * 8}
    fig = plots.replication(curve, 0.5)
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["16", "32", "64", "128", "256", "512", "1,536"]
    plots.plt.close(fig)


def test_replication_figure_numbers_of_close_counts_do_not_overlap():
    """2,048 beside a last point of 2,560 once printed their pairs' counts side by side as one ("192234"), and
    numbers below their points met the other curve's; no two numbers may touch (fails with every number above its
    point, and with numbers only above or below their points)."""
    from memlib.report import plots

    t = [16, 32, 64, 128, 256, 512, 1024, 2048, 2560]
    curve = {
        "models": t,
        "mem_spearman": [0.9] * 9,
        "pairs_jaccard_fdr": [None, None, None, 1.0, 0.17, 0.41, 0.60, 0.703, 0.701],
        "pairs_fdr_both_halves": [0, 0, 0, 2, 3, 26, 96, 1192, 1234],
        "pairs_jaccard_fixed": [0.13, 0.12, 0.10, 0.08, 0.08, 0.16, 0.38, 0.54, 0.59],  # the 2,560-model store's
        "pairs_fixed_both_halves": [24203, 19828, 10088, 4329, 1833, 1222, 1148, 1155, 1169],
    }
    fig = plots.replication(curve, 0.5)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer).padded(1) for a in fig.axes[0].texts]
    assert len(boxes) == 15
    overlaps = [(i, k) for i in range(len(boxes)) for k in range(i) if boxes[i].overlaps(boxes[k])]
    assert not overlaps, [(fig.axes[0].texts[i].get_text(), fig.axes[0].texts[k].get_text()) for i, k in overlaps]
    plots.plt.close(fig)
