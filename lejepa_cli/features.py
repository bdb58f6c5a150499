"""Frozen-backbone features: timm's own eval transform, batched extraction, an on-disk cache.

Two kinds of features:

- `embed`: the backbone's pooled output (`num_classes=0`), what `lejepa embed` writes and what an
  exported model gives in plain timm.
- `probe`: for ViTs pooled by their class token, the CLS tokens of the last two blocks and the
  average of the last block's patch tokens, after the final norm, concatenated (the
  linear-evaluation features of DINO and DINOv2: class tokens of the last blocks, plus the pooled
  patch tokens); the pooled output for everything else.

The eval transform is `timm.data.create_transform(**resolve_data_config(...))` for the encoder's
data spec, so an exported model preprocessed by timm itself sees exactly the same pixels.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lejepa_cli import atomic
from lejepa_cli.artifacts import Encoder
from lejepa_cli.config import MAX_WORKERS
from lejepa_cli.devices import autocast, resolve_device  # noqa: F401  (resolve_device: for callers)
from lejepa_cli.model import DataSpec

KINDS = ("embed", "probe")
# Images per forward pass: 65536 images of 224 px are already 39 GB of input.
MAX_BATCH_SIZE = 65536
# The eval resize scales the shorter side to the crop's size, so a strip of 1 x 1,000,000 pixels
# would become 35 x 35,000,000 at 32 px (gigabytes). A strip whose resized image would pass
# this many pixels is first cut to its centre, which is all the centre crop keeps anyway.
MAX_EVAL_PIXELS = 1 << 24  # 50 MB of RGB; at 224 px, strips thinner than 1:272
ImageProgress = Callable[[int, int], None]  # (images done, images in total)


def resolve_workers(workers: int | str | None, num_images: int) -> int:
    """'auto': no worker processes for small jobs (starting them costs more than it saves),
    else up to 8, leaving a core for the main process."""
    if workers is None or str(workers) == "auto":
        if num_images < 256:
            return 0
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    try:
        count = int(workers)
        if not 0 <= count <= MAX_WORKERS:
            raise ValueError
        return count
    except ValueError:
        from lejepa_cli.errors import UsageError

        raise UsageError(
            f"--workers takes a number from 0 to {MAX_WORKERS}, or auto, not {workers!r}"
        ) from None


def check_batch_size(batch_size: int) -> int:
    """The --batch-size of a feature pass, refused with one line when out of range."""
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        from lejepa_cli.errors import UsageError

        raise UsageError(
            f"--batch-size takes a number from 1 to {MAX_BATCH_SIZE} images, not {batch_size}"
        )
    return int(batch_size)


def data_config(spec: DataSpec) -> dict[str, Any]:
    """timm's resolved data config for a spec, exactly as `resolve_data_config` returns it."""
    from timm.data import resolve_data_config

    pretrained_cfg = {
        "input_size": (len(spec.mean), spec.input_size, spec.input_size),
        "interpolation": spec.interpolation,
        "mean": tuple(spec.mean),
        "std": tuple(spec.std),
        "crop_pct": spec.crop_pct,
        "crop_mode": "center",
    }
    return resolve_data_config(pretrained_cfg=pretrained_cfg)


def eval_transform(spec: DataSpec) -> Callable:
    """Resize, centre crop to the global size (with the model's crop_pct), to tensor, normalise."""
    from timm.data import create_transform

    return create_transform(**data_config(spec))


def has_cls_blocks(backbone: nn.Module) -> bool:
    """A timm ViT pooled by its class token, whose class token can be read from its last blocks
    after the final norm. ViTs pooled by averaging (their final norm is `fc_norm`, after the
    pooling: EVA-02, BEiT) and ViTs whose `forward_intermediates` has no prefix tokens (CaiT,
    XCiT) are probed by their pooled output, as other architectures are."""
    import inspect

    forward = getattr(backbone, "forward_intermediates", None)
    return (
        getattr(backbone, "cls_token", None) is not None
        and getattr(backbone, "global_pool", None) == "token"
        and forward is not None
        and "return_prefix_tokens" in inspect.signature(forward).parameters
        and len(getattr(backbone, "blocks", ())) >= 2
    )


# What `probe` features are, as probe.json records them: a probe with other features is not current.
PROBE_FEATURES = (
    "ViT pooled by its class token: CLS tokens of the last two blocks + mean patch token of the "
    "last block, after the final norm; otherwise the pooled output"
)


def forward_features(backbone: nn.Module, x: torch.Tensor, kind: str = "embed") -> torch.Tensor:
    """x (B, 3, H, W) -> features (B, F) of the given kind."""
    if kind == "probe" and has_cls_blocks(backbone):
        out = backbone.forward_intermediates(
            x, indices=2, return_prefix_tokens=True, norm=True, intermediates_only=True
        )
        # each entry is (patch tokens (B, D, h, w), prefix tokens (B, P, D)); CLS is prefix 0
        patches = out[-1][0].mean(dim=(2, 3))  # (B, D), the last block's patch tokens
        return torch.cat([prefix[:, 0] for _, prefix in out] + [patches], dim=-1)  # (B, 3D)
    return backbone(x)  # (B, F)


def _as_paths(paths_or_index: Any) -> np.ndarray:
    """Absolute paths as one numpy string array (no per-sample objects for workers to copy)."""
    if hasattr(paths_or_index, "abspath"):
        n = len(paths_or_index)
        return np.array([str(paths_or_index.abspath(i)) for i in range(n)], dtype=str)
    return np.array([str(p) for p in paths_or_index], dtype=str)


def cut_strip(image: Image.Image, scale_size: int) -> Image.Image:
    """An image whose eval resize (shorter side to `scale_size`) would pass MAX_EVAL_PIXELS, cut
    along its long side to the centred part that keeps it below; any other image as it is. The
    centre crop after the resize keeps a square of the shorter side, deep inside that part, so
    the embedding is the one timm's transform gives (to within its rounding of the crop's
    position), without gigabytes of resized strip."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    allowed = max(short, int(short * MAX_EVAL_PIXELS / scale_size**2))  # the longest long side
    odd = (long - allowed) % 2  # an even margin on both sides keeps the centre of the whole
    allowed += -odd if allowed > short else odd
    if short == 0 or long <= allowed:
        return image
    start = (long - allowed) // 2
    box = (start, 0, start + allowed, h) if w > h else (0, start, w, start + allowed)
    return image.crop(box)


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: np.ndarray, transform: Callable, spec: DataSpec):
        self.paths = paths
        self.transform = transform
        self.size = spec.input_size
        # timm's eval resize: the shorter side to floor(size / crop_pct), then the centre crop
        self.scale_size = math.floor(spec.input_size / data_config(spec)["crop_pct"])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from lejepa_cli.data.decode import DecodeError, load_rgb

        try:
            image = load_rgb(str(self.paths[i]))
        except DecodeError as exc:
            return None, False, str(exc) or "unreadable"
        return self.transform(cut_strip(image, self.scale_size)), True, ""


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
    """(x, ok, reasons): x (K, 3, H, W) holds only the K readable images of the batch (None
    when there are none), so the network never sees a placeholder; ok (B,) bool says which."""
    views = [view for view, good, _ in items if good]
    ok = torch.tensor([good for _, good, _ in items], dtype=torch.bool)  # (B,)
    return (torch.stack(views) if views else None), ok, [why for _, _, why in items]


def _loader(
    encoder: Encoder, paths: np.ndarray, batch_size: int, workers: int | str, dev: torch.device
) -> torch.utils.data.DataLoader:
    """The images in order, through the model's eval transform: (x, ok, reason) batches."""
    if encoder.pixels:  # raw files mapped as the run recorded (lejepa_cli.data.pixels)
        from lejepa_cli.data.pixels import EvalImages

        dataset = EvalImages(paths, encoder.spec, encoder.pixels)
    else:
        dataset = _Images(paths, eval_transform(encoder.spec), encoder.spec)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=check_batch_size(batch_size),
        shuffle=False,
        num_workers=resolve_workers(workers, len(dataset)),
        pin_memory=dev.type == "cuda",
        collate_fn=_collate,
    )


def _extract(
    encoder: Encoder,
    paths: np.ndarray,
    kind: str,
    batch_size: int,
    workers: int | str,
    device: str | torch.device,
    progress_cb: ImageProgress | None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    dev = resolve_device(device)
    backbone = encoder.backbone.to(dev)
    was_training = backbone.training  # a backbone lent by the trainer goes back as it came
    backbone.eval()
    loader = _loader(encoder, paths, batch_size, workers, dev)
    dataset = loader.dataset
    chunks, oks, reasons, done = [], [], [], 0
    with torch.no_grad():
        for x, ok, why in loader:
            if x is not None:  # only readable images reach the network
                x = x.to(dev, non_blocking=True)
                with autocast(dev):
                    feats = forward_features(backbone, x, kind)  # (K, F), K readable of B
                chunks.append(feats.float().cpu().numpy())
            oks.append(ok.numpy().astype(bool))
            reasons.extend(why)
            done += len(ok)
            if progress_cb is not None:
                progress_cb(done, len(dataset))
    backbone.train(was_training)
    ok = np.concatenate(oks) if oks else np.zeros(0, bool)  # (N,)
    dim = chunks[0].shape[1] if chunks else 0  # 0 when nothing could be read
    feats = np.zeros((len(ok), dim), np.float32)  # (N, F); unreadable rows stay zeros
    if chunks:
        feats[ok] = np.concatenate(chunks)
    return feats, ok, reasons


def calibrate_norm_stats(
    encoder: Encoder,
    paths_or_index: Any,
    batch_size: int = 64,
    workers: int | str = "auto",
    device: str | torch.device = "auto",
    max_images: int = 2048,
    seed: int = 0,
) -> int:
    """Re-estimate the BatchNorm running statistics of `encoder` from images; returns how many
    images were used (0 when the backbone has no BatchNorm). Weights are left as they are.

    A freshly initialised network carries running statistics of 0 and 1, so in eval mode most
    of its activations are badly scaled and many feature dimensions are constant: a random-init
    baseline probed that way is weaker than the architecture at random init really is. Forward
    passes in train mode over (a seeded subset of at most `max_images` of) the images, with a
    cumulative average, give it the statistics training would have. The encoder's fingerprint
    changes with them, so cached features are not mixed up.
    """
    backbone = encoder.backbone
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    paths = _as_paths(paths_or_index)
    if not norms or len(paths) < 2:
        return 0
    if len(paths) > max_images:
        pick = np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False)
        paths = paths[np.sort(pick)]
    dev = resolve_device(device)
    backbone.to(dev)
    loader = _loader(encoder, paths, max(2, check_batch_size(batch_size)), workers, dev)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    used = 0
    backbone.train()
    with torch.no_grad():
        for x, ok, _ in loader:
            if int(ok.sum()) < 2:  # train-mode BatchNorm needs two samples
                continue
            forward_features(backbone, x.to(dev), "probe")  # x holds the readable images only
            used += int(ok.sum())
    backbone.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    names = hashlib.sha256("\n".join(paths.tolist()).encode()).hexdigest()[:16]
    encoder.fingerprint = f"{encoder.fingerprint}-norm-stats-{names}"
    return used


def extract(
    encoder: Encoder,
    paths_or_index: Any,
    batch_size: int = 64,
    workers: int | str = "auto",
    device: str | torch.device = "auto",
    progress_cb: ImageProgress | None = None,
    kind: str = "embed",
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) float32 and a mask (N,) of readable images; unreadable rows are zeros."""
    feats, ok, _ = _extract(
        encoder, _as_paths(paths_or_index), kind, batch_size, workers, device, progress_cb
    )
    return feats, ok


def probe_features(
    encoder: Encoder, paths_or_index: Any, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """Features for the probe: for ViTs pooled by their class token the last two blocks' CLS
    tokens and the last block's average patch token, the pooled output otherwise."""
    return extract(encoder, paths_or_index, kind="probe", **kwargs)


def embed_features(
    encoder: Encoder, paths_or_index: Any, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """The pooled embedding, as `lejepa embed` writes it and the export reproduces it."""
    return extract(encoder, paths_or_index, kind="embed", **kwargs)


@dataclass
class FeatureSet:
    """Features of a list of images, in the order asked for."""

    features: np.ndarray  # (N, F) float32; rows of unreadable images are zeros
    ok: np.ndarray  # (N,) bool
    paths: list[str]  # absolute paths, as asked for
    errors: dict[str, str] = field(default_factory=dict)  # unreadable path -> reason
    cached: bool = False  # read from the cache instead of computed
    file: Path | None = None  # the cache file


def cache_key(encoder: Encoder, paths: Sequence[str], kind: str) -> str:
    """sha256 over the weights, the feature kind, the sorted image list (with sizes and mtimes),
    and the transform: any change to one of them gives another cache file."""
    images = hashlib.sha256()
    for p in sorted(paths):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        images.update(f"{p}\0{stamp}\n".encode())
    key = {
        "fingerprint": encoder.fingerprint,
        "kind": kind,
        "images": images.hexdigest(),
        "transform": repr(eval_transform(encoder.spec)),
        "format": 2,  # 2: ViT probe features gained the average patch token
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_features(
    encoder: Encoder,
    paths_or_index: Any,
    kind: str,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    workers: int | str = "auto",
    device: str | torch.device = "auto",
    progress_cb: ImageProgress | None = None,
) -> FeatureSet:
    """Features of the images, read from `cache_dir` when the cache key matches, else computed
    (in sorted order) and written there. `cache_dir=None` disables the cache."""
    asked = [str(p) for p in _as_paths(paths_or_index)]
    unique = np.array(sorted(set(asked)), dtype=str)
    file = None
    feats = ok = reasons = None
    cached = False
    if cache_dir is not None:
        key = cache_key(encoder, unique.tolist(), kind)
        file = Path(cache_dir) / f"features-{kind}-{key[:24]}.npz"
        if file.is_file():
            try:
                with np.load(file, allow_pickle=False) as data:
                    if np.array_equal(data["paths"], unique):
                        feats, ok, reasons = data["features"], data["ok"], data["reasons"].tolist()
                        if not len(feats) == len(ok) == len(reasons) == len(unique):
                            raise ValueError("the cache's rows do not match its images")
                        cached = True
            except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
                # a damaged cache file (cut short, overwritten) is recomputed and replaced
                feats = ok = reasons = None
                cached = False
    if feats is None:
        feats, ok, reasons = _extract(
            encoder, unique, kind, batch_size, workers, device, progress_cb
        )
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(file, sync=False) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f, features=feats, ok=ok, paths=unique, reasons=np.array(reasons, dtype=str)
                )
    elif progress_cb is not None:
        progress_cb(len(unique), len(unique))
    position = {p: i for i, p in enumerate(unique.tolist())}
    order = np.array([position[p] for p in asked], dtype=np.int64)
    errors = {unique[i]: reasons[i] for i in np.flatnonzero(~ok)}
    return FeatureSet(
        features=feats[order] if len(order) else feats,
        ok=ok[order] if len(order) else ok,
        paths=asked,
        errors={str(k): v for k, v in errors.items()},
        cached=cached,
        file=file,
    )
