"""Reports: one view model of a stored run, rendered to self-contained HTML and A4 PDF.

`build_report_model` (model.py) reads DuckDB; `render_html` / `render_pdf`
(render.py) lay the model out with Jinja and WeasyPrint; `write_report` does
both for the CLI and the `report` statement of a study.  Heavy imports
(altair, vl-convert, weasyprint) happen only when a report is built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report_model", "render_html", "render_pdf", "write_report", "activation_overlay_png"]


def __getattr__(name: str) -> Any:  # lazy: `dissect-study check` must not import altair
    if name == "build_report_model":
        from dissect_study.engine.report.model import build_report_model

        return build_report_model
    if name in ("render_html", "render_pdf", "write_report"):
        from dissect_study.engine.report import render

        return getattr(render, name)
    if name == "activation_overlay_png":
        from dissect_study.engine.report.overlay import activation_overlay_png

        return activation_overlay_png
    raise AttributeError(name)
