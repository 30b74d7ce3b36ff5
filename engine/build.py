"""Build stage: the plan's declarations become concept sets, probes, dissectors and targets.

Everything a study names is built (or loaded from the cache) here, before any
probe pass, and each dissection's symbolic layers are resolved against its built
target.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from dissect_study.dsl import ast
from dissect_study.dsl.checker import UnsetEnv
from dissect_study.engine.models.base import Target, TrainModeSwitch
from dissect_study.engine.run import RunError

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor


def build(ex: Executor) -> None:
    from dissect_study.engine.concepts import load_concept_set
    from dissect_study.engine.models import build_dissector, build_target
    from dissect_study.engine.models.base import BuildContext
    from dissect_study.engine.probes import build_probe

    if ex.opt.reports:  # refuse before hours of work, not after
        for r in ex.plan.reports:
            _unset_env_check("report", {"out": r.out})
    device = _device(ex.opt.device or _study_device(ex))
    ex.device = device
    ctx = BuildContext(
        base_dir=ex.base_dir,
        cache_dir=str(ex.cache.root),
        device=device,
        log=ex.log.info,
        probes=ex.probes,
        warn=lambda m: ex.log.warn("build", m),
    )
    ex.ctx = ctx
    for step in ex.plan.concept_sets:
        _unset_env_check(step.name, step.params)
        cs = load_concept_set(step.name, step.func, step.params, ex.base_dir)
        for w in cs.warnings:
            ex.log.warn(f"concepts {step.name}", f"concept set {step.name}: {w}")
        ex.concept_sets[step.name] = cs
        ex.log.info(f"concepts  {step.name}: {len(cs.concepts)} concepts ({step.func})")
    for step in ex.plan.probes:
        _unset_env_check(step.name, step.params)
        probe = build_probe(step.name, step.func, step.params, ctx, sample=step.sample)
        ex.probes[step.name] = probe
        ex.log.info(f"probe     {step.name}: {len(probe)} images ({step.func})")
    for step in ex.plan.dissectors:
        _unset_env_check(step.name, step.params)
        t0 = time.perf_counter()
        d = build_dissector(step.name, step.func, step.params, ctx)
        ctx.dissectors[step.name] = d
        ex.dissectors[step.name] = d
        ex.log.info(f"dissector {step.name}: {step.func} ready ({time.perf_counter() - t0:.1f}s)")
    for step in ex.plan.targets:
        _unset_env_check(step.name, step.params)
        t0 = time.perf_counter()
        t = build_target(step.name, step.func, step.params, ctx)
        ex.targets[step.name] = t
        ex.log.info(
            f"target    {step.name}: {step.func}, {len(t.layers())} hookable layers ({time.perf_counter() - t0:.1f}s)"
        )
    for x in ex.plan.dissections:
        if x.options.get("dissector_train_mode"):
            d = ex.dissectors[x.dissector]
            if not isinstance(d, TrainModeSwitch):
                raise RunError(
                    f"dissect {x.target}: dissector_train_mode=true, but dissector {x.dissector} "
                    f"has no train mode (only mammo_clip dissectors reproduce that reference bug)"
                )
            d.train_mode = True
            ex.log.warn(
                "build",
                f"dissector {x.dissector} runs its image tower in train mode "
                f"(reference parity; embeddings depend on the batch)",
            )
        ex.layer_names[x.target] = resolve_layers(ex.targets[x.target], x.layers, ex.plan.layer_aliases)


def _study_device(ex: Executor) -> str:
    devs = {x.options.get("device", "auto") for x in ex.plan.dissections}
    return devs.pop() if len(devs) == 1 else "auto"


def _unset_env_check(name: str, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if isinstance(value, UnsetEnv):
            span = value.span
            raise RunError(
                f"{span.path}:{span.line}:{span.col}: {name}: parameter '{key}' comes from the environment variable "
                f"{value.var}, which is not set.\n  hint: export {value.var}=... before running, "
                f'or give a default: env("{value.var}", "/path")'
            )


def _device(requested: str) -> str:
    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RunError("device cuda was requested but no CUDA device is available; use --device cpu")
    return requested


def resolve_layers(
    target: Target, items: tuple[ast.LayerItem, ...], study_aliases: dict[str, tuple[ast.LayerItem, ...]]
) -> list[tuple[str, str | None]]:
    """Symbolic layer items -> [(canonical layer name, alias or None)] in depth order."""
    infos = target.layers()
    names = [l.name for l in infos]
    builtin = target.aliases()
    out: dict[str, str | None] = {}

    def add(name: str, alias: str | None) -> None:
        if name not in out or out[name] is None:
            out[name] = alias

    def resolve_one(text: str, alias: str | None) -> None:
        if text in builtin:
            add(builtin[text], alias or text)
            return
        try:
            add(target.resolve_layer(text), alias)
        except KeyError:
            import difflib

            close = difflib.get_close_matches(text, names + list(builtin), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RunError(
                f"target {target.name!r} has no layer {text!r}.{hint} "
                f"Run `dissect-study inspect` on its weights to list layers "
                f"({len(names)} layers: {_layer_list(names)})."
            ) from None

    def resolve_item(item: ast.LayerItem, alias: str | None) -> None:
        if isinstance(item, ast.LayerAll):
            for n in names:
                add(n, alias)
        elif isinstance(item, ast.LayerRange):
            for layer in item.names():
                resolve_one(layer, alias)
        else:
            resolve_one(item.text, alias or (item.text if item.text in builtin else None))

    for item in items:
        if isinstance(item, ast.LayerName) and item.text in study_aliases:
            for sub in study_aliases[item.text]:  # the checker has already inlined nested aliases
                resolve_item(sub, item.text)
        else:
            resolve_item(item, None)
    order = {n: i for i, n in enumerate(names)}
    return sorted(out.items(), key=lambda kv: order.get(kv[0], 1 << 30))


def _layer_list(names: list[str]) -> str:
    """A layer list short enough for a message, never repeating a name."""
    if len(names) <= 6:
        return ", ".join(names)
    return f"{', '.join(names[:4])}, ..., {', '.join(names[-2:])}"
