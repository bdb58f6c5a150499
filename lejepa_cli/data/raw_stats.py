"""What `lejepa inspect` says about a folder of scientific images (above 8 bits, not RGB, or in
.npy, FITS, DICOM): value types, channel counts, raw per-channel percentiles, the mean and std
after the `dataset` mapping, and the pretrain flags that fit the folder."""

from __future__ import annotations

from lejepa_cli.data.channels import describe_counts
from lejepa_cli.data.intensity import PERCENTILES
from lejepa_cli.data.pixels import plan, survey
from lejepa_cli.errors import DataError

# Formats whose images have no up and down, usually: sky and microscopy, not radiographs.
_NO_UP_AND_DOWN = {"FITS", "TIFF", "NPY"}


def describe_pixels(index) -> dict | None:
    """The `pixels` section of inspect's report, or None for an ordinary 8-bit folder."""
    found = survey(index)
    if found.eight_bit:
        return None
    flags: list[str] = []
    channels: int | str = "auto"
    if len(found.counts) > 1:  # grey images can join the one other count, if there is one
        others = [c for c in found.counts if c != 1]
        channels = others[0] if len(others) == 1 else found.counts.most_common(1)[0][0]
        flags.append(f"--channels {channels}")
    try:
        spec = plan(index, channels=channels, intensity="dataset")
    except DataError as exc:  # counts no rule can join: say so instead of numbers
        return _section(found, None, [], str(exc))
    flags.append("--intensity dataset")
    if "FITS" in found.formats:
        flags.append("(or --intensity asinh --asinh-softening 0.1 for a high dynamic range)")
    if set(found.formats) & _NO_UP_AND_DOWN:
        flags.append(
            "--augment vflip_p=0.5 --augment rot90_p=0.5 (if the images have no up and down, "
            "as sky and microscopy)"
        )
    return _section(found, spec, flags, None)


def _section(found, spec, flags: list[str], problem: str | None) -> dict:
    out = {
        "value_types": dict(found.dtypes.most_common()),
        "bits": dict(sorted(_bits(found).items())),
        "channel_counts": {str(c): n for c, n in found.counts.most_common()},
        "channels_described": describe_counts(found.counts),
        "problem": problem,
        "suggested_flags": flags,
    }
    if spec is not None:
        out |= {
            "channels": spec.channels,
            "percentiles": list(PERCENTILES),
            "low": [round(v, 6) for v in spec.intensity.low],
            "high": [round(v, 6) for v in spec.intensity.high],
            "mean": [round(v, 4) for v in spec.mean],
            "std": [round(v, 4) for v in spec.std],
        }
    return out


def _bits(found) -> dict[str, int]:
    """Significant bits per value (DICOM BitsStored, else the type's size) -> images."""
    counts: dict[str, int] = {}
    for _, header in found.headers:
        key = f"{header.bits}-bit {'float' if header.dtype.startswith('float') else 'integer'}"
        counts[key] = counts.get(key, 0) + 1
    return counts
