"""Decoding image files into numpy pixels -- and nothing more.

Probes are model-agnostic, so decoding stops at "the pixels the file means":
no resizing, no normalisation to a model's statistics (each model's
`Preprocess` owns that).  Every failure -- missing file, truncated PNG, DICOM
without pixel data -- becomes `ImageUnreadable` with a one-line reason, which
the extractor turns into "skipped, counted, recorded" (or a failure under
`--strict`).

Return conventions (documented because models rely on them):

* `decode_image` (PNG/JPEG/TIFF/BMP): grey stays 2-D, colour is (H, W, 3).
  8-bit files give uint8, 16-bit grey gives uint16 (never truncated to 8 bits),
  32-bit integer TIFFs give uint16 when their values fit and float32 otherwise,
  float TIFFs give float32.  Alpha is dropped; palettes are expanded.
* `decode_dicom` (default): float32 in [0, 1], 2-D, *bright = dense tissue*:
  Modality LUT (rescale slope/intercept) -> VOI LUT sequence, else the first
  window centre/width (LINEAR, LINEAR_EXACT or SIGMOID), else per-image min-max
  -> MONOCHROME1 inverted.  Float because windowing yields fractional values and
  [0, 1] because the window, not the bit depth, defines the display range.
* `decode_dicom(..., mammo_clip_offline=True)`: uint8, 2-D -- Mammo-CLIP's
  offline PNG recipe (docs/METHOD.md §7.2): raw stored
  pixels, 5 px border crop, MONOCHROME1 inversion, min-max to uint8, breast ROI
  crop.  The final resize to 1520x912 is left to the model's Preprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dissect_study.engine.probes.base import ImageUnreadable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")

#: Mammo-CLIP's offline recipe (docs/METHOD.md §7.2)
BORDER_CROP_PX = 5
ROI_BACKGROUND_MAX = 40
ROI_CENTRAL_FRACTION = 0.8


def _require_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ImageUnreadable(f"{p}: file not found")
    return p


def require_finite(pixels: np.ndarray, where: object) -> np.ndarray:
    """`pixels` unchanged, or ImageUnreadable when a float image holds NaN/inf values.

    A float TIFF or a DICOM (float pixel data, an overflowing rescale) can decode to non-finite
    values; one such image would turn a whole dissection into NaN, so it is skipped and recorded
    like an undecodable file (fatal under --strict).
    """
    a = np.asarray(pixels)
    if a.dtype.kind in "fc":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ImageUnreadable(f"{where}: {bad:,} of {a.size:,} pixel values are NaN or infinite")
    return pixels


# --------------------------------------------------------------------------- PNG / JPEG / TIFF
def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels of a PNG/JPEG/TIFF/BMP file (see the module docstring for dtypes)."""
    from PIL import Image

    p = _require_file(path)
    try:
        with Image.open(p) as im:
            im.load()
            return require_finite(_pil_to_array(im), p)
    except ImageUnreadable:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageUnreadable(f"{p}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def _pil_to_array(im) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.asarray(im).copy()
    if mode == "1":
        return np.asarray(im).astype(np.uint8) * 255
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr.astype(np.float32)
    if mode == "F":
        return np.asarray(im).astype(np.float32)
    if mode in ("LA", "La"):
        return np.asarray(im.convert("L")).copy()
    if mode == "P":
        has_colour = im.palette is not None and im.palette.mode in ("RGB", "RGBA")
        return np.asarray(im.convert("RGB" if has_colour else "L")).copy()
    # RGBA, CMYK, YCbCr, LAB, HSV, RGBX ...
    return np.asarray(im.convert("RGB")).copy()


# --------------------------------------------------------------------------- DICOM
def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a `.dcm`/`.dicom` name or a Part-10 file ("DICM" at byte 128)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def window_linear(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI windowing to [0, 1] (DICOM PS3.3 C.11.2.1.2/.3), pure function.

    LINEAR uses the standard's "-0.5 / w-1" convention, LINEAR_EXACT the plain
    c +- w/2 ramp, SIGMOID the logistic curve with slope 4/w.
    """
    x = np.asarray(x, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width must be > 0, got {width}")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"LINEAR window width must be >= 1, got {width}")
    if width == 1:  # a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0)


def _first(value) -> float:
    try:
        return float(value[0])  # multi-valued element
    except TypeError:
        return float(value)


def _minmax01(x: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]; a constant image maps to zeros (no division by 0)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _read_dicom(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        raise ImageUnreadable(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:
        raise ImageUnreadable(f"{path}: cannot read DICOM ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageUnreadable(f"{path}: DICOM has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        tsx = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageUnreadable(
            f"{path}: cannot decode DICOM pixel data (transfer syntax {tsx}; {type(exc).__name__}: {exc}). "
            "Compressed files may need a pixel-data handler such as pylibjpeg or GDCM."
        ) from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageUnreadable(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export single frames")
    return ds, arr


def decode_dicom(path: str | os.PathLike, mammo_clip_offline: bool = False) -> np.ndarray:
    """Display-ready pixels of a single-frame DICOM (see the module docstring)."""
    p = _require_file(path)
    ds, arr = _read_dicom(p)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour DICOM: pydicom already returns RGB
        if mammo_clip_offline:
            raise ImageUnreadable(f"{p}: mammo_clip_offline needs a greyscale DICOM, got {photometric}")
        require_finite(arr, p)
        return arr.astype(np.uint8) if arr.dtype == np.uint8 else _minmax01(arr).astype(np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageUnreadable(f"{p}: unexpected pixel array shape {arr.shape}")
    require_finite(arr, p)  # float pixel data: NaN/inf would pass every LUT below
    if mammo_clip_offline:
        return mammo_clip_offline_pixels(arr, monochrome1=photometric == "MONOCHROME1")
    try:
        return require_finite(_display_pixels(arr, ds, photometric), f"{p} (after its modality/VOI LUT)")
    except ValueError as exc:
        raise ImageUnreadable(f"{p}: invalid VOI/windowing attributes ({exc})") from exc


def _display_pixels(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi

    m = apply_modality_lut(arr, ds)
    x = m.astype(np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2]) or 16
        idx = m if np.issubdtype(m.dtype, np.integer) else np.rint(x).astype(np.int64)  # LUTs index integers
        y = np.clip(apply_voi(idx, ds, index=0).astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")
        y = window_linear(x, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        y = _minmax01(x)
    if photometric == "MONOCHROME1":
        y = 1.0 - y
    return y.astype(np.float32)


# --------------------------------------------------------------------------- Mammo-CLIP offline recipe
def mammo_clip_offline_pixels(raw: np.ndarray, monochrome1: bool) -> np.ndarray:
    """Border crop -> MONOCHROME1 inversion -> min-max uint8 -> breast ROI crop (docs/METHOD.md §7.2)."""
    x = np.asarray(raw, dtype=np.float64)
    b = BORDER_CROP_PX
    if x.shape[0] > 2 * b and x.shape[1] > 2 * b:
        x = x[b:-b, b:-b]
    if monochrome1:
        x = x.max() - x
    img = np.floor(_minmax01(x) * 255.0 + 0.5).astype(np.uint8)
    return extract_breast_roi(img)


def _longest_true_run(flags: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of True; (0, 0) when there is none (first run wins ties)."""
    best = (0, 0)
    start = None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def _central(n: int, fraction: float) -> slice:
    margin = int(round(n * (1.0 - fraction) / 2.0))
    return slice(margin, max(margin + 1, n - margin))


def extract_breast_roi(
    img: np.ndarray, background_max: int = ROI_BACKGROUND_MAX, central: float = ROI_CENTRAL_FRACTION
) -> np.ndarray:
    """Crop a uint8 mammogram to the breast (our implementation of docs/METHOD.md §7.2).

    Detection runs on a copy with pixels <= `background_max` set to 0 (labels,
    noise and the dark background become one constant).  A column belongs to
    the breast when it is not constant over the central `central` fraction of
    the rows; we keep the longest run of such columns.  Then, inside those
    columns, a row belongs to the breast when it is not constant over the
    central fraction of the (kept) columns; we keep the longest run of rows.
    The original pixels (not the thresholded copy) are cropped.  An image with
    no breast found is returned whole rather than emptied.
    """
    if img.ndim != 2:
        raise ValueError(f"extract_breast_roi needs a 2-D image, got shape {img.shape}")
    det = np.where(img <= background_max, 0, img)
    rows = det[_central(det.shape[0], central), :]
    col_varies = rows.max(axis=0) != rows.min(axis=0)
    c0, c1 = _longest_true_run(col_varies)
    if c1 <= c0:
        return img
    det_c = det[:, c0:c1]
    cols = det_c[:, _central(det_c.shape[1], central)]
    row_varies = cols.max(axis=1) != cols.min(axis=1)
    r0, r1 = _longest_true_run(row_varies)
    if r1 <= r0:
        return img[:, c0:c1]
    return img[r0:r1, c0:c1]


# --------------------------------------------------------------------------- dispatch
def decode_any(path: str | os.PathLike) -> np.ndarray:
    """DICOM or raster image, by suffix, else by the DICOM preamble."""
    p = _require_file(path)
    if is_dicom_file(p):
        return decode_dicom(p)
    return decode_image(p)
