"""memlib: a reproducible study of Feldman & Zhang (2020), what neural networks memorize and why.

Stages, and the modules that serve them (imports run one way, left to right):
config -> data -> models -> design -> store -> engine -> runner -> estimation -> experiments -> plots, report.
Stage 5 adds noise (label flips, applied by data.load_dataset), signals (recorded by the engine), peers and
validation (after estimation) and plots_validation.
"""

import warnings

# tqdm.auto (imported by timm's hub code) warns in notebooks without ipywidgets; memlib's bars are plain text.
warnings.filterwarnings("ignore", message="IProgress not found")

from .checks import check
from .config import Config, ConfigError, load_profile
from .data import DataError, Dataset, load_dataset
from .engine import NearestNeighbourLearner, NeuralLearner
from .estimation import (
    Estimates,
    compare_published,
    estimate,
    high_influence_pairs,
    influence,
    memorization,
    se_curve,
    split_half,
)
from .experiments import marginal_utility
from .runner import open_subset_store, train_subsets
from .store import Store, StoreError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "Estimates",
    "NearestNeighbourLearner",
    "NeuralLearner",
    "Store",
    "StoreError",
    "check",
    "compare_published",
    "estimate",
    "high_influence_pairs",
    "influence",
    "load_dataset",
    "load_profile",
    "marginal_utility",
    "memorization",
    "open_subset_store",
    "se_curve",
    "split_half",
    "train_subsets",
]
