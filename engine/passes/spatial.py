"""Spatial activation maps of one unit, for the neuron cards' overlays.

The dissection itself keeps only pooled activations (bounded memory); the few
images a neuron card shows are run again with a hook that keeps the unit's
full (H, W) map.
"""

from __future__ import annotations

import numpy as np
import torch

from dissect_study.engine.models.base import Target
from dissect_study.engine.probes.base import Probe


def spatial_maps(
    target: Target, probe: Probe, layer: str, unit: int, rows: list[int], device: str = "cpu"
) -> list[np.ndarray]:
    """(h, w) activation map of `unit` at `layer` for each probe row (1x1 for FC/token outputs)."""
    module = target.module.get_submodule(layer)
    captured: list[torch.Tensor] = []

    def hook(_m, _inp, out):
        if isinstance(out, (tuple, list)):
            out = out[0]
        captured.append(out.detach())

    maps: list[np.ndarray] = []
    handle = module.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for r in rows:
                x = target.preprocess(probe.load(r)).unsqueeze(0).to(device)
                captured.clear()
                target.forward(x)
                out = captured[-1][0]
                if out.ndim == 3:  # (C, H, W)
                    m = out[unit]
                elif out.ndim == 2:  # (L, D) tokens: no spatial map for a CLS/token layer
                    m = out[0, unit].reshape(1, 1)
                else:
                    m = out[unit].reshape(1, 1)
                maps.append(m.float().cpu().numpy())
    finally:
        handle.remove()
    return maps
