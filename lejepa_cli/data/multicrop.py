"""The multi-crop views of the LeJEPA recipe, cut fast on the CPU as uint8 arrays.

Per view, in the recipe's order: RandomResizedCrop, horizontal flip (then, off unless asked for,
a vertical flip and a rotation by a multiple of 90 degrees), colour jitter (brightness,
contrast, saturation, hue in a random order), grayscale, Gaussian blur, solarize. Probabilities and
parameter ranges are those of torchvision's transforms; the work is done differently for speed:

- the decoded image becomes one (H, W, 3) uint8 array; each view is a slice of it, resized by
  torch's antialiased bilinear uint8 kernel on channels-last memory (the kernel torchvision's v2
  RandomResizedCrop runs, without its float round trips);
- brightness, contrast, saturation and hue, drawn and ordered as torchvision draws them, are
  each an affine map of the RGB vector, and so is grayscale; they are composed into one 3x4
  colour matrix and applied in a single pass (OpenCV's `transform`), rounded and clamped to
  0-255 once at the end where torchvision clamps after every step (the two differ only for
  pixels that leave 0-255 part way and come back);
- hue is a rotation by `hue_factor * 360` degrees about the grey axis instead of torchvision's
  RGB -> HSV -> RGB round trip, which costs more than all other colour steps together: the
  same angle range and direction (positive turns red towards yellow), exact for multiples
  of 120 degrees, greys stay grey. It keeps each pixel's channel mean where HSV keeps its
  largest channel, so a shifted colour is on average a little darker or lighter than
  torchvision's, and strongly saturated colours can clip where HSV would not;
- blur is OpenCV's separable Gaussian of the drawn sigma (kernel cut at 3 sigma, reflected
  border like torchvision's) instead of a fixed 23-tap float convolution; solarize is a lookup
  table;
- normalisation is left out: `normalize` runs once on the batched uint8 tensor, on the GPU when
  there is one, which also makes the worker-to-trainer transfer 4x smaller.

OpenCV runs single-threaded here: parallelism comes from DataLoader workers, one view per core.
All randomness comes from the `numpy.random.Generator` passed in, so a sample's views are a pure
function of (image, generator state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lejepa_cli.errors import UsageError, short_repr

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's rgb_to_grayscale
_GREY = np.tile(_LUMA, (3, 1))  # rgb -> (luma, luma, luma)
_ROTATIONS = (cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)

cv2.setNumThreads(1)


@dataclass(frozen=True)
class MultiCropConfig:
    """The views cut from each training image. Defaults are the reference LeJEPA recipe."""

    global_views: int = 2
    local_views: int = 6
    global_size: int = 224  # pixels, square
    local_size: int = 96  # pixels, square
    global_scale: tuple[float, float] = (0.3, 1.0)  # fraction of the image area
    local_scale: tuple[float, float] = (0.05, 0.3)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range (w / h)
    hflip_p: float = 0.5
    vflip_p: float = 0.0  # not in the recipe: for images with no up and down (cells, slides, sky)
    rot90_p: float = 0.0  # not in the recipe: rotate by 90, 180 or 270 degrees (equally likely)
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # fraction of a full turn, drawn from [-h, h]
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # pixels of the output view
    solarize_p: float = 0.2
    solarize_threshold: int = 128  # values >= threshold are inverted
    # Images that are not 3-channel (microscopy, multi-band sky or ground) get these instead of
    # colour jitter, grayscale and solarize, which are RGB operations.
    channel_jitter_p: float = 0.8
    channel_brightness: float = 0.4  # each channel scaled by its own factor in [1 - b, 1 + b]
    channel_contrast: float = 0.4  # each channel blended with its own mean, factor in [1-c, 1+c]
    channel_dropout_p: float = 0.2  # each channel zeroed with probability 1/2 (one always kept)

    def __post_init__(self):
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            value = getattr(self, name)
            try:
                if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
                    raise TypeError
                pair = (float(value[0]), float(value[1]))
            except (TypeError, ValueError, OverflowError):
                raise UsageError(
                    f"{name} must be two numbers (low, high), got {short_repr(value)}"
                ) from None
            object.__setattr__(self, name, pair)
        problems = []
        if self.global_views < 1:
            problems.append(f"global_views must be at least 1, got {self.global_views}")
        if self.local_views < 0:
            problems.append(f"local_views must be 0 or more, got {self.local_views}")
        for name in ("global_size", "local_size"):
            if getattr(self, name) < 8:
                problems.append(f"{name} must be at least 8 pixels, got {getattr(self, name)}")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                problems.append(f"{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        if not 0.1 <= self.ratio[0] <= self.ratio[1] <= 10:
            problems.append(f"ratio must satisfy 0.1 <= low <= high <= 10, got {self.ratio}")
        # The kernel reaches 3 sigma: beyond 100 px a view is one flat colour long before.
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 100:
            problems.append(
                f"blur_sigma must satisfy 0 < low <= high <= 100 pixels, got {self.blur_sigma}"
            )
        for f in fields(self):
            if f.name.endswith("_p") and not 0 <= getattr(self, f.name) <= 1:
                problems.append(f"{f.name} is a probability in [0, 1], got {getattr(self, f.name)}")
        for name in (
            "brightness",
            "contrast",
            "saturation",
            "channel_brightness",
            "channel_contrast",
        ):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            problems.append(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 <= self.solarize_threshold <= 256:
            problems.append(
                f"solarize_threshold must be in [0, 256], got {self.solarize_threshold}"
            )
        if problems:
            raise UsageError("invalid multi-crop settings: " + "; ".join(problems))


class MultiCrop:
    """`(image, numpy Generator) -> {"global_crops": (Vg,C,G,G), "local_crops": (Vl,C,L,L)}`.

    The image is an RGB PIL image (uint8 views, C = 3: the 8-bit path) or, for runs with a
    `pixels.PixelSpec`, a float32 (H, W, C) array in [0, 1] (float32 views, any C). `read`
    loads a file the way the run's images are loaded. See `normalize` for the batch.
    """

    def __init__(self, config: MultiCropConfig | None = None, pixels=None):
        self.config = config or MultiCropConfig()
        self.pixels = pixels  # a pixels.PixelSpec, or None for 8-bit RGB
        c = self.config
        self._log_ratio = (math.log(c.ratio[0]), math.log(c.ratio[1]))
        v = np.arange(256)
        solarized = np.where(v >= c.solarize_threshold, 255 - v, v)
        self._solarize_lut = solarized.astype(np.uint8)

    @property
    def min_source_side(self) -> int:
        """Shorter image side below which the smallest crop of either kind gets upsampled.

        Decoding may shrink a larger image down to this without losing any output detail.
        """
        c = self.config
        need = [c.global_size * math.sqrt(c.ratio[1] / c.global_scale[0])]
        if c.local_views:
            need.append(c.local_size * math.sqrt(c.ratio[1] / c.local_scale[0]))
        return math.ceil(max(need))

    def read(self, path):
        """The file at `path` as this transform takes it (DecodeError when unreadable)."""
        if self.pixels is not None:
            return self.pixels.read(path)  # (H, W, C) float32 in [0, 1]
        from lejepa_cli.data.decode import load_rgb

        return load_rgb(path, min_side=self.min_source_side)

    def __call__(self, img, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        if isinstance(img, np.ndarray):
            if img.ndim != 3 or img.dtype != np.float32:
                raise ValueError(
                    f"MultiCrop expects (H, W, C) float32, got {img.shape} {img.dtype}"
                )
            pixels = torch.from_numpy(img)  # (H, W, C) float32
        elif img.mode != "RGB":
            raise ValueError(f"MultiCrop expects an RGB image, got mode {img.mode}")
        else:
            pixels = torch.from_numpy(np.array(img))  # (H, W, 3) uint8
        global_crops = [
            self._view(pixels, c.global_size, c.global_scale, rng) for _ in range(c.global_views)
        ]
        local_crops = [
            self._view(pixels, c.local_size, c.local_scale, rng) for _ in range(c.local_views)
        ]
        like = pixels[:0, :0]
        return {
            "global_crops": _to_tensor(global_crops, c.global_size, like),  # (Vg, C, G, G)
            "local_crops": _to_tensor(local_crops, c.local_size, like),  # (Vl, C, L, L)
        }

    def _view(
        self, pixels: torch.Tensor, size: int, scale: tuple[float, float], rng: np.random.Generator
    ) -> np.ndarray:
        c = self.config
        height, width, channels = pixels.shape
        left, top, w, h = _crop_box((width, height), scale, self._log_ratio, c.ratio, rng)
        view = _resize(pixels[top : top + h, left : left + w], size)
        if rng.random() < c.hflip_p:
            view = cv2.flip(view, 1)
        # the recipe has neither: drawn only when asked for, so the recipe's streams are unchanged
        if c.vflip_p and rng.random() < c.vflip_p:
            view = cv2.flip(view, 0)
        if c.rot90_p and rng.random() < c.rot90_p:
            view = cv2.rotate(view, _ROTATIONS[int(rng.integers(3))])
        if view.dtype != np.uint8:
            return self._float_photometric(view, channels, rng).reshape(size, size, channels)
        colour = self._jitter_matrix(view, rng) if rng.random() < c.jitter_p else None
        if rng.random() < c.grayscale_p:
            colour = _GREY @ (colour if colour is not None else np.eye(3, 4))
        if colour is not None:
            view = _recolour(view, colour)
        if rng.random() < c.blur_p:
            sigma = rng.uniform(*c.blur_sigma)
            view = cv2.GaussianBlur(view, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        if rng.random() < c.solarize_p:
            view = cv2.LUT(view, self._solarize_lut)
        return view  # (size, size, 3) uint8

    def _float_photometric(
        self, view: np.ndarray, channels: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The photometric steps on a float view in [0, 1]: the recipe's colour steps for three
        channels, per-channel jitter and channel dropout for any other count; then blur."""
        c = self.config
        view = view.reshape(view.shape[0], view.shape[1], channels)  # OpenCV drops C == 1
        if channels == 3:
            colour = self._jitter_matrix(view, rng) if rng.random() < c.jitter_p else None
            if rng.random() < c.grayscale_p:
                colour = _GREY @ (colour if colour is not None else np.eye(3, 4))
            if colour is not None:
                view = np.clip(_recolour(view, colour), 0.0, 1.0)
        else:
            if rng.random() < c.channel_jitter_p:
                view = self._channel_jitter(view, rng)
            if channels > 1 and rng.random() < c.channel_dropout_p:
                drop = rng.random(channels) < 0.5
                drop[int(rng.integers(channels))] = False  # never a blank view
                view[:, :, drop] = 0.0
        if rng.random() < c.blur_p:
            sigma = rng.uniform(*c.blur_sigma)
            view = cv2.GaussianBlur(view, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        if channels == 3 and rng.random() < c.solarize_p:
            threshold = np.float32(c.solarize_threshold / 255.0)
            view = np.where(view >= threshold, np.float32(1.0) - view, view)
        return view  # (size, size, C) float32, C == 1 possibly squeezed by OpenCV

    def _channel_jitter(self, view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness then contrast, each channel with its own factors: y = k (b x - b m) + b m,
        with m the channel's mean in the view; clipped to [0, 1]."""
        c = self.config
        channels = view.shape[-1]
        b = rng.uniform(1 - c.channel_brightness, 1 + c.channel_brightness, channels)
        k = rng.uniform(1 - c.channel_contrast, 1 + c.channel_contrast, channels)
        m = view.reshape(-1, channels).mean(0)  # (C,)
        scale, shift = (b * k).astype(np.float32), (b * m * (1 - k)).astype(np.float32)
        return np.clip(view * scale + shift, 0.0, 1.0)

    def _jitter_matrix(self, view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """torchvision's ColorJitter as one 3x4 matrix: factors drawn, applied in a random order.

        Each of the four steps is an affine map of the RGB vector, so they compose. Contrast blends
        with the mean grey level of the image as it is at that step, which is the composed map
        applied to the view's channel means. Returns m: rgb -> m[:, :3] @ rgb + m[:, 3].
        """
        c = self.config
        order = rng.permutation(4)
        b = rng.uniform(1 - c.brightness, 1 + c.brightness)
        k = rng.uniform(1 - c.contrast, 1 + c.contrast)
        s = rng.uniform(1 - c.saturation, 1 + c.saturation)
        h = rng.uniform(-c.hue, c.hue)
        m = np.eye(3, 4)
        for op in order:
            if op == 0 and c.brightness:
                m = b * m
            elif op == 1 and c.contrast:
                means = np.array(cv2.mean(view)[:3])
                grey = float(np.dot(_LUMA, m[:, :3] @ means + m[:, 3]))
                m = k * m
                m[:, 3] += (1 - k) * grey
            elif op == 2 and c.saturation:
                m = _saturation_matrix(s) @ m
            elif op == 3 and c.hue:
                m = _hue_matrix(h) @ m
        return m


def _recolour(view: np.ndarray, m: np.ndarray) -> np.ndarray:
    """rgb -> m[:, :3] @ rgb + m[:, 3] for every pixel, rounded and clamped to uint8 once."""
    return cv2.transform(view, m.astype(np.float32))


def _resize(crop: torch.Tensor, size: int) -> np.ndarray:
    """(h, w, C) uint8 or float32 slice -> (size, size, C) array of its dtype, antialiased
    bilinear.

    Channels-last memory is what torch's vectorised uint8 antialias kernel runs on; one copy of
    the crop into that layout costs less than the kernel saves.
    """
    x = crop.permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def _crop_box(
    size: tuple[int, int],
    scale: tuple[float, float],
    log_ratio: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (left, top, width, height)."""
    width, height = size
    area = width * height
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # Fallback: the largest central crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _saturation_matrix(s: float) -> np.ndarray:
    """Blend with the grey image: s * rgb + (1 - s) * luma, as a 3x3 matrix."""
    return s * np.eye(3) + (1 - s) * _GREY


def _hue_matrix(hue_factor: float) -> np.ndarray:
    """Rotation by hue_factor * 360 degrees about the grey axis (red -> yellow -> green), 3x3."""
    theta = 2 * math.pi * hue_factor
    cos, k = math.cos(theta), (1 - math.cos(theta)) / 3
    q = math.sin(theta) / math.sqrt(3)
    return np.array(
        [
            [cos + k, k - q, k + q],
            [k + q, cos + k, k - q],
            [k - q, k + q, cos + k],
        ]
    )


def _to_tensor(views: list[np.ndarray], size: int, like: torch.Tensor) -> torch.Tensor:
    """Views (S, S, C) -> (V, C, S, S) of `like`'s dtype and channel count."""
    if not views:
        return torch.empty((0, like.shape[-1], size, size), dtype=like.dtype)
    stacked = np.stack(views)  # (V, S, S, C)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()  # (V, C, S, S)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Images (..., C, H, W) -> (x - mean) / std, on x's device; uint8 images are in 0-255
    (x / 255 first), float images (the pixels.PixelSpec path) already in 0-1.

    Meant for the whole batch at once in the training step (after moving it to the GPU).
    """
    unit = 255.0 if x.dtype == torch.uint8 else 1.0
    scale = torch.as_tensor(mean, dtype=dtype, device=x.device).view(-1, 1, 1) * unit
    spread = torch.as_tensor(std, dtype=dtype, device=x.device).view(-1, 1, 1) * unit
    return x.to(dtype).sub_(scale).div_(spread)


def suggest_crop_sizes(typical_side: int) -> tuple[int, int]:
    """Global and local crop sizes for images whose shorter side is typically `typical_side`.

    Photos (>= 224 px) get the recipe's 224 / 96. Smaller images are not upsampled: the global
    size is the largest multiple of 16 that fits (at least 32, so tiny images are upsampled only
    to there), and the local size keeps the recipe's 96/224 proportion, rounded to a multiple of
    16 (at least 16). Multiples of 16 keep both sizes divisible by a ViT's 16-pixel patches and by
    a ResNet's stride where possible: 69 px -> 64 / 32, 300 px -> 224 / 96, 28 px -> 32 / 16.
    """
    global_size = max(32, min(224, int(typical_side) // 16 * 16))
    local_size = max(16, int(round(global_size * 96 / 224 / 16)) * 16)
    return global_size, local_size
