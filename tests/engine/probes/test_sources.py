"""Folder, CSV manifest, EMBED, DICOM folder and ImageNet probes; the factory; path safety."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers.images import ramp16, write_dicom
from PIL import Image

from dissect_study.dsl.vocabulary import PROBE_SOURCES
from dissect_study.engine.models.base import BuildContext
from dissect_study.engine.probes import ProbeError, build_probe
from dissect_study.engine.probes.base import ImageUnreadable


def ctx_for(base: Path, logs: list[str] | None = None) -> BuildContext:
    sink = logs.append if logs is not None else (lambda m: None)
    return BuildContext(base_dir=str(base), cache_dir=str(base / ".cache"), log=sink, warn=sink)


def png(path: Path, value: int = 100, shape=(6, 5), dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, dtype=dtype)).save(path)
    return path


def defaults(func: str, **params):
    """Parameters as the checker hands them over: registry defaults filled in."""
    out = {p.name: p.default for p in PROBE_SOURCES[func].params}
    out.update(params)
    return out


# --------------------------------------------------------------------------- folder
def test_folder_sorted_recursive_and_hidden_skipped(tmp_path):
    png(tmp_path / "imgs" / "b.png", 1)
    png(tmp_path / "imgs" / "a.PNG", 2)
    png(tmp_path / "imgs" / "sub" / "c.tif", 3, dtype=np.uint16)
    png(tmp_path / "imgs" / ".hidden.png", 4)
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    p = build_probe("f", "folder", defaults("folder", path="imgs"), ctx_for(tmp_path))
    assert [it.image_id for it in p.items] == ["a.PNG", "b.png", "sub/c.tif"]
    assert [it.attributes["folder"] for it in p.items] == ["", "", "sub"]
    assert p.name == "f" and len(p) == 3
    assert p.load(0)[0, 0] == 2 and p.load(2).dtype == np.uint16
    flat = build_probe("f", "folder", defaults("folder", path="imgs", recursive=False), ctx_for(tmp_path))
    assert [it.image_id for it in flat.items] == ["a.PNG", "b.png"]
    d = p.describe()
    assert d["kind"] == "folder" and d["n_images"] == 3 and d["root"] == str(tmp_path / "imgs")


def test_folder_errors_and_missing_image_at_load(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="no image files"):
        build_probe("f", "folder", defaults("folder", path="empty"), ctx_for(tmp_path))
    with pytest.raises(ProbeError, match="does not exist"):
        build_probe("f", "folder", defaults("folder", path="nowhere"), ctx_for(tmp_path))
    png(tmp_path / "d" / "x.png")
    p = build_probe("f", "folder", defaults("folder", path="d"), ctx_for(tmp_path))
    os.remove(tmp_path / "d" / "x.png")
    with pytest.raises(ImageUnreadable, match="not found"):
        p.load(0)


def test_folder_skips_symlink_leaving_root(tmp_path):
    outside = png(tmp_path / "secret" / "s.png")
    png(tmp_path / "d" / "x.png")
    os.symlink(outside, tmp_path / "d" / "link.png")
    os.symlink(tmp_path / "d" / "x.png", tmp_path / "d" / "inner.png")  # stays inside: kept
    logs: list[str] = []
    p = build_probe("f", "folder", defaults("folder", path="d"), ctx_for(tmp_path, logs))
    assert [it.image_id for it in p.items] == ["inner.png", "x.png"]
    assert any("symlink leaving" in m for m in logs)


# --------------------------------------------------------------------------- csv manifest
def test_csv_manifest_attributes_normalised_and_ids_kept(tmp_path):
    png(tmp_path / "data" / "i1.png", 10)
    png(tmp_path / "data" / "sub" / "i2.png", 20)
    (tmp_path / "data" / "m.csv").write_text(
        "path,id,view,laterality,density,birads,mass,findings,age,site\n"
        "i1.png,00123,cc,left,DENSITY C,BI-RADS 4,1,\"['Mass', 'Suspicious Calcification']\",54,A1\n"
        "sub/i2.png,7,MLO,R,2,3,no,,,\n"
    )
    p = build_probe("m", "csv", defaults("csv", path="data/m.csv", id_column="id"), ctx_for(tmp_path))
    a, b = p.items
    assert a.image_id == "00123" and b.image_id == "7"
    assert a.attributes == {
        "view": "CC",
        "laterality": "L",
        "density": "C",
        "birads": 4,
        "mass": True,
        "findings": ["Mass", "Suspicious Calcification"],
        "age": 54,
        "site": "A1",
    }
    assert b.attributes["density"] == "B" and b.attributes["mass"] is False and b.attributes["age"] is None
    assert b.attributes["findings"] == []
    assert p.load(1)[0, 0] == 20
    assert p.describe()["n_missing_files"] == 0


def test_csv_manifest_missing_columns_named(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(ProbeError) as e:
        build_probe("m", "csv", defaults("csv", path="m.csv", id_column="uid"), ctx_for(tmp_path))
    msg = str(e.value)
    assert "'path'" in msg and "'uid'" in msg and "'file'" in msg and "m.csv" in msg


def test_csv_manifest_bad_density_is_explained(tmp_path):
    (tmp_path / "m.csv").write_text("path,density\na.png,0\n")
    with pytest.raises(ProbeError, match="density value '0'"):
        build_probe("m", "csv", defaults("csv", path="m.csv"), ctx_for(tmp_path))


@pytest.mark.parametrize("bad", ["../secret/s.png", "sub/../../secret/s.png", "ABS"])
def test_csv_manifest_rejects_escapes(tmp_path, bad):
    secret = png(tmp_path / "secret" / "s.png")
    png(tmp_path / "data" / "ok.png")
    if bad == "ABS":
        bad = str(secret)
    (tmp_path / "data" / "m.csv").write_text(f"path\nok.png\n{bad}\n")
    with pytest.raises(ProbeError, match="outside the root"):
        build_probe("m", "csv", defaults("csv", path="data/m.csv"), ctx_for(tmp_path))


def test_csv_manifest_symlink_escape_rejected_but_inside_paths_allowed(tmp_path):
    secret = png(tmp_path / "secret" / "s.png")
    png(tmp_path / "data" / "ok.png")
    os.symlink(tmp_path / "secret", tmp_path / "data" / "linkdir")
    (tmp_path / "data" / "m.csv").write_text("path\nlinkdir/s.png\n")
    with pytest.raises(ProbeError, match="outside the root"):
        build_probe("m", "csv", defaults("csv", path="data/m.csv"), ctx_for(tmp_path))
    # '..' that stays inside, and an absolute path inside the root, are fine
    (tmp_path / "data" / "m2.csv").write_text(f"path\nsub/../ok.png\n{tmp_path / 'data' / 'ok.png'}\n")
    p = build_probe("m", "csv", defaults("csv", path="data/m2.csv"), ctx_for(tmp_path))
    assert [Path(it.path) for it in p.items] == [tmp_path / "data" / "ok.png"] * 2
    # root= widens what is allowed, explicitly
    p = build_probe("m", "csv", defaults("csv", path="data/m.csv", root=str(tmp_path)), ctx_for(tmp_path))
    assert p.items[0].path.endswith("s.png") and secret.exists()


def test_csv_missing_image_is_load_time_unreadable(tmp_path):
    (tmp_path / "m.csv").write_text("path\nmissing.png\n")
    p = build_probe("m", "csv", defaults("csv", path="m.csv"), ctx_for(tmp_path))
    assert p.describe()["n_missing_files"] == 1
    with pytest.raises(ImageUnreadable):
        p.load(0)


# --------------------------------------------------------------------------- EMBED
def test_embed_reroots_server_paths_and_maps_vocabulary(tmp_path):
    root = tmp_path / "anon_dicom"
    (root / "cohort_1").mkdir(parents=True)
    write_dicom(root / "cohort_1" / "a.dcm", ramp16())
    png(root / "cohort_1" / "b.png", 77)
    (tmp_path / "meta.csv").write_text(
        "anon_dicom_path,ViewPosition,ImageLateralityFinal,tissueden,asses,implant\n"
        "/mnt/NAS2/mammo/anon_dicom/cohort_1/a.dcm,MLO,L,3,S,1\n"
        "cohort_1/b.png,CC,R,5,N,0\n"
    )
    p = build_probe("e", "embed", defaults("embed", csv="meta.csv", root="anon_dicom"), ctx_for(tmp_path))
    a, b = p.items
    assert Path(a.path) == root / "cohort_1" / "a.dcm"
    assert a.attributes["view"] == "MLO" and a.attributes["laterality"] == "L"
    assert a.attributes["density"] == "C" and a.attributes["birads"] == 4 and a.attributes["implant"] == 1
    assert b.attributes["density"] is None and b.attributes["birads"] == 1
    assert p.describe()["n_rerooted_paths"] == 1
    assert p.load(0).dtype == np.float32 and p.load(1)[0, 0] == 77


def test_embed_absolute_path_elsewhere_rejected(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "meta.csv").write_text("anon_dicom_path\n/etc/passwd\n")
    with pytest.raises(ProbeError, match="outside root"):
        build_probe("e", "embed", defaults("embed", csv="meta.csv", root="imgs"), ctx_for(tmp_path))


# --------------------------------------------------------------------------- DICOM folder
def test_dicom_folder_reads_headers_but_not_patient_ids(tmp_path):
    d = tmp_path / "dcm"
    (d / "s1").mkdir(parents=True)
    write_dicom(d / "s1" / "one.dcm", ramp16(), ViewPosition="CC", ImageLaterality="L")
    write_dicom(d / "IM0002", ramp16(), "MONOCHROME1", ViewPosition="MLO", ImageLaterality="R")
    write_dicom(d / "s1" / "nopix.dcm", None)
    png(d / "ignored.png")
    p = build_probe("d", "dicom", defaults("dicom", path="dcm"), ctx_for(tmp_path))
    assert [it.image_id for it in p.items] == ["IM0002", "s1/nopix.dcm", "s1/one.dcm"]
    assert p.items[0].attributes["view"] == "MLO" and p.items[2].attributes["laterality"] == "L"
    assert all("SECRET" not in str(it.attributes) for it in p.items)
    assert p.load(0)[0, 0] == pytest.approx(1.0)  # MONOCHROME1: lowest stored value is brightest
    with pytest.raises(ImageUnreadable, match="no pixel data"):
        p.load(1)


# --------------------------------------------------------------------------- ImageNet
def test_imagenet_classes_labels_and_per_class(tmp_path):
    for cls, n in [("n02", 3), ("n01", 2), ("n03", 0)]:
        (tmp_path / "inet" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((4, 4, 3), i * 10 + len(cls), np.uint8)).save(tmp_path / "inet" / cls / f"{i}.JPEG")
    p = build_probe("i", "imagenet", defaults("imagenet", path="inet"), ctx_for(tmp_path))
    assert [it.image_id for it in p.items] == ["n01/0.JPEG", "n01/1.JPEG", "n02/0.JPEG", "n02/1.JPEG", "n02/2.JPEG"]
    assert [it.attributes["class_index"] for it in p.items] == [0, 0, 1, 1, 1]
    assert p.items[3].attributes["label"] == "n02"
    assert p.load(0).shape == (4, 4, 3)
    q = build_probe("i", "imagenet", defaults("imagenet", path="inet", per_class=1), ctx_for(tmp_path))
    assert [it.image_id for it in q.items] == ["n01/0.JPEG", "n02/0.JPEG"]
    assert q.describe()["images_per_class"] == {"n01": 1, "n02": 1, "n03": 0}


# --------------------------------------------------------------------------- factory
def test_factory_unknown_function_and_phantom_dispatch(tmp_path):
    with pytest.raises(ProbeError, match="unknown source function 'foldr'"):
        build_probe("x", "foldr", {}, ctx_for(tmp_path))
    from dissect_study.engine.phantom.probe import PhantomProbe
    from dissect_study.engine.phantom.probe import build_probe as build_phantom
    from dissect_study.engine.registry import PROBES

    # the name a study writes reaches the factory registered where it is defined
    assert PROBES.get("phantom") is build_phantom
    p = build_probe("ph", "phantom", {"n": 4, "seed": 1, "height": 64}, ctx_for(tmp_path))
    assert isinstance(p, PhantomProbe) and p.name == "ph" and len(p) == 4 and p.height == 64


def test_factory_accepts_real_buildcontext(tmp_path):
    from dissect_study.engine.models.base import BuildContext

    png(tmp_path / "a.png")
    p = build_probe("f", "folder", defaults("folder", path=str(tmp_path)), BuildContext(str(tmp_path), str(tmp_path)))
    assert len(p) == 1 and len(p.manifest_sha256()) == 64
