"""Label evidence end to end with the tiny models: schema, user CSV annotations, ceilings, report."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from helpers.tiny import STUDY, _run

from dissect_study.engine.analyses import evidence as ev
from dissect_study.errors import DissectStudyError

#: the exact schema other code selects on
LABEL_EVIDENCE = [
    ("run_id", "VARCHAR"),
    ("model", "VARCHAR"),
    ("layer", "VARCHAR"),
    ("unit", "INTEGER"),
    ("rank", "INTEGER"),
    ("concept_id", "INTEGER"),
    ("concept", "VARCHAR"),
    ("annotation", "VARCHAR"),
    ("n_images", "INTEGER"),
    ("n_positive", "INTEGER"),
    ("base_rate", "DOUBLE"),
    ("auprc", "DOUBLE"),
    ("auprc_lift", "DOUBLE"),
    ("pearson", "DOUBLE"),
    ("f1", "DOUBLE"),
    ("iou", "DOUBLE"),
    ("binarisation", "VARCHAR"),
    ("p_value", "DOUBLE"),
    ("q_value", "DOUBLE"),
    ("supported", "BOOLEAN"),
]


def _csv_study(tmp_path: Path, extra: str) -> str:
    return STUDY.replace("using soft_wpmi(top_k=8)", f"using soft_wpmi(top_k=8) {extra}")


@pytest.mark.slow
def test_run_stores_label_evidence_with_user_annotations(tmp_path: Path, tiny_models) -> None:
    from dissect_study.engine.phantom.probe import PhantomProbe

    ids = [it.image_id for it in PhantomProbe(n=30, seed=5, height=64).items]
    # "stellate lesion": no shipped link; the CSV annotates 20 of the 30 images
    rows = ["image_id,concept,present"] + [f"{i},stellate lesion,{int(n % 3 == 0)}" for n, i in enumerate(ids[:20])]
    (tmp_path / "ann.csv").write_text("\n".join(rows) + "\n")
    _, db = _run(tmp_path, _csv_study(tmp_path, 'annotations "ann.csv" evidence_top 1000'), calibration=True)
    con = duckdb.connect(str(db), read_only=True)
    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'label_evidence' "
        "ORDER BY ordinal_position"
    ).fetchall()
    assert cols == LABEL_EVIDENCE
    df = con.execute("SELECT * FROM label_evidence").df()
    assert len(df) and df["rank"].max() <= 767
    # every stored row re-computes from the stored q / effect
    want = (df["q_value"] < 0.05) & (df["auprc"] > df["base_rate"]) & (df["pearson"] > 0)
    assert (df["supported"] == want).all()
    assert np.allclose(df["q_value"], ev.benjamini_hochberg(df["p_value"].to_numpy()), equal_nan=True)
    # labels' concepts are those stored as the neurons' top labels
    joined = con.execute(
        "SELECT count(*) FROM label_evidence e JOIN neuron_labels l USING (run_id, model, layer, unit, rank) "
        "WHERE e.concept_id <> l.concept_id"
    ).fetchone()[0]
    assert joined == 0
    csv_rows = df[df["annotation"] == "csv:stellate lesion"]
    # every concept is among the 1000 "top" labels, so every neuron's CSV concept was tested
    assert len(csv_rows) == 2 * (6 + 8 + 2)
    assert (csv_rows["n_images"] == 20).all() and (csv_rows["n_positive"] == 7).all()
    benches = {r[0] for r in con.execute("SELECT DISTINCT bench FROM calibration").fetchall()}
    assert benches == {"measured", "perfect_neurons", "oracle_p"}
    assert con.execute("SELECT count(*) FROM calibration WHERE top1_hit_lenient < top1_hit").fetchone()[0] == 0
    con.close()
    _check_report(db)


def test_a_bad_annotation_csv_fails_before_the_passes(tmp_path: Path, tiny_models) -> None:
    (tmp_path / "ann.csv").write_text("image_id,concept\nx,not a concept at all\n")
    with pytest.raises(DissectStudyError, match=r"ann.csv:2:1: concept 'not a concept at all'"):
        _run(tmp_path, _csv_study(tmp_path, 'annotations "ann.csv"'))
    assert not (tmp_path / "r.duckdb").exists()


def _check_report(db: Path) -> None:
    from dissect_study.engine.report import build_report_model, render_html
    from dissect_study.engine.store.database import connect

    con = connect(db, read_only=True)
    model = build_report_model(con, None)
    n_top1 = con.execute("SELECT count(*) FROM label_evidence WHERE rank = 1").fetchone()[0]
    n_sup = con.execute("SELECT count(*) FROM label_evidence WHERE rank = 1 AND supported").fetchone()[0]
    summary = " ".join(i[1] for b in model.section("summary").blocks for i in b.items)
    assert f"Label evidence: {n_top1} of " in summary and f"{n_sup} of them are supported" in summary
    ids = [s.id for s in model.sections]
    assert ids.index("neurons") < ids.index("evidence") < ids.index("calibration")
    trust = [b.table for b in model.section("evidence").blocks if b.kind == "table"][0]
    assert sum(int(r[2]) for r in trust.rows) == n_top1 and sum(int(r[3]) for r in trust.rows) == n_sup
    cards = model.section("neurons").blocks[-1].cards
    assert cards and all(c.evidence.startswith("evidence for ") for c in cards)
    heads = [b.text for b in model.section("calibration").blocks if b.kind == "heading"]
    assert any("Ceilings" in h for h in heads)
    assert "card-evidence" in render_html(model)
    con.close()


def test_known_row_names_its_class():
    from dissect_study.engine.analyses.label_checks import _known_row

    texts = ["breast", "almost entirely fatty", "fatty breast", "extremely dense"]
    attrs = [{"density": d} for d in "AABCDA"]
    s = np.array([0.1, 0.2, 0.9, 0.0])  # top-1 is a synonym of density A, not its strict phrase
    a = np.array([3.0, 2.0, 0.0, 0.5, 0.1, 1.0])  # the three A images rank first
    row = _known_row("C", "soft_wpmi", 0, ("density", "A"), s, a, attrs, texts, True)
    assert row["top1"] == "fatty breast"
    assert not row["top1_hit"] and row["top1_hit_lenient"]
    assert row["top5_hit"] and row["auprc"] == pytest.approx(1.0) and row["base_rate"] == pytest.approx(0.5)
    assert row["class"] == "density=A"


def test_old_databases_gain_the_new_calibration_columns(tmp_path: Path) -> None:
    from dissect_study.engine.store.database import ensure_schema

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE calibration (run_id VARCHAR, model VARCHAR, layer VARCHAR, similarity VARCHAR, "
        "n_selective INTEGER, top1_hit DOUBLE, top5_hit DOUBLE, mammi_hit_rate DOUBLE, precision DOUBLE, "
        "recall DOUBLE, f1 DOUBLE, mean_label_cosine DOUBLE)"
    )
    con.execute("INSERT INTO calibration (run_id, top1_hit) VALUES ('old', 0.5)")
    ensure_schema(con)
    ensure_schema(con)  # idempotent
    cols = [r[0] for r in con.execute("DESCRIBE calibration").fetchall()]
    assert cols[-3:] == ["bench", "top1_hit_lenient", "top5_hit_lenient"]
    assert con.execute("SELECT top1_hit, bench FROM calibration").fetchall() == [(0.5, None)]
