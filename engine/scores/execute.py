"""Scores stage: similarity of every dissected layer, then labels, thresholds and top images.

The rows it adds to the run record are the `layers`, `neurons`, `neuron_labels`,
`top_images`, `similarities` and `dissections` tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor


def score(ex: Executor) -> None:
    from dissect_study.engine.scores.labels import layer_taus, top_concepts, top_images
    from dissect_study.engine.scores.similarity import compute_similarity, concept_activation_matrix

    rec = ex.record
    for cs in ex.concept_sets.values():
        rec.add("concepts", cs.to_frame())
    for x in ex.plan.dissections:
        cs = ex.concept_sets[x.concepts]
        rows = ex.act_rows[(x.target, x.probe)]
        emb, emb_rows = ex.img_emb[(x.dissector, x.probe)]
        pos = {r: i for i, r in enumerate(emb_rows)}
        text = ex.text_emb[(x.dissector, x.concepts)]
        tmpl = x.similarity_params.get("template") if x.similarity == "mammi" else None
        if tmpl:
            # MAMMI's prompts are "<template> <concept>"; the template's own embedding
            # is subtracted below (adaptive cosine, docs/METHOD.md §3.6)
            text = _embed_prompts(ex, x.dissector, [f"{tmpl} {c}" for c in cs.texts])
        # P over the target's rows; rows the dissector skipped (top-k-only pass) stay 0:
        # top-k-only functions never read them (engine/labels.topk_image_union)
        P = torch.zeros(len(rows), text.shape[0])
        have = [i for i, r in enumerate(rows) if r in pos]
        if have:
            P[have] = concept_activation_matrix(emb[[pos[rows[i]] for i in have]], text)
        notes: list[str] = []
        used_params: dict[str, Any] = dict(x.similarity_params)
        template = None
        if tmpl:
            t_emb = _embed_prompts(ex, x.dissector, [tmpl])
            template = concept_activation_matrix(emb[[pos[r] for r in rows if r in pos]], t_emb)[:, 0]
        tau_stat = ex.plan.tau_statistic
        for layer, alias in ex.layer_names[x.target]:
            X = ex.acts[(x.target, x.probe)][layer].float()
            params = {k: v for k, v in x.similarity_params.items() if k != "template"}
            res = compute_similarity(x.similarity, P, X, params, template_feats=template)
            for n in res.notes:
                if n not in notes:
                    notes.append(n)
                    ex.log.info(f"note      {x.target}: {n}")
            for w in res.warnings:
                ex.log.warn(f"score {x.target}", f"{x.target} {layer}: {w}")
            if res.top_k_used is not None:
                used_params["top_k"] = res.top_k_used
            S = res.S.float()
            ex.S[(x.target, layer)] = S
            K, M = S.shape
            taus = layer_taus(S)
            rec.add(
                "layers",
                dict(
                    model=x.target,
                    layer=layer,
                    layer_index=_layer_index(ex, x.target, layer),
                    alias=alias,
                    n_neurons=K,
                    tau=taus[tau_stat],
                    tau_statistic=tau_stat,
                    tau_mean_top1=taus["mean_top1"],
                    tau_mean_all=taus["mean_all"],
                    tau_median_top1=taus["median_top1"],
                ),
            )
            k = min(int(x.options.get("top_concepts", 10)), M)
            sc, idx = top_concepts(S, k)
            units = np.repeat(np.arange(K), k)
            cid = idx.numpy().reshape(-1)
            texts = np.array(cs.texts, dtype=object)
            rec.add(
                "neuron_labels",
                pd.DataFrame(
                    dict(
                        model=x.target,
                        layer=layer,
                        unit=units,
                        rank=np.tile(np.arange(1, k + 1), K),
                        concept_id=cid,
                        concept=texts[cid],
                        score=sc.numpy().reshape(-1).astype(float),
                    )
                ),
            )
            ti = min(int(x.options.get("top_images", 5)), X.shape[0])
            acts, img_idx, constant = top_images(X, ti)
            rec.add(
                "neurons",
                pd.DataFrame(
                    dict(
                        model=x.target,
                        layer=layer,
                        unit=np.arange(K),
                        concept_id=idx[:, 0].numpy(),
                        label=texts[idx[:, 0].numpy()],
                        score=sc[:, 0].numpy().astype(float),
                        constant=constant.numpy(),
                    )
                ),
            )
            rows_arr = np.array(rows)
            rec.add(
                "top_images",
                pd.DataFrame(
                    dict(
                        model=x.target,
                        layer=layer,
                        unit=np.repeat(np.arange(K), ti),
                        rank=np.tile(np.arange(1, ti + 1), K),
                        image_idx=rows_arr[img_idx.numpy().reshape(-1)],
                        activation=acts.numpy().reshape(-1).astype(float),
                    )
                ),
            )
            rec.add(
                "similarities",
                pd.DataFrame(
                    dict(
                        model=x.target,
                        layer=layer,
                        unit=np.repeat(np.arange(K, dtype=np.int32), M),
                        concept_id=np.tile(np.arange(M, dtype=np.int32), K),
                        score=S.numpy().reshape(-1).astype(np.float32),
                    )
                ),
            )
        rec.add(
            "dissections",
            dict(
                model=x.target,
                dissector=x.dissector,
                probe=x.probe,
                concept_set=x.concepts,
                similarity=x.similarity,
                similarity_params=used_params,
                pooling=x.options.get("pooling", "avg"),
                options=x.options,
                notes=notes,
            ),
        )
        ex.log.info(
            f"dissect   {x.target}: {len(ex.layer_names[x.target])} layer(s) labelled with "
            f"{x.similarity} ({len(cs.texts)} concepts, {len(rows)} images)"
        )


def _embed_prompts(ex: Executor, dname: str, texts: list[str]) -> torch.Tensor:
    """Text embeddings of prompts other than the raw concepts (cached like them)."""
    from dissect_study.engine.passes.activations import embed_texts

    d = ex.dissectors[dname]
    res, _ = ex.cache.get_or_compute(
        "text", dict(dissector=d.fingerprint(), texts=texts), lambda: {"emb": embed_texts(d, texts)}
    )
    return res["emb"].float()


def _layer_index(ex: Executor, target: str, layer: str) -> int:
    for info in ex.targets[target].layers():
        if info.name == layer:
            return info.index
    return -1
