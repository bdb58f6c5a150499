"""Multi-crop views: shapes, settings, determinism, and the recipe's probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lejepa_cli.data.multicrop import (
    _GREY,
    MultiCrop,
    MultiCropConfig,
    _hue_matrix,
    _recolour,
    normalize,
    suggest_crop_sizes,
)
from lejepa_cli.errors import UsageError

OFF = dict(hflip_p=0, jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)


def _photo(w=80, h=60, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _smooth(w, h, seed=0) -> Image.Image:
    """A photo-like image: a coarse random colour field, bicubically enlarged."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)


def _views(config, img=None, seed=0):
    return MultiCrop(config)(img or _photo(), np.random.default_rng(seed))


def test_defaults_are_the_recipe():
    c = MultiCropConfig()
    assert (c.global_views, c.local_views, c.global_size, c.local_size) == (2, 6, 224, 96)
    assert c.global_scale == (0.3, 1.0) and c.local_scale == (0.05, 0.3)
    assert c.ratio == pytest.approx((3 / 4, 4 / 3))
    assert (c.hflip_p, c.jitter_p, c.grayscale_p, c.blur_p, c.solarize_p) == (
        0.5,
        0.8,
        0.2,
        0.5,
        0.2,
    )
    assert (c.brightness, c.contrast, c.saturation, c.hue) == (0.4, 0.4, 0.2, 0.1)
    assert c.blur_sigma == (0.1, 2.0) and c.solarize_threshold == 128


def test_shapes_and_dtypes_default_and_configured():
    out = _views(MultiCropConfig(global_size=64, local_size=32))
    assert out["global_crops"].shape == (2, 3, 64, 64)
    assert out["local_crops"].shape == (6, 3, 32, 32)
    assert out["global_crops"].dtype == torch.uint8 and out["local_crops"].dtype == torch.uint8
    out = _views(MultiCropConfig(global_views=3, local_views=0, global_size=48, local_size=16))
    assert out["global_crops"].shape == (3, 3, 48, 48)
    assert out["local_crops"].shape == (0, 3, 16, 16)


def test_same_generator_state_gives_identical_views_whatever_the_global_rngs():
    config = MultiCropConfig(global_size=32, local_size=16)
    np.random.seed(1)
    torch.manual_seed(1)
    a = _views(config, seed=7)
    np.random.seed(2)
    torch.manual_seed(2)
    b = _views(config, seed=7)
    c = _views(config, seed=8)
    assert torch.equal(a["global_crops"], b["global_crops"])
    assert torch.equal(a["local_crops"], b["local_crops"])
    assert not torch.equal(a["global_crops"], c["global_crops"])


def test_full_crop_with_flip_is_a_mirrored_resize():
    img = _photo(40, 40)
    config = MultiCropConfig(
        global_views=1, local_views=0, global_size=40, global_scale=(1, 1), ratio=(1, 1), **OFF
    )
    plain = _views(config, img)["global_crops"][0]
    assert torch.equal(plain.permute(1, 2, 0), torch.from_numpy(np.array(img)))
    flipped = _views(MultiCropConfig(**{**vars(config), "hflip_p": 1.0}), img)["global_crops"][0]
    assert torch.equal(flipped, plain.flip(-1))


def test_vertical_flip_and_quarter_turns_when_asked_for():
    img = _photo(40, 40)
    config = MultiCropConfig(
        global_views=1, local_views=0, global_size=40, global_scale=(1, 1), ratio=(1, 1), **OFF
    )
    plain = _views(config, img)["global_crops"][0]  # (3, H, W)
    flipped = _views(MultiCropConfig(**{**vars(config), "vflip_p": 1.0}), img)["global_crops"][0]
    assert torch.equal(flipped, plain.flip(-2))
    turns = [torch.rot90(plain, k, dims=(1, 2)) for k in range(4)]
    turned = MultiCropConfig(**{**vars(config), "rot90_p": 1.0})
    seen = set()
    for seed in range(24):
        view = _views(turned, img, seed=seed)["global_crops"][0]
        seen |= {k for k, t in enumerate(turns) if torch.equal(view, t)}
    assert seen == {1, 2, 3}  # never left as it was, and each of the three turns occurs


class _CountingRng:
    """A numpy Generator that counts the draws made from it."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), 0

    def __getattr__(self, name):
        def draw(*args, **kwargs):
            self.draws += 1
            return getattr(self.rng, name)(*args, **kwargs)

        return draw


def test_vertical_flip_and_turns_are_off_and_draw_nothing_in_the_recipe():
    c = MultiCropConfig()
    assert c.vflip_p == 0 and c.rot90_p == 0
    # Off, they take no random numbers, so the recipe's views are those of earlier versions;
    # asked for (however rarely), each view draws once for each.
    # (Whole-image crops and no colour steps, so that nothing else varies the number of draws.)
    fixed = dict(global_size=32, local_size=16, global_scale=(1, 1), local_scale=(1, 1), **OFF)
    counts = []
    for p in (0.0, 1e-12):
        rng = _CountingRng(3)
        config = MultiCropConfig(**fixed, ratio=(1, 1), vflip_p=p, rot90_p=p)
        MultiCrop(config)(_photo(40, 40), rng)
        counts.append(rng.draws)
    assert counts[1] - counts[0] == 2 * (2 + 6)


def test_grayscale_and_solarize_when_certain():
    img = _photo()
    gray = _views(MultiCropConfig(global_size=32, local_size=16, **{**OFF, "grayscale_p": 1}), img)
    g = gray["global_crops"].int()
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    flat = Image.new("RGB", (50, 50), (200, 100, 30))
    sol = _views(MultiCropConfig(global_size=32, local_size=16, **{**OFF, "solarize_p": 1}), flat)
    assert sol["global_crops"][0, :, 5, 5].tolist() == [55, 100, 30]


def test_blur_smooths_and_jitter_changes_colours():
    img = _photo(64, 64)
    base = dict(global_views=1, local_views=0, global_size=64, global_scale=(1, 1), ratio=(1, 1))
    sharp = _views(MultiCropConfig(**base, **OFF), img)["global_crops"].float()
    blurred = _views(MultiCropConfig(**base, **{**OFF, "blur_p": 1}), img)["global_crops"].float()
    assert blurred.diff(dim=-1).abs().mean() < 0.7 * sharp.diff(dim=-1).abs().mean()
    jittered = _views(MultiCropConfig(**base, **{**OFF, "jitter_p": 1}), img)["global_crops"]
    assert not torch.equal(jittered, sharp.to(torch.uint8))


def test_recipe_probabilities_hold_over_many_views():
    # 16 px views, colours untouched except grayscale: count how often a view comes out grey.
    config = MultiCropConfig(global_views=1, local_views=15, global_size=16, local_size=16, **OFF)
    gray_cfg = MultiCropConfig(**{**vars(config), "grayscale_p": 0.2})
    img = _photo(32, 32)
    crop = MultiCrop(gray_cfg)
    grey = total = 0
    for seed in range(60):
        out = crop(img, np.random.default_rng(seed))
        views = torch.cat([out["global_crops"], out["local_crops"]])
        grey += int((views[:, 0] == views[:, 1]).flatten(1).all(1).sum())
        total += len(views)
    assert abs(grey / total - 0.2) < 0.05, grey / total


def test_hue_rotation_matrix():
    red = np.array([255.0, 0, 0])
    m = _hue_matrix(1 / 3)
    assert np.allclose(m @ red, [0, 255, 0], atol=1e-6)  # red -> green at a third of a turn
    assert np.allclose(m @ np.array([90.0, 90, 90]), [90, 90, 90])  # greys stay grey
    m = _hue_matrix(0.05)
    r, g, b = m @ red
    assert r > g > 0 and b < 1  # a small positive shift moves red towards yellow


def test_composed_jitter_matches_torchvision_step_by_step():
    # Brightness, contrast and saturation in the drawn order, one torchvision function per step
    # on the float image, against the single composed colour matrix (mid-range pixels: no
    # clamping on the way; on uint8 torchvision also truncates to an integer after every step).
    # Grayscale afterwards is folded into the same matrix.
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(3)
    pixels = rng.integers(80, 161, (40, 40, 3), dtype=np.uint8)
    config = MultiCropConfig(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.0)
    crop = MultiCrop(config)
    for seed in range(8):
        m = crop._jitter_matrix(pixels, np.random.default_rng(seed))
        draw = np.random.default_rng(seed)
        order = draw.permutation(4)
        factors = [draw.uniform(0.8, 1.2) for _ in range(3)]
        ref = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
        for op in order:
            if op == 0:
                ref = TF.adjust_brightness(ref, factors[0])
            elif op == 1:
                ref = TF.adjust_contrast(ref, factors[1])
            elif op == 2:
                ref = TF.adjust_saturation(ref, factors[2])
        for ours, want in (
            (_recolour(pixels, m), ref),
            (_recolour(pixels, _GREY @ m), TF.rgb_to_grayscale(ref, num_output_channels=3)),
        ):
            diff = (torch.from_numpy(ours).permute(2, 0, 1).float() - want * 255).abs()
            assert diff.max() <= 1.0, (seed, order, diff.max())
    # With a hue turn the colours move but greys stay grey.
    grey = np.full((8, 8, 3), 100, dtype=np.uint8)
    hued = MultiCrop(MultiCropConfig(brightness=0, contrast=0, saturation=0, hue=0.5))
    m = hued._jitter_matrix(grey, np.random.default_rng(0))
    assert _recolour(grey, m)[0, 0].tolist() == [100] * 3


def test_resize_and_blur_match_torchvision():
    # The crop's resize is torchvision v2's antialiased bilinear resize of the same box, and the
    # blur is torchvision's Gaussian of the same sigma (23 taps there, cut at 3 sigma here).
    from torchvision.transforms.v2 import functional as TF2

    img = _smooth(120, 90)
    chw = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    base = dict(global_views=1, local_views=0, global_size=48, global_scale=(0.5, 0.5), **OFF)
    config = MultiCropConfig(**base)
    ours = _views(config, img, seed=4)["global_crops"][0]
    draw = np.random.default_rng(4)
    area = 120 * 90 * draw.uniform(0.5, 0.5)
    aspect = np.exp(draw.uniform(np.log(3 / 4), np.log(4 / 3)))
    w, h = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
    top, left = int(draw.integers(0, 90 - h + 1)), int(draw.integers(0, 120 - w + 1))
    want = TF2.resized_crop(chw, top, left, h, w, [48, 48], antialias=True)
    assert (ours.int() - want.int()).abs().max() <= 1

    blurred_cfg = MultiCropConfig(**{**base, "global_scale": (1, 1), "ratio": (1, 1)})
    square = _smooth(64, 64, seed=2)
    sharp = torch.from_numpy(np.array(square)).permute(2, 0, 1)
    for sigma in (0.5, 1.3, 2.0):
        cfg = MultiCropConfig(**{**vars(blurred_cfg), "global_size": 64, "blur_p": 1,
                                 "blur_sigma": (sigma, sigma)})  # fmt: skip
        ours = _views(cfg, square)["global_crops"][0].float()
        want = TF2.gaussian_blur(sharp.float(), [23, 23], [sigma, sigma])
        assert (ours - want).abs().max() <= 1.0, sigma
        assert (ours - sharp.float()).abs().max() > 2.0  # it did blur


def test_invalid_settings_are_usage_errors():
    with pytest.raises(UsageError, match="local_scale"):
        MultiCropConfig(local_scale=(0.5, 0.1))
    with pytest.raises(UsageError, match="blur_p"):
        MultiCropConfig(blur_p=1.5)
    with pytest.raises(UsageError, match="global_size"):
        MultiCropConfig(global_size=4)
    assert MultiCropConfig(global_scale=[0.5, 1]).global_scale == (0.5, 1.0)


def test_min_source_side_covers_the_smallest_crop():
    assert MultiCrop().min_source_side == 496  # 96 * sqrt((4/3) / 0.05)
    assert MultiCrop(MultiCropConfig(local_views=0)).min_source_side == 473


@pytest.mark.parametrize(
    "side, sizes",
    [(69, (64, 32)), (300, (224, 96)), (28, (32, 16)), (256, (224, 96)), (4000, (224, 96))]
    + [(10, (32, 16)), (128, (128, 48)), (100, (96, 48))],
)
def test_suggest_crop_sizes(side, sizes):
    assert suggest_crop_sizes(side) == sizes
    g, local = sizes
    assert g % 16 == 0 and local % 16 == 0 and local < g


def test_normalize_on_the_batch():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    out = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 1, 2)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-2.0, -1.0, -0.5])
    assert out[1, :, 0, 1].tolist() == pytest.approx([2.0, 1.0, 0.5])
