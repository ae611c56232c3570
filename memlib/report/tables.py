"""Tables for the notebooks (pandas Stylers): a DataFrame, labelled values, and stage 3's conditions with CIs."""

from __future__ import annotations

from typing import Any

import pandas as pd


def table(df: pd.DataFrame, digits: int = 3):
    """A DataFrame for display: no index column, floats to `digits` places, missing values as a dash."""
    return df.style.hide(axis="index").format(precision=digits, na_rep="—", thousands=",")


def key_values(values: dict[str, Any], header: str = "value"):
    """A two-column table of labels and values (each shown as given: no index, no float padding)."""
    frame = pd.DataFrame({"": list(values), header: ["—" if v is None else str(v) for v in values.values()]})
    return frame.style.hide(axis="index").set_properties(**{"text-align": "left"})


def utility_table(util: pd.DataFrame, pairs: bool = False):
    """Stage 3's conditions as a reader wants them: accuracy and change from full data, each with its 95% CI."""
    p = "pair_" if pairs else ""
    rows = util[util["kind"].isin(["full", "pairs", "pairs_random"])] if pairs else util

    def interval(x, lo, hi, scale=1.0, fmt=".3f"):
        if pd.isna(x):
            return "—"
        if pd.isna(lo) or pd.isna(hi):
            return format(scale * x, fmt)
        return f"{format(scale * x, fmt)} ({format(scale * lo, fmt)} to {format(scale * hi, fmt)})"

    frame = pd.DataFrame(
        {
            "condition": rows["condition"],
            "examples removed": rows["n_removed"].astype(int),
            "models": rows["models"].astype(int),
            "accuracy (95% CI)": [
                interval(a, lo, hi) for a, lo, hi in zip(rows[f"{p}test_acc"], rows[f"{p}ci_low"], rows[f"{p}ci_high"])
            ],
            "change from full data, points (95% CI)": [
                "—" if k == "full" else interval(-d, -hi, -lo, 100, "+.2f")
                for k, d, lo, hi in zip(
                    rows["kind"], rows[f"{p}drop"], rows[f"{p}drop_ci_low"], rows[f"{p}drop_ci_high"]
                )
            ],
        }
    )
    return frame.style.hide(axis="index")
