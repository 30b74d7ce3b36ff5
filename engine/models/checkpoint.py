"""Safe checkpoint loading: a restricted unpickler, exact allow-lists, strict keys.

Why this module exists: real Mammo-CLIP files are not plain tensor dicts.  The CLIP
`.tar` written by the training code carries its hydra config, and a ListConfig in
it drags a whole pickled omegaconf tree into the file -- including hydra's
`${now:...}` resolver cache, a non-empty `collections.defaultdict` that
`torch.load(weights_only=True)` cannot rebuild whatever is allow-listed.  The
fine-tuned classifier `.pth` carries numpy arrays and scalars.

So zip-format files are read by our own unpickler (`_CheckpointUnpickler`): tensors
come from the archive's records through a private memory map, a short allow-list of
data constructors is honoured, config-library objects (omegaconf, hydra, typing)
become inert stand-ins, and anything else is refused with its name and the key
where it sits -- unless the study says `trust_checkpoint=true`.  Nothing from the
file is executed on the default path.  docs/CHECKPOINTS.md explains why this is safe.

Every user mistake (missing file, truncated file, wrong file type, missing key,
shape mismatch) becomes a `CheckpointError`: one paragraph naming the file, the
study parameter and the key.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import hashlib
import importlib
import io
import logging
import os
import pathlib
import pickle
import struct
import sys
import tarfile
import types
import typing
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from dissect_study.errors import DissectStudyError

logger = logging.getLogger(__name__)


class CheckpointError(DissectStudyError):
    """A checkpoint or model folder cannot be used; the message says why and what to do."""


def _where(path: str | os.PathLike[str], param: str | None) -> str:
    return f"{param} = {str(path)!r}" if param else repr(str(path))


def resolve_path(
    value: str | os.PathLike[str], base_dir: str | os.PathLike[str], param: str, *, folder: bool = False
) -> Path:
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


# --------------------------------------------------------------------------- inert stand-ins


class InertPickled:
    """Stand-in for a pickled object whose class we do not want (or cannot) import.

    It accepts any constructor arguments and keeps them, and the pickled state, as
    data.  It has no behaviour, so building it cannot run code from the file.
    omegaconf/hydra/typing objects of Mammo-CLIP configs become these.
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertPickled:
        # NEWOBJ calls __new__ only; set the attributes here so every instance has them
        self = super().__new__(cls)
        self.args = args
        self.state = kwargs or None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = kwargs or None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


class InertDefaultDict(dict):
    """Stand-in for `collections.defaultdict`: keeps the items, drops the default factory.

    hydra's `${now:...}` resolver cache is such a dict at the root of a Mammo-CLIP
    config; torch's weights_only unpickler cannot fill one (section 1.4's correction).
    """

    pickled_name = "collections.defaultdict"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()  # the factory (args[0]) is never called: a missing key is a KeyError


class RefusedGlobal(InertPickled):
    """Placeholder for a global that is not on the allow-list; its presence refuses the file."""


_STANDINS: dict[str, type] = {}


def _standin(name: str, base: type = InertPickled) -> type:
    key = f"{base.__name__}:{name}"
    if key not in _STANDINS:
        _STANDINS[key] = type(name.rsplit(".", 1)[-1], (base,), {"pickled_name": name})
    return _STANDINS[key]


def plain_value(value: Any) -> Any:
    """Inert omegaconf stand-ins turned into plain Python values, recursively.

    ListConfig -> list, DictConfig -> dict, value nodes -> their value; the
    `_parent`/`_metadata` back-references are not followed.
    """
    if isinstance(value, InertPickled):
        state = value.state if isinstance(value.state, Mapping) else {}
        if "_content" in state:
            return plain_value(state["_content"])
        if "_val" in state:
            return plain_value(state["_val"])
        return repr(value)
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


# --------------------------------------------------------------------------- allow-list

#: pickled module prefixes whose objects always become inert stand-ins (config libraries)
INERT_PREFIXES = ("omegaconf.", "hydra.", "typing.")


class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to: a dtype tag, not a callable class."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _TypeTag:
    """What `torch.Tensor` / `torch.nn.Parameter` unpickle to: usable only by `_from_type`."""

    def __init__(self, name: str) -> None:
        self.name = name


_TENSOR, _PARAMETER = _TypeTag("torch.Tensor"), _TypeTag("torch.nn.parameter.Parameter")


def _check_storage(storage: Any) -> None:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {type(storage).__name__}, not a storage record")


def _no_hooks(hooks: Any) -> None:
    if hooks:
        raise pickle.UnpicklingError("a tensor carries backward hooks; refusing to restore them")


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: int,
    size: Any,
    stride: Any,
    requires_grad: bool,
    backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    """torch's own rebuild, after checking that it only receives data."""
    _check_storage(storage)
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(
        storage,
        int(storage_offset),
        tuple(size),
        tuple(stride),
        bool(requires_grad),
        collections.OrderedDict(),
        metadata,
    )


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any) -> torch.Tensor:
    _check_storage(storage)
    return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any, state: Any = None) -> nn.Parameter:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter rebuilt from {type(data).__name__}")
    _no_hooks(backward_hooks)
    if state:
        raise pickle.UnpicklingError("a parameter carries Python attributes; refusing to restore them")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """Tensors saved with a type tag (plain Tensor or Parameter) and no Python attributes."""
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter) or new_type not in (_TENSOR, _PARAMETER):
        raise pickle.UnpicklingError("a tensor subclass or custom rebuild function")
    if state:
        raise pickle.UnpicklingError("a tensor carries Python attributes; refusing to restore them")
    t = func(*args)
    return (
        nn.Parameter(t, requires_grad=t.requires_grad)
        if new_type is _PARAMETER and not isinstance(t, nn.Parameter)
        else t
    )


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode`, which protocol-2 pickles use for bytes, limited to that use."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


def _bytes_like(kind: type) -> Any:
    def build(*args: Any) -> Any:
        if not args:
            return kind()
        if isinstance(args[0], (bytes, bytearray)) and len(args) == 1:
            return kind(args[0])
        if isinstance(args[0], str) and len(args) == 2 and isinstance(args[1], str):
            return kind(_latin1(args[0], args[1]))
        raise pickle.UnpicklingError(f"{kind.__name__}() with arguments other than data")

    return build


def _typing_getitem(obj: Any, item: Any) -> Any:
    """`operator.getitem`, which pickles generic aliases such as Dict[str, Any], typing only."""
    inert = isinstance(obj, InertPickled) or (isinstance(obj, type) and issubclass(obj, InertPickled))
    if inert and obj.pickled_name.startswith("typing."):
        return _standin(f"{obj.pickled_name}[...]")(item)
    raise pickle.UnpicklingError("operator.getitem used on something other than a typing alias")


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


def _torch_entries() -> dict[str, Any]:
    out: dict[str, Any] = {
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Tensor": _TENSOR,
        "torch._tensor.Tensor": _TENSOR,
        "torch.nn.parameter.Parameter": _PARAMETER,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.serialization._get_layout": torch.serialization._get_layout,
    }
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            out[f"torch.{name}"] = obj
    storages = {v: k for k, v in torch.storage._dtype_to_storage_type_map().items()}
    storages["UntypedStorage"] = torch.uint8
    for name, dtype in storages.items():
        for mod in ("torch", "torch.storage", "torch.cuda"):
            out[f"{mod}.{name}"] = _StorageType(dtype)
    return out


_BUILTINS: dict[str, Any] = {
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.complex": complex,
    "builtins.str": str,
    "builtins.bool": bool,
    "builtins.NoneType": type(None),
    "builtins.bytes": _bytes_like(bytes),
    "builtins.bytearray": _bytes_like(bytearray),
}


@functools.lru_cache(maxsize=1)
def allowed_globals() -> dict[str, Any]:
    """Every global name a checkpoint may use without `trust_checkpoint`, and what it becomes.

    Names under INERT_PREFIXES are not listed: any of them becomes an inert stand-in.
    """
    out: dict[str, Any] = dict(_BUILTINS)
    out.update(
        {
            "collections.OrderedDict": collections.OrderedDict,
            "collections.Counter": collections.Counter,
            "collections.defaultdict": InertDefaultDict,
            "_codecs.encode": _latin1,
            "operator.getitem": _typing_getitem,
            "_operator.getitem": _typing_getitem,
            "pathlib.PurePosixPath": pathlib.PurePosixPath,
            "pathlib.PosixPath": pathlib.PurePosixPath,
            "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
            "pathlib.WindowsPath": pathlib.PureWindowsPath,
            "pathlib.Path": pathlib.PurePosixPath,
        }
    )
    out.update(_torch_entries())
    out.update(_numpy_entries())
    return out


def _pickled_name(module: str, name: str) -> str:
    """Python-2 spellings of protocol-2 pickles (`__builtin__.long`) mapped to today's names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    if module == "torch.tensor":  # renamed in torch 1.8 (torch.load does the same)
        module = "torch._tensor"
    return f"{module}.{name}"


# --------------------------------------------------------------------------- the zip archive


class _Archive:
    """A torch zip checkpoint read with Python's zipfile: record offsets, lazy mmap storages.

    Only the central directory and the pickle are read up front.  Storages are views
    of one private (copy-on-write) memory map of the whole file, so tensors nobody
    touches -- the 1.1 GB of Adam moments in a B5 file -- are never read from disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if not pkl:
                raise _NotTorchZip([i.filename for i in infos][:8])
            self.prefix = pkl[0].filename[: -len("data.pkl")]
            self.records = {i.filename[len(self.prefix) :]: i for i in infos if i.filename.startswith(self.prefix)}
            self.pickle_bytes = zf.read(pkl[0])
            order = self.records.get("byteorder")
            self.byteorder = zf.read(order).decode() if order is not None else "little"
        self._whole: torch.UntypedStorage | None = None
        self._loaded: dict[str, torch.storage.TypedStorage] = {}

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise pickle.UnpicklingError(f"damaged zip entry {info.filename!r}")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        return info.header_offset + 30 + name_len + extra_len

    def storage(self, key: str, dtype: torch.dtype, numel: int) -> torch.storage.TypedStorage:
        if key in self._loaded:
            return self._loaded[key]
        info = self.records.get(f"data/{key}")
        nbytes = int(numel) * torch._utils._element_size(dtype)
        if info is None:
            raise pickle.UnpicklingError(f"storage record data/{key} is missing from the archive")
        if info.file_size < nbytes:
            raise pickle.UnpicklingError(
                f"storage record data/{key} holds {info.file_size} bytes but the pickle expects {nbytes}"
            )
        if info.compress_type == zipfile.ZIP_STORED:
            start = self._data_offset(info)
            if start + nbytes > self.size:
                raise pickle.UnpicklingError(f"storage record data/{key} runs past the end of the file")
            whole = self._whole
            if whole is None:
                whole = self._whole = typing.cast(
                    torch.UntypedStorage, torch.UntypedStorage.from_file(str(self.path), False, self.size)
                )
            untyped = whole[start : start + nbytes]
        else:  # re-compressed by some other tool: no mapping possible, read it
            with zipfile.ZipFile(self.path) as zf:
                raw = bytearray(zf.read(info)[:nbytes])
            untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage(0)
        if self.byteorder != sys.byteorder and nbytes:
            untyped = untyped.clone()
            untyped.byteswap(dtype)
        typed = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        self._loaded[key] = typed
        return typed


class _NotTorchZip(Exception):
    """A zip archive without a `<folder>/data.pkl` record."""


class _MissingModule(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(module)
        self.module, self.name = module, name


class _CheckpointUnpickler(pickle.Unpickler):
    """Restricted unpickler: allow-listed globals, inert stand-ins, storages from the archive.

    Nothing it can build runs code: allowed callables are data constructors checked
    above; config-library classes become `InertPickled`; any other global becomes a
    `RefusedGlobal` placeholder (recorded in `refused`) so the file can be refused
    with the place where the object sits.  With `trust`, other globals are imported
    for real (the explicit escape hatch), still without needing omegaconf or hydra.
    """

    def __init__(self, file: IO[bytes], archive: _Archive | None, *, trust: bool = False) -> None:
        super().__init__(file)
        self.archive = archive
        self.trust = trust
        self.refused: list[str] = []
        self.imported: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        full = _pickled_name(module, name)
        table = allowed_globals()
        if self.trust and isinstance(table.get(full), (_TypeTag, types.FunctionType)) and full.startswith("torch."):
            return self._import(full)  # trusted: torch's own rebuilds (tensor subclasses, hooks)
        if full in table:
            return table[full]
        if full.startswith(INERT_PREFIXES):
            return _standin(full)
        if self.trust:
            self.imported.append(full)
            return self._import(full)
        self.refused.append(full)
        return _standin(full, RefusedGlobal)

    @staticmethod
    def _import(full: str) -> Any:
        mod, _, attr = full.rpartition(".")
        try:
            obj: Any = importlib.import_module(mod)
        except ImportError as exc:
            raise _MissingModule(mod, full) from exc
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        if self.archive is None:
            raise pickle.UnpicklingError("persistent id outside a zip checkpoint")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid  # location ignored: everything lands on the CPU
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference {str(pid)[:80]}")
        return self.archive.storage(key, stype.dtype, numel)


def _key_step(key: Any) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f".{key}"
    return f"[{key!r}]"


def find_refused(obj: Any, limit: int = 2_000_000) -> list[tuple[str, str]]:
    """(global name, key path) of every refused placeholder reachable from `obj`, shortest paths.

    Breadth-first over dicts, sequences and stand-ins (their arguments and state), so
    the omegaconf `_parent` cycles end and the path shown is the one a user reads.
    """
    found: list[tuple[str, str]] = []
    seen: set[int] = set()
    queue: collections.deque[tuple[Any, str]] = collections.deque([(obj, "")])
    while queue and len(seen) < limit:
        o, path = queue.popleft()
        if id(o) in seen or isinstance(o, (str, bytes, int, float, torch.Tensor, np.ndarray)) or o is None:
            continue
        seen.add(id(o))
        if (isinstance(o, type) and issubclass(o, RefusedGlobal)) or isinstance(o, RefusedGlobal):
            found.append((o.pickled_name, path.lstrip(".") or "<top level>"))
            continue
        if isinstance(o, Mapping):
            for k, v in o.items():
                queue.append((k, f"{path} (a dict key)"))
                queue.append((v, path + _key_step(k)))
        elif isinstance(o, (list, tuple, set, frozenset)):
            for i, v in enumerate(o):
                queue.append((v, f"{path}[{i}]"))
        if isinstance(o, InertPickled):
            for i, v in enumerate(o.args):
                queue.append((v, f"{path}.<args>[{i}]"))
            if isinstance(o.state, Mapping):
                for k, v in o.state.items():
                    queue.append((v, path + _key_step(k)))
            else:
                queue.append((o.state, f"{path}.<state>"))
        elif isinstance(getattr(o, "__dict__", None), dict):  # e.g. a state dict's `_metadata`
            for k, v in vars(o).items():
                queue.append((v, path + _key_step(k)))
    return found


# --------------------------------------------------------------------------- loading


def _truncation_message(path: Path, where: str) -> str:
    """Why a `PK...` file is not a readable zip: N bytes present of at least M needed."""
    size = path.stat().st_size
    need = _bytes_needed(path)
    if need is not None and need > size:
        got = f"the file has {size:,} of at least {need:,} bytes"
    else:
        got = f"the file has {size:,} bytes and its zip directory (at the end) is missing"
    return (
        f"{where}: truncated zip archive ({got}). The download or copy was interrupted; "
        "copy the file again and compare its size with the source."
    )


def _bytes_needed(path: Path) -> int | None:
    """A lower bound on the size of a cut-off torch zip: its pickle plus every storage it names.

    The first record is the pickle; torch writes sizes after the data, so we read
    the pickle itself (inertly, storages as sizes only) to learn what should follow:
    each storage record's bytes plus its fixed zip overhead (local header, data
    descriptor and central-directory entry, each naming the record).
    """
    with open(path, "rb") as f:
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        prefix = f.read(name_len)[: -len(b"data.pkl")]
        f.seek(30 + name_len + extra_len)
        rest = f.read(64 << 20)
    sizes: dict[str, int] = {}

    class Survey(_CheckpointUnpickler):
        def persistent_load(self, pid: Any) -> Any:
            if isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[1], _StorageType):
                sizes[str(pid[2])] = int(pid[4]) * torch._utils._element_size(pid[1].dtype)
            return torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(0), dtype=torch.uint8, _internal=True)

        def find_class(self, module: str, name: str) -> Any:
            full = _pickled_name(module, name)
            if full.startswith("torch._utils._rebuild") or full == "torch._tensor._rebuild_from_type_v2":
                return lambda *a, **k: None  # sizes are all we want
            return super().find_class(module, name)

    buf = io.BytesIO(rest)
    try:
        Survey(buf, None).load()
    except Exception:  # noqa: BLE001 - the pickle itself is cut: only its start is known
        return None
    per_record = 30 + 16 + 46  # local header, data descriptor, central-directory entry
    records = sum(n + per_record + 2 * len(prefix + b"data/" + k.encode()) for k, n in sizes.items())
    return 30 + name_len + extra_len + buf.tell() + 16 + records


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
        raise CheckpointError(_truncation_message(path, _where(path, param)))
    raise CheckpointError(
        f"{_where(path, param)}: not a PyTorch checkpoint (the file starts with {head!r}). "
        "Expected a file written by torch.save (.tar/.pth/.pt/.bin) or a .safetensors file."
    )


def _note(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)
    else:
        logger.warning(message)


def _refusal(where: str, found: list[tuple[str, str]], names: list[str]) -> CheckpointError:
    if found:
        kind = "config object" if found[0][1].startswith("config") else "object"
        shown = "; ".join(f"{name} at key {path}" for name, path in found[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        what = f"unpicklable {kind} {shown}{more}"
    else:
        what = f"unpicklable object {', '.join(sorted(set(names))[:3])} (used while rebuilding another object)"
    return CheckpointError(
        f"{where}: {what}. It is not a tensor, a plain value or a known config class, and building it "
        "could run code from the file, so nothing of it was executed. If you produced this file yourself "
        "or trust its source, add `trust_checkpoint=true` to the declaration (`--trust-checkpoint` for "
        "`inspect`); otherwise re-save the checkpoint with only tensors and plain values."
    )


def _load_zip(p: Path, where: str, trust: bool, log: Callable[[str], None] | None) -> Any:
    try:
        archive = _Archive(p)
    except _NotTorchZip as exc:
        raise CheckpointError(
            f"{where}: a zip archive but not a PyTorch checkpoint: no `<folder>/data.pkl` record (entries: "
            f"{', '.join(exc.args[0]) or 'none'}). Was it re-packed? Use the file torch.save wrote."
        ) from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(_truncation_message(p, where)) from exc
    unpickler = _CheckpointUnpickler(io.BytesIO(archive.pickle_bytes), archive, trust=trust)
    try:
        obj = unpickler.load()
    except _MissingModule as exc:
        top = exc.module.split(".")[0]
        raise CheckpointError(
            f"{where}: trust_checkpoint: the file needs the Python module `{exc.module}` (for {exc.name}), "
            f"which is not installed. Install the package that provides it (usually `pip install {top}`) "
            "or re-save the checkpoint with only tensors and plain values."
        ) from None
    except Exception as exc:  # noqa: BLE001 - classified below
        if unpickler.refused:
            raise _refusal(where, [], unpickler.refused) from None
        second = _torch_weights_only(p)  # a layout detail we do not know yet: torch's own safe loader
        if second is not None:
            return second
        raise CheckpointError(
            f"{where}: the checkpoint's pickle cannot be rebuilt ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). The zip archive itself is complete; the file "
            "may have been written by an incompatible tool. Re-save it with torch.save."
        ) from exc
    if unpickler.refused:
        raise _refusal(where, find_refused(obj), unpickler.refused)
    if unpickler.imported:
        _note(log, f"trust_checkpoint: unpickled {', '.join(sorted(set(unpickler.imported)))} from {p}")
    return obj


def _torch_weights_only(p: Path) -> Any | None:
    """torch's own weights_only loader (numpy entries allowed), or None if it refuses the file."""
    entries: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [(v, n) for n, v in _numpy_entries().items()]
    try:
        with torch.serialization.safe_globals(entries):
            obj = torch.load(p, weights_only=True, map_location="cpu", mmap=zipfile.is_zipfile(p))
    except Exception:  # noqa: BLE001 - the caller reports its own reason
        return None
    logger.debug("%s: read by torch.load(weights_only=True)", p)
    return obj


def _load_legacy(p: Path, where: str, trust: bool, log: Callable[[str], None] | None) -> Any:
    """Pre-1.6 torch.save files (a bare pickle stream): torch's weights_only loader."""
    obj = _torch_weights_only(p)
    if obj is not None:
        return obj
    if not trust:
        raise CheckpointError(
            f"{where}: an old-format (pre-1.6) PyTorch file that holds more than tensors and plain values, "
            "or is damaged. If you trust its source, add `trust_checkpoint=true`; or load it once and "
            "re-save it with a current torch.save."
        )
    _note(log, f"trust_checkpoint: fully unpickling the old-format file {p}")
    try:
        return torch.load(p, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
        raise CheckpointError(
            f"{where}: cannot be read even with trust_checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). The file is damaged or not a torch.save file."
        ) from exc


def load_torch_file(
    path: str | os.PathLike[str],
    *,
    param: str | None = "checkpoint",
    trust: bool = False,
    log: Callable[[str], None] | None = None,
) -> Any:
    """A torch.save file's content, without running code from it; tensors are memory-mapped.

    Zip-format files go through our restricted unpickler (real Mammo-CLIP `.tar`
    files included); a global beyond the allow-list is refused with its name and key
    path unless `trust` is set (the study's `trust_checkpoint=true`).
    """
    p = Path(path)
    where = _where(p, param)
    if not p.is_file():
        raise CheckpointError(f"{where}: file does not exist.")
    _check_container(p, param)
    if zipfile.is_zipfile(p):
        return _load_zip(p, where, trust, log)
    return _load_legacy(p, where, trust, log)


def load_weights_file(
    path: str | os.PathLike[str], *, param: str | None = "weights", trust: bool = False, log: Any = None
) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (`state_dict`/`model` sub-dicts unwrapped)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(p), device="cpu"))
        except Exception as exc:  # noqa: BLE001 -- a third-party loader's failure, reported with its type
            raise CheckpointError(
                f"{_where(p, param)}: cannot be read as safetensors ({type(exc).__name__}: {exc}). "
                "The file may be truncated; copy it again."
            ) from exc
    return extract_state_dict(load_torch_file(p, param=param, trust=trust, log=log), p, param)


def extract_state_dict(
    obj: Any, path: str | os.PathLike[str], param: str | None = "checkpoint", key: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint: `obj[key]`, else `model`/`state_dict`, else obj."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{_where(path, param)}: expected a dict of tensors (or a dict with a 'model' entry), got "
            f"{type(obj).__name__}. Save the model with torch.save(model.state_dict(), ...)."
        )
    keys = [key] if key else ["model", "state_dict", "model_state_dict"]
    top = obj
    for k in keys:
        if k in obj and isinstance(obj[k], Mapping):
            obj = obj[k]
            break
    else:
        if key:
            what = (
                f"its `{key}` entry is a {type(obj[key]).__name__}, not a dict of tensors"
                if key in obj
                else f"no `{key}` key; keys are {_list_keys(top)}"
            )
            raise CheckpointError(
                f"{_where(path, param)}: {what}. Mammo-CLIP checkpoints keep the weights under `{key}` "
                f"(the trainer saves {{model, optimizer, scheduler, config, epoch, train_loss}}); point the "
                "declaration at that file, or re-save yours as torch.save({'model': model.state_dict()}, ...)."
            )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        where = "the state dict" if obj is not top else "the file"
        raise CheckpointError(
            f"{_where(path, param)}: {where} holds non-tensor values (e.g. key {bad[0]!r} is a "
            f"{type(obj[bad[0]]).__name__}; keys are {_list_keys(obj)}) and no `model`/`state_dict` entry. "
            "Is this the right kind of checkpoint?"
        )
    return dict(obj)


def _list_keys(obj: Mapping[Any, Any], limit: int = 12) -> str:
    keys = [str(k) for k in obj]
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return (", ".join(keys[:limit]) + more) if keys else "none (an empty dict)"


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key that has it (e.g. DDP's `module.`)."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def select_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The sub-dict under `prefix`, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    param: str | None = "checkpoint",
    what: str = "model",
    prefix: str = "",
    ignore: Iterable[str] = (),
) -> None:
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
