"""memlib: a reproducible study of Feldman & Zhang (2020), what neural networks memorize and why.

The packages, and the way imports run (tests/test_layout.py keeps it so):
- config, seeds, columns, files: the base every package may import (settings, seed streams, the signal columns,
  atomic writes);
- data -> train -> runs: datasets and label noise; subset design, models and the one training engine; the
  store, claims and the executors (local, SLURM) that train a design's groups into it;
- analysis -> report: estimators, stability, peer scores, validation and the regime, from arrays alone; then
  figures, summary, prose, tables and the HTML report;
- stages: train, estimate, utility, validate and check, the only package that imports across all of them
  (with __main__, the command line). A run's journey: row -> mask and seed (train.design) -> group of models
  (train.engine) -> device -> stored row (runs.group, runs.store).

The names below load their module on first use, so `import memlib` is light (a spawned worker imports it
before it can arm its parent-death signal; see memlib.runs.lifeline).
"""

import importlib
import warnings

# tqdm.auto (imported by timm's hub code) warns in notebooks without ipywidgets; memlib's bars are plain text.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"

_HOME = {
    "check": "stages.check",
    "Config": "config",
    "ConfigError": "config",
    "load_profile": "config",
    "DataError": "data.dataset",
    "Dataset": "data.dataset",
    "load_dataset": "data.datasets",
    "NearestNeighbourLearner": "train.engine",
    "NeuralLearner": "train.engine",
    "environment": "stages.train",
    "Estimates": "analysis.estimation",
    "compare_published": "analysis.published",
    "estimate": "stages.estimate",
    "high_influence_pairs": "analysis.estimation",
    "influence": "analysis.estimation",
    "memorization": "analysis.estimation",
    "convergence": "analysis.stability",
    "split_half": "stages.estimate",
    "replication": "stages.estimate",
    "store_fit": "stages.train",
    "marginal_utility": "stages.utility",
    "open_subset_store": "runs.subsets",
    "train_subsets": "stages.train",
    "Store": "runs.store",
    "StoreError": "runs.store",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
