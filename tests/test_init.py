"""`--init SOURCE`: weights files, timm folders, a fake Hugging Face cache, runs; the loaded
backbone equals the source bitwise; a run started from them resumes exactly; bad sources are
one line, exit 2, and nothing written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from test_train import TINY, losses, make_images, run_cli

from lejepa_cli import checkpoint, rundir
from lejepa_cli import pretrained as sources
from lejepa_cli.errors import UsageError
from lejepa_cli.model import build_backbone

ARCH = "test_resnet"
HUB_NAME = "test_resnet.r160_in1k"  # a real timm tag: its config names timm/test_resnet.r160_in1k
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "images")


@pytest.fixture(scope="module")
def source_model() -> torch.nn.Module:
    """A seeded test_resnet with a 10-class head: what a user's weights would hold."""
    torch.manual_seed(7)
    return timm.create_model(ARCH, num_classes=10).eval()


def backbone_equals(backbone: torch.nn.Module, source: torch.nn.Module) -> bool:
    own, theirs = backbone.state_dict(), source.state_dict()
    shared = [k for k in own if not k.endswith("num_batches_tracked")]
    return all(torch.equal(own[k], theirs[k]) for k in shared)


def loaded(source: str, arch: str | None = ARCH) -> tuple[torch.nn.Module, dict]:
    backbone = build_backbone(ARCH, 32)
    record, _ = sources.load_into(backbone, sources.read(source, arch))
    return backbone, record


def write_hub_cache(home: Path, repo: str, state: dict, config: dict | None = None) -> Path:
    """The layout huggingface_hub reads offline: refs/main names a snapshot folder."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    if config is not None:
        (snap / "config.json").write_text(json.dumps(config))
    return snap / "model.safetensors"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


# ------------------------------------------------------------------------- what is read


def test_safetensors_with_prefixed_keys_loads_bitwise(source_model, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({f"module.backbone.{k}": v for k, v in source_model.state_dict().items()}, str(path))
    backbone, record = loaded(str(path))
    assert backbone_equals(backbone, source_model)
    assert record["sha256"] == sources.sha256_of(path)
    assert record["tensors"] == len(backbone.state_dict())


def test_pth_state_dict_under_a_key_loads_bitwise(source_model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source_model.state_dict().items()}}, path
    )
    backbone, record = loaded(str(path))
    assert backbone_equals(backbone, source_model)
    assert record["kind"] == "file"


def test_timm_local_dir_folder_drops_the_classifier(source_model, tmp_path):
    folder = tmp_path / "timm-folder"
    folder.mkdir()
    save_file(source_model.state_dict(), str(folder / "model.safetensors"))
    cfg = {"architecture": ARCH, "num_classes": 10, "pretrained_cfg": {"classifier": "fc"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert sources.implied_arch(f"local-dir:{folder}", None) == ARCH
    backbone, record = loaded(f"local-dir:{folder}", None)
    assert backbone_equals(backbone, source_model)
    assert record["kind"] == "local-dir"


def test_timm_name_from_an_offline_hugging_face_cache(source_model, offline_hub):
    cfg = {
        "architecture": ARCH,
        "pretrained_cfg": {"classifier": "fc", "input_size": [3, 160, 160]},
    }
    blob = write_hub_cache(offline_hub, f"timm/{HUB_NAME}", source_model.state_dict(), cfg)
    for name in (HUB_NAME, f"hf-hub:timm/{HUB_NAME}"):
        assert sources.implied_arch(name, None) == ARCH
        backbone, record = loaded(name, None)
        assert backbone_equals(backbone, source_model)
        assert record["sha256"] == sources.sha256_of(blob)
    backbone, record = loaded("timm", ARCH)  # the architecture's default tag is this one
    assert backbone_equals(backbone, source_model) and record["source"] == HUB_NAME


def test_a_mismatch_names_the_keys_unless_partial(source_model, tmp_path):
    state = dict(source_model.state_dict())
    state["extra.weight"] = torch.zeros(3)
    del state["conv1.0.weight"]
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(UsageError, match=r"1 missing \(conv1.0.weight\) and 1 unexpected"):
        loaded(str(path))
    backbone = build_backbone(ARCH, 32)
    record, notes = sources.load_into(backbone, sources.read(str(path), ARCH), partial=True)
    assert record["missing"] == 1 and record["unexpected"] == 1
    assert "  missing conv1.0.weight" in notes and "  unexpected extra.weight" in notes


# ------------------------------------------------------------------- pretrain --init


def test_init_is_recorded_and_resume_repeats_the_losses(source_model, images, tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    save_file(source_model.state_dict(), str(path))
    base = ["--init", str(path), "--epochs", "2", "--keep-every", "1", *TINY]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli("pretrain", str(images), "--out", str(whole), *base) == 0
    assert run_cli("pretrain", str(images), "--out", str(part), *base, "--max-steps", "2") == 0
    assert run_cli("pretrain", "--out", str(part), "--resume", "--quiet") == 0
    assert losses(part) == losses(whole)

    cfg = yaml.safe_load((whole / "config.yaml").read_text())
    assert cfg["init"] == str(path) and cfg["init_sha256"] == sources.sha256_of(path)
    assert cfg["init_tensors"] == len(build_backbone(ARCH, 32).state_dict())
    # --init keeps the learning rate from scratch (lowered, continued runs measured worse)
    assert cfg["lr"] == 5e-4 and cfg["warmup_epochs"] == 0.1  # 5% of 2 epochs, not 10%
    meta = rundir.read_meta(rundir.last(whole)).raw
    assert meta["init"] == {
        "source": str(path),
        "sha256": cfg["init_sha256"],
        "tensors": cfg["init_tensors"],
    }
    assert "initialised" in (whole / "train.log").read_text()
    capsys.readouterr()
    assert run_cli("inspect", str(whole)) == 0
    shown = "".join(capsys.readouterr().out.split())  # rich wraps long paths anywhere
    assert f"init:continuedfrom{path}" in shown
    assert run_cli("export", str(whole), "--out", str(tmp_path / "export")) == 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert f"initial weights: continued from {path}" in " ".join(card.split())


def test_init_from_a_run_continues_its_backbone(images, tmp_path):
    first = tmp_path / "first"
    assert run_cli("pretrain", str(images), "--out", str(first), "--epochs", "1", *TINY) == 0
    ckpt = rundir.last(first)
    weights = sources.read(str(first))
    assert weights.arch == ARCH and weights.record["checkpoint"] == ckpt.name
    backbone = build_backbone(ARCH, 32)
    sources.load_into(backbone, weights)
    saved = checkpoint.load_weights(ckpt, prefix="backbone")
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in saved.items())


class Opaque:
    """An object a weights file must not make us unpickle."""


def _pickled(tmp_path: Path) -> Path:
    path = tmp_path / "obj.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1), "x": Opaque()}, path)
    return path


def _wrong_arch(tmp_path: Path, model) -> Path:
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.mark.parametrize(
    "case", ["pickled", "wrong-arch", "contradiction", "missing", "hub-not-cached", "no-arch"]
)
def test_a_bad_source_is_one_line_exit_2_and_nothing_written(
    case, source_model, images, tmp_path, offline_hub, capsys
):
    out = tmp_path / "run"
    flags = {
        "pickled": ["--init", str(_pickled(tmp_path)), "--arch", ARCH],
        "wrong-arch": ["--init", str(_wrong_arch(tmp_path, source_model)), "--arch", "resnet18"],
        "contradiction": ["--init", HUB_NAME, "--arch", "resnet18"],
        "missing": ["--init", str(tmp_path / "nope.pth"), "--arch", ARCH],
        "hub-not-cached": ["--init", "test_vit.r160_in1k"],
        "no-arch": ["--init", str(_wrong_arch(tmp_path, source_model))],
    }[case]
    tiny = [a for a in TINY if a not in ("--arch", ARCH)]
    capsys.readouterr()
    assert run_cli("pretrain", str(images), "--out", str(out), *tiny, *flags) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    expected = {
        "pickled": "Python objects",
        "wrong-arch": "does not fit resnet18",
        "contradiction": "not resnet18",
        "missing": "does not exist",
        "hub-not-cached": "hf download timm/test_vit.r160_in1k",
        "no-arch": "pass --arch",
    }[case]
    assert expected in err[0]
    assert not out.exists()
