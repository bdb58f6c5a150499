"""`lejepa probe --baseline` repeated (random and SOURCEs), and `lejepa embed SOURCE`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from helpers_runs import make_run
from safetensors.torch import save_file
from test_init import HUB_NAME, write_hub_cache
from test_probe import _write_csv, _write_images
from test_train import run_cli

from lejepa_cli.features import embed_features
from lejepa_cli.pretrained import load_encoder

HUB = f"hf-hub:timm/{HUB_NAME}"  # through the repository's config.json: the view below
HUB_VIEW = {  # a pretrained config of its own: another size, mean and crop than the run's
    "classifier": "fc",
    "input_size": [3, 48, 48],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    rows = _write_images(root, per_class=8)
    return {
        "root": root,
        "labels": _write_csv(root / "labels.csv", rows),
        "run": make_run(root / "run", arch="test_resnet"),
    }


@pytest.fixture
def hub(tmp_path, monkeypatch) -> torch.nn.Module:
    """test_resnet.r160_in1k in a fake offline Hugging Face cache."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    cfg = {"architecture": "test_resnet", "pretrained_cfg": HUB_VIEW}
    write_hub_cache(home, f"timm/{HUB_NAME}", model.state_dict(), cfg)
    return model


def test_probe_with_three_baselines_writes_every_row_and_gain(
    data, hub, tmp_path, capsys, monkeypatch
):
    from lejepa_cli.probe import heads

    # What is under test is who is probed and how the gains are written, not the head's
    # training: fewer steps keep four models x six learning rates x five folds quick.
    monkeypatch.setattr(heads, "MIN_STEPS", 50)
    monkeypatch.setattr(heads, "MAX_STEPS", 50)
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(4)
    save_file(
        timm.create_model("test_resnet", num_classes=0).state_dict(), str(other / "w.safetensors")
    )
    out = tmp_path / "probe"
    args = ["probe", str(data["run"]), "--labels", str(data["labels"]), "--seeds", "1"]
    args += ["--out", str(out), "--workers", "0", "--baseline", "random"]
    args += ["--baseline", HUB, "--baseline", str(other / "w.safetensors")]
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    assert "gain over each baseline" in printed

    result = json.loads((out / "probe.json").read_text())
    names = ["checkpoint", "random", "baseline-2", "baseline-3"]
    assert list(dict.fromkeys(r["model"] for r in result["rows"])) == names
    assert [b["name"] for b in result["baselines"]] == names[1:]
    hub_record = result["baselines"][1]
    assert hub_record["eval_view"]["from"] == "pretrained_cfg"
    assert (
        hub_record["eval_view"]["input_size"] == 48 and hub_record["eval_view"]["crop_pct"] == 1.0
    )
    file_record = result["baselines"][2]
    assert file_record["eval_view"]["from"] == "probed model"  # a bare file has no view

    mean = {
        (r["model"], r["head"], r["shots"]): r["balanced_accuracy"]["mean"] for r in result["rows"]
    }
    gains = result["gains"]
    # every model against every baseline but itself, per head and shots
    assert len(gains) == 2 * (4 * 3 - 3)  # 2 heads x 4 models x 3 baselines, less the 3 selves
    for g in gains:
        want = (
            mean[(g["model"], g["head"], g["shots"])] - mean[(g["baseline"], g["head"], g["shots"])]
        )
        assert g["balanced_accuracy"] == pytest.approx(want)
    assert {r["seeds"] for r in result["rows"]} == {1}


def test_a_baseline_given_twice_is_refused(data, capsys):
    args = ["probe", str(data["run"]), "--labels", str(data["labels"])]
    assert run_cli(*args, "--baseline", "random", "--baseline", "random") == 2
    assert "given twice" in capsys.readouterr().err


def test_embed_takes_a_hub_name_and_its_eval_view(data, hub, tmp_path):
    out = tmp_path / "emb.npz"
    images = str(data["root"] / "images")
    assert run_cli("embed", HUB, images, "--out", str(out), "--workers", "0") == 0
    saved = np.load(out)
    encoder = load_encoder(HUB)
    assert encoder.spec.input_size == 48 and encoder.spec.mean == (0.5, 0.5, 0.5)
    paths = [str(data["root"] / "images" / p) for p in saved["paths"]]
    x, ok = embed_features(encoder, paths, batch_size=16, workers=0)
    assert ok.all()
    np.testing.assert_allclose(saved["embeddings"], x, rtol=1e-5, atol=1e-6)
    own = encoder.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in hub.state_dict().items() if k in own)
