"""Hooks, pooling and the streamed passes, checked against hand-written forwards.

Every expected value below is computed by calling the tiny models' layers by
hand (no hooks), so a hook that captured the wrong module, mis-ordered rows or
pooled over the wrong axis fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.activations import (
    RGB,
    ModuleTarget,
    batch_of,
    cnn_target,
    make_probe,
    manual_cnn,
)
from torch import nn

from dissect_study.engine.models.base import Dissector, Preprocess
from dissect_study.engine.passes.activations import (
    ActivationError,
    ProbeDataset,
    collate_skipping,
    embed_images,
    embed_texts,
    extract_activations,
    pool,
)
from dissect_study.engine.probes.base import ImageUnreadable

# ----------------------------------------------------------------------------- fixtures: probe


# ----------------------------------------------------------------------------- fixtures: targets


class Block(nn.Module):
    """Returns a (tokens, extra) tuple like HF transformer layers."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.Tanh())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + self.mlp(x), None


class TinyViT(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.blocks = nn.ModuleList([Block(d), Block(d)])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, L, D) batch-first
        return torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        for b in self.blocks:
            t = b(t)[0]
        return t[:, 0]


class Reuse(nn.Module):
    """One activation module called twice per forward: a hook on it is ambiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.act(x)))


def no_hooks_left(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


CNN_LAYERS = ["features.0", "features.2", "features.4", "head"]

# ----------------------------------------------------------------------------- pool


def test_pool_known_answers() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    # channel c of image b holds 4 consecutive numbers starting at 4*(3b+c)
    start = 4 * torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert torch.equal(pool(x, "avg"), start + 1.5)
    assert torch.equal(pool(x, "max"), start + 3)
    assert torch.equal(pool((x, "extra"), "max"), start + 3)  # tuple unwrap for max too (reference bug 11.17)

    t = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [5.0, -2.0]]])  # (B=1, L=3, D=2), batch-first
    assert torch.equal(pool(t, "cls"), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(pool(t, "avg"), torch.tensor([[3.0, 2.0]]))
    assert torch.equal(pool(t, "max"), torch.tensor([[5.0, 6.0]]))
    assert torch.equal(pool([t], "cls"), torch.tensor([[1.0, 2.0]]))

    fc = torch.randn(4, 7)
    for mode in ("none", "avg", "max", "cls"):
        assert pool(fc, mode) is fc


def test_pool_bf16_average_accumulates_in_fp32() -> None:
    x = torch.full((1, 1, 64, 64), 1.001, dtype=torch.bfloat16)
    out = pool(x, "avg")
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(torch.tensor(1.001, dtype=torch.bfloat16).float().item())


@pytest.mark.parametrize(
    "value, mode, fragment",
    [
        (torch.zeros(2, 3, 4, 4), "none", "use avg or max"),
        (torch.zeros(2, 3, 4, 4), "cls", "use avg or max"),
        (torch.zeros(2, 3, 4), "none", "use cls, avg or max"),
        (torch.zeros(2, 3, 4, 4, 4), "avg", "5-D"),
        (torch.zeros(2), "avg", "1-D"),
        ("not a tensor", "avg", "not a tensor"),
        ((), "avg", "empty"),
        (torch.zeros(2, 3), "mean", "unknown pooling"),
    ],
)
def test_pool_errors_name_the_layer(value: object, mode: str, fragment: str) -> None:
    with pytest.raises(ActivationError) as e:
        pool(value, mode, layer="blocks.9")
    assert "blocks.9" in str(e.value) and fragment in str(e.value)


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("mode, reduce", [("avg", lambda a: a.mean(dim=(2, 3))), ("max", lambda a: a.amax(dim=(2, 3)))])
def test_hooks_equal_manual_forward_all_layers_one_pass(mode: str, reduce) -> None:
    probe = make_probe(7)
    target = cnn_target()
    res = extract_activations(target, probe, CNN_LAYERS, pooling=mode, batch_size=3, progress=False)
    assert target.calls == 3  # ceil(7 / 3) forwards for four layers: one pass, not one per layer
    assert res.indices == list(range(7)) and res.skipped == []
    ref = manual_cnn(target.module, batch_of(probe, list(range(7))))
    for layer in CNN_LAYERS[:3]:
        expected = reduce(ref[layer])
        assert res.acts[layer].shape == expected.shape and res.acts[layer].dtype == torch.float32
        torch.testing.assert_close(res.acts[layer], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.acts["head"], ref["head"], rtol=1e-5, atol=1e-6)  # 2-D: unchanged
    assert res.images_per_s > 0
    assert no_hooks_left(target.module)


def test_result_is_an_ordinary_tensor() -> None:
    """Results made under inference_mode must still allow in-place math downstream."""
    res = extract_activations(cnn_target(), make_probe(4), ["features.0"], batch_size=4, progress=False)
    a = res.acts["features.0"]
    assert not a.is_inference()
    a.sub_(a.mean(0))  # raises for an inference tensor


@pytest.mark.parametrize("mode", ["cls", "avg", "max"])
def test_vit_tuple_outputs(mode: str) -> None:
    torch.manual_seed(1)
    target = ModuleTarget(TinyViT())
    probe = make_probe(5, size=(4, 6))
    res = extract_activations(target, probe, ["blocks.0", "blocks.1"], pooling=mode, batch_size=2, progress=False)
    m = target.module
    with torch.no_grad():
        t0 = m.blocks[0](m.tokens(batch_of(probe, list(range(5)))))[0]
        t1 = m.blocks[1](t0)[0]
    red = {"cls": lambda t: t[:, 0], "avg": lambda t: t.mean(1), "max": lambda t: t.amax(1)}[mode]
    torch.testing.assert_close(res.acts["blocks.0"], red(t0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.acts["blocks.1"], red(t1), rtol=1e-5, atol=1e-6)
    assert target.calls == 3


def test_unreadable_images_are_skipped_and_reported() -> None:
    probe = make_probe(7, bad={1: ImageUnreadable("truncated PNG"), 4: ValueError("bad DICOM tag")})
    target = cnn_target()
    res = extract_activations(target, probe, ["features.2"], batch_size=3, progress=False)
    assert res.indices == [0, 2, 3, 5, 6]
    assert [i for i, _ in res.skipped] == [1, 4]
    assert "ImageUnreadable" in res.skipped[0][1] and "truncated PNG" in res.skipped[0][1]
    assert "bad DICOM tag" in res.skipped[1][1]
    expected = manual_cnn(target.module, batch_of(probe, res.indices))["features.2"].mean(dim=(2, 3))
    torch.testing.assert_close(res.acts["features.2"], expected, rtol=1e-5, atol=1e-6)


def test_indices_select_and_order_rows() -> None:
    probe = make_probe(7, bad={3: ImageUnreadable("x")})
    target = cnn_target()
    rows = [6, 3, 0, 2]
    res = extract_activations(target, probe, ["features.4"], batch_size=2, indices=rows, progress=False)
    assert res.indices == [6, 0, 2] and res.skipped[0][0] == 3
    expected = manual_cnn(target.module, batch_of(probe, [6, 0, 2]))["features.4"].mean(dim=(2, 3))
    torch.testing.assert_close(res.acts["features.4"], expected, rtol=1e-5, atol=1e-6)


def test_whole_batch_unreadable_and_all_unreadable() -> None:
    bad = {i: ImageUnreadable("gone") for i in (0, 1, 2)}
    res = extract_activations(cnn_target(), make_probe(5, bad=bad), ["features.0"], batch_size=3, progress=False)
    assert res.indices == [3, 4] and res.acts["features.0"].shape == (2, 4)
    every = {i: ImageUnreadable("gone") for i in range(3)}
    with pytest.raises(ActivationError, match="no image"):
        extract_activations(cnn_target(), make_probe(3, bad=every), ["features.0"], progress=False)


def test_workers_give_the_same_rows() -> None:
    probe = make_probe(6, bad={2: ImageUnreadable("x")})
    a = extract_activations(cnn_target(), probe, ["features.2", "head"], batch_size=2, workers=0, progress=False)
    b = extract_activations(cnn_target(), probe, ["features.2", "head"], batch_size=2, workers=2, progress=False)
    assert a.indices == b.indices == [0, 1, 3, 4, 5] and a.skipped == b.skipped
    for layer in a.acts:
        torch.testing.assert_close(a.acts[layer], b.acts[layer])


def test_bf16_on_cpu_runs_fp32_and_says_so() -> None:
    probe = make_probe(3)
    a = extract_activations(cnn_target(), probe, ["features.0"], precision="bf16", progress=True)
    b = extract_activations(cnn_target(), probe, ["features.0"], precision="fp32", progress=False)
    assert a.precision == "fp32"
    torch.testing.assert_close(a.acts["features.0"], b.acts["features.0"])


def test_bracket_spelling_resolves() -> None:
    res = extract_activations(cnn_target(), make_probe(2), ["features[2]"], progress=False)
    assert res.acts["features[2]"].shape == (2, 6)


# ----------------------------------------------------------------------------- hook hygiene and errors


def test_no_hook_outlives_a_failing_forward() -> None:
    target = cnn_target(fail_on_call=2)
    with pytest.raises(RuntimeError, match="boom"):
        extract_activations(target, make_probe(7), CNN_LAYERS, batch_size=3, progress=False)
    assert target.calls == 2
    assert no_hooks_left(target.module)


def test_no_hook_outlives_a_pooling_error() -> None:
    target = cnn_target()
    with pytest.raises(ActivationError, match="features.0"):
        extract_activations(target, make_probe(3), ["head", "features.0"], pooling="cls", progress=False)
    assert no_hooks_left(target.module)


def test_unknown_layer_lists_close_names() -> None:
    target = cnn_target()
    with pytest.raises(ActivationError) as e:
        extract_activations(target, make_probe(2), ["features.0", "featurs.2"], progress=False)
    assert "featurs.2" in str(e.value) and "features.2" in str(e.value)
    assert no_hooks_left(target.module)


def test_layer_that_never_runs_is_an_error() -> None:
    target = cnn_target()
    with pytest.raises(ActivationError, match="did not run"):
        extract_activations(target, make_probe(2), ["unused"], progress=False)
    assert no_hooks_left(target.module)


def test_reused_module_is_an_error() -> None:
    target = ModuleTarget(Reuse())
    with pytest.raises(ActivationError, match="more than once"):
        extract_activations(target, make_probe(2), ["act"], progress=False)
    assert no_hooks_left(target.module)


def test_bad_arguments() -> None:
    t, p = cnn_target(), make_probe(2)
    with pytest.raises(ActivationError, match="pooling"):
        extract_activations(t, p, ["head"], pooling="median", progress=False)
    with pytest.raises(ActivationError, match="precision"):
        extract_activations(t, p, ["head"], precision="fp8", progress=False)
    with pytest.raises(ActivationError, match="repeats"):
        extract_activations(t, p, ["head", "head"], progress=False)
    with pytest.raises(IndexError, match="out of range"):
        extract_activations(t, p, ["head"], indices=[0, 5], progress=False)
    assert no_hooks_left(t.module)


def test_mixed_image_sizes_are_a_clear_error() -> None:
    probe = make_probe(2)
    probe.arrays[1] = probe.arrays[1][:8]
    with pytest.raises(ActivationError, match="fixed size"):
        extract_activations(cnn_target(), probe, ["head"], batch_size=2, progress=False)


def test_dataset_and_collate() -> None:
    probe = make_probe(3, bad={1: ImageUnreadable("nope")})
    ds = ProbeDataset(probe, RGB, [2, 1, 0])
    images, idx, skipped = collate_skipping([ds[i] for i in range(len(ds))])
    assert idx == [2, 0] and skipped == [(1, "ImageUnreadable: nope")]
    torch.testing.assert_close(images, batch_of(probe, [2, 0]))
    assert collate_skipping([ds[1]]) == (None, [], [(1, "ImageUnreadable: nope")])


# ----------------------------------------------------------------------------- dissector passes


def grey_to_tensor(image: np.ndarray) -> torch.Tensor:
    g = torch.from_numpy(image.astype(np.float32)).mean(-1) / 255.0
    return g.expand(3, *g.shape).contiguous()


class TinyDissector(Dissector):
    name = "tinyclip"
    batch_size = 2

    def __init__(self) -> None:
        torch.manual_seed(3)
        self.proj = nn.Linear(3, 4)
        self.text_calls: list[int] = []

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess({"kind": "grey"}, grey_to_tensor)

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.proj(batch.amax(dim=(2, 3)))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.text_calls.append(len(texts))
        return torch.tensor([[len(t), sum(map(ord, t)) % 97, t.count("a"), 1.0] for t in texts], dtype=torch.float32)

    def fingerprint(self) -> str:
        return "d"


def test_embed_images_uses_the_dissectors_preprocess() -> None:
    probe = make_probe(5, bad={3: ImageUnreadable("x")})
    d = TinyDissector()
    res = embed_images(d, probe, progress=False)
    assert res.indices == [0, 1, 2, 4] and res.skipped[0][0] == 3
    grey = torch.stack([grey_to_tensor(probe.arrays[i]) for i in res.indices])
    with torch.no_grad():
        expected = d.proj(grey.amax(dim=(2, 3)))
    torch.testing.assert_close(res.emb, expected)
    assert not res.emb.is_inference()


def test_embed_texts_chunks_keep_order() -> None:
    texts = ["mass", "calcification", "dense breast", "a", "architectural distortion"]
    d = TinyDissector()
    out = embed_texts(d, texts, chunk=2)
    assert d.text_calls == [2, 2, 1]
    torch.testing.assert_close(out, d.encode_texts(texts))
    assert not out.is_inference()
    with pytest.raises(ActivationError, match="no concept"):
        embed_texts(d, [])
