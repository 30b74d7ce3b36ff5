"""Benchmark: render the report of a paper-sized run (5 models x 3 layers x ~760 concepts).

Target (issue): under 60 s on the development machine for model + HTML + PDF.
The run is synthetic (tests/helpers/report.py `make_run`: 24/128/512 neurons at
_blocks.2/19/38 like EfficientNet-B5, 200 probe images, every analysis table,
one neuron card with five overlay thumbnails).  Prints one line per stage.

    .venv/bin/python benchmarks/bench_report.py [--out DIR] [--models 5] [--concepts 760]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.report import make_run  # noqa: E402

from dissect_study.engine.report.model import build_report_model  # noqa: E402
from dissect_study.engine.report.render import render_html, render_pdf  # noqa: E402
from dissect_study.engine.store.database import connect  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="keep db and report here (default: a temp dir)")
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--concepts", type=int, default=760)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_report_"))
    out.mkdir(parents=True, exist_ok=True)
    db = out / "results.duckdb"
    if db.exists():
        db.unlink()
    models = ("G", "M", "C1", "C2", "C3", "C4", "C5")[: args.models]
    if args.models >= 5:
        models = ("G", "M", "C1", "C2", "C4")
    t = time.perf_counter()
    run_id = make_run(db, models=models, n_concepts=args.concepts, neurons=(24, 128, 512), n_images=200)
    print(
        f"synthetic run      {time.perf_counter() - t:6.1f} s  ({len(models)} models x 3 layers x {args.concepts} concepts)"
    )
    t0 = time.perf_counter()
    con = connect(db, read_only=True)
    model = build_report_model(con, run_id)
    con.close()
    t1 = time.perf_counter()
    html = render_html(model)
    (out / "report.html").write_text(html, encoding="utf-8")
    t2 = time.perf_counter()
    render_pdf(model, out / "report.pdf", html=html)
    t3 = time.perf_counter()
    from pypdf import PdfReader

    pages = len(PdfReader(str(out / "report.pdf")).pages)
    print(f"report model       {t1 - t0:6.1f} s  ({len(model.sections)} sections, {len(model.figures())} figures)")
    print(f"html               {t2 - t1:6.1f} s  ({len(html) / 1e6:.2f} MB)")
    print(f"pdf                {t3 - t2:6.1f} s  ({pages} pages)")
    print(f"total              {t3 - t0:6.1f} s  (target < 60 s)   -> {out}")


if __name__ == "__main__":
    main()
