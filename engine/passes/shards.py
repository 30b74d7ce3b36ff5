"""The executor seam of the image passes: where a pass over a probe may be split.

A model pass (a hooked target pass or a dissector's image pass) is a function of
(model, probe, rows); every row is computed independently of the others *within its
batch*.  So a pass can be cut into shards of consecutive rows whose boundaries fall on
batch boundaries: each shard then runs exactly the batches the whole pass would run
(same images, same order, same batch composition -- train-mode BatchNorm included),
and concatenating the shards' results in order gives the whole pass's result bit for
bit.  The local executor runs one shard in this process; the Ray executor
(engine/passes/ray_executor.py) runs many on a cluster.  Both call the same two
functions of engine/passes/activations.py; only the dispatch differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from dissect_study.engine.models.base import Dissector, Target
from dissect_study.engine.passes.activations import (
    ActivationResult,
    EmbeddingResult,
    embed_images,
    extract_activations,
)
from dissect_study.engine.probes.base import Probe
from dissect_study.errors import DissectStudyError

EXECUTORS = ("local", "ray")


class Passes(Protocol):
    """Runs the model passes of a run (engine/passes/execute.py calls nothing else)."""

    def activations(self, target: Target, probe: Probe, layers: list[str], **kw: Any) -> ActivationResult: ...

    def embeddings(self, dissector: Dissector, probe: Probe, **kw: Any) -> EmbeddingResult: ...

    def close(self) -> None: ...


class LocalPasses:
    """Every pass in this process, as one shard: the default, needs nothing but torch."""

    def activations(self, target: Target, probe: Probe, layers: list[str], **kw: Any) -> ActivationResult:
        return extract_activations(target, probe, layers, **kw)

    def embeddings(self, dissector: Dissector, probe: Probe, **kw: Any) -> EmbeddingResult:
        return embed_images(dissector, probe, **kw)

    def close(self) -> None:
        pass


def make_passes(executor: str, address: str | None = None) -> Passes:
    """The executor the run options name; Ray is imported only when it is asked for."""
    if executor == "local":
        if address:
            raise DissectStudyError("--address names a Ray cluster; it needs --executor ray")
        return LocalPasses()
    if executor == "ray":
        from dissect_study.engine.passes.ray_executor import RayPasses

        return RayPasses(address)
    raise DissectStudyError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


def shard_rows(rows: Sequence[int], batch_size: int, n_shards: int) -> list[list[int]]:
    """`rows` cut into at most `n_shards` runs of consecutive rows, each a whole number of
    batches (the last may end in a short batch, as the whole pass would), sizes as even as
    batches allow."""
    if batch_size < 1 or n_shards < 1:
        raise ValueError(f"batch_size and n_shards must be >= 1, got {batch_size}, {n_shards}")
    rows = list(rows)
    batches = math.ceil(len(rows) / batch_size)
    if batches == 0:
        return []
    n = min(n_shards, batches)
    base, extra = divmod(batches, n)
    out, at = [], 0
    for i in range(n):
        take = (base + (1 if i < extra else 0)) * batch_size
        out.append(rows[at : at + take])
        at += take
    return out


def merge_activations(parts: Sequence[ActivationResult], seconds: float) -> ActivationResult:
    """The shards' results as one pass's result: rows concatenated in shard order."""
    if not parts:
        raise ValueError("no shard results to merge")
    indices = [i for p in parts for i in p.indices]
    acts = {layer: torch.cat([p.acts[layer] for p in parts]) for layer in parts[0].acts}
    outputs = [p.output for p in parts]
    output = torch.cat([o for o in outputs if o is not None]) if all(o is not None for o in outputs) else None
    return ActivationResult(
        acts=acts,
        indices=indices,
        skipped=[s for p in parts for s in p.skipped],
        images_per_s=len(indices) / seconds if seconds > 0 else math.inf,
        precision=parts[0].precision,
        output=output,
    )


def merge_embeddings(parts: Sequence[EmbeddingResult], seconds: float) -> EmbeddingResult:
    """The shards' embeddings as one pass's: rows concatenated in shard order."""
    if not parts:
        raise ValueError("no shard results to merge")
    indices = [i for p in parts for i in p.indices]
    return EmbeddingResult(
        emb=torch.cat([p.emb for p in parts]),
        indices=indices,
        skipped=[s for p in parts for s in p.skipped],
        images_per_s=len(indices) / seconds if seconds > 0 else math.inf,
    )
