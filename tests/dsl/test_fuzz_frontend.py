"""Property-based fuzzing of the language front end with mutated shipped studies (issue 14).

The shipped studies (studies/*.study) are mutated the way careless editors and hostile files
do it: characters and tokens inserted, deleted and duplicated, line endings swapped (CR, CRLF,
U+2028, form feed ...), huge numbers and layer ranges, long strings, doubling `let`s, repeated
list items, stray unicode and bytes.  For every mutant:

* `check_text` / `check_file` return diagnostics and never raise;
* `parse` raises nothing but `StudyError`;
* the rendered diagnostics stay small, whatever the input;
* when the mutant parses, `fmt` returns text that parses to the same syntax tree and is a
  fixed point (formatting it again changes nothing).

The examples run in a child process under `RLIMIT_AS` (1 GiB of address space), so an input
that makes the front end allocate without bound fails the test instead of the machine (the
audit's inputs took 24 GB).  Derandomised, so CI sees the same examples every time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers.paths import REPO, TESTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect_study.dsl import StudyError, check_file, check_text, format_study, parse, render
from dissect_study.dsl.parser import MAX_STRING_CHARS

HERE = Path(__file__).resolve().parent
STUDIES = {p.name: p.read_text(encoding="utf-8") for p in sorted((REPO / "studies").glob("*.study"))}

#: address space for the child process that runs the examples
MEMORY_LIMIT = 1 << 30
#: rendered diagnostics: at most 100 shown, each a few hundred characters
RENDER_BOUND = 1_000_000

LINE_BREAKS = ["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\f", "\v"]
CHARS = (
    list("\"\\#,()=${}.-_[]<>'+e09 \t") + LINE_BREAKS + ["\u00e9", "\u4e2d", "\x00", "\ufeff", "\u00a0", "\U0001f600"]
)
HUGE = ["1e999", "-1e400", "1e308", "9" * 25, "9" * 5000, "_blocks.0-999999999", "layer1-" + "9" * 30, "0.000", "-0"]
IN_STRING = ["\\\\", '\\"', "\\n", "\\t", "\\r", "${x}", "${", "#", "\t", "\u00e9", "\x00", "\\"]
TOKEN = re.compile(r"(\s+)")
#: mutation kinds; strings are where escaping bugs hide, so edits inside them come twice as often
OPS = [
    "in-string",
    "char",
    "delete",
    "duplicate",
    "token",
    "newlines",
    "huge",
    "string",
    "unicode",
    "lets",
    "repeat",
    "in-string",
]


@st.composite
def mutants(draw: st.DrawFn) -> str:
    text = STUDIES[draw(st.sampled_from(sorted(STUDIES)))]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(OPS))
        pos = draw(st.integers(0, len(text)))
        if op == "char":
            text = text[:pos] + draw(st.sampled_from(CHARS)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)) :]
        elif op == "duplicate":
            piece = text[pos : pos + draw(st.integers(1, 300))]
            at = draw(st.integers(0, len(text)))
            text = text[:at] + piece * draw(st.integers(1, 3)) + text[at:]
        elif op == "token":
            parts = TOKEN.split(text)
            i = draw(st.integers(0, len(parts) - 1))
            how = draw(st.sampled_from(["drop", "twice", "swap"]))
            if how == "drop":
                parts[i] = ""
            elif how == "twice":
                parts[i] = parts[i] + " " + parts[i]
            else:
                j = draw(st.integers(0, len(parts) - 1))
                parts[i], parts[j] = parts[j], parts[i]
            text = "".join(parts)
        elif op == "newlines":
            text = text.replace("\n", draw(st.sampled_from(LINE_BREAKS)))
        elif op == "huge":
            text = text[:pos] + " " + draw(st.sampled_from(HUGE)) + " " + text[pos:]
        elif op == "string":
            n = draw(st.sampled_from([0, 1, 300, 70_000, MAX_STRING_CHARS + 1]))
            text = text[:pos] + ' "' + "x" * n + '" ' + text[pos:]
        elif op == "in-string":  # right after a double quote: escapes and odd characters inside strings
            quotes = [m.start() + 1 for m in re.finditer('"', text)] or [pos]
            at = draw(st.sampled_from(quotes))
            text = text[:at] + draw(st.sampled_from(IN_STRING)) + text[at:]
        elif op == "unicode":
            text = text[:pos] + draw(st.text(max_size=6)) + text[pos:]
        elif op == "lets":
            lets = ['let d0 = "ab"'] + [f'let d{i} = "${{d{i - 1}}}${{d{i - 1}}}"' for i in range(1, 26)]
            text = "\n".join(lets) + "\n" + text
        else:
            text = re.sub(r"(dissect \w+)", lambda m: m.group(1) + ", M" * 3000, text, count=1)
    return text


def frontend_properties(text: str) -> None:
    """What must hold for any text (see the module docstring)."""
    _, diags = check_text(text, "fuzz.study", env={})
    assert len(render(diags, text)) < RENDER_BOUND
    try:
        study = parse(text, "fuzz.study")
    except StudyError as err:
        assert err.diagnostics
        return
    formatted = format_study(study)
    assert len(formatted) < 3 * len(text) + 1000
    again = parse(formatted, "fuzz.study")
    assert again == study, "fmt changed the syntax tree"
    assert format_study(again) == formatted, "fmt is not idempotent"


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutants(), st.binary(max_size=4))
def fuzz_frontend(text: str, junk: bytes) -> None:
    frontend_properties(text)
    # the file path too: the same text as bytes, with a few raw bytes (bad UTF-8, NUL) spliced in
    data = text.encode("utf-8", "surrogatepass")
    cut = len(data) // 2
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "fuzz.study"
        f.write_bytes(data[:cut] + junk + data[cut:])
        _, diags = check_file(f, env={})
        assert len(render(diags, "")) < RENDER_BOUND


def test_fuzz_frontend_in_bounded_memory() -> None:
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))\n"
        f"sys.path[:0] = [{str(HERE)!r}, {str(TESTS)!r}]\n"
        "import test_fuzz_frontend as t\n"
        "t.fuzz_frontend()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-8000:]


def test_fuzz_properties_hold_for_the_shipped_studies() -> None:
    """The unmutated studies, in-process (so a plain property failure is easy to read)."""
    for text in STUDIES.values():
        frontend_properties(text)
        for nl in LINE_BREAKS:
            frontend_properties(text.replace("\n", nl))
