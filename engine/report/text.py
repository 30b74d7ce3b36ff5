"""Eliding user text for display: a stored run must stay renderable whatever its strings hold.

Why: concept names, categories, paths and messages come from files users (or an
attacker) wrote; a 1 MB concept name once broke every later report (the word
cloud's font measurement refuses strings that long).  Display text is cut here,
in one way: a prefix, an ellipsis, the full length and a short hash of the
whole string -- so two different long names never become the same label (they
are grouped and joined on), and the same name always elides the same way.
"""

from __future__ import annotations

import hashlib

#: longest name shown in tables, cards, charts and word clouds
MAX_LABEL = 200


def elide(text: str, limit: int = MAX_LABEL) -> str:
    """`text` unchanged when it has at most `limit` characters, else a shorter, distinct stand-in."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    tail = f"… [{len(text):,} characters, {digest}]"
    return text[: max(1, limit - len(tail))] + tail
