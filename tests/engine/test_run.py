"""End to end through plan -> run -> store -> analyses -> report, with tiny models built here.

The real adapters are tested in their own files; here the factories are
patched to return a tiny dissector and tiny targets so the whole engine runs in
seconds, and the stored results are checked against an independent computation
from the same tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from helpers.tiny import STUDY, TinyDissector, TinyTarget, _run

from dissect_study.dsl import check_file
from dissect_study.engine.models.base import LayerInfo
from dissect_study.engine.run import RunError, RunOptions, run_study
from dissect_study.engine.scores.similarity import compute_similarity, concept_activation_matrix


def test_run_stores_results_consistent_with_the_math(tmp_path: Path, tiny_models) -> None:
    result, db = _run(tmp_path)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), min(status) FROM runs").fetchone() == (1, "ok")
    layers = con.execute("SELECT model, layer, n_neurons FROM layers ORDER BY model, layer_index").fetchall()
    assert layers == [("A", "0", 6), ("A", "2", 8), ("A", "6", 2), ("B", "0", 6), ("B", "2", 8), ("B", "6", 2)]
    n_concepts = con.execute("SELECT count(*) FROM concepts").fetchone()[0]
    assert con.execute("SELECT count(*) FROM similarities").fetchone()[0] == 2 * (6 + 8 + 2) * n_concepts
    # every stored label is the argmax of the stored S row
    bad = con.execute("""
        SELECT count(*) FROM neurons n JOIN (
            SELECT model, layer, unit, arg_max(concept_id, score) AS best FROM similarities GROUP BY ALL
        ) s USING (model, layer, unit) WHERE n.concept_id <> s.best""").fetchone()[0]
    assert bad == 0
    # recompute S of one layer independently from the same tensors and compare
    from dissect_study.engine.concepts import load_concept_set
    from dissect_study.engine.passes.activations import embed_images, embed_texts, extract_activations
    from dissect_study.engine.phantom.probe import PhantomProbe

    probe = PhantomProbe(30, 5, 64)
    target, diss = TinyTarget("B", 2), TinyDissector()
    X = extract_activations(target, probe, ["2"], progress=False).acts["2"]
    texts = load_concept_set("c", "shipped", {"name": "mammo_v1"}, str(tmp_path)).texts
    P = concept_activation_matrix(embed_images(diss, probe, progress=False).emb, embed_texts(diss, texts))
    S = compute_similarity("soft_wpmi", P, X, {"top_k": 8}).S
    stored = np.array(
        con.execute("SELECT score FROM similarities WHERE model='B' AND layer='2' ORDER BY unit, concept_id").fetchall()
    )[:, 0].reshape(S.shape)
    np.testing.assert_allclose(stored, S.numpy(), rtol=1e-5, atol=1e-6)
    # tau under the default statistic = mean of per-neuron top-1
    tau = con.execute("SELECT tau, tau_statistic FROM layers WHERE model='B' AND layer='2'").fetchone()
    assert tau[1] == "mean_top1" and tau[0] == pytest.approx(float(S.max(dim=1).values.mean()), rel=1e-5)
    # top images are the highest activations of each unit
    top = con.execute(
        "SELECT image_idx FROM top_images WHERE model='B' AND layer='2' AND unit=3 ORDER BY rank"
    ).fetchall()
    assert [r[0] for r in top] == torch.argsort(X[:, 3], descending=True)[:5].tolist()
    # analyses and neuron cards were produced; the report exists
    assert con.execute("SELECT count(*) FROM captured_concepts").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM missed_concepts WHERE model='B'").fetchone()[0] == n_concepts
    cards = con.execute("SELECT unit, count(*) FROM neuron_images GROUP BY unit").fetchall()
    assert cards == [(3, 3)]
    assert con.execute("SELECT count(*) FROM calibration").fetchone()[0] > 0
    assert [p.name for p in result.reports] == ["report.html"]
    assert "engine end to end" in result.reports[0].read_text(encoding="utf-8")


def test_second_run_uses_the_cache_and_adds_a_run(tmp_path: Path, tiny_models, caplog) -> None:
    _run(tmp_path, reports=False)
    caplog.set_level(logging.INFO, logger="dissect_study")
    caplog.clear()
    path = tmp_path / "s.study"
    study, _ = check_file(str(path))
    run_study(study, RunOptions(db=tmp_path / "r.duckdb", cache_dir=tmp_path / "cache", reports=False))
    out = caplog.text
    assert "concepts embedded (cache)" in out and "images embedded (cache)" in out
    assert out.count("(cache, ") == 2  # both target passes
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2


def test_failed_run_writes_nothing(tmp_path: Path, tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path, reports=False)
    import dissect_study.engine.analyses.macros as analysis

    def boom(*a, **k):  # fails inside the transaction, after the base tables are inserted
        raise RuntimeError("analysis crashed")

    monkeypatch.setattr(analysis, "store_analyses", boom)
    with pytest.raises(RuntimeError):
        _run(tmp_path, reports=False)
    con = duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert con.execute("SELECT count(DISTINCT run_id) FROM similarities").fetchone()[0] == 1


def test_unknown_layer_and_unset_env_are_clear(tmp_path: Path, tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RunError, match=r"no layer '_blocks.38'.*inspect"):
        _run(tmp_path, STUDY.replace("at layers all", "at layers _blocks.38"))
    monkeypatch.delenv("DS_TEST_UNSET", raising=False)
    text = STUDY.replace("probe p = phantom(n=30, seed=5, height=64)", 'probe p = folder(path=env("DS_TEST_UNSET"))')
    with pytest.raises(RunError, match="DS_TEST_UNSET.*not set"):
        _run(tmp_path, text)


def test_mammi_template_prefixes_prompts_and_subtracts_the_template(tmp_path: Path, tiny_models) -> None:
    text = STUDY.replace("using soft_wpmi(top_k=8)", 'using mammi(alpha=90, template="a mammogram showing")')
    _, db = _run(tmp_path, text, reports=False)
    from dissect_study.engine.concepts import load_concept_set
    from dissect_study.engine.passes.activations import embed_images, embed_texts, extract_activations
    from dissect_study.engine.phantom.probe import PhantomProbe

    probe = PhantomProbe(30, 5, 64)
    diss = TinyDissector()
    X = extract_activations(TinyTarget("A", 1), probe, ["6"], progress=False).acts["6"]
    texts = load_concept_set("c", "shipped", {"name": "mammo_v1"}, str(tmp_path)).texts
    img = embed_images(diss, probe, progress=False).emb
    P = concept_activation_matrix(img, embed_texts(diss, [f"a mammogram showing {t}" for t in texts]))
    tmpl = concept_activation_matrix(img, embed_texts(diss, ["a mammogram showing"]))[:, 0]
    S = compute_similarity("mammi", P, X, {"alpha": 90}, template_feats=tmpl).S
    con = duckdb.connect(str(db), read_only=True)
    stored = np.array(
        con.execute(
            "SELECT score FROM similarities WHERE model='A' AND layer='6' ORDER BY unit, concept_id"
        ).fetchall(),
        dtype=float,
    )[:, 0].reshape(S.shape)
    np.testing.assert_allclose(stored, S.numpy(), rtol=1e-5, atol=1e-6)
    params = con.execute("SELECT similarity_params FROM dissections WHERE model='A'").fetchone()[0]
    assert '"template": "a mammogram showing"' in params


def test_resolve_layers_expands_ranges_all_and_study_aliases():
    """Layer selectors against a model with known layers: ranges and `all` inside a study alias too."""
    from dissect_study.dsl import ast
    from dissect_study.engine.build import resolve_layers
    from dissect_study.engine.run import RunError

    span = ast.Span("<t>", 1, 1, 1, 2)

    class Five:  # five layers b.0..b.4; early/middle/last as the base Target derives them
        name = "T"

        def layers(self):
            return [LayerInfo(f"b.{i}", 4, i) for i in range(5)]

        def aliases(self):
            return {"early": "b.0", "middle": "b.2", "last": "b.4"}

        def resolve_layer(self, text):
            if text in {f"b.{i}" for i in range(5)}:
                return text
            raise KeyError(text)

    t = Five()
    name, rng, everything = ast.LayerName("last", span), ast.LayerRange("b.", 1, 2, span), ast.LayerAll(span)
    assert resolve_layers(t, (name, ast.LayerName("b.0", span)), {}) == [("b.0", None), ("b.4", "last")]
    assert resolve_layers(t, (rng,), {}) == [("b.1", None), ("b.2", None)]
    assert [n for n, _ in resolve_layers(t, (everything,), {})] == [f"b.{i}" for i in range(5)]
    # a study alias whose items are a range and a builtin alias: every layer it names carries its name
    aliases = {"mine": (rng, ast.LayerName("last", span))}
    assert resolve_layers(t, (ast.LayerName("mine", span),), aliases) == [
        ("b.1", "mine"),
        ("b.2", "mine"),
        ("b.4", "mine"),
    ]
    with pytest.raises(RunError, match="has no layer 'b.9'"):
        resolve_layers(t, (ast.LayerName("b.9", span),), {})


def test_an_unset_report_path_is_refused_before_any_work(tmp_path: Path, monkeypatch):
    """`report "${out}"` with `out` from an unset variable used to fail after the whole run."""
    from dissect_study.dsl import check_text
    from dissect_study.engine.run import RunError, RunOptions, run_study

    monkeypatch.delenv("H4_UNSET_OUT", raising=False)
    text = (
        'let out = env("H4_UNSET_OUT")\nconcepts c = shipped("mammo_v1")\nprobe p = phantom(n=4, height=64)\n'
        'dissector d = demo()\ntarget G = demo("G")\ndissect G at layers last by d on p with concepts c\n'
        'report "${out}/r" as html\n'
    )
    study, diags = check_text(text, str(tmp_path / "s.study"))
    assert study is not None and any(d.code == "env-unset" for d in diags)
    with pytest.raises(RunError, match="report: parameter 'out' comes from the environment variable H4_UNSET_OUT"):
        run_study(study, RunOptions(db=tmp_path / "r.duckdb", cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "r.duckdb").exists() and not (tmp_path / "cache").exists()


def test_on_stored_is_called_after_the_commit_and_before_reports(tmp_path: Path, tiny_models) -> None:
    seen: list[tuple[str, Path, bool]] = []

    def stored(run_id: str, db: Path) -> None:
        with duckdb.connect(str(db), read_only=True) as con:
            committed = con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0] == 1
        seen.append((run_id, db, committed and not (tmp_path / "out" / "report.html").exists()))

    res, db = _run(tmp_path, on_stored=stored)
    assert seen == [(res.run_id, db, True)]
    assert (tmp_path / "out" / "report.html").exists()
