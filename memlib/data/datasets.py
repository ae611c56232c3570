"""The table of datasets a profile can name, and load_dataset: the loader, its checks and the profile's label noise."""

from __future__ import annotations

from collections.abc import Callable

from ..config import Config, ConfigError, resolve
from .builtin import load_cifar_dataset, load_digits_dataset, load_idx_dataset
from .dataset import DataError, Dataset
from .noise import flips_for
from .own import OWN_DATA, load_imagefolder_dataset, load_npz_dataset, load_torchvision_dataset, load_user_dataset

# The dataset names a profile may give -> their loaders (memlib.data.builtin: digits, IDX files, CIFAR;
# memlib.data.own: your own data); torchvision:<Class> and path/to/file.py:function are read by loader_for.
LOADERS: dict[str, Callable[[Config | None], Dataset]] = {
    "digits": load_digits_dataset,
    "fashion-mnist": lambda cfg=None: load_idx_dataset("fashion-mnist", cfg),
    "mnist": lambda cfg=None: load_idx_dataset("mnist", cfg),
    "cifar10": lambda cfg=None: load_cifar_dataset("cifar10", cfg),
    "cifar100": lambda cfg=None: load_cifar_dataset("cifar100", cfg),
    "npz": load_npz_dataset,
    "imagefolder": load_imagefolder_dataset,
}


def loader_for(name: str) -> Callable[[Config], Dataset]:
    """The loader a `dataset` value names, or a ConfigError listing what exists."""
    if name in LOADERS:
        return LOADERS[name]
    if name.startswith("torchvision:"):
        return load_torchvision_dataset
    if ":" in name:
        return load_user_dataset
    raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(LOADERS))}; your own: {OWN_DATA}")


def load_dataset(cfg: Config) -> Dataset:
    """Load the dataset a config names, validated, with the config's label noise (if any) applied and its
    fingerprint computed."""
    loader = loader_for(cfg.dataset)
    if cfg.data_dir and not cfg.download and not resolve(cfg.data_dir).is_dir():
        raise DataError(
            f"data_dir: {resolve(cfg.data_dir)} does not exist. Fix the path (relative paths are taken from the "
            "project root), set data_dir: null to use the default places, or download: true to fetch the data there"
        )
    if cfg.data_path and cfg.dataset not in ("npz", "imagefolder") and not resolve(cfg.data_path).exists():
        raise DataError(f"data_path: {resolve(cfg.data_path)} does not exist")
    data = loader(cfg)
    data.validate()
    if cfg.label_noise > 0:
        data = data.with_flips(flips_for(cfg, data.y_train, data.num_classes))
    data.fingerprint  # noqa: B018  (computed once here, where the data is loaded: the noisy labels' hash)
    return data
