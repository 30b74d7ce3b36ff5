"""A probe: an ordered list of images with attributes, decoded on demand.

Probes are model-agnostic: `load(i)` returns the decoded pixels (numpy, no model
preprocessing); each model's `Preprocess` takes it from there.  Order is part of
the identity of a probe -- `manifest_sha256` hashes ids, paths and attributes in
order -- because activation rows and P rows are matched by position.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ProbeItem:
    image_id: str
    path: str
    attributes: dict[str, Any] = field(default_factory=dict)


class ImageUnreadable(Exception):
    """Raised by `Probe.load` for an image that cannot be decoded (skipped with a warning).

    Deliberately not a `DissectStudyError`: it is the skip signal between a probe and
    the activation pass, which turns it into a skipped row (or, under --strict, a
    `RunError`).  One escaping to the CLI means a caller ignored that contract -- a bug,
    so it keeps its traceback.
    """


class Probe(abc.ABC):
    name: str = "probe"
    #: True when item attributes are ground truth, not annotations (the phantom):
    #: only such probes feed the calibration bench
    has_ground_truth: bool = False

    @property
    @abc.abstractmethod
    def items(self) -> list[ProbeItem]: ...

    @abc.abstractmethod
    def load(self, index: int) -> np.ndarray:
        """Decoded pixels of item `index`: (H, W) or (H, W, 3); uint8, uint16 or float32."""

    def __len__(self) -> int:
        return len(self.items)

    def manifest_sha256(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it.image_id, it.path, it.attributes], sort_keys=True, default=str).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_images": len(self)}
