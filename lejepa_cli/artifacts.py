"""Load a frozen encoder from a run directory, one of its checkpoints, or an export directory.

Weights are read with safetensors only (no unpickling) and loaded with `strict=True`, so weights
of another architecture or a damaged file are reported instead of silently half-loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lejepa_cli import checkpoint as ckpt_io
from lejepa_cli import rundir
from lejepa_cli.config import MIN_CROP_PCT
from lejepa_cli.errors import CheckpointError, UsageError
from lejepa_cli.jsontypes import is_number, is_whole_number
from lejepa_cli.model import DataSpec, data_spec_of
from lejepa_cli.rundir import EXPORT_CONFIG, WEIGHTS


@dataclass
class Encoder:
    """A backbone in eval mode with what its input needs and where it came from."""

    backbone: nn.Module
    arch: str
    spec: DataSpec
    feature_dim: int
    source: dict[str, Any]  # kind (run/checkpoint/export/random), path, checkpoint, step, epoch
    fingerprint: str  # sha256 of the weights file: keys the feature cache
    model_args: dict[str, Any] = field(default_factory=dict)  # extra create_model arguments
    pixels: dict[str, Any] | None = None  # raw file -> input (data/pixels.py); None: 8-bit RGB


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _loadable_kind(path: Path) -> str:
    """'run', 'checkpoint' or 'export' (`rundir.kind_of`); a UsageError that says what to pass
    for any other path."""
    path = Path(path)
    kind = rundir.kind_of(path)
    if kind == "weights" and (path.parent / rundir.META).is_file():
        raise UsageError(
            f"{path} is a checkpoint's weights file; pass its folder {path.parent} (or the run)"
        )
    if kind in ("weights", "folder"):
        raise UsageError(
            f"{path} is neither a run directory (written by `lejepa pretrain`) nor an export "
            "(config.json + model.safetensors, written by `lejepa export`)"
        )
    return kind


def model_args_of(backbone: nn.Module) -> dict[str, Any]:
    """The create_model keyword arguments that rebuild this backbone (img_size for ViTs...).

    timm records them on the model; `num_classes` is left out because every caller passes it.
    """
    if hasattr(backbone, "_model_args"):
        args = dict(backbone._model_args)
    else:  # timm before it recorded them: mirror build_backbone, which gives ViTs these two
        embed = getattr(backbone, "patch_embed", None)
        args = {}
        if embed is not None and getattr(backbone, "dynamic_img_size", False):
            args = {"img_size": int(embed.img_size[0]), "dynamic_img_size": True}
    args.pop("num_classes", None)
    return {k: v for k, v in args.items() if isinstance(v, (bool, int, float, str, list, tuple))}


def _load_strict(backbone: nn.Module, weights: dict, where: str, arch: str) -> None:
    result = backbone.load_state_dict(weights, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        sample = ", ".join((missing + unexpected)[:3])
        raise CheckpointError(
            f"{where} does not hold weights for {arch}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected tensors (e.g. {sample}); pick the checkpoint or export "
            "that belongs to this architecture"
        )


def _known_arch(arch: str, where: str) -> None:
    """A saved architecture that the installed timm lacks is not something `--arch` can fix."""
    import timm

    if not timm.is_model(arch):
        raise CheckpointError(
            f"{where} holds a '{arch}' backbone, which the installed timm {timm.__version__} does "
            "not know; install the timm release it was made with"
        )


def _build(arch: str, model_args: dict[str, Any]) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=0, **model_args)


def _read_weights(path: Path, prefix: str | None) -> dict:
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; the checkpoint or export is incomplete, pick another one "
            "(--checkpoint) or export again"
        )
    weights = ckpt_io.load_weights(path, prefix=prefix)
    if not weights:
        raise CheckpointError(
            f"{path} holds no {prefix or 'model'} weights; it was not written by lejepa"
        )
    return weights


def _check_tensors(backbone: nn.Module, weights: dict, where: str, arch: str, path: Path) -> None:
    # load_state_dict raises on shape mismatches with a wall of text: say it in one line.
    own = backbone.state_dict()
    bad = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(
            f"{where} does not hold weights for {arch}: {len(bad)} tensors have other shapes "
            f"(e.g. {bad[0]}: {tuple(weights[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); "
            "pick the checkpoint or export that belongs to this architecture"
        )
    # load_state_dict would cast integers or booleans into the weights without a word.
    bad = ckpt_io.float_mismatch(own, weights)
    if bad is not None:
        raise CheckpointError(
            f"{path} holds {weights[bad].dtype} tensors where {arch} has floating-point "
            f"weights (e.g. {bad}); the file is damaged: {ckpt_io.weights_fix(path)}"
        )


def _from_checkpoint(ckpt: Path, kind: str, run_dir: Path | None) -> Encoder:
    from lejepa_cli.model import build_backbone

    meta = rundir.read_meta(ckpt)
    arch, size, spec = meta.model(ckpt)
    # The run's config.yaml is read leniently: only its arch matters here.
    config_arch = rundir.read_config_fields(run_dir).get("arch") if run_dir is not None else None
    if config_arch and str(config_arch) != arch:
        raise CheckpointError(
            f"checkpoint {ckpt.name} holds weights for {arch}, not {config_arch} as "
            f"{run_dir}/config.yaml says; the checkpoint was copied from another run"
        )
    _known_arch(arch, f"checkpoint {ckpt}")
    weights = _read_weights(ckpt / WEIGHTS, prefix="backbone")
    pixels = _pixels_of(meta.raw.get("data") or {}, f"{ckpt}/meta.json")
    backbone = build_backbone(arch, img_size=size, in_chans=len(spec.mean))
    where = f"checkpoint {ckpt.name}"
    _check_tensors(backbone, weights, where, arch, ckpt / WEIGHTS)
    _load_strict(backbone, weights, where, arch)
    backbone.eval().requires_grad_(False)
    return Encoder(
        backbone=backbone,
        arch=arch,
        spec=spec,
        feature_dim=int(backbone.num_features),
        source={
            "kind": kind,
            "path": str(run_dir if run_dir is not None else ckpt),
            "checkpoint": ckpt.name,
            "step": meta.step,
            "epoch": meta.epoch,
        },
        fingerprint=sha256_file(ckpt / WEIGHTS),
        model_args=model_args_of(backbone),
        pixels=pixels,
    )


def _pixels_of(data: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The `pixels` record of a checkpoint's meta data or an export's lejepa section, checked."""
    from lejepa_cli.data.pixels import PixelSpec

    pixels = data.get("pixels")
    if pixels is None:
        return None
    try:
        return PixelSpec.from_dict(pixels).to_dict()
    except (KeyError, TypeError, ValueError, AttributeError, UsageError):
        raise CheckpointError(
            f"{where} has an invalid pixels record; export or train the run again"
        ) from None


def read_export_config(export_dir: Path) -> dict[str, Any]:
    """An export's config.json with every field lejepa reads checked; a CheckpointError that
    names the field and says to export again otherwise."""
    path = Path(export_dir) / EXPORT_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}); export the run again") from None
    try:
        _check_export_config(cfg)
    except ValueError as exc:
        raise CheckpointError(
            f"{path} has an invalid value ({exc}); export the run again"
        ) from None
    return cfg


def _check_export_config(cfg: Any) -> None:
    if not isinstance(cfg, dict):
        raise ValueError("it is not a JSON object")
    if not isinstance(cfg.get("architecture"), str) or not cfg["architecture"]:
        raise ValueError("architecture must be a model name")
    if not isinstance(cfg.get("pretrained_cfg"), dict):
        raise ValueError("pretrained_cfg must be a mapping")
    try:
        data_spec_of(cfg["pretrained_cfg"])
    except ValueError as exc:
        raise ValueError(f"pretrained_cfg.{exc}") from None
    for key in ("model_args", "lejepa"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise ValueError(f"{key} must be a mapping")
    for name, value in (cfg.get("model_args") or {}).items():
        _check_model_arg(name, value)
    extra = cfg.get("lejepa") or {}
    if not isinstance(extra.get("sha256") or "", str):
        raise ValueError(f"lejepa.sha256 {extra['sha256']!r} is not a checksum")
    source = extra.get("source") or {}
    if not isinstance(source, dict):
        raise ValueError("lejepa.source must be a mapping")
    if not isinstance(source.get("checkpoint") or "", str):
        raise ValueError(f"lejepa.source.checkpoint {source['checkpoint']!r} is not a name")
    for key in ("step", "epoch"):
        value = source.get(key)
        if value is not None and not is_whole_number(value):
            raise ValueError(f"lejepa.source.{key} {value!r} is not a whole number")


def _check_model_arg(name: str, value: Any) -> None:
    """A create_model keyword as `model_args_of` writes it: text, a finite number, a flag, or a
    list of those; a rate (drop_rate, drop_path_rate...) from 0 to 1."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not (item is None or isinstance(item, (bool, str)) or is_number(item)):
            raise ValueError(f"model_args.{name} {value!r} is not text, a number or a flag")
        if is_number(item) and not math.isfinite(item):
            raise ValueError(f"model_args.{name} {value!r} is not finite")
    if name.endswith("_rate") and value is not None and not (is_number(value) and 0 <= value <= 1):
        raise ValueError(f"model_args.{name} {value!r} is not a rate from 0 to 1")


def _check_model_arg_types(backbone: nn.Module, model_args: dict[str, Any]) -> None:
    """Each saved argument has the type of the default the model's constructor declares: a
    wrong type can build and only fail in the forward pass (drop_rate="x")."""
    try:
        params = inspect.signature(type(backbone).__init__).parameters
    except (TypeError, ValueError):  # no signature to compare with
        return
    for name, value in model_args.items():
        default = params[name].default if name in params else None
        if value is None or default is None:
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif is_number(default):  # a size may also be given per side, as a list
            ok, kind = is_number(value) or isinstance(value, list), "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "text"
        else:
            continue
        if not ok:
            raise ValueError(f"model_args.{name} {value!r} is not {kind}")


def _from_export(export_dir: Path) -> Encoder:
    cfg = read_export_config(export_dir)
    arch = cfg["architecture"]
    model_args = dict(cfg.get("model_args") or {})
    model_args.pop("num_classes", None)
    spec = data_spec_of(cfg["pretrained_cfg"])  # checked by read_export_config
    path = export_dir / WEIGHTS
    fingerprint = sha256_file(path) if path.is_file() else ""
    recorded = (cfg.get("lejepa") or {}).get("sha256")
    if recorded and fingerprint and recorded != fingerprint:
        raise CheckpointError(
            f"{path} does not match the sha256 recorded in config.json; the file was changed "
            "or damaged: export the run again"
        )
    _known_arch(arch, f"export {export_dir}")
    weights = _read_weights(path, prefix=None)
    try:
        backbone = _build(arch, model_args)
    except Exception as exc:  # timm asserts, raises TypeError, ValueError...: any of it
        reason = " ".join(f"{type(exc).__name__}: {exc}".split()).rstrip(":")
        raise CheckpointError(
            f"{export_dir}/config.json model_args do not build {arch} ({reason}); "
            "export the run again"
        ) from None
    try:
        _check_model_arg_types(backbone, model_args)
    except ValueError as exc:
        raise CheckpointError(
            f"{export_dir}/config.json has an invalid value ({exc}); export the run again"
        ) from None
    where = f"export {export_dir}"
    _check_tensors(backbone, weights, where, arch, path)
    _load_strict(backbone, weights, where, arch)
    backbone.eval().requires_grad_(False)
    src = (cfg.get("lejepa") or {}).get("source") or {}
    return Encoder(
        backbone=backbone,
        arch=arch,
        spec=spec,
        feature_dim=int(backbone.num_features),
        source={
            "kind": "export",
            "path": str(export_dir),
            "checkpoint": src.get("checkpoint"),
            "step": src.get("step"),
            "epoch": src.get("epoch"),
        },
        fingerprint=fingerprint,
        model_args=model_args,
        pixels=_pixels_of(cfg.get("lejepa") or {}, f"{export_dir}/config.json"),
    )


def check_crop_pct(crop_pct: float | None) -> None:
    """--crop-pct of probe, embed and export: None (the model's own) or a share from 0.1 to 1."""
    if crop_pct is not None and not MIN_CROP_PCT <= crop_pct <= 1:
        raise UsageError(f"--crop-pct takes a number from {MIN_CROP_PCT} to 1, not {crop_pct}")


def with_crop_pct(encoder: Encoder, crop_pct: float | None) -> Encoder:
    """`encoder` with its eval view keeping `crop_pct` of the shorter side (None: as recorded)."""
    check_crop_pct(crop_pct)
    if crop_pct is not None:
        encoder.spec = dataclasses.replace(encoder.spec, crop_pct=float(crop_pct))
    return encoder


def load_encoder(path: str | Path, checkpoint: str | int | None = "last") -> Encoder:
    """The backbone of a run (its `checkpoint`: last, best, an epoch or a name) or of an export."""
    path = Path(path)
    kind = _loadable_kind(path)
    if kind == "export":
        if checkpoint not in (None, "last", "best"):
            raise UsageError(
                f"{path} is an export, which holds a single checkpoint; drop --checkpoint "
                "or point at the run directory"
            )
        return _from_export(path)
    if kind == "checkpoint":
        same = str(checkpoint) in (path.name, path.name.removeprefix("epoch-").lstrip("0"))
        if checkpoint not in (None, "last", "best") and not same:
            raise UsageError(
                f"{path} is a checkpoint folder, so --checkpoint {checkpoint} has nothing to "
                "choose from; drop --checkpoint or point at the run directory"
            )
        return _from_checkpoint(path, "checkpoint", rundir.run_of(path))
    ckpt = rundir.resolve_checkpoint(path, "last" if checkpoint is None else str(checkpoint))
    return _from_checkpoint(ckpt, "run", path)


def random_encoder(like: Encoder, seed: int = 0) -> Encoder:
    """The same architecture with seeded random weights: the baseline a probe compares against."""
    import torch

    from lejepa_cli.model import build_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if like.source.get("kind") == "export":
            backbone = _build(like.arch, like.model_args)
        else:  # built exactly as pretraining built it
            backbone = build_backbone(
                like.arch, img_size=like.spec.input_size, in_chans=len(like.spec.mean)
            )
    backbone.eval().requires_grad_(False)
    key = json.dumps([like.arch, like.model_args, seed], sort_keys=True, default=str)
    return Encoder(
        backbone=backbone,
        arch=like.arch,
        spec=like.spec,
        feature_dim=int(backbone.num_features),
        source={
            "kind": "random",
            "path": None,
            "checkpoint": None,
            "step": 0,
            "epoch": 0,
            "seed": seed,
        },
        fingerprint="random-" + hashlib.sha256(key.encode()).hexdigest(),
        model_args=dict(like.model_args),
        pixels=like.pixels,
    )
