"""memlib: a reproducible study of Feldman & Zhang (2020), what neural networks memorize and why.

Stages, and the modules that serve them (imports run one way, left to right):
config -> data -> models -> design -> store -> engine -> runner -> estimation -> experiments -> plots, report.
Stage 5 adds noise (label flips, applied by data.load_dataset), signals (recorded by the engine), peers and
validation (after estimation) and plots_validation. regime (whether the models fit what they train on, the
paper's regime) reads only arrays; runner, checks and report use it.

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
