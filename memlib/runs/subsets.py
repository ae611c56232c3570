"""The stage-1 store: its spec, where it lives, and the checks that it holds this data and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..columns import SIGNAL_COLUMNS
from ..config import Config, display_path, profile_argument
from ..data.dataset import Dataset
from ..train.design import subset_masks
from ..train.engine import TOPK_CLASSES, resolve_device, resolve_precision
from .store import SPEC_FILE, ArraySpec, SpecUnreadable, Store, StoreMismatch, check_compatible, read_spec


def subset_store_spec(cfg: Config, data: Dataset) -> tuple[dict[str, ArraySpec], dict[str, Any]]:
    """Spec and meta of the stage-1 store: per run its mask, per-example correctness and true-label prob.

    Also per run, for the peer scores of the validation stage: the training signals of memlib.train.signals
    (`signal_<name>`, 11 bytes per training example) and the k = min(classes, 10) largest class probabilities
    of every training example with their classes (`train_topk_prob` float16, `train_topk_class` uint8), 3k
    bytes per example: all classes up to 10; for CIFAR-100 (50,000 x 100) 1.5 MB a model instead of the
    10 MB that all 100 would take. With the rest, a CIFAR-100 model's row is about 2.3 MB.
    The meta records the config's training fingerprint and the data's (hashes of its labels and images).
    """
    n_train, n_test, num_classes = data.n_train, data.n_test, data.num_classes
    k = min(num_classes, TOPK_CLASSES)
    class_dtype = "uint8" if num_classes <= 256 else "uint16"
    spec = Store.spec_of(
        cfg.num_models,
        {
            "masks": ((n_train,), "bool"),
            "train_correct": ((n_train,), "bool"),
            "test_correct": ((n_test,), "bool"),
            "train_prob": ((n_train,), "float16"),
            "test_prob": ((n_test,), "float16"),
            "seconds": ((), "float32"),
            **{f"signal_{name}": ((n_train,), dtype) for name, dtype in SIGNAL_COLUMNS.items()},
            "train_topk_prob": ((n_train, k), "float16"),
            "train_topk_class": ((n_train, k), class_dtype),
        },
    )
    meta = {
        "kind": "subsets",
        "fingerprint": cfg.training_fingerprint(),
        "config": cfg.to_dict(),
        "data": data_record(data),
    }
    return spec, meta


def data_record(data: Dataset) -> dict[str, str]:
    """What a store remembers of its data: where it was read, its size, and the hashes of its parts."""
    return {
        "source": data.source,
        "examples": f"{data.n_train} train / {data.n_test} test, {data.num_classes} classes",
        **data.fingerprint,
    }


def stored_meta(path: Path, rebuilt_by: str | None = None) -> dict[str, Any] | None:
    """The meta of the store at `path` (None if there is none); raises StoreError if it is unreadable.

    `rebuilt_by`: the profile whose repair can rebuild the spec (see `read_spec`), None where none can.
    """
    if not (Path(path) / SPEC_FILE).exists():
        return None
    return read_spec(Path(path), rebuilt_by)[1]


def check_same_data(path: Path, meta: dict[str, Any], data: Dataset) -> None:
    """Raise StoreMismatch, saying what changed, unless the store's meta records this very data."""
    old, new = meta.get("data", {}), data_record(data)
    changed = [k for k in data.fingerprint if old.get(k) != new[k]]
    if changed:
        raise StoreMismatch(
            f"the store at {display_path(path)} was trained on other data: {', '.join(changed)} changed "
            f"(then: {old.get('examples')} from {old.get('source')}; now: {new['examples']} from {new['source']}). "
            "Its models do not answer this data.",
            "Point the profile back at the data it was made with, use another profile name (or results_dir), or "
            f"delete {display_path(path)} to start afresh.",
            path,
        )


def training_precision(cfg: Config) -> str:
    """The precision this machine trains the config's models in (`precision: auto` resolved for its device)."""
    return resolve_precision(cfg.precision, resolve_device(cfg.device))


def check_same_precision(path: Path, meta: dict[str, Any], precision: str, cfg: Config) -> None:
    """Raise StoreError unless new rows would train in the precision the store's rows trained in."""
    old = meta.get("precision")
    if old is not None and old != precision:
        raise StoreMismatch(
            f"the store at {display_path(path)} holds models trained in {old}, but on this machine "
            f"precision: {cfg.precision} trains in {precision}; one store must not mix the two.",
            f"Set precision: {old} in the profile to add models to it here (or run where {old} is the default), "
            "or use another profile name (or results_dir).",
            path,
        )


def subset_store_path(cfg: Config) -> Path:
    return cfg.out_dir / "store"


def open_subset_store(cfg: Config, data: Dataset, create: bool = True) -> Store:
    """Open (or create) the stage-1 store, checking it matches the config and data and every finished row verifies.

    With `create=False` (every stage that only reads it, and `check`) the store is opened read-only.
    """
    spec, meta = subset_store_spec(cfg, data)
    flips = data.flips
    if flips is not None:  # the flipped labels are recorded with the store (its fingerprint has label_noise)
        meta["label_noise"] = {"fraction": cfg.label_noise, **flips.record()}
    old = stored_meta(subset_store_path(cfg), rebuilt_by=profile_argument(cfg.profile))
    if old is not None:
        check_same_data(subset_store_path(cfg), old, data)
    if create:  # a store trains in one precision: `auto` resolves per machine, so a store records what it became
        meta["precision"] = training_precision(cfg)
        if old is not None:
            check_same_precision(subset_store_path(cfg), old, meta["precision"], cfg)
    store = Store.open(subset_store_path(cfg), spec, meta, create=create)
    _refuse_wrong_masks(cfg, store, np.flatnonzero(store.completed))
    return store


def reopen_subset_store(cfg: Config, data: Dataset, store: Store) -> Store:
    """`store`, which this process opened with `open_subset_store(cfg, data)`, brought up to date to train more rows.

    Only the rows that others finished since are verified (checksums and masks): the rows it verified when it
    opened, and those it wrote, are not read again, so a process that trains a store in chunks verifies each
    finished row once, not once per chunk.
    """
    if store.path != subset_store_path(cfg) or store.meta.get("fingerprint") != cfg.training_fingerprint():
        raise ValueError(f"{store.path} is not the stage-1 store of profile {cfg.profile!r} as configured here")
    if not store.writable:
        raise ValueError(f"{store.path} was opened read-only: open it with open_subset_store(cfg, data) to train")
    check_same_data(store.path, store.meta, data)
    store.reload()
    new = np.flatnonzero(store.completed & ~store.verified)
    store.check(only_new=True)
    _refuse_wrong_masks(cfg, store, new)
    return store


def _refuse_wrong_masks(cfg: Config, store: Store, rows: np.ndarray) -> None:
    bad = wrong_masks(cfg, store, rows)
    if len(bad):
        raise store.bad_rows_error(bad, "hold a mask that their seed does not give")


def wrong_masks(cfg: Config, store: Store, rows: np.ndarray | None = None) -> np.ndarray:
    """Finished rows (among `rows`, default all) whose stored mask is not the one their seed gives, in blocks."""
    design = subset_masks(cfg, store["masks"].shape[1])
    done = np.flatnonzero(store.completed) if rows is None else np.asarray(rows, dtype=np.int64)
    bad = [
        block[(np.asarray(store["masks"][block]) != design[block]).any(axis=1)]
        for block in np.array_split(done, max(1, len(done) // 256))
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def repair_subset_store(cfg: Config, data: Dataset) -> list[int]:
    """Clear the completed flags of the stage-1 rows that fail their checksums or masks; returns them."""
    spec, meta = subset_store_spec(cfg, data)
    path = subset_store_path(cfg)
    if (path / SPEC_FILE).exists():
        try:
            check_compatible(path, spec, meta)
        except SpecUnreadable:
            pass  # repair rewrites it from this config, adopting the rows that verify under it
    return Store.repair(path, spec, meta, extra_bad=lambda store: wrong_masks(cfg, store))
