"""Registries: implementations register where they are defined, looked up by name.

The study language's vocabulary -- which names exist and which parameters they
take -- is data on the language side (`dsl/vocabulary.py`), so `dissect-study
check` never imports torch.  This module holds the other half: the code behind
each name.  Like timm's `register_model`, an implementation registers itself with
a decorator in the module that defines it::

    @SIMILARITIES.register("soft_wpmi")
    def soft_wpmi(...): ...

A registry knows which built-in modules define its entries and imports them on
the first lookup, so importing the registry stays cheap.  Other packages add
entries through the Python entry-point group ``dissect_study.plugins``: each
entry point names a module; importing it must register its vocabulary entries
(`dsl.vocabulary.register_function`) and may register implementations here,
directly or lazily as ``"package.module:attribute"`` strings so that the module
itself stays light.  See docs/EXTENDING.md.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from dissect_study.errors import DissectStudyError
from dissect_study.plugins import PLUGIN_GROUP, load_plugins

if TYPE_CHECKING:  # the factory types live with the heavy modules; annotations only
    from dissect_study.engine.concepts import ConceptLoader
    from dissect_study.engine.models.base import DissectorFactory, TargetFactory
    from dissect_study.engine.probes import ProbeFactory

T = TypeVar("T")

__all__ = [
    "PLUGIN_GROUP",
    "Registry",
    "RegistryError",
    "load_plugins",
    "SIMILARITIES",
    "DISSECTORS",
    "TARGETS",
    "PROBES",
    "CONCEPT_LOADERS",
    "ANALYSES",
]


class RegistryError(DissectStudyError):
    """A name has no implementation, or is registered twice."""


class Registry(Generic[T]):
    """Name -> implementation for one kind of thing (similarity, model adapter, ...).

    `builtin_modules` are imported on the first lookup; their decorators fill the
    table.  `kind` names the thing in error messages ("similarity function").
    """

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._entries: dict[str, T | str] = {}
        self._loaded = False

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (and `aliases`)."""

        def deco(obj: T) -> T:
            for n in (name, *aliases):
                self._add(n, obj)
            return obj

        return deco

    def register_lazy(self, name: str, target: str) -> None:
        """Register `"package.module:attribute"`, imported only when first looked up."""
        if ":" not in target:
            raise RegistryError(f"{self.kind} {name!r}: lazy target {target!r} must read 'package.module:attribute'")
        self._add(name, target)

    def _add(self, name: str, obj: T | str) -> None:
        old = self._entries.get(name)
        if old is not None and old is not obj:
            raise RegistryError(f"{self.kind} {name!r} is registered twice ({_describe(old)} and {_describe(obj)})")
        self._entries[name] = obj

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._builtin_modules:
            importlib.import_module(mod)
        load_plugins()

    def get(self, name: str) -> T:
        """The implementation registered as `name`; a clear error with suggestions otherwise."""
        self._load()
        try:
            obj = self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._entries)) or "none"
            raise RegistryError(f"no {self.kind} named {name!r} is registered (known: {known}).{hint}") from None
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            resolved: T = getattr(importlib.import_module(module), attr)
            self._entries[name] = resolved
            return resolved
        return obj

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _describe(obj: object) -> str:
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# --------------------------------------------------------------------------- the registries
# Each lists the built-in modules whose decorators fill it; a new built-in
# implementation module is added here once.

SIMILARITIES: Registry = Registry("similarity function", ("dissect_study.engine.scores.similarity",))
DISSECTORS: Registry[DissectorFactory] = Registry(
    "dissector source",
    ("dissect_study.engine.models.mammo_clip", "dissect_study.engine.models.clip", "dissect_study.engine.models.demo"),
)
TARGETS: Registry[TargetFactory] = Registry(
    "target source",
    (
        "dissect_study.engine.models",
        "dissect_study.engine.models.classifier",
        "dissect_study.engine.models.timm_target",
        "dissect_study.engine.models.clip",
        "dissect_study.engine.models.demo",
    ),
)
PROBES: Registry[ProbeFactory] = Registry(
    "probe source",
    (
        "dissect_study.engine.probes.folder",
        "dissect_study.engine.probes.manifest",
        "dissect_study.engine.probes.vindr",
        "dissect_study.engine.probes.embed",
        "dissect_study.engine.probes.dicom",
        "dissect_study.engine.probes.imagenet",
        "dissect_study.engine.probes.compose",
        "dissect_study.engine.phantom.probe",
    ),
)
CONCEPT_LOADERS: Registry[ConceptLoader] = Registry("concept source", ("dissect_study.engine.concepts",))
ANALYSES: Registry = Registry("analysis", ("dissect_study.engine.analyses.macros",))
