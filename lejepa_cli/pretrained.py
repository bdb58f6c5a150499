"""Weights from wherever a user names them: SOURCE -> architecture, backbone tensors, record.

A SOURCE is one of
  - a timm pretrained name: `resnet50.a1_in1k`, `hf-hub:timm/...`, or `timm` (the architecture's
    default pretrained tag), read through huggingface_hub: fetched when online, taken from the
    Hugging Face cache offline (HF_HUB_OFFLINE=1), else refused with what to download;
  - a weights file: .safetensors, or .pth/.pt/.bin read with torch.load(weights_only=True);
  - a lejepa export or any timm `local-dir:` folder (config.json + weights);
  - a lejepa run (its checkpoint chosen as --checkpoint chooses) or one of its checkpoints.

Keys are matched to timm's names: wrapper prefixes stripped, classifier heads dropped. The
record says what was read (source, sha256 of the weights file, tensors loaded) so that a run
started from it can say where it came from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lejepa_cli import hub
from lejepa_cli.errors import CheckpointError, UsageError
from lejepa_cli.hub import HUB_PREFIX, WEIGHT_FILES, default_name

LOCAL_DIR_PREFIX = "local-dir:"
DEFAULT_TAG = "timm"  # --init timm: the architecture's default pretrained weights
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
# Prefixes that wrappers put before timm's names (DDP, lejepa's model, Lightning, DINO heads).
PREFIXES = ("module.", "backbone.", "model.", "encoder.", "student.", "teacher.", "_orig_mod.")
# Tensors of heads a backbone never has (num_classes=0): dropped, not "unexpected".
HEAD_PREFIXES = ("projector.", "head.", "fc.", "classifier.", "last_linear.", "head_dist.")
SHOWN_KEYS = 4  # keys named in a mismatch message


@dataclass
class Weights:
    """What a SOURCE holds: its architecture, its backbone tensors and where they came from."""

    arch: str
    tensors: dict[str, Any]  # name -> torch.Tensor, as stored (prefixes not yet stripped)
    record: dict[str, Any]  # source, kind, sha256 (+ checkpoint, step for a run)
    pretrained_cfg: dict[str, Any] | None = None  # an off-the-shelf model's eval view
    model_args: dict[str, Any] = field(default_factory=dict)  # create_model keywords


@dataclass
class Match:
    """The source's tensors under the backbone's names, and what did not fit."""

    loaded: dict[str, Any]  # backbone name -> tensor
    missing: list[str]  # backbone tensors the source lacks
    unexpected: list[str]  # source tensors the backbone lacks, or of another shape
    dropped: int  # classifier / projector tensors left out on purpose

    def problem(self) -> str | None:
        if not self.missing and not self.unexpected:
            return None
        parts = []
        for what, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
                parts.append(f"{len(keys)} {what} ({shown})")
        return " and ".join(parts)


# --- what a SOURCE is, without reading its weights --------------------------------------


def is_hub_name(text: str) -> bool:
    """A timm pretrained name (arch.tag) or an hf-hub: id, not a path on disk."""
    if text.startswith(HUB_PREFIX):
        return True
    if (
        text == DEFAULT_TAG
        or os.sep in text
        or Path(text).suffix in (".safetensors",) + TORCH_SUFFIXES
    ):
        return False
    import timm

    return "." in text and timm.is_model(text.split(".")[0])


def normalize(text: str) -> str:
    """The SOURCE as recorded: paths made absolute (a run moved elsewhere still says where its
    weights came from), names as given."""
    text = str(text).strip()
    if not text:
        raise UsageError("--init takes a SOURCE: a timm name, a weights file, an export or a run")
    if text.startswith(LOCAL_DIR_PREFIX):
        return LOCAL_DIR_PREFIX + str(Path(text[len(LOCAL_DIR_PREFIX) :]).expanduser().absolute())
    if text == DEFAULT_TAG or text.startswith(HUB_PREFIX):
        return text
    path = Path(text).expanduser()
    if path.exists() or not is_hub_name(text):
        return str(path.absolute())
    return text


def implied_arch(text: str, arch: str | None) -> str | None:
    """The architecture a SOURCE records (a timm name, an export, a run), checked against
    `arch` (--arch, None when not given): a contradiction is a UsageError. None when the
    source does not say (a weights file) and `arch` is None."""
    found = _recorded_arch(normalize(text))
    if found is not None and arch is not None and found != arch:
        raise UsageError(
            f"--init {text} holds a {found} backbone, not {arch} as --arch says; drop --arch "
            f"or pass --arch {found}"
        )
    return found or arch


def _recorded_arch(text: str) -> str | None:
    if text == DEFAULT_TAG:
        return None
    if text.startswith(HUB_PREFIX) or (is_hub_name(text) and not Path(text).exists()):
        return hub.describe(text).arch
    path = Path(text.removeprefix(LOCAL_DIR_PREFIX))
    if not path.exists():
        raise UsageError(_missing(path))
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            return str(_folder_config(path).get("architecture"))
        return _run_arch(path)
    return None


def _missing(path: Path) -> str:
    import timm

    if timm.is_model(path.name):  # an architecture, without a tag
        return (
            f"{path.name} is an architecture, not weights: pass --init timm --arch {path.name} "
            f"for its default weights, or a tag such as {path.name}.TAG"
        )
    return (
        f"{path} does not exist; pass a weights file, an export, a run, a timm pretrained name "
        "(e.g. resnet50.a1_in1k) or hf-hub:ORG/NAME"
    )


def _lejepa_kind(path: Path) -> str:
    """'run' or 'checkpoint'; a UsageError for a folder that is neither."""
    from lejepa_cli import rundir

    kind = rundir.kind_of(path)
    if kind not in ("run", "checkpoint"):
        raise UsageError(
            f"{path} is neither weights nor a lejepa run, checkpoint or export; pass one of "
            "those, or a timm pretrained name"
        )
    return kind


def _run_arch(path: Path) -> str | None:
    from lejepa_cli import rundir

    if _lejepa_kind(path) == "checkpoint":
        return rundir.read_meta(path).arch
    arch = rundir.read_config_fields(path).get("arch")
    return str(arch) if arch else None


# --- reading the weights ------------------------------------------------------------------


def read(text: str, arch: str | None = None, checkpoint: str = "last") -> Weights:
    """The weights a SOURCE names; `arch` is what --arch says (needed for a weights file and
    for `timm`), `checkpoint` chooses in a run. UsageError or CheckpointError, one line."""
    text = normalize(text)
    if text == DEFAULT_TAG:
        if not arch:
            raise UsageError("--init timm takes the default weights of --arch: pass --arch too")
        return _from_hub_name(default_name(arch), text)
    if text.startswith(HUB_PREFIX) or (is_hub_name(text) and not Path(text).exists()):
        return _from_hub_name(text, text)
    path = Path(text.removeprefix(LOCAL_DIR_PREFIX))
    if not path.exists():
        raise UsageError(_missing(path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return _from_folder(path, text)
        return _from_run(path, text, checkpoint)
    if not arch:
        raise UsageError(
            f"{path} is a weights file, which does not say its architecture: pass --arch"
        )
    tensors = read_file(path)
    return Weights(arch, tensors, {"source": text, "kind": "file", "sha256": sha256_of(path)})


def sha256_of(path: Path) -> str:
    from lejepa_cli.artifacts import sha256_file

    return sha256_file(path)


def read_file(path: Path) -> dict[str, Any]:
    """Tensors of a .safetensors or .pth/.pt/.bin file, never unpickling an object."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise UsageError(
            f"{path} is not a weights file this reads (.safetensors, .pth, .pt or .bin)"
        )
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(
            f"{path} holds Python objects besides tensors, which are not unpickled; "
            "save its state_dict() (or convert it to .safetensors) and pass that file"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise UsageError(f"{path} cannot be read as torch weights ({exc})") from None
    return _state_dict_of(data, path)


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise UsageError(f"{path} cannot be read as safetensors ({exc})") from None


def _state_dict_of(data: Any, path: Path) -> dict[str, Any]:
    """The tensors of a loaded .pth: a state dict, or one under a usual key (state_dict,
    model, ...) of a training checkpoint."""
    import torch

    for key in ("state_dict", "model", "model_state_dict", "teacher", "student", "module"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path} holds no state dict (a mapping of names to tensors)")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise UsageError(f"{path} holds no tensors under names")
    return tensors


def _from_folder(path: Path, text: str) -> Weights:
    """A lejepa export or a timm local-dir folder: config.json + model.safetensors (or
    pytorch_model.bin)."""
    cfg = _folder_config(path)
    if isinstance(cfg.get("lejepa"), dict):
        from lejepa_cli.artifacts import read_export_config

        cfg = read_export_config(path)  # every field lejepa wrote, checked
    weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise UsageError(f"{path} has no {' or '.join(WEIGHT_FILES)} beside config.json")
    args = dict(cfg.get("model_args") or {})
    args.pop("num_classes", None)
    kind = "export" if "lejepa" in cfg else "local-dir"
    record = {"source": text, "kind": kind, "sha256": sha256_of(weights)}
    return Weights(cfg["architecture"], read_file(weights), record, cfg.get("pretrained_cfg"), args)


def _folder_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}/config.json cannot be read ({exc})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise UsageError(f"{path}/config.json names no architecture; it is not a timm model folder")
    return cfg


def _from_run(path: Path, text: str, which: str) -> Weights:
    """A run's checkpoint (chosen as --checkpoint chooses) or a checkpoint folder: backbone
    tensors only."""
    from lejepa_cli import checkpoint as ckpt_io
    from lejepa_cli import rundir

    kind = _lejepa_kind(path)
    ckpt = path if kind == "checkpoint" else rundir.resolve_checkpoint(path, which or "last")
    meta = rundir.read_meta(ckpt)
    if not meta.arch:
        raise CheckpointError(f"{ckpt}/meta.json names no architecture; the checkpoint is damaged")
    tensors = ckpt_io.load_weights(ckpt, prefix="backbone")
    record = {
        "source": text,
        "kind": kind,
        "checkpoint": ckpt.name,
        "step": meta.step,
        "sha256": sha256_of(ckpt / rundir.WEIGHTS),
    }
    return Weights(meta.arch, tensors, record, meta.raw.get("data"))


def _from_hub_name(name: str, text: str) -> Weights:
    model = hub.describe(name)
    path = hub.weights_file(model)
    record = {
        "source": text if text != DEFAULT_TAG else name,
        "kind": "timm",
        "sha256": sha256_of(path),
    }
    if text == DEFAULT_TAG:
        record["requested"] = DEFAULT_TAG
    return Weights(model.arch, read_file(path), record, model.pretrained_cfg, model.model_args)


# --- matching and loading -----------------------------------------------------------------


def _candidates(key: str):
    """`key`, then `key` with wrapper prefixes stripped one at a time."""
    yield key
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
                yield key


def match(backbone, tensors: dict[str, Any], classifier: str | None = None) -> Match:
    """The source's tensors under the backbone's names. Heads (a classifier, lejepa's projector)
    are dropped; BatchNorm's `num_batches_tracked` may be absent (it only counts batches)."""
    own = backbone.state_dict()
    heads = HEAD_PREFIXES + ((classifier + ".",) if classifier else ())
    loaded: dict[str, Any] = {}
    unexpected: list[str] = []
    dropped = 0
    for key, value in tensors.items():
        name = next((c for c in _candidates(key) if c in own), None)
        if name is None:
            short = list(_candidates(key))[-1]
            if short.startswith(heads) or "projector." in key:
                dropped += 1
            else:
                unexpected.append(key)
        elif tuple(own[name].shape) != tuple(value.shape):
            unexpected.append(f"{key} {tuple(value.shape)} vs {tuple(own[name].shape)}")
        elif own[name].is_floating_point() and not value.is_floating_point():
            unexpected.append(f"{key} ({value.dtype})")
        else:
            loaded[name] = value
    missing = [k for k in own if k not in loaded and not k.endswith("num_batches_tracked")]
    return Match(loaded, missing, unexpected, dropped)


def _adapt(backbone, tensors: dict[str, Any]) -> dict[str, Any]:
    """timm's own conversion for the model family (e.g. a ViT's position embedding resampled
    to the backbone's size, older layouts renamed), when it has one and it applies."""
    import sys

    convert = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return tensors
    try:
        return dict(convert(dict(tensors), backbone))
    except Exception:  # a layout the converter does not expect: match the names as they are
        return tensors


def load_into(
    backbone, weights: Weights, partial: bool = False, partial_flag: str | None = "--init-partial"
) -> tuple[dict[str, Any], list[str]]:
    """Load `weights` into `backbone` in place. Returns (record with the tensors loaded,
    notes for the log). A mismatch is a UsageError unless `partial`, which loads what matches
    and lists the rest in the notes."""
    import torch

    classifier = (weights.pretrained_cfg or {}).get("classifier")
    found = match(backbone, _adapt(backbone, weights.tensors), classifier)
    problem = found.problem()
    source = weights.record["source"]
    if problem and not (partial and found.loaded):
        fix = "check that it holds this architecture (--arch)"
        if found.loaded and partial_flag:
            fix = (
                f"pass {partial_flag} to load the {len(found.loaded)} tensors that match, or {fix}"
            )
        raise UsageError(f"{source} does not fit {weights.arch}: {problem}; {fix}")
    with torch.no_grad():
        own = backbone.state_dict()
        for name, value in found.loaded.items():
            own[name].copy_(value)
    notes = [
        f"initialised {len(found.loaded)} tensors from {source} (sha256 {weights.record['sha256'][:12]})"
    ]
    if problem:
        notes.append(f"--init-partial: not loaded: {problem}")
        notes += [f"  missing {k}" for k in found.missing] + [
            f"  unexpected {k}" for k in found.unexpected
        ]
    record = {**weights.record, "tensors": len(found.loaded)}
    if problem:
        record.update(missing=len(found.missing), unexpected=len(found.unexpected))
    return record, notes


# --- pretraining from a SOURCE ------------------------------------------------------------


def init_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A new run's flags with --init SOURCE recorded as an absolute path or a name and the
    architecture it implies (an error when --arch contradicts it). Flags without --init are
    returned as they are."""
    if not overrides.get("init"):
        return overrides
    init = normalize(str(overrides["init"]))
    arch = implied_arch(init, overrides.get("arch"))
    if arch is None:
        raise UsageError(f"--init {init} does not say which architecture it holds: pass --arch")
    if init == DEFAULT_TAG:  # recorded as the name it stands for
        init = default_name(arch)
    return {**overrides, "init": init, "arch": arch}


def init_backbone(backbone, cfg, resume: bool):
    """`--init`: load the config's SOURCE into a freshly built backbone. Returns the config
    with the checksum and tensor count filled in, and the lines for train.log. A resume takes
    its weights from the run's checkpoint instead: nothing is read then."""
    if not cfg.init or resume:
        return cfg, []
    weights = read(cfg.init, cfg.arch, cfg.init_checkpoint)
    if weights.arch != cfg.arch:  # a run or an export whose architecture is not --arch
        raise UsageError(
            f"--init {cfg.init} holds a {weights.arch} backbone, not {cfg.arch}; pass --arch "
            f"{weights.arch} or drop --arch"
        )
    record, notes = load_into(backbone, weights, cfg.init_partial)
    if record.get("checkpoint"):
        notes[0] += f", checkpoint {record['checkpoint']}"
    return cfg.replace(init_sha256=record["sha256"], init_tensors=record["tensors"]), notes


def init_meta(cfg) -> dict[str, Any]:
    """Where a run's first weights came from, as an entry of each checkpoint's meta.json
    ({} for a run from scratch)."""
    if not cfg.init:
        return {}
    return {"init": {"source": cfg.init, "sha256": cfg.init_sha256, "tensors": cfg.init_tensors}}


def describe_init(record: Any) -> str | None:
    """'continued from SOURCE (sha256 ..., N tensors)' for a run's or checkpoint's init
    record (or a config with init fields); None for a run from scratch or a record edited into
    another shape."""
    if isinstance(record, dict) and "init_sha256" in record:  # a config.yaml mapping
        record = {k: record.get(f"init_{k}") for k in ("sha256", "tensors")} | {
            "source": record.get("init")
        }
    if not isinstance(record, dict) or not isinstance(record.get("source"), str):
        return None
    sha, count = record.get("sha256"), record.get("tensors")
    details = [f"sha256 {sha[:16]}" if isinstance(sha, str) else None]
    details.append(f"{count} tensors" if isinstance(count, int) else None)
    shown = ", ".join(d for d in details if d)
    return f"continued from {record['source']}" + (f" ({shown})" if shown else "")


# --- probing and embedding any SOURCE -----------------------------------------------------


def is_lejepa_path(text: str | Path) -> bool:
    """A run, a checkpoint or an export written by lejepa (read by `artifacts.load_encoder`)."""
    from lejepa_cli import rundir

    path = Path(str(text))
    if not path.is_dir():
        return False
    if (path / rundir.EXPORT_CONFIG).is_file():
        return "lejepa" in _folder_config(path)
    return rundir.kind_of(path) in ("run", "checkpoint")


def _is_checkpoint_file(text: str | Path) -> bool:
    """A weights file inside a lejepa checkpoint folder (its meta.json says what it holds)."""
    from lejepa_cli import rundir

    path = Path(str(text))
    return path.is_file() and (path.parent / rundir.META).is_file()


def load_encoder(
    text: str | Path, checkpoint: str | None = "last", like=None, arch: str | None = None
):
    """A frozen encoder from any SOURCE. Runs, checkpoints and exports as `lejepa probe` and
    `lejepa embed` always read them; other sources with their own eval view (the pretrained
    config's size, mean/std, crop), or `like`'s (the probed model's) when they have none.
    `arch` (or else `like`'s) is the architecture of a weights file."""
    from lejepa_cli import artifacts

    if is_lejepa_path(text) or _is_checkpoint_file(text):
        return artifacts.load_encoder(text, checkpoint)  # a checkpoint's file: "pass its folder"
    import timm

    arch = arch or (like.arch if like is not None else None)
    weights = read(str(text), arch, checkpoint or "last")
    backbone = timm.create_model(
        weights.arch, pretrained=False, num_classes=0, **weights.model_args
    )
    record, _ = load_into(backbone, weights, partial_flag=None)
    backbone.eval().requires_grad_(False)
    spec, view_from = _eval_view(backbone, weights.pretrained_cfg, like)
    return artifacts.Encoder(
        backbone=backbone,
        arch=weights.arch,
        spec=spec,
        feature_dim=int(backbone.num_features),
        source={
            "kind": record["kind"],
            "path": record["source"],
            "checkpoint": None,
            "step": None,
            "epoch": None,
            "sha256": record["sha256"],
            "eval_view_from": view_from,
        },
        fingerprint=record["sha256"],
        model_args=artifacts.model_args_of(backbone),
    )


def _eval_view(backbone, pretrained_cfg: dict[str, Any] | None, like):
    """(DataSpec, where it came from): the source's pretrained config, else the probed
    model's view, else timm's default for the architecture."""
    from lejepa_cli.model import data_spec, data_spec_of

    if pretrained_cfg:
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pretrained_cfg.items()}
        cfg.setdefault("crop_pct", 0.875)
        cfg.setdefault("interpolation", "bicubic")
        try:
            return data_spec_of(cfg), "pretrained_cfg"
        except ValueError:
            pass  # an incomplete config: fall through to the next choice
    if like is not None:
        return like.spec, "probed model"
    size = int(backbone.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return data_spec(backbone, size), "timm default"
