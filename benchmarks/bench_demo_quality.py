"""Train the demo dissector (or load it from the cache) and measure how well it labels phantoms.

Prints per-attribute zero-shot AUC on the demo's probe (phantom n=400 seed=0) and the
perfect-neuron top-1 hit rate of every similarity function over the shipped concept set.

    PYTHONPATH=.mypy_root python benchmarks/bench_demo_quality.py [--cache DIR] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dissect_study.engine.concepts import load_shipped
from dissect_study.engine.models import demo
from dissect_study.engine.models.base import BuildContext
from dissect_study.engine.phantom.probe import PhantomProbe
from dissect_study.engine.phantom.quality import perfect_neuron_hits, zero_shot_aucs
from dissect_study.engine.scores.similarity import concept_activation_matrix

FUNCTIONS = {
    "soft_wpmi": {"top_k": 100, "lam": 1},
    "soft_wpmi_k20": {"top_k": 20, "lam": 1},
    "soft_wpmi_k28": {"top_k": 28, "lam": 1},  # the demo study's top_k
    "soft_wpmi_k40": {"top_k": 40, "lam": 1},
    "wpmi": {},
    "cos": {},
    "cos_cubed": {},
    "rank_reorder": {},
}


LESIONS = ("mass", "mass_", "calc", "architectural", "asymmetry", "lymph")


def targets(ctx: BuildContext, probe: PhantomProbe, attrs: list[dict]) -> dict:
    """Held-out AUC of each C target and, per target, its units selective (AUC >= 0.8) for a lesion attribute.

    Each target reads the probe through its own preprocessing (the C targets' input height differs
    from the dissector's)."""
    from dissect_study.engine.analyses.calibration import assign_ground_truth, neuron_selectivity

    res: dict = {}
    for variant in ("M", "C_density", "C_mass", "C_calcification"):
        t0, c0 = time.time(), time.process_time()
        t = demo.build_target(variant, {"variant": variant}, ctx)
        held = t.training_report().get("heldout")
        x = torch.stack([t.preprocess(probe.load(i)) for i in range(len(probe.items))])
        lesion_units = {}
        for layer in ("blocks.2", "blocks.3", "blocks.4"):
            got: dict = {}
            h = t.module.get_submodule(layer).register_forward_hook(
                lambda m, i, o, got=got: got.setdefault("o", []).append(o.mean((2, 3)))
            )
            for i in range(0, len(x), 100):
                t.forward(x[i : i + 100])
            h.remove()
            acts = torch.cat(got["o"]).numpy()
            truth = assign_ground_truth(neuron_selectivity(acts, attrs))
            les = truth[truth["attribute"].astype(str).str.startswith(LESIONS)]
            lesion_units[layer] = sorted({f"{a}={v}" for a, v in zip(les["attribute"], les["value"])})
        res[variant] = {"heldout": held, "lesion_selective": lesion_units}
        print(
            variant,
            "held-out",
            held and {k: held[k] for k in ("auc", "accuracy")},
            f"{time.time() - t0:.0f} s wall {time.process_time() - c0:.0f} s cpu",
        )
        print("   lesion-selective units' attributes:", json.dumps(lesion_units))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp/i16-cache")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--json", default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--pw", type=float, default=None)
    ap.add_argument("--bs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--targets", action="store_true", help="also train C_* and count lesion-selective units")
    a = ap.parse_args()
    if a.bs:
        demo.BATCH = a.bs
    if a.lr:
        demo.LEARNING_RATE = a.lr
    if a.n_train:
        demo.N_TRAIN_DISSECTOR = a.n_train
    if a.height:
        demo.TRAIN_HEIGHT = a.height
    if a.pw is not None:
        demo.PHRASE_WEIGHT = a.pw
    t0, c0 = time.time(), time.process_time()
    ctx = BuildContext(base_dir=".", cache_dir=a.cache, log=print)
    d = demo.get_dissector(ctx, seed=0, epochs=a.epochs)
    print(f"dissector ready: {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s cpu")
    probe = PhantomProbe(a.n, seed=0)
    attrs = [it.attributes for it in probe.items]
    x = torch.stack([d.preprocess(probe.load(i)) for i in range(len(probe.items))])
    emb = torch.cat([d.encode_images(x[i : i + 100]) for i in range(0, len(x), 100)])
    concepts = list(load_shipped("mammo", {"name": "mammo_v1"}, ".").texts)
    P = concept_activation_matrix(emb, d.encode_texts(concepts))
    out: dict = {"zero_shot": {}, "perfect": {}}
    rows = zero_shot_aucs(emb, d.encode_texts, attrs)
    for r in rows:
        out["zero_shot"][r["attribute"]] = round(r["value"], 3)
    print("zero-shot AUC:", json.dumps(out["zero_shot"]))
    print(
        "min zero-shot AUC:",
        min(out["zero_shot"].values()),
        "below 0.95:",
        [k for k, v in out["zero_shot"].items() if v < 0.95],
    )
    for name, params in FUNCTIONS.items():
        fn = name.split("_k")[0] if name.startswith("soft_wpmi_k") else name
        hit, labels = perfect_neuron_hits(P, concepts, attrs, fn, params)
        lenient, _ = perfect_neuron_hits(P, concepts, attrs, fn, params, lenient=True)
        out["perfect"][name] = round(hit, 3)
        out.setdefault("perfect_lenient", {})[name] = round(lenient, 3)
        print(f"perfect-neuron top-1 {name}: {hit:.3f} (lenient {lenient:.3f})")
        if name in ("soft_wpmi", "cos_cubed"):
            print("   labels:", json.dumps(labels))
    if a.targets:
        ctx.dissectors["demo"] = d
        out["targets"] = targets(ctx, probe, attrs)
    print(f"total {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s cpu")
    print("report seconds:", d.training_report().get("seconds"), "cpu", d.training_report().get("cpu_seconds"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
