"""Preflight: everything that can be wrong with a config is found here, before any long work starts."""

from __future__ import annotations

import numpy as np

from .config import Config, ConfigError, display_path, resolve
from .data import Dataset, load_dataset
from .design import check_out_counts
from .engine import resolve_device
from .estimation import PUBLISHED_SOURCES
from .experiments import check_retrain_store
from .models import build_model, check_arch
from .runner import open_subset_store, subset_store_path
from .store import SPEC_FILE


def check(cfg: Config, data: Dataset | None = None) -> dict:
    """Validate a config against its data (loaded here if not given), architecture and any existing store.

    Checks every stage's store (stage 1's and stage 3's) against this config and data. Writes nothing.
    Raises ConfigError, DataError or StoreError with a message that says what to do.
    """
    import torch

    cfg.validate()
    resolve_device(cfg.device)  # a GPU named where there is none
    check_arch(cfg.arch, cfg.model_module)
    if data is None:
        data = load_dataset(cfg)
    c, h, _ = data.image_shape
    model = build_model(cfg, in_chans=c, img_size=h, num_classes=data.num_classes)
    with torch.no_grad():
        logits = model.eval()(torch.as_tensor(data.x_train[:2]))
    if tuple(logits.shape) != (2, data.num_classes):
        raise ValueError(f"{cfg.arch} returns {tuple(logits.shape)} for 2 images; expected (2, {data.num_classes})")
    out = check_out_counts(cfg, data.n_train)
    for name in ("published_pairs", "published_cscores"):
        path = getattr(cfg, name)
        if path is None:
            continue
        if cfg.dataset not in ("cifar10", "cifar100"):
            raise ConfigError(
                f"{name} is set, but published estimates exist only for CIFAR-10/100 (dataset: {cfg.dataset})"
            )
        if not resolve(path).is_file():
            raise ConfigError(f"{name}: {resolve(path)} does not exist. {PUBLISHED_SOURCES}")
    path = subset_store_path(cfg)
    done = 0
    if (path / SPEC_FILE).exists():  # an existing store must match this config and data, and be readable
        done = open_subset_store(cfg, data, create=False).done()
    retrained = check_retrain_store(cfg, data)  # stage 3's store too: same training config and data
    return {
        **data.describe(),
        "architecture": cfg.arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "models": cfg.num_models,
        "models out per example (min / mean)": f"{int(out.min())} / {float(np.mean(out)):.0f}",
        "models already finished": done,
        "retrained models already finished (stage 3)": retrained,
        "results": display_path(cfg.out_dir),
    }
