"""report.html in a real headless browser, offline: no console errors, content rendered.

Uses Debian's chromium (`.ci/run` installs it when missing); skipped when it cannot be found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_runs import make_run
from PIL import Image

from lejepa_cli import selection
from lejepa_cli.report import write_report


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found (install Debian's chromium: apt-get install chromium)",
)
CONSOLE = re.compile(r":(INFO|WARNING|ERROR|FATAL):CONSOLE[^\]]*\]\s*(.*)")


def headless(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Chromium headless with everything that could reach the network switched off."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [m.group(2) for m in map(CONSOLE.search, stderr.splitlines()) if m]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(
            images / f"b_{i:02d}.png"
        )
    run = make_run(root / "run", epochs=(1, 2))
    rows = [
        {"step": s, "epoch": 1 + (s - 1) // 4, "loss": 2.0 / s, "pred": 1.0 / s, "sigreg": 8.0 / s}
        for s in range(1, 9)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    selection.score_run(run)
    write_report(run)
    return run / "report.html"


def test_console_errors_are_detected(tmp_path):
    """The check below must be able to fail: a page that logs an error is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<script>console.error("marker-7f3a")</script></body></html>'
    )
    proc = headless(page.as_uri(), tmp_path / "profile", "--dump-dom")
    assert any("marker-7f3a" in m for m in console_messages(proc.stderr)), proc.stderr[-2000:]


def test_report_renders_offline_without_console_errors(report_html, tmp_path):
    proc = headless(report_html.as_uri(), tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    dom = proc.stdout
    best = json.loads((report_html.parent / "report.json").read_text())["recommended"]
    assert "Recommended checkpoint" in dom and best["checkpoint"] in dom
    assert dom.count("data:image/png;base64,") >= 2
    assert "Checkpoint ranking" in dom and "Label-free diagnostics" in dom

    shot = tmp_path / "shot.png"
    proc = headless(
        report_html.as_uri(),
        tmp_path / "profile2",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
    )
    assert shot.is_file(), proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    with Image.open(shot) as img:
        assert img.size == (1200, 2000)
        pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    # not a blank page: text, tables and plots give many distinct colours and real contrast
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    keep = os.environ.get("LEJEPA_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
