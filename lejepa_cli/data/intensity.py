"""How raw pixel values (16-bit counts, floats, Hounsfield units) become network input in 0-1.

Three mappings, each per channel, each ending clipped to [0, 1] (NaN and inf become 0):

- `per-image`: each image by its own finite min and max (what 8-bit folders always got for
  16-bit files). Brightness differences between images are lost.
- `dataset`: x -> (x - low) / (high - low), with low and high the 0.5th and 99.5th percentiles
  of each channel measured once on a sample of the folder. The same numbers for every image,
  so a faint galaxy stays fainter than a bright one. The default for data above 8 bits.
- `asinh`: the astronomers' stretch (Lupton et al. 1999) on the same low and high:
  t = (x - low) / (high - low); y = asinh(t / s) / asinh(1 / s). `s` is the softening:
  below about s the stretch is linear, above it logarithmic; a smaller s lifts faint
  structure more. s = 0.1 maps t = 0.1 to 0.30 and t = 0.01 to 0.03.

The numbers of a run (mode, low, high, softening) are written into its config.yaml, checkpoints
and export, so a file read later is mapped exactly as in training.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np

from lejepa_cli.errors import UsageError

MODES = ("dataset", "per-image", "asinh")
PERCENTILES = (0.5, 99.5)
DEFAULT_SOFTENING = 0.1
_SAMPLE_PIXELS = 16384  # pixels per image that enter the percentiles: each image weighs alike


@dataclass(frozen=True)
class IntensityMap:
    """A mapping from raw values to 0-1, per channel; low/high are empty for per-image."""

    mode: str
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    softening: float = DEFAULT_SOFTENING

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"--intensity {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0 < self.softening < float("inf"):
            raise UsageError(f"--asinh-softening must be a number above 0, got {self.softening}")
        if self.mode != "per-image" and len(self.low) != len(self.high):
            raise ValueError("low and high need one value per channel")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(H, W, C) raw values -> (H, W, C) float32 in [0, 1] (one copy, then in place)."""
        x = raw.astype(np.float32)  # (H, W, C), a copy even when raw is float32
        if self.mode == "per-image":
            low, high = _image_range(x)
        else:
            low = np.asarray(self.low, dtype=np.float32)
            high = np.asarray(self.high, dtype=np.float32)
        x -= low
        x *= np.float32(1) / (high - low)
        if self.mode == "asinh":
            s = np.float32(self.softening)
            x *= np.float32(1) / s
            np.arcsinh(x, out=x)
            x *= np.float32(1) / np.arcsinh(np.float32(1) / s)
        if raw.dtype.kind == "f":  # integers have no NaN or inf
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return np.clip(x, 0.0, 1.0, out=x)

    def to_dict(self) -> dict:
        out = {"mode": self.mode}
        if self.mode != "per-image":
            out |= {"low": list(self.low), "high": list(self.high)}
        if self.mode == "asinh":
            out["softening"] = self.softening
        return out

    @classmethod
    def from_dict(cls, data: dict) -> IntensityMap:
        return cls(
            mode=str(data["mode"]),
            low=tuple(float(v) for v in data.get("low", ())),
            high=tuple(float(v) for v in data.get("high", ())),
            softening=float(data.get("softening", DEFAULT_SOFTENING)),
        )


def _image_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel finite min and max of one image; a constant channel maps to 0."""
    finite = np.where(np.isfinite(x), x, np.nan)
    with _quiet():
        low = np.nanmin(finite, axis=(0, 1))
        high = np.nanmax(finite, axis=(0, 1))
    low = np.nan_to_num(low, nan=0.0)
    high = np.where(np.isfinite(high) & (high > low), high, low + 1)
    return low.astype(np.float32), high.astype(np.float32)


@contextlib.contextmanager
def _quiet():
    """All-NaN channels are expected here (and turned into 0): no RuntimeWarning for them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def sample_pixels(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to _SAMPLE_PIXELS finite-or-not pixels of one (H, W, C) image, as (P, C) float64."""
    flat = raw.reshape(-1, raw.shape[-1])
    if len(flat) > _SAMPLE_PIXELS:
        flat = flat[rng.choice(len(flat), size=_SAMPLE_PIXELS, replace=False)]
    return flat.astype(np.float64)


def robust_range(
    pixels: np.ndarray, percentiles: tuple[float, float] = PERCENTILES
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (low, high) percentiles of (P, C) pixels, ignoring NaN and inf.

    A channel whose two percentiles are equal (a flat channel) gets high = low + 1, so it maps
    to 0 instead of dividing by zero.
    """
    finite = np.where(np.isfinite(pixels), pixels, np.nan)
    with _quiet():
        lo, hi = np.nanpercentile(finite, percentiles, axis=0)  # (C,), (C,)
    lo = np.nan_to_num(lo, nan=0.0)
    hi = np.where(np.isfinite(hi) & (hi > lo), hi, lo + 1)
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi)
