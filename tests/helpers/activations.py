"""In-memory probes and small CNN targets for the activation-pass tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dissect_study.engine.models.base import LayerInfo, Preprocess, Target
from dissect_study.engine.probes.base import Probe, ProbeItem


class ArrayProbe(Probe):
    """In-memory probe; `bad` maps an index to the exception its load raises."""

    name = "arrays"

    def __init__(self, arrays: list[np.ndarray], bad: dict[int, Exception] | None = None) -> None:
        self.arrays = arrays
        self.bad = bad or {}
        self._items = [ProbeItem(f"img{i}", f"mem://{i}", {"view": "CC"}) for i in range(len(arrays))]

    @property
    def items(self) -> list[ProbeItem]:
        return self._items

    def load(self, index: int) -> np.ndarray:
        if index in self.bad:
            raise self.bad[index]
        return self.arrays[index]


def make_probe(n: int = 7, bad: dict[int, Exception] | None = None, size: tuple[int, int] = (10, 12)) -> ArrayProbe:
    rng = np.random.default_rng(0)
    return ArrayProbe([rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)], bad)


def batch_of(probe: ArrayProbe, rows: list[int]) -> torch.Tensor:
    return torch.stack([to_tensor(probe.arrays[i]) for i in rows])


def cnn_target(**kw: object) -> ModuleTarget:
    torch.manual_seed(0)
    return ModuleTarget(TinyCNN(), **kw)


def manual_cnn(m: TinyCNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every hooked layer's raw output, by calling the layers one by one."""
    f = m.features
    with torch.no_grad():
        a0 = f[0](x)
        a2 = f[2](torch.relu(a0))
        a4 = f[4](torch.relu(a2))
        head = m.head(a4.mean(dim=(2, 3)))
    return {"features.0": a0, "features.2": a2, "features.4": a4, "head": head}


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(6, 5, 3),
        )
        self.head = nn.Linear(5, 3)
        self.unused = nn.Linear(2, 2)  # never called by forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class ModuleTarget(Target):
    name = "tiny"
    batch_size = 3

    def __init__(self, module: nn.Module, fail_on_call: int | None = None) -> None:
        torch.manual_seed(0)
        self._module = module.eval()
        self.calls = 0
        self.fail_on_call = fail_on_call

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def preprocess(self) -> Preprocess:
        return RGB

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise RuntimeError("boom in forward")
        return self._module(batch)

    def layers(self) -> list[LayerInfo]:
        return [LayerInfo(n, 0, i) for i, (n, _) in enumerate(self._module.named_children())]

    def fingerprint(self) -> str:
        return "test"


RGB = Preprocess({"kind": "rgb/255"}, to_tensor)
