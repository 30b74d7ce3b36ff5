"""Analyses (RQ1-RQ3) on a hand-built run whose answers are worked out by hand below,
and agreement of the DuckDB macros with the Python functions on the same stored run.

The run: concept set "toy" (16 concepts), models M and C, layers b.2 (index 2) and
b.19 (index 19), four neurons each; top-1 labels and scores:

    M b.2 : u0 nipple 2.5 | u1 wood 2.0 | u2 nipple 3.0 | u3 blue 2.0        mean 2.375  median 2.25
    M b.19: u0 oval mass 5.0 | u1 fine linear 5.5 | u2 extremely dense 3.0 | u3 suspicious 6.0 (constant)
                                                                              mean 4.875  median 5.25
    C b.2 : u0 left breast 3.0 | u1 wood 1.5 | u2 nipple 3.5 | u3 biopsy 0.5   mean 2.125  median 2.25
    C b.19: u0 punctate 6.0 | u1 fine linear 5.5 | u2 oval mass 5.0 | u3 round mass 4.0
                                                                              mean 5.125  median 5.25
Comparison τ (max of means): b.2 = 2.375, b.19 = 5.125.
"""

from __future__ import annotations

import math

import duckdb
import pandas as pd
import pytest

from dissect_study.engine.store import database as store
from dissect_study.engine.analyses.frames import (
    AnalysisError,
    AnalysisInput,
    AnalysisRequest,
    captured_concepts,
    category_counts,
    concept_changes,
    dedup_overlaps,
    keyword_neurons,
    layer_thresholds,
    missed_concepts,
    neuron_profile,
    normalise_phrase,
    resolve_filter,
    run_analysis,
    thresholds_for,
    top_categories,
)

ANAT, LOC, FIND, INTERP, ACT, ENV = ("Breast anatomy or structure", "Breast locations", "Findings and characterizations",
                                     "Interpretations", "Action or follow-up", "Environmental and natural")
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


def _frames() -> dict[str, pd.DataFrame]:
    concepts = pd.DataFrame(CONCEPTS, columns=["concept_id", "concept", "category", "subcategory", "domain", "tasks"])
    concepts.insert(0, "concept_set", "toy")
    layers, neurons, labels = [], [], []
    for (m, l), rows in NEURONS.items():
        scores = [s for _, s, _ in rows]
        layers.append({"model": m, "layer": l, "layer_index": LAYER_INDEX[l], "alias": "last" if l == "b.19" else None,
                       "n_neurons": 4, "tau": sum(scores) / 4, "tau_statistic": "mean_top1",
                       "tau_mean_top1": sum(scores) / 4, "tau_mean_all": -1.0, "tau_median_top1": None})
        for u, (cid, s, const) in enumerate(rows):
            neurons.append({"model": m, "layer": l, "unit": u, "concept_id": cid, "label": TEXT[cid], "score": s, "constant": const})
    for (m, l, u), cids in LABELS.items():
        for r, cid in enumerate(cids, start=1):
            labels.append({"model": m, "layer": l, "unit": u, "rank": r, "concept_id": cid, "concept": TEXT[cid], "score": 10.0 - r})
    top_images = pd.DataFrame([{"model": "M", "layer": "b.19", "unit": 1, "rank": r, "image_idx": i, "activation": 1.0 / r}
                               for r, i in enumerate([7, 3, 9, 1, 4, 8], start=1)])
    return {"concepts": concepts, "layers": pd.DataFrame(layers), "neurons": pd.DataFrame(neurons),
            "neuron_labels": pd.DataFrame(labels), "top_images": top_images,
            "dissections": pd.DataFrame([{"model": m, "concept_set": "toy"} for m in ("M", "C")])}


@pytest.fixture(scope="module")
def inp() -> AnalysisInput:
    f = _frames()
    return AnalysisInput(f["layers"], f["neurons"], f["neuron_labels"], f["top_images"], f["concepts"], f["dissections"])


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("db") / "results.duckdb"
    rec = store.RunRecord(run_id=RUN, run={"study_title": "toy", "status": "ok"})
    for table, df in _frames().items():
        rec.add(table, df)
    store.write_run(path, rec)
    con = store.connect(path)
    store.ensure_schema(con)
    yield con
    con.close()


MAX = {"combine": "max", "statistic": "mean_top1", "op": ">="}
OWN = {"combine": "own", "statistic": "mean_top1", "op": ">="}


def _cap_dict(df: pd.DataFrame) -> dict:
    return {(r.model, r.layer, r.concept): (r.n_neurons, list(r.units), r.max_score, r.threshold) for r in df.itertuples()}


# --------------------------------------------------------------------------- thresholds


def test_layer_thresholds_statistics(inp):
    lt = layer_thresholds(inp, ["M", "C"], None, "mean_top1")
    got = {(r.model, r.layer): r.tau for r in lt.itertuples()}
    assert got == {("M", "b.2"): 2.375, ("M", "b.19"): 4.875, ("C", "b.2"): 2.125, ("C", "b.19"): 5.125}
    assert list(lt["layer"]) == ["b.2", "b.19", "b.2", "b.19"]  # depth order, not string order
    med = layer_thresholds(inp, ["M", "C"], None, "median_top1")  # not stored: computed from neurons
    assert {(r.model, r.layer): r.tau for r in med.itertuples()} == {
        ("M", "b.2"): 2.25, ("M", "b.19"): 5.25, ("C", "b.2"): 2.25, ("C", "b.19"): 5.25}
    assert set(layer_thresholds(inp, ["M"], ["b.19"], "mean_all")["tau"]) == {-1.0}


def test_thresholds_for_rules(inp):
    assert thresholds_for(inp, ["M", "C"], None, MAX) == {
        ("M", "b.2"): 2.375, ("M", "b.19"): 5.125, ("C", "b.2"): 2.375, ("C", "b.19"): 5.125}
    assert thresholds_for(inp, ["M", "C"], ["b.19"], OWN) == {("M", "b.19"): 4.875, ("C", "b.19"): 5.125}
    assert set(thresholds_for(inp, ["M"], None, {"combine": "fixed", "value": 3}).values()) == {3.0}
    with pytest.raises(AnalysisError, match="fixed threshold needs a value"):
        thresholds_for(inp, ["M"], None, {"combine": "fixed"})


# --------------------------------------------------------------------------- captured, counts, top, changes


def test_captured_concepts_max_rule(inp):
    cap = captured_concepts(inp, ["M", "C"], None, MAX)
    assert _cap_dict(cap) == {
        ("M", "b.2", "nipple"): (2, [0, 2], 3.0, 2.375),
        ("M", "b.19", "fine linear calcifications"): (1, [1], 5.5, 5.125),
        ("C", "b.2", "left breast"): (1, [0], 3.0, 2.375),
        ("C", "b.2", "nipple"): (1, [2], 3.5, 2.375),
        ("C", "b.19", "fine linear calcifications"): (1, [1], 5.5, 5.125),
        ("C", "b.19", "punctate calcifications"): (1, [0], 6.0, 5.125),
    }
    assert list(cap.columns) == ["model", "layer", "concept_id", "concept", "category", "subcategory", "domain", "tasks",
                                 "n_neurons", "units", "max_score", "threshold"]


def test_captured_concepts_variants(inp):
    own = _cap_dict(captured_concepts(inp, ["M"], None, OWN))
    assert set(own) == {("M", "b.2", "nipple"), ("M", "b.19", "oval mass"), ("M", "b.19", "fine linear calcifications")}
    # op '>' drops neurons exactly at τ: with a fixed 3.0, u2 of M b.19 (3.0) and M b.2 u2 (3.0) go
    fixed_ge = _cap_dict(captured_concepts(inp, ["M"], None, {"combine": "fixed", "value": 3.0}))
    fixed_gt = _cap_dict(captured_concepts(inp, ["M"], None, {"combine": "fixed", "value": 3.0, "op": ">"}))
    assert set(fixed_ge) - set(fixed_gt) == {("M", "b.2", "nipple"), ("M", "b.19", "extremely dense")}
    # the constant neuron (suspicious, 6.0) only with include_constant
    with_const = _cap_dict(captured_concepts(inp, ["M"], ["b.19"], OWN, include_constant=True))
    assert ("M", "b.19", "suspicious") in with_const and ("M", "b.19", "suspicious") not in own
    # median_top1: M b.2 τ 2.25 -> nipple (2 neurons); M b.19 τ 5.25 -> fine linear only
    med = _cap_dict(captured_concepts(inp, ["M"], None, {"combine": "own", "statistic": "median_top1"}))
    assert med == {("M", "b.2", "nipple"): (2, [0, 2], 3.0, 2.25),
                   ("M", "b.19", "fine linear calcifications"): (1, [1], 5.5, 5.25)}
    # filter on a task category
    calc = captured_concepts(inp, ["M", "C"], None, MAX, ("task", "calcification"))
    assert sorted(calc["concept"]) == ["fine linear calcifications", "fine linear calcifications", "punctate calcifications"]


def test_category_counts_by_hand(inp):
    cap = captured_concepts(inp, ["M", "C"], None, MAX)
    pairs = list(thresholds_for(inp, ["M", "C"], None, MAX))
    cc = category_counts(cap, inp.concepts, pairs)
    get = {(r.model, r.layer, r.level, r.grp): (r.n_concepts, r.n_neurons) for r in cc.itertuples()}
    assert get[("M", "b.2", "category", ANAT)] == (1, 2)  # one concept (nipple), two neurons
    assert get[("M", "b.2", "domain", "mammography")] == (1, 2)
    assert get[("M", "b.2", "domain", "non-mammography")] == (0, 0)
    assert get[("C", "b.2", "category", LOC)] == (1, 1)
    assert get[("C", "b.19", "task", "calcification")] == (2, 2)
    assert get[("C", "b.19", "subcategory", "Calcification morphology")] == (2, 2)
    assert get[("M", "b.19", "task", "mass")] == (0, 0)
    # zero-filled: every (model, layer) has every group of the set, plus the NULL (uncategorised) group
    n_groups = {"category": 7, "subcategory": 11, "domain": 2, "task": 3}
    for lvl, n in n_groups.items():
        assert (cc[cc["level"] == lvl].groupby(["model", "layer"]).size() == n).all(), lvl
    cats = list(cc[(cc["model"] == "M") & (cc["layer"] == "b.2") & (cc["level"] == "category")]["grp"])
    assert cats == [ANAT, LOC, FIND, INTERP, ACT, ENV, None]  # fixed order, NULL last


def test_top_categories_tie_break_is_fixed_order():
    counts = pd.DataFrame([
        ("M", "l", "category", ENV, 3, 9), ("M", "l", "category", INTERP, 3, 1), ("M", "l", "category", FIND, 3, 2),
        ("M", "l", "category", ANAT, 1, 20), ("M", "l", "category", None, 5, 5), ("M", "l", "category", LOC, 0, 0),
    ], columns=["model", "layer", "level", "grp", "n_concepts", "n_neurons"])
    t = top_categories(counts, "concepts")
    # three-way tie at 3 concepts: fixed order Findings < Interpretations < Environmental (not alphabetical)
    assert list(t["category"]) == [FIND, INTERP, ENV] and list(t["rank"]) == [1, 2, 3]
    t = top_categories(counts, "neurons", n=2)
    assert list(t["category"]) == [ANAT, ENV]


def test_concept_changes_table3(inp):
    cap = captured_concepts(inp, ["M", "C"], None, MAX)
    ch = concept_changes(cap, ["M", "C"], ["b.2", "b.19"])
    got = {(r.layer, r.concept): (r.status, r.present_in) for r in ch.itertuples()}
    assert got == {("b.2", "nipple"): ("shared", ["M", "C"]), ("b.2", "left breast"): ("unique", ["C"]),
                   ("b.19", "fine linear calcifications"): ("shared", ["M", "C"]),
                   ("b.19", "punctate calcifications"): ("unique", ["C"])}
    calc = concept_changes(cap, ["M", "C"], ["b.19"], ("task", "calcification"))
    assert set(calc["concept"]) == {"fine linear calcifications", "punctate calcifications"}
    # three models: present in two of three is 'partial'
    cap3 = pd.concat([cap, cap[cap["model"] == "C"].assign(model="X")], ignore_index=True)
    three = concept_changes(cap3, ["M", "C", "X"], ["b.2"])
    assert dict(zip(three["concept"], three["status"])) == {"nipple": "shared", "left breast": "partial"}


# --------------------------------------------------------------------------- learned / missed


def test_normalise_and_dedup_rule():
    assert normalise_phrase("Amorphous  Calcifications") == "amorphou calcification"
    assert normalise_phrase("fat-containing mass") == "fat containing mas"
    learned = ["extremely dense", "amorphous calcification", "fine linear calcifications", "punctate calcifications"]
    missed = ["extremely", "amorphous", "calcification", "dense breast", "linear", "round mass", "fine linear calcification"]
    fwd = dedup_overlaps(missed, learned, "forward")
    assert fwd == {"extremely": "extremely dense", "amorphous": "amorphous calcification",
                   "calcification": "amorphous calcification",  # shortest match; length tie -> alphabetical
                   "linear": "fine linear calcifications",
                   "fine linear calcification": "fine linear calcifications"}  # exact normal form
    assert "dense breast" not in fwd  # "dense" is a sub-word, but "dense breast" is no sub-phrase of a learned one
    both = dedup_overlaps(["nipple retraction", "mass"], ["nipple", "oval mass"], "both")
    assert both == {"nipple retraction": "nipple", "mass": "oval mass"}
    assert dedup_overlaps(["nipple retraction"], ["nipple"], "forward") == {}
    assert dedup_overlaps(["mass"], ["oval mass"], "none") == {}
    assert dedup_overlaps(["linea"], ["linear"], "forward") == {}  # whole words only


def test_missed_concepts_own_rule(inp):
    mc = missed_concepts(inp, "M")  # own τ, all layers: learned = oval mass, fine linear, nipple
    st = dict(zip(mc["concept"], mc["status"]))
    assert {c for c, s in st.items() if s == "learned"} == {"oval mass", "fine linear calcifications", "nipple"}
    ov = dict(zip(mc["concept"], mc["overlap_with"]))
    assert st["mass"] == "missed_overlap" and ov["mass"] == "oval mass"
    assert st["calcification"] == "missed_overlap" and ov["calcification"] == "fine linear calcifications"
    assert st["extremely"] == "missed"  # "extremely dense" is not learned under the own rule
    assert st["nipple retraction"] == "missed"
    assert len(mc) == 16 and (mc["status"] == "missed").sum() == 11
    both = missed_concepts(inp, "M", dedup="both")
    assert dict(zip(both["concept"], both["overlap_with"]))["nipple retraction"] == "nipple"
    fixed = missed_concepts(inp, "M", rule={"combine": "fixed", "value": 3.0})
    f = dict(zip(fixed["concept"], zip(fixed["status"], fixed["overlap_with"])))
    assert f["extremely"] == ("missed_overlap", "extremely dense")  # the paper's own example
    mammo = missed_concepts(inp, "M", filter=("domain", "mammography"))
    assert "wood" not in set(mammo["concept"]) and len(mammo) == 14
    # a single layer: only b.2 -> learned = nipple
    b2 = missed_concepts(inp, "M", layers=["b.2"])
    assert set(b2.loc[b2["status"] == "learned", "concept"]) == {"nipple"}


# --------------------------------------------------------------------------- neurons and keywords


def test_neuron_profile(inp):
    cdf, idf = neuron_profile(inp, "M", "b.19", 1, top=5)
    assert list(cdf["concept"]) == [TEXT[i] for i in LABELS[("M", "b.19", 1)]]
    assert list(cdf["category"])[:2] == [FIND, FIND] and cdf["category"].iloc[4] is None  # "amorphous" uncategorised
    assert list(idf["image_idx"]) == [7, 3, 9, 1, 4]
    with pytest.raises(AnalysisError, match="no neuron"):
        neuron_profile(inp, "M", "nope", 0)


def test_keyword_neurons(inp):
    kw = keyword_neurons(inp, ["M", "C"], None, top=5, min_share=0.6)
    got = {(r.model, r.layer, r.unit): (r.keyword, r.share) for r in kw.itertuples()}
    # M b.19 u1: 3 of 5 labels contain calcification(s); M b.19 u0: 3 of 5 contain "mass" (0.6 >= 0.6)
    assert got == {("M", "b.19", 0): ("mass", 0.6), ("M", "b.19", 1): ("calcification", 0.6)}
    assert keyword_neurons(inp, ["M", "C"], None, top=5, min_share=0.7).empty
    # top 4: u1 keeps 3 of 4 calcification labels, u0 only 2 of 4 "mass"
    top4 = keyword_neurons(inp, ["M"], None, top=4, min_share=0.6)
    assert list(zip(top4["unit"], top4["keyword"], top4["share"])) == [(1, "calcification", 0.75)]
    # top 3 of C b.19 u0: extremely dense / extremely / left breast -> "extremely" 2 of 3
    top3 = keyword_neurons(inp, ["C"], None, top=3, min_share=0.6)
    assert list(zip(top3["keyword"], top3["share"])) == [("extremely", 2 / 3)]


# --------------------------------------------------------------------------- dispatch, filters, store round trip


def test_resolve_filter():
    cs = pd.DataFrame(CONCEPTS, columns=["concept_id", "concept", "category", "subcategory", "domain", "tasks"])
    assert resolve_filter(cs, "category", "Calcification") == ("task", "calcification")  # the user's example
    assert resolve_filter(cs, "category", "findings_and_characterizations") == ("category", FIND)
    assert resolve_filter(cs, None, "mass shape") == ("subcategory", "Mass shape")
    with pytest.raises(AnalysisError, match="no category named 'Nothing'"):
        resolve_filter(cs, "category", "Nothing")


def test_run_analysis_tables_have_store_columns(inp, db):
    req = AnalysisRequest(analysis_id=3, kind="compare", names=("compare",), models=["M", "C"], layers=["b.2", "b.19"],
                          filter_level="category", filter_name="Calcification", threshold=dict(MAX))
    out = run_analysis(req, inp)
    assert set(out) == {"captured_concepts", "category_counts", "top_categories", "concept_changes"}
    learned = run_analysis(AnalysisRequest(4, "learned", models=["M"], threshold={"combine": "own"}), inp)
    kw = run_analysis(AnalysisRequest(5, "keywords", models=["M", "C"], top=5), inp)
    assert run_analysis(AnalysisRequest(6, "show_neuron", models=["M"], unit=1), inp) == {}
    for table, df in [*out.items(), *learned.items(), *kw.items()]:
        cols = [r[0] for r in db.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                         "ORDER BY ordinal_position", [table]).fetchall()]
        assert list(df.columns) == [c for c in cols if c != "run_id"], table
        assert (df["analysis_id"] == df["analysis_id"].iloc[0]).all()
    # "on category Calcification" resolved to the task: only calcification concepts captured
    assert set(out["captured_concepts"]["concept"]) == {"fine linear calcifications", "punctate calcifications"}
    assert set(out["top_categories"]["category"]) == {FIND}
    assert (learned["missed_concepts"]["status"] == "learned").sum() == 3


def _norm(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, float):
        return round(v, 9)
    return v


def _rows(df: pd.DataFrame, cols: list[str]) -> list[tuple]:
    return sorted((tuple(_norm(r[c]) for c in cols) for _, r in df.iterrows()), key=repr)


SQL_RULES = [
    dict(MAX), dict(OWN), {"combine": "own", "statistic": "median_top1", "op": ">"},
    {"combine": "fixed", "statistic": "mean_top1", "value": 3.0, "op": ">="},
]


def _sql_args(rule: dict, flt=None, extra: str = "") -> str:
    a = [f"statistic := '{rule['statistic']}'", f"combine := '{rule['combine']}'", f"op := '{rule.get('op', '>=')}'"]
    if rule.get("value") is not None:
        a.append(f"value := {rule['value']}")
    if flt:
        a += [f"filter_level := '{flt[0]}'", f"filter_name := '{flt[1]}'"]
    return ", ".join(a) + extra


SQL_CASES = [
    (SQL_RULES[0], None), (SQL_RULES[0], ("category", "findings_and_characterizations")),
    (SQL_RULES[1], ("task", "calcification")), (SQL_RULES[2], ("domain", "mammography")), (SQL_RULES[3], None),
]


@pytest.mark.parametrize("rule,flt", SQL_CASES, ids=lambda x: str(x))
def test_sql_matches_python(inp, db, rule, flt):
    models = ["M", "C"]
    m = "models := ['M', 'C']"
    cap = captured_concepts(inp, models, None, rule, flt)
    sql_cap = db.execute(f"FROM captured_concepts('{RUN}', {m}, {_sql_args(rule, flt)})").df()
    assert list(sql_cap.columns) == list(cap.columns)
    assert _rows(sql_cap, list(cap.columns)) == _rows(cap, list(cap.columns))
    assert len(cap) > 0

    counts = category_counts(cap, inp.concepts, list(thresholds_for(inp, models, None, rule)), flt)
    sql_counts = db.execute(f"FROM category_counts('{RUN}', {m}, {_sql_args(rule, flt)})").df()
    assert _rows(sql_counts, list(counts.columns)) == _rows(counts, list(counts.columns))

    for unit in ("concepts", "neurons"):
        top = top_categories(counts, unit)
        sql_top = db.execute(f"FROM top_categories('{RUN}', {m}, {_sql_args(rule, flt)}, count_unit := '{unit}')").df()
        assert _rows(sql_top, list(top.columns)) == _rows(top, list(top.columns))

    ch = concept_changes(cap, models, ["b.2", "b.19"])
    sql_ch = db.execute(f"FROM concept_changes('{RUN}', {m}, {_sql_args(rule, flt)})").df()
    assert _rows(sql_ch, list(ch.columns)) == _rows(ch, list(ch.columns))


@pytest.mark.parametrize("dedup,rule", [("forward", dict(OWN)), ("both", dict(OWN)), ("none", dict(MAX)),
                                        ("forward", {"combine": "fixed", "statistic": "mean_top1", "value": 3.0, "op": ">="})])
def test_sql_missed_matches_python(inp, db, dedup, rule):
    for model in ("M", "C"):
        py = missed_concepts(inp, model, None, rule, dedup, None, ["M", "C"])
        sql = db.execute(f"FROM missed_concepts('{RUN}', '{model}', models := ['M', 'C'], dedup := '{dedup}', "
                         f"{_sql_args(rule)})").df()
        assert list(sql.columns) == list(py.columns)
        assert _rows(sql, list(py.columns)) == _rows(py, list(py.columns))
        assert (py["status"] == "learned").any()


def test_sql_thresholds_keywords_profile(inp, db):
    for stat in ("mean_top1", "median_top1", "mean_all"):
        py = layer_thresholds(inp, ["M", "C"], None, stat)
        sql = db.execute(f"FROM layer_thresholds('{RUN}', models := ['M', 'C'], statistic := '{stat}')").df()
        assert list(sql.columns) == list(py.columns)
        assert _rows(sql, list(py.columns)) == _rows(py, list(py.columns))
        assert list(sql["layer"]) == list(py["layer"])  # same depth order
    for top, share in ((5, 0.6), (5, 0.7), (4, 0.6), (3, 0.6)):
        py = keyword_neurons(inp, None, None, top, share)
        sql = db.execute(f"FROM keyword_neurons('{RUN}', top := {top}, min_share := {share})").df()
        assert _rows(sql, list(py.columns)) == _rows(py, list(py.columns))
    cdf, idf = neuron_profile(inp, "M", "b.19", 1)
    sc = db.execute(f"FROM neuron_profile('{RUN}', 'M', 'b.19', 1)").df()
    si = db.execute(f"FROM neuron_profile_images('{RUN}', 'M', 'b.19', 1)").df()
    assert _rows(sc, list(cdf.columns)) == _rows(cdf, list(cdf.columns))
    assert _rows(si, list(idf.columns)) == _rows(idf, list(idf.columns))
    # reading the run back from the store gives the same answers as the in-memory frames
    back = AnalysisInput.from_store(db, RUN)
    assert _cap_dict(captured_concepts(back, ["M", "C"], None, MAX)) == _cap_dict(captured_concepts(inp, ["M", "C"], None, MAX))
    # the stored table and the macro share a name: the bare name reads the stored table
    assert db.execute("SELECT count(*) FROM captured_concepts").fetchone()[0] == 0
