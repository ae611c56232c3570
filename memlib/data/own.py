"""Your own data: an .npz of arrays, a folder of images per class, a torchvision dataset class, or your own
loader function (path/to/file.py:function). Errors in your code are reported with your file and line."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import zipfile
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError, display_path, resolve
from .builtin import _as_dataset, _download_root
from .dataset import DataError, Dataset, as_images, as_labels, check_label_gaps, check_memory

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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
    arrays = _read_npz(path)
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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, refusing (with the fix) a file cut short, a .npy file, or a pickled member."""
    fix = "write it again with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{display_path(path)} is not a readable .npz file ({type(exc).__name__}: {exc}): it may be cut short "
            f"(a copy or download that stopped) or not an .npz at all; {fix}"
        ) from None
    if isinstance(loaded, np.ndarray):
        raise DataError(
            f"{display_path(path)} is a .npy file (one array, shape {loaded.shape}) named .npz, not an .npz of named "
            f"arrays; {fix}"
        )
    with loaded as f:
        for name in f.files:  # a member's header says its dtype before anything is read
            with f.zip.open(f"{name}.npy") as member:
                fmt = np.lib.format
                read = fmt.read_array_header_1_0 if fmt.read_magic(member) == (1, 0) else fmt.read_array_header_2_0
                _, _, dtype = read(member)
            if dtype.hasobject:
                raise DataError(
                    f"{display_path(path)}: its member {name} holds Python objects (a pickled object array, "
                    f"dtype {dtype}); memlib never unpickles a data file, since unpickling can run code. Save {name} "
                    "as numbers or strings (e.g. numpy.array(names, dtype=str))"
                )
        try:
            return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{display_path(path)} is not a readable .npz file: cut short ({exc}); {fix}") from None


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
    """The images as float32 in [0, 1], each scaled by its bit depth (8-bit by 255, 16-bit by 65535: never clipped)."""
    from PIL import Image

    out = []
    for file in files:
        try:
            with Image.open(file) as im:
                if im.mode.startswith("I") and mode == "L":  # 16-bit gray (I;16, or I as PNG opens it): keep every bit
                    pixels = np.asarray(im, dtype=np.float32) / np.float32(65535)
                    im = Image.fromarray(pixels, mode="F")
                else:
                    im = im.convert(mode)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                scale = 1.0 if im.mode == "F" else 255.0
                out.append(np.asarray(im, dtype=np.float32) / np.float32(scale))
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
    files, classes = _imagefolder_files(root)
    sizes = {s: _image_sizes([f for f, _ in files[s]]) for s in files}  # every file opens as an image
    with Image.open(files["train"][0][0]) as first:
        gray = first.mode in ("1", "L") or first.mode.startswith("I")  # I;16, I;16B, I: 16-bit gray
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
    need = n * width * height * channels * 8  # float32 images, and the list of them they are stacked from
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


def _imagefolder_files(root: Path) -> tuple[dict[str, list[tuple[Path, str]]], list[str]]:
    """Per split, the image files with their class folder's name; the classes (train/'s folders, sorted)."""
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
    return files, classes


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


class ExitCalled(Exception):
    """The user's code called sys.exit() or os._exit(): memlib reports it as that code's failure, never a success."""

    def __init__(self, call: str, code: object):
        super().__init__(f"{call}({code!r})")
        self.call, self.code = call, code


@contextlib.contextmanager
def exits_are_errors():
    """Run the user's code with sys.exit() and os._exit() raising ExitCalled instead of ending the process (which
    would end `check` or `train` silently, with the user's exit code: a script would take exit 0 for success)."""
    real = os._exit

    def _exit(code: int) -> None:
        raise ExitCalled("os._exit", code)

    os._exit = _exit
    try:
        yield
    except SystemExit as exc:
        raise ExitCalled("sys.exit", exc.code).with_traceback(exc.__traceback__) from None
    finally:
        os._exit = real


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
    if isinstance(exc, ExitCalled):
        return (
            f"your {what} called {exc}{at}, which ends the program: that is not a success here, whatever the exit "
            "code (nothing was loaded or trained). Return the result instead, or raise an exception for an error"
        )
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
        with exits_are_errors():
            spec.loader.exec_module(module)
    except Exception as exc:  # the user's file raised on import, or does not parse (or exits)
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
        with exits_are_errors():
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
        with exits_are_errors():
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


OWN_DATA = "npz (data_path), imagefolder (data_path), torchvision:<ClassName> (data_dir), path/to/file.py:function"
