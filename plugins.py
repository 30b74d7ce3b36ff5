"""Third-party extensions: the `dissect_study.plugins` entry-point group.

Another package extends dissect-study by naming a module in this group (see
docs/EXTENDING.md).  Importing that module registers the plugin's vocabulary
entries (`dsl.vocabulary.register_function`) and, directly or lazily, its
implementations (`engine.registry`).

This module lives outside both `dsl/` and `engine/` because both need it: the
checker loads plugins so that `dissect-study check` knows their names, the
engine's registries load them so that `run` finds their code -- and the language
side must never import the engine.  It imports nothing but the standard library.
"""

from __future__ import annotations

import logging
from importlib import metadata

logger = logging.getLogger(__name__)

#: entry-point group through which other packages extend dissect-study
PLUGIN_GROUP = "dissect_study.plugins"

_loaded = False


def load_plugins() -> None:
    """Import every module named in the `dissect_study.plugins` entry-point group, once per process.

    A plugin that fails to import is logged and skipped: a broken third-party
    package must not stop studies that do not use it (a study that does use it
    then fails with the ordinary "unknown function" diagnostic).
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001 -- any failure of foreign code is reported, not raised
            logger.warning("plugin %r (%s) could not be loaded and is skipped: %s", ep.name, ep.value, err)


def reset_plugins() -> None:
    """Forget that plugins were loaded, so the next `load_plugins` imports them again (tests)."""
    global _loaded
    _loaded = False
