"""Analyses stage: the dissector's zero-shot check, the calibration bench, the study's analyses.

The analysis tables themselves are computed by their SQL macros as the run is
stored (engine/analyses/macros.py); this stage records each statement's arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dissect_study.dsl.checker import CheckedAnalysis
from dissect_study.dsl.vocabulary import SIMILARITIES
from dissect_study.engine.build import resolve_layers
from dissect_study.engine.run import RunError
from dissect_study.errors import DissectStudyError

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor


@dataclass
class CachedTextSide:
    """A dissector's `encode_texts`, each prompt list's embedding cached with the passes.

    Why: the zero-shot checks embed the same few dozen prompts every run; reading
    them from the cache spares a warm run loading the text model at all.
    """

    ex: Executor
    dissector: Any
    _fingerprint: str | None = None

    def encode_texts(self, texts: list[str]) -> Any:
        if self._fingerprint is None:
            fingerprint = getattr(self.dissector, "fingerprint", None)
            if not callable(fingerprint):  # nothing to key a cache entry by
                return self.dissector.encode_texts(list(texts))
            self._fingerprint = str(fingerprint())
        got, _ = self.ex.cache.get_or_compute(
            "prompts",
            dict(dissector=self._fingerprint, texts=list(texts)),
            lambda: {"emb": self.dissector.encode_texts(list(texts)).detach().cpu().contiguous()},
        )
        return got["emb"]


def sanity(ex: Executor) -> None:
    from dissect_study.engine.models.zero_shot import zero_shot_sanity

    for dname, pname in ex.plan.image_passes:
        emb, rows = ex.img_emb[(dname, pname)]
        sample = ex.sanity_rows.get((dname, pname))
        if sample is not None:  # a top-k union is biased by the targets: use the random sample only
            keep = set(sample)
            sel = [i for i, r in enumerate(rows) if r in keep]
            emb, rows = emb[sel], [rows[i] for i in sel]
        attrs = [ex.probes[pname].items[r].attributes for r in rows]
        try:
            results = zero_shot_sanity(cast(Any, CachedTextSide(ex, ex.dissectors[dname])), emb, attrs)
        except Exception as e:  # noqa: BLE001 -- a sanity check must never sink a run
            ex.log.warn("sanity", f"zero-shot sanity check of {dname} on {pname} failed: {e}")
            continue
        results += _phantom_zero_shot(ex, dname, pname, emb, attrs)
        for r in results:
            ex.record.add("sanity", dict(dissector=dname, probe=pname, **r))
            if r.get("value") is not None and r.get("chance") is not None and abs(r["value"] - r["chance"]) < 0.05:
                ex.log.warn(
                    "sanity",
                    f"dissector {dname} is near chance on '{r['attribute']}' "
                    f"({r['metric']} {r['value']:.2f}); labels naming it are not trustworthy",
                )


def _phantom_zero_shot(ex: Executor, dname: str, pname: str, emb: Any, attrs: list[dict]) -> list[dict]:
    """Per-attribute zero-shot AUC on a probe with full ground truth (the phantom): one row per value."""
    if not ex.probes[pname].has_ground_truth:
        return []
    from dissect_study.engine.phantom.quality import zero_shot_aucs

    try:
        rows = zero_shot_aucs(emb, CachedTextSide(ex, ex.dissectors[dname]).encode_texts, attrs)
    except Exception as e:  # noqa: BLE001 -- a sanity check must never sink a run
        ex.log.warn("sanity", f"per-attribute zero-shot check of {dname} on {pname} failed: {e}")
        return []
    known = {"mass", "calcification", "density"}  # the Mammo-CLIP prompt rows above keep these names
    return [
        {
            "attribute": r["attribute"] if r["attribute"] not in known else f"{r['attribute']} (phantom prompts)",
            "metric": "auc",
            "value": r["value"],
            "n": r["n"],
            "chance": 0.5,
            "prompts": r["prompts"],
        }
        for r in rows
    ]


def calibration(ex: Executor) -> None:
    """Ground-truth calibration bench, for probes that carry ground truth (the phantom)."""
    if not ex.opt.calibration:
        return
    from dissect_study.engine.analyses import calibration as cal
    from dissect_study.engine.scores.similarity import compute_similarity, concept_activation_matrix

    phrases: dict[str, cal.PhraseEmbeddings] = {}
    for x in ex.plan.dissections:
        probe = ex.probes[x.probe]
        if not probe.has_ground_truth:
            continue
        cs = ex.concept_sets[x.concepts]
        rows = ex.act_rows[(x.target, x.probe)]
        emb, emb_rows = ex.img_emb[(x.dissector, x.probe)]
        pos = {r: i for i, r in enumerate(emb_rows)}
        if not all(r in pos for r in rows):
            ex.log.warn(
                "calibration", f"calibration of {x.target} skipped: the dissector embedded only part of probe {x.probe}"
            )
            continue
        P = concept_activation_matrix(emb[[pos[r] for r in rows]], ex.text_emb[(x.dissector, x.concepts)])
        attrs = [probe.items[r].attributes for r in rows]
        dissector = ex.dissectors[x.dissector]
        encoder = phrases.get(x.dissector)
        if encoder is None and _has_sentence_encoder(dissector):
            encoder = phrases[x.dissector] = _phrase_embeddings(ex, dissector, cs.texts)
        t0 = time.perf_counter()
        skipped: dict[str, str] = {}
        truths = {}
        for layer, _ in ex.layer_names[x.target]:
            X = ex.acts[(x.target, x.probe)][layer].float()
            truth = truths[layer] = cal.ground_truth_by_lift(X, attrs)
            for sim in SIMILARITIES:
                if sim in skipped:
                    continue
                params = {p.name: p.default for p in SIMILARITIES[sim].params if p.name != "template"}
                # the study's own function was already scored (with the study's parameters)
                try:
                    S = ex.S[(x.target, layer)] if sim == x.similarity else compute_similarity(sim, P, X, params).S
                except DissectStudyError as e:
                    # the bench is optional: a function the probe cannot support
                    # (too few images, say) is left out, the run goes on
                    skipped[sim] = str(e).splitlines()[0]
                    ex.log.warn("calibration", f"calibration of {x.target}: {sim} skipped ({skipped[sim]})")
                    continue
                df = cal.calibration_table(
                    layer,
                    sim,
                    S,
                    cs.texts,
                    truth,
                    text_encoder=encoder,
                    # MAMMI's selection threshold: the study's own, when the study uses MAMMI
                    beta=float(x.similarity_params.get("beta", 0.95)) if sim == x.similarity == "mammi" else 0.95,
                )
                df["model"] = x.target
                ex.record.add("calibration", df)
        from dissect_study.engine.analyses.label_checks import calibration_ceilings

        calibration_ceilings(ex, x, P, attrs, truths)
        ex.log.info(
            f"calibrate {x.target}: {len(SIMILARITIES) - len(skipped)} similarity functions x "
            f"{len(ex.layer_names[x.target])} layers ({time.perf_counter() - t0:.1f}s)"
        )


def _has_sentence_encoder(dissector: Any) -> bool:
    """`isinstance(dissector, HasSentenceEncoder)` without reading the property (which loads the model)."""
    import inspect

    return inspect.getattr_static(dissector, "sentence_encoder", None) is not None


def _phrase_embeddings(ex: Executor, dissector: Any, concept_texts: list[str]) -> Any:
    """The bench's sentence encoder, primed with every phrase a table may ask for (cached with the passes).

    Why: each phrase is embedded once per run, not once per (layer, function)
    table, and a warm run reads the vectors from the cache instead of running MiniLM.
    """
    import torch

    from dissect_study.engine.analyses import calibration as cal
    from dissect_study.engine.phantom.vocabulary import ALL_PHRASES

    # the property loads the model: only reach for it on a cache miss
    encoder = cal.PhraseEmbeddings(lambda texts: dissector.sentence_encoder(texts))
    wanted = cal.bench_phrases(concept_texts, [ALL_PHRASES])
    got, _ = ex.cache.get_or_compute(
        "phrases",
        dict(dissector=dissector.fingerprint(), encoder="sentence_encoder", texts=wanted),
        lambda: {"emb": torch.as_tensor(encoder.encoder(wanted)).float()},
    )
    encoder.rows.update(zip(wanted, got["emb"].double().numpy()))
    return encoder


def analyses(ex: Executor) -> None:
    """Record each analysis statement as an `analyses` row: the arguments of its macros.

    The tables are computed by the analyses' SQL macros inside the transaction that
    stores the run (engine/analyses/macros.py `store_analyses`), so a stored table
    always equals its macro called with that row's arguments.
    """
    from dissect_study.engine.analyses.macros import store_analyses

    ex.neuron_requests = []
    for a in ex.plan.analyses:
        models = list(a.models)
        layers = _analysis_layers(ex, a, models)
        th, flt = a.threshold, a.filter
        kind = "show_neuron" if a.kind == "neuron" else a.kind
        options = dict(a.options)
        if kind == "show_neuron" and a.unit is not None and a.top is not None:
            options.update(unit=a.unit, top=a.top)
            ex.neuron_requests.extend((models[0], layer, a.unit, a.top) for layer in layers)
        if kind == "review":
            options["selected"] = [[layer, unit] for layer, unit in _review_packet(ex, a, models[0], layers)]
        ex.record.add(
            "analyses",
            dict(
                analysis_id=a.index,
                kind=kind,
                analysis_names=list(a.analysis_names),
                statement=a.text,
                line=a.span.line,
                models=models,
                layers=layers,
                filter_level=flt.level if flt else None,
                filter_name=flt.name if flt else None,
                threshold_rule=dict(combine=th.combine, statistic=th.statistic, value=th.value, op=th.op),
                count_unit=a.count,
                options=options,
            ),
        )
    ex.record.derive.append(store_analyses)
    ex.log.info(f"analyses  {len(ex.plan.analyses)} statement(s); computed in SQL as the run is stored")


def _analysis_layers(ex: Executor, a: CheckedAnalysis, models: list[str]) -> list[str]:
    per_model = []
    for m in models:
        if m not in ex.layer_names:
            raise RunError(f"{a.text}: model {m} is not dissected in this study")
        dissected = [n for n, _ in ex.layer_names[m]]
        if a.layers:
            names = [n for n, _ in resolve_layers(ex.targets[m], tuple(a.layers), ex.plan.layer_aliases)]
            bad = [n for n in names if n not in dissected]
            if bad:
                raise RunError(
                    f"line {a.span.line}: {a.text!r} asks for layer(s) "
                    f"{', '.join(bad)} of {m}, which the dissect statement does not cover "
                    f"(dissected: {', '.join(dissected)})"
                )
        else:
            names = dissected
        per_model.append(names)
    common = [n for n in per_model[0] if all(n in p for p in per_model[1:])]
    if per_model and len(common) < len(per_model[0]) and a.layers:
        raise RunError(
            f"line {a.span.line}: {a.text!r}: the models do not share the "
            f"layer names {sorted(set(per_model[0]) - set(common))}; compare models of one architecture"
        )
    return common


def _review_packet(ex: Executor, a: CheckedAnalysis, model: str, layers: list[str]) -> list[tuple[str, int]]:
    """Pick a `review` statement's neurons from this run's labels and ask for their cards.

    `labels supported/unsupported` on a run without label evidence is skipped with a
    warning (the rest of the run is unaffected).
    """
    from dissect_study.engine.review.select import NoEvidenceError, ReviewSelectionError, ReviewSpec, select_neurons

    neurons = ex.record.rows("neurons", model=model)
    if neurons is None:
        ex.log.warn("review", f"line {a.span.line}: {a.text!r} skipped: {model} has no labelled neurons in this run")
        return []
    x = next(d for d in ex.plan.dissections if d.target == model)
    concepts = ex.concept_sets[x.concepts].to_frame()
    evidence = ex.record.rows("label_evidence", model=model)
    flt = a.filter
    spec = ReviewSpec.from_options(a.options, flt.level if flt else None, flt.name if flt else None)
    try:
        picked = select_neurons(neurons, concepts, layers, spec, evidence)
    except NoEvidenceError as e:
        ex.log.warn("review", f"line {a.span.line}: {a.text!r} skipped: {e}")
        return []
    except ReviewSelectionError as e:
        raise RunError(f"line {a.span.line}: {a.text!r}: {e}") from None
    if not picked:
        ex.log.warn("review", f"line {a.span.line}: {a.text!r} selects no neuron; its packet is empty")
    asked = {(m, ly, u) for m, ly, u, _ in ex.neuron_requests}
    top = int(a.top or 5)
    ex.neuron_requests.extend((model, ly, u, top) for ly, u in picked if (model, ly, u) not in asked)
    return picked
