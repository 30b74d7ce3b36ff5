"""A content-keyed, crash-safe disk cache for embeddings and activations.

Why content keys: the reference code named cached activations after the run
setup, so a G or C run silently read M's activations (docs/METHOD.md §11.5).
Here an entry's name is the sha256 of *everything that determines it* (weights
fingerprint, preprocessing description, probe manifest hash, rows, layer,
pooling, precision ...), so a stale entry cannot be addressed at all.

Why atomic writes: several runs may share a cache and a run may be killed at
any moment.  An entry is written to a temporary file in its final directory,
fsync'ed and then `os.replace`d into place, so readers only ever see a missing
entry or a complete one.  Each entry also carries a sha256 of its tensor bytes;
a file damaged any other way (truncated copy, disk error) fails that check on
load, is deleted and counts as a miss.

Layout: `<root>/<namespace>/<key[:2]>/<key>.safetensors`.  The engine stores
activations one entry per layer (namespace `acts`, key parts include `layer`),
so a later study that asks for a subset of the layers reuses those entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from dissect_study.errors import DissectStudyError

#: Bump when the on-disk entry layout or key derivation changes: old entries become unreachable.
CACHE_FORMAT = 1
_META_KEY = "dissect_study"
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0


class CacheError(DissectStudyError):
    """The cache folder cannot be used (not writable, not a folder)."""


def default_cache_dir() -> Path:
    """`$DISSECT_STUDY_CACHE`, else `$XDG_CACHE_HOME/dissect-study`, else `~/.cache/dissect-study`."""
    env = os.environ.get("DISSECT_STUDY_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dissect-study"


# ----------------------------------------------------------------------------- keys


def _canonical(obj: Any) -> Any:
    """JSON fallback for the few non-JSON types key parts may hold.

    Unknown types raise instead of falling back to `str()`, whose output can
    contain memory addresses and would make keys unstable between runs.
    """
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=lambda v: json.dumps(v, sort_keys=True, default=_canonical))
    if isinstance(obj, torch.Size):
        return list(obj)
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalars/arrays, small tensors
        return obj.tolist()
    raise TypeError(
        f"cache key part of type {type(obj).__name__} has no canonical JSON form; "
        f"pass plain str/int/float/bool/list/dict values (e.g. a hash string instead of the object)"
    )


def canonical_json(parts: Mapping[str, Any]) -> str:
    """Deterministic JSON: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_canonical)


def make_key(namespace: str, parts: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of (format version, namespace, parts)."""
    payload = canonical_json({"format": CACHE_FORMAT, "namespace": namespace, "parts": dict(parts)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- fingerprints


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, bf16 included) as a buffer, without a numpy dtype."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def fingerprint_module(module: nn.Module) -> str:
    """sha256 over the state dict: names (sorted), dtypes, shapes and bytes.

    Deterministic across processes and devices.  Configuration that has no
    tensor (an activation function, a padding rule) is not seen here: adapters
    must fold it into their own `fingerprint()`.
    """
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        value = state[name]
        h.update(name.encode("utf-8") + b"\0")
        if isinstance(value, torch.Tensor):
            h.update(f"{value.dtype}|{tuple(value.shape)}".encode() + b"\0")
            h.update(_tensor_bytes(value))
        else:  # `_extra_state` and friends: only the type is stable enough to hash
            h.update(f"<{type(value).__name__}>".encode() + b"\0")
    return h.hexdigest()


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_file(path: str | Path, memo_dir: Path | None = None, *, memo: bool = True) -> str:
    """Streamed sha256 of a (large) file, memoised by (absolute path, size, mtime_ns).

    Checkpoints are hundreds of MB; hashing one on every run would cost seconds.
    The memo lives in `<memo_dir or default_cache_dir()>/file-sha256/`; a changed
    file changes its size or mtime and so misses the memo.  `memo=False` always
    hashes (used under --no-cache).
    """
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise FileNotFoundError(f"cannot fingerprint {p}: {e.strerror or e}") from None
    if not memo:
        return _sha256_file(p)
    ident = hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    folder = (memo_dir or default_cache_dir()) / "file-sha256"
    memo_path = folder / f"{ident}.txt"
    try:
        cached = memo_path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", cached):
            return cached
    except OSError:
        pass
    digest = _sha256_file(p)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(memo_path, digest.encode())
    except OSError:
        pass  # a read-only cache only costs the re-hash next time
    return digest


# ----------------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _clean_stale_tmp(folder: Path, max_age_s: float = _STALE_TMP_S) -> None:
    """Remove temp files left by killed writers (old enough that no writer still owns them)."""
    now = time.time()
    try:
        for p in folder.glob(_TMP_PREFIX + "*"):
            try:
                if now - p.stat().st_mtime > max_age_s:
                    p.unlink()
            except OSError:
                pass
    except OSError:
        pass


def _digest_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode() + b"\0")
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _storable(t: torch.Tensor) -> torch.Tensor:
    """A CPU, contiguous tensor that owns its storage (safetensors rejects shared views)."""
    t = t.detach().to("cpu").contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset() != 0:
        t = t.clone()
    return t


# ----------------------------------------------------------------------------- the cache


class Cache:
    """Content-keyed tensor cache.  `enabled=False` (--no-cache) reads and writes nothing."""

    def __init__(self, root: Path | str, enabled: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.enabled = enabled

    # -- keys and paths
    def key(self, namespace: str, **parts: Any) -> str:
        """sha256 of the canonical JSON of `parts` plus the cache-format version."""
        self._check_namespace(namespace)
        return make_key(namespace, parts)

    def path(self, namespace: str, key: str) -> Path:
        self._check_namespace(namespace)
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"cache key {key!r} is not a sha256 hex digest; get keys from Cache.key()")
        return self.root / namespace / key[:2] / f"{key}.safetensors"

    @staticmethod
    def _check_namespace(namespace: str) -> None:
        if not _NAMESPACE.match(namespace):
            raise ValueError(
                f"cache namespace {namespace!r} must be lower-case letters, digits, '_', '-' or '.' "
                f"(it names a folder under the cache root)"
            )

    # -- read
    def load(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None on a miss.  A damaged entry is deleted and is a miss."""
        got = self.load_with_meta(namespace, key)
        return None if got is None else got[0]

    def load_with_meta(self, namespace: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if not self.enabled:
            return None
        path = self.path(namespace, key)
        try:
            data = path.read_bytes()
        except OSError:  # missing, or unreadable: a miss either way
            return None
        from safetensors.torch import load as st_load

        try:
            tensors = st_load(data)
            header = _read_metadata(data)
            info = json.loads(header[_META_KEY])
            if info.get("format") != CACHE_FORMAT or info.get("key") != key:
                raise ValueError("entry written for another key or cache format")
            if info.get("sha256") != _digest_tensors(tensors):
                raise ValueError("tensor bytes do not match their recorded sha256")
        except Exception:
            self._discard(path)
            return None
        return tensors, info.get("meta", {})

    def _discard(self, path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    # -- write
    def save(self, namespace: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> None:
        """Write an entry atomically (temp file in the same folder, fsync, `os.replace`)."""
        if not self.enabled:
            return
        from safetensors.torch import save as st_save

        path = self.path(namespace, key)
        if not tensors:
            raise ValueError(f"cache entry {namespace}/{key[:12]} has no tensors; nothing to save")
        clean = {name: _storable(t) for name, t in tensors.items()}
        info = {"format": CACHE_FORMAT, "namespace": namespace, "key": key,
                "sha256": _digest_tensors(clean), "meta": dict(meta or {}), "created": time.time()}
        try:
            payload = st_save(clean, metadata={_META_KEY: json.dumps(info, default=_canonical)})
            path.parent.mkdir(parents=True, exist_ok=True)
            _clean_stale_tmp(path.parent)
            _atomic_write_bytes(path, payload)
        except OSError as e:
            raise CacheError(
                f"cannot write the cache entry {path}: {e.strerror or e}. "
                f"Pass --cache-dir pointing to a writable folder, or --no-cache to run without a cache."
            ) from None

    def get_or_compute(self, namespace: str, parts: Mapping[str, Any],
                       compute: Callable[[], Mapping[str, torch.Tensor]],
                       meta: Mapping[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], bool]:
        """(tensors, hit).  On a miss `compute()` runs and its result is saved."""
        if not self.enabled:
            return dict(compute()), False
        key = self.key(namespace, **parts)
        got = self.load(namespace, key)
        if got is not None:
            return got, True
        result = dict(compute())
        self.save(namespace, key, result, meta if meta is not None else _parts_summary(parts))
        return result, False


def _parts_summary(parts: Mapping[str, Any], limit: int = 4096) -> dict[str, Any]:
    """Key parts kept in the entry for humans (`dissect-study cache ls`); long values abbreviated."""
    out: dict[str, Any] = {}
    for name, value in parts.items():
        text = canonical_json({"v": value})[5:-1]
        out[name] = value if len(text) <= limit // max(1, len(parts)) else f"<{len(text)} chars>"
    return out


def _read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` map of a safetensors buffer (8-byte little-endian header length + JSON)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return header.get("__metadata__") or {}
