"""Building the model: the one place where a run's weights are created."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lejepa_cli import config
from lejepa_cli.config import AUTO, PretrainConfig
from lejepa_cli.data.pixels import in_chans
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import UsageError
from lejepa_cli.model import DataSpec, LeJEPAModel, build_backbone, data_spec, is_transformer
from lejepa_cli.pretrained import init_backbone


@dataclass(frozen=True)
class Parts:
    """What the built run is made of, shared by the loop, the keeper and the scorer."""

    model: LeJEPAModel
    optimizer: torch.optim.Optimizer
    spec: DataSpec
    device: torch.device
    dist: DistInfo


def build_model(
    cfg: PretrainConfig, device: torch.device, resume: bool = False
) -> tuple[LeJEPAModel, DataSpec, PretrainConfig, list[str]]:
    """The seeded LeJEPA model on `device`, what its data needs, the config with the values
    that waited for the model (weight decay, crop_pct, the --init checksum) resolved, and the
    lines saying what --init loaded (a resume loads its checkpoint instead, later)."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(
        cfg.arch, int(cfg.global_size), drop_path=cfg.drop_path, in_chans=in_chans(cfg.pixels)
    )
    cfg, init_notes = init_backbone(backbone, cfg, resume)  # --init SOURCE (lejepa_cli.pretrained)
    if cfg.weight_decay == AUTO:  # the family decides: attention models take more decay
        cfg = cfg.replace(weight_decay=config.resolve_weight_decay(cfg, is_transformer(backbone)))
    spec = data_spec(backbone, int(cfg.global_size), cfg.crop_pct, cfg.pixels)
    cfg = cfg.replace(crop_pct=spec.crop_pct)  # auto: the architecture's, written out
    check_patch_multiple(backbone, cfg)
    model = LeJEPAModel(backbone, cfg.proj_hidden, cfg.proj_dim).to(device)
    return model, spec, cfg, init_notes


def check_patch_multiple(backbone, cfg: PretrainConfig) -> None:
    """A ViT cuts each crop into patches: both crop sizes must be whole multiples of the patch."""
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    p = max(patch) if isinstance(patch, (tuple, list)) else int(patch)
    for flag, size in (
        ("--global-size", int(cfg.global_size)),
        ("--local-size", int(cfg.local_size)),
    ):
        if size % p:
            lower, upper = max(p, size // p * p), (size // p + 1) * p
            fix = f"{lower} or {upper}" if lower != upper else str(upper)
            raise UsageError(
                f"{flag} {size} is not a multiple of {cfg.arch}'s {p}-px patch; use {fix}"
            )
