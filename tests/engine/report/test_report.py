"""Tests of the report: model, charts, word clouds, overlays, HTML and PDF.

Runs are synthetic but realistic (`make_run`: models G/M/C*, three layers whose
names sort wrongly as text, a workbook-like concept set with a hostile concept
name, every analysis table), written with the store's own `write_run`.
Expected numbers are always read back from DuckDB, never hard-coded.
The benchmark (benchmarks/bench_report.py) imports `make_run` from here.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.report import EVIL, make_run
from PIL import Image

from dissect_study.engine.report.overlay import activation_overlay_png, heat_colours, normalise01, upsample_bilinear
from dissect_study.engine.store.database import connect

# ============================================================================ synthetic runs

#: (sheet name as in the xlsx, share of the set, subcategories, domain)


# ============================================================================ overlay


def _bilinear_reference(a: np.ndarray, H: int, W: int) -> np.ndarray:
    """Straightforward per-pixel bilinear interpolation (half-pixel centres, clamped edges)."""
    h, w = a.shape
    out = np.zeros((H, W))
    for Y in range(H):
        for X in range(W):
            sy = min(max((Y + 0.5) * h / H - 0.5, 0), h - 1)
            sx = min(max((X + 0.5) * w / W - 0.5, 0), w - 1)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = sy - y0, sx - x0
            out[Y, X] = (
                a[y0, x0] * (1 - fy) * (1 - fx)
                + a[y0, x1] * (1 - fy) * fx
                + a[y1, x0] * fy * (1 - fx)
                + a[y1, x1] * fy * fx
            )
    return out


def test_bilinear_upsample_matches_reference_and_known_values():
    rng = np.random.default_rng(1)
    a = rng.random((4, 3))
    assert np.allclose(upsample_bilinear(a, 11, 7), _bilinear_reference(a, 11, 7))
    # known answer: [0, 1] stretched to 4 pixels with half-pixel centres
    assert np.allclose(upsample_bilinear(np.array([[0.0, 1.0]]), 1, 4), [[0, 0.25, 0.75, 1]])
    assert np.allclose(upsample_bilinear(np.full((3, 2), 5.0), 9, 6), 5.0)


def test_overlay_png_size_and_hot_spot():
    img = np.full((200, 100), 128, dtype=np.uint8)
    amap = np.zeros((4, 2))
    amap[0, 0] = 1.0  # the unit fires in the top-left cell only
    png = activation_overlay_png(img, amap, size=100)
    im = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert im.shape == (100, 50, 3)  # longest side = size, aspect kept
    hot, cold = im[3, 3], im[-3, -3]
    assert hot[0] > hot[2] + 60  # red-dominated where the unit fires
    assert abs(cold[0] - 128) < 40 and abs(cold[1] - 128) < 40  # grey image visible where silent
    assert np.allclose(normalise01(np.full((3, 3), 2.0)), 0)
    assert np.allclose(heat_colours(np.array([0.0, 1.0])), [[30, 40, 160], [220, 30, 30]])
    with pytest.raises(ValueError):
        activation_overlay_png(img, np.zeros((2, 2, 2)))


# ============================================================================ palette and word clouds


def test_category_colours_normalised_and_deterministic():
    from dissect_study.engine.report.charts import Palette, normalise_category

    p = Palette.from_categories(["Breast_anatomy_or_structure", " Findings and characterizations", "Zeta", "alpha cat"])
    pairs = [
        ("Breast_anatomy_or_structure", "Breast anatomy or structure"),
        ("Breast_locations", "Breast locations"),
        (" Findings and characterizations", "Findings and characterizations"),
        ("Action or follow up", "Action or follow-up"),
        ("Environmental_and_Natural", "Environmental and natural"),
    ]
    for a, b in pairs:
        assert p.colour(a) == p.colour(b), (a, b)
    assert p.colour("Environmental_and_Natural") == "#117733"  # docs/METHOD.md §5.10: green (Tol muted)
    assert p.colour("Breast_anatomy_or_structure") == "#999933"  # olive, the paper's brown
    assert normalise_category("  Action_or-follow  up ") == "action or follow up"
    # extras: fixed palette in sorted order, independent of input order
    q = Palette.from_categories(["alpha cat", "Zeta"])
    assert p.colour("Zeta") == q.colour("zeta") and p.colour("alpha cat") != p.colour("Zeta")
    assert p.colour(None) == p.colour(float("nan"))


def test_wordcloud_deterministic_no_overlap_escaped():
    from dissect_study.engine.report.wordcloud import Word, layout, wordcloud_svg

    rng = np.random.default_rng(3)
    words = [Word(f"concept {i} " + "x" * int(rng.integers(0, 12)), float(rng.random()), "#123456") for i in range(60)]
    words.append(Word(EVIL, 2.0, "#654321"))
    svg1, n1 = wordcloud_svg(words)
    svg2, n2 = wordcloud_svg(list(reversed(words)))
    assert svg1 == svg2 and n1 == n2 == len(words)
    assert "<script" not in svg1 and "&lt;script&gt;" in svg1
    placed = layout(words, 560, 400)
    boxes = [(p.x, p.y - p.size, p.x + p.width, p.y + 0.2 * p.size) for p in placed]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (placed[i].text, placed[j].text)
    size = {p.text: p.size for p in placed}
    by_weight = sorted(words, key=lambda w: w.weight)
    assert size[by_weight[-1].text] == max(size.values()) and size[by_weight[0].text] == min(size.values())


# ============================================================================ the report of a run


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from dissect_study.engine.report import build_report_model, render_html, render_pdf

    d = tmp_path_factory.mktemp("report")
    db = d / "results.duckdb"
    small = dict(models=("G", "M", "C4"), n_concepts=100, neurons=(6, 12, 32), n_images=24)
    make_run(db, run_id="r-old", **small)
    run_id = make_run(db, seed=1, run_id="r-new", **small)
    con = connect(db, read_only=True)
    model = build_report_model(con, run_id)
    html = render_html(model)
    pdf = render_pdf(model, d / "report.pdf", html=html)
    yield dict(db=db, run_id=run_id, con=con, model=model, html=html, pdf=pdf, dir=d)
    con.close()


def test_write_report_files_and_cli_errors(rendered, tmp_path):
    from dissect_study.engine.report import write_report

    paths = write_report(
        rendered["db"], tmp_path / "out", run_id="r-old", formats=("html",), sections=["summary", "appendix"]
    )
    assert [p.name for p in paths] == ["report.html"]
    html = paths[0].read_text()
    assert "r-old" in html and 'id="sec-summary"' in html and 'id="sec-thresholds"' not in html
    with pytest.raises(LookupError, match="format"):
        write_report(rendered["db"], tmp_path / "out", formats=("docx",))


def test_sections_present_for_the_analyses_asked(rendered):
    con, run_id, model = rendered["con"], rendered["run_id"], rendered["model"]

    def has(table: str) -> bool:
        return con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0] > 0

    expected = {"summary", "methods", "appendix"}
    expected |= {"sanity"} if has("sanity") else set()
    expected |= {"thresholds"} if has("layers") else set()
    expected |= {"domains", "tasks"} if has("category_counts") else set()
    expected |= {"top_categories"} if has("top_categories") else set()
    expected |= {"wordclouds"} if has("captured_concepts") else set()
    expected |= {"changes"} if has("concept_changes") else set()
    expected |= {"learned", "missed"} if has("missed_concepts") else set()
    expected |= {"neurons"} if has("neuron_images") else set()
    expected |= {"keywords"} if has("keyword_neurons") else set()
    expected |= {"calibration"} if has("calibration") else set()
    ids = [s.id for s in model.sections]
    assert set(ids) == expected
    html = rendered["html"]
    for sid in ids:
        assert f'id="sec-{sid}"' in html and f'href="#sec-{sid}"' in html  # section and its TOC entry
    json.dumps(model.to_dict())  # the view model is JSON-serialisable


def test_figure_count_matches_data(rendered):
    con, run_id, model, html = rendered["con"], rendered["run_id"], rendered["model"], rendered["html"]

    def q(sql):
        return con.execute(sql, [run_id]).fetchall()

    n_domain = len(q("SELECT DISTINCT analysis_id FROM category_counts WHERE run_id = ? AND level = 'domain'"))
    n_task = len(q("SELECT DISTINCT analysis_id FROM category_counts WHERE run_id = ? AND level = 'task'"))
    n_top = len(q("SELECT DISTINCT analysis_id FROM top_categories WHERE run_id = ?"))
    n_changes = len(q("SELECT DISTINCT analysis_id FROM concept_changes WHERE run_id = ?"))
    n_learned = len(q("SELECT DISTINCT analysis_id, model FROM missed_concepts WHERE run_id = ?"))
    # word clouds: one per (model, deepest layer of the analysis), identical clouds shown once
    clouds = set()
    for (aid,) in q("SELECT DISTINCT analysis_id FROM captured_concepts WHERE run_id = ?"):
        rows = con.execute(
            "SELECT c.model, c.layer, c.threshold, list(c.concept_id ORDER BY c.concept_id) FROM "
            "captured_concepts c JOIN layers l ON l.run_id = c.run_id AND l.model = c.model AND "
            "l.layer = c.layer WHERE c.run_id = ? AND c.analysis_id = ? AND l.layer_index = "
            "(SELECT max(l2.layer_index) FROM captured_concepts c2 JOIN layers l2 ON "
            "l2.run_id = c2.run_id AND l2.model = c2.model AND l2.layer = c2.layer "
            "WHERE c2.run_id = ? AND c2.analysis_id = ?) GROUP BY ALL",
            [run_id, aid, run_id, aid],
        ).fetchall()
        clouds |= {(m, l, round(t, 9), tuple(ids)) for m, l, t, ids in rows}
    expected = 1 + n_domain + n_top + len(clouds) + n_task + n_changes + n_learned + 1  # + tau, + calibration
    assert len(model.figures()) == expected
    assert html.count('<figure class="figure ') == expected
    assert html.count("<figcaption><strong>Figure ") == expected  # a caption under every figure
    assert html.count('class="wordcloud"') == len(clouds)


def test_layers_in_depth_order_not_alphabetical(rendered):
    html = rendered["html"]
    sec = html[html.index('id="sec-thresholds"') : html.index('id="sec-domains"')]
    table = sec[sec.index("<table") :]
    pos = [table.index(f"<td>{name} (") for name in ("_blocks.2", "_blocks.19", "_blocks.38")]
    assert pos == sorted(pos)  # as text, "_blocks.19" < "_blocks.2"


def test_json_columns_read_back_even_when_double_encoded():
    from dissect_study.engine.report.model import _json

    assert _json('{"view": "CC"}') == {"view": "CC"}
    assert _json(json.dumps(json.dumps({"view": "CC"}))) == {"view": "CC"}  # str passed to a JSON column
    assert _json('"plain"') == "plain" and _json(None) is None


def test_user_strings_are_escaped(rendered):
    html = rendered["html"]
    # the one script is the review packet's own, static (it reads the run id from a data attribute)
    assert html.lower().count("<script") == 1
    assert "<script>\n/* dissect-study review packet:" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text: concept, study path, study source
    assert "Mammo-CLIP Dissect &lt;RQ1&gt; &amp; RQ2" in html  # the study title
    assert "<b>co</b>" not in html


def test_html_is_self_contained(rendered):
    html = rendered["html"]
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(\s*['\"]?([^)'\"]*)", html)
    external = [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]
    assert external == []
    assert "<link" not in html and "@import" not in html
    # the only http strings are XML namespace names inside inline SVG
    for u in re.findall(r"https?://[^\s\"'<>)]+", html):
        assert u.startswith("http://www.w3.org/"), u
    assert (
        html.count("data:image/png;base64,")
        == rendered["con"]
        .execute("SELECT count(*) FROM neuron_images WHERE run_id = ?", [rendered["run_id"]])
        .fetchone()[0]
    )


def _pdf_text(path: Path) -> tuple[str, list]:
    """Text of the chart-free pages (title, contents, summary, sanity, appendix): pypdf is slow on vega's SVG."""
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    pages = list(reader.pages)
    chosen = pages[:4] + pages[-3:]
    return " ".join(" ".join((p.extract_text() or "").split()) for p in chosen), pages


def test_pdf_pages_fonts_and_headline_numbers(rendered):
    con, run_id = rendered["con"], rendered["run_id"]
    text, pages = _pdf_text(rendered["pdf"])
    assert 12 <= len(pages) <= 40
    for p in pages:  # A4 portrait
        assert abs(float(p.mediabox.width) - 595.3) < 1.5 and abs(float(p.mediabox.height) - 841.9) < 1.5
    assert f"Page 1 of {len(pages)}" in text and f"Page {len(pages)} of {len(pages)}" in text
    fonts = set()
    for p in pages:
        for f in (p["/Resources"].get("/Font") or {}).values():
            f = f.get_object()
            desc = f.get("/FontDescriptor") or {}
            if not desc and "/DescendantFonts" in f:
                desc = f["/DescendantFonts"][0].get_object().get("/FontDescriptor", {})
            desc = desc.get_object() if hasattr(desc, "get_object") else desc
            fonts.add((str(f.get("/BaseFont")), any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3"))))
    assert fonts and all(embedded for _, embedded in fonts), fonts
    # headline: mammography concepts at the deepest compared layer, per model, for every compare analysis
    for (aid,) in con.execute(
        "SELECT DISTINCT analysis_id FROM category_counts WHERE run_id = ? AND level = 'domain'", [run_id]
    ).fetchall():
        rows = con.execute(
            "SELECT c.model, c.n_concepts FROM category_counts c JOIN layers l USING (run_id, model, layer) "
            "WHERE c.run_id = ? AND c.analysis_id = ? AND c.level = 'domain' AND c.grp = 'mammography' "
            "QUALIFY l.layer_index = max(l.layer_index) OVER ()",
            [run_id, aid],
        ).fetchall()
        order = [
            m
            for (m,) in con.execute(
                "SELECT model FROM models WHERE run_id = ? AND role = 'target' ORDER BY rowid", [run_id]
            ).fetchall()
        ]
        rows.sort(key=lambda r: order.index(r[0]))
        first, rest = rows[0], rows[1:]
        noun = "mammography concept" if first[1] == 1 else "mammography concepts"
        assert f"{first[0]} captures {first[1]} {noun}" in text
        assert "captures 1 mammography concepts" not in text
        for m, n in rest:
            assert f"{m} {n}" in text
    # learned / missed headline
    m, learned, missed = con.execute(
        "SELECT model, count(*) FILTER (status = 'learned'), count(*) FILTER (status = 'missed' AND domain = "
        "'mammography') FROM missed_concepts WHERE run_id = ? GROUP BY model",
        [run_id],
    ).fetchone()
    assert f"{m} learned {learned} unique concepts" in text and f"of which {missed} remain" in text
    assert "NEAR CHANCE" in text  # laterality at 0.52 vs 0.5
    assert rendered["run_id"] in text and "a" * 16 in text.replace(" ", "")  # run id and study hash (appendix)


def test_sections_argument_latest_run_and_errors(rendered):
    from dissect_study.engine.report import build_report_model

    con = rendered["con"]
    m = build_report_model(con, None, sections=["summary", "calibration", "keywords"])
    latest = con.execute("SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 1").fetchone()[0]
    assert m.meta.run_id == latest
    assert [s.id for s in m.sections] == ["summary", "keywords", "calibration"]  # report order, not argument order
    with pytest.raises(LookupError, match="not in the results database"):
        build_report_model(con, "no-such-run")
    with pytest.raises(LookupError, match="unknown report section"):
        build_report_model(con, None, sections=["summry"])


def test_neuron_cards_show_concepts_images_and_review(rendered):
    con, run_id, model = rendered["con"], rendered["run_id"], rendered["model"]
    cards = model.section("neurons").blocks[-1].cards
    keys = con.execute("SELECT DISTINCT model, layer, unit FROM neuron_images WHERE run_id = ?", [run_id]).fetchall()
    assert {(c.model, c.layer, c.unit) for c in cards} == set(keys)
    for c in cards:
        top = con.execute(
            "SELECT concept, score FROM neuron_labels WHERE run_id = ? AND model = ? AND layer = ? AND "
            "unit = ? AND rank <= 5 ORDER BY rank",
            [run_id, c.model, c.layer, c.unit],
        ).fetchall()
        assert [k.concept for k in c.concepts] == [t[0] for t in top]
        assert [k.score for k in c.concepts] == [f"{t[1]:.3f}" for t in top]
        assert len(c.images) == 5 and all(im.png_data_uri for im in c.images)
        assert all(dict(map(tuple, im.attributes)).get("view") in ("CC", "MLO") for im in c.images)
    html = rendered["html"]
    for word in ("agree", "disagree", "unsure"):
        assert 'type="radio"' in html and f'value="{word}"' in html  # one radio group per card
    assert '|comment" rows="3"></textarea>' in html  # a multi-line comment


def test_colours_identical_across_charts_and_word_clouds(rendered):
    from dissect_study.engine.report.charts import Palette

    model, html = rendered["model"], rendered["html"]
    green = Palette.from_categories([]).colour("Environmental_and_Natural")
    clouds = [f.svg for f in model.figures() if f.kind == "wordcloud"]
    stacks = [f.svg for f in model.section("top_categories").blocks if False] or [
        b.figure.svg for b in model.section("top_categories").blocks if b.kind == "figure"
    ]
    assert any(f'fill="{green}"' in s for s in clouds)
    assert any(green in s for s in stacks)
    # a category's chip in the concept-set table has the colour its words use in the cloud
    for it in model.legend:
        assert re.search(rf'class="chip" style="background: {it["colour"]}"', html)
