"""Atomic file output: a file is either absent, its old self, or complete -- never half-written.

Why: a run may be killed, interrupted or hit a full disk at any byte.  Every file
the tool writes for later reading (cache entries, reports) is written to a
temporary file in the destination folder, fsync'ed, and `os.replace`d over the
destination; on any failure -- an exception or Ctrl-C -- the temporary file is
removed and the destination is untouched.  No torch here: `dissect-study report`
uses it without loading a model stack.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _default_mode() -> int:
    """The mode `open(path, "w")` would give a new file (mkstemp's own is 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems refuse)."""
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


@contextmanager
def atomic_path(path: Path, prefix: str = TMP_PREFIX) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; when the block succeeds, it becomes `path`.

    The folder must exist.  The caller writes the file by name (e.g. a PDF library's `write_pdf`);
    this fsyncs it before the rename.  On any exception, KeyboardInterrupt included, the temporary
    file is deleted and the exception propagates.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, _default_mode())
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, prefix: str = TMP_PREFIX) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, prefix) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
