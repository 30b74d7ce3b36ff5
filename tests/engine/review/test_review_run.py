"""A `review` statement in a run: its neurons get cards, its selection is recorded; `labels supported`
picks from the run's own label evidence (the phantom probe carries annotations)."""

from __future__ import annotations

import json

import duckdb
from helpers.tiny import STUDY, _run

REVIEWS = """review B at layer last top 2
review A at layer last sample 3 seed 4 images 2
review B.middle[3, 1]
review B at layer last labels supported top 2
report "out" as html
"""


def test_review_packets_in_a_run(tmp_path, tiny_models):
    text = STUDY.replace('report "out" as html\n', REVIEWS)
    res, db = _run(tmp_path, text, calibration=False)
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT statement, options FROM analyses WHERE kind = 'review' ORDER BY analysis_id").fetchall()
    picked = {stmt: json.loads(opts)["selected"] for stmt, opts in rows}
    last = con.execute("SELECT DISTINCT layer FROM neuron_images WHERE model = 'B' AND unit = 3").fetchall()
    assert last  # show neuron B.middle[3] and the explicit list share a card
    top2 = con.execute(
        "SELECT layer, unit FROM neurons WHERE model = 'B' AND NOT constant AND layer = ? ORDER BY score DESC, unit LIMIT 2",
        [picked["review B at layer last top 2"][0][0]],
    ).fetchall()
    assert [tuple(x) for x in picked["review B at layer last top 2"]] == top2
    sampled = picked["review A at layer last sample 3 seed 4 images 2"]
    n_live = con.execute(
        "SELECT count(*) FROM neurons WHERE model = 'A' AND layer = ? AND NOT constant", [sampled[0][0]]
    ).fetchall()[0][0]
    assert len(sampled) == min(3, n_live) > 0  # a layer with fewer neurons gives all of them
    assert [u for _, u in picked["review B.middle[3, 1]"]] == [3, 1]
    layer = picked["review B at layer last top 2"][0][0]
    supported = con.execute(
        "SELECT n.layer, n.unit FROM neurons n JOIN label_evidence e USING (run_id, model, layer, unit) "
        "WHERE n.model = 'B' AND n.layer = ? AND e.rank = 1 AND e.supported AND NOT n.constant "
        "ORDER BY n.score DESC, n.unit LIMIT 2",
        [layer],
    ).fetchall()
    assert [tuple(x) for x in picked["review B at layer last labels supported top 2"]] == supported
    cards = set(con.execute("SELECT DISTINCT model, layer, unit FROM neuron_images").fetchall())
    for stmt, sel in picked.items():
        model = stmt.split()[1].split(".")[0]
        assert {(model, ly, u) for ly, u in sel} <= cards, stmt
    n_img = con.execute(
        "SELECT max(rank) FROM neuron_images WHERE model = 'A' AND unit = ?",
        [picked["review A at layer last sample 3 seed 4 images 2"][0][1]],
    ).fetchall()[0][0]
    assert n_img == 2
    assert con.execute("SELECT count(*) FROM label_evidence WHERE model = 'B' AND layer = ?", [layer]).fetchall()[0][0]
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('<fieldset class="review"') == len(cards)


def test_review_units_are_checked_before_any_work(tmp_path, tiny_models):
    import pytest

    from dissect_study.errors import DissectStudyError

    text = STUDY.replace('report "out" as html\n', "review B.middle[2, 999]\n")
    with pytest.raises(DissectStudyError) as e:
        _run(tmp_path, text, calibration=False)
    msg = str(e.value)
    assert "so there is no unit 999" in msg and "unit 2," not in msg, msg
    assert not (tmp_path / "r.duckdb").exists()
