"""A folder of awkward image files, built on the fly, with what each one should do.

`build_zoo(dir)` writes the files and returns {relative path: Expect}. Status "ok" files must
load as RGB, "bad" ones must be skipped with a reason containing `reason`, and "ignored" ones
(hidden, or not an image extension) must not be scanned at all.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, features

SIZE = (48, 40)  # (w, h): not square, so a rotation shows
RED, BLUE = (255, 0, 0), (0, 0, 255)


class Expect(NamedTuple):
    status: str  # "ok" | "bad" | "ignored"
    reason: str = ""  # for "bad": a phrase the skip reason contains
    mode: str = ""  # for "ok": the mode Pillow opens it in


def _noise(seed: int, size=SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid tiny PNG whose header claims width x height 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def upright_red_over_blue(size=SIZE) -> Image.Image:
    """Top half red, bottom half blue: the picture as it should be displayed."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[: h // 2] = RED
    arr[h // 2 :] = BLUE
    return Image.fromarray(arr)


def build_zoo(root: str | os.PathLike) -> dict[str, Expect]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / ".hidden").mkdir(exist_ok=True)
    zoo: dict[str, Expect] = {}

    def save(rel: str, img: Image.Image, expect: Expect, **kwargs) -> None:
        img.save(root / rel, **kwargs)
        zoo[rel] = expect

    save("good.jpg", _noise(0), Expect("ok", mode="RGB"), quality=90)
    save("UPPER.JPG", _noise(1), Expect("ok", mode="RGB"))
    save("CAPS.PNG", _noise(2), Expect("ok", mode="RGB"))
    save("sub/nested.png", _noise(3), Expect("ok", mode="RGB"))
    save("sub/deeper/plain.bmp", _noise(4), Expect("ok", mode="RGB"))
    save("gray.pgm", _noise(5).convert("L"), Expect("ok", mode="L"))
    save("bilevel.bmp", _noise(6).convert("1"), Expect("ok", mode="1"))

    # 16-bit grey: a horizontal 12-bit ramp, as a camera or X-ray detector writes it.
    ramp16 = np.tile(np.linspace(0, 4095, SIZE[0]).astype(np.uint16), (SIZE[1], 1))
    save("gray16.png", Image.fromarray(ramp16), Expect("ok", mode="I;16"))
    save("gray16.tif", Image.fromarray(ramp16), Expect("ok", mode="I;16"))
    ramp_f = np.tile(np.linspace(-1.0, 1.0, SIZE[0], dtype=np.float32), (SIZE[1], 1))
    save("float.tif", Image.fromarray(ramp_f), Expect("ok", mode="F"))

    save("cmyk.jpg", _noise(7).convert("CMYK"), Expect("ok", mode="CMYK"))
    palette = _noise(8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_transparent.png", palette, Expect("ok", mode="P"), transparency=0)
    la = Image.merge("LA", (_noise(9).convert("L"), Image.new("L", SIZE, 128)))
    save("gray_alpha.png", la, Expect("ok", mode="LA"))
    rgba = _noise(10).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(SIZE))
    save("rgba.png", rgba, Expect("ok", mode="RGBA"))

    # Stored sideways; EXIF orientation 6 says "rotate 90 degrees clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright_red_over_blue().transpose(Image.Transpose.ROTATE_90)
    save("exif_rotated.jpg", stored, Expect("ok", mode="RGB"), exif=exif.tobytes(), quality=95)

    frames = [Image.new("RGB", SIZE, c) for c in (RED, (0, 255, 0), BLUE)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    zoo["animated.gif"] = Expect("ok", mode="P")
    if features.check("webp"):
        save("photo.webp", _noise(11), Expect("ok", mode="RGB"))

    buf = io.BytesIO()
    _noise(12, (96, 80)).save(buf, format="JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    zoo["truncated.jpg"] = Expect("bad", reason="truncated")
    (root / "empty.jpg").write_bytes(b"")
    zoo["empty.jpg"] = Expect("bad", reason="empty")
    (root / "text.jpg").write_text("this is not a picture\n")
    zoo["text.jpg"] = Expect("bad", reason="not an image")
    (root / "bomb.png").write_bytes(bomb_png())
    zoo["bomb.png"] = Expect("bad", reason="decompression bomb")

    os.symlink("good.jpg", root / "link.jpg")
    zoo["link.jpg"] = Expect("ok", mode="RGB")
    os.symlink("does-not-exist.jpg", root / "broken_link.jpg")
    zoo["broken_link.jpg"] = Expect("bad", reason="missing")

    save(".hidden/secret.png", _noise(13), Expect("ignored"))
    save(".hidden_file.png", _noise(14), Expect("ignored"))
    (root / "notes.txt").write_text("not scanned\n")
    zoo["notes.txt"] = Expect("ignored")
    return zoo


def scanned(zoo: dict[str, Expect]) -> list[str]:
    """The relative paths a scan must find."""
    return [rel for rel, e in zoo.items() if e.status != "ignored"]


def bad(zoo: dict[str, Expect]) -> list[str]:
    return [rel for rel, e in zoo.items() if e.status == "bad"]
