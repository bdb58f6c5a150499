"""Export a run's backbone as a plain timm model folder: weights, config and a model card.

    DIR/model.safetensors   backbone weights under timm's own key names (no prefix)
    DIR/config.json         the layout timm reads for `timm.create_model("local-dir:DIR", ...)`:
                            architecture, num_features, model_args, pretrained_cfg (input size,
                            mean/std, interpolation, crop_pct); our training summary, versions,
                            the weights' sha256 and probe results sit under the extra key "lejepa"
    DIR/README.md           the model card
    DIR/model.onnx          with fmt="onnx" (dynamic batch axis)

timm's own `resolve_data_config({}, model=m)` + `create_transform(**cfg)` on the loaded model give
exactly the eval preprocessing of `lejepa embed` and `lejepa probe`.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from lejepa_cli import __version__, atomic, rundir
from lejepa_cli import checkpoint as ckpt_io
from lejepa_cli.artifacts import (
    Encoder,
    check_crop_pct,
    sha256_file,
    with_crop_pct,
)
from lejepa_cli.errors import RunDirError, UsageError, require_utf8_path
from lejepa_cli.jsontypes import is_finite_number
from lejepa_cli.pretrained import describe_init
from lejepa_cli.rundir import EXPORT_CONFIG, WEIGHTS

FORMATS = ("safetensors", "onnx")
README = "README.md"
ONNX = "model.onnx"
# What a previous export may have left behind; --overwrite replaces exactly these.
_OWN_FILES = (WEIGHTS, EXPORT_CONFIG, README, ONNX)
# pretrained_cfg keys that describe the architecture rather than where weights came from.
_ARCH_KEYS = ("first_conv", "classifier")


def default_checkpoint(run_dir: str | Path) -> str:
    """'best' when the run's report recommends a checkpoint, else 'last'. A recommended
    checkpoint that was deleted stays 'best', so that the export refuses it with the choices
    listed instead of silently exporting another one."""
    return "best" if rundir.plain_name(rundir.recommended_checkpoint(Path(run_dir))) else "last"


def _global_pool(backbone) -> str | None:
    head = getattr(backbone, "head", None)
    for pool in (
        getattr(head, "global_pool", None),
        getattr(head, "pool_type", None),
        getattr(backbone, "global_pool", None),
    ):
        pool = getattr(pool, "pool_type", pool)
        if isinstance(pool, str):
            return pool
    return None


def timm_config(encoder: Encoder) -> dict[str, Any]:
    """config.json as timm reads it for a local-dir model (without our extra key)."""
    spec = encoder.spec
    base = dict(getattr(encoder.backbone, "pretrained_cfg", None) or {})
    pretrained_cfg: dict[str, Any] = {k: base[k] for k in _ARCH_KEYS if base.get(k) is not None}
    pretrained_cfg.update(
        {
            "input_size": [len(spec.mean), spec.input_size, spec.input_size],
            # a ViT built with dynamic_img_size takes any size; the model args say so too
            "fixed_input_size": bool(base.get("fixed_input_size", False))
            and not encoder.model_args.get("dynamic_img_size", False),
            "interpolation": spec.interpolation,
            "crop_pct": spec.crop_pct,
            "crop_mode": "center",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "num_classes": 0,
        }
    )
    cfg: dict[str, Any] = {
        "architecture": encoder.arch,
        "num_classes": 0,
        "num_features": encoder.feature_dim,
    }
    pool = _global_pool(encoder.backbone)
    if pool:
        cfg["global_pool"] = pool
    if encoder.model_args:
        cfg["model_args"] = dict(encoder.model_args)
    cfg["pretrained_cfg"] = pretrained_cfg
    return cfg


def probe_summary(probe_json: Path) -> dict[str, Any] | None:
    """The headline rows of a probe.json (all shots, both heads, with the baseline if any).

    A file that is missing, damaged or edited into another shape is left out (None), and rows
    or figures of the wrong type are dropped: the export does not depend on it."""
    try:
        data = json.loads(Path(probe_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return None
    keep = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        keep.append(
            {
                "model": _text(r.get("name")),
                "baseline": r.get("model") != "checkpoint",
                "head": _text(r.get("head")),
                "shots": r.get("shots") if isinstance(r.get("shots"), (int, str)) else None,
                **{
                    m: {"mean": r[m]["mean"], "std": r[m]["std"]}
                    for m in ("top1", "balanced_accuracy", "macro_f1")
                    if isinstance(r.get(m), dict)
                    and is_finite_number(r[m].get("mean"))
                    and is_finite_number(r[m].get("std"))
                },
            }
        )
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    counts = data.get("val_counts") if isinstance(data.get("val_counts"), dict) else {}
    classes = data.get("classes") if isinstance(data.get("classes"), list) else []
    view = data.get("eval_view") if isinstance(data.get("eval_view"), dict) else {}
    return {
        "checkpoint": _text(source.get("checkpoint")),
        "crop_pct": view.get("crop_pct") if is_finite_number(view.get("crop_pct")) else None,
        "labels": _text(data.get("labels")),
        "validation": _text(data.get("validation")),
        "num_classes": len(classes),
        "num_val": sum(int(n) for n in counts.values() if is_finite_number(n)),
        "seeds": data.get("seeds") if is_finite_number(data.get("seeds")) else None,
        "rows": keep,
        "gains": _gains_of(data.get("gains")),
    }


def _gains_of(gains: Any) -> list[dict[str, Any]]:
    """The probed checkpoint's gains over each baseline, as probe.json records them."""
    keep = []
    for g in gains if isinstance(gains, list) else []:
        if not isinstance(g, dict) or g.get("model") != "checkpoint":
            continue
        numbers = {m: g.get(m) for m in ("top1", "balanced_accuracy", "macro_f1")}
        if all(is_finite_number(v) for v in numbers.values()):
            keep.append(
                {
                    "baseline": _text(g.get("baseline_name")),
                    "head": _text(g.get("head")),
                    "shots": g.get("shots") if isinstance(g.get("shots"), (int, str)) else None,
                    **numbers,
                }
            )
    return keep


def _text(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def _versions() -> dict[str, str]:
    import safetensors
    import timm
    import torch

    return {
        "lejepa-cli": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "safetensors": getattr(safetensors, "__version__", "unknown"),
    }


def _check_out_dir(out: Path, run_dir: Path, overwrite: bool) -> None:
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise UsageError(f"--out {out} is inside the run {run_dir}; export to a folder of its own")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder to export into")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{out} is not empty; pick a new folder or pass --overwrite to replace the "
                "export there"
            )
        if not _holds_export(out):  # --overwrite replaces an export, not someone's folder
            raise RunDirError(
                f"{out} is not empty and holds no lejepa export, so --overwrite would replace "
                "files it did not write; pick a new or empty folder"
            )


def _holds_export(folder: Path) -> bool:
    """Whether `folder` has the config.json of a lejepa export (its `lejepa` section)."""
    try:
        data = json.loads((folder / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("lejepa"), dict)


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    checkpoint: str | int | None = None,
    fmt: str = "safetensors",
    overwrite: bool = False,
    crop_pct: float | None = None,
) -> Path:
    """Export `checkpoint` of a run (default: best when report.json recommends one, else last)
    into `out_dir`; returns `out_dir`. `fmt="onnx"` also writes model.onnx. `crop_pct` replaces
    the eval crop the run recorded, in config.json and the model card."""
    from lejepa_cli.artifacts import load_encoder

    run_dir, out = Path(run_dir), Path(out_dir)
    which = _check_request(run_dir, out, checkpoint, fmt, overwrite, crop_pct)
    encoder = with_crop_pct(load_encoder(run_dir, which), crop_pct)
    _prepare_out_dir(out, overwrite)
    digest = _write_weights(encoder, out)
    extra = _lejepa_section(run_dir, encoder, which, digest)
    config = {**timm_config(encoder), "lejepa": extra}
    atomic.write_text_atomic(out / EXPORT_CONFIG, json.dumps(config, indent=2), sync=False)
    atomic.write_text_atomic(out / README, model_card(config, out.name), sync=False)
    if fmt == "onnx":
        export_onnx(encoder, out / ONNX)
    return out


def _check_request(run_dir: Path, out: Path, checkpoint, fmt: str, overwrite: bool, crop_pct):
    """Every refusal before anything is written; the checkpoint name to export."""
    require_utf8_path("--out", out.absolute())
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "onnx":
        _require_onnx()
    check_crop_pct(crop_pct)
    if not run_dir.exists():
        raise UsageError(f"{run_dir} does not exist; pass the folder of a pretraining run")
    if rundir.kind_of(run_dir) != "run":
        raise UsageError(
            f"{run_dir} is not a run directory; export takes the folder of a pretraining run"
        )
    which = default_checkpoint(run_dir) if checkpoint is None else str(checkpoint)
    rundir.resolve_checkpoint(run_dir, which)  # no checkpoint, or an unknown one: fail now
    _check_out_dir(out, run_dir, overwrite)
    return which


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in _OWN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / rundir.PROBE, ignore_errors=True)  # probe results of the old weights


def _write_weights(encoder: Encoder, out: Path) -> str:
    """The backbone with timm's key names as OUT/model.safetensors; its sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    try:
        with atomic.atomic_path(out / WEIGHTS, sync=False) as tmp:
            ckpt_io.save_tensors(tensors, tmp, {"format": "pt"})
    except OSError as exc:  # name the folder the user gave, not the temporary file in it
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    return sha256_file(out / WEIGHTS)


def _lejepa_section(run_dir: Path, encoder: Encoder, which: str, digest: str) -> dict[str, Any]:
    """config.json's `lejepa` section: where the weights came from and how they were trained."""
    meta = rundir.read_meta(rundir.checkpoint_dir(run_dir, encoder.source["checkpoint"]))
    run_cfg = rundir.read_config_fields(run_dir)
    extra = {
        "format": 1,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": {
            "run": str(run_dir.resolve()),
            "checkpoint": encoder.source["checkpoint"],
            "chosen_as": which,
            "epoch": meta.epoch,
            "step": meta.step,
        },
        "training": _training_record(meta, run_cfg),
        "data": {
            "folder": run_cfg.get("data"),
            "num_train_images": meta.num_train_images,
            "global_size": meta.global_size,
            "local_size": meta.local_size,
        },
        "versions": _versions(),
        "sha256": digest,
        "probe": probe_summary(run_dir / rundir.PROBE / rundir.PROBE_JSON),
    }
    if encoder.pixels:  # raw scientific images: how a file becomes the input (data/pixels.py)
        extra["pixels"] = encoder.pixels
    return extra


def _training_record(meta: rundir.CheckpointMeta, run_cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "objective": "LeJEPA: (1 - lam) * prediction + lam * SIGReg",
        "epochs_done": meta.epoch,
        "epochs_planned": run_cfg.get("epochs"),
        "steps": meta.step,
        "images_seen": meta.images_seen,
        "batch_size": run_cfg.get("batch_size"),
        "lr": run_cfg.get("lr"),
        "lam": meta.lam if meta.lam is not None else run_cfg.get("lam"),
        "global_views": run_cfg.get("global_views"),
        "local_views": run_cfg.get("local_views"),
        "final_loss": meta.train,
        "init": describe_init(meta.raw.get("init")) or "random (from scratch)",
    }


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError(
            "--format onnx needs the onnx package: pip install 'lejepa-cli[onnx]'"
        ) from None


def export_onnx(encoder: Encoder, path: Path, opset: int = 17) -> Path:
    """The backbone as ONNX: `pixel_values` (batch, 3, S, S) -> `embeddings` (batch, F).

    The batch axis is dynamic; the image size is the export's input size.
    """
    import torch

    _require_onnx()
    size = encoder.spec.input_size
    model = encoder.backbone.to("cpu").eval()
    dummy = torch.zeros(2, len(encoder.spec.mean), size, size)
    kwargs: dict[str, Any] = {
        "input_names": ["pixel_values"],
        "output_names": ["embeddings"],
        "opset_version": opset,
        "dynamic_axes": {"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}},
    }
    try:
        with atomic.atomic_path(path, sync=False) as tmp:
            _onnx_export(model, dummy, tmp, kwargs)
    except Exception as exc:  # any exporter failure is a property of this architecture
        raise UsageError(
            f"ONNX export of {encoder.arch} failed ({type(exc).__name__}: {exc}); "
            "use the safetensors export, which needs no conversion"
        ) from None
    return path


def _onnx_export(model, dummy, path: Path, kwargs: dict[str, Any]) -> None:
    import torch

    # The TorchScript exporter needs only onnx; the newer one also needs onnxscript.
    # The tracer warns about every Python branch in timm's forward; the size is fixed here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (dummy,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch from before the `dynamo` argument
            torch.onnx.export(model, (dummy,), str(path), **kwargs)


def _fmt_tuple(values) -> str:
    # full precision: the model card's transform must reproduce the exact normalisation
    return "(" + ", ".join(repr(float(v)) for v in values) + ")"


def _probe_table(probe: dict[str, Any]) -> str:
    lines = [
        "| model | head | shots | top-1 | balanced accuracy | macro-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in probe["rows"]:
        cells = []
        for m in ("top1", "balanced_accuracy", "macro_f1"):
            v = r.get(m)
            cells.append(f"{v['mean']:.3f} ± {v['std']:.3f}" if v else "n/a")
        lines.append(f"| {r['model']} | {r['head']} | {r['shots']} | " + " | ".join(cells) + " |")
    gains = probe.get("gains") or []
    if gains:
        lines += [
            "",
            "Gain of this model over each baseline (mean difference, points):",
            "",
            "| over | head | shots | top-1 | balanced accuracy | macro-F1 |",
            "|---|---|---|---|---|---|",
        ]
        for g in gains:
            cells = " | ".join(
                f"{100 * g[m]:+.1f}" for m in ("top1", "balanced_accuracy", "macro_f1")
            )
            lines.append(f"| {g['baseline']} | {g['head']} | {g['shots']} | {cells} |")
    return "\n".join(lines)


def model_card(config: dict[str, Any], dirname: str) -> str:
    """README.md for an export: what it is, how to load it with timm alone, how it was trained."""
    from lejepa_cli.pixels_card import card_section

    extra = config["lejepa"]
    sections = [
        _card_summary(config, dirname),
        _card_loading(config, dirname),
        *([card_section(config, dirname)] if extra.get("pixels") else []),
        _card_training(extra),
        f"## Probe results\n\n{_card_probe(extra, config['pretrained_cfg'], dirname)}\n",
        _CARD_FILES,
    ]
    return "\n".join(sections)


def _model_args(config: dict[str, Any]) -> str:
    """`, key=value` for each architecture argument, as the timm.create_model call spells them."""
    return "".join(f", {k}={v!r}" for k, v in (config.get("model_args") or {}).items())


def _input_kind(extra: dict[str, Any]) -> str:
    pixels = extra.get("pixels")
    if not pixels:
        return "RGB"
    return f"{pixels['channels']} channel(s) of raw values mapped as in *Raw files to input*"


def _card_summary(config: dict[str, Any], dirname: str) -> str:
    extra, pcfg = config["lejepa"], config["pretrained_cfg"]
    arch, size, src = config["architecture"], pcfg["input_size"][-1], extra["source"]
    model_args = _model_args(config)
    images = extra["data"].get("num_train_images") or "unknown number of"
    return f"""# {dirname}: a {arch} encoder pretrained with LeJEPA

A `{arch}` backbone (timm architecture) pretrained from scratch with LeJEPA self-supervised
learning on {images} unlabeled images. It maps an
image to one {config["num_features"]}-dimensional embedding (pooled features, `num_classes=0`); it has no
classification head. Use the embeddings for linear probes, kNN search, clustering, or fine-tune
the backbone with a head of your own.

| | |
|---|---|
| architecture | `{arch}` (timm){", " + model_args[2:] if model_args else ""} |
| embedding size | {config["num_features"]} |
| input | {_input_kind(extra)}, resized and centre-cropped to {size} x {size} (crop_pct {pcfg["crop_pct"]}, {pcfg["interpolation"]}) |
| normalisation | mean {_fmt_tuple(pcfg["mean"])}, std {_fmt_tuple(pcfg["std"])} |
| checkpoint | `{src["checkpoint"]}` (epoch {src.get("epoch")}, step {src.get("step")}) of run `{src["run"]}` |
| weights | `model.safetensors`, sha256 `{extra["sha256"]}` |
"""


_CARD_LOADING = """## Load it with timm

No lejepa-cli needed: timm reads `config.json` and `model.safetensors` from this folder and
sets up the same preprocessing that produced the embeddings. Run from the folder that contains
`{dirname}` (or put its full path after `local-dir:`):

```python
import timm
import torch
from PIL import Image

model = timm.create_model("local-dir:{dirname}", pretrained=True, num_classes=0).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)

image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    embedding = model(transform(image).unsqueeze(0))  # (1, {dim})
print(embedding.shape)
```

With a timm release older than `local-dir:` support, build the architecture and load the weights
with safetensors; the transform spells out the same preprocessing:

```python
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

model = timm.create_model("{arch}", pretrained=False, num_classes=0{model_args}).eval()
model.load_state_dict(load_file("{dirname}/model.safetensors"))
transform = timm.data.create_transform(
    input_size={size},
    interpolation="{interpolation}",
    crop_pct={crop_pct},
    mean={mean},
    std={std},
)

image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    embedding = model(transform(image).unsqueeze(0))  # (1, {dim})
print(embedding.shape)
```

Or embed a whole folder: `lejepa embed {dirname} ./images --out embeddings.npz`.
"""


def _card_loading(config: dict[str, Any], dirname: str) -> str:
    pcfg = config["pretrained_cfg"]
    return _CARD_LOADING.format(
        dirname=dirname,
        arch=config["architecture"],
        dim=config["num_features"],
        model_args=_model_args(config),
        size=pcfg["input_size"][-1],
        interpolation=pcfg["interpolation"],
        crop_pct=pcfg["crop_pct"],
        mean=_fmt_tuple(pcfg["mean"]),
        std=_fmt_tuple(pcfg["std"]),
    )


def _card_training(extra: dict[str, Any]) -> str:
    train, data = extra["training"], extra["data"]
    loss = train.get("final_loss") or {}
    loss_text = ", ".join(f"{k} {v:.4g}" for k, v in loss.items() if isinstance(v, (int, float)))
    software = ", ".join(f"{k} {v}" for k, v in extra["versions"].items())
    return f"""## Training

- data: `{data.get("folder")}`, {data.get("num_train_images")} training images; global crops
  {data.get("global_size")} px, local crops {data.get("local_size")} px
- objective: {train.get("objective")}, lambda = {train.get("lam")}
- {train.get("epochs_done")} of {train.get("epochs_planned")} epochs, {train.get("steps")} steps,
  {train.get("images_seen")} images seen, batch size {train.get("batch_size")}, peak lr {train.get("lr")}
- initial weights: {train.get("init") or "random (from scratch)"}
- final training loss (epoch mean): {loss_text or "n/a"}
- software: {software}
"""


def _card_probe(extra: dict[str, Any], pcfg: dict[str, Any], dirname: str) -> str:
    """The probe section's text: the recorded results, or how to measure them."""
    probe = extra.get("probe")
    if not probe:
        return (
            "No probe results yet. Measure them with a small labeled CSV (`path,label`):\n\n"
            f"    lejepa probe {dirname} --labels labels.csv --baseline random"
        )
    return (
        f"Frozen-backbone probe (`lejepa probe`) on {probe['num_classes']} classes, "
        f"{probe['num_val']} validation images ({probe['validation']}), mean ± std over "
        f"{probe['seeds']} seeds:\n\n{_probe_table(probe)}"
        f"{_probe_mismatch(probe, extra['source']['checkpoint'], pcfg['crop_pct'], dirname)}"
    )


def _probe_mismatch(probe: dict[str, Any], checkpoint: str, crop_pct: float, dirname: str) -> str:
    """A note when the probe measured another checkpoint or eval view than the one exported."""
    other = []
    if probe.get("checkpoint") and probe["checkpoint"] != checkpoint:
        other.append(f"on checkpoint `{probe['checkpoint']}`, not on the exported `{checkpoint}`")
    if probe.get("crop_pct") is not None and probe["crop_pct"] != crop_pct:
        other.append(
            f"with an eval view keeping crop_pct {probe['crop_pct']}, not the exported {crop_pct}"
        )
    if not other:
        return ""
    return (
        f"\n\nThese were measured {' and '.join(other)}; probe this export with "
        f"`lejepa probe {dirname} --labels ...`."
    )


_CARD_FILES = """## Files

- `model.safetensors`: backbone weights, timm key names
- `config.json`: timm model config (`architecture`, `model_args`, `pretrained_cfg`); training
  details, versions and checksum under `lejepa`
- `README.md`: this card
"""
