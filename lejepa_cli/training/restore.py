"""Restoring a run from its newest checkpoint: weights, optimiser state and random generators."""

from __future__ import annotations

from pathlib import Path

import torch

from lejepa_cli import checkpoint, rundir
from lejepa_cli.errors import CheckpointError, RunDirError
from lejepa_cli.model import LeJEPAModel


def restore(
    ckpt: Path,
    model: LeJEPAModel,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    arch: str,
) -> int:
    """Load `ckpt` into the model, the optimiser and torch's generators; returns its step.

    A damaged or altered file is a CheckpointError naming the fix; weights of another
    architecture or size are a RunDirError.
    """
    load_weights(ckpt, model, arch)
    state = checkpoint.load_train_state(ckpt)
    try:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    except (RuntimeError, ValueError, TypeError, KeyError):
        raise CheckpointError(
            f"{ckpt}/{rundir.TRAIN_STATE} does not fit this run's model; "
            + checkpoint.damaged_fix(ckpt)
        ) from None
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return step


def load_weights(ckpt: Path, model: LeJEPAModel, arch: str) -> None:
    try:
        weights = checkpoint.load_weights(ckpt)
    except CheckpointError:
        raise CheckpointError(
            f"{ckpt}/{rundir.WEIGHTS} cannot be read, so the run cannot resume there; "
            + checkpoint.damaged_fix(ckpt)
        ) from None
    own = model.state_dict()
    key = checkpoint.float_mismatch(own, weights)
    if key is not None:
        raise CheckpointError(
            f"{ckpt}/{rundir.WEIGHTS} holds {key} as {weights[key].dtype}, not "
            f"{own[key].dtype}; the file was altered: " + checkpoint.damaged_fix(ckpt)
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError:
        raise RunDirError(
            f"checkpoint {ckpt} does not fit a {arch} model; resume with the run's "
            "own --arch and sizes"
        ) from None
