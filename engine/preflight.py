"""Pre-flight: refuse a run for every reason that can be known before the work it would waste.

Why: a typo in an analysis layer, a `show neuron` unit past the layer's width, a
--db in a missing folder or an unwritable cache used to surface after the model
passes (minutes to hours) or after training the demo models.  Like dbt's
`requires`, each check states what a stage will need, and all of them run before
that stage:

* `before_build` -- what needs no model: the results database (writable, not of a
  newer schema), the cache folder, the report folders;
* `after_build` -- what needs the built probes and models (their sizes, layer names
  and widths) but no probe pass: probe sizes against each similarity's needs, the
  analyses' layers, `show neuron` units, category filters against the loaded
  concept sets.

Every problem found is reported at once, as one `RunError`.  The checks reuse the
functions the later stages call (layer resolution, filter resolution, the
probe-size rule), so pre-flight and run cannot disagree.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dissect_study.dsl.checker import UnsetEnv
from dissect_study.dsl.vocabulary import min_probe_images
from dissect_study.errors import DissectStudyError

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor

logger = logging.getLogger(__name__)


def results_db(ex: Executor) -> Path:
    """The database the run will write: --db, else results.duckdb beside the study."""
    from dissect_study.engine.store.locate import RESULTS_DB_NAME

    return Path(ex.opt.db) if ex.opt.db else Path(ex.base_dir) / RESULTS_DB_NAME


def before_build(ex: Executor) -> None:
    """Checks that need no model: database, cache and report folders."""
    problems = _database(ex) + _cache(ex) + _report_folders(ex)
    _raise(problems, "before building anything")


def after_build(ex: Executor) -> None:
    """Checks that need the built probes and models, before any probe pass."""
    problems = _probe_sizes(ex) + _analysis_layers(ex) + _neuron_units(ex) + _filters(ex)
    _raise(problems, "before any model pass")


def _raise(problems: list[str], when: str) -> None:
    if not problems:
        return
    from dissect_study.engine.run import RunError

    if len(problems) == 1:
        raise RunError(f"{problems[0]} (found {when})")
    raise RunError(f"{len(problems)} problems found {when}:\n" + "\n".join(f"- {p}" for p in problems))


# ----------------------------------------------------------------------------- before build


def _database(ex: Executor) -> list[str]:
    from dissect_study.engine.store.database import check_writable_database

    try:
        check_writable_database(results_db(ex))
    except DissectStudyError as e:
        return [str(e)]
    return []


def _uses_demo_models(ex: Executor) -> bool:
    return any(s.func == "demo" for s in (*ex.plan.dissectors, *ex.plan.targets))


def _cache(ex: Executor) -> list[str]:
    """The cache must take files when it is used (and the demo models are cached even with --no-cache)."""
    if not (ex.cache.enabled or _uses_demo_models(ex)):
        return []
    root = ex.cache.root
    problem = _creatable_folder(root)
    if problem is None and root.is_dir():
        try:  # the real test where the folder exists; nothing is created otherwise
            with tempfile.NamedTemporaryFile(dir=root, prefix=".preflight-"):
                pass
        except OSError as e:
            problem = f"{root} is not writable ({e.strerror or e})"
    if problem is None:
        return []
    return [
        f"the cache folder cannot be used: {problem}; choose another with --cache-dir DIR or "
        "$DISSECT_STUDY_CACHE" + ("" if _uses_demo_models(ex) else ", or run with --no-cache")
    ]


def _report_folders(ex: Executor) -> list[str]:
    """Each report folder must exist as a folder or be creatable under a writable one."""
    if not ex.opt.reports:
        return []
    problems = []
    for r in ex.plan.reports:
        if isinstance(r.out, UnsetEnv):
            continue  # build() refuses it with the variable's name
        out = Path(r.out).expanduser()
        if not out.is_absolute():
            out = Path(ex.base_dir) / out
        problem = _creatable_folder(out)
        if problem:
            problems.append(f"report {r.out!r}: {problem}; choose another folder or run with --no-report")
    return problems


def _creatable_folder(path: Path) -> str | None:
    """Why `path` cannot be (or become) a writable folder, or None."""
    p = path
    while not p.exists():
        if p.parent == p:
            return f"{path} has no existing parent folder"
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a folder" if p == path else f"{p} is a file, so {path} cannot be created"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


# ----------------------------------------------------------------------------- after build


def _probe_sizes(ex: Executor) -> list[str]:
    """Each dissection's probe holds enough images for its similarity (the check-time rule, on built probes)."""
    problems = []
    for x in ex.plan.dissections:
        probe = ex.probes[x.probe]
        n = len({it.image_id for it in probe.items}) if x.options.get("dedup_images", True) else len(probe)
        need, why = min_probe_images(x.similarity, x.similarity_params)
        if n < need:
            problems.append(
                f"dissect {x.target} (line {x.line}): probe {x.probe} has {n} usable image"
                f"{'s' * (n != 1)}, {x.similarity} needs at least {need}: {why}"
            )
    return problems


def _analysis_layers(ex: Executor) -> list[str]:
    """Every analysis's layers resolve on its models and are dissected (the analyses stage's own rule)."""
    from dissect_study.engine.analyses.execute import _analysis_layers as resolve

    problems = []
    for a in ex.plan.analyses:
        try:
            resolve(ex, a, list(a.models))
        except DissectStudyError as e:
            problems.append(str(e))
    return problems


def _neuron_units(ex: Executor) -> list[str]:
    """`show neuron M.LAYER[UNIT]` and `review M.LAYER[u, ...]`: every unit must be below the layer's width."""
    from dissect_study.engine.analyses.execute import _analysis_layers as resolve

    problems = []
    for a in ex.plan.analyses:
        if a.kind == "review" and a.options.get("select") == "units" and a.models:
            units = [int(u) for u in a.options.get("units") or ()]
        elif a.kind == "neuron" and a.unit is not None and a.models:
            units = [a.unit]
        else:
            continue
        model = a.models[0]
        try:
            layers = resolve(ex, a, [model])
        except DissectStudyError:
            continue  # reported by _analysis_layers
        widths = {info.name: info.channels for info in ex.targets[model].layers()}
        for layer in layers:
            width = widths.get(layer, 0)
            for unit in units:
                if width > 0 and unit >= width:
                    problems.append(
                        f"line {a.span.line}: {a.text!r}: layer {layer} of {model} has {width} neurons "
                        f"(units 0..{width - 1}), so there is no unit {unit}"
                    )
    return problems


def _filters(ex: Executor) -> list[str]:
    """`on LEVEL NAME` names a group of the loaded concept set (the analyses' own resolution, on its rows)."""
    import duckdb

    from dissect_study.engine.analyses.macros import resolve_filter
    from dissect_study.engine.store.database import TABLES

    problems = []
    concepts_of = {x.target: x.concepts for x in ex.plan.dissections}
    for a in ex.plan.analyses:
        if a.filter is None or not a.models or a.models[0] not in concepts_of:
            continue
        cs = ex.concept_sets.get(concepts_of[a.models[0]])
        if cs is None:
            continue
        con = duckdb.connect(":memory:")
        try:
            con.execute(TABLES["concepts"])
            frame = cs.to_frame().assign(run_id="preflight")
            con.register("_concepts", frame)
            con.execute("INSERT INTO concepts BY NAME SELECT * FROM _concepts")
            resolve_filter(con, "preflight", a.filter.level, a.filter.name)
        except DissectStudyError as e:
            problems.append(f"line {a.span.line}: {a.text!r}: {e}")
        finally:
            con.close()
    return problems
