"""Neuron cards: activation-map thumbnails for the neurons a study looks up (`show neuron`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch

from dissect_study.engine.run import RunError

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor


def neuron_images(ex: Executor) -> None:
    """Thumbnails with activation-map overlays for the neurons a study looks up."""
    if not ex.neuron_requests:
        return
    from dissect_study.engine.passes.spatial import spatial_maps
    from dissect_study.engine.report.overlay import activation_overlay_png

    for model, layer, unit, top in ex.neuron_requests:
        x = next(d for d in ex.plan.dissections if d.target == model)
        target, probe = ex.targets[model], ex.probes[x.probe]
        X = ex.acts[(model, x.probe)][layer]
        if unit >= X.shape[1]:
            raise RunError(
                f"show neuron {model}.{layer}[{unit}]: layer {layer} has {X.shape[1]} neurons "
                f"(units 0..{X.shape[1] - 1})"
            )
        rows = ex.act_rows[(model, x.probe)]
        order = torch.argsort(X[:, unit], descending=True, stable=True)[:top].tolist()
        probe_rows = [rows[i] for i in order]
        maps = spatial_maps(target, probe, layer, unit, probe_rows, device=ex.device)
        out = []
        for rank, (i, r) in enumerate(zip(order, probe_rows), start=1):
            img = probe.load(r)
            png = activation_overlay_png(img if img.ndim == 2 else img.mean(axis=2), maps[rank - 1])
            out.append(
                dict(model=model, layer=layer, unit=unit, rank=rank, image_idx=r, activation=float(X[i, unit]), png=png)
            )
        ex.record.add("neuron_images", pd.DataFrame(out))
