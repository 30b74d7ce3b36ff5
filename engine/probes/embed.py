"""EMBED-style probes: the Emory Breast Imaging Dataset's metadata CSV layout.

EMBED's tables name images by `anon_dicom_path` (absolute paths on the
curators' server, e.g. `/mnt/NAS2/mammo/anon_dicom/cohort_1/...`), views by
`ViewPosition`, sides by `ImageLateralityFinal`, density by `tissueden`
(1-4 = A-D, 5 = male) and the exam assessment by `asses` (BI-RADS letters).
We map those onto the shared vocabulary and keep every other column as an
extra attribute (so `sample ... balanced by implant` works on a user column).

Absolute paths that lie outside `root` are re-rooted when the root's folder
name appears in them (`/mnt/.../anon_dicom/x/y.dcm` with root `.../anon_dicom`
becomes `<root>/x/y.dcm`); the result must still resolve inside the root.
DICOM files go through `decode_dicom` (windowing, MONOCHROME1); PNG files
through `decode_image`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import ProbeItem
from dissect_study.engine.probes.folder import FileProbe, is_inside, resolve_inside, user_path
from dissect_study.engine.probes.manifest import (
    parse_laterality,
    parse_view,
    read_csv_text,
    require_columns,
    row_attributes,
)
from dissect_study.engine.registry import PROBES

#: EMBED `asses` letters -> BI-RADS assessment category
ASSES_TO_BIRADS = {"A": 0, "N": 1, "B": 2, "P": 3, "S": 4, "M": 5, "K": 6}
TISSUEDEN_TO_DENSITY = {"1": "A", "2": "B", "3": "C", "4": "D"}


def reroot(path_text: str, root: Path) -> str | None:
    """The part of an absolute EMBED path after the root's folder name, or None."""
    parts = PurePosixPath(path_text.replace("\\", "/")).parts
    name = root.name
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == name and i + 1 < len(parts):
            return "/".join(parts[i + 1 :])
    return None


def embed_attributes(row: dict[str, str], skip: list[str], where: str) -> dict[str, Any]:
    attrs = row_attributes(row, skip=skip, where=where)
    if "ViewPosition" in row and "view" not in row:
        attrs["view"] = parse_view(row["ViewPosition"] or None)
    lat = row.get("ImageLateralityFinal") or row.get("ImageLaterality") or ""
    if lat and "laterality" not in row:
        attrs["laterality"] = parse_laterality(lat)
    if "tissueden" in row and "density" not in row:
        t = row["tissueden"].split(".")[0]
        attrs["density"] = TISSUEDEN_TO_DENSITY.get(t)
    if "asses" in row and "birads" not in row:
        attrs["birads"] = ASSES_TO_BIRADS.get(row["asses"].strip().upper())
    return attrs


@PROBES.register("embed")
def build_embed(name: str, params: dict[str, Any], ctx: Any) -> FileProbe:
    """`embed(csv, root, path_column="anon_dicom_path", id_column=none)`, rows in file order."""
    what = f"probe {name}"
    csv_path = user_path(params.get("csv"), ctx, f"{what}: csv", kind="file")
    root = user_path(params.get("root"), ctx, f"{what}: root", kind="dir")
    path_col = params.get("path_column") or "anon_dicom_path"
    id_col = params.get("id_column")
    table = read_csv_text(csv_path, what)
    require_columns(
        table,
        [path_col] + ([id_col] if id_col else []),
        csv_path,
        what,
        "Set path_column=/id_column= to the columns holding the image path and id.",
    )
    if len(table) == 0:
        raise ProbeError(f"{what}: {csv_path} has a header but no rows.")
    root_real = Path(root).resolve()
    items: list[ProbeItem] = []
    rerooted = 0
    cache: dict[str, str] = {}
    for i, row in enumerate(table.rows):
        where = f"{what}: {csv_path.name} row {i + 2}"
        text = row[path_col]
        if text == "":
            raise ProbeError(f"{where}: empty {path_col!r} cell; every row needs an image path.")
        rel = text
        if Path(text).is_absolute() and not is_inside(Path(text).resolve(), root_real):
            sub = reroot(text, root)
            if sub is None:
                raise ProbeError(
                    f"{where}: absolute path {text!r} lies outside root {root} and does not contain the root's "
                    f"folder name {root.name!r}; set root= to the folder that mirrors the CSV's path prefix "
                    "or rewrite the column as paths relative to root."
                )
            rel, rerooted = sub, rerooted + 1
        path = resolve_inside(root, rel, where, cache)
        image_id = row[id_col] if id_col else text
        attrs = embed_attributes(row, skip=[path_col] + ([id_col] if id_col else []), where=where)
        items.append(ProbeItem(str(image_id), str(path), attrs))
    info = {
        "kind": "embed",
        "csv": str(csv_path),
        "root": str(root),
        "path_column": path_col,
        "id_column": id_col,
        "n_rerooted_paths": rerooted,
        "n_missing_files": sum(not Path(it.path).is_file() for it in items),
    }
    return FileProbe(name, items, info)
