"""Phantom generator: determinism, attribute/pixel consistency, reports, probe."""

from __future__ import annotations

import numpy as np
import pytest

from dissect_study.engine.phantom.generator import make_phantom, render, sample_scene, width_for
from dissect_study.engine.phantom.probe import PhantomProbe, build_probe
from dissect_study.engine.phantom.reports import make_report, report_sentences
from dissect_study.engine.phantom.vocabulary import ALL_PHRASES, GROUND_TRUTH_CONCEPTS, true_concepts

H = 160


def _find(pred, seed=5, limit=400):
    for i in range(limit):
        sc = sample_scene(seed, i)
        if pred(sc.attributes):
            return sc
    raise AssertionError("no phantom with the wanted attributes in the first draws")


def test_deterministic_by_seed_and_index():
    a, attrs_a = make_phantom(3, 17, H)
    b, attrs_b = make_phantom(3, 17, H)
    c, _ = make_phantom(3, 18, H)
    assert np.array_equal(a, b) and attrs_a == attrs_b
    assert not np.array_equal(a, c)
    assert a.dtype == np.uint8 and a.shape == (H, width_for(H)) == (160, 96)


def test_attribute_vocabulary():
    for i in range(60):
        a = sample_scene(0, i).attributes
        assert a["view"] in ("CC", "MLO") and a["laterality"] in ("L", "R") and a["density"] in "ABCD"
        assert 1 <= a["birads"] <= 5 and isinstance(a["mass"], bool) and isinstance(a["calcification"], bool)
        assert a["findings"] and all(isinstance(f, str) for f in a["findings"])
        assert (a["mass_shape"] is not None) == a["mass"]
        if a["view"] == "MLO":
            assert a["pectoral_muscle"]
        assert a["lymph_node"] != "axillary" or a["view"] == "MLO"


def test_calcifications_are_bright_specks_inside_the_box():
    sc = _find(
        lambda a: (
            a["calcification"]
            and a["calc_distribution"] == "grouped"
            and not a["mass"]
            and not a["implant"]
            and not a["skin_marker"]
        )
    )
    img = render(sc, H).astype(float)
    from dissect_study.engine.phantom.generator import finding_boxes

    x0, y0, x1, y1 = finding_boxes(sc, H)["calcification"]
    inside = img[y0:y1, x0:x1]
    # the same scene without the calcifications: the specks are what makes the box bright
    import copy

    bare = copy.deepcopy(sc)
    bare.findings = [f for f in bare.findings if f.kind != "calcification"]
    ref = render(bare, H).astype(float)
    diff = img - ref
    assert inside.max() > np.median(inside) + 40
    ys, xs = np.nonzero(diff > 25)
    assert len(ys) > 0
    assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1


def test_mass_changes_pixels_only_inside_its_box_and_breast():
    import copy

    from dissect_study.engine.phantom.generator import finding_boxes

    sc = _find(
        lambda a: a["mass"] and a["mass_margin"] == "circumscribed" and a["mass_density"] == "high" and not a["implant"]
    )
    img = render(sc, H).astype(int)
    bare = copy.deepcopy(sc)
    bare.findings = [f for f in bare.findings if f.kind != "mass"]
    diff = img - render(bare, H).astype(int)
    x0, y0, x1, y1 = finding_boxes(sc, H)["mass"]
    assert diff[y0:y1, x0:x1].max() > 60
    outside = np.abs(diff).copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0


def test_laterality_mirrors_the_chest_wall():
    for lat in ("L", "R"):
        sc = _find(lambda a, lat=lat: a["laterality"] == lat and a["view"] == "CC")
        img = render(sc, H)
        left, right = img[:, :5].mean(), img[:, -5:].mean()
        # the chest wall side is full of tissue, the other side is mostly air
        assert (left > right) if lat == "L" else (right > left)


def test_density_raises_mean_tissue_brightness():
    means = {}
    for d in "AD":
        vals = []
        for i in range(300):
            sc = sample_scene(9, i)
            a = sc.attributes
            if a["density"] == d and a["findings"] == ["No Finding"] and a["view"] == "CC":
                img = render(sc, 96).astype(float)
                vals.append(img[img > 20].mean())
            if len(vals) == 6:
                break
        means[d] = np.mean(vals)
    assert means["D"] > means["A"] + 15


def test_reports_lowercase_no_periods_and_name_findings():
    sc = _find(lambda a: a["mass"] and a["calc_morphology"] is not None)
    a = sc.attributes
    texts = {make_report({**a, "phantom_index": sc.index}, seed=1, variant=v) for v in range(4)}
    assert len(texts) > 1  # varied templates
    for t in texts:
        assert t == t.lower() and "." not in t
        assert a["mass_shape"] in t and a["calc_morphology"] in t


def test_report_sentences_name_exactly_the_present_findings():
    """Each finding is worded iff it is in the ground truth; negatives only for absent ones."""
    seen = set()
    for i in range(150):
        a = sample_scene(4, i).attributes
        for v in range(3):
            s = report_sentences(a, np.random.default_rng([4, i, v]))
            text = " | ".join(s)
            side = {"L": "left", "R": "right"}[a["laterality"]]
            assert side in s[0] and s[-1].endswith(str(a["birads"]))
            assert ("margin" in text) == bool(a["mass"])
            if a["mass"]:
                assert a["mass_shape"] in text and "no mass" not in text and "no suspicious mass" not in text
            assert ("distribution" in text or "calcifications located" in text) <= bool(a["calc_morphology"])
            if a["calc_morphology"]:
                assert a["calc_morphology"] in text and "no calcifications" not in text
                assert ("suspicious calcification" in s) <= bool(a["calcification"])
            assert ("architectural distortion" in text) == bool(a["architectural_distortion"])
            assert ("asymmetry" in text) == bool(a["asymmetry"])
            assert ("lymph node" in text) == bool(a["lymph_node"])
            assert ("skin thicken" in text or "skin is thickened" in text) == bool(a["skin_thickening"])
            assert ("implant" in text) == bool(a["implant"])
            assert ("skin marker" in text) == bool(a["skin_marker"])
            assert ("nipple in profile" in text) <= bool(a["nipple_in_profile"])
            assert ("not in profile" in text) <= (not a["nipple_in_profile"])
            assert ("pectoral muscle" in text) <= bool(a["pectoral_muscle"])
            seen |= {k for k in ("mass", "architectural_distortion", "asymmetry", "lymph_node", "implant") if a[k]}
    assert len(seen) == 5  # every branch above was exercised
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    a = sample_scene(4, 0).attributes
    assert report_sentences(a, rng_a) == report_sentences(a, rng_b)


def test_vocabulary_phrases_and_truth():
    assert "spiculated margin" in ALL_PHRASES and "popcorn calcifications" in ALL_PHRASES
    assert len(ALL_PHRASES) == len(set(ALL_PHRASES)) == 51
    a = {"view": "MLO", "laterality": "R", "density": "C", "mass": True, "mass_shape": "oval", "calcification": False}
    tc = true_concepts(a)
    assert {
        "mediolateral oblique view",
        "right breast",
        "heterogeneously dense",
        "density C",
        "mass",
        "oval mass",
    } <= tc
    assert "calcification" not in tc
    assert all(isinstance(v, tuple) and v for v in GROUND_TRUTH_CONCEPTS.values())


def test_probe_contract():
    p = build_probe("ph", {"n": 5, "seed": 2, "height": 64}, None)
    assert isinstance(p, PhantomProbe) and len(p) == 5 and p.width == round(64 * 912 / 1520)
    img = p.load(3)
    assert img.shape == (64, 38) and img.dtype == np.uint8
    assert np.array_equal(img, PhantomProbe(5, 2, 64).load(3))
    assert p.manifest_sha256() == PhantomProbe(5, 2, 64).manifest_sha256() != PhantomProbe(5, 3, 64).manifest_sha256()
    it = p.items[3]
    assert it.attributes["report"] and "boxes" in it.attributes
    import json

    json.dumps(it.attributes)  # JSON-able for the images table
    with pytest.raises(ValueError, match="height"):
        PhantomProbe(3, 0, 16)


def test_probe_identity_follows_the_renderer(monkeypatch):
    """New pixels under the same ids and attributes are another probe: cached activations are not reused."""
    from dissect_study.engine.phantom import probe as probe_mod

    before = PhantomProbe(4, 1, 64).manifest_sha256()
    monkeypatch.setattr(probe_mod, "RENDER_VERSION", probe_mod.RENDER_VERSION + 1)
    after = PhantomProbe(4, 1, 64)
    assert after.manifest_sha256() != before
    assert [it.attributes for it in after.items] == [it.attributes for it in PhantomProbe(4, 1, 64).items]


def test_nipple_in_profile_is_a_visible_nub():
    """The same scene with and without the nipple: at the demo's 160 px a nub of tens of pixels
    stands out from the outline (the first rendering moved a few pixels by a few grey levels,
    no more than the outline's own wobble, and no CNN learned it)."""
    import dataclasses

    for index in range(12):
        scene = sample_scene(3, index)
        on, off = (
            dataclasses.replace(scene, attributes={**scene.attributes, "nipple_in_profile": v}) for v in (True, False)
        )
        diff = np.abs(render(on, 160).astype(int) - render(off, 160).astype(int))
        assert (diff >= 60).sum() >= 20, (index, int(diff.max()), int((diff >= 60).sum()))
