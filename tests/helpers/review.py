"""Fill a report PDF's review form the way a PDF reader saves it (for the review-loop tests).

A reader that ticks a radio button sets the group's /V to the button's state and
the buttons' /AS (the chosen one on, the others /Off); a text field gets /V.
Done here with pypdf's object model directly, independent of the importer.
"""

from __future__ import annotations

from pathlib import Path

import pypdf
from pypdf.generic import NameObject, TextStringObject


def fill_pdf(src: Path, dst: Path, values: dict[str, str]) -> None:
    """`values`: field name -> text, or for a radio group the verdict ("agree", ...)."""
    writer = pypdf.PdfWriter(clone_from=str(src))
    fields = writer._root_object["/AcroForm"]["/Fields"]
    done = set()
    for ref in fields:
        f = ref.get_object()
        name = str(f.get("/T", ""))
        if name not in values or "/Parent" in f:
            continue
        value = values[name]
        if f.get("/FT") == "/Btn" and "/Opt" in f:
            state = NameObject("/" + str(list(f["/Opt"]).index(value)))
            f[NameObject("/V")] = state
            for kid in f.get("/Kids", []):
                k = kid.get_object()
                on = state in k["/AP"]["/N"]
                k[NameObject("/AS")] = state if on else NameObject("/Off")
        else:
            f[NameObject("/V")] = TextStringObject(value)
        done.add(name)
    missing = set(values) - done
    assert not missing, f"no such fields: {missing}"
    with open(dst, "wb") as fh:
        writer.write(fh)
