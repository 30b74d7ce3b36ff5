"""A layer axis stays readable at 39 layers: every point drawn, every k-th layer named."""

from __future__ import annotations

import re

import pandas as pd

from dissect_study.engine.report.charts import MAX_LAYER_LABELS, layer_ticks, tau_chart


def test_layer_ticks_name_all_layers_up_to_the_limit_then_every_kth_with_both_ends() -> None:
    for n in range(1, 60):
        layers = [f"_blocks.{i}" for i in range(n)]
        ticks = layer_ticks(layers)
        assert ticks[0] == layers[0] and ticks[-1] == layers[-1]
        assert len(ticks) <= MAX_LAYER_LABELS + 1 and len(set(ticks)) == len(ticks)
        pos = [layers.index(t) for t in ticks]
        assert pos == sorted(pos)  # depth order kept
        if n <= MAX_LAYER_LABELS:
            assert ticks == layers
        else:
            gaps = [b - a for a, b in zip(pos, pos[1:])]
            assert min(gaps) >= 2  # no two adjacent names that would overlap


def test_tau_chart_of_39_blocks_draws_every_point_and_names_a_subset() -> None:
    layers = [f"_blocks.{i}" for i in range(39)]
    models = ["M", "C1", "C2", "C3", "C4"]
    df = pd.DataFrame([dict(model=m, layer=l, tau=0.1 * i) for m in models for i, l in enumerate(layers)])
    svg = tau_chart(df, layers, models)
    named = set(re.findall(r">(_blocks\.\d+)<", svg))
    assert named == set(layer_ticks(layers))
    assert "_blocks.0" in named and "_blocks.38" in named and "_blocks.1" not in named
    assert svg.count("<path") >= len(models)  # one line per model
