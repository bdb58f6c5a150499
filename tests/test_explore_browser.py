"""The explore page in a real headless chromium, offline: no console errors, every thumbnail
decodes, the galleries are there. Skipped when chromium cannot be found (see
test_report_browser.py)."""

from __future__ import annotations

import re

import pytest
from explore_images import plant_copies, write_scenes
from helpers_runs import make_run
from test_report_browser import CHROMIUM, console_messages, headless

from lejepa_cli.cli import main

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found (install Debian's chromium: apt-get install chromium)",
)

# Appended to a copy of the page: after load, counts what rendered into an attribute of <body>.
PROBE = """<script>window.addEventListener('load', function () {
  const imgs = Array.from(document.images).filter(i => i.getAttribute('src'));
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const galleries = document.querySelectorAll('.gallery').length;
  const points = document.querySelectorAll('#map circle').length;
  document.body.setAttribute('data-probe', [imgs.length, ok, galleries, points].join('-'));
});</script>"""


def test_explore_page_renders_offline(tmp_path):
    images = tmp_path / "images"
    paths = write_scenes(images, 20)
    plant_copies(images, paths[0])
    run = make_run(tmp_path / "run", arch="test_vit", size=48)
    out = tmp_path / "explore"
    with pytest.raises(SystemExit) as info:
        main(["explore", str(run), str(images), "--out", str(out), "--queries", "4", "--k", "3",
              "--map", "pca"])  # fmt: skip
    assert info.value.code == 0
    page = (out / "index.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))

    proc = headless(
        probed.as_uri(), tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    found = re.search(r'data-probe="(\d+)-(\d+)-(\d+)-(\d+)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    total, decoded, galleries, points = map(int, found.groups())
    # 4 galleries of a query and 3 neighbours, pairs, outliers, patch maps: all decoded
    assert galleries == 4 and points == 23
    assert total >= 4 * 4 + 2 * 6 and decoded == total
