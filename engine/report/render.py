"""Render the report model: Jinja -> one self-contained HTML file; WeasyPrint -> A4 PDF.

The PDF is printed from the very HTML the browser shows (print.css carries the
@page rules), so the two formats cannot diverge.  Jinja runs with autoescape
ON: every study title, concept name and path is escaped; the only `| safe`
values are SVGs this package generated (their text nodes are escaped by
vl-convert and `wordcloud.py`) and PNG data URIs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import duckdb
import jinja2
from markupsafe import Markup, escape

from dissect_study.engine.report.model import ReportError, ReportModel, build_report_model

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "report_templates"


def _env() -> jinja2.Environment:
    if not (TEMPLATE_DIR / "report.html.j2").exists():
        raise FileNotFoundError(f"{TEMPLATE_DIR}: report templates are missing (report.html.j2); reinstall dissect-study")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,  # always, whatever the extension: every string in the model is user data
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["wbr"] = wbr
    return env


_LONG_TOKEN = re.compile(r"\S{28,}")


def wbr(value: object) -> Markup:
    """Escape, allowing line breaks after / _ . = , - : inside long tokens (paths, hashes, JSON).

    So a long path wraps inside its table cell instead of running off the page.
    Break points are marked on the raw text, the text is escaped, and only then
    the marks become <wbr> -- so no entity is ever split and nothing else is markup.
    """
    mark = "\x00"
    text = str(value).replace(mark, "")

    def breakable(m: re.Match) -> str:
        tok = m.group(0)
        if re.search(r"[/_.=,:\-]", tok):
            return re.sub(r"([/_.=,:\-])", "\\1" + mark, tok)
        return mark.join(tok[i:i + 16] for i in range(0, len(tok), 16))  # hashes: every 16 characters

    text = _LONG_TOKEN.sub(breakable, text)
    return Markup(str(escape(text)).replace(mark, "<wbr>"))


def render_html(model: ReportModel) -> str:
    """The report as one HTML string: inline CSS, inline SVG charts, PNG data URIs; no external URL."""
    css = (TEMPLATE_DIR / "print.css").read_text(encoding="utf-8")
    return _env().get_template("report.html.j2").render(r=model, css=css)


def render_pdf(model: ReportModel, path: str | Path, html: str | None = None) -> Path:
    """Print the report's HTML to an A4 PDF with WeasyPrint (fonts embedded, fillable review boxes)."""
    import weasyprint
    from weasyprint.urls import URLFetcher

    path = Path(path)
    html = html if html is not None else render_html(model)
    # WeasyPrint logs every unsupported CSS property of vega's SVG at WARNING; keep the console clean
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    # self-contained: only inline data: URIs may be fetched, never a file or the network
    fetcher = URLFetcher(allowed_protocols={"data"})
    doc = weasyprint.HTML(string=html, base_url=str(TEMPLATE_DIR), url_fetcher=fetcher)
    doc.write_pdf(str(path), pdf_forms=True)
    return path


def write_report(db_path: str | Path, out_dir: str | Path, run_id: str | None = None,
                 formats: Sequence[str] = ("html", "pdf"), sections: list[str] | None = None) -> list[Path]:
    """Build the model of one stored run and write `report.html` and/or `report.pdf` into `out_dir`."""
    from dissect_study.engine.store.database import connect

    bad = [f for f in formats if f not in ("html", "pdf")]
    if bad:
        raise ReportError(f"unknown report format(s) {', '.join(bad)}; choose from html, pdf")
    con = connect(db_path, read_only=True)
    try:
        model = build_report_model(con, run_id=run_id, sections=sections)
    except duckdb.CatalogException as e:
        raise ReportError(f"{db_path}: not a dissect-study results database ({e})") from None
    finally:
        con.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = render_html(model)
    paths: list[Path] = []
    if "html" in formats:
        p = out / "report.html"
        p.write_text(html, encoding="utf-8")
        paths.append(p)
    if "pdf" in formats:
        paths.append(render_pdf(model, out / "report.pdf", html=html))
    return paths
