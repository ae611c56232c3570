"""A dataset in memory (images, labels, original indices, its fingerprint and its label flips), and the checks
every loader's arrays pass."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .noise import LabelFlips


class DataError(RuntimeError):
    """Data that is missing or unreadable; the message says how to get it."""


@dataclass
class Dataset:
    """Images as float32 (N, C, H, W) in [0, 1], int64 labels, and original indices of every example."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    classes: list[str]
    source: str = ""  # what was read: files or folder (shown by `check` and recorded by the store)
    flips: LabelFlips | None = None  # injected label noise: which training labels were flipped (None: clean)

    @property
    def y_train_clean(self) -> np.ndarray:
        """The training labels before any injected noise (y_train itself when there is none)."""
        if self.flips is None:
            return self.y_train
        y = self.y_train.copy()
        y[self.flips.positions] = self.flips.clean
        return y

    def with_flips(self, flips: LabelFlips) -> Dataset:
        """This dataset with `flips` applied to its training labels (and recorded, even when there are none)."""
        y = self.y_train.copy()
        y[flips.positions] = flips.noisy
        return dataclasses.replace(self, y_train=y, flips=flips)

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def normalized(self) -> tuple[np.ndarray, np.ndarray]:
        """Train and test images standardized per channel with the training statistics."""
        mean = self.x_train.mean(axis=(0, 2, 3), keepdims=True)
        std = self.x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6
        return (self.x_train - mean) / std, (self.x_test - mean) / std

    @functools.cached_property
    def fingerprint(self) -> dict[str, str]:
        """Hashes of the labels and images of each split (computed once per load); a store remembers them."""
        parts = {
            "train labels": self.y_train,
            "train images": self.x_train,
            "test labels": self.y_test,
            "test images": self.x_test,
            "original indices": np.concatenate([self.train_index, self.test_index]),
        }
        out = {}
        for what, a in parts.items():
            a = np.ascontiguousarray(a)
            h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())  # sha256: hardware-accelerated on most CPUs
            h.update(memoryview(a).cast("B"))
            out[what] = h.hexdigest()[:16]
        out["classes"] = hashlib.sha256("\n".join(self.classes).encode()).hexdigest()[:16]
        return out

    def describe(self) -> dict:
        """A one-row summary for display."""
        out = {
            "dataset": self.name,
            "read from": self.source or "(not recorded)",
            "train examples": self.n_train,
            "test examples": self.n_test,
            "image shape": "x".join(map(str, self.image_shape)),
            "images in memory": f"{(self.x_train.nbytes + self.x_test.nbytes) / 2**20:,.1f} MiB",
            "classes": self.num_classes,
        }
        absent = sorted(set(range(self.num_classes)) - set(np.unique(self.y_train).tolist()))
        if absent:
            out["classes without training examples"] = ", ".join(self.classes[c] for c in absent[:10]) + (
                f" and {len(absent) - 10} more" if len(absent) > 10 else ""
            )
        return out

    def validate(self, where: str | None = None, every_class: bool = False) -> None:
        """Check types, shapes, lengths, labels, indices and pixels; raise DataError naming the array and the fix."""
        where = where or self.source or self.name
        for split in ("train", "test"):
            for kind in ("x", "y"):
                a = getattr(self, f"{kind}_{split}")
                if not isinstance(a, np.ndarray):
                    raise DataError(f"{where}: {kind}_{split} must be a numpy array, got {type(a).__name__}")
            x = getattr(self, f"x_{split}")
            if x.ndim != 4 or x.dtype != np.float32:
                raise DataError(
                    f"{where}: x_{split} must be float32 images (N, C, H, W), got {x.dtype} {x.shape}; convert with "
                    "memlib.data.dataset.as_images"
                )
            y = getattr(self, f"y_{split}")
            if y.dtype != np.int64:
                raise DataError(f"{where}: y_{split} must be int64 labels, got {y.dtype}; convert: y.astype(np.int64)")
        check_arrays(
            where,
            {"x_train": self.x_train, "y_train": self.y_train, "x_test": self.x_test, "y_test": self.y_test},
            {"train_index": self.train_index, "test_index": self.test_index},
            self.classes,
            every_class=every_class,
        )


MAX_LISTED = 5  # positions named in a message


def _positions(bad: np.ndarray, name: str) -> str:
    """`name[i]` for the first few positions where `bad` is true, and how many there are in all."""
    where = np.argwhere(bad)
    shown = ", ".join(f"{name}[{', '.join(map(str, w))}]" for w in where[:MAX_LISTED])
    return shown + (f" and {len(where) - MAX_LISTED:,} more" if len(where) > MAX_LISTED else "")


def check_arrays(
    where: str,
    arrays: dict[str, np.ndarray],
    indices: dict[str, np.ndarray | None],
    classes: list[str],
    every_class: bool = False,
) -> None:
    """DataError naming `where`, the array, the position and the fix, for anything that would train wrongly.

    `arrays` holds x_train, y_train, x_test, y_test (images already (N, C, H, W)); `indices` the original index
    arrays (None: 0..N-1). Lengths must match and no split be empty; pixels must be finite; labels integers in
    [0, len(classes)), each class with a training example if `every_class`; indices whole, increasing (so no
    repeats) and one per example.
    """
    for split in ("train", "test"):
        x, y, idx = arrays[f"x_{split}"], arrays[f"y_{split}"], indices.get(f"{split}_index")
        if y.ndim != 1:
            raise DataError(f"{where}: y_{split} must be one label per example (shape (N,)), got shape {y.shape}")
        if len(x) != len(y):
            raise DataError(
                f"{where}: x_{split} holds {len(x):,} examples but y_{split} {len(y):,} labels. Every example needs "
                f"exactly one label: fix the arrays (memlib never trims them to fit)"
            )
        if len(x) == 0:
            raise DataError(f"{where}: the {split} split is empty (x_{split} has 0 examples); give it examples")
        if min(x.shape[1:], default=0) < 1:
            raise DataError(f"{where}: x_{split} examples have shape {x.shape[1:]}, with no pixels")
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: y_{split} must hold whole numbers 0..K-1, got dtype {y.dtype}")
        out = (y < 0) | (y >= len(classes))
        if out.any():
            raise DataError(
                f"{where}: labels must lie in [0, {len(classes)}) ({len(classes)} classes), but "
                f"{_positions(out, f'y_{split}')} {'is' if out.sum() == 1 else 'are'} outside (e.g. "
                f"{int(y[out][0])}). Fix those labels, or give class names for every label"
            )
        if idx is not None:
            _check_index(where, f"{split}_index", np.asarray(idx), len(y))
        if x.dtype.kind == "f":
            _check_finite(where, f"x_{split}", x)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{where}: x_train examples are {arrays['x_train'].shape[1:]}, x_test examples "
            f"{arrays['x_test'].shape[1:]}: both splits need the same image shape"
        )
    _check_classes(where, classes, arrays["y_train"], every_class)


CHANNELS = (1, 3, 4)


def _check_classes(where: str, classes: list, y_train: np.ndarray, every_class: bool) -> None:
    """DataError unless every class name is a string, the training set holds two classes or more, and (with
    `every_class`) every class has a training example."""
    for i, name in enumerate(classes):
        if not isinstance(name, str):  # a number or None among the names fails later, far from here
            raise DataError(
                f"{where}: class names must be strings, but classes[{i}] is {name!r} ({type(name).__name__}). "
                f"Name each class with a string, e.g. classes = [str(c) for c in classes]"
            )
    present = np.unique(y_train)
    if len(present) == 1:
        raise DataError(
            f"{where}: every training example is of one class ({classes[int(present[0])]!r}). Memorization and "
            "influence compare what models trained with and without an example predict among classes, so a single "
            "class makes every estimate meaningless: add examples of at least one other class"
        )
    if every_class:
        absent = sorted(set(range(len(classes))) - set(present.tolist()))
        if absent:
            names = ", ".join(f"{c} ({classes[c]!r})" for c in absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise DataError(
                f"{where}: {len(absent)} of {len(classes)} classes have no training example: {names}. A model cannot "
                "learn a class it never sees: give each class training examples, or remove it from the class list"
            )


def _check_index(where: str, name: str, idx: np.ndarray, n: int) -> None:
    """An original-index array: one whole number per example, none negative, strictly increasing."""
    if idx.ndim != 1 or len(idx) != n or idx.dtype.kind not in "iu":
        raise DataError(
            f"{where}: {name} must hold one whole-number original index per {name.split('_')[0]} example ({n:,}), "
            f"got {idx.dtype} of shape {idx.shape}"
        )
    if len(idx) and idx.min() < 0:
        raise DataError(f"{where}: {name} holds negative indices ({_positions(idx < 0, name)})")
    step = np.diff(idx) <= 0
    if step.any():
        i = int(np.argmax(step))
        kind = "repeats" if idx[i] == idx[i + 1] else "goes down"
        raise DataError(
            f"{where}: {name} must be strictly increasing (each original index once, in order), but it "
            f"{kind} at {name}[{i + 1}] ({idx[i]} then {idx[i + 1]}). Sort the examples by their original index"
            " and drop repeated ones"
        )


def _check_finite(where: str, name: str, x: np.ndarray) -> None:
    """Float images hold only finite values (checked in blocks: no full-size temporary array)."""
    for start in range(0, len(x), 4096):  # in blocks: no full-size temporary array
        bad = ~np.isfinite(x[start : start + 4096])
        if bad.any():
            first = tuple(np.argwhere(bad)[0])
            first = (first[0] + start, *first[1:])
            at = ", ".join(map(str, first))
            raise DataError(
                f"{where}: {name} holds values that are not finite numbers: {name}[{at}] "
                f"is {x[first]} ({int(np.count_nonzero(~np.isfinite(x))):,} such values in {name}). They "
                "would train every model to NaN: replace or drop those examples"
            )


def as_images(x: np.ndarray, what: str = "images") -> np.ndarray:
    """float32 (N, C, H, W) from (N, H, W), (N, H, W, C), (N, C, H, W) or feature vectors (N, D) -> (N, D, 1, 1).

    uint8 values are divided by 255; other numbers are kept as they are (training standardizes each channel).
    """
    x = np.asarray(x)
    if x.dtype.kind not in "uifb":
        raise DataError(f"{what} must be numbers, got dtype {x.dtype}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    if x.ndim == 2:  # feature vectors: one channel per feature, so per-channel standardization is per feature
        x = x[:, :, None, None]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        first, last = x.shape[1] in CHANNELS, x.shape[3] in CHANNELS
        if last and (not first or (x.shape[1] == x.shape[2] and x.shape[2] != x.shape[3])):
            x = x.transpose(0, 3, 1, 2)
        elif not first:
            raise DataError(
                f"{what} {x.shape}: cannot tell the channel axis. Give images as (N, H, W), (N, H, W, C) or "
                f"(N, C, H, W) with C in {CHANNELS}, or feature vectors as (N, D)"
            )
    else:
        raise DataError(f"{what} must be (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W); got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale)


def resized(x: np.ndarray, size: int | None) -> np.ndarray:
    """(N, C, H, W) float32 images at size x size by area averaging (each output pixel the mean of the input
    pixels it covers, as a 2 x 2 mean pools 28 -> 14); unchanged where size is None or already theirs."""
    if size is None or x.shape[2:] == (size, size):
        return x
    import torch
    import torch.nn.functional as F

    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), size=(size, size), mode="area")
    return np.ascontiguousarray(out.numpy())


def as_labels(y_train: np.ndarray, y_test: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """int64 labels of both splits and the class names; string labels are numbered in sorted order."""
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    if y_train.dtype.kind in "US":
        names = sorted(set(y_train.tolist()) | set(y_test.tolist()))
        lookup = {n: i for i, n in enumerate(names)}
        y_train = np.array([lookup[v] for v in y_train.tolist()], dtype=np.int64)
        y_test = np.array([lookup[v] for v in y_test.tolist()], dtype=np.int64)
        classes = names if classes is None else classes
    elif y_train.dtype.kind not in "iu" or y_test.dtype.kind not in "iu":
        raise DataError(f"labels must be integers 0..K-1 or strings, got dtypes {y_train.dtype} and {y_test.dtype}")
    if classes is None:
        top = int(max(y_train.max(initial=0), y_test.max(initial=0)))
        classes = [str(c) for c in range(top + 1)]
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(classes).reshape(-1).tolist()]
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            out = (y < 0) | (y >= len(classes))
            raise DataError(
                f"{split} labels lie in [{y.min()}, {y.max()}] but there are {len(classes)} classes: "
                f"{_positions(out, f'y_{split}')} {'is' if out.sum() == 1 else 'are'} outside [0, {len(classes)}). "
                "Fix those labels, or give a name for every class"
            )
    return y_train.astype(np.int64), y_test.astype(np.int64), classes


def check_label_gaps(where: str, y_train: np.ndarray, y_test: np.ndarray) -> None:
    """DataError if integer labels given without class names skip a number (0, 1, 2, 7 would make 8 classes)."""
    used = np.union1d(np.unique(y_train), np.unique(y_test))
    top = int(used.max(initial=0))
    missing = sorted(set(range(top + 1)) - set(used.tolist()))
    if missing:
        rare = min(used.tolist(), key=lambda c: np.count_nonzero(y_train == c) + np.count_nonzero(y_test == c))
        at = np.flatnonzero(y_train == rare)
        first = f"y_train[{at[0]}]" if len(at) else f"y_test[{np.flatnonzero(y_test == rare)[0]}]"
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"{where}: the labels are {', '.join(map(str, used.tolist()[:12]))}{' ...' if len(used) > 12 else ''} but "
            f"never {shown}. Without a `classes` array labels are read as 0..K-1, so this would be {top + 1} classes, "
            f"{len(missing)} of them empty (the rarest label, {rare}, first appears at {first}: a typo?). Number the "
            f"labels 0..{len(used) - 1}, use string labels, or add a `classes` array naming all {top + 1} classes"
        )


def check_memory(what: str, need: int) -> None:
    """DataError, before anything is allocated, if `need` bytes would not fit in the memory free here."""

    free = available_memory()
    if need > 0.8 * free:
        raise DataError(
            f"{what} would take {need / 2**30:,.1f} GiB of memory; {free / 2**30:,.1f} GiB is free here. Use a smaller "
            "image_size, fewer images, or a machine with more memory"
        )


def available_memory() -> int:
    """Bytes of memory free for new work (MemAvailable on Linux, else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
