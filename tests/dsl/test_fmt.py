"""Formatter properties: for generated valid studies, parse -> format -> parse gives the
same AST, formatting is idempotent, and comments survive."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect_study.dsl import format_study, parse
from dissect_study.dsl.parser import RESERVED

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in RESERVED)
WS = st.sampled_from([" ", "  ", "\n", "\n    ", " # note\n", "\t"])
STRINGS = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)
NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6).map(str), st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr)
)


@st.composite
def values(draw):
    kind = draw(st.sampled_from(["str", "num", "bool", "ident", "env", "envd"]))
    if kind == "str":
        return draw(STRINGS)
    if kind == "num":
        return draw(NUMBERS)
    if kind == "bool":
        return draw(st.sampled_from(["true", "false"]))
    if kind == "ident":
        return draw(NAMES)
    if kind == "env":
        return f"env({draw(STRINGS)})"
    return f"env({draw(STRINGS)}, {draw(st.one_of(STRINGS, NUMBERS))})"


@st.composite
def calls(draw):
    args = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            args.append(f"{draw(st.one_of(NAMES, st.just('seed')))}={draw(values())}")
        else:
            args.append(draw(values()))
    return f"{draw(NAMES)}({', '.join(args)})"


LAYER = st.one_of(
    NAMES,
    st.sampled_from(["_blocks.2", "blocks.6.2", "vision_model.encoder.layers.11", "all", "_blocks.0-38", "layer1-4"]),
)


@st.composite
def layers(draw):
    return ", ".join(draw(st.lists(LAYER, min_size=1, max_size=3)))


@st.composite
def rules(draw, op_required: bool = False):
    # After a one-word rule (`threshold own`) a following `name value` option would be read as the
    # statistic; studies write the operator there (the formatter always does), so the generator does.
    ops = [">=", ">"] if op_required else [">=", ">", ""]
    if draw(st.booleans()):
        return f"threshold {draw(st.floats(0, 5, allow_nan=False).map(repr))} {draw(st.sampled_from(ops))}"
    head = draw(st.sampled_from(["max mean_top1", "own median_top1", "own", "mean_all", "max"]))
    return f"threshold {head} {draw(st.sampled_from(ops))}"


@st.composite
def tails(draw):
    parts = []
    if draw(st.booleans()):
        parts.append(f"at {draw(st.sampled_from(['layer', 'layers']))} {draw(layers())}")
    if draw(st.booleans()):
        parts.append(f"on {draw(st.sampled_from(['category', 'task', 'domain']))} {draw(st.one_of(NAMES, STRINGS))}")
    if draw(st.booleans()):
        parts.append(draw(rules(op_required=True)))
    if draw(st.booleans()):
        parts.append(f"count {draw(st.sampled_from(['concepts', 'neurons']))}")
    if draw(st.booleans()):
        parts.append(f"top {draw(st.integers(1, 20))}")
    if draw(st.booleans()):
        parts.append(f"{draw(NAMES)} {draw(values())}")
    return " ".join(parts)


@st.composite
def statements(draw):
    k = draw(st.integers(0, 13))
    n = NAMES
    if k == 0:
        return f"study {draw(STRINGS)}"
    if k == 1:
        return f"let {draw(n)} = {draw(values())}"
    if k == 2:
        sample = ""
        if draw(st.booleans()):
            sample = f" sample {draw(st.integers(1, 9999))}"
            if draw(st.booleans()):
                sample += f" balanced by {draw(n)}"
            if draw(st.booleans()):
                sample += f" seed {draw(st.integers(0, 99))}"
        return (
            f"{draw(st.sampled_from(['concepts', 'probe', 'dissector', 'target']))} {draw(n)} = {draw(calls())}{sample}"
        )
    if k == 3:
        return f"layer {draw(n)} = {draw(layers())}"
    if k == 4:
        text = (
            f"dissect {', '.join(draw(st.lists(n, min_size=1, max_size=3)))} at layers {draw(layers())} "
            f"by {draw(n)} on {draw(n)} with concepts {draw(n)}"
        )
        if draw(st.booleans()):
            text += f" using {draw(calls())}"
        for _ in range(draw(st.integers(0, 2))):
            text += f" {draw(n)} {draw(values())}"
        return text
    if k == 5:
        return draw(rules()) + (
            f" count {draw(st.sampled_from(['concepts', 'neurons']))}" if draw(st.booleans()) else ""
        )
    if k == 6:
        return f"compare {' vs '.join(draw(st.lists(n, min_size=2, max_size=4)))} {draw(tails())}"
    if k == 7:
        return f"{draw(st.sampled_from(['learned', 'missed']))} {draw(n)} {draw(tails())}"
    if k == 8:
        return f"{draw(st.sampled_from(['gained', 'lost']))} {draw(n)} over {draw(n)} {draw(tails())}"
    if k == 9:
        return f"thresholds {', '.join(draw(st.lists(n, min_size=1, max_size=3)))} {draw(tails())}"
    if k == 10:
        return f"keywords {draw(n)} {draw(tails())}"
    if k == 11:
        return f"analyze {draw(n)} of {draw(n)} {draw(tails())}"
    if k == 12:
        layer = draw(st.sampled_from(["last", "_blocks.38", "vision_model.encoder.layers.11"]))
        top = f" top {draw(st.integers(1, 9))}" if draw(st.booleans()) else ""
        return f"show neuron {draw(n)}.{layer}[{draw(st.integers(0, 999))}]{top}"
    fmts = ", ".join(draw(st.lists(st.sampled_from(["html", "pdf"]), min_size=1, max_size=2)))
    secs = ", ".join(
        draw(st.lists(st.sampled_from(["summary", "thresholds", "learned", "neurons"]), min_size=1, max_size=3))
    )
    return f"report {draw(STRINGS)} as {fmts}" + (f" sections {secs}" if draw(st.booleans()) else "")


@st.composite
def studies(draw):
    stmts = draw(st.lists(statements(), min_size=1, max_size=8))
    # A study-wide `threshold` right after an analysis would be read as that analysis's clause
    # (the checker warns about it); put the study defaults first, as studies do.
    stmts.sort(key=lambda s: s.split()[0] != "threshold")
    return "".join(s + draw(WS) for s in stmts)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(studies())
def test_parse_format_parse_roundtrip_and_idempotence(text):
    first = parse(text, "g.study")
    formatted = format_study(first)
    second = parse(formatted, "g.study")
    assert second == first
    assert format_study(second) == formatted


def test_comments_survive_formatting():
    text = '# header\nstudy "x"   # the title\n\n\n# models\ntarget M = demo("M")\n# tail\n'
    out = format_study(parse(text, "c.study"))
    assert out == '# header\nstudy "x"  # the title\n\n# models\ntarget M = demo("M")\n\n# tail\n'
    assert format_study(parse(out, "c.study")) == out


def test_canonical_layout():
    text = "dissect G,M at layers all by d on p with concepts c using soft_wpmi( top_k = 100 ) pooling avg\ncompare G vs M  at  layers  early"
    assert format_study(parse(text, "c")) == (
        "dissect G, M\n    at layers all\n    by d on p with concepts c\n    using soft_wpmi(top_k=100)\n    pooling avg\n\n"
        "compare G vs M at layer early\n"
    )


def test_threshold_after_analysis_belongs_to_it_and_is_flagged():
    from dissect_study.dsl import check_text

    text = (
        'concepts c = shipped("mammo_v1")\nprobe p = phantom()\ndissector d = demo()\ntarget M = demo("M")\n'
        'target G = demo("G")\ndissect G, M at layers all by d on p with concepts c\n'
        "compare G vs M at layer last\nthreshold own mean_top1 >=\n"
    )
    checked, diags = check_text(text, "t.study", env={})
    assert checked is not None and checked.analyses[0].threshold.combine == "own"
    assert [(d.code, d.span.line) for d in diags] == [("threshold-attached", 8)]
