"""Builders shared by the test_models_* files: tiny checkpoints and model folders.

Everything is random and built at test time, with exactly the key names and
layout of the real Mammo-CLIP files (docs/CHECKPOINTS.md), so loaders are exercised
the way real files exercise them.  No tests live here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "no",
    "mass",
    "suspicious",
    "calcification",
    "fatty",
    "dense",
    "scattered",
    "areas",
    "of",
    "fibroglandular",
    "density",
    "heterogeneously",
    "extremely",
    "breast",
    "a",
    "the",
    "spiculated",
    "round",
    "##s",
    "##ed",
]


def tiny_bert_config(**kw):
    from transformers import BertConfig

    args = dict(
        vocab_size=len(TINY_VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    args.update(kw)
    return BertConfig(**args)


def make_text_folder(root: Path, with_weights: bool = False, seed: int = 0) -> Path:
    """A local BERT folder: config.json, vocab.txt, tokenizer files (+ weights if asked)."""
    from transformers import BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    cfg = tiny_bert_config()
    cfg.save_pretrained(root)
    (root / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True).save_pretrained(root)
    if with_weights:
        torch.manual_seed(seed)
        BertModel(cfg).save_pretrained(root)
    return root


def random_state_dict(entries, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for `(key, shape, dtype)` entries; BN variances kept positive."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape, dtype in entries:
        if dtype == "int64" or key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = 1.0 + 0.1 * torch.rand(shape, generator=g)
        elif key.endswith(".weight") and len(shape) == 1:
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".weight") and len(shape) >= 2 and key.startswith("image_encoder."):
            fan_in = int(np.prod(shape[1:]))
            out[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out


def tiny_clip_state_dict(seed: int = 0, proj_dim: int = 8, variant: str = "tiny") -> dict[str, torch.Tensor]:
    """A Mammo-CLIP state dict (logit_scale, image_encoder.*, text_encoder.text_encoder.*, projections)."""
    from dissect_study.engine.models.efficientnet import CONFIGS
    from dissect_study.engine.models.mammo_clip import MammoClipModel, new_bert

    model = MammoClipModel(CONFIGS[variant], new_bert(tiny_bert_config()), proj_dim=proj_dim)
    entries = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    sd = random_state_dict(entries, seed)
    sd["logit_scale"] = torch.tensor(float(np.log(1 / 0.07)))
    return sd


def save_clip_checkpoint(path: Path, sd: dict[str, torch.Tensor], **extra) -> Path:
    torch.save({"model": sd, "epoch": 7, "train_loss": torch.tensor(0.5), **extra}, path)
    return path


def tiny_classifier_state_dict(
    clip_sd: dict[str, torch.Tensor], n_class: int, seed: int = 1
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in clip_sd.items() if k.startswith("image_encoder.")}
    head_in = clip_sd["image_encoder._conv_head.weight"].shape[0]
    sd["classifier.classification_head.weight"] = 0.1 * torch.randn(n_class, head_in, generator=g)
    sd["classifier.classification_head.bias"] = 0.1 * torch.randn(n_class, generator=g)
    return sd


def save_classifier(path: Path, sd: dict[str, torch.Tensor], binary: bool = True) -> Path:
    extra = {"auroc": np.float64(0.81)} if binary else {"accuracy": np.float64(0.7), "f1": np.float64(0.6)}
    preds = np.random.default_rng(0).random(5).astype(np.float32 if binary else np.float64)
    torch.save({"model": sd, "predictions": preds if binary else preds.astype(np.int64), "epoch": 3, **extra}, path)
    return path


def grey_image(h: int = 80, w: int = 48, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    return rng.integers(10, top, size=(h, w)).astype(dtype)
