"""Execute a plan, stage by stage, in the order of the data flow (docs/METHOD.md §1).

`Executor` holds one run's state; each stage is a function over it, in the package
named for the stage:

    build                      engine/build.py           concept sets, probes, models
    passes                     engine/passes/execute.py  text, target (hooked) and image passes
    scores                     engine/scores/execute.py  similarity, labels, thresholds
    inputs                     engine/store/inputs.py    what the run used (models, probes, images)
    sanity, calibration,       engine/analyses/execute.py
      analyses
    neuron maps                engine/passes/neuron_maps.py
    store                      engine/store/database.py  one transaction (analyses computed there)
    report                     engine/report/

Every expensive step goes through the content-keyed cache, so an interrupted run
loses nothing but time and a re-run recomputes nothing.  All results are gathered
in a `RunRecord` and written to DuckDB in one transaction at the very end: a
failure anywhere leaves the database exactly as it was.  (The large per-layer tables
wait in a spill file beside the database, not in memory: engine/store/database.py.)
The image passes run in this process or, with `executor="ray"`, as shards on a Ray
cluster (engine/passes/shards.py, engine/passes/ray_executor.py).
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dissect_study import __version__
from dissect_study.dsl.checker import CheckedStudy
from dissect_study.engine.cache import Cache, default_cache_dir
from dissect_study.engine.concepts import ConceptSet
from dissect_study.engine.models.base import BuildContext, Dissector, Target
from dissect_study.engine.passes.shards import make_passes
from dissect_study.engine.plan.steps import Plan
from dissect_study.engine.probes.base import Probe
from dissect_study.engine.store import database as store
from dissect_study.engine.store.locate import RESULTS_DB_NAME
from dissect_study.errors import DissectStudyError


class RunError(DissectStudyError):
    """A run-time problem the user can fix (missing file, unset variable, bad layer)."""


@dataclass
class RunOptions:
    db: Path | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    device: str | None = None  # overrides the study's `device`
    batch_size: int | None = None
    quiet: bool = False
    strict: bool = False
    reports: bool = True
    calibration: bool = True
    #: called with (run_id, database) once the run is committed, before its reports are rendered
    on_stored: Callable[[str, Path], None] | None = None
    #: where the model passes run: "local" (this process) or "ray" (engine/passes/ray_executor.py)
    executor: str = "local"
    #: the Ray cluster for executor "ray" (None: $RAY_ADDRESS, else a local cluster)
    address: str | None = None


@dataclass
class RunResult:
    run_id: str
    db: Path
    reports: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


logger = logging.getLogger(__name__)


class _Log:
    """The run's voice on top of `logging`: one line per finished step, and warnings the run keeps.

    Why a class and not the bare logger: a warning also lands in the run's `warnings`
    table, so it is recorded here as well as logged.  `quiet` (RunOptions) demotes step
    summaries to DEBUG, so a library caller can silence them without touching the
    logging configuration; the CLI's -v still shows them.
    """

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.warnings: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        logger.log(logging.DEBUG if self.quiet else logging.INFO, msg)

    def warn(self, step: str, msg: str) -> None:
        self.warnings.append((step, msg))
        logger.warning(msg)


# ----------------------------------------------------------------------------- executor


class Executor:
    """Runs one plan; the plan is its only input besides the run options (no study object)."""

    def __init__(self, plan: Plan, options: RunOptions):
        self.plan = plan
        self.opt = options
        self.log = _Log(options.quiet)
        self.base_dir = str(Path(plan.study_path).resolve().parent)
        self.cache = Cache(Path(options.cache_dir or default_cache_dir()), enabled=options.use_cache)
        self.run_id = store.new_run_id()
        #: where the run is stored; its large per-layer tables stream to a spill file beside it
        #: as they are scored and are committed with the rest at the end (engine/store/database.py)
        self.db_path = Path(options.db) if options.db else Path(self.base_dir) / RESULTS_DB_NAME
        self.record = store.RunRecord(self.run_id, {}, spill=store.Spill(self.db_path, self.run_id))
        #: the model passes' executor (engine/passes/shards.py); Ray is imported only when chosen
        self.passes = make_passes(options.executor, options.address)
        self.concept_sets: dict[str, ConceptSet] = {}
        self.probes: dict[str, Probe] = {}
        self.probe_rows: dict[str, list[int]] = {}
        self.dissectors: dict[str, Dissector] = {}
        self.targets: dict[str, Target] = {}
        self.acts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.act_rows: dict[tuple[str, str], list[int]] = {}
        #: probe rows asked of each target pass (act_rows holds those actually read)
        self.act_requested: dict[tuple[str, str], list[int]] = {}
        self.text_emb: dict[tuple[str, str], torch.Tensor] = {}
        self.img_emb: dict[tuple[str, str], tuple[torch.Tensor, list[int]]] = {}
        #: rows the zero-shot check uses when the dissector embedded only a top-k union
        self.sanity_rows: dict[tuple[str, str], list[int] | None] = {}
        self.layer_names: dict[str, list[tuple[str, str | None]]] = {}
        self.S: dict[tuple[str, str], torch.Tensor] = {}
        #: (model, layer, unit, top) of each `show neuron`, filled by the analyses
        self.neuron_requests: list[tuple[str, str, int, int]] = []
        #: set by the build stage: the device every pass runs on, and the models' build context
        self.device: str = "cpu"
        self.ctx: BuildContext | None = None

    # ------------------------------------------------------------------ build

    # ------------------------------------------------------------------ passes

    # ------------------------------------------------------------------ score + label

    # ------------------------------------------------------------------ record

    def _optional(self, step: str, fn: Callable[[], None]) -> None:
        """Run a step the study did not ask for; if it cannot run on this data, warn and go on.

        Only the study's own dissections may fail a run (`--strict` makes optional steps fatal).
        """
        try:
            fn()
        except Exception as e:
            if self.opt.strict:
                raise
            logging.getLogger(__name__).debug("optional step %s failed", step, exc_info=True)
            self.log.warn(step, f"{step} skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self.record.frames.pop(step, None)

    # ------------------------------------------------------------------ analyses

    # ------------------------------------------------------------------ neuron cards

    # ------------------------------------------------------------------ all
    def execute(self) -> RunResult:
        """Run the plan; whatever happens, the run's spill file does not outlive it."""
        try:
            return self._execute()
        finally:
            self.passes.close()
            if self.record.spill is not None:
                self.record.spill.discard()

    def _execute(self) -> RunResult:
        from dissect_study.engine import preflight
        from dissect_study.engine.analyses.execute import analyses, calibration, sanity
        from dissect_study.engine.analyses.label_checks import check_annotations, known_neurons, label_evidence
        from dissect_study.engine.build import build
        from dissect_study.engine.passes.execute import run_passes
        from dissect_study.engine.passes.neuron_maps import neuron_images
        from dissect_study.engine.scores.execute import score
        from dissect_study.engine.store.inputs import describe_inputs

        t0 = time.perf_counter()
        started = _dt.datetime.now()
        if self.cache.enabled:
            self.log.info(f"cache     {self.cache.root} (--cache-dir or $DISSECT_STUDY_CACHE moves it)")
        preflight.before_build(self)
        build(self)
        preflight.after_build(self)
        check_annotations(self)
        run_passes(self)
        score(self)
        describe_inputs(self)
        sanity(self)
        self._optional("calibration", lambda: calibration(self))
        self._optional("label_evidence", lambda: label_evidence(self))
        self._optional("known_neurons", lambda: known_neurons(self))
        analyses(self)
        neuron_images(self)
        for step, msg in self.log.warnings:
            self.record.add("warnings", dict(step=step, message=msg))
        self.record.run = dict(
            study_path=str(Path(self.plan.study_path).resolve()),
            study_title=self.plan.title,
            study_sha256=self.plan.study_sha256,
            study_text=self.plan.study_text,
            started_at=started,
            finished_at=_dt.datetime.now(),
            status="ok",
            tool_version=__version__,
            params=dict(
                device=self.device,
                cache=str(self.cache.root) if self.opt.use_cache else None,
                batch_size=self.opt.batch_size,
                executor=self.opt.executor,
                strict=self.opt.strict,
                torch=torch.__version__,
                python=platform.python_version(),
                machine=platform.machine(),
            ),
        )
        db = self.db_path
        store.write_run(db, self.record)
        self.log.info(f"stored    run {self.run_id} in {db}")
        if self.opt.on_stored is not None:
            self.opt.on_stored(self.run_id, db)
        result = RunResult(run_id=self.run_id, db=db, warnings=[m for _, m in self.log.warnings])
        if self.opt.reports:
            from dissect_study.engine.report import write_report

            for r in self.plan.reports:
                assert isinstance(r.out, str)  # build() refused unset report paths
                out = Path(r.out)
                if not out.is_absolute():
                    out = Path(self.base_dir) / out
                t1 = time.perf_counter()
                paths = write_report(
                    db,
                    out,
                    run_id=self.run_id,
                    formats=tuple(r.formats),
                    sections=list(r.sections) if r.sections else None,
                )
                result.reports.extend(paths)
                self.log.info(f"report    {', '.join(str(p) for p in paths)} ({time.perf_counter() - t1:.1f}s)")
        result.seconds = time.perf_counter() - t0
        return result


def run_study(study: CheckedStudy, options: RunOptions) -> RunResult:
    """Plan a checked study and execute the plan."""
    from dissect_study.engine.plan.steps import build_plan

    return Executor(build_plan(study), options).execute()
