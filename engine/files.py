"""Files a study names (concept sets, category and task maps, probe manifests): regular files only.

Why one helper: opening a FIFO blocks until some other process writes to it, and a
device such as /dev/zero never ends, so a study naming one as a concept file or a
manifest used to hang without a word.  `stat` does not block, so each reader asks
here first and gets an error in its own stage's class (ConceptSetError, ProbeError)
that says what the path is.  The study file itself is read by `dsl.read_study_text`,
which applies the same rule (the language package cannot import the engine).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dissect_study.errors import DissectStudyError

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | os.PathLike[str], what: str, error: type[DissectStudyError]) -> Path:
    """`path` as a Path when it is a regular file (symlinks followed); else `error` saying what it is."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except OSError as e:
        raise error(f"{p}: cannot read the {what} ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: the {what} is a folder; name a file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((word for test, word in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(
            f"{p}: the {what} is {kind}, not a file on disk; reading it could wait forever. "
            "Save the content to a file and name that file."
        )
    return p
