"""The analyses -- DuckDB table macros, their one implementation -- on hand-built runs whose
answers are worked out by hand below, and a study run through check + run whose stored
tables must equal the macros called with no arguments but the run.

The run "run-1": concept set "toy" (16 concepts), models M and C, layers b.2 (index 2)
and b.19 (index 19), four neurons each; top-1 labels and scores:

    M b.2 : u0 nipple 2.5 | u1 wood 2.0 | u2 nipple 3.0 | u3 blue 2.0        mean 2.375  median 2.25
    M b.19: u0 oval mass 5.0 | u1 fine linear 5.5 | u2 extremely dense 3.0 | u3 suspicious 6.0 (constant)
                                                                              mean 4.875  median 5.25
    C b.2 : u0 left breast 3.0 | u1 wood 1.5 | u2 nipple 3.5 | u3 biopsy 0.5   mean 2.125  median 2.25
    C b.19: u0 punctate 6.0 | u1 fine linear 5.5 | u2 oval mass 5.0 | u3 round mass 4.0
                                                                              mean 5.125  median 5.25
Comparison τ (max of means): b.2 = 2.375, b.19 = 5.125.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from helpers.paths import REPO as REPO_DIR

from dissect_study.dsl import check_file
from dissect_study.dsl import vocabulary as R
from dissect_study.engine.analyses.macros import AnalysisError, resolve_filter, sql_literal, store_analyses
from dissect_study.engine.registry import ANALYSES
from dissect_study.engine.store import database as store

ANAT, LOC, FIND, INTERP, ACT, ENV = (
    "Breast anatomy or structure",
    "Breast locations",
    "Findings and characterizations",
    "Interpretations",
    "Action or follow-up",
    "Environmental and natural",
)
CONCEPTS = [  # id, text, category, subcategory, domain, tasks
    (0, "oval mass", FIND, "Mass shape", "mammography", ["mass"]),
    (1, "round mass", FIND, "Mass shape", "mammography", ["mass"]),
    (2, "fine linear calcifications", FIND, "Calcification morphology", "mammography", ["calcification"]),
    (3, "punctate calcifications", FIND, "Calcification morphology", "mammography", ["calcification"]),
    (4, "extremely dense", FIND, "Breast composition", "mammography", ["density"]),
    (5, "nipple", ANAT, "Structures", "mammography", []),
    (6, "left breast", LOC, "Views and laterality", "mammography", []),
    (7, "suspicious", INTERP, "Suspicious findings", "mammography", []),
    (8, "biopsy", ACT, "Procedures", "mammography", []),
    (9, "wood", ENV, "Materials", "non-mammography", []),
    (10, "blue", ENV, "Colours", "non-mammography", []),
    (11, "extremely", FIND, "Breast composition", "mammography", ["density"]),
    (12, "calcification", FIND, "Calcification morphology", "mammography", ["calcification"]),
    (13, "mass", FIND, "Mass shape", "mammography", ["mass"]),
    (14, "amorphous", None, None, "mammography", []),
    (15, "nipple retraction", FIND, "Associated features", "mammography", []),
]
TEXT = {c[0]: c[1] for c in CONCEPTS}
NEURONS = {  # (model, layer): [(concept_id, score, constant)] for units 0..3
    ("M", "b.2"): [(5, 2.5, False), (9, 2.0, False), (5, 3.0, False), (10, 2.0, False)],
    ("M", "b.19"): [(0, 5.0, False), (2, 5.5, False), (4, 3.0, False), (7, 6.0, True)],
    ("C", "b.2"): [(6, 3.0, False), (9, 1.5, False), (5, 3.5, False), (8, 0.5, False)],
    ("C", "b.19"): [(3, 6.0, False), (2, 5.5, False), (0, 5.0, False), (1, 4.0, False)],
}
LAYER_INDEX = {"b.2": 2, "b.19": 19}
LABELS = {  # top-5 labels of a few neurons (keyword_neurons, neuron_profile)
    ("M", "b.19", 1): [2, 3, 12, 1, 14],
    ("M", "b.19", 0): [0, 1, 5, 9, 13],
    ("M", "b.2", 0): [5, 6, 9, 10, 8],
    ("C", "b.19", 0): [4, 11, 6, 10, 9],
}
RUN = "run-1"


def _toy(
    neurons: dict[tuple[str, str], list[tuple[int, float, bool]]],
    concepts: list[tuple] = CONCEPTS,
    labels: dict[tuple[str, str, int], list[int]] | None = None,
    tau_mean_all: float | None = -1.0,
) -> dict[str, pd.DataFrame]:
    """Base tables of one run: concept set "toy", the given top-1 labels, stored τ = mean of the top-1 scores."""
    text = {c[0]: c[1] for c in concepts}
    cs = pd.DataFrame(concepts, columns=["concept_id", "concept", "category", "subcategory", "domain", "tasks"])
    cs.insert(0, "concept_set", "toy")
    layers, rows, lab = [], [], []
    for (m, l), units in neurons.items():
        scores = [s for _, s, _ in units]
        layers.append(
            {
                "model": m,
                "layer": l,
                "layer_index": LAYER_INDEX.get(l, 0),
                "alias": "last" if l == "b.19" else None,
                "n_neurons": len(units),
                "tau": sum(scores) / len(units),
                "tau_statistic": "mean_top1",
                "tau_mean_top1": sum(scores) / len(units),
                "tau_mean_all": tau_mean_all,
                "tau_median_top1": None,
            }
        )
        for u, (cid, s, const) in enumerate(units):
            rows.append(
                {
                    "model": m,
                    "layer": l,
                    "unit": u,
                    "concept_id": cid,
                    "label": text[cid],
                    "score": s,
                    "constant": const,
                }
            )
    for (m, l, u), cids in (labels or {}).items():
        for r, cid in enumerate(cids, start=1):
            lab.append(
                {
                    "model": m,
                    "layer": l,
                    "unit": u,
                    "rank": r,
                    "concept_id": cid,
                    "concept": text[cid],
                    "score": 10.0 - r,
                }
            )
    top_images = pd.DataFrame(
        [
            {"model": "M", "layer": "b.19", "unit": 1, "rank": r, "image_idx": i, "activation": 1.0 / r}
            for r, i in enumerate([7, 3, 9, 1, 4, 8], start=1)
        ]
    )
    models = sorted({m for m, _ in neurons})
    return {
        "concepts": cs,
        "layers": pd.DataFrame(layers),
        "neurons": pd.DataFrame(rows),
        "neuron_labels": pd.DataFrame(lab),
        "top_images": top_images,
        "dissections": pd.DataFrame([{"model": m, "concept_set": "toy"} for m in models]),
    }


def _write(
    path: Path, run_id: str, tables: dict[str, pd.DataFrame], analyses: list[dict[str, Any]] = (), derive: bool = False
) -> None:
    rec = store.RunRecord(run_id=run_id, run={"study_title": run_id, "status": "ok"})
    for table, df in tables.items():
        rec.add(table, df)
    for a in analyses:
        rec.add("analyses", a)
    if derive:
        rec.derive.append(store_analyses)
    store.write_run(path, rec)


# Two more hand-built runs.  "ties": one layer whose captured categories tie (concepts) or
# not (neurons): Environmental 3 concepts / 9 neurons, Interpretations 3/3, Findings 3/4,
# Breast anatomy 1/20, uncategorised 5/5, Breast locations 0 (never captured).
TIE_CONCEPTS = (
    [(i, f"env {i}", ENV, None, "non-mammography", []) for i in range(3)]
    + [(3 + i, f"interp {i}", INTERP, None, "mammography", []) for i in range(3)]
    + [(6 + i, f"finding {i}", FIND, None, "mammography", []) for i in range(3)]
    + [(9, "anatomy", ANAT, None, "mammography", []), (15, "location", LOC, None, "mammography", [])]
    + [(10 + i, f"other {i}", None, None, "mammography", []) for i in range(5)]
)
TIE_NEURONS = [0] * 3 + [1] * 3 + [2] * 3 + [3, 4, 5] + [6, 7, 8, 8] + [9] * 20 + [10, 11, 12, 13, 14]
# "dedup": D1 learns DEDUP_1, D2 learns DEDUP_2; every other concept is missed by each.
DEDUP_1 = ["extremely dense", "amorphous calcification", "fine linear calcifications", "punctate calcifications"]
DEDUP_2 = ["nipple", "oval mass"]
DEDUP_MISSED = [
    "extremely",
    "amorphous",
    "calcification",
    "dense breast",
    "linear",
    "round mass",
    "fine linear calcification",
    "linea",
    "nipple retraction",
    "mass",
]
DEDUP_CONCEPTS = [(i, t, FIND, None, "mammography", []) for i, t in enumerate(DEDUP_1 + DEDUP_2 + DEDUP_MISSED)]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("db") / "results.duckdb"
    _write(path, RUN, _toy(NEURONS, labels=LABELS))
    three = {**NEURONS, ("X", "b.2"): NEURONS[("C", "b.2")], ("X", "b.19"): NEURONS[("C", "b.19")]}
    _write(path, "run-3", _toy(three))
    _write(path, "ties", _toy({("T", "l"): [(c, 1.0, False) for c in TIE_NEURONS]}, TIE_CONCEPTS))
    ids = {t: i for i, t, *_ in DEDUP_CONCEPTS}
    _write(
        path,
        "dedup",
        _toy(
            {
                ("D1", "l"): [(ids[t], 1.0, False) for t in DEDUP_1],
                ("D2", "l"): [(ids[t], 1.0, False) for t in DEDUP_2],
            },
            DEDUP_CONCEPTS,
        ),
    )
    con = store.connect(path)
    store.ensure_schema(con)
    yield con
    con.close()


def _q(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _call(con: duckdb.DuckDBPyConnection, name: str, run: str = RUN, *positional: Any, **args: Any) -> list[dict]:
    """Rows of the table macro `name` called with `args` (Python values)."""
    given = [sql_literal(run), *(sql_literal(p) for p in positional)]
    given += [f"{k} := {sql_literal(v)}" for k, v in args.items()]
    return _q(con, f"FROM {name}({', '.join(given)})")


MC = {"models": ["M", "C"]}
OWN = {"combine": "own"}


def _cap(rows: list[dict]) -> dict:
    return {
        (r["model"], r["layer"], r["concept"]): (r["n_neurons"], list(r["units"]), r["max_score"], r["threshold"])
        for r in rows
    }


# --------------------------------------------------------------------------- thresholds


def test_layer_thresholds_statistics(db):
    lt = _call(db, "layer_thresholds", **MC)
    assert {(r["model"], r["layer"]): r["tau"] for r in lt} == {
        ("M", "b.2"): 2.375,
        ("M", "b.19"): 4.875,
        ("C", "b.2"): 2.125,
        ("C", "b.19"): 5.125,
    }
    assert [r["layer"] for r in lt] == ["b.2", "b.19", "b.2", "b.19"]  # depth order, not string order
    med = _call(db, "layer_thresholds", **MC, statistic="median_top1")  # not stored: computed from neurons
    assert {(r["model"], r["layer"]): r["tau"] for r in med} == {
        ("M", "b.2"): 2.25,
        ("M", "b.19"): 5.25,
        ("C", "b.2"): 2.25,
        ("C", "b.19"): 5.25,
    }
    assert {r["tau"] for r in _call(db, "layer_thresholds", models=["M"], layers=["b.19"], statistic="mean_all")} == {
        -1.0
    }


def test_applied_thresholds_rules(db):
    def taus(**args: Any) -> dict:
        return {(r["model"], r["layer"]): r["threshold"] for r in _call(db, "applied_thresholds", **args)}

    assert taus(**MC) == {("M", "b.2"): 2.375, ("M", "b.19"): 5.125, ("C", "b.2"): 2.375, ("C", "b.19"): 5.125}
    assert taus(**MC, layers=["b.19"], **OWN) == {("M", "b.19"): 4.875, ("C", "b.19"): 5.125}
    assert set(taus(models=["M"], combine="fixed", value=3).values()) == {3.0}


# --------------------------------------------------------------------------- captured, counts, top, changes


def test_captured_concepts_max_rule(db):
    cap = _call(db, "captured_concepts", **MC)
    assert _cap(cap) == {
        ("M", "b.2", "nipple"): (2, [0, 2], 3.0, 2.375),
        ("M", "b.19", "fine linear calcifications"): (1, [1], 5.5, 5.125),
        ("C", "b.2", "left breast"): (1, [0], 3.0, 2.375),
        ("C", "b.2", "nipple"): (1, [2], 3.5, 2.375),
        ("C", "b.19", "fine linear calcifications"): (1, [1], 5.5, 5.125),
        ("C", "b.19", "punctate calcifications"): (1, [0], 6.0, 5.125),
    }
    assert [(r["model"], r["layer"]) for r in cap][:3] == [("M", "b.2"), ("M", "b.19"), ("C", "b.2")]  # request order


def test_captured_concepts_variants(db):
    own = _cap(_call(db, "captured_concepts", models=["M"], **OWN))
    assert set(own) == {("M", "b.2", "nipple"), ("M", "b.19", "oval mass"), ("M", "b.19", "fine linear calcifications")}
    # op '>' drops neurons exactly at τ: with a fixed 3.0, u2 of M b.19 (3.0) and M b.2 u2 (3.0) go
    fixed_ge = _cap(_call(db, "captured_concepts", models=["M"], combine="fixed", value=3.0))
    fixed_gt = _cap(_call(db, "captured_concepts", models=["M"], combine="fixed", value=3.0, op=">"))
    assert set(fixed_ge) - set(fixed_gt) == {("M", "b.2", "nipple"), ("M", "b.19", "extremely dense")}
    # the constant neuron (suspicious, 6.0) only with include_constant
    with_const = _cap(_call(db, "captured_concepts", models=["M"], layers=["b.19"], **OWN, include_constant=True))
    assert ("M", "b.19", "suspicious") in with_const and ("M", "b.19", "suspicious") not in own
    # median_top1: M b.2 τ 2.25 -> nipple (2 neurons); M b.19 τ 5.25 -> fine linear only
    med = _cap(_call(db, "captured_concepts", models=["M"], **OWN, statistic="median_top1"))
    assert med == {
        ("M", "b.2", "nipple"): (2, [0, 2], 3.0, 2.25),
        ("M", "b.19", "fine linear calcifications"): (1, [1], 5.5, 5.25),
    }
    # filter on a task
    calc = _call(db, "captured_concepts", **MC, filter_level="task", filter_name="calcification")
    assert sorted(r["concept"] for r in calc) == [
        "fine linear calcifications",
        "fine linear calcifications",
        "punctate calcifications",
    ]


def test_category_counts_by_hand(db):
    cc = _call(db, "category_counts", **MC)
    get = {(r["model"], r["layer"], r["level"], r["grp"]): (r["n_concepts"], r["n_neurons"]) for r in cc}
    assert get[("M", "b.2", "category", ANAT)] == (1, 2)  # one concept (nipple), two neurons
    assert get[("M", "b.2", "domain", "mammography")] == (1, 2)
    assert get[("M", "b.2", "domain", "non-mammography")] == (0, 0)
    assert get[("C", "b.2", "category", LOC)] == (1, 1)
    assert get[("C", "b.19", "task", "calcification")] == (2, 2)
    assert get[("C", "b.19", "subcategory", "Calcification morphology")] == (2, 2)
    assert get[("M", "b.19", "task", "mass")] == (0, 0)
    # zero-filled: every (model, layer) has every group of the set, plus the NULL (uncategorised) group
    df = pd.DataFrame(cc)
    for lvl, n in {"category": 7, "subcategory": 11, "domain": 2, "task": 3}.items():
        assert (df[df["level"] == lvl].groupby(["model", "layer"]).size() == n).all(), lvl
    cats = [r["grp"] for r in cc if (r["model"], r["layer"], r["level"]) == ("M", "b.2", "category")]
    assert cats == [ANAT, LOC, FIND, INTERP, ACT, ENV, None]  # fixed order, NULL last


def test_top_categories_tie_break_is_fixed_order(db):
    t = _call(db, "top_categories", "ties", combine="fixed", value=0.0)
    # three-way tie at 3 concepts: fixed order Findings < Interpretations < Environmental (not alphabetical);
    # the uncategorised group (5 concepts) is never ranked
    assert [(r["rank"], r["category"], r["n_concepts"], r["n_neurons"]) for r in t] == [
        (1, FIND, 3, 4),
        (2, INTERP, 3, 3),
        (3, ENV, 3, 9),
    ]
    t = _call(db, "top_categories", "ties", combine="fixed", value=0.0, count_unit="neurons", n=2)
    assert [r["category"] for r in t] == [ANAT, ENV]


def test_concept_changes_table3(db):
    ch = _call(db, "concept_changes", **MC, layers=["b.2", "b.19"])
    assert {(r["layer"], r["concept"]): (r["status"], r["present_in"]) for r in ch} == {
        ("b.2", "nipple"): ("shared", ["M", "C"]),
        ("b.2", "left breast"): ("unique", ["C"]),
        ("b.19", "fine linear calcifications"): ("shared", ["M", "C"]),
        ("b.19", "punctate calcifications"): ("unique", ["C"]),
    }
    assert [r["layer"] for r in ch] == ["b.2", "b.2", "b.19", "b.19"]
    calc = _call(db, "concept_changes", **MC, layers=["b.19"], filter_level="task", filter_name="calcification")
    assert {r["concept"] for r in calc} == {"fine linear calcifications", "punctate calcifications"}
    # three models (X is a copy of C): present in two of three is 'partial'
    three = _call(db, "concept_changes", "run-3", models=["M", "C", "X"], layers=["b.2"])
    assert {r["concept"]: (r["status"], r["present_in"]) for r in three} == {
        "nipple": ("shared", ["M", "C", "X"]),
        "left breast": ("partial", ["C", "X"]),
    }


# --------------------------------------------------------------------------- learned / missed


def test_normalise_phrase(db):
    def norm(s: str) -> str:
        return db.execute("SELECT normalise_phrase(?)", [s]).fetchone()[0]

    assert norm("Amorphous  Calcifications") == "amorphou calcification"
    assert norm("fat-containing mass") == "fat containing mas"


def test_dedup_rule(db):
    def overlaps(model: str, dedup: str) -> dict[str, str]:
        rows = _call(db, "missed_concepts", "dedup", models=[model], combine="fixed", value=0.5, dedup=dedup)
        assert {r["concept"] for r in rows if r["status"] == "learned"} == set(DEDUP_1 if model == "D1" else DEDUP_2)
        return {r["concept"]: r["overlap_with"] for r in rows if r["status"] == "missed_overlap"}

    assert overlaps("D1", "one_way") == {
        "extremely": "extremely dense",
        "amorphous": "amorphous calcification",
        "calcification": "amorphous calcification",  # shortest match; length tie -> alphabetical
        "linear": "fine linear calcifications",
        "fine linear calcification": "fine linear calcifications",
    }  # exact normal form
    # not listed: "dense breast" ("dense" is a sub-word, but "dense breast" is no sub-phrase of a learned one),
    # "linea" (whole words only)
    assert overlaps("D2", "both") == {"nipple retraction": "nipple", "mass": "oval mass"}
    assert overlaps("D2", "one_way") == {"mass": "oval mass"}
    assert overlaps("D2", "none") == {}


def test_missed_concepts_own_rule(db):
    mc = _call(db, "missed_concepts", models=["M"], **OWN)  # learned = oval mass, fine linear, nipple
    st = {r["concept"]: r["status"] for r in mc}
    ov = {r["concept"]: r["overlap_with"] for r in mc}
    assert {c for c, s in st.items() if s == "learned"} == {"oval mass", "fine linear calcifications", "nipple"}
    assert st["mass"] == "missed_overlap" and ov["mass"] == "oval mass"
    assert st["calcification"] == "missed_overlap" and ov["calcification"] == "fine linear calcifications"
    assert st["extremely"] == "missed"  # "extremely dense" is not learned under the own rule
    assert st["nipple retraction"] == "missed"
    assert len(mc) == 16 and sum(s == "missed" for s in st.values()) == 11
    assert [r["concept_id"] for r in mc] == list(range(16))
    # one model under the default (max) rule uses its own τ
    assert _call(db, "missed_concepts", models=["M"]) == mc
    both = {r["concept"]: r["overlap_with"] for r in _call(db, "missed_concepts", models=["M"], **OWN, dedup="both")}
    assert both["nipple retraction"] == "nipple"
    fixed = {
        r["concept"]: (r["status"], r["overlap_with"])
        for r in _call(db, "missed_concepts", models=["M"], combine="fixed", value=3.0)
    }
    assert fixed["extremely"] == ("missed_overlap", "extremely dense")  # the paper's own example
    mammo = _call(db, "missed_concepts", models=["M"], **OWN, filter_level="domain", filter_name="mammography")
    assert "wood" not in {r["concept"] for r in mammo} and len(mammo) == 14
    b2 = _call(db, "missed_concepts", models=["M"], layers=["b.2"], **OWN)  # only b.2 -> learned = nipple
    assert {r["concept"] for r in b2 if r["status"] == "learned"} == {"nipple"}
    # several models: each one's rows, in the request's order, learned under the max over all of them
    two = _call(db, "missed_concepts", models=["C", "M"])
    assert [r["model"] for r in two] == ["C"] * 16 + ["M"] * 16
    assert {r["concept"] for r in two if r["model"] == "M" and r["status"] == "learned"} == {
        "nipple",
        "fine linear calcifications",
    }


# --------------------------------------------------------------------------- neurons and keywords


def test_neuron_profile(db):
    cdf = _call(db, "neuron_profile", RUN, "M", "b.19", 1)
    assert [r["concept"] for r in cdf] == [TEXT[i] for i in LABELS[("M", "b.19", 1)]]
    assert [r["category"] for r in cdf][:2] == [FIND, FIND] and cdf[4]["category"] is None  # "amorphous"
    assert [r["image_idx"] for r in _call(db, "neuron_profile_images", RUN, "M", "b.19", 1)] == [7, 3, 9, 1, 4]
    assert len(_call(db, "neuron_profile", RUN, "M", "b.19", 1, top=3)) == 3


def test_keyword_neurons(db):
    def kw(**args: Any) -> list[tuple]:
        return [
            (r["model"], r["layer"], r["unit"], r["keyword"], r["share"]) for r in _call(db, "keyword_neurons", **args)
        ]

    # M b.19 u0: 3 of 5 labels contain "mass"; u1: 3 of 5 contain calcification(s)
    assert kw(**MC, min_share=0.6) == [("M", "b.19", 0, "mass", 0.6), ("M", "b.19", 1, "calcification", 0.6)]
    assert kw(**MC, min_share=0.7) == []
    # top 4: u1 keeps 3 of 4 calcification labels, u0 only 2 of 4 "mass" -- listed at the default min_share 0.5
    assert kw(models=["M"], top=4, min_share=0.6) == [("M", "b.19", 1, "calcification", 0.75)]
    assert kw(models=["M"], top=4) == [("M", "b.19", 0, "mass", 0.5), ("M", "b.19", 1, "calcification", 0.75)]
    # top 3 of C b.19 u0: extremely dense / extremely / left breast -> "extremely" 2 of 3
    assert [(k, s) for *_, k, s in kw(models=["C"], top=3)] == [("extremely", 2 / 3)]


# --------------------------------------------------------------------------- filters, specs, storing


def test_resolve_filter(db):
    assert resolve_filter(db, RUN, "category", "Calcification") == ("task", "calcification")  # the user's example
    assert resolve_filter(db, RUN, "category", "findings_and_characterizations") == ("category", FIND)
    assert resolve_filter(db, RUN, None, "mass shape") == ("subcategory", "Mass shape")
    assert resolve_filter(db, RUN, "domain", "Non-Mammography") == ("domain", "non-mammography")
    with pytest.raises(AnalysisError, match="no category named 'Nothing'"):
        resolve_filter(db, RUN, "category", "Nothing")


def test_every_analysis_macro_returns_its_spec_columns(db):
    positional = {"neuron_profile": ("M", "b.19", 1)}
    assert set(ANALYSES.names()) == set(R.ANALYSES)
    for name, spec in R.ANALYSES.items():
        args = ", ".join(sql_literal(v) for v in (RUN, *positional.get(name, ())))
        got = [(c[0], c[1]) for c in db.execute(f"DESCRIBE FROM {name}({args})").fetchall()]
        assert got == [(c.name, c.type) for c in spec.columns], name
        if spec.stored:  # the results table is the spec's columns, keyed by run and statement
            table = db.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [name],
            ).fetchall()
            assert table == [("run_id", "VARCHAR"), ("analysis_id", "INTEGER"), *got], name
        assert all(s in R.REPORT_SECTIONS for s in spec.sections), name
    view = db.execute("DESCRIBE FROM layer_thresholds").fetchall()  # the stored form of layer_thresholds
    assert [c[0] for c in view] == ["run_id", *(c.name for c in R.ANALYSES["layer_thresholds"].columns)]


def test_every_option_default_is_the_macros_default(db):
    """The checker fills options from the specs; a macro called without them must use the same values."""
    for name, spec in R.ANALYSES.items():
        ddl = ANALYSES.get(name).ddl()
        for p in spec.options:
            assert f"{p.name} := {sql_literal(p.default)}" in ddl, (name, p.name)
    rule = R.DEFAULT_THRESHOLD
    for name in ("captured_concepts", "category_counts", "top_categories", "concept_changes", "missed_concepts"):
        ddl = ANALYSES.get(name).ddl()
        assert all(f"{k} := '{v}'" in ddl for k, v in rule.items()), name
    assert R.statement_options("keywords")["min_share"].default == 0.5  # docs/LANGUAGE.md, docs/METHOD.md §5.9


def test_the_language_manual_states_each_option_with_its_default():
    doc = (REPO_DIR / "docs" / "LANGUAGE.md").read_text(encoding="utf-8")
    for spec in R.ANALYSES.values():
        for p in spec.options:
            default = re.escape(str(p.default))
            stated = rf"`{p.name}[^`]*` \(default `?{default}`?\)|`{p.name}` defaults to {default}\b"
            assert re.search(stated, doc), (spec.name, p.name, p.default)


def _statement(
    aid: int,
    kind: str,
    models: list[str],
    layers: list[str],
    rule: dict | None = None,
    filt: tuple[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    return dict(
        analysis_id=aid,
        kind=kind,
        analysis_names=list(R.statement_analyses(kind)),
        statement=f"{kind} ...",
        models=models,
        layers=layers,
        filter_level=filt[0] if filt else None,
        filter_name=filt[1] if filt else None,
        threshold_rule={**R.DEFAULT_THRESHOLD, "value": None, **(rule or {})},
        count_unit="concepts",
        options=options,
    )


def test_store_analyses_fills_tables_with_the_macros_and_records_the_filter_used(tmp_path):
    path = tmp_path / "r.duckdb"
    statements = [
        _statement(0, "compare", ["M", "C"], ["b.2", "b.19"], filt=("category", "Calcification")),
        _statement(1, "learned", ["M"], ["b.2", "b.19"], OWN, dedup="both"),
        _statement(2, "keywords", ["M", "C"], ["b.2", "b.19"], top=4, min_share=0.5),
        _statement(3, "thresholds", ["M"], ["b.2", "b.19"]),
    ]
    _write(path, RUN, _toy(NEURONS, labels=LABELS), statements, derive=True)
    con = store.connect(path, read_only=True)
    # "on category Calcification" is the task: recorded as used, and applied
    assert con.execute("SELECT filter_level, filter_name FROM analyses WHERE analysis_id = 0").fetchone() == (
        "task",
        "calcification",
    )
    cap = _q(con, "SELECT * EXCLUDE (run_id, analysis_id) FROM captured_concepts WHERE analysis_id = 0")
    assert {r["concept"] for r in cap} == {"fine linear calcifications", "punctate calcifications"}
    top = _q(con, "SELECT * FROM top_categories")
    assert {(r["analysis_id"], r["category"]) for r in top} == {(0, FIND)}

    def stored(table: str, aid: int) -> list[tuple]:
        return sorted(
            map(repr, _q(con, f"SELECT * EXCLUDE (run_id, analysis_id) FROM {table} WHERE analysis_id = {aid}"))
        )

    def computed(name: str, **args: Any) -> list[tuple]:
        return sorted(map(repr, _call(con, name, **args)))

    calc = {"filter_level": "task", "filter_name": "calcification"}
    for table in ("captured_concepts", "category_counts", "top_categories", "concept_changes"):
        assert stored(table, 0) == computed(table, **MC, **calc) != [], table
    assert stored("missed_concepts", 1) == computed("missed_concepts", models=["M"], **OWN, dedup="both") != []
    assert stored("captured_concepts", 1) == computed("captured_concepts", models=["M"], **OWN)
    assert stored("keyword_neurons", 2) == computed("keyword_neurons", **MC, top=4) != []
    assert con.execute("SELECT count(*) FROM captured_concepts WHERE analysis_id = 3").fetchone()[0] == 0


def test_a_rule_without_tau_fails_the_run_and_writes_nothing(tmp_path):
    path = tmp_path / "r.duckdb"
    statements = [_statement(0, "compare", ["M", "C"], ["b.2", "b.19"], {"statistic": "mean_all"})]
    with pytest.raises(AnalysisError, match=r"no τ for M b\.2.*under statistic 'mean_all'.*kept S"):
        _write(path, RUN, _toy(NEURONS, tau_mean_all=None), statements, derive=True)
    con = store.connect(path, read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM neurons").fetchone()[0] == 0


# --------------------------------------------------------------------------- a study, end to end

STUDY = """study "analysis defaults"
concepts c = csv("concepts.csv")
probe p = phantom(n=40, seed=5, height=64)
dissector d = demo()
target A = demo("G")
target B = demo("M")
dissect A, B at layers all by d on p with concepts c using soft_wpmi(top_k=8)
compare A vs B
learned A, B
gained A over B
keywords A, B
keywords A, B top 4
analyze top_categories of A, B
"""

# few words in many concepts, so that neurons' top labels share words (keywords) and
# missed concepts are parts of learned ones (de-dup)
_NOUNS = {
    "mass": (FIND, "mammography", "mass"),
    "calcification": (FIND, "mammography", "calcification"),
    "nipple": (ANAT, "mammography", ""),
    "breast": (LOC, "mammography", ""),
    "wood": (ENV, "non-mammography", ""),
}
_ADJECTIVES = ("oval", "round", "fine", "dense", "left", "dark", "bright", "small")
STUDY_CONCEPTS = "concept,category,subcategory,domain,tasks\n" + "".join(
    f"{text},{cat},,{dom},{task}\n"
    for noun, (cat, dom, task) in _NOUNS.items()
    for text in (noun, *(f"{adj} {noun}" for adj in _ADJECTIVES))
)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory) -> tuple[duckdb.DuckDBPyConnection, str]:
    from helpers.tiny import TinyDissector, TinyTarget

    from dissect_study.engine import models as model_factories
    from dissect_study.engine.run import RunOptions, run_study

    tmp = tmp_path_factory.mktemp("study")
    (tmp / "s.study").write_text(STUDY, encoding="utf-8")
    (tmp / "concepts.csv").write_text(STUDY_CONCEPTS, encoding="utf-8")
    study, diags = check_file(str(tmp / "s.study"))
    assert study is not None, diags
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model_factories, "build_dissector", lambda name, func, params, ctx: TinyDissector())
        mp.setattr(
            model_factories,
            "build_target",
            lambda name, func, params, ctx: TinyTarget(name, seed={"G": 1, "M": 2}[params["variant"]]),
        )
        result = run_study(
            study,
            RunOptions(db=tmp / "r.duckdb", cache_dir=tmp / "cache", quiet=True, reports=False, calibration=False),
        )
    con = store.connect(result.db, read_only=True)
    yield con, result.run_id
    con.close()


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    return sorted(repr({k: _plain(v) for k, v in r.items()}) for r in _q(con, sql))


def _plain(v: Any) -> Any:
    return round(v, 12) if isinstance(v, float) and math.isfinite(v) else v


def test_stored_tables_equal_the_macros_called_with_no_arguments(study_run):
    """Every statement above gives no options and no threshold: what the checker fills in
    must be what the macros assume, so each stored table equals its macro called with the
    run alone (the statements cover every model and layer of the run)."""
    con, run = study_run
    statements = _q(
        con, "SELECT analysis_id, kind, analysis_names, options, threshold_rule FROM analyses ORDER BY analysis_id"
    )
    assert [s["kind"] for s in statements] == ["compare", "learned", "gained", "keywords", "keywords", "analyze"]
    assert json.loads(statements[1]["options"]) == {"dedup": "one_way"}
    assert json.loads(statements[3]["options"]) == {"top": 5, "min_share": 0.5}
    given = {4: ", top := 4"}  # `keywords A, B top 4`: the one option a statement gives
    checked = 0
    for s in statements:
        for name in s["analysis_names"]:
            stored = _rows(
                con, f"SELECT * EXCLUDE (run_id, analysis_id) FROM {name} WHERE analysis_id = {s['analysis_id']}"
            )
            call = f"FROM {name}({sql_literal(run)}{given.get(s['analysis_id'], '')})"
            assert stored == _rows(con, call), (s["kind"], name)
            assert stored, (s["kind"], name)
            checked += 1
    assert checked == 10
    # the defaults matter on this data: other values give other tables.  Whether they do
    # depends on the phantoms' pixels through the tiny models' labels: after the renderer
    # changed (nipple, asymmetry) seed 3 no longer told the de-dup modes apart, seed 5 does
    assert _rows(con, "SELECT * EXCLUDE (run_id, analysis_id) FROM captured_concepts WHERE analysis_id = 0") != _rows(
        con, f"FROM captured_concepts({sql_literal(run)}, combine := 'own')"
    )
    assert _rows(con, "SELECT * EXCLUDE (run_id, analysis_id) FROM missed_concepts") != _rows(
        con, f"FROM missed_concepts({sql_literal(run)}, dedup := 'both')"
    )
    # `top 4` alone: min_share keeps its default 0.5, and neurons with 2 of 4 labels sharing a word are listed
    top4 = _rows(con, "SELECT * EXCLUDE (run_id, analysis_id) FROM keyword_neurons WHERE analysis_id = 4")
    assert top4 != _rows(con, f"FROM keyword_neurons({sql_literal(run)}, top := 4, min_share := 0.6)")
    assert con.execute("SELECT count(*) FROM keyword_neurons WHERE analysis_id = 4 AND share = 0.5").fetchone()[0] > 0
