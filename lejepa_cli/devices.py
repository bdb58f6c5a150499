"""Where tensors run and in which precision: the one device and autocast policy.

- device "auto": the CUDA GPU when one is visible, else the CPU;
- precision "auto": bf16 autocast on CUDA (weights, optimiser state and the loss stay float32),
  float32 on the CPU, where bf16 autocast is slower than float32 for these models.

Every command asks this module; none decides on its own.
"""

from __future__ import annotations

import contextlib

import torch

from lejepa_cli.errors import UsageError

AUTO = "auto"


def auto_device() -> str:
    """The device "auto" stands for on this machine."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device = AUTO) -> torch.device:
    """A --device value (auto, cpu, cuda, cuda:N) as a torch device that exists here."""
    if str(device) == AUTO:
        return torch.device(auto_device())
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {device} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(
            f"--device {device}: only cpu and cuda are supported; use auto, cpu or cuda"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def rank_device(device: str, local_rank: int) -> torch.device:
    """This process's device: a bare "cuda" means the GPU of this process's local rank."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank)
    return dev


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """A --precision value as "bf16" or "fp32" for `device`."""
    if precision != AUTO:
        return precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str = AUTO):
    """The context a forward pass runs in: bf16 autocast on CUDA unless fp32 is asked for."""
    if device.type == "cuda" and resolve_precision(precision, device) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
