"""Demo dissector and targets at tiny size: training smoke test, caching, interfaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect_study.engine.models import demo
from dissect_study.engine.models.base import BuildContext, Dissector, Target


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "N_TRAIN_DISSECTOR", 30)
    monkeypatch.setattr(demo, "N_TRAIN_TARGETS", 24)
    monkeypatch.setattr(demo, "N_HELDOUT", 16)
    monkeypatch.setattr(demo, "TRAIN_HEIGHT", 64)
    monkeypatch.setattr(demo, "TASK_HEIGHT", {"C_mass": 80})  # as C_calcification is
    monkeypatch.setattr(demo, "CLASSIFIER_EPOCHS", 1)
    monkeypatch.setattr(demo, "_BUILT", {})
    monkeypatch.setattr(demo, "_DATA_MEMO", {})
    monkeypatch.setattr(demo, "_RENDER_MEMO", {})
    logs: list[str] = []
    return BuildContext(base_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), log=logs.append), logs


def test_minilm_mean_pooling_matches_unpadded_single_texts():
    enc = demo.MiniLMEncoder.shared()
    texts = ["spiculated margin", "fine linear calcifications in a segmental distribution"]
    batched = enc(texts)
    for i, t in enumerate(texts):
        b = enc.tokenizer([t], return_tensors="pt")
        with torch.no_grad():
            h = enc.model(**b).last_hidden_state[0]
        ref = h.mean(0)
        ref = ref / ref.norm()
        assert torch.allclose(batched[i], ref, atol=1e-5)
    assert batched.shape == (2, 384)


def test_threaded_painting_matches_painting_one_by_one(monkeypatch):
    """The painter threads change nothing: each phantom is the generator's own, in order,
    and the C targets' phantoms are the first of the dissector's (painted once)."""
    from dissect_study.engine.phantom.generator import render, sample_scene

    monkeypatch.setattr(demo, "_DATA_MEMO", {})
    monkeypatch.setattr(demo, "_RENDER_MEMO", {})
    monkeypatch.setattr(demo, "_PAINT_CHUNK", 3)  # several chunks, one of them short
    monkeypatch.setattr(demo, "N_TRAIN_TARGETS", 4)
    stream, n = 77, 11
    got = list(demo._painted(stream, n))
    assert len(got) == n
    for i, image in enumerate(got):
        assert np.array_equal(image, render(sample_scene(stream, i), demo.RENDER_HEIGHT)), i
    assert len(demo._RENDER_MEMO[(stream, demo.RENDER_HEIGHT)]) == 4  # only the targets' share is kept
    big = demo.phantom_set(stream, n, 48)
    small = demo.phantom_set(stream, 4, 48)
    assert torch.equal(big.images[:4], small.images)
    assert big.attributes[:4] == small.attributes


def test_painting_stops_promptly_when_its_consumer_stops(monkeypatch):
    """An interrupted run (Ctrl-C while painting) must not wait for every phantom still queued."""
    calls = []
    real = demo._paint_chunk
    monkeypatch.setattr(demo, "_RENDER_MEMO", {})
    monkeypatch.setattr(demo, "_PAINT_CHUNK", 2)
    monkeypatch.setattr(demo, "_paint_chunk", lambda *a: calls.append(a) or real(*a))
    painted = demo._painted(78, 200)  # 100 chunks
    next(painted)
    painted.close()  # what an exception in the consumer does to the generator
    assert len(calls) < 10, len(calls)


def test_dissector_trains_caches_and_reloads(tiny, monkeypatch):
    ctx, logs = tiny
    d = demo.build_dissector("demo", {"seed": 0, "epochs": 1}, ctx)
    assert isinstance(d, Dissector)
    files = sorted(p.name for p in (ctx.cache_dir and __import__("pathlib").Path(ctx.cache_dir) / "demo").iterdir())
    assert any(f.endswith(".safetensors") for f in files) and any(f.endswith(".json") for f in files)
    assert not any(f.endswith(".tmp") for f in files)
    t = d.encode_texts(["mass", "no mass", "skin marker"])
    assert t.shape == (3, demo.PROJ_DIM)
    img = np.full((160, 96), 30, np.uint8)
    x = torch.stack([d.preprocess(img), d.preprocess(img)])
    assert x.shape == (2, 3, 64, 38)
    assert d.encode_images(x).shape == (2, demo.PROJ_DIM)
    rep = d.training_report()
    assert set(rep["zero_shot"]) >= {"mass", "calcification", "density"}
    assert 0.0 <= rep["zero_shot"]["mass"]["accuracy"] <= 1.0
    fp = d.fingerprint()
    # second build: from the cache, no training, same weights
    monkeypatch.setattr(demo, "_BUILT", {})
    monkeypatch.setattr(demo, "_train_dissector", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    d2 = demo.build_dissector("demo", {"seed": 0, "epochs": 1}, ctx)
    assert d2.fingerprint() == fp
    assert any("loaded from cache" in m for m in logs)


def test_training_is_reproducible(tiny, tmp_path):
    ctx, _ = tiny
    a = demo.build_dissector("demo", {"seed": 3, "epochs": 1}, ctx)
    demo._BUILT.clear()
    ctx2 = BuildContext(base_dir=str(tmp_path), cache_dir=str(tmp_path / "other"), log=lambda m: None)
    b = demo.build_dissector("demo", {"seed": 3, "epochs": 1}, ctx2)
    assert a.fingerprint() == b.fingerprint()


def test_training_ignores_the_callers_thread_count(tiny, tmp_path, monkeypatch):
    """Same weights whether the caller runs 1 or 3 threads: training always uses TRAIN_THREADS
    (reductions split by thread give other bits), and the caller's count is restored."""
    seen: list[int] = []
    train = demo._train_dissector

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return train(*a, **k)

    monkeypatch.setattr(demo, "_train_dissector", spy)
    before = torch.get_num_threads()
    prints = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            demo._BUILT.clear()
            ctx = BuildContext(base_dir=str(tmp_path), cache_dir=str(tmp_path / f"t{threads}"), log=lambda m: None)
            prints.append(demo.build_dissector("demo", {"seed": 1, "epochs": 2}, ctx).fingerprint())
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert seen == [demo.TRAIN_THREADS, demo.TRAIN_THREADS]
    assert prints[0] == prints[1]


def test_precision_is_part_of_the_recipe(tiny, monkeypatch):
    """bfloat16 and float32 training give different weights, so each has its own cache entry,
    and the report says which one trained the model (both paths run on any machine here)."""
    ctx, _ = tiny
    reports = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setattr(demo, "TRAIN_PRECISION", precision)
        demo._BUILT.clear()
        reports[precision] = demo.build_dissector("demo", {"seed": 2, "epochs": 1}, ctx).training_report()
    assert {r["precision"] for r in reports.values()} == {"fp32", "bf16"}
    cached = sorted((__import__("pathlib").Path(ctx.cache_dir) / "demo").glob("dissector-*.safetensors"))
    assert len(cached) == 2


def test_targets(tiny):
    ctx, _ = tiny
    ctx.dissectors["demo"] = demo.build_dissector("demo", {"seed": 0, "epochs": 1}, ctx)
    g = demo.build_target("G", {"variant": "G", "seed": 0}, ctx)
    m = demo.build_target("M", {"variant": "M", "seed": 0}, ctx)
    c = demo.build_target("C_mass", {"variant": "C_mass", "seed": 0}, ctx)
    assert all(isinstance(t, Target) for t in (g, m, c))
    # M is the dissector's tower; G is not
    x = torch.randn(2, 3, 64, 38)
    assert torch.allclose(m.forward(x), ctx.dissectors["demo"].encode_images(x), atol=1e-5)
    assert g.fingerprint() != m.fingerprint() != c.fingerprint()
    # `target M = image_tower(demo)` goes through the HasImageTower capability and is the same M
    from dissect_study.engine.models import build_target
    from dissect_study.engine.models.base import HasImageTower

    assert isinstance(ctx.dissectors["demo"], HasImageTower)
    tower = build_target("M2", "image_tower", {"dissector": "demo"}, ctx)
    assert tower.name == "M2" and tower.fingerprint() == m.fingerprint()
    assert torch.allclose(tower.forward(x), m.forward(x), atol=1e-6)
    assert tower.module is not ctx.dissectors["demo"].net  # a copy: hooks never touch the dissector
    assert c.forward(x).shape == (2, 1)
    # the C targets read probes at their own (higher) height, M at the dissector's
    img = np.full((160, 96), 30, np.uint8)
    assert c.preprocess(img).shape == (3, 80, 48) and c.preprocess.describe["resize"] == [80, 48]
    assert m.preprocess(img).shape == (3, 64, 38)
    assert c.training_report()["image_size"] == [80, 48]
    assert c.training_report()["heldout"]["n"] == 16
    assert m.aliases() == {"early": "blocks.0", "middle": "blocks.2", "last": "blocks.4"}
    # every declared layer is hookable by name and has the declared channel count
    for info in c.layers():
        seen = {}
        h = c.module.get_submodule(info.name).register_forward_hook(
            lambda mod, i, o, seen=seen: seen.setdefault("o", o)
        )
        c.forward(x)
        h.remove()
        assert seen["o"].shape[1] == info.channels
    with pytest.raises(ValueError, match="variant"):
        demo.build_target("X", {"variant": "C4"}, ctx)
