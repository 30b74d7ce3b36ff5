"""Batched similarity functions vs per-neuron loops, at the paper's scale.

    python benchmarks/bench_similarity.py            # N=4095 images, M=763 concepts, K=2048 neurons, top_k=100
    python benchmarks/bench_similarity.py --quick    # N=600, M=120, K=256, top_k=50
    python benchmarks/bench_similarity.py --device cuda --only soft_wpmi wpmi

It runs on CUDA when a GPU is present (``--device`` overrides), else on the CPU.  For
every function it prints three timings, each the median of repeated runs after one
warm-up call (a program is timed once when one run takes over 2 s):

* ``batched``: the engine's function (``engine/scores/similarity.py``);
* ``loop``: one neuron per Python iteration, with the engine's arithmetic and tie-break,
  so that only the batching differs;
* ``reference``: the program the reference code runs, written here from the formulas
  (docs/METHOD.md §3): CLIP-Dissect's ``soft_wpmi`` and ``wpmi`` loop over neurons, gather each neuron's top
  rows of the posterior after one ``torch.topk``, and take one log per factor in the
  input precision (SoftWPMI's factor as the paper writes it, 1 + r (q - 1) + min_prob);
  its ``cos_similarity`` and ``cos_similarity_cubed`` are single matrix products, so
  there the reference is batched too; its ``rank_reorder`` is the per-neuron loop above
  (the same program, so its columns repeat the loop's); MAMMI's code sums over each neuron's
  representative images in a loop (a sum, where the paper and the engine average, so its
  error column says "sum").

Then the ratios of the loop and reference times to the batched time, and each result's
error relative to max |S| of the float64 truth: the per-neuron loop run on float64
inputs.  The reference selects images with ``torch.topk``, whose order among tied
activations is unspecified: float32 activations do tie (a few of 2,048 columns here),
and a different order moves those neurons' scores, so part of the reference's error is
tie order, not arithmetic.  Last, the peak extra memory of one batched call (resident
memory measured in a child process on a CPU; ``max_memory_allocated`` on CUDA).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch

from dissect_study.engine.scores.similarity import (
    cos_similarity,
    cos_similarity_cubed,
    mammi_adaptive,
    rank_reorder,
    ranked_top_k,
    soft_wpmi,
    wpmi,
)

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- per-neuron loops (engine arithmetic)
def _prior(rows: list[Tensor], lam: float) -> Tensor:
    L = torch.stack(rows)
    return L - lam * (torch.logsumexp(L, dim=0, keepdim=True) - math.log(L.shape[0]))


def loop_soft_wpmi(P, X, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97):
    """The factor as (1 - r + min_prob) + r q with r and 1 - r formed in float64, logs summed in float64."""
    q = torch.softmax(a * P, dim=1)
    inds = ranked_top_k(X, top_k)[1]
    r64 = (p_start - torch.arange(top_k, dtype=torch.float64, device=P.device) / top_k * (p_start - p_end)).unsqueeze(1)
    r, c = r64.to(P.dtype), (1 - r64 + min_prob).to(P.dtype)
    rows = [torch.log(c + r * q[inds[k]]).sum(0, dtype=torch.float64) for k in range(X.shape[1])]
    return _prior(rows, lam)


def loop_wpmi(P, X, top_k=28, a=2.0, lam=0.6, min_prob=1e-7):
    logq = torch.log(torch.softmax(a * P, dim=1) + min_prob)
    inds = ranked_top_k(X, top_k)[1]
    return _prior([logq[inds[k]].sum(0, dtype=torch.float64) for k in range(X.shape[1])], lam)


def loop_cos(P, X):
    p_norm = P.norm(dim=0)
    return torch.stack([(X[:, k] @ P) / (X[:, k].norm() * p_norm) for k in range(X.shape[1])])


def _cc(v: Tensor, min_norm: float) -> Tensor:
    v = (v - v.mean(0)) ** 3
    return v / v.norm(dim=0).clamp_min(min_norm)


def loop_cos_cubed(P, X, min_norm=1e-3):
    pt = _cc(P, min_norm)
    return torch.stack([_cc(X[:, k], min_norm) @ pt for k in range(X.shape[1])])


def loop_rank_reorder(P, X, p=3.0, top_fraction=0.05, scale_p=0.5, n_permutations=5, seed=0):
    n = int(math.floor(X.shape[0] * top_fraction))
    K = X.shape[1]
    g = torch.Generator().manual_seed(seed)  # the batched code's permutations
    perms = torch.argsort(torch.rand(K, n_permutations, n, generator=g), dim=2).to(X.device)
    acts, idxs = ranked_top_k(X, n)
    rows = []
    for k in range(K):
        act, idx = acts[k], idxs[k]
        a_up = act.flip(0)
        C = P[idx]
        ranks = torch.argsort(torch.argsort(C, dim=0, stable=True), dim=0)
        err = (act.unsqueeze(1) - a_up[ranks]).abs().pow(p).mean(0)
        base = torch.stack([(a_up - a_up[perms[k, t]]).abs().pow(p).mean() for t in range(n_permutations)]).mean()
        rows.append(-(err / base) / C.mean(0).pow(scale_p))
    return torch.stack(rows)


def loop_mammi(P, X, alpha=93.0):
    rows = []
    for k in range(X.shape[1]):
        x = X[:, k]
        tau = x.max() - (1 - alpha / 100) * (x.max() - x.min())
        rows.append(P[x > tau].mean(0))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- the reference code's programs
def reference_soft_wpmi(P, X, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97):
    """CLIP-Dissect's program: torch.topk, then per neuron gather, 1 + r (q - 1), + min_prob, log, sum."""
    q = torch.softmax(a * P, dim=1)
    inds = torch.topk(X, k=top_k, dim=0)[1]
    r = (p_start - torch.arange(top_k, device=P.device) / top_k * (p_start - p_end)).unsqueeze(1)
    rows = []
    for k in range(X.shape[1]):
        g = q.gather(0, inds[:, k : k + 1].expand(-1, q.shape[1]))
        rows.append(torch.log(1 + r * (g - 1) + min_prob).sum(0))
    return _prior(rows, lam)


def reference_wpmi(P, X, top_k=28, a=2.0, lam=0.6, min_prob=1e-7):
    q = torch.softmax(a * P, dim=1)
    inds = torch.topk(X, k=top_k, dim=0)[1]
    rows = []
    for k in range(X.shape[1]):
        g = q.gather(0, inds[:, k : k + 1].expand(-1, q.shape[1]))
        rows.append(torch.log(g + min_prob).sum(0))
    return _prior(rows, lam)


def reference_cos(P, X):
    return (X / X.norm(dim=0, keepdim=True)).T @ (P / P.norm(dim=0, keepdim=True))


def reference_cos_cubed(P, X, min_norm=1e-3):
    return _cc(X, min_norm).T @ _cc(P, min_norm)


def reference_mammi(P, X, alpha=93.0):
    """MAMMI's code: per neuron, the *sum* of P over its representative images."""
    rows = []
    for k in range(X.shape[1]):
        x = X[:, k]
        tau = x.max() - (1 - alpha / 100) * (x.max() - x.min())
        rows.append(P[x > tau].sum(0))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- measurement
class PeakRSS:
    """Peak resident set size (bytes) above the starting value while the block runs."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self.start = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss() - self.start)


def rel_err(a: Tensor, truth: Tensor) -> float:
    """max |a - truth| / max |truth| over entries finite in both (normwise relative error)."""
    a, truth = a.double().cpu(), truth.double().cpu()
    ok = torch.isfinite(a) & torch.isfinite(truth)
    if not bool(ok.any()):
        return float("nan")
    return float((a[ok] - truth[ok]).abs().max() / truth[ok].abs().max())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, float]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def timed_median(fn: Callable[[], Tensor], repeat: int, device: torch.device) -> tuple[Tensor, float]:
    """The result and the median time of ``repeat`` runs after a warm-up (one run if a run takes over 2 s)."""
    out, first = timed(fn, device)
    if first > 2.0:
        return out, first
    times = [timed(fn, device)[1] for _ in range(repeat)]
    return out, statistics.median(times)


def peak_memory(name: str, batched: Callable[[], Tensor], args: argparse.Namespace, device: torch.device) -> float:
    """Peak extra memory (bytes) of one batched call: CUDA's allocator, or a child process's RSS.

    The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc returns every large block
    to the OS on free (otherwise freed chunks stay resident and a call shows no growth).
    Timings are taken in this process, under the normal allocator.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        batched()
        return float(torch.cuda.max_memory_allocated(device) - before)
    cmd = [sys.executable, __file__, "--memory-only", name, "--device", "cpu"] + (["--quick"] if args.quick else [])
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK "):
            return float(line.split()[1])
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds instead of minutes)")
    ap.add_argument("--repeat", type=int, default=11, help="batched runs per function (median reported)")
    ap.add_argument("--loop-repeat", type=int, default=3, help="runs of each loop and reference program (median)")
    ap.add_argument(
        "--only", nargs="*", default=None, help="subset of: soft_wpmi wpmi cos cos_cubed rank_reorder mammi"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)  # internal: the child of peak_memory
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice). On a shared, loaded machine fewer threads "
        "can be faster: a parallel op waits for its slowest thread",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    N, M, K, Z = (600, 120, 256, 50) if args.quick else (4095, 763, 2048, 100)

    g = torch.Generator().manual_seed(0)
    # cosine-like P (positive mean, spread ~0.05 like Mammo-CLIP cosines) and ReLU-ish activations
    P = (0.2 + 0.05 * torch.randn(N, M, generator=g)).float().to(device)
    X = (torch.relu(torch.randn(N, K, generator=g) + 0.5) + 1e-3 * torch.rand(N, K, generator=g)).float().to(device)
    P64, X64 = P.double(), X.double()
    # name: (batched, loop, reference or None = the loop's program, float64 truth)
    cases: dict[
        str, tuple[Callable[[], Tensor], Callable[[], Tensor], Callable[[], Tensor] | None, Callable[[], Tensor]]
    ]
    cases = {
        "soft_wpmi": (
            lambda: soft_wpmi(P, X, top_k=Z),
            lambda: loop_soft_wpmi(P, X, top_k=Z),
            lambda: reference_soft_wpmi(P, X, top_k=Z),
            lambda: loop_soft_wpmi(P64, X64, top_k=Z),
        ),
        "wpmi": (
            lambda: wpmi(P, X),
            lambda: loop_wpmi(P, X),
            lambda: reference_wpmi(P, X),
            lambda: loop_wpmi(P64, X64),
        ),
        "cos": (
            lambda: cos_similarity(P, X),
            lambda: loop_cos(P, X),
            lambda: reference_cos(P, X),
            lambda: loop_cos(P64, X64),
        ),
        "cos_cubed": (
            lambda: cos_similarity_cubed(P, X),
            lambda: loop_cos_cubed(P, X),
            lambda: reference_cos_cubed(P, X),
            lambda: loop_cos_cubed(P64, X64),
        ),
        "rank_reorder": (
            lambda: rank_reorder(P, X),
            lambda: loop_rank_reorder(P, X),
            None,
            lambda: loop_rank_reorder(P64, X64),
        ),
        "mammi": (
            lambda: mammi_adaptive(P, X),
            lambda: loop_mammi(P, X),
            lambda: reference_mammi(P, X),
            lambda: loop_mammi(P64, X64),
        ),
    }
    if args.memory_only:
        batched = cases[args.memory_only][0]
        batched()
        with PeakRSS() as mem:
            batched()
        print(f"PEAK {mem.peak}")
        return 0
    names = args.only or list(cases)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"N={N} images, M={M} concepts, K={K} neurons, top_k={Z}; torch {torch.__version__} on {device} ({where}), "
        f"{torch.get_num_threads()} threads, load average {tuple(round(v, 2) for v in os.getloadavg())}"
    )
    print(
        f"{'function':<13}{'batched s':>10}{'loop s':>9}{'ratio':>7}{'ref s':>9}{'ratio':>7}"
        f"{'batch err':>11}{'loop err':>10}{'ref err':>10}{'peak MiB':>10}"
    )
    for name in names:
        batched, loop, reference, truth = cases[name]
        S_b, t_b = timed_median(batched, args.repeat, device)
        peak = peak_memory(name, batched, args, device)
        S_l, t_l = timed_median(loop, args.loop_repeat, device)
        if reference is None:
            S_r, t_r = S_l, t_l
        else:
            S_r, t_r = timed_median(reference, args.loop_repeat, device)
        S_64 = truth()
        # MAMMI's code sums where the paper (and the engine) averages: not the same S
        ref_err = "sum" if name == "mammi" else f"{rel_err(S_r, S_64):.1e}"
        print(
            f"{name:<13}{t_b:>10.3f}{t_l:>9.3f}{t_l / t_b:>7.1f}{t_r:>9.3f}{t_r / t_b:>7.1f}"
            f"{rel_err(S_b, S_64):>11.1e}{rel_err(S_l, S_64):>10.1e}{ref_err:>10}{peak / 2**20:>10.1f}",
            flush=True,
        )
        if name == "soft_wpmi":
            t_sel = timed_median(lambda: ranked_top_k(X, Z), args.repeat, device)[1]
            t_topk = timed_median(lambda: torch.topk(X, Z, dim=0), args.repeat, device)[1]
            print(
                f"  top-{Z} selection over {K} neurons: ranked_top_k {t_sel:.3f} s "
                f"(plain torch.topk, ties in any order: {t_topk:.3f} s)",
                flush=True,
            )
    if device.type == "cpu":
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"process peak RSS {peak_rss:.0f} MiB (inputs, loops and float64 truths included)", end="; ")
    print(f"load average now {tuple(round(v, 2) for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
