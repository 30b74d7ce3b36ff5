"""Synthetic image files (16-bit ramps, DICOM files, breast-shaped images) for the probe tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    suffix_free: bool = False,
    **elements,
) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = "SECRET-123"
    ds.Modality = "MG"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for k, v in elements.items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.astype("<u2").tobytes()
    else:
        ds.Rows, ds.Columns = 4, 4
    ds.save_as(str(path), enforce_file_format=True)
    return path


def ramp16(h: int = 6, w: int = 10, hi: int = 4095) -> np.ndarray:
    return np.linspace(0, hi, h * w).round().astype(np.uint16).reshape(h, w)


def synthetic_breast(monochrome1: bool = False) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 16-bit frame: bright 5 px border, dark background, a textured breast at rows 20:70, cols 10:40."""
    img = np.full((100, 60), 100, dtype=np.uint16)
    img[:5, :] = img[-5:, :] = 4000
    img[:, :5] = img[:, -5:] = 4000
    rng = np.random.default_rng(0)
    img[20:70, 10:40] = 2000 + rng.integers(0, 1500, size=(50, 30))
    if monochrome1:
        img = (4095 - img).astype(np.uint16)
    return img, (20, 70, 10, 40)
