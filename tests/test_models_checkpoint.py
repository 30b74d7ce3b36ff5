"""Safe loading: the omegaconf/numpy allow-lists, refusals, and clear errors.

The omegaconf case is simulated exactly as it occurs in real files: objects whose
classes live in `omegaconf.*` modules are pickled by torch.save (we register fake
modules while saving, then remove them -- omegaconf is not installed).
"""

from __future__ import annotations

import sys
import tarfile
import types

import numpy as np
import pytest
import torch

from dissect_study.engine.models.checkpoint import (
    CheckpointError,
    InertPickled,
    file_sha256,
    load_torch_file,
    load_weights_file,
)


def _fake_module(monkeypatch, modname: str, clsname: str, base=object):
    parts = modname.split(".")
    for i in range(1, len(parts)):  # parent packages must be importable too
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    mod = types.ModuleType(modname)
    cls = type(clsname, (base,), {"__module__": modname})
    mod.__dict__[clsname] = cls
    monkeypatch.setitem(sys.modules, modname, mod)
    return cls


def test_plain_state_dict_loads_memory_mapped(tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"a": torch.arange(4.0)}, p)
    assert torch.equal(load_torch_file(p)["a"], torch.arange(4.0))


def test_omegaconf_objects_become_inert_standins(tmp_path, monkeypatch):
    ListConfig = _fake_module(monkeypatch, "omegaconf.listconfig", "ListConfig")
    AnyNode = _fake_module(monkeypatch, "omegaconf.nodes", "AnyNode")
    lc = ListConfig()
    lc.__dict__.update({"_content": [AnyNode(), AnyNode()], "_metadata": {"ref_type": dict}})
    p = tmp_path / "b5-model-best-epoch-7.tar"
    torch.save({"model": {"logit_scale": torch.tensor(2.0)},
                "config": {"transform": {"affine_scale": lc}}, "epoch": 7}, p)
    for name in ("omegaconf.listconfig", "omegaconf.nodes", "omegaconf"):
        monkeypatch.delitem(sys.modules, name)
    obj = load_torch_file(p)
    inert = obj["config"]["transform"]["affine_scale"]
    assert isinstance(inert, InertPickled) and inert.pickled_name == "omegaconf.listconfig.ListConfig"
    assert obj["epoch"] == 7 and float(obj["model"]["logit_scale"]) == 2.0
    assert isinstance(inert.state["_content"][0], InertPickled)


def test_numpy_entries_of_classifier_files_load(tmp_path):
    p = tmp_path / "clf.pth"
    torch.save({"model": {"w": torch.ones(2)}, "predictions": np.arange(3, dtype=np.int64),
                "accuracy": np.float64(0.75), "f1": np.float32(0.5)}, p)
    obj = load_torch_file(p)
    assert obj["accuracy"] == 0.75 and obj["predictions"].tolist() == [0, 1, 2]


def test_unknown_globals_are_refused_unless_trusted(tmp_path, monkeypatch):
    Payload = _fake_module(monkeypatch, "evil_pkg", "Payload")
    p = tmp_path / "odd.pth"
    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, p)
    with pytest.raises(CheckpointError, match=r"evil_pkg\.Payload.*trust_checkpoint=true") as e:
        load_torch_file(p, param="checkpoint")
    assert str(p) in str(e.value)
    logged = []
    obj = load_torch_file(p, trust=True, log=logged.append)  # the class is importable here
    assert isinstance(obj["x"], Payload) and "trust_checkpoint" in logged[0]


@pytest.mark.parametrize("case,pattern", [
    ("truncated", "truncated or corrupt"),
    ("tar", "real tar archive"),
    ("png", "not a PyTorch checkpoint"),
    ("empty", "file is empty"),
])
def test_bad_files_get_one_paragraph_errors(tmp_path, case, pattern):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(1000)}}, good)
    p = tmp_path / f"{case}.tar"
    if case == "truncated":
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "tar":
        with tarfile.open(p, "w") as tf:
            tf.add(good, arcname="archive/data.pkl")
    elif case == "png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    else:
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=pattern) as e:
        load_torch_file(p, param="checkpoint")
    msg = str(e.value)
    assert "checkpoint = " in msg and str(p) in msg and "\n" not in msg


def test_missing_file_and_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch_file(tmp_path / "nope.pth")
    from safetensors.torch import save_file

    p = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(3)}, str(p))
    assert torch.equal(load_weights_file(p)["a"], torch.ones(3))
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_weights_file(p)


def test_file_sha256_streams_and_memoises(tmp_path):
    import hashlib

    p = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(5_000_000)
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
