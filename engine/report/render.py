"""Render the report model: Jinja -> one self-contained HTML file; WeasyPrint -> A4 PDF.

The PDF is printed from the very HTML the browser shows (print.css carries the
@page rules), so the two formats cannot diverge.  Jinja runs with autoescape
ON: every study title, concept name and path is escaped; the only `| safe`
values are SVGs this package generated (their text nodes are escaped by
vl-convert and `wordcloud.py`) and PNG data URIs.

Report files are written atomically (engine/atomic.py), all formats together:
after a failure or Ctrl-C the folder holds the previous report files or none,
never a truncated or half-updated set.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import duckdb
import jinja2
from markupsafe import Markup, escape

from dissect_study.engine.atomic import atomic_path
from dissect_study.engine.report.model import ReportError, ReportModel, build_report_model
from dissect_study.engine.review.fields import card_field, doc_field
from dissect_study.errors import DissectStudyError

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "report_templates"


class ReportWriteError(DissectStudyError):
    """The report files cannot be written (folder not creatable or writable, disk full); nothing was."""


def _env() -> jinja2.Environment:
    if not (TEMPLATE_DIR / "report.html.j2").exists():
        raise FileNotFoundError(
            f"{TEMPLATE_DIR}: report templates are missing (report.html.j2); reinstall dissect-study"
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,  # always, whatever the extension: every string in the model is user data
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["wbr"] = wbr
    env.filters["svg_named"] = svg_named
    env.globals["review_field"] = card_field  # review form field names (engine/review/fields.py)
    env.globals["review_doc_field"] = doc_field
    return env


_SVG_OPEN = re.compile(r"<svg\b[^>]*>")


def svg_named(svg: str, name: str) -> Markup:
    """A generated SVG (trusted markup) as one image with an accessible name, unless it already has one.

    Why: a screen reader otherwise walks a chart's every tick label; the figure's
    caption names it, and the data table beside it carries the numbers.
    """
    m = _SVG_OPEN.search(svg)
    if not m or "aria-label=" in m.group(0) or "role=" in m.group(0):
        return Markup(svg)
    tag = (
        m.group(0)[:-1].rstrip("/")
        + f' role="img" aria-label="{escape(name)}"'
        + ("/>" if m.group(0).endswith("/>") else ">")
    )
    return Markup(svg[: m.start()] + tag + svg[m.end() :])


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
        return mark.join(tok[i : i + 16] for i in range(0, len(tok), 16))  # hashes: every 16 characters

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
    pdf = doc.write_pdf(pdf_forms=True)
    path.write_bytes(tidy_form_fields(pdf))
    return path


def tidy_form_fields(pdf: bytes) -> bytes:
    """Make each radio group one field, as the PDF standard (ISO 32000-1, field hierarchies) has it.

    Why: WeasyPrint gives every button of a group its parent's name (/T) and lists
    the buttons among the form's root fields, so readers see each as its own field
    named "verdict.verdict".  Here the buttons become plain widgets of their group.
    """
    import pypdf
    from pypdf.generic import ArrayObject, NameObject

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf)))
    form = writer._root_object.get("/AcroForm")
    if form is None:
        return pdf
    form = form.get_object()
    roots = ArrayObject(f for f in form["/Fields"] if "/Parent" not in f.get_object())
    for field in roots:
        for kid in field.get_object().get("/Kids", []):
            kid = kid.get_object()
            for key in ("/T", "/TU", "/FT"):
                if key in kid:
                    del kid[NameObject(key)]
    form[NameObject("/Fields")] = roots
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write_report(
    db_path: str | Path,
    out_dir: str | Path,
    run_id: str | None = None,
    formats: Sequence[str] = ("html", "pdf"),
    sections: list[str] | None = None,
) -> list[Path]:
    """Build the model of one stored run and write `report.html` and/or `report.pdf` into `out_dir`."""
    from dissect_study.engine.store.database import connect

    formats = tuple(formats)
    if not formats:
        raise ReportError("no report format given; choose html, pdf or both (e.g. --format html,pdf)")
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
    html = render_html(model)
    out = Path(out_dir)
    targets = [out / f"report.{f}" for f in ("html", "pdf") if f in formats]
    try:
        out.mkdir(parents=True, exist_ok=True)
        # every file goes to a temporary name first; they replace the old files only once all are complete
        with ExitStack() as stack:
            for target in targets:
                tmp = stack.enter_context(atomic_path(target))
                if target.suffix == ".html":
                    tmp.write_text(html, encoding="utf-8")
                else:
                    render_pdf(model, tmp, html=html)
    except OSError as e:
        where = f"{e.filename}: " if e.filename and str(e.filename) != str(out) else ""
        raise ReportWriteError(
            f"cannot write the report to {out}: {where}{e.strerror or e}; no report file was written or changed"
        ) from None
    return targets
