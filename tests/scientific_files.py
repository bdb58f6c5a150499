"""Writers for the scientific formats the tests read: every file is made here, nothing is
downloaded. Each writer takes an (H, W) or (H, W, C) array and stores it as the format does."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_png16(path: Path, data: np.ndarray) -> Path:
    """16-bit grey (H, W) or colour (H, W, 3, RGB order) PNG, through OpenCV."""
    import cv2

    pixels = data[:, :, ::-1] if data.ndim == 3 else data  # OpenCV writes BGR
    assert cv2.imwrite(str(path), np.ascontiguousarray(pixels.astype(np.uint16)))
    return path


def write_tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    import tifffile

    tifffile.imwrite(path, data, **kwargs)
    return path


def write_fits(path: Path, data: np.ndarray, extra_table: bool = False) -> Path:
    """(H, W) or (H, W, C) as a FITS primary image, channels as NAXIS3."""
    from astropy.io import fits

    cube = np.moveaxis(data, -1, 0) if data.ndim == 3 else data  # (C, H, W)
    hdus = [fits.PrimaryHDU(cube)]
    if extra_table:
        hdus.append(fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(2))]))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_fits_table_only(path: Path) -> Path:
    from astropy.io import fits

    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.ones(3))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return path


def write_dicom(
    path: Path,
    data: np.ndarray | None,
    slope: float = 1.0,
    intercept: float = 0.0,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
) -> Path:
    """A 16-bit grey secondary-capture DICOM; `data=None` leaves out the pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    shape = data.shape if data is not None else (8, 8)
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    if data is not None:
        ds.PixelData = data.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
