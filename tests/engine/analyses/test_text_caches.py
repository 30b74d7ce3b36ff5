"""Warm runs read the zero-shot prompts and the bench's phrases from the cache, not from the text model."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from dissect_study.engine.analyses.execute import CachedTextSide, _has_sentence_encoder, _phrase_embeddings
from dissect_study.engine.cache import Cache


class FakeDissector:
    """Counts what reaches the text model; `sentence_encoder` is a property, as in the demo dissector."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.phrases: list[str] = []
        self.property_reads = 0

    def fingerprint(self) -> str:
        return "fake-1"

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.prompts.extend(texts)
        return torch.tensor([[len(t), t.count("a"), 1.0] for t in texts], dtype=torch.float32) / 7

    @property
    def sentence_encoder(self):
        self.property_reads += 1

        def enc(texts: list[str]) -> torch.Tensor:
            self.phrases.extend(texts)
            return torch.tensor([[len(t) / 3, t.count("s") + 0.5] for t in texts], dtype=torch.float32)

        return enc


def test_prompt_embeddings_come_from_the_cache_on_a_second_run(tmp_path):
    d = FakeDissector()
    ex = SimpleNamespace(cache=Cache(tmp_path))
    first = CachedTextSide(ex, d).encode_texts(["a mass", "no mass"])
    assert d.prompts == ["a mass", "no mass"]
    again = CachedTextSide(ex, d).encode_texts(["a mass", "no mass"])  # a new run: a new wrapper
    assert d.prompts == ["a mass", "no mass"]  # not asked again
    assert torch.equal(first, again) and again.dtype == torch.float32
    assert torch.equal(again, d.encode_texts(["a mass", "no mass"]))
    CachedTextSide(ex, d).encode_texts(["other"])  # another list is another entry
    assert d.prompts.count("other") == 1


def test_disabled_cache_and_unkeyable_dissector_call_the_model(tmp_path):
    d = FakeDissector()
    ex = SimpleNamespace(cache=Cache(tmp_path, enabled=False))
    CachedTextSide(ex, d).encode_texts(["x"])
    CachedTextSide(ex, d).encode_texts(["x"])
    assert d.prompts == ["x", "x"]
    bare = SimpleNamespace(encode_texts=d.encode_texts)  # no fingerprint: nothing to key an entry by
    assert torch.equal(
        CachedTextSide(SimpleNamespace(cache=Cache(tmp_path)), bare).encode_texts(["y"]), d.encode_texts(["y"])
    )


def test_phrase_embeddings_read_from_the_cache_without_loading_the_encoder(tmp_path):
    d = FakeDissector()
    ex = SimpleNamespace(cache=Cache(tmp_path))
    assert _has_sentence_encoder(d) and d.property_reads == 0
    assert not _has_sentence_encoder(SimpleNamespace(encode_texts=None))
    first = _phrase_embeddings(ex, d, ["Mass", "skin thickening"])
    n = len(d.phrases)
    assert n > 2 and d.property_reads == 1
    second = _phrase_embeddings(ex, d, ["Mass", "skin thickening"])
    assert len(d.phrases) == n and d.property_reads == 1  # warm: the encoder is never reached
    assert set(first.rows) == set(second.rows)
    for p, v in first.rows.items():
        assert (second.rows[p] == v).all()
    assert second(["mass"]).tolist() == [[float(torch.tensor(4 / 3, dtype=torch.float32)), 2.5]]
