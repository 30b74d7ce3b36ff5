"""The registries: names -> implementations, built-ins complete, plugins through entry points.

The language side (`dsl/vocabulary.py`) says which names exist; `engine/registry.py`
says which code runs for each.  These tests hold the two halves together and check
that another package can add to both through the `dissect_study.plugins` group.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from dissect_study import plugins
from dissect_study.dsl import check_text
from dissect_study.dsl import vocabulary as V
from dissect_study.engine import registry
from dissect_study.engine.registry import CONCEPT_LOADERS, DISSECTORS, PROBES, SIMILARITIES, TARGETS, Registry
from dissect_study.errors import DissectStudyError


# --------------------------------------------------------------------------- the Registry class
def test_register_get_aliases_and_errors():
    reg: Registry = Registry("widget")

    @reg.register("round", aliases=("circle",))
    def round_widget() -> str:
        return "o"

    assert reg.get("round") is round_widget and reg.get("circle") is round_widget
    assert reg.names() == ["circle", "round"] and "round" in reg and "square" not in reg
    # the same object again is harmless (a module imported twice); another one is not
    reg.register("round")(round_widget)
    with pytest.raises(registry.RegistryError, match="'round' is registered twice"):
        reg.register("round")(lambda: "x")
    with pytest.raises(registry.RegistryError, match="no widget named 'rond'.*Did you mean 'round'"):
        reg.get("rond")
    assert issubclass(registry.RegistryError, DissectStudyError)


def test_builtin_modules_are_imported_on_first_lookup_only(monkeypatch, tmp_path):
    mod = tmp_path / "h4_builtin_widgets.py"
    mod.write_text("import tests_h4_widget_registry as r\n@r.REG.register('cube')\ndef cube():\n    return 'cube'\n")
    holder = tmp_path / "tests_h4_widget_registry.py"
    holder.write_text(
        "from dissect_study.engine.registry import Registry\nREG = Registry('widget', ('h4_builtin_widgets',))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "h4_builtin_widgets", raising=False)
    monkeypatch.delitem(sys.modules, "tests_h4_widget_registry", raising=False)
    import tests_h4_widget_registry as holder_mod

    assert "h4_builtin_widgets" not in sys.modules  # creating the registry imports nothing
    assert holder_mod.REG.get("cube")() == "cube"
    assert "h4_builtin_widgets" in sys.modules


def test_lazy_entries_import_their_module_when_looked_up(monkeypatch, tmp_path):
    (tmp_path / "h4_lazy_impl.py").write_text("def impl():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "h4_lazy_impl", raising=False)
    reg: Registry = Registry("widget")
    reg.register_lazy("answer", "h4_lazy_impl:impl")
    assert "h4_lazy_impl" not in sys.modules
    assert reg.get("answer")() == 42
    with pytest.raises(registry.RegistryError, match="package.module:attribute"):
        reg.register_lazy("bad", "no_colon_here")


# --------------------------------------------------------------------------- built-ins are complete
@pytest.mark.parametrize(
    "kind, reg", [("dissector", DISSECTORS), ("target", TARGETS), ("probe", PROBES), ("concepts", CONCEPT_LOADERS)]
)
def test_every_source_function_of_the_language_has_an_implementation(kind, reg):
    """A name the checker accepts but the engine cannot build would fail only at run time."""
    assert set(V.SOURCES[kind]) == set(reg.names())


def test_implementations_are_the_factories_defined_in_their_modules():
    from dissect_study.engine import concepts
    from dissect_study.engine.models import build_image_tower, classifier, clip, demo, mammo_clip, timm_target
    from dissect_study.engine.phantom import probe as phantom
    from dissect_study.engine.probes import compose, vindr

    assert DISSECTORS.get("mammo_clip") is mammo_clip.build_mammo_clip
    assert DISSECTORS.get("mammo_clip_general") is mammo_clip.build_mammo_clip_general
    assert DISSECTORS.get("clip") is clip.build_clip and DISSECTORS.get("demo") is demo.build_dissector
    assert TARGETS.get("classifier") is classifier.build_classifier and TARGETS.get("timm") is timm_target.build_timm
    assert TARGETS.get("image_tower") is build_image_tower and TARGETS.get("demo") is demo.build_target
    assert PROBES.get("vindr") is vindr.build_vindr and PROBES.get("union") is compose.build_union
    assert PROBES.get("phantom") is phantom.build_probe
    assert CONCEPT_LOADERS.get("xlsx") is concepts.load_xlsx and CONCEPT_LOADERS.get("shipped") is concepts.load_shipped


def test_unknown_source_functions_are_user_errors():
    from dissect_study.engine.concepts import ConceptSetError, load_concept_set
    from dissect_study.engine.models import ModelBuildError, build_dissector, build_target
    from dissect_study.engine.models.base import BuildContext

    ctx = BuildContext(base_dir=".", cache_dir=".")
    with pytest.raises(ModelBuildError, match="unknown source function 'mamo_clip'.*mammo_clip"):
        build_dissector("d", "mamo_clip", {}, ctx)
    with pytest.raises(ModelBuildError, match="unknown source function 'resnet'"):
        build_target("t", "resnet", {}, ctx)
    with pytest.raises(ConceptSetError, match="unknown source 'yaml'"):
        load_concept_set("c", "yaml", {}, ".")
    # a required parameter missing is named, from the vocabulary (not a KeyError)
    with pytest.raises(ConceptSetError, match=r"xlsx\(...\) needs path="):
        load_concept_set("c", "xlsx", {}, ".")
    assert issubclass(ModelBuildError, DissectStudyError)


def test_image_tower_needs_the_capability():
    from dissect_study.engine.models import ModelBuildError, build_target
    from dissect_study.engine.models.base import BuildContext, HasImageTower

    class Tower:
        name = "x"

    class WithTower:
        def image_tower(self):
            return Tower()

    class Without:
        pass

    assert isinstance(WithTower(), HasImageTower) and not isinstance(Without(), HasImageTower)
    ctx = BuildContext(base_dir=".", cache_dir=".", dissectors={"a": WithTower(), "b": Without()})  # type: ignore[dict-item]
    t = build_target("M", "image_tower", {"dissector": "a"}, ctx)
    assert isinstance(t, Tower) and t.name == "M"
    with pytest.raises(ModelBuildError, match="has no image tower"):
        build_target("M", "image_tower", {"dissector": "b"}, ctx)
    with pytest.raises(ModelBuildError, match="has not been built"):
        build_target("M", "image_tower", {"dissector": "zz"}, ctx)


# --------------------------------------------------------------------------- the vocabulary API
def test_register_function_is_idempotent_and_guards_names(monkeypatch):
    monkeypatch.setitem(V.SOURCES, "probe", dict(V.PROBE_SOURCES))
    fn = V.Function("h4_grid", (V.Param("n", "int", 4, min=1),), "A grid.", aliases=("h4_lattice",))
    assert V.register_function("probe", fn) is fn
    V.register_function(
        "probe", V.Function("h4_grid", (V.Param("n", "int", 4, min=1),), "A grid.", aliases=("h4_lattice",))
    )  # equal: a no-op
    assert V.lookup_function("probe", "h4_lattice") is fn
    with pytest.raises(V.VocabularyError, match="'folder' is already taken by 'folder'"):
        V.register_function("probe", V.Function("folder", (), "mine"))
    with pytest.raises(V.VocabularyError, match="'h4_lattice' is already taken by 'h4_grid'"):
        V.register_function("probe", V.Function("other", (), "x", aliases=("h4_lattice",)))
    with pytest.raises(V.VocabularyError, match="kind must be one of"):
        V.register_function("analysis", fn)
    with pytest.raises(V.VocabularyError, match="family must be one of"):
        V.register_function("similarity", V.Function("h4_sim", (), "no family"))
    assert issubclass(V.VocabularyError, DissectStudyError)


# --------------------------------------------------------------------------- plugins
PLUGIN = '''
"""A third-party plugin: vocabulary on import, implementations lazily."""
from dissect_study.dsl.vocabulary import Function, Param, register_function
from dissect_study.engine.registry import PROBES, SIMILARITIES

register_function("probe", Function(
    "h4_stripes", (Param("n", "int", 6, "How many images.", min=1), Param("period", "int", 4, min=2)),
    "Synthetic stripe images.", positional=("n",)))
register_function("similarity", Function(
    "h4_dot", (Param("scale", "float", 1.0),), "Scaled dot product of activation and concept columns.",
    family="full"))
PROBES.register_lazy("h4_stripes", "h4_plugin_impl:build_stripes")
SIMILARITIES.register_lazy("h4_dot", "h4_plugin_impl:dot")
'''

IMPL = '''
"""The plugin's heavy half: imported only when a study actually runs it."""
import numpy as np
import torch

from dissect_study.engine.probes.base import Probe, ProbeItem


class StripeProbe(Probe):
    def __init__(self, name, n, period):
        self.name, self.period = name, period
        self._items = [ProbeItem(f"s{i}", f"stripes://{i}", {"phase": i % period}) for i in range(n)]

    @property
    def items(self):
        return self._items

    def load(self, index):
        x = (np.arange(32)[None, :] + index) % self.period
        return np.repeat(x, 32, axis=0).astype(np.uint8) * 60


def build_stripes(name, params, ctx):
    return StripeProbe(name, params["n"], params["period"])


def dot(clip_feats, target_feats, scale=1.0):
    return scale * target_feats.T.to(torch.float64) @ clip_feats.to(torch.float64)
'''

STUDY = """
concepts c = shipped("mammo_v1")
probe s = h4_stripes(3, period=5)
dissector d = demo()
target G = demo("G")
dissect G at layers last by d on s with concepts c using h4_dot(scale=2)
"""


class _EntryPoint:
    """What importlib.metadata returns for one `[project.entry-points."dissect_study.plugins"]` line."""

    def __init__(self, name: str, value: str) -> None:
        self.name, self.value = name, value

    def load(self):
        import importlib

        return importlib.import_module(self.value)


@pytest.fixture
def plugin_env(monkeypatch, tmp_path: Path):
    """A fresh plugin state: the vocabulary tables and registries are restored after the test."""
    for reg in (PROBES, SIMILARITIES):
        reg.names()  # import the built-ins now, so the copies below hold them
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    monkeypatch.setitem(V.SOURCES, "probe", dict(V.PROBE_SOURCES))
    monkeypatch.setattr(V, "SIMILARITIES", dict(V.SIMILARITIES))
    monkeypatch.setattr(plugins, "_loaded", False)
    (tmp_path / "h4_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "h4_plugin_impl.py").write_text(textwrap.dedent(IMPL))
    (tmp_path / "h4_broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in ("h4_plugin", "h4_plugin_impl", "h4_broken_plugin"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    found: list[_EntryPoint] = []

    def entry_points(*, group: str):
        return [ep for ep in found if group == plugins.PLUGIN_GROUP]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    return found


def test_a_study_is_unknown_without_the_plugin(plugin_env):
    checked, diags = check_text(STUDY, "p.study", env={})
    assert checked is None
    codes = {(d.code, d.message) for d in diags if d.is_error}
    assert ("unknown-function", "unknown probe source 'h4_stripes'") in codes
    assert ("unknown-similarity", "unknown similarity function 'h4_dot'") in codes


def test_a_plugin_extends_check_and_run_through_an_entry_point(plugin_env, caplog):
    plugin_env += [_EntryPoint("stripes", "h4_plugin"), _EntryPoint("broken", "h4_broken_plugin")]
    with caplog.at_level(logging.WARNING, logger="dissect_study.plugins"):
        checked, diags = check_text(STUDY, "p.study", env={})
    assert [d for d in diags if d.is_error] == []
    assert checked is not None
    # the broken plugin is reported and skipped; the good one still counts
    assert any("'broken'" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    # the checker validated and defaulted the plugin's parameters like a built-in's
    assert checked.probes["s"].func == "h4_stripes" and checked.probes["s"].params == {"n": 3, "period": 5}
    assert checked.dissections[0].similarity == "h4_dot"
    assert checked.dissections[0].similarity_params == {"scale": 2.0}
    # checking imported the plugin's light half only
    assert "h4_plugin" in sys.modules and "h4_plugin_impl" not in sys.modules

    # the engine finds the implementation by the same name
    from types import SimpleNamespace

    from dissect_study.engine.probes import build_probe

    probe = build_probe("s", "h4_stripes", checked.probes["s"].params, SimpleNamespace(base_dir=".", log=print))
    assert "h4_plugin_impl" in sys.modules
    assert probe.name == "s" and len(probe) == 3 and probe.load(1).shape == (32, 32)
    import torch

    P, X = torch.randn(5, 4), torch.randn(5, 3)
    S = SIMILARITIES.get("h4_dot")(P, X, scale=2.0)
    assert torch.allclose(S, 2.0 * X.double().T @ P.double())


def test_the_plugin_parameters_are_checked(plugin_env):
    plugin_env.append(_EntryPoint("stripes", "h4_plugin"))
    bad = STUDY.replace("h4_stripes(3, period=5)", "h4_stripes(0, perod=5)").replace("h4_dot(scale=2)", "h4_dott()")
    checked, diags = check_text(bad, "p.study", env={})
    assert checked is None
    errors = {d.code: d for d in diags if d.is_error}
    assert errors["bounds"].message == "h4_stripes() parameter 'n' must be >= 1, not 0"
    assert errors["unknown-param"].hint == "did you mean 'period'?"
    assert errors["unknown-similarity"].hint == "did you mean 'h4_dot'?"
