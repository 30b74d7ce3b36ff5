"""Annotations and concept links: shipped phrases exist, vectors follow the attributes, user CSVs."""

from __future__ import annotations

import numpy as np
import pytest

from dissect_study.engine import annotations as ann


@pytest.fixture(scope="module")
def mammo_texts() -> list[str]:
    return _shipped()


def _shipped() -> list[str]:
    import csv
    from pathlib import Path

    import dissect_study

    path = Path(dissect_study.__file__).parent / "concept_sets" / "mammo_v1.csv"
    with path.open(encoding="utf-8") as f:
        return [r["concept"] for r in csv.DictReader(f)]


def test_every_shipped_phrase_is_in_the_concept_set(mammo_texts):
    have = {t.lower() for t in mammo_texts}
    for key in ann.STRICT_CONCEPTS:
        for p in ann.concept_group(key, lenient=True):
            assert p.lower() in have, f"{key}: '{p}' is not a phrase of mammo_v1"


def test_density_synonyms_from_the_issue(mammo_texts):
    lenient = set(ann.concept_group(("density", "A"), lenient=True))
    assert {"almost entirely fatty", "fatty breast", "predominantly fatty", "BI-RADS density A"} <= lenient
    assert "breast composition A" in lenient
    assert "fatty breast" not in ann.concept_group(("density", "A"), lenient=False)
    assert "CC view" in ann.concept_group(("view", "CC"), lenient=True)
    assert "silicone implant" in ann.concept_group(("implant", True), lenient=True)


def test_phantom_vectors_complete_and_unions():
    attrs = [
        {"density": "A", "calcification": True, "benign_calcification": False, "view": "CC"},
        {"density": "B", "calcification": False, "benign_calcification": True, "view": "MLO"},
        {"density": "A", "calcification": False, "view": "CC"},  # benign key missing: absent on a complete probe
    ]
    texts = ["fatty breast", "calcification", "CC view", "skin marker"]
    vec = ann.concept_vectors(attrs, texts, complete=True)
    assert vec[0][1].tolist() == [1, 0, 1]
    name, v = vec[1]
    assert v.tolist() == [1, 1, 0] and "calcification" in name and "benign_calcification" in name
    assert vec[2][1].tolist() == [1, 0, 1]
    assert 3 not in vec  # no image carries skin_marker: no link


def test_incomplete_probe_keeps_unknowns():
    attrs = [{"density": "C", "findings": ["Mass"]}, {"density": None, "findings": []}, {"density": "A"}]
    texts = ["heterogeneously dense", "mass", "BI-RADS 4"]
    vec = ann.concept_vectors(attrs, texts, complete=False)
    assert np.array_equal(vec[0][1], [1, np.nan, 0], equal_nan=True)
    # "mass" is linked through the finding category (and the boolean `mass`, absent here)
    assert np.array_equal(vec[1][1], [1, 0, np.nan], equal_nan=True)
    assert 2 not in vec


def test_vindr_items_carry_linked_annotations():
    attrs = [{"birads": 4, "findings": ["Suspicious Calcification"], "mass": False, "calcification": True}]
    assert ann.indicator(attrs, ("birads", 4), complete=False).tolist() == [1.0]
    assert ann.indicator(attrs, ("findings", "Mass"), complete=False).tolist() == [0.0]


def test_user_csv(tmp_path):
    f = tmp_path / "ann.csv"
    f.write_text("image_id,concept,present\nimg1,Mass,1\nimg2,mass,0\nimg2,skin marker,yes\nother,mass,1\n")
    out = ann.load_annotation_csv(f, ["img1", "img2", "img3"], ["mass", "skin marker"])
    assert np.array_equal(out["mass"], [1, 0, np.nan], equal_nan=True)
    assert np.array_equal(out["skin marker"], [0, 1, np.nan], equal_nan=True)


def test_user_csv_errors_name_the_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("image_id,concept\nimg1,mas\n")
    with pytest.raises(ann.AnnotationError, match=r"bad.csv:2:1: concept 'mas' .*did you mean 'mass'"):
        ann.load_annotation_csv(f, ["img1"], ["mass"])
    g = tmp_path / "cols.csv"
    g.write_text("id,label\n")
    with pytest.raises(ann.AnnotationError, match="image_id and concept or attribute"):
        ann.load_annotation_csv(g, ["img1"], ["mass"])
    h = tmp_path / "attr.csv"
    h.write_text("image_id,concept,attribute\nimg1,mass,mass\nimg1,,densty=A\n")
    with pytest.raises(ann.AnnotationError, match=r"attr.csv:2:1: give a concept or an attribute"):
        ann.load_annotation_csv(h, ["img1"], ["mass"])
    h.write_text("image_id,attribute\nimg1,densty=A\n")
    with pytest.raises(ann.AnnotationError, match=r"attr.csv:2:1: attribute 'densty=A' .*did you mean 'density=a'"):
        ann.load_annotation_csv(h, ["img1"], ["mass"])


def test_user_csv_attribute_rows_speak_for_every_synonym(tmp_path):
    """`density=A` marks each phrase of the concept set naming density A, synonyms included, and only those."""
    texts = ["almost entirely fatty", "fatty breast", "BI-RADS density A", "dense breast", "mass"]
    want = {t for t in texts if t in ann.concept_group(("density", "A"), lenient=True)}
    assert len(want) >= 3  # the check below means something
    f = tmp_path / "ann.csv"
    f.write_text("image_id,attribute,concept,present\nimg1,density=A,,1\nimg2,density=A,,0\nimg2,,mass,1\n")
    out = ann.load_annotation_csv(f, ["img1", "img2", "img3"], texts)
    assert set(out) == want | {"mass"}
    for t in want:
        assert np.array_equal(out[t], [1, 0, np.nan], equal_nan=True)
    assert np.array_equal(out["mass"], [0, 1, np.nan], equal_nan=True)


@pytest.mark.shared
def test_vindr_finding_annotations_link_to_concepts(shared_dir, tmp_path, mammo_texts):
    """On the VinDr test split: vectors count exactly the images the raw CSV annotates."""
    import csv
    from types import SimpleNamespace

    from dissect_study.engine.probes import build_probe

    vdir = shared_dir / "data" / "vindr"
    params = {
        "root": str(tmp_path),
        "csv": "finding_annotations.csv",
        "split": "test",
        "findings": None,
        "image_format": "png",
        "keep_duplicate_rows": False,
    }
    probe = build_probe("v", "vindr", params, SimpleNamespace(base_dir=str(vdir), cache_dir="", log=print))
    attrs = [it.attributes for it in probe.items]
    vec = ann.concept_vectors(attrs, mammo_texts, complete=probe.has_ground_truth)
    by_text = {mammo_texts[cid]: (name, v) for cid, (name, v) in vec.items()}
    with open(vdir / "finding_annotations.csv", newline="") as fh:
        raw = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    mass_images = {r["image_id"] for r in raw if "Mass" in r["finding_categories"]}
    name, v = by_text["mass"]
    assert "findings=Mass" in name and int(np.nansum(v)) == len(mass_images)
    density_d = {r["image_id"] for r in raw if r["breast_density"].strip().upper().endswith("D")}
    assert int(np.nansum(by_text["BI-RADS density D"][1])) == len(density_d)
    assert int(np.nansum(by_text["craniocaudal view"][1])) == len(
        {r["image_id"] for r in raw if r["view_position"] == "CC"}
    )
    assert any(t.startswith("BI-RADS ") and t[-1].isdigit() for t in by_text)
