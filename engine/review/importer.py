"""`dissect-study review import FILE...`: filled PDFs and exported JSON into the `reviews` table.

All or nothing over the files given: every file is read and checked against the
database first (its run exists, every neuron it answers is a neuron of that run,
its field names are ones this tool writes, a reviewer is named), and only then
are the rows of all files added in one transaction.  A file whose bytes were
imported before is skipped, so importing it again changes nothing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from dissect_study.engine.review import store
from dissect_study.engine.review.fields import VERDICTS, FieldNameError, is_review_field, parse_field
from dissect_study.errors import DissectStudyError

logger = logging.getLogger(__name__)

#: `format` of the HTML page's JSON export
JSON_FORMAT = "dissect-study-review"


class ReviewImportError(DissectStudyError):
    """A review file cannot be imported; nothing was imported."""


@dataclass
class Answer:
    model: str
    layer: str
    unit: int
    verdict: str | None
    comment: str
    label: str | None = None  # what a JSON export says the card showed


@dataclass
class ReviewFile:
    """One file's answers, as read, before they are checked against the database."""

    path: Path
    sha256: str
    run_id: str
    reviewer: str
    date: str
    answers: list[Answer] = field(default_factory=list)


@dataclass
class ImportResult:
    rows: int
    imported: list[Path]
    skipped: list[Path]


def read_review_file(path: str | Path) -> ReviewFile:
    """Read a filled PDF packet or an HTML JSON export; raises ReviewImportError with the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ReviewImportError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not data.strip():
        raise ReviewImportError(f"{path}: the file is empty; send the filled report.pdf or the exported JSON")
    sha = hashlib.sha256(data).hexdigest()
    if data.lstrip()[:5] == b"%PDF-":
        rf = _read_pdf(path, data, sha)
    elif data.lstrip()[:1] == b"{":
        rf = _read_json(path, data, sha)
    else:
        raise ReviewImportError(
            f"{path}: not a PDF and not a JSON review export; import the filled report.pdf "
            "or the file the HTML report's 'Export answers' button saves"
        )
    if not rf.reviewer.strip():
        raise ReviewImportError(f"{path}: the reviewer's name is empty; fill in 'Reviewer' at the top of the packet")
    if not rf.answers:
        raise ReviewImportError(f"{path}: no card is answered (no verdict and no comment); nothing to import")
    return rf


def _pdf_fields(path: Path, data: bytes) -> dict[str, list[dict[str, Any]]]:
    """Every form field of the PDF by name; a radio group contributes its parent and its buttons."""
    import io

    import pypdf
    from pypdf.errors import PyPdfError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        root: Any = reader.trailer["/Root"]
        form: Any = root.get_object().get("/AcroForm")
        roots = list(form.get_object().get("/Fields", [])) if form is not None else []
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ReviewImportError(f"{path}: not a readable PDF ({type(e).__name__}: {e})") from None
    out: dict[str, list[dict[str, Any]]] = {}

    def walk(obj: Any, inherited: str | None) -> None:
        f = obj.get_object()
        name = str(f["/T"]) if "/T" in f else inherited
        if name is not None:
            out.setdefault(name, []).append(f)
        for kid in f.get("/Kids", []):
            walk(kid, name)

    for ref in roots:
        walk(ref, None)
    return out


def _radio_value(entries: list[dict[str, Any]]) -> str | None:
    """The chosen state of a radio group: the parent's /V, else a button's /AS; None when nothing is chosen."""
    opts = next((list(e["/Opt"]) for e in entries if "/Opt" in e), None)
    chosen = None
    for key in ("/V", "/AS"):
        for e in entries:
            v = e.get(key)
            if v is not None and str(v) not in ("/Off", "Off", ""):
                chosen = str(v).lstrip("/")
                break
        if chosen is not None:
            break
    if chosen is None:
        return None
    if opts is not None and chosen.isdigit() and int(chosen) < len(opts):
        return str(opts[int(chosen)])  # WeasyPrint names a group's states by index; /Opt has the values
    return chosen


def _read_pdf(path: Path, data: bytes, sha: str) -> ReviewFile:
    fields = _pdf_fields(path, data)
    ours = {n: e for n, e in fields.items() if is_review_field(n)}
    if not ours:
        raise ReviewImportError(
            f"{path}: the PDF has no review fields (not a dissect-study report, or its form fields were renamed); "
            "import the report.pdf the tool wrote, filled in a PDF reader"
        )
    runs: set[str] = set()
    doc: dict[str, str] = {}
    cards: dict[tuple[str, str, int], dict[str, Any]] = {}
    for name, entries in ours.items():
        try:
            fn = parse_field(name)
        except FieldNameError as e:
            raise ReviewImportError(
                f"{path}: {e}; the form was edited, import the packet as the tool wrote it"
            ) from None
        runs.add(fn.run_id)
        if fn.model is None:
            doc[fn.part] = next((str(e["/V"]) for e in entries if e.get("/V") not in (None, "")), "")
            continue
        assert fn.layer is not None and fn.unit is not None
        card = cards.setdefault((fn.model, fn.layer, fn.unit), {"verdict": None, "comment": ""})
        if fn.part == "verdict":
            card["verdict"] = _radio_value(entries)
        else:
            card["comment"] = next((str(e["/V"]) for e in entries if e.get("/V") not in (None, "")), "")
    if len(runs) != 1:
        raise ReviewImportError(
            f"{path}: its fields name {len(runs)} runs ({', '.join(sorted(runs))}); one packet is one run"
        )
    answers = []
    for (model, layer, unit), card in cards.items():
        verdict, comment = card["verdict"], card["comment"]
        if verdict is not None and verdict not in VERDICTS:
            raise ReviewImportError(
                f"{path}: {model}.{layer}[{unit}] has the answer {verdict!r}; expected one of {', '.join(VERDICTS)}"
            )
        if verdict is not None or comment.strip():
            answers.append(Answer(model, layer, unit, verdict, comment))
    return ReviewFile(path, sha, runs.pop(), doc.get("reviewer", "").strip(), doc.get("date", "").strip(), answers)


def _read_json(path: Path, data: bytes, sha: str) -> ReviewFile:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReviewImportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != JSON_FORMAT:
        raise ReviewImportError(
            f'{path}: a JSON file, but not a review export (its "format" must be {JSON_FORMAT!r}); '
            "use the HTML report's 'Export answers' button"
        )
    answers = []
    for i, a in enumerate(obj.get("answers") or []):
        try:
            verdict = a.get("verdict")
            if verdict is not None and verdict not in VERDICTS:
                raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
            unit = a["unit"]
            if isinstance(unit, bool) or not isinstance(unit, int):
                raise ValueError(f"unit {unit!r} is not an integer")
            answers.append(
                Answer(str(a["model"]), str(a["layer"]), unit, verdict, str(a.get("comment") or ""), a.get("label"))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ReviewImportError(f"{path}: answer {i + 1} is malformed ({e})") from None
    answers = [a for a in answers if a.verdict is not None or a.comment.strip()]
    return ReviewFile(
        path,
        sha,
        str(obj.get("run_id") or ""),
        str(obj.get("reviewer") or "").strip(),
        str(obj.get("date") or ""),
        answers,
    )


def _check_against_db(con: duckdb.DuckDBPyConnection, rf: ReviewFile, run: str | None) -> dict[tuple, str]:
    """The labels of the neurons the file answers; raises when the run or a neuron is not in the database."""
    if run is not None and rf.run_id != run:
        raise ReviewImportError(f"{rf.path}: the packet of run {rf.run_id!r}, not of run {run!r} (--run)")
    if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [rf.run_id]).fetchall()[0][0]:
        raise ReviewImportError(
            f"{rf.path}: the packet of run {rf.run_id!r}, which is not in this results database; "
            "import it into the database that holds that run (--db)"
        )
    keys = pd.DataFrame([(a.model, a.layer, a.unit) for a in rf.answers], columns=["model", "layer", "unit"])
    con.register("_answered", keys)
    try:
        found = con.execute(
            "SELECT a.model, a.layer, a.unit, n.label FROM _answered a LEFT JOIN neurons n "
            "ON n.run_id = ? AND n.model = a.model AND n.layer = a.layer AND n.unit = a.unit",
            [rf.run_id],
        ).fetchall()
    finally:
        con.unregister("_answered")
    labels = {(m, ly, int(u)): lab for m, ly, u, lab in found}
    unknown = [k for k in labels if labels[k] is None]
    if unknown:
        shown = ", ".join(f"{m}.{ly}[{u}]" for m, ly, u in unknown[:5])
        raise ReviewImportError(
            f"{rf.path}: {len(unknown)} answered neuron(s) are not neurons of run {rf.run_id}: {shown}"
            f"{' ...' if len(unknown) > 5 else ''}; the file was edited or belongs to another database"
        )
    for a in rf.answers:
        shown_label = labels[(a.model, a.layer, a.unit)]
        if a.label is not None and a.label != shown_label:
            raise ReviewImportError(
                f"{rf.path}: {a.model}.{a.layer}[{a.unit}] was shown as {a.label!r}, but run {rf.run_id} "
                f"labels it {shown_label!r}; the file was edited"
            )
    return labels


def import_reviews(db: str | Path, files: list[str | Path], run: str | None = None) -> ImportResult:
    """Import every file or none; files imported before (same bytes) are skipped."""
    from dissect_study.engine.store.database import connect

    if not files:
        raise ReviewImportError("no review file given")
    read = [read_review_file(f) for f in files]  # raises before the database is opened
    con = connect(db)
    try:
        seen = store.imported_hashes(con)
        now = _dt.datetime.now()
        frames, imported, skipped = [], [], []
        for rf in read:
            if rf.sha256 in seen:
                logger.info(f"{rf.path}: imported before (same content); skipped")
                skipped.append(rf.path)
                continue
            labels = _check_against_db(con, rf, run)
            seen.add(rf.sha256)
            imported.append(rf.path)
            frames.append(
                pd.DataFrame(
                    [
                        dict(
                            run_id=rf.run_id,
                            model=a.model,
                            layer=a.layer,
                            unit=a.unit,
                            label=labels[(a.model, a.layer, a.unit)],
                            reviewer=rf.reviewer,
                            verdict=a.verdict,
                            comment=a.comment,
                            source_file=str(rf.path.resolve()),
                            source_sha256=rf.sha256,
                            imported_at=now,
                            review_date=rf.date,
                        )
                        for a in rf.answers
                    ]
                )
            )
        rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(store.COLUMNS))
        if len(rows):
            rows["unit"] = rows["unit"].astype("int32")
            store.insert(con, rows)
    finally:
        con.close()
    return ImportResult(len(rows), imported, skipped)
