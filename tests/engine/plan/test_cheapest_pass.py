"""The cheapest-pass rule (engine/cheapest_pass.py): which rows the dissector embeds.

Unit tests drive ``choose_rows`` with small synthetic activations (the union is
recomputed here by sorting); an end-to-end run with lowered thresholds checks that the
stored S equals S computed from the *full* P, and that the zero-shot check used only the
random sample.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from helpers.tiny import TinyDissector, TinyTarget

from dissect_study.dsl import check_file
from dissect_study.engine.plan import cheapest_pass
from dissect_study.engine.plan.cheapest_pass import RowUser, choose_rows
from dissect_study.engine.run import RunOptions, run_study


def union_by_sorting(acts: dict[str, torch.Tensor], k: int) -> set[int]:
    out: set[int] = set()
    for X in acts.values():
        for col in X.T.tolist():
            out.update(sorted(range(len(col)), key=lambda i: (-col[i], i))[:k])
    return out


def user(acts, kept=None, **kw) -> RowUser:
    n = next(iter(acts.values())).shape[0]
    base = dict(
        name="T",
        similarity="soft_wpmi",
        family="topk",
        top_k=3,
        acts=acts,
        kept=list(range(n)) if kept is None else kept,
        top_images=2,
    )
    base.update(kw)
    return RowUser(**base)


def acts(n=100, k=4, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(n, k, generator=g), "b": torch.randn(n, 2, generator=g)}


def test_reduced_pass_is_the_union_plus_a_fixed_sample():
    A = acts()
    rows = list(range(100))
    c = choose_rows(rows, [user(A)], min_probe=50, sanity_sample=10, max_fraction=1.0)
    assert c.reduced and c.sanity_rows is not None and len(c.sanity_rows) == 10
    assert set(c.rows) == union_by_sorting(A, 3) | set(c.sanity_rows)
    assert c.rows == sorted(c.rows) and set(c.sanity_rows) <= set(c.rows)
    again = choose_rows(rows, [user(A)], min_probe=50, sanity_sample=10, max_fraction=1.0)
    assert again == c  # the sample is seeded
    assert "top-k-only" in c.reason and f"{len(c.rows)} of 100" in c.reason


def test_union_maps_activation_rows_to_probe_rows_and_takes_every_user():
    A, B = acts(seed=1), acts(n=60, seed=2)
    kept_b = list(range(0, 120, 2))  # B's probe skipped every odd image
    rows = list(range(120))
    c = choose_rows(rows, [user(A), user(B, kept=kept_b, top_k=5)], min_probe=50, sanity_sample=1, max_fraction=1.0)
    want = union_by_sorting(A, 3) | {kept_b[i] for i in union_by_sorting(B, 5)}
    assert set(c.rows) == want | set(c.sanity_rows)
    # top_images wins when it is larger than top_k
    c2 = choose_rows(rows, [user(A, top_k=1, top_images=4)], min_probe=50, sanity_sample=1, max_fraction=1.0)
    assert set(c2.rows) == union_by_sorting(A, 4) | set(c2.sanity_rows)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(family="full", similarity="rank_reorder"), "rank_reorder for T reads every image"),
        (dict(train_mode=True), "train-mode dissector"),
        (dict(needs_all_rows="the calibration bench scores every function"), "calibration bench"),
    ],
)
def test_full_pass_when_a_subset_would_be_wrong(change, words):
    rows = list(range(100))
    c = choose_rows(rows, [user(acts()), user(acts(seed=3), **change)], min_probe=50, sanity_sample=5, max_fraction=1.0)
    assert not c.reduced and c.rows == rows and c.sanity_rows is None
    assert words in c.reason


def test_full_pass_on_small_probes_and_when_the_union_is_most_of_the_probe():
    rows = list(range(100))
    assert not choose_rows(rows, [user(acts())], min_probe=100).reduced
    wide = {"a": torch.randn(100, 80, generator=torch.Generator().manual_seed(4))}
    c = choose_rows(rows, [user(wide, top_k=10)], min_probe=50, sanity_sample=5, max_fraction=0.9)
    assert not c.reduced and "a full pass costs about the same" in c.reason
    # the default thresholds are the module constants, read at call time
    assert not choose_rows(list(range(cheapest_pass.MIN_PROBE_IMAGES)), [user(acts())]).reduced


STUDY_LAST = """study "cheapest pass"
concepts c = shipped("mammo_v1")
probe p = phantom(n=30, seed=5, height=64)
dissector d = demo()
target B = demo("M")
dissect B at layer last by d on p with concepts c using soft_wpmi(top_k=2)
"""


def _run_logged(tmp_path: Path, text: str, **kw) -> Path:
    path = tmp_path / "s.study"
    path.write_text(text, encoding="utf-8")
    study, diags = check_file(str(path))
    assert study is not None, diags
    db = tmp_path / "r.duckdb"
    run_study(study, RunOptions(db=db, cache_dir=tmp_path / "cache", reports=False, **kw))
    return db


def test_run_embeds_the_union_and_stores_the_same_S(tmp_path: Path, tiny_models, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dissect_study")
    monkeypatch.setattr(cheapest_pass, "MIN_PROBE_IMAGES", 10)
    monkeypatch.setattr(cheapest_pass, "SANITY_SAMPLE", 4)
    monkeypatch.setattr(cheapest_pass, "MAX_FRACTION", 1.0)
    db = _run_logged(tmp_path, STUDY_LAST, calibration=False)
    out = caplog.text
    line = next(l for l in out.splitlines() if "top-k-only similarity" in l)
    n_embedded = int(line.split("embedding ")[1].split(" of ")[0])
    assert n_embedded < 30  # 2 neurons x top-5 images (top_images) + 4 sampled rows at most
    from dissect_study.engine.concepts import load_concept_set
    from dissect_study.engine.passes.activations import embed_images, embed_texts, extract_activations
    from dissect_study.engine.phantom.probe import PhantomProbe
    from dissect_study.engine.scores.similarity import compute_similarity, concept_activation_matrix

    probe = PhantomProbe(30, 5, 64)
    X = extract_activations(TinyTarget("B", 2), probe, ["6"], progress=False).acts["6"]
    texts = load_concept_set("c", "shipped", {"name": "mammo_v1"}, str(tmp_path)).texts
    P_full = concept_activation_matrix(
        embed_images(TinyDissector(), probe, progress=False).emb, embed_texts(TinyDissector(), texts)
    )
    S = compute_similarity("soft_wpmi", P_full, X, {"top_k": 2}).S
    con = duckdb.connect(str(db), read_only=True)
    stored = np.array(
        con.execute("SELECT score FROM similarities WHERE model='B' AND layer='6' ORDER BY unit, concept_id").fetchall()
    )[:, 0].reshape(S.shape)
    np.testing.assert_allclose(stored, S.numpy(), rtol=1e-5, atol=1e-6)
    ns = {r[0] for r in con.execute("SELECT n FROM sanity WHERE n IS NOT NULL").fetchall()}
    assert ns and max(ns) <= 4  # the zero-shot check saw the random sample only


def test_run_with_calibration_embeds_every_image(tmp_path: Path, tiny_models, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dissect_study")
    monkeypatch.setattr(cheapest_pass, "MIN_PROBE_IMAGES", 10)
    monkeypatch.setattr(cheapest_pass, "MAX_FRACTION", 1.0)
    db = _run_logged(tmp_path, STUDY_LAST)
    out = caplog.text
    assert "embedding all 30 images (the calibration bench" in out
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM calibration").fetchone()[0] > 0
