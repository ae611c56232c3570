"""Headline figures (summary.json) and the rendered HTML report of the executed notebooks."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import Config, project_root
from .estimation import Estimates

STAGES = ("01_train_subsets", "02_estimate", "03_filter_retrain", "04_figures", "05_validate")
ENVIRONMENT_FILE = "environment.json"
STAGE_TITLES = {
    "01_train_subsets": "Stage 1: training models on random subsets",
    "02_estimate": "Stage 2: memorization and influence estimates",
    "03_filter_retrain": "Stage 3: filtering and retraining (marginal utility)",
    "04_figures": "Stage 4: figures and headline numbers",
    "05_validate": "Stage 5: validating the estimates (label noise, peer scores, controlled pairs)",
}


def _jsonable(x: Any) -> Any:
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


def summarize(
    cfg: Config, est: Estimates, utility: pd.DataFrame, split: dict, subset_test_acc: np.ndarray
) -> dict[str, Any]:
    """The headline figures of a run, all computed from its artifacts."""
    full = utility[utility["kind"] == "full"].iloc[0]
    util = []
    for theta in sorted(utility.loc[utility["kind"] == "mem", "threshold"].unique()):
        mem_row = utility[(utility["kind"] == "mem") & (utility["threshold"] == theta)].iloc[0]
        rnd_row = utility[(utility["kind"] == "random") & (utility["threshold"] == theta)].iloc[0]
        util.append(
            {
                "threshold": theta,
                "n_removed": mem_row["n_removed"],
                "drop_mem": mem_row["drop"],
                "drop_random": rnd_row["drop"],
                "drop_mem_minus_random": mem_row["drop"] - rnd_row["drop"],
            }
        )
    pairs = {}
    if (utility["kind"] == "pairs").any():
        prow = utility[utility["kind"] == "pairs"].iloc[0]
        rrow = utility[utility["kind"] == "pairs_random"].iloc[0]
        pairs = {
            "pair_test_acc_full": full["pair_test_acc"],
            "pair_test_acc_sources_removed": prow["pair_test_acc"],
            "pair_test_acc_random_removed": rrow["pair_test_acc"],
        }
    mem = est.mem.value
    return _jsonable(
        {
            "profile": cfg.profile,
            "dataset": cfg.dataset,
            "arch": cfg.arch,
            "num_models": est.num_models,
            "subset_ratio": cfg.subset_ratio,
            "mask_design": cfg.mask_design,
            "n_train": len(mem),
            "n_test": len(est.tt_labels),
            "test_acc_subset_models": float(np.mean(subset_test_acc)),
            "test_acc_full_data": full["test_acc"],
            "test_acc_full_data_ci95": [full["ci_low"], full["ci_high"]],
            "frac_mem_ge_0.25": float(np.mean(mem >= 0.25)),
            f"frac_mem_ge_{cfg.mem_threshold:g}": float(np.mean(mem >= cfg.mem_threshold)),
            "mean_mem": float(np.mean(mem)),
            "mean_mem_se": float(np.nanmean(est.mem.se)),
            "min_models_out": int(np.min(est.mem.n_out)),
            "high_influence_pairs": len(est.pairs),
            "pairs_distinct_train": int(len(np.unique(est.pairs.tr_pos))),
            "pairs_distinct_test": int(len(np.unique(est.pairs.tt_pos))),
            "thresholds": {"infl": cfg.infl_threshold, "mem": cfg.mem_threshold},
            "utility": util,
            "pairs_removal": pairs,
            "split_half": {k: v for k, v in split.items() if not isinstance(v, np.ndarray)},
        }
    )


def _num(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def headline(s: dict) -> list[tuple[str, str]]:
    """Readable (label, value) rows of a summary.json, for the report's first table."""
    th = s["thresholds"]
    rows = [
        ("data", f"{s['dataset']}: {s['n_train']:,} train / {s['n_test']:,} test examples"),
        (
            "models",
            f"{s['num_models']:,} × {s['arch']} on {s['subset_ratio']:.0%} subsets ({s.get('mask_design', 'random')} "
            "mask design)",
        ),
        (
            "test accuracy",
            f"{s['test_acc_full_data']:.4f} trained on all data; {s['test_acc_subset_models']:.4f} on subsets",
        ),
        (
            "memorization",
            f"{s['frac_mem_ge_0.25']:.1%} of training examples have mem ≥ 0.25 "
            f"(each left out of at least {s['min_models_out']} models)",
        ),
        (
            "high-influence pairs",
            f"{s['high_influence_pairs']} pairs: {s['pairs_distinct_train']} train and {s['pairs_distinct_test']} "
            f"test examples (infl ≥ {th['infl']}, mem ≥ {th['mem']})",
        ),
    ]
    for u in s.get("utility", []):
        mem_change, rnd_change = -100 * u["drop_mem"], -100 * u["drop_random"]
        rows.append(
            (
                f"remove mem ≥ {u['threshold']:g}",
                f"{u['n_removed']} examples: test accuracy {mem_change:+.2f} points; as many random: {rnd_change:+.2f}",
            )
        )
    p = s.get("pairs_removal") or {}
    if p:
        full, gone, rnd = p["pair_test_acc_full"], p["pair_test_acc_sources_removed"], p["pair_test_acc_random_removed"]
        rows.append(
            (
                "remove the pairs' train side",
                f"accuracy on their test side {full:.3f} → {gone:.3f} (as many random removed: {rnd:.3f})",
            )
        )
    sh = s.get("split_half", {})
    if sh:
        rows.append(
            (
                "split-half stability",
                f"Spearman of mem {_num(sh['mem_spearman'], '.3f')}; pairs Jaccard {_num(sh['pairs_jaccard'], '.2f')} "
                f"({sh['models_per_half'][0]} models per half)",
            )
        )
    return rows


def write_json(obj: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return path


def git_commit() -> str:
    """The checkout's commit (with '+dirty' if it has uncommitted changes), or 'unknown'."""
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def environment(device: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """What the run was made with: commit, library versions, processor, and the device and precision that train."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from .engine import resolve_device, resolve_precision

    versions = {}
    for pkg in ("torch", "torchvision", "timm", "numpy", "scipy", "scikit-learn", "papermill"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    dev = resolve_device(device)
    accelerator = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (CPU)"
    return {
        "commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "training_device": str(dev),
        "training_precision": resolve_precision(precision, dev)
        + (" (bf16 autocast, fp32 master weights)" if resolve_precision(precision, dev) == "bf16" else ""),
        "accelerator": accelerator,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "versions": versions,
    }


def render_report(out_dir: Path, title: str | None = None) -> Path:
    """Concatenate the executed stage notebooks in `out_dir` into one HTML page, code hidden, figures inline."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    out_dir = Path(out_dir)
    missing = [s for s in STAGES if not (out_dir / f"{s}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"{out_dir} lacks executed notebooks {missing}: run `make reproduce` first")
    cells = []
    durations = []
    for stage in STAGES:
        nb = nbformat.read(out_dir / f"{stage}.ipynb", as_version=4)
        pm = nb.metadata.get("papermill", {})
        durations.append((STAGE_TITLES[stage], pm.get("duration"), pm.get("exception")))
        cells.append(nbformat.v4.new_markdown_cell(f"# {STAGE_TITLES[stage]}\n*Notebook: `{stage}.ipynb`*"))
        for cell in nb.cells:
            if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
                continue  # each notebook's own title; the stage heading replaces it
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.get("outputs", []) if not _is_noise(o)]
            cells.append(cell)
    summary_file = out_dir / "summary.json"
    header = [f"# {title or 'Memorization and influence: ' + out_dir.name}"]
    header.append(
        f"Rendered {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from commit `{git_commit()}`. "
        "Each section below is one executed notebook; code is hidden, and the notebooks themselves "
        f"(with code) sit beside this report in `{out_dir}`."
    )
    rows = "\n".join(
        f"| {name} | {'' if d is None else f'{d:.0f} s'} | {'failed' if exc else 'ok'} |" for name, d, exc in durations
    )
    header.append("| stage | wall time | status |\n|---|---|---|\n" + rows)
    if summary_file.exists():
        rows = "\n".join(f"| {k} | {v} |" for k, v in headline(json.loads(summary_file.read_text())))
        header.append("## Headline figures\n\n| | |\n|---|---|\n" + rows + "\n\nAll of them, in `summary.json`.")
    env_file = out_dir / ENVIRONMENT_FILE
    if env_file.exists():
        env = json.loads(env_file.read_text())
        made = [
            ("commit", f"`{env['commit']}`"),
            ("training device", f"{env['training_device']} · accelerator: {env['accelerator']}"),
            ("processor", f"{env['cpu_cores']} cores · {env['platform']} · Python {env['python']}"),
            ("libraries", " · ".join(f"{k} {v}" for k, v in env["versions"].items())),
        ]
        rows = "\n".join(f"| {k} | {v} |" for k, v in made)
        header.append(f"## Made with\n\n| | |\n|---|---|\n{rows}\n\nAs recorded by stage 1, in `{ENVIRONMENT_FILE}`.")
    report = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("\n\n".join(header)), *cells])
    report.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    report, _ = CoalesceStreamsPreprocessor().preprocess(report, {})
    body, _ = exporter.from_notebook_node(report)
    path = out_dir / "report.html"
    path.write_text(body)
    return path


def _is_noise(output: dict) -> bool:
    """Stream output that is only warnings from libraries, not worth a reviewer's attention."""
    return (
        output.get("output_type") == "stream" and output.get("name") == "stderr" and "Warning" in output.get("text", "")
    )


def read_json(path: Path) -> dict:
    """Read a JSON artifact, saying which stage writes it if it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it (see results/README.md)")
    return json.loads(path.read_text())
