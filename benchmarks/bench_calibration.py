"""The calibration bench's grading step, old way vs new, in one process.

    python benchmarks/bench_calibration.py             # 400 phantoms, 5 layers x 64 neurons, 6 functions
    python benchmarks/bench_calibration.py --quick     # 2 layers x 32 neurons

The demo's warm run spent most of its calibration time in the sentence encoder:
`calibration_table` used to embed the label phrases of every (layer, function)
table again.  This times, on the same inputs, the grading of every (layer,
function) pair with the raw shipped MiniLM encoder (`before`: one encoder call per
table, what the engine did) and with one `PhraseEmbeddings` per run (`after`:
each phrase embedded once, primed with the concept set and the ground-truth
phrases), prints both
times and their ratio, and the largest difference of any column of the tables
(only mean_label_cosine may move, by float32 padding noise).

Inputs: the shipped mammo_v1 concept set, the ground truth of 400 phantom scenes
(sampled, not rendered), planted neurons that each fire for one attribute plus
noise, and a P made of random image/concept scores.  Needs the shipped MiniLM
files (as the demo does); no network.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch


def _inputs(n_images: int, layers: int, units: int, seed: int = 0):
    from dissect_study.engine.annotations import attribute_matrix
    from dissect_study.engine.concepts import load_shipped
    from dissect_study.engine.phantom.generator import sample_scene
    from dissect_study.engine.phantom.vocabulary import GROUND_TRUTH_CONCEPTS

    texts = load_shipped("shipped", {"name": "mammo_v1"}, ".").texts
    attrs = [dict(sample_scene(seed, i).attributes) for i in range(n_images)]
    keys = [k for k in GROUND_TRUTH_CONCEPTS if any(k[0] in d for d in attrs)]
    keys, ind = attribute_matrix(attrs, keys)
    ind = np.asarray(ind, dtype=np.float64)
    common = [j for j in range(ind.shape[1]) if 10 <= ind[:, j].sum() <= n_images - 10]
    rng = np.random.default_rng(seed)
    acts = []
    for _ in range(layers):
        pick = rng.choice(common, size=units)
        X = ind[:, pick] + rng.normal(0, 0.6, size=(n_images, units))
        acts.append(torch.as_tensor(X, dtype=torch.float32))
    P = torch.as_tensor(rng.normal(0.2, 0.05, size=(n_images, len(texts))), dtype=torch.float32)
    return texts, attrs, acts, P


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    layers, units = (2, 32) if args.quick else (5, 64)

    from dissect_study.dsl.vocabulary import SIMILARITIES
    from dissect_study.engine.analyses import calibration as cal
    from dissect_study.engine.models.demo import MiniLMEncoder
    from dissect_study.engine.phantom.vocabulary import ALL_PHRASES
    from dissect_study.engine.scores.similarity import compute_similarity

    texts, attrs, acts, P = _inputs(400, layers, units)
    encoder = MiniLMEncoder.shared()
    encoder(["warm-up"])
    work = []
    for X in acts:
        truth = cal.ground_truth_by_lift(X, attrs)
        for sim in SIMILARITIES:
            params = {p.name: p.default for p in SIMILARITIES[sim].params if p.name != "template"}
            work.append((sim, compute_similarity(sim, P, X, params).S, truth))
    print(
        f"{len(work)} tables: {layers} layers x {units} neurons x {len(SIMILARITIES)} functions, {len(texts)} concepts"
    )

    def grade(text_encoder) -> pd.DataFrame:
        return pd.concat(
            [cal.calibration_table("l", sim, S, texts, truth, text_encoder=text_encoder) for sim, S, truth in work],
            ignore_index=True,
        )

    t = time.perf_counter()
    before = grade(encoder)
    t_before = time.perf_counter() - t
    t = time.perf_counter()
    cached = cal.PhraseEmbeddings(encoder)
    cached.prime(cal.bench_phrases(texts, [ALL_PHRASES]))
    t_prime = time.perf_counter() - t
    after = grade(cached)
    t_after = time.perf_counter() - t
    t = time.perf_counter()
    grade(None)
    t_none = time.perf_counter() - t
    print(f"before (encoder per table): {t_before:7.2f} s")
    print(
        f"after  (PhraseEmbeddings):  {t_after:7.2f} s   ratio {t_before / t_after:.1f}x  (of which priming {t_prime:.2f} s)"
    )
    print(f"grading without any encoder: {t_none:6.2f} s  (the part both share)")
    for c in before.columns:
        if pd.api.types.is_float_dtype(before[c]):
            d = np.nanmax(np.abs(before[c].to_numpy(float) - after[c].to_numpy(float)), initial=0.0)
            same_nan = np.array_equal(before[c].isna(), after[c].isna())
            if d > 0 or not same_nan:
                print(f"  {c}: max |before - after| = {d:.2e}{'' if same_nan else ' (NaN pattern differs!)'}")
        elif not before[c].astype(str).equals(after[c].astype(str)):
            print(f"  {c}: DIFFERS")
    print("every other column identical")


if __name__ == "__main__":
    main()
