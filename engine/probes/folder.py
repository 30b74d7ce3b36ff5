"""Image folders: the file-backed probe every other source builds on.

Holds the three things all file-based probes share: resolving user-named
paths, keeping manifest paths inside their root (see the policy in
`engine/probes/__init__.py`), and `FileProbe` -- an ordered list of items whose
`path` is decoded on demand.  `build_folder` is the `folder(...)` source.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import Probe, ProbeItem
from dissect_study.engine.probes.decode import IMAGE_SUFFIXES, decode_any
from dissect_study.engine.registry import PROBES

logger = logging.getLogger(__name__)

#: attributes whose value counts `describe()` reports (the shared vocabulary + common extras)
COUNTED_ATTRIBUTES = ("view", "laterality", "density", "birads", "mass", "calcification", "split", "label", "probe")


# --------------------------------------------------------------------------- paths
def user_path(value: str | None, ctx: Any, what: str, kind: str = "any") -> Path:
    """A path written in the study, resolved against the study's folder; must exist.

    `what` names the declaration key in errors (e.g. "probe vindr_test: root");
    `kind` is "dir", "file" or "any".
    """
    if value is None or str(value).strip() == "":
        raise ProbeError(f"{what}: no path given; name a {'folder' if kind == 'dir' else 'file'}.")
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = Path(getattr(ctx, "base_dir", ".") or ".") / p
    p = Path(os.path.abspath(p))
    if not p.exists():
        raise ProbeError(
            f"{what}: {p} does not exist. Relative paths are resolved against the study file's folder "
            f"({getattr(ctx, 'base_dir', '.')}); fix the path or make it absolute."
        )
    if kind == "dir" and not p.is_dir():
        raise ProbeError(f"{what}: {p} is not a folder; name the folder that holds the images.")
    if kind == "file" and not p.is_file():
        raise ProbeError(f"{what}: {p} is a folder; name the file itself.")
    return p


def is_inside(path: str | Path, root_real: str | Path) -> bool:
    """Is the (already resolved) `path` the root itself or below it? Compared component-wise."""
    p, r = str(path), str(root_real).rstrip(os.sep) or os.sep
    return p == r or p.startswith(r if r.endswith(os.sep) else r + os.sep)


def resolve_inside(root: Path, rel: str, what: str, cache: dict[str, str] | None = None) -> Path:
    """`rel` (from a manifest) joined to `root`; a ProbeError if it resolves outside `root`.

    The joined path is normalised lexically first (so the path we check is the
    path we later open), then symlinks are followed (`realpath`): a link inside
    the root that points elsewhere is rejected too.  Absolute paths are accepted
    only when they already lie inside the root.  The returned path is absolute
    but keeps the user's spelling (links unresolved) so reports show familiar
    names.  `cache` memoises parent folders' real paths across many rows.
    """
    rel = str(rel).strip()
    if rel == "":
        raise ProbeError(f"{what}: empty image path.")
    root_abs = os.path.abspath(root)
    cand = Path(rel)
    joined = os.path.normpath(cand if cand.is_absolute() else os.path.join(root_abs, rel))
    parent, leaf = os.path.split(joined)
    if cache is None:
        cache = {}
    if root_abs not in cache:
        cache[root_abs] = os.path.realpath(root_abs)
    if parent not in cache:
        cache[parent] = os.path.realpath(parent)
    real = os.path.realpath(joined) if os.path.islink(joined) else os.path.join(cache[parent], leaf)
    root_real = cache[root_abs]
    if not is_inside(real, root_real):
        raise ProbeError(
            f"{what}: image path {rel!r} resolves to {real}, outside the root {root_real}. "
            "Paths in a manifest must stay inside the root you named (no '..' escapes, absolute paths "
            "elsewhere or symlinks leaving it); set root= to a folder that contains the images."
        )
    return Path(joined)


def iter_image_files(
    root: Path, recursive: bool, suffixes: Iterable[str] = IMAGE_SUFFIXES, log: Callable[[str], None] | None = None
) -> list[Path]:
    """Image files under `root` in sorted relative-path order.

    Skipped, and counted in one warning: hidden names, links leaving the root, symlink loops
    (a link to itself or to a folder already being walked -- never followed twice), and anything
    that is not a regular file (a FIFO named x.png would hang the decoder).
    """
    suffixes = tuple(s.lower() for s in suffixes)
    root_real = Path(os.path.realpath(root))
    found: list[Path] = []
    skipped: list[str] = []
    walking: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the folders on the current path

    def visit(folder: Path) -> None:
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(f"{folder} ({exc.strerror or exc})")
            return
        ident = (st.st_dev, st.st_ino)
        if ident in walking:
            skipped.append(f"{folder} (symlink loop: a folder already being searched)")
            return
        walking.add(ident)
        try:
            for e in entries:
                visit_entry(e)
        finally:
            walking.discard(ident)

    def visit_entry(e: os.DirEntry) -> None:
        if e.name.startswith("."):
            return
        p = Path(e.path)
        try:
            if e.is_symlink() and not is_inside(Path(os.path.realpath(p)), root_real):
                skipped.append(f"{p} (symlink leaving {root_real})")
                return
            is_dir, is_file = e.is_dir(), e.is_file()  # follow links; a loop raises ELOOP here
        except OSError as exc:
            skipped.append(f"{p} ({exc.strerror or exc})")
            return
        if is_dir:
            if recursive:
                visit(p)
        elif p.suffix.lower() in suffixes or not suffixes:
            if is_file:
                found.append(p)
            else:
                skipped.append(f"{p} (not a regular file)")

    visit(Path(os.path.abspath(root)))
    if skipped:
        (log or logger.warning)(
            f"probe folder {root}: skipped {len(skipped)} entries: "
            + "; ".join(skipped[:5])
            + (f"; ... ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        )
    found.sort(key=lambda p: p.relative_to(os.path.abspath(root)).as_posix())
    return found


# --------------------------------------------------------------------------- probe
def attribute_counts(items: list[ProbeItem], keys: Iterable[str] = COUNTED_ATTRIBUTES) -> dict[str, dict[str, int]]:
    """Value counts of the vocabulary attributes present, for `describe()` and the report."""
    out: dict[str, dict[str, int]] = {}
    for key in keys:
        c = Counter(str(it.attributes[key]) for it in items if key in it.attributes and it.attributes[key] is not None)
        if c:
            out[key] = dict(sorted(c.items()))
    findings = Counter(f for it in items for f in (it.attributes.get("findings") or []))
    if findings:
        out["findings"] = dict(sorted(findings.items()))
    return out


class FileProbe(Probe):
    """Items whose `path` is an image file, decoded on demand by `loader`."""

    def __init__(
        self, name: str, items: list[ProbeItem], info: dict[str, Any], loader: Callable[[str], np.ndarray] = decode_any
    ) -> None:
        self.name = name
        self._items = list(items)
        self._info = dict(info)
        self._loader = loader

    @property
    def items(self) -> list[ProbeItem]:
        return self._items

    def load(self, index: int) -> np.ndarray:
        return self._loader(self._items[index].path)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, **self._info, "n_images": len(self._items)}
        d["n_unique_ids"] = len({it.image_id for it in self._items})
        d["counts"] = attribute_counts(self._items)
        return d


@PROBES.register("folder")
def build_folder(name: str, params: dict[str, Any], ctx: Any) -> FileProbe:
    """`folder(path, recursive=true)`: every PNG/JPEG/TIFF/BMP file, sorted by relative path.

    image_id is the relative POSIX path; attribute `folder` is its parent
    folder ("" at the top) so `sample ... balanced by folder` works.
    """
    root = user_path(params.get("path"), ctx, f"probe {name}: path", kind="dir")
    recursive = bool(params.get("recursive", True))
    files = iter_image_files(root, recursive, log=getattr(ctx, "warning", None))
    if not files:
        raise ProbeError(
            f"probe {name}: no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}"
            f"{'' if recursive else ' (recursive=false: sub-folders not searched)'}."
        )
    items = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        parent = Path(rel).parent.as_posix()
        items.append(ProbeItem(rel, str(f), {"folder": "" if parent == "." else parent}))
    info = {"kind": "folder", "root": str(root), "recursive": recursive}
    return FileProbe(name, items, info)
