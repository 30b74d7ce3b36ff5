"""Model adapters and the two factories the engine calls.

`build_dissector(name, func, params, ctx)` and `build_target(name, func, params, ctx)`
look the study's source function up in `engine/registry.py` (DISSECTORS /
TARGETS); each adapter module registers its factory with a decorator where it
is defined, and the registry imports those modules on the first lookup, so
`import dissect_study.engine.models` stays cheap.  `params` arrive validated
and defaulted by the checker (`dsl/vocabulary.py`).
"""

from __future__ import annotations

from typing import Any

from dissect_study.engine.models.base import BuildContext, Dissector, HasImageTower, Target
from dissect_study.engine.registry import DISSECTORS, TARGETS
from dissect_study.errors import DissectStudyError


class ModelBuildError(DissectStudyError, ValueError):
    """A declaration cannot be built (unknown source function, missing reference)."""


def build_dissector(name: str, func: str, params: dict[str, Any], ctx: BuildContext) -> Dissector:
    """Build the dissector declared as `dissector <name> = <func>(<params>)`."""
    if func not in DISSECTORS:
        raise ModelBuildError(
            f"dissector {name}: unknown source function {func!r}; known: {', '.join(DISSECTORS.names())}"
        )
    return DISSECTORS.get(func)(name, params, ctx)


def build_target(name: str, func: str, params: dict[str, Any], ctx: BuildContext) -> Target:
    """Build the target declared as `target <name> = <func>(<params>)`."""
    if func not in TARGETS:
        raise ModelBuildError(f"target {name}: unknown source function {func!r}; known: {', '.join(TARGETS.names())}")
    return TARGETS.get(func)(name, params, ctx)


@TARGETS.register("image_tower")
def build_image_tower(name: str, params: dict[str, Any], ctx: BuildContext) -> Target:
    """`target M = image_tower(mammo)`: the image encoder of an already-built dissector."""
    ref = params["dissector"]
    dissector = ctx.dissectors.get(ref)
    if dissector is None:
        raise ModelBuildError(f"target {name}: dissector {ref!r} has not been built (declare it first).")
    if not isinstance(dissector, HasImageTower):
        raise ModelBuildError(
            f"target {name}: dissector {ref!r} ({type(dissector).__name__}) has no image tower to dissect."
        )
    target = dissector.image_tower()
    target.name = name
    return target


__all__ = ["BuildContext", "Dissector", "ModelBuildError", "Target", "build_dissector", "build_target"]
