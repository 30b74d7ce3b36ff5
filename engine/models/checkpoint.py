"""Safe checkpoint loading: weights_only unpickling, exact allow-lists, strict keys.

Why this module exists: real Mammo-CLIP files are not plain tensor dicts.  The CLIP
`.tar` carries a pickled omegaconf `ListConfig` chain inside `config`, and the
fine-tuned classifier `.pth` carries numpy arrays and scalars
(MAMMO_CLIP_FORMAT.md sections 1.4-1.5).  `torch.load(weights_only=True)` refuses
both.  We never fall back to full unpickling silently: we read the file's global
names first, allow exactly the known inert ones (omegaconf classes become inert
stand-ins registered under their pickled names -- omegaconf is not installed --;
numpy reconstruction helpers are the real ones), and refuse anything else with a
message that says how to opt in (`trust_checkpoint=true`).

Every user mistake (missing file, truncated file, wrong file type, missing key,
shape mismatch) becomes a `CheckpointError`: one paragraph naming the file, the
study parameter and the key.
"""

from __future__ import annotations

import collections
import hashlib
import os
import tarfile
import typing
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from dissect_study.errors import DissectStudyError


class CheckpointError(DissectStudyError):
    """A checkpoint or model folder cannot be used; the message says why and what to do."""


def _where(path: str | os.PathLike[str], param: str | None) -> str:
    return f"{param} = {str(path)!r}" if param else repr(str(path))


def resolve_path(value: str | os.PathLike[str], base_dir: str | os.PathLike[str], param: str,
                 *, folder: bool = False) -> Path:
    """Resolve a study path parameter against the study's folder and check it exists."""
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = Path(base_dir) / p
    if folder:
        if not p.is_dir():
            raise CheckpointError(
                f"{param}: folder {str(p)!r} does not exist (relative paths are resolved against the "
                f"study file's folder {str(base_dir)!r}). Point `{param}` at a local folder."
            )
    elif not p.is_file():
        hint = " It is a folder; name the file inside it." if p.is_dir() else ""
        raise CheckpointError(
            f"{param}: file {str(p)!r} does not exist (relative paths are resolved against the study "
            f"file's folder {str(base_dir)!r}).{hint} Check the path in the study."
        )
    return p


# --------------------------------------------------------------------------- hashing

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, streamed, memoised per (path, size, mtime): 1.6 GB once per run."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def folder_sha256(path: str | os.PathLike[str]) -> str:
    """Hash of a model folder: names and contents of its files, in sorted order."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def config_hash(*parts: Any) -> str:
    """Stable hash of JSON-able configuration parts (fingerprints = weights + config)."""
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- allow-lists


class InertPickled:
    """Stand-in for a pickled config object whose library is not installed.

    It accepts any constructor arguments and keeps the pickled state as data; it has
    no behaviour, so unpickling it cannot run code.
    """

    pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = kwargs or None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


#: omegaconf/typing names found in Mammo-CLIP CLIP checkpoints (section 1.4); omegaconf
#: classes become inert stand-ins, the rest are the harmless real objects.
_OMEGACONF = (
    "omegaconf.listconfig.ListConfig",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
)
_REAL: dict[str, Any] = {
    "typing.Any": typing.Any,
    "collections.defaultdict": collections.defaultdict,
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.str": str,
    "builtins.tuple": tuple,
    "builtins.bool": bool,
}


def _numpy_entries() -> dict[str, Any]:
    """numpy objects of classifier files (section 1.5), under old and new module names."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved the callables
    out: dict[str, Any] = {
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = core.multiarray._reconstruct
        out[f"{mod}.scalar"] = core.multiarray.scalar
    for name in dir(np.dtypes):
        if name.endswith("DType"):
            out[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return out


_STANDINS: dict[str, type] = {}


def _standin(name: str) -> type:
    if name not in _STANDINS:
        _STANDINS[name] = type(name.rsplit(".", 1)[-1], (InertPickled,), {"pickled_name": name})
    return _STANDINS[name]


def allowed_globals() -> dict[str, Any]:
    """Every extra global name we accept, mapped to the object it unpickles to."""
    out: dict[str, Any] = {n: _standin(n) for n in _OMEGACONF}
    out.update(_REAL)
    out.update(_numpy_entries())
    return out


# --------------------------------------------------------------------------- loading


def _check_container(path: Path, param: str | None) -> None:
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{_where(path, param)}: the file is empty. Copy the checkpoint again.")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        return
    if tarfile.is_tarfile(path):  # before the zip test: a tar holding a zip has its end record
        raise CheckpointError(
            f"{_where(path, param)}: this is a real tar archive, not a PyTorch checkpoint. Mammo-CLIP's "
            "`.tar` files are PyTorch zip archives despite the name; a re-packed file fails with "
            "\"filename 'storages' not found\" in the original code too. Use the file as downloaded."
        )
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return  # legacy (pre-1.6) torch.save format: a plain pickle stream
    if head.startswith(b"PK"):
        raise CheckpointError(
            f"{_where(path, param)}: the zip archive is truncated or corrupt ({size} bytes). "
            "The download or copy was probably interrupted; copy the file again."
        )
    raise CheckpointError(
        f"{_where(path, param)}: not a PyTorch checkpoint (the file starts with {head!r}). "
        "Expected a file written by torch.save (.tar/.pth/.pt/.bin) or a .safetensors file."
    )


def load_torch_file(path: str | os.PathLike[str], *, param: str | None = "checkpoint",
                    trust: bool = False, log: Any = None) -> Any:
    """`torch.load` with weights_only=True, memory-mapped, plus the exact allow-list.

    A file that needs globals beyond the allow-list is refused unless `trust` is set
    (the study's `trust_checkpoint=true`), which unpickles it fully.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{_where(p, param)}: file does not exist.")
    _check_container(p, param)
    is_zip = zipfile.is_zipfile(p) and not tarfile.is_tarfile(p)
    kw: dict[str, Any] = {"map_location": "cpu", "mmap": is_zip}
    try:
        try:
            return torch.load(p, weights_only=True, **kw)
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_unpickling_refusal(exc):
                raise
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(p))) if is_zip else []
        table = allowed_globals()
        unknown = [n for n in names if n not in table]
        if names and not unknown:
            entries = [(table[n], n) for n in names]
            if any(n.startswith("numpy.") for n in names):
                # dtype classes are never named in the pickle but are BUILD targets
                entries += [(v, n) for n, v in table.items() if n.startswith("numpy.dtypes.")]
            with torch.serialization.safe_globals(entries):
                return torch.load(p, weights_only=True, **kw)
        if trust:
            if log:
                log(f"trust_checkpoint: fully unpickling {p} (globals: {', '.join(unknown or names) or 'legacy format'})")
            return torch.load(p, weights_only=False, **kw)
        listed = ", ".join(unknown) if unknown else "(legacy non-zip format: names cannot be listed)"
        raise CheckpointError(
            f"{_where(p, param)}: refusing to unpickle objects that are not plain tensors or known "
            f"config classes: {listed}. Unpickling them could run code from the file. If you produced "
            "this file yourself or trust its source, add `trust_checkpoint=true` to the declaration."
        )
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into a one-paragraph message
        raise CheckpointError(
            f"{_where(p, param)}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). The file may be truncated or of another "
            "type; copy it again or check the path."
        ) from exc


def _is_unpickling_refusal(exc: Exception) -> bool:
    import pickle

    text = str(exc)
    return isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text


def load_weights_file(path: str | os.PathLike[str], *, param: str | None = "weights",
                      trust: bool = False, log: Any = None) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (`state_dict`/`model` sub-dicts unwrapped)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(p), device="cpu"))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"{_where(p, param)}: cannot be read as safetensors ({type(exc).__name__}: {exc}). "
                "The file may be truncated; copy it again."
            ) from exc
    return extract_state_dict(load_torch_file(p, param=param, trust=trust, log=log), p, param)


def extract_state_dict(obj: Any, path: str | os.PathLike[str], param: str | None = "checkpoint",
                       key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: `obj[key]`, else `model`/`state_dict`, else obj."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{_where(path, param)}: expected a dict of tensors (or a dict with a 'model' entry), got "
            f"{type(obj).__name__}. Save the model with torch.save(model.state_dict(), ...)."
        )
    keys = [key] if key else ["model", "state_dict", "model_state_dict"]
    for k in keys:
        if k in obj and isinstance(obj[k], Mapping):
            obj = obj[k]
            break
    else:
        if key:
            raise CheckpointError(
                f"{_where(path, param)}: has no '{key}' entry (top-level keys: {sorted(map(str, obj))[:10]}). "
                "Is this the right kind of checkpoint?"
            )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{_where(path, param)}: the state dict holds non-tensor values (e.g. key {bad[0]!r}). "
            "Is this the right kind of checkpoint?"
        )
    return dict(obj)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key that has it (e.g. DDP's `module.`)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def select_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The sub-dict under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str],
                *, param: str | None = "checkpoint", what: str = "model", prefix: str = "",
                ignore: Iterable[str] = ()) -> None:
    """Load with no missing, unexpected or mis-shaped keys; `ignore` lists tolerated extras.

    `prefix` is only used in messages, so they name the key as stored in the file.
    """
    ignore = set(ignore)
    sd = {k: v for k, v in sd.items() if k not in ignore}
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(prefix + k for k in missing[:4])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(prefix + k for k in unexpected[:4])}")
        raise CheckpointError(
            f"{_where(path, param)}: does not match the {what}: {'; '.join(parts)}. "
            "Is this the right kind of checkpoint (and variant) for this declaration?"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{_where(path, param)}: key {prefix + k!r} has shape {list(sd[k].shape)} in the file but the "
                f"{what} expects {list(v.shape)}. The file belongs to another architecture or variant."
            )
    module.load_state_dict(sd, strict=True)
