"""Names of the review form fields, shared by the report template and the importer.

Why the name carries run, model, layer and unit: a filled PDF is a loose file that
comes back by e-mail, and its field names are all it keeps of where each answer
belongs.  Every part is percent-encoded and the parts are joined with "|", so a
layer name with dots (which PDF readers treat as field hierarchy) or any other
character survives the round trip unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from dissect_study.errors import DissectStudyError

#: every review field starts with this, so other form fields in a PDF are never misread
PREFIX = "dsr"
SEP = "|"
#: the radio values, in the order the template lists them (a PDF radio group stores the index)
VERDICTS = ("agree", "disagree", "unsure")
#: per-card fields
CARD_PARTS = ("verdict", "comment")
#: once-per-document fields
DOC_PARTS = ("reviewer", "date")


def _enc(s: object) -> str:
    return quote(str(s), safe="").replace(".", "%2E")


def card_field(run_id: str, model: str, layer: str, unit: int, part: str) -> str:
    """`dsr|RUN|MODEL|LAYER|UNIT|part` with each part percent-encoded."""
    assert part in CARD_PARTS, part
    return SEP.join([PREFIX, _enc(run_id), _enc(model), _enc(layer), _enc(int(unit)), part])


def doc_field(run_id: str, part: str) -> str:
    """`dsr|RUN|reviewer` or `dsr|RUN|date`."""
    assert part in DOC_PARTS, part
    return SEP.join([PREFIX, _enc(run_id), part])


@dataclass(frozen=True)
class FieldName:
    """A parsed review field name; model/layer/unit are None for a document field."""

    run_id: str
    part: str
    model: str | None = None
    layer: str | None = None
    unit: int | None = None


class FieldNameError(DissectStudyError, ValueError):
    """A field that starts like a review field but is not one (hand-edited or damaged)."""


def is_review_field(name: str) -> bool:
    return name.split(SEP, 1)[0] == PREFIX


def parse_field(name: str) -> FieldName:
    """Invert `card_field` / `doc_field`; raises FieldNameError for anything else."""
    parts = name.split(SEP)
    if parts[0] != PREFIX:
        raise FieldNameError(f"{name!r} is not a review field")
    if len(parts) == 3 and parts[2] in DOC_PARTS:
        return FieldName(unquote(parts[1]), parts[2])
    if len(parts) == 6 and parts[5] in CARD_PARTS:
        unit = unquote(parts[4])
        if not unit.isdigit():
            raise FieldNameError(f"{name!r}: the unit {unit!r} is not a number")
        return FieldName(unquote(parts[1]), parts[5], unquote(parts[2]), unquote(parts[3]), int(unit))
    raise FieldNameError(
        f"{name!r} is not a review field this tool writes "
        f"(expected {PREFIX}|RUN|MODEL|LAYER|UNIT|verdict or comment, or {PREFIX}|RUN|reviewer or date)"
    )
