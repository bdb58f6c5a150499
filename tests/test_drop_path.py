"""`--drop-path`: timm's stochastic depth while pretraining, gone at probe and export time."""

from __future__ import annotations

import pytest
import torch
import yaml
from test_train import TINY, losses, make_images, run_cli

from lejepa_cli import config
from lejepa_cli.errors import UsageError
from lejepa_cli.model import build_backbone


def _pair(arch: str, rate: float, size: int | None = 32):
    torch.manual_seed(0)
    plain = build_backbone(arch, size)
    torch.manual_seed(0)
    dropped = build_backbone(arch, size, drop_path=rate)
    return plain, dropped


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet"])
def test_drops_paths_in_training_only_with_the_same_weights(arch):
    plain, dropped = _pair(arch, 0.5)
    # The same parameters under the same names: an export loads into the plain architecture.
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    for m in plain.modules():  # timm zeroes each residual block's last norm: wake them up
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), dropped(x), atol=1e-6)
        dropped.train()
        torch.manual_seed(1)
        a = dropped(x)
        torch.manual_seed(2)
        b = dropped(x)
    assert not torch.allclose(a, b)  # training mode drops residual branches at random


def test_an_architecture_without_stochastic_depth_is_a_usage_error():
    with pytest.raises(UsageError, match="vgg11 has no stochastic depth"):
        build_backbone("vgg11", 32, drop_path=0.1)
    build_backbone("test_resnet", 32)  # without the flag nothing is asked of the model


@pytest.mark.parametrize("rate", ["1", "-0.1", "1.5"])
def test_rates_outside_zero_to_one_are_refused(rate, tmp_path, capsys):
    images = make_images(tmp_path / "images", n=8)
    code = run_cli(
        "pretrain", str(images), "--out", str(tmp_path / "r"), *TINY, "--drop-path", rate
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--drop-path" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_pretrain_records_and_applies_the_rate(tmp_path, capsys):
    images = make_images(tmp_path / "images")
    runs = {}
    for rate in ("0", "0.5"):
        run = tmp_path / f"run-{rate}"
        code = run_cli(
            "pretrain", str(images), "--out", str(run), *TINY, "--drop-path", rate,
            "--max-steps", "2", "--epochs", "2",
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        runs[rate] = run
    saved = yaml.safe_load((runs["0.5"] / "config.yaml").read_text())
    assert saved["drop_path"] == 0.5
    assert config.read_saved(runs["0"] / "config.yaml").drop_path == 0.0
    # Same seed, same views: the losses differ only by the dropped paths (from the second step:
    # at init every residual branch of test_resnet outputs zeros, dropped or not).
    a, b = losses(runs["0"]), losses(runs["0.5"])
    assert a[1] == b[1] and a[2] != b[2]
