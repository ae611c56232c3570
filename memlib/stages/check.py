"""Preflight: everything that can be wrong with a config is found here, before any long work starts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..analysis.published import PUBLISHED_SOURCES
from ..analysis.regime import summary_line
from ..config import Config, ConfigError, display_path, profile_argument, resolve
from ..data import dataset as data_module
from ..data.dataset import Dataset
from ..data.datasets import load_dataset
from ..data.own import ExitCalled, exits_are_errors, user_code_error
from ..runs.store import SPEC_FILE, refuse_unspecified
from ..runs.subsets import open_subset_store, subset_store_path, subset_store_spec
from ..train.design import check_out_counts
from ..train.engine import resolve_device
from ..train.models import build_model, check_arch, model_kwargs
from .train import store_fit
from .utility import check_retrain_store


def check(cfg: Config, data: Dataset | None = None) -> dict:
    """Validate a config against its data (loaded here if not given), architecture and any existing store.

    Checks every stage's store (stage 1's and stage 3's) against this config and data. Writes nothing.
    Raises ConfigError, DataError or StoreError with a message that says what to do.
    """
    cfg.validate()
    resolve_device(cfg.device)  # a GPU named where there is none
    check_arch(cfg.arch, cfg.model_module)
    if cfg.compare_arch:
        check_arch(cfg.compare_arch, cfg.model_module)
    writable = check_results_dir(cfg)
    if data is None:
        data = load_dataset(cfg)
    check_design_fits(cfg, data)
    parameters = check_model_runs(cfg, data)
    out = check_out_counts(cfg, data.n_train)
    check_published(cfg)
    path = subset_store_path(cfg)
    done, regime = 0, "no finished models yet (stage 1 says after its first group)"
    if (path / SPEC_FILE).exists():  # an existing store must match this config and data, and every row verify
        store = open_subset_store(cfg, data, create=False)
        done = store.done()
        if done:  # do the finished models fit what they trained on (the paper's regime)?
            regime = f"{done} finished models: {summary_line(store_fit(cfg, store, data))}"
    else:
        refuse_unspecified(
            path, profile_argument(cfg.profile)
        )  # finished work without its spec is an error, never "0 finished"
        check_disk_fits(cfg, data)
    retrained = check_retrain_store(cfg, data)  # stage 3's store too: same training config and data
    return {
        **data.describe(),
        "architecture": cfg.arch,
        "parameters": parameters,
        "models": cfg.num_models,
        "models out per example (min / mean)": f"{int(out.min())} / {float(np.mean(out)):.0f}",
        "models already finished": done,
        "regime": regime,
        "retrained models already finished (stage 3)": retrained,
        "results": display_path(cfg.out_dir)
        + ("" if writable else " (read-only: every model is finished, so the stages that only read can run)"),
    }


def check_model_runs(cfg: Config, data: Dataset) -> int:
    """The architecture builds for this data, has parameters, fits in memory and maps 2 images to finite logits
    (2, classes); returns its size."""
    import torch

    c, h, w = data.image_shape
    with torch.device("meta"):  # parameters counted without allocating them
        meta_model = _build(cfg, data)
    parameters = sum(p.numel() for p in meta_model.parameters())
    if parameters == 0:
        raise ConfigError(
            f"{_whose(cfg)} has no parameters to train, so training would learn nothing (and fail). Give it at "
            "least one layer with weights (e.g. torch.nn.Linear), or choose another architecture"
        )
    check_model_fits(cfg, parameters)
    model = _build(cfg, data)
    try:
        with torch.no_grad(), exits_are_errors():
            logits = model.eval()(torch.as_tensor(data.x_train[:2]))
    except Exception as exc:  # timm models raise many kinds of error on an input they cannot take
        mine = _user_model_error(cfg, exc, f"its forward pass on 2 images of {c}x{h}x{w}")
        if mine is not None:
            raise mine from None
        raise ConfigError(
            f"arch {cfg.arch!r} does not accept {c}x{h}x{w} images of {cfg.dataset} ({type(exc).__name__}: {exc}). "
            + _shape_advice(cfg, h, w)
        ) from exc
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(
            f"{_whose(cfg)} returned {type(logits).__name__} for 2 images of {c}x{h}x{w}, not one tensor of logits "
            f"(2, {data.num_classes}): make its forward return the logits alone"
        )
    if tuple(logits.shape) != (2, data.num_classes):
        raise ConfigError(
            f"{cfg.arch} returns {tuple(logits.shape)} for 2 images; expected (2, {data.num_classes}): choose another"
            " architecture"
        )
    if not torch.isfinite(logits).all():
        raise ConfigError(
            f"{_whose(cfg)} returns NaN or inf for 2 images of {c}x{h}x{w} before any training: every estimate "
            "would be meaningless. Fix its forward pass (a division by zero, a log of zero, an uninitialized weight)"
        )
    return parameters


def _shape_advice(cfg: Config, h: int, w: int) -> str:
    """Which of memlib's architectures take images of this shape."""
    if h != w:
        return (
            f"These images are not square ({h}x{w}): memlib's mem_mlp and mem_mlp_mnist are built for square "
            "images (img_size x img_size); mem_cnn and mem_resnet18 take any shape (arch: mem_cnn), or resize the "
            "images to a square"
        )
    return "Choose an architecture for this image size (memlib's mem_mlp, mem_mlp_mnist, mem_cnn and mem_resnet18 do)."


def _whose(cfg: Config) -> str:
    """The architecture as a message names it: the user's own with its file, or memlib's or timm's by name."""
    file = _user_file(cfg)
    return f"your architecture {cfg.arch} in {display_path(file)}" if file else f"arch {cfg.arch!r}"


def check_published(cfg: Config) -> None:
    """The published estimates a profile names exist, and exist for its dataset."""
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


def _build(cfg: Config, data: Dataset):
    import timm
    import torch

    c, h, w = data.image_shape
    try:
        with exits_are_errors():
            model = build_model(cfg, in_chans=c, img_size=h, num_classes=data.num_classes)
    except ConfigError:
        raise
    except Exception as exc:
        if _user_file(cfg) is not None and not isinstance(exc, ExitCalled):  # did their function return a model?
            try:
                with exits_are_errors():
                    made = timm.models.model_entrypoint(cfg.arch)(
                        num_classes=data.num_classes, in_chans=c, **model_kwargs(cfg, h)
                    )
            except Exception:
                made = None
            if made is not None and not isinstance(made, torch.nn.Module):
                raise _not_a_module(cfg, made) from None
        mine = _user_model_error(cfg, exc, f"built for {c}x{h}x{w} images and {data.num_classes} classes")
        if mine is not None:
            raise mine from None
        raise ConfigError(
            f"arch {cfg.arch!r} cannot be built for {c}x{h}x{w} images of {cfg.dataset} ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise _not_a_module(cfg, model)
    return model


def _not_a_module(cfg: Config, made: object) -> ConfigError:
    return ConfigError(
        f"{_whose(cfg)} returned {type(made).__name__}, not a torch.nn.Module: its function must return the model "
        "itself (e.g. `return MyNet(num_classes)`, an nn.Module whose forward maps images to logits)"
    )


def _user_model_error(cfg: Config, exc: BaseException, context: str) -> ConfigError | None:
    """The error for the user's own architecture failing (their file and line), or None if it is not theirs."""
    file = _user_file(cfg)
    if file is None:
        return None
    return ConfigError(user_code_error(exc, f"architecture {cfg.arch} in {display_path(file)}", file) + f" ({context})")


def _user_file(cfg: Config) -> str | None:
    """The file of the architecture's entry function, if it is the user's model_module (not memlib or timm)."""
    if not cfg.model_module:
        return None
    import timm

    try:
        file = timm.models.model_entrypoint(cfg.arch).__code__.co_filename
    except (RuntimeError, AttributeError):
        return None
    return file if Path(file).resolve() == resolve(cfg.model_module).resolve() else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_design_fits(cfg: Config, data: Dataset) -> None:
    """ConfigError, before any mask is built, if num_models x n masks cannot fit in memory."""
    n = data.n_train
    need = 2 * cfg.num_models * n  # the masks (bools) and one copy while they are stacked
    if cfg.mask_design == "balanced":
        need += cfg.num_models * min(n, 4096) * 12  # a chunk's random keys (float32) and their order (int64)
    free = data_module.available_memory()
    if need > 0.8 * free:
        raise ConfigError(
            f"the masks of num_models={cfg.num_models:,} runs x {n:,} training examples need about {_gib(need)} "
            f"of memory; {_gib(free)} is free here. Lower num_models or train_size."
        )


def check_model_fits(cfg: Config, parameters: int) -> None:
    """ConfigError if a group of models (weights, gradients, optimizer state) cannot fit where they train."""
    import torch

    device = resolve_device(cfg.device)
    copies = cfg.group_size * (1 if device.type == "cuda" else cfg.workers)
    need = parameters * 4 * 4 * copies  # fp32 weights, gradients, momentum and one working copy
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"on {device}"
    else:
        free, where = data_module.available_memory(), "in memory"
    if need > 0.8 * free:
        raise ConfigError(
            f"{cfg.arch} with width={cfg.width} has {parameters:,} parameters; {copies} models at once "
            f"(group_size x workers) need at least {_gib(need)} {where}, {_gib(free)} is free. Lower width, "
            "group_size or workers."
        )


def check_disk_fits(cfg: Config, data: Dataset) -> None:
    """ConfigError if the stage-1 store would not fit on the disk of results_dir (its files fill up as it trains)."""
    spec, _ = subset_store_spec(cfg, data)
    need = sum(int(np.prod(s.shape, dtype=np.int64)) * np.dtype(s.dtype).itemsize for s in spec.values())
    free = shutil.disk_usage(_existing_ancestor(cfg.out_dir)).free
    if need > free:
        raise ConfigError(
            f"the store of {cfg.num_models:,} models needs {_gib(need)} under {cfg.out_dir}; the disk has {_gib(free)} "
            "free. Free some space or choose another results_dir."
        )


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_results_dir(cfg: Config) -> bool:
    """ConfigError unless <results_dir>/<profile> is a folder that can be written, or can be created. Writes nothing.

    A folder that cannot be written but holds a finished stage-1 store passes (returns False): its stores can
    still be read (by `check` and the stages that only read them). Returns True where it can be written.
    """
    target = cfg.out_dir
    for part in target.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(
                f"results_dir: the folder name {part[:40]!r}... in {display_path(target)[:80]}... is {len(part):,} "
                f"characters; file systems take names of at most {NAME_MAX} bytes. Choose a shorter results_dir (or "
                "profile name)"
            )
    for path in (target, *target.parents):
        if path.exists():
            if _holds_no_files(path):
                raise ConfigError(
                    f"results_dir: {path} is on a file system that holds no files (such as /proc or /sys), so memlib "
                    "cannot write there; choose a results_dir on a disk"
                )
            if not path.is_dir():
                raise ConfigError(f"results_dir: {path} is a file, not a folder; choose another results_dir")
            if not os.access(path, os.W_OK | os.X_OK):
                if path == target and _finished(subset_store_path(cfg)):
                    return False
                action = "write in" if path == target else f"create {target} in"
                raise ConfigError(
                    f"results_dir: cannot {action} {path} (read-only, or no permission); choose another results_dir"
                )
            return True
    return True


NAME_MAX = 255  # bytes in one file or folder name, on every common file system


def _holds_no_files(path: Path) -> bool:
    """Whether `path` is on a virtual file system with no storage at all (/proc, /sys: zero blocks)."""
    try:
        return os.statvfs(path).f_blocks == 0
    except (OSError, AttributeError):  # no statvfs (Windows): assume a disk
        return False


def _finished(store: Path) -> bool:
    """Whether the store at `store` has every row marked finished (read from its completed-mask only)."""
    try:
        done = np.load(store / "completed.npy", mmap_mode="r")
        return bool(len(done)) and bool(np.all(done))
    except (OSError, ValueError, EOFError):
        return False
