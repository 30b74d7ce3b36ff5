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


def test_a_bad_annotation_csv_fails_before_the_passes(tmp_path: Path, tiny_models) -> None:
    (tmp_path / "ann.csv").write_text("image_id,concept\nx,not a concept at all\n")
    with pytest.raises(DissectStudyError, match=r"ann.csv:2:1: concept 'not a concept at all'"):
        _run(tmp_path, _csv_study(tmp_path, 'annotations "ann.csv"'))
    assert not (tmp_path / "r.duckdb").exists()
