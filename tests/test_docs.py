"""Document references resolve inside the repository, and docs/METHOD.md matches the code.

Why: code, studies, templates and docs cite the method as "docs/METHOD.md" plus a
section sign and a number.  A user only has this repository, so every such citation must
name a file that exists here and a section number that file defines; none may point at
the team's design notes or at ../shared (tests and benchmarks may *read* ../shared data,
the product may not mention it).  The second half checks that the numbers METHOD.md states
are the code's numbers, so the document cannot silently drift from the engine.

The section sign is written as an escape in this file so the scanner never reads its own
patterns as citations.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
from helpers.paths import REPO as REPO_DIR

REPO = REPO_DIR
SECT = "\u00a7"

#: file kinds that may carry a citation (code, docs, studies, templates, grammar, configs)
SCANNED_SUFFIXES = {".py", ".md", ".j2", ".lark", ".study", ".css", ".toml", ".cfg", ".txt", ".yaml", ".yml"}
SKIPPED_DIRS = {"build", "dist", "out", "__pycache__", "node_modules"}
#: the team's notes, which users never get: only a `docs/` copy of the same name may be cited
TEAM_NOTES = ("METHOD.md", "DESIGN.md", "STYLE.md", "MAMMO_CLIP_FORMAT")
#: what a product file (anything outside tests/ and benchmarks/) must never mention
PRODUCT_FORBIDDEN = ("../shared", "shared/docs", "shared/data", "REFERENCE.md")
#: pyproject's pytest marker describes how the *test suite* uses ../shared
PRODUCT_EXEMPT = {"pyproject.toml"}

_NUM = r"\d+(?:\.\d+)*"
_ONE = rf"(?:{SECT}\s?|sections?\s+)({_NUM})(?:\s?[-\u2013]\s?({_NUM}))?"
#: `docs/<name>.md` optionally followed by a chain of section numbers ("5.1-5.2, 12 and 13", each after a section sign)
DOC_REF = re.compile(rf"docs/(?P<name>[A-Za-z0-9_\-]+\.md)(?P<tail>(?:(?:\s*,\s*|\s+and\s+|\s+)?{_ONE})*)")
SECTION_IN_TAIL = re.compile(_ONE)
BARE_SECTION = re.compile(rf"{SECT}\s?\d")
HEADING = re.compile(rf"^#{{1,6}}\s+({_NUM})\.?\s", re.MULTILINE)


def repo_files() -> list[Path]:
    """Every scanned text file of the working tree (hidden folders, builds and venvs skipped)."""
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        for f in sorted(files):
            p = Path(root) / f
            if p.suffix in SCANNED_SUFFIXES or f == "Makefile":
                out.append(p)
    return out


def section_numbers(text: str) -> list[str]:
    """Numbers of the numbered headings of a Markdown document ("## 3. X", "### 3.1 Y")."""
    return HEADING.findall(text)


def citations(text: str) -> list[tuple[str, list[str], tuple[int, int]]]:
    """(doc name, cited section numbers, span) of every `docs/<name>.md ...` citation in `text`."""
    out = []
    for m in DOC_REF.finditer(text):
        nums = [n for pair in SECTION_IN_TAIL.findall(m.group("tail")) for n in pair if n]
        out.append((m.group("name"), nums, m.span()))
    return out


def bare_sections(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Offsets of section signs with a number that belong to no `docs/<name>.md` citation."""
    return [m.start() for m in BARE_SECTION.finditer(text) if not any(a <= m.start() < b for a, b in spans)]


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


# --------------------------------------------------------------------------- the scanner itself


def test_scanner_reads_citation_chains():
    text = f"see docs/METHOD.md {SECT}5.1-5.2, {SECT}12 and {SECT}13; also docs/LANGUAGE.md and docs/METHOD.md section 7.4."
    got = [(name, nums) for name, nums, _ in citations(text)]
    assert got == [("METHOD.md", ["5.1", "5.2", "12", "13"]), ("LANGUAGE.md", []), ("METHOD.md", ["7.4"])]
    spans = [s for _, _, s in citations(text)]
    assert bare_sections(text, spans) == []
    lone = f"the rule of {SECT}5.6 (METHOD.md {SECT}3)"
    assert len(bare_sections(lone, [s for _, _, s in citations(lone)])) == 2


def test_scanner_reads_numbered_headings():
    doc = "# Title\n\n## 1. One\n### 1.1 Sub\n#### 1.1.2 Deeper\n## 2. Two\nnot a heading 3.\n## Unnumbered\n"
    assert section_numbers(doc) == ["1", "1.1", "1.1.2", "2"]


# --------------------------------------------------------------------------- the repository


def test_every_doc_citation_resolves():
    files = repo_files()
    assert any(_rel(p) == "docs/METHOD.md" for p in files)
    sections: dict[str, set[str]] = {}
    problems = []
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        found = citations(text)
        for name, nums, (start, _) in found:
            doc = REPO / "docs" / name
            where = f"{_rel(p)}:{_line(text, start)}"
            if not doc.is_file():
                problems.append(f"{where}: docs/{name} does not exist")
                continue
            if name not in sections:
                sections[name] = set(section_numbers(doc.read_text(encoding="utf-8")))
            problems += [f"{where}: docs/{name} has no section {n}" for n in nums if n not in sections[name]]
        own = set(section_numbers(text)) if _rel(p).startswith("docs/") and p.suffix == ".md" else None
        for off in bare_sections(text, [s for _, _, s in found]):
            num = re.match(_NUM, text[off + 1 :].lstrip()).group(0)
            if own is None:
                problems.append(
                    f"{_rel(p)}:{_line(text, off)}: section {num} cited without its document; "
                    f"write docs/<NAME>.md {SECT}{num}"
                )
            elif num not in own:
                problems.append(f"{_rel(p)}:{_line(text, off)}: no section {num} in this document")
    assert not problems, "\n".join(problems)


def test_no_citation_of_the_team_notes():
    problems = []
    for p in repo_files():
        if p == Path(__file__).resolve():  # this file names the notes in order to forbid them
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        for note in TEAM_NOTES:
            for m in re.finditer(re.escape(note), text):
                if text[max(0, m.start() - 5) : m.start()] != "docs/":
                    problems.append(
                        f"{_rel(p)}:{_line(text, m.start())}: cites the team note {note!r}; "
                        f"cite a document in docs/ instead"
                    )
        if "shared/docs" in text:
            problems.append(f"{_rel(p)}: mentions shared/docs (the team's notes)")
    assert not problems, "\n".join(problems)


def test_product_files_do_not_reach_into_shared():
    problems = []
    for p in repo_files():
        rel = _rel(p)
        if rel.split("/")[0] in ("tests", "benchmarks") or rel in PRODUCT_EXEMPT:
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        for word in PRODUCT_FORBIDDEN:
            i = text.find(word)
            if i >= 0:
                problems.append(f"{rel}:{_line(text, i)}: mentions {word!r}, which users do not have")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- METHOD.md against the code


def _method() -> str:
    return (REPO / "docs" / "METHOD.md").read_text(encoding="utf-8")


def _section(text: str, number: str) -> str:
    """The body of section `number` (up to the next heading of the same or a higher level)."""
    m = re.search(rf"^(#+)\s+{re.escape(number)}\.?\s.*$", text, re.MULTILINE)
    assert m, f"docs/METHOD.md has no section {number}"
    level = len(m.group(1))
    nxt = re.compile(rf"^#{{1,{level}}}\s", re.MULTILINE).search(text, m.end())
    return text[m.start() : nxt.start() if nxt else len(text)]


def test_method_sections_are_unique_and_nested():
    nums = section_numbers(_method())
    assert len(nums) == len(set(nums)), [n for n in nums if nums.count(n) > 1]
    orphans = [n for n in nums if "." in n and n.rsplit(".", 1)[0] not in nums]
    assert not orphans
    assert {"1", "3", "5", "7", "10", "11", "12"} <= set(nums)


def _spellings(value: object) -> set[str]:
    """How a default may be written in prose: 10.0 -> "10", 1e-07 -> "1e-7", "" -> '""'."""
    if isinstance(value, str):
        return {f'"{value}"'}
    if isinstance(value, bool) or value is None:
        return {str(value).lower()}
    v = float(value)
    out = {f"{v:g}", re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:g}")}
    if v.is_integer():
        out.add(str(int(v)))
    if v != 0:
        exp = math.floor(math.log10(abs(v)))
        mant = v / 10**exp
        if abs(mant - round(mant)) < 1e-12:
            out.add(f"{int(round(mant))}e{exp}")
    return out


def test_method_states_every_similarity_default():
    from dissect_study.dsl.vocabulary import SIMILARITIES

    text = _method()
    body = _section(text, "3")
    missing = []
    for name, fn in SIMILARITIES.items():
        heads = [m for m in re.finditer(rf"^###\s+3\.\d+\s.*`{re.escape(name)}`.*$", body, re.MULTILINE)]
        assert heads, f"docs/METHOD.md {SECT}3 has no subsection for `{name}`"
        sub = _section(body, heads[0].group(0).split()[1])
        for p in fn.params:
            if not any(f"`{p.name}` = {s}" in sub for s in _spellings(p.default)):
                missing.append(f"{name}.{p.name} = {p.default!r}")
    assert not missing, f"defaults not stated (or stated differently) in docs/METHOD.md: {missing}"


def test_method_states_thresholds_pooling_and_options():
    from dissect_study.dsl import vocabulary as R
    from dissect_study.engine.scores.labels import TAU_STATISTICS

    text = _method()
    tau = _section(text, "5.1")
    assert all(f"`{s}`" in tau for s in TAU_STATISTICS) and set(TAU_STATISTICS) == set(R.THRESHOLD_STATISTICS)
    rules = _section(text, "5.2")
    assert all(f"`{c}`" in rules for c in ("max", "own")) and all(f"`{op}`" in rules for op in R.THRESHOLD_OPS)
    pooling = _section(text, "2.2")
    assert all(f"`{p}`" in pooling for p in R.POOLINGS)
    assert f"`{R.DISSECT_OPTIONS['pooling'].default}` (default)" in pooling
    labels = _section(text, "4")
    for opt in ("top_concepts", "top_images"):
        assert f"`{opt}` (default {R.DISSECT_OPTIONS[opt].default})" in labels


def test_method_states_preprocessing_constants():
    from dissect_study.engine.models import mammo_clip as mc

    image = _section(_method(), "7.1")
    h, w = mc.IMAGE_SIZE
    assert f"{h} x {w}" in image
    assert f"mean {mc.MEAN}" in image and f"std {mc.STD!r}" in image
    text = _section(_method(), "7.3")
    assert f"`max_length` {mc.TEXT_MAX_LENGTH}" in text and f"chunk of {mc.TEXT_BATCH}" in text


def test_method_states_the_cheapest_pass_rule():
    from dissect_study.dsl.vocabulary import SIMILARITIES
    from dissect_study.engine.plan import cheapest_pass as cp

    rule = _section(_method(), "10")
    assert f"more than {cp.MIN_PROBE_IMAGES:,} images" in rule
    assert f"{cp.SANITY_SAMPLE} rows" in rule
    assert f"at most {round(cp.MAX_FRACTION * 100)} %" in rule
    families = _section(_method(), "10.1")
    for name, fn in SIMILARITIES.items():
        row = next((line for line in families.splitlines() if f"`{name}`" in line), None)
        assert row is not None and f"`{fn.family}`" in row, f"family of {name} is {fn.family!r}: {row}"


@pytest.mark.parametrize("number", ["5.8", "9.2", "11.1"])
def test_method_sections_cited_for_behaviour_exist(number):
    # the code's own citations are checked above; these anchor the sections the report and
    # the studies depend on, so a renumbering fails here with a readable message
    assert _section(_method(), number).strip()
