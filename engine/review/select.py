"""Which neurons a `review` statement puts in its packet: a pure function over the run's labels.

Per layer: the neurons of the model (constant ones left out -- their label means
nothing), narrowed to labels in a category/subcategory/task/domain (`on ...`) and
to labels the label evidence supports or not (`labels ...`, rank 1 of
`label_evidence`), then the `top N` by score (ties: lower unit first) or a
`sample N` drawn with numpy's PCG64 from `seed`, listed by unit.  An explicit unit
list is taken as written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dissect_study.engine.concepts import category_key
from dissect_study.errors import DissectStudyError

#: the order the filter levels are tried in when the name is not found at the level written (as the analyses do)
LEVELS = ("category", "subcategory", "task", "domain")


class ReviewSelectionError(DissectStudyError):
    """A review packet cannot be selected as written (unknown group, unit out of range)."""


class NoEvidenceError(ReviewSelectionError):
    """`labels supported/unsupported` on a run without label evidence."""


@dataclass(frozen=True)
class ReviewSpec:
    select: str  # top | sample | units
    n: int | None = None
    seed: int = 0
    units: tuple[int, ...] = ()
    labels: str = "any"  # any | supported | unsupported
    filter_level: str | None = None
    filter_name: str | None = None

    @classmethod
    def from_options(cls, options: dict, filter_level: str | None, filter_name: str | None) -> ReviewSpec:
        return cls(
            select=str(options["select"]),
            n=options.get("n"),
            seed=int(options.get("seed") or 0),
            units=tuple(int(u) for u in options.get("units") or ()),
            labels=str(options.get("labels") or "any"),
            filter_level=filter_level,
            filter_name=filter_name,
        )


def _group_ids(concepts: pd.DataFrame, level: str | None, name: str) -> set[int]:
    """concept_ids in the group; the level written first, then the others (exact names, case-insensitive)."""
    order = [level] if level else []
    order += [lv for lv in LEVELS if lv not in order]
    for lv in order:
        if lv in ("category", "subcategory"):
            hit = concepts[lv].map(lambda v: v is not None and category_key(v) == category_key(name))
        elif lv == "task":
            hit = concepts["tasks"].map(lambda ts: ts is not None and name.lower() in {str(t).lower() for t in ts})
        else:
            hit = concepts["domain"].map(lambda v: v is not None and str(v).lower() == name.lower())
        if hit.any():
            return set(concepts.loc[hit, "concept_id"].astype(int))
    raise ReviewSelectionError(
        f"no concept of the run is in a category, subcategory, task or domain named {name!r}; "
        'check the name against the concept set (dissect-study query "SELECT DISTINCT category FROM concepts")'
    )


def select_neurons(
    neurons: pd.DataFrame,
    concepts: pd.DataFrame,
    layers: Sequence[str],
    spec: ReviewSpec,
    evidence: pd.DataFrame | None = None,
) -> list[tuple[str, int]]:
    """(layer, unit) of the packet, layer by layer in `layers` order.

    `neurons`: one model's rows of the `neurons` table (layer, unit, concept_id, score, constant);
    `concepts`: its concept set (concept_id, category, subcategory, domain, tasks);
    `evidence`: `label_evidence` rows (layer, unit, rank, supported) of that model, or None when the run has none.
    """
    out: list[tuple[str, int]] = []
    if spec.select == "units":
        for layer in layers:
            have = set(neurons.loc[neurons["layer"] == layer, "unit"].astype(int))
            bad = [u for u in spec.units if u not in have]
            if bad:
                raise ReviewSelectionError(
                    f"layer {layer} has {len(have)} neurons (units 0..{len(have) - 1}); no unit {', '.join(map(str, bad))}"
                )
            out.extend((layer, u) for u in spec.units)
        return out
    pool = neurons.loc[neurons["layer"].isin(list(layers)) & ~neurons["constant"].fillna(False).astype(bool)]
    if spec.filter_name is not None:
        pool = pool.loc[pool["concept_id"].astype(int).isin(_group_ids(concepts, spec.filter_level, spec.filter_name))]
    if spec.labels != "any":
        if evidence is None:
            raise NoEvidenceError(
                f"`labels {spec.labels}` needs label evidence, and this run has none (no label_evidence table)"
            )
        ev = evidence.loc[evidence["rank"] == 1, ["layer", "unit", "supported"]]
        pool = pool.merge(ev, on=["layer", "unit"], how="inner")
        pool = pool.loc[pool["supported"].astype(bool) == (spec.labels == "supported")]
    for layer in layers:
        cand = pool.loc[pool["layer"] == layer].sort_values(["score", "unit"], ascending=[False, True], kind="stable")
        n = min(int(spec.n or 0), len(cand))
        if spec.select == "top":
            units = [int(u) for u in cand["unit"].iloc[:n]]
        else:
            rng = np.random.default_rng(spec.seed)
            all_units = np.sort(cand["unit"].astype(int).to_numpy())
            units = sorted(int(u) for u in rng.choice(all_units, size=n, replace=False)) if n else []
        out.extend((layer, u) for u in units)
    return out
