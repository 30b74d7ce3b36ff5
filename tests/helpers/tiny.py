"""Tiny dissector and targets that let the whole engine run in seconds, and the fixture that installs them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dissect_study.dsl import check_file
from dissect_study.engine import models as model_factories
from dissect_study.engine.models.base import Dissector, LayerInfo, Preprocess, Target
from dissect_study.engine.run import RunOptions, run_study

SIZE = (48, 29)


def _prep(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))
    if x.ndim == 3:
        x = x.mean(dim=2)
    x = torch.nn.functional.interpolate(x[None, None], size=SIZE, mode="area")[0]
    x = (x - x.mean()) / (x.std() + 1e-6)
    return x.expand(3, *SIZE).clone()


PREP = Preprocess({"kind": "tiny", "size": SIZE}, _prep)


class TinyDissector(Dissector):
    name = "tiny"
    batch_size = 8

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.W = torch.randn(3 * SIZE[0] * SIZE[1], 16, generator=g) / 60

    @property
    def preprocess(self) -> Preprocess:
        return PREP

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.flatten(1) @ self.W

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(16, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)

    def fingerprint(self) -> str:
        return "tiny-dissector-v1"


class TinyTarget(Target):
    batch_size = 8

    def __init__(self, name: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.name = name
        self.net = nn.Sequential(
            nn.Conv2d(3, 6, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 2),
        ).eval()
        self.seed = seed

    @property
    def module(self) -> nn.Module:
        return self.net

    @property
    def preprocess(self) -> Preprocess:
        return PREP

    def forward(self, batch: torch.Tensor):
        return self.net(batch)

    def layers(self) -> list[LayerInfo]:
        return [LayerInfo("0", 6, 0), LayerInfo("2", 8, 1), LayerInfo("6", 2, 2)]

    def aliases(self) -> dict[str, str]:
        return {"early": "0", "middle": "2", "last": "6"}

    def fingerprint(self) -> str:
        return f"tiny-target-{self.seed}"


STUDY = """study "engine end to end"
concepts c = shipped("mammo_v1")
probe p = phantom(n=30, seed=5, height=64)
dissector d = demo()
target A = demo("G")
target B = demo("M")
dissect A, B at layers all by d on p with concepts c using soft_wpmi(top_k=8)
compare A vs B at layers early, last
learned B at layers all
show neuron B.middle[3] top 3
keywords A, B at layer last
report "out" as html
"""


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"dissector": 0, "target": 0}

    def build_dissector(name, func, params, ctx):
        calls["dissector"] += 1
        return TinyDissector()

    def build_target(name, func, params, ctx):
        calls["target"] += 1
        return TinyTarget(name, seed={"G": 1, "M": 2}[params["variant"]])

    monkeypatch.setattr(model_factories, "build_dissector", build_dissector)
    monkeypatch.setattr(model_factories, "build_target", build_target)
    return calls


def _run(tmp_path: Path, text: str = STUDY, **kw) -> tuple:
    path = tmp_path / "s.study"
    path.write_text(text, encoding="utf-8")
    study, diags = check_file(str(path))
    assert study is not None, diags
    opts = RunOptions(db=tmp_path / "r.duckdb", cache_dir=tmp_path / "cache", quiet=True, **kw)
    return run_study(study, opts), tmp_path / "r.duckdb"
