"""Writers of real-format Mammo-CLIP checkpoints, and the fidelity recipe helpers.

Why this exists: the loader must open the files that Mammo-CLIP's *training* code
writes, not a tidied-up imitation.  So the writer here goes through the same steps
as a real training run (docs/CHECKPOINTS.md):

1. hydra composes the pre-training config from config groups, with `${now:...}`
   interpolations in the output paths (hydra registers `now` with a resolver cache);
2. the training script resolves it in place, which fills the resolver cache that
   lives at the config's root (a non-empty `collections.defaultdict`);
3. it turns every DictConfig into a plain dict but leaves ListConfig values as they
   are, so `transform.train.transform.affine_scale` stays a ListConfig whose
   `_parent` chain drags the whole omegaconf tree -- cache included -- into the file;
4. the trainer saves `{model, optimizer, scheduler, config, epoch, train_loss}` with
   a plain `torch.save` to `model-epoch-N.tar`, and the file is renamed afterwards,
   so the zip's inner folder and the file name differ.

omegaconf and hydra-core are dev dependencies only; the product never imports them.

The second half holds the deterministic weight recipe of the fidelity fixture
(../shared/data/mammo_clip/reference), shared by test_fidelity and the real-format
fidelity test.  No tests live here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import textwrap
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# --------------------------------------------------------------------------- hydra-style config

#: encoder names as Mammo-CLIP's model configs spell them (section 1.2)
IMAGE_ENCODER_NAMES = {"b5": "tf_efficientnet_b5_ns-detect", "b2": "tf_efficientnetv2-detect"}

_PRIMARY = """\
defaults:
  - base: mammo_base
  - data_train: img_text
  - dataloader: standard
  - tokenizer: clinical_bert
  - transform: clahe
  - model: clip_b5
  - optimizer: adamw
  - scheduler: warmup_cosine
  - loss: contrastive
  - _self_
"""

_GROUPS = {
    "base/mammo_base.yaml": """\
        data_dir: /data/mammo
        period: "n"
        resume_training: false
        epoch_to_start: 0
        checkpoint_to_start: ""
        train_fast: false
        fold: 0
        seed: 10
        amp: true
        mean: 0.3089279
        std: 0.25053555408335154
        image_size_h: 1520
        image_size_w: 912
        text_max_length: 256
        loss_best: contrastive
        data_frac: 1.0
        output:
          root: /runs/img_text_clip
          args_path: ${base.output.root}/${now:%Y-%m-%d}/${now:%H-%M-%S}
          checkpoint: ${base.output.args_path}/checkpoints/
          tensorboard: ${base.output.args_path}/tensorboard/
        """,
    "data_train/img_text.yaml": """\
        img_text_wo_period:
          name: img_text
          data_type: imagetext
          data_dir: ${base.data_dir}
          img_dir: img_text/images_png_CC_MLO
          data_path: img_text/clip_pretrain.csv
          text_max_length: ${base.text_max_length}
          data_frac: ${base.data_frac}
        """,
    "dataloader/standard.yaml": """\
        train: {pin_memory: true, shuffle: true, drop_last: true, num_workers: 0, batch_size: 4}
        valid: {pin_memory: true, shuffle: false, drop_last: false, num_workers: 0, batch_size: 4}
        test: {pin_memory: true, shuffle: false, drop_last: false, num_workers: 4, batch_size: 6}
        """,
    "tokenizer/clinical_bert.yaml": """\
        source: huggingface
        pretrained_model_name_or_path: emilyalsentzer/Bio_ClinicalBERT
        cache_dir: /cache/huggingface/tokenizers
        """,
    "transform/clahe.yaml": """\
        train:
          Resize: {size_h: "${base.image_size_h}", size_w: "${base.image_size_w}"}
          transform:
            affine_transform_degree: 20
            affine_translate_percent: 0.1
            affine_scale: [0.8, 1.2]
            affine_shear: 20
            elastic_transform_alpha: 10
            elastic_transform_sigma: 15
            p: 1.0
        valid:
          Resize: {size_h: "${base.image_size_h}", size_w: "${base.image_size_w}"}
        test:
          Resize: {size_h: "${base.image_size_h}", size_w: "${base.image_size_w}"}
        """,
    "optimizer/adamw.yaml": """\
        name: adamw
        config: {lr: 5.0e-05, weight_decay: 0.0001}
        """,
    "scheduler/warmup_cosine.yaml": """\
        name: cosine
        config: {total_epochs: 15, warmup_epochs: 1}
        """,
    "loss/contrastive.yaml": """\
        breast_clip: {label_smoothing: 0.0, i2i_weight: 1.0, t2t_weight: 0.5, loss_ratio: 1.0}
        """,
}


def _model_group(image_encoder: str, text_model: str, proj_dim: int, pooling: str) -> str:
    return f"""\
        name: clip_custom
        temperature: 0.07
        image_encoder: {{source: cnn, name: {image_encoder}, pretrained: true, model_type: cnn}}
        text_encoder:
          source: huggingface
          name: {text_model}
          pretrained: true
          gradient_checkpointing: false
          pooling: {pooling}
          cache_dir: /cache/huggingface/
          trust_remote_code: true
          mlm_head: true
        projection_head: {{name: linear, dropout: 0.1, proj_dim: {proj_dim}}}
        """


def _write_config_tree(root: Path, image_encoder: str, text_model: str, proj_dim: int, pooling: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pre_train_clip.yaml").write_text(_PRIMARY)
    files = dict(_GROUPS)
    files["model/clip_b5.yaml"] = _model_group(image_encoder, text_model, proj_dim, pooling)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


def _plain_except_lists(node: Any) -> Any:
    """DictConfig -> dict all the way down; ListConfig (and leaves) kept as they are.

    This is what the training script does before handing the config to the trainer.
    Reading `node[key]` returns child containers themselves and leaf values resolved.
    """
    from omegaconf import DictConfig

    if isinstance(node, DictConfig):
        return {key: _plain_except_lists(node[key]) for key in node.keys()}
    return node


def hydra_style_config(
    work_dir: Path,
    *,
    image_encoder: str = IMAGE_ENCODER_NAMES["b5"],
    text_model: str = "emilyalsentzer/Bio_ClinicalBERT",
    proj_dim: int = 512,
    pooling: str = "eos",
    total_steps: int = 1500,
    warmup_steps: int = 100,
) -> dict[str, Any]:
    """The `config` entry of a real checkpoint: hydra-composed, resolved, half-converted."""
    from hydra import compose, initialize_config_dir
    from omegaconf import ListConfig, OmegaConf

    conf_dir = _write_config_tree(Path(work_dir) / "configs", image_encoder, text_model, proj_dim, pooling)
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base=None):
        cfg = compose(config_name="pre_train_clip")  # hydra registers `now` (cached) on init
    OmegaConf.resolve(cfg)
    cache = cfg._get_root()._metadata.resolver_cache
    assert cache and cache.get("now"), "the `now` resolver cache must be filled, as in a real run"
    out = _plain_except_lists(cfg)
    assert isinstance(out["transform"]["train"]["transform"]["affine_scale"], ListConfig)
    # the trainer adds the step counts once it knows the data loader's length
    out["scheduler"]["config"]["total_steps"] = total_steps
    out["scheduler"]["config"]["warmup_steps"] = warmup_steps
    return out


# --------------------------------------------------------------------------- optimizer and scheduler


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up then cosine decay, as a LambdaLR whose lambda is a bound method."""

    def __init__(self, optimizer: torch.optim.Optimizer, wsteps: int, tsteps: int) -> None:
        self.wsteps, self.tsteps = wsteps, tsteps
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.wsteps:
            return float(step) / float(max(1, self.wsteps))
        progress = float(step - self.wsteps) / float(max(1, self.tsteps - self.wsteps))
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(params: Iterable[nn.Parameter]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4)


def trained_optimizer_state(model: nn.Module, steps: int = 2, seed: int = 0) -> tuple[dict, dict]:
    """Real AdamW and scheduler state dicts after a few steps with random gradients."""
    g = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    opt = _optimizer(params)
    sched = WarmupCosine(opt, wsteps=1, tsteps=10)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # the weights under test stay the ones the caller chose
        for p, s in zip(params, saved):
            p.copy_(s)
    return opt.state_dict(), sched.state_dict()


def is_parameter_key(key: str) -> bool:
    """State-dict keys that are parameters (BN running statistics are buffers)."""
    return not key.endswith((".running_mean", ".running_var", ".num_batches_tracked", ".position_ids"))


def compact_optimizer_state(sd: Mapping[str, torch.Tensor], steps: int = 700) -> tuple[dict, dict]:
    """The AdamW/scheduler state dicts of a run over `sd`'s parameters, with broadcast moments.

    Same structure and shapes as the real thing, but every moment is a zero expanded
    to its shape, so the file stays small (a full B5 file carries 1.1 GB of moments).
    """
    dummy = nn.Parameter(torch.zeros(1))
    opt = _optimizer([dummy])
    sched = WarmupCosine(opt, wsteps=100, tsteps=1500)
    template = opt.state_dict()["param_groups"][0]
    shapes = [tuple(v.shape) for k, v in sd.items() if is_parameter_key(k)]
    zero = torch.zeros(())
    state = {
        i: {"step": torch.tensor(float(steps)), "exp_avg": zero.expand(s), "exp_avg_sq": zero.expand(s)}
        for i, s in enumerate(shapes)
    }
    group = dict(template, params=list(range(len(shapes))))
    sched_state = sched.state_dict()
    sched_state.update(last_epoch=steps, _step_count=steps + 1)
    return {"state": state, "param_groups": [group]}, sched_state


# --------------------------------------------------------------------------- the file


def state_dict_with_metadata(tensors: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """An OrderedDict carrying `_metadata` (module versions), as `Module.state_dict()` returns."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict(tensors)
    if getattr(tensors, "_metadata", None) is not None:
        sd._metadata = tensors._metadata  # type: ignore[attr-defined]
        return sd
    prefixes = {""} | {k.rsplit(".", 1)[0] for k in tensors if "." in k}
    sd._metadata = OrderedDict((p, {"version": 1}) for p in sorted(prefixes))  # type: ignore[attr-defined]
    return sd


def save_real_clip_checkpoint(
    path: Path,
    model_sd: Mapping[str, torch.Tensor],
    *,
    config: dict[str, Any],
    optimizer: dict,
    scheduler: dict,
    epoch: int = 7,
    train_loss: float = 1.234,
) -> Path:
    """Save like the trainer (inner folder `model-epoch-N`), then rename to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_as = path.parent / f"model-epoch-{epoch}.tar"
    torch.save(
        {
            "model": state_dict_with_metadata(model_sd),
            "optimizer": optimizer,
            "scheduler": scheduler,
            "config": config,
            "epoch": epoch,
            "train_loss": torch.tensor(train_loss),
        },
        saved_as,
    )
    os.replace(saved_as, path)
    return path


def write_tiny_real_clip(
    path: Path, model: nn.Module, *, epoch: int = 7, proj_dim: int | None = None, pooling: str = "eos"
) -> Path:
    """A real-format file for a small MammoClipModel: real AdamW/LambdaLR states, hydra config."""
    optimizer, scheduler = trained_optimizer_state(model)
    proj = proj_dim or int(model.image_projection.projection.out_features)
    config = hydra_style_config(
        Path(path).parent / f".{Path(path).stem}-hydra", proj_dim=proj, pooling=pooling, text_model="tiny-bert"
    )
    return save_real_clip_checkpoint(
        path, model.state_dict(), config=config, optimizer=optimizer, scheduler=scheduler, epoch=epoch
    )


def shaped_state_dict(entries: Iterable[Mapping[str, Any]]) -> OrderedDict[str, torch.Tensor]:
    """Tensors with the published keys, shapes and dtypes, each a broadcast scalar (tiny on disk)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for e in entries:
        dtype = torch.int64 if e["dtype"] == "int64" else torch.float32
        value = 1.0 if e["key"].endswith(("running_var", ".weight")) and len(e["shape"]) <= 1 else 0.0
        if e["key"] == "logit_scale":
            value = math.log(1 / 0.07)
        out[e["key"]] = torch.tensor(value, dtype=dtype).expand(e["shape"])
    return out


def write_shaped_real_clip(path: Path, entries: list[Mapping[str, Any]], variant: str, epoch: int) -> Path:
    """A real-format B5/B2 file from a published key list, with broadcast (tiny) storages."""
    sd = shaped_state_dict(entries)
    optimizer, scheduler = compact_optimizer_state(sd)
    config = hydra_style_config(
        Path(path).parent / f".{Path(path).stem}-hydra", image_encoder=IMAGE_ENCODER_NAMES[variant]
    )
    return save_real_clip_checkpoint(path, sd, config=config, optimizer=optimizer, scheduler=scheduler, epoch=epoch)


# --------------------------------------------------------------------------- fidelity recipe

RTOL = 1e-4


def recipe_tensor(key: str, shape: list[int]) -> np.ndarray:
    """REFERENCE.md section 1.3, rules R1-R7b, first match wins."""
    if key == "logit_scale":
        return np.asarray(np.log(1.0 / 0.07)).astype(np.float32)
    if key.endswith(".num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    d = np.random.default_rng(zlib.crc32(key.encode("utf-8"))).standard_normal(shape, dtype=np.float64)
    if key.endswith(".running_mean"):
        v = 0.1 * d
    elif key.endswith(".running_var"):
        v = 1.0 + 0.1 * np.abs(d)
    elif key.endswith(".bias"):
        v = 0.1 * d
    elif key.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.1 * d
    elif key.endswith(".weight") and key.startswith("image_encoder."):
        v = d * math.sqrt(2.0 / float(np.prod(shape[1:])))
    elif key.endswith(".weight"):
        v = 0.02 * d
    else:
        raise AssertionError(f"no rule for {key}")
    return v.astype(np.float32)


def recipe(entries: list[dict]) -> dict[str, np.ndarray]:
    return {e["key"]: recipe_tensor(e["key"], e["shape"]) for e in entries}


def sha_all(arrays: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def recipe_image() -> np.ndarray:
    y, x = np.mgrid[0:1520, 0:912].astype(np.int64)
    inside = x * x + (y - 800) ** 2 <= 700 * 700
    v = 60 + (x * y) % 97 + (7 * y + 13 * x) % 64
    return np.where(inside, v, 20).astype(np.uint8)


def recipe_from_key_list(key_list: Path) -> dict[str, np.ndarray]:
    """The recipe weights for every tensor of a published key list file (B5: 553 MB)."""
    return recipe(json.loads(Path(key_list).read_text())["tensors"])


def bio_clinical_bert_folder(root: Path) -> Path:
    """A Bio_ClinicalBERT-shaped config folder (token ids are fed directly; vocab is a stub)."""
    from transformers import BertConfig

    root.mkdir(parents=True, exist_ok=True)
    BertConfig(
        vocab_size=28996,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    ).save_pretrained(root)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "mass"]) + "\n")
    return root


class Checker:
    """REFERENCE.md section 6 tolerance rules; collects every failure before asserting."""

    def __init__(self) -> None:
        self.fails: list[str] = []
        self.n = 0
        self.worst = (0.0, "")

    def _one(self, field: str, a: float, r: float, tol: float) -> None:
        self.n += 1
        err = abs(a - r)
        if tol > 0 and err / tol > self.worst[0]:
            self.worst = (err / tol, field)
        if not err <= tol:
            self.fails.append(f"{field}: got {a!r}, reference {r!r}, tol {tol:.3g}")

    def summary(self, field: str, vec: np.ndarray, ref: dict) -> None:
        vec = np.asarray(vec, dtype=np.float64)
        assert vec.shape == (ref["dim"],), (field, vec.shape, ref["dim"])
        first = [k for k in ref if k.startswith("first")][0]
        for i, r in enumerate(ref[first]):
            self._one(f"{field}.{first}[{i}]", float(vec[i]), r, RTOL * abs(r) + RTOL * ref["rms"])
        self._one(f"{field}.sum", float(vec.sum()), ref["sum"], RTOL * abs(ref["sum"]) + RTOL * ref["l2"])
        self._one(f"{field}.l2", float(np.linalg.norm(vec)), ref["l2"], RTOL * abs(ref["l2"]))

    def scalar(self, field: str, a: float, r: float, tol: float) -> None:
        self._one(field, float(a), float(r), tol)
