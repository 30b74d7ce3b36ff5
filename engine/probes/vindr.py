"""VinDr-Mammo probes from the published CSVs or Mammo-CLIP's preprocessed folds CSV.

Three layouts are recognised by their columns:

* `breast_level` -- breast-level_annotations.csv: one row per image
  (study_id, image_id, laterality, view_position, breast_birads,
  breast_density, split); no findings unless `findings=` names a findings CSV.
* `finding_annotations` -- finding_annotations.csv: one row per *finding*,
  so an image with several boxed findings repeats (test split: 4,095 rows,
  4,000 images).  Adds finding_categories (a Python-list repr, parsed without
  eval), finding_birads and a box in original pixels (empty for No Finding).
* `mammo_clip_folds` -- Mammo-CLIP's vindr_detection_v1_folds.csv: the same
  rows as finding_annotations.csv in the same order, with patient_id for
  study_id, `view` for view_position, image_id carrying ".png", boxes also in
  resized (912x1520) coordinates, a `fold` column on *every* row (test rows
  included), one-hot finding columns and a 0-3 `density` code.

By default rows are de-duplicated by image_id (first-occurrence order; the
findings and boxes of repeated rows merged) because a repeated image can take
two of a neuron's top-Z slots (docs/METHOD.md §11.15);
`keep_duplicate_rows=true` keeps one item per CSV row for reference parity.
Images resolve as `<root>/<study_id>/<image_id>.png` (or `.dicom`/`.dcm`),
falling back to `<root>/<image_id>.<ext>`.  DICOM files are decoded with
Mammo-CLIP's offline PNG recipe so they match the published PNGs.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import ProbeItem
from dissect_study.engine.probes.decode import decode_dicom, decode_image
from dissect_study.engine.probes.folder import FileProbe, resolve_inside, user_path
from dissect_study.engine.probes.manifest import (
    parse_birads,
    parse_density,
    parse_list,
    read_csv_text,
    require_columns,
)
from dissect_study.engine.registry import PROBES

NO_FINDING = "No Finding"
CALCIFICATION = "Suspicious Calcification"
MASS = "Mass"
SPLITS = ("test", "training", "all")
_IMAGE_SUFFIXES = (".png", ".dicom", ".dcm", ".jpg")


def csv_kind(columns: list[str]) -> str:
    cols = set(columns)
    if "finding_categories" in cols and "patient_id" in cols:
        return "mammo_clip_folds"
    if "finding_categories" in cols:
        return "finding_annotations"
    if "breast_density" in cols:
        return "breast_level"
    return "unknown"


def _col(cols: set[str], *names: str) -> str | None:
    for n in names:
        if n in cols:
            return n
    return None


def _strip_suffix(image_id: str) -> str:
    for s in _IMAGE_SUFFIXES:
        if image_id.lower().endswith(s):
            return image_id[: -len(s)]
    return image_id


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(text: str) -> int | None:
    v = _float(text)
    return int(v) if v is not None and v == int(v) else None


def read_vindr_rows(path: Path, what: str, split: str = "all") -> tuple[str, list[dict[str, Any]], list[str]]:
    """Parse a VinDr CSV into normalised per-row records of `split` (file order), plus the splits present."""
    table = read_csv_text(path, what)
    kind = csv_kind(list(table.columns))
    cols = set(table.columns)
    # Missing both spellings: require_columns below names the usual one.
    study_col = _col(cols, "study_id", "patient_id") or "study_id"
    view_col = _col(cols, "view_position", "view") or "view_position"
    required = [
        "image_id",
        "laterality",
        "breast_birads",
        "breast_density",
        "split",
        study_col,
        view_col,
    ]
    require_columns(
        table,
        required,
        path,
        what,
        "Expected breast-level_annotations.csv, finding_annotations.csv or Mammo-CLIP's vindr_detection_v1_folds.csv.",
    )
    has_findings = "finding_categories" in cols
    has_resized = {"resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"} <= cols
    rows: list[dict[str, Any]] = []
    present = sorted({r["split"] for r in table.rows})
    for i, r in enumerate(table.rows):
        if split != "all" and r["split"] != split:
            continue
        where = f"{what}: {path.name} row {i + 2}"
        image_id = _strip_suffix(r["image_id"])
        if image_id == "" or r[study_col] == "":
            raise ProbeError(f"{where}: empty image_id or {study_col}.")
        rec: dict[str, Any] = {
            "row": i,
            "image_id": image_id,
            "study_id": r[study_col],
            "series_id": r.get("series_id") or None,
            "view": r[view_col].upper() or None,
            "laterality": r["laterality"].upper() or None,
            "birads": parse_birads(r["breast_birads"], where),
            "density": parse_density(r["breast_density"], where),
            "split": r["split"],
            "height": _int(r.get("height", "")),
            "width": _int(r.get("width", "")),
        }
        if "fold" in cols:
            rec["fold"] = _int(r["fold"])
        if has_findings:
            cats = parse_list(r["finding_categories"])
            rec["categories"] = cats
            box = [_float(r.get(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")]
            if all(v is not None for v in box):
                b: dict[str, Any] = dict(zip(("xmin", "ymin", "xmax", "ymax"), box))
                b["categories"] = [c for c in cats if c != NO_FINDING]
                b["birads"] = parse_birads(r.get("finding_birads", ""), where)
                if has_resized:
                    rb = [_float(r[k]) for k in ("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax")]
                    if all(v is not None for v in rb):
                        b.update(zip(("resized_xmin", "resized_ymin", "resized_xmax", "resized_ymax"), rb))
                rec["box"] = b
        rows.append(rec)
    return kind, rows, present


def findings_by_image(rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[dict[str, Any]]]]:
    """image_id -> (finding categories in first-seen order without "No Finding", boxes)."""
    out: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
    for r in rows:
        if "categories" not in r:
            continue
        cats, boxes = out.setdefault(r["image_id"], ([], []))
        for c in r["categories"]:
            if c != NO_FINDING and c not in cats:
                cats.append(c)
        if "box" in r and r["box"] not in boxes:
            boxes.append(r["box"])
    return out


def _image_attributes(
    first: dict[str, Any], n_rows: int, found: tuple[list[str], list[dict[str, Any]]] | None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        k: first[k]
        for k in ("view", "laterality", "density", "birads", "split", "study_id", "series_id", "height", "width")
    }
    if "fold" in first:
        attrs["fold"] = first["fold"]
    if found is not None:
        cats, boxes = found
        attrs["findings"] = list(cats)
        attrs["mass"] = MASS in cats
        attrs["calcification"] = CALCIFICATION in cats
        attrs["boxes"] = [dict(b) for b in boxes]
    attrs["csv_row"] = first["row"]
    attrs["csv_rows"] = n_rows
    return attrs


def _image_path(
    root: Path, study_id: str, image_id: str, image_format: str, where: str, cache: dict[str, str]
) -> tuple[Path, bool]:
    suffixes = (".png",) if image_format == "png" else (".dicom", ".dcm")
    candidates = [f"{study_id}/{image_id}{s}" for s in suffixes] + [f"{image_id}{s}" for s in suffixes]
    for c in candidates:  # cheap existence checks first, one symlink-resolving check at the end
        if (root / c).is_file():
            return resolve_inside(root, c, where, cache), True
    return resolve_inside(root, candidates[0], where, cache), False


@PROBES.register("vindr")
def build_vindr(name: str, params: dict[str, Any], ctx: Any) -> FileProbe:
    """`vindr(root, csv, split="test", findings=none, image_format="png", keep_duplicate_rows=false)`."""
    what = f"probe {name}"
    root = user_path(params.get("root"), ctx, f"{what}: root", kind="dir")
    csv_path = user_path(params.get("csv"), ctx, f"{what}: csv", kind="file")
    split = params.get("split") or "test"
    image_format = params.get("image_format") or "png"
    keep_dups = bool(params.get("keep_duplicate_rows", False))
    if split not in SPLITS:
        raise ProbeError(f"{what}: split={split!r}; use one of {', '.join(SPLITS)}.")
    kind, rows, present = read_vindr_rows(csv_path, what, split)
    if not rows:
        raise ProbeError(f"{what}: {csv_path} has no rows with split {split!r}; splits present: {', '.join(present)}.")

    findings_path = None
    found_map = findings_by_image(rows) if kind != "breast_level" else None
    if params.get("findings"):
        findings_path = user_path(params["findings"], ctx, f"{what}: findings", kind="file")
        fkind, frows, _ = read_vindr_rows(findings_path, f"{what} (findings)")
        if fkind == "breast_level":
            raise ProbeError(
                f"{what}: findings={findings_path.name} has no finding_categories column; "
                "name finding_annotations.csv or vindr_detection_v1_folds.csv there."
            )
        found_map = findings_by_image(frows)

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["image_id"], []).append(r)
    for image_id, g in groups.items():
        first = g[0]
        for r in g[1:]:
            for k in ("study_id", "view", "laterality", "density", "birads", "split"):
                if r[k] != first[k]:
                    raise ProbeError(
                        f"{what}: {csv_path.name} rows {first['row'] + 2} and {r['row'] + 2} describe image "
                        f"{image_id} with different {k} ({first[k]!r} vs {r[k]!r}); fix the CSV."
                    )

    attrs_by_id: dict[str, dict[str, Any]] = {}
    paths: dict[str, tuple[Path, bool]] = {}
    without_findings = 0
    cache: dict[str, str] = {}
    for image_id, g in groups.items():
        found = found_map.get(image_id) if found_map is not None else None
        if found_map is not None and found is None:
            without_findings += 1
        attrs_by_id[image_id] = _image_attributes(g[0], len(g), found)
        paths[image_id] = _image_path(
            root, g[0]["study_id"], image_id, image_format, f"{what}: {csv_path.name} row {g[0]['row'] + 2}", cache
        )

    chosen = rows if keep_dups else [g[0] for g in groups.values()]
    items = []
    for r in chosen:
        attrs = dict(attrs_by_id[r["image_id"]])
        if keep_dups:
            attrs["csv_row"] = r["row"]
        items.append(ProbeItem(r["image_id"], str(paths[r["image_id"]][0]), attrs))

    loader = decode_image if image_format == "png" else partial(decode_dicom, mammo_clip_offline=True)
    info = {
        "kind": "vindr",
        "csv": str(csv_path),
        "csv_kind": kind,
        "findings_csv": str(findings_path) if findings_path else None,
        "root": str(root),
        "split": split,
        "image_format": image_format,
        "dicom_decoding": "mammo_clip_offline" if image_format == "dicom" else None,
        "keep_duplicate_rows": keep_dups,
        "n_rows": len(rows),
        "n_unique_images": len(groups),
        "n_duplicate_rows": len(rows) - len(groups),
        "n_missing_files": sum(not ok for _, ok in paths.values()),
        "n_without_findings_info": without_findings if found_map is not None else None,
    }
    return FileProbe(name, items, info, loader=loader)
