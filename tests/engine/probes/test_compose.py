"""Unions of probes and seeded (balanced) sampling."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dissect_study.engine.models.base import BuildContext
from dissect_study.engine.probes import ProbeError, build_probe
from dissect_study.engine.probes.base import Probe, ProbeItem
from dissect_study.engine.probes.compose import apply_sample, balanced_quotas, sample_indices


class ListProbe(Probe):
    def __init__(self, name, attrs):
        self.name = name
        self._items = [ProbeItem(f"img{i:03d}", f"/x/{i}.png", a) for i, a in enumerate(attrs)]

    @property
    def items(self):
        return self._items

    def load(self, index):
        return np.full((2, 2), index, np.uint8)


@dataclass
class Sample:  # the DSL's Sample(n, balanced_by, seed), as the factory receives it
    n: int
    balanced_by: str | None = None
    seed: int = 0


CTX = BuildContext(base_dir=".", cache_dir=".", log=lambda m: LOGS.append(m), warn=lambda m: LOGS.append(m))


def ctx_with(probes):
    """A build context holding already-built probes, as the executor's does for `union`."""
    return BuildContext(
        base_dir=".", cache_dir=".", log=lambda m: LOGS.append(m), warn=lambda m: LOGS.append(m), probes=probes
    )


LOGS: list[str] = []


# --------------------------------------------------------------------------- union
def test_union_concatenates_in_order_and_dispatches_load():
    a = ListProbe("a", [{"label": "x"}] * 2)
    b = ListProbe("b", [{"view": "CC"}] * 3)
    u = build_probe("mix", "union", {"refs": ["b", "a"]}, ctx_with({"a": a, "b": b}))
    assert [i.image_id for i in u.items] == ["b:img000", "b:img001", "b:img002", "a:img000", "a:img001"]
    assert [i.attributes["probe"] for i in u.items] == ["b", "b", "b", "a", "a"]
    assert u.items[0].attributes["view"] == "CC" and u.items[4].attributes["label"] == "x"
    assert u.load(3)[0, 0] == 0 and u.load(2)[0, 0] == 2
    d = u.describe()
    assert d["kind"] == "union" and [p["name"] for p in d["parts"]] == ["b", "a"]
    assert d["counts"]["probe"] == {"a": 2, "b": 3}


def test_union_errors():
    a = ListProbe("a", [{}])
    with pytest.raises(ProbeError, match="not built yet"):
        build_probe("u", "union", {"refs": ["a", "zz"]}, ctx_with({"a": a}))
    with pytest.raises(ProbeError, match="more than once"):
        build_probe("u", "union", {"refs": ["a", "a"]}, ctx_with({"a": a}))
    with pytest.raises(ProbeError, match="at least one"):
        build_probe("u", "union", {"refs": []}, ctx_with({"a": a}))


# --------------------------------------------------------------------------- sampling
def reference_ranks(ids, seed):
    """Independent restatement of the documented rank: sha256(seed, id, occurrence)."""
    seen = Counter()
    out = []
    for i in ids:
        h = hashlib.sha256(f"{seed}\x00{i}\x00{seen[i]}".encode()).digest()
        seen[i] += 1
        out.append(int.from_bytes(h[:8], "big"))
    return out


def test_plain_sample_is_lowest_hash_ranks_in_source_order():
    p = ListProbe("p", [{}] * 50)
    idx = sample_indices(p.items, 12, None, seed=7)
    ranks = reference_ranks([i.image_id for i in p.items], 7)
    assert idx == sorted(sorted(range(50), key=lambda i: ranks[i])[:12])
    assert idx == sorted(idx)
    assert idx == sample_indices(p.items, 12, None, seed=7)  # deterministic
    assert idx != sample_indices(p.items, 12, None, seed=8)
    assert set(idx) <= set(sample_indices(p.items, 20, None, seed=7))  # larger draw is a superset
    assert sample_indices(p.items, 80, None, seed=7) == list(range(50))


def test_balanced_sample_known_answer_and_order():
    attrs = [{"d": "A"}] * 3 + [{"d": "B"}] * 10 + [{"d": "C"}] * 30
    p = ListProbe("p", attrs)
    sub = apply_sample(p, Sample(15, "d", 1))
    got = Counter(i.attributes["d"] for i in sub.items)
    assert got == Counter({"A": 3, "B": 6, "C": 6})
    assert sub.indices == sorted(sub.indices) and sub.load(0)[0, 0] == sub.indices[0]
    assert sub.describe()["sample"] == {"n": 15, "balanced_by": "d", "seed": 1}
    assert sub.describe()["n_images_before_sample"] == 43


def test_balanced_by_list_attribute_and_missing_attribute():
    p = ListProbe("p", [{"findings": []}] * 6 + [{"findings": ["Mass"]}] * 2)
    idx = sample_indices(p.items, 4, "findings", 0)
    assert Counter(tuple(p.items[i].attributes["findings"]) for i in idx) == Counter({(): 2, ("Mass",): 2})
    q = ListProbe("q", [{"view": "CC"}, {"label": "x"}])
    with pytest.raises(ProbeError) as e:
        sample_indices(q.items, 1, "view", 0)
    assert "1 of 2 images have no 'view'" in str(e.value) and "label" in str(e.value)


def test_sample_through_factory_logs_oversized_draw(tmp_path):
    from PIL import Image

    for k in range(3):
        Image.fromarray(np.full((3, 3), k, np.uint8)).save(tmp_path / f"{k}.png")
    LOGS.clear()
    p = build_probe("f", "folder", {"path": str(tmp_path), "recursive": True}, CTX, sample=Sample(10, None, 0))
    assert len(p) == 3 and p.name == "f" and any("more images than the probe has" in m for m in LOGS)
    q = build_probe("f", "folder", {"path": str(tmp_path), "recursive": True}, CTX, sample=Sample(2, "folder", 5))
    assert len(q) == 2 and q.describe()["kind"] == "folder"


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from("ABCDEFG"), st.integers(0, 30), min_size=1), st.integers(0, 150), st.integers(0, 5)
)
def test_quotas_are_max_min_fair(sizes, n, seed):
    q = balanced_quotas(sizes, n, seed)
    assert sum(q.values()) == min(n, sum(sizes.values()))
    assert all(0 <= q[k] <= sizes[k] for k in sizes)
    # equal as far as possible: a group below its size never has 2+ fewer than any other group
    for g in sizes:
        if q[g] < sizes[g]:
            assert all(q[h] <= q[g] + 1 for h in sizes)
