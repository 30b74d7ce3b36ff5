"""The report section of the review loop: what reviewers answered and how far they agree.

Built from each reviewer's latest answer per neuron (store.latest_reviews).
"Agreement rate" is the share of answers that agree with the label shown;
inter-reviewer agreement is Cohen's kappa for two reviewers and Fleiss' kappa for
more, over the neurons every reviewer gave a verdict on.  When the run has label
evidence (`label_evidence`, rank 1 = the label), the rates are split by
supported / unsupported labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from dissect_study.engine.report.model import Block, Section, _para, _table, fmt
from dissect_study.engine.review.agreement import cohen_kappa, fleiss_kappa, observed_agreement
from dissect_study.engine.review.fields import VERDICTS
from dissect_study.engine.review.store import has_table, latest_reviews

if TYPE_CHECKING:
    from dissect_study.engine.report.model import _Ctx

SECTION_ID = "reviews"
TITLE = "Radiologist review and agreement"


def _rate_rows(g: pd.DataFrame, keys: list[str]) -> list[list[str]]:
    rows = []
    for k, d in g.groupby(keys, sort=False, dropna=False):
        vals = k if isinstance(k, tuple) else (k,)
        v = d["verdict"].dropna()
        counts = [int((v == x).sum()) for x in VERDICTS]
        rate = counts[0] / len(v) if len(v) else None
        n_neurons = len(d[["model", "layer", "unit"]].drop_duplicates())
        rows.append([*(str(x) if pd.notna(x) else "—" for x in vals), str(n_neurons), *map(str, counts), _pct(rate)])
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def kappa_text(rv: pd.DataFrame) -> str:
    """One sentence: the inter-reviewer kappa of the run's answers, or why there is none."""
    answered = rv.dropna(subset=["verdict"])
    reviewers = sorted(answered["reviewer"].unique())
    if len(reviewers) < 2:
        return "Inter-reviewer agreement needs answers from at least two reviewers; so far: " + (
            ", ".join(reviewers) or "none"
        )
    wide = answered.pivot_table(
        index=["model", "layer", "unit"], columns="reviewer", values="verdict", aggfunc="first"
    ).dropna()
    if not len(wide):
        return f"No neuron has a verdict from every reviewer ({', '.join(reviewers)}); no inter-reviewer agreement yet."
    if len(reviewers) == 2:
        a, b = list(wide[reviewers[0]]), list(wide[reviewers[1]])
        k = cohen_kappa(a, b)
        what = "Cohen's κ"
        extra = f"; observed agreement {_pct(observed_agreement(a, b))}"
    else:
        k = fleiss_kappa([list(r) for r in wide[reviewers].itertuples(index=False)])
        what, extra = "Fleiss' κ", ""
    value = "undefined (every answer is the same verdict)" if k is None else f"= {fmt(k)}"
    return (
        f"{what} {value} over {len(wide)} neuron(s) answered by all {len(reviewers)} reviewers "
        f"({', '.join(reviewers)}){extra}."
    )


def _disagreements(rv: pd.DataFrame) -> list[list[str]]:
    rows = []
    for (m, ly, u), d in rv.groupby(["model", "layer", "unit"], sort=True):
        verdicts = set(d["verdict"].dropna())
        if len(verdicts) < 2 and "disagree" not in verdicts:
            continue
        answers = "; ".join(
            f"{r.reviewer}: {r.verdict or 'no verdict'}"
            + (f" — {r.comment.strip()}" if (r.comment or "").strip() else "")
            for r in d.itertuples()
        )
        rows.append([str(m), str(ly), str(u), str(d["label"].iloc[0]), answers])
    return rows


def reviews_section(c: _Ctx) -> Section | None:
    rv = latest_reviews(c.con, c.run_id)
    if not len(rv):
        return None
    cat_of = dict(zip(c.concepts["concept"], c.concepts["category"])) if len(c.concepts) else {}
    rv["category"] = rv["label"].map(lambda x: c.palette.title(cat_of.get(x)) if x in cat_of else None)
    s = Section(SECTION_ID, TITLE)
    n_rev = rv["reviewer"].nunique()
    s.blocks.append(
        _para(
            f"{len(rv)} answer(s) from {n_rev} reviewer(s) on "
            f"{len(rv[['model', 'layer', 'unit']].drop_duplicates())} neuron(s) (each reviewer's latest answer). "
            "The agreement rate is the share of verdicts that agree with the label the card showed."
        )
    )
    s.blocks.append(Block("para", text=kappa_text(rv)))
    cols = ["neurons", *VERDICTS, "agreement rate"]
    s.blocks.append(
        _table(
            ["model", "layer", "category", *cols],
            _rate_rows(rv, ["model", "layer", "category"]),
            caption="Review verdicts per model, layer and concept category of the label.",
            numeric=[False, False, False, True, True, True, True, True],
        )
    )
    if has_table(c.con, "label_evidence"):
        ev = c.con.execute(
            "SELECT model, layer, unit, supported FROM label_evidence WHERE run_id = ? AND rank = 1", [c.run_id]
        ).df()
        merged = rv.merge(ev, on=["model", "layer", "unit"], how="left")
        merged["evidence"] = merged["supported"].map(
            lambda x: "no evidence" if pd.isna(x) else ("supported" if bool(x) else "unsupported")
        )
        s.blocks.append(
            _table(
                ["label evidence", *cols],
                _rate_rows(merged, ["evidence"]),
                caption="Review verdicts on labels the label evidence supports and does not support.",
                numeric=[False, True, True, True, True, True],
            )
        )
    dis = _disagreements(rv)
    if dis:
        s.blocks.append(
            _table(
                ["model", "layer", "unit", "label", "answers"],
                dis,
                caption="Neurons the reviewers disagree on, or whose label a reviewer rejected, with their comments.",
            )
        )
    return s
