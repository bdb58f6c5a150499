"""`lejepa inspect` on runs, several runs, checkpoints, weight files and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image
from safetensors.torch import load_file, save_file

from lejepa_cli import rundir, selection
from lejepa_cli.cli.base import main
from lejepa_cli.errors import UsageError
from lejepa_cli.inspect_artifacts import inspect_paths
from lejepa_cli.inspect_render import sparkline
from lejepa_cli.report import write_report


def write_images(folder: Path, count: int = 32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(count):
        arr = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"x_{i:02d}.png")


def collapse_checkpoints(run: Path) -> None:
    """Rewrite every checkpoint of a run so that its model outputs a constant."""
    for ckpt in rundir.list_checkpoints(run):
        weights = load_file(str(ckpt / "model.safetensors"))
        first_conv = next(
            k for k, v in weights.items() if k.startswith("backbone.") and v.dim() == 4
        )
        weights[first_conv].zero_()
        last = max(int(k.split(".")[1]) for k in weights if k.startswith("projector."))
        weights[f"projector.{last}.weight"].zero_()
        weights[f"projector.{last}.bias"].fill_(1.0)
        save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["inspect", *args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """good and collapsed share the image folder (same holdout); small uses other crop sizes."""
    root = tmp_path_factory.mktemp("inspect")
    write_images(root / "images")
    good = make_run(root / "good", epochs=(1, 2))
    bad = make_run(root / "bad", epochs=(1, 2), seed=1)
    collapse_checkpoints(bad)
    other = make_run(root / "other", size=48, epochs=(1,))
    for run in (good, bad, other):
        (run / "metrics.jsonl").write_text(
            "".join(
                json.dumps(
                    {
                        "step": s,
                        "epoch": 1 + (s - 1) // 4,
                        "loss": 3.0 / s,
                        "pred": 1.0 / s,
                        "sigreg": 9.0 / s,
                        "lr": 1e-4,
                    }
                )
                + "\n"
                for s in range(1, 9)
            )
        )
        selection.score_run(run)
        write_report(run)
    return {"root": root, "good": good, "bad": bad, "other": other}


def test_inspect_run(runs, capsys):
    code, out, err = run_cli(capsys, str(runs["good"]))
    assert code == 0, err
    best = rundir.resolve_checkpoint(runs["good"], "best").name
    assert "test_resnet" in out and "lam 0.05" in out
    assert "step 8 of 8" in out and "epoch 2 of 2" in out and "128 images seen" in out
    assert "epoch-0001" in out and "epoch-0002" in out
    assert f"recommended: {best}" in out
    assert any(ch in out for ch in "▁▂▃▄▅▆▇█"), "the curves are drawn"


def test_inspect_two_runs_recommends_the_healthy_one(runs, capsys):
    code, out, err = run_cli(capsys, str(runs["bad"]), str(runs["good"]))
    assert code == 0, err
    assert "runs side by side" in out
    best = rundir.resolve_checkpoint(runs["good"], "best").name
    assert f"recommended: good at {best}" in out
    assert "collapsed" in out
    assert "do not compare" not in out  # same folder, same crops: a meaningful comparison

    code, out, _ = run_cli(capsys, "--json", str(runs["bad"]), str(runs["good"]))
    data = json.loads(out)
    comp = data["comparison"]
    assert comp["recommended"]["run"] == "good" and comp["recommended"]["checkpoint"] == best
    assert comp["comparable"] is True and comp["warnings"] == []
    rows = {r["run"]: r for r in comp["runs"]}
    assert rows["bad"]["collapsed"] is True and rows["good"]["collapsed"] is False
    assert rows["bad"]["score"] > rows["good"]["score"]
    assert [i["kind"] for i in data["items"]] == ["run", "run"]


def test_inspect_runs_that_do_not_compare_warns(runs, capsys):
    code, out, _ = run_cli(capsys, str(runs["good"]), str(runs["other"]))
    assert code == 0
    assert "do not compare meaningfully" in out and "global size" in out
    code, out, _ = run_cli(capsys, "--json", str(runs["good"]), str(runs["other"]))
    comp = json.loads(out)["comparison"]
    assert comp["comparable"] is False
    assert comp["recommended"]["run"] in ("good", "other")  # numbers still shown, with warning


def test_inspect_checkpoint_and_weights_file(runs, capsys):
    ckpt = rundir.resolve_checkpoint(runs["good"], "best")
    code, out, err = run_cli(capsys, str(ckpt))
    assert code == 0, err
    assert "checkpoint" in out and "test_resnet" in out
    assert "372,688" in out  # test_resnet backbone parameters, BatchNorm statistics excluded
    assert "feature dim: 96" in out and "held-out score" in out
    code, out, _ = run_cli(capsys, "--json", str(ckpt / "model.safetensors"))
    item = json.loads(out)["items"][0]
    assert item["kind"] == "checkpoint" and item["parameters"] == 372_688
    assert item["feature_dim"] == 96 and item["heldout"]["score"] is not None

    loose = runs["root"] / "loose.safetensors"
    weights = load_file(str(ckpt / "model.safetensors"))
    save_file(
        {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")},
        str(loose),
    )
    code, out, _ = run_cli(capsys, "--json", str(loose))
    item = json.loads(out)["items"][0]
    assert item["kind"] == "weights" and item["parameters"] == 372_688


def test_inspect_export(runs, capsys, tmp_path):
    from lejepa_cli.export import export as export_run

    export = export_run(runs["good"], tmp_path / "export")  # the best checkpoint by default
    best = rundir.resolve_checkpoint(runs["good"], "best").name
    code, out, err = run_cli(capsys, str(export))
    assert code == 0, err
    assert "export" in out and "test_resnet" in out and "372,688" in out
    assert "checksum: ok" in out and best in out
    code, out, _ = run_cli(capsys, "--json", str(export))
    item = json.loads(out)["items"][0]
    assert item["kind"] == "export" and item["feature_dim"] == 96 and item["input_size"] == 32
    assert item["lejepa"]["source"]["checkpoint"] == best
    # a changed weights file no longer matches its recorded checksum: one line, exit 2
    with open(export / "model.safetensors", "ab") as f:
        f.write(b"\0")
    code, out, err = run_cli(capsys, str(export))
    assert code == 2 and "sha256" in err and "Traceback" not in err


def test_damaged_and_unknown_paths_are_one_line_exit_2(runs, capsys, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    code, out, err = run_cli(capsys, str(junk))
    assert code == 2 and "damaged" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, str(tmp_path / "missing"))
    assert code == 2 and "Traceback" not in err
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UsageError):
        inspect_paths([text], False, None)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x")
    (ckpt / "meta.json").write_text("{broken")
    code, _, err = run_cli(capsys, str(ckpt))
    assert code == 2 and "damaged" in err


def test_sparkline():
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert sparkline([5.0, 5.0]) == "▅▅"
    assert sparkline([]) == "" and sparkline([float("nan")]) == ""
    assert len(sparkline(list(range(500)), width=40)) == 40
