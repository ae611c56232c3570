"""The findings in words: the caveats, the headline sentence and the (label, value) rows of a summary.json and a
validation.json, each number with its uncertainty. The notebooks show them; the report leads with them."""

from __future__ import annotations

import numpy as np

from ..analysis.regime import caveat as regime_caveat
from ..analysis.regime import summary_line as regime_line
from .summary import frac_key

# Below these, estimates are too noisy to mean anything (the smoke profile is far below both).
MIN_MODELS_OUT = 20
MIN_RETRAIN_MODELS = 5
# A pair set replicates when the sets selected from two halves of the models overlap at least this much (Jaccard).
MIN_PAIR_JACCARD = 0.5


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _pm(x: float | None, ci: list | None, fmt: str = ".3f", scale: float = 1.0) -> str:
    """`x (95% CI lo to hi)`, or `x` alone where there is no interval."""
    if x is None:
        return "n/a"
    text = format(scale * x, fmt)
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" (95% CI {format(scale * ci[0], fmt)} to {format(scale * ci[1], fmt)})"
    return text


def _change(drop: float | None, ci: list | None) -> str:
    """A drop in accuracy as a signed change in points, with its 95% CI."""
    if drop is None:
        return "n/a"
    flipped = [-ci[1], -ci[0]] if ci and None not in ci else None
    return _pm(-drop, flipped, "+.2f", 100)


def _main_threshold(s: dict) -> dict | None:
    util = s.get("utility") or []
    if not util:
        return None
    target = s["thresholds"]["mem"]
    return min(util, key=lambda u: (abs(u["threshold"] - target), -u["threshold"]))


def caveats(s: dict) -> list[str]:
    """Plain warnings about what the numbers of a summary.json can and cannot say; the regime's comes first."""
    notes = []
    regime = regime_caveat(s["fit"]) if s.get("fit") else None
    if regime:
        notes.append(regime)
    if s["min_models_out"] < MIN_MODELS_OUT:
        notes.append(
            f"These numbers mean nothing: each training example is left out of as few as {s['min_models_out']} "
            f"models (a memorization estimate carries a standard error of about ±{s['mean_mem_se']:.2f}). "
            "This run shows only that the pipeline works end to end; use a profile with more models for results."
        )
    notes += pair_caveats(s)
    retrain = s.get("retrain_models")
    if retrain is not None and retrain < MIN_RETRAIN_MODELS:
        clipped = " Intervals that ran past [0, 1] were clipped to it." if s.get("ci_clipped") else ""
        notes.append(
            f"Only {retrain} retrained models per condition: the 95% intervals of stage 3 are t-intervals over "
            f"{retrain} values, too few to be meaningful.{clipped}"
        )
    elif s.get("ci_clipped"):
        notes.append("Some 95% intervals of accuracy ran past [0, 1] and were clipped to it.")
    return notes


def _replicates(jaccard: float | None) -> bool:
    return jaccard is not None and jaccard == jaccard and jaccard >= MIN_PAIR_JACCARD


def pair_caveats(s: dict) -> list[str]:
    """What a pair count can say when its split-half Jaccard is below MIN_PAIR_JACCARD (nothing for a run too small
    to mean anything: the caveat about too few models says it already)."""
    if s["min_models_out"] < MIN_MODELS_OUT:
        return []
    th, notes = s["thresholds"], []
    out, total = s["min_models_out"], s["num_models"]
    se = 0.5 * (1 / out + 1 / max(total - out, 1)) ** 0.5
    controlled = s.get("pairs_controlled")
    jf, jc = s.get("pairs_fixed_jaccard"), s.get("pairs_controlled_jaccard")
    if s["high_influence_pairs"] and not _replicates(jf):
        instead = (
            f"The findings count only the {controlled:,} pairs selected with their false discovery rate controlled at "
            f"{s['pair_fdr']:g} by an exact test (split-half Jaccard {_num(jc, '.2f')}). "
            if controlled is not None
            else ""
        )
        notes.append(
            f"The {s['high_influence_pairs']:,} pairs at the paper's fixed cut-offs (infl ≥ {th['infl']:g}, mem ≥ "
            f"{th['mem']:g}) do not replicate: selected again from each half of the models, the two sets overlap "
            f"with Jaccard {_num(jf, '.2f')} (below {MIN_PAIR_JACCARD:g}), so most of them are chance. With each "
            f"example left out of as few as {out} of {total:,} models, an influence estimate carries a standard error "
            f"of up to about ±{se:.2f}, and a fixed cut-off over many candidate pairs lets noise through. {instead}"
            "For fixed-cut-off pairs that replicate, train more models (num_models)."
        )
    if controlled and not _replicates(jc):
        notes.append(
            f"The {controlled:,} pairs selected with their false discovery rate controlled replicate only in part: "
            f"selected again from each half of the models, the sets overlap with Jaccard {_num(jc, '.2f')} (below "
            f"{MIN_PAIR_JACCARD:g}). Each is unlikely to be chance, but which strong pairs pass depends on the models "
            "drawn: read them as a sample of the strong pairs, not all of them. More models (num_models) raise it."
        )
    return notes


def _pairs_sentence(s: dict) -> str:
    """The headline's pairs: the controlled set with its Jaccard first, the fixed cut-offs' count with its own."""
    n_fixed, j_fixed = f"{s['high_influence_pairs']:,}", _num(s.get("pairs_fixed_jaccard"), ".2f")
    if "pairs_controlled" not in s:
        return f" {n_fixed} high-influence pairs at the paper's fixed cut-offs (split-half Jaccard {j_fixed})"
    return (
        f" {s['pairs_controlled']:,} high-influence pairs with their false discovery rate controlled at "
        f"{s['pair_fdr']:g} (split-half Jaccard {_num(s.get('pairs_controlled_jaccard'), '.2f')}; {n_fixed} at the "
        f"paper's fixed cut-offs, Jaccard {j_fixed})"
    )


def _memorized(s: dict) -> str:
    """The fraction of training examples with mem >= the run's threshold, with its 95% CI."""
    key = frac_key(s["thresholds"]["mem"])
    return _pm(s[key], s.get(f"{key}_ci95"), ".1%")


def headline_sentence(s: dict) -> str:
    """The run's findings in a few sentences, each number with its uncertainty."""
    text = (
        f"Of {s['n_train']:,} {s.get('data_name', s['dataset'])} training examples, {_memorized(s)} are memorized "
        f"(mem ≥ {s['thresholds']['mem']:g}; each estimate ±{s['mean_mem_se']:.2g} on average, from "
        f"{s['num_models']:,} {s['arch']} models)."
    )
    u = _main_threshold(s)
    if u:
        text += (
            f" Removing the {u['n_removed']:,} examples with mem ≥ {u['threshold']:g} changes test accuracy by "
            f"{_change(u['drop_mem'], u['drop_mem_ci95'])} points, against "
            f"{_change(u['drop_random'], u['drop_random_ci95'])} for as many random examples."
        )
    p = s.get("pairs_removal") or {}
    text += _pairs_sentence(s)
    if p:
        text += (
            f"; removing their {s['pairs_distinct_train']:,} training examples moves accuracy on their test side "
            f"from {_pm(p['pair_test_acc_full'], p.get('pair_test_acc_full_ci95'))} to "
            f"{_pm(p['pair_test_acc_sources_removed'], p.get('pair_test_acc_sources_removed_ci95'))}."
        )
    else:
        text += "."
    return text


def headline(s: dict) -> list[tuple[str, str]]:
    """Readable (label, value) rows of a summary.json, each number with its uncertainty."""
    th = s["thresholds"]
    rows = [
        ("data", f"{s.get('data_name', s['dataset'])}: {s['n_train']:,} train / {s['n_test']:,} test examples"),
        *([("regime", regime_line(s["fit"]))] if s.get("fit") else []),
        (
            "models",
            f"{s['num_models']:,} × {s['arch']} on {s['subset_ratio']:.0%} subsets ({s.get('mask_design', 'random')} "
            f"mask design){_epochs(s)}",
        ),
        (
            "test accuracy",
            f"{_pm(s['test_acc_full_data'], s.get('test_acc_full_data_ci95'))} trained on all data "
            f"({s.get('retrain_models', '?')} models); {s['test_acc_subset_models']:.3f}"
            + (f" ± {s['test_acc_subset_models_sd']:.3f} (sd)" if "test_acc_subset_models_sd" in s else "")
            + " on subsets",
        ),
        (
            "memorization",
            f"{_memorized(s)} of training examples have mem ≥ {th['mem']:g} (each left out of at least "
            f"{s['min_models_out']} models; mean se {s['mean_mem_se']:.3f})",
        ),
        *_pair_rows(s),
    ]
    rows += _removal_rows(s)
    sh = s.get("split_half", {})
    if sh:
        rows.append(
            (
                "split-half stability",
                f"Spearman of mem {_num(sh['mem_spearman'], '.3f')}; pairs Jaccard "
                + (
                    f"{_num(sh.get('pairs_jaccard_fdr'), '.2f')} (FDR-controlled), "
                    if "pairs_jaccard_fdr" in sh
                    else ""
                )
                + f"{_num(sh['pairs_jaccard_fixed'], '.2f')} (fixed cut-offs) "
                + f"({sh['models_per_half'][0]} models per half)",
            )
        )
    return rows


def _epochs(s: dict) -> str:
    """', 40 epochs' and, where `epochs: auto` chose them, how: each pilot's epochs and whether it fitted."""
    if "epochs" not in s:
        return ""
    auto = s.get("epochs_auto")
    if not auto:
        return f", {s['epochs']} epochs"
    tried = ", ".join(f"{p['epochs']} ({'fits' if p['in_regime'] else 'does not fit'})" for p in auto["pilots"])
    return f", {s['epochs']} epochs (epochs: auto; pilot groups of {tried})"


def _pair_rows(s: dict) -> list[tuple[str, str]]:
    """headline's rows of the pair sets: the controlled one first (the one stage 3 removes), each with its Jaccard."""
    th = s["thresholds"]
    fixed = (
        "pairs at fixed cut-offs" if "pairs_controlled" in s else "high-influence pairs",
        f"{s['high_influence_pairs']:,} (infl ≥ {th['infl']:g}, mem ≥ {th['mem']:g}, same class); split-half Jaccard "
        f"{_num(s.get('pairs_fixed_jaccard'), '.2f')}",
    )
    if "pairs_controlled" not in s:
        return [fixed]
    controlled = (
        "high-influence pairs",
        f"{s['pairs_controlled']:,} with false discovery rate ≤ {s['pair_fdr']:g} (exact test of infl > "
        f"{th['infl']:g} over {s['pairs_tested']:,} same-class candidates with mem ≥ {th['mem']:g}): "
        f"{s['pairs_distinct_train']:,} train and {s['pairs_distinct_test']:,} test examples; split-half Jaccard "
        f"{_num(s.get('pairs_controlled_jaccard'), '.2f')}",
    )
    return [controlled, fixed]


def _removal_rows(s: dict) -> list[tuple[str, str]]:
    """headline's rows of stage 3: each removal of memorized examples, and of the pairs' train side."""
    rows = []
    for u in s.get("utility", []):
        rows.append(
            (
                f"remove mem ≥ {u['threshold']:g}",
                f"{u['n_removed']} examples: test accuracy {_change(u['drop_mem'], u.get('drop_mem_ci95'))} points; "
                f"as many random: {_change(u['drop_random'], u.get('drop_random_ci95'))}",
            )
        )
    p = s.get("pairs_removal") or {}
    if p:
        rows.append(
            (
                "remove the pairs' train side",
                f"accuracy on their test side {_pm(p['pair_test_acc_full'], p.get('pair_test_acc_full_ci95'))} → "
                f"{_pm(p['pair_test_acc_sources_removed'], p.get('pair_test_acc_sources_removed_ci95'))} "
                f"(as many random removed: "
                f"{_pm(p['pair_test_acc_random_removed'], p.get('pair_test_acc_random_removed_ci95'))})",
            )
        )
    return rows


def validation_rows(v: dict) -> list[tuple[str, str]]:
    """Readable (label, value) rows of a validation.json (stage 5): flips found, controlled pairs, architectures."""
    rows = []
    if v.get("flipped"):
        scores = {k[len("auroc_") :]: x for k, x in v.items() if k.startswith("auroc_") and k != "auroc_mem"}
        best = max(scores, key=scores.get) if scores else None
        rows.append(
            (
                "finding flipped labels",
                f"{v['flipped']:,} flips: AUROC of mem {_num(v['auroc_mem'], '.3f')} (precision at k "
                f"{_num(v['precision_at_k_mem'], '.2f')})"
                + (
                    f"; best peer score {best.replace('_', ' ')} {_num(scores[best], '.3f')} (precision at k "
                    f"{_num(v.get(f'precision_at_k_{best}'), '.2f')})"
                    if best
                    else ""
                ),
            )
        )
    proxy = proxy_row(v)
    if proxy:
        rows.append(proxy)
    if "pairs_fdr" in v:
        rows.append(
            (
                f"pairs, FDR ≤ {v['pair_fdr']:g}",
                f"{v['pairs_fdr']:,} of the {v['pairs_fixed']:,} pairs at the fixed cut-offs; split-half Jaccard "
                f"{_num(v['pairs_jaccard_fdr'], '.2f')} (fixed cut-offs: {_num(v['pairs_jaccard_fixed'], '.2f')})",
            )
        )
    if "spearman_arch" in v:
        rows.append(
            (
                f"{v['arch_a']} vs {v['arch_b']}",
                f"Spearman of mem {_num(v['spearman_arch'], '.3f')}; Jaccard of the top {v['top_mem_fraction']:.0%} "
                f"by mem {_num(v['top_mem_jaccard_arch'], '.2f')}, of the pairs {_num(v['pairs_jaccard_arch'], '.2f')} "
                f"({v['pairs_a']:,} vs {v['pairs_b']:,}); mean mem difference "
                f"{_num(v['mean_mem_difference_arch'], '+.3f')} beside a test accuracy gap of "
                f"{_num(v['test_accuracy_gap_arch'], '+.3f')}",
            )
        )
    return rows


def proxy_row(v: dict, models: int = 8) -> tuple[str, str] | None:
    """The proxy comparison in one row: the best peer's agreement with mem, and both from `models` models."""
    spearman = {k[len("proxy_spearman_") :]: x for k, x in v.items() if k.startswith("proxy_spearman_")}
    spearman = {k: x for k, x in spearman.items() if x is not None and np.isfinite(x)}
    if not spearman:
        return None
    best = max(spearman, key=spearman.get)
    text = (
        f"best proxy {best.replace('_', ' ')}: Spearman with mem {_num(spearman[best], '.3f')} (Pearson "
        f"{_num(v.get(f'proxy_pearson_{best}'), '.3f')}), same models"
    )
    t = v.get("proxy_curve_models") or []
    if t:
        i = min(range(len(t)), key=lambda j: abs(t[j] - models))
        near = v.get(f"proxy_curve_spearman_{best}", [None] * len(t))[i]
        own = v.get("proxy_curve_spearman_mem", [None] * len(t))[i]
        at = {k: (v.get(f"proxy_curve_spearman_{k}") or [None] * len(t))[i] for k in spearman}
        top = max(spearman, key=lambda k: at[k] if at[k] is not None and np.isfinite(at[k]) else -1)
        top_value = v[f"proxy_curve_spearman_{top}"][i]
        text += (
            f"; from {t[i]} models, against mem from {v['proxy_curve_reference_models']} others: "
            f"{best.replace('_', ' ')} {_num(near, '.3f')}, mem itself {_num(own, '.3f')}"
            + (f", best {top.replace('_', ' ')} {_num(top_value, '.3f')}" if top != best else "")
        )
    return ("cheap proxies of mem", text)
