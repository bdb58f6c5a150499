"""The optimiser and its schedule: AdamW on parameter groups, linear warmup, then cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lejepa_cli.config import PretrainConfig
from lejepa_cli.model import LeJEPAModel


def param_groups(model: LeJEPAModel, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: none on biases, norms, tokens and position tables."""
    skip = set()
    no_wd = getattr(model.backbone, "no_weight_decay", None)
    if callable(no_wd):
        skip = {f"backbone.{name}" for name in no_wd()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: LeJEPAModel, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; its learning rate is set by `Schedule` at every step."""
    return torch.optim.AdamW(
        param_groups(model, float(cfg.weight_decay)), lr=cfg.lr, betas=(0.9, 0.999)
    )


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine down to peak * min_ratio at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each global step of a run."""

    total_steps: int
    warmup_steps: int
    peak: float
    min_ratio: float

    @classmethod
    def for_run(cls, cfg: PretrainConfig, total_steps: int, steps_per_epoch: int) -> Schedule:
        """--warmup-epochs counted in this run's steps per epoch (resolved: not 'auto')."""
        warmup = int(round(float(cfg.warmup_epochs) * steps_per_epoch))
        return cls(total_steps, warmup, cfg.lr, cfg.min_lr_ratio)

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak, self.min_ratio)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's learning rate for `step`; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
