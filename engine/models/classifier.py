"""Fine-tuned Mammo-CLIP classifiers (C1-C4) as targets.

A classifier `.pth` (docs/CHECKPOINTS.md) holds the 852 `image_encoder.*`
tensors of the same lukemelas EfficientNet plus `classifier.classification_head`
(Linear(out_dim, n_class)); its top level adds numpy predictions and a metric, so it
needs the numpy allow-list of `checkpoint.py`.  The file is self-contained for
inference: the base dissector only fixes the architecture variant and the
preprocessing, so C1-C4 see probe images exactly as the dissector does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dissect_study.engine.models.base import BuildContext, Dissector
from dissect_study.engine.models.checkpoint import (
    CheckpointError,
    config_hash,
    extract_state_dict,
    file_sha256,
    load_strict,
    load_torch_file,
    resolve_path,
    select_prefix,
    strip_prefix,
)
from dissect_study.engine.models.efficientnet import EfficientNet, detect_config
from dissect_study.engine.models.mammo_clip import EfficientNetTarget, MammoClipDissector
from dissect_study.engine.registry import TARGETS

#: classes per task (section 2.1); binary tasks use one logit (sigmoid)
TASK_CLASSES: dict[str, int] = {
    "density": 4,
    "birads": 3,
    "cancer_birads": 5,
    "mass": 1,
    "calcification": 1,
    "cancer": 1,
}
HEAD_KEY = "classifier.classification_head.weight"


class LinearHead(nn.Module):
    """`classifier.classification_head`: the checkpoint's key level."""

    def __init__(self, din: int, n_class: int) -> None:
        super().__init__()
        self.classification_head = nn.Linear(din, n_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classification_head(x)


class ClassifierModel(nn.Module):
    """BreastClipClassifier's inference path: pooled features -> linear logits."""

    def __init__(self, encoder: EfficientNet, n_class: int) -> None:
        super().__init__()
        self.image_encoder = encoder
        self.classifier = LinearHead(encoder.out_dim, n_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.image_encoder(x))


def _scalar(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (int, float, str, bool)):
        return v
    return None


def load_classifier(
    checkpoint: Path,
    base: Dissector,
    *,
    task: str | None = None,
    n_class: int | None = None,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
    name: str = "classifier",
) -> EfficientNetTarget:
    """A classifier target whose layers are the encoder's `_blocks.i` and output the logits."""
    if not isinstance(base, MammoClipDissector):
        raise CheckpointError(
            f"base: a classifier target needs a Mammo-CLIP dissector as its base (mammo_clip or "
            f"mammo_clip_general), got {type(base).__name__}."
        )
    obj = load_torch_file(checkpoint, param="checkpoint", trust=trust, log=log)
    sd = strip_prefix(extract_state_dict(obj, checkpoint, "checkpoint", key="model"), "module.")
    if HEAD_KEY not in sd:
        kind = " (it looks like a Mammo-CLIP pre-training checkpoint)" if "logit_scale" in sd else ""
        raise CheckpointError(
            f"checkpoint = {str(checkpoint)!r}: key {HEAD_KEY!r} is missing{kind}; this is not a fine-tuned "
            "Mammo-CLIP classifier. Use image_tower(<dissector>) for a pre-trained image tower."
        )
    rows = int(sd[HEAD_KEY].shape[0])
    expected = n_class if n_class is not None else (TASK_CLASSES.get(task) if task else None)
    if expected is not None and rows != expected:
        why = f"n_class = {n_class}" if n_class is not None else f"task = {task!r} has {expected} class(es)"
        raise CheckpointError(
            f"checkpoint = {str(checkpoint)!r}: key {HEAD_KEY!r} has {rows} output row(s) but {why}. "
            "Wrong number of classes: check the task / n_class or the file."
        )
    cfg = base.model.image_encoder.cfg
    detected = detect_config(select_prefix(sd, "image_encoder."))
    if detected is not None and detected.name != cfg.name:
        raise CheckpointError(
            f"checkpoint = {str(checkpoint)!r}: the classifier's image encoder is EfficientNet-"
            f"{detected.name.upper()} but its base dissector is EfficientNet-{cfg.name.upper()}. "
            "Name the dissector the classifier was fine-tuned from as `base`."
        )
    model = ClassifierModel(EfficientNet(cfg), rows)
    load_strict(
        model,
        sd,
        checkpoint,
        param="checkpoint",
        what=f"Mammo-CLIP classifier (EfficientNet-{cfg.name.upper()}, {rows} class(es))",
    )
    model.eval()
    extras = {k: _scalar(v) for k, v in obj.items() if k != "model"} if isinstance(obj, dict) else {}
    facts = {
        "source": "classifier",
        "checkpoint": str(checkpoint),
        "task": task,
        "n_class": rows,
        "variant": cfg.name,
        "output": "sigmoid" if rows == 1 else "softmax",
        "file_metrics": {k: v for k, v in extras.items() if v is not None},
    }
    fp = config_hash("classifier", file_sha256(checkpoint), base.preprocess.describe, cfg.name, rows)
    return EfficientNetTarget(
        model.image_encoder, base.preprocess, fp, name=name, head=model.classifier, owner=model, facts=facts
    )


@TARGETS.register("classifier")
def build_classifier(name: str, params: dict[str, Any], ctx: BuildContext) -> EfficientNetTarget:
    base_name = params["base"]
    if base_name not in ctx.dissectors:
        raise CheckpointError(f"base: dissector {base_name!r} has not been built (declare it before this target).")
    ckpt = resolve_path(params["checkpoint"], ctx.base_dir, "checkpoint")
    t = load_classifier(
        ckpt,
        ctx.dissectors[base_name],
        task=params.get("task"),
        n_class=params.get("n_class"),
        trust=bool(params.get("trust_checkpoint", False)),
        log=ctx.warning,
        name=name,
    )
    return t.to(ctx.device)
