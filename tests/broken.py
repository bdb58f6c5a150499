"""Image files whose header is fine but whose pixel data is damaged, one per decoder path.

`build_broken(dir)` writes them and returns their names. Each one must be refused by every
command (inspect, pretrain's skipped.txt, embed, probe): a file whose pixels cannot be decoded
without an error is not an image, even when its header reads.

JPEG: a file cut off mid-scan is refused, and so is one whose scan data is scrambled enough for
libjpeg to report an error. A complete JPEG with a few damaged bytes in its scan decodes with no
error and no warning Pillow passes on (libjpeg resynchronises): its pixels cannot be told from a
noisy photo, so it is accepted, as every viewer shows it (`jpeg_few_damaged_scan_bytes`).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, features

SIDE = 48


def _noise(seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_from(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        out += struct.pack(">I", len(body)) + kind + body + crc
    return out


def _png_with_idat(raw_rows: bytes) -> bytes:
    """A grey 8-bit PNG whose IDAT holds `raw_rows` (filter byte + pixels per row), valid CRCs."""
    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    return _png_from([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw_rows)), (b"IEND", b"")])


def png_bad_deflate() -> bytes:
    """IDAT bytes flipped in the middle, CRC recomputed: zlib says 'broken data stream'."""
    good = _encode(_noise(1), "PNG")
    chunks = _png_chunks(good)
    out = []
    for kind, body in chunks:
        if kind == b"IDAT":
            body = bytearray(body)
            for k in range(len(body) // 2, len(body) // 2 + 16):
                body[k] ^= 0xFF
            body = bytes(body)
        out.append((kind, body))
    return _png_from(out)


def png_bad_filter() -> bytes:
    """Every row's filter byte is 9 (valid ones are 0-4): Pillow used to give a black image."""
    return _png_with_idat((b"\x09" + b"\x80" * SIDE) * SIDE)


def jpeg_truncated_mid_scan() -> bytes:
    data = _encode(_noise(2), "JPEG", quality=90)
    return data[: len(data) * 2 // 3]


def jpeg_few_damaged_scan_bytes() -> bytes:
    """Eight bytes of the entropy-coded scan flipped (no 0xFF made or unmade): decodable."""
    data = bytearray(_encode(_noise(2), "JPEG", quality=90))
    middle = (data.index(b"\xff\xda") + len(data)) // 2
    for k in range(middle, middle + 8):
        if data[k] != 0xFF and data[k] ^ 0x33 != 0xFF:
            data[k] ^= 0x33
    return bytes(data)


def gif_bad_lzw() -> bytes:
    """The LZW data after the image descriptor overwritten with codes out of range."""
    data = bytearray(_encode(_noise(3, "P"), "GIF"))
    start = data.index(b"\x2c")  # image descriptor
    pos = start + 10 + 1 + 1  # descriptor, LZW minimum code size, first sub-block length
    for k in range(pos, min(pos + 200, len(data) - 2)):
        data[k] = 0xFF
    return bytes(data)


def tiff_bad_lzw() -> bytes:
    data = bytearray(_encode(_noise(4), "TIFF", compression="tiff_lzw"))
    # the strip data follows the 8-byte header in Pillow's layout
    for k in range(8, 8 + 400):
        data[k] ^= 0xA5
    return bytes(data)


def tiff_short_strip() -> bytes:
    """An uncompressed TIFF cut in the middle of its strip."""
    data = _encode(_noise(5), "TIFF")
    img = Image.open(io.BytesIO(data))
    offset, size = img.tag_v2[273][0], img.tag_v2[279][0]  # StripOffsets, StripByteCounts
    assert offset + size <= len(data)
    return data[: offset + size // 2]


def webp_bad_vp8() -> bytes:
    """Lossy WebP with the VP8 bitstream after its frame header scrambled."""
    data = bytearray(_encode(_noise(6), "WEBP", quality=80))
    start = data.index(b"VP8 ") + 8 + 10  # chunk header, then the 10-byte frame header
    for k in range(start, len(data)):
        data[k] ^= 0x5A
    return bytes(data)


def webp_lossless_bad() -> bytes:
    data = bytearray(_encode(_noise(7), "WEBP", lossless=True))
    start = data.index(b"VP8L") + 8 + 5
    for k in range(start, len(data)):
        data[k] ^= 0x5A
    return bytes(data)


def bmp_short_pixels() -> bytes:
    """The pixel array stops at half of what the header declares."""
    data = _encode(_noise(8), "BMP")
    (pixel_offset,) = struct.unpack("<I", data[10:14])
    return data[: pixel_offset + (len(data) - pixel_offset) // 2]


def builders() -> dict[str, object]:
    out = {
        "png_bad_deflate.png": png_bad_deflate,
        "png_bad_filter.png": png_bad_filter,
        "jpeg_truncated.jpg": jpeg_truncated_mid_scan,
        "gif_bad_lzw.gif": gif_bad_lzw,
        "tiff_bad_lzw.tif": tiff_bad_lzw,
        "tiff_short_strip.tif": tiff_short_strip,
        "bmp_short_pixels.bmp": bmp_short_pixels,
    }
    if features.check("webp"):
        out["webp_bad_vp8.webp"] = webp_bad_vp8
        out["webp_lossless_bad.webp"] = webp_lossless_bad
    return out


def build_broken(root: str | os.PathLike) -> list[str]:
    """Write every broken file under `root`; their names, sorted."""
    os.makedirs(root, exist_ok=True)
    names = []
    for name, make in builders().items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(make())
        names.append(name)
    return sorted(names)


def write_good(root: str | os.PathLike, count: int, side: int = SIDE) -> list[str]:
    """`count` readable noise PNGs; their names."""
    os.makedirs(root, exist_ok=True)
    names = []
    for i in range(count):
        name = f"good_{i:02d}.png"
        _noise(100 + i).resize((side, side)).save(os.path.join(root, name))
        names.append(name)
    return names
