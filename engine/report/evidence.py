"""Report pieces for label evidence: the summary line, the card line, the "labels you can trust"
section with the known-neuron test, and the calibration ceilings.

Why apart from engine/report/model.py: the evidence tables are new and optional
(older runs lack them), so every reader here returns nothing when a table or
column is missing instead of failing the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from dissect_study.engine.report.model import Block, _Ctx


def _df(c: _Ctx, sql: str) -> pd.DataFrame:
    import duckdb

    try:
        return c.df(sql)
    except duckdb.Error:  # a database from before these tables: no evidence to show
        return pd.DataFrame()


def evidence(c: _Ctx) -> pd.DataFrame:
    cache = getattr(c, "_label_evidence", None)
    if cache is None:
        cache = _df(c, "SELECT * FROM label_evidence WHERE run_id = ?")
        c._label_evidence = cache  # type: ignore[attr-defined]
    return cache


def summary_headline(c: _Ctx) -> str | None:
    """'Label evidence: N of the M top-1 labels could be checked, K supported ...'."""
    ev = evidence(c)
    n_labels = _df(c, "SELECT count(*) AS n FROM neurons WHERE run_id = ? AND label IS NOT NULL")
    if not len(ev) or not len(n_labels):
        return None
    top1 = ev[ev["rank"] == 1]
    total = int(n_labels["n"].iloc[0])
    return (
        f"Label evidence: {len(top1)} of {total} top-1 labels could be checked against the probe's annotations, "
        f"{int(top1['supported'].sum())} of them are supported (Benjamini–Hochberg q < 0.05, AUPRC above the base rate); "
        f"across the top-5 labels, {int(ev['supported'].sum())} of {len(ev)} checked labels are supported."
    )


def card_line(c: _Ctx, model: str, layer: str, unit: int, label: str) -> str:
    """The card's evidence for its top-1 label: AUPRC vs base rate, q and the verdict."""
    ev = evidence(c)
    if not len(ev):
        return ""
    from dissect_study.engine.report.model import fmt

    r = ev[(ev["model"] == model) & (ev["layer"] == layer) & (ev["unit"] == unit) & (ev["rank"] == 1)]
    if not len(r):
        return f"evidence for “{label}”: no annotation of the probe covers this concept"
    x = r.iloc[0]
    verdict = "supported" if bool(x["supported"]) else "not supported"
    return (
        f"evidence for “{label}”: {verdict} — AUPRC {fmt(x['auprc'], 2)} vs base rate {fmt(x['base_rate'], 2)} "
        f"({int(x['n_positive'])} of {int(x['n_images'])} images: {x['annotation']}), q = {fmt(x['q_value'], 2)}"
    )


def evidence_blocks(c: _Ctx) -> list[Block]:
    """'Labels you can trust' per model and layer, then the known-neuron test."""
    from dissect_study.engine.report.model import _heading, _para, _table, fmt

    ev = evidence(c)
    blocks: list[Block] = []
    if len(ev):
        blocks.append(
            _para(
                "Each neuron's top-5 labels were checked against the probe's annotations wherever an annotation proves "
                "the concept present or absent (NeuronEval's metrics: AUPRC against the concept's base rate, Pearson r, "
                "F1 and IoU at a prevalence-matched binarisation; a one-sided Mann–Whitney p-value; Benjamini–Hochberg "
                "q-values over all tests of the run). A label is supported at q < 0.05 with AUPRC above its base rate."
            )
        )
        top1 = ev[ev["rank"] == 1]
        rows = []
        for (model, layer), g in top1.groupby(["model", "layer"], sort=False):
            ok = g[g["supported"]].sort_values("auprc_lift", ascending=False)
            rows.append(
                [
                    model,
                    c.layer_label(model, layer),
                    str(len(g)),
                    str(len(ok)),
                    "; ".join(
                        f"{int(r.unit)}: {r.concept} ({fmt(r.auprc, 2)} vs {fmt(r.base_rate, 2)})"
                        for r in ok.head(6).itertuples()
                    )
                    or "–",
                ]
            )
        order = {m: i for i, m in enumerate(c.targets)}
        rows.sort(key=lambda r: (order.get(r[0], 99), r[1]))
        blocks.append(_heading("Labels you can trust"))
        blocks.append(
            _table(
                ["model", "layer", "checked", "supported", "best supported labels (unit: label, AUPRC vs base rate)"],
                rows,
                numeric=[False, False, True, True, False],
                small=True,
                caption="Top-1 labels with annotation evidence per model and layer; the store's label_evidence table "
                "holds every tested label (top-5) with all metrics.",
            )
        )
    known = _df(
        c,
        "SELECT model, unit, class AS cls, top1, top1_hit, top1_hit_lenient, top5_hit, top5_hit_lenient, auprc, "
        "base_rate FROM known_neurons WHERE run_id = ? ORDER BY model, unit",
    )
    if len(known):
        blocks.append(_heading("Known-neuron test"))
        blocks.append(
            _para(
                "A classifier's output neurons have known concepts (NeuronEval, section 5): each density output stands for its "
                "class, a mass or calcification logit for its finding. Dissected like any neuron, does its label name "
                "the class? 'strict' accepts the class's own phrases, 'lenient' every synonym the concept set holds."
            )
        )
        blocks.append(
            _table(
                [
                    "model",
                    "output",
                    "class",
                    "top-1 label",
                    "top-1 strict / lenient",
                    "top-5 strict / lenient",
                    "AUPRC vs base rate",
                ],
                [
                    [
                        r.model,
                        str(int(r.unit)),
                        str(r.cls),
                        str(r.top1),
                        f"{_yes(r.top1_hit)} / {_yes(r.top1_hit_lenient)}",
                        f"{_yes(r.top5_hit)} / {_yes(r.top5_hit_lenient)}",
                        f"{fmt(r.auprc, 2)} vs {fmt(r.base_rate, 2)}",
                    ]
                    for r in known.itertuples()
                ],
                small=True,
                caption="Known-neuron test: the classifiers' output neurons, dissected.",
            )
        )
    return blocks


def _yes(v: Any) -> str:
    return "yes" if bool(v) else "no"


def calibration_blocks(c: _Ctx, df: pd.DataFrame) -> list[Block]:
    """Measured top-1 rates next to the perfect-neuron and oracle-P ceilings (study's function)."""
    from dissect_study.engine.report.model import _heading, _para, _table, fmt

    if "bench" not in df.columns or not (df["bench"] == "perfect_neurons").any():
        return []
    study_sims = set(df.loc[df["bench"] == "perfect_neurons", "similarity"])
    rows = []
    for model in c.targets:
        g = df[(df["model"] == model) & df["similarity"].isin(study_sims)]
        if not len(g):
            continue
        perfect = g[g["bench"] == "perfect_neurons"]
        measured = g[g["bench"].fillna("measured") == "measured"]
        oracle = g[g["bench"] == "oracle_p"]

        def rate(x: pd.DataFrame, col: str) -> str:
            w = x["n_selective"].fillna(0)
            return fmt((x[col] * w).sum() / w.sum(), 2) if w.sum() else "–"

        rows.append(
            [
                model,
                f"{rate(measured, 'top1_hit')} / {rate(measured, 'top1_hit_lenient')}",
                f"{rate(oracle, 'top1_hit')} / {rate(oracle, 'top1_hit_lenient')}",
                f"{rate(perfect, 'top1_hit')} / {rate(perfect, 'top1_hit_lenient')}",
                fmt(int(measured["n_selective"].fillna(0).sum())),
            ]
        )
    if not rows:
        return []
    return [
        _heading("Ceilings: is the dissector or the function the limit?"),
        _para(
            "Selective neurons are graded against the attribute with the highest AUPRC lift over its base rate. "
            "Measured: the study's labels. Oracle P: the same neurons scored through the ground-truth image–concept "
            "matrix (what the similarity function and its parameters allow). Perfect neurons: synthetic neurons that "
            "fire exactly on one attribute, scored through the dissector's real P (what the dissector allows)."
        ),
        _table(
            ["model", "measured top-1 (strict / lenient)", "oracle P", "perfect neurons", "selective neurons"],
            rows,
            numeric=[False, True, True, True, True],
            small=True,
            caption="Calibration ceilings for the study's similarity function (rates weighted by neurons over layers).",
        ),
    ]
