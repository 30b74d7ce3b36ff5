"""Target activations and dissector embeddings: one streamed pass over a probe.

docs/METHOD.md §2: a forward hook on each requested layer pools its output to
(B, C) per batch; batches are concatenated in probe order, so row i of every
layer's matrix -- and of the dissector's image embeddings -- is the same probe
image (docs/METHOD.md §1).  Differences from the reference code, on purpose:

* every requested layer is hooked at once, so the target runs once per probe
  (not once per layer), and only pooled (B, C) tensors leave the device;
* layers are resolved with `nn.Module.get_submodule` (never `eval`) and hooks are
  removed in `finally`, so none outlives a run even when the forward raises;
* pooling is explicit per output rank (see `pool`), tuple outputs are unwrapped
  for every mode (the reference forgot it for `max`, docs/METHOD.md §11.14);
* unreadable images are skipped and reported, never silently re-ordered.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dissect_study.dsl.vocabulary import POOLINGS, PRECISIONS
from dissect_study.engine.models.base import Dissector, Preprocess, Target
from dissect_study.engine.probes.base import Probe
from dissect_study.engine.probes.decode import require_finite
from dissect_study.errors import DissectStudyError


class ActivationError(DissectStudyError):
    """A user-facing problem with a layer, pooling mode or preprocessing (one clear paragraph)."""


# ----------------------------------------------------------------------------- results


@dataclass
class ActivationResult:
    """Pooled activations per layer (N x K float32, CPU), rows in `indices` order."""

    acts: dict[str, torch.Tensor]
    indices: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    images_per_s: float = 0.0
    #: what actually ran: "bf16" only on CUDA, else "fp32"
    precision: str = "fp32"
    #: the target's forward output per kept row (N x D), when asked for with `keep_output`
    output: torch.Tensor | None = None


@dataclass
class EmbeddingResult:
    """Projected, un-normalised image embeddings (n x d float32, CPU), rows in `indices` order."""

    emb: torch.Tensor
    indices: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    images_per_s: float = 0.0


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Skip:
    """What a dataset item becomes when its image cannot be decoded."""

    index: int
    reason: str


class ProbeDataset(Dataset):
    """A probe seen through one model's preprocessing: items are (tensor, probe_index).

    An image whose `probe.load` raises (ImageUnreadable or any decode error)
    becomes a skip marker that `collate_skipping` drops and reports, so one
    bad file costs one row, not the run.  So does an image that decodes to
    NaN/inf pixels (whatever probe loaded it), or whose preprocessed tensor is
    not finite (a float image whose range overflows float32): one such row
    would otherwise make every score of the dissection NaN.  A failing
    `preprocess` is *not* swallowed: that is a pipeline bug, and it is raised
    naming the image.
    """

    def __init__(self, probe: Probe, preprocess: Preprocess, indices: Sequence[int] | None = None) -> None:
        n = len(probe)
        rows = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in rows if not 0 <= i < n]
        if bad:
            raise IndexError(f"probe {probe.name!r} has {n} images; requested rows out of range: {bad[:5]}")
        self.probe = probe
        self.preprocess = preprocess
        self.indices = rows

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | _Skip:
        index = self.indices[i]
        try:
            image = require_finite(self.probe.load(index), _item_path(self.probe, index))
        except Exception as e:  # noqa: BLE001 -- any decode failure is a skipped image, by contract
            return _Skip(index, f"{type(e).__name__}: {e}")
        try:
            x = self.preprocess(image)
        except Exception as e:
            raise ActivationError(
                f"preprocessing probe {self.probe.name!r} image {index} "
                f"({_item_path(self.probe, index)}) failed: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise ActivationError(
                f"preprocessing probe {self.probe.name!r} image {index} returned "
                f"{type(x).__name__}{tuple(getattr(x, 'shape', ()))}; a Preprocess must return a (3, H, W) tensor"
            )
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            return _Skip(
                index,
                f"ImageUnreadable: {_item_path(self.probe, index)}: preprocessing gave NaN or "
                "infinite values (pixel values beyond float32's range?)",
            )
        return x, index


def _item_path(probe: Probe, index: int) -> str:
    try:
        return probe.items[index].path
    except Exception:  # noqa: BLE001 -- only for an error message
        return "?"


def collate_skipping(batch: list[Any]) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """(images (B,3,H,W) or None, probe indices, skipped (index, reason)).  Module-level: picklable for workers."""
    good = [b for b in batch if not isinstance(b, _Skip)]
    skipped = [(b.index, b.reason) for b in batch if isinstance(b, _Skip)]
    if not good:
        return None, [], skipped
    shapes = {tuple(x.shape) for x, _ in good}
    if len(shapes) > 1:
        raise ActivationError(
            f"preprocessing produced images of different sizes in one batch ({sorted(shapes)[:3]}); "
            f"the model's Preprocess must resize every image to one fixed size"
        )
    return torch.stack([x for x, _ in good]), [i for _, i in good], skipped


def _loader(dataset: ProbeDataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        drop_last=False,
    )


# ----------------------------------------------------------------------------- pooling


def pool(output: Any, mode: str, layer: str = "?") -> torch.Tensor:
    """Reduce one hooked output to (B, C).

    * tuple/list outputs (HF transformer layers) and ModelOutput objects: element 0;
    * 4-D (B, C, H, W): `avg` mean / `max` max over H, W (fp32 accumulation);
    * 3-D (B, L, D), **batch-first** (the layout of timm and HF ViTs): `cls` token 0,
      `avg` mean over tokens, `max` max over tokens;
    * 2-D (B, F) (FC layers): returned unchanged for every mode (`none` says so);
    * anything else, or `none` on a 3-D/4-D output, or `cls` on a 4-D output: ActivationError naming the layer.
    """
    if mode not in POOLINGS:
        raise ActivationError(f"unknown pooling {mode!r} for layer {layer!r}; choose one of {', '.join(POOLINGS)}")
    if isinstance(output, (tuple, list)):
        if not output:
            raise ActivationError(f"layer {layer!r} returned an empty {type(output).__name__}; nothing to pool")
        output = output[0]
    elif isinstance(output, Mapping) and hasattr(output, "to_tuple"):  # transformers ModelOutput
        output = output.to_tuple()[0]
    if not isinstance(output, torch.Tensor):
        raise ActivationError(
            f"layer {layer!r} returned {type(output).__name__}, not a tensor; hook a module "
            f"whose output is a tensor (or a tuple whose first element is one)"
        )
    nd = output.ndim
    if nd == 2:
        return output
    if nd == 4:
        if mode == "avg":
            return output.mean(dim=(2, 3), dtype=torch.float32)
        if mode == "max":
            return output.amax(dim=(2, 3))
        raise ActivationError(
            f"pooling {mode!r} does not apply to layer {layer!r}, whose output is "
            f"(B, C, H, W) {tuple(output.shape)}; use avg or max"
        )
    if nd == 3:
        if mode == "cls":
            return output[:, 0]
        if mode == "avg":
            return output.mean(dim=1, dtype=torch.float32)
        if mode == "max":
            return output.amax(dim=1)
        raise ActivationError(
            f"pooling 'none' does not apply to layer {layer!r}, whose output is "
            f"(B, L, D) {tuple(output.shape)}; use cls, avg or max"
        )
    raise ActivationError(
        f"layer {layer!r} outputs a {nd}-D tensor {tuple(output.shape)}; pooling handles "
        f"(B, C, H, W), (B, L, D) and (B, F) outputs only"
    )


# ----------------------------------------------------------------------------- hooks


def _dotted(name: str) -> str:
    """`image_encoder._blocks[2]` -> `image_encoder._blocks.2` (the Mammo-CLIP-Dissect spelling)."""
    return re.sub(r"\[(\d+)\]", r".\1", name.strip())


def resolve_module(target: Target, name: str) -> nn.Module:
    """The submodule of `target.module` named `name` (dotted path, `[i]` indices, or a target alias)."""
    root = target.module
    candidates = [name, _dotted(name)]
    try:
        candidates.append(target.resolve_layer(name))
    except Exception:  # noqa: BLE001 -- not an alias; the lookup below reports it
        pass
    for cand in candidates:
        try:
            return root.get_submodule(cand)
        except AttributeError:
            continue
    names = [n for n, _ in root.named_modules() if n]
    close = difflib.get_close_matches(_dotted(name), names, n=5, cutoff=0.5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ActivationError(
        f"target {target.name!r} has no layer {name!r}.{hint} "
        f"It has {len(names)} submodules ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); "
        f"layer names are dotted module paths such as '_blocks.2'."
    )


@contextmanager
def hooked(
    target: Target, layers: Sequence[str], pooling: str, sink: Callable[[str, torch.Tensor], None]
) -> Iterator[None]:
    """Register one pooling forward hook per layer; every hook is removed on exit, even on error.

    Each hook pools on the device and hands `(layer, pooled)` to `sink`.
    """
    modules = [(layer, resolve_module(target, layer)) for layer in layers]
    handles = []
    try:
        for layer, module in modules:

            def hook(_m: nn.Module, _inp: Any, out: Any, _layer: str = layer) -> None:
                sink(_layer, pool(out, pooling, _layer))

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- passes


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ActivationError(f"device {str(device)!r} was requested but CUDA is not available here; use device 'cpu'")
    return dev


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # disable=None lets tqdm turn itself off when stderr is not a terminal (CI logs, pipes)
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        disable=None if enabled else True,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def _stream(
    dataset: ProbeDataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    desc: str,
    progress: bool,
    step: Callable[[torch.Tensor, list[int]], None],
) -> tuple[list[int], list[tuple[int, str]], float]:
    """Feed every batch to `step`; return (kept indices, skipped, images/s)."""
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    bar = _progress(len(dataset), desc, progress)
    t0 = time.perf_counter()
    try:
        for images, idx, skip in _loader(dataset, batch_size, workers, device):
            skipped.extend(skip)
            if images is not None:
                step(images, idx)
                kept.extend(idx)
            bar.update(len(idx) + len(skip))
    finally:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return kept, skipped, (len(kept) / elapsed if elapsed > 0 else math.inf)


class _Rows:
    """Preallocated (N, K) float32 CPU matrices filled batch by batch (no 2x peak from a final cat)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.mats: dict[str, torch.Tensor] = {}
        self.filled: dict[str, int] = {}

    def add(self, name: str, block: torch.Tensor) -> None:
        block = block.detach().to("cpu", torch.float32)
        if block.ndim != 2:
            raise ActivationError(f"{name}: expected a (B, C) block, got {tuple(block.shape)}")
        if name not in self.mats:
            # allocated outside inference mode: callers may later modify the result in place
            with torch.inference_mode(False):
                self.mats[name] = torch.empty(self.capacity, block.shape[1], dtype=torch.float32)
            self.filled[name] = 0
        mat, at = self.mats[name], self.filled[name]
        if block.shape[1] != mat.shape[1]:
            raise ActivationError(f"{name}: width changed between batches ({mat.shape[1]} -> {block.shape[1]})")
        mat[at : at + block.shape[0]] = block
        self.filled[name] = at + block.shape[0]

    def result(self, name: str, n: int) -> torch.Tensor:
        mat = self.mats[name]
        if self.filled[name] != n:
            raise ActivationError(f"{name}: {self.filled[name]} rows captured for {n} images")
        return mat if n == self.capacity else mat[:n].clone()


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ActivationError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


_OUTPUT = "\0output"  # rows key of the forward output; no module is named so


def extract_activations(
    target: Target,
    probe: Probe,
    layers: list[str],
    pooling: str = "avg",
    batch_size: int | None = None,
    device: str = "cpu",
    workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
    indices: Sequence[int] | None = None,
    keep_output: bool = False,
) -> ActivationResult:
    """Pooled activations of every layer in `layers` from ONE pass of `target` over `probe`.

    Rows follow `indices` (default: the whole probe in order) minus skipped images.
    Memory is bounded by one batch of feature maps plus the pooled N x K result.
    On CUDA: pinned-memory loader, channels-last input and weights, and bf16
    autocast when `precision == 'bf16'` (on CPU bf16 is ignored; `precision` of
    the result says what ran).
    """
    _check_choice(pooling, POOLINGS, "pooling")
    _check_choice(precision, PRECISIONS, "precision")
    if not layers:
        raise ActivationError(f"no layers requested for target {target.name!r}")
    if len(set(layers)) != len(layers):
        raise ActivationError(f"layer list for target {target.name!r} repeats a layer: {layers}")
    dev = _device(device)
    bs = int(batch_size or target.batch_size)
    if bs < 1:
        raise ActivationError(f"batch size must be >= 1, got {bs}")
    dataset = ProbeDataset(probe, target.preprocess, indices)
    cuda = dev.type == "cuda"
    used = "bf16" if precision == "bf16" and cuda else "fp32"
    target.to(dev)
    if cuda:
        target.module.to(memory_format=torch.channels_last)

    rows = _Rows(len(dataset))
    calls: dict[str, int] = {}

    def sink(layer: str, pooled: torch.Tensor) -> None:
        if layer in calls:
            raise ActivationError(
                f"layer {layer!r} of target {target.name!r} ran more than once in one forward pass "
                f"(the module is reused); hook a module that runs once per image"
            )
        calls[layer] = 1
        rows.add(layer, pooled)

    def step(images: torch.Tensor, idx: list[int]) -> None:
        x = images.to(dev, non_blocking=cuda)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        calls.clear()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if used == "bf16" else nullcontext()
        with autocast:
            out = target.forward(x)
        if keep_output:
            # the dissector's embedding comes from these rows when it shares this pass
            rows.add(_OUTPUT, out.flatten(1))
        missing = [l for l in layers if l not in calls]
        if missing:
            raise ActivationError(
                f"layer(s) {', '.join(missing)} of target {target.name!r} did not run in the target's "
                f"forward (e.g. a text-tower or unused head module); choose layers on the image path"
            )

    with torch.inference_mode(), hooked(target, layers, pooling, sink):
        kept, skipped, speed = _stream(dataset, bs, workers, dev, f"{target.name}", progress, step)
    if not kept:
        raise ActivationError(
            f"no image of probe {probe.name!r} could be read ({len(skipped)} skipped; "
            f"first: {skipped[0][1] if skipped else 'empty probe'})"
        )
    acts = {layer: rows.result(layer, len(kept)) for layer in layers}
    output = rows.result(_OUTPUT, len(kept)) if keep_output else None
    return ActivationResult(acts=acts, indices=kept, skipped=skipped, images_per_s=speed, precision=used, output=output)


def embed_images(
    dissector: Dissector,
    probe: Probe,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    workers: int = 0,
    progress: bool = True,
) -> EmbeddingResult:
    """The dissector's projected image embeddings (its own preprocess and `encode_images`).

    Eval/train mode is the dissector adapter's business (`train_mode` parameter);
    this pass only streams the probe in order and keeps (B, d) per batch.
    """
    dev = _device(device)
    bs = int(batch_size or dissector.batch_size)
    dataset = ProbeDataset(probe, dissector.preprocess, indices)
    dissector.to(dev)
    rows = _Rows(len(dataset))
    cuda = dev.type == "cuda"

    def step(images: torch.Tensor, idx: list[int]) -> None:
        out = dissector.encode_images(images.to(dev, non_blocking=cuda))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(idx):
            raise ActivationError(
                f"dissector {dissector.name!r}.encode_images returned {tuple(getattr(out, 'shape', ()))} "
                f"for a batch of {len(idx)}; it must return (B, d)"
            )
        rows.add("emb", out)

    with torch.inference_mode():
        kept, skipped, speed = _stream(dataset, bs, workers, dev, f"{dissector.name} images", progress, step)
    if not kept:
        raise ActivationError(f"no image of probe {probe.name!r} could be read ({len(skipped)} skipped)")
    return EmbeddingResult(emb=rows.result("emb", len(kept)), indices=kept, skipped=skipped, images_per_s=speed)


def embed_texts(dissector: Dissector, texts: list[str], chunk: int = 200) -> torch.Tensor:
    """(M, d) float32 CPU projected text embeddings, encoded `chunk` strings at a time.

    Chunking bounds memory only: the concept list is split in order and the
    chunks are concatenated, so row j is always `texts[j]`.
    """
    if not texts:
        raise ActivationError(f"no concept texts to embed with dissector {dissector.name!r}")
    if chunk < 1:
        raise ActivationError(f"text chunk size must be >= 1, got {chunk}")
    parts = []
    with torch.inference_mode():
        for start in range(0, len(texts), chunk):
            piece = list(texts[start : start + chunk])
            out = dissector.encode_texts(piece)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(piece):
                raise ActivationError(
                    f"dissector {dissector.name!r}.encode_texts returned {tuple(getattr(out, 'shape', ()))} "
                    f"for {len(piece)} texts; it must return (M, d)"
                )
            parts.append(out.detach().to("cpu", torch.float32))
    return torch.cat(parts)  # outside inference mode: a normal tensor, safe to modify later
