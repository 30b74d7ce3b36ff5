"""One parse test per grammar construct, asserting the AST built from it (and its spans)."""

from __future__ import annotations

import pytest

from dissect_study.dsl import ast, parse
from dissect_study.dsl.ast import (
    Analysis,
    Arg,
    Bool,
    Call,
    Decl,
    DefaultThreshold,
    Dissect,
    Env,
    Filter,
    Ident,
    LayerAliasDef,
    LayerAll,
    LayerName,
    LayerRange,
    Let,
    Num,
    Report,
    Sample,
    ShowNeuron,
    Str,
    StudyTitle,
    ThresholdRule,
)

S = ast.Span("t", 1, 1, 1, 2)  # spans do not take part in equality


def one(text: str):
    (stmt,) = parse(text, "t.study").statements
    return stmt


def test_study_title_and_comments():
    assert one('# c\nstudy "RQ1" # trailing\n') == StudyTitle("RQ1", S)


def test_string_escapes():
    assert one(r'study "a \"q\" \\ b"').title == 'a "q" \\ b'


@pytest.mark.parametrize(
    "src, value",
    [
        ('let x = "a/${b}"', Str("a/${b}", S)),
        ("let x = 3", Num(3, S)),
        ("let x = -2.5e-3", Num(-0.0025, S)),
        ("let x = true", Bool(True, S)),
        ("let x = false", Bool(False, S)),
        ("let x = other", Ident("other", S)),
        ('let x = env("X")', Env("X", None, S)),
        ('let x = env("X", "/d")', Env("X", Str("/d", S), S)),
    ],
)
def test_let_values(src, value):
    assert one(src) == Let("x", value, S)


def test_int_stays_int_and_float_stays_float():
    assert isinstance(one("let x = 3").value.value, int)
    assert isinstance(one("let x = 3.0").value.value, float)


@pytest.mark.parametrize("kind", ["concepts", "probe", "dissector", "target"])
def test_declarations(kind):
    d = one(f'{kind} a = f("p", k=1, r=b)')
    assert d == Decl(
        kind,
        "a",
        Call("f", (Arg(None, Str("p", S), S), Arg("k", Num(1, S), S), Arg("r", Ident("b", S), S)), S),
        None,
        S,
    )
    assert (d.name_span.line, d.name_span.col) == (1, len(kind) + 2)
    assert d.source.func_span.col == len(kind) + 6


def test_keyword_named_parameters_and_trailing_comma():
    d = one('concepts c = xlsx("a", concepts="b", seed=1,)')
    assert [a.name for a in d.source.args] == [None, "concepts", "seed"]


def test_empty_call():
    assert one("dissector d = demo()").source == Call("demo", (), S)


def test_probe_sample_full_and_partial():
    assert one('probe p = folder("x") sample 500 balanced by density seed 1').sample == Sample(500, "density", 1, S)
    assert one('probe p = folder("x") sample 50').sample == Sample(50, None, None, S)
    assert one('probe p = folder("x") sample 50 seed 3').sample == Sample(50, None, 3, S)


def test_union_probe():
    d = one("probe m = union(a, b, c)")
    assert [a.value for a in d.source.args] == [Ident("a", S), Ident("b", S), Ident("c", S)]


def test_layer_alias_with_names_ranges():
    d = one("layer paper = _blocks.2, blocks.6.2, vision_model.encoder.layers.11, layer4, _blocks.0-38, layer1-4")
    assert d == LayerAliasDef(
        "paper",
        (
            LayerName("_blocks.2", S),
            LayerName("blocks.6.2", S),
            LayerName("vision_model.encoder.layers.11", S),
            LayerName("layer4", S),
            LayerRange("_blocks.", 0, 38, S),
            LayerRange("layer", 1, 4, S),
        ),
        S,
    )
    assert d.layers[4].names()[:2] == ["_blocks.0", "_blocks.1"] and len(d.layers[4].names()) == 39


def test_dissect_full():
    d = one(
        "dissect G, M at layers all by mammo on vindr with concepts paper\n"
        "    using soft_wpmi(top_k=100, lambda=1) pooling avg batch 4"
    )
    assert d == Dissect(
        (Ident("G", S), Ident("M", S)),
        (LayerAll(S),),
        Ident("mammo", S),
        Ident("vindr", S),
        Ident("paper", S),
        Call("soft_wpmi", (Arg("top_k", Num(100, S), S), Arg("lambda", Num(1, S), S)), S),
        (Arg("pooling", Ident("avg", S), S), Arg("batch", Num(4, S), S)),
        S,
    )
    assert (d.span.line, d.span.end_line) == (1, 2)


def test_dissect_minimal():
    d = one("dissect M at layer last by d on p with concepts c")
    assert d.similarity is None and d.options == () and d.layers == (LayerName("last", S),)


@pytest.mark.parametrize(
    "src, rule, count",
    [
        ("threshold max mean_top1 >= count concepts", ThresholdRule("max", "mean_top1", None, ">=", S), "concepts"),
        ("threshold own median_top1 > count neurons", ThresholdRule("own", "median_top1", None, ">", S), "neurons"),
        ("threshold own", ThresholdRule("own", "mean_top1", None, ">=", S), None),
        ("threshold mean_all", ThresholdRule("max", "mean_all", None, ">=", S), None),
        ("threshold 0.25 >", ThresholdRule("fixed", "mean_top1", 0.25, ">", S), None),
    ],
)
def test_default_threshold(src, rule, count):
    assert one(src) == DefaultThreshold(rule, count, S)


def test_compare_users_example():
    a = one("compare M vs C4 at layer last on category Calcification")
    assert a == Analysis(
        "compare",
        (Ident("M", S), Ident("C4", S)),
        (LayerName("last", S),),
        Filter("category", "Calcification", S),
        None,
        None,
        (),
        None,
        S,
        verb="compare",
    )
    assert a.filter.name_span.col == 43


def test_compare_many_with_everything():
    a = one(
        'compare M vs C1 vs C2 at layers early, middle, last on subcategory "Mass shape" '
        "threshold own median_top1 > count neurons"
    )
    assert [m.name for m in a.models] == ["M", "C1", "C2"]
    assert a.filter == Filter("subcategory", "Mass shape", S)
    assert a.threshold == ThresholdRule("own", "median_top1", None, ">", S)
    assert a.count == "neurons"


@pytest.mark.parametrize("verb", ["learned", "missed"])
def test_learned_missed(verb):
    a = one(f"{verb} M at layers all threshold own mean_top1 dedup both")
    assert (a.kind, a.verb) == ("learned", verb)
    assert a.options == (Arg("dedup", Ident("both", S), S),)


@pytest.mark.parametrize("verb", ["gained", "lost"])
def test_gained_lost(verb):
    a = one(f"{verb} C4 over M at layer last on task calcification")
    assert (a.kind, a.verb, [m.name for m in a.models]) == ("gained", verb, ["C4", "M"])
    assert a.filter == Filter("task", "calcification", S)


def test_thresholds():
    a = one("thresholds G, M, C4 at layers _blocks.0-38")
    assert a.kind == "thresholds" and a.layers == (LayerRange("_blocks.", 0, 38, S),)


def test_keywords_top_and_option():
    a = one("keywords M at layer last top 5 min_share 0.6")
    assert a.options == (Arg("top", Num(5, S), S), Arg("min_share", Num(0.6, S), S))


def test_analyze():
    a = one("analyze category_counts of G, M at layers early, middle, last")
    assert (a.kind, a.name, [m.name for m in a.models]) == ("analyze", "category_counts", ["G", "M"])


def test_show_neuron_alias_and_layer_name():
    assert one("show neuron M.last[242] top 5") == ShowNeuron(Ident("M", S), LayerName("last", S), 242, 5, S)
    s = one("show neuron C4._blocks.38[7]")
    assert s == ShowNeuron(Ident("C4", S), LayerName("_blocks.38", S), 7, 5, S)
    assert (s.model.span.col, s.layer.span.col) == (13, 16)


def test_report():
    assert one('report "out/rq1" as html, pdf sections summary, thresholds, learned') == Report(
        Str("out/rq1", S), ("html", "pdf"), ("summary", "thresholds", "learned"), S
    )
    assert one('report "out"') == Report(Str("out", S), ("html", "pdf"), None, S)


def test_newline_insensitive():
    a = parse('target M = demo("M") dissect M at layer last by d on p with concepts c', "t").statements
    b = parse('target M =\n  demo(\n "M"\n)\ndissect M\n at layer last\n by d on p with concepts c\n', "t").statements
    assert a == b and len(a) == 2


def test_spans_point_at_tokens():
    (d,) = parse('\n\n  probe  vindr = folder("x")', "t.study").statements
    assert (d.span.path, d.span.line, d.span.col) == ("t.study", 3, 3)
    assert (d.name_span.line, d.name_span.col, d.name_span.end_col) == (3, 10, 15)
