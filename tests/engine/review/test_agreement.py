"""Kappa statistics against worked examples computed by hand (and the published Fleiss example)."""

from __future__ import annotations

import pytest

from dissect_study.engine.review.agreement import cohen_kappa, fleiss_kappa, observed_agreement


def test_cohen_kappa_worked_example():
    # 10 neurons; A and B agree on 7. Marginals: A agree 6, disagree 3, unsure 1; B agree 5, disagree 4, unsure 1.
    a = ["agree"] * 5 + ["disagree"] * 2 + ["agree", "disagree", "unsure"]
    b = ["agree"] * 5 + ["disagree"] * 2 + ["disagree", "unsure", "disagree"]
    # p_o = 7/10; p_e = .6*.5 + .3*.4 + .1*.1 = .30 + .12 + .01 = .43; kappa = (.7 - .43) / .57
    assert observed_agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.27 / 0.57)


def test_cohen_kappa_perfect_chance_and_undefined():
    assert cohen_kappa(["agree", "disagree"], ["agree", "disagree"]) == pytest.approx(1.0)
    # opposite on every item with balanced marginals: p_o = 0, p_e = .5 -> -1
    assert cohen_kappa(["agree", "disagree"], ["disagree", "agree"]) == pytest.approx(-1.0)
    assert cohen_kappa(["agree"] * 3, ["agree"] * 3) is None  # chance agreement is 1: undefined
    with pytest.raises(ValueError):
        cohen_kappa(["agree"], [])


def test_fleiss_kappa_wikipedia_example():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories -> kappa = 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = [[str(j) for j, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_kappa_small_hand_example_and_two_raters():
    # 3 items x 3 raters: [a,a,a], [a,a,d], [d,d,u]
    # P_i = 1, 1/3, 1/3 -> P = 5/9; p = a 5/9, d 3/9, u 1/9 -> P_e = 35/81; kappa = (45/81 - 35/81) / (46/81) = 10/46
    ratings = [["agree"] * 3, ["agree", "agree", "disagree"], ["disagree", "disagree", "unsure"]]
    assert fleiss_kappa(ratings) == pytest.approx(10 / 46)
    with pytest.raises(ValueError):
        fleiss_kappa([["agree", "agree"], ["agree"]])
    assert fleiss_kappa([["agree", "agree"], ["agree", "agree"]]) is None
