"""The pretraining configuration: defaults in one place, validated, resolved, written into the run.

Resolution order (as timm does for data configs): an explicit flag, then `--config run.yaml`, then
the run's saved config on `--resume`, then the defaults below. `None` means "not given" so an unset
flag never overrides anything. Values spelled "auto" are resolved against the data and the model
by `resolve()` and written out as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lejepa_cli import __version__
from lejepa_cli.errors import UsageError, short_repr

AUTO = "auto"
MAX_SIZE = 4096  # pixels per side of a view
MAX_SLICES = 65536  # SIGReg directions per step; the recipe uses 1024
MAX_WORKERS = 64  # DataLoader processes per process; more only costs memory
# The smallest share of the image an eval view keeps: below it the resize before the centre
# crop grows past ten times the input size (0.01 at 320 px would mean a 32000 px resize).
MIN_CROP_PCT = 0.1
MAX_VIEWS = 64  # views of each kind per image; the recipe uses 2 global and 6 local
MAX_WIDTH = 16384  # projector widths: one 16384 x 16384 layer is already 1 GB of weights
# Continued pretraining (--init) keeps the learning rate of a run from scratch, with a shorter
# warmup: the weights it starts from need no long ramp (docs/results.md, examples/transfer.py).
INIT_WARMUP_FRACTION = 0.05  # of the epochs, at most 10 as from scratch

# The recipe's augmentation settings per view, as in `lejepa_cli.data.multicrop.MultiCropConfig`
# (a test keeps the two equal). Counts, sizes and scales of the views have flags of their own;
# these are set with `--augment KEY=VALUE` or an `augment:` mapping in run.yaml.
AUGMENT_DEFAULTS: dict[str, Any] = {
    "ratio": [3 / 4, 4 / 3],  # crop aspect-ratio range (w / h)
    "hflip_p": 0.5,
    "vflip_p": 0.0,  # not in the recipe (nor rot90_p): for images without an up and a down
    "rot90_p": 0.0,
    "jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "grayscale_p": 0.2,
    "blur_p": 0.5,
    "blur_sigma": [0.1, 2.0],  # pixels of the output view
    "solarize_p": 0.2,
    "solarize_threshold": 128,
    # for images that are not 3-channel, in place of colour jitter, grayscale and solarize
    "channel_jitter_p": 0.8,
    "channel_brightness": 0.4,
    "channel_contrast": 0.4,
    "channel_dropout_p": 0.2,
}
_AUGMENT_PAIRS = ("ratio", "blur_sigma")


def flag(
    help: str,
    show: str | None = None,
    *,
    names: tuple[str, ...] = (),
    metavar: str | None = None,
    cli_type: Any = None,
) -> dict[str, Any]:
    """A config field's command-line flag, as field metadata: its help, the default shown in
    --help (`show`), its names when not just --field-name, and its type on the command line
    when that is not the field's own (a folder given as a path, say)."""
    return {"help": help, "show": show, "names": names, "metavar": metavar, "cli_type": cli_type}


@dataclass(frozen=True)
class PretrainConfig:
    """Every setting of a pretraining run. A field with `flag` metadata is a `lejepa pretrain`
    option of the same name (and a run.yaml key); the CLI is generated from these fields."""

    data: str = field(
        default="",
        metadata=flag(
            "Folder of images (searched recursively), a manifest (.csv with a path column, or "
            ".txt, one path a line), or WebDataset shards (shards.json, a .tar brace pattern, a "
            "list of .tar, or an s3://, gs://, http(s):// or pipe: URL). Optional with --resume.",
            metavar="DATA",
            cli_type=str,
        ),
    )
    out: str = field(
        default="",
        metadata=flag("Run directory to write.", names=("--out", "-o"), cli_type=Path),
    )
    arch: str = field(default="resnet18", metadata=flag("Any timm architecture.", "resnet18"))
    epochs: int = field(default=100, metadata=flag("Passes over the data.", "100"))
    batch_size: int = field(
        default=128, metadata=flag("Global batch size, split across processes.", "128")
    )
    lr: float = field(
        default=5e-4,
        metadata=flag("Peak learning rate of AdamW.", "5e-4"),
    )
    weight_decay: float | str = field(
        default=AUTO,
        metadata=flag("AdamW weight decay; auto: 5e-2 for attention models, 5e-4 for CNNs."),
    )
    warmup_epochs: float | str = field(
        default=AUTO,
        metadata=flag(
            "Linear warmup length in epochs; auto: min(10, 10% of epochs; 5% with --init)."
        ),
    )
    min_lr_ratio: float = 1e-3  # cosine ends at lr * this (run.yaml only)
    lam: float = field(
        default=0.05,
        metadata=flag("SIGReg weight lambda: loss = (1-lam)*pred + lam*sigreg.", "0.05"),
    )
    num_slices: int = field(
        default=1024, metadata=flag("Random 1-D directions for SIGReg per step.", "1024")
    )
    proj_dim: int = field(default=128, metadata=flag("Projector output size.", "128"))
    proj_hidden: int = field(default=2048, metadata=flag("Projector hidden width.", "2048"))
    drop_path: float = field(
        default=0.0,
        metadata=flag(
            "Stochastic depth of the backbone during pretraining (timm's drop_path_rate; "
            "not in the recipe). Off at probe and export time.",
            "0",
        ),
    )
    global_views: int = field(default=2, metadata=flag("Global crops per image.", "2"))
    local_views: int = field(default=6, metadata=flag("Local crops per image.", "6"))
    global_size: int | str = field(
        default=AUTO,
        metadata=flag(
            "Global crop size in pixels, or auto (from the folder's typical resolution)."
        ),
    )
    local_size: int | str = field(
        default=AUTO, metadata=flag("Local crop size in pixels, or auto.")
    )
    global_scale: tuple[float, float] = field(
        default=(0.3, 1.0), metadata=flag("Area range of global crops, e.g. 0.3,1.0.")
    )
    local_scale: tuple[float, float] = field(
        default=(0.05, 0.3), metadata=flag("Area range of local crops, e.g. 0.05,0.3.")
    )
    crop_pct: float | str = field(
        default=AUTO,
        metadata=flag(
            "Share of the image's shorter side kept by the eval view (resize, then centre "
            "crop) that probe, embed and the export use, or auto (timm's for the architecture, "
            "0.875 or 0.9); from 0.1 to 1. 1 keeps the whole image: for images whose borders "
            "matter.",
            "auto",
        ),
    )
    augment: dict[str, Any] = field(
        default_factory=lambda: dict(AUGMENT_DEFAULTS),
        metadata=flag(
            "An augmentation setting, repeatable: hflip_p, jitter_p, brightness, contrast, "
            "saturation, hue, grayscale_p, blur_p, blur_sigma (e.g. 0.1,2.0), solarize_p, "
            "solarize_threshold, ratio; e.g. --augment blur_p=0. Defaults: the paper's recipe. "
            "Off in the recipe: vflip_p (vertical flip) and rot90_p (a turn by 90, 180 or 270 "
            "degrees), for images with no up and down. Images that are not 3-channel get "
            "channel_jitter_p, channel_brightness, channel_contrast and channel_dropout_p instead "
            "of the colour settings.",
            metavar="KEY=VALUE",
        ),
    )
    channels: int | str = field(
        default=AUTO,
        metadata=flag(
            "Input channels of the backbone, or auto: the folder's count (3 for 8-bit "
            "images). A number N also turns 1-channel images into N channels.",
            "auto",
        ),
    )
    intensity: str = field(
        default=AUTO,
        metadata=flag(
            "How raw values become 0-1: dataset (per-channel 0.5-99.5 percentiles of the "
            "folder), per-image (each image's own min and max) or asinh; auto: dataset above "
            "8 bits.",
            "auto",
        ),
    )
    asinh_softening: float = field(
        default=0.1,
        metadata=flag(
            "--intensity asinh: share of the dataset range where the stretch turns from "
            "linear to logarithmic; smaller lifts faint structure more.",
            "0.1",
        ),
    )
    fits_hdu: int | None = field(
        default=None,
        metadata=flag("FITS files: the HDU to read (default: the first that holds an image)."),
    )
    pixels: dict[str, Any] | None = None  # resolved by the run: channels, mapping, mean, std
    seed: int = field(default=0, metadata=flag("Seed for init, order and crops.", "0"))
    workers: int | str = field(
        default=AUTO, metadata=flag("Data-loading processes per GPU/process, or auto.")
    )
    device: str = field(default=AUTO, metadata=flag("auto, cpu or cuda.", "auto"))
    precision: str = field(
        default=AUTO,
        metadata=flag("auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."),
    )
    compile: bool = field(
        default=False,
        metadata=flag("torch.compile the model.", names=("--compile/--no-compile",)),
    )
    max_steps: int | None = field(
        default=None,
        metadata=flag(
            "Stop when the run reaches this step, counted from the run's start, not from a "
            "resume (checkpointed; continue with --resume)."
        ),
    )
    keep_every: int | str = field(
        default=AUTO,
        metadata=flag("Keep a checkpoint every N epochs for model selection; auto: ~10 per run."),
    )
    log_every: int = field(
        default=1, metadata=flag("Steps between lines in metrics.jsonl and the plain log.", "1")
    )
    holdout: int | str = field(
        default=AUTO,
        metadata=flag("Images kept out of training for the label-free score, or auto."),
    )
    labels: str | None = field(
        default=None,
        metadata=flag(
            "Optional CSV (path,label): probe each kept checkpoint in the report.", cli_type=Path
        ),
    )
    log_to: list[str] = field(
        default_factory=list,
        metadata=flag(
            "Also log the curves, held-out scores and config to tensorboard (RUN/tensorboard), "
            "mlflow (a SQLite store in RUN, or --mlflow-uri) or wandb (offline in RUN/wandb "
            "unless logged in); repeatable. Each needs its extra: pip install "
            "'lejepa-cli\\[tensorboard]'.",
            names=("--log-to",),
            metavar="TRACKER",
        ),
    )
    mlflow_uri: str | None = field(
        default=None,
        metadata=flag("MLflow tracking URI for --log-to mlflow (a server, or a database)."),
    )
    init: str | None = field(
        default=None,
        metadata=flag(
            "Start from these weights instead of random ones: a timm name (resnet50.a1_in1k, "
            "hf-hub:timm/..., or timm for --arch's default), a .safetensors/.pth file (with "
            "--arch), an export or timm model folder, or a run or one of its checkpoints. Shortens "
            "the default --warmup-epochs to 5% of the epochs.",
            names=("--init",),
            metavar="SOURCE",
        ),
    )
    init_checkpoint: str = field(
        default="last",
        metadata=flag(
            "When --init is a run: last, best, an epoch number or a checkpoint name.", "last"
        ),
    )
    init_partial: bool = field(
        default=False,
        metadata=flag(
            "Load the --init tensors that match the architecture and list the rest in "
            "train.log, instead of refusing a mismatch.",
            names=("--init-partial/--no-init-partial",),
        ),
    )
    init_sha256: str | None = None  # written by the run: checksum of the --init weights file
    init_tensors: int | None = None  # written by the run: tensors loaded from --init
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("global_scale", "local_scale"):
            d[key] = list(d[key])
        return d

    def replace(self, **changes: Any) -> PretrainConfig:
        return dataclasses.replace(self, **changes)


# Keys that do not change what is computed: a resume may change them freely.
# `out` is where the run lives now: a run moved or copied elsewhere resumes there.
RUNTIME_KEYS = frozenset(
    {
        "out",
        "workers",
        "device",
        "max_steps",
        "log_every",
        "compile",
        "version",
        "log_to",
        "mlflow_uri",
    }
)
TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")  # lejepa_cli.trackers.TRACKERS, without imports

_FIELDS = {f.name: f for f in fields(PretrainConfig)}


def _fail_unknown(keys: list[str], where: str) -> None:
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key.replace("-", "_"), list(_FIELDS), n=1)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise UsageError(f"unknown key {', '.join(parts)} in {where}; keys mirror the flags")


def _coerce_augment(value: Any) -> dict[str, Any]:
    """`--augment` values ("KEY=VALUE" strings, repeatable) or a run.yaml mapping, type-checked;
    only the keys given (ranges are checked by MultiCropConfig in `validate`)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        pairs = {}
        for item in value:
            key, sep, text = str(item).partition("=")
            if not sep:
                raise UsageError(
                    f"--augment takes KEY=VALUE (e.g. blur_p=0), got {short_repr(item)}"
                )
            pairs[key.strip().replace("-", "_")] = text.strip()
        value = pairs
    if not isinstance(value, dict):
        raise UsageError(f"augment must be a mapping of settings, got {short_repr(value)}")
    out = {}
    for key, raw in value.items():
        key = str(key).replace("-", "_")
        if key not in AUGMENT_DEFAULTS:
            close = difflib.get_close_matches(key, list(AUGMENT_DEFAULTS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UsageError(
                f"unknown augment setting '{key}'{hint}; settings: {', '.join(AUGMENT_DEFAULTS)}"
            )
        try:
            if key in _AUGMENT_PAIRS:
                if isinstance(raw, str):
                    raw = [v for v in raw.replace(" ", "").split(",") if v]
                lo, hi = (float(v) for v in raw)
                out[key] = [lo, hi]
            elif isinstance(AUGMENT_DEFAULTS[key], int):
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                out[key] = int(raw)
            else:
                out[key] = float(raw)
        except (TypeError, ValueError):
            shape = "two numbers, e.g. 0.1,2.0" if key in _AUGMENT_PAIRS else "a number"
            raise UsageError(
                f"invalid augment value {short_repr(raw)} for {key} (expected {shape})"
            ) from None
    return out


_BOOL_WORDS = {w: True for w in ("1", "true", "yes", "on")} | {
    w: False for w in ("0", "false", "no", "off")
}


def _coerce_log_to(value: Any) -> list[str]:
    """`--log-to` names (repeatable, or comma-separated) or a run.yaml list, each a known tracker,
    in order and without repeats."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise UsageError(f"log_to must be a list of tracker names, got {short_repr(value)}")
    names = [n.strip().lower() for item in items for n in str(item).split(",") if n.strip()]
    for name in names:
        if name not in TRACKER_NAMES:
            raise UsageError(
                f"--log-to {name!r} is not a tracker; choose from {', '.join(TRACKER_NAMES)}"
            )
    return list(dict.fromkeys(names))


def _coerce_pixels(value: Any) -> dict[str, Any] | None:
    """The `pixels:` record a run writes (never a flag): checked, as it is read back."""
    if value is None:
        return None
    from lejepa_cli.data.pixels import PixelSpec

    try:
        return PixelSpec.from_dict(value).to_dict()
    except (KeyError, TypeError, ValueError, AttributeError, UsageError):
        raise UsageError(
            f"invalid pixels record {short_repr(value)}: remove it to have the run measure "
            "the folder again"
        ) from None


def _coerce(name: str, value: Any) -> Any:
    """Type-check one value against the field's annotation, accepting 'auto' where allowed."""
    if name == "augment":
        return _coerce_augment(value if value is not None else {})
    if name == "log_to":
        return _coerce_log_to(value if value is not None else [])
    if name == "pixels":
        return _coerce_pixels(value)
    default = _FIELDS[name].default
    annotation = str(_FIELDS[name].type)
    if value is None:
        if "None" in annotation:
            return None
        raise UsageError(f"{name} cannot be empty")
    if isinstance(value, str) and value.lower() == AUTO and "str" in annotation:
        return AUTO
    try:
        if name in ("global_scale", "local_scale"):
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            lo, hi = (float(v) for v in value)
            if not 0 < lo <= hi <= 1:
                raise ValueError
            return (lo, hi)
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.lower()]
            if isinstance(value, bool) or value in (0, 1):
                return bool(value)
            raise ValueError
        if isinstance(value, bool):  # YAML's `true` is not a number
            raise ValueError
        if "int" in annotation and "float" not in annotation:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if "float" in annotation:
            return float(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError, OverflowError):
        raise UsageError(
            f"invalid value {short_repr(value)} for {name} (expected {_expected(name)})"
        ) from None


def _expected(name: str) -> str:
    """What a field takes, in words, for an error message."""
    if name in ("global_scale", "local_scale"):
        return "two area fractions low,high with 0 < low <= high <= 1, e.g. 0.3,1"
    if isinstance(_FIELDS[name].default, bool):
        return "true or false"
    annotation = str(_FIELDS[name].type)
    kind = "an integer" if "int" in annotation and "float" not in annotation else None
    kind = kind or ("a number" if "float" in annotation else "text")
    if annotation.count("str") and kind != "text":
        kind += " or 'auto'"
    return kind


def build(overrides: dict[str, Any], base: PretrainConfig | None = None) -> PretrainConfig:
    """Defaults (or `base`) updated by the non-None entries of `overrides`, validated."""
    unknown = [k for k in overrides if k not in _FIELDS]
    if unknown:
        _fail_unknown(unknown, "the configuration")
    changes = {k: _coerce(k, v) for k, v in overrides.items() if v is not None}
    base = base or PretrainConfig()
    if "augment" in changes:  # settings given update the base's, one key at a time
        changes["augment"] = {**base.augment, **changes["augment"]}
    cfg = dataclasses.replace(base, **changes)
    validate(cfg)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    checks = [
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (
            bool(str(cfg.init_checkpoint).strip()),
            "--init-checkpoint is empty; give last, best, an epoch number or a checkpoint name",
        ),
        (cfg.batch_size >= 2, "--batch-size must be at least 2 (SIGReg needs a batch)"),
        (0 < cfg.lr < math.inf, "--lr must be a positive number"),
        (0 <= cfg.lam <= 1, "--lam must be between 0 and 1"),
        (0 <= cfg.min_lr_ratio <= 1, "--min-lr-ratio must be between 0 and 1"),
        (1 <= cfg.num_slices <= MAX_SLICES, f"--num-slices must be between 1 and {MAX_SLICES}"),
        (1 <= cfg.proj_dim <= MAX_WIDTH, f"--proj-dim must be between 1 and {MAX_WIDTH}"),
        (1 <= cfg.proj_hidden <= MAX_WIDTH, f"--proj-hidden must be between 1 and {MAX_WIDTH}"),
        (0 <= cfg.drop_path < 1, "--drop-path is a rate from 0 up to (not including) 1"),
        (0 <= cfg.seed < 2**32, "--seed must be between 0 and 4294967295"),
        (1 <= cfg.global_views <= MAX_VIEWS, f"--global-views must be between 1 and {MAX_VIEWS}"),
        (0 <= cfg.local_views <= MAX_VIEWS, f"--local-views must be between 0 and {MAX_VIEWS}"),
        (cfg.global_views + cfg.local_views >= 2, "use at least two views in total"),
        (cfg.log_every >= 1, "--log-every must be at least 1"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be at least 1"),
        (
            cfg.device in (AUTO, "cpu", "cuda") or cfg.device.startswith("cuda:"),
            "--device must be auto, cpu or cuda",
        ),
        (cfg.precision in (AUTO, "fp32", "bf16"), "--precision must be auto, fp32 or bf16"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    _validate_pixels(cfg)
    if cfg.crop_pct != AUTO and not MIN_CROP_PCT <= float(cfg.crop_pct) <= 1:
        raise UsageError(f"--crop-pct must be 'auto' or a number from {MIN_CROP_PCT} to 1")
    for name in ("weight_decay", "warmup_epochs"):
        value = getattr(cfg, name)
        if value != AUTO and not 0 <= float(value) < math.inf:
            raise UsageError(f"--{name.replace('_', '-')} must be 'auto' or a number of 0 or more")
    if cfg.augment != AUGMENT_DEFAULTS:  # ranges and probabilities, checked where they are used
        from lejepa_cli.data.multicrop import MultiCropConfig

        MultiCropConfig(**augment_kwargs(cfg.augment))
    for name in ("global_size", "local_size", "workers", "keep_every", "holdout"):
        value = getattr(cfg, name)
        minimum = 0 if name in ("workers", "holdout") else (1 if name == "keep_every" else 8)
        flag = "--" + name.replace("_", "-")
        if value != AUTO and int(value) < minimum:
            raise UsageError(f"{flag} must be 'auto' or at least {minimum}")
        maximum = {"global_size": MAX_SIZE, "local_size": MAX_SIZE, "workers": MAX_WORKERS}
        if name in maximum and value != AUTO and int(value) > maximum[name]:
            unit = " pixels" if name.endswith("size") else ""
            raise UsageError(f"{flag} must be 'auto' or at most {maximum[name]}{unit}")


def _validate_pixels(cfg: PretrainConfig) -> None:
    """--channels, --intensity, --asinh-softening and --fits-hdu (lejepa_cli.data.pixels)."""
    from lejepa_cli.data.channels import parse_channels
    from lejepa_cli.data.intensity import MODES

    parse_channels(cfg.channels)
    if cfg.intensity not in (AUTO, *MODES):
        raise UsageError(f"--intensity must be auto, {', '.join(MODES)}; got {cfg.intensity!r}")
    if not 0 < cfg.asinh_softening < math.inf:
        raise UsageError("--asinh-softening must be a number above 0 (0.1 is a common choice)")
    if cfg.fits_hdu is not None and cfg.fits_hdu < 0:
        raise UsageError("--fits-hdu is an HDU number, 0 (the primary HDU) or more")


def augment_kwargs(augment: dict[str, Any]) -> dict[str, Any]:
    """A config's augment mapping as MultiCropConfig keyword arguments (pairs as tuples)."""
    full = {**AUGMENT_DEFAULTS, **augment}
    return {k: tuple(v) if k in _AUGMENT_PAIRS else v for k, v in full.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (`epochs` twice, or `global-size`
    beside `global_size`), instead of keeping the last value without a word."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = str(key_node.value).replace("-", "_")
                if key in seen:
                    first = seen[key].start_mark.line + 1
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key '{key_node.value}' is given twice (first at line {first})",
                        key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run.yaml (keys mirror the flags, dashes or underscores) as overrides."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--config {path} is a folder; pass a YAML file")
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        # a SafeLoader: plain data only, never Python objects
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise UsageError(f"{path} is not valid YAML: {problem}{where}; fix that line") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must hold a mapping of keys to values")
    data = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = [str(k) for k in raw if str(k).replace("-", "_") not in _FIELDS]  # as written
    if unknown:
        _fail_unknown(unknown, str(path))
    return data


def save_yaml(cfg: PretrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_saved(path: str | Path) -> PretrainConfig:
    """The resolved config written into a run directory."""
    data = load_yaml(path)
    try:
        return build(data)
    except UsageError as exc:  # the value came from the file, not from a flag the user typed
        raise UsageError(
            f"{path} holds a setting this version refuses ({exc}); correct it there, or start "
            "the run again with --overwrite"
        ) from None


def diff(
    old: PretrainConfig, new: PretrainConfig, ignore=RUNTIME_KEYS
) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every result-changing key that differs."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return [(k, a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]]


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """augment settings as their own keys ("augment.blur_p"), so a diff names the one changed."""
    out = {k: v for k, v in d.items() if k != "augment"}
    out.update({f"augment.{k}": v for k, v in d.get("augment", {}).items()})
    return out


def resolve_weight_decay(cfg: PretrainConfig, transformer: bool) -> float:
    if cfg.weight_decay != AUTO:
        return float(cfg.weight_decay)
    return 5e-2 if transformer else 5e-4


def resolve_warmup(cfg: PretrainConfig) -> float:
    if cfg.warmup_epochs != AUTO:
        return float(cfg.warmup_epochs)
    if cfg.init:
        return float(min(10.0, cfg.epochs * INIT_WARMUP_FRACTION))
    return float(min(10.0, cfg.epochs / 10))  # 3 / 10 is 0.3; 0.1 * 3 is not


def resolve_keep_every(cfg: PretrainConfig) -> int:
    # About ten checkpoints over the run are enough to rank them without labels.
    return int(cfg.keep_every) if cfg.keep_every != AUTO else max(1, math.ceil(cfg.epochs / 10))


def resolve_holdout(cfg: PretrainConfig, num_images: int) -> int:
    if cfg.holdout != AUTO:
        return min(int(cfg.holdout), max(0, num_images - cfg.batch_size))
    # 5% of the folder, at least 16 and at most 512, never starving training.
    want = min(512, max(16, round(0.05 * num_images)))
    return max(0, min(want, num_images // 4))
