"""Augmentation settings: `--augment KEY=VALUE` and run.yaml's `augment:` reach the crops."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lejepa_cli import config
from lejepa_cli.cli import main
from lejepa_cli.data.holdout import multicrop_config
from lejepa_cli.data.multicrop import MultiCrop, MultiCropConfig
from lejepa_cli.errors import UsageError
from lejepa_cli.selection import compare_keys, comparison_key

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TINY, make_images  # noqa: E402


def test_defaults_are_the_multicrop_recipe():
    recipe = {f.name: f.default for f in dataclasses.fields(MultiCropConfig)}
    for key, value in config.AUGMENT_DEFAULTS.items():
        expected = list(recipe[key]) if isinstance(recipe[key], tuple) else recipe[key]
        assert value == pytest.approx(expected), key
    assert config.PretrainConfig().augment == config.AUGMENT_DEFAULTS


def test_flag_values_update_one_key_at_a_time():
    cfg = config.build({"augment": ["blur_p=0", "blur-sigma=0.5, 1.5", "solarize_threshold=100"]})
    assert cfg.augment["blur_p"] == 0.0
    assert cfg.augment["blur_sigma"] == [0.5, 1.5]
    assert cfg.augment["solarize_threshold"] == 100
    assert cfg.augment["jitter_p"] == config.AUGMENT_DEFAULTS["jitter_p"]
    # On a resume the saved settings stay unless given again.
    later = config.build({"augment": ["hflip_p=0"]}, base=cfg)
    assert later.augment["blur_p"] == 0.0 and later.augment["hflip_p"] == 0.0
    assert config.diff(cfg, later) == [("augment.hflip_p", 0.5, 0.0)]


@pytest.mark.parametrize(
    "value, needle",
    [
        (["blurp=0"], "did you mean 'blur_p'"),
        (["blur_p"], "KEY=VALUE"),
        (["blur_p=often"], "expected a number"),
        (["blur_sigma=1"], "two numbers"),
        (["blur_p=1.5"], "probability"),
        (["hue=0.9"], "hue"),
        (["rot90_p=2"], "rot90_p is a probability"),
    ],
)
def test_bad_settings_are_usage_errors(value, needle):
    with pytest.raises(UsageError, match=needle):
        config.build({"augment": value})


def test_yaml_mapping_and_saved_config_round_trip(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("augment:\n  grayscale-p: 1\n  ratio: [1.0, 1.0]\n")
    cfg = config.build(config.load_yaml(run_yaml))
    assert cfg.augment["grayscale_p"] == 1.0 and cfg.augment["ratio"] == [1.0, 1.0]
    config.save_yaml(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["augment"] == {**config.AUGMENT_DEFAULTS, "grayscale_p": 1.0, "ratio": [1.0, 1.0]}
    assert config.read_saved(tmp_path / "config.yaml") == cfg
    # A config written before augment settings existed reads as the recipe.
    del saved["augment"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(saved))
    assert config.read_saved(tmp_path / "old.yaml").augment == config.AUGMENT_DEFAULTS


def _colourful(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _grey_views(cfg: config.PretrainConfig) -> list[bool]:
    cropper = MultiCrop(multicrop_config(cfg))
    grey = []
    for seed in range(8):
        views = cropper(_colourful(), np.random.default_rng(seed))
        for v in [*views["global_crops"], *views["local_crops"]]:
            grey.append(bool((v[0] == v[1]).all() and (v[1] == v[2]).all()))
    return grey


def test_settings_reach_the_crops():
    base = config.build({"global_size": 32, "local_size": 16})
    assert not all(_grey_views(base))  # the recipe turns a fifth of the views grey
    always = config.build({"global_size": 32, "local_size": 16, "augment": ["grayscale_p=1"]})
    assert all(_grey_views(always))


NEW_KEYS = ("vflip_p", "rot90_p")


def test_runs_with_other_settings_do_not_compare():
    a = config.build({"global_size": 32, "local_size": 16})
    b = config.build({"global_size": 32, "local_size": 16, "augment": ["blur_p=0"]})
    keys = {"a": comparison_key(a, 16, "f"), "b": comparison_key(b, 16, "f")}
    assert any("augment" in p for p in compare_keys(keys))
    # A report from before the setting was recorded compares with one on the recipe.
    old = {k: v for k, v in comparison_key(a, 16, "f").items() if k != "augment"}
    assert compare_keys({"a": keys["a"], "old": old}) == []
    # ... and so does one from before vflip_p and rot90_p existed.
    recorded = comparison_key(a, 16, "f")["augment"]
    older = {**old, "augment": {k: v for k, v in recorded.items() if k not in NEW_KEYS}}
    assert compare_keys({"a": keys["a"], "older": older}) == []


def test_pretrain_writes_the_settings_and_refuses_bad_ones(tmp_path, capsys):
    images = make_images(tmp_path / "images", n=12)
    run = tmp_path / "run"
    args = ["pretrain", str(images), "--out", str(run), "--epochs", "1", *TINY]
    code = _cli([*args, "--augment", "blur_p=0", "--augment", "solarize_p=0"])
    assert code == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["augment"]["blur_p"] == 0.0 and saved["augment"]["solarize_p"] == 0.0
    report = json.loads((run / "report.json").read_text())
    assert '"blur_p": 0.0' in json.dumps(report)  # the comparison key records it
    capsys.readouterr()
    assert _cli(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "augmentation (recipe otherwise): blur_p=0.0, solarize_p=0.0" in out
    code = _cli([*args[:3], str(tmp_path / "other"), *args[4:], "--augment", "blur_p=2"])
    err = capsys.readouterr().err
    assert code == 2 and "blur_p" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
