"""Report presentation: colour science, one colour per model / category, accessible markup.

Colour numerics are checked against published data (Sharma et al. 2005's CIEDE2000
test pairs, the WCAG contrast of #767676) and against the palettes' known defect:
the previous category colours red/green are confused under simulated deuteranopia.
"""

from __future__ import annotations

import itertools
import re

import pandas as pd
import pytest
from helpers.report import make_run

from dissect_study.engine.report import charts
from dissect_study.engine.report.colour import (
    contrast_ratio,
    darken_to_contrast,
    delta_e2000,
    difference,
    relative_luminance,
    simulate,
    to_lab,
)

#: CIEDE2000 colour difference above which two category colours count as distinguishable: about
#: five times the ~2 ΔE00 "just noticeable" difference, so categorical colours are told apart at a glance
DISTINCT_DE2000 = 10.0
WCAG_TEXT = 4.5

# ----------------------------------------------------------------------------- colour science


@pytest.mark.parametrize(
    ("lab1", "lab2", "expected"),
    [  # Sharma, Wu & Dalal (2005), Table 1: pairs 1, 7, 10, 17, 25, 34
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (50.0, 0.0, -2.5), 4.3065),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
        ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082),
    ],
)
def test_ciede2000_matches_sharma_test_data(lab1, lab2, expected):
    assert delta_e2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)
    assert delta_e2000(lab2, lab1) == pytest.approx(expected, abs=1e-4)


def test_wcag_contrast_and_lab_known_values():
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#ffffff", "#ffffff") == pytest.approx(1.0)
    assert contrast_ratio("#767676") == pytest.approx(4.54, abs=0.01)  # the familiar AA grey on white
    assert contrast_ratio("#777777") < WCAG_TEXT < contrast_ratio("#767676")
    assert contrast_ratio("#336699", "#ffffff") == pytest.approx(contrast_ratio("#ffffff", "#336699"))
    # naive luminance: WCAG 2.x formula written out for one colour
    r, g, b = (0x33 / 255, 0x66 / 255, 0x99 / 255)
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    assert relative_luminance("#336699") == pytest.approx(0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2])
    assert to_lab("#ffffff") == pytest.approx((100.0, 0.0, 0.0), abs=1e-3)
    assert to_lab("#000000") == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)
    assert to_lab("#ff0000") == pytest.approx((53.24, 80.09, 67.20), abs=0.05)  # sRGB red in CIELAB (D65)


def test_deuteranopia_simulation_confuses_red_and_green_but_keeps_greys():
    for grey in ("#000000", "#808080", "#ffffff"):
        assert simulate(grey, "deuteranopia") == grey  # each Machado row sums to 1: neutrals stay neutral
    # the classic red/green confusion: far apart for normal vision, close for a deuteranope
    red, green = "#d62728", "#2ca02c"  # the report's former 'action' and 'environmental' colours
    assert difference(red, green) > 60
    assert difference(red, green, "deuteranopia") < DISTINCT_DE2000
    # blue vs yellow stays far apart (a deuteranope keeps the blue-yellow axis)
    assert difference("#0000ff", "#ffff00", "deuteranopia") > 60


def test_darken_to_contrast_reaches_the_minimum_and_keeps_dark_colours():
    for c in ("#ddcc77", "#88ccee", "#ffffff", "#f0e442"):
        d = darken_to_contrast(c)
        assert WCAG_TEXT <= contrast_ratio(d) < WCAG_TEXT + 0.2
    assert darken_to_contrast("#332288") == "#332288"


# ----------------------------------------------------------------------------- palettes


def _palette_sets() -> dict[str, list[str]]:
    cats = list(charts.CATEGORY_COLOURS.values()) + list(charts.EXTRA_COLOURS[:2]) + [charts.UNCATEGORISED_COLOUR]
    return {
        "categories": cats,
        "models": list(charts.MODEL_COLOURS),
        "domains": list(charts.DOMAIN_COLOURS.values()),
        "nominal": list(charts.NOMINAL_COLOURS),
    }


@pytest.mark.parametrize("deficiency", [None, "deuteranopia", "protanopia"])
@pytest.mark.parametrize("which", ["categories", "models", "domains", "nominal"])
def test_palettes_stay_distinguishable_under_colour_vision_deficiency(which, deficiency):
    colours = _palette_sets()[which]
    assert len(set(colours)) == len(colours)
    worst = min(
        ((difference(a, b, deficiency), a, b) for a, b in itertools.combinations(colours, 2)), key=lambda t: t[0]
    )
    assert worst[0] >= DISTINCT_DE2000, worst


def test_former_category_palette_fails_the_same_check():
    # the check can fail: the former colours had Findings/Interpretations and Action/Environmental
    # indistinguishable under deuteranopia (the defect this palette replaces)
    assert difference("#9467bd", "#1f77b4", "deuteranopia") < DISTINCT_DE2000
    assert difference("#d62728", "#2ca02c", "deuteranopia") < DISTINCT_DE2000


def test_models_keep_one_colour_whatever_the_chart_and_its_order():
    p = charts.Palette().assign_models(["G", "M", "C4"])
    assert p.model_colour("M") == charts.MODEL_COLOURS[1]
    assert p.model_scale(["C4", "M"]).to_dict()["range"] == [p.model_colour("C4"), p.model_colour("M")]
    assert p.model_colour("new") == charts.MODEL_COLOURS[3] and p.model_colour("new") == charts.MODEL_COLOURS[3]
    # charts with different model subsets: M has one colour when the report's palette is passed ...
    tau = pd.DataFrame({"model": ["G", "M", "C4"], "layer": ["l1"] * 3, "tau": [0.1, 0.2, 0.3]})
    task = pd.DataFrame({"model": ["M", "C4"], "layer": ["l1"] * 2, "task": ["mass"] * 2, "count": [1, 2]})
    a = _legend(charts.tau_chart(tau, ["l1"], ["G", "M", "C4"], p))
    b = _legend(charts.task_chart(task, ["l1"], ["M", "C4"], "concepts", p))
    assert a["M"] == b["M"] == p.model_colour("M") and a["C4"] == b["C4"]
    # ... and not without it (the defect: colour by position in each chart)
    c = _legend(charts.task_chart(task, ["l1"], ["M", "C4"], "concepts"))
    assert c["M"] != a["M"]


_LEGEND = re.compile(r'role-legend-symbol".*?fill="(#[0-9a-fA-F]{6})".*?role-legend-label".*?>([^<]*)</text>', re.S)


def _legend(svg: str) -> dict[str, str]:
    """label -> colour of a vega legend in an exported SVG."""
    return {label: colour.lower() for colour, label in _LEGEND.findall(svg)}


# ----------------------------------------------------------------------------- the rendered report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from dissect_study.engine.report import build_report_model, render_html
    from dissect_study.engine.store.database import connect

    d = tmp_path_factory.mktemp("presentation")
    db = d / "results.duckdb"
    run_id = make_run(db, models=("G", "M", "C4"), n_concepts=100, neurons=(6, 12, 32), n_images=24)
    con = connect(db, read_only=True)
    try:
        model = build_report_model(con, run_id)
    finally:
        con.close()
    html = render_html(model)
    (d / "report.html").write_text(html, encoding="utf-8")
    return dict(model=model, html=html, path=d / "report.html")


def test_every_figure_gives_a_model_and_a_category_the_same_colour(report):
    model = report["model"]
    models = {"G", "M", "C4"}
    seen: dict[str, set[str]] = {}
    figures_with_models = 0
    for f in model.figures():
        legend = _legend(f.svg)
        if models & set(legend):
            figures_with_models += 1
        for label, colour in legend.items():
            seen.setdefault(label, set()).add(colour)
        for item in f.legend:  # HTML legends (word clouds)
            seen.setdefault(item["title"], set()).add(item["colour"].lower())
    assert figures_with_models >= 2
    assert {m: len(seen[m]) for m in models if m in seen} == {m: 1 for m in models if m in seen}
    titles = {t for t, _ in charts.Palette.from_categories(charts.CATEGORY_TITLES).legend()}
    for t in titles & set(seen):
        assert len(seen[t]) == 1, (t, seen[t])
    assert len(titles & set(seen)) >= 3  # categories did appear in several figures


def test_word_cloud_text_contrast_and_accessible_name(report):
    clouds = [f.svg for f in report["model"].figures() if f.kind == "wordcloud"]
    assert clouds
    tag = re.compile(r'<rect [^>]*fill="(#[0-9a-fA-F]{6})"/><text [^>]*fill="(#[0-9a-fA-F]{6})"')
    for svg in clouds:
        head = re.match(r'<svg [^>]*role="img" aria-label="([^"]+)">\s*<title>([^<]+)</title>', svg)
        assert head and head.group(1) == head.group(2) and head.group(1).startswith("Word cloud of ")
        pairs = tag.findall(svg)
        assert len(pairs) == svg.count("<text ")
        for fill, ink in pairs:
            assert contrast_ratio(ink, fill) >= WCAG_TEXT, (fill, ink)


def test_word_cloud_tags_reach_contrast_for_every_palette_colour():
    from dissect_study.engine.report.wordcloud import Word, wordcloud_svg

    colours = _palette_sets()["categories"] + list(charts.EXTRA_COLOURS) + ["#767676", "#808080", "#ffffff"]
    svg, n = wordcloud_svg([Word(f"word {i}", 1.0 - i / 100, c) for i, c in enumerate(colours)])
    assert n == len(colours)
    for fill, ink in re.findall(r'fill="(#[0-9a-fA-F]{6})"/><text [^>]*fill="(#[0-9a-fA-F]{6})"', svg):
        assert contrast_ratio(ink, fill) >= WCAG_TEXT, (fill, ink)


def test_landmarks_captions_headings_and_full_size_thumbnails(report):
    html, model = report["html"], report["model"]
    assert html.count("<main") == 1 and html.index("<main") > html.index("</header>")
    tables = [b.table for s in model.sections for b in s.blocks if b.kind == "table" and b.table is not None]
    captioned = [t for t in tables if t.caption]
    assert captioned and html.count('<caption class="table-caption">') == len(captioned)
    assert 'p class="table-caption"' not in html
    cards = [c for s in model.sections for b in s.blocks if b.kind == "cards" for c in b.cards]
    assert cards and html.count('<h3 class="card-title">') == len(cards)
    # every thumbnail links to its own figure (shown full size by :target), and that figure exists
    links = re.findall(r'<a class="thumb-open" href="#([^"]+)"', html)
    assert len(links) == sum(1 for c in cards for im in c.images if im.png_data_uri)
    for target in links:
        assert html.count(f'id="{target}"') == 1


def test_status_chart_row_labels_are_whole():
    labels = [f"blocks.{i} · partial: Cdensity+Cmass+Ccalc{'x' * i}" for i in range(3)] + ["blocks.4 · shared by all"]
    df = pd.DataFrame({"status": labels, "category": ["Interpretations"] * 4, "count": [1, 2, 3, 4], "order": 0})
    svg = charts.status_by_category_chart(df, charts.Palette.from_categories(["Interpretations"]), labels, "concepts")
    for label in labels:
        assert f">{label}</text>" in svg
    assert "…" not in svg


def test_band_axis_slants_labels_only_when_they_do_not_fit():
    narrow = charts.band_axis(["M", "Cdensity", "Cmass", "Ccalc"], 41).to_dict()
    wide = charts.band_axis(["M", "Cdensity", "Cmass", "Ccalc"], 120).to_dict()
    assert narrow["labelAngle"] != 0 and wide["labelAngle"] == 0
    assert charts.label_width(["Cdensity"]) > charts.label_width(["M"]) > 0


def test_every_figure_svg_is_one_named_image(report):
    html = report["html"]
    svgs = re.findall(r'<div class="figure-body[^>]*>(<svg\b[^>]*>)', html)
    assert len(svgs) == len(report["model"].figures())
    for tag in svgs:
        assert 'role="img"' in tag and re.search(r'aria-label="(Figure \d+\. |Word cloud of )', tag), tag[:200]


def test_svg_named_escapes_and_keeps_an_existing_name():
    from dissect_study.engine.report.render import svg_named

    out = str(svg_named('<svg width="1"><text>x</text></svg>', 'a <b> & "c"'))
    assert out.startswith('<svg width="1" role="img" aria-label="a &lt;b&gt; &amp; &#34;c&#34;">')
    named = '<svg role="img" aria-label="kept"></svg>'
    assert str(svg_named(named, "other")) == named
