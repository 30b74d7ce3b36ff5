"""`dissect-study inspect PATH`: what is this checkpoint or model folder?

Recognises Mammo-CLIP CLIP checkpoints (B5/B2, with the epoch and the training
config's load-time values), fine-tuned classifiers (task guessed from the head size),
ImageNet EfficientNets (lukemelas or timm layout), other state dicts, Hugging Face
CLIP and text folders.  Loads with the same restricted loader as the engine
(memory-mapped, no pickled code run), so inspecting never runs code from a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dissect_study.engine.models.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_torch_file,
    load_weights_file,
    select_prefix,
    strip_prefix,
)
from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet, detect_config, lukemelas_to_timm
from dissect_study.engine.models.mammo_clip import checkpoint_config

_TASK_GUESS = {1: "binary (mass, calcification or cancer)", 3: "birads", 4: "density", 5: "cancer_birads"}


def _n_params(sd: dict[str, torch.Tensor]) -> int:
    return int(
        sum(
            v.numel()
            for k, v in sd.items()
            if not k.endswith("num_batches_tracked")
            and not k.endswith("running_mean")
            and not k.endswith("running_var")
        )
    )


def _effnet_layers(sd_image: dict[str, torch.Tensor]) -> tuple[str | None, list[dict]]:
    cfg = detect_config(sd_image)
    if cfg is None:
        return None, []
    specs = EfficientNet(cfg).specs
    return cfg.name, [{"name": s.lukemelas_name, "channels": s.out_channels, "aliases": [s.timm_name]} for s in specs]


def _timm_effnet_variant(sd: dict[str, torch.Tensor]) -> str | None:
    """The EfficientNet variant whose timm-renamed keys and shapes all appear in `sd`."""
    for name in ("b5", "b2", "b0"):
        m = EfficientNet(CONFIGS[name])
        own = m.state_dict()
        if all(
            tuple(getattr(sd.get(lukemelas_to_timm(k, m.specs)), "shape", ())) == tuple(v.shape)
            for k, v in own.items()
            if v.dim() > 0
        ):
            return name
    return None


def _inspect_state_dict(sd: dict[str, torch.Tensor], top: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {"n_tensors": len(sd), "n_parameters": _n_params(sd)}
    if "image_encoder._conv_stem.weight" in sd and any(k.startswith("text_encoder.text_encoder.") for k in sd):
        variant, layers = _effnet_layers(select_prefix(sd, "image_encoder."))
        ip = sd.get("image_projection.projection.weight")
        we = sd.get("text_encoder.text_encoder.embeddings.word_embeddings.weight")
        info.update(
            kind="mammo_clip",
            variant=variant,
            layers=layers,
            embedding={
                "image_features": int(ip.shape[1]) if ip is not None else None,
                "text_features": int(we.shape[1]) if we is not None else None,
                "projection": int(ip.shape[0]) if ip is not None else None,
                "text_vocab": int(we.shape[0]) if we is not None else None,
            },
        )
        if "logit_scale" in sd:
            info["logit_scale"] = float(sd["logit_scale"])
    elif "classifier.classification_head.weight" in sd:
        w = sd["classifier.classification_head.weight"]
        variant, layers = _effnet_layers(select_prefix(sd, "image_encoder."))
        info.update(
            kind="classifier",
            variant=variant,
            layers=layers,
            n_class=int(w.shape[0]),
            task_guess=_TASK_GUESS.get(int(w.shape[0]), "unknown"),
            embedding={"image_features": int(w.shape[1])},
        )
    elif "_conv_stem.weight" in sd:
        variant, layers = _effnet_layers(sd)
        info.update(kind="efficientnet_lukemelas", variant=variant, layers=layers)
    elif "conv_stem.weight" in sd and any(k.startswith("blocks.") for k in sd):
        luke = _timm_effnet_variant(sd)
        layers = _effnet_layers(EfficientNet(CONFIGS[luke]).state_dict())[1] if luke else []
        info.update(kind="timm_efficientnet" if luke else "timm_or_state_dict", variant=luke, layers=layers)
    else:
        info.update(kind="state_dict", layers=[])
    if top:
        info["file_entries"] = top
    return info


def _scalarise(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if hasattr(v, "item") and getattr(v, "size", getattr(v, "numel", lambda: 2)) in (1,):
        return v.item()
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return type(v).__name__


def _inspect_folder(p: Path) -> dict[str, Any]:
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(p)!r}: a folder without config.json is not a Hugging Face model folder.")
    cfg = json.loads(cfg_path.read_text())
    mt = cfg.get("model_type")
    weights = sorted(f.name for f in p.iterdir() if f.suffix in (".safetensors", ".bin"))
    info: dict[str, Any] = {
        "path": str(p),
        "model_type": mt,
        "weight_files": weights,
        "tokenizer": any((p / f).is_file() for f in ("vocab.txt", "tokenizer.json", "vocab.json")),
    }
    if mt == "clip":
        v, t = cfg.get("vision_config", {}), cfg.get("text_config", {})
        nv = int(v.get("num_hidden_layers", 12))
        dv = int(v.get("hidden_size", 768))
        info.update(
            kind="clip_folder",
            embedding={
                "projection": cfg.get("projection_dim", 512),
                "vision_hidden": dv,
                "text_hidden": t.get("hidden_size", 512),
            },
            layers=[{"name": f"vision_model.encoder.layers.{i}", "channels": dv, "aliases": []} for i in range(nv)],
        )
    else:
        info.update(
            kind="hf_text_folder",
            embedding={"text_features": cfg.get("hidden_size")},
            n_layers=cfg.get("num_hidden_layers"),
            vocab_size=cfg.get("vocab_size"),
            do_lower_case=_lower_case(p),
            layers=[],
        )
    return info


def _lower_case(p: Path) -> Any:
    tc = p / "tokenizer_config.json"
    if tc.is_file():
        return json.loads(tc.read_text()).get("do_lower_case", "tokenizer default")
    return "tokenizer default (not set in the folder)"


def inspect_path(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Facts about a checkpoint file or model folder, JSON-able (for `inspect --json`).

    `trust_checkpoint` allows full unpickling of files beyond the allow-list (CLI flag).
    """
    p = Path(path)
    if p.is_dir():
        return _inspect_folder(p)
    if not p.is_file():
        raise CheckpointError(f"{str(p)!r}: no such file or folder.")
    training_config: dict[str, Any] = {}
    if p.suffix == ".safetensors":
        sd, top = load_weights_file(p, param=None), {}
    else:
        obj = load_torch_file(p, param=None, trust=trust_checkpoint)
        top = {k: _scalarise(v) for k, v in obj.items() if k != "model"} if isinstance(obj, dict) else {}
        top = {k: v for k, v in top.items() if k not in ("optimizer", "scheduler", "config")}
        sd = strip_prefix(extract_state_dict(obj, p, None), "module.")
        training_config = checkpoint_config(obj)
    info = _inspect_state_dict(sd, top)
    if top.get("epoch") is not None:
        info["epoch"] = top["epoch"]
    if training_config:
        info["training_config"] = training_config
    info["path"] = str(p)
    info["size_bytes"] = p.stat().st_size
    return info


def format_inspect(info: dict[str, Any]) -> str:
    """Human-readable report of `inspect_path`'s result."""
    kind_names = {
        "mammo_clip": "Mammo-CLIP CLIP checkpoint",
        "classifier": "fine-tuned Mammo-CLIP classifier",
        "efficientnet_lukemelas": "EfficientNet weights (lukemelas layout)",
        "timm_efficientnet": "EfficientNet weights (timm layout)",
        "timm_or_state_dict": "state dict (timm-like)",
        "state_dict": "state dict",
        "clip_folder": "Hugging Face CLIP folder",
        "hf_text_folder": "Hugging Face text model folder",
    }
    kind = info.get("kind")
    lines = [f"{info.get('path')}: {kind_names.get(kind, kind) if isinstance(kind, str) else kind}"]
    if info.get("variant"):
        lines.append(f"  variant: EfficientNet-{str(info['variant']).upper()}")
    for key in (
        "epoch",
        "n_parameters",
        "n_tensors",
        "n_class",
        "task_guess",
        "logit_scale",
        "model_type",
        "vocab_size",
        "n_layers",
        "do_lower_case",
        "weight_files",
        "size_bytes",
    ):
        if info.get(key) is not None:
            val = f"{info[key]:,}" if isinstance(info[key], int) and not isinstance(info[key], bool) else info[key]
            lines.append(f"  {key.replace('_', ' ')}: {val}")
    if info.get("embedding"):
        lines.append("  embedding sizes: " + ", ".join(f"{k} {v}" for k, v in info["embedding"].items()))
    if info.get("file_entries"):
        lines.append("  file entries: " + ", ".join(f"{k}={v}" for k, v in info["file_entries"].items()))
    if info.get("training_config"):
        lines.append("  training config: " + ", ".join(f"{k} {v}" for k, v in info["training_config"].items()))
    layers = info.get("layers") or []
    if layers:
        lines.append(f"  hookable layers ({len(layers)}):")
        for lay in layers:
            alias = f"  (= {', '.join(lay['aliases'])})" if lay.get("aliases") else ""
            lines.append(f"    {lay['name']:<32} {lay['channels']:>5} ch{alias}")
    return "\n".join(lines)
