"""The model card section of an export trained on raw scientific images (a `pixels` record):
the mapping's numbers, and a numpy + torch snippet that turns a raw file into the input tensor
exactly as `lejepa embed` does (`data.pixels.EvalImages`), so that no lejepa-cli is needed."""

from __future__ import annotations

from typing import Any

_SNIPPET = """```python
import json
import math

import numpy as np
import timm
import torch
import torch.nn.functional as F

model = timm.create_model("local-dir:{dirname}", pretrained=True, num_classes=0).eval()
config = json.load(open("{dirname}/config.json"))
pixels, pcfg = config["lejepa"]["pixels"], config["pretrained_cfg"]

path = "image.npy"
raw = np.load(path, allow_pickle=False).astype(np.float32)  # (H, W) or (H, W, C), as stored
if raw.ndim == 2:
    raw = raw[:, :, None]
raw = np.repeat(raw, pixels["channels"] // raw.shape[-1], axis=-1)  # grey -> {channels} channels
{mapping}
x = np.clip(np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)  # (H, W, C) in 0-1

size, crop_pct = pcfg["input_size"][-1], pcfg["crop_pct"]
x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]  # (1, C, H, W)
h, w = x.shape[-2:]
scale = math.floor(size / crop_pct)  # shorter side, then the centred square
new = (scale, int(scale * w / h)) if h <= w else (int(scale * h / w), scale)
x = F.interpolate(x, size=new, mode="{mode}", antialias=True, align_corners=False)
top, left = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
x = x[:, :, top : top + size, left : left + size]
mean = torch.tensor(pcfg["mean"]).view(1, -1, 1, 1)
std = torch.tensor(pcfg["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    embedding = model((x - mean) / std)  # (1, {dim})
```"""

_MAPPINGS = {
    "dataset": """lo = np.array(pixels["intensity"]["low"], np.float32)  # per channel, the folder's
hi = np.array(pixels["intensity"]["high"], np.float32)  # 0.5th and 99.5th percentiles
t = (raw - lo) / (hi - lo)""",
    "asinh": """lo = np.array(pixels["intensity"]["low"], np.float32)
hi = np.array(pixels["intensity"]["high"], np.float32)
s = np.float32(pixels["intensity"]["softening"])
t = np.arcsinh((raw - lo) / (hi - lo) / s) / np.arcsinh(np.float32(1) / s)""",
    "per-image": """finite = np.where(np.isfinite(raw), raw, np.nan)  # each image by its own range
lo, hi = np.nanmin(finite, axis=(0, 1)), np.nanmax(finite, axis=(0, 1))
lo = np.nan_to_num(lo, nan=0.0)
hi = np.where(np.isfinite(hi) & (hi > lo), hi, lo + 1)
t = (raw - lo) / (hi - lo)""",
}


def _fmt(values) -> str:
    return ", ".join(f"{float(v):.6g}" for v in values)


def card_section(config: dict[str, Any], dirname: str) -> str:
    """'## Raw files to input' for an export whose config.json has lejepa.pixels."""
    pixels = config["lejepa"]["pixels"]
    mapping = pixels["intensity"]
    mode = mapping["mode"]
    rows = [f"- channels: {pixels['channels']}", f"- intensity mapping: `{mode}`"]
    if mode != "per-image":
        rows += [f"- low (per channel): {_fmt(mapping['low'])}"]
        rows += [f"- high (per channel): {_fmt(mapping['high'])}"]
    if mode == "asinh":
        rows.append(f"- asinh softening: {mapping['softening']}")
    rows.append(f"- mean / std after the mapping: {_fmt(pixels['mean'])} / {_fmt(pixels['std'])}")
    interpolation = config["pretrained_cfg"]["interpolation"]
    snippet = _SNIPPET.format(
        dirname=dirname,
        channels=pixels["channels"],
        mapping=_MAPPINGS[mode],
        mode=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        dim=config["num_features"],
    )
    return f"""## Raw files to input

This model was trained on raw arrays (16-bit, float or multi-channel), not on 8-bit RGB: feed
it values mapped exactly as in training, not `timm.data.create_transform` on a PIL image.

{chr(10).join(rows)}

The values are mapped to 0-1 per channel and clipped, resized and centre-cropped, then
normalised. This reproduces `lejepa embed {dirname} FOLDER` on one file (a .npy array here;
read TIFF with `tifffile.imread`, FITS with `astropy.io.fits.getdata` and move its first axis
last, DICOM with pydicom's `pixel_array` times RescaleSlope plus RescaleIntercept):

{snippet}
"""
