"""Model adapters and the two factories the engine calls.

`build_dissector(name, func, params, ctx)` and `build_target(name, func, params, ctx)`
dispatch on the source function of a study declaration (see
`engine/registry.py` DISSECTOR_SOURCES / TARGET_SOURCES; `params` arrive validated and
defaulted).  Implementations are imported lazily so `import
dissect_study.engine.models` stays cheap (no transformers/timm until needed).
"""

from __future__ import annotations

from typing import Any

from dissect_study.engine.models.base import BuildContext, Dissector, Target


class ModelBuildError(ValueError):
    """A declaration cannot be built (unknown source function, missing reference)."""


def build_dissector(name: str, func: str, params: dict[str, Any], ctx: BuildContext) -> Dissector:
    """Build the dissector declared as `dissector <name> = <func>(<params>)`."""
    if func == "demo":
        from dissect_study.engine.models import demo

        return demo.build_dissector(name, params, ctx)
    if func == "mammo_clip":
        from dissect_study.engine.models.mammo_clip import build_mammo_clip

        return build_mammo_clip(name, params, ctx)
    if func == "mammo_clip_general":
        from dissect_study.engine.models.mammo_clip import build_mammo_clip_general

        return build_mammo_clip_general(name, params, ctx)
    if func == "clip":
        from dissect_study.engine.models.clip import build_clip

        return build_clip(name, params, ctx)
    raise ModelBuildError(f"dissector {name}: unknown source function {func!r}")


def build_target(name: str, func: str, params: dict[str, Any], ctx: BuildContext) -> Target:
    """Build the target declared as `target <name> = <func>(<params>)`."""
    if func == "demo":
        from dissect_study.engine.models import demo

        return demo.build_target(name, params, ctx)
    if func == "image_tower":
        ref = params["dissector"]
        dissector = ctx.dissectors.get(ref)
        if dissector is None:
            raise ModelBuildError(f"target {name}: dissector {ref!r} has not been built (declare it first).")
        tower = getattr(dissector, "image_tower", None)
        if tower is None and type(dissector).__name__ == "DemoDissector":
            from dissect_study.engine.models import demo  # the demo's tower is its target "M"

            return demo.build_target(name, {"variant": "M", "seed": getattr(dissector, "seed", 0)}, ctx)
        if tower is None:
            raise ModelBuildError(
                f"target {name}: dissector {ref!r} ({type(dissector).__name__}) has no image tower to dissect."
            )
        target = tower()
        target.name = name
        return target
    if func == "classifier":
        from dissect_study.engine.models.classifier import build_classifier

        return build_classifier(name, params, ctx)
    if func == "timm":
        from dissect_study.engine.models.timm_target import build_timm

        return build_timm(name, params, ctx)
    if func == "clip_vision":
        from dissect_study.engine.models.clip import build_clip_vision

        return build_clip_vision(name, params, ctx)
    raise ModelBuildError(f"target {name}: unknown source function {func!r}")


__all__ = ["BuildContext", "Dissector", "ModelBuildError", "Target", "build_dissector", "build_target"]
