"""Images/s of one hooked pass for several layers versus one pass per layer.

The reference code ran the target once per (layer, probe); `extract_activations`
hooks every requested layer at once.  This prints both rates for a target with
K hooked layers and checks that the two ways give identical activations.

    python benchmarks/bench_activations.py                       # EfficientNet-B0, 224 px, CPU
    python benchmarks/bench_activations.py --model b5 --height 1520 --width 912 \
        --device cuda --precision bf16 --images 256 --batch 8 --layers 39 --workers 8

Weights are random (timing does not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from dissect_study.engine.passes.activations import ProbeDataset, collate_skipping, extract_activations
from dissect_study.engine.models.base import LayerInfo, Preprocess, Target
from dissect_study.engine.probes.base import Probe, ProbeItem


class RandomProbe(Probe):
    """`n` grey uint16 images (H, W), like decoded mammograms, generated on demand from their index."""

    name = "random"

    def __init__(self, n: int, height: int, width: int) -> None:
        self.shape = (height, width)
        self._items = [ProbeItem(f"r{i}", f"mem://{i}") for i in range(n)]

    @property
    def items(self) -> list[ProbeItem]:
        return self._items

    def load(self, index: int) -> np.ndarray:
        return np.random.default_rng(index).integers(0, 4096, size=self.shape, dtype=np.uint16)


def grey_to_3ch(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32))
    x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    return x.expand(3, *x.shape).contiguous()


class BenchTarget(Target):
    name = "bench"

    def __init__(self, module: nn.Module, layers: list[str]) -> None:
        self._module = module.eval()
        self._layers = layers

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess({"kind": "minmax-grey"}, grey_to_3ch)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._module(batch)

    def layers(self) -> list[LayerInfo]:
        return [LayerInfo(n, 0, i) for i, n in enumerate(self._layers)]

    def fingerprint(self) -> str:
        return "bench"


def build(model: str) -> tuple[nn.Module, list[str]]:
    """The network and its hookable layer names in depth order."""
    if model == "resnet18":
        import torchvision

        m = torchvision.models.resnet18(weights=None)
        names = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
        return m, names
    from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet

    m = EfficientNet(CONFIGS[model])
    return m, [f"_blocks.{i}" for i in range(len(m._blocks))]


def spread(names: list[str], k: int) -> list[str]:
    """k layers evenly spread over the depth (first and last included)."""
    k = max(1, min(k, len(names)))
    picks = np.linspace(0, len(names) - 1, k).round().astype(int)
    return [names[i] for i in dict.fromkeys(picks.tolist())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="b0", choices=["b0", "b2", "b5", "resnet18"])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4, help="number of hooked layers, spread over the depth")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    module, names = build(args.model)
    layers = spread(names, args.layers)
    target = BenchTarget(module, names)
    probe = RandomProbe(args.images, args.height, args.width)
    common = dict(pooling="avg", batch_size=args.batch, device=args.device, workers=args.workers,
                  precision=args.precision, progress=False)

    extract_activations(target, RandomProbe(args.batch, args.height, args.width), layers[:1], **common)  # warm-up

    # baseline: the same loader and forwards with no hook at all (the cost floor)
    loader = torch.utils.data.DataLoader(ProbeDataset(probe, target.preprocess), batch_size=args.batch,
                                         num_workers=args.workers, collate_fn=collate_skipping)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images, _, _ in loader:
            target.forward(images.to(args.device))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    together = extract_activations(target, probe, layers, **common)
    t_one = time.perf_counter() - t0

    t0 = time.perf_counter()
    separate = {}
    for layer in layers:
        separate.update(extract_activations(target, probe, [layer], **common).acts)
    t_sep = time.perf_counter() - t0

    diff = max((together.acts[l] - separate[l]).abs().max().item() for l in layers)
    n = args.images
    print(f"model {args.model} {args.height}x{args.width}, {n} images, batch {args.batch}, "
          f"device {args.device}, precision {together.precision}, workers {args.workers}, "
          f"threads {torch.get_num_threads()}")
    print(f"hooked layers ({len(layers)}): {', '.join(layers)}")
    print(f"forward only, no hooks      : {n / t_plain:8.2f} images/s  ({t_plain:.2f} s)")
    print(f"one pass, all layers hooked : {n / t_one:8.2f} images/s  ({t_one:.2f} s)")
    print(f"one pass per layer          : {n / t_sep:8.2f} images/s  ({t_sep:.2f} s, {len(layers)} passes)")
    print(f"speed-up                    : {t_sep / t_one:8.2f}x   max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
