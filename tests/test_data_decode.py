"""Decoding: every file in the zoo either loads as upright RGB or is refused with its reason."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from zoo import SIZE, bomb_png, build_zoo, upright_red_over_blue

from lejepa_cli.data.decode import DecodeError, image_size, load_rgb, load_rgb_with_header


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, build_zoo(root)


def test_every_zoo_file_loads_or_is_refused_with_its_reason(zoo):
    root, expected = zoo
    for rel, expect in expected.items():
        if expect.status == "ok":
            header, img = load_rgb_with_header(root / rel)
            assert img.mode == "RGB", rel
            assert img.size == SIZE, rel
            assert header.mode == expect.mode, rel
            assert np.asarray(img).shape == (SIZE[1], SIZE[0], 3)
        elif expect.status == "bad":
            with pytest.raises(DecodeError) as info:
                load_rgb(root / rel)
            assert expect.reason in info.value.reason, (rel, info.value.reason)


def test_exif_orientation_is_applied(zoo):
    root, _ = zoo
    assert image_size(root / "exif_rotated.jpg")[:2] == (SIZE[1], SIZE[0])  # stored sideways
    arr = np.asarray(load_rgb(root / "exif_rotated.jpg")).astype(int)
    want = np.asarray(upright_red_over_blue()).astype(int)
    assert arr.shape == want.shape
    h = SIZE[1]
    top, bottom = arr[: h // 2 - 3].mean(axis=(0, 1)), arr[h // 2 + 3 :].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 50, top  # red on top
    assert bottom[2] > 200 and bottom[0] < 50, bottom  # blue below


@pytest.mark.parametrize("name", ["gray16.png", "gray16.tif", "float.tif"])
def test_high_bit_depth_keeps_its_range(zoo, name):
    root, _ = zoo
    arr = np.asarray(load_rgb(root / name))
    row = arr[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # min-max: the 12-bit ramp spans all of 0..255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > SIZE[0] // 2
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_constant_16_bit_image_is_black(tmp_path):
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(tmp_path / "flat.png")
    assert np.asarray(load_rgb(tmp_path / "flat.png")).max() == 0


def test_alpha_is_composited_on_black(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (200, 100, 50, 0))
    rgba.putpixel((0, 0), (200, 100, 50, 255))
    rgba.putpixel((1, 0), (200, 100, 50, 128))
    rgba.save(tmp_path / "a.png")
    arr = np.asarray(load_rgb(tmp_path / "a.png")).astype(int)
    assert tuple(arr[0, 0]) == (200, 100, 50)
    assert abs(arr[0, 1, 0] - 100) <= 1 and abs(arr[0, 1, 1] - 50) <= 1
    assert arr[1].max() == 0  # fully transparent: black whatever colour is stored


def test_palette_transparency_and_first_gif_frame(zoo):
    root, _ = zoo
    assert tuple(np.asarray(load_rgb(root / "animated.gif"))[5, 5]) == (255, 0, 0)
    pal = Image.open(root / "palette_transparent.png")
    transparent = np.asarray(pal) == pal.info["transparency"]
    assert transparent.any()
    arr = np.asarray(load_rgb(root / "palette_transparent.png"))
    assert arr[transparent].max() == 0


def test_decompression_bomb_is_refused_quickly(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="decompression bomb"):
        load_rgb(tmp_path / "bomb.png")
    with pytest.raises(DecodeError, match="decompression bomb"):
        image_size(tmp_path / "bomb.png")
    assert time.perf_counter() - start < 1.0
    # A smaller limit of our own applies before Pillow's.
    (tmp_path / "big.png").write_bytes(bomb_png(3000, 3000))
    with pytest.raises(DecodeError, match="3000x3000"):
        load_rgb(tmp_path / "big.png", max_pixels=1_000_000)


def test_min_side_decodes_large_jpeg_at_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    big.save(tmp_path / "big.jpg")
    big.save(tmp_path / "big.png")
    for name in ("big.jpg", "big.png"):
        img = load_rgb(tmp_path / name, min_side=250)
        assert min(img.size) >= 250, name
        assert img.size[0] <= 800, name  # reduced by at least 2
        assert abs(img.size[0] / img.size[1] - 4 / 3) < 0.01
    assert load_rgb(tmp_path / "big.jpg").size == (1600, 1200)


def test_truncated_images_setting_is_left_alone(zoo):
    from PIL import ImageFile

    root, _ = zoo
    with pytest.raises(DecodeError):
        load_rgb(root / "truncated.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
