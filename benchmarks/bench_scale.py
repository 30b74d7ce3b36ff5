"""Benchmark: a paper-size (RQ2-shaped) run through the real engine, in bounded memory.

The run: 5 targets x EfficientNet-B5's 39 blocks (their real channel counts, 6,992
neurons per model) x the 767 shipped concepts, soft_wpmi(top_k=100), the RQ2
analyses, about 27 million similarity cells.  No model passes worth the name: the
targets are stubs whose 39 "blocks" are fixed random linear maps of the pooled
image (random activations of the right shapes), the dissector is a random projection;
two `show neuron` statements give the report its neuron cards.
Everything after the passes is the product's own code: scoring, streaming to the
spill, the one-transaction write, the SQL analyses, the report.

Two child processes run the same study, one per write path, so their peak RSS are
each their own:

* stream -- the run's per-layer tables stream to a spill file as they are scored
  (engine/store/database.py), copied into the database in the final transaction;
* memory -- the earlier path, every row held in memory until that transaction
  (the baseline; ratios are stream / memory).

Printed per path: peak RSS and peak RSS beyond the inputs (RSS when scoring starts,
the activations and embeddings loaded), scoring time (spill writes included), write
time (the final transaction, analyses included), database size; for the stream run
also the latency of every README example query and of every analysis macro, and the
report (HTML + PDF) render time with its sections, figures and neuron cards.
Goals: beyond-inputs RSS < 2 GiB, write < 60 s, each README query < 1 s, report < 2 min.

    .venv/bin/python benchmarks/bench_scale.py [--images 400] [--models 5] [--threads 1] [--out DIR] [--no-baseline]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch
from torch import nn

#: EfficientNet-B5's 39 MBConv blocks: (repeats, output channels) per stage
B5_STAGES = ((3, 24), (5, 40), (5, 64), (7, 128), (7, 176), (9, 304), (3, 512))
B5_BLOCK_CHANNELS = [c for n, c in B5_STAGES for _ in range(n)]
MODELS = ("M", "C1", "C2", "C3", "C4")
GiB = 1024**3
REPO = Path(__file__).resolve().parents[1]


def study_text(models: tuple[str, ...], images: int) -> str:
    names = ", ".join(models)
    vs = " vs ".join(models)
    last = models[-1]
    return f"""study "RQ2-shaped scale benchmark (synthetic)"
concepts paper = shipped("mammo_v1")
probe vindr = phantom(n={images}, seed=3, height=32)
dissector mammo = demo()
{chr(10).join(f'target {m} = demo("M")' for m in models)}
layer paper = _blocks.2, _blocks.19, _blocks.38
dissect {names}
    at layers _blocks.0-38
    by mammo on vindr with concepts paper
    using soft_wpmi(top_k=100, lambda=1)
    pooling avg batch 64
threshold max mean_top1 >= count concepts
thresholds {names} at layers _blocks.0-38
compare {vs} at layers paper on task density
compare {vs} at layers paper on task mass
compare {vs} at layers paper on task calcification
gained {last} over {models[0]} at layer _blocks.38 on task calcification
compare {models[0]} vs {last} at layer _blocks.38 on category Calcification
show neuron {last}._blocks.38[3] top 5
show neuron {models[0]}._blocks.19[7] top 5
"""


# ----------------------------------------------------------------------------- stub models


def _pooled(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))
    if x.ndim == 3:
        x = x.mean(dim=2)
    x = nn.functional.interpolate(x[None, None], size=(8, 8), mode="area")[0]
    x = (x - x.mean()) / (x.std() + 1e-6)
    return x.expand(3, 8, 8).clone()


class _Block(nn.Module):
    """A stub block: ReLU of a random linear map of the pooled image, as a (B, C, 2, 2) map
    (neuron cards need a spatial output; pooling it gives the linear map back)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(64, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(h))[:, :, None, None].expand(-1, -1, 2, 2)


def _models() -> tuple[type, type]:
    from dissect_study.engine.models.base import Dissector, LayerInfo, Preprocess, Target

    prep = Preprocess({"kind": "bench-scale", "size": 8}, _pooled)

    class StubB5(Target):
        """39 blocks with B5's channel counts; block i is a fixed random map of the pooled image."""

        batch_size = 64

        def __init__(self, name: str) -> None:
            self.name = name
            g = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
            self.net = nn.Module()
            self.net._blocks = nn.ModuleList(_Block(c) for c in B5_BLOCK_CHANNELS)
            with torch.no_grad():
                for blk in self.net._blocks:
                    blk.lin.weight.copy_(torch.randn(blk.lin.weight.shape, generator=g) / 8)
                    blk.lin.bias.copy_(torch.randn(blk.lin.bias.shape, generator=g) / 8)

        @property
        def module(self) -> nn.Module:
            return self.net

        @property
        def preprocess(self) -> Preprocess:
            return prep

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            h = batch[:, 0].flatten(1)
            out = h
            for blk in self.net._blocks:
                out = blk(h)
            return out.mean(dim=(2, 3))

        def layers(self) -> list[LayerInfo]:
            return [LayerInfo(f"_blocks.{i}", c, i) for i, c in enumerate(B5_BLOCK_CHANNELS)]

        def fingerprint(self) -> str:
            return f"bench-scale-b5-{self.name}"

    class StubDissector(Dissector):
        name = "mammo"
        batch_size = 64

        def __init__(self) -> None:
            self.W = torch.randn(64, 512, generator=torch.Generator().manual_seed(0)) / 8

        @property
        def preprocess(self) -> Preprocess:
            return prep

        def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
            return batch[:, 0].flatten(1) @ self.W

        def encode_texts(self, texts: list[str]) -> torch.Tensor:
            rows = []
            for t in texts:
                seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
                rows.append(torch.randn(512, generator=torch.Generator().manual_seed(seed)))
            return torch.stack(rows)

        def fingerprint(self) -> str:
            return "bench-scale-dissector"

    return StubB5, StubDissector


# ----------------------------------------------------------------------------- measurements


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _readme_queries() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    seen: list[str] = []
    for sql in re.findall(r'dissect-study query "([^"]+)"', text):
        if sql not in seen and "SELECT" in sql.upper():
            seen.append(sql)
    return seen


def _time_queries(db: Path, run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from dissect_study.engine.analyses.macros import SPECS, statement_args
    from dissect_study.engine.registry import ANALYSES
    from dissect_study.engine.store.database import connect

    con = connect(db, read_only=True)
    queries = []
    for sql in _readme_queries():
        t = time.perf_counter()
        try:
            rows = len(con.execute(sql).fetchall())
            err = None
        except Exception as e:  # noqa: BLE001 -- reported in the table, not fatal to the benchmark
            rows, err = 0, f"{type(e).__name__}: {e}".splitlines()[0][:80]
        queries.append(dict(sql=sql, seconds=time.perf_counter() - t, rows=rows, error=err))
    analyses = []
    cur = con.execute("SELECT * FROM analyses WHERE run_id = ? ORDER BY analysis_id", [run_id])
    names = [d[0] for d in cur.description]
    for row in [dict(zip(names, r)) for r in cur.fetchall()]:
        args = statement_args(row)
        for n in row["analysis_names"] or ():
            macro = ANALYSES.get(n)
            if macro is None or n not in SPECS:
                continue
            t = time.perf_counter()
            try:
                rows = con.execute(f"SELECT count(*) FROM {macro.call(run_id, args)}").fetchone()[0]
            except duckdb.Error:
                continue  # a macro with arguments beyond the statement's (neuron_profile): not a table of the run
            analyses.append(dict(statement=row["statement"], analysis=n, seconds=time.perf_counter() - t, rows=rows))
    con.close()
    return queries, analyses


def _report(db: Path, run_id: str, out: Path) -> dict[str, Any]:
    from dissect_study.engine.report.model import build_report_model
    from dissect_study.engine.report.render import write_report
    from dissect_study.engine.store.database import connect

    t = time.perf_counter()
    paths = write_report(db, out, run_id=run_id, formats=("html", "pdf"))
    seconds = time.perf_counter() - t
    con = connect(db, read_only=True)
    model = build_report_model(con, run_id)
    con.close()
    cards = sum(len(b.cards) for s in model.sections for b in s.blocks)
    pages = 0
    try:
        from pypdf import PdfReader

        pages = len(PdfReader(str(out / "report.pdf")).pages)
    except ImportError:
        pass
    return dict(
        seconds=seconds,
        sections=len(model.sections),
        figures=len(model.figures()),
        cards=cards,
        pages=pages,
        html_mb=(out / "report.html").stat().st_size / 1e6,
        paths=[str(p) for p in paths],
    )


def child(mode: str, images: int, n_models: int, out: Path) -> dict[str, Any]:
    """One run of the study with the `mode` write path; returns its measurements."""
    from dissect_study.dsl import check_file
    from dissect_study.engine import models as factories
    from dissect_study.engine.run import RunOptions, run_study
    from dissect_study.engine.scores import execute as scores
    from dissect_study.engine.store import database as store

    StubB5, StubDissector = _models()
    factories.build_target = lambda name, func, params, ctx: StubB5(name)  # type: ignore[assignment]
    factories.build_dissector = lambda name, func, params, ctx: StubDissector()  # type: ignore[assignment]
    real_score, real_write, real_append = scores.score, store.write_run, store.Spill.append
    if mode == "memory":
        store.Spill = lambda *a, **k: None  # type: ignore[assignment,misc]  # the all-in-memory record
    m: dict[str, Any] = dict(mode=mode, rss_start=_rss())

    def score(ex: Any) -> None:
        m["rss_inputs"] = _rss()
        t = time.perf_counter()
        real_score(ex)
        m["score_s"] = time.perf_counter() - t

    def write_run(*a: Any, **k: Any) -> Any:
        m["rss_before_write"] = _rss()
        t = time.perf_counter()
        res = real_write(*a, **k)
        m["write_s"] = time.perf_counter() - t
        return res

    spill_s = [0.0]

    def append(self: Any, *a: Any, **k: Any) -> None:
        t = time.perf_counter()
        real_append(self, *a, **k)
        spill_s[0] += time.perf_counter() - t

    scores.score = score  # type: ignore[assignment]
    store.write_run = write_run  # type: ignore[assignment]
    if mode == "stream":
        store.Spill.append = append  # type: ignore[method-assign]
    out.mkdir(parents=True, exist_ok=True)
    study = out / "scale.study"
    study.write_text(study_text(MODELS[:n_models], images), encoding="utf-8")
    checked, diags = check_file(str(study))
    if checked is None:
        raise SystemExit("\n".join(str(d) for d in diags))
    db = out / "results.duckdb"
    db.unlink(missing_ok=True)
    t = time.perf_counter()
    res = run_study(
        checked,
        RunOptions(db=db, cache_dir=out / "cache", quiet=True, reports=False, calibration=False, use_cache=False),
    )
    m.update(
        run_s=time.perf_counter() - t,
        peak_rss=_peak_rss(),
        spill_s=spill_s[0],
        db_mb=db.stat().st_size / 1e6,
        run_id=res.run_id,
    )
    from dissect_study.engine.store.database import connect

    con = connect(db, read_only=True)
    m["cells"] = con.execute("SELECT count(*) FROM similarities").fetchone()[0]
    m["neurons"] = con.execute("SELECT count(*) FROM neurons").fetchone()[0]
    m["concepts"] = con.execute("SELECT count(*) FROM concepts").fetchone()[0]
    con.close()
    if mode == "stream":
        m["queries"], m["analyses"] = _time_queries(db, res.run_id)
        m["report"] = _report(db, res.run_id, out / "report")
    return m


def _row(name: str, value: str, goal: str = "", ratio: str = "") -> None:
    print(f"  {name:<34} {value:>14}  {ratio:>14}  {goal}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400, help="probe images (soft_wpmi's top_k=100 needs >= 100)")
    ap.add_argument("--models", type=int, default=5, choices=range(1, 6))
    ap.add_argument("--out", type=Path, default=None, help="keep databases and report here (default: a temp dir)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the all-in-memory baseline run")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine, README Threads)"
    )
    ap.add_argument("--child", choices=("stream", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    torch.set_num_threads(args.threads)
    if args.child:
        res = child(args.child, args.images, args.models, out / args.child)
        args.json.write_text(json.dumps(res, default=str), encoding="utf-8")
        return
    results: dict[str, dict[str, Any]] = {}
    for mode in ("stream",) if args.no_baseline else ("stream", "memory"):
        js = out / f"{mode}.json"
        cmd = [sys.executable, __file__, "--child", mode, "--images", str(args.images), "--models", str(args.models)]
        cmd += ["--threads", str(args.threads)]
        subprocess.run([*cmd, "--out", str(out), "--json", str(js)], check=True, env=os.environ.copy())
        results[mode] = json.loads(js.read_text())
    s, b = results["stream"], results.get("memory")

    def ratio(key: str) -> str:
        if b is None or not b.get(key):
            return ""
        return f"{s[key] / b[key]:.2f}x baseline"

    for r in (s, b):
        if r:
            r["beyond"] = r["peak_rss"] - r["rss_inputs"]
    print(
        f"bench_scale: {args.models} models x 39 B5 blocks x {s['concepts']} concepts, {args.images} images: "
        f"{s['neurons']:,} neurons, {s['cells']:,} similarity cells ({torch.get_num_threads()} torch threads)"
    )
    print(f"  {'':<34} {'stream':>14}  {'vs memory':>14}  goal")
    _row("peak RSS", f"{s['peak_rss'] / GiB:.2f} GiB", "", ratio("peak_rss"))
    _row("peak RSS beyond inputs", f"{s['beyond'] / GiB:.2f} GiB", "< 2 GiB", ratio("beyond"))
    _row("score (spill writes incl.)", f"{s['score_s']:.1f} s", "", ratio("score_s"))
    _row("  of which spill writes", f"{s['spill_s']:.1f} s")
    _row("write (final transaction)", f"{s['write_s']:.1f} s", "< 60 s", ratio("write_s"))
    _row("whole run", f"{s['run_s']:.1f} s", "", ratio("run_s"))
    _row("database size", f"{s['db_mb']:.0f} MB", "", ratio("db_mb"))
    if b:
        print(
            f"  baseline (memory): peak RSS {b['peak_rss'] / GiB:.2f} GiB, beyond inputs {b['beyond'] / GiB:.2f} GiB, "
            f"write {b['write_s']:.1f} s"
        )
    print("README example queries (each < 1 s):")
    for q in s["queries"]:
        flag = "" if q["error"] is None else f"  ERROR {q['error']}"
        print(f"  {q['seconds'] * 1000:8.0f} ms  {q['rows']:>7} rows  {q['sql'][:90]}{flag}")
    print("analysis macros:")
    for a in s["analyses"]:
        print(f"  {a['seconds'] * 1000:8.0f} ms  {a['rows']:>7} rows  {a['analysis']:<18} {str(a['statement'])[:70]}")
    r = s["report"]
    print(
        f"report (html + pdf): {r['seconds']:.1f} s (goal < 120 s); {r['sections']} sections, {r['figures']} figures, "
        f"{r['cards']} neuron cards, {r['pages']} pages, html {r['html_mb']:.1f} MB -> {out / 'stream' / 'report'}"
    )


if __name__ == "__main__":
    main()
