"""Safe loading: the restricted unpickler, its allow-list, refusals, and clear errors.

Real-format files come from `checkpoint_fixtures`, which writes them the way
Mammo-CLIP's training code does (hydra-composed config with a filled `${now:...}`
resolver cache, AdamW + LambdaLR states, renamed file).  A few older tests simulate
omegaconf with fake modules, which also shows the loader needs no omegaconf.
"""

from __future__ import annotations

import os
import sys
import tarfile
import types
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import hydra_style_config, write_tiny_real_clip
from helpers.models import tiny_bert_config

from dissect_study.engine.models.checkpoint import (
    CheckpointError,
    InertDefaultDict,
    InertPickled,
    file_sha256,
    find_refused,
    load_torch_file,
    load_weights_file,
    plain_value,
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
    torch.save(
        {"model": {"logit_scale": torch.tensor(2.0)}, "config": {"transform": {"affine_scale": lc}}, "epoch": 7}, p
    )
    for name in ("omegaconf.listconfig", "omegaconf.nodes", "omegaconf"):
        monkeypatch.delitem(sys.modules, name)
    obj = load_torch_file(p)
    inert = obj["config"]["transform"]["affine_scale"]
    assert isinstance(inert, InertPickled) and inert.pickled_name == "omegaconf.listconfig.ListConfig"
    assert obj["epoch"] == 7 and float(obj["model"]["logit_scale"]) == 2.0
    assert isinstance(inert.state["_content"][0], InertPickled)


def test_numpy_entries_of_classifier_files_load(tmp_path):
    p = tmp_path / "clf.pth"
    torch.save(
        {
            "model": {"w": torch.ones(2)},
            "predictions": np.arange(3, dtype=np.int64),
            "accuracy": np.float64(0.75),
            "f1": np.float32(0.5),
        },
        p,
    )
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


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("truncated", r"truncated zip archive \(the file has [\d,]+ of at least [\d,]+ bytes\)"),
        ("tar", "real tar archive"),
        ("png", "not a PyTorch checkpoint"),
        ("empty", "file is empty"),
    ],
)
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


# --------------------------------------------------------------------------- real-format Mammo-CLIP files


@pytest.fixture(scope="module")
def tiny_model():
    from dissect_study.engine.models.efficientnet import CONFIGS
    from dissect_study.engine.models.mammo_clip import MammoClipModel, new_bert

    torch.manual_seed(0)
    return MammoClipModel(CONFIGS["tiny"], new_bert(tiny_bert_config()), proj_dim=8)


@pytest.fixture(scope="module")
def real_tar(tiny_model, tmp_path_factory) -> Path:
    return write_tiny_real_clip(tmp_path_factory.mktemp("real") / "b5-model-best-epoch-7.tar", tiny_model)


def _root_metadata(node: InertPickled) -> InertPickled:
    while node.state.get("_parent") is not None:
        node = node.state["_parent"]
    return node.state["_metadata"]


def test_real_format_file_is_what_the_training_code_writes(real_tar):
    """The fixture has the features that broke loading: guards against a tidied-up imitation."""
    with zipfile.ZipFile(real_tar) as zf:
        assert zf.namelist()[0] == "model-epoch-7/data.pkl"  # saved under another name, then renamed
    import omegaconf

    entries = [
        omegaconf.ListConfig,
        omegaconf.DictConfig,
        omegaconf.base.ContainerMetadata,
        omegaconf.base.Metadata,
        omegaconf.nodes.AnyNode,
        typing.Any,
        dict,
        list,
        int,
        __import__("collections").defaultdict,
    ]
    with torch.serialization.safe_globals(entries), pytest.raises(Exception, match="Can only SETITEM"):
        torch.load(real_tar, weights_only=True)


def test_real_format_file_loads_without_trust(real_tar, tiny_model):
    obj = load_torch_file(real_tar)
    assert list(obj) == ["model", "optimizer", "scheduler", "config", "epoch", "train_loss"]
    own = tiny_model.state_dict()
    assert list(obj["model"]) == list(own)
    assert all(torch.equal(obj["model"][k], v) for k, v in own.items())
    assert obj["epoch"] == 7 and float(obj["train_loss"]) == pytest.approx(1.234)
    group = obj["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and group["params"] == list(range(len(list(tiny_model.parameters()))))
    assert set(obj["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert obj["scheduler"]["lr_lambdas"] == [{}] and obj["scheduler"]["wsteps"] == 1
    cfg = obj["config"]
    assert cfg["model"]["image_encoder"]["name"] == "tf_efficientnet_b5_ns-detect"
    assert cfg["model"]["projection_head"]["proj_dim"] == 8 and cfg["model"]["text_encoder"]["pooling"] == "eos"
    scale = cfg["transform"]["train"]["transform"]["affine_scale"]
    assert isinstance(scale, InertPickled) and scale.pickled_name == "omegaconf.listconfig.ListConfig"
    assert plain_value(scale) == [0.8, 1.2]
    cache = _root_metadata(scale).state["resolver_cache"]  # hydra's `now` cache, filled, inert
    assert isinstance(cache, InertDefaultDict) and set(cache["now"]) == {("%Y-%m-%d",), ("%H-%M-%S",)}
    assert "/" in cfg["base"]["output"]["checkpoint"] and "${" not in cfg["base"]["output"]["checkpoint"]


class _Trap:
    """Pickles as a call of os.system (posix.system): what a booby-trapped checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def trapped_tar(real_tar, tmp_path):
    """The real-format file with two traps: a config value and a node inside the omegaconf chain."""
    marker = tmp_path / "EXECUTED"
    obj = torch.load(real_tar, weights_only=False)
    obj["config"]["model"]["text_encoder"]["cache_dir"] = _Trap(marker)
    scale = obj["config"]["transform"]["train"]["transform"]["affine_scale"]
    scale._content[0].__dict__["_val"] = _Trap(marker)
    path = tmp_path / "b5-model-best-epoch-7.tar"
    torch.save(obj, path)
    return path, marker


def test_booby_trapped_config_is_refused_and_never_executed(trapped_tar):
    path, marker = trapped_tar
    with pytest.raises(CheckpointError) as e:
        load_torch_file(path, param="checkpoint")
    msg = str(e.value)
    assert "unpicklable config object posix.system at key config.model.text_encoder.cache_dir" in msg
    assert "posix.system at key config.transform.train.transform.affine_scale._content[0]._val" in msg
    assert "nothing of it was executed" in msg and "trust_checkpoint=true" in msg and "\n" not in msg
    assert not marker.exists()


def test_booby_trap_refused_by_inspect_cli(trapped_tar):
    from click.testing import CliRunner

    from dissect_study.engine.cli import cli

    path, marker = trapped_tar
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert res.exit_code == 1 and "posix.system" in res.output
    assert not marker.exists()


def test_disallowed_global_in_config_names_it_and_its_key(tmp_path, monkeypatch):
    Payload = _fake_module(monkeypatch, "vendor_lib.sched", "WarmupPolicy")
    cfg = hydra_style_config(tmp_path / "hydra")
    cfg["scheduler"]["policy"] = Payload()
    p = tmp_path / "odd.tar"
    torch.save({"model": {"w": torch.ones(2)}, "config": cfg, "epoch": 3}, p)
    with pytest.raises(
        CheckpointError,
        match=r"unpicklable config object vendor_lib\.sched\.WarmupPolicy at key "
        r"config\.scheduler\.policy\. .*trust_checkpoint=true",
    ):
        load_torch_file(p)


def test_trust_checkpoint_needs_no_omegaconf(real_tar, tmp_path, monkeypatch):
    Payload = _fake_module(monkeypatch, "vendor_lib.sched", "WarmupPolicy")
    obj = torch.load(real_tar, weights_only=False)
    obj["scheduler"]["policy"] = Payload()
    p = tmp_path / "custom.tar"
    torch.save(obj, p)
    for name in ("omegaconf", "hydra"):  # as on a user's machine: neither is installed
        monkeypatch.setitem(sys.modules, name, None)
    logged: list[str] = []
    loaded = load_torch_file(p, trust=True, log=logged.append)
    assert isinstance(loaded["scheduler"]["policy"], Payload)
    assert plain_value(loaded["config"]["transform"]["train"]["transform"]["affine_scale"]) == [0.8, 1.2]
    assert logged == [f"trust_checkpoint: unpickled vendor_lib.sched.WarmupPolicy from {p}"]
    assert load_torch_file(real_tar, trust=True, log=logged.append)["epoch"] == 7
    assert len(logged) == 1  # nothing beyond the allow-list: trust was not needed, nothing logged


def test_trust_checkpoint_names_the_module_to_install(tmp_path, monkeypatch):
    Payload = _fake_module(monkeypatch, "vendor_lib.sched", "WarmupPolicy")
    p = tmp_path / "custom.tar"
    torch.save({"model": {"w": torch.ones(1)}, "extra": Payload()}, p)
    for name in ("vendor_lib.sched", "vendor_lib"):
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(CheckpointError, match=r"needs the Python module `vendor_lib\.sched`.*pip install vendor_lib"):
        load_torch_file(p, trust=True)


def test_no_model_key_lists_the_keys(tmp_path):
    from dissect_study.engine.models.checkpoint import extract_state_dict

    p = tmp_path / "b5-model-best-epoch-7.tar"
    torch.save({"state_dict_ema": {"w": torch.ones(1)}, "optimizer": {}, "epoch": 7}, p)
    with pytest.raises(
        CheckpointError,
        match=r"no `model` key; keys are state_dict_ema, optimizer, epoch\. .*"
        r"torch\.save\(\{'model': model\.state_dict\(\)\}",
    ):
        extract_state_dict(load_torch_file(p), p, "checkpoint", key="model")


def test_truncated_real_file_reports_bytes_present_and_needed(real_tar, tmp_path):
    full = real_tar.read_bytes()
    cut = tmp_path / "b5-model-best-epoch-7.tar"
    cut.write_bytes(full[: len(full) * 3 // 5])
    with pytest.raises(CheckpointError) as e:
        load_torch_file(cut)
    msg = str(e.value)
    import re

    m = re.search(r"truncated zip archive \(the file has ([\d,]+) of at least ([\d,]+) bytes\)", msg)
    assert m, msg
    have, need = (int(g.replace(",", "")) for g in m.groups())
    assert have == len(full) * 3 // 5 and 0.9 * len(full) < need <= len(full)
    assert "copy the file again" in msg


def test_inert_standins_cover_typing_generics_bytes_and_sets(tmp_path):
    p = tmp_path / "misc.pth"
    alias = typing.Dict[str, int]  # noqa: UP006 - a typing alias is what omegaconf metadata pickles
    torch.save(
        {
            "model": {"w": torch.ones(1)},
            "t": alias,
            "b": b"\x00\xffab",
            "s": {1, 2},
            "c": 1 + 2j,
            "dev": torch.device("cpu"),
            "size": torch.Size([2, 3]),
            "path": Path("/a/b"),
            "dt": torch.float16,
            "p": torch.nn.Parameter(torch.ones(2)),
        },
        p,
    )
    obj = load_torch_file(p)
    assert isinstance(obj["t"], InertPickled) and obj["b"] == b"\x00\xffab" and obj["s"] == {1, 2}
    assert obj["c"] == 1 + 2j and obj["dev"] == torch.device("cpu") and obj["size"] == (2, 3)
    assert str(obj["path"]) == "/a/b" and obj["dt"] is torch.float16
    assert isinstance(obj["p"], torch.nn.Parameter) and torch.equal(obj["p"].data, torch.ones(2))
    assert find_refused(obj) == []


def test_views_share_one_storage_and_broadcasts_load(tmp_path):
    base = torch.arange(12.0)
    p = tmp_path / "views.pth"
    torch.save({"a": base[2:8].view(2, 3), "b": base, "e": torch.zeros(()).expand(4, 5)}, p)
    obj = load_torch_file(p)
    assert torch.equal(obj["a"], base[2:8].view(2, 3)) and obj["e"].shape == (4, 5)
    assert obj["a"].untyped_storage().data_ptr() == obj["b"].untyped_storage().data_ptr()


def test_old_format_files_use_torch_safe_loader_and_trust(tmp_path, monkeypatch):
    plain = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.arange(3.0)}, "epoch": 2}, plain, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(plain)
    assert torch.equal(load_torch_file(plain)["model"]["w"], torch.arange(3.0))
    Payload = _fake_module(monkeypatch, "vendor_lib.sched", "WarmupPolicy")
    odd = tmp_path / "old_odd.pth"
    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, odd, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"old-format .*trust_checkpoint=true"):
        load_torch_file(odd)
    assert isinstance(load_torch_file(odd, trust=True)["x"], Payload)


def test_trusted_files_get_torchs_own_tensor_rebuilds(tmp_path, monkeypatch):
    Tagged = _fake_module(monkeypatch, "vendor_lib.tensors", "Tagged", base=torch.Tensor)
    p = tmp_path / "sub.pth"
    t = torch.ones(2).as_subclass(Tagged)
    torch.save({"t": t}, p)
    with pytest.raises(CheckpointError, match=r"unpicklable object vendor_lib\.tensors\.Tagged.*trust_checkpoint"):
        load_torch_file(p)
    loaded = load_torch_file(p, trust=True)["t"]
    assert type(loaded) is Tagged and torch.equal(loaded.as_subclass(torch.Tensor), torch.ones(2))
