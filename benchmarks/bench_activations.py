"""Images/s of one hooked pass for several layers versus one pass per layer.

The reference code ran the target once per (layer, probe); `extract_activations`
hooks every requested layer at once.  This prints both rates for a target with
K hooked layers and checks that the two ways give identical activations.

    python benchmarks/bench_activations.py                       # EfficientNet-B0, 224 px, CPU
    python benchmarks/bench_activations.py --model b5 --height 1520 --width 912 \
        --device cuda --precision bf16 --images 256 --batch 8 --layers 39 --workers 8

Weights are random (timing does not depend on them); nothing is downloaded.

    python benchmarks/bench_activations.py --rq2-passes

runs an RQ2-shaped study instead (M = image_tower(mammo) and four classifiers
C1-C4 fine-tuned from it, dissected by Mammo-CLIP; tiny EfficientNets in files
written the way the training code writes them) and prints forward passes per
network per probe image, with M sharing the dissector's pass and without.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from dissect_study.engine.models.base import LayerInfo, Preprocess, Target
from dissect_study.engine.passes.activations import ProbeDataset, collate_skipping, extract_activations
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


RQ2_STUDY = """study "RQ2 shape"
concepts c = shipped("mammo_v1")
probe p = phantom(n={n}, seed=1, height=64)
dissector mammo = mammo_clip(checkpoint="{ckpt}", text="{text}")
target M = image_tower(mammo)
{classifiers}
dissect M, C1, C2, C3, C4 at layers early, last by mammo on p with concepts c using soft_wpmi(top_k=3)
"""


def rq2_passes(n_images: int) -> None:
    """Forward passes per network per image for the RQ2 study shape, shared pass on and off."""
    import sys
    import tempfile
    from collections import Counter
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.checkpoints import write_tiny_real_clip  # type: ignore[import-not-found]
    from helpers.models import (  # type: ignore[import-not-found]
        make_text_folder,
        save_classifier,
        tiny_bert_config,
        tiny_classifier_state_dict,
        tiny_clip_state_dict,
    )

    from dissect_study.dsl import check_file
    from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet
    from dissect_study.engine.models.mammo_clip import MammoClipModel, new_bert
    from dissect_study.engine.passes import execute as passes_stage
    from dissect_study.engine.run import RunOptions, run_study

    root = Path(tempfile.mkdtemp(prefix="rq2-passes-"))
    sd = tiny_clip_state_dict(seed=4)
    model = MammoClipModel(CONFIGS["tiny"], new_bert(tiny_bert_config()), proj_dim=8)
    model.load_state_dict(sd)
    ckpt = write_tiny_real_clip(root / "b5-model-best-epoch-7.tar", model)
    tasks = (("C1", "density", 4), ("C2", "mass", 1), ("C3", "calcification", 1), ("C4", "birads", 3))
    lines = []
    for name, task, n_class in tasks:
        path = save_classifier(
            root / f"{name}.pth", tiny_classifier_state_dict(sd, n_class, seed=len(lines) + 1), binary=n_class == 1
        )
        lines.append(f'target {name} = classifier(checkpoint="{path}", base=mammo, task="{task}")')
    study_path = root / "rq2.study"
    study_path.write_text(
        RQ2_STUDY.format(n=n_images, ckpt=ckpt, text=make_text_folder(root / "bert"), classifiers="\n".join(lines)),
        encoding="utf-8",
    )
    study, diags = check_file(str(study_path))
    assert study is not None, diags

    images: Counter[int] = Counter()
    forward = EfficientNet.forward

    def counting(self: EfficientNet, x: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
        images[id(self)] += int(x.shape[0])
        return forward(self, x, *a, **k)

    EfficientNet.forward = counting  # type: ignore[method-assign]
    shared = passes_stage.shared_passes
    try:
        for label, share in (("shared pass (now)", True), ("separate passes (before)", False)):
            images.clear()
            if not share:
                passes_stage.shared_passes = lambda ex: {}  # type: ignore[assignment]
            run_study(
                study,
                RunOptions(
                    db=root / f"{share}.duckdb",
                    cache_dir=root / f"cache-{share}",
                    quiet=True,
                    reports=False,
                    calibration=False,
                ),
            )
            per_net = sorted(v / n_images for v in images.values())
            print(
                f"{label:26s}: {len(per_net)} networks, passes per network per image "
                f"{', '.join(f'{v:.1f}' for v in per_net)} (max {max(per_net):.1f}, goal 1.0)"
            )
    finally:
        EfficientNet.forward = forward  # type: ignore[method-assign]
        passes_stage.shared_passes = shared


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
    ap.add_argument(
        "--rq2-passes",
        action="store_true",
        help="print forward passes per network per image for the RQ2 study shape instead",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rq2_passes:
        rq2_passes(n_images=4)
        return

    torch.manual_seed(0)
    module, names = build(args.model)
    layers = spread(names, args.layers)
    target = BenchTarget(module, names)
    probe = RandomProbe(args.images, args.height, args.width)
    common = dict(
        pooling="avg",
        batch_size=args.batch,
        device=args.device,
        workers=args.workers,
        precision=args.precision,
        progress=False,
    )

    extract_activations(target, RandomProbe(args.batch, args.height, args.width), layers[:1], **common)  # warm-up

    # baseline: the same loader and forwards with no hook at all (the cost floor)
    loader = torch.utils.data.DataLoader(
        ProbeDataset(probe, target.preprocess),
        batch_size=args.batch,
        num_workers=args.workers,
        collate_fn=collate_skipping,
    )
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
    print(
        f"model {args.model} {args.height}x{args.width}, {n} images, batch {args.batch}, "
        f"device {args.device}, precision {together.precision}, workers {args.workers}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"hooked layers ({len(layers)}): {', '.join(layers)}")
    print(f"forward only, no hooks      : {n / t_plain:8.2f} images/s  ({t_plain:.2f} s)")
    print(f"one pass, all layers hooked : {n / t_one:8.2f} images/s  ({t_one:.2f} s)")
    print(f"one pass per layer          : {n / t_sep:8.2f} images/s  ({t_sep:.2f} s, {len(layers)} passes)")
    print(f"speed-up                    : {t_sep / t_one:8.2f}x   max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
