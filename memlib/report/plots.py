"""The paper's figures, with seaborn. Each function returns its matplotlib Figure (and saves it if asked)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.transforms import Bbox

from ..analysis.estimation import Estimates
from .artifacts import save_figure

sns.set_theme(context="notebook", style="whitegrid")
PALETTE = {"mem": "#c0392b", "random": "#7f8c8d", "pairs": "#c0392b", "pairs_random": "#7f8c8d", "full": "#2c3e50"}


class Images(Protocol):
    """What the image grids need of a dataset (memlib.data.dataset.Dataset has it)."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    classes: list[str]


def _save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    """Write `fig` to `path`, one of the run folder's outputs (memlib.report.artifacts.OUTPUTS), atomically."""
    if path is not None:
        save_figure(fig, Path(path))
    return fig


def _show_image(ax: plt.Axes, img: np.ndarray) -> None:
    """One (C, H, W) example: gray or RGB; a feature vector (D, 1, 1) as a strip; values outside [0, 1] rescaled."""
    img = np.asarray(img, dtype=np.float32)
    if img.min() < 0 or img.max() > 1:
        img = (img - img.min()) / (np.ptp(img) + 1e-12)
    if img.shape[1:] == (1, 1) and img.shape[0] > 1:
        ax.imshow(img.reshape(1, -1), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    elif img.shape[0] in (3, 4):
        ax.imshow(np.clip(img[:3].transpose(1, 2, 0), 0, 1))
    else:
        gray = img.mean(0)
        ax.imshow(gray, cmap="gray_r" if gray.mean() < 0.5 else "gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def memorized_grid(data: Images, est: Estimates, k: int = 24, cols: int = 8, path=None) -> plt.Figure:
    """The k most memorized training examples, with their label and mem ± se."""
    top = est.top_memorized(k)
    rows = int(np.ceil(len(top) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, top):
        ax.axis("on")
        _show_image(ax, data.x_train[i])
        ax.set_title(
            f"'{data.classes[data.y_train[i]]}' #{data.train_index[i]}\nmem {est.mem.value[i]:.2f}±{est.mem.se[i]:.2f}",
            fontsize=8,
        )
    fig.suptitle(f"The {len(top)} most memorized training examples (label, original index, mem ± se)")
    fig.tight_layout()
    return _save(fig, path)


def mem_histogram(est: Estimates, threshold: float = 0.25, path=None) -> plt.Figure:
    """Distribution of memorization estimates, with the high-memorization threshold."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.histplot(est.mem.value, bins=50, ax=ax, color="#34495e")
    frac = float(np.mean(est.mem.value >= threshold))
    ax.axvline(threshold, color=PALETTE["mem"], ls="--", label=f"mem ≥ {threshold:g}: {frac:.1%} of examples")
    ax.set_yscale("log")
    ax.set_xlabel("memorization estimate")
    ax.set_ylabel("training examples (log scale)")
    ax.set_title(f"Memorization of {len(est.mem.value):,} training examples ({est.num_models:,} models)")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def pairs_grid(data: Images, est: Estimates, k: int = 12, cols: int = 4, path=None) -> plt.Figure:
    """The k highest-influence pairs the study stands behind (the controlled set, where there is one): each
    training image beside the test image it influences."""
    p = est.replicating_pairs()
    which = f"FDR ≤ {est.pair_fdr:g}" if est.controlled is not None else "fixed cut-offs"
    if len(p) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no high-influence pairs ({which})", ha="center", va="center")
        return _save(fig, path)
    order = np.argsort(-p.infl, kind="stable")[:k]
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(1.5 * 2 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, q in enumerate(order):
        a_tr, a_tt = axes.flat[2 * n], axes.flat[2 * n + 1]
        a_tr.axis("on")
        a_tt.axis("on")
        i, j = p.tr_pos[q], p.tt_pos[q]
        _show_image(a_tr, data.x_train[i])
        _show_image(a_tt, data.x_test[j])
        a_tr.set_title(f"train #{data.train_index[i]}\nmem {p.mem[q]:.2f}", fontsize=8)
        a_tt.set_title(f"test #{data.test_index[j]}\ninfl {p.infl[q]:.2f}±{p.infl_se[q]:.2f}", fontsize=8)
    fig.suptitle(f"High-influence pairs (train | test; {which}), {len(p)} in all, strongest first")
    fig.tight_layout()
    return _save(fig, path)


def utility_curve(table: pd.DataFrame, n_train: int, path=None) -> plt.Figure:
    """Test accuracy after removing mem >= θ examples vs as many random ones, with 95% CIs (paper, Fig. 3)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    full = table[table["kind"] == "full"].iloc[0]
    ax.axhspan(full["ci_low"], full["ci_high"], color=PALETTE["full"], alpha=0.12)
    ax.axhline(full["test_acc"], color=PALETTE["full"], lw=1, label="full training set")
    for kind, label in (("mem", "remove mem ≥ θ"), ("random", "remove as many random examples")):
        t = table[table["kind"] == kind].sort_values("n_removed")
        if t.empty:
            continue
        x = 100 * t["n_removed"] / n_train
        yerr = np.vstack([t["test_acc"] - t["ci_low"], t["ci_high"] - t["test_acc"]])
        ax.errorbar(x, t["test_acc"], yerr=yerr, marker="o", capsize=3, color=PALETTE[kind], label=label)
        if kind == "mem":
            for xi, yi, th in zip(x, t["test_acc"], t["threshold"]):
                ax.annotate(f"θ={th:g}", (xi, yi), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("training examples removed (%)")
    ax.set_ylabel("test accuracy (mean, 95% CI)")
    ax.set_title("Marginal utility of memorized examples")
    ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def pairs_removal(table: pd.DataFrame, path=None) -> plt.Figure:
    """Accuracy on the test side of high-influence pairs after removing their train side, vs random removal."""
    t = table[table["kind"].isin(["full", "pairs", "pairs_random"])].copy()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    if len(t) < 3:
        ax.axis("off")
        ax.text(0.5, 0.5, "no high-influence pairs: nothing to remove", ha="center", va="center")
        return _save(fig, path)
    labels = {"full": "full data", "pairs": "pair train side removed", "pairs_random": "as many random removed"}
    y = np.arange(len(t))
    ax.barh(y, t["pair_test_acc"], color=[PALETTE[k] for k in t["kind"]], alpha=0.85)
    xerr = np.vstack([t["pair_test_acc"] - t["pair_ci_low"], t["pair_ci_high"] - t["pair_test_acc"]])
    ax.errorbar(t["pair_test_acc"], y, xerr=xerr, fmt="none", ecolor="black", capsize=3)
    ax.set_yticks(y, [labels[k] for k in t["kind"]])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy on the pairs' test examples (95% CI)")
    ax.set_title("Removing the train side of high-influence pairs")
    fig.tight_layout()
    return _save(fig, path)


def mem_against_mem(x, y, labels: tuple[str, str], title: str, diagonal, size: float, path=None) -> plt.Figure:
    """Two memorization estimates of the same training examples, one against the other, with the diagonal."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x, y, s=size, alpha=0.4, color="#34495e")
    ax.plot(diagonal, diagonal, ":", color="gray")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def split_half(sh: dict, path=None) -> plt.Figure:
    """Memorization from two disjoint halves of the models, one against the other."""
    lim = [min(sh["mem_a"].min(), sh["mem_b"].min()), max(sh["mem_a"].max(), sh["mem_b"].max())]
    a, b = sh["models_per_half"]
    title = f"Split-half stability: Spearman {sh['mem_spearman']:.3f}\n"
    if "pairs_jaccard_fdr" in sh:
        title += (
            f"pairs Jaccard {sh['pairs_jaccard_fdr']:.2f} with FDR control ({sh['pairs_fdr_both_halves']} in both of "
            f"{sh['pairs_fdr_half_a']} / {sh['pairs_fdr_half_b']}), {sh['pairs_jaccard_fixed']:.2f} at fixed cut-offs"
        )
    else:
        title += (
            f"pairs Jaccard {sh['pairs_jaccard_fixed']:.2f} ({sh['pairs_fixed_both_halves']} in both of "
            f"{sh['pairs_fixed_half_a']} / {sh['pairs_fixed_half_b']})"
        )
    labels = (f"mem, even-indexed models ({a})", f"mem, odd-indexed models ({b})")
    return mem_against_mem(sh["mem_a"], sh["mem_b"], labels, title, lim, 6, path)


def spaced_ticks(t: list[int], apart: float = 0.8) -> list[int]:
    """The model counts to label on a log axis: the last always, and before it each that lies at least `apart`
    octaves below the next labelled one (1,024 beside 1,536 would print over it)."""
    kept = [t[-1]] if t else []
    for x in reversed(t[:-1]):
        if np.log2(kept[-1] / x) >= apart:
            kept.append(x)
    return kept[::-1]


def replication(curve: dict[str, list], replicates: float, path=None) -> plt.Figure:
    """Split-half agreement against the number of models: each pair set's Jaccard and mem's Spearman."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    t = curve["models"]
    names = {"fdr": ("pairs, FDR-controlled", "#c0392b"), "fixed": ("pairs, fixed cut-offs", "#7f8c8d")}
    numbers = []  # (x, Jaccard, pairs in both halves, colour): a Jaccard of few pairs says little
    for key, (label, color) in names.items():
        if f"pairs_jaccard_{key}" in curve:
            jac = [np.nan if j is None else j for j in curve[f"pairs_jaccard_{key}"]]
            ax.plot(t, jac, "o-", color=color, label=label)
            both = curve[f"pairs_{key}_both_halves"]
            numbers += [(x, j, n, color) for x, j, n in zip(t, jac, both) if np.isfinite(j)]
    ax.axhline(replicates, ls="--", color="k", lw=0.8, label=f"replicates (Jaccard {replicates:g})")
    ax.set(xscale="log", xlabel="models (split in two halves)", ylabel="split-half Jaccard", ylim=(0, 1.1))
    ax.set_title("Do the pairs replicate? (numbers: pairs in both halves)")
    ax.legend(fontsize=8)
    ax2.plot(t, [np.nan if r is None else r for r in curve["mem_spearman"]], "o-", color="#2c3e50")
    ax2.set(xscale="log", xlabel="models (split in two halves)", ylabel="split-half Spearman of mem", ylim=(0, 1))
    ax2.set_title("Does mem replicate?")
    for a in (ax, ax2):
        a.set_xticks(spaced_ticks(t))
        a.set_xticklabels([f"{x:,}" for x in spaced_ticks(t)])
        a.minorticks_off()
    fig.tight_layout()
    _place_numbers(fig, ax, numbers)
    return _save(fig, path)


def _place_numbers(fig: plt.Figure, ax: plt.Axes, numbers: list[tuple]) -> None:
    """Each (x, y, number, colour) written in its curve's colour above its point, or at the first of below it,
    right of it, left of it, further above, further below where the nearer places would touch a point or a number
    already written (close model counts, two curves near each other)."""
    if not numbers:
        return
    renderer = fig.canvas.get_renderer()
    places = (  # offset in points, alignment
        ((0, 6), "center", "bottom"), ((0, -6), "center", "top"), ((7, 0), "left", "center"),
        ((-7, 0), "right", "center"), ((0, 16), "center", "bottom"), ((0, -16), "center", "top"),
    )  # fmt: skip
    marker = 4  # half a marker's side, in pixels
    taken = [Bbox.from_extents(*(p - marker), *(p + marker)) for p in ax.transData.transform([n[:2] for n in numbers])]
    for x, y, number, color in numbers:
        for place in places:
            offset, ha, va = place
            text = ax.annotate(
                f"{number}", (x, y), textcoords="offset points", xytext=offset, ha=ha, va=va, fontsize=7, color=color
            )
            box = text.get_window_extent(renderer).padded(1)
            if not any(box.overlaps(b) for b in taken) or place == places[-1]:
                break
            text.remove()
        taken.append(box)


def training_overview(test_acc: np.ndarray, out_counts: np.ndarray, path=None) -> plt.Figure:
    """Per-model test accuracy, and per-example number of models that left it out (of the finished models)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].set_xlabel("test accuracy of a subset model")
    axes[1].set_xlabel("models that did not train on the example")
    if not len(test_acc):
        axes[0].set_title("no finished models yet")
        return _save(fig, path)
    sns.histplot(test_acc, bins=30, ax=axes[0], color="#2c3e50")
    axes[0].set_title(f"{len(test_acc):,} models: mean test accuracy {np.mean(test_acc):.3f}")
    sns.histplot(out_counts, bins=30, ax=axes[1], color="#7f8c8d")
    axes[1].set_title(f"Held-out models per training example (min {int(out_counts.min())})")
    fig.tight_layout()
    return _save(fig, path)


def fit_overview(per_example: np.ndarray, fit: dict, flipped: np.ndarray | None = None, path=None) -> plt.Figure:
    """Is this the paper's regime? In-sample accuracy per example (clean vs flipped) and per class, vs held-out."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
    flipped = np.zeros(len(per_example), dtype=bool) if flipped is None else np.asarray(flipped, dtype=bool)
    bins = np.linspace(0, 1, 21)
    ax.hist(per_example[~flipped], bins=bins, color="#2c3e50", alpha=0.8, label=f"clean ({(~flipped).sum():,})")
    if flipped.any():
        ax.hist(per_example[flipped], bins=bins, color="#c0392b", alpha=0.8, label=f"flipped ({flipped.sum():,})")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of the models trained on it that fit it")
    ax.set_ylabel("training examples")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("In-sample accuracy per training example", fontsize=10)
    classes = list(fit["in_sample_acc_per_class"])
    values = [fit["in_sample_acc_per_class"][c] or 0.0 for c in classes]
    ax2.bar(range(len(classes)), values, color="#2c3e50", label="in-sample (clean)")
    ax2.axhline(fit["fit_target"], color="#27ae60", ls="--", lw=1.2, label=f"fit target {fit['fit_target']:g}")
    ax2.axhline(fit["held_out_acc"], color="#7f8c8d", ls=":", lw=1.5, label=f"held-out {fit['held_out_acc']:.3f}")
    if fit.get("in_sample_acc_flipped") is not None:
        ax2.axhline(fit["in_sample_acc_flipped"], color="#c0392b", ls="-.", lw=1.2, label="in-sample, flipped")
    low = min([*values, fit["held_out_acc"], fit.get("in_sample_acc_flipped") or 1.0])
    ax2.set_ylim(max(0.0, low - 0.05), 1.005)
    ax2.set_xticks(range(len(classes)))
    ax2.set_xticklabels(classes, rotation=45 if len(classes) > 10 or max(map(len, classes)) > 3 else 0, ha="right",
                        fontsize=7 if len(classes) > 20 else 8)  # fmt: skip
    ax2.legend(loc="lower left", fontsize=7)
    verdict = "in the paper's regime" if fit["in_regime"] else "NOT in the paper's regime"
    ax2.set_title(f"Per class, against held-out accuracy: {verdict}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
