"""The held-out LeJEPA loss of a model: fixed images, fixed crops, fixed directions.

`evaluate_holdout` is what `lejepa_cli.selection` scores every kept checkpoint with (its
docstring says why each part is fixed). Images are decoded by a few threads, crops are made as
training makes them, and the model runs in chunks with BatchNorm on batch statistics.
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from lejepa_cli.data.holdout import training_cropper
from lejepa_cli.devices import autocast

HOLDOUT_CROP_SEED = 0x4E1D0  # with the image's position in the holdout, seeds its crops
HOLDOUT_DIRECTIONS_STEP = 10**12  # SIGReg directions of the held-out score: one constant draw
HOLDOUT_SLICES = 1024  # directions of the held-out score, whatever the run's --num-slices
EVAL_CHUNK = 64  # held-out images per forward pass
DECODE_THREADS = max(1, min(8, (os.cpu_count() or 1) // 2))  # held-out images decoded at once


def holdout_crops(holdout, position: int, cropper) -> dict[str, torch.Tensor]:
    """The fixed crops of held-out image `position`: its random stream depends on nothing else.

    Decoded as training decodes (possibly reduced to the cropper's `min_source_side`).
    """
    rng = np.random.default_rng((HOLDOUT_CROP_SEED, position))
    img = cropper.read(holdout.abspath(position))
    return cropper(img, rng)  # {"global_crops": (Vg, C, G, G), "local_crops": ...}


@dataclass
class HoldoutResult:
    loss: float
    pred: float
    sigreg: float
    num_images: int  # images that decoded (unreadable held-out files are left out)
    skipped: list[tuple[str, str]]  # (relpath, reason) of those left out
    features: np.ndarray  # (N, F) backbone embeddings of the first global view


@contextlib.contextmanager
def _batch_statistics(model):
    """Eval mode, except that BatchNorm normalises with each batch's own statistics.

    That is how the training loss is computed, so the held-out loss scores the function that
    training optimises; the running statistics lag behind the weights and would score another
    one. The running statistics are restored afterwards, so training is not disturbed.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    model.eval()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])


def evaluate_holdout(model, holdout, cfg, spec, device: torch.device) -> HoldoutResult:
    """The LeJEPA loss of `model` on the fixed held-out crops, without gradients.

    Dropout and drop-path are off; BatchNorm uses batch statistics as in training (see
    `_batch_statistics`); the model's mode and buffers are restored afterwards. The loss is
    computed on the whole holdout at once (N = holdout size) with the fixed directions, on this
    process alone.
    """
    from lejepa_cli.objective import lejepa_loss

    global_z, all_z, features, skipped = _embed_holdout(model, holdout, cfg, spec, device)
    out = lejepa_loss(
        global_z,
        all_z,
        lam=float(cfg.lam),
        step=HOLDOUT_DIRECTIONS_STEP,
        num_slices=HOLDOUT_SLICES,
        sync_ranks=False,  # rank 0 evaluates alone
    )
    return HoldoutResult(
        loss=float(out.loss),
        pred=float(out.pred),
        sigreg=float(out.sigreg),
        num_images=int(global_z.shape[1]),
        skipped=skipped,
        features=features,
    )


def _holdout_chunks(count: int) -> list[tuple[int, int]]:
    """Near-equal (start, stop) chunks of at most about EVAL_CHUNK images: batch statistics
    need more than one image per chunk."""
    chunks = max(1, math.ceil(count / EVAL_CHUNK))
    bounds = np.linspace(0, count, chunks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _embed_holdout(model, holdout, cfg, spec, device: torch.device):
    """(global_z (Vg, N, K), all_z (V, N, K), backbone features (N, F) of the first global view,
    skipped (relpath, reason)) over the readable held-out images."""
    from lejepa_cli.data.decode import DecodeError

    cropper = training_cropper(cfg)
    was_training = model.training
    captured: list[torch.Tensor] = []
    # The projector's input is the backbone embedding: capture it instead of a second forward.
    hook = model.projector.register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach())
    )
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    skipped: list[tuple[str, str]] = []

    def load(i: int) -> dict[str, torch.Tensor] | tuple[str, str]:
        try:
            return holdout_crops(holdout, i, cropper)
        except DecodeError as exc:
            return (holdout.relpath(i), exc.reason)

    # Pillow decodes outside the GIL: a few threads hide most of the decoding. Each image's
    # crops depend on its position only, so the result does not depend on the threads.
    pool = ThreadPoolExecutor(max_workers=DECODE_THREADS)
    try:
        with _batch_statistics(model), torch.no_grad():
            for start, stop in _holdout_chunks(len(holdout)):
                crops = []
                for got in pool.map(load, range(start, stop)):
                    (skipped if isinstance(got, tuple) else crops).append(got)
                if len(crops) >= 2:  # one image alone has undefined batch statistics
                    parts.append(_forward_chunk(model, crops, captured, cfg, spec, device))
    finally:
        pool.shutdown()
        hook.remove()
        model.train(was_training)
    if not parts:
        raise RuntimeError(f"none of the {len(holdout)} held-out images could be read")
    global_z = torch.cat([p[0] for p in parts], dim=1)  # (Vg, N, K)
    all_z = torch.cat([p[1] for p in parts], dim=1)  # (V, N, K)
    return global_z, all_z, torch.cat([p[2] for p in parts]).numpy(), skipped


def _forward_chunk(model, crops, captured: list, cfg, spec, device: torch.device):
    """(global_z (Vg, b, K), all_z (V, b, K), features (b, F)) of one chunk of crops."""
    from lejepa_cli.data.multicrop import normalize

    g = torch.stack([c["global_crops"] for c in crops], dim=1)  # (Vg, b, 3, G, G)
    g = normalize(g.to(device), spec.mean, spec.std)
    loc = None
    if int(cfg.local_views) > 0:
        loc = torch.stack([c["local_crops"] for c in crops], dim=1)  # (Vl, b, 3, L, L)
        loc = normalize(loc.to(device), spec.mean, spec.std)
    captured.clear()
    with autocast(device, getattr(cfg, "precision", "auto")):
        global_z, all_z = model(g, loc)  # (Vg, b, K), (V, b, K)
    feats = captured[0].float().view(g.shape[0], g.shape[1], -1)  # (Vg, b, F)
    return global_z.float(), all_z.float(), feats[0].cpu()
