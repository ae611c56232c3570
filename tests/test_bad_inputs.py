"""Each bad profile and own-data file of tests/bad_inputs.py is refused before any training: exit 2, one message."""

from __future__ import annotations

import numpy as np
import pytest
from bad_inputs import CASES, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_its_message(tmp_path, case):
    ok, what = run_case(case, tmp_path)
    assert ok, f"{case.name}: expected exit {case.rc} saying {case.says}; got {what}"


def test_16_bit_images_are_scaled_by_their_depth_not_clipped(tmp_path):
    """Catches 16-bit PNGs converted to 8 bits by clipping (PIL's I;16 -> L saturates: the mean was 0.985, not
    about 0.5): each image is scaled by its own bit depth, so the same picture at 8 and 16 bits reads the same."""
    from PIL import Image

    import memlib

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("ant", "bee"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for k in range(3):
                pixels = rng.integers(0, 256, (8, 8)).astype(np.uint16)
                Image.fromarray(pixels * 257).save(tmp_path / "img" / split / c / f"{k}.png")  # 16-bit gray
                assert Image.open(tmp_path / "img" / split / c / f"{k}.png").mode.startswith("I")
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "img" / split / c / f"{k}_8bit.png")
    cfg = memlib.Config(dataset="imagefolder", data_path=str(tmp_path / "img"), results_dir=str(tmp_path / "r"))
    data = memlib.load_dataset(cfg)
    sixteen, eight = data.x_train[0::2], data.x_train[1::2]  # sorted names: k.png, then k_8bit.png
    assert 0.4 < float(sixteen.mean()) < 0.6, "scaled, not clipped at 255"
    np.testing.assert_allclose(sixteen, eight, atol=1e-6)
