"""The run directory: every path and file name a run holds, and how to read them back.

A run directory is the contract that the five commands share. `lejepa pretrain` writes it:

    RUN/
        config.yaml         the resolved settings (`read_config` strict, `read_config_fields` not)
        metrics.jsonl       one line of losses per logged step
        train.log           the plain log
        skipped.txt         images that could not be used, with the reason
        images.npy          crc32 of every image path the run saw (data.record)
        selection.jsonl     held-out scores, one line per kept checkpoint (selection)
        report.json         the ranking and recommended checkpoint (report)
        report.html         the same for people
        .lock               held by the process that writes the run (runlock)
        trackers.json       the tracker run ids a resume continues (trackers)
        tensorboard/  mlflow.db  mlflow-artifacts/  wandb/      --log-to's own files
        probe/              `lejepa probe RUN`'s results
        checkpoints/
            last.json       names the newest complete checkpoint
            epoch-0003/     (or step-0000150/ for a stop mid-epoch)
                model.safetensors        backbone.* and projector.* weights
                train_state.safetensors  optimizer state, step counters, RNG states
                meta.json                `CheckpointMeta`
                heldout.json             its held-out score
                config.yaml              a copy of the run's, as it was then

Every module asks this one for a name or a path instead of spelling it; files are replaced
with `lejepa_cli.atomic`, so that a kill leaves the old one.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lejepa_cli.errors import CheckpointError, RunDirError, UsageError
from lejepa_cli.jsontypes import is_finite_number, is_number, is_whole_number

# ----------------------------------------------------------------------------- names

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOG = "train.log"
SKIPPED = "skipped.txt"
IMAGES_RECORD = "images.npy"
SELECTION = "selection.jsonl"  # run-level history of held-out scores: survives deleted checkpoints
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
LOCK = ".lock"
TRACKER_STATE = "trackers.json"
TENSORBOARD = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlflow-artifacts"
WANDB = "wandb"  # W&B makes RUN/wandb/ itself when given dir=RUN
PROBE = "probe"
PROBE_JSON = "probe.json"
PROBE_CONFUSION = "confusion.png"
PROBE_CACHE = "cache"

CHECKPOINTS = "checkpoints"
LAST = "last.json"
WEIGHTS = "model.safetensors"
TRAIN_STATE = "train_state.safetensors"
META = "meta.json"
HOLDOUT_SCORE = "heldout.json"  # the file keeps the name earlier runs have

EXPORT_CONFIG = "config.json"  # an export directory: config.json + model.safetensors

# Every file a run writes at its top level and every folder it owns whole: --overwrite removes
# these and nothing else (the trackers' go too: a new run must not continue the old tracker runs).
OWN_FILES = (
    TRACKER_STATE,
    MLFLOW_DB,
    CONFIG,
    METRICS,
    LOG,
    SKIPPED,
    IMAGES_RECORD,
    SELECTION,
    REPORT_JSON,
    REPORT_HTML,
)
OWN_FOLDERS = (TENSORBOARD, MLFLOW_ARTIFACTS, WANDB)
PROBE_FILES = (PROBE_JSON, PROBE_CONFUSION)  # in RUN/probe/, beside its feature cache

_CHECKPOINT_NAME = re.compile(r"^(epoch-\d{4,}|step-\d{7,})$")


def epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def is_checkpoint_name(name: str) -> bool:
    return bool(_CHECKPOINT_NAME.match(name))


def is_own_name(name: str) -> bool:
    """Whether an entry of checkpoints/ was written by lejepa: a checkpoint, last.json, or a
    temporary file or folder of an interrupted write."""
    return (
        is_checkpoint_name(name) or name == LAST or name.startswith((".tmp-", ".old-", f".{LAST}."))
    )


def plain_name(name: Any) -> bool:
    """A checkpoint name read from a file in the run: one folder inside checkpoints/, never a
    path that leads out of the run."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    return checkpoints_dir(run_dir) / name


def run_of(ckpt: Path) -> Path | None:
    """The run a checkpoint folder belongs to, or None for a checkpoint copied out of its run."""
    return Path(ckpt).parent.parent if Path(ckpt).parent.name == CHECKPOINTS else None


# ----------------------------------------------------------------------------- what a path is

Kind = Literal["run", "checkpoint", "export", "weights", "folder", "manifest", "shards"]


def kind_of(path: str | Path) -> Kind:
    """What a path (or a shard URL) given on the command line is.

    - 'export': a folder with config.json and model.safetensors (`lejepa export`);
    - 'checkpoint': a folder with meta.json (one of RUN/checkpoints/, or a copy of one);
    - 'run': a folder with config.yaml or checkpoints/ (`lejepa pretrain --out`);
    - 'weights': any .safetensors file, a checkpoint's own model.safetensors included (inspect
      describes it; the commands that load an encoder ask for its folder or run instead);
    - 'folder': any other folder (an image folder, for inspect and the data commands);
    - 'manifest': a .csv or .txt file listing images (data.manifest);
    - 'shards': WebDataset shards: a .tar, a brace pattern, a list of shards, shards.json or a
      URL (data.sources).

    A missing path or another kind of file is a UsageError that says what to pass.
    """
    from lejepa_cli.data.manifest import is_manifest
    from lejepa_cli.data.sources import is_shards

    if is_shards(str(path)):
        return "shards"
    path = Path(path)
    if path.is_file() and is_manifest(path):
        return "manifest"
    if not path.exists():
        raise UsageError(
            f"no such file or folder: {path}; pass an image folder, a run directory, a "
            "checkpoint or an export directory"
        )
    if path.is_file():
        if path.suffix == ".safetensors":
            return "weights"
        raise UsageError(
            f"{path} is a file; pass an image folder, a run directory, an export directory or "
            "a checkpoint (its folder or a .safetensors file)"
        )
    if (path / EXPORT_CONFIG).is_file() and (path / WEIGHTS).is_file():
        return "export"
    if (path / META).is_file():
        return "checkpoint"
    if (path / CONFIG).is_file() or checkpoints_dir(path).is_dir():
        return "run"
    return "folder"


def is_run_dir(path: Path) -> bool:
    """Whether a folder holds a lejepa run: a checkpoint folder lejepa wrote, or a config.yaml
    this version reads (a folder of the user's with a config.yaml of its own is not a run)."""
    path = Path(path)
    if list_checkpoints(path) or (checkpoints_dir(path) / LAST).is_file():
        return True
    if not (path / CONFIG).is_file():
        return False
    try:
        read_config(path)
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- config.yaml


def read_config(run_dir: Path):
    """The run's config.yaml as a validated PretrainConfig: what resume and re-scoring use.

    Strict: an unknown key, a wrong type or a value this version refuses is a UsageError that
    names the file and the fix."""
    from lejepa_cli import config

    return config.read_saved(Path(run_dir) / CONFIG)


def read_config_fields(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a plain mapping, {} when missing or unreadable.

    Forgiving, for the commands that only look at a run (probe, export, inspect, the report):
    a run of another version, with keys this one does not know or lacks, is still read."""
    import yaml

    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------- meta.json

_WHOLE_FIELDS = (
    "step",
    "epoch",
    "images_seen",
    "batch_size",
    "epoch_images",
    "num_train_images",
    "global_size",
    "local_size",
    "feature_dim",
)
_NUMBER_FIELDS = ("lam", "saved_at")
_TEXT_FIELDS = ("arch", "name", "version")


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's meta.json, every field checked. A field lejepa did not write in some
    version is None; one of the wrong type makes the whole record unreadable."""

    step: int | None = None
    epoch: int | None = None  # epochs completed
    images_seen: int | None = None
    batch_size: int | None = None
    epoch_images: int | None = None  # images into the epoch under way (a mid-epoch stop)
    num_train_images: int | None = None
    arch: str | None = None
    global_size: int | None = None
    local_size: int | None = None
    feature_dim: int | None = None
    data: Any = None  # model.DataSpec: the eval preprocessing
    train: dict[str, float | None] | None = None  # the epoch's mean losses
    lam: float | None = None
    version: str | None = None
    name: str | None = None
    saved_at: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # as written

    @classmethod
    def parse(cls, data: Any) -> CheckpointMeta:
        """The record of a decoded meta.json; a ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        for key in _WHOLE_FIELDS:
            value = data.get(key, 0)
            if not is_whole_number(value) or value < 0:
                raise ValueError(f"{key} is {value!r}, not a whole number")
        for key in _NUMBER_FIELDS:
            if not is_finite_number(data.get(key, 0)):
                raise ValueError(f"{key} is {data[key]!r}, not a number")
        for key in _TEXT_FIELDS:
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"{key} is {data[key]!r}, not text")
        if "arch" in data and not data["arch"]:
            raise ValueError("arch is empty")
        size = data.get("global_size")
        if size is not None and not 1 <= size <= _max_size():
            raise ValueError(f"global_size {size} is not from 1 to {_max_size()}")
        if not isinstance(data.get("data", {}), dict):
            raise ValueError(f"data is {data['data']!r}, not a mapping")
        spec = None
        if "data" in data:
            from lejepa_cli.model import data_spec_of

            try:
                spec = data_spec_of(data["data"])
            except ValueError as exc:
                raise ValueError(f"data.{exc}") from None
        train = data.get("train")
        if train is not None and not (
            isinstance(train, dict)
            and all(isinstance(k, str) and (v is None or is_number(v)) for k, v in train.items())
        ):
            raise ValueError(f"train is {train!r}, not a mapping of losses")
        known = {k: data.get(k) for k in (*_WHOLE_FIELDS, *_NUMBER_FIELDS, *_TEXT_FIELDS)}
        return cls(**known, data=spec, train=train, raw=dict(data))

    @classmethod
    def read(cls, ckpt: Path) -> CheckpointMeta:
        """RUN/checkpoints/NAME/meta.json; one CheckpointError naming the file, the problem and
        the fix (use another checkpoint of the run) when it cannot be read or a field is wrong."""
        path = Path(ckpt) / META
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read {path} ({exc}); the checkpoint is damaged: "
                + damaged_checkpoint_fix(ckpt)
            ) from None
        try:
            return cls.parse(data)
        except ValueError as exc:
            raise CheckpointError(
                f"{path} has an invalid value ({exc}); the checkpoint is damaged: "
                + damaged_checkpoint_fix(ckpt)
            ) from None

    def model(self, ckpt: Path) -> tuple[str, int, Any]:
        """(architecture, global size, DataSpec) to rebuild the backbone; a CheckpointError
        when one of them was not recorded."""
        for key in ("arch", "global_size", "data"):
            if getattr(self, key) is None:
                raise CheckpointError(
                    f"{Path(ckpt) / META} has an invalid value ({key} is missing); the "
                    "checkpoint is damaged: " + damaged_checkpoint_fix(ckpt)
                )
        return self.arch, self.global_size, self.data  # type: ignore[return-value]

    @property
    def train_loss(self) -> float | None:
        """The last epoch's mean training loss, when recorded and finite."""
        loss = (self.train or {}).get("loss")
        return float(loss) if is_finite_number(loss) else None


def read_meta(ckpt: Path) -> CheckpointMeta:
    """A checkpoint's meta.json as a `CheckpointMeta` (CheckpointError when damaged)."""
    return CheckpointMeta.read(ckpt)


def meta_problem(ckpt: Path) -> str | None:
    """Why a checkpoint's meta.json cannot be used ('meta.json: ...'), or None."""
    try:
        CheckpointMeta.parse(json.loads((Path(ckpt) / META).read_text()))
    except (OSError, ValueError) as exc:
        return f"{META}: {exc}"
    return None


def _max_size() -> int:
    from lejepa_cli.config import MAX_SIZE

    return MAX_SIZE


# ----------------------------------------------------------------------------- checkpoints/


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (a folder with meta.json), oldest first (by step).

    A checkpoint whose meta.json cannot be read is still listed (so that it can be named), first:
    `last` and the fixes that point at another checkpoint then never pick it over a sound one.
    """
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_checkpoint_name(p.name)]
    found = [p for p in found if (p / META).is_file()]

    def key(p: Path) -> tuple[int, str]:
        try:
            step = CheckpointMeta.parse(json.loads((p / META).read_text())).step
        except (OSError, ValueError):
            step = None
        return (-1 if step is None else step, p.name)

    return sorted(found, key=key)


def last(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (the one last.json names, else the latest step), or None."""
    root = checkpoints_dir(run_dir)
    try:
        name = json.loads((root / LAST).read_text())["name"]
        if plain_name(name) and (root / name / META).is_file():
            return root / name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def named_checkpoint(run_dir: Path, which: str) -> Path:
    """A checkpoint of the run by epoch number or name; a RunDirError listing the choices."""
    name = epoch_name(int(which)) if which.isascii() and which.isdigit() else which
    path = checkpoint_dir(run_dir, name)
    if not plain_name(name) or not (path / META).is_file():
        names = ", ".join(p.name for p in list_checkpoints(run_dir))
        raise RunDirError(f"no checkpoint '{which}' in {run_dir}; available: last, best, {names}")
    return path


def sound_others(ckpt: Path) -> list[Path] | None:
    """The run's other checkpoints with a readable meta.json, oldest first; None when `ckpt` is
    not inside a run's checkpoints folder."""
    run_dir = run_of(ckpt)
    if run_dir is None:
        return None
    return [
        p
        for p in list_checkpoints(run_dir)
        if p.name != Path(ckpt).name and meta_problem(p) is None
    ]


def damaged_checkpoint_fix(ckpt: Path) -> str:
    """What to do about a checkpoint that cannot be used by any command: use another one."""
    others = sound_others(ckpt)
    if others is None:
        return "copy it again from its run, or use another checkpoint"
    if others:
        return f"delete {ckpt} and use another checkpoint of the run (such as {others[-1].name})"
    return "it is the run's only readable checkpoint: start over with --overwrite"


def recommended_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint name report.json recommends (`report.write_report` writes it), None when
    there is no report or it names none. As written: `plain_name` says if it may be a path."""
    try:
        data = json.loads((Path(run_dir) / REPORT_JSON).read_text())
        return data.get("recommended", {}).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None


def resolve_checkpoint(run_dir: Path, which: str = "last") -> Path:
    """A checkpoint directory of a run from 'last', 'best' (report.json's recommendation), an
    epoch number or a checkpoint name; a RunDirError that lists the choices otherwise."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise RunDirError(
            f"{run_dir} has no checkpoint: the run stopped before its first one, or its "
            f"checkpoints were deleted; train it with `lejepa pretrain DATA --out {run_dir} "
            "--overwrite` first"
        )
    which = str(which)
    if which == "last":
        return last(run_dir)  # type: ignore[return-value]
    if which != "best":
        return named_checkpoint(run_dir, which)
    best = recommended_checkpoint(run_dir)
    if plain_name(best) and (checkpoint_dir(run_dir, best) / META).is_file():
        return checkpoint_dir(run_dir, best)
    if plain_name(best):
        raise RunDirError(
            f"{REPORT_JSON} of {run_dir} recommends {best}, which is no longer in its "
            f"checkpoints; pass --checkpoint last or one of {', '.join(p.name for p in found)} "
            f"(`lejepa inspect {run_dir}` ranks them)"
        )
    raise RunDirError(
        f"{run_dir} has no checkpoint ranking yet ({REPORT_JSON}); use --checkpoint last or an "
        "epoch number"
    )


# ----------------------------------------------------------------------------- --overwrite


def clear_run(run_dir: Path) -> None:
    """Remove what an earlier run wrote into `run_dir`, and nothing else: the user's own files
    (notes, analyses, their own checkpoints) stay. `lejepa probe RUN`'s results go too: they
    were made with the old weights."""
    run_dir = Path(run_dir)
    for name in OWN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for p in run_dir.glob(".*.tmp*"):  # temporary files of interrupted atomic writes
        if not p.is_dir():
            p.unlink(missing_ok=True)
    for name in OWN_FOLDERS:  # written by --log-to: the tool's own, removed whole
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            shutil.rmtree(run_dir / name)
    root = checkpoints_dir(run_dir)
    if root.is_dir() and not root.is_symlink():
        for p in root.iterdir():
            ours = is_own_name(p.name)
            if ours and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif ours:
                p.unlink()
        _rmdir_if_empty(root)
    probe = run_dir / PROBE
    if probe.is_dir() and not probe.is_symlink():
        for name in PROBE_FILES:
            (probe / name).unlink(missing_ok=True)
        for p in (probe / PROBE_CACHE).glob("features-*.npz"):
            p.unlink()
        _rmdir_if_empty(probe / PROBE_CACHE)
        _rmdir_if_empty(probe)


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
