"""Backbone, projector and the two-resolution LeJEPA model.

The backbone is any timm architecture, built from scratch with `num_classes=0` so that its pooled
features are the embedding. The projector is the MLP on which the LeJEPA loss acts; probing and
export use the backbone alone.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from lejepa_cli.errors import UsageError


@dataclass(frozen=True)
class DataSpec:
    """What a backbone needs from its input, as timm resolves it (mean/std in 0-1 units)."""

    input_size: int
    mean: tuple[float, ...]  # one per input channel (3 unless the run's pixels say otherwise)
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float


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
