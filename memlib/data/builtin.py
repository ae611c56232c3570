"""The built-in datasets: scikit-learn's digits, MNIST and Fashion-MNIST (IDX files), CIFAR-10/100 (python pickles).

Each is found in the usual places (MEMLIB_DATA_DIR, data_dir, the Debian package's folder) or downloaded when
`download: true`; CIFAR's files are checked against their published md5 sums.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, display_path, resolve
from .dataset import DataError, Dataset, check_arrays, resized

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
    return _sized(
        _as_dataset(key, x_tr, y_tr, x_te, y_te, classes, cfg.train_size if cfg else None, display_path(d)), cfg
    )


def _sized(data: Dataset, cfg: Config | None) -> Dataset:
    """The dataset with its images area-averaged to image_size x image_size (the pool's and the test set's)."""
    size = cfg.image_size if cfg else None
    if size is None:
        return data
    return dataclasses.replace(data, x_train=resized(data.x_train, size), x_test=resized(data.x_test, size))


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
    return _sized(
        _as_dataset(key, x_tr, y_tr, x_te, y_te, names, cfg.train_size if cfg else None, display_path(d)), cfg
    )


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
