"""The `review` statement: a review packet of neurons for radiologist review, checked.

    review M at layer last sample 30 seed 7          30 neurons per layer, drawn with seed 7
    review M at layer last top 20                    the 20 best-scoring neurons per layer
    review C4 at layer last on task calcification top 10
    review M at layer last labels unsupported sample 10
    review M.last[3, 17, 42]                         exactly these units

Why a module of its own: the statement's options and rules are written once here,
next to the checker logic that applies them, so the shared checker only dispatches
to `check_review`.  The neurons themselves are picked at run time, from the run's
labels (engine/review/select.py).  Import-light, like the rest of the language side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dissect_study.dsl import ast
from dissect_study.dsl import vocabulary as R

if TYPE_CHECKING:
    from dissect_study.dsl.checker import CheckedAnalysis, CheckedStudy, _Checker

#: `labels` values: any label, or only those the label evidence supports / does not support
LABEL_CHOICES = ("any", "supported", "unsupported")

REVIEW_OPTIONS: dict[str, R.Param] = {
    p.name: p
    for p in (
        R.Param(
            "labels",
            "str",
            "any",
            doc="Only neurons whose label the label evidence supports, or does not support (needs label evidence).",
            choices=LABEL_CHOICES,
        ),
        R.Param("images", "int", 5, doc="Top concepts and top images shown on each card.", min=1, max=50),
    )
}


def check_review(ck: _Checker, s: ast.Review, index: int, out: CheckedStudy, text: str) -> CheckedAnalysis | None:
    """Validate a `review` statement; returns its CheckedAnalysis (kind "review") or None after errors."""
    from dissect_study.dsl.checker import CheckedAnalysis

    before = sum(1 for d in ck.diags if d.is_error)
    models = ck.analysis_models((s.model,))
    layers = ck.expand_layers(s.layers)
    for m in models:
        ck.check_analysis_layers(m, layers)
    filt = ck.check_filter(s.filter, models) if s.filter is not None else None
    options = _options(ck, s)
    if s.units:
        _check_explicit(ck, s, layers, options)
        select: dict[str, Any] = {"select": "units", "units": list(dict.fromkeys(s.units))}
    elif s.top is not None and s.sample is not None:
        ck.error(
            "review-size",
            "a review packet takes `top N` or `sample N`, not both",
            s.size_span or s.span,
            "top N: the best-scoring neurons; sample N seed S: a random draw",
        )
        select = {}
    elif s.top is None and s.sample is None:
        ck.error(
            "review-size",
            "a review packet needs a size: how many neurons per layer to review",
            s.span,
            f"add `sample 30 seed 1` (a random draw) or `top 30` (the best-scoring), e.g. `{text} sample 30 seed 1`",
        )
        select = {}
    elif s.top is not None:
        select = {"select": "top", "n": s.top}
    else:
        select = {"select": "sample", "n": s.sample, "seed": s.seed if s.seed is not None else 0}
        if s.seed is not None and not 0 <= s.seed <= R.SEED_MAX:
            ck.error("value-range", f"the seed must be 0..{R.SEED_MAX}", s.size_span or s.span)
    if sum(1 for d in ck.diags if d.is_error) > before:
        return None
    return CheckedAnalysis(
        index,
        "review",
        (),
        models,
        layers,
        filt,
        out.default_threshold,
        out.default_count,
        {**select, **options},
        None,
        int(options["images"]),
        text,
        s.span,
    )


def _options(ck: _Checker, s: ast.Review) -> dict[str, Any]:
    return ck.check_options("review", REVIEW_OPTIONS, s.options)


def _check_explicit(ck: _Checker, s: ast.Review, layers: tuple[ast.LayerItem, ...], options: dict[str, Any]) -> None:
    if len(layers) != 1 or isinstance(layers[0], (ast.LayerRange, ast.LayerAll)):
        ck.error(
            "neuron-layer",
            "a list of units needs exactly one layer",
            s.layers[0].span,
            "name one layer or an alias of one layer, e.g. M.last[3, 17]",
        )
    if s.top is not None or s.sample is not None or s.filter is not None or options.get("labels") != "any":
        ck.error(
            "review-units",
            "a list of units already picks the neurons: `top`, `sample`, `on` and `labels` do not apply",
            s.size_span or s.span,
            "drop them, or select with `review M at layer L sample N` instead of a list",
        )
