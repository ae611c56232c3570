"""Datasets, in their original order, with the index arrays that map back to the source files."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, display_path, resolve
from .noise import LabelFlips, flips_for


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
                    "memlib.data.datasets.as_images"
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
            idx = np.asarray(idx)
            name = f"{split}_index"
            if idx.ndim != 1 or len(idx) != len(y) or idx.dtype.kind not in "iu":
                raise DataError(
                    f"{where}: {name} must hold one whole-number original index per {split} example ({len(y):,}), "
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
        if x.dtype.kind == "f":
            for start in range(0, len(x), 4096):  # in blocks: no full-size temporary array
                bad = ~np.isfinite(x[start : start + 4096])
                if bad.any():
                    first = tuple(np.argwhere(bad)[0])
                    first = (first[0] + start, *first[1:])
                    at = ", ".join(map(str, first))
                    raise DataError(
                        f"{where}: x_{split} holds values that are not finite numbers: x_{split}[{at}] "
                        f"is {x[first]} ({int(np.count_nonzero(~np.isfinite(x))):,} such values in x_{split}). They "
                        "would train every model to NaN: replace or drop those examples"
                    )
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(
            f"{where}: x_train examples are {arrays['x_train'].shape[1:]}, x_test examples "
            f"{arrays['x_test'].shape[1:]}: both splits need the same image shape"
        )
    if every_class:
        absent = sorted(set(range(len(classes))) - set(np.unique(arrays["y_train"]).tolist()))
        if absent:
            names = ", ".join(f"{c} ({classes[c]!r})" for c in absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise DataError(
                f"{where}: {len(absent)} of {len(classes)} classes have no training example: {names}. A model cannot "
                "learn a class it never sees: give each class training examples, or remove it from the class list"
            )


DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0


def load_digits_dataset(cfg: Config | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (shipped inside the package): a fixed seeded split of 1,297 train / 500 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    test_index = np.sort(perm[:DIGITS_TEST_SIZE])
    train_index = np.sort(perm[DIGITS_TEST_SIZE:])
    train_index = train_index[_pool(len(train_index), cfg.train_size if cfg else None)]
    return Dataset(
        name="digits",
        x_train=images[train_index],
        y_train=labels[train_index],
        x_test=images[test_index],
        y_test=labels[test_index],
        train_index=train_index,
        test_index=test_index,
        classes=[str(c) for c in range(10)],
        source="scikit-learn's load_digits (inside the package)",
    )


# ---------------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST): torchvision's <Folder>/raw layout, plain or gzipped
# ---------------------------------------------------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATA_ENV = "MEMLIB_DATA_DIR"
POOL_SEED = 20201206  # draws the training pool when train_size < the full training set (fixed: seed-independent)


@dataclass(frozen=True)
class IdxSource:
    name: str
    folder: str  # torchvision's dataset class, and its folder name under its root
    debian_dir: str | None
    debian_package: str | None
    classes: tuple[str, ...]


IDX_SOURCES = {
    "fashion-mnist": IdxSource(
        "Fashion-MNIST",
        "FashionMNIST",
        "/usr/share/datasets/fashion-mnist",
        "dataset-fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "mnist": IdxSource("MNIST", "MNIST", None, None, tuple(str(c) for c in range(10))),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally .gz), checking its magic number and that its size matches its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is unreadable ({exc}): delete it and get a fresh copy") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw)} bytes but its header {shape} needs {expected}: truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _candidate_dirs(cfg: Config | None, folder: str, debian_dir: str | None) -> list[Path]:
    """Where to look: an explicit data_dir only (never elsewhere); else $MEMLIB_DATA_DIR, then the system folder."""
    if cfg is not None and cfg.data_dir:
        roots, system = [resolve(cfg.data_dir)], None
    else:
        roots = [Path(os.environ[DATA_ENV]).expanduser()] if os.environ.get(DATA_ENV) else []
        system = debian_dir
    dirs = []
    for root in roots:
        dirs += [root / folder / "raw", root / folder, root]
    if system:
        dirs.append(Path(system))
    return dirs


def _download_root(cfg: Config | None) -> Path:
    if cfg is not None and cfg.data_dir:
        return resolve(cfg.data_dir)
    return Path(os.environ.get(DATA_ENV, Path.home() / ".cache" / "memlib" / "data")).expanduser()


def _missing(what: str, looked: list[Path], ways: list[str]) -> DataError:
    where = "\n".join(f"  - {p}" for p in looked) or "  (nowhere: no directory given)"
    how = "\n".join(f"  {k}. {w}" for k, w in enumerate(ways, 1))
    return DataError(f"{what} not found. Looked in:\n{where}\nGet it one of these ways:\n{how}")


def _torchvision_download(cls_name: str, root: Path, **kwargs) -> None:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        getattr(torchvision.datasets, cls_name)(str(root), train=train, download=True, **kwargs)


def find_idx_dir(key: str, cfg: Config | None) -> Path:
    """The directory holding the four IDX files of `key`; downloads through torchvision only if cfg.download."""
    src = IDX_SOURCES[key]
    stems = [s for pair in IDX_FILES.values() for s in pair]
    looked = _candidate_dirs(cfg, src.folder, src.debian_dir)
    for d in looked:
        if all(_idx_file(d, s) for s in stems):
            return d
    if cfg is not None and cfg.download:
        root = _download_root(cfg)
        _torchvision_download(src.folder, root)
        return root / src.folder / "raw"
    ways = []
    if src.debian_package:
        ways.append(f"on Debian/Ubuntu: sudo apt-get install {src.debian_package} (installs {src.debian_dir})")
    ways += [
        f"put torchvision's {src.folder}/raw folder (the four *-ubyte or *-ubyte.gz files) under a directory D, "
        f"then set data_dir: D in the profile, or export {DATA_ENV}=D",
        "with a network: set download: true in the profile to fetch it through torchvision",
    ]
    raise _missing(f"{src.name} ({', '.join(stems)})", looked, ways)


def _pool(n_total: int, train_size: int | None) -> np.ndarray:
    if train_size is None or train_size >= n_total:
        if train_size is not None and train_size > n_total:
            raise ConfigError(f"train_size={train_size} but the training set has only {n_total} examples")
        return np.arange(n_total)
    return np.sort(np.random.default_rng(POOL_SEED).choice(n_total, size=train_size, replace=False))


def _as_dataset(
    name,
    x_train,
    y_train,
    x_test,
    y_test,
    classes,
    train_size,
    source="",
    train_index=None,
    test_index=None,
    every_class=False,
) -> Dataset:
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    indices = {"train_index": train_index, "test_index": test_index}
    check_arrays(source or name, arrays, indices, list(classes), every_class)
    pool = _pool(len(y_train), train_size)
    train_index = np.arange(len(y_train)) if train_index is None else np.asarray(train_index, dtype=np.int64)
    test_index = np.arange(len(y_test)) if test_index is None else np.asarray(test_index, dtype=np.int64)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_train[pool]),
        y_train=y_train[pool].astype(np.int64),
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        train_index=train_index[pool],
        test_index=test_index,
        classes=list(classes),
        source=source,
    )


def load_idx_dataset(key: str, cfg: Config | None = None) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files, in original order; `train_size` draws a fixed pool."""
    d = find_idx_dir(key, cfg)
    arrays = {}
    for split, (img_stem, lab_stem) in IDX_FILES.items():
        images, labels = read_idx(_idx_file(d, img_stem)), read_idx(_idx_file(d, lab_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{d}: {split} images {images.shape} and labels {labels.shape} do not match")
        arrays[split] = ((images.astype(np.float32) / 255.0)[:, None], labels)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
    classes = IDX_SOURCES[key].classes
    return _as_dataset(key, x_tr, y_tr, x_te, y_te, classes, cfg.train_size if cfg else None, display_path(d))


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: torchvision's python layout; pickles, so checksums are verified before unpickling
# ---------------------------------------------------------------------------------------------------

CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
        "torchvision_class": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
        "torchvision_class": "CIFAR100",
    },
}
# The official md5 of every file (the values torchvision checks too).
CIFAR_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, and refuses any other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "encode"),  # bytes, as Python 3 pickles them at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: CIFAR files hold only arrays and lists")
        return super().find_class(module, name)


def load_checked_pickle(path: Path, md5: str) -> dict:
    """Verify `path` against its md5, then unpickle it (numpy arrays and containers only)."""
    got = md5sum(path)
    if got != md5:
        raise DataError(
            f"{path} fails its checksum (md5 {got}, expected {md5}): it is corrupt or not the official file, so it "
            "was not unpickled. Delete it and get a fresh copy (see the loader's error for the ways)."
        )
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a CIFAR batch (a dict), but {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def find_cifar_dir(key: str, cfg: Config | None) -> Path:
    """The folder of torchvision's CIFAR python layout; downloads through torchvision only if cfg.download."""
    lay = CIFAR_LAYOUT[key]
    files = lay["train"] + lay["test"] + [lay["meta"]]
    looked = _candidate_dirs(cfg, lay["folder"], None)
    for d in looked:
        if all((d / f).is_file() for f in files):
            return d
    if cfg is not None and cfg.download:
        root = _download_root(cfg)
        _torchvision_download(lay["torchvision_class"], root)
        return root / lay["folder"]
    ways = [
        f"put torchvision's {lay['folder']}/ folder ({', '.join(files)}) under a directory D, then set data_dir: D "
        f"in the profile, or export {DATA_ENV}=D",
        "with a network: set download: true in the profile to fetch it through torchvision",
    ]
    raise _missing(f"{key.upper()} ({lay['folder']}/)", looked, ways)


def load_cifar_dataset(key: str, cfg: Config | None = None, checksums: dict[str, str] | None = None) -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels) in original order, every file checked against its md5 first."""
    lay = CIFAR_LAYOUT[key]
    checksums = CIFAR_MD5[key] if checksums is None else checksums
    d = find_cifar_dir(key, cfg)

    def split(files):
        batches = [load_checked_pickle(d / f, checksums[f]) for f in files]
        x = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
        y = np.concatenate([np.asarray(b[lay["labels"]], dtype=np.int64) for b in batches])
        return x.astype(np.float32) / 255.0, y

    x_tr, y_tr = split(lay["train"])
    x_te, y_te = split(lay["test"])
    names = load_checked_pickle(d / lay["meta"], checksums[lay["meta"]])[lay["names"]]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return _as_dataset(key, x_tr, y_tr, x_te, y_te, names, cfg.train_size if cfg else None, display_path(d))


# ---------------------------------------------------------------------------------------------------
# Your own data: an .npz file, an ImageFolder tree, any torchvision dataset class, or your own function
# ---------------------------------------------------------------------------------------------------

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CHANNELS = (1, 3, 4)


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


def _data_path(cfg: Config, kind: str) -> Path:
    if not cfg.data_path:
        example = "data_path: data/mine.npz" if kind == "npz" else "data_path: data/mine (with train/ and test/)"
        raise ConfigError(f"dataset: {cfg.dataset} reads your own data: set {example} in the profile")
    path = resolve(cfg.data_path)
    ok = path.is_file() if kind == "npz" else path.is_dir()
    if not ok:
        raise DataError(
            f"data_path: {path} {'is not a file' if path.exists() else 'does not exist'}"
            f" (dataset: {cfg.dataset}; relative paths are taken from the project root)"
        )
    return path


def load_npz_dataset(cfg: Config) -> Dataset:
    """Your arrays in one .npz: x_train, y_train, x_test, y_test; optional classes, train_index, test_index."""
    path = _data_path(cfg, "npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); write it with numpy.savez") from exc
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it holds {', '.join(sorted(arrays)) or 'nothing'}")
    check_memory(f"{path}: x_train and x_test as float32", 4 * (arrays["x_train"].size + arrays["x_test"].size))
    try:
        x_train, x_test = as_images(arrays["x_train"], "x_train"), as_images(arrays["x_test"], "x_test")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(f"x_train examples are {x_train.shape[1:]}, x_test examples {x_test.shape[1:]}")
        y_train, y_test, classes = as_labels(arrays["y_train"], arrays["y_test"], arrays.get("classes"))
    except DataError as exc:
        raise DataError(f"{display_path(path)}: {exc}") from None
    if "classes" not in arrays and arrays["y_train"].dtype.kind in "iu":
        check_label_gaps(display_path(path), y_train, y_test)
    return _as_dataset(
        path.stem,
        x_train,
        y_train,
        x_test,
        y_test,
        classes,
        cfg.train_size,
        display_path(path),
        arrays.get("train_index"),
        arrays.get("test_index"),
        every_class=True,
    )


def check_memory(what: str, need: int) -> None:
    """DataError, before anything is allocated, if `need` bytes would not fit in the memory free here."""

    free = available_memory()
    if need > 0.8 * free:
        raise DataError(
            f"{what} would take {need / 2**30:,.1f} GiB of memory; {free / 2**30:,.1f} GiB is free here. Use a smaller "
            "image_size, fewer images, or a machine with more memory"
        )


def _image_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each image, from its header only (nothing is decoded)."""
    from PIL import Image

    sizes = []
    for file in files:
        try:
            with Image.open(file) as im:
                sizes.append(im.size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"{file} is not a readable image ({exc})") from exc
    return sizes


def _read_images(files: list[Path], size: int | None, mode: str) -> np.ndarray:
    from PIL import Image

    out = []
    for file in files:
        try:
            with Image.open(file) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out.append(np.asarray(im, dtype=np.uint8))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DataError(f"{file} is not a readable image ({exc})") from exc
    return np.stack(out)


def load_imagefolder_dataset(cfg: Config) -> Dataset:
    """torchvision's ImageFolder layout: data_path/train/<class>/* and data_path/test/<class>/*, sorted by name.

    The classes are the folders of train/, each of which must hold images. Image sizes are read from the files'
    headers first, so mixed sizes without image_size, or images too large for memory, are refused before decoding.
    """
    from PIL import Image

    root = _data_path(cfg, "imagefolder")
    files: dict[str, list[tuple[Path, str]]] = {}
    folders: dict[str, list[Path]] = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder: the layout is {split}/<class name>/<image files>")
        folders[split] = sorted(p for p in (root / split).iterdir() if p.is_dir())
        files[split] = [
            (f, d.name) for d in folders[split] for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not files[split]:
            raise DataError(f"{root / split} holds no images in class folders ({', '.join(IMAGE_EXTENSIONS)})")
    classes = [d.name for d in folders["train"]]
    empty = [c for c in classes if not any(name == c for _, name in files["train"])]
    if empty:
        raise DataError(
            f"{root}/train: the class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
            f"hold{'' if len(empty) > 1 else 's'} no images ({', '.join(IMAGE_EXTENSIONS)}), so the class would have "
            "no training example. Add its images, or remove the folder (from test/ too)"
        )
    unknown = sorted({c for _, c in files["test"]} - set(classes))
    if unknown:
        raise DataError(f"{root}/test has classes that train/ lacks: {', '.join(unknown)}")
    sizes = {s: _image_sizes([f for f, _ in files[s]]) for s in files}  # every file opens as an image
    with Image.open(files["train"][0][0]) as first:
        gray = first.mode in ("1", "L", "I", "I;16")
    mode = "L" if gray else "RGB"
    if cfg.image_size is None:
        distinct = sorted(set(sizes["train"]) | set(sizes["test"]))
        if len(distinct) > 1:
            raise DataError(
                f"{root}: images of different sizes ({', '.join(f'{w}x{h}' for w, h in distinct[:3])} ...): set "
                "image_size: N in the profile to resize them to N x N"
            )
        width, height = distinct[0]
    else:
        width = height = cfg.image_size
    n = len(files["train"]) + len(files["test"])
    channels = 1 if gray else 3
    need = n * width * height * channels * 6  # float32 images, and the uint8 ones they are made from
    check_memory(f"{n:,} images of {width}x{height}x{channels} from {display_path(root)}", need)
    lookup = {c: i for i, c in enumerate(classes)}
    x = {s: as_images(_read_images([f for f, _ in files[s]], cfg.image_size, mode)) for s in files}
    y = {s: np.array([lookup[c] for _, c in files[s]], dtype=np.int64) for s in files}
    return _as_dataset(
        root.name,
        x["train"],
        y["train"],
        x["test"],
        y["test"],
        classes,
        cfg.train_size,
        display_path(root),
        every_class=True,
    )


def load_torchvision_dataset(cfg: Config) -> Dataset:
    """`torchvision:<ClassName>`: any torchvision dataset taking root, train (or split) and download."""
    import torchvision

    cls_name = cfg.dataset.split(":", 1)[1]
    cls = getattr(torchvision.datasets, cls_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"torchvision.datasets has no class {cls_name!r} (dataset: {cfg.dataset})")
    params = inspect.signature(cls.__init__).parameters
    if "root" not in params or not ({"train", "split"} & set(params)):
        raise ConfigError(f"torchvision.datasets.{cls_name} takes no root and train/split arguments")
    if not cfg.data_dir and not cfg.download:
        raise ConfigError(f"dataset: {cfg.dataset} reads from data_dir: set data_dir (or download: true)")
    root = _download_root(cfg)
    splits = {}
    for split in ("train", "test"):
        kwargs: dict = {"train": split == "train"} if "train" in params else {"split": split}
        if "download" in params:
            kwargs["download"] = cfg.download
        try:
            ds = cls(str(root), **kwargs)
        except (RuntimeError, OSError, ValueError) as exc:
            hint = "" if cfg.download else "; with a network, set download: true to fetch it"
            raise DataError(f"torchvision.datasets.{cls_name} could not load {split} from {root}: {exc}{hint}") from exc
        splits[split] = _torchvision_arrays(ds, cfg.image_size)
    (x_tr, y_tr), (x_te, y_te) = splits["train"], splits["test"]
    y_tr, y_te, classes = as_labels(y_tr, y_te, getattr(ds, "classes", None) or None)
    return _as_dataset(cls_name, x_tr, y_tr, x_te, y_te, classes, cfg.train_size, display_path(root))


def _torchvision_arrays(ds, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    data = getattr(ds, "data", None)
    if isinstance(data, (np.ndarray, torch.Tensor)) and labels is not None and size is None and len(data) == len(ds):
        return as_images(np.asarray(data)), np.asarray(labels).reshape(-1)  # the arrays as they are on disk
    xs, ys = [], []
    for i in range(len(ds)):  # one example at a time: PIL images, resized to image_size if given
        img, label = ds[i]
        if hasattr(img, "convert") and img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        if size is not None and hasattr(img, "resize"):
            img = img.resize((size, size))
        xs.append(np.asarray(img))
        ys.append(int(label))
    return as_images(np.stack(xs)), np.array(ys, dtype=np.int64)


def user_code_error(exc: BaseException, what: str, file: str | Path | None) -> str:
    """'your <what> raised <Error>: <message> at line N (`code`)', from the deepest frame in `file`.

    `what` names the code and its file, e.g. `function load in my/data.py`.

    A syntax error names its own line; an error raised deeper (in a library the user's code called) names the
    user's line that called it. No memlib frame is shown: the message is about the user's code.
    """
    file = Path(file).resolve() if file else None
    line, code = None, ""
    if isinstance(exc, SyntaxError):
        line, code = exc.lineno, (exc.text or "").strip()
        file = Path(exc.filename).resolve() if exc.filename else file
        text = f"has a syntax error ({exc.msg})"
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if file is not None and Path(frame.filename).resolve() == file:
                line, code = frame.lineno, (frame.line or "").strip()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"raised {type(exc).__name__}" + (f": {detail}" if detail else "")
    at = f" at line {line}" + (f" (`{code}`)" if code else "") if line else ""
    return f"your {what} {text}{at}. Fix it there and rerun; memlib itself did not fail"


def _import_file(path: Path, what: str):
    """Import a Python file once per process (by its path), as a module of its own."""
    path = path.resolve()
    name = "memlib_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ConfigError(f"{what}: {path} does not exist (relative paths are taken from the project root)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file raised on import, or does not parse
        del sys.modules[name]
        key = what.split(":", 1)[0]  # dataset or model_module
        raise ConfigError(user_code_error(exc, f"file {display_path(path)} (the profile's {key})", path)) from None
    return module


def import_user_module(ref: str, what: str):
    """A module named by a file path (`my/data.py`) or a dotted name importable from the project root."""
    if ref.endswith(".py") or "/" in ref:
        return _import_file(resolve(ref), what)
    root = str(resolve("."))
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module(ref)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import {ref!r} ({exc}); give a path to a .py file instead") from None
    except Exception as exc:  # the module raised on import, or does not parse
        spec = importlib.util.find_spec(ref) if "." not in ref else None
        file = spec.origin if spec else None
        key = what.split(":", 1)[0]
        raise ConfigError(user_code_error(exc, f"module {ref} (the profile's {key})", file)) from None


def load_user_dataset(cfg: Config) -> Dataset:
    """`path/to/file.py:function` (or `module:function`): your function, given the config, returns a Dataset."""
    ref, func_name = cfg.dataset.rsplit(":", 1)
    module = import_user_module(ref, f"dataset: {cfg.dataset}")
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"dataset: {cfg.dataset}: {ref} has no function {func_name!r}")
    file = getattr(getattr(func, "__code__", None), "co_filename", None) or getattr(module, "__file__", None)
    what = f"function {func_name} in {display_path(file) if file else ref}"
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None
    args: tuple = (cfg,)
    if signature is not None:
        try:
            signature.bind(cfg)
        except TypeError:
            try:
                signature.bind()
                args = ()
            except TypeError:
                raise ConfigError(
                    f"your {what} takes {signature}; memlib calls it with one "
                    "argument (the config) or none: give it the signature (cfg) or ()"
                ) from None
    try:
        data = func(*args)
    except Exception as exc:
        raise DataError(user_code_error(exc, what, file)) from None
    where = f"your {what}"
    if not isinstance(data, Dataset):
        raise DataError(f"{where} returned {type(data).__name__}, not a memlib.Dataset")
    if not data.source:
        data.source = f"{cfg.dataset}()"
    data.validate(where, every_class=True)
    return data


LOADERS: dict[str, Callable[[Config | None], Dataset]] = {
    "digits": load_digits_dataset,
    "fashion-mnist": lambda cfg=None: load_idx_dataset("fashion-mnist", cfg),
    "mnist": lambda cfg=None: load_idx_dataset("mnist", cfg),
    "cifar10": lambda cfg=None: load_cifar_dataset("cifar10", cfg),
    "cifar100": lambda cfg=None: load_cifar_dataset("cifar100", cfg),
    "npz": load_npz_dataset,
    "imagefolder": load_imagefolder_dataset,
}
OWN_DATA = "npz (data_path), imagefolder (data_path), torchvision:<ClassName> (data_dir), path/to/file.py:function"


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


def available_memory() -> int:
    """Bytes of memory free for new work (MemAvailable on Linux, else physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
