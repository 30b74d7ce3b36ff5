"""Probe factory: a study's `probe` declaration -> a `Probe`.

`build_probe` receives parameters already validated and defaulted from
`dsl/vocabulary.py::PROBE_SOURCES`, builds the probe with the factory registered
under the source function's name (`@PROBES.register("vindr")` in the module that
defines it: folder, manifest, vindr, embed, dicom, imagenet, compose, phantom),
then applies the declaration's `sample` clause.  The registry imports the source
modules on the first lookup, so `import dissect_study.engine.probes` stays cheap.

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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dissect_study.engine.registry import PROBES
from dissect_study.errors import DissectStudyError

if TYPE_CHECKING:
    from dissect_study.dsl.ast import Sample
    from dissect_study.engine.probes.base import Probe


class ProbeError(DissectStudyError):
    """A user mistake in a probe declaration or its files (one-paragraph message)."""


#: `probe NAME = func(...)`: (NAME, validated parameters, build context) -> Probe.  The context
#: has `base_dir` (relative paths), `log`, and `probes` (already-built probes, for `union`).
ProbeFactory = Callable[[str, dict[str, Any], Any], "Probe"]


def build_probe(name: str, func: str, params: dict[str, Any], ctx: Any, sample: Sample | None = None) -> Probe:
    """Build probe `name` with the source registered as `func`, then apply the declaration's `sample` clause."""
    if func not in PROBES:
        raise ProbeError(
            f"probe {name!r}: unknown source function {func!r}; known sources are {', '.join(PROBES.names())}."
        )
    probe = PROBES.get(func)(name, dict(params or {}), ctx)
    probe.name = name
    if sample is not None:
        from dissect_study.engine.probes.compose import apply_sample

        probe = apply_sample(probe, sample, log=ctx.warning)
    return probe


__all__ = ["ProbeError", "ProbeFactory", "build_probe"]
