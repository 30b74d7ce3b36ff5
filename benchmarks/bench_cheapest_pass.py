"""What the engine's "cheapest pass" saves: a dissector pass over the top-k image union only.

    python benchmarks/bench_cheapest_pass.py          # N=4000, top_k=100, CNN at 96 px, B5 1520x912 x3, e2e 2400
    python benchmarks/bench_cheapest_pass.py --quick  # CNN on 2200 at 64 px, B5 1520x912 x1, e2e with a B0

Why: for the top-k-only similarities (``soft_wpmi``, ``wpmi``: family ``topk`` in dsl/vocabulary.py) S reads
row i of P only if image i is among some neuron's top-k images, so on probes over 2,000 images
``engine/run.py`` embeds only ``labels.topk_image_union`` of the target's activations plus a fixed
512-image random sample for the zero-shot sanity check.  The naive baseline embeds every probe
image.  This prints, in one run:

1. the union size at VinDr scale (N images, top_k; the paper's EfficientNet-B5 layer sets
   early = _blocks.2 (24 neurons), middle = _blocks.19 (128), last = _blocks.38 (512), the three
   together, and all 39 blocks (6,992)), |union|, |union + sanity sample| and the fraction of N for

   a. avg-pooled activations of our EfficientNet-B5 (engine/models/efficientnet.py) on procedural
      phantoms (engine/phantom), at a reduced input size.  Weights are seeded random (no trained
      B5 exists offline).  PyTorch's default init shrinks the signal about tenfold per block
      (block 38 has std ~1e-12 on phantoms), so the BatchNorm running statistics are re-estimated
      on phantoms of another seed: every channel is unit-scale, as in a trained network, while the
      weights stay random.  A random network's channels are more alike than a trained one's
      (more shared top images), so treat this as the optimistic side;
   b. i.i.d. uniform activations, the worst case (every neuron picks its own top-k), with the
      closed form 1 - (1 - k/N)^K next to it;

2. the dissector's cost per image: the Mammo-CLIP dissector's image path (MammoClipModel.encode_image
   = EfficientNet-B5 + projection; random weights, cost does not depend on them) at the real
   1520x912 input, timed under torch.inference_mode, and from it the projected full-pass vs
   union-pass times and saving ratios (also for both image passes together: the target pass stays
   over all N images, since the union comes from it);

3. an end-to-end measurement at small scale: ``activations.embed_images`` with a MammoClipDissector
   at a reduced input size over the whole probe vs over the union the engine would build (first
   --e2e-n images of the same phantom probe), plus a check that soft_wpmi's S is unchanged when
   the rows of P outside the union are zeros, as ``run.py`` leaves them.

Nothing is downloaded; the timings are the wall clock of this machine (print includes the load
average and cpu/wall per timed phase: on a shared 2-core VM they move by up to several times).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet, block_specs
from dissect_study.engine.models.mammo_clip import (
    IMAGE_SIZE,
    EfficientNetTarget,
    MammoClipDissector,
    MammoClipModel,
    mammo_clip_preprocess,
    paper_layer_aliases,
)
from dissect_study.engine.passes.activations import embed_images, extract_activations
from dissect_study.engine.phantom.probe import PhantomProbe
from dissect_study.engine.plan import cheapest_pass
from dissect_study.engine.scores.labels import topk_image_union
from dissect_study.engine.scores.similarity import concept_activation_matrix, soft_wpmi

#: the engine's thresholds (engine/cheapest_pass.py)
MIN_PROBE_FOR_UNION = cheapest_pass.MIN_PROBE_IMAGES
SANITY_SAMPLE = cheapest_pass.SANITY_SAMPLE
#: the engine's k is max(top_k, options.top_images) with top_images defaulting to 5
TOP_IMAGES = 5
#: wpmi's registry default top_k
WPMI_TOP_K = 28
SHARED_BLOCKS_JSON = Path(__file__).resolve().parents[2] / "shared/data/mammo_clip/effnet_b5_blocks.json"


# ----------------------------------------------------------------------------- the engine's union
def engine_rows(acts: dict[str, torch.Tensor], top_k: int) -> tuple[int, list[int]]:
    """(|union|, sorted rows the union pass embeds) for one target over probe rows 0..N-1.

    Calls the engine's own rule (``cheapest_pass.choose_rows``) with the 90 % cut-off lifted,
    so the union pass is measured even where the engine would now choose a full pass
    instead (see ``engine_takes_union``).
    """
    n = next(iter(acts.values())).shape[0]
    user = cheapest_pass.RowUser(
        name="target",
        similarity="soft_wpmi",
        family="topk",
        top_k=top_k,
        acts=acts,
        kept=list(range(n)),
        top_images=TOP_IMAGES,
    )
    choice = cheapest_pass.choose_rows(list(range(n)), [user], max_fraction=1.0)
    if not choice.reduced:
        return n, choice.rows
    return union_size(acts, max(min(top_k, n), TOP_IMAGES)), choice.rows


def engine_takes_union(n_embedded: int, n: int) -> bool:
    """Whether the engine's default rule keeps the union pass (<= MAX_FRACTION of the probe)."""
    return n > MIN_PROBE_FOR_UNION and n_embedded <= cheapest_pass.MAX_FRACTION * n


def union_size(acts: dict[str, torch.Tensor], k: int) -> int:
    return int(topk_image_union(acts, k).numel())


# ----------------------------------------------------------------------------- models
def b5_layer_sets() -> dict[str, list[str]]:
    """The paper's layer sets, with names from the engine's own aliases (B5: 2, 19, 38)."""
    al = paper_layer_aliases(CONFIGS["b5"])
    sets = {name: [al[name]] for name in ("early", "middle", "last")}
    sets["early+middle+last"] = [al["early"], al["middle"], al["last"]]
    sets["all 39 blocks"] = [s.lukemelas_name for s in block_specs(CONFIGS["b5"])]
    return sets


def b5_channels() -> dict[str, int]:
    return {s.lukemelas_name: s.out_channels for s in block_specs(CONFIGS["b5"])}


def check_against_shared(channels: dict[str, int]) -> str:
    """Compare the block table with shared/data/mammo_clip/effnet_b5_blocks.json when present."""
    if not SHARED_BLOCKS_JSON.exists():
        return f"{SHARED_BLOCKS_JSON} not found (not compared)"
    table = json.loads(SHARED_BLOCKS_JSON.read_text())
    theirs = {b["lukemelas_name"]: int(b["out_channels"]) for b in table}
    return "matches effnet_b5_blocks.json" if theirs == channels else f"DIFFERS from effnet_b5_blocks.json: {theirs}"


def tiny_bert() -> nn.Module:
    """A 1-layer BERT: MammoClipModel needs a text tower; only the image path is timed."""
    from transformers import BertConfig

    from dissect_study.engine.models.mammo_clip import new_bert

    return new_bert(
        BertConfig(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )


def mammo_clip_dissector(variant: str, size: tuple[int, int], seed: int = 0) -> MammoClipDissector:
    torch.manual_seed(seed)
    model = MammoClipModel(CONFIGS[variant], tiny_bert())
    return MammoClipDissector(
        model,
        tokenizer=None,
        preprocess=mammo_clip_preprocess(size),
        fingerprint=f"bench-{variant}-{size[0]}x{size[1]}",
        facts={"source": "random"},
        name=f"random_{variant}",
    )


@torch.no_grad()
def recalibrate_bn(model: nn.Module, probe: PhantomProbe, size: tuple[int, int], n: int, batch: int = 32) -> None:
    """Re-estimate every BatchNorm's running mean/var on `n` phantoms (cumulative average).

    Only the BN layers run in train mode, so stochastic depth and dropout stay off.
    """
    pre = mammo_clip_preprocess(size)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for i in range(0, n, batch):
        model(torch.stack([pre(probe.load(j)) for j in range(i, min(n, i + batch))]))
    for bn, m in zip(bns, saved):
        bn.momentum = m
        bn.eval()


# ----------------------------------------------------------------------------- measurement
def load_avg() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


class Clock:
    """Wall and process CPU seconds of a block; cpu/wall well below the thread count means the
    process was waiting (I/O, or -- in a VM -- its vCPUs were not running)."""

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c

    @property
    def busy(self) -> str:
        return f"cpu/wall {self.cpu / self.wall:.2f}" if self.wall > 0 else "cpu/wall n/a"


def time_full_res(d: MammoClipDissector, batch: int, repeat: int, warmup: int) -> tuple[list[float], float]:
    """Seconds per image of encode_images at 1520x912 (one list entry per timed batch) and the
    phantom render + preprocess time per image."""
    probe = PhantomProbe(batch, seed=7, height=IMAGE_SIZE[0])
    t = time.perf_counter()
    x = torch.stack([d.preprocess(probe.load(i)) for i in range(batch)])
    t_pre = (time.perf_counter() - t) / batch
    assert tuple(x.shape[-2:]) == IMAGE_SIZE
    per_image = []
    with torch.inference_mode():
        for r in range(warmup + repeat):
            with Clock() as c:
                out = d.encode_images(x)
            if r >= warmup:
                per_image.append(c.wall / batch)
            print(
                f"  {'warm-up' if r < warmup else 'timed'} forward {r + 1}: {c.wall:.2f} s for {batch} image(s), "
                f"out {tuple(out.shape)}, {c.busy}, load {load_avg()}",
                flush=True,
            )
    return per_image, t_pre


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| over entries finite in both; inf/NaN must sit at the same places."""
    same = torch.equal(torch.isfinite(a), torch.isfinite(ref))
    ok = torch.isfinite(a) & torch.isfinite(ref)
    if not same:
        return float("inf")
    if not bool(ok.any()):
        return float("nan")
    return float((a[ok].double() - ref[ok].double()).abs().max() / ref[ok].double().abs().max())


UnionRow = tuple[str, int, str, int, int, int, int, str]


def print_union_table(top_k: int, results: Iterable[UnionRow]) -> None:
    """Rows: (layer set, neurons, activations, N, |U|, |U + sanity|, |U| at k=28, note)."""
    print(
        f"{'layer set':<19}{'neurons':>8}  {'activations':<13}{'N':>6}{'|U| k=' + str(top_k):>11}{'|U+sanity|':>12}"
        f"{'of N':>8}{'|U| k=' + str(WPMI_TOP_K):>10}  i.i.d. closed form"
    )
    for name, k_neurons, source, n, u, u_s, u28, note in results:
        print(
            f"{name:<19}{k_neurons:>8}  {source:<13}{n:>6}{u:>11}{u_s:>12}{u_s / n:>8.1%}{u28:>10}  {note}", flush=True
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="under a minute: CNN on 2200 images at 64 px, B5 1520x912 timed once, end-to-end with a B0 dissector",
    )
    ap.add_argument("--n", type=int, default=4000, help="probe size for the union (VinDr scale)")
    ap.add_argument("--cnn-n", type=int, default=None, help="probe size for the CNN activations (default --n)")
    ap.add_argument("--top-k", type=int, default=100, help="the similarity's top_k (soft_wpmi default 100)")
    ap.add_argument("--height", type=int, default=None, help="phantom height for the CNN target (default 96, quick 64)")
    ap.add_argument("--bn-images", type=int, default=128, help="phantoms used to re-estimate BatchNorm statistics")
    ap.add_argument("--full-batch", type=int, default=1, help="batch size of the 1520x912 timing")
    ap.add_argument("--full-repeat", type=int, default=None, help="timed 1520x912 forwards (default 3, quick 1)")
    ap.add_argument("--e2e-n", type=int, default=2400, help="probe size of the end-to-end run (0: skip it)")
    ap.add_argument(
        "--e2e-layers",
        default="early",
        choices=list(b5_layer_sets()),
        help="layer set whose union the end-to-end run embeds",
    )
    ap.add_argument(
        "--e2e-dissector",
        default=None,
        choices=["b5", "b0"],
        help="architecture of the end-to-end dissector (default b5, quick b0)",
    )
    ap.add_argument("--batch", type=int, default=32, help="batch size of the reduced-size passes")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    N, Z = args.n, args.top_k
    cnn_n = args.cnn_n or (min(N, 2200) if quick else N)
    height = args.height or (64 if quick else 96)
    full_repeat = args.full_repeat or (1 if quick else 3)
    e2e_arch = args.e2e_dissector or ("b0" if quick else "b5")
    e2e_n = min(args.e2e_n, cnn_n)
    t_start = time.perf_counter()

    sets = b5_layer_sets()
    chans = b5_channels()
    probe = PhantomProbe(cnn_n, seed=0, height=height)
    size = (height, probe.width)
    print(
        f"N={N} images, top_k={Z} (engine k = max(top_k, top_images={TOP_IMAGES})), sanity sample "
        f"{SANITY_SAMPLE}, union pass only above {MIN_PROBE_FOR_UNION} images; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load_avg()}"
    )
    print(
        "B5 layer sets: "
        + ", ".join(
            f"{k} = {v[0] if len(v) == 1 else f'{len(v)} blocks'} ({sum(chans[l] for l in v)} neurons)"
            for k, v in sets.items()
        )
        + f"; block table {check_against_shared(chans)}"
    )

    # ------------------------------------------------------------------ 1a. CNN on phantoms
    print(
        f"\n[1a] EfficientNet-B5 (seeded random weights, BN statistics re-estimated on {args.bn_images} "
        f"phantoms of seed 1), avg-pooled block outputs on {cnn_n} phantoms (seed 0) at {size[0]}x{size[1]}",
        flush=True,
    )
    torch.manual_seed(0)
    b5 = EfficientNet(CONFIGS["b5"]).eval()
    with Clock() as c_bn:
        recalibrate_bn(b5, PhantomProbe(args.bn_images, seed=1, height=height), size, args.bn_images, args.batch)
    target = EfficientNetTarget(b5, mammo_clip_preprocess(size), "bench-b5-random-bn", name="random_b5")
    with Clock() as c_t:
        res = extract_activations(
            target, probe, sets["all 39 blocks"], pooling="avg", batch_size=args.batch, progress=False
        )
    acts = res.acts
    stds = {l: float(acts[l].std(0).mean()) for l in sets["early+middle+last"]}
    print(
        f"  BN re-estimation {c_bn.wall:.1f} s; target pass (39 blocks hooked) {c_t.wall:.1f} s "
        f"({len(res.indices) / c_t.wall:.1f} images/s, {c_t.busy}); mean per-neuron std "
        + ", ".join(f"{l} {s:.3g}" for l, s in stds.items()),
        flush=True,
    )

    rows_out: list[UnionRow] = []
    cnn_frac: dict[str, int] = {}
    for name, layers in sets.items():
        sub = {l: acts[l] for l in layers}
        u, rows = engine_rows(sub, Z)
        cnn_frac[name] = len(rows)
        rows_out.append(
            (name, sum(chans[l] for l in layers), "B5 phantoms", cnn_n, u, len(rows), union_size(sub, WPMI_TOP_K), "")
        )

    # ------------------------------------------------------------------ 1b. i.i.d. worst case
    g = torch.Generator().manual_seed(0)
    iid_frac: dict[str, int] = {}
    for name, layers in sets.items():
        sub = {l: torch.rand(N, chans[l], generator=g) for l in layers}
        u, rows = engine_rows(sub, Z)
        iid_frac[name] = len(rows)
        K = sum(chans[l] for l in layers)
        expect = N * (1 - (1 - min(Z, N) / N) ** K)
        rows_out.append((name, K, "i.i.d.", N, u, len(rows), union_size(sub, WPMI_TOP_K), f"E|U| = {expect:.0f}"))
    print("\n[1] union of every neuron's top-k images (|U+sanity| = what the engine embeds)")
    print_union_table(Z, sorted(rows_out, key=lambda r: (list(sets).index(r[0]), r[2])))

    # ------------------------------------------------------------------ 2. dissector cost at 1520x912
    print(
        f"\n[2] Mammo-CLIP dissector image path (EfficientNet-B5 + projection, random weights) at "
        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, batch {args.full_batch}, inference_mode, {torch.get_num_threads()} threads",
        flush=True,
    )
    d_full = mammo_clip_dissector("b5", IMAGE_SIZE)
    per_image, t_pre = time_full_res(d_full, args.full_batch, full_repeat, warmup=0 if quick else 1)
    del d_full
    t_img = statistics.median(per_image)
    print(
        f"  B5 forward: median {t_img:.2f} s/image (min {min(per_image):.2f}, max {max(per_image):.2f}, "
        f"{len(per_image)} timed); phantom render + Mammo-CLIP preprocess {t_pre:.2f} s/image (not timed below)"
    )
    print(f"\n[2] projected dissector pass at {t_img:.2f} s/image (N={N} images; cost taken as proportional to images)")
    print(
        f"{'layer set':<19}{'activations':<13}{'embedded':>9}{'full pass':>11}{'union pass':>12}{'saving':>8}"
        f"{'saved':>10}  {'both passes*':>12}  engine (>{cheapest_pass.MAX_FRACTION:.0%}: full pass)"
    )
    for name in sets:
        for source, count, n_ref in (("B5 phantoms", cnn_frac[name], cnn_n), ("i.i.d.", iid_frac[name], N)):
            frac = count / n_ref  # CNN fractions measured on cnn_n images, applied to N
            full, union = N * t_img, N * frac * t_img
            both = ratio(2 * full, full + union)
            print(
                f"{name:<19}{source:<13}{frac:>9.1%}{fmt_s(full):>11}{fmt_s(union):>12}{ratio(full, union):>7.2f}x"
                f"{fmt_s(full - union):>10}  {both:>11.2f}x  "
                f"{'union' if engine_takes_union(round(frac * N), N) else 'full pass'}",
                flush=True,
            )
    if cnn_n != N:
        print(
            f"  note: the B5-phantom fractions were measured on N={cnn_n} images and are applied to N={N} here "
            f"(at fixed k the fraction falls as N grows, so they overstate the union)"
        )
    print(
        "  * both passes: target pass (all N, an EfficientNet-B5 target such as G/M/C costs about the same per "
        "image) + dissector pass, naive vs union"
    )

    # ------------------------------------------------------------------ 3. end-to-end, small scale
    if e2e_n > MIN_PROBE_FOR_UNION:
        layers = sets[args.e2e_layers]
        sub = {l: acts[l][:e2e_n] for l in layers}
        u, rows = engine_rows(sub, Z)
        print(
            f"\n[3] end-to-end (measured): embed_images with a random MammoClipDissector ({e2e_arch.upper()}) at "
            f"{size[0]}x{size[1]} on the first {e2e_n} phantoms; union of layer set '{args.e2e_layers}' at "
            f"k={Z}: {u} images + sanity sample = {len(rows)} ({len(rows) / e2e_n:.1%})",
            flush=True,
        )
        d = mammo_clip_dissector(e2e_arch, size)
        # without this every image gets the same embedding (the signal vanishes) and S is all zeros
        recalibrate_bn(
            d.model.image_encoder, PhantomProbe(args.bn_images, seed=1, height=height), size, args.bn_images, args.batch
        )
        e_probe = PhantomProbe(e2e_n, seed=0, height=height)
        embed_images(d, e_probe, indices=list(range(args.batch)), batch_size=args.batch, progress=False)  # warm-up
        with Clock() as c_full:
            full = embed_images(d, e_probe, batch_size=args.batch, progress=False)
        with Clock() as c_union:
            part = embed_images(d, e_probe, indices=rows, batch_size=args.batch, progress=False)
        diff = float((full.emb[rows] - part.emb).abs().max() / full.emb.abs().max())
        print(
            f"  full pass  {c_full.wall:7.1f} s ({len(full.indices) / c_full.wall:.1f} images/s, "
            f"{len(full.indices)} images, {c_full.busy})"
        )
        print(
            f"  union pass {c_union.wall:7.1f} s ({len(part.indices) / c_union.wall:.1f} images/s, "
            f"{len(part.indices)} images, {c_union.busy}); measured saving {ratio(c_full.wall, c_union.wall):.2f}x, "
            f"predicted from images {ratio(e2e_n, len(rows)):.2f}x"
        )
        # S is unchanged when P's rows outside the union are zeros (what run.py.score builds)
        M = 64
        text = torch.randn(M, full.emb.shape[1], generator=torch.Generator().manual_seed(1))
        P_full = concept_activation_matrix(full.emb, text)
        P_part = torch.zeros_like(P_full)
        P_part[rows] = concept_activation_matrix(part.emb, text)
        X = torch.cat([sub[l] for l in layers], dim=1).float()
        S_full, S_part = soft_wpmi(P_full, X, top_k=Z), soft_wpmi(P_part, X, top_k=Z)
        P_own = torch.zeros_like(P_full)  # the full pass's own union rows: isolates "rows outside are zero"
        P_own[rows] = P_full[rows]
        exact = torch.equal(soft_wpmi(P_own, X, top_k=Z), S_full)
        print(
            f"  union rows' embeddings vs the full pass: max rel diff {diff:.1e} (batch composition differs); "
            f"soft_wpmi S from the union pass (P zero outside the union) vs full P: max |dS| / max |S| = "
            f"{rel_diff(S_part, S_full):.1e}; full-pass P zeroed outside the union gives identical S: {exact} "
            f"(M={M} random concepts)"
        )
    else:
        print(f"\n[3] end-to-end skipped (needs more than {MIN_PROBE_FOR_UNION} images; --e2e-n {e2e_n})")

    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average now {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
