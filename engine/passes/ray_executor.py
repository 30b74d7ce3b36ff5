"""`run --executor ray`: the model passes sharded over the probe as Ray tasks.

What runs where: the driver (the `dissect-study run` process) builds the models,
reads and writes the content cache, scores, analyses and stores.  Only the image
passes -- hooked target passes and dissector image passes, on a cache miss -- go to
the cluster: the probe's rows are cut into shards on batch boundaries
(engine/passes/shards.py), each shard is one Ray task that runs the very function
the local executor runs (`extract_activations` / `embed_images`) on its rows, with
`num_gpus=1` when the run's device is CUDA and the cluster has GPUs, one CPU
otherwise.  The model and the probe travel once per pass through Ray's object store;
the pooled (rows x channels) matrices come back the same way and are concatenated in
row order, so the result is bit-identical to the local pass (CPU workers use the
driver's torch thread count, since a CPU matmul splits its sums by thread).  Probe images are read
by the workers, so they must be at the same path on every node (a shared
filesystem); the cache stays on the driver.

Faults: a task whose worker dies (killed, out of memory, node lost) is retried by
Ray (`MAX_RETRIES`); it recomputes the same shard, so a retried run's results are
the same.  A driver that dies takes its tasks with it and stores nothing
(engine/store/database.py).  Ray is imported only here, only when asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dissect_study.engine.models.base import Dissector, Target
from dissect_study.engine.passes.activations import ActivationResult, EmbeddingResult
from dissect_study.engine.passes.shards import merge_activations, merge_embeddings, shard_rows
from dissect_study.engine.probes.base import Probe
from dissect_study.errors import DissectStudyError

logger = logging.getLogger(__name__)

#: times Ray re-runs a shard whose worker died before the run gives up
MAX_RETRIES = 3
#: shards per worker: more than one evens out slow workers and makes a retry cheaper
SHARDS_PER_WORKER = 2
INSTALL_HINT = "pip install 'dissect-study[ray]'"


class RayExecutorError(DissectStudyError):
    """Ray is missing, the cluster cannot be reached, or a shard failed beyond its retries."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayExecutorError(
            f"--executor ray needs Ray, which is not installed here; install it with: {INSTALL_HINT} "
            "(or run with the default --executor local)"
        ) from None
    return ray


def _shard(kind: str, model: Any, probe: Probe, rows: list[int], kw: dict[str, Any], threads: int) -> Any:
    """One shard on a worker: the local executor's function over `rows`.

    `threads` is the driver's torch thread count: a CPU matmul splits its sums by
    thread, so the worker must use the same count to give the local pass's bits.
    """
    import torch

    from dissect_study.engine.passes.activations import embed_images, extract_activations

    torch.set_num_threads(threads)

    if kind == "acts":
        return extract_activations(model, probe, indices=rows, progress=False, **kw)
    return embed_images(model, probe, indices=rows, progress=False, **kw)


class RayPasses:
    """The model passes as Ray tasks on the cluster at `address` (None: $RAY_ADDRESS or a local one)."""

    def __init__(self, address: str | None = None) -> None:
        self.ray = import_ray()  # fail at once, before any work, when Ray is missing
        self.address = address
        self._started = False
        self._task: Any = None

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = self.address or "a new local cluster"
                raise RayExecutorError(
                    f"cannot connect to the Ray cluster at {where}: {e}; start one with `ray start --head` "
                    "and pass its address with --address (or leave --address out for a local cluster)"
                ) from None
            self._started = True
        if self._task is None:
            self._task = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_shard)

    def _workers(self, device: str) -> tuple[int, dict[str, Any], str]:
        """(workers, task resources, device on the worker) for a pass the run puts on `device`."""
        res = self.ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        if device.startswith("cuda"):
            if gpus:
                return gpus, {"num_gpus": 1}, "cuda"
            logger.warning("the run's device is CUDA but the Ray cluster has no GPU; the passes run on CPUs")
        return max(cpus, 1), {"num_cpus": 1}, "cpu"

    def _run(self, kind: str, model: Any, probe: Probe, kw: dict[str, Any], merge: Callable[..., Any]) -> Any:
        self._connect()
        ray = self.ray
        rows = kw.pop("indices", None)
        rows = list(range(len(probe))) if rows is None else [int(i) for i in rows]
        kw.pop("progress", None)
        workers, resources, device = self._workers(str(kw.pop("device", "cpu")))
        bs = int(kw.get("batch_size") or model.batch_size)
        shards = shard_rows(rows, bs, workers * SHARDS_PER_WORKER)
        t0 = time.perf_counter()
        model_ref, probe_ref = ray.put(model), ray.put(probe)
        task = self._task.options(**resources)
        threads = torch.get_num_threads()
        refs = [task.remote(kind, model_ref, probe_ref, part, dict(kw, device=device), threads) for part in shards]
        logger.info(
            f"ray       {getattr(model, 'name', kind)}: {len(rows)} images in {len(shards)} shard(s) "
            f"on {workers} worker(s) ({'GPU' if 'num_gpus' in resources else 'CPU'})"
        )
        parts = self._gather(refs)
        return merge(parts, time.perf_counter() - t0)

    def _gather(self, refs: Sequence[Any]) -> list[Any]:
        ray = self.ray
        try:
            return list(ray.get(list(refs)))
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DissectStudyError):
                raise cause from None  # the same clear message the local pass gives
            raise RayExecutorError(f"a Ray shard of the model pass failed: {cause or e}") from None
        except ray.exceptions.RayError as e:  # a worker or node died, out of memory, ... beyond the retries
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise RayExecutorError(
                f"a Ray shard of the model pass could not finish after {MAX_RETRIES} retries "
                f"({type(e).__name__}: {first}); check the workers (`ray status`), then run again: "
                "finished passes come from the cache"
            ) from None

    def activations(self, target: Target, probe: Probe, layers: list[str], **kw: Any) -> ActivationResult:
        kw["layers"] = layers
        res: ActivationResult = self._run("acts", target, probe, kw, merge_activations)
        return res

    def embeddings(self, dissector: Dissector, probe: Probe, **kw: Any) -> EmbeddingResult:
        res: EmbeddingResult = self._run("images", dissector, probe, kw, merge_embeddings)
        return res

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False
