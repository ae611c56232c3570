"""Your own data and models without editing memlib: .npz, ImageFolder, torchvision classes, your function, your model.

Each loader reads files this test writes; a missing explicit folder is an error, never a silent fallback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from test_loaders import make_idx_dir

import memlib
import memlib.data.builtin
from memlib.__main__ import main
from memlib.config import ConfigError
from memlib.data.dataset import DataError, as_images
from memlib.data.datasets import load_dataset
from memlib.train.models import build_model


def smoke_with(**changes) -> memlib.Config:
    return memlib.load_profile("smoke").replace(**changes)


def write_npz(path: Path, n_train=30, n_test=12, shape=(8, 8), seed=0, dtype=np.uint8, **extra) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape)).astype(dtype),
        "y_train": np.arange(n_train) % 3,
        "x_test": rng.integers(0, 256, (n_test, *shape)).astype(dtype),
        "y_test": np.arange(n_test) % 3,
        **extra,
    }
    np.savez(path, **arrays)
    return arrays


# ---------------------------------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, want",
    [((8, 8), (1, 8, 8)), ((8, 8, 3), (3, 8, 8)), ((3, 8, 8), (3, 8, 8)), ((1, 6, 6), (1, 6, 6)), ((20,), (20, 1, 1))],
    ids=["NHW", "NHWC", "NCHW", "N1HW", "features"],
)
def test_npz_reads_every_layout_as_nchw(tmp_path, shape, want):
    arrays = write_npz(tmp_path / "toy.npz", shape=shape)
    data = load_dataset(smoke_with(dataset="npz", data_path=str(tmp_path / "toy.npz")))
    assert data.x_train.shape == (30, *want) and data.x_train.dtype == np.float32
    assert data.name == "toy" and data.classes == ["0", "1", "2"]
    np.testing.assert_array_equal(data.y_train, arrays["y_train"])
    flat = arrays["x_train"].reshape(30, -1) if len(shape) < 3 or shape[0] in (1, 3) else None
    if flat is not None:  # NHW, NCHW and features keep their element order
        np.testing.assert_allclose(data.x_train.reshape(30, -1) * 255, flat, atol=1e-3)
    else:  # NHWC: channels moved to the front
        np.testing.assert_allclose(data.x_train * 255, arrays["x_train"].transpose(0, 3, 1, 2), atol=1e-3)
    assert str(tmp_path / "toy.npz") in data.source


def test_npz_float_values_names_and_indices_are_kept(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(25, 4)).astype(np.float32)  # features for an MLP: not images, not in [0, 1]
    np.savez(
        tmp_path / "feat.npz",
        x_train=x[:20],
        y_train=np.array(["cat", "dog"] * 10),
        x_test=x[20:],
        y_test=np.array(["dog"] * 5),
        train_index=np.arange(100, 120),
        test_index=np.arange(5),
    )
    cfg = smoke_with(dataset="npz", data_path=str(tmp_path / "feat.npz"), train_size=10)
    data = load_dataset(cfg)
    assert data.classes == ["cat", "dog"] and data.n_train == 10
    np.testing.assert_array_equal(data.y_test, 1)
    assert set(data.train_index) <= set(range(100, 120)), "original indices follow the pool"
    pos = data.train_index - 100
    np.testing.assert_array_equal(data.x_train[:, :, 0, 0], x[:20][pos])
    model = build_model(cfg, in_chans=4, img_size=1, num_classes=2)  # mem_mlp on (N, D, 1, 1)
    assert model(torch.as_tensor(data.x_train)).shape == (10, 2)


def test_npz_errors_say_what_is_wrong(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="lacks x_test, y_test"):
        load_dataset(smoke_with(dataset="npz", data_path=str(tmp_path / "bad.npz")))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(smoke_with(dataset="npz", data_path=str(tmp_path / "absent.npz")))
    with pytest.raises(ConfigError, match="set data_path"):
        load_dataset(smoke_with(dataset="npz"))
    with pytest.raises(DataError, match="cannot tell the channel axis"):
        as_images(np.zeros((2, 5, 6, 7), dtype=np.uint8))
    write_npz(tmp_path / "labels.npz", classes=np.array(["a", "b"]))  # labels 0..2 but only two names
    with pytest.raises(DataError, match="2 classes"):
        load_dataset(smoke_with(dataset="npz", data_path=str(tmp_path / "labels.npz")))


# ---------------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------------


def write_imagefolder(root: Path, per_class=(6, 3), classes=("ant", "bee"), mode="RGB", sizes=(10, 12), seed=0):
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                s = sizes[k % len(sizes)]
                pixels = rng.integers(0, 256, (s, s, 3) if mode == "RGB" else (s, s), dtype=np.uint8)
                Image.fromarray(pixels, mode).save(root / split / c / f"{k:03d}.png")
    (root / "train" / "ant" / "notes.txt").write_text("not an image: skipped")


def test_imagefolder_reads_classes_in_order_and_resizes(tmp_path):
    write_imagefolder(tmp_path / "bugs")
    data = load_dataset(smoke_with(dataset="imagefolder", data_path=str(tmp_path / "bugs"), image_size=8))
    assert data.classes == ["ant", "bee"] and data.name == "bugs"
    assert data.x_train.shape == (12, 3, 8, 8) and data.x_test.shape == (6, 3, 8, 8)
    np.testing.assert_array_equal(data.y_train, [0] * 6 + [1] * 6)
    first = np.asarray(Image.open(tmp_path / "bugs/train/ant/000.png").resize((8, 8), Image.BILINEAR))
    np.testing.assert_allclose(data.x_train[0].transpose(1, 2, 0) * 255, first, atol=1e-3)
    with pytest.raises(DataError, match="set image_size"):
        load_dataset(smoke_with(dataset="imagefolder", data_path=str(tmp_path / "bugs")))


def test_imagefolder_grayscale_and_layout_errors(tmp_path):
    write_imagefolder(tmp_path / "gray", mode="L", sizes=(7,))
    data = load_dataset(smoke_with(dataset="imagefolder", data_path=str(tmp_path / "gray")))
    assert data.x_train.shape == (12, 1, 7, 7)
    (tmp_path / "gray" / "test" / "wasp").mkdir()
    Image.fromarray(np.zeros((7, 7), np.uint8), "L").save(tmp_path / "gray/test/wasp/0.png")
    with pytest.raises(DataError, match="classes that train/ lacks: wasp"):
        load_dataset(smoke_with(dataset="imagefolder", data_path=str(tmp_path / "gray")))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset(smoke_with(dataset="imagefolder", data_path=str(tmp_path / "flat")))


# ---------------------------------------------------------------------------------------------------
# torchvision:<ClassName>
# ---------------------------------------------------------------------------------------------------


def test_torchvision_class_reads_its_own_files(tmp_path):
    arrays = make_idx_dir(tmp_path / "KMNIST" / "raw", n_train=20, n_test=8, gz=False)  # KMNIST's on-disk format
    data = load_dataset(smoke_with(dataset="torchvision:KMNIST", data_dir=str(tmp_path)))
    assert data.x_train.shape == (20, 1, 28, 28) and data.name == "KMNIST"
    assert len(data.classes) == 10 and data.classes[0] == "o"  # torchvision's class names
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_allclose(data.x_test[:, 0] * 255, arrays["t10k-images-idx3-ubyte"], atol=1e-3)


class SplitFolderDataset(torch.utils.data.Dataset):
    """A torchvision-style class that takes `split` (as SVHN does) and returns PIL images of varying size."""

    def __init__(self, root: str, split: str = "train", download: bool = False, transform=None):
        files = sorted((Path(root) / split).glob("*.png"))
        if not files:
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        return Image.open(self.files[i]).convert("RGB"), int(self.files[i].stem.split("_")[0])


def test_torchvision_class_with_split_argument_and_missing_files(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "SplitFolderDataset", SplitFolderDataset, raising=False)
    for split, n in (("train", 9), ("test", 4)):
        (tmp_path / split).mkdir()
        for k in range(n):
            size = 6 + k % 2
            Image.fromarray(np.full((size, size, 3), 20 * k, np.uint8)).save(tmp_path / split / f"{k % 3}_{k}.png")
    cfg = smoke_with(dataset="torchvision:SplitFolderDataset", data_dir=str(tmp_path), image_size=5)
    data = load_dataset(cfg)
    assert data.x_train.shape == (9, 3, 5, 5) and data.classes == ["0", "1", "2"]
    np.testing.assert_array_equal(data.y_test, [0, 0, 1, 2])  # files in sorted order: 0_0, 0_3, 1_1, 2_2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="could not load train.*download: true"):
        load_dataset(cfg.replace(data_dir=str(empty)))
    with pytest.raises(ConfigError, match="no class 'NoSuchSet'"):
        load_dataset(cfg.replace(dataset="torchvision:NoSuchSet"))
    with pytest.raises(ConfigError, match="set data_dir"):
        load_dataset(cfg.replace(data_dir=None))


# ---------------------------------------------------------------------------------------------------
# Your function, your model
# ---------------------------------------------------------------------------------------------------

USER_DATA = """
import numpy as np
from memlib import Dataset


def blobs(cfg):
    rng = np.random.default_rng(cfg.seed)
    y = np.arange(40) % 2
    x = (rng.normal(size=(40, 1, 4, 4)) + 2 * y[:, None, None, None]).astype(np.float32)
    return Dataset("blobs", x[:30], y[:30], x[30:], y[30:], np.arange(30), np.arange(10), ["neg", "pos"])
"""

USER_MODEL = """
import torch.nn as nn
from timm.models import register_model


@register_model
def my_tiny_net(pretrained=False, num_classes=10, in_chans=1, img_size=8, width=16, **kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, width), nn.ReLU(),
                         nn.Linear(width, num_classes))


@register_model
def my_fixed_net(pretrained=False, num_classes=10, in_chans=1, **kwargs):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
"""


def test_user_function_returns_the_dataset(tmp_path):
    (tmp_path / "mydata.py").write_text(USER_DATA)
    data = load_dataset(smoke_with(dataset=f"{tmp_path / 'mydata.py'}:blobs"))
    assert data.name == "blobs" and data.n_train == 30 and data.classes == ["neg", "pos"]
    assert "mydata.py:blobs" in data.source
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_dataset(smoke_with(dataset=f"{tmp_path / 'mydata.py'}:nope"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(smoke_with(dataset=f"{tmp_path / 'absent.py'}:blobs"))


def test_model_module_registers_architectures_and_width_is_passed_or_refused(tmp_path):
    (tmp_path / "mymodels.py").write_text(USER_MODEL)
    cfg = smoke_with(arch="my_tiny_net", model_module=str(tmp_path / "mymodels.py"), width=5)
    model = build_model(cfg, in_chans=1, img_size=8, num_classes=3)
    assert timm.is_model("my_tiny_net")
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [5, 3], "width passed"
    default = build_model(cfg.replace(width=None), in_chans=1, img_size=8, num_classes=3)
    assert default[1].out_features == 16, "width: null leaves the architecture's own default"
    fixed = cfg.replace(arch="my_fixed_net")
    with pytest.raises(ConfigError, match="takes no width parameter"):
        build_model(fixed, in_chans=1, img_size=8, num_classes=3)
    assert build_model(fixed.replace(width=None), in_chans=1, img_size=8, num_classes=3) is not None
    with pytest.raises(ConfigError, match="unknown architecture 'not_there'.*registers no such name"):
        build_model(cfg.replace(arch="not_there"), in_chans=1, img_size=8, num_classes=3)


# ---------------------------------------------------------------------------------------------------
# Nothing silent: explicit folders must exist, and are the only place looked
# ---------------------------------------------------------------------------------------------------


def test_explicit_data_dir_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data_dir: .*does not exist"):
        load_dataset(smoke_with(dataset="fashion-mnist", data_dir=str(tmp_path / "typo")))


def test_explicit_data_dir_is_the_only_place_looked(tmp_path, monkeypatch):
    system = tmp_path / "system-copy"
    make_idx_dir(system)  # as if the Debian package were installed: it must not be read instead
    src = memlib.data.builtin.IDX_SOURCES["fashion-mnist"]
    monkeypatch.setitem(
        memlib.data.builtin.IDX_SOURCES, "fashion-mnist", dataclasses.replace(src, debian_dir=str(system))
    )
    monkeypatch.setenv("MEMLIB_DATA_DIR", str(system))
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="not found") as err:
        load_dataset(smoke_with(dataset="fashion-mnist", data_dir=str(tmp_path / "mine")))
    looked = str(err.value).split("Looked in:")[1].split("Get it")[0]
    assert str(tmp_path / "mine") in looked and str(system) not in looked
    data = load_dataset(smoke_with(dataset="fashion-mnist"))  # without data_dir the other places serve
    assert str(system) in data.source


def test_check_says_which_files_it_read(tmp_path, capsys):
    write_npz(tmp_path / "toy.npz")
    profile = tmp_path / "toy.yaml"
    profile.write_text(
        f"dataset: npz\ndata_path: {tmp_path / 'toy.npz'}\nresults_dir: {tmp_path / 'results'}\n"
        "num_models: 12\nmask_design: balanced\nmin_out: 1\nlr: 1e-2\n"
    )
    assert main(["check", str(profile)]) == 0
    out = capsys.readouterr().out
    assert "read from" in out
    assert str(tmp_path / "toy.npz") in out and "profile 'toy' is ready" in out
    assert memlib.load_profile(str(profile)).lr == 0.01, "1e-2 is a number"


def test_user_module_is_imported_once_per_process(tmp_path):
    counter = "import builtins\nbuiltins.memlib_test_imports = getattr(builtins, 'memlib_test_imports', 0) + 1\n"
    (tmp_path / "counted.py").write_text(counter + USER_DATA)
    import builtins

    before = getattr(builtins, "memlib_test_imports", 0)
    for _ in range(3):
        load_dataset(smoke_with(dataset=f"{tmp_path / 'counted.py'}:blobs"))
    assert builtins.memlib_test_imports == before + 1
