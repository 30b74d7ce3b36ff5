"""Review packet selection: known answers on a small hand-made layer, and label evidence read from DuckDB."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from dissect_study.engine.review.select import NoEvidenceError, ReviewSelectionError, ReviewSpec, select_neurons

CONCEPTS = pd.DataFrame(
    dict(
        concept_id=[0, 1, 2, 3],
        concept=["mass", "calcification", "dog", "dense breast"],
        category=["Findings", "Findings", "Environmental_and_Natural", "Anatomy"],
        subcategory=["Mass", "Calcification", "Animals", "Density"],
        domain=["mammography", "mammography", "non-mammography", "mammography"],
        tasks=[["mass"], ["calcification"], [], ["density"]],
    )
)
# two layers; unit 5 of L1 is constant (never selected by top/sample)
NEURONS = pd.DataFrame(
    dict(
        layer=["L1"] * 6 + ["L2"] * 3,
        unit=[0, 1, 2, 3, 4, 5, 0, 1, 2],
        concept_id=[0, 1, 2, 1, 3, 1, 2, 1, 0],
        score=[0.9, 0.5, 0.95, 0.7, 0.7, 2.0, 0.1, 0.2, 0.3],
        constant=[False] * 5 + [True] + [False] * 3,
    )
)


def test_top_per_layer_ties_by_unit_and_constant_left_out():
    got = select_neurons(NEURONS, CONCEPTS, ["L1", "L2"], ReviewSpec("top", n=3))
    # L1 scores: u2 .95, u0 .9, u3 .7, u4 .7 (tie -> u3 first); u5 constant
    assert got == [("L1", 2), ("L1", 0), ("L1", 3), ("L2", 2), ("L2", 1), ("L2", 0)]


def test_filter_by_task_and_by_category_with_fallback():
    got = select_neurons(
        NEURONS, CONCEPTS, ["L1"], ReviewSpec("top", n=10, filter_level="task", filter_name="calcification")
    )
    assert got == [("L1", 3), ("L1", 1)]  # u5 also calcification but constant
    # "Calcification" is a subcategory here, not a category: found at the next level, as the analyses do
    same = select_neurons(
        NEURONS, CONCEPTS, ["L1"], ReviewSpec("top", n=10, filter_level="category", filter_name="Calcification")
    )
    assert same == got
    with pytest.raises(ReviewSelectionError, match="'implants'"):
        select_neurons(NEURONS, CONCEPTS, ["L1"], ReviewSpec("top", n=1, filter_name="implants"))


def test_sample_is_seeded_and_matches_numpy():
    spec = ReviewSpec("sample", n=3, seed=11)
    got = select_neurons(NEURONS, CONCEPTS, ["L1"], spec)
    expect = sorted(np.random.default_rng(11).choice(np.array([0, 1, 2, 3, 4]), size=3, replace=False).tolist())
    assert got == [("L1", u) for u in expect]
    assert select_neurons(NEURONS, CONCEPTS, ["L1"], spec) == got
    assert len(select_neurons(NEURONS, CONCEPTS, ["L2"], ReviewSpec("sample", n=30, seed=1))) == 3  # all there are


def test_explicit_units_and_out_of_range():
    assert select_neurons(NEURONS, CONCEPTS, ["L2"], ReviewSpec("units", units=(2, 0))) == [("L2", 2), ("L2", 0)]
    with pytest.raises(ReviewSelectionError, match="no unit 7"):
        select_neurons(NEURONS, CONCEPTS, ["L2"], ReviewSpec("units", units=(7,)))


def test_supported_and_unsupported_from_a_label_evidence_table():
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE label_evidence (run_id VARCHAR, model VARCHAR, layer VARCHAR, unit INTEGER, rank INTEGER, "
        "concept_id INTEGER, concept VARCHAR, auprc DOUBLE, q_value DOUBLE, supported BOOLEAN)"
    )
    rows = [
        ("r", "M", "L1", 0, 1, 0, "mass", 0.8, 0.01, True),
        ("r", "M", "L1", 1, 1, 1, "calcification", 0.3, 0.4, False),
        ("r", "M", "L1", 2, 1, 2, "dog", 0.2, 0.9, False),
        ("r", "M", "L1", 2, 2, 0, "mass", 0.9, 0.001, True),  # rank 2: not the label, ignored
        ("r", "M", "L1", 3, 1, 1, "calcification", 0.7, 0.02, True),
    ]
    con.executemany("INSERT INTO label_evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    ev = con.execute("SELECT * FROM label_evidence WHERE run_id = 'r' AND model = 'M'").df()
    sup = select_neurons(NEURONS, CONCEPTS, ["L1"], ReviewSpec("top", n=10, labels="supported"), ev)
    uns = select_neurons(NEURONS, CONCEPTS, ["L1"], ReviewSpec("top", n=10, labels="unsupported"), ev)
    assert sup == [("L1", 0), ("L1", 3)]
    assert uns == [("L1", 2), ("L1", 1)]  # by score: u2 .95, u1 .5; u4 has no evidence: in neither
    with pytest.raises(NoEvidenceError, match="needs label evidence"):
        select_neurons(NEURONS, CONCEPTS, ["L1"], ReviewSpec("top", n=1, labels="supported"), None)
