"""The `review` statement: parse, check (sizes, options, explicit units) and format round trip."""

from __future__ import annotations

import pytest

from dissect_study.dsl import check_text, format_study, parse

HEAD = """study "r"
concepts mammo = shipped("mammo_v1")
probe phantoms = phantom(n=40, seed=0)
dissector demo = demo()
target M = demo("M")
target C = demo("C_calcification")
layer late = blocks.3, blocks.4
dissect M, C at layers all by demo on phantoms with concepts mammo
"""


def _check(stmt: str):
    checked, diags = check_text(HEAD + stmt + "\n", "r.study")
    return checked, [d for d in diags if d.is_error]


@pytest.mark.parametrize(
    "stmt, options",
    [
        ("review M at layer blocks.4 sample 30 seed 7", {"select": "sample", "n": 30, "seed": 7, "labels": "any"}),
        ("review M at layer blocks.4 sample 5", {"select": "sample", "n": 5, "seed": 0}),
        ("review C at layers late top 20 on task calcification", {"select": "top", "n": 20}),
        ("review M at layer blocks.4 labels unsupported top 3 images 4", {"labels": "unsupported", "images": 4}),
        ("review M.blocks.4[3, 17, 3, 42]", {"select": "units", "units": [3, 17, 42]}),
    ],
)
def test_valid_review_statements(stmt, options):
    checked, errors = _check(stmt)
    assert not errors, errors
    (a,) = [x for x in checked.analyses if x.kind == "review"]
    assert a.models == [stmt.split()[1].split(".")[0]]
    assert options.items() <= a.options.items()
    assert a.top == a.options["images"]


def test_filter_and_layers_are_kept():
    checked, _ = _check("review C at layers late top 20 on task calcification")
    (a,) = checked.analyses
    assert (a.filter.level, a.filter.name) == ("task", "calcification")
    assert [layer.text for layer in a.layers] == ["blocks.3", "blocks.4"]


@pytest.mark.parametrize(
    "stmt, message",
    [
        ("review M at layer blocks.4", "a review packet needs a size"),
        ("review M at layer blocks.4 top 3 sample 2", "`top N` or `sample N`, not both"),
        ("review M.blocks.4[3] top 2", "a list of units already picks the neurons"),
        ("review M.late[3]", "a list of units needs exactly one layer"),
        ("review M at layer blocks.4 top 3 lables any", "review has no option 'lables'"),
        ("review M at layer blocks.4 top 3 labels maybe", "cannot be 'maybe'"),
        ("review X at layer blocks.4 top 3", "X"),
        ("review M at layer blocks.4 top 0", "top"),
        ("review M at layer blocks.4 sample 3 seed 1 sample 4", "given twice"),
    ],
)
def test_bad_review_statements(stmt, message):
    checked, errors = _check(stmt)
    text = " | ".join(f"{d.message} {d.hint or ''}" for d in errors)
    assert errors and message in text, text


def test_format_round_trip():
    text = HEAD + (
        "review   C at layers late on task calcification   top 20\n"
        "review M at layer blocks.4 sample 30 seed 7 labels supported\n"
        "review M.blocks.4[3,17]  images 3\n"
    )
    out = format_study(parse(text, "r.study"))
    assert "review C at layers late on task calcification top 20" in out
    assert "review M at layer blocks.4 sample 30 seed 7 labels supported" in out
    assert "review M.blocks.4[3, 17] images 3" in out
    assert parse(out, "r.study") == parse(text, "r.study")
    assert format_study(parse(out, "r.study")) == out
