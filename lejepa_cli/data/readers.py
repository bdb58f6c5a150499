"""Read any supported image file as a raw (H, W, C) array, at the precision it was stored in.

Where `decode.load_rgb` turns every file into 8-bit RGB (the path of ordinary photo folders),
`read_raw` keeps what scientific data needs: 16-bit and float pixels, any number of channels,
and the formats of the fields that produce them:

- PNG, JPEG, BMP, ... through Pillow (16-bit PNG through OpenCV, which keeps all 16 bits of
  colour PNGs where Pillow drops to 8); grey stays one channel, colour is RGB;
- TIFF through tifffile: channels-first or channels-last, told apart by the axes tifffile
  reads from the file, or by the shape (the channel axis is the small one at either end);
- NumPy `.npy` (H x W or H x W x C), read with `allow_pickle=False`;
- FITS through astropy (extra `astro`): the first HDU that holds an image, or `fits_hdu`;
  NAXIS3 is the channel axis; BSCALE/BZERO are applied by astropy; rows stay as stored;
- DICOM through pydicom (extra `medical`): RescaleSlope/Intercept applied, MONOCHROME1 negated
  so that a larger value is always brighter; the first frame of a multi-frame file.

No intensity mapping happens here: `intensity.IntensityMap` turns raw values into 0-1.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from lejepa_cli.data.channels import MAX_CHANNELS
from lejepa_cli.data.decode import DEFAULT_MAX_PIXELS, DecodeError
from lejepa_cli.errors import UsageError

FITS_EXTENSIONS = ("fits", "fit", "fts")
DICOM_EXTENSIONS = ("dcm", "dicom")
NPY_EXTENSIONS = ("npy",)
TIFF_EXTENSIONS = ("tif", "tiff")
# Files that only this module reads (the 8-bit path of load_rgb cannot).
SCIENCE_EXTENSIONS = (*NPY_EXTENSIONS, *FITS_EXTENSIONS, *DICOM_EXTENSIONS)
_EXTRAS = {"astropy": "astro", "pydicom": "medical"}


class MissingExtraError(UsageError):
    """A file format whose reader is an optional dependency that is not installed."""


class RawHeader(NamedTuple):
    """What a file holds, read without decoding its pixels where the format allows."""

    width: int
    height: int
    channels: int
    dtype: str  # numpy dtype name of the raw values ("uint8", "uint16", "float32", ...)
    format: str  # "PNG", "TIFF", "NPY", "FITS", "DICOM", ...
    bits: int  # significant bits per value (DICOM BitsStored; the dtype's size otherwise)


def extension(path: str | os.PathLike) -> str:
    return os.fspath(path).rpartition(".")[2].lower()


def require(module: str, what: str):
    """Import an optional reader, or say in one line which pip extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.partition(".")[0]
        extra = _EXTRAS[package]
        raise MissingExtraError(
            f"reading {what} files needs {package}, which is not installed: "
            f"pip install 'lejepa-cli[{extra}]'"
        ) from None


def read_raw(
    path: str | os.PathLike, *, fits_hdu: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The pixels of `path` as (H, W, C), in their stored dtype (floats become float32).

    Raises DecodeError (with a reason for skipped.txt) for unreadable files and
    MissingExtraError when the format's optional reader is not installed.
    """
    ext = extension(path)
    _check_file(path)
    if ext in NPY_EXTENSIONS:
        data = _read_npy(path, max_pixels)
    elif ext in FITS_EXTENSIONS:
        data = _read_fits(path, fits_hdu, max_pixels)
    elif ext in DICOM_EXTENSIONS:
        data = _read_dicom(path, max_pixels)
    elif ext in TIFF_EXTENSIONS and _has_tifffile():
        data = _read_tiff(path, max_pixels)
    else:
        data = _read_pil(path, max_pixels)
    return _finish(data, os.fspath(path))


def read_header(path: str | os.PathLike, *, fits_hdu: int | None = None) -> RawHeader:
    """Size, channels and value type of `path` (pixels decoded only for Pillow's formats)."""
    ext = extension(path)
    _check_file(path)
    if ext in NPY_EXTENSIONS:
        return _npy_header(path)
    if ext in FITS_EXTENSIONS:
        return _fits_header(path, fits_hdu)
    if ext in DICOM_EXTENSIONS:
        return _dicom_header(path)
    if ext in TIFF_EXTENSIONS and _has_tifffile():
        return _tiff_header(path)
    return _pil_header(path)


def _has_tifffile() -> bool:
    """tifffile is a dependency; without it (a trimmed install) Pillow reads what it can."""
    import importlib.util

    return importlib.util.find_spec("tifffile") is not None


def _check_file(path) -> None:
    """The file checks of decode._open (missing, not regular, empty), as DecodeErrors."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DecodeError("missing file or broken symlink") from None
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    if not os.path.isfile(path):
        raise DecodeError("not a regular file (a device, pipe or socket)")
    if info.st_size == 0:
        raise DecodeError("empty file (0 bytes)")


def _finish(data: np.ndarray, path: str) -> np.ndarray:
    """(H, W) or (H, W, C) of a plain numeric dtype -> (H, W, C); floats as float32."""
    if data.ndim == 2:
        data = data[:, :, None]
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    if data.dtype.kind not in "uif":
        raise DecodeError(f"unsupported value type {data.dtype} (numbers only)")
    if data.shape[0] < 1 or data.shape[1] < 1:
        raise DecodeError(f"invalid size {data.shape[1]}x{data.shape[0]}")
    return np.ascontiguousarray(data)


def _check_size(height: int, width: int, channels: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DecodeError(
            f"too many pixels: {width}x{height} is over the limit of {max_pixels:,} "
            "(refused as a possible decompression bomb)"
        )
    if channels > MAX_CHANNELS:
        raise DecodeError(f"{channels} channels is over the limit of {MAX_CHANNELS}")


def channel_axis(shape: tuple[int, ...], where: str) -> int:
    """Which end of a 3-D shape holds the channels: the one that is small (<= MAX_CHANNELS)
    and smaller than both other sides. Neither or both: a DecodeError naming the shape."""
    if len(shape) != 3:
        raise DecodeError(f"{where} shape {tuple(shape)} is not H x W or H x W x C")
    first = shape[0] <= MAX_CHANNELS and shape[0] < min(shape[1], shape[2])
    last = shape[2] <= MAX_CHANNELS and shape[2] < min(shape[0], shape[1])
    if first != last:
        return 0 if first else 2
    raise DecodeError(
        f"ambiguous {where} shape {tuple(shape)}: cannot tell channels-first (C x H x W) "
        "from channels-last (H x W x C); save it with its axes named (tifffile "
        "metadata={'axes': 'CYX'}) or as a .npy array of H x W x C"
    )


def _layout(shape: tuple[int, ...], axes: str, where: str) -> tuple[int, int | None]:
    """(leading singleton axes to drop, channel axis after the drop, None for a 2-D image) of
    an array whose axes tifffile named (S and C are channels, others are told by shape)."""
    drop = 0
    while len(shape) - drop > 3 and shape[drop] == 1:  # T or Z axes of one
        drop += 1
    shape, axes = tuple(shape[drop:]), axes[drop:]
    if len(shape) == 2:
        return drop, None
    if len(shape) != 3:
        raise DecodeError(
            f"{where} holds a {len(shape)}-D stack (shape {shape}); save one 2-D image "
            "(with channels) per file"
        )
    named = [i for i, a in enumerate(axes) if a in "SC"]
    axis = named[0] if len(named) == 1 else channel_axis(shape, where)
    if axis == 1:
        raise DecodeError(f"{where} has its channels ({axes}) between rows and columns")
    return drop, axis


def _hwc_of(shape: tuple[int, ...], axes: str, where: str) -> tuple[int, int, int]:
    drop, axis = _layout(shape, axes, where)
    spatial = [n for i, n in enumerate(shape[drop:]) if i != axis]
    return spatial[0], spatial[1], 1 if axis is None else int(shape[drop + axis])


# ----------------------------------------------------------------------------- Pillow, OpenCV


def _png_bit_depth(path) -> int:
    """The bit depth byte of a PNG's IHDR chunk (8 when the file is not a PNG)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26:
        return 8
    return head[24]


def _read_pil(path, max_pixels: int) -> np.ndarray:
    from lejepa_cli.data.decode import _TRANSPOSE, _open, _orientation, _to_rgb

    img = _open(path, max_pixels)
    try:
        if (
            img.format == "PNG"
            and img.mode not in ("I;16", "I;16B", "I")
            and (_png_bit_depth(path) == 16)
        ):
            return _read_png16(path)
        img.load()
        method = _TRANSPOSE.get(_orientation(img))
        if img.mode in _GREY_MODES:
            single = img if img.mode != "1" else img.convert("L")
            data = np.asarray(single.transpose(method) if method is not None else single)
            return data.astype(np.uint16) if img.mode.startswith("I;16") else data
        rgb = _to_rgb(img)
        return np.asarray(rgb.transpose(method) if method is not None else rgb)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the same reasons load_rgb gives
        reason = str(exc) or type(exc).__name__
        kind = "truncated file" if "truncated" in reason else "corrupt or unsupported image"
        raise DecodeError(f"{kind}: {reason}") from None
    finally:
        img.close()


def _read_png16(path) -> np.ndarray:
    """16-bit colour (or grey+alpha) PNG with all its bits: OpenCV reads it, as BGR(A)."""
    import cv2

    data = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise DecodeError("corrupt or truncated 16-bit PNG")
    if data.ndim == 3 and data.shape[2] >= 3:
        data = data[:, :, [2, 1, 0, *range(3, data.shape[2])]]  # BGR(A) -> RGB(A)
    if data.ndim == 3 and data.shape[2] in (2, 4):
        data = data[:, :, :-1]  # alpha is not a channel of the scene
    return data


_GREY_MODES = ("1", "L", "I;16", "I;16B", "I;16L", "I", "F")


def _pil_header(path) -> RawHeader:
    """What _read_pil will return: grey modes one channel, everything else RGB (alpha is
    composited away); 16-bit PNGs (OpenCV) keep their bits, grey+alpha stays grey."""
    from lejepa_cli.data.decode import image_size

    header = image_size(path)
    sixteen = header.format == "PNG" and _png_bit_depth(path) == 16
    grey = header.mode in _GREY_MODES or (sixteen and header.mode in ("LA", "La"))
    if header.mode in ("I", "F"):
        dtype = {"I": "int32", "F": "float32"}[header.mode]
    else:
        dtype = "uint16" if sixteen or header.mode.startswith("I;16") else "uint8"
    bits = {"uint8": 8, "uint16": 16}.get(dtype, 32)
    return RawHeader(header.width, header.height, 1 if grey else 3, dtype, header.format, bits)


# ----------------------------------------------------------------------------- TIFF


def _read_tiff(path, max_pixels: int) -> np.ndarray:
    tifffile = require("tifffile", "TIFF")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            drop, axis = _layout(series.shape, series.axes, "TIFF")
            _check_size(*_hwc_of(series.shape, series.axes, "TIFF"), max_pixels)
            data = series.asarray()
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except Exception as exc:  # noqa: BLE001 - truncated strips, bad tags, unknown compression
        raise DecodeError(f"corrupt or truncated TIFF: {_short(exc)}") from None
    data = data.reshape(data.shape[drop:])
    return data if axis is None else np.moveaxis(data, axis, -1)


def _tiff_header(path) -> RawHeader:
    tifffile = require("tifffile", "TIFF")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            h, w, c = _hwc_of(series.shape, series.axes, "TIFF")
            dtype = np.dtype(series.dtype)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"corrupt or truncated TIFF: {_short(exc)}") from None
    return RawHeader(w, h, c, dtype.name, "TIFF", dtype.itemsize * 8)


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


# ----------------------------------------------------------------------------- NumPy


def _open_npy(path) -> np.ndarray:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DecodeError(
                "the .npy file holds Python objects (refused: never unpickled)"
            ) from None
        raise DecodeError(f"not a readable .npy array: {_short(exc)}") from None
    except OSError as exc:
        raise DecodeError(f"not a readable .npy array: {_short(exc)}") from None
    if not isinstance(data, np.ndarray):
        raise DecodeError("a .npz archive, not a .npy array; save one array per .npy file")
    return data


def _npy_shape(data: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of a .npy array, which must be H x W or H x W x C."""
    if data.ndim == 2:
        return data.shape[0], data.shape[1], 1
    if data.ndim == 3 and data.shape[2] <= MAX_CHANNELS and data.shape[0] >= data.shape[2]:
        return data.shape
    if data.ndim == 3 and data.shape[0] < min(data.shape[1:]):
        raise DecodeError(
            f"array shape {data.shape} looks channels-first; .npy images are H x W x C: "
            "save np.moveaxis(a, 0, -1)"
        )
    raise DecodeError(f"array shape {data.shape} is not H x W or H x W x C")


def _read_npy(path, max_pixels: int) -> np.ndarray:
    data = _open_npy(path)
    h, w, c = _npy_shape(data)
    _check_size(h, w, c, max_pixels)
    try:
        return np.array(data)  # out of the memory map
    except (OSError, ValueError) as exc:
        raise DecodeError(f"truncated .npy array: {_short(exc)}") from None


def _npy_header(path) -> RawHeader:
    data = _open_npy(path)
    h, w, c = _npy_shape(data)
    return RawHeader(w, h, c, data.dtype.name, "NPY", data.dtype.itemsize * 8)


# ----------------------------------------------------------------------------- FITS


def _fits_hdu(hdus, fits_hdu: int | None):
    """The HDU to read: `fits_hdu`, or the first whose data is an image of 2 or 3 axes."""
    if fits_hdu is not None:
        if not 0 <= fits_hdu < len(hdus):
            raise DecodeError(
                f"no HDU {fits_hdu}: the FITS file has {len(hdus)} (0-{len(hdus) - 1})"
            )
        hdu = hdus[fits_hdu]
        if not hdu.is_image or not hdu.header.get("NAXIS", 0) >= 2:
            raise DecodeError(f"HDU {fits_hdu} ({type(hdu).__name__}) holds no image")
        return hdu
    for hdu in hdus:
        if hdu.is_image and hdu.header.get("NAXIS", 0) >= 2:
            return hdu
    kinds = ", ".join(f"{i}: {type(h).__name__}" for i, h in enumerate(hdus))
    raise DecodeError(f"FITS file with no image HDU ({kinds})")


def _fits_shape(hdu) -> tuple[int, int, int]:
    """(H, W, C) from NAXISn: NAXIS1 is the width, NAXIS2 the height, NAXIS3 the channels."""
    header = hdu.header
    naxis = [int(header.get(f"NAXIS{i}", 1)) for i in range(1, int(header["NAXIS"]) + 1)]
    extra = [n for n in naxis[2:] if n != 1]
    if len(extra) > 1:
        raise DecodeError(f"FITS image of shape {tuple(reversed(naxis))} has more than 3 axes")
    return naxis[1], naxis[0], extra[0] if extra else 1


def _with_fits(path, fits_hdu: int | None, read):
    fits = require("astropy.io.fits", "FITS")
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdus:
            return read(_fits_hdu(hdus, fits_hdu))
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy's many OSError/ValueError/VerifyError
        raise DecodeError(f"corrupt or truncated FITS: {_short(exc)}") from None


def _read_fits(path, fits_hdu: int | None, max_pixels: int) -> np.ndarray:
    def read(hdu):
        h, w, c = _fits_shape(hdu)
        _check_size(h, w, c, max_pixels)
        data = np.asarray(hdu.data).reshape(c, h, w)  # (C, H, W): NAXIS3 first
        return np.moveaxis(data, 0, -1).astype(data.dtype.newbyteorder("="))

    return _with_fits(path, fits_hdu, read)


def _fits_header(path, fits_hdu: int | None) -> RawHeader:
    def read(hdu):
        h, w, c = _fits_shape(hdu)
        bitpix = int(hdu.header["BITPIX"])
        scaled = "BSCALE" in hdu.header or "BZERO" in hdu.header
        dtype = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32"}.get(
            bitpix, "float64"
        )
        if scaled:  # astropy applies BZERO/BSCALE: unsigned 16-bit, or floats
            dtype = "uint16" if bitpix == 16 and hdu.header.get("BZERO") == 32768 else "float32"
        return RawHeader(w, h, c, dtype, "FITS", abs(bitpix))

    return _with_fits(path, fits_hdu, read)


# ----------------------------------------------------------------------------- DICOM


def _dcmread(path, pixels: bool):
    pydicom = require("pydicom", "DICOM")
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError and truncated files
        raise DecodeError(f"not a readable DICOM file: {_short(exc)}") from None


def _read_dicom(path, max_pixels: int) -> np.ndarray:
    ds = _dcmread(path, pixels=True)
    if "PixelData" not in ds:
        raise DecodeError("DICOM file without pixel data (no PixelData element)")
    _check_size(int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)), max_pixels)
    try:
        data = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - compressed without a decoder, truncated data
        raise DecodeError(f"cannot decode the DICOM pixel data: {_short(exc)}") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        data = data[0]  # the first frame, as for multi-frame GIF and TIFF
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        data = data.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        # MONOCHROME1 shows its smallest value as white: negate so that larger is brighter
        data = -data.astype(np.float32)
    return data


def _dicom_header(path) -> RawHeader:
    ds = _dcmread(path, pixels=False)
    if "Rows" not in ds or "Columns" not in ds:
        raise DecodeError("DICOM file without an image (no Rows/Columns)")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    allocated = int(ds.get("BitsAllocated", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = f"{'int' if signed else 'uint'}{allocated}"
    if float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0):
        dtype = "float32"
    channels = int(ds.get("SamplesPerPixel", 1) or 1)
    return RawHeader(int(ds.Columns), int(ds.Rows), channels, dtype, "DICOM", bits)
