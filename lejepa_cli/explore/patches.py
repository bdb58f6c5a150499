"""Patch maps: the first three principal components of a backbone's spatial features as RGB.

timm's `forward_features` gives a ViT's tokens (B, T, D), prefix tokens first
(`num_prefix_tokens`: class and register tokens), or a CNN's last feature map (B, C, h, w).
The components are fitted on the patches of all the sample images together, so one colour means
the same direction in every picture (the DINOv2 visualisation).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lejepa_cli.artifacts import Encoder


def patch_grid(backbone: torch.nn.Module, feats: torch.Tensor) -> torch.Tensor | None:
    """forward_features output -> (B, h, w, D) patch vectors; None when it has no spatial grid."""
    if feats.ndim == 4:  # CNN: (B, C, h, w)
        return feats.permute(0, 2, 3, 1)
    if feats.ndim != 3:
        return None
    tokens = feats[:, int(getattr(backbone, "num_prefix_tokens", 0)) :]  # (B, h*w, D)
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if grid is not None and int(grid[0]) * int(grid[1]) == tokens.shape[1]:
        h, w = int(grid[0]), int(grid[1])
    else:
        h = w = math.isqrt(tokens.shape[1])
        if h * w != tokens.shape[1] or h == 0:
            return None
    return tokens.reshape(len(tokens), h, w, -1)


def pca_rgb(grid: np.ndarray) -> np.ndarray:
    """(B, h, w, D) -> (B, h, w, 3) in [0, 1]: each of the first three principal components of
    all the patches, stretched between its 1st and 99th percentile."""
    b, h, w, d = grid.shape
    x = grid.reshape(-1, d).astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T  # (B*h*w, <=3)
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    rgb = (comps - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.clip(rgb, 0, 1).reshape(b, h, w, 3)


def patch_maps(encoder: Encoder, paths: list[str], device: torch.device) -> np.ndarray | None:
    """(B, h, w, 3) RGB patch maps of the images at `paths` (all readable), or None when the
    backbone has no spatial features (or a 1 x 1 grid)."""
    from lejepa_cli.data.decode import load_rgb
    from lejepa_cli.features import cut_strip, data_config, eval_transform

    if not paths or not hasattr(encoder.backbone, "forward_features"):
        return None
    transform = eval_transform(encoder.spec)
    scale = math.floor(encoder.spec.input_size / data_config(encoder.spec)["crop_pct"])
    x = torch.stack([transform(cut_strip(load_rgb(p), scale)) for p in paths])  # (B, 3, H, W)
    backbone = encoder.backbone.to(device)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        feats = backbone.forward_features(x.to(device)).float().cpu()
    backbone.train(was_training)
    grid = patch_grid(backbone, feats)
    if grid is None or grid.shape[1] * grid.shape[2] < 2:
        return None
    return pca_rgb(grid.numpy())
