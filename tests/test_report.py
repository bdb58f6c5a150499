"""report.json (validated against a small schema) and the self-contained report.html."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image

from lejepa_cli import curves, report, rundir, selection
from lejepa_cli.report import write_report

NUMBER = (int, float)
OPT_NUMBER = (int, float, type(None))
OPT_STR = (str, type(None))

# key -> allowed types; nested dicts are checked by the functions below
TOP = {
    "format": str,
    "generated_at": str,
    "run": dict,
    "config": dict,
    "progress": dict,
    "selection": dict,
    "recommended": dict,
    "checkpoints": list,
    "correlation": (dict, type(None)),
    "warnings": list,
}
RECOMMENDED = {"checkpoint": OPT_STR, "reason": str, "score": OPT_NUMBER}
ENTRY = {
    "rank": int,
    "checkpoint": str,
    "step": (int, type(None)),
    "epoch": (int, type(None)),
    "exists": bool,
    "score_source": str,
    "score": OPT_NUMBER,
    "loss": OPT_NUMBER,
    "pred": OPT_NUMBER,
    "sigreg": OPT_NUMBER,
    "train_loss": OPT_NUMBER,
    "effective_rank": OPT_NUMBER,
    "collapsed": bool,
    "warnings": list,
    "diagnostics": (dict, type(None)),
    "probe": (dict, type(None)),
}
PROGRESS = {
    "step": int,
    "total_steps": (int, type(None)),
    "epochs": (int, type(None)),
    "images_seen": (int, type(None)),
    "finished": bool,
}
SELECTION = {"rule": str, "alpha": NUMBER, "lam": NUMBER, "comparable_when": str}


def check_keys(obj: dict, schema: dict, where: str) -> None:
    for key, types in schema.items():
        assert key in obj, f"{where}: missing key {key!r}"
        assert isinstance(obj[key], types), f"{where}.{key}: {type(obj[key]).__name__}"


def validate_report(text: str) -> dict:
    """Strict JSON (no NaN) with the keys and types the trainer, probe and export rely on."""

    def no_constants(name):
        raise AssertionError(f"report.json holds {name}, which is not JSON")

    data = json.loads(text, parse_constant=no_constants)
    check_keys(data, TOP, "report")
    check_keys(data["recommended"], RECOMMENDED, "recommended")
    check_keys(data["progress"], PROGRESS, "progress")
    check_keys(data["selection"], SELECTION, "selection")
    ranks = []
    for i, entry in enumerate(data["checkpoints"]):
        check_keys(entry, ENTRY, f"checkpoints[{i}]")
        assert entry["score_source"] in ("heldout", "train")
        ranks.append(entry["rank"])
    assert ranks == list(range(1, len(ranks) + 1)), "checkpoints must be listed by rank"
    names = [e["checkpoint"] for e in data["checkpoints"]]
    if data["recommended"]["checkpoint"] is not None:
        assert data["recommended"]["checkpoint"] in names
    return data


def write_images(folder: Path, count: int = 32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(count):
        arr = rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"im_{i:02d}.png")


def write_metrics(run: Path, steps: int = 12, nan_at: int | None = None) -> None:
    rows = []
    for s in range(1, steps + 1):
        loss = float("nan") if s == nan_at else 2.0 / s
        rows.append(
            {
                "step": s,
                "epoch": 1 + (s - 1) // 4,
                "loss": loss,
                "pred": 1.0 / s,
                "sigreg": 20.0 / s,
                "lr": 1e-4,
                "images_per_s": 100.0,
                "data_wait": 0.1,
                "time": float(s),
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_images(root / "images")
    run = make_run(root / "run", epochs=(1, 2, 3))
    write_metrics(run)
    selection.score_run(run)
    write_report(run)
    return run


def test_report_files_exist_validate_and_agree_with_best(scored_run):
    json_path, html_path = write_report(scored_run)
    assert json_path == scored_run / "report.json" and html_path == scored_run / "report.html"
    data = validate_report(json_path.read_text())
    assert data["format"] == report.FORMAT
    assert len(data["checkpoints"]) == 3
    assert all(e["score_source"] == "heldout" for e in data["checkpoints"])
    scores = [e["score"] for e in data["checkpoints"]]
    assert scores == sorted(scores)
    best = data["recommended"]["checkpoint"]
    assert best == data["checkpoints"][0]["checkpoint"]
    assert rundir.resolve_checkpoint(scored_run, "best").name == best
    assert data["progress"]["step"] == 12 and data["progress"]["total_steps"] == 12
    assert data["progress"]["finished"] is True
    assert data["progress"]["last"]["loss"] == pytest.approx(2.0 / 12)
    assert data["selection"]["comparison"]["holdout_count"] == 8  # auto: a quarter of 32
    diag = data["checkpoints"][0]["diagnostics"]
    for key in ("effective_rank", "max_rank", "std_min", "std_median", "std_max", "dead_fraction"):
        assert isinstance(diag[key], NUMBER)
    assert data["correlation"] is None  # no labels


def test_html_is_self_contained(scored_run):
    _, html_path = write_report(scored_run)
    text = html_path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 2, "training curves and held-out plots must be inline"
    for b64 in images:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
            assert img.format == "PNG" and img.size[0] > 300
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    best = json.loads((scored_run / "report.json").read_text())["recommended"]["checkpoint"]
    assert f"<b>{best}</b>" in text
    assert "Checkpoint ranking" in text and "effective rank" in text.lower()


def test_report_without_checkpoints_or_scores(tmp_path):
    run = tmp_path / "run"
    make_run(run, epochs=(1,))
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    data = validate_report(write_report(run)[0].read_text())
    assert data["recommended"]["checkpoint"] is None and data["checkpoints"] == []
    assert any("no checkpoint yet" in w for w in data["warnings"])
    assert "nothing to plot yet" in (run / "report.html").read_text()

    # checkpoints but no held-out score (e.g. --holdout 0): the training loss decides, said so
    run2 = make_run(tmp_path / "run2", epochs=(1, 2))
    write_metrics(run2, steps=8, nan_at=8)  # a NaN must not break strict JSON
    data = validate_report(write_report(run2)[0].read_text())
    assert data["recommended"]["checkpoint"] == "epoch-0002"
    assert data["recommended"]["score_source"] == "train"
    assert all(e["score_source"] == "train" for e in data["checkpoints"])
    assert rundir.resolve_checkpoint(run2, "best").name == "epoch-0002"


def test_metrics_reading_and_downsampling(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_metrics(run, steps=6)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 9.0}\n')  # a resumed run logs step 3 again: last wins
        f.write("{not json\n")
    rows = curves.read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["loss"] == 9.0
    xs, ys = curves.downsample(list(range(10_000)), [float(i % 2) for i in range(10_000)], 100)
    assert len(xs) == 100 and all(y == pytest.approx(0.5) for y in ys)
    assert curves.downsample([1, 2], [3.0, 4.0], 100) == ([1, 2], [3.0, 4.0])
    xs, ys = curves.series([{"step": 1, "loss": math.nan}, {"step": 2, "loss": 1.0}], "loss")
    assert xs == [2.0] and ys == [1.0]
