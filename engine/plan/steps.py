"""From a checked study to a plan: the shape of the work, fixed before any data is touched.

dbt-style: the checker has validated everything it can without files; the plan
decides *what* to compute and deduplicates shared work -- one text-embedding
pass per (dissector, concept set), one image-embedding pass per (dissector,
probe), one activation pass per (target, probe) covering every layer asked of
that target.  `dissect-study run --dry-run` prints it.

Layer selectors stay symbolic here (`last`, `all`, `_blocks.0-38`): they are
resolved against the built model in `engine/run.py`, because only the model
knows its layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dissect_study.dsl import ast
from dissect_study.dsl.checker import CheckedAnalysis, CheckedReport, CheckedStudy, ResolvedDecl
from dissect_study.dsl.vocabulary import SIMILARITIES


@dataclass(frozen=True)
class DeclStep:
    """Build one declared object (concept set, probe, dissector or target)."""

    kind: str
    name: str
    func: str
    #: checked and defaulted; a value may be a `dsl.checker.UnsetEnv` the executor reports if used
    params: dict[str, Any]
    sample: ast.Sample | None = None
    line: int = 0


@dataclass
class DissectionStep:
    """Label the neurons of one target: its layers, by a dissector, on a probe."""

    target: str
    layers: tuple[ast.LayerItem, ...]  # symbolic: resolved against the built model by the executor
    dissector: str
    probe: str
    concepts: str
    similarity: str
    similarity_params: dict[str, Any]
    options: dict[str, Any]
    line: int = 0

    @property
    def family(self) -> str:
        return SIMILARITIES[self.similarity].family or "full"


@dataclass
class Plan:
    """Everything the executor needs, and nothing it must look up elsewhere.

    dbt-style: the compiled plan is the runner's only input, so a run can be
    planned, printed (`--dry-run`) and executed without the study object.
    """

    title: str
    study_path: str
    study_sha256: str
    #: the study's source text, stored with the run (`runs.study_text`)
    study_text: str = ""
    #: statistic behind each layer's tau in the `layers` table (the study threshold's)
    tau_statistic: str = "mean_top1"
    concept_sets: list[DeclStep] = field(default_factory=list)
    probes: list[DeclStep] = field(default_factory=list)
    dissectors: list[DeclStep] = field(default_factory=list)
    targets: list[DeclStep] = field(default_factory=list)
    dissections: list[DissectionStep] = field(default_factory=list)
    #: (dissector, concept set) pairs: one text pass each
    text_passes: list[tuple[str, str]] = field(default_factory=list)
    #: (dissector, probe) pairs: one image pass each
    image_passes: list[tuple[str, str]] = field(default_factory=list)
    #: (target, probe) pairs: one hooked pass each, all layers at once
    target_passes: list[tuple[str, str]] = field(default_factory=list)
    #: (dissector, probe) -> (target, probe): image passes served by a target pass, because
    #: the target is the dissector's own image tower (`image_tower(d)`); the executor also
    #: finds towers declared otherwise (the demo's `demo("M")`) by their fingerprint
    shared_image_passes: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    analyses: list[CheckedAnalysis] = field(default_factory=list)
    reports: list[CheckedReport] = field(default_factory=list)
    layer_aliases: dict[str, tuple[ast.LayerItem, ...]] = field(default_factory=dict)

    def needed(self) -> tuple[set[str], set[str], set[str], set[str]]:
        """Names of the concept sets, probes, dissectors and targets the dissections use."""
        cs = {d.concepts for d in self.dissections}
        pr = {d.probe for d in self.dissections}
        di = {d.dissector for d in self.dissections}
        ta = {d.target for d in self.dissections}
        return cs, pr, di, ta

    def describe(self) -> str:
        lines = [f"plan for {self.study_path!s}: {self.title!r}"]
        lines.append(
            f"  build: {len(self.concept_sets)} concept set(s), {len(self.probes)} probe(s), "
            f"{len(self.dissectors)} dissector(s), {len(self.targets)} target(s)"
        )
        for d, c in self.text_passes:
            lines.append(f"  text pass   : dissector {d} x concepts {c}")
        for d, p in self.image_passes:
            if (d, p) in self.shared_image_passes:
                t, _ = self.shared_image_passes[(d, p)]
                lines.append(
                    f"  image pass  : dissector {d} x probe {p}, shared with target pass {t} "
                    f"(its image tower: one forward pass serves both)"
                )
            else:
                lines.append(f"  image pass  : dissector {d} x probe {p}")
        for t, p in self.target_passes:
            layers = next(", ".join(layer_item_text(i) for i in x.layers) for x in self.dissections if x.target == t)
            lines.append(f"  target pass : {t} on {p}, layers {layers} (one pass, all layers hooked)")
        for x in self.dissections:
            params = ", ".join(f"{k}={v}" for k, v in x.similarity_params.items())
            lines.append(
                f"  dissect     : {x.target} by {x.dissector} on {x.probe} with {x.concepts} using {x.similarity}({params})"
            )
        for a in self.analyses:
            lines.append(f"  analysis    : {a.text}")
        for r in self.reports:
            lines.append(f"  report      : {r.out} as {', '.join(r.formats)}")
        return "\n".join(lines)


def layer_item_text(item: ast.LayerItem) -> str:
    """Source-like text of a DSL layer item (LayerName / LayerRange / LayerAll)."""
    if isinstance(item, ast.LayerAll):
        return "all"
    if isinstance(item, ast.LayerRange):
        return f"{item.prefix}{item.start}-{item.end}"
    return item.text


def _decl(kind: str, rd: ResolvedDecl) -> DeclStep:
    return DeclStep(kind=kind, name=rd.name, func=rd.func, params=dict(rd.params), sample=rd.sample, line=rd.span.line)


def build_plan(study: CheckedStudy) -> Plan:
    """Turn a CheckedStudy (dsl/checker.py) into a Plan with shared work deduplicated."""
    plan = Plan(
        title=study.title or "",
        study_path=str(study.path),
        study_sha256=study.sha256,
        study_text=study.source,
        tau_statistic=study.default_threshold.statistic,
        layer_aliases=dict(study.layer_aliases),
    )
    for d in study.dissections:
        for t in d.targets:
            plan.dissections.append(
                DissectionStep(
                    target=t,
                    layers=tuple(d.layers),
                    dissector=d.dissector,
                    probe=d.probe,
                    concepts=d.concepts,
                    similarity=d.similarity,
                    similarity_params=dict(d.similarity_params),
                    options=dict(d.options),
                    line=d.span.line,
                )
            )
    cs, pr, di, ta = plan.needed()
    # dissectors referenced by targets (image_tower(mammo), classifier(base=mammo)) are needed too
    for rd in study.targets.values():
        if rd.name in ta:
            for key in ("dissector", "base"):
                if isinstance(rd.params.get(key), str):
                    di.add(rd.params[key])
    # probes referenced by unions are needed before the union
    needed_probes = _probe_closure(study.probes, pr)

    plan.concept_sets = [_decl("concepts", rd) for n, rd in study.concepts.items() if n in cs]
    plan.probes = [_decl("probe", study.probes[n]) for n in _members_first(study.probes) if n in needed_probes]
    plan.dissectors = [_decl("dissector", rd) for n, rd in study.dissectors.items() if n in di]
    plan.targets = [_decl("target", rd) for n, rd in study.targets.items() if n in ta]

    for x in plan.dissections:  # shared work once, in the order the study first asks for it
        _append_once(plan.text_passes, (x.dissector, x.concepts))
        _append_once(plan.image_passes, (x.dissector, x.probe))
        _append_once(plan.target_passes, (x.target, x.probe))
    plan.shared_image_passes = _shared_image_passes(plan)
    plan.analyses = list(study.analyses)
    plan.reports = list(study.reports)
    return plan


def _shared_image_passes(plan: Plan) -> dict[tuple[str, str], tuple[str, str]]:
    """Image passes a declared `image_tower(d)` target pass can serve (fp32, d not in train mode)."""
    towers = {s.name: s.params.get("dissector") for s in plan.targets if s.func == "image_tower"}
    train_mode = {(x.dissector, x.probe) for x in plan.dissections if x.options.get("dissector_train_mode")}
    shared: dict[tuple[str, str], tuple[str, str]] = {}
    for x in plan.dissections:
        key = (x.dissector, x.probe)
        if (
            towers.get(x.target) == x.dissector
            and key not in train_mode
            and key not in shared
            and x.options.get("precision", "fp32") == "fp32"
        ):
            shared[key] = (x.target, x.probe)
    return shared


def _append_once(bucket: list[tuple[str, str]], key: tuple[str, str]) -> None:
    if key not in bucket:
        bucket.append(key)


def _members_first(probes: dict[str, ResolvedDecl]) -> list[str]:
    """Probe names in declaration order, except that a union comes after the probes it names.

    Why: a study may declare `probe mix = union(a, b)` above `a` and `b` (declarations
    may point forward), but a union is built from its built members.  The checker has
    refused cycles, so the depth-first order always ends.
    """
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str, trail: frozenset[str]) -> None:
        if name in placed or name not in probes or name in trail:
            return
        for ref in probes[name].params.get("refs", []) or []:
            place(ref, trail | {name})
        placed.add(name)
        order.append(name)

    for name in probes:
        place(name, frozenset())
    return order


def _probe_closure(probes: dict[str, ResolvedDecl], wanted: set[str]) -> set[str]:
    out: set[str] = set()
    stack = list(wanted)
    while stack:
        n = stack.pop()
        if n in out or n not in probes:
            continue
        out.add(n)
        stack.extend(probes[n].params.get("refs", []) or [])
    return out
