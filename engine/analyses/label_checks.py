"""Run steps that check labels against annotations: label evidence, known neurons, ceilings.

Why a module apart from the metrics (engine/analyses/evidence.py): these steps
read the executor's state (activations, S, P, probes) and write the run's
tables; the metrics stay pure and testable without a run.

* `label_evidence` -- every dissected neuron's top labels (`TOP_LABELS`) whose
  concept an annotation of the probe covers, tested (table `label_evidence`);
* `known_neurons` -- NeuronEval, section 5: a classifier's output neurons have known
  concepts (the density classes, the mass or calcification logit); dissect them
  and say whether their labels name their class (table `known_neurons`);
* `calibration_ceilings` -- the calibration bench's perfect-neuron and oracle-P
  ceilings (rows of `calibration` with bench = perfect_neurons / oracle_p), and
  the warning when SoftWPMI's top_k is large for the probe.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dissect_study.engine import annotations as ann
from dissect_study.engine.analyses import evidence as ev

if TYPE_CHECKING:
    from dissect_study.engine.plan.steps import DissectionStep
    from dissect_study.engine.run import Executor

logger = logging.getLogger(__name__)

#: labels per neuron that get evidence (rank 1 = the label)
TOP_LABELS = 5
#: SoftWPMI's top_k above this share of the probe draws a warning
TOP_K_SHARE = 0.10
#: the output neurons of classifier tasks, in output order, as annotation keys
KNOWN_OUTPUTS: dict[str, list[ann.Key]] = {
    "density": ann.density_keys(),
    "mass": [("mass", True)],
    "calcification": [("calcification", True)],
}
KNOWN_COLUMNS = (
    "model",
    "unit",
    "class",
    "annotation",
    "similarity",
    "top1",
    "top5",
    "top1_hit",
    "top5_hit",
    "top1_hit_lenient",
    "top5_hit_lenient",
    "n_images",
    "base_rate",
    "auprc",
    "auprc_lift",
)


def _attrs(ex: Executor, x: DissectionStep) -> list[dict[str, Any]]:
    probe = ex.probes[x.probe]
    return [probe.items[r].attributes for r in ex.act_rows[(x.target, x.probe)]]


def _user_annotations(ex: Executor, x: DissectionStep) -> dict[str, np.ndarray] | None:
    """The dissection's `annotations` CSV as concept vectors over its rows (None without one)."""
    from pathlib import Path

    path = x.options.get("annotations")
    if not path:
        return None
    p = Path(str(path)).expanduser()
    if not p.is_absolute():
        p = Path(ex.base_dir) / p
    probe = ex.probes[x.probe]
    rows = ex.act_rows.get((x.target, x.probe)) or list(range(len(probe.items)))
    return ann.load_annotation_csv(p, [probe.items[r].image_id for r in rows], ex.concept_sets[x.concepts].texts)


def check_annotations(ex: Executor) -> None:
    """Read every `annotations` CSV right after the build, so a bad file fails before the passes."""
    for x in ex.plan.dissections:
        _user_annotations(ex, x)


def label_evidence(ex: Executor) -> None:
    """Test the top labels of every dissected neuron whose concept the probe annotates."""
    from dissect_study.engine.scores.labels import top_concepts

    parts = []
    for x in ex.plan.dissections:
        probe = ex.probes[x.probe]
        cs = ex.concept_sets[x.concepts]
        vectors = ann.concept_vectors(
            _attrs(ex, x), cs.texts, complete=probe.has_ground_truth, extra=_user_annotations(ex, x)
        )
        if not vectors:
            ex.log.info(f"evidence  {x.target}: probe {x.probe} has no annotation linked to a concept of {x.concepts}")
            continue
        for layer, _ in ex.layer_names[x.target]:
            S = ex.S[(x.target, layer)]
            k = min(int(x.options.get("evidence_top") or TOP_LABELS), S.shape[1])
            sc, idx = top_concepts(S, k)
            K = S.shape[0]
            cid = idx.numpy().reshape(-1)
            labels = pd.DataFrame(
                dict(
                    unit=np.repeat(np.arange(K), k),
                    rank=np.tile(np.arange(1, k + 1), K),
                    concept_id=cid,
                    concept=np.array(cs.texts, dtype=object)[cid],
                )
            )[np.isfinite(sc.numpy().reshape(-1))]
            X = ex.acts[(x.target, x.probe)][layer].double().numpy()
            df = ev.label_evidence(X, labels, vectors)
            if len(df):
                df.insert(0, "layer", layer)
                df.insert(0, "model", x.target)
                parts.append(df)
    if not parts:
        return
    out = ev.finalise(pd.concat(parts, ignore_index=True))
    ex.record.add("label_evidence", out[list(ev.STORE_COLUMNS)])
    top1 = out[out["rank"] == 1]
    ex.log.info(
        f"evidence  {len(out)} label test(s), {int(out['supported'].sum())} supported at q < {ev.ALPHA}; "
        f"top-1 labels: {len(top1)} checked, {int(top1['supported'].sum())} supported"
    )


def _output_activations(ex: Executor, x: DissectionStep) -> torch.Tensor:
    """The target's forward output over the dissection's rows (one extra pass, cached)."""
    from dissect_study.engine.passes.activations import extract_activations

    target, probe = ex.targets[x.target], ex.probes[x.probe]
    rows = ex.act_rows[(x.target, x.probe)]
    first = ex.layer_names[x.target][0][0]

    def compute() -> dict[str, torch.Tensor]:
        res = extract_activations(
            target,
            probe,
            [first],
            batch_size=ex.opt.batch_size or target.batch_size,
            device=ex.device,
            progress=not ex.opt.quiet,
            indices=rows,
            keep_output=True,
        )
        if res.output is None or list(res.indices) != list(rows):
            raise RuntimeError("the output pass did not read the same images as the dissection")
        return {"out": res.output.float().reshape(len(rows), -1)}

    got, _ = ex.cache.get_or_compute(
        "known_out", dict(target=target.fingerprint(), probe=probe.manifest_sha256(), rows=rows), compute
    )
    return got["out"]


def _task(ex: Executor, name: str) -> str | None:
    t = ex.targets[name]
    report = getattr(t, "training_report", None)
    for info in (report() if callable(report) else {}, t.describe()):
        task = info.get("task") if isinstance(info, dict) else None
        if task in KNOWN_OUTPUTS:
            return str(task)
    return None


def known_neurons(ex: Executor) -> None:
    """NeuronEval, section 5: does each classifier output neuron's label name its class?"""
    from dissect_study.engine.scores.similarity import compute_similarity

    for x in ex.plan.dissections:
        task = _task(ex, x.target)
        if task is None:
            continue
        keys = KNOWN_OUTPUTS[task]
        P = _full_p(ex, x)
        if P is None:
            ex.log.warn(
                "known_neurons", f"known-neuron test of {x.target} skipped: the dissector saw only part of the probe"
            )
            continue
        out = _output_activations(ex, x)
        if out.shape[1] != len(keys):
            ex.log.warn(
                "known_neurons",
                f"known-neuron test of {x.target} skipped: {out.shape[1]} outputs, task {task} has {len(keys)}",
            )
            continue
        cs = ex.concept_sets[x.concepts]
        params = {k: v for k, v in x.similarity_params.items() if k != "template"}
        S = compute_similarity(x.similarity, P, out, params).S.double().numpy()
        attrs = _attrs(ex, x)
        complete = ex.probes[x.probe].has_ground_truth
        rows = []
        for unit, key in enumerate(keys):
            rows.append(
                _known_row(
                    x.target, x.similarity, unit, key, S[unit], out[:, unit].double().numpy(), attrs, cs.texts, complete
                )
            )
        df = pd.DataFrame(rows, columns=list(KNOWN_COLUMNS))
        ex.record.add("known_neurons", df)
        ex.log.info(
            f"known     {x.target} ({task}): {int(df['top1_hit'].sum())}/{len(df)} output neurons named by their class "
            f"at top-1, {int(df['top5_hit_lenient'].sum())}/{len(df)} within the top-5 (synonyms accepted)"
        )


def _known_row(
    model: str,
    similarity: str,
    unit: int,
    key: ann.Key,
    s: np.ndarray,
    a: np.ndarray,
    attrs: list[dict[str, Any]],
    texts: list[str],
    complete: bool,
) -> dict[str, Any]:
    order = np.argsort(-np.where(np.isfinite(s), s, -np.inf), kind="stable")[:TOP_LABELS]
    strict, lenient = ann.group_ids(key, texts, False), ann.group_ids(key, texts, True)
    y = ann.indicator(attrs, key, complete)
    known = ~np.isnan(y)
    t = y[known] > 0.5
    base = float(t.mean()) if known.any() else float("nan")
    auprc = ev.average_precision(a[known], t) if 0 < t.sum() < len(t) else float("nan")
    return dict(
        model=model,
        unit=unit,
        **{"class": ann.annotation_name(key)},
        annotation=ann.annotation_name(key),
        similarity=similarity,
        top1=texts[int(order[0])],
        top5=[texts[int(i)] for i in order],
        top1_hit=int(order[0]) in strict,
        top5_hit=bool(set(order.tolist()) & strict),
        top1_hit_lenient=int(order[0]) in lenient,
        top5_hit_lenient=bool(set(order.tolist()) & lenient),
        n_images=int(known.sum()),
        base_rate=base,
        auprc=auprc,
        auprc_lift=float(ev.auprc_lift(auprc, base)),
    )


def _full_p(ex: Executor, x: DissectionStep) -> torch.Tensor | None:
    from dissect_study.engine.scores.similarity import concept_activation_matrix

    rows = ex.act_rows[(x.target, x.probe)]
    emb, emb_rows = ex.img_emb[(x.dissector, x.probe)]
    pos = {r: i for i, r in enumerate(emb_rows)}
    if not all(r in pos for r in rows):
        return None
    return concept_activation_matrix(emb[[pos[r] for r in rows]], ex.text_emb[(x.dissector, x.concepts)])


# ----------------------------------------------------------------------------- ceilings


def _ceiling_truth(keys: list[ann.Key]) -> pd.DataFrame:
    """Perfect neuron j's truth: attribute j's strict and lenient phrases."""
    return pd.DataFrame(
        dict(
            unit=range(len(keys)),
            true_concepts=[ann.concept_group(k, False) for k in keys],
            lenient_concepts=[ann.concept_group(k, True) for k in keys],
        )
    )


def calibration_ceilings(
    ex: Executor,
    x: DissectionStep,
    P: torch.Tensor,
    attrs: list[dict[str, Any]],
    truths: dict[str, pd.DataFrame] | None = None,
) -> None:
    """Perfect-neuron and oracle-P ceilings for the study's own similarity function.

    `truths` holds each layer's `ground_truth_by_lift` when the measured bench has
    already computed it (it is the same for every function).
    """
    from dissect_study.engine.analyses import calibration as cal
    from dissect_study.engine.scores.similarity import compute_similarity

    cs = ex.concept_sets[x.concepts]
    keys, ind = ann.ground_truth_indicators(attrs, cs.texts)
    if not keys:
        return
    params = {k: v for k, v in x.similarity_params.items() if k != "template"}
    S_perfect = ev.perfect_neuron_scores(P, ind, x.similarity, params)
    row = cal.calibration_table(None, x.similarity, S_perfect, cs.texts, _ceiling_truth(keys))  # type: ignore[arg-type]
    row["model"], row["bench"] = x.target, "perfect_neurons"
    ex.record.add("calibration", row)
    groups = [ann.group_ids(k, cs.texts, True) for k in keys]
    oracle = torch.as_tensor(ev.oracle_p(ind, groups, len(cs.texts)), dtype=torch.float32)
    per_layer = []
    for layer, _ in ex.layer_names[x.target]:
        X = ex.acts[(x.target, x.probe)][layer].float()
        truth = truths[layer] if truths and layer in truths else cal.ground_truth_by_lift(X, attrs)
        S = compute_similarity(x.similarity, oracle, X, params).S
        df = cal.calibration_table(layer, x.similarity, S, cs.texts, truth)
        df["model"], df["bench"] = x.target, "oracle_p"
        ex.record.add("calibration", df)
        per_layer.append((X, truth))
    _warn_top_k(ex, x, oracle, per_layer, params)


def _warn_top_k(
    ex: Executor,
    x: DissectionStep,
    oracle: torch.Tensor,
    per_layer: list[tuple[torch.Tensor, pd.DataFrame]],
    params: dict[str, Any],
) -> None:
    """SoftWPMI's top_k over 10 % of N: measure the oracle-P hit rate at top_k = N/10 too, and say both."""
    from dissect_study.engine.analyses import calibration as cal
    from dissect_study.engine.scores.similarity import compute_similarity

    top_k = params.get("top_k")
    n = int(oracle.shape[0])
    if x.similarity not in ("soft_wpmi", "wpmi") or top_k is None or int(top_k) <= TOP_K_SHARE * n:
        return
    smaller = max(1, int(TOP_K_SHARE * n))
    cs = ex.concept_sets[x.concepts]
    hits = {int(top_k): [], smaller: []}  # type: dict[int, list[float]]
    for X, truth in per_layer:
        if truth.empty:
            continue
        for k in hits:
            S = compute_similarity(x.similarity, oracle, X, {**params, "top_k": k}).S
            g = cal.neuron_grades(x.similarity, S, cs.texts, truth)
            hits[k].extend(g["top1_hit"].astype(float).tolist())
    if not hits[smaller]:
        return
    ex.log.warn(
        "calibration",
        f"{x.target}: {x.similarity} top_k={top_k} is {int(top_k) / n:.0%} of the {n} probe images (over "
        f"{TOP_K_SHARE:.0%}); with the ground-truth P the bench named a selective neuron's attribute at top-1 in "
        f"{np.mean(hits[int(top_k)]):.0%} of {len(hits[smaller])} neurons at top_k={top_k} and "
        f"{np.mean(hits[smaller]):.0%} at top_k={smaller}. A large top_k lets concepts no image has "
        "outscore true ones (the lambda prior); consider top_k near N/10 for this probe.",
    )
