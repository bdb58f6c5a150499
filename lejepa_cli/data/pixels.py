"""A run's pixel contract: which channels, which intensity mapping, which mean and std.

Folders of ordinary 8-bit images (JPEG, PNG, TIFF in grey or colour) keep the original path:
`decode.load_rgb` to 8-bit RGB, uint8 views, timm's mean and std; `plan` returns None for them
unless a flag asks for something else. Everything else (16-bit or float pixels, more or fewer
channels, .npy, FITS, DICOM) gets a `PixelSpec`: files are read at full precision by
`readers.read_raw`, fitted to the run's channel count, mapped to 0-1 by an `IntensityMap`, and
normalised by a per-channel mean and std measured on a sample of the folder after the mapping.

The spec is a small dict in config.yaml (`pixels:`), in every checkpoint's meta.json and in an
export's config.json, so embed, probe and plain timm users turn a raw file into the same tensor:

    x = read_raw(path)                      # (H, W, C) as stored
    x = clip((x - low) / (high - low), 0, 1)    # dataset mapping, per channel
    x = (x - mean) / std                    # after the eval resize and centre crop
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lejepa_cli.data.channels import fit_channels, resolve_channels
from lejepa_cli.data.decode import DecodeError
from lejepa_cli.data.intensity import DEFAULT_SOFTENING, IntensityMap, robust_range, sample_pixels
from lejepa_cli.data.readers import SCIENCE_EXTENSIONS, RawHeader, read_header, read_raw
from lejepa_cli.errors import DataError, UnreadableDataError, UsageError

if TYPE_CHECKING:
    import torch

HEADER_SAMPLE = 256  # headers read to learn the folder's channels and bit depth
PIXEL_SAMPLE = 64  # images read in full to measure percentiles, mean and std
_STD_FLOOR = 1e-3  # a flat channel is not divided by (almost) zero


@dataclass(frozen=True)
class PixelSpec:
    """How a raw file becomes the float (H, W, C) image in [0, 1] that views are cut from."""

    channels: int
    intensity: IntensityMap
    mean: tuple[float, ...]  # per channel, of the mapped 0-1 values
    std: tuple[float, ...]
    fits_hdu: int | None = None

    def read(self, path) -> np.ndarray:
        """(H, W, channels) float32 in [0, 1]; DecodeError for an unreadable or unfit file."""
        raw = fit_channels(read_raw(path, fits_hdu=self.fits_hdu), self.channels)
        return self.intensity.apply(raw)

    def to_dict(self) -> dict:
        return {
            "channels": self.channels,
            "intensity": self.intensity.to_dict(),
            "mean": [round(v, 6) for v in self.mean],
            "std": [round(v, 6) for v in self.std],
            "fits_hdu": self.fits_hdu,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PixelSpec:
        """The spec recorded by a run; ValueError/KeyError/TypeError when it is malformed."""
        spec = cls(
            channels=int(data["channels"]),
            intensity=IntensityMap.from_dict(data["intensity"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            fits_hdu=None if data.get("fits_hdu") is None else int(data["fits_hdu"]),
        )
        sizes = {len(spec.mean), len(spec.std), spec.channels}
        if spec.intensity.mode != "per-image":
            sizes |= {len(spec.intensity.low)}
        if len(sizes) != 1 or not all(v > 0 for v in spec.std):
            raise ValueError(f"pixels record is inconsistent: {data}")
        return spec


def spec_of(pixels: dict | None) -> PixelSpec | None:
    """A recorded `pixels` mapping as a PixelSpec (None: the 8-bit RGB path)."""
    return None if not pixels else PixelSpec.from_dict(pixels)


@dataclass
class FolderSurvey:
    """What a sample of headers says about a folder."""

    counts: Counter  # channels -> images
    dtypes: Counter  # raw value type -> images
    formats: Counter
    headers: list[tuple[int, RawHeader]]  # (index position, header) of the readable ones

    @property
    def eight_bit(self) -> bool:
        """A folder of photos (the 8-bit RGB path): grey or colour images that Pillow reads,
        at least one of them 8-bit. A few 16-bit files among photos keep the path they
        always had (rescaled by their own range); raw data is a folder with none."""
        return (
            "uint8" in self.dtypes
            and set(self.counts) <= {1, 3}
            and not set(self.formats) & {"NPY", "FITS", "DICOM"}
        )


def survey(index, fits_hdu: int | None = None, limit: int = HEADER_SAMPLE) -> FolderSurvey:
    """Headers of a fixed sample of the folder (unreadable ones are left to the dataset)."""
    n = len(index)
    picks = sorted(np.random.default_rng(0).choice(n, size=min(n, limit), replace=False))
    counts, dtypes, formats, headers = Counter(), Counter(), Counter(), []
    for i in picks:
        try:
            header = read_header(index.abspath(int(i)), fits_hdu=fits_hdu)
        except DecodeError:
            continue
        counts[header.channels] += 1
        dtypes[header.dtype] += 1
        formats[header.format] += 1
        headers.append((int(i), header))
    if not headers:
        raise UnreadableDataError(
            f"none of the sampled images in {index.root} could be read; "
            f"check the folder with `lejepa inspect {index.root}`"
        )
    return FolderSurvey(counts, dtypes, formats, headers)


def has_science_files(index) -> bool:
    """Whether the folder holds files only `readers` can open (.npy, FITS, DICOM)."""
    by_ext = index.counts_by_extension()
    return any(ext in by_ext for ext in SCIENCE_EXTENSIONS)


def plan(
    index,
    channels: int | str = "auto",
    intensity: str = "auto",
    softening: float = DEFAULT_SOFTENING,
    fits_hdu: int | None = None,
) -> PixelSpec | None:
    """The run's PixelSpec, or None for an 8-bit folder with nothing asked of it."""
    found = survey(index, fits_hdu)
    if found.eight_bit and channels in ("auto", 3) and intensity in ("auto", "per-image"):
        return None
    n = resolve_channels(channels, found.counts, str(index.root))
    if intensity == "auto":  # x / 255 for 8-bit files; photos with a few 16-bit ones as always
        mixed_photos = found.eight_bit and set(found.dtypes) != {"uint8"}
        intensity = "per-image" if mixed_photos else "dataset"
    sample = _read_sample(index, found, n, fits_hdu)
    if intensity == "per-image":
        mapping = IntensityMap("per-image", softening=softening)
    elif set(found.dtypes) == {"uint8"} and intensity == "dataset":
        mapping = IntensityMap("dataset", (0.0,) * n, (255.0,) * n)  # x / 255, as 8-bit always
    else:
        low, high = robust_range(np.concatenate(sample))
        mapping = IntensityMap(intensity, low, high, softening)
    mean, std = _mean_std([mapping.apply(s[:, None, :])[:, 0, :] for s in sample])
    return PixelSpec(n, mapping, mean, std, fits_hdu)


def _read_sample(index, found: FolderSurvey, channels: int, fits_hdu) -> list[np.ndarray]:
    """(P, C) raw pixels of up to PIXEL_SAMPLE images of the survey, fitted to `channels`."""
    rng = np.random.default_rng(0)
    out = []
    for i, _ in found.headers[:PIXEL_SAMPLE]:
        try:
            raw = fit_channels(read_raw(index.abspath(i), fits_hdu=fits_hdu), channels)
        except DecodeError:
            continue
        out.append(sample_pixels(raw, rng))
    if not out:
        raise DataError(
            f"none of the sampled images in {index.root} could be read with {channels} "
            f"channels; check the folder with `lejepa inspect {index.root}`"
        )
    return out


def _mean_std(mapped: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of mapped (P, C) samples, each image weighing alike."""
    pixels = np.concatenate(mapped)  # (sum P, C)
    mean = pixels.mean(0)
    std = np.maximum(pixels.std(0), _STD_FLOOR)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def resolve_config(cfg, index):
    """`cfg` (a PretrainConfig) with channels, intensity and pixels resolved for its folder.

    A recorded `pixels` that matches the flags (a resumed run, or a run.yaml copied from a
    run) is kept as it is, so its images are mapped with the numbers they were trained with.
    """
    from lejepa_cli.data.channels import parse_channels

    if _matches(cfg.pixels, cfg):
        return cfg
    channels = parse_channels(cfg.channels)
    if not hasattr(index, "abspath"):  # WebDataset shards: samples decode as 8-bit RGB
        if channels not in ("auto", 3) or cfg.intensity not in ("auto", "per-image"):
            raise UsageError(
                "--channels and --intensity apply to image folders and manifests; shards are "
                "read as 8-bit RGB: leave both at auto"
            )
        return cfg.replace(channels=3, intensity="per-image", pixels=None)
    spec = plan(index, channels, cfg.intensity, cfg.asinh_softening, cfg.fits_hdu)
    if spec is None:
        return cfg.replace(channels=3, intensity="per-image", pixels=None)
    return cfg.replace(channels=spec.channels, intensity=spec.intensity.mode, pixels=spec.to_dict())


def _matches(pixels: dict | None, cfg) -> bool:
    if not pixels:
        return False
    mapping = pixels["intensity"]
    return (
        str(cfg.channels) == str(pixels["channels"])
        and cfg.intensity == mapping["mode"]
        and cfg.fits_hdu == pixels.get("fits_hdu")
        and (mapping["mode"] != "asinh" or cfg.asinh_softening == mapping.get("softening"))
    )


def in_chans(pixels: dict | None) -> int:
    """The backbone's input channels for a run's recorded pixels (3 on the 8-bit path)."""
    return int(pixels["channels"]) if pixels else 3


def eval_view(
    image: np.ndarray, size: int, crop_pct: float, interpolation: str, mean, std
) -> torch.Tensor:
    """(H, W, C) float in 0-1 -> normalised (C, size, size): timm's eval transform for arrays.

    As `timm.data.create_transform` does for an RGB image: the shorter side resized to
    floor(size / crop_pct) (the longer one in proportion, rounded down), antialiased; the
    centred size x size square kept; then (x - mean) / std per channel.
    """
    import math

    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # (1, C, H, W)
    h, w = x.shape[-2:]
    scale = math.floor(size / crop_pct)
    new = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "bilinear"
    x = F.interpolate(x, size=new, mode=mode, antialias=True, align_corners=False)
    top, left = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    x = x[0, :, top : top + size, left : left + size]  # (C, size, size)
    mean_t = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return ((x - mean_t) / std_t).contiguous()


class EvalImages:
    """`images[i]` -> (view (C, S, S), ok, reason): the eval view of `lejepa embed` and `probe`
    for an encoder with a pixels record (the 8-bit path uses timm's transform on PIL images)."""

    def __init__(self, paths, spec, pixels: dict):
        self.paths = paths  # numpy string array: nothing per sample for workers to copy
        self.spec = spec  # model.DataSpec: size, crop_pct, interpolation, mean, std
        self.pixels = PixelSpec.from_dict(pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = self.pixels.read(str(self.paths[i]))  # (H, W, C) float in 0-1
        except DecodeError as exc:
            return None, False, exc.reason
        s = self.spec
        return eval_view(image, s.input_size, s.crop_pct, s.interpolation, s.mean, s.std), True, ""
