"""One root for every error dissect-study reports to a user.

Why one root: the CLI catches `DissectStudyError` once and prints its message as
one clear paragraph (no traceback); anything else is a bug and keeps its
traceback.  Each stage subclasses it where the stage lives (the study language's
`StudyError`, the model adapters' `ModelBuildError`, the store's `StoreError`,
...), so a caller can still catch one stage's errors alone.

This module imports nothing: both `dsl/` and `engine/` depend on it.
"""

from __future__ import annotations


class DissectStudyError(Exception):
    """A problem with the user's input or environment, explained in the message.

    `exit_code` is what the CLI exits with: 1 for a bad study, file or data.
    """

    exit_code: int = 1
