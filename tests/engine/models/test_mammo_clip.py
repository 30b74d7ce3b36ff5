"""Mammo-CLIP dissector, image-tower and classifier targets, F_general, factories.

Tiny random checkpoints with the real key layout keep these fast; one test loads a
checkpoint with the real B5 key list and shapes strictly.  Embeddings are checked
against an independent manual computation (projection by hand, eos index by loop).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import (
    write_shaped_real_clip,
    write_tiny_real_clip,
)
from helpers.models import (
    grey_image,
    make_text_folder,
    random_state_dict,
    save_classifier,
    save_clip_checkpoint,
    tiny_bert_config,
    tiny_classifier_state_dict,
    tiny_clip_state_dict,
)

from dissect_study.engine.models import build_dissector, build_target
from dissect_study.engine.models.base import BuildContext
from dissect_study.engine.models.checkpoint import CheckpointError
from dissect_study.engine.models.mammo_clip import MEAN, STD, load_mammo_clip, mammo_clip_preprocess

SIZE = (64, 40)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    text = make_text_folder(root / "bert")
    sd = tiny_clip_state_dict(seed=3)
    ckpt = save_clip_checkpoint(root / "tiny-model-best-epoch-7.tar", sd)
    return {"root": root, "text": text, "sd": sd, "ckpt": ckpt}


@pytest.fixture(scope="module")
def dissector(files):
    return load_mammo_clip(files["ckpt"], files["text"], image_size=SIZE)


def test_preprocess_matches_numpy_recipe():
    img = grey_image(SIZE[0], SIZE[1], seed=1)
    x = mammo_clip_preprocess(SIZE)(img).numpy()
    f = np.repeat(img[:, :, None], 3, axis=2).astype(np.float32)
    f = (f - f.min()) / (f.max() - f.min())
    expected = ((f - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)
    assert x.shape == (3, *SIZE)
    np.testing.assert_allclose(x, expected, atol=1e-6)


def test_preprocess_blank_image_is_finite_and_resizes_by_area():
    pre = mammo_clip_preprocess(SIZE)
    blank = pre(np.full((10, 10), 7, dtype=np.uint16))
    assert blank.shape == (3, *SIZE) and torch.isfinite(blank).all()
    assert torch.allclose(blank, torch.full_like(blank, (0 - MEAN) / STD))
    # 2x2 box averages of a 128x80 image == the 64x40 area-resized result
    big = grey_image(128, 80, seed=2).astype(np.float32)
    boxed = big.reshape(64, 2, 40, 2).mean(axis=(1, 3))
    boxed = (boxed - boxed.min()) / (boxed.max() - boxed.min())
    np.testing.assert_allclose(pre(big)[0].numpy(), (boxed - MEAN) / STD, atol=1e-5)


def test_image_embedding_equals_manual_projection(dissector, files):
    sd = files["sd"]
    batch = torch.stack([dissector.preprocess(grey_image(*SIZE, seed=s)) for s in range(3)])
    emb = dissector.encode_images(batch)
    with torch.no_grad():
        pooled = dissector.model.image_encoder.features(batch).mean(dim=(2, 3))
    manual = pooled @ sd["image_projection.projection.weight"].T + sd["image_projection.projection.bias"]
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb, manual, atol=1e-5, rtol=1e-5)
    # unnormalised, and normalising gives unit rows
    assert not torch.allclose(emb.norm(dim=1), torch.ones(3))


def test_text_embedding_is_eos_pooled_and_projected(dissector, files):
    sd = files["sd"]
    texts = ["mass", "no suspicious calcification", "extremely dense breast"]
    emb = dissector.encode_texts(texts)
    # independent path: tokenizer per text (no padding), hidden state of the final token ([SEP])
    tok = dissector.tokenizer
    ref_bert = dissector.model.text_encoder.text_encoder
    rows = []
    for t in texts:
        ids = tok(t, return_tensors="pt")
        assert ids["input_ids"][0, -1].item() == tok.sep_token_id
        with torch.no_grad():
            h = ref_bert(**ids).last_hidden_state[0, -1]
        rows.append(h @ sd["text_projection.projection.weight"].T + sd["text_projection.projection.bias"])
    torch.testing.assert_close(emb, torch.stack(rows), atol=1e-5, rtol=1e-5)


def test_text_tower_weights_come_from_checkpoint(dissector, files):
    bert_sd = dissector.model.text_encoder.text_encoder.state_dict()
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(bert_sd[key], files["sd"]["text_encoder.text_encoder." + key])


def test_layers_aliases_and_timm_names(dissector):
    target = dissector.image_tower()
    layers = target.layers()
    assert [l.name for l in layers] == [f"_blocks.{i}" for i in range(4)]
    assert [l.channels for l in layers] == [8, 16, 16, 24]
    assert target.resolve_layer("blocks.1.1") == "_blocks.2"
    assert target.resolve_layer("image_encoder._blocks[3]") == "_blocks.3"
    assert target.aliases() == {"early": "_blocks.0", "middle": "_blocks.2", "last": "_blocks.3"}
    assert target.module is dissector.model.image_encoder  # shared weights
    out = target.forward(torch.zeros(2, 3, *SIZE))
    assert out.shape == (2, 32)


def test_b5_aliases_are_the_papers_layers():
    from dissect_study.engine.models.efficientnet import CONFIGS
    from dissect_study.engine.models.mammo_clip import paper_layer_aliases

    assert paper_layer_aliases(CONFIGS["b5"]) == {"early": "_blocks.2", "middle": "_blocks.19", "last": "_blocks.38"}
    assert paper_layer_aliases(CONFIGS["b2"]) == {"early": "_blocks.1", "middle": "_blocks.11", "last": "_blocks.22"}


def test_factories_resolve_relative_paths_and_build_targets(files):
    ctx = BuildContext(base_dir=str(files["root"]), cache_dir=str(files["root"] / "cache"), log=lambda m: None)
    d = build_dissector(
        "mammo",
        "mammo_clip",
        {
            "checkpoint": files["ckpt"].name,
            "text": "bert",
            "variant": "auto",
            "train_mode": False,
            "trust_checkpoint": False,
        },
        ctx,
    )
    assert d.name == "mammo" and d.describe()["variant"] == "tiny"
    ctx.dissectors["mammo"] = d
    m = build_target("M", "image_tower", {"dissector": "mammo"}, ctx)
    assert m.name == "M" and m.fingerprint() != d.fingerprint()
    clf_path = save_classifier(
        files["root"] / "clf_density.pth", tiny_classifier_state_dict(files["sd"], 4), binary=False
    )
    c = build_target(
        "C1",
        "classifier",
        {"checkpoint": clf_path.name, "base": "mammo", "task": "density", "n_class": None, "trust_checkpoint": False},
        ctx,
    )
    logits = c.forward(torch.stack([d.preprocess(grey_image(*SIZE))]))
    assert logits.shape == (1, 4)
    assert c.describe()["file_metrics"]["accuracy"] == pytest.approx(0.7)
    assert c.preprocess is d.preprocess
    # classifier encoder weights are the file's, not the base's
    with pytest.raises(CheckpointError, match="Wrong number of classes"):
        build_target(
            "C3",
            "classifier",
            {"checkpoint": clf_path.name, "base": "mammo", "task": "mass", "n_class": None, "trust_checkpoint": False},
            ctx,
        )
    with pytest.raises(CheckpointError, match=r"checkpoint: file .*nope\.tar"):
        build_dissector("x", "mammo_clip", {"checkpoint": "nope.tar", "text": "bert"}, ctx)
    with pytest.raises(CheckpointError, match="text: folder"):
        build_dissector("x", "mammo_clip", {"checkpoint": files["ckpt"].name, "text": "missing_bert"}, ctx)


def test_classifier_logits_equal_head_on_pooled_features(files, dissector):
    from dissect_study.engine.models.classifier import load_classifier

    sd = tiny_classifier_state_dict(files["sd"], 1)
    sd["image_encoder._blocks.0._bn2.bias"] += 0.5  # fine-tuned values differ from the CLIP file
    path = save_classifier(files["root"] / "clf_mass.pth", sd)
    t = load_classifier(path, dissector, task="mass")
    x = torch.stack([dissector.preprocess(grey_image(*SIZE, seed=9))])
    with torch.no_grad():
        pooled = t.owner.image_encoder.features(x).mean(dim=(2, 3))
    manual = pooled @ sd["classifier.classification_head.weight"].T + sd["classifier.classification_head.bias"]
    torch.testing.assert_close(t.forward(x), manual, atol=1e-5, rtol=1e-5)
    assert torch.equal(t.module._blocks[0]._bn2.bias, sd["image_encoder._blocks.0._bn2.bias"])


def test_classifier_rejects_clip_file_and_wrong_variant(files, dissector, tmp_path):
    from dissect_study.engine.models.classifier import load_classifier

    with pytest.raises(CheckpointError, match="classification_head.weight' is missing"):
        load_classifier(files["ckpt"], dissector)
    with pytest.raises(CheckpointError, match="fine-tuned classifier"):
        load_mammo_clip(save_classifier(tmp_path / "c.pth", tiny_classifier_state_dict(files["sd"], 1)), files["text"])


def test_strict_loading_errors_name_file_and_key(files, tmp_path):
    sd = dict(files["sd"])
    sd["text_encoder.text_encoder.embeddings.position_ids"] = torch.arange(64)[None]  # tolerated
    sd = {"module." + k: v for k, v in sd.items()}  # DDP prefix, tolerated
    d = load_mammo_clip(save_clip_checkpoint(tmp_path / "ok.tar", sd), files["text"], image_size=SIZE)
    assert d.describe()["epoch"] == 7
    bad = dict(files["sd"])
    del bad["image_encoder._blocks.1._bn0.running_var"]
    with pytest.raises(CheckpointError, match=r"missing key.*image_encoder\._blocks\.1\._bn0\.running_var"):
        load_mammo_clip(save_clip_checkpoint(tmp_path / "missing.tar", bad), files["text"])
    bad = dict(files["sd"])
    bad["image_projection.projection.bias"] = torch.zeros(9)
    with pytest.raises(CheckpointError, match=r"image_projection\.projection\.bias' has shape \[9\]"):
        load_mammo_clip(save_clip_checkpoint(tmp_path / "shape.tar", bad), files["text"])
    bad = dict(files["sd"])
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected key.*extra.weight"):
        load_mammo_clip(save_clip_checkpoint(tmp_path / "extra.tar", bad), files["text"])
    with pytest.raises(CheckpointError, match="variant = 'b5' was requested"):
        load_mammo_clip(files["ckpt"], files["text"], variant="b5")


def test_text_folder_errors(files, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_mammo_clip(files["ckpt"], tmp_path / "empty")
    other = make_text_folder(tmp_path / "bigger")
    cfg = json.loads((other / "config.json").read_text())
    cfg["hidden_size"] = 32
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        load_mammo_clip(files["ckpt"], other)


def test_train_mode_dissector_gives_target_its_own_copy(files):
    d = load_mammo_clip(files["ckpt"], files["text"], image_size=SIZE)
    early = d.image_tower()  # built before the engine switches the dissector to train mode
    d.train_mode = True
    t = d.image_tower()
    assert early.module is not d.model.image_encoder
    before = t.module._blocks[0]._bn2.running_mean.clone()
    d.encode_images(torch.randn(2, 3, *SIZE))
    assert not torch.equal(d.model.image_encoder._blocks[0]._bn2.running_mean, before)  # reference bug reproduced
    assert torch.equal(t.module._blocks[0]._bn2.running_mean, before)
    assert torch.equal(early.module._blocks[0]._bn2.running_mean, before)


def test_f_general_seeded_projections(tmp_path):
    from safetensors.torch import save_file

    from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet, lukemelas_to_timm
    from dissect_study.engine.models.mammo_clip import load_mammo_clip_general

    text = make_text_folder(tmp_path / "bert", with_weights=True)
    enc = EfficientNet(CONFIGS["b2"])
    sd = random_state_dict([(k, list(v.shape), str(v.dtype)[6:]) for k, v in enc.state_dict().items()], seed=5)
    luke = tmp_path / "efficientnet-b2.pth"
    torch.save({**sd, "_fc.weight": torch.zeros(1000, 1408), "_fc.bias": torch.zeros(1000)}, luke)
    timm_file = tmp_path / "tf_efficientnet_b2.safetensors"
    save_file(
        {lukemelas_to_timm(k, enc.specs): v.contiguous() for k, v in sd.items()}
        | {"classifier.weight": torch.zeros(1000, 1408), "classifier.bias": torch.zeros(1000)},
        str(timm_file),
    )
    a = load_mammo_clip_general(luke, text, variant="b2", projection_seed=1, image_size=(96, 64))
    b = load_mammo_clip_general(timm_file, text, variant="b2", projection_seed=1, image_size=(96, 64))
    c = load_mammo_clip_general(timm_file, text, variant="b2", projection_seed=2, image_size=(96, 64))
    x = torch.stack([a.preprocess(grey_image(96, 64, seed=4))])
    ea, eb, ec = a.encode_images(x), b.encode_images(x), c.encode_images(x)
    torch.testing.assert_close(ea, eb)  # same ImageNet weights via either layout, same seed
    assert not torch.allclose(ea, ec)
    assert a.describe()["projection_seed"] == 1 and a.fingerprint() != c.fingerprint()
    # the text tower is the folder's BERT
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(text), local_files_only=True)
    assert torch.equal(
        a.model.text_encoder.text_encoder.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight
    )
    with pytest.raises(CheckpointError, match="imagenet_weights"):
        load_mammo_clip_general(luke, text, variant="b5")


@pytest.mark.slow
def test_real_b5_key_list_loads_strictly(shared_dir, tmp_path):
    from transformers import BertConfig

    meta = json.loads((shared_dir / "data/mammo_clip/clip_b5_state_dict.json").read_text())
    sd = {}
    for e in meta["tensors"]:  # cheap values: only names/shapes/dtypes matter here
        dt = torch.int64 if e["dtype"] == "int64" else torch.float32
        sd[e["key"]] = (
            torch.ones(e["shape"], dtype=dt) if "running_var" in e["key"] else torch.zeros(e["shape"], dtype=dt)
        )
    assert len(sd) == 1056
    path = save_clip_checkpoint(tmp_path / "b5-model-best-epoch-7.tar", sd)
    text = make_text_folder(tmp_path / "bert")
    BertConfig(
        vocab_size=28996, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ).save_pretrained(text)
    d = load_mammo_clip(path, text)
    facts = d.describe()
    assert (facts["variant"], facts["image_dim"], facts["text_dim"], facts["embed_dim"]) == ("b5", 2048, 768, 512)
    assert len(d.image_tower().layers()) == 39 and d.image_tower().layers()[38].channels == 512
    assert d.preprocess.describe["resize"]["size_hw"] == [1520, 912]


# --------------------------------------------------------------------------- real-format training checkpoints


def _tiny_model(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    from dissect_study.engine.models.efficientnet import CONFIGS
    from dissect_study.engine.models.mammo_clip import MammoClipModel, new_bert

    model = MammoClipModel(CONFIGS["tiny"], new_bert(tiny_bert_config()), proj_dim=8)
    model.load_state_dict(sd)
    return model


@pytest.fixture(scope="module")
def real_tar(files):
    """The tiny model's weights in a file written the way Mammo-CLIP's trainer writes it."""
    return write_tiny_real_clip(files["root"] / "real" / "b5-model-best-epoch-7.tar", _tiny_model(files["sd"]))


def test_real_format_tar_builds_the_dissector_without_trust(files, dissector, real_tar):
    ctx = BuildContext(base_dir=str(real_tar.parent), cache_dir=str(files["root"] / "cache"), log=lambda m: None)
    d = build_dissector(
        "mammo",
        "mammo_clip",
        {
            "checkpoint": real_tar.name,
            "text": str(files["text"]),
            "variant": "auto",
            "trust_checkpoint": False,
            "image_size": list(SIZE),
        },
        ctx,
    )
    batch = torch.stack([d.preprocess(grey_image(*SIZE, seed=s)) for s in range(2)])
    torch.testing.assert_close(d.encode_images(batch), dissector.encode_images(batch), rtol=0, atol=0)
    texts = ["mass", "no suspicious calcification"]
    torch.testing.assert_close(d.encode_texts(texts), dissector.encode_texts(texts), rtol=0, atol=0)
    facts = d.describe()
    assert facts["epoch"] == 7
    assert facts["training_config"] == {
        "image_encoder": "tf_efficientnet_b5_ns-detect",
        "text_encoder": "tiny-bert",
        "text_pooling": "eos",
        "projection_dim": 8,
        "temperature": 0.07,
        "image_size_h": 1520,
        "image_size_w": 912,
        "mean": MEAN,
        "std": STD,
        "text_max_length": 256,
    }
    json.dumps(facts)  # stored as run details


def test_config_disagreements_refuse_or_warn(files, tmp_path, caplog):
    model = _tiny_model(files["sd"])
    mean_pooled = write_tiny_real_clip(tmp_path / "mean.tar", model, pooling="mean")
    with pytest.raises(CheckpointError, match=r"pooling = 'mean'.*'eos' pooling"):
        load_mammo_clip(mean_pooled, files["text"], image_size=SIZE)
    other_dim = write_tiny_real_clip(tmp_path / "dim.tar", model, proj_dim=512)
    logged: list[str] = []
    load_mammo_clip(other_dim, files["text"], image_size=SIZE, log=logged.append)
    assert [m for m in logged if "proj_dim 512 but the projection weights give 8" in m]  # once, to the run's warnings
    assert not [r for r in caplog.records if "proj_dim 512" in r.getMessage()]  # not twice
    load_mammo_clip(other_dim, files["text"], image_size=SIZE)  # a library caller without a run: logged
    assert any("proj_dim 512" in r.getMessage() for r in caplog.records)


def test_file_without_model_key_lists_its_keys(files, tmp_path):
    p = tmp_path / "b5-model-best-epoch-7.tar"
    torch.save({"state_dict": files["sd"], "epoch": 7, "train_loss": torch.tensor(0.3)}, p)
    with pytest.raises(CheckpointError, match=r"no `model` key; keys are state_dict, epoch, train_loss\. "):
        load_mammo_clip(p, files["text"])


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize(
    "variant,epoch,blocks,last_channels,image_features",
    [
        ("b5", 7, 39, 512, 2048),
        ("b2", 10, 23, 352, 1408),
    ],
)
def test_inspect_cli_on_real_format_clip_files(
    shared_dir, tmp_path, variant, epoch, blocks, last_channels, image_features
):
    """`dissect-study inspect FILE.tar --json` through the installed entry point, no trust flag."""
    import shutil
    import subprocess
    import sys

    entries = json.loads((shared_dir / f"data/mammo_clip/clip_{variant}_state_dict.json").read_text())["tensors"]
    path = write_shaped_real_clip(tmp_path / f"{variant}-model-best-epoch-{epoch}.tar", entries, variant, epoch)
    exe = Path(sys.executable).with_name("dissect-study")
    cmd = [str(exe) if exe.exists() else shutil.which("dissect-study"), "inspect", str(path), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert (info["kind"], info["variant"], info["epoch"]) == ("mammo_clip", variant, epoch)
    rows = json.loads((shared_dir / f"data/mammo_clip/effnet_{variant}_blocks.json").read_text())
    assert len(info["layers"]) == len(rows) == blocks
    assert info["layers"][-1] == {
        "name": f"_blocks.{blocks - 1}",
        "channels": last_channels,
        "aliases": [rows[-1]["timm_name"]],
    }
    assert [(lay["name"], lay["channels"]) for lay in info["layers"]] == [
        (r["lukemelas_name"], r["out_channels"]) for r in rows
    ]
    assert info["embedding"] == {
        "image_features": image_features,
        "text_features": 768,
        "projection": 512,
        "text_vocab": 28996,
    }
    assert info["training_config"]["projection_dim"] == 512 and info["training_config"]["text_pooling"] == "eos"
    assert info["file_entries"]["epoch"] == epoch
