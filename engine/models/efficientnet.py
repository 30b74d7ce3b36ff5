"""A lukemelas-compatible EfficientNet, written from the compound-scaling rules.

Why our own module: Mammo-CLIP's image tower is the lukemelas (efficientnet-pytorch)
layout with TF-"SAME" padding computed *once* for the model's nominal resolution
(456 px for B5, 260 px for B2) and then applied to every input size.  timm's
`tf_efficientnet_b5` pads dynamically and differs from block 13 on at 1520x912
(docs/CHECKPOINTS.md), so a key rename is not enough.  This module
keeps the checkpoint's parameter names (`_conv_stem`, `_blocks.i._expand_conv`, ...)
so a Mammo-CLIP state dict loads with no renaming, and the hook paths are those
used by Mammo-CLIP Dissect (`_blocks.0` ... `_blocks.38`).

Nothing here is copied from efficientnet-pytorch: the block table is derived from
the published B0 base table and the width/depth multipliers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# B0 base table: (repeats, kernel, stride, expand, in, out).  SE ratio 0.25 everywhere.
_B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_SE_RATIO = 0.25
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention (TF's 0.99 decay)


@dataclass(frozen=True)
class EffNetConfig:
    """Global parameters of one EfficientNet variant."""

    name: str
    width: float
    depth: float
    image_size: int  # the size the static "same" padding is computed for
    dropout: float
    drop_connect: float = 0.2
    #: optional override of the base table (tiny test configs); None = B0 table
    stages: tuple[tuple[int, int, int, int, int, int], ...] | None = None
    stem: int = 32
    head: int = 1280


CONFIGS: dict[str, EffNetConfig] = {
    "b0": EffNetConfig("b0", 1.0, 1.0, 224, 0.2),
    "b2": EffNetConfig("b2", 1.1, 1.2, 260, 0.3),
    "b5": EffNetConfig("b5", 1.6, 2.2, 456, 0.4),
    # tiny: three small stages with the same block kinds (DS block, stride-2 MBConv,
    # residual MBConv) -- used by tests and the fast paths; padding fixed for 64 px.
    "tiny": EffNetConfig(
        "tiny",
        1.0,
        1.0,
        64,
        0.0,
        stages=((1, 3, 1, 1, 8, 8), (2, 3, 2, 4, 8, 16), (1, 5, 2, 4, 16, 24)),
        stem=8,
        head=32,
    ),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Width scaling: multiply, round to a multiple of `divisor`, never drop >10%."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Depth scaling: ceil(depth * repeats)."""
    return int(math.ceil(depth * repeats))


def same_padding(size: tuple[int, int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF "SAME" padding (left, right, top, bottom) for an input of `size` (H, W).

    The extra pixel of an odd total goes right/bottom, as TensorFlow does.
    """
    out: list[int] = []
    for dim in (size[1], size[0]):  # W first -> (left, right), then H -> (top, bottom)
        total = max((math.ceil(dim / stride) - 1) * stride + kernel - dim, 0)
        out.extend([total // 2, total - total // 2])
    return out[0], out[1], out[2], out[3]


def _next_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block, fully resolved (channels, stride, static padding)."""

    index: int
    stage: int
    position: int  # index within the stage (timm's `blocks.<stage>.<position>`)
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int
    se_channels: int
    padding: tuple[int, int, int, int]  # depthwise conv, LRTB

    @property
    def expanded(self) -> int:
        return self.in_channels * self.expand_ratio

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def lukemelas_name(self) -> str:
        return f"_blocks.{self.index}"

    @property
    def timm_name(self) -> str:
        return f"blocks.{self.stage}.{self.position}"


def block_specs(cfg: EffNetConfig) -> list[BlockSpec]:
    """The resolved block table of a variant (e.g. 39 blocks for B5, 23 for B2)."""
    stages = cfg.stages or _B0_STAGES
    size = _next_size((cfg.image_size, cfg.image_size), 2)  # after the stride-2 stem
    specs: list[BlockSpec] = []
    for s, (repeats, k, stride, expand, cin, cout) in enumerate(stages):
        cin, cout = round_filters(cin, cfg.width), round_filters(cout, cfg.width)
        for j in range(round_repeats(repeats, cfg.depth)):
            bin_, bstride = (cin, stride) if j == 0 else (cout, 1)
            specs.append(
                BlockSpec(
                    index=len(specs),
                    stage=s,
                    position=j,
                    in_channels=bin_,
                    out_channels=cout,
                    expand_ratio=expand,
                    kernel=k,
                    stride=bstride,
                    se_channels=max(1, int(bin_ * _SE_RATIO)),
                    padding=same_padding(size, k, bstride),
                )
            )
            size = _next_size(size, bstride)
    return specs


def stem_channels(cfg: EffNetConfig) -> int:
    return round_filters(cfg.stem, cfg.width)


def head_channels(cfg: EffNetConfig) -> int:
    return round_filters(cfg.head, cfg.width)


def stage_repeats(cfg: EffNetConfig) -> list[int]:
    stages = cfg.stages or _B0_STAGES
    return [round_repeats(r[0], cfg.depth) for r in stages]


class StaticPadConv2d(nn.Conv2d):
    """A Conv2d whose zero padding (L, R, T, B) was fixed at construction.

    It has no extra parameters, so state-dict keys stay `<name>.weight` (and `.bias`).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    ) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=bias)
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_connect(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (identity in eval): only for train-mode parity."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Expand (1x1) -> depthwise -> squeeze-excite -> project (1x1) [+ residual].

    Attribute names and their registration order match the checkpoint layout.
    The output (what a hook sees) is after `_bn2` and the residual add, no activation.
    """

    def __init__(self, spec: BlockSpec, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.spec = spec
        self.drop_rate = drop_rate
        c = spec.expanded
        if spec.expand_ratio != 1:
            self._expand_conv = StaticPadConv2d(spec.in_channels, c, 1)
            self._bn0 = _bn(c)
        self._depthwise_conv = StaticPadConv2d(c, c, spec.kernel, stride=spec.stride, groups=c, pad=spec.padding)
        self._bn1 = _bn(c)
        self._se_reduce = StaticPadConv2d(c, spec.se_channels, 1, bias=True)
        self._se_expand = StaticPadConv2d(spec.se_channels, c, 1, bias=True)
        self._project_conv = StaticPadConv2d(c, spec.out_channels, 1)
        self._bn2 = _bn(spec.out_channels)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.spec.expand_ratio != 1:
            x = F.silu(self._bn0(self._expand_conv(x)))
        x = F.silu(self._bn1(self._depthwise_conv(x)))
        s = F.adaptive_avg_pool2d(x, 1)
        s = self._se_expand(F.silu(self._se_reduce(s)))
        x = torch.sigmoid(s) * x
        x = self._bn2(self._project_conv(x))
        if self.spec.residual:
            x = drop_connect(x, self.drop_rate, self.training) + inputs
        return x


class EfficientNet(nn.Module):
    """Stem -> MBConv blocks -> 1x1 head + BN + Swish -> global average pool.

    `forward` returns the pooled feature (B, head_channels), Mammo-CLIP's
    `encode_image` for CNN encoders (there is no `_fc`).
    """

    def __init__(self, cfg: EffNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.specs = block_specs(cfg)
        stem = stem_channels(cfg)
        stem_pad = same_padding((cfg.image_size, cfg.image_size), 3, 2)
        self._conv_stem = StaticPadConv2d(3, stem, 3, stride=2, pad=stem_pad)
        self._bn0 = _bn(stem)
        n = len(self.specs)
        self._blocks = nn.ModuleList(MBConvBlock(s, cfg.drop_connect * s.index / n) for s in self.specs)
        last = self.specs[-1].out_channels
        self._conv_head = StaticPadConv2d(last, head_channels(cfg), 1)
        self._bn1 = _bn(head_channels(cfg))
        self._dropout = nn.Dropout(cfg.dropout)

    @property
    def out_dim(self) -> int:
        return head_channels(self.cfg)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, head_channels, H/32, W/32), after the head's Swish."""
        x = F.silu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.silu(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self._dropout(pooled)


# --------------------------------------------------------------------------- key maps

_TIMM_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TIMM_DS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TIMM_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lukemelas_to_timm(key: str, specs: list[BlockSpec]) -> str:
    """Rename one lukemelas key (`_blocks.7._bn0.weight`) to timm (`blocks.1.4.bn1.weight`)."""
    parts = key.split(".")
    if parts[0] == "_blocks":
        spec = specs[int(parts[1])]
        table = _TIMM_DS if spec.expand_ratio == 1 else _TIMM_IR
        return f"{spec.timm_name}.{table[parts[2]]}.{'.'.join(parts[3:])}"
    return f"{_TIMM_TOP[parts[0]]}.{'.'.join(parts[1:])}"


def timm_to_lukemelas_map(specs: list[BlockSpec], keys: list[str]) -> dict[str, str]:
    """{timm key: lukemelas key} for the given lukemelas keys (F_general's timm weights)."""
    return {lukemelas_to_timm(k, specs): k for k in keys}


def tiny_config(**overrides: Any) -> EffNetConfig:
    """The tiny test config, optionally changed (e.g. another padding size); `replace` checks the field names."""
    return replace(CONFIGS["tiny"], **overrides)


def detect_config(state_dict: dict[str, torch.Tensor]) -> EffNetConfig | None:
    """Which known variant a lukemelas-layout state dict belongs to (by shapes)."""
    head = state_dict.get("_conv_head.weight")
    if head is None:
        return None
    n_blocks = 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")), default=-1)
    for cfg in CONFIGS.values():
        if (
            head_channels(cfg) == head.shape[0]
            and len(block_specs(cfg)) == n_blocks
            and block_specs(cfg)[-1].out_channels == head.shape[1]
        ):
            return cfg
    return None
