"""The paper's regime: do the models fit what they train on?

Feldman & Zhang's mem(i) is the accuracy on i of the models that trained on it minus that of the models that
did not. It measures memorization only where the models fit their training sets (the paper's reach 95-100%
training accuracy and usually fit their mislabeled examples): a model that never fits a hard or mislabeled
example it trained on scores it as it would an unseen one, so mem comes out near 0, however many models are
averaged. This module reads the regime off the stage-1 arrays: the in-sample accuracy of every model (on the
examples it trained on, after training), overall, per class and on flipped labels, beside held-out accuracy.
"""

from __future__ import annotations

import numpy as np

from .peers import in_model_means

# What the caveat tells a user to change, in the order worth trying (measured in docs/regime.md).
ADVICE = (
    "train until the models fit their subsets: raise `epochs` and set `weight_decay: 0` (the fashion-mnist "
    "showcase went from 20 epochs with weight decay 5e-4 to 50 without, and from 52% to 99% of its flips fit; "
    "docs/regime.md), or widen the model (`width`); then rerun under a new profile name or after "
    "`make clean-results` (the store's training fingerprint changes)"
)


def in_sample_accuracy(masks: np.ndarray, train_correct: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Per model, the fraction of its own training subset it classifies correctly after training."""
    out = np.empty(len(masks))
    for s in range(0, len(masks), chunk):
        m = np.asarray(masks[s : s + chunk], dtype=bool)
        c = np.asarray(train_correct[s : s + chunk], dtype=bool)
        out[s : s + chunk] = (m & c).sum(1) / np.maximum(m.sum(1), 1)
    return out


def in_sample_by_example(masks: np.ndarray, train_correct: np.ndarray) -> np.ndarray:
    """Per training example, the fraction of the models that trained on it that classify it correctly."""
    return in_model_means(masks, train_correct)


def fit_report(
    masks: np.ndarray,
    train_correct: np.ndarray,
    test_correct: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    fit_target: float,
    flipped: np.ndarray | None = None,
) -> dict:
    """In-sample accuracy (overall, per class, clean and flipped examples) beside held-out accuracy.

    `labels` are the labels the models trained on (flipped ones included); per class means per given label.
    Every in-sample figure is a mean over (model, example) pairs in which the model trained on the example.
    `in_regime` is whether clean in-sample accuracy reaches `fit_target` and, where labels were flipped, the
    flipped examples' in-sample accuracy does too, less 0.04 (the paper's models "usually" fit them).
    """
    per_model = in_sample_accuracy(masks, train_correct)
    per_example = in_sample_by_example(masks, train_correct)
    in_counts = np.asarray(masks, dtype=bool).sum(0)
    flipped = np.zeros(len(per_example), dtype=bool) if flipped is None else np.asarray(flipped, dtype=bool)

    def weighted(sel: np.ndarray) -> float | None:
        w = in_counts[sel]
        return float(np.nansum(per_example[sel] * w) / w.sum()) if w.sum() else None

    clean = weighted(~flipped)
    flips = weighted(flipped) if flipped.any() else None
    held_out = float(np.asarray(test_correct, dtype=bool).mean())
    per_class = {name: weighted((labels == c) & ~flipped) for c, name in enumerate(classes)}
    flip_target = max(0.0, fit_target - 0.04)
    in_regime = clean is not None and clean >= fit_target and (flips is None or flips >= flip_target)
    worst = sorted((v, k) for k, v in per_class.items() if v is not None)[:3]
    return {
        "fit_target": fit_target,
        "fit_target_flipped": flip_target if flips is not None else None,
        "in_regime": bool(in_regime),
        "in_sample_acc": float(np.mean(per_model)),
        "in_sample_acc_min_model": float(np.min(per_model)),
        "in_sample_acc_clean": clean,
        "in_sample_acc_flipped": flips,
        "flipped": int(flipped.sum()),
        "held_out_acc": held_out,
        "in_sample_acc_per_class": per_class,
        "worst_classes": [k for _, k in worst],
        "examples_never_fit": int(np.sum(per_example[~flipped] < 0.5)),
    }


def caveat(fit: dict) -> str | None:
    """The warning a report leads with when its models do not fit what they train on (None when they do)."""
    if fit.get("in_regime", True):
        return None
    clean, flips = fit.get("in_sample_acc_clean"), fit.get("in_sample_acc_flipped")
    parts = [f"{clean:.1%} of their clean training examples" if clean is not None else None]
    if flips is not None:
        parts.append(f"{flips:.1%} of their flipped ones")
    said = " and ".join(p for p in parts if p)
    return (
        f"Not the paper's regime: these models fit only {said} (target {fit['fit_target']:.0%}"
        + (f", {fit['fit_target_flipped']:.0%} for flips" if flips is not None else "")
        + "). Feldman & Zhang's estimator measures memorization in models that fit their training sets; a "
        "model that never fits an example it trained on scores it as if unseen, so these estimates understate "
        f"memorization (most for the hardest and mislabeled examples). To reach the regime, {ADVICE}."
    )


def summary_line(fit: dict) -> str:
    """One line for a log or a table: in-sample accuracy (clean, flipped) against held-out accuracy."""
    text = f"in-sample accuracy {fit['in_sample_acc_clean']:.4f} on clean examples"
    if fit.get("in_sample_acc_flipped") is not None:
        text += f", {fit['in_sample_acc_flipped']:.4f} on the {fit['flipped']:,} flipped ones"
    text += f"; held-out {fit['held_out_acc']:.4f}"
    verdict = "in the paper's regime" if fit["in_regime"] else "NOT in the paper's regime"
    return f"{text} ({verdict}: target {fit['fit_target']:g})"
