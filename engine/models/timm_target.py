"""Any timm architecture from a local weight file, as a target.

timm is used only to build the architecture (`pretrained=False`, never a hub
download); weights come from the user's .safetensors/.pth and load strictly.  The
hookable layers are the elements of the model's block sequences (`layer1.0`,
`blocks.3`, `stages.1.blocks.0`, ...), found by structure and measured by one dry
forward pass, so their channel counts are facts rather than guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dissect_study.engine.models.base import BuildContext, LayerInfo, Preprocess, Target
from dissect_study.engine.models.checkpoint import (
    CheckpointError,
    config_hash,
    file_sha256,
    load_strict,
    load_weights_file,
    resolve_path,
    strip_prefix,
)
from dissect_study.engine.models.mammo_clip import to_float_image
from dissect_study.engine.registry import TARGETS


def timm_preprocess(input_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> Preprocess:
    """Per-image min-max to [0,1], grey to 3 channels, bilinear resize to the model's size, mean/std."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def fn(image: np.ndarray) -> torch.Tensor:
        x = to_float_image(image)
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo) if float(hi - lo) > 1e-8 else torch.zeros_like(x)
        if tuple(x.shape[-2:]) != tuple(input_size):
            x = F.interpolate(x[None], size=input_size, mode="bilinear", antialias=True, align_corners=False)[0]
        return (x - mean_t) / std_t

    return Preprocess(
        describe={
            "kind": "timm",
            "size_hw": list(input_size),
            "mean": list(mean),
            "std": list(std),
            "scale": "per-image min-max",
            "resize": "bilinear antialias, stretched",
        },
        fn=fn,
    )


def candidate_layers(model: nn.Module) -> list[str]:
    """Non-leaf elements of Sequential/ModuleList containers: the blocks and stages."""
    out = []
    for name, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if isinstance(mod, (nn.Sequential, nn.ModuleList)) and any(True for _ in child.children()):
                out.append(f"{name}.{child_name}" if name else child_name)
    return out


def measure_layers(model: nn.Module, names: list[str], input_size: tuple[int, int]) -> list[LayerInfo]:
    """One dry forward: keep layers whose output is a tensor; channels = dim 1 (4-D) or last (3-D)."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []
    for n in names:

        def hook(_m: nn.Module, _i: Any, out: Any, n: str = n) -> None:
            o = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(o, torch.Tensor) and n not in shapes:
                shapes[n] = tuple(o.shape)
                order.append(n)

        handles.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size))
    finally:
        for h in handles:
            h.remove()
    infos: list[LayerInfo] = []
    for n in order:
        s = shapes[n]
        if len(s) not in (2, 3, 4):
            continue
        ch = s[1] if len(s) in (2, 4) else s[-1]
        infos.append(LayerInfo(name=n, channels=int(ch), index=len(infos)))
    return infos


class TimmTarget(Target):
    batch_size = 16

    def __init__(
        self,
        model: nn.Module,
        arch: str,
        preprocess: Preprocess,
        fingerprint: str,
        layers: list[LayerInfo],
        name: str = "timm",
        facts: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.arch = arch
        self._preprocess = preprocess
        self._fingerprint = fingerprint
        self._layers = layers
        self.name = name
        self.facts = facts or {}

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    def forward(self, batch: torch.Tensor) -> Any:
        self.model.eval()
        with torch.no_grad():
            return self.model(batch.to(next(self.model.parameters()).device))

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": "timm", "architecture": self.arch, **self.facts}


def _head_classes(model: nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    head = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = [head] if isinstance(head, str) else list(head or [])
    for n in names:
        w = sd.get(f"{n}.weight")
        if w is not None:
            return int(w.shape[0])
    return 0 if names else None


def load_timm(
    arch: str,
    weights: Path,
    *,
    num_classes: int | None = None,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
    name: str = "timm",
    input_size: tuple[int, int] | None = None,
) -> TimmTarget:
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise CheckpointError(
            f"model = {arch!r}: not a timm architecture. Similar names: {', '.join(close) or 'none'}."
        )
    sd = strip_prefix(load_weights_file(weights, param="weights", trust=trust, log=log), "module.")
    probe = timm.create_model(arch, pretrained=False)
    in_file = _head_classes(probe, sd)
    if num_classes is None:
        default = probe.num_classes  # every timm model records its head's class count as an int
        assert isinstance(default, int)
        num_classes = in_file if in_file is not None else default
    elif in_file is not None and in_file != num_classes:
        raise CheckpointError(
            f"weights = {str(weights)!r}: the classifier head has {in_file} class(es) but num_classes = "
            f"{num_classes}. Wrong number of classes: fix num_classes or the file."
        )
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    load_strict(model, sd, weights, param="weights", what=f"timm {arch} (num_classes={num_classes})")
    model.eval()
    dc = timm.data.resolve_data_config({}, model=model)
    size = input_size or tuple(dc["input_size"][1:])
    pre = timm_preprocess(size, tuple(dc["mean"]), tuple(dc["std"]))
    layers = measure_layers(model, candidate_layers(model), size)
    fp = config_hash("timm", arch, file_sha256(weights), num_classes, pre.describe)
    return TimmTarget(
        model, arch, pre, fp, layers, name=name, facts={"weights": str(weights), "num_classes": num_classes}
    )


@TARGETS.register("timm")
def build_timm(name: str, params: dict[str, Any], ctx: BuildContext) -> TimmTarget:
    weights = resolve_path(params["weights"], ctx.base_dir, "weights")
    t = load_timm(
        params["model"],
        weights,
        num_classes=params.get("num_classes"),
        trust=bool(params.get("trust_checkpoint", False)),
        log=ctx.warning,
        name=name,
    )
    t.to(ctx.device)
    return t
