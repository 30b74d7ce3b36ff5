"""What a run used: the `models`, `probes` and `images` rows of the run record."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dissect_study.engine.models.base import (
    ReportsTraining,
)

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor


def describe_inputs(ex: Executor) -> None:
    rec = ex.record
    for name, d in ex.dissectors.items():
        step = next(s for s in ex.plan.dissectors if s.name == name)
        details = d.describe()
        if isinstance(d, ReportsTraining):  # demo models: zero-shot / Table-2 style numbers
            details["training_report"] = d.training_report()
        rec.add(
            "models",
            dict(
                model=name,
                role="dissector",
                kind=step.func,
                source=step.params,
                sha256=d.fingerprint(),
                details=details,
            ),
        )
    for name, t in ex.targets.items():
        step = next(s for s in ex.plan.targets if s.name == name)
        details = t.describe()
        details["layers"] = [{"name": l.name, "channels": l.channels, "index": l.index} for l in t.layers()]
        if isinstance(t, ReportsTraining):
            details["training_report"] = t.training_report()
        rec.add(
            "models",
            dict(
                model=name, role="target", kind=step.func, source=step.params, sha256=t.fingerprint(), details=details
            ),
        )
    for name, probe in ex.probes.items():
        used = set().union(*(v for k, v in ex.act_rows.items() if k[1] == name))
        asked = set().union(*(v for k, v in ex.act_requested.items() if k[1] == name))
        n_skipped = len(asked - used)
        rec.add(
            "probes",
            dict(
                probe=name,
                n_images=len(used) or len(probe),
                n_skipped=n_skipped,
                manifest_sha256=probe.manifest_sha256(),
                source=probe.describe(),
            ),
        )
        items = probe.items
        rec.add(
            "images",
            pd.DataFrame(
                dict(
                    probe=name,
                    image_idx=np.arange(len(items)),
                    image_id=[it.image_id for it in items],
                    path=[it.path for it in items],
                    attributes=[json.dumps(it.attributes, default=str, sort_keys=True) for it in items],
                )
            ),
        )
