"""Concept sets: the shipped mammo_v1 set, every loader, normalisation and warnings,
and the paper's published workbook (read from ../shared only)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import openpyxl
import pytest

from dissect_study.engine.concepts import (
    MAMMO_CATEGORIES,
    NON_MAMMO_CATEGORY,
    ConceptSetError,
    category_order,
    fold_forms,
    load_concept_set,
)

REQUIRED = [
    "oval mass",
    "round mass",
    "irregular mass",
    "circumscribed margin",
    "obscured margin",
    "microlobulated margin",
    "indistinct margin",
    "spiculated margin",
    "high density mass",
    "equal density mass",
    "low density mass",
    "fat-containing mass",
    "punctate calcifications",
    "amorphous calcifications",
    "coarse heterogeneous calcifications",
    "fine pleomorphic calcifications",
    "fine linear calcifications",
    "rim calcifications",
    "popcorn calcifications",
    "diffuse calcifications",
    "regional calcifications",
    "grouped calcifications",
    "linear calcifications",
    "segmental calcifications",
    "architectural distortion",
    "asymmetry",
    "focal asymmetry",
    "intramammary lymph node",
    "axillary lymph node",
    "skin thickening",
    "breast implant",
    "skin marker",
    "almost entirely fatty",
    "scattered fibroglandular densities",
    "heterogeneously dense",
    "extremely dense",
    "density A",
    "density B",
    "density C",
    "density D",
    "pectoral muscle",
    "nipple",
    "mass",
    "calcification",
    "craniocaudal view",
    "mediolateral oblique view",
    "left breast",
    "right breast",
    "suspicious calcifications",
    "benign calcifications",
]


@pytest.fixture(scope="module")
def shipped():
    return load_concept_set("mammo", "shipped", {"name": "mammo_v1"}, ".")


# --------------------------------------------------------------------------- the shipped set


def test_shipped_file_is_well_formed(repo_dir):
    with open(repo_dir / "concept_sets" / "mammo_v1.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["concept", "category", "subcategory", "domain", "tasks", "variant_of"]
    texts = [r["concept"] for r in rows]
    assert len({t.lower() for t in texts}) == len(texts), "case-insensitive duplicates"
    assert all(t == t.strip() and "  " not in t for t in texts)
    assert all(r["category"] and r["domain"] and r["subcategory"] for r in rows)
    for r in rows:
        tasks = [t for t in r["tasks"].split(";") if t]
        assert set(tasks) <= {"mass", "calcification", "density"}, r
        assert (r["domain"] == "non-mammography") == (r["category"] == NON_MAMMO_CATEGORY), r
    assert set(REQUIRED) <= set(texts)


def test_shipped_set_sizes_and_categories(shipped):
    dom = Counter(c.domain for c in shipped.concepts)
    assert 350 <= dom["mammography"] <= 390 and 375 <= dom["non-mammography"] <= 405  # paper: 369 / 394
    cats = {c.category for c in shipped.concepts}
    assert cats == set(MAMMO_CATEGORIES) | {NON_MAMMO_CATEGORY}
    assert {c.subcategory for c in shipped.concepts if c.domain == "non-mammography"} == {
        "Materials",
        "Natural",
        "Objects",
        "Colours",
    }
    assert shipped.category_order() == [*MAMMO_CATEGORIES, NON_MAMMO_CATEGORY]
    tasks = Counter(t for c in shipped.concepts for t in c.tasks)
    assert all(tasks[t] >= 30 for t in ("mass", "calcification", "density"))  # paper: 73 / 79 / 38
    by = {c.text: c for c in shipped.concepts}
    assert by["punctate calcifications"].tasks == ("calcification",)
    assert by["spiculated margin"].tasks == ("mass",)
    assert by["density C"].tasks == ("density",)
    assert by["nipple"].tasks == () and by["nipple"].category == "Breast anatomy or structure"
    assert by["craniocaudal view"].category == "Breast locations"
    # concept ids are positions, and the frame is the store's `concepts` table
    df = shipped.to_frame()
    assert list(df.columns) == ["concept_set", "concept_id", "concept", "category", "subcategory", "domain", "tasks"]
    assert list(df["concept_id"]) == list(range(len(shipped))) and shipped.texts[5] == df["concept"][5]
    # the shipped set passes its own checks: its overlapping forms are declared intended (variant_of)
    assert shipped.warnings == []
    assert {"density", "densities", "mass", "masses"} <= set(shipped.texts)


def test_category_order_mixes_naming_styles():
    got = category_order(
        [
            "Zebra things",
            "Environmental_and_Natural",
            "Interpretations",
            "Breast_locations",
            "Action or follow up",
            "Alpha",
            None,
        ]
    )
    assert got == [
        "Breast_locations",
        "Interpretations",
        "Action or follow up",
        "Alpha",
        "Zebra things",
        "Environmental_and_Natural",
    ]


def test_fold_forms():
    assert fold_forms("densities") == fold_forms("density")
    assert fold_forms("Lymph-Nodes") == fold_forms("lymph node")
    assert fold_forms("mass") == fold_forms("masses") != fold_forms("glass")


# --------------------------------------------------------------------------- txt / csv / json


def test_txt_normalisation_and_warnings(tmp_path):
    (tmp_path / "c.txt").write_text("oval mass\n\n  round   mass \nOval Mass\ndensity\ndensities\n\n", encoding="utf-8")
    cs = load_concept_set("t", "txt", {"path": "c.txt"}, tmp_path)
    assert cs.texts == ["oval mass", "round mass", "density", "densities"]  # blank lines never shift positions
    assert [c.concept_id for c in cs.concepts] == [0, 1, 2, 3]
    w = " | ".join(cs.warnings)
    assert "2 empty line(s)" in w and "1 duplicate" in w and "'Oval Mass' (= 'oval mass')" in w
    assert "density / densities" in w and "4 concept(s) in no category" in w
    assert all(c.domain == "mammography" and c.category is None for c in cs.concepts)


def test_txt_with_json_categories_and_tasks(tmp_path):
    (tmp_path / "c.txt").write_text("oval mass\nwood\nnipple\n", encoding="utf-8")
    (tmp_path / "cats.json").write_text(
        json.dumps(
            {
                "Findings and characterizations": {"Mass shape": ["oval mass", "ghost"]},
                "Environmental_and_Natural": ["wood"],
            }
        ),
        encoding="utf-8",
    )
    (tmp_path / "tasks.json").write_text(json.dumps({"Mass": ["oval mass", "nope"]}), encoding="utf-8")
    cs = load_concept_set("t", "txt", {"path": "c.txt", "categories": "cats.json", "tasks": "tasks.json"}, tmp_path)
    by = {c.text: c for c in cs.concepts}
    assert (by["oval mass"].category, by["oval mass"].subcategory, by["oval mass"].tasks) == (
        "Findings and characterizations",
        "Mass shape",
        ("mass",),
    )
    assert by["wood"].domain == "non-mammography" and by["wood"].subcategory is None
    assert by["nipple"].category is None
    w = " | ".join(cs.warnings)
    assert "ghost" in w and "'nope' (mass)" in w and "1 concept(s) in no category" in w


def test_csv_loader_columns_and_errors(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(
        "name,group,tags\noval mass,Findings,mass; density\nwood,Environmental and natural,\n,x,\n", encoding="utf-8"
    )
    cs = load_concept_set(
        "s",
        "csv",
        {"path": "s.csv", "concept_column": "name", "category_column": "group", "tasks_column": "tags"},
        tmp_path,
    )
    assert cs.texts == ["oval mass", "wood"]
    assert cs.concepts[0].tasks == ("mass", "density")
    assert [c.domain for c in cs.concepts] == ["mammography", "non-mammography"]  # derived from the category
    assert any("1 row(s) with an empty concept" in w for w in cs.warnings)
    with pytest.raises(ConceptSetError, match=r"no column 'concept' \(columns found: name, group, tags\)"):
        load_concept_set("s", "csv", {"path": "s.csv"}, tmp_path)
    (tmp_path / "bad.csv").write_text("concept,domain\nx,radiology\n", encoding="utf-8")
    with pytest.raises(ConceptSetError, match="domain must be"):
        load_concept_set("s", "csv", {"path": "bad.csv"}, tmp_path)


def test_json_flat_and_errors(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps({"Colours": ["red", "blue"], "Objects": ["chair", "Red"]}), encoding="utf-8"
    )
    cs = load_concept_set("j", "json", {"path": "a.json"}, tmp_path)
    assert cs.texts == ["red", "blue", "chair"]
    assert cs.concepts[0].category == "Objects"  # listed twice: the last listing wins
    assert any("listed more than once" in w for w in cs.warnings)
    (tmp_path / "b.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ConceptSetError, match="invalid JSON at line 1"):
        load_concept_set("j", "json", {"path": "b.json"}, tmp_path)


def test_errors_are_clear(tmp_path):
    with pytest.raises(ConceptSetError, match="concept file not found"):
        load_concept_set("x", "txt", {"path": "missing.txt"}, tmp_path)
    with pytest.raises(ConceptSetError, match="shipped sets are: .*mammo_v1"):
        load_concept_set("x", "shipped", {"name": "mammo_v9"}, tmp_path)
    with pytest.raises(ConceptSetError, match="unknown source 'yaml'"):
        load_concept_set("x", "yaml", {"path": "a"}, tmp_path)
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip file")
    with pytest.raises(ConceptSetError, match="cannot read the workbook"):
        load_concept_set("x", "xlsx", {"path": "bad.xlsx"}, tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ConceptSetError, match="empty"):
        load_concept_set("x", "txt", {"path": "empty.txt"}, tmp_path)


# --------------------------------------------------------------------------- xlsx


def _workbook(path: Path) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Breast_locations"
    ws.append(["Views", "Sides"])
    ws.append(["cc view", "unilateral"])
    ws2 = wb.create_sheet(" Findings and characterizations")  # leading space, as in the paper's file
    ws2.append(["Mass", "Asymmetry"])
    ws2.append(["oval mass", "unilateral"])
    ws2.append(["questionable mass ", None])  # trailing space
    ws3 = wb.create_sheet("Environmental_and_Natural")
    ws3.append(["Materials"])
    ws3.append(["wood"])
    wb.save(path)


def test_xlsx_precedence_domains_and_stripping(tmp_path):
    _workbook(tmp_path / "w.xlsx")
    last = load_concept_set("w", "xlsx", {"path": "w.xlsx"}, tmp_path)
    by = {c.text: c for c in last.concepts}
    assert last.texts == ["cc view", "unilateral", "oval mass", "questionable mass", "wood"]
    assert (by["unilateral"].category, by["unilateral"].subcategory) == ("Findings and characterizations", "Asymmetry")
    assert by["wood"].domain == "non-mammography" and by["oval mass"].domain == "mammography"
    assert any("listed in several places; the last listing wins" in w for w in last.warnings)
    first = load_concept_set("w", "xlsx", {"path": "w.xlsx", "precedence": "first"}, tmp_path)
    assert {c.text: c.category for c in first.concepts}["unilateral"] == "Breast_locations"
    # a txt fixing the list: unmatched concepts are uncategorised mammography concepts, with a warning
    (tmp_path / "c.txt").write_text("wood\nquestionable mass\nnew thing\n", encoding="utf-8")
    cs = load_concept_set("w", "xlsx", {"path": "w.xlsx", "concepts": "c.txt"}, tmp_path)
    assert cs.texts == ["wood", "questionable mass", "new thing"]
    assert cs.concepts[2].category is None and cs.concepts[2].domain == "mammography"
    assert any("counts them as mammography too" in w for w in cs.warnings)
    # exact (unstripped) matching, like the reference notebook: the trailing-space cell matches nothing
    ex = load_concept_set("w", "xlsx", {"path": "w.xlsx", "concepts": "c.txt", "match": "exact"}, tmp_path)
    assert ex.concepts[1].category is None


@pytest.mark.shared
def test_published_workbook_reproduces_paper_sizes(shared_dir):
    ref = shared_dir / "data" / "reference_concepts"
    cs = load_concept_set(
        "paper",
        "xlsx",
        {"path": "Extended_Breast_text_categories.xlsx", "concepts": "Specific_concepts_sorted.txt"},
        ref,
    )
    assert len(cs) == 763
    assert Counter(c.domain for c in cs.concepts) == {"mammography": 369, "non-mammography": 394}
    assert all(c.category is not None for c in cs.concepts)  # every txt concept is in the workbook
    assert len({(c.category, c.subcategory) for c in cs.concepts if c.domain == "mammography"}) == 22
    assert {c.subcategory for c in cs.concepts if c.domain == "non-mammography"} == {
        "Materials",
        "Natural",
        "Objects",
        "Colours",
    }
    per_cat = Counter(c.category for c in cs.concepts)
    # stripped cells: "questionable mass " also matches Interpretations/Suspicious findings (last wins)
    assert per_cat == {
        "Breast_anatomy_or_structure": 31,
        "Breast_locations": 51,
        "Findings and characterizations": 138,
        "Interpretations": 140,
        "Action or follow up": 9,
        "Environmental_and_Natural": 394,
    }
    exact = load_concept_set(
        "paper",
        "xlsx",
        {"path": "Extended_Breast_text_categories.xlsx", "concepts": "Specific_concepts_sorted.txt", "match": "exact"},
        ref,
    )
    assert Counter(c.category for c in exact.concepts)["Findings and characterizations"] == 139  # docs/METHOD.md §6.3
    assert Counter(c.category for c in exact.concepts)["Interpretations"] == 139
    # the paper's task sizes (73/79/38) are not in the workbook: no task tags without a task map
    assert not any(c.tasks for c in cs.concepts)
    sub = Counter(c.subcategory for c in cs.concepts)
    calc = sum(
        sub[s]
        for s in (
            "Calcifications morphology",
            "Calcifications distribution",
            "Benign Calcifications",
            "Suspicious calcifications",
        )
    )
    assert (sub["Mass"], calc, sub["Breast Density"] + sub["Mammographic tissue"]) == (35, 82, 34)
    # without the txt the workbook alone yields the same 763 concepts
    alone = load_concept_set("paper", "xlsx", {"path": "Extended_Breast_text_categories.xlsx"}, ref)
    assert sorted(t.lower() for t in alone.texts) == sorted(t.lower() for t in cs.texts)
    # the one-per-line file loads cleanly: no blank lines or duplicates, but overlapping forms are named
    txt = load_concept_set("paper", "txt", {"path": "Specific_concepts_sorted.txt"}, ref)
    assert len(txt) == 763 and not any("duplicate" in w or "empty line" in w for w in txt.warnings)
    assert any("densities / density" in w for w in txt.warnings)


# --------------------------------------------------------------------------- intended overlapping forms


def test_overlapping_forms_warn_in_a_users_set_unless_declared(tmp_path):
    header = "concept,category,variant_of\n"
    rows = "density,Findings,\ndensities,Findings,{d}\nmass,Findings,\nmasses,Findings,{m}\noval mass,Findings,\n"
    (tmp_path / "plain.csv").write_text(
        "concept,category\ndensity,Findings\ndensities,Findings\nmass,Findings\nmasses,Findings\noval mass,Findings\n",
        encoding="utf-8",
    )
    plain = load_concept_set("u", "csv", {"path": "plain.csv"}, tmp_path)
    assert [w for w in plain.warnings if "overlapping forms" in w] == [
        "plain.csv: 2 group(s) of overlapping forms (kept; labels may split between them; a variant_of column "
        "declares intended ones): density / densities, mass / masses"
    ]
    # one pair declared: only the other is named
    (tmp_path / "half.csv").write_text(header + rows.format(d="density", m=""), encoding="utf-8")
    half = load_concept_set("u", "csv", {"path": "half.csv"}, tmp_path)
    named = [w for w in half.warnings if "overlapping forms" in w or "name no concept" in w]
    assert len(named) == 1 and "1 group(s)" in named[0] and named[0].endswith("declares intended ones): mass / masses")
    # both declared (case and spacing of the target do not matter): silent
    (tmp_path / "both.csv").write_text(header + rows.format(d=" Density ", m="mass"), encoding="utf-8")
    both = load_concept_set("u", "csv", {"path": "both.csv"}, tmp_path)
    assert not [w for w in both.warnings if "overlapping" in w or "name no concept" in w]
    assert both.texts == ["density", "densities", "mass", "masses", "oval mass"]


def test_a_variant_of_typo_silences_nothing_and_is_named(tmp_path):
    (tmp_path / "c.csv").write_text(
        "concept,category,variant_of\nmass,Findings,\nmasses,Findings,mas\noval mass,Findings,\n", encoding="utf-8"
    )
    cs = load_concept_set("u", "csv", {"path": "c.csv"}, tmp_path)
    assert any("variant_of entr(y/ies) name no concept" in w and "'masses' -> 'mas'" in w for w in cs.warnings)
    assert any("overlapping forms" in w and "mass / masses" in w for w in cs.warnings)
    # declaring a variant of a concept outside its group does not silence the group either
    (tmp_path / "d.csv").write_text(
        "concept,category,variant_of\nmass,Findings,\nmasses,Findings,oval mass\noval mass,Findings,\n",
        encoding="utf-8",
    )
    cs = load_concept_set("u", "csv", {"path": "d.csv"}, tmp_path)
    assert any("overlapping forms" in w and "mass / masses" in w for w in cs.warnings)
