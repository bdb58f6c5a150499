"""timm pretrained names and the Hugging Face Hub: what a name holds and its weights file.

A name is `arch.tag` (`resnet50.a1_in1k`: timm's pretrained config says where its weights are)
or `hf-hub:org/repo[@revision]` (the repository's config.json says the architecture). Files come
through huggingface_hub: fetched when online, from the cache when offline (HF_HUB_OFFLINE=1),
otherwise refused with one line that says what to download and where to put it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lejepa_cli.errors import UsageError

HUB_PREFIX = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a timm folder's, in timm's order


@dataclass(frozen=True)
class HubModel:
    """A pretrained name resolved without its weights."""

    name: str  # as given
    arch: str
    pretrained_cfg: dict[str, Any]  # its eval view (input size, mean/std, crop)
    model_args: dict[str, Any]  # create_model keywords a Hub repository records
    repo: str  # Hub repository [@revision]; "" when timm keeps the weights elsewhere
    url: str | None = None  # where timm keeps them then


def default_name(arch: str) -> str:
    """`arch.tag` of the architecture's default pretrained weights in timm."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if not timm.is_model(arch) or cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UsageError(f"timm has no pretrained weights for {arch}; --init timm needs them")
    return f"{arch}.{cfg.tag}" if cfg.tag else arch


def describe(name: str) -> HubModel:
    """The architecture and eval view of a pretrained name (a Hub name reads config.json)."""
    if name.startswith(HUB_PREFIX):
        repo = name[len(HUB_PREFIX) :]
        arch, pcfg, args = _hub_config(repo, name)
        return HubModel(name, arch, pcfg, args, repo)
    pcfg = _timm_cfg(name)
    return HubModel(
        name, pcfg["architecture"], pcfg, {}, pcfg.get("hf_hub_id") or "", pcfg.get("url")
    )


def weights_file(model: HubModel) -> Path:
    """The weights file of a pretrained name: model.safetensors, else pytorch_model.bin."""
    if not model.repo:
        raise UsageError(
            f"timm keeps {model.name} at {model.url}, not on the Hugging Face Hub: download "
            f"it and pass the file with --init FILE.pth --arch {model.arch}"
        )
    not_cached = False
    for filename in WEIGHT_FILES:
        try:
            path = _hub_file(model.repo, filename, model.name)
        except _NotCached:
            not_cached = True  # the cache may still hold the other file
            continue
        if path is not None:
            return path
    if not_cached:
        raise UsageError(_not_cached(model.name, model.repo, WEIGHT_FILES[0], model.arch))
    raise UsageError(f"{model.name} has neither {' nor '.join(WEIGHT_FILES)} on the Hub")


def hub_cache() -> Path:
    """The Hugging Face cache as the environment names it now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _timm_cfg(name: str) -> dict[str, Any]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not timm.is_model(name):
        arch = name.split(".")[0]
        tags = [n for n in timm.list_pretrained(f"{arch}.*")][:5]
        hint = f"its tags include {', '.join(tags)}" if tags else f"timm has no weights for {arch}"
        raise UsageError(f"{name} is not a timm pretrained name; {hint}")
    return cfg.to_dict()


def _hub_config(repo: str, name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, pretrained_cfg, model_args) of a timm model repository's config.json."""
    try:
        path = _hub_file(repo, "config.json", name)
    except _NotCached:
        raise UsageError(_not_cached(name, repo, "config.json", None)) from None
    if path is None:
        raise UsageError(f"{name} has no config.json: it is not a timm model repository")
    try:
        cfg = json.loads(path.read_text())
        arch = cfg.get("architecture") or cfg["pretrained_cfg"]["architecture"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{name}'s config.json names no timm architecture") from None
    args = dict(cfg.get("model_args") or {})
    args.pop("num_classes", None)
    return str(arch), dict(cfg.get("pretrained_cfg") or {}), args


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class _NotCached(Exception):
    """The file is not in the cache, and the Hub is offline or out of reach."""


def _not_cached(name: str, repo: str, filename: str, arch: str | None) -> str:
    repo_id = repo.partition("@")[0]
    why = "HF_HUB_OFFLINE=1" if _offline() else "the Hub cannot be reached"
    as_file = f" --arch {arch}" if arch else " --arch ARCH"
    return (
        f"{name} is not in the Hugging Face cache {hub_cache()} and {why}: on a machine with "
        f"internet run `hf download {repo_id} {filename} config.json` (HF_HOME set as here) "
        f"and copy the cache over, or download https://huggingface.co/{repo_id}/resolve/main/"
        f"{filename} and pass --init FILE{as_file}"
    )


def _hub_file(repo: str, filename: str, name: str) -> Path | None:
    """A file of a Hub repository from the cache (offline) or the Hub; None when the
    repository has no such file; _NotCached when it cannot be had here."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(
            hf_hub_download(
                repo_id, filename, revision=revision or None, cache_dir=hub_cache(),
                local_files_only=_offline(),
            )
        )  # fmt: skip
    except LocalEntryNotFoundError:  # before EntryNotFoundError, which it subclasses
        raise _NotCached from None
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise UsageError(
            f"{name}: the Hub has no repository {repo_id} (or it is private)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise UsageError(f"{name} cannot be fetched from the Hub ({exc})") from None
