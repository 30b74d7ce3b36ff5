"""VinDr-Mammo probes against the real published CSVs (../shared/data/vindr) with stand-in images.

Known answers: docs/METHOD.md §8.1 (4,000 test images, 2,000 CC + 2,000 MLO,
L/R balanced, density A 20 / B 380 / C 3,060 / D 540; finding_annotations has
4,095 test rows for 4,000 images).  Per-finding counts are recomputed here
from the raw files with the csv module, independently of the probe code.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.images import synthetic_breast, write_dicom
from PIL import Image

from dissect_study.engine.probes import ProbeError, build_probe
from dissect_study.engine.probes.base import ImageUnreadable
from dissect_study.engine.probes.compose import apply_sample

pytestmark = pytest.mark.shared

BREAST = "breast-level_annotations.csv"
FINDING = "finding_annotations.csv"
FOLDS = "vindr_detection_v1_folds.csv"


@pytest.fixture(scope="module")
def vdir(shared_dir) -> Path:
    return shared_dir / "data" / "vindr"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vindr_images")


def vindr(vdir: Path, root: Path, csv_name: str, **kw):
    params = {
        "root": str(root),
        "csv": csv_name,
        "split": "test",
        "findings": None,
        "image_format": "png",
        "keep_duplicate_rows": False,
    }
    params.update(kw)
    return build_probe("vindr_test", "vindr", params, SimpleNamespace(base_dir=str(vdir), cache_dir="", log=print))


@pytest.fixture(scope="module")
def breast(vdir, root):
    return vindr(vdir, root, BREAST)


@pytest.fixture(scope="module")
def finding(vdir, root):
    return vindr(vdir, root, FINDING)


@pytest.fixture(scope="module")
def folds(vdir, root):
    return vindr(vdir, root, FOLDS)


def raw_rows(path: Path, split: str = "test") -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def raw_categories(cell: str) -> list[str]:
    return [c.strip().strip("'") for c in cell.strip("[]").split(",") if c.strip()]


# --------------------------------------------------------------------------- published counts
def test_breast_level_test_split_matches_published_counts(breast):
    assert len(breast) == 4000
    c = breast.describe()["counts"]
    assert c["view"] == {"CC": 2000, "MLO": 2000}
    assert c["laterality"] == {"L": 2000, "R": 2000}
    assert c["density"] == {"A": 20, "B": 380, "C": 3060, "D": 540}
    assert c["birads"] == {"1": 2682, "2": 934, "3": 186, "4": 152, "5": 46}
    assert "findings" not in breast.items[0].attributes  # unknown, not "none"
    assert breast.describe()["csv_kind"] == "breast_level"


def test_finding_annotations_dedup_and_duplicate_rows(vdir, root, finding):
    d = finding.describe()
    assert (d["n_rows"], d["n_unique_images"], d["n_duplicate_rows"], len(finding)) == (4095, 4000, 95, 4000)
    assert len({it.image_id for it in finding.items}) == 4000
    assert d["counts"]["density"] == {"A": 20, "B": 380, "C": 3060, "D": 540}
    rows = vindr(vdir, root, FINDING, keep_duplicate_rows=True)
    assert len(rows) == 4095 and len({it.image_id for it in rows.items}) == 4000
    assert [it.attributes["csv_row"] for it in rows.items] == sorted(it.attributes["csv_row"] for it in rows.items)
    # repeated rows of one image carry the same (merged) image attributes
    by_id: dict[str, list[dict]] = {}
    for it in rows.items:
        by_id.setdefault(it.image_id, []).append({k: v for k, v in it.attributes.items() if k != "csv_row"})
    repeated = {k: v for k, v in by_id.items() if len(v) > 1}
    assert sum(len(v) - 1 for v in repeated.values()) == 95
    assert all(all(a == v[0] for a in v) for v in repeated.values())


def test_finding_counts_per_image_match_raw_file(vdir, finding):
    per_image: dict[str, set[str]] = {}
    for r in raw_rows(vdir / FINDING):
        per_image.setdefault(r["image_id"], set()).update(raw_categories(r["finding_categories"]))
    expected = Counter(c for cats in per_image.values() for c in cats if c != "No Finding")
    assert finding.describe()["counts"]["findings"] == dict(sorted(expected.items()))
    assert expected["Mass"] == 219 and expected["Suspicious Calcification"] == 105
    assert sum(it.attributes["mass"] for it in finding.items) == 219
    assert sum(it.attributes["calcification"] for it in finding.items) == 105
    assert sum(not it.attributes["findings"] for it in finding.items) == sum(
        1 for cats in per_image.values() if cats == {"No Finding"}
    )


def test_multi_finding_image_merges_boxes(finding):
    it = next(i for i in finding.items if i.image_id == "5fe8350c930a08ebc532cbb304f5642a")
    a = it.attributes
    assert a["findings"] == ["Suspicious Calcification", "Architectural Distortion"]
    assert a["calcification"] is True and a["mass"] is False and a["birads"] == 5
    assert len(a["boxes"]) == 3 and a["csv_rows"] == 3
    assert a["boxes"][0]["xmin"] == pytest.approx(27.6567) and a["boxes"][0]["birads"] == 5
    assert a["study_id"] == "b57b97020df361371ae1877080433275" and a["view"] == "CC"


# --------------------------------------------------------------------------- Mammo-CLIP folds CSV
def test_folds_csv_is_finding_annotations_plus_extras(vdir, finding, folds):
    assert folds.describe()["csv_kind"] == "mammo_clip_folds"
    assert folds.describe()["n_rows"] == 4095
    assert [i.image_id for i in folds.items] == [i.image_id for i in finding.items]
    for a, b in zip(folds.items, finding.items):
        fa = {k: v for k, v in a.attributes.items() if k not in ("fold", "boxes")}
        fb = {k: v for k, v in b.attributes.items() if k != "boxes"}
        assert fa == fb
        assert len(a.attributes["boxes"]) == len(b.attributes["boxes"])
    boxed = [i for i in folds.items if i.attributes["boxes"]]
    assert all("resized_xmin" in bx for i in boxed for bx in i.attributes["boxes"])
    assert Counter(i.attributes["fold"] for i in folds.items).keys() == {0, 1, 2, 3}  # folds on test rows too


def test_folds_one_hot_and_density_code_agree_with_attributes(vdir, folds):
    attrs = {i.image_id: i.attributes for i in folds.items}
    for r in raw_rows(vdir / FOLDS):
        a = attrs[r["image_id"].removesuffix(".png")]
        cats = raw_categories(r["finding_categories"])
        assert ("Mass" in cats) == (r["Mass"] == "1")
        assert ("Suspicious Calcification" in cats) == (r["Suspicious_Calcification"] == "1")
        if r["Mass"] == "1":  # a row-level finding => an image-level attribute
            assert a["mass"] is True
        assert "ABCD"[int(r["density"])] == a["density"]


def test_breast_level_with_findings_file(vdir, root, breast, finding):
    p = vindr(vdir, root, BREAST, findings=FINDING)
    assert [i.image_id for i in p.items] == [i.image_id for i in breast.items]
    ref = {i.image_id: i.attributes for i in finding.items}
    assert all(i.attributes["findings"] == ref[i.image_id]["findings"] for i in p.items)
    assert p.describe()["n_without_findings_info"] == 0
    with pytest.raises(ProbeError, match="no finding_categories"):
        vindr(vdir, root, FINDING, findings=BREAST)


def test_all_splits(vdir, root):
    every = vindr(vdir, root, FINDING, split="all")
    d = every.describe()
    assert (d["n_rows"], len(every), d["counts"]["split"]) == (20486, 20000, {"test": 4000, "training": 16000})


# --------------------------------------------------------------------------- images
def test_stand_in_pngs_and_dicoms_load(vdir, tmp_path):
    rows = raw_rows(vdir / BREAST)[:4]
    for k, r in enumerate(rows[:2]):
        p = tmp_path / r["study_id"] / f"{r['image_id']}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 5), 10 + k, np.uint8)).save(p)
    Image.fromarray(np.full((8, 5), 99, np.uint8)).save(tmp_path / f"{rows[2]['image_id']}.png")  # flat layout
    p = vindr(vdir, tmp_path, BREAST)
    pos = {i.image_id: n for n, i in enumerate(p.items)}
    assert p.load(pos[rows[0]["image_id"]])[0, 0] == 10
    assert p.load(pos[rows[1]["image_id"]])[0, 0] == 11
    assert p.load(pos[rows[2]["image_id"]])[0, 0] == 99
    with pytest.raises(ImageUnreadable, match="not found"):
        p.load(pos[rows[3]["image_id"]])
    assert p.describe()["n_missing_files"] == 3997

    raw, (r0, r1, c0, c1) = synthetic_breast(monochrome1=True)
    d = tmp_path / "dicom" / rows[0]["study_id"]
    d.mkdir(parents=True)
    write_dicom(d / f"{rows[0]['image_id']}.dicom", raw, "MONOCHROME1", bits_stored=12)
    q = vindr(vdir, tmp_path / "dicom", BREAST, image_format="dicom")
    img = q.load(pos[rows[0]["image_id"]])
    assert img.dtype == np.uint8 and img.shape == (r1 - r0, c1 - c0)
    assert q.describe()["dicom_decoding"] == "mammo_clip_offline"


def test_balanced_sample_on_vindr_density(finding):
    s = apply_sample(finding, {"n": 300, "balanced_by": "density", "seed": 3})
    got = Counter(i.attributes["density"] for i in s.items)
    assert got["A"] == 20 and sorted(got.values()) == [20, 93, 93, 94] and len(s) == 300
    assert s.describe()["counts"]["density"] == dict(sorted((k, v) for k, v in got.items()))
    idx = s.indices
    assert idx == sorted(idx)  # source order kept


# --------------------------------------------------------------------------- bad input
#: the vindr() parameters these tests do not vary, as the checker defaults them
VINDR_DEFAULTS = {"split": "test", "findings": None, "image_format": "png", "keep_duplicate_rows": False}


def test_bad_vindr_csvs(tmp_path):
    ctx = SimpleNamespace(base_dir=str(tmp_path), cache_dir="", log=print)
    base = {"root": str(tmp_path), **VINDR_DEFAULTS}
    (tmp_path / "a.csv").write_text("image_id,laterality,split\nx,L,test\n")
    with pytest.raises(ProbeError) as e:
        build_probe("v", "vindr", {**base, "csv": "a.csv"}, ctx)
    assert "breast_birads" in str(e.value) and "breast_density" in str(e.value) and "a.csv" in str(e.value)

    header = "study_id,image_id,laterality,view_position,breast_birads,breast_density,split\n"
    (tmp_path / "b.csv").write_text(header + "s1,i1,L,CC,BI-RADS 1,DENSITY A,training\n")
    with pytest.raises(ProbeError, match="splits present: training"):
        build_probe("v", "vindr", {**base, "csv": "b.csv"}, ctx)

    (tmp_path / "c.csv").write_text(header + "../../etc,passwd,L,CC,BI-RADS 1,DENSITY A,test\n")
    with pytest.raises(ProbeError, match="outside the root"):
        build_probe("v", "vindr", {**base, "csv": "c.csv"}, ctx)

    (tmp_path / "d.csv").write_text(
        header + "s1,i1,L,CC,BI-RADS 1,DENSITY A,test\ns1,i1,R,CC,BI-RADS 1,DENSITY A,test\n"
    )
    with pytest.raises(ProbeError, match="different laterality"):
        build_probe("v", "vindr", {**base, "csv": "d.csv"}, ctx)


def test_vindr_study_and_view_column_spellings(tmp_path):
    """patient_id/view are accepted for study_id/view_position; with neither, the error names the usual column."""
    ctx = SimpleNamespace(base_dir=str(tmp_path), cache_dir="", log=print)
    base = {"root": str(tmp_path), **VINDR_DEFAULTS}
    row = "s1,i1,L,cc,BI-RADS 2,DENSITY B,test\n"
    (tmp_path / "alt.csv").write_text("patient_id,image_id,laterality,view,breast_birads,breast_density,split\n" + row)
    p = build_probe("v", "vindr", {**base, "csv": "alt.csv"}, ctx)
    a = p.items[0].attributes
    assert (a["study_id"], a["view"], a["birads"], a["density"]) == ("s1", "CC", 2, "B")
    assert Path(p.items[0].path) == tmp_path / "s1" / "i1.png"
    (tmp_path / "none.csv").write_text(
        "image_id,laterality,breast_birads,breast_density,split\ni1,L,BI-RADS 2,DENSITY B,test\n"
    )
    with pytest.raises(ProbeError) as e:
        build_probe("v", "vindr", {**base, "csv": "none.csv"}, ctx)
    assert "study_id" in str(e.value) and "view_position" in str(e.value)
