"""The review loop end to end: a rendered packet, filled by two reviewers, imported, and agreement reported.

The packet is rendered by the product from a stored run; the PDF is filled the way
a PDF reader saves it (helpers/review.py, pypdf's object model, not the importer);
the expected kappa is computed by hand below.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pypdf
import pytest
from click.testing import CliRunner
from helpers.report import make_run
from helpers.review import fill_pdf
from pypdf.generic import NameObject, TextStringObject

from dissect_study.engine.cli import cli
from dissect_study.engine.report import build_report_model, render_html, render_pdf
from dissect_study.engine.review.fields import card_field, doc_field, parse_field
from dissect_study.engine.review.importer import ReviewImportError, import_reviews
from dissect_study.engine.store.database import connect

RUN = "r-review"
UNITS = (7, 1, 2, 3)
#: reviewer A and B on the four cards; p_o = 2/4; marginals A (agree .5, disagree .25, unsure .25),
#: B (agree .5, disagree .5): p_e = .25 + .125 = .375; kappa = (.5 - .375) / (1 - .375) = 0.2
A = ("agree", "agree", "disagree", "unsure")
B = ("agree", "disagree", "disagree", "agree")


@pytest.fixture(scope="module")
def packet(tmp_path_factory):
    d = tmp_path_factory.mktemp("review")
    db = d / "results.duckdb"
    make_run(db, models=("G", "M"), n_concepts=60, neurons=(6, 12, 16), n_images=24, run_id=RUN)
    con = duckdb.connect(str(db))
    model, layer = con.execute("SELECT DISTINCT model, layer FROM neuron_images").fetchall()[0]
    for u in UNITS[1:]:  # three more cards: a review packet of four neurons
        con.execute("INSERT INTO neuron_images SELECT * REPLACE (? AS unit) FROM neuron_images WHERE unit = 7", [u])
    con.close()
    ro = connect(db, read_only=True)
    m = build_report_model(ro, RUN, sections=["neurons"])
    ro.close()
    pdf = render_pdf(m, d / "report.pdf")
    return dict(dir=d, db=db, pdf=pdf, model=model, layer=layer, html=render_html(m))


def _fill(packet, name: str, verdicts, out: Path, comments=None, date="2026-12-03") -> Path:
    m, ly = packet["model"], packet["layer"]
    values = {doc_field(RUN, "reviewer"): name, doc_field(RUN, "date"): date}
    for u, v in zip(UNITS, verdicts):
        values[card_field(RUN, m, ly, u, "verdict")] = v
    for u, text in (comments or {}).items():
        values[card_field(RUN, m, ly, u, "comment")] = text
    fill_pdf(packet["pdf"], out, values)
    return out


def _fresh_db(packet, tmp_path) -> Path:
    db = tmp_path / "results.duckdb"
    db.write_bytes(packet["db"].read_bytes())
    return db


def _reviews(db: Path) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'reviews'").fetchall()[0][
            0
        ]:
            return []
        return con.execute(
            "SELECT model, layer, unit, label, reviewer, verdict, comment, review_date FROM reviews "
            "ORDER BY reviewer, unit"
        ).fetchall()
    finally:
        con.close()


def test_pdf_fields_name_run_model_layer_unit(packet):
    fields = pypdf.PdfReader(packet["pdf"]).get_fields() or {}
    assert all("." not in n for n in fields)  # a group's buttons are its widgets, not fields named "x.x"
    ours = set(fields)
    parsed = [parse_field(n) for n in ours]
    assert {(p.model, p.layer, p.unit) for p in parsed if p.part == "verdict"} == {
        (packet["model"], packet["layer"], u) for u in UNITS
    }
    assert {p.run_id for p in parsed} == {RUN}
    assert sum(p.part in ("reviewer", "date") for p in parsed) == 2  # once per document
    verdict = fields[card_field(RUN, packet["model"], packet["layer"], 7, "verdict")]
    assert list(verdict["/Opt"]) == ["agree", "disagree", "unsure"]  # one radio group
    comment = fields[card_field(RUN, packet["model"], packet["layer"], 7, "comment")]
    assert int(comment["/Ff"]) & 4096  # multi-line
    form = pypdf.PdfReader(packet["pdf"]).trailer["/Root"]["/AcroForm"]
    roots = [f.get_object() for f in form["/Fields"]]
    assert all("/Parent" not in f for f in roots)  # only root fields are listed (ISO 32000-1, field hierarchies)
    groups = [f for f in roots if "/Kids" in f]
    assert len(groups) == len(UNITS)
    for g in groups:
        kids = [k.get_object() for k in g["/Kids"]]
        assert len(kids) == 3 and all("/T" not in k for k in kids)


def test_two_reviewers_round_trip_and_kappa(packet, tmp_path):
    db = _fresh_db(packet, tmp_path)
    a = _fill(packet, "Dr A", A, tmp_path / "a.pdf", comments={2: "looks like vessel\nnot calcification"})
    b = _fill(packet, "Dr B", B, tmp_path / "b.pdf")
    r = CliRunner().invoke(cli, ["review", "import", str(a), "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "imported 4 answer(s) from 1 file(s)" in r.output
    rows = _reviews(db)
    assert [(x[2], x[4], x[5]) for x in rows] == [(u, "Dr A", v) for u, v in sorted(zip(UNITS, A))]
    assert dict((x[2], x[6]) for x in rows)[2] == "looks like vessel\nnot calcification"
    assert {x[7] for x in rows} == {"2026-12-03"}
    labels = (
        duckdb.connect(str(db), read_only=True)
        .execute(
            "SELECT unit, label FROM neurons WHERE run_id = ? AND model = ? AND layer = ?",
            [RUN, packet["model"], packet["layer"]],
        )
        .fetchall()
    )
    assert {x[2]: x[3] for x in rows} == {u: lab for u, lab in labels if u in UNITS}

    # the same file again changes nothing; the second reviewer adds rows
    assert import_reviews(db, [a]).rows == 0
    res = import_reviews(db, [b, a])
    assert res.rows == 4 and res.skipped == [a]
    assert len(_reviews(db)) == 8

    con = connect(db, read_only=True)
    m = build_report_model(con, RUN, sections=["neurons", "reviews"])
    con.close()
    sec = m.section("reviews")
    assert sec is not None
    texts = [blk.text for blk in sec.blocks if blk.kind == "para"]
    assert any("Cohen's κ = 0.200 over 4 neuron(s)" in t and "observed agreement 50%" in t for t in texts), texts
    rates = next(blk.table for blk in sec.blocks if blk.kind == "table")
    assert sum(int(row[3]) for row in rates.rows) == 4  # 4 'agree' among 8 answers
    dis = [blk.table for blk in sec.blocks if blk.kind == "table"][-1]
    assert sorted(int(row[2]) for row in dis.rows) == [1, 2, 3]  # unit 7: both agree
    assert any("looks like vessel" in row[4] for row in dis.rows)
    assert "Cohen&#39;s κ = 0.200" in render_html(m)
    out = tmp_path / "next"
    args = ["report", "--db", str(db), "--run", RUN, "--format", "html", "--sections", "reviews", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "Cohen&#39;s κ = 0.200" in (out / "report.html").read_text(encoding="utf-8")


def test_fleiss_for_three_reviewers(packet, tmp_path):
    db = _fresh_db(packet, tmp_path)
    c3 = ("agree", "agree", "disagree", "agree")
    files = [_fill(packet, n, v, tmp_path / f"{i}.pdf") for i, (n, v) in enumerate((("A", A), ("B", B), ("C", c3)))]
    import_reviews(db, files)
    # items: [a,a,a] [a,d,a] [d,d,d] [u,a,a]: P_i = 1, 1/3, 1, 1/3 -> P = 2/3
    # p: agree 7/12, disagree 4/12, unsure 1/12 -> P_e = (49 + 16 + 1) / 144 = 66/144
    # kappa = (96/144 - 66/144) / (78/144) = 30/78 = 0.385
    con = connect(db, read_only=True)
    sec = build_report_model(con, RUN, sections=["reviews"]).section("reviews")
    con.close()
    assert any("Fleiss' κ = 0.385 over 4 neuron(s)" in b.text for b in sec.blocks if b.kind == "para")


def test_supported_split_when_label_evidence_exists(packet, tmp_path):
    db = _fresh_db(packet, tmp_path)
    import_reviews(db, [_fill(packet, "Dr A", A, tmp_path / "a.pdf")])
    con = duckdb.connect(str(db))
    m, ly = packet["model"], packet["layer"]
    # units 7 and 1 supported (A: agree, agree), 2 unsupported (disagree), 3 has no evidence; rank 2 rows ignored
    con.executemany(
        "INSERT INTO label_evidence (run_id, model, layer, unit, rank, supported) VALUES (?, ?, ?, ?, ?, ?)",
        [(RUN, m, ly, 7, 1, True), (RUN, m, ly, 1, 1, True), (RUN, m, ly, 2, 1, False), (RUN, m, ly, 3, 2, True)],
    )
    con.close()
    con = connect(db, read_only=True)
    sec = build_report_model(con, RUN, sections=["reviews"]).section("reviews")
    con.close()
    split = next(b.table for b in sec.blocks if b.kind == "table" and b.table.columns[0] == "label evidence")
    got = {row[0]: (row[2], row[3], row[4], row[5]) for row in split.rows}
    assert got == {
        "supported": ("2", "0", "0", "100%"),
        "unsupported": ("0", "1", "0", "0%"),
        "no evidence": ("0", "0", "1", "0%"),
    }


def test_json_export_imports_like_a_pdf(packet, tmp_path):
    db = _fresh_db(packet, tmp_path)
    m, ly = packet["model"], packet["layer"]
    label = (
        duckdb.connect(str(db), read_only=True)
        .execute("SELECT label FROM neurons WHERE run_id = ? AND model = ? AND layer = ? AND unit = 7", [RUN, m, ly])
        .fetchall()[0][0]
    )
    doc = dict(format="dissect-study-review", version=1, run_id=RUN, reviewer="Dr J", date="2026-12-04")
    doc["answers"] = [dict(model=m, layer=ly, unit=7, label=label, verdict="unsure", comment="faint")]
    f = tmp_path / "answers.json"
    f.write_text(json.dumps(doc))
    assert import_reviews(db, [f]).rows == 1
    assert _reviews(db) == [(m, ly, 7, label, "Dr J", "unsure", "faint", "2026-12-04")]
    doc["answers"][0]["label"] = "something else"
    f2 = tmp_path / "edited.json"
    f2.write_text(json.dumps(doc))
    with pytest.raises(ReviewImportError, match="was shown as 'something else'"):
        import_reviews(db, [f2])


def _retitle(src: Path, dst: Path, old: str, new: str) -> Path:
    w = pypdf.PdfWriter(clone_from=str(src))
    for ref in w._root_object["/AcroForm"]["/Fields"]:
        f = ref.get_object()
        if str(f.get("/T", "")) == old:
            f[NameObject("/T")] = TextStringObject(new)
    with open(dst, "wb") as fh:
        w.write(fh)
    return dst


@pytest.mark.parametrize(
    "case",
    [
        "wrong_run",
        "run_option",
        "unknown_neuron",
        "bad_name",
        "renamed_all",
        "empty",
        "not_pdf",
        "broken_pdf",
        "unanswered",
        "no_reviewer",
        "bad_json",
    ],
)
def test_bad_review_files_import_nothing(packet, tmp_path, case):
    db = _fresh_db(packet, tmp_path)
    m, ly = packet["model"], packet["layer"]
    good = _fill(packet, "Dr A", A, tmp_path / "good.pdf")
    run = None
    expect = {
        "wrong_run": "not in this results database",
        "run_option": "not of run 'r-other'",
        "unknown_neuron": r"not neurons of run r-review: M\.\S+\[999\]",
        "bad_name": "is not a review field this tool writes",
        "renamed_all": "has no review fields",
        "empty": "the file is empty",
        "not_pdf": "not a PDF and not a JSON review export",
        "broken_pdf": "not a readable PDF",
        "unanswered": "no card is answered",
        "no_reviewer": "reviewer's name is empty",
        "bad_json": "not a review export",
    }[case]
    bad = tmp_path / "bad.pdf"
    if case == "wrong_run":
        other = tmp_path / "other"
        other.mkdir()
        odb = other / "results.duckdb"
        make_run(odb, models=("G", "M"), n_concepts=60, neurons=(6, 12, 16), n_images=24, run_id="r-other")
        db = odb  # the packet of r-review into a database that only holds r-other
        good = bad = _fill(packet, "Dr A", A, tmp_path / "bad.pdf")
    elif case == "run_option":
        run = "r-other"
        good = bad = _fill(packet, "Dr B", B, bad)
    elif case == "unknown_neuron":
        _retitle(good, bad, card_field(RUN, m, ly, 3, "verdict"), card_field(RUN, m, ly, 999, "verdict"))
    elif case == "bad_name":
        _retitle(good, bad, card_field(RUN, m, ly, 3, "verdict"), f"dsr|{RUN}|{m}|verdict")
    elif case == "renamed_all":
        w = pypdf.PdfWriter(clone_from=str(good))
        for ref in w._root_object["/AcroForm"]["/Fields"]:
            f = ref.get_object()
            if "/T" in f:
                f[NameObject("/T")] = TextStringObject("x" + str(f["/T"]))
        with open(bad, "wb") as fh:
            w.write(fh)
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "not_pdf":
        bad.write_text("reviewer,verdict\nA,agree\n")
    elif case == "broken_pdf":
        bad.write_bytes(packet["pdf"].read_bytes()[:2000])
    elif case == "unanswered":
        fill_pdf(packet["pdf"], bad, {doc_field(RUN, "reviewer"): "Dr A"})
    elif case == "no_reviewer":
        _fill(packet, "", A, bad)
    elif case == "bad_json":
        bad.write_text(json.dumps({"answers": []}))
    files = [good, bad] if good != bad else [bad]
    with pytest.raises(ReviewImportError, match=expect) as e:
        import_reviews(db, files, run=run)
    assert str(bad) in str(e.value)
    assert _reviews(db) == []  # all or nothing: the good file was not imported either
    r = CliRunner().invoke(
        cli, ["review", "import", *map(str, files), "--db", str(db), *(["--run", run] if run else [])]
    )
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert _reviews(db) == []


# ---------------------------------------------------------------------------- in a real browser


@pytest.mark.slow
def test_html_packet_in_chromium_fill_reload_export_import(packet, tmp_path, chromium_page):
    db = _fresh_db(packet, tmp_path)
    m, ly = packet["model"], packet["layer"]
    html = tmp_path / "report.html"
    html.write_text(packet["html"], encoding="utf-8")
    page = chromium_page(1280)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri())
    verdict = card_field(RUN, m, ly, 2, "verdict")
    page.fill(".review-reviewer", "Dr Web")
    page.fill(".review-date", "2026-12-05")
    page.check(f'input[name="{verdict}"][value="disagree"]')
    page.check(f'input[name="{verdict}"][value="unsure"]')  # one radio group: the second pick replaces the first
    page.fill(f'textarea[name="{card_field(RUN, m, ly, 2, "comment")}"]', "first line\nsecond line")
    assert page.locator(f'input[name="{verdict}"]:checked').count() == 1

    page.reload()  # answers persist in the browser
    assert page.locator(f'input[name="{verdict}"][value="unsure"]').is_checked()
    assert page.input_value(".review-reviewer") == "Dr Web"

    with page.expect_download() as dl:
        page.click(".review-export")
    export = tmp_path / "export.json"
    dl.value.save_as(export)
    data = json.loads(export.read_text())
    assert data["run_id"] == RUN and len(data["answers"]) == 1

    r = CliRunner().invoke(cli, ["review", "import", str(export), "--db", str(db)])
    assert r.exit_code == 0, r.output
    rows = _reviews(db)
    assert [(x[2], x[4], x[5], x[6], x[7]) for x in rows] == [
        (2, "Dr Web", "unsure", "first line\nsecond line", "2026-12-05")
    ]
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests  # no external resource

    # without scripts the page still shows every control; only the export button stays hidden
    bare = chromium_page(1280, java_script_enabled=False)
    bare.goto(html.as_uri())
    assert bare.locator('fieldset.review input[type="radio"]').count() == 3 * len(UNITS)
    assert bare.locator("fieldset.review textarea").count() == len(UNITS)
    assert not bare.locator(".review-export").is_visible()
