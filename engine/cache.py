"""A content-keyed, crash-safe disk cache for embeddings and activations.

Why content keys: the reference code named cached activations after the run
setup, so a G or C run silently read M's activations (docs/METHOD.md §11.5).
Here an entry's name is the sha256 of *everything that determines it* (weights
fingerprint, preprocessing description, probe manifest hash, rows, layer,
pooling, precision ...), so a stale entry cannot be addressed at all.

Why atomic writes: several runs may share a cache and a run may be killed at
any moment.  An entry is written to a temporary file in its final directory,
fsync'ed and then `os.replace`d into place, so readers only ever see a missing
entry or a complete one.  Each entry also carries a sha256 of its tensor bytes
and metadata; a file damaged any other way (truncated copy, disk error, flipped
bytes) fails that check on load, is deleted with a logged warning and counts as
a miss, so it is rebuilt.  `write_entry` / `read_entry` are that entry format on
its own, for caches with their own file names (the demo models).

Layout: `<root>/<namespace>/<key[:2]>/<key>.safetensors`.  The engine stores
activations one entry per layer (namespace `acts`, key parts include `layer`),
so a later study that asks for a subset of the layers reuses those entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dissect_study.engine.atomic import TMP_PREFIX, write_bytes_atomic
from dissect_study.errors import DissectStudyError

#: Bump when the on-disk entry layout or key derivation changes: old entries become unreachable.
CACHE_FORMAT = 2
_META_KEY = "dissect_study"
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_STALE_TMP_S = 3600.0

logger = logging.getLogger(__name__)


class CacheError(DissectStudyError):
    """The cache folder cannot be used (not writable, not a folder)."""


class _OlderEntry(Exception):
    """A cache entry in an earlier version's format: rebuilt without alarm."""


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
    # ndarray implements the buffer protocol; numpy's stubs do not declare it (no copy is made here)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


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
        cached = memo_path.read_text().split()
    except (OSError, UnicodeDecodeError):
        cached = []
    if len(cached) == 2 and re.fullmatch(r"[0-9a-f]{64}", cached[0]) and cached[1] == _memo_check(ident, cached[0]):
        return cached[0]
    if cached:
        logger.warning("file fingerprint memo %s is damaged; hashing %s again", memo_path, p)
    digest = _sha256_file(p)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(memo_path, f"{digest} {_memo_check(ident, digest)}\n".encode())
    except OSError:
        pass  # a read-only cache only costs the re-hash next time
    return digest


def _memo_check(ident: str, digest: str) -> str:
    """Checksum of a memo line: a flipped hex digit must not become a file's recorded sha256."""
    return hashlib.sha256(f"{ident}|{digest}".encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- atomic files


def _clean_stale_tmp(folder: Path, max_age_s: float = _STALE_TMP_S) -> None:
    """Remove temp files left by killed writers (old enough that no writer still owns them)."""
    now = time.time()
    try:
        for p in folder.glob(TMP_PREFIX + "*"):
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
        return read_entry(self.path(namespace, key), key=key)

    # -- write
    def save(
        self, namespace: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Write an entry atomically (temp file in the same folder, fsync, `os.replace`)."""
        if not self.enabled:
            return
        path = self.path(namespace, key)
        if not tensors:
            raise ValueError(f"cache entry {namespace}/{key[:12]} has no tensors; nothing to save")
        try:
            write_entry(path, tensors, meta, key=key, namespace=namespace)
        except OSError as e:
            raise CacheError(
                f"cannot write the cache entry {path}: {e.strerror or e}. "
                f"Pass --cache-dir pointing to a writable folder, or --no-cache to run without a cache."
            ) from None

    def get_or_compute(
        self,
        namespace: str,
        parts: Mapping[str, Any],
        compute: Callable[[], Mapping[str, torch.Tensor]],
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, torch.Tensor], bool]:
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


# ----------------------------------------------------------------------------- the entry format


def _entry_digest(tensors: Mapping[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes) and the canonical JSON of the metadata."""
    h = hashlib.sha256(_digest_tensors(tensors).encode())
    h.update(meta_json.encode("utf-8"))
    return h.hexdigest()


def write_entry(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    namespace: str | None = None,
) -> None:
    """One self-checking safetensors file, written atomically (temp file, fsync, `os.replace`).

    The header records the format, the key the entry was written for and a sha256 that covers the
    tensors and `meta` (a JSON-able dict), so `read_entry` can tell a complete entry from any damage.
    Raises OSError when the folder is not writable.
    """
    from safetensors.torch import save as st_save

    clean = {name: _storable(t) for name, t in tensors.items()}
    meta_json = canonical_json(dict(meta or {}))
    info = {
        "format": CACHE_FORMAT,
        "namespace": namespace,
        "key": key,
        "meta": json.loads(meta_json),
        "sha256": _entry_digest(clean, meta_json),
        "created": time.time(),
    }
    payload = st_save(clean, metadata={_META_KEY: json.dumps(info, default=_canonical)})
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(path.parent)
    write_bytes_atomic(path, payload)


def read_entry(path: Path, *, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, meta) of an entry written by `write_entry`, or None when it is missing.

    A damaged entry (truncated, flipped bytes, written for another key or cache format, or without a
    checksum) is deleted with a logged warning and reads as missing, so the caller rebuilds it.
    """
    try:
        data = path.read_bytes()
    except OSError:  # missing, or unreadable: a miss either way
        return None
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
        info = json.loads(_read_metadata(data)[_META_KEY])
        if info.get("format") != CACHE_FORMAT:
            raise _OlderEntry(f"cache format {info.get('format')}, this version writes {CACHE_FORMAT}")
        if info.get("key") != key:
            raise ValueError("written for another key")
        meta = info.get("meta", {})
        if info.get("sha256") != _entry_digest(tensors, canonical_json(meta)):
            raise ValueError("its bytes do not match their recorded sha256")
    except Exception as e:  # noqa: BLE001 -- any way an entry can be broken is the same miss
        if isinstance(e, (_OlderEntry, KeyError)):  # an earlier version's entry: expected once after an upgrade
            logger.info(
                "cache entry %s was written by an earlier version (%s); it will be rebuilt",
                path,
                _short(str(e) if isinstance(e, _OlderEntry) else "no checksum"),
            )
        else:
            logger.warning(
                "cache entry %s is damaged (%s); deleted, it will be rebuilt", path, _short(f"{type(e).__name__}: {e}")
            )
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return tensors, meta


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` map of a safetensors buffer (8-byte little-endian header length + JSON)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}
