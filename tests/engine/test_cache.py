"""The content-keyed cache: keys, round trips, damaged entries, concurrent writers, fingerprints."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dissect_study.engine import cache as cache_mod
from dissect_study.engine.cache import (
    CACHE_FORMAT,
    Cache,
    CacheError,
    default_cache_dir,
    fingerprint_file,
    fingerprint_module,
)

ACT_PARTS = dict(
    target="a" * 64,
    preprocess={"size": [1520, 912], "norm": "mammo"},
    probe="b" * 64,
    rows=[0, 1, 2, 5],
    layer="_blocks.2",
    pooling="avg",
    precision="fp32",
)


def reference_key(namespace: str, parts: dict) -> str:
    """Independent statement of the key rule: sha256 of sorted, compact JSON with the format version."""
    text = json.dumps(
        {"format": CACHE_FORMAT, "namespace": namespace, "parts": parts},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- keys


def test_key_is_sha256_of_canonical_json(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    assert c.key("acts", **ACT_PARTS) == reference_key("acts", ACT_PARTS)
    reordered = dict(reversed(list(ACT_PARTS.items())))
    assert c.key("acts", **reordered) == c.key("acts", **ACT_PARTS)
    assert c.key("acts", **{**ACT_PARTS, "rows": (0, 1, 2, 5)}) == c.key("acts", **ACT_PARTS)  # tuple == list


@pytest.mark.parametrize(
    "part, other",
    [
        ("target", "c" * 64),
        ("preprocess", {"size": [1520, 912], "norm": "imagenet"}),
        ("probe", "d" * 64),
        ("rows", [0, 1, 2, 6]),
        ("rows", [1, 0, 2, 5]),
        ("layer", "_blocks.19"),
        ("pooling", "max"),
        ("precision", "bf16"),
    ],
)
def test_every_part_changes_the_key(tmp_path: Path, part: str, other: object) -> None:
    c = Cache(tmp_path)
    assert c.key("acts", **{**ACT_PARTS, part: other}) != c.key("acts", **ACT_PARTS)


def test_namespace_and_extra_parts_change_the_key(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    base = c.key("acts", **ACT_PARTS)
    assert c.key("images", **ACT_PARTS) != base
    assert c.key("acts", **ACT_PARTS, train_mode=False) != base
    assert c.key("acts", x=1) != c.key("acts", x=1.5) and c.key("acts", x="1") != c.key("acts", x=1)


def test_key_rejects_unstable_values_and_bad_namespaces(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    with pytest.raises(TypeError, match="canonical JSON"):
        c.key("acts", model=object())
    assert c.key("acts", p=Path("/x/y")) == c.key("acts", p="/x/y")
    with pytest.raises(ValueError, match="namespace"):
        c.key("../etc", x=1)
    with pytest.raises(ValueError, match="sha256"):
        c.path("acts", "../../x")


# ----------------------------------------------------------------------------- round trip


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(10, 6, generator=g)
    return {"acts": big[:7], "rows": torch.tensor([0, 3, 4, 9]), "half": torch.randn(3, 2, generator=g).bfloat16()}


def test_round_trip(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    key = c.key("acts", **ACT_PARTS)
    assert c.load("acts", key) is None
    t = sample_tensors()
    c.save("acts", key, t, {"layer": "_blocks.2"})
    path = c.path("acts", key)
    assert path.is_file() and path.parent.parent == tmp_path / "acts" and path.name == f"{key}.safetensors"
    got, meta = c.load_with_meta("acts", key)
    assert set(got) == set(t)
    for name in t:
        assert got[name].dtype == t[name].dtype and torch.equal(got[name], t[name])
    assert meta == {"layer": "_blocks.2"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_get_or_compute_hits_second_time(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    calls = []

    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"emb": torch.arange(6.0).reshape(2, 3)}

    a, hit_a = c.get_or_compute("text", {"dissector": "x", "texts": ["mass", "calcification"]}, compute)
    b, hit_b = c.get_or_compute("text", {"dissector": "x", "texts": ["mass", "calcification"]}, compute)
    assert (hit_a, hit_b) == (False, True) and len(calls) == 1
    assert torch.equal(a["emb"], b["emb"])
    _, hit_c = c.get_or_compute("text", {"dissector": "x", "texts": ["calcification", "mass"]}, compute)
    assert not hit_c and len(calls) == 2


def test_disabled_cache_reads_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "c"
    on, off = Cache(root), Cache(root, enabled=False)
    key = on.key("acts", x=1)
    on.save("acts", key, {"a": torch.ones(2)}, {})
    assert off.load("acts", key) is None
    off.save("acts", off.key("acts", x=2), {"a": torch.ones(2)}, {})
    assert not on.path("acts", on.key("acts", x=2)).exists()
    calls = []
    for _ in range(2):
        _, hit = off.get_or_compute("acts", {"x": 1}, lambda: calls.append(1) or {"a": torch.zeros(1)})
        assert not hit
    assert len(calls) == 2


# ----------------------------------------------------------------------------- damaged entries


def saved(tmp_path: Path) -> tuple[Cache, str, Path]:
    c = Cache(tmp_path)
    key = c.key("acts", **ACT_PARTS)
    c.save("acts", key, {"acts": torch.randn(50, 8)}, {})
    return c, key, c.path("acts", key)


def test_truncated_entry_is_a_miss_and_is_recomputed(tmp_path: Path) -> None:
    c, key, path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert c.load("acts", key) is None
    assert not path.exists()  # deleted, so the next run rewrites it
    fresh = {"acts": torch.full((50, 8), 2.0)}
    got, hit = c.get_or_compute("acts", ACT_PARTS, lambda: fresh)
    assert not hit and torch.equal(got["acts"], fresh["acts"])
    assert torch.equal(c.load("acts", key)["acts"], fresh["acts"])


def test_flipped_data_byte_is_detected(tmp_path: Path) -> None:
    c, key, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor bytes: safetensors itself cannot notice
    path.write_bytes(bytes(data))
    assert c.load("acts", key) is None and not path.exists()


def test_garbage_and_misplaced_entries_are_misses(tmp_path: Path) -> None:
    c, key, path = saved(tmp_path)
    other = c.key("acts", **{**ACT_PARTS, "layer": "_blocks.38"})
    dest = c.path("acts", other)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(path.read_bytes())  # an entry renamed to another key is not trusted
    assert c.load("acts", other) is None
    path.write_bytes(b"\x00" * 40)
    assert c.load("acts", key) is None


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cache(tmp_path)
    key = c.key("acts", x=1)

    def killed(_fd: int) -> None:
        raise KeyboardInterrupt  # stands in for Ctrl-C while the bytes are being flushed

    monkeypatch.setattr(cache_mod.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        c.save("acts", key, {"a": torch.ones(1000)}, {})
    monkeypatch.undo()
    folder = c.path("acts", key).parent
    assert list(folder.iterdir()) == []
    assert c.load("acts", key) is None


def test_stale_temp_files_are_swept(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    key = c.key("acts", x=1)
    folder = c.path("acts", key).parent
    folder.mkdir(parents=True)
    old, new = folder / ".tmp-old.part", folder / ".tmp-new.part"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    c.save("acts", key, {"a": torch.ones(1)}, {})
    assert not old.exists() and new.exists()  # a fresh temp may belong to a live writer


def test_unwritable_root_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    c = Cache(blocker / "cache")
    with pytest.raises(CacheError, match="--cache-dir"):
        c.save("acts", c.key("acts", x=1), {"a": torch.ones(1)}, {})
    assert c.load("acts", c.key("acts", x=1)) is None


# ----------------------------------------------------------------------------- concurrency


def _writer(root: str, key: str, value: float, rounds: int, start: mp.synchronize.Event, out: mp.Queue) -> None:
    """Save this writer's entry, then read the shared key a few times: every read must be whole."""
    torch.set_num_threads(1)  # as DataLoader workers do: a forked child must not reuse the parent's thread pool
    c = Cache(Path(root))
    n = 1 << 20  # 4 MB: a non-atomic writer would be caught mid-write by the other process
    mine = {"acts": torch.full((n,), value)}
    bad = 0
    start.wait()
    for _ in range(rounds):
        c.save("acts", key, mine, {"w": value})
        for _ in range(3):
            got = c.load("acts", key)
            if got is None or got["acts"].shape != (n,):
                bad += 1
                continue
            first = got["acts"][0].item()
            if first not in (1.0, 2.0) or not bool((got["acts"] == first).all()):
                bad += 1
    out.put((value, bad))


def test_two_processes_writing_one_key_never_corrupt_it(tmp_path: Path) -> None:
    # fork keeps the test fast (a spawned child re-imports torch); the children are still two
    # processes with their own file handles, which is what atomicity is about
    ctx = mp.get_context("fork")
    c = Cache(tmp_path)
    key = c.key("acts", **ACT_PARTS)
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, v, 12, start, out)) for v in (1.0, 2.0)]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == {1.0: 0, 2.0: 0}
    final = c.load("acts", key)
    assert final is not None and final["acts"].unique().tolist() in ([1.0], [2.0])
    assert [p.name for p in c.path("acts", key).parent.iterdir()] == [f"{key}.safetensors"]


# ----------------------------------------------------------------------------- fingerprints


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def reference_module_hash(m: nn.Module) -> str:
    h = hashlib.sha256()
    sd = m.state_dict()
    for name in sorted(sd):
        t = sd[name].contiguous()
        h.update(name.encode() + b"\0" + f"{t.dtype}|{tuple(t.shape)}".encode() + b"\0")
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_fingerprint_module() -> None:
    a, b = small_net(0), small_net(0)
    assert fingerprint_module(a) == fingerprint_module(b) == reference_module_hash(a)
    assert fingerprint_module(small_net(1)) != fingerprint_module(a)
    with torch.no_grad():
        b[3].weight[0, 0] += 1e-6
    assert fingerprint_module(b) != fingerprint_module(a)
    c = small_net(0)
    c[1].running_mean += 0.5  # buffers count: BN statistics change the outputs
    assert fingerprint_module(c) != fingerprint_module(a)
    assert fingerprint_module(small_net(0).double()) != fingerprint_module(a)
    assert fingerprint_module(small_net(0).bfloat16()) == fingerprint_module(small_net(0).bfloat16())


def test_fingerprint_file_and_its_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "weights.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    f.write_bytes(data)
    memo = tmp_path / "memo"
    expected = hashlib.sha256(data).hexdigest()
    assert fingerprint_file(f, memo) == expected
    assert len(list((memo / "file-sha256").iterdir())) == 1

    def no_hashing(*_a: object, **_k: object) -> str:
        raise AssertionError("hashed although memoised")

    monkeypatch.setattr(cache_mod, "_sha256_file", no_hashing)
    assert fingerprint_file(f, memo) == expected  # served from the memo
    monkeypatch.undo()
    f.write_bytes(data + b"!")  # size (and mtime) change -> memo miss
    assert fingerprint_file(f, memo) == hashlib.sha256(data + b"!").hexdigest()
    assert fingerprint_file(f, memo, memo=False) == hashlib.sha256(data + b"!").hexdigest()
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        fingerprint_file(tmp_path / "missing.bin", memo)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISSECT_STUDY_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("DISSECT_STUDY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dissect-study"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dissect-study"


def test_an_earlier_versions_entry_is_rebuilt_quietly(tmp_path: Path, monkeypatch, caplog) -> None:
    """After an upgrade, old entries are expected misses: an info line, not a 'damaged' warning."""
    import logging

    from dissect_study.engine import cache as cache_mod

    path = tmp_path / "e.safetensors"
    monkeypatch.setattr(cache_mod, "CACHE_FORMAT", cache_mod.CACHE_FORMAT - 1)
    cache_mod.write_entry(path, {"x": torch.ones(3)}, key="k")
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="dissect_study.engine.cache"):
        assert cache_mod.read_entry(path, key="k") is None
    assert not path.exists()
    assert any("earlier version" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
