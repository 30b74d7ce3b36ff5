"""A folder of DICOM files as a probe.

Files are found by suffix (`.dcm`, `.dicom`) or, for suffix-less files as
PACS exports often write them, by the Part-10 "DICM" preamble.  Header
attributes useful for analysis (view, laterality, study) are read once at build
time without pixel data; patient identifiers are deliberately not copied into
attributes (they would land in the results database and the report).
Pixels go through `decode_dicom` (Modality LUT, VOI LUT / window, MONOCHROME1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import ProbeItem
from dissect_study.engine.probes.decode import decode_dicom, is_dicom_file
from dissect_study.engine.probes.folder import FileProbe, iter_image_files, user_path
from dissect_study.engine.probes.manifest import parse_laterality, parse_view
from dissect_study.engine.registry import PROBES

#: DICOM keyword -> attribute name (no patient identifiers)
HEADER_ATTRIBUTES = {
    "StudyInstanceUID": "study_id",
    "SeriesInstanceUID": "series_id",
    "SOPInstanceUID": "sop_instance_uid",
    "PhotometricInterpretation": "photometric",
    "Rows": "height",
    "Columns": "width",
    "BitsStored": "bits_stored",
    "Manufacturer": "manufacturer",
}


def header_attributes(path: Path) -> dict[str, Any]:
    """Vocabulary attributes from a DICOM header; {} when the header cannot be read."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 -- load() raises ImageUnreadable with the reason
        return {}
    attrs: dict[str, Any] = {}
    view = getattr(ds, "ViewPosition", "") or ""
    if view:
        attrs["view"] = parse_view(view)
    lat = getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", "") or ""
    if lat:
        attrs["laterality"] = parse_laterality(lat)
    for kw, key in HEADER_ATTRIBUTES.items():
        v = getattr(ds, kw, None)
        if v not in (None, ""):
            attrs[key] = int(v) if isinstance(v, int) else str(v)
    return attrs


@PROBES.register("dicom")
def build_dicom(name: str, params: dict[str, Any], ctx: Any) -> FileProbe:
    """`dicom(path, recursive=true)`: every DICOM file under a folder, sorted by relative path."""
    root = user_path(params.get("path"), ctx, f"probe {name}: path", kind="dir")
    recursive = bool(params.get("recursive", True))
    files = [
        f for f in iter_image_files(root, recursive, suffixes=(), log=getattr(ctx, "log", None)) if is_dicom_file(f)
    ]
    if not files:
        raise ProbeError(
            f"probe {name}: no DICOM files (.dcm, .dicom or files with a DICM preamble) under {root}"
            f"{'' if recursive else ' (recursive=false: sub-folders not searched)'}."
        )
    items = [ProbeItem(f.relative_to(root).as_posix(), str(f), header_attributes(f)) for f in files]
    info = {
        "kind": "dicom",
        "root": str(root),
        "recursive": recursive,
        "decoding": "modality LUT, VOI LUT or first window, MONOCHROME1 inverted; float32 in [0, 1]",
    }
    return FileProbe(name, items, info, loader=decode_dicom)
