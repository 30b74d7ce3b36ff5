"""A local Ray cluster for the Ray executor's tests, and a target that lets a test kill a worker.

Ray workers unpickle the tiny models by module name, so they need `tests/` (for
`helpers.*`) and the package on their path: the cluster is started with this
process's sys.path in $PYTHONPATH, which its workers inherit.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from helpers.tiny import TinyTarget


def start_cluster(num_cpus: int = 2) -> Iterator[object]:
    """Start (and finally stop) a local Ray cluster with `num_cpus` CPU workers."""
    import ray

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:  # the cluster's processes take the environment now; later tests get the old one back
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    try:
        yield ray
    finally:
        ray.shutdown()


class MarkingTarget(TinyTarget):
    """A TinyTarget whose forward leaves `<marks>/<pid>` and pauses, so a test can find and kill its worker.

    Same weights and fingerprint as TinyTarget(name, seed): its results are TinyTarget's.
    """

    def __init__(self, name: str, seed: int, marks: str, pause: float = 0.4) -> None:
        super().__init__(name, seed)
        self.marks = marks
        self.pause = pause

    def forward(self, batch: torch.Tensor):
        Path(self.marks, str(os.getpid())).touch()
        time.sleep(self.pause)
        return super().forward(batch)
