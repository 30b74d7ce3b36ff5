"""Fidelity: our Mammo-CLIP loader reproduces the original code's outputs.

The fixture in ../shared/data/mammo_clip/reference/ gives recipe weights (crc32-seeded
numpy draws), recipe inputs and what the original Mammo-CLIP code computed for them.
We rebuild the weights and inputs here from the prose recipe, write a real checkpoint
file, load it with our loader and compare under the fixture's tolerance rules
(REFERENCE.md section 6).  Full B5 + BERT at 1520x912 on CPU: slow, one module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import (
    RTOL,
    Checker,
    bio_clinical_bert_folder,
    compact_optimizer_state,
    hydra_style_config,
    recipe,
    recipe_image,
    recipe_tensor,
    save_real_clip_checkpoint,
    sha_all,
)

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> dict:
    return json.loads((shared_dir / "data/mammo_clip/reference/reference_outputs.json").read_text())


@pytest.fixture(scope="module")
def clip_entries(shared_dir: Path) -> list[dict]:
    return json.loads((shared_dir / "data/mammo_clip/clip_b5_state_dict.json").read_text())["tensors"]


@pytest.fixture(scope="module")
def clip_recipe(clip_entries: list[dict]) -> dict[str, np.ndarray]:
    return recipe(clip_entries)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """A Bio_ClinicalBERT-shaped config folder (token ids are fed directly; vocab is a stub)."""
    return bio_clinical_bert_folder(tmp_path_factory.mktemp("bioclinicalbert"))


@pytest.fixture(scope="module")
def dissector(clip_recipe, text_dir, tmp_path_factory):
    """The recipe weights in a file written the way Mammo-CLIP's trainer writes it (hydra config,
    optimizer, scheduler), built through the study language's `mammo_clip(...)` factory."""
    from dissect_study.engine.models import build_dissector
    from dissect_study.engine.models.base import BuildContext

    work = tmp_path_factory.mktemp("ckpt")
    sd = {k: torch.from_numpy(v) for k, v in clip_recipe.items()}
    optimizer, scheduler = compact_optimizer_state(sd)
    path = save_real_clip_checkpoint(
        work / "b5-model-best-epoch-7.tar",
        sd,
        config=hydra_style_config(work / "hydra"),
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=7,
    )
    del sd
    ctx = BuildContext(base_dir=str(work), cache_dir=str(work / "cache"), log=lambda m: None)
    d = build_dissector(
        "mammo",
        "mammo_clip",
        {"checkpoint": path.name, "text": str(text_dir), "variant": "auto", "trust_checkpoint": False},
        ctx,
    )
    assert (d.describe()["variant"], d.describe()["epoch"]) == ("b5", 7)
    path.unlink()  # the loaded weights are copies of the memory-mapped file
    return d


@pytest.fixture(scope="module")
def batch(ref) -> torch.Tensor:
    from dissect_study.engine.models.mammo_clip import mammo_clip_preprocess

    img0 = recipe_image()
    img1 = img0[::-1].copy()
    for img, key in ((img0, "image_0"), (img1, "image_1")):
        r = ref["inputs"][key]
        assert hashlib.sha256(img.tobytes()).hexdigest() == r["uint8_sha256_row_major"]
    pre = mammo_clip_preprocess()
    # PIL convert('RGB') of a grey PNG == the grey array replicated; feed (H, W, 3)
    return torch.stack([pre(np.repeat(im[:, :, None], 3, axis=2)) for im in (img0, img1)])


@pytest.fixture(scope="module")
def image_outputs(dissector, batch):
    """One forward of the batch with hooks on every recorded block."""
    enc = dissector.model.image_encoder
    blocks = [0, 2, 5, 8, 13, 19, 26, 35, 38]
    seen: dict[int, dict[str, np.ndarray]] = {}

    def hook(i):
        def fn(_m, _inp, out):
            o = out.detach().double()
            seen[i] = {
                "mean": o.mean(dim=(2, 3)).numpy(),
                "shape": list(out.shape[1:]),
                **({"max": o.amax(dim=(2, 3)).numpy()} if i == 38 else {}),
            }

        return fn

    handles = [enc.get_submodule(f"_blocks.{i}").register_forward_hook(hook(i)) for i in blocks]
    try:
        with torch.no_grad():
            pooled = enc(batch)
            proj = dissector.model.image_projection(pooled)
    finally:
        for h in handles:
            h.remove()
    return {"blocks": seen, "pooled": pooled, "proj": proj}


# --------------------------------------------------------------------------- tests


def test_recipe_weights_match_checksums(ref, clip_entries, clip_recipe):
    wc = ref["weights_check"]
    bad = [
        e["key"]
        for e in clip_entries
        if sha_all([clip_recipe[e["key"]]])[:16] != wc["per_tensor_sha256_first16hex"][e["key"]]
    ]
    assert not bad, f"recipe tensors differ from the fixture: {bad[:5]}"
    assert sha_all(clip_recipe[e["key"]] for e in clip_entries) == wc["sha256_all_clip"]


def test_preprocessed_tensor_is_bit_exact(ref, batch):
    for n in (0, 1):
        r = ref["inputs"][f"image_{n}"]
        t = batch[n].numpy()
        assert list(t.shape) == r["tensor_shape"]
        assert hashlib.sha256(t.astype("<f4").tobytes()).hexdigest() == r["tensor_float32_sha256_CHW_little_endian"]
        for pos, val in r["tensor_values_at_[c,y,x]"].items():
            c, y, x = json.loads(pos)
            assert abs(float(t[c, y, x]) - val) <= 1e-6


def test_image_path_matches_reference(ref, image_outputs):
    chk = Checker()
    r_img = ref["image_encoder"]
    for i_str, entry in r_img["blocks_mean_pool"].items():
        got = image_outputs["blocks"][int(i_str)]
        assert got["shape"] == entry["block_output_shape_CHW"], i_str
        for n in (0, 1):
            chk.summary(f"blocks_mean_pool.{i_str}.image_{n}", got["mean"][n], entry[f"image_{n}"])
    for n in (0, 1):
        chk.summary(
            f"block38_max_pool.image_{n}",
            image_outputs["blocks"][38]["max"][n],
            r_img["block38_max_pool"][f"image_{n}"],
        )
        chk.summary(
            f"pooled_2048.image_{n}", image_outputs["pooled"][n].double().numpy(), r_img["pooled_2048"][f"image_{n}"]
        )
        proj = image_outputs["proj"][n].double()
        r = r_img["image_projection_prenorm_l2"][f"image_{n}"]
        chk.scalar(f"image_projection_prenorm_l2.image_{n}", float(proj.norm()), r, RTOL * abs(r))
        chk.summary(
            f"image_embedding_512.image_{n}", (proj / proj.norm()).numpy(), r_img["image_embedding_512"][f"image_{n}"]
        )
    print(f"image path: {chk.n} fields, worst error/tolerance {chk.worst[0]:.4f} at {chk.worst[1]}")
    assert not chk.fails, "\n".join(chk.fails[:20])


def _text_tokens(ref) -> dict[str, torch.Tensor]:
    t = ref["inputs"]["text"]
    return {
        k: torch.tensor([t["text_0"][k], t["text_1"][k]]) for k in ("input_ids", "attention_mask", "token_type_ids")
    }


def test_text_path_and_similarity_match_reference(ref, dissector, image_outputs):
    tok = _text_tokens(ref)
    m = dissector.model
    with torch.no_grad():
        eos = m.text_features(tok["input_ids"], tok["attention_mask"], tok["token_type_ids"])
        proj = m.encode_text(tok["input_ids"], tok["attention_mask"], tok["token_type_ids"])
    chk = Checker()
    for j in (0, 1):
        r = ref["text_encoder"][f"text_{j}"]
        chk.summary(f"text_{j}.eos_feature_768", eos[j].double().numpy(), r["eos_feature_768"])
        chk.scalar(
            f"text_{j}.prenorm_l2",
            float(proj[j].double().norm()),
            r["text_projection_prenorm_l2"],
            RTOL * r["text_projection_prenorm_l2"],
        )
        chk.summary(
            f"text_{j}.text_embedding_512", (proj[j] / proj[j].norm()).double().numpy(), r["text_embedding_512"]
        )
    img = image_outputs["proj"].double()
    img = img / img.norm(dim=1, keepdim=True)
    txt = proj.double() / proj.double().norm(dim=1, keepdim=True)
    P = (img @ txt.T).numpy()
    for a in range(2):
        for b in range(2):
            chk.scalar(f"P[{a},{b}]", P[a, b], ref["similarity"]["P_image_x_text"][a][b], 1e-5)
    print(f"text path + P: {chk.n} fields, worst error/tolerance {chk.worst[0]:.4f} at {chk.worst[1]}")
    assert not chk.fails, "\n".join(chk.fails[:20])


def test_encode_texts_uses_eos_not_cls(ref, dissector):
    """The [SEP] feature must differ from [CLS] (guards against pooling mistakes)."""
    tok = _text_tokens(ref)
    with torch.no_grad():
        eos = dissector.model.text_features(tok["input_ids"], tok["attention_mask"], tok["token_type_ids"])
    cls_first8 = ref["text_encoder"]["text_0"]["position0_CLS_hidden_768"]["first8"]
    assert not np.allclose(eos[0, :8].numpy(), cls_first8, atol=1e-3)


def _classifier_file(ref, meta, clip_recipe, task, n_class, path):
    entries = meta["tensors_n_class_1"][:-2] + meta["tasks"][task]["head"]
    sd = {
        e["key"]: (clip_recipe[e["key"]] if e["key"] in clip_recipe else recipe_tensor(e["key"], e["shape"]))
        for e in entries
    }
    assert (
        sha_all(sd[e["key"]] for e in entries)
        == ref["weights_check"]["classifier_heads"][f"n_class_{n_class}"]["sha256_all_854"]
    )
    torch.save(
        {
            "model": {k: torch.from_numpy(v) for k, v in sd.items()},
            "predictions": np.zeros(3, dtype=np.float32),
            "epoch": 3,
            **({"auroc": np.float64(0.5)} if n_class == 1 else {"accuracy": np.float64(0.5)}),
        },
        path,
    )
    return path


def test_classifier_logits_match_reference(ref, shared_dir, clip_recipe, dissector, batch, tmp_path):
    """Density runs the full classifier forward; Mass (same recipe encoder, checked equal)
    reuses its pooled features through its own head -- one B5 forward instead of two."""
    from dissect_study.engine.models.classifier import load_classifier

    meta = json.loads((shared_dir / "data/mammo_clip/classifier_b5_state_dict.json").read_text())
    dens = load_classifier(
        _classifier_file(ref, meta, clip_recipe, "density", 4, tmp_path / "d.pth"), dissector, task="density"
    )
    mass = load_classifier(
        _classifier_file(ref, meta, clip_recipe, "Mass", 1, tmp_path / "m.pth"), dissector, task="mass"
    )
    assert all(torch.equal(a, b) for a, b in zip(dens.module.state_dict().values(), mass.module.state_dict().values()))
    seen = {}

    def grab(_m, _i, o):
        seen["b38"] = o.detach().double().mean(dim=(2, 3))

    def grab_pooled(_m, inputs, _o):
        seen["pooled"] = inputs[0].detach()

    hooks = [
        dens.module.get_submodule("_blocks.38").register_forward_hook(grab),
        dens.head.register_forward_hook(grab_pooled),
    ]
    try:
        outputs = {"density": dens.forward(batch).double()}
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        outputs["Mass"] = mass.head(seen["pooled"]).double()
    chk = Checker()
    for task, logits in outputs.items():
        n_class = logits.shape[1]
        for n in (0, 1):
            r = ref["classifier"][task][f"image_{n}"]
            assert n_class == len(r["logits"])
            for c, rv in enumerate(r["logits"]):
                chk.scalar(f"{task}.image_{n}.logits[{c}]", float(logits[n, c]), rv, RTOL * abs(rv) + RTOL)
            chk.summary(f"{task}.image_{n}.block38_mean_pool", seen["b38"][n].numpy(), r["block38_mean_pool"])
            chk.summary(f"{task}.image_{n}.pooled_2048", seen["pooled"][n].double().numpy(), r["pooled_2048"])
            if n_class == 1:
                chk.scalar(f"{task}.sigmoid", float(torch.sigmoid(logits[n, 0])), r["sigmoid"], RTOL)
            else:
                sm = torch.softmax(logits[n], 0).numpy()
                for c in range(n_class):
                    chk.scalar(f"{task}.softmax[{c}]", sm[c], r["softmax"][c], RTOL)
                assert int(sm.argmax()) == r["argmax"]
    print(f"classifiers: {chk.n} fields, worst error/tolerance {chk.worst[0]:.4f} at {chk.worst[1]}")
    assert not chk.fails, "\n".join(chk.fails[:20])
