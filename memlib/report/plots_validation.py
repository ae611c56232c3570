"""Stage 5's figures: ROC curves of every score for the flips, mem's convergence with the number of models,
architecture agreement, and mem against its cheap proxies."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..analysis.estimation import Estimates
from ..analysis.stability import Convergence
from ..analysis.validation import auroc, roc_points
from .plots import _save, mem_against_mem


def roc_curves(scores: dict[str, np.ndarray], flipped: np.ndarray, path=None) -> plt.Figure:
    """ROC curve of each signed score (higher = more suspicious) for finding the flipped labels."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ordered = sorted(scores, key=lambda k: -auroc(scores[k], flipped))
    for name in ordered:
        fpr, tpr = roc_points(scores[name], flipped)
        width = 2.5 if name == "mem" else 1.3
        ax.plot(fpr, tpr, lw=width, label=f"{name} (AUROC {auroc(scores[name], flipped):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false positive rate (clean labels flagged)")
    ax.set_ylabel("true positive rate (flipped labels found)")
    ax.set_title(f"Finding {int(np.sum(flipped)):,} flipped labels among {len(flipped):,}", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def convergence(curve: Convergence, path=None) -> plt.Figure:
    """mem's error and the agreement of two disjoint sets of models against their number, with the paper's bound.

    Left: the error of one estimate from t models, as observed (first t against last t models) and from the
    standard-error formula, over every example (solid) and over the examples whose outcome varies (dashed),
    with the square root of the paper's bound and a 1/sqrt(t) line up to all the models. Right: Spearman.
    """
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5.4))
    t = curve.models
    colors = {"observed_rms": "#2980b9", "mean_se": "#27ae60"}
    ax.plot(t, curve.bound_rms, "-", color="#c0392b", label="paper's bound (square root)")
    dashed = f"dashed: the same, over the {curve.examples_varying:,} examples whose outcome varies"
    for key, marker, label in (
        ("observed_rms", "s", "observed: first t vs last t models, rms/√2"),
        ("mean_se", "o", "mean standard error (formula)"),
    ):
        every, varying = getattr(curve, key), getattr(curve, f"{key}_varying")
        ok = np.isfinite(every)
        ax.plot(t[ok], every[ok], marker + "-", color=colors[key], label=label)
        ok = np.isfinite(varying)
        ax.plot(
            t[ok], varying[ok], marker + "--", color=colors[key], alpha=0.6, label=dashed if key == "mean_se" else None
        )
    reach = np.array([t[0], curve.total_models])
    ax.plot(reach, curve.mean_se[-1] * np.sqrt(t[-1] / reach), ":", color="gray", label="∝ 1/√t, up to all models")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"number of models t (of {curve.total_models:,})")
    ax.set_ylabel("rms error of a memorization estimate")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), fontsize=8)
    ax2.plot(t, curve.spearman, "o-", color="#2c3e50")
    ax2.set_xscale("log")
    ax2.set_xlabel("two disjoint sets of t models each")
    ax2.set_ylabel("Spearman of mem between them")
    fig.suptitle("Convergence of the memorization estimate", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def arch_scatter(a: Estimates, b: Estimates, names: tuple[str, str], consistency: dict, path=None) -> plt.Figure:
    """mem of one architecture against the other's, on the same training examples."""
    title = (
        f"Spearman {consistency['spearman_arch']:.3f}; top-mem Jaccard {consistency['top_mem_jaccard_arch']:.2f}\n"
        f"test accuracy gap {consistency['test_accuracy_gap_arch']:+.3f}"
    )
    labels = (f"mem, {names[0]}", f"mem, {names[1]}")
    return mem_against_mem(a.mem.value, b.mem.value, labels, title, [-0.2, 1], 5, path)


def proxy_curves(agreement: dict, path=None) -> plt.Figure:
    """Each score from t models against mem from the other half of the models (and, with flips, its AUROC)."""
    curve = agreement["curve"]
    names = [k[len("spearman_") :] for k in curve if k.startswith("spearman_")]
    flips = any(k.startswith("auroc_") for k in curve)
    fig, axes = plt.subplots(1, 2 if flips else 1, figsize=(11 if flips else 6, 4.2), squeeze=False)
    t = curve["models"]
    for name in names:
        style = {"lw": 2.8, "color": "#c0392b", "zorder": 5} if name == "mem" else {"lw": 1.3}
        axes[0, 0].plot(t, curve[f"spearman_{name}"], "o-", ms=3, label=name, **style)
        if flips:
            axes[0, 1].plot(t, curve[f"auroc_{name}"], "o-", ms=3, label=name, **style)
    axes[0, 0].set_ylabel(f"Spearman with mem from {curve['reference_models']} other models")
    axes[0, 0].set_title("Agreement with memorization", fontsize=10)
    if flips:
        axes[0, 1].set_ylabel("AUROC for the flipped labels")
        axes[0, 1].set_title("Finding the flips", fontsize=10)
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("models the score is computed from")
    axes[0, -1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
