"""Probe factory: a study's `probe` declaration -> a `Probe`.

`build_probe` receives parameters already validated and defaulted from
`engine/registry.py::PROBE_SOURCES`, builds the probe with the source module
named for it (folder, manifest, vindr, embed, dicom, imagenet, compose,
phantom), then applies the declaration's `sample` clause.  Source modules are
imported lazily so `import dissect_study.engine.probes` stays cheap.

Path policy (how we decided what "never resolved outside what the user named"
means): paths written *in the study* (a folder, a CSV, a root) are the user's
naming and may be anywhere.  Paths read *from a manifest* (CSV rows, VinDr ids,
EMBED paths) and files found by walking a folder must resolve -- after
following symlinks -- inside the root the user named; `..` escapes, absolute
paths elsewhere and escaping symlinks are rejected with a `ProbeError` at build
time (a manifest pointing outside its root is a mistake or an attack, not a
missing image).  Missing or undecodable files inside the root are not build
errors: `load()` raises `ImageUnreadable` and the run skips and records them.
"""

from __future__ import annotations

from typing import Any

from dissect_study.errors import DissectStudyError


class ProbeError(DissectStudyError):
    """A user mistake in a probe declaration or its files (one-paragraph message)."""


def build_probe(name: str, func: str, params: dict[str, Any], ctx: Any,
                probes: dict[str, Any] | None = None, sample: Any = None):
    """Build probe `name` from source function `func`; apply `sample` (DSL Sample) if given."""
    params = dict(params or {})
    if func == "folder":
        from dissect_study.engine.probes.folder import build_folder as build
    elif func == "csv":
        from dissect_study.engine.probes.manifest import build_csv as build
    elif func == "vindr":
        from dissect_study.engine.probes.vindr import build_vindr as build
    elif func == "embed":
        from dissect_study.engine.probes.embed import build_embed as build
    elif func == "dicom":
        from dissect_study.engine.probes.dicom import build_dicom as build
    elif func == "imagenet":
        from dissect_study.engine.probes.imagenet import build_imagenet as build
    elif func == "phantom":
        from dissect_study.engine.phantom.probe import build_probe as build
    elif func == "union":
        from dissect_study.engine.probes.compose import build_union

        probe = build_union(name, params, ctx, probes or {})
        build = None
    else:
        from dissect_study.dsl.vocabulary import PROBE_SOURCES

        raise ProbeError(
            f"probe {name!r}: unknown source function {func!r}; known sources are "
            f"{', '.join(sorted(PROBE_SOURCES))}."
        )
    if build is not None:
        probe = build(name, params, ctx)
    probe.name = name
    if sample is not None:
        from dissect_study.engine.probes.compose import apply_sample

        probe = apply_sample(probe, sample, log=getattr(ctx, "log", None))
    return probe


__all__ = ["ProbeError", "build_probe"]
