"""Agreement statistics of the review loop: pure functions over verdict lists.

Cohen's kappa (Cohen 1960) for two reviewers rating the same neurons, Fleiss'
kappa (Fleiss 1971) for three or more; both correct the observed agreement for
the agreement expected by chance from the marginal distribution of verdicts.
Undefined cases (a single category used throughout, so chance agreement is 1)
return None rather than a number that would look meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def observed_agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of items on which two raters give the same verdict."""
    if len(a) != len(b) or not a:
        raise ValueError("two non-empty rating lists of equal length are needed")
    return float(np.mean([x == y for x, y in zip(a, b)]))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """kappa = (p_o - p_e) / (1 - p_e), p_e = sum over verdicts of the two raters' marginal shares."""
    p_o = observed_agreement(a, b)
    cats = sorted(set(a) | set(b))
    n = len(a)
    p_e = sum((list(a).count(k) / n) * (list(b).count(k) / n) for k in cats)
    if np.isclose(p_e, 1.0):
        return None
    return float((p_o - p_e) / (1.0 - p_e))


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa; `ratings[i]` holds every rater's verdict on item i (the same number of raters per item).

    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean P_i, p_j = sum_i n_ij / (N n),
    P_e = sum_j p_j^2, kappa = (P - P_e) / (1 - P_e).
    """
    if not ratings:
        raise ValueError("no items to rate")
    n = len(ratings[0])
    if n < 2 or any(len(r) != n for r in ratings):
        raise ValueError("every item needs the same number (>= 2) of ratings")
    cats = sorted({v for r in ratings for v in r})
    counts = np.array([[list(r).count(k) for k in cats] for r in ratings], dtype=float)
    p_i = (np.sum(counts**2, axis=1) - n) / (n * (n - 1))
    p_bar = float(np.mean(p_i))
    p_j = counts.sum(axis=0) / (len(ratings) * n)
    p_e = float(np.sum(p_j**2))
    if np.isclose(p_e, 1.0):
        return None
    return (p_bar - p_e) / (1.0 - p_e)
