"""Report charts: Altair specs rendered offline to SVG with vl-convert.

Why one module: every chart in a report must agree on two things a reader
relies on -- the colour of a category (docs/METHOD.md §5.10, identical in bar charts
and word clouds) and the order of layers (by depth, never alphabetically:
the reference notebook's lexicographic bug, docs/METHOD.md §11.11).  Both live here,
in `Palette` and in the `layer_order` every chart receives.

Charts are exported with `vl_convert.vegalite_to_svg` (no CDN, no browser) and
their element ids are made unique, so several SVGs can be inlined in one HTML
page without clip paths of one chart leaking into another.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import pandas as pd

FONT = "DejaVu Sans"  # installed locally (fc-list); embedded by WeasyPrint in the PDF

#: docs/METHOD.md §5.10 colours for the paper's broad categories, keyed by normalised name.
#: Paul Tol's "muted" scheme (personal.sron.nl/~pault, 2021): distinct under red-green and blue-yellow
#: colour-vision deficiencies (checked in the tests with colour.py's simulation); hues follow the paper's.
CATEGORY_COLOURS: dict[str, str] = {
    "breast anatomy or structure": "#999933",  # olive (the paper's brown)
    "breast locations": "#ddcc77",  # sand (the paper's orange)
    "findings and characterizations": "#aa4499",  # purple
    "interpretations": "#332288",  # indigo
    "action or follow up": "#cc6677",  # rose (the paper's red)
    "environmental and natural": "#117733",  # green
    "miscellaneous": "#88ccee",  # cyan
}
#: display names of the paper's categories (xlsx sheet names and shipped names map here)
CATEGORY_TITLES: dict[str, str] = {
    "breast anatomy or structure": "Breast anatomy or structure",
    "breast locations": "Breast locations",
    "findings and characterizations": "Findings and characterizations",
    "interpretations": "Interpretations",
    "action or follow up": "Action or follow-up",
    "environmental and natural": "Environmental and natural",
    "miscellaneous": "Miscellaneous",
}
#: extra categories (user concept sets) get these, in sorted order of their normalised names: the rest of
#: Tol's muted scheme first (still colour-blind safe with the seven above), then Tol's "light" scheme
EXTRA_COLOURS = (
    "#44aa99",
    "#882255",
    "#77aadd",
    "#ee8866",
    "#eedd88",
    "#ffaabb",
    "#bbcc33",
    "#aaaa00",
)
UNCATEGORISED = "Uncategorised"
UNCATEGORISED_COLOUR = "#dddddd"  # Tol's pale grey of the muted scheme

#: models: Okabe & Ito (2002) "colour universal design" colours, a separate palette (a model is never a
#: category); assigned once per report in the order of the run's target models (`Palette.assign_models`)
MODEL_COLOURS = (
    "#0072b2",  # blue
    "#e69f00",  # orange
    "#009e73",  # bluish green
    "#d55e00",  # vermillion
    "#cc79a7",  # reddish purple
    "#56b4e9",  # sky blue
    "#000000",  # black
    "#f0e442",  # yellow (last: weakest on white)
)
#: Tol's "high-contrast" blue and yellow: mammography vs non-mammography concepts
DOMAIN_COLOURS = {"mammography": "#004488", "non-mammography": "#ddaa33"}
#: other nominal scales (similarity functions): Tol's "bright" scheme
NOMINAL_COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


def normalise_category(name: str | None) -> str:
    """Case-insensitive key: `_`/`-` -> space, collapsed and stripped.

    So the workbook's sheet names (`Breast_anatomy_or_structure`,
    `" Findings and characterizations"`) and the shipped set's names
    ("Action or follow-up") share one colour.
    """
    if name is None or (isinstance(name, float) and name != name):
        return ""
    s = str(name).replace("_", " ").replace("-", " ").lower()
    return " ".join(s.split())


@dataclass
class Palette:
    """The one category -> colour and model -> colour map of a report.

    Built once per report from every category and target model of the run, so a
    category or a model has the same colour in every figure, table chip and legend.
    """

    extra: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_categories(cls, categories: Iterable[str | None]) -> Palette:
        titles: dict[str, str] = {}
        extras: set[str] = set()
        for c in categories:
            key = normalise_category(c)
            if not key:
                continue
            if key in CATEGORY_COLOURS:
                titles[key] = CATEGORY_TITLES[key]
            else:
                extras.add(key)
                titles.setdefault(key, " ".join(str(c).replace("_", " ").split()))
        extra = {k: col for k, col in zip(sorted(extras), itertools.cycle(EXTRA_COLOURS))}
        return cls(extra=extra, titles=titles)

    def colour(self, category: str | None) -> str:
        key = normalise_category(category)
        if not key:
            return UNCATEGORISED_COLOUR
        return CATEGORY_COLOURS.get(key) or self.extra.get(key) or UNCATEGORISED_COLOUR

    def title(self, category: str | None) -> str:
        key = normalise_category(category)
        if not key:
            return UNCATEGORISED
        return self.titles.get(key) or CATEGORY_TITLES.get(key) or str(category).strip()

    def order(self) -> list[str]:
        """Display titles in a fixed order: the paper's categories first, extras sorted, then none."""
        known = [CATEGORY_TITLES[k] for k in CATEGORY_COLOURS if k in self.titles]
        extra = [self.titles[k] for k in sorted(self.extra)]
        return known + extra

    def scale(self, present: Sequence[str]) -> alt.Scale:
        """An Altair colour scale over the display titles present in one chart."""
        order = [t for t in self.order() + [UNCATEGORISED] if t in set(present)]
        order += [t for t in dict.fromkeys(present) if t not in order]
        return alt.Scale(domain=order, range=[self._colour_of_title(t) for t in order])

    def _colour_of_title(self, title: str) -> str:
        if title == UNCATEGORISED:
            return UNCATEGORISED_COLOUR
        return self.colour(title)

    def legend(self) -> list[tuple[str, str]]:
        return [(t, self._colour_of_title(t)) for t in self.order()]

    def assign_models(self, models: Iterable[str]) -> Palette:
        """Give each model, in this order, the next model colour (models already assigned keep theirs)."""
        for m in models:
            if m not in self.models:
                self.models[m] = MODEL_COLOURS[len(self.models) % len(MODEL_COLOURS)]
        return self

    def model_colour(self, model: str) -> str:
        """The model's colour; a model the report did not announce gets the next free one (and keeps it)."""
        return self.assign_models([model]).models[model]

    def model_scale(self, models: Sequence[str]) -> alt.Scale:
        """An Altair colour scale over the models of one chart, in the report-wide colours."""
        models = list(dict.fromkeys(models))
        return alt.Scale(domain=models, range=[self.model_colour(m) for m in models])


def model_scale(models: Sequence[str], palette: Palette | None = None) -> alt.Scale:
    """Model colours of one chart; pass the report's `palette` so a model keeps its colour across figures."""
    return (palette or Palette()).model_scale(models)


# ----------------------------------------------------------------------------- export

_ID_RE = re.compile(r'\bid="([^"]+)"')


def _uniquify_ids(svg: str, prefix: str) -> str:
    ids = set(_ID_RE.findall(svg))
    if not ids:
        return svg
    for i in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{i}"', f'id="{prefix}{i}"')
        svg = svg.replace(f"url(#{i})", f"url(#{prefix}{i})")
        svg = svg.replace(f'href="#{i}"', f'href="#{prefix}{i}"')
    return svg


_counter = itertools.count(1)


def to_svg(chart: alt.TopLevelMixin) -> str:
    """Render offline to an SVG string (vl-convert), sized by its viewBox for print."""
    import vl_convert as vlc

    spec = chart.to_dict(validate=False)  # our specs are fixed code; validation costs ~0.1 s each
    svg = vlc.vegalite_to_svg(spec)
    svg = _uniquify_ids(svg, f"c{next(_counter)}-")
    return fit_width(svg)


#: A4 width minus the 15 mm margins of print.css, in CSS px (96 dpi)
PAGE_WIDTH_PX = 680


def fit_width(svg: str, max_width: float = PAGE_WIDTH_PX) -> str:
    """Shrink the SVG's width/height attributes (viewBox kept) so it never overflows an A4 column.

    Explicit sizes rather than CSS `height:auto`: WeasyPrint sizes an inline SVG
    with `height:auto` to the column width's aspect box, leaving blank bands.
    """
    m = re.match(r'(<svg [^>]*?)width="([\d.]+)" height="([\d.]+)"', svg)
    if not m:
        return svg
    w, h = float(m.group(2)), float(m.group(3))
    if w > max_width:
        w, h = max_width, h * max_width / w
    return f'{m.group(1)}width="{w:.0f}" height="{h:.0f}"' + svg[m.end() :]


def _config(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    return (
        chart.configure(font=FONT, background="white")
        .configure_axis(labelFontSize=11, titleFontSize=11, labelLimit=180, grid=True, gridColor="#e6e6e6")
        .configure_legend(labelFontSize=11, titleFontSize=11, labelLimit=260, orient="bottom", columns=3)
        .configure_header(labelFontSize=11, titleFontSize=11)
        .configure_view(stroke="#cccccc")
    )


def _facet_width(n: int, total: int = 560, minimum: int = 90) -> int:
    return max(minimum, int(total / max(n, 1)) - 20)


#: axis label size of `_config` (px); labels are measured at this size
LABEL_SIZE = 11


def label_width(labels: Iterable[str], size: float = LABEL_SIZE) -> float:
    """Width in px of the widest label in DejaVu Sans (measured with the font file when present)."""
    from dissect_study.engine.report.wordcloud import text_width  # wordcloud imports this module

    return max((text_width(str(t), size) for t in labels), default=0.0)


def band_axis(labels: Sequence[str], band_px: float) -> alt.Axis:
    """A nominal x axis whose labels never overlap: level when each fits its band, else slanted.

    Why measured: vega's own overlap removal hides labels, and a level label wider
    than its band runs into its neighbour (`Cdensity` into `Cmass` in a 4-model facet).
    """
    if label_width(labels) + 6 <= band_px:
        return alt.Axis(labelAngle=0, labelLimit=0)
    return alt.Axis(labelAngle=-40, labelAlign="right", labelBaseline="middle", labelLimit=0)


#: most layer names a layer axis labels; a deeper axis labels every k-th layer (39 B5 blocks: every 3rd)
MAX_LAYER_LABELS = 14


def layer_ticks(layer_order: Sequence[str], most: int = MAX_LAYER_LABELS) -> list[str]:
    """The layers a layer axis names: all of them up to `most`, else every k-th, first and last included.

    Why: 39 rotated block names overlap into an unreadable band; every point is still drawn.
    """
    layers = list(layer_order)
    if len(layers) <= most:
        return layers
    step = -(-len(layers) // most)
    picked = layers[::step]
    if picked[-1] != layers[-1]:
        if len(layers) - 1 - layers.index(picked[-1]) <= step / 2:
            picked[-1] = layers[-1]  # no two labels closer than half a step
        else:
            picked.append(layers[-1])
    return picked


# ----------------------------------------------------------------------------- charts


def tau_chart(
    df: pd.DataFrame, layer_order: Sequence[str], models: Sequence[str], palette: Palette | None = None
) -> str:
    """Fig. 4a/8: tau per layer, one line per model, layers by depth."""
    chart = (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=45))
        .encode(
            x=alt.X(
                "layer:N",
                sort=list(layer_order),
                title="layer (by depth)",
                axis=alt.Axis(labelAngle=-40, values=layer_ticks(layer_order)),
            ),
            y=alt.Y("tau:Q", title="τ (layer threshold)"),
            color=alt.Color("model:N", scale=model_scale(models, palette), title="model"),
            tooltip=["model", "layer", alt.Tooltip("tau:Q", format=".3f")],
        )
        .properties(width=540, height=260)
    )
    return to_svg(_config(chart))


def domain_chart(df: pd.DataFrame, layer_order: Sequence[str], models: Sequence[str], unit: str) -> str:
    """Fig. 4b: mammography vs non-mammography counts per model, one panel per layer."""
    present = [d for d in DOMAIN_COLOURS if d in set(df["domain"])] + sorted(set(df["domain"]) - set(DOMAIN_COLOURS))
    scale = alt.Scale(domain=present, range=[DOMAIN_COLOURS.get(d, UNCATEGORISED_COLOUR) for d in present])
    layers = [l for l in layer_order if l in set(df["layer"])]
    width = _facet_width(len(layers))
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("model:N", sort=list(models), title=None, axis=band_axis(models, width / max(len(models), 1))),
            xOffset=alt.XOffset("domain:N", sort=present),
            y=alt.Y("count:Q", title=f"captured {unit}"),
            color=alt.Color("domain:N", scale=scale, title="domain"),
        )
        .properties(width=width, height=220)
        .facet(column=alt.Column("layer:N", sort=layers, title=None))
    )
    return to_svg(_config(chart))


def category_stack_chart(
    df: pd.DataFrame, layer_order: Sequence[str], models: Sequence[str], palette: Palette, unit: str
) -> str:
    """Fig. 4c: the top-3 broad categories per model, stacked, one panel per layer."""
    layers = [l for l in layer_order if l in set(df["layer"])]
    width = _facet_width(len(layers))
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("model:N", sort=list(models), title=None, axis=band_axis(models, width / max(len(models), 1))),
            y=alt.Y("count:Q", title=f"captured {unit}", stack="zero"),
            color=alt.Color("category:N", scale=palette.scale(list(df["category"])), title="category"),
            order=alt.Order("rank:Q", sort="ascending"),
        )
        .properties(width=width, height=220)
        .facet(column=alt.Column("layer:N", sort=layers, title=None))
    )
    return to_svg(_config(chart))


def task_chart(
    df: pd.DataFrame, layer_order: Sequence[str], models: Sequence[str], unit: str, palette: Palette | None = None
) -> str:
    """Fig. 9: task-concept counts (mass / calcification / density) per layer and model."""
    tasks = sorted(set(df["task"]))
    layers = [l for l in layer_order if l in set(df["layer"])]
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("layer:N", sort=layers, title=None, axis=alt.Axis(labelAngle=-40)),
            xOffset=alt.XOffset("model:N", sort=list(models)),
            y=alt.Y("count:Q", title=f"captured {unit}"),
            color=alt.Color("model:N", scale=model_scale(models, palette), title="model"),
        )
        .properties(width=_facet_width(len(tasks)), height=200)
        .facet(column=alt.Column("task:N", sort=tasks, title=None))
    )
    return to_svg(_config(chart))


def status_by_category_chart(df: pd.DataFrame, palette: Palette, status_order: Sequence[str], title_x: str) -> str:
    """Table 3 / Fig. 10: counts per status (unique to a model, shared, learned, missed) by category.

    Row labels are shown whole ("blocks.0 · partial: Cdensity+Cmass+Ccalc"); the plot
    narrows to leave them room within the page width.
    """
    labels_px = label_width(status_order)
    width = int(max(220, min(460, PAGE_WIDTH_PX - 40 - labels_px)))
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            y=alt.Y("status:N", sort=list(status_order), title=None, axis=alt.Axis(labelLimit=0)),
            x=alt.X("count:Q", title=title_x, stack="zero"),
            color=alt.Color("category:N", scale=palette.scale(list(df["category"])), title="category"),
            order=alt.Order("order:Q", sort="ascending"),
        )
        .properties(width=width, height=max(60, 26 * len(status_order)))
    )
    return to_svg(_config(chart))


def calibration_chart(df: pd.DataFrame, layer_order: Sequence[str], similarities: Sequence[str]) -> str:
    """Calibration bench: top-1 hit rate per similarity function, per layer (mean over models)."""
    layers = [l for l in layer_order if l in set(df["layer"])]
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("layer:N", sort=layers, title=None, axis=alt.Axis(labelAngle=-40)),
            xOffset=alt.XOffset("similarity:N", sort=list(similarities)),
            y=alt.Y("top1_hit:Q", title="top-1 hit rate", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "similarity:N",
                sort=list(similarities),
                scale=alt.Scale(range=list(NOMINAL_COLOURS)),
                title="similarity",
            ),
        )
        .properties(width=520, height=200)
    )
    return to_svg(_config(chart))


def legend_items(palette: Palette, present: Iterable[str | None]) -> list[dict[str, Any]]:
    """Legend rows (title, colour) for the categories present, in the palette's order."""
    titles = {palette.title(c) for c in present}
    return [
        dict(title=t, colour=c) for t, c in palette.legend() + [(UNCATEGORISED, UNCATEGORISED_COLOUR)] if t in titles
    ]
