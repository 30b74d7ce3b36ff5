"""Mammo-CLIP as a dissector (F_mammo and F_general) and its image tower as a target.

The module tree mirrors the checkpoint's key layout exactly -- `logit_scale`,
`image_encoder.*` (lukemelas EfficientNet), `text_encoder.text_encoder.*` (HF
BertModel), `image_projection.projection.*`, `text_projection.projection.*` -- so
`ckpt['model']` loads strictly with no renaming (docs/CHECKPOINTS.md).

Inference follows docs/METHOD.md §7.1 and §7.3: images are per-image min-max scaled and z-scored with
Mammo-CLIP's scalar mean/std at 1520x912; texts are tokenised by whatever
AutoTokenizer does for the user's local Bio_ClinicalBERT folder (max_length 256)
and pooled at the last real token ([SEP], "eos" pooling); both go through their
linear projection.  `encode_*` return *unnormalised* embeddings (the engine
normalises when it forms P).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dissect_study.engine.models.base import BuildContext, Dissector, LayerInfo, Preprocess, Target
from dissect_study.engine.models.checkpoint import (
    CheckpointError,
    config_hash,
    extract_state_dict,
    file_sha256,
    folder_sha256,
    load_strict,
    load_torch_file,
    load_weights_file,
    plain_value,
    resolve_path,
    select_prefix,
    strip_prefix,
)
from dissect_study.engine.models.efficientnet import (
    CONFIGS,
    EfficientNet,
    EffNetConfig,
    detect_config,
    lukemelas_to_timm,
    stage_repeats,
)
from dissect_study.engine.registry import DISSECTORS

if TYPE_CHECKING:  # transformers is imported lazily, after the offline settings
    from transformers import BertModel

MEAN = 0.3089279
STD = 0.25053555408335154
IMAGE_SIZE = (1520, 912)  # (H, W)
TEXT_MAX_LENGTH = 256
TEXT_BATCH = 200
MIN_RANGE = 1e-8  # per-image min-max guard: a blank image becomes all zeros, not NaN

#: keys a CLIP checkpoint may carry beyond the module's own (old transformers buffer)
TOLERATED_EXTRAS = ("text_encoder.text_encoder.embeddings.position_ids",)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- preprocess


def to_float_image(image: np.ndarray) -> torch.Tensor:
    """Decoded image -> float32 (3, H, W); grey is replicated, alpha dropped, values kept."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32, copy=False))
    return t.permute(2, 0, 1).contiguous()


def resize_area(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (C, H, W) with area averaging (cv2 INTER_AREA for downscaling); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="area")[0]


def mammo_clip_normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max over all channels, then Mammo-CLIP's scalar z-score, in float32.

    The order of float32 operations follows the reference path exactly, so a
    1520x912 image gives bit-identical tensors (tests/engine/models/test_fidelity.py).
    """
    x = x - x.min()
    top = x.max()
    x = x / top if float(top) > MIN_RANGE else torch.zeros_like(x)
    return (x - MEAN) / STD


def mammo_clip_preprocess(size: tuple[int, int] = IMAGE_SIZE) -> Preprocess:
    """Mammo-CLIP's inference preprocessing; `size` (H, W) override for small test runs."""
    size = (int(size[0]), int(size[1]))

    def fn(image: np.ndarray) -> torch.Tensor:
        return mammo_clip_normalise(resize_area(to_float_image(image), size))

    describe = {
        "kind": "mammo_clip",
        "channels": "grey replicated to 3",
        "resize": {"size_hw": list(size), "method": "torch area interpolation (INTER_AREA-like), only if needed"},
        "scale": "per-image min-max over all channels (blank image -> 0)",
        "mean": MEAN,
        "std": STD,
    }
    return Preprocess(describe=describe, fn=fn)


# --------------------------------------------------------------------------- modules


class Projection(nn.Module):
    """Linear projection head; the attribute name gives the `.projection.` key level."""

    def __init__(self, din: int, dout: int) -> None:
        super().__init__()
        self.projection = nn.Linear(din, dout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class TextTower(nn.Module):
    """Holds the HF BertModel under `text_encoder` (the checkpoint's double prefix)."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.text_encoder = bert


def eos_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last real token of each row ([SEP] for right-padded BERT input)."""
    idx = attention_mask.long().sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class MammoClipModel(nn.Module):
    """BreastClip's inference path with the checkpoint's parameter names."""

    def __init__(self, cfg: EffNetConfig, bert: BertModel, proj_dim: int = 512) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_encoder = EfficientNet(cfg)
        self.text_encoder = TextTower(bert)
        hidden = int(bert.config.hidden_size)
        self.image_projection = Projection(self.image_encoder.out_dim, proj_dim)
        self.text_projection = Projection(hidden, proj_dim)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_projection(self.image_encoder(x))

    def text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        out = self.text_encoder.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return eos_pool(out.last_hidden_state, attention_mask)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.text_projection(self.text_features(input_ids, attention_mask, token_type_ids))


# --------------------------------------------------------------------------- text folder


def _hf_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_text_config(folder: Path, param: str = "text") -> Any:
    """BertConfig from the user's local folder (no download)."""
    _hf_offline()
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{param} = {str(folder)!r}: no config.json in this folder. Point `{param}` at a local copy of "
            "emilyalsentzer/Bio_ClinicalBERT (config.json, vocab.txt, tokenizer files)."
        )
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(f"{param} = {str(folder)!r}: config.json cannot be read ({exc}).") from exc
    if getattr(config, "model_type", None) != "bert":
        raise CheckpointError(
            f"{param} = {str(folder)!r}: config.json describes a {config.model_type!r} model; Mammo-CLIP's "
            "text tower is a BERT model (Bio_ClinicalBERT)."
        )
    return config


def load_tokenizer(folder: Path, param: str = "text") -> Any:
    """Whatever AutoTokenizer does for the folder (Bio_ClinicalBERT: lower-cases by default)."""
    _hf_offline()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(
            f"{param} = {str(folder)!r}: no usable tokenizer in this folder ({type(exc).__name__}: {exc}). "
            "It needs vocab.txt (and optionally tokenizer.json / tokenizer_config.json)."
        ) from exc
    if getattr(tok, "bos_token_id", None) is None and getattr(tok, "cls_token_id", None) is not None:
        try:
            tok.bos_token = tok.cls_token  # as Mammo-CLIP's loader does
        except Exception:  # noqa: BLE001 - cosmetic
            pass
    return tok


def new_bert(config: Any) -> BertModel:
    _hf_offline()
    from transformers import BertModel

    return BertModel(config, add_pooling_layer=True).eval()


# --------------------------------------------------------------------------- target


def paper_layer_aliases(cfg: EffNetConfig) -> dict[str, str]:
    """early/middle/last = last block of the first, middle and last stage (B5: 2, 19, 38)."""
    ends = np.cumsum(stage_repeats(cfg)) - 1
    mid = len(ends) // 2
    return {"early": f"_blocks.{ends[0]}", "middle": f"_blocks.{ends[mid]}", "last": f"_blocks.{ends[-1]}"}


def effnet_layers(encoder: EfficientNet) -> list[LayerInfo]:
    """The hookable blocks with their accepted spellings (timm and Mammo-CLIP-Dissect paths)."""
    out = []
    for s in encoder.specs:
        i = s.index
        aliases = (s.timm_name, f"_blocks[{i}]", f"image_encoder._blocks.{i}", f"image_encoder._blocks[{i}]")
        out.append(LayerInfo(name=s.lukemelas_name, channels=s.out_channels, index=i, aliases=aliases))
    return out


class EfficientNetTarget(Target):
    """A lukemelas EfficientNet as a target; hooks live on the encoder (`_blocks.i`).

    `head` (optional) maps pooled features to the model's output (a classifier head);
    `owner` is the whole model, moved by `to()`.
    """

    batch_size = 4

    def __init__(
        self,
        encoder: EfficientNet,
        preprocess: Preprocess,
        fingerprint: str,
        *,
        name: str = "image_tower",
        head: nn.Module | None = None,
        owner: nn.Module | None = None,
        facts: dict[str, Any] | None = None,
    ) -> None:
        self.encoder = encoder
        self._preprocess = preprocess
        self._fingerprint = fingerprint
        self.name = name
        self.head = head
        self.owner = owner or encoder
        self.facts = facts or {}
        self.owner.eval()

    @property
    def module(self) -> nn.Module:
        return self.encoder

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.owner.eval()
        with torch.no_grad():
            pooled = self.encoder(batch)
            return self.head(pooled) if self.head is not None else pooled

    def layers(self) -> list[LayerInfo]:
        return effnet_layers(self.encoder)

    def aliases(self) -> dict[str, str]:
        return paper_layer_aliases(self.encoder.cfg)

    def fingerprint(self) -> str:
        return self._fingerprint

    def to(self, device: torch.device | str) -> EfficientNetTarget:
        self.owner.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": f"EfficientNet-{self.encoder.cfg.name.upper()} (lukemelas layout)",
            "n_layers": len(self.encoder.specs),
            **self.facts,
        }


# --------------------------------------------------------------------------- dissector


class MammoClipDissector(Dissector):
    """Mammo-CLIP (or F_general) as a dissector; `image_tower()` gives the matching target."""

    batch_size = 4

    def __init__(
        self,
        model: MammoClipModel,
        tokenizer: Any,
        preprocess: Preprocess,
        *,
        fingerprint: str,
        facts: dict[str, Any],
        name: str = "mammo_clip",
        train_mode: bool = False,
        text_batch: int = TEXT_BATCH,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._preprocess = preprocess
        self._fingerprint = fingerprint
        self.facts = facts
        self.name = name
        self._towers: list[EfficientNetTarget] = []
        self._train_mode = False
        self.train_mode = train_mode
        self.text_batch = text_batch

    @property
    def train_mode(self) -> bool:
        """Reference parity (docs/METHOD.md §11.1): BN batch statistics, dropout, stochastic depth."""
        return self._train_mode

    @train_mode.setter
    def train_mode(self, value: bool) -> None:
        # Train-mode forwards mutate BN running statistics; towers handed out earlier
        # must not see that, so they get their own copy of the encoder now.
        if value and not self._train_mode:
            for t in self._towers:
                if t.encoder is self.model.image_encoder:
                    t.encoder = t.owner = copy.deepcopy(self.model.image_encoder).eval()
        self._train_mode = bool(value)

    @property
    def preprocess(self) -> Preprocess:
        return self._preprocess

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        # train_mode reproduces the reference code's bug (BN batch statistics, dropout);
        # eval is the default (docs/METHOD.md §11.1).
        self.model.eval()
        self.model.image_encoder.train(self.train_mode)
        with torch.no_grad():
            return self.model.encode_image(batch.to(self.device))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=TEXT_MAX_LENGTH, return_tensors="pt"
        )

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.model.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), self.text_batch):
                tok = self.tokenize(texts[i : i + self.text_batch])
                tok = {k: v.to(self.device) for k, v in tok.items()}
                outs.append(self.model.encode_text(tok["input_ids"], tok["attention_mask"], tok.get("token_type_ids")))
        if not outs:
            return torch.zeros(0, self.model.text_projection.projection.out_features)
        return torch.cat(outs)

    def tower_fingerprint(self) -> str:
        """The fingerprint `image_tower()` gives its target (`SharesImagePass`)."""
        return config_hash("image_tower", self._fingerprint)

    def embed_tower_output(self, out: torch.Tensor) -> torch.Tensor:
        """The image embedding from the tower's pooled features: the projection alone (`SharesImagePass`)."""
        self.model.eval()
        with torch.no_grad():
            return self.model.image_projection(out.to(self.device)).float().cpu()

    def image_tower(self) -> EfficientNetTarget:
        """The image encoder as a target, sharing weights and preprocessing.

        In train mode the dissector mutates BN statistics, so the target gets its own copy.
        """
        enc = copy.deepcopy(self.model.image_encoder) if self.train_mode else self.model.image_encoder
        fp = self.tower_fingerprint()
        tower = EfficientNetTarget(
            enc,
            self._preprocess,
            fp,
            name=f"{self.name}.image_tower",
            facts={"source": self.facts.get("source"), "variant": self.facts.get("variant")},
        )
        self._towers.append(tower)
        return tower

    def fingerprint(self) -> str:
        return self._fingerprint

    def to(self, device: torch.device | str) -> MammoClipDissector:
        self.model.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.facts}


# --------------------------------------------------------------------------- building


def _variant_config(sd_image: dict[str, torch.Tensor], variant: str, path: Path, param: str) -> EffNetConfig:
    detected = detect_config(sd_image)
    if variant == "auto":
        if detected is None:
            head = sd_image.get("_conv_head.weight")
            raise CheckpointError(
                f"{param} = {str(path)!r}: the image encoder matches no known EfficientNet variant "
                f"(head weight shape {list(head.shape) if head is not None else 'missing'}; B5 has 2048 "
                "output channels, B2 1408). Is this a Mammo-CLIP checkpoint?"
            )
        return detected
    cfg = CONFIGS[variant]
    if detected is not None and detected.name != cfg.name:
        raise CheckpointError(
            f"{param} = {str(path)!r}: variant = {variant!r} was requested but the file holds an "
            f'EfficientNet-{detected.name.upper()} image encoder. Use variant = "auto" or "{detected.name}".'
        )
    return cfg


#: where the training config keeps the values that matter at load time (section 1.2)
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "image_encoder": ("model", "image_encoder", "name"),
    "text_encoder": ("model", "text_encoder", "name"),
    "text_pooling": ("model", "text_encoder", "pooling"),
    "projection_dim": ("model", "projection_head", "proj_dim"),
    "temperature": ("model", "temperature"),
    "image_size_h": ("base", "image_size_h"),
    "image_size_w": ("base", "image_size_w"),
    "mean": ("base", "mean"),
    "std": ("base", "std"),
    "text_max_length": ("base", "text_max_length"),
}
#: the training code's image encoder names; `-v2-detect` is lukemelas B2 despite its name
CONFIG_ENCODERS = {"tf_efficientnet_b5_ns-detect": "b5", "tf_efficientnetv2-detect": "b2"}


def checkpoint_config(obj: Any) -> dict[str, Any]:
    """The training config's load-time values from a checkpoint dict ({} when it has none).

    Reads the plain dicts the trainer saved; inert omegaconf stand-ins are unwrapped.
    """
    cfg = obj.get("config") if isinstance(obj, dict) else None
    out: dict[str, Any] = {}
    if not isinstance(cfg, dict):
        return out
    for name, path in CONFIG_FIELDS.items():
        value: Any = cfg
        for part in path:
            value = plain_value(value)
            value = value.get(part) if isinstance(value, dict) else None
        value = plain_value(value)
        if isinstance(value, (str, int, float, bool)):
            out[name] = value
    return out


def _check_config(
    cfg: dict[str, Any], variant: str, proj_dim: int, path: Path, log: Callable[[str], None] | None
) -> None:
    """Refuse what we would compute wrongly; warn where the file disagrees with itself or us."""
    pooling = cfg.get("text_pooling")
    if pooling is not None and pooling != "eos":
        raise CheckpointError(
            f"checkpoint = {str(path)!r}: config model.text_encoder.pooling = {pooling!r}, but this loader "
            "implements Mammo-CLIP's 'eos' pooling (the last real token, as in the released checkpoints). "
            "Embeddings would be wrong; use a checkpoint trained with pooling 'eos'."
        )
    notes = []
    named = CONFIG_ENCODERS.get(str(cfg.get("image_encoder")))
    if named is not None and named != variant:
        notes.append(
            f"its config names image encoder {cfg['image_encoder']!r} (EfficientNet-{named.upper()}) "
            f"but the weights are EfficientNet-{variant.upper()}; the weights are used"
        )
    if cfg.get("projection_dim") not in (None, proj_dim):
        notes.append(
            f"its config says proj_dim {cfg['projection_dim']} but the projection weights give "
            f"{proj_dim}; the weights are used"
        )
    for key, ours in (("mean", MEAN), ("std", STD), ("image_size_h", IMAGE_SIZE[0]), ("image_size_w", IMAGE_SIZE[1])):
        if key in cfg and not math.isclose(float(cfg[key]), float(ours), rel_tol=1e-6):
            notes.append(f"its config has base.{key} = {cfg[key]} but Mammo-CLIP preprocessing uses {ours}")
    for note in notes:
        message = f"checkpoint {path}: {note}"
        if log is not None:
            log(message)
        else:
            logger.warning(message)


def load_mammo_clip(
    checkpoint: Path,
    text_dir: Path,
    *,
    variant: str = "auto",
    trust: bool = False,
    log: Callable[[str], None] | None = None,
    image_size: tuple[int, int] = IMAGE_SIZE,
) -> MammoClipDissector:
    """Build the F_mammo dissector from a CLIP checkpoint and a local Bio_ClinicalBERT folder."""
    obj = load_torch_file(checkpoint, param="checkpoint", trust=trust, log=log)
    sd = strip_prefix(extract_state_dict(obj, checkpoint, "checkpoint", key="model"), "module.")
    train_cfg = checkpoint_config(obj)
    if "image_encoder._conv_stem.weight" not in sd or not any(k.startswith("text_encoder.text_encoder.") for k in sd):
        kind = (
            "a fine-tuned classifier" if "classifier.classification_head.weight" in sd else "not a Mammo-CLIP CLIP file"
        )
        raise CheckpointError(
            f"checkpoint = {str(checkpoint)!r}: this is {kind} (no image_encoder.* and "
            "text_encoder.text_encoder.* keys). A mammo_clip dissector needs the pre-training checkpoint "
            "(e.g. b5-model-best-epoch-7.tar); classifiers are targets: classifier(checkpoint=..., base=...)."
        )
    cfg = _variant_config(select_prefix(sd, "image_encoder."), variant, checkpoint, "checkpoint")
    bert_cfg = load_text_config(text_dir)
    tokenizer = load_tokenizer(text_dir)
    proj = sd.get("image_projection.projection.weight")
    proj_dim = int(proj.shape[0]) if proj is not None else 512
    _check_config(train_cfg, cfg.name, proj_dim, checkpoint, log)
    model = MammoClipModel(cfg, new_bert(bert_cfg), proj_dim=proj_dim)
    load_strict(
        model,
        sd,
        checkpoint,
        param="checkpoint",
        what=f"Mammo-CLIP {cfg.name.upper()} model with the text tower of {text_dir}",
        ignore=TOLERATED_EXTRAS,
    )
    fp = config_hash("mammo_clip", file_sha256(checkpoint), folder_sha256(text_dir), cfg.name, list(image_size))
    facts = {
        "source": "mammo_clip",
        "variant": cfg.name,
        "checkpoint": str(checkpoint),
        "text": str(text_dir),
        "image_dim": model.image_encoder.out_dim,
        "text_dim": int(bert_cfg.hidden_size),
        "embed_dim": int(model.image_projection.projection.out_features),
        "logit_scale": float(model.logit_scale.detach()),
        "text_pooling": "eos ([SEP])",
        "text_max_length": TEXT_MAX_LENGTH,
        "epoch": obj.get("epoch") if isinstance(obj, dict) else None,
        "training_config": train_cfg,
    }
    del obj, sd  # the file's memory map goes with them; the model holds copies
    return MammoClipDissector(model, tokenizer, mammo_clip_preprocess(image_size), fingerprint=fp, facts=facts)


def _imagenet_state_dict(path: Path, cfg: EffNetConfig, trust: bool, log: Any) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet weights in lukemelas or timm layout -> lukemelas keys (no head)."""
    sd = strip_prefix(load_weights_file(path, param="imagenet_weights", trust=trust, log=log), "module.")
    if "conv_stem.weight" in sd:  # timm layout: rename to lukemelas
        ref = EfficientNet(cfg)
        back = {lukemelas_to_timm(k, ref.specs): k for k in ref.state_dict()}
        sd = {back.get(k, k): v for k, v in sd.items()}
    head = ("_fc.", "classifier.")  # ImageNet classifier heads: not part of Mammo-CLIP
    return {k: v for k, v in sd.items() if not k.startswith(head)}


def load_mammo_clip_general(
    imagenet_weights: Path,
    text_dir: Path,
    *,
    variant: str = "b5",
    projection_seed: int = 0,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
    image_size: tuple[int, int] = IMAGE_SIZE,
) -> MammoClipDissector:
    """F_general: ImageNet image tower + Bio_ClinicalBERT + *seeded* random projections.

    The reference left the projections unseeded (docs/METHOD.md §11.2); we seed them
    with `projection_seed` and record the seed and the initialisation in `describe()`.
    """
    cfg = CONFIGS[variant]
    sd_img = _imagenet_state_dict(imagenet_weights, cfg, trust, log)
    _hf_offline()
    from transformers import BertModel

    load_text_config(text_dir)
    tokenizer = load_tokenizer(text_dir)
    try:
        # output_loading_info=True returns (model, info); transformers annotates only the model
        loaded = BertModel.from_pretrained(str(text_dir), local_files_only=True, output_loading_info=True)
        bert, info = cast(tuple[BertModel, dict[str, Any]], loaded)
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(
            f"text = {str(text_dir)!r}: the BERT weights cannot be loaded ({type(exc).__name__}: {exc}). "
            "F_general needs the folder's weights (pytorch_model.bin or model.safetensors)."
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k and "position_ids" not in k]
    if missing:
        raise CheckpointError(
            f"text = {str(text_dir)!r}: the folder's weights miss {len(missing)} BERT key(s), e.g. "
            f"{', '.join(missing[:4])}. Is this the Bio_ClinicalBERT folder with its weights?"
        )
    model = MammoClipModel(cfg, bert.eval())
    load_strict(
        model.image_encoder,
        sd_img,
        imagenet_weights,
        param="imagenet_weights",
        what=f"EfficientNet-{cfg.name.upper()} image encoder",
    )
    gen = torch.Generator().manual_seed(int(projection_seed))
    for proj in (model.image_projection.projection, model.text_projection.projection):
        bound = 1.0 / math.sqrt(proj.in_features)
        with torch.no_grad():
            proj.weight.uniform_(-bound, bound, generator=gen)
            proj.bias.uniform_(-bound, bound, generator=gen)
    fp = config_hash(
        "mammo_clip_general",
        file_sha256(imagenet_weights),
        folder_sha256(text_dir),
        cfg.name,
        int(projection_seed),
        list(image_size),
    )
    facts = {
        "source": "mammo_clip_general",
        "variant": cfg.name,
        "imagenet_weights": str(imagenet_weights),
        "text": str(text_dir),
        "image_dim": model.image_encoder.out_dim,
        "text_dim": int(bert.config.hidden_size),
        "embed_dim": 512,
        "projection_seed": int(projection_seed),
        "projection_init": "U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, torch.Generator seeded, "
        "image projection drawn first",
        "text_pooling": "eos ([SEP])",
        "text_max_length": TEXT_MAX_LENGTH,
    }
    return MammoClipDissector(
        model, tokenizer, mammo_clip_preprocess(image_size), fingerprint=fp, facts=facts, name="mammo_clip_general"
    )


@DISSECTORS.register("mammo_clip")
def build_mammo_clip(name: str, params: dict[str, Any], ctx: BuildContext) -> MammoClipDissector:
    ckpt = resolve_path(params["checkpoint"], ctx.base_dir, "checkpoint")
    text = resolve_path(params["text"], ctx.base_dir, "text", folder=True)
    d = load_mammo_clip(
        ckpt,
        text,
        variant=params.get("variant", "auto"),
        trust=bool(params.get("trust_checkpoint", False)),
        log=ctx.warning,
        image_size=tuple(params.get("image_size", IMAGE_SIZE)),
    )
    d.name = name
    d.train_mode = bool(params.get("train_mode", False))
    return d.to(ctx.device)


@DISSECTORS.register("mammo_clip_general")
def build_mammo_clip_general(name: str, params: dict[str, Any], ctx: BuildContext) -> MammoClipDissector:
    weights = resolve_path(params["imagenet_weights"], ctx.base_dir, "imagenet_weights")
    text = resolve_path(params["text"], ctx.base_dir, "text", folder=True)
    d = load_mammo_clip_general(
        weights,
        text,
        variant=params.get("variant", "b5"),
        projection_seed=int(params.get("projection_seed", 0)),
        trust=bool(params.get("trust_checkpoint", False)),
        log=ctx.warning,
        image_size=tuple(params.get("image_size", IMAGE_SIZE)),
    )
    d.name = name
    return d.to(ctx.device)
