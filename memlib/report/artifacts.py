"""What a run folder holds besides its store: the executed notebooks of the stages and the JSON files they write
(summary.json, validation.json, environment.json, ...), and how those are written and read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# The stages' notebooks, in the order they run; each executed copy lies in the run folder as <stage>.ipynb.
STAGES = ("01_train_subsets", "02_estimate", "03_filter_retrain", "04_figures", "05_validate")
# What stage 1 records of the machine, the libraries and the commit; the report's appendix shows it.
ENVIRONMENT_FILE = "environment.json"


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
    """Write a JSON artifact (values as _jsonable makes them), creating its folder; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    return path


def read_json(path: Path) -> dict:
    """Read a JSON artifact, saying which stage writes it if it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it (see results/README.md)")
    return json.loads(path.read_text())
