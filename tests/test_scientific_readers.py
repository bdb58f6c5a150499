"""Scientific formats: each written here, read back, mapped and normalised to the numbers the
network sees, checked against values worked out by hand in the comments."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lejepa_cli.data.channels import fit_channels, resolve_channels
from lejepa_cli.data.decode import DecodeError
from lejepa_cli.data.intensity import IntensityMap, robust_range
from lejepa_cli.data.multicrop import normalize
from lejepa_cli.data.pixels import PixelSpec, plan
from lejepa_cli.data.readers import MissingExtraError, read_header, read_raw
from lejepa_cli.data.scan import scan_folder
from lejepa_cli.errors import DataError

sys.path.insert(0, str(Path(__file__).parent))
import scientific_files as sf  # noqa: E402

pytest.importorskip("tifffile")

# A 16 x 16 ramp: pixel (y, x) holds 10 * (16 y + x), from 0 to 2550.
RAMP = (np.arange(256).reshape(16, 16) * 10).astype(np.float64)


def network_input(spec: PixelSpec, path: Path) -> np.ndarray:
    """What training and embedding feed the backbone, before any resize: (C, H, W)."""
    x = torch.from_numpy(spec.read(path)).permute(2, 0, 1)  # (C, H, W) float in 0-1
    return normalize(x, spec.mean, spec.std).numpy()


def cube(channels: int, dtype) -> np.ndarray:
    """(16, 16, C): channel c is the ramp plus 1000 c."""
    return np.stack([RAMP + 1000 * c for c in range(channels)], axis=-1).astype(dtype)


def ramp_spec(channels: int, offset: float = 0.0, scale: float = 1.0) -> PixelSpec:
    """low = the ramp's 0 and high = its 2550 (per channel, shifted by 1000 c): x -> ramp/2550.
    mean 0.5, std 0.25: the network sees (ramp / 2550 - 0.5) / 0.25."""
    low = tuple(offset + 1000 * c * scale for c in range(channels))
    high = tuple(v + 2550 * scale for v in low)
    return PixelSpec(channels, IntensityMap("dataset", low, high), (0.5,) * channels,
                     (0.25,) * channels)  # fmt: skip


# pixel (1, 2) holds ramp 180: 180 / 2550 = 0.070588; (0.070588 - 0.5) / 0.25 = -1.717647
# pixel (15, 15) holds 2550: 1.0 -> 2.0; pixel (0, 0): 0 -> -2.0
EXPECTED = {(1, 2): -1.717647, (15, 15): 2.0, (0, 0): -2.0}


def check(x: np.ndarray, channels: int) -> None:
    assert x.shape == (channels, 16, 16)
    for (y, xx), value in EXPECTED.items():
        np.testing.assert_allclose(x[:, y, xx], value, atol=1e-5)


def test_png16_grey(tmp_path):
    path = sf.write_png16(tmp_path / "a.png", RAMP + 30000)  # above 8 bits: kept, not squeezed
    assert read_header(path)[2:4] == (1, "uint16")
    check(network_input(ramp_spec(1, offset=30000), path), 1)


def test_png16_colour_keeps_rgb_order(tmp_path):
    path = sf.write_png16(tmp_path / "a.png", cube(3, np.uint16))
    assert read_raw(path)[1, 2].tolist() == [180, 1180, 2180]  # R, G, B as written
    check(network_input(ramp_spec(3), path), 3)


def test_float_tiff(tmp_path):
    # ramp / 1000 - 1: low -1.0, high 1.55, so the same 0-1 values as the ramp
    path = sf.write_tiff(tmp_path / "a.tif", (RAMP / 1000 - 1).astype(np.float32))
    assert read_header(path)[2:4] == (1, "float32")
    check(network_input(ramp_spec(1, offset=-1.0, scale=1e-3), path), 1)


@pytest.mark.parametrize("channels", [4, 13])
@pytest.mark.parametrize("layout", ["last", "first"])
def test_multichannel_tiff(tmp_path, channels, layout):
    data = cube(channels, np.uint16)  # (16, 16, C)
    if layout == "first":
        data = np.moveaxis(data, -1, 0)  # (C, 16, 16)
    path = sf.write_tiff(tmp_path / "a.tif", data, photometric="minisblack")
    assert read_header(path).channels == channels
    check(network_input(ramp_spec(channels), path), channels)


def test_ambiguous_tiff_names_the_shape(tmp_path):
    path = sf.write_tiff(tmp_path / "a.tif", np.zeros((16, 16, 16), np.uint16))
    with pytest.raises(DecodeError, match=r"ambiguous TIFF shape \(16, 16, 16\)"):
        read_raw(path)


def test_npy_and_its_refusals(tmp_path):
    np.save(tmp_path / "a.npy", cube(5, np.float64))
    check(network_input(ramp_spec(5), tmp_path / "a.npy"), 5)
    np.save(tmp_path / "first.npy", np.zeros((5, 16, 16)))
    with pytest.raises(DecodeError, match="channels-first"):
        read_raw(tmp_path / "first.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="never unpickled"):
        read_raw(tmp_path / "obj.npy")


def test_fits_primary_and_chosen_hdu(tmp_path):
    pytest.importorskip("astropy")
    path = sf.write_fits(tmp_path / "a.fits", cube(2, np.float32))
    assert read_header(path)[:3] == (16, 16, 2)
    check(network_input(ramp_spec(2), path), 2)
    with pytest.raises(DecodeError, match="HDU 1"):
        read_raw(sf.write_fits(tmp_path / "b.fits", RAMP, extra_table=True), fits_hdu=1)


def test_fits_without_an_image(tmp_path):
    pytest.importorskip("astropy")
    with pytest.raises(DecodeError, match="no image HDU"):
        read_raw(sf.write_fits_table_only(tmp_path / "t.fits"))


def test_dicom_rescale(tmp_path):
    pytest.importorskip("pydicom")
    stored = np.array([[0, 100], [4095, 2000]], np.uint16)
    path = sf.write_dicom(tmp_path / "a.dcm", stored, slope=2, intercept=-1024)
    # stored * 2 - 1024: [[-1024, -824], [7166, 2976]]
    assert read_raw(path)[..., 0].tolist() == [[-1024, -824], [7166, 2976]]
    spec = PixelSpec(1, IntensityMap("dataset", (-1024.0,), (7166.0,)), (0.5,), (0.25,))
    # (x + 1024) / 8190: 0, 200/8190, 1, 4000/8190; then (v - 0.5) / 0.25
    expected = [[-2.0, (200 / 8190 - 0.5) / 0.25], [2.0, (4000 / 8190 - 0.5) / 0.25]]
    np.testing.assert_allclose(network_input(spec, path)[0], expected, atol=1e-5)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pytest.importorskip("pydicom")
    stored = np.array([[0, 100], [4095, 2000]], np.uint16)
    path = sf.write_dicom(tmp_path / "a.dcm", stored, photometric="MONOCHROME1")
    # MONOCHROME1 shows 0 as white: negated, 0 is now the largest value
    assert read_raw(path)[..., 0].tolist() == [[0, -100], [-4095, -2000]]


def test_dicom_without_pixel_data(tmp_path):
    pytest.importorskip("pydicom")
    with pytest.raises(DecodeError, match="without pixel data"):
        read_raw(sf.write_dicom(tmp_path / "a.dcm", None))


def test_truncated_tiff(tmp_path):
    path = sf.write_tiff(tmp_path / "a.tif", cube(4, np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        read_raw(path)


def hide(monkeypatch, package: str) -> None:
    """Make `import package` (and its submodules, even if loaded) raise ImportError."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


@pytest.mark.parametrize(
    "module, suffix, extra",
    [("astropy", "fits", "astro"), ("pydicom", "dcm", "medical")],
)
def test_missing_extra_names_the_pip_command(tmp_path, monkeypatch, module, suffix, extra):
    path = tmp_path / f"a.{suffix}"
    path.write_bytes(b"\0" * 64)
    hide(monkeypatch, module)
    with pytest.raises(MissingExtraError, match=rf"pip install 'lejepa-cli\[{extra}\]'"):
        read_raw(path)


def test_missing_extra_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    from lejepa_cli.cli import main

    folder = tmp_path / "sky"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.fits").write_bytes(b"\0" * 64)
    hide(monkeypatch, "astropy")
    with pytest.raises(SystemExit) as info:
        main(["pretrain", str(folder), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert "pip install 'lejepa-cli[astro]'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- folders


def test_mixed_channel_counts_are_refused_with_the_counts(tmp_path):
    for i in range(3):
        sf.write_tiff(tmp_path / f"g{i}.tif", RAMP.astype(np.uint16))
    sf.write_tiff(tmp_path / "c.tif", cube(4, np.uint16), photometric="minisblack")
    index = scan_folder(tmp_path)
    with pytest.raises(DataError, match=r"1 channel: 3 images, 4 channels: 1 image.*--channels 1"):
        plan(index)
    spec = plan(index, channels=4)  # the rule: grey images repeated to 4 channels
    assert spec.channels == 4
    assert spec.read(tmp_path / "g0.tif").shape == (16, 16, 4)
    grey = fit_channels(read_raw(tmp_path / "g0.tif"), 4)  # each channel then mapped as its own
    assert np.array_equal(grey[..., 0], grey[..., 3])


def test_fit_channels_refuses_other_counts():
    assert fit_channels(np.zeros((2, 2, 1)), 3).shape == (2, 2, 3)
    with pytest.raises(DecodeError, match="has 4 channels where the run uses 3"):
        fit_channels(np.zeros((2, 2, 4)), 3)
    with pytest.raises(DataError, match="only 1-channel images"):
        resolve_channels(3, Counter({3: 2, 4: 1}), "DATA")


def test_dataset_percentiles_are_measured_on_the_folder(tmp_path):
    # two 64 x 64 images of 0..4095, one at gain 1 and one at gain 4 (all pixels sampled)
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    sf.write_png16(tmp_path / "a.png", values)
    sf.write_png16(tmp_path / "b.png", values * 4)
    spec = plan(scan_folder(tmp_path))
    both = np.concatenate([values.ravel(), values.ravel() * 4]).astype(np.float64)
    assert spec.channels == 1 and spec.intensity.mode == "dataset"  # above 8 bits: dataset
    assert spec.intensity.low[0] == pytest.approx(np.percentile(both, 0.5))
    assert spec.intensity.high[0] == pytest.approx(np.percentile(both, 99.5))
    # the same raw value maps to the same input in both images (per-image would differ)
    a, b = spec.read(tmp_path / "a.png"), spec.read(tmp_path / "b.png")
    assert a[20, 0, 0] == b[5, 0, 0]  # raw 1280 in both
    per_image = IntensityMap("per-image")
    assert per_image.apply(read_raw(tmp_path / "a.png"))[20, 0, 0] == pytest.approx(1280 / 4095)
    assert per_image.apply(read_raw(tmp_path / "b.png"))[5, 0, 0] == pytest.approx(1280 / 16380)


def test_asinh_stretch_by_hand():
    mapping = IntensityMap("asinh", (0.0,), (100.0,), softening=0.1)
    out = mapping.apply(np.array([[[0.0]], [[10.0]], [[100.0]], [[1000.0]]], np.float32))
    # t = 0, 0.1, 1, 10: asinh(t / 0.1) / asinh(10) = 0, 0.8814/2.9982, 1, clipped 1
    np.testing.assert_allclose(out.ravel(), [0.0, 0.293966, 1.0, 1.0], atol=1e-5)


def test_robust_range_ignores_nan_and_flat_channels():
    pixels = np.array([[np.nan, 5.0], [1.0, 5.0], [3.0, 5.0], [np.inf, 5.0]])
    low, high = robust_range(pixels, (0.0, 100.0))
    assert low == (1.0, 5.0) and high == (3.0, 6.0)  # flat channel: high = low + 1


def test_eight_bit_folders_keep_the_rgb_path(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    assert plan(scan_folder(tmp_path)) is None
    spec = plan(scan_folder(tmp_path), intensity="dataset")  # asked for: x / 255, one channel
    assert spec.intensity.low == (0.0,) and spec.intensity.high == (255.0,)
    spec = plan(scan_folder(tmp_path), channels=1)  # a grey model, values as 8-bit always were
    assert spec.channels == 1 and spec.intensity.to_dict() == {
        "mode": "dataset",
        "low": [0.0],
        "high": [255.0],
    }


# ----------------------------------------------------------------------------- views


def crop_config(**augment):
    from lejepa_cli.data.multicrop import MultiCropConfig

    off = dict(hflip_p=0.0, blur_p=0.0, channel_jitter_p=0.0, channel_dropout_p=0.0,
               jitter_p=0.0, grayscale_p=0.0, solarize_p=0.0)  # fmt: skip
    return MultiCropConfig(global_views=2, local_views=3, global_size=16, local_size=8,
                           **{**off, **augment})  # fmt: skip


def flat_image(values) -> np.ndarray:
    """(24, 24, C) float32, channel c constant at values[c]."""
    return np.broadcast_to(np.asarray(values, np.float32), (24, 24, len(values))).copy()


def test_float_views_keep_channels_and_values():
    from lejepa_cli.data.multicrop import MultiCrop

    values = [0.1, 0.4, 0.7, 0.9]
    out = MultiCrop(crop_config())(flat_image(values), np.random.default_rng(0))
    assert (
        out["global_crops"].shape == (2, 4, 16, 16) and out["global_crops"].dtype == torch.float32
    )
    assert out["local_crops"].shape == (3, 4, 8, 8)
    # a flat image resizes to itself: every view holds the channel values, at full precision
    np.testing.assert_allclose(out["global_crops"][0, :, 5, 5].numpy(), values, atol=1e-6)


def test_rgb_operations_leave_other_channel_counts_alone():
    from lejepa_cli.data.multicrop import MultiCrop

    values = [0.1, 0.4, 0.7, 0.9]
    crop = MultiCrop(crop_config(grayscale_p=1.0, solarize_p=1.0, jitter_p=1.0))
    out = crop(flat_image(values), np.random.default_rng(0))
    np.testing.assert_allclose(out["global_crops"][1, :, 3, 3].numpy(), values, atol=1e-6)
    rgb = crop(flat_image([0.1, 0.4, 0.7]), np.random.default_rng(0))  # 3 channels: grey, etc.
    assert not np.allclose(rgb["global_crops"][1, :, 3, 3].numpy(), [0.1, 0.4, 0.7], atol=1e-3)


def test_channel_brightness_scales_each_channel_by_its_own_factor():
    from lejepa_cli.data.multicrop import MultiCrop

    values = np.array([0.2, 0.3, 0.4, 0.5])
    crop = MultiCrop(crop_config(channel_jitter_p=1.0, channel_brightness=0.5, channel_contrast=0))
    view = crop(flat_image(values), np.random.default_rng(1))["global_crops"][0, :, 0, 0]
    factors = view.numpy() / values  # brightness only: x * b_c with b_c in [0.5, 1.5]
    assert ((factors >= 0.5) & (factors <= 1.5)).all() and np.ptp(factors) > 0.01


def test_channel_dropout_zeroes_channels_but_never_all():
    from lejepa_cli.data.multicrop import MultiCrop

    crop = MultiCrop(crop_config(channel_dropout_p=1.0))
    dropped = []
    for seed in range(20):
        views = crop(flat_image([0.5] * 4), np.random.default_rng(seed))["global_crops"]
        alive = (views[:, :, 0, 0] > 0).sum(1)  # (V,) channels left per view
        assert (alive >= 1).all()
        dropped.append(int((4 - alive).sum()))
    assert sum(dropped) > 0


def test_headers_agree_with_the_pixels_on_every_zoo_file(tmp_path):
    """read_header promises what read_raw returns (channels, value type, size), for every
    readable file of the decode tests' zoo (modes 1, L, P, RGBA, I;16, CMYK, EXIF turns...)."""
    from zoo import build_zoo

    for rel, expect in build_zoo(tmp_path).items():
        if expect.status != "ok":
            continue
        header, raw = read_header(tmp_path / rel), read_raw(tmp_path / rel)
        assert raw.shape[-1] == header.channels, rel
        assert raw.dtype.name == header.dtype, rel
        assert {raw.shape[0], raw.shape[1]} == {header.height, header.width}, rel
