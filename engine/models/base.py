"""The two model roles of a dissection, as small abstract interfaces.

A *dissector* is a vision-language model: it embeds probe images and concept
strings into one space (P = cos(image, text), docs/METHOD.md §1.1).  A *target* is
the network whose neurons are labelled: the engine hooks its layers and pools
their outputs (docs/METHOD.md §2).  Both own their preprocessing, because the same probe
image reaches each model through that model's own pipeline (row i of P and row i
of the activation matrix always refer to the same probe image).

Adapters in this package (Mammo-CLIP, classifiers, timm, CLIP, the demo models)
implement these interfaces; the engine never needs to know which one it holds.
What only some adapters can do is declared once, as a `typing.Protocol` per
capability (`HasImageTower`, `TrainModeSwitch`, `ReportsTraining`,
`HasSentenceEncoder`), and the engine asks `isinstance(model, Capability)`
instead of probing attribute names.

A factory registers under the source-function name a study uses
(`@DISSECTORS.register("mammo_clip")`, `@TARGETS.register("classifier")` from
`engine/registry.py`) and has the shape `DissectorFactory` / `TargetFactory`:
`(declared name, validated and defaulted parameters, BuildContext) -> model`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """How a raw probe image becomes a model input tensor.

    `describe` is a stable, JSON-able description used in cache keys, so two
    pipelines that differ in any step never share a cache entry.
    `fn` maps a decoded image -- a numpy array (H, W) or (H, W, 3), uint8,
    uint16 or float -- to a float32 tensor (3, H', W').
    """

    describe: dict[str, Any]
    fn: Callable[[np.ndarray], torch.Tensor]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.fn(image)


@dataclass(frozen=True)
class LayerInfo:
    """A hookable layer: its canonical name, output channels, depth index."""

    name: str
    channels: int
    index: int
    aliases: tuple[str, ...] = ()  # other accepted spellings (e.g. timm's `blocks.6.2`)


class Dissector(abc.ABC):
    """A vision-language model used to score probe images against concepts."""

    name: str = "dissector"
    #: default images per forward pass on CPU / GPU
    batch_size: int = 8

    @property
    @abc.abstractmethod
    def preprocess(self) -> Preprocess: ...

    @abc.abstractmethod
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed -> (B, d) projected embeddings, *not* normalised."""

    @abc.abstractmethod
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """M raw concept strings -> (M, d) projected embeddings, *not* normalised."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Content hash of weights + configuration (cache keys, `models.sha256`)."""

    def to(self, device: torch.device | str) -> Dissector:
        return self

    def describe(self) -> dict[str, Any]:
        """Human-readable facts for the report's methods section."""
        return {"name": self.name}


class Target(abc.ABC):
    """A network whose neurons are dissected."""

    name: str = "target"
    batch_size: int = 8

    @property
    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The nn.Module hooks are registered on (layer names are relative to it)."""

    @property
    @abc.abstractmethod
    def preprocess(self) -> Preprocess: ...

    @abc.abstractmethod
    def forward(self, batch: torch.Tensor) -> Any:
        """Run the model on a preprocessed batch (hooks capture what is needed)."""

    @abc.abstractmethod
    def layers(self) -> list[LayerInfo]:
        """Hookable layers in depth order."""

    @abc.abstractmethod
    def fingerprint(self) -> str: ...

    def aliases(self) -> dict[str, str]:
        """Built-in layer aliases (`early`, `middle`, `last`) -> canonical layer names."""
        names = [l.name for l in self.layers()]
        if not names:
            return {}
        return {"early": names[0], "middle": names[len(names) // 2], "last": names[-1]}

    def resolve_layer(self, name: str) -> str:
        """Canonical layer name for a canonical name or an accepted alias spelling."""
        for info in self.layers():
            if name == info.name or name in info.aliases:
                return info.name
        raise KeyError(name)

    def to(self, device: torch.device | str) -> Target:
        self.module.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class BuildContext:
    """What factories need besides their validated parameters.

    `base_dir` is the study file's folder (relative paths resolve against it);
    `cache_dir` is where built assets (e.g. the demo models) are cached;
    `dissectors` holds already-built dissectors by study name (targets such as
    `image_tower(mammo)` refer to them).
    """

    base_dir: str
    cache_dir: str
    device: str = "cpu"
    dissectors: dict[str, Dissector] = field(default_factory=dict)
    log: Callable[[str], None] = print
    #: already-built probes by study name (`union(a, b)` refers to them)
    probes: dict[str, Any] = field(default_factory=dict)
    #: where a factory's warnings go; a run records them in its `warnings` table
    warn: Callable[[str], None] | None = None

    def warning(self, message: str) -> None:
        """A warning about what is being built (a config that disagrees, a sample cut short)."""
        if self.warn is not None:
            self.warn(message)
        else:
            logging.getLogger(__name__).warning(message)


#: `dissector NAME = func(...)`: (NAME, validated parameters, context) -> Dissector
DissectorFactory = Callable[[str, dict[str, Any], BuildContext], Dissector]
#: `target NAME = func(...)`: (NAME, validated parameters, context) -> Target
TargetFactory = Callable[[str, dict[str, Any], BuildContext], Target]


# --------------------------------------------------------------------------- optional capabilities


@runtime_checkable
class HasImageTower(Protocol):
    """A dissector whose own image encoder can be dissected as a target.

    `target M = image_tower(mammo)` calls `image_tower()`; the target it returns
    shares the dissector's weights and preprocessing (the paper's G and M).
    Mammo-CLIP, CLIP and the demo dissector have one.
    """

    def image_tower(self) -> Target: ...


@runtime_checkable
class SharesImagePass(Protocol):
    """A dissector whose image embedding is a cheap function of its image tower's output.

    When a study dissects that tower (`target M = image_tower(mammo)`: same weights,
    same preprocessing), the target's pass also yields the dissector's embeddings, so
    one forward pass over the probe serves both instead of two.  `tower_fingerprint()`
    is the fingerprint `image_tower()` would carry; `embed_tower_output(out)` maps the
    tower's forward output (rows of pooled features) to the projected, un-normalised
    embedding `encode_images` returns.  Not used while the dissector runs in train mode
    (its embeddings then depend on the batch).
    """

    def tower_fingerprint(self) -> str: ...

    def embed_tower_output(self, out: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TrainModeSwitch(Protocol):
    """A dissector that can embed images with its image tower in train mode.

    Set by the dissect option `dissector_train_mode=true`, which reproduces the
    reference code's BatchNorm-in-train-mode behaviour (docs/METHOD.md §11.1): the
    embeddings then depend on the batch.  Only Mammo-CLIP dissectors offer it;
    asking it of another dissector is a user error.
    """

    train_mode: bool


@runtime_checkable
class ReportsTraining(Protocol):
    """A model trained by dissect-study itself (the demo models).

    `training_report()` returns JSON-able facts about that training (held-out
    zero-shot AUCs, accuracies, epochs); they are stored in the `models` table
    and shown in the report's methods section.
    """

    def training_report(self) -> dict[str, Any]: ...


@runtime_checkable
class HasSentenceEncoder(Protocol):
    """A dissector with a raw sentence encoder besides its projected text tower.

    The calibration bench reports the mean cosine, in this space, between a
    neuron's predicted labels and its ground-truth concept phrases
    (`sentence_encoder(texts) -> (M, d)` tensor; column `mean_label_cosine`);
    without it that column is NaN.  The demo dissector has one (its MiniLM
    before the projection).
    """

    @property
    def sentence_encoder(self) -> Callable[[list[str]], torch.Tensor]: ...
