"""A general CLIP from a local Hugging Face folder: dissector and vision-tower target.

For the paper's Appendix setups A/B (docs/METHOD.md §1.3).  Unlike the reference
code, images reach CLIP through CLIP's own preprocessing (resize shortest side,
centre crop, CLIP mean/std from the folder's preprocessor_config.json), never
through another model's transform (docs/METHOD.md §11.8).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dissect_study.engine.models.base import BuildContext, Dissector, LayerInfo, Preprocess, Target
from dissect_study.engine.models.checkpoint import CheckpointError, config_hash, folder_sha256, resolve_path
from dissect_study.engine.models.mammo_clip import to_float_image
from dissect_study.engine.registry import DISSECTORS, TARGETS

if TYPE_CHECKING:  # transformers is imported lazily at load time (offline settings first)
    from transformers import CLIPModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def unit_range(x: torch.Tensor, dtype: np.dtype) -> torch.Tensor:
    """Pixel values to [0, 1]: by the integer type's range, floats by per-image min-max."""
    if np.issubdtype(dtype, np.integer):
        return x / float(np.iinfo(dtype).max)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if float(hi - lo) > 1e-8 else torch.zeros_like(x)


def clip_preprocess(
    size: int = 224,
    crop: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> Preprocess:
    """Resize the shortest side to `size` (bicubic, antialiased), centre-crop `crop`, normalise."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def fn(image: np.ndarray) -> torch.Tensor:
        arr = np.asarray(image)
        x = unit_range(to_float_image(arr), arr.dtype)
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
        x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (nh - crop) // 2, (nw - crop) // 2
        x = x[:, top : top + crop, left : left + crop].clamp(0, 1)
        return (x - mean_t) / std_t

    describe = {
        "kind": "clip",
        "resize_shortest": size,
        "center_crop": crop,
        "mean": list(mean),
        "std": list(std),
        "scale": "integer range to [0,1]; float images min-max",
        "interpolation": "bicubic antialias",
    }
    return Preprocess(describe=describe, fn=fn)


def _folder_preprocess(folder: Path) -> Preprocess:
    cfg_path = folder / "preprocessor_config.json"
    if not cfg_path.is_file():
        return clip_preprocess()
    cfg = json.loads(cfg_path.read_text())
    size: Any = cfg.get("size", 224)  # an int or {"shortest_edge": n} / {"height": n, "width": n}
    size = size.get("shortest_edge", size.get("height", 224)) if isinstance(size, dict) else size
    crop: Any = cfg.get("crop_size", size)
    crop = crop.get("height", size) if isinstance(crop, dict) else crop
    return clip_preprocess(
        int(size), int(crop), tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
    )


def load_clip_folder(folder: Path, param: str = "path") -> tuple[CLIPModel, Any]:
    """(CLIPModel, tokenizer) from a local folder, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    try:
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(f"{param} = {str(folder)!r}: no readable config.json ({exc}).") from exc
    if cfg.model_type != "clip":
        raise CheckpointError(
            f"{param} = {str(folder)!r}: config.json describes a {cfg.model_type!r} model, not CLIP. "
            "Point it at a local Hugging Face CLIP folder (e.g. openai/clip-vit-base-patch16)."
        )
    try:
        # output_loading_info=True returns (model, info); transformers annotates only the model
        loaded = CLIPModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        model, info = cast(tuple[CLIPModel, dict[str, Any]], loaded)
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(f"{param} = {str(folder)!r}: CLIP weights cannot be loaded ({exc}).") from exc
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise CheckpointError(
            f"{param} = {str(folder)!r}: the weights miss {len(missing)} key(s), e.g. {', '.join(missing[:4])}."
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(f"{param} = {str(folder)!r}: no usable tokenizer ({exc}).") from exc
    return model.eval(), tok


def _features(out: Any) -> torch.Tensor:
    """transformers < 5 returns a tensor, >= 5 an output object with the projection in pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipDissector(Dissector):
    batch_size = 32

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: Any,
        preprocess: Preprocess,
        fingerprint: str,
        folder: Path,
        name: str = "clip",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._preprocess = preprocess
        self._fingerprint = fingerprint
        self.folder = folder
        self.name = name

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _features(self.model.get_image_features(pixel_values=batch.to(self.device)))

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        outs = []
        max_len = int(self.model.config.text_config.max_position_embeddings)
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                tok = self.tokenizer(
                    list(texts[i : i + 256]), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
                )
                tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
                outs.append(_features(self.model.get_text_features(**tok)))
        return torch.cat(outs) if outs else torch.zeros(0, int(self.model.config.projection_dim))

    def image_tower(self) -> ClipVisionTarget:
        """CLIP's vision tower as a target, sharing weights and preprocessing."""
        return ClipVisionTarget(
            self.model, self._preprocess, config_hash("clip_vision", self._fingerprint), name=f"{self.name}.image_tower"
        )

    def fingerprint(self) -> str:
        return self._fingerprint

    def to(self, device: torch.device | str) -> ClipDissector:
        self.model.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": "clip",
            "path": str(self.folder),
            "embed_dim": int(self.model.config.projection_dim),
            "preprocess": self._preprocess.describe,
        }


class ClipVisionTarget(Target):
    """CLIP's vision tower; layers `vision_model.encoder.layers.N` (pool the CLS token)."""

    batch_size = 32

    def __init__(self, model: CLIPModel, preprocess: Preprocess, fingerprint: str, name: str = "clip_vision") -> None:
        self.model = model.eval()
        self._preprocess = preprocess
        self._fingerprint = fingerprint
        self.name = name

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    def forward(self, batch: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.model.vision_model(pixel_values=batch.to(next(self.model.parameters()).device))

    def layers(self) -> list[LayerInfo]:
        n = int(self.model.config.vision_config.num_hidden_layers)
        d = int(self.model.config.vision_config.hidden_size)
        return [
            LayerInfo(f"vision_model.encoder.layers.{i}", d, i, (f"vision_model.encoder.layers[{i}]",))
            for i in range(n)
        ]

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": "clip_vision", "pooling_hint": "cls"}


@DISSECTORS.register("clip")
def build_clip(name: str, params: dict[str, Any], ctx: BuildContext) -> ClipDissector:
    folder = resolve_path(params["path"], ctx.base_dir, "path", folder=True)
    model, tok = load_clip_folder(folder)
    pre = _folder_preprocess(folder)
    fp = config_hash("clip", folder_sha256(folder), pre.describe)
    return ClipDissector(model, tok, pre, fp, folder, name=name).to(ctx.device)


@TARGETS.register("clip_vision")
def build_clip_vision(name: str, params: dict[str, Any], ctx: BuildContext) -> ClipVisionTarget:
    folder = resolve_path(params["path"], ctx.base_dir, "path", folder=True)
    model, _tok = load_clip_folder(folder)
    pre = _folder_preprocess(folder)
    fp = config_hash("clip_vision", folder_sha256(folder), pre.describe)
    t = ClipVisionTarget(model, pre, fp, name=name)
    t.to(ctx.device)
    return t
