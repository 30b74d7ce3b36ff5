"""A stored run built directly in DuckDB, for the report tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from dissect_study.engine.report.overlay import activation_overlay_png
from dissect_study.engine.store.database import RunRecord, write_run


def make_run(
    db: str | Path,
    models: tuple[str, ...] = ("G", "M", "C1", "C2", "C4"),
    n_concepts: int = 760,
    neurons: tuple[int, ...] = (24, 128, 512),
    n_images: int = 200,
    seed: int = 0,
    title: str = "Mammo-CLIP Dissect <RQ1> & RQ2",
    run_id: str = "run-test-1",
) -> str:
    """Write one synthetic finished run to `db`; returns its run id."""
    rng = np.random.default_rng(seed)
    concepts = make_concepts(n_concepts)
    M = len(concepts)
    mammo = (concepts["domain"] == "mammography").to_numpy()
    rec = RunRecord(run_id=run_id, run={})
    rec.add("concepts", concepts)
    rec.add(
        "models",
        dict(
            model="mammo_clip",
            role="dissector",
            kind="mammo_clip",
            source={"checkpoint": "/data/<ckpt>/b5.tar", "variant": "b5"},
            sha256="d" * 64,
            details={"params": 30_000_000, "training_report": {"zero_shot_accuracy": {"density": 0.61, "mass": 0.72}}},
        ),
    )
    for i, m in enumerate(models):
        details = {"params": 28_000_000}
        if m.startswith("C"):
            details["training_report"] = {"task": "calcification", "accuracy": 0.81 + 0.01 * i, "auc": 0.87}
        rec.add(
            "models",
            dict(
                model=m,
                role="target",
                kind="classifier" if m.startswith("C") else "mammo_clip",
                source={"checkpoint": f"/ckpt/{m}.pth"},
                sha256=f"{i:x}" * 64,
                details=details,
            ),
        )
        rec.add(
            "dissections",
            dict(
                model=m,
                dissector="mammo_clip",
                probe="vindr",
                concept_set="specific",
                similarity="soft_wpmi",
                similarity_params={"top_k": 100, "lam": 1.0, "a": 10.0},
                pooling="avg",
                options={"top_images": 5},
                notes=[],
            ),
        )
    rec.add(
        "probes",
        dict(
            probe="vindr",
            n_images=n_images,
            n_skipped=0,
            manifest_sha256="e" * 64,
            source={"kind": "vindr", "split": "test"},
        ),
    )
    attrs = [
        dict(
            view=["CC", "MLO"][i % 2],
            laterality=["L", "R"][(i // 2) % 2],
            density="ABCD"[i % 4],
            birads=1 + i % 5,
            mass=bool(i % 3 == 0),
            calcification=bool(i % 4 == 0),
            findings=["Mass"] if i % 3 == 0 else [],
        )
        for i in range(n_images)
    ]
    rec.add(
        "images",
        pd.DataFrame(
            dict(
                probe="vindr",
                image_idx=np.arange(n_images),
                image_id=[f"img{i:05d}" for i in range(n_images)],
                path=[f"/data/vindr/img{i:05d}.png" for i in range(n_images)],
                attributes=attrs,
            )
        ),
    )
    # --- neurons, labels, taus
    top1: dict[tuple[str, str], pd.DataFrame] = {}
    for mi, m in enumerate(models):
        p_mammo = 0.25 if m == "G" else 0.55 + 0.05 * mi
        for (layer, idx, alias), K in zip(LAYERS, neurons):
            depth = idx / 38
            w = np.where(mammo, p_mammo * (0.5 + depth), 1 - p_mammo)
            w = w / w.sum()
            k = 10
            cids = np.stack([rng.choice(M, size=k, replace=False, p=w) for _ in range(K)])
            base = 0.3 + 0.4 * depth + (0.2 if m != "G" else 0) + 0.15 * rng.standard_normal(K)
            scores = base[:, None] - np.sort(rng.random((K, k)) * 0.3, axis=1)
            tau_top1 = float(scores[:, 0].mean())
            rec.add(
                "layers",
                dict(
                    model=m,
                    layer=layer,
                    layer_index=idx,
                    alias=alias,
                    n_neurons=K,
                    tau=tau_top1,
                    tau_statistic="mean_top1",
                    tau_mean_top1=tau_top1,
                    tau_mean_all=-0.1,
                    tau_median_top1=float(np.median(scores[:, 0])),
                ),
            )
            names = concepts["concept"].to_numpy()
            rec.add(
                "neuron_labels",
                pd.DataFrame(
                    dict(
                        model=m,
                        layer=layer,
                        unit=np.repeat(np.arange(K), k),
                        rank=np.tile(np.arange(1, k + 1), K),
                        concept_id=cids.reshape(-1),
                        concept=names[cids.reshape(-1)],
                        score=scores.reshape(-1),
                    )
                ),
            )
            nd = pd.DataFrame(
                dict(
                    model=m,
                    layer=layer,
                    unit=np.arange(K),
                    concept_id=cids[:, 0],
                    label=names[cids[:, 0]],
                    score=scores[:, 0],
                    constant=False,
                )
            )
            rec.add("neurons", nd)
            top1[(m, layer)] = nd.assign(tau=tau_top1)
            timg = np.stack([rng.choice(n_images, 5, replace=False) for _ in range(K)])
            rec.add(
                "top_images",
                pd.DataFrame(
                    dict(
                        model=m,
                        layer=layer,
                        unit=np.repeat(np.arange(K), 5),
                        rank=np.tile(np.arange(1, 6), K),
                        image_idx=timg.reshape(-1),
                        activation=rng.random(K * 5),
                    )
                ),
            )
    cinfo = concepts.set_index("concept_id")

    def captured(models_: list[str], layers_: list[str], combine: str) -> pd.DataFrame:
        out = []
        for layer in layers_:
            taus = {m: float(top1[(m, layer)]["tau"].iloc[0]) for m in models_}
            for m in models_:
                th = max(taus.values()) if combine == "max" else taus[m]
                nd = top1[(m, layer)]
                ok = nd.loc[nd["score"] >= th]
                for cid, g in ok.groupby("concept_id"):
                    ci = cinfo.loc[cid]
                    out.append(
                        dict(
                            model=m,
                            layer=layer,
                            concept_id=int(cid),
                            concept=ci.concept,
                            category=ci.category,
                            subcategory=ci.subcategory,
                            domain=ci.domain,
                            tasks=list(ci.tasks),
                            n_neurons=len(g),
                            units=g["unit"].tolist(),
                            max_score=float(g["score"].max()),
                            threshold=th,
                        )
                    )
        return pd.DataFrame(out)

    def counts(cap: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, tops = [], []
        for (m, layer), g in cap.groupby(["model", "layer"]):
            for level, col in (("category", "category"), ("subcategory", "subcategory"), ("domain", "domain")):
                for grp, gg in g.groupby(col):
                    rows.append(
                        dict(
                            model=m,
                            layer=layer,
                            level=level,
                            grp=grp,
                            n_concepts=len(gg),
                            n_neurons=int(gg["n_neurons"].sum()),
                        )
                    )
            for task in ("mass", "calcification", "density"):
                gg = g.loc[g["tasks"].map(lambda t, task=task: task in t)]
                rows.append(
                    dict(
                        model=m,
                        layer=layer,
                        level="task",
                        grp=task,
                        n_concepts=len(gg),
                        n_neurons=int(gg["n_neurons"].sum()),
                    )
                )
            cc = g.groupby("category").size().sort_values(ascending=False).head(3)
            for r, (cat, n) in enumerate(cc.items(), start=1):
                tops.append(
                    dict(
                        model=m,
                        layer=layer,
                        rank=r,
                        category=cat,
                        n_concepts=int(n),
                        n_neurons=int(g.loc[g["category"] == cat, "n_neurons"].sum()),
                    )
                )
        return pd.DataFrame(rows), pd.DataFrame(tops)

    layer_names = [l for l, _, _ in LAYERS]
    analyses = []
    # 1: compare G vs M at every layer
    cmp_models = [m for m in ("G", "M") if m in models] or list(models[:2])
    cap1 = captured(cmp_models, layer_names, "max")
    analyses.append((1, "compare", f"compare {' vs '.join(cmp_models)} at layers all", cmp_models, layer_names, cap1))
    # 2: compare M vs the last C at layer last on category Calcification
    m2 = [models[1], models[-1]]
    cap2 = captured(m2, layer_names[-1:], "max")
    analyses.append(
        (
            2,
            "compare",
            f"compare {m2[0]} vs {m2[1]} at layer last on category Calcification",
            m2,
            layer_names[-1:],
            cap2,
        )
    )
    for aid, kind, stmt, ms, ls, cap in analyses:
        rec.add(
            "analyses",
            dict(
                analysis_id=aid,
                kind=kind,
                analysis_names=["captured_concepts"],
                statement=stmt,
                line=10 + aid,
                models=ms,
                layers=ls,
                threshold_rule={"combine": "max", "statistic": "mean_top1", "value": None, "op": ">="},
                count_unit="concepts",
                options={},
            ),
        )
        rec.add("captured_concepts", cap.assign(analysis_id=aid))
        cc, tc = counts(cap)
        rec.add("category_counts", cc.assign(analysis_id=aid))
        rec.add("top_categories", tc.assign(analysis_id=aid))
    # concept changes for analysis 2
    ch = []
    for cid, g in cap2.groupby("concept_id"):
        present = sorted(g["model"].unique(), key=m2.index)
        ci = cinfo.loc[cid]
        ch.append(
            dict(
                analysis_id=2,
                layer=layer_names[-1],
                concept_id=int(cid),
                concept=ci.concept,
                category=ci.category,
                subcategory=ci.subcategory,
                status="shared" if len(present) == 2 else "unique",
                present_in=present,
            )
        )
    rec.add("concept_changes", pd.DataFrame(ch))
    # 3: learned vs missed for M (union over all layers, own tau)
    mm = models[1]
    cap3 = captured([mm], layer_names, "own")
    learned = set(cap3["concept_id"])
    rec.add(
        "analyses",
        dict(
            analysis_id=3,
            kind="learned",
            analysis_names=["missed_concepts"],
            statement=f"learned {mm} at layers all",
            line=13,
            models=[mm],
            layers=layer_names,
            threshold_rule={"combine": "own", "statistic": "mean_top1", "op": ">="},
            count_unit="concepts",
            options={},
        ),
    )
    mc = []
    for r in concepts.itertuples():
        st = "learned" if r.concept_id in learned else ("missed_overlap" if r.concept_id % 17 == 0 else "missed")
        mc.append(
            dict(
                analysis_id=3,
                model=mm,
                concept_id=r.concept_id,
                concept=r.concept,
                category=r.category,
                subcategory=r.subcategory,
                domain=r.domain,
                status=st,
                overlap_with=concepts["concept"].iloc[0] if st == "missed_overlap" else None,
            )
        )
    rec.add("missed_concepts", pd.DataFrame(mc))
    # 4: keywords
    rec.add(
        "analyses",
        dict(
            analysis_id=4,
            kind="keywords",
            analysis_names=["keyword_neurons"],
            statement=f'keywords {mm} "calcification"',
            line=14,
            models=[mm],
            layers=layer_names,
            count_unit="concepts",
            options={},
        ),
    )
    rec.add(
        "keyword_neurons",
        pd.DataFrame(
            [
                dict(
                    analysis_id=4,
                    model=mm,
                    layer=l,
                    unit=u,
                    keyword="calcification",
                    share=0.6,
                    labels=["calcification term 1", EVIL],
                )
                for l in layer_names
                for u in (1, 2)
            ]
        ),
    )
    # 5: show neuron M.last[7] top 5 -> neuron_images with real overlays
    unit = 7
    rec.add(
        "analyses",
        dict(
            analysis_id=5,
            kind="show_neuron",
            analysis_names=["neuron_profile"],
            statement=f"show neuron {mm}.last[{unit}] top 5",
            line=15,
            models=[mm],
            layers=[layer_names[-1]],
            count_unit="concepts",
            options={},
        ),
    )
    ni = []
    for rank in range(1, 6):
        img = _phantom_image(rng)
        amap = rng.random((10, 6))
        ni.append(
            dict(
                model=mm,
                layer=layer_names[-1],
                unit=unit,
                rank=rank,
                image_idx=rank * 3,
                activation=float(5 - rank),
                png=activation_overlay_png(img, amap),
            )
        )
    rec.add("neuron_images", pd.DataFrame(ni))
    # sanity, warnings, calibration
    rec.add(
        "sanity",
        pd.DataFrame(
            [
                dict(
                    dissector="mammo_clip",
                    probe="vindr",
                    attribute="view",
                    metric="auc",
                    value=0.94,
                    n=n_images,
                    chance=0.5,
                ),
                dict(
                    dissector="mammo_clip",
                    probe="vindr",
                    attribute="laterality",
                    metric="auc",
                    value=0.52,
                    n=n_images,
                    chance=0.5,
                ),
                dict(
                    dissector="mammo_clip",
                    probe="vindr",
                    attribute="density",
                    metric="accuracy",
                    value=0.61,
                    n=n_images,
                    chance=0.25,
                ),
                dict(
                    dissector="mammo_clip",
                    probe="vindr",
                    attribute="mass",
                    metric="auc",
                    value=0.71,
                    n=n_images,
                    chance=0.5,
                ),
            ]
        ),
    )
    rec.add("warnings", dict(step="sanity", message="dissector mammo_clip is near chance on 'laterality'"))
    cal = []
    for m in models:
        for l in layer_names:
            for s in ("soft_wpmi", "wpmi", "cos", "cos_cubed", "rank_reorder", "mammi"):
                cal.append(
                    dict(
                        model=m,
                        layer=l,
                        similarity=s,
                        n_selective=int(rng.integers(5, 50)),
                        top1_hit=float(rng.random()),
                        top5_hit=float(rng.random()),
                        mammi_hit_rate=float(rng.random()),
                        precision=float(rng.random()),
                        recall=float(rng.random()),
                        f1=float(rng.random()),
                        mean_label_cosine=float(rng.random()),
                    )
                )
    rec.add("calibration", pd.DataFrame(cal))
    now = dt.datetime(2025, 5, 1, 12, 0, 0)
    rec.run = dict(
        study_path=f"/studies/{EVIL}.study",
        study_title=title,
        study_sha256="a" * 64,
        study_text=f'study "{title}"\n# concept {EVIL}\n',
        started_at=now - dt.timedelta(minutes=5),
        finished_at=now,
        status="ok",
        tool_version="0.1.0",
        params={"device": "cpu", "torch": "2.x"},
    )
    write_run(db, rec)
    return run_id


EVIL = "<script>alert(1)</script>"


LAYERS = [("_blocks.2", 2, "early"), ("_blocks.19", 19, "middle"), ("_blocks.38", 38, "last")]


def make_concepts(n_concepts: int) -> pd.DataFrame:
    total = sum(c[1] for c in CATEGORIES)
    rows = []
    cid = 0
    for ci, (cat, share, subs, dom) in enumerate(CATEGORIES):
        n = max(2, round(share * n_concepts / total)) if ci < len(CATEGORIES) - 1 else n_concepts - cid
        for j in range(n):
            sub = subs[j % len(subs)]
            word = sub.split()[0].lower().replace("/", "")
            name = f"{word} term {j}"
            tasks = []
            if "Calc" in sub:
                tasks.append("calcification")
            if sub == "Mass":
                tasks.append("mass")
            if sub == "Breast Density":
                tasks.append("density")
            rows.append(
                dict(
                    concept_set="specific",
                    concept_id=cid,
                    concept=name,
                    category=cat,
                    subcategory=sub,
                    domain=dom,
                    tasks=tasks,
                )
            )
            cid += 1
    rows[5]["concept"] = EVIL  # a hostile concept name, in a mammography category
    rows[6]["concept"] = 'amourphous "calcification" & <b>co</b>'
    return pd.DataFrame(rows)


def _phantom_image(rng: np.random.Generator, h: int = 152, w: int = 92) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((xx / (0.9 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2) < 1
    img = np.where(breast, 120 + 60 * rng.random((h, w)), 5)
    return np.clip(img, 0, 255).astype(np.uint8)


CATEGORIES = [
    ("Breast_anatomy_or_structure", 31, ["Breast Structures or Anatomy", "Breast Implants"], "mammography"),
    ("Breast_locations", 51, ["Breast Finding Locations", "Breast Views and Laterality"], "mammography"),
    (
        " Findings and characterizations",
        139,
        ["Breast Density", "Mass", "Calcifications morphology", "Asymmetry"],
        "mammography",
    ),
    ("Interpretations", 139, ["Benign Calcifications", "Suspicious findings", "Post biopsy/ surgery"], "mammography"),
    ("Action or follow up", 9, ["Action"], "mammography"),
    ("Environmental_and_Natural", 394, ["Materials", "Natural", "Objects", "Colours"], "non-mammography"),
]
