"""Bad profiles and bad own-data files: each must be refused before any training, as a user would see it.

    python tests/bad_inputs.py [--unguarded]     (a few seconds; tests/test_bad_inputs.py runs each case)

Every case writes its files in a fresh temporary folder, runs the command line in this process and expects
exit code 2 with a one-paragraph message (`error: ...`, no traceback) that says the given words; a few cases
(a read-only results folder) expect success instead. The script prints the cases that were not refused
cleanly and the count. Copy it into another checkout's tests/ and run it there to count how that code fares:
it uses only the command line and memlib's public API. `--unguarded` skips the inputs that make code without
size checks exhaust the machine (counted as not refused).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent

BASE = {
    **yaml.safe_load((ROOT / "configs/smoke.yaml").read_text()),
    "profile": "case",
    "num_models": 32,
    "min_out": 1,
    "epochs": 1,
    "width": 8,
    "workers": 1,
    "group_size": 8,
}


@dataclass
class Case:
    """A bad input: `make(folder)` writes its files and returns the command's arguments."""

    name: str
    make: Callable[[Path], list[str]]
    says: tuple[str, ...]  # words the message must hold
    rc: int = 2
    patch: Callable[[Path], list[tuple[object, str, object]]] = lambda folder: []
    huge: bool = False  # exhausts the machine on code without size checks
    tags: tuple[str, ...] = field(default_factory=tuple)
    forbid: tuple[str, ...] = ()  # words the message must not hold (wrong advice)
    longest: int = 0  # the message's most characters (0: no limit)


# ------------------------------------------------------------------------------------------------------------
# builders
def profile(folder: Path, command: str = "check", **values) -> list[str]:
    """A profile `case.yaml` in `folder` (results under folder/results); a value None removes the key."""
    merged = {**BASE, "results_dir": str(folder / "results"), **values}
    path = folder / "case.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in merged.items() if v is not None}, sort_keys=False))
    return [command, str(path)]


def raw_profile(text: str | bytes, name: str = "case.yaml") -> Callable[[Path], list[str]]:
    def make(folder: Path) -> list[str]:
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["check", str(path)]

    return make


def good_arrays(n_train: int = 60, n_test: int = 21, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, 8, 8)).astype(np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, 8, 8)).astype(np.uint8),
        "y_test": np.arange(n_test) % classes,
    }


def npz(command: str = "train", drop: tuple[str, ...] = (), **arrays) -> Callable[[Path], list[str]]:
    """A profile reading folder/data.npz: good arrays with `arrays` replacing or adding some, `drop` removed."""

    def make(folder: Path) -> list[str]:
        values = {**good_arrays(), **arrays}
        np.savez(folder / "data.npz", **{k: v for k, v in values.items() if k not in drop})
        return profile(folder, command, dataset="npz", data_path=str(folder / "data.npz"))

    return make


def with_nan(x: np.ndarray, at: tuple, value: float = np.nan) -> np.ndarray:
    x = x.astype(np.float32) / 255
    x[at] = value
    return x


def imagefolder(
    classes: dict[str, int], command: str = "train", size=8, sizes=None, garbage: bool = False, **values
) -> Callable[[Path], list[str]]:
    """folder/images/{train,test}/<class>/<k>.png: `classes` maps a class to its training images (0: empty)."""

    def make(folder: Path) -> list[str]:
        from PIL import Image

        rng = np.random.default_rng(0)
        for split in ("train", "test"):
            for c, n in classes.items():
                d = folder / "images" / split / c
                d.mkdir(parents=True)
                for k in range(n if split == "train" else min(n, 2)):
                    side = sizes[k % len(sizes)] if sizes else size
                    Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8), "L").save(d / f"{k}.png")
        if garbage:
            (folder / "images/train" / next(iter(classes)) / "0.png").write_bytes(b"this is not a png file")
        return profile(folder, command, dataset="imagefolder", data_path=str(folder / "images"), **values)

    return make


DATASET = """
import numpy as np
from memlib import Dataset


def good(n_train=60, n_test=21):
    rng = np.random.default_rng(0)
    x = rng.random((n_train + n_test, 1, 4, 4)).astype(np.float32)
    y = np.arange(n_train + n_test) % 3
    return Dataset("mine", x[:n_train], y[:n_train], x[n_train:], y[n_train:], np.arange(n_train),
                   np.arange(n_test), ["a", "b", "c"])
"""


def user_function(body: str, command: str = "train", header: str = DATASET, **values) -> Callable[[Path], list[str]]:
    """folder/mydata.py holding `body` (a function `make`) after the helpers, and a profile naming it."""

    def make(folder: Path) -> list[str]:
        (folder / "mydata.py").write_text(header + "\n\n" + body.strip() + "\n")
        return profile(folder, command, dataset=f"{folder / 'mydata.py'}:make", **values)

    return make


def model_module(body: str, arch: str, command: str = "check") -> Callable[[Path], list[str]]:
    """folder/mymodels.py holding `body`, and a profile with arch and model_module naming it."""

    def make(folder: Path) -> list[str]:
        (folder / "mymodels.py").write_text(body.strip() + "\n")
        return profile(folder, command, arch=arch, model_module=str(folder / "mymodels.py"))

    return make


MODEL = """
import torch.nn as nn
from timm.models import register_model


@register_model
def {name}(pretrained=False, num_classes=10, in_chans=1, img_size=8, width=16, **kwargs):
{body}
"""


NAN_MODEL = """
import torch.nn as nn
from timm.models import register_model


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        return y * float("nan") if {when} else y


@register_model
def {name}(pretrained=False, num_classes=10, in_chans=1, img_size=8, width=16, **kwargs):
    return Net(num_classes)
"""
TUPLE_MODEL = NAN_MODEL.replace('return y * float("nan") if {when} else y', "return y, x")
NO_PARAMETERS = """
import torch.nn as nn
from timm.models import register_model


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x.flatten(1)[:, : self.num_classes]


@register_model
def {name}(pretrained=False, num_classes=10, in_chans=1, img_size=8, width=16, **kwargs):
    return Net(num_classes)
"""


def npz_bytes(cut: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    """folder/data.npz holding `cut` of a good npz file's bytes (half of it, junk after its signature)."""

    def make(folder: Path) -> list[str]:
        np.savez(folder / "good.npz", **good_arrays())
        (folder / "data.npz").write_bytes(cut((folder / "good.npz").read_bytes()))
        return profile(folder, "check", dataset="npz", data_path=str(folder / "data.npz"))

    return make


def npy_as_npz(folder: Path) -> list[str]:
    """folder/data.npz that is a .npy file (numpy.save of one array), renamed."""
    np.save(folder / "data.npy", np.zeros(3))
    (folder / "data.npy").rename(folder / "data.npz")
    return profile(folder, "check", dataset="npz", data_path=str(folder / "data.npz"))


def store_made(fault: Callable[[Path, object], None]) -> Callable[[Path], list[str]]:
    """An empty stage-1 store made by a profile given as a path, then `fault(store folder, cfg)` done to it."""

    def make(folder: Path) -> list[str]:
        import memlib

        args = profile(folder, "check")
        cfg = memlib.load_profile(args[1])
        data = memlib.load_dataset(cfg)
        store = memlib.open_subset_store(cfg, data)
        fault(store.path, cfg)
        del store
        return args

    return make


def finished_store(command: str) -> Callable[[Path], list[str]]:
    """A stage-1 store with every row finished (the design's masks, zero results) for a profile path."""

    def make(folder: Path) -> list[str]:
        import memlib
        from memlib.train.design import subset_masks

        args = profile(folder, command)
        cfg = memlib.load_profile(args[1])
        data = memlib.load_dataset(cfg)
        store = memlib.open_subset_store(cfg, data)
        masks = subset_masks(cfg, data.n_train)
        store.write_rows({r: {"masks": masks[r]} for r in range(cfg.num_models)})
        del store
        return [command, args[1]]

    return make


def read_only(folder: Path) -> list[tuple[object, str, object]]:
    """os.access saying that nothing under folder/results can be written (as on a read-only mount)."""
    real = os.access
    results = str(folder / "results")

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and str(path).startswith(results):
            return False
        return real(path, mode, *args, **kwargs)

    return [(os, "access", access)]


def disk_full(folder: Path) -> list[tuple[object, str, object]]:
    """Every write into folder/results fails with ENOSPC, through the file API or a memory map (a bus error)."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import memlib.runs.store

    patches: list[tuple[object, str, object]] = [(memlib.runs.store.os, "pwrite", full)]
    if not hasattr(memlib.runs.store.Store, "_write"):  # code that writes rows through its memory maps: the write fails
        patches.append((memlib.runs.store.Store, "write_rows", lambda self, rows: full()))
    return patches


def _cut_spec(store: Path, cfg) -> None:
    text = (store / "spec.json").read_text()
    (store / "spec.json").write_text(text[: len(text) // 2])


def _unverified_row(store: Path, cfg) -> None:
    done = np.load(store / "completed.npy", mmap_mode="r+")
    done[3] = True
    done.flush()


# ------------------------------------------------------------------------------------------------------------
NOT_FINITE = "not finite"
CASES = [
    # profiles
    Case("a binary file (NUL bytes) as the profile", raw_profile(b"\x00\x01\x02\xff" * 64), ("not a text file",)),
    Case("a profile that is not UTF-8", raw_profile(b"epochs: 3\nlr: \xff\xfe0.1\n"), ("not a text file",)),
    Case(
        "a folder named like a profile",
        lambda f: ["check", str((f / "dir.yaml").mkdir() or f / "dir.yaml")],
        ("folder",),
    ),
    Case("a folder as the profile", lambda f: ["check", str(f)], ("is a folder",)),
    Case("a text file without .yaml", raw_profile("epochs: 3\n", "case.txt"), ("not a .yaml file",)),
    Case("a YAML key given twice", raw_profile("epochs: 3\nlr: 0.1\nepochs: 5\n"), ("given twice", "lines 1 and 3")),
    Case("a YAML key that is a number", raw_profile("epochs: 3\n3: 4\n"), ("key 3", "not a name")),
    Case("a YAML key that is a boolean", raw_profile("yes: 1\n"), ("not a name",)),
    Case("a YAML list, not a mapping", raw_profile("- epochs\n- 3\n"), ("must be a mapping",)),
    Case("a YAML scalar, not a mapping", raw_profile("hello\n"), ("must be a mapping",)),
    Case("YAML that does not parse", raw_profile("epochs: [3\n"), ("not valid YAML",)),
    Case("data_path with dataset: digits", lambda f: profile(f, data_path=str(f)), ("does not use data_path",)),
    Case("data_dir with dataset: digits", lambda f: profile(f, data_dir=str(f)), ("does not use data_dir",)),
    Case(
        "data_dir with dataset: npz",
        lambda f: profile(f, dataset="npz", data_path="x.npz", data_dir="x"),
        ("does not use data_dir",),
    ),
    Case("download: true with dataset: digits", lambda f: profile(f, download=True), ("does not use download",)),
    Case("image_size: 0 with digits", lambda f: profile(f, "train", image_size=0), ("image_size",)),
    Case("image_size: -5 with digits", lambda f: profile(f, "train", image_size=-5), ("image_size",)),
    Case("image_size: 32 with digits", lambda f: profile(f, "train", image_size=32), ("does not use image_size",)),
    Case("results_dir: /", lambda f: profile(f, results_dir="/"), ("root of the filesystem",)),
    Case("results_dir: ../..", lambda f: profile(f, results_dir="../.."), ("climbs out of the project",)),
    Case("results_dir: empty", lambda f: profile(f, results_dir=""), ("results_dir is empty",)),
    # .npz files
    Case(
        "npz: 300 x_train, 280 y_train",
        npz(x_train=good_arrays(300)["x_train"], y_train=np.arange(280) % 3),
        ("300 examples", "280 labels"),
    ),
    Case(
        "npz: 280 x_train, 300 y_train",
        npz(y_train=np.arange(300) % 3, x_train=good_arrays(280)["x_train"]),
        ("280 examples", "300 labels"),
    ),
    Case("npz: 20 x_test, 21 y_test", npz(x_test=good_arrays(n_test=20)["x_test"]), ("x_test holds 20",)),
    Case(
        "npz: an empty train split",
        npz(x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, int)),
        ("train split is empty",),
    ),
    Case(
        "npz: an empty test split",
        npz(x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, int)),
        ("test split is empty",),
    ),
    Case(
        "npz: one NaN pixel in x_train",
        npz(x_train=with_nan(good_arrays()["x_train"], (17, 3, 4))),
        (NOT_FINITE, "x_train[17, 0, 3, 4]"),
    ),
    Case(
        "npz: one inf pixel in x_test",
        npz(x_test=with_nan(good_arrays()["x_test"], (2, 0, 0), np.inf)),
        (NOT_FINITE, "x_test[2, 0, 0, 0]"),
    ),
    Case(
        "npz: labels 0..2 and one 7, no classes",
        npz(y_train=np.where(np.arange(60) == 41, 7, np.arange(60) % 3)),
        ("never 3, 4, 5, 6", "y_train[41]"),
    ),
    Case("npz: a negative label", npz(y_test=np.where(np.arange(21) == 5, -1, np.arange(21) % 3)), ("y_test[5]",)),
    Case(
        "npz: a label beyond the classes",
        npz(y_train=np.where(np.arange(60) == 9, 3, np.arange(60) % 3), classes=np.array(["a", "b", "c"])),
        ("y_train[9]",),
    ),
    Case("npz: fractional labels", npz(y_train=np.arange(60) % 3 + 0.5), ("labels must be integers",)),
    Case(
        "npz: a class with no training example",
        npz(classes=np.array(["a", "b", "c", "d"])),
        ("no training example", "'d'"),
    ),
    Case("npz: a repeated train_index", npz(train_index=np.r_[0:30, 29:59]), ("repeats", "train_index[30]")),
    Case("npz: train_index one short", npz(train_index=np.arange(59)), ("train_index",)),
    Case("npz: test_index going down", npz(test_index=np.arange(21)[::-1].copy()), ("goes down", "test_index[1]")),
    Case("npz: x_test of another image size", npz(x_test=np.zeros((21, 9, 9), np.uint8)), ("x_test examples",)),
    Case(
        "npz: images with no pixels",
        npz(x_train=np.zeros((60, 0, 0), np.uint8), x_test=np.zeros((21, 0, 0), np.uint8)),
        ("no pixels",),
    ),
    Case("npz: string pixels", npz(x_train=np.array([["a"] * 4] * 60)), ("must be numbers",)),
    Case(
        "npz: not an npz file",
        lambda f: (f / "data.npz").write_text("x") and profile(f, dataset="npz", data_path=str(f / "data.npz")),
        ("not a readable .npz",),
    ),
    Case("npz: y_test missing", npz(drop=("y_test",)), ("lacks y_test",)),
    # image folders
    Case("imagefolder: an empty class folder", imagefolder({"ant": 6, "bee": 0, "cat": 6}), ("bee", "no images")),
    Case("imagefolder: image_size 0", imagefolder({"ant": 4, "bee": 4}, image_size=0), ("image_size",)),
    Case(
        "imagefolder: image_size 100000",
        imagefolder({"ant": 4, "bee": 4}, command="check", image_size=100000),
        ("image_size",),
        huge=True,
    ),
    Case(
        "imagefolder: mixed sizes, no image_size", imagefolder({"ant": 4, "bee": 4}, sizes=(8, 9)), ("set image_size",)
    ),
    Case(
        "imagefolder: a file that is not an image",
        imagefolder({"ant": 4, "bee": 4}, garbage=True),
        ("not a readable image",),
    ),
    Case(
        "imagefolder: images that do not fit in memory",
        imagefolder({"ant": 20, "bee": 20}, command="check", image_size=4096),
        ("of memory",),
        patch=lambda f: [(importlib.import_module("memlib.data.dataset"), "available_memory", lambda: 2**30)],
        huge=True,
    ),
    # your dataset function
    Case(
        "function raises",
        user_function("def make(cfg):\n    raise ValueError('no such file: raw.csv')"),
        ("your function make", "mydata.py", "raised ValueError: no such file", "at line 15"),
    ),
    Case(
        "function takes two arguments",
        user_function("def make(cfg, split):\n    return good()"),
        ("your function make", "(cfg, split)"),
    ),
    Case(
        "function file has a syntax error",
        user_function("def make(cfg:\n    return good()"),
        ("syntax error", "mydata.py", "line 14"),
    ),
    Case(
        "function file raises on import",
        user_function("raise RuntimeError('set MYDATA first')\ndef make(cfg):\n    return good()"),
        ("your file", "raised RuntimeError: set MYDATA first", "line 14"),
    ),
    Case(
        "function returns a tuple",
        user_function("def make(cfg):\n    return good().x_train, good().y_train"),
        ("returned tuple",),
    ),
    Case(
        "function returns a NaN pixel",
        user_function("def make(cfg):\n    d = good()\n    d.x_train[7, 0, 1, 2] = float('nan')\n    return d"),
        (NOT_FINITE, "x_train[7, 0, 1, 2]", "your function make"),
    ),
    Case(
        "function returns 60 images, 59 labels",
        user_function("def make(cfg):\n    d = good()\n    d.y_train = d.y_train[:59]\n    return d"),
        ("60 examples", "59 labels"),
    ),
    Case(
        "function returns repeated indices",
        user_function("def make(cfg):\n    d = good()\n    d.train_index[5] = 4\n    return d"),
        ("repeats", "train_index[5]"),
    ),
    Case(
        "function returns int32 labels",
        user_function("def make(cfg):\n    d = good()\n    d.y_train = d.y_train.astype(np.int32)\n    return d"),
        ("int64",),
    ),
    Case(
        "function returns lists",
        user_function("def make(cfg):\n    d = good()\n    d.x_train = d.x_train.tolist()\n    return d"),
        ("numpy array",),
    ),
    Case(
        "function returns an empty test split",
        user_function(
            "def make(cfg):\n    d = good()\n    d.x_test, d.y_test, d.test_index = d.x_test[:0], d.y_test[:0], "
            "d.test_index[:0]\n    return d"
        ),
        ("test split is empty",),
    ),
    Case(
        "function returns a class never seen",
        user_function("def make(cfg):\n    d = good()\n    d.classes = ['a', 'b', 'c', 'd']\n    return d"),
        ("no training example",),
    ),
    Case("function name not in the file", user_function("def other(cfg):\n    return good()"), ("no function 'make'",)),
    # your model module
    Case(
        "model module raises on import",
        model_module("import os\nraise ImportError('needs my_lib')", "my_net_a"),
        ("your file", "mymodels.py", "raised ImportError: needs my_lib", "line 2"),
    ),
    Case(
        "model module has a syntax error",
        model_module("def f(:\n  pass", "my_net_b"),
        ("syntax error", "mymodels.py", "line 1"),
    ),
    Case(
        "model function raises when built",
        model_module(MODEL.format(name="my_net_c", body="    raise ValueError('width too small')"), "my_net_c"),
        ("your architecture my_net_c", "raised ValueError: width too small", "line 7"),
    ),
    Case(
        "model forward fails",
        model_module(MODEL.format(name="my_net_d", body="    return nn.Linear(3, num_classes)"), "my_net_d"),
        ("your architecture my_net_d",),
    ),
    # stores and disks
    Case("spec.json cut short", store_made(_cut_spec), ("repair", "keeps every finished model"), tags=("no-delete",)),
    Case("a bad row of a store made from a profile path", store_made(_unverified_row), ("case.yaml",)),
    Case("check on a read-only finished store", finished_store("check"), (), rc=0, patch=read_only),
    Case(
        "repair on a read-only store",
        finished_store("repair"),
        ("cannot be written", "Nothing was changed"),
        patch=read_only,
    ),
    Case("the disk fills up during training", lambda f: profile(f, "train"), ("full", "rerun"), patch=disk_full),
    # issue 25's campaign (the rows of its table; the Makefile's injections are in tests/test_makefile.py, clean
    # and user files there too, full disks and kills mid-write in tests/test_outputs.py and test_notebooks.py)
    Case(
        "function calls sys.exit(0)",
        user_function("def make(cfg):\n    import sys\n    sys.exit(0)"),
        ("your function make", "called sys.exit(0)", "line 16", "not a success"),
    ),
    Case(
        "function calls os._exit(0)",
        user_function("def make(cfg):\n    import os\n    os._exit(0)", command="check"),
        ("your function make", "called os._exit(0)", "line 16"),
    ),
    Case(
        "dataset file calls sys.exit on import",
        user_function("import sys\nsys.exit(0)\ndef make(cfg):\n    return good()"),
        ("your file", "mydata.py", "called sys.exit(0)"),
    ),
    Case(
        "model module calls sys.exit(0) on import",
        model_module("import sys\nsys.exit(0)", "my_net_e"),
        ("your file", "mymodels.py", "called sys.exit(0)", "line 2"),
    ),
    Case(
        "model function calls os._exit(0) when built",
        model_module(MODEL.format(name="my_net_f", body="    import os\n    os._exit(0)"), "my_net_f", "train"),
        ("your architecture my_net_f", "called os._exit(0)"),
    ),
    Case(
        "model forward returns NaN",
        model_module(NAN_MODEL.format(name="my_net_g", when="True"), "my_net_g"),
        ("your architecture my_net_g", "NaN", "2 images"),
    ),
    Case(
        "model turns NaN in training",
        model_module(NAN_MODEL.format(name="my_net_h", when="self.training"), "my_net_h", "train"),
        ("NaN", "models", "rows 0-7", "lr"),
    ),
    Case(
        "model function returns a tuple",
        model_module(MODEL.format(name="my_net_i", body="    return nn.Linear(64, num_classes), 'extra'"), "my_net_i"),
        ("your architecture my_net_i", "returned tuple", "torch.nn.Module"),
    ),
    Case(
        "model function returns a plain function",
        model_module(MODEL.format(name="my_net_j", body="    return lambda x: x"), "my_net_j"),
        ("your architecture my_net_j", "returned function", "torch.nn.Module"),
    ),
    Case(
        "model forward returns a tuple",
        model_module(TUPLE_MODEL.format(name="my_net_k"), "my_net_k"),
        ("your architecture my_net_k", "tuple", "one tensor of logits"),
    ),
    Case(
        "model with no parameters",
        model_module(NO_PARAMETERS.format(name="my_net_l"), "my_net_l", "train"),
        ("your architecture my_net_l", "no parameters"),
    ),
    Case("npz: a single class", npz(y_train=np.zeros(60, int), y_test=np.zeros(21, int)), ("one class",)),
    Case("imagefolder: a single class", imagefolder({"ant": 6}), ("one class", "ant")),
    Case(
        "results_dir: a 300-character name",
        lambda f: profile(f, results_dir=str(f / ("r" * 300))),
        ("results_dir", "300 characters", "255"),
    ),
    Case("npz: half a file", npz_bytes(lambda good: good[: len(good) // 2]), ("data.npz", "cut short", "savez")),
    Case("npz: junk after PK", npz_bytes(lambda good: b"PK\x03\x04" + b"junk" * 50), ("data.npz", "savez")),
    Case("npz: a .npy renamed .npz", npy_as_npz, ("data.npz", ".npy", "numpy.savez")),
    Case("npz: a pickled member", npz(classes=np.array(["a", 1, None], dtype=object)), ("classes", "pickled")),
    Case(
        "function returns a class that is not a string",
        user_function("def make(cfg):\n    d = good()\n    d.classes = ['a', 2, 'c']\n    return d"),
        ("classes[1]", "2", "string"),
    ),
    Case(
        "npz: non-square images with mem_mlp",
        lambda f: npz(x_train=np.zeros((60, 8, 6), np.uint8), x_test=np.zeros((21, 8, 6), np.uint8))(f),
        ("8x6", "mem_mlp", "mem_cnn"),
        forbid=("mem_mlp, mem_cnn, mem_resnet18 take any",),
    ),
    Case(
        "a 100,000-character value",
        lambda f: profile(f, data_path="x" * 100_000),
        ("100,000 characters",),
        longest=600,
    ),
    Case("a key with a zero-width space", raw_profile("epo\u200bchs: 3\n"), ("U+200B", "ZERO WIDTH SPACE", "retype")),
    Case("a key with a Cyrillic letter", raw_profile("\u0435pochs: 3\n"), ("U+0435", "CYRILLIC", "retype")),
    Case("results_dir: /proc", lambda f: profile(f, results_dir="/proc"), ("/proc", "cannot write")),
    Case("--rows -1:5", lambda f: ["train", "--rows", "-1:5", profile(f)[1]], ("--rows", "-1:5", "START:STOP")),
]


def run_case(case: Case, folder: Path, unguarded: bool = False) -> tuple[bool, str]:
    """Run one case in `folder`: (refused as it must be, what happened)."""
    if unguarded and case.huge:
        return False, "not run (--unguarded)"
    args = case.make(folder)
    patches = case.patch(folder)
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    err = io.StringIO()
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                from memlib.__main__ import main

                rc = main(args)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException as exc:  # what a user would see as a traceback (or a crash)
                rc, err = 1, io.StringIO(f"Traceback: {type(exc).__name__}: {exc}")
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
    text = err.getvalue().strip()
    lines = [line for line in text.splitlines() if line.strip() and "it/s]" not in line and "model/s]" not in line]
    message = lines[-1] if lines else ""
    ok = rc == case.rc and "Traceback" not in text
    if case.rc == 2:
        ok &= message.startswith("error: ") and len([ln for ln in lines if ln.startswith("error: ")]) == 1
        ok &= all(word in message for word in case.says)
        if "no-delete" in case.tags:
            ok &= "delete" not in message
        ok &= not any(word in message for word in case.forbid)
        ok &= not case.longest or len(message) <= case.longest
    return ok, f"rc {rc}: {message[:300]}"


def main_cases(unguarded: bool = False) -> int:
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="memlib-bad-inputs-"))
    refused, lines = 0, []
    try:
        for i, case in enumerate(CASES):
            folder = work / f"case{i}"
            folder.mkdir()
            ok, what = run_case(case, folder, unguarded)
            refused += ok
            lines.append(f"  {'ok  ' if ok else 'NOT '} {case.name}: {what}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(*lines, sep="\n")
    print(f"bad inputs refused cleanly (exit 2, one message, the right words): {refused} / {len(CASES)}")
    return 0 if refused == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main_cases(unguarded="--unguarded" in sys.argv))
