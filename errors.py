"""One root for every error dissect-study reports to a user.

Why one root: the CLI catches `DissectStudyError` once and prints its message as
one clear paragraph (no traceback); anything else is a bug and keeps its
traceback.  Each stage subclasses it where the stage lives, so a caller can
still catch one stage's errors alone:

    dsl/diagnostics.py           StudyError       (unreadable or invalid study; carries diagnostics)
    engine/registry.py           RegistryError    (unknown or broken plugin name)
    engine/models/__init__.py    ModelBuildError  (a declaration cannot be built)
    engine/models/checkpoint.py  CheckpointError  (a checkpoint or model folder cannot be used)
    engine/probes/__init__.py    ProbeError       (a probe declaration or its files)
    engine/concepts.py           ConceptSetError  (a concept-set file)
    engine/cache.py              CacheError       (the cache folder)
    engine/passes/activations.py ActivationError  (a layer or preprocessing the pass cannot use)
    engine/analyses/macros.py    AnalysisError    (an analysis statement the results cannot answer)
    engine/store/database.py     StoreError       (a results database)
    engine/report/model.py       ReportError      (no such run, section, format; also a LookupError)
    engine/run.py                RunError         (unset variable, missing device, bad layer, --strict)

Not under the root, on purpose: `engine/probes/base.py` `ImageUnreadable`, the
probe's skip signal that the activation pass turns into a skipped row.

This module imports nothing: both `dsl/` and `engine/` depend on it.
"""

from __future__ import annotations


class DissectStudyError(Exception):
    """A problem with the user's input or environment, explained in the message.

    `exit_code` is what the CLI exits with: 1 for a bad study, file or data.
    """

    exit_code: int = 1

    def user_message(self) -> str:
        """The paragraph the CLI prints to stderr: `error: <first line>`, further lines indented, no blank lines.

        Why reshape: messages wrap foreign text (DuckDB's, a decoder's) whose blank lines
        would split the paragraph.  A subclass whose message is already rendered overrides it.
        """
        lines = [line.rstrip() for line in str(self).splitlines() if line.strip()] or [type(self).__name__]
        return "\n".join([f"error: {lines[0]}", *(f"  {line}" for line in lines[1:])])
