"""What a run folder holds: every file memlib writes in <results_dir>/<profile>, the stage that writes it, and how it
is written (atomically, and recorded in the folder's list of outputs) and read.

OUTPUTS is the one table of those files: the stages write only names it lists, results/README.md shows it
(`outputs_table`, a test keeps them equal), the report names its files from it, and `python -m memlib clean`
removes only what the folder's list (MANIFEST) records as written, the stores by their own spec, and the stages'
executed notebooks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..config import EPOCHS_RECORD
from ..files import write_atomic
from .figures import FIGURES

# The stages' notebooks, in the order they run; each executed copy lies in the run folder as <stage>.ipynb.
STAGES = ("01_train_subsets", "02_estimate", "03_filter_retrain", "04_figures", "05_validate")
# What stage 1 records of the machine, the libraries and the commit; the report's appendix shows it.
ENVIRONMENT_FILE = "environment.json"
# Stage 5's per-example table (scores.csv), which the report links.
SCORES_FILE = "scores.csv"
# Stage 2's split-half figures, which stages 4 and 5 read.
SPLIT_HALF_FILE = "split_half.json"
# The run folder's record of the files memlib wrote there, one name a line (write_output appends to it).
MANIFEST = ".memlib-outputs"


@dataclass(frozen=True)
class Output:
    """A file (or, ending in '/', a folder) under <results_dir>/<profile>: who writes it, what it holds, and when
    (empty: every study writes it)."""

    name: str
    by: str
    what: str
    when: str = ""


OUTPUTS: dict[str, Output] = {
    o.name: o
    for o in (
        Output("parameters.yaml", "`make reproduce`", "every parameter of the profile, as the notebooks got it"),
        Output(
            "store/",
            STAGES[0],
            "one row per subset model: mask, per-example correctness and true-label probability, the training "
            "signals of the peer scores (`signal_*`) and the top-10 class probabilities of every training example "
            "(`train_topk_*`), plus a completed-mask (resumable); `spec.json` records injected label flips under "
            "`meta.label_noise`",
        ),
        Output(
            ENVIRONMENT_FILE,
            STAGES[0],
            "what the run was made with: commit, Python and library versions, processor, training device",
        ),
        Output(EPOCHS_RECORD, STAGES[0], "the epochs chosen, and each pilot group's fit", "with `epochs: auto`"),
        Output("fit.json", STAGES[0], "whether the models fit what they train on (the paper's regime)"),
        Output("figures/training_overview.png", STAGES[0], "test accuracy per model and models per example"),
        Output("figures/fit.png", STAGES[0], "in-sample accuracy per example, clean and flipped"),
        Output(
            "estimates.npz",
            STAGES[1],
            "`tr_mem`, `tr_mem_se`, `tr_labels`, `tt_labels`, pairs at the fixed cut-offs as `tr_idx`, `tt_idx`, "
            "`infl`, `mem` (the authors' key names), the FDR-controlled pairs as `fdr_tr_idx`, `fdr_tt_idx`, "
            "`fdr_infl`, `fdr_infl_se`, `fdr_p`, `fdr_mem` (with `pair_fdr`, `pairs_tested`), all in the dataset's "
            "original order",
        ),
        Output(
            SPLIT_HALF_FILE,
            STAGES[1],
            "split-half stability: mem's Spearman, each pair set's Jaccard, and the `selection` they were made at",
        ),
        Output("figures/split_half.png", STAGES[1], "mem from one half of the models against the other"),
        Output("replication.json", STAGES[1], "the same split-half agreement from the first 16, 32, 64, ... models"),
        Output("figures/replication.png", STAGES[1], "each pair set's Jaccard and mem's Spearman against models"),
        Output(
            "comparison.json",
            STAGES[1],
            "agreement with the authors' published estimates",
            "with `published_pairs` or `published_cscores`",
        ),
        Output("retrain/", STAGES[2], "one row per retrained model (resumable)"),
        Output("utility.csv", STAGES[2], "marginal utility per condition (mean accuracy, 95% CI, paired drops)"),
        Output("utility_runs.csv", STAGES[2], "test accuracy of every retrained model"),
        *(Output(f"figures/{f.file}", STAGES[3], f.caption) for f in FIGURES.values()),
        Output("summary.json", STAGES[3], "the headline figures, each with its interval"),
        Output(
            "validation.json",
            STAGES[4],
            "recovery of injected flips by mem and each peer score (`auroc_*`, `ap_*`, `precision_at_k_*`), both "
            "pair sets and their split-half Jaccards, convergence, cross-architecture agreement",
        ),
        Output(
            "validation.npz",
            STAGES[4],
            "`tr_flipped`, `tr_labels_clean`, peer scores `tr_score_*`, `tr_cleanlab_issue`, the most influenced "
            "test example of each training example (`tr_top_tt_idx`, `tr_top_infl`, `tr_top_infl_se`)",
        ),
        Output(
            SCORES_FILE,
            STAGES[4],
            "one row per training example in the dataset's original order: its "
            "labels, mem ± se, every peer score, the test example it most influences, and its pairs",
        ),
        Output("scores.parquet", STAGES[4], "scores.csv as Parquet", "when pandas has a Parquet engine"),
        Output(
            "figures/roc_flips.png", STAGES[4], "ROC curves of each score for the flipped labels", "with `label_noise`"
        ),
        Output("figures/proxies.png", STAGES[4], "each cheap score against mem, by number of models"),
        Output("figures/convergence.png", STAGES[4], "error of mem against the number of models"),
        Output("figures/arch.png", STAGES[4], "mem of the two architectures", "with `compare_arch`"),
        *(Output(f"{s}.ipynb", "papermill (`make reproduce`)", "the executed notebook, with outputs") for s in STAGES),
        Output(
            "report.html",
            "`python -m memlib report`",
            "findings first, then the five executed notebooks in one page, code hidden",
        ),
        Output("lab/parameters.yaml", "`make lab`", "every value the lab's notebooks run with (yours to edit)"),
        *(Output(f"lab/{s}.ipynb", "`make lab`", "the notebook, prepared with the profile's values") for s in STAGES),
        Output(MANIFEST, "memlib", "the files memlib wrote here: `make clean-results` removes only those"),
    )
}


def outputs_table() -> str:
    """OUTPUTS as the Markdown table results/README.md shows."""
    rows = ["| path | written by | what |", "|---|---|---|"]
    for o in OUTPUTS.values():
        rows.append(f"| `{o.name}` | {o.by} | {o.what}{f' ({o.when})' if o.when else ''} |")
    return "\n".join(rows)


def output_name(path: Path) -> str:
    """The name in OUTPUTS that `path` ends with (the longest); ValueError if it is none of them."""
    parts = Path(path).parts
    for name in sorted(OUTPUTS, key=lambda n: -len(Path(n).parts)):
        k = len(Path(name).parts)
        if not name.endswith("/") and "/".join(parts[-k:]) == name:
            return name
    raise ValueError(f"{path} is not a file of memlib.report.artifacts.OUTPUTS: add it there first")


def write_output(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write one of OUTPUTS atomically (memlib.files.write_atomic) and record it in its run folder's MANIFEST."""
    path = Path(path)
    name = output_name(path)
    out_dir = path.parents[len(Path(name).parts) - 1]
    write_atomic(path, write)
    record(out_dir, name)
    return path


def record(out_dir: Path, name: str) -> None:
    """Add `name` to the run folder's list of files memlib wrote (one line, appended in one write)."""
    if name in written(out_dir):
        return
    fd = os.open(Path(out_dir) / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def written(out_dir: Path) -> set[str]:
    """The names the run folder's MANIFEST records as written by memlib (empty if there is none)."""
    try:
        return {line for line in (Path(out_dir) / MANIFEST).read_text().splitlines() if line}
    except (OSError, UnicodeDecodeError):
        return set()


def _jsonable(x: Any) -> Any:
    """`x` as plain JSON values: numpy numbers and arrays converted, floats rounded to 6 places, NaN and inf null."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else round(float(x), 6)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_json(obj: dict, path: Path) -> Path:
    """Write a JSON output of OUTPUTS (values as _jsonable makes them), atomically; returns its path."""
    text = json.dumps(_jsonable(obj), indent=2) + "\n"
    return write_output(path, lambda f: f.write(text.encode()))


def write_csv(table, path: Path) -> Path:
    """A pandas DataFrame as one of OUTPUTS' CSV files (no index column), atomically."""
    text = table.to_csv(index=False)
    return write_output(path, lambda f: f.write(text.encode()))


def write_parquet(table, path: Path) -> Path | None:
    """A pandas DataFrame as one of OUTPUTS' Parquet files, atomically; None (nothing written) where pandas has no
    Parquet engine (pyarrow or fastparquet) installed."""
    try:
        return write_output(path, lambda f: table.to_parquet(f, index=False))
    except ImportError:
        return None


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as one of OUTPUTS' PNG files, atomically."""
    return write_output(path, lambda f: fig.savefig(f, format="png", dpi=130, bbox_inches="tight"))


def read_json(path: Path) -> dict:
    """Read a JSON artifact, saying which stage writes it if it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it (see results/README.md)")
    return json.loads(path.read_text())
