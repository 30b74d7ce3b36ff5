"""CLIP folder dissector / vision target, timm targets, and `inspect` on every file kind."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import (
    make_text_folder,
    save_classifier,
    save_clip_checkpoint,
    tiny_classifier_state_dict,
    tiny_clip_state_dict,
)

from dissect_study.engine.models import build_dissector, build_target
from dissect_study.engine.models.base import BuildContext
from dissect_study.engine.models.checkpoint import CheckpointError


def make_clip_folder(root: Path) -> Path:
    """A tiny CLIP model folder with a character-level BPE tokenizer (no merges)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    root.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")).save_pretrained(root)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(root)
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "size": {"shortest_edge": 32},
                "crop_size": {"height": 32, "width": 32},
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
            }
        )
    )
    return root


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_clip_folder(tmp_path_factory.mktemp("clip"))


def test_clip_dissector_and_vision_target(clip_dir):
    from transformers import CLIPModel

    ctx = BuildContext(base_dir=str(clip_dir.parent), cache_dir=str(clip_dir.parent), log=lambda m: None)
    d = build_dissector("clip", "clip", {"path": clip_dir.name}, ctx)
    img = np.random.default_rng(0).integers(0, 255, size=(48, 40), dtype=np.uint8)
    x = d.preprocess(img)
    assert x.shape == (3, 32, 32)
    ref = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    with torch.no_grad():  # independent: vision pooled output -> visual projection by hand
        pooled = ref.vision_model(pixel_values=x[None]).pooler_output
        manual = pooled @ ref.visual_projection.weight.T
    torch.testing.assert_close(d.encode_images(x[None]), manual, atol=1e-5, rtol=1e-5)
    t = d.encode_texts(["mass", "no mass", "fatty"])
    assert t.shape == (3, 8) and not torch.allclose(t[0], t[1])
    v = build_target("V", "clip_vision", {"path": clip_dir.name}, ctx)
    assert [l.name for l in v.layers()] == [f"vision_model.encoder.layers.{i}" for i in range(3)]
    seen = {}
    v.module.get_submodule("vision_model.encoder.layers.2").register_forward_hook(
        lambda _m, _i, o: seen.update(o=o[0] if isinstance(o, tuple) else o)
    )
    v.forward(x[None])
    assert seen["o"].shape == (1, 17, 16)  # CLS + 16 patches
    with pytest.raises(CheckpointError, match="not CLIP"):
        build_dissector("c", "clip", {"path": str(make_text_folder(clip_dir.parent / "bert"))}, ctx)


def test_timm_target_from_local_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(w))
    ctx = BuildContext(base_dir=str(tmp_path), cache_dir=str(tmp_path), log=lambda s: None)
    t = build_target(
        "T",
        "timm",
        {"model": "test_efficientnet", "weights": "w.safetensors", "num_classes": None, "trust_checkpoint": False},
        ctx,
    )
    x = t.preprocess(np.random.default_rng(1).integers(0, 65535, size=(200, 120), dtype=np.uint16))
    assert x.shape == (3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(t.forward(x[None]), m(x[None]))  # weights are the file's
    names = [l.name for l in t.layers()]
    assert "blocks.1" in names and "blocks.1.0" in names
    info = {l.name: l.channels for l in t.layers()}
    seen = {}
    t.module.get_submodule("blocks.1").register_forward_hook(lambda _m, _i, o: seen.update(c=o.shape[1]))
    t.forward(x[None])
    assert info["blocks.1"] == seen["c"]
    with pytest.raises(CheckpointError, match="Wrong number of classes"):
        build_target("T", "timm", {"model": "test_efficientnet", "weights": "w.safetensors", "num_classes": 5}, ctx)
    with pytest.raises(CheckpointError, match="not a timm architecture"):
        build_target("T", "timm", {"model": "resnet_nope", "weights": "w.safetensors"}, ctx)


def test_inspect_recognises_file_kinds(tmp_path, clip_dir):
    from safetensors.torch import save_file

    from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet, lukemelas_to_timm
    from dissect_study.engine.models.inspect import format_inspect, inspect_path

    sd = tiny_clip_state_dict()
    info = inspect_path(save_clip_checkpoint(tmp_path / "tiny.tar", sd))
    assert (info["kind"], info["variant"]) == ("mammo_clip", "tiny")
    assert info["embedding"] == {"image_features": 32, "text_features": 16, "projection": 8, "text_vocab": 25}
    assert [l["channels"] for l in info["layers"]] == [8, 16, 16, 24]
    assert info["file_entries"]["epoch"] == 7
    text = format_inspect(info)
    assert "Mammo-CLIP CLIP checkpoint" in text and "_blocks.3" in text and "blocks.2.0" in text
    json.dumps(info)  # --json must work

    clf = inspect_path(save_classifier(tmp_path / "c.pth", tiny_classifier_state_dict(sd, 4), binary=False))
    assert (clf["kind"], clf["n_class"], clf["task_guess"]) == ("classifier", 4, "density")
    assert clf["file_entries"]["accuracy"] == pytest.approx(0.7)

    enc = EfficientNet(CONFIGS["b2"])
    luke = tmp_path / "b2.pth"
    torch.save(enc.state_dict(), luke)
    assert inspect_path(luke)["kind"] == "efficientnet_lukemelas"
    timm_file = tmp_path / "b2.safetensors"
    save_file({lukemelas_to_timm(k, enc.specs): v.contiguous() for k, v in enc.state_dict().items()}, str(timm_file))
    ti = inspect_path(timm_file)
    assert (ti["kind"], ti["variant"], len(ti["layers"])) == ("timm_efficientnet", "b2", 23)

    folder = inspect_path(make_text_folder(tmp_path / "bert"))
    assert folder["kind"] == "hf_text_folder" and folder["embedding"]["text_features"] == 16
    ci = inspect_path(clip_dir)
    assert ci["kind"] == "clip_folder" and len(ci["layers"]) == 3
    assert "Hugging Face CLIP folder" in format_inspect(ci)
    with pytest.raises(CheckpointError):
        inspect_path(tmp_path / "nothing")


def test_format_inspect_names_unknown_or_missing_kinds_as_given():
    from dissect_study.engine.models.inspect import format_inspect

    assert format_inspect({"path": "a.bin", "kind": "state_dict"}).splitlines()[0] == "a.bin: state dict"
    assert format_inspect({"path": "b.bin", "kind": "odd_kind"}).splitlines()[0] == "b.bin: odd_kind"
    assert format_inspect({"path": "c.bin"}).splitlines()[0] == "c.bin: None"
