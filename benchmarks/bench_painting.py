"""Paint the demo's training phantoms one by one and with the painter threads; print the ratio.

Painting is the part of a cold demo that grows with the dissector's training set, so it
runs on TRAIN_THREADS threads (numpy and PIL release the GIL).

    .venv/bin/python benchmarks/bench_painting.py [--n 2400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dissect_study.engine.models import demo
from dissect_study.engine.phantom.generator import render, sample_scene


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2400)
    ap.add_argument("--stream", type=int, default=demo.TRAIN_STREAM)
    a = ap.parse_args()
    t0 = time.perf_counter()
    one = [render(sample_scene(a.stream, i), demo.RENDER_HEIGHT) for i in range(a.n)]
    t_one = time.perf_counter() - t0
    demo._RENDER_MEMO.clear()
    t0 = time.perf_counter()
    threaded = list(demo._painted(a.stream, a.n))
    t_threads = time.perf_counter() - t0
    assert all(np.array_equal(x, y) for x, y in zip(one, threaded))
    print(f"{a.n} phantoms at {demo.RENDER_HEIGHT} px")
    print(f"  one by one          {t_one:6.1f} s  {a.n / t_one:6.0f} img/s")
    print(f"  {demo.TRAIN_THREADS} painter threads   {t_threads:6.1f} s  {a.n / t_threads:6.0f} img/s")
    print(f"  speed-up            {t_one / t_threads:6.2f}x (same pixels)")


if __name__ == "__main__":
    main()
