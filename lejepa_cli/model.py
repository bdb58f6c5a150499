"""Backbone, projector and the two-resolution LeJEPA model.

The backbone is any timm architecture, built from scratch with `num_classes=0` so that its pooled
features are the embedding. The projector is the MLP on which the LeJEPA loss acts; probing and
export use the backbone alone.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lejepa_cli.errors import UsageError
from lejepa_cli.jsontypes import is_finite_number, is_number, is_whole_number


@dataclass(frozen=True)
class DataSpec:
    """What a backbone needs from its input, as timm resolves it (mean/std in 0-1 units)."""

    input_size: int
    mean: tuple[float, ...]  # one per input channel (3 unless the run's pixels say otherwise)
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float

    def to_dict(self) -> dict[str, Any]:
        """As meta.json's `data` records it (`data_spec_of` reads it back)."""
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
_SPEC_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")


def _finite_list(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(map(is_finite_number, value))


def data_spec_of(data: Any) -> DataSpec:
    """The preprocessing recorded in meta.json's `data` or an export's `pretrained_cfg`, as a
    DataSpec; a ValueError that starts with the field's name when a value is missing or
    cannot be right."""
    from lejepa_cli.config import MAX_SIZE, MIN_CROP_PCT

    if not isinstance(data, dict):
        raise ValueError(f"is {data!r}, not a mapping")
    for key in _SPEC_KEYS:
        if key not in data:
            raise ValueError(f"{key} is missing")
    size = data["input_size"]
    channels = data.get("in_chans", 3)
    if isinstance(size, list):  # timm's [channels, height, width]
        if len(size) != 3 or not is_whole_number(size[0]) or size[1] != size[2]:
            raise ValueError(f"input_size {size} is not [C, S, S]")
        channels, size = size[0], size[-1]
    if not is_whole_number(channels) or not 1 <= channels <= 256:
        raise ValueError(f"in_chans {channels} is not a channel count from 1 to 256")
    if not is_whole_number(size) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"input_size {size} is not a whole number from 1 to {MAX_SIZE}")
    mean, std = data["mean"], data["std"]
    if not _finite_list(mean, channels):
        raise ValueError(f"mean {mean} is not {channels} finite numbers")
    if not _finite_list(std, channels) or not all(v > 0 for v in std):
        raise ValueError(f"std {std} is not {channels} finite numbers above 0")
    if data["interpolation"] not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation {data['interpolation']!r} is not one of {', '.join(_INTERPOLATIONS)}"
        )
    crop = data["crop_pct"]
    if not is_number(crop) or not MIN_CROP_PCT <= crop <= 1:
        raise ValueError(f"crop_pct {crop} is not a number from {MIN_CROP_PCT} to 1")
    return DataSpec(
        input_size=size,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=data["interpolation"],
        crop_pct=float(crop),
    )


def check_arch(arch: str) -> None:
    """Raise a UsageError naming close matches when timm does not know `arch`."""
    import timm

    if timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    if not close:
        close = [n for n in names if arch.lower().split("_")[0] in n][:5]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(
        f"unknown architecture '{arch}': {hint}pass any name from timm.list_models() to --arch"
    )


def build_backbone(
    arch: str,
    img_size: int | None = None,
    num_classes: int = 0,
    drop_path: float = 0.0,
    in_chans: int = 3,
) -> nn.Module:
    """A timm model from scratch with pooled features as output (num_classes=0), or with a
    classifier head of `num_classes` (the examples' supervised reference).

    Models that take `img_size` (ViTs and friends) get the global crop size, and
    `dynamic_img_size` so that local crops of another size pass through the same weights.
    `drop_path` is timm's stochastic depth rate; it acts only in training mode, so the weights
    are those of the same architecture without it. `in_chans` is timm's input channel count
    (passed only when it is not 3, so RGB models are built exactly as before).
    """
    check_arch(arch)
    kwargs: dict = {"pretrained": False, "num_classes": num_classes}
    if in_chans != 3:
        kwargs["in_chans"] = int(in_chans)
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        model = _create(arch, img_size, kwargs)
    except TypeError:
        if not drop_path:
            raise
        model = None  # the architecture refuses drop_path_rate
    # Some architectures take drop_path_rate and ignore it: look for the layers themselves.
    layers = model.modules() if model is not None else ()
    if drop_path and not any(type(m).__name__ == "DropPath" for m in layers):
        raise UsageError(
            f"{arch} has no stochastic depth (timm's drop_path_rate); leave out --drop-path "
            "or pick another --arch"
        )
    return model


def _create(arch: str, img_size: int | None, kwargs: dict) -> nn.Module:
    import timm

    if img_size is not None:
        try:
            return timm.create_model(arch, img_size=img_size, dynamic_img_size=True, **kwargs)
        except TypeError:
            pass  # a CNN: its input size is free
    return timm.create_model(arch, **kwargs)


def is_transformer(model: nn.Module) -> bool:
    """Whether the model belongs to an attention family (weight decay 5e-2 instead of 5e-4)."""
    return any("Attention" in type(m).__name__ for m in model.modules())


def data_spec(
    backbone: nn.Module,
    input_size: int,
    crop_pct: float | str | None = None,
    pixels: dict | None = None,
) -> DataSpec:
    """Mean, std, interpolation and crop_pct as timm resolves them for this backbone; a
    `crop_pct` given (not None or 'auto') replaces timm's. A run's `pixels` record (see
    `lejepa_cli.data.pixels`) brings its own measured mean and std, one per channel."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=backbone)
    if crop_pct is None or crop_pct == "auto":
        crop_pct = cfg.get("crop_pct", 0.875)
    mean, std = (pixels["mean"], pixels["std"]) if pixels else (cfg["mean"], cfg["std"])
    return DataSpec(
        input_size=int(input_size),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(crop_pct),
    )


class Projector(nn.Sequential):
    """Linear-BN-ReLU twice, then Linear (SPEC section 4)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class LeJEPAModel(nn.Module):
    """Backbone + projector over the global and local views of a batch.

    One forward handles both resolutions (so DDP sees a single forward per step): the global views
    go through the backbone as one batch, the local views as another.
    """

    def __init__(self, backbone: nn.Module, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.projector = Projector(backbone.num_features, hidden_dim, out_dim)
        self.channels_last = False  # set on CUDA, where convolutions run faster in NHWC

    def project(self, views: torch.Tensor) -> torch.Tensor:
        """views (V, B, C, H, W) -> projector outputs (V, B, K)."""
        v, b = views.shape[:2]
        x = views.flatten(0, 1)  # (V*B, C, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(x)  # (V*B, F)
        return self.projector(feats).view(v, b, -1)  # (V, B, K)

    def forward(
        self, global_views: torch.Tensor, local_views: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (global_z (Vg, B, K), all_z (V, B, K)), globals first in all_z."""
        global_z = self.project(global_views)  # (Vg, B, K)
        if local_views is None or local_views.shape[0] == 0:
            return global_z, global_z
        local_z = self.project(local_views)  # (Vl, B, K)
        return global_z, torch.cat([global_z, local_z], dim=0)  # (V, B, K)
