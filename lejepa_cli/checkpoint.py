"""Checkpoints: written atomically, read without unpickling.

What a checkpoint folder holds and where it lives is `lejepa_cli.rundir`'s (its docstring draws
the layout); this module writes one and reads its tensors back. A checkpoint is written into a
temporary directory and renamed into place, then `last.json` is replaced atomically: a crash or
a kill -9 at any point leaves the previous checkpoint and pointer intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lejepa_cli import atomic, rundir
from lejepa_cli.errors import CheckpointError

# The names and readers of the layout that train.py still takes from here (see rundir).


def save(
    run_dir: Path,
    name: str,
    weights: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    before_rename=None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint atomically and point last.json at it. Returns its directory.

    `files` are written beside them (name -> text). `before_rename` is called with the temporary
    directory once its files are written; tests use it to simulate a crash in the middle of a
    checkpoint write.
    """
    root = rundir.checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        save_tensors(tensors, tmp / rundir.WEIGHTS, {"format": "pt"})
        save_train_state(train_state, tmp / rundir.TRAIN_STATE)
        (tmp / rundir.META).write_text(
            json.dumps({**meta, "name": name, "saved_at": time.time()}, indent=2)
        )
        for file_name, text in (files or {}).items():  # e.g. a copy of the run's config.yaml
            (tmp / file_name).write_text(text, encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        atomic.fsync_dir(tmp)
        if before_rename is not None:
            before_rename(tmp)
    except Exception:  # a full disk: leave no half-written folder behind (a kill still can)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # re-saving the same name (e.g. after a resume): swap, then drop the old
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic.fsync_dir(root)
    atomic.write_json_atomic(root / rundir.LAST, {"name": name})
    return final


def clean_partial(run_dir: Path) -> None:
    """Remove temporary directories left by an interrupted write."""
    root = rundir.checkpoints_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def float_mismatch(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str | None:
    """The first key whose saved tensor is not floating point where the model's is:
    load_state_dict would cast it silently."""
    return next(
        (
            k
            for k, v in weights.items()
            if k in own and own[k].is_floating_point() and not v.is_floating_point()
        ),
        None,
    )


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is damaged (missing, truncated, a header that does not parse),
    or None. Reads the header only: cheap enough for every listing of a run."""
    import struct

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "shorter than a safetensors header"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return "truncated (its header runs past the end of the file)"
            header = json.loads(f.read(length))
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return None  # not damage: the command that reads it says so
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    if not isinstance(header, dict):
        return "its header is not a mapping"
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
    ]
    if size - 8 - length < max(ends, default=0):
        return "truncated (the file ends before its last tensor)"
    return None


def damage(ckpt: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when they look whole."""
    ckpt = Path(ckpt)
    problem = rundir.meta_problem(ckpt)
    if problem is not None:
        return problem
    for name in (rundir.WEIGHTS, rundir.TRAIN_STATE):
        problem = safetensors_problem(ckpt / name)
        if problem is not None:
            return f"{name} is {problem}"
    return None


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, with its I/O failures raised as the OSError they are (so the
    command line names the path and the fix instead of an unexpected SafetensorError)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        num = int(code.group(1))
        raise OSError(num, os.strerror(num), str(path)) from None
    # safetensors creates its files 0600; give them the mode every other file gets.
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_readable(path: Path) -> None:
    """Raise the OSError (PermissionError, ...) that opening `path` gives, with its path:
    safetensors reports a file it may not read as "No such file"."""
    with open(path, "rb"):
        pass


def weights_fix(path: Path) -> str:
    """What to do about a damaged weights file: a checkpoint's or an export's."""
    path = Path(path)
    if (path.parent / rundir.META).is_file():
        return rundir.damaged_checkpoint_fix(path.parent)
    return "export the run again"


def load_weights(ckpt: Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (optionally only those under `prefix.`, with it stripped)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(ckpt) / rundir.WEIGHTS if Path(ckpt).is_dir() else Path(ckpt)
    check_readable(path)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"cannot read weights from {path} ({exc}); the file is damaged: " + weights_fix(path)
        ) from None
    # Training never saves non-finite weights: NaN or inf here is damage, and it would only
    # surface as embeddings of NaN. One pass over each tensor, cheap beside any forward pass.
    bad = next(
        (k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()),
        None,
    )
    if bad is not None:
        raise CheckpointError(
            f"{path} holds NaN or infinite weights (in {bad}); the file is damaged: "
            + weights_fix(path)
        )
    if prefix is None:
        return tensors
    start = prefix + "."
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


_STATE_META = "lejepa_train_state"
_TRAIN_STATE_KEYS = ("optimizer", "torch_rng", "step")


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A nest of dicts, lists and tensors as JSON: tensors become {"tensor": key} and move into
    `tensors`; dicts become {"items": [[key, value], ...]} so integer keys stay integers."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"items": [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a train state")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `_encode`; a ValueError for anything it would not have written."""
    if isinstance(value, dict):
        if set(value) == {"tensor"} and value["tensor"] in tensors:
            return tensors[value["tensor"]]
        if set(value) == {"items"} and isinstance(value["items"], list):
            pairs = value["items"]
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise ValueError("malformed mapping")
            return {k: _decode(v, tensors) for k, v in pairs}
        raise ValueError("unknown entry")
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value


def save_train_state(state: dict[str, Any], path: Path) -> None:
    """Optimizer state, step and RNG states as safetensors: nothing is pickled, so resuming
    never unpickles a file from the run directory."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    save_tensors(tensors, path, {_STATE_META: json.dumps(structure)})


def damaged_fix(ckpt: Path) -> str:
    """What to do about a damaged train state: go back to an earlier checkpoint when the run
    has a sound one."""
    earlier = rundir.sound_others(ckpt) or []
    if earlier:
        return f"delete {ckpt} to resume from {earlier[-1].name}, or start over with --overwrite"
    return "it is the run's only checkpoint: start over with --overwrite"


def load_train_state(ckpt: Path) -> dict[str, Any]:
    """The optimizer state, RNG states and step saved beside a checkpoint's weights."""
    from safetensors import safe_open

    path = Path(ckpt) / rundir.TRAIN_STATE
    if not path.is_file():
        if (Path(ckpt) / "train_state.pt").is_file():
            raise CheckpointError(
                f"{ckpt} was written by an earlier lejepa, whose train state this version does "
                "not read (it would have to unpickle it); start over with --overwrite"
            )
        raise CheckpointError(
            f"{path} is missing, so the run cannot resume there; {damaged_fix(ckpt)}"
        )
    check_readable(path)  # no permission to read is not damage: let that error say so
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        state = _decode(json.loads(meta[_STATE_META]), tensors)
    except Exception:  # any failure here means the file is damaged or was not written by us
        state = None
    if not isinstance(state, dict) or any(k not in state for k in _TRAIN_STATE_KEYS):
        raise CheckpointError(
            f"{path} is damaged or was not written by lejepa pretrain; {damaged_fix(ckpt)}"
        )
    return state
