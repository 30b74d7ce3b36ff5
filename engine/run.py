"""Execute a plan: build, embed, hook, score, label, analyse, store, report.

The order follows the data flow of docs/METHOD.md §1.  Every expensive step goes
through the content-keyed cache, so an interrupted run loses nothing but time
and a re-run recomputes nothing.  All results are gathered in a `RunRecord`
and written to DuckDB in one transaction at the very end (engine/store.py):
a failure anywhere leaves the database exactly as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from dissect_study import __version__
from dissect_study.engine.store import database as store
from dissect_study.engine.cache import Cache, default_cache_dir
from dissect_study.dsl import ast
from dissect_study.dsl.checker import CheckedAnalysis, CheckedStudy, UnsetEnv
from dissect_study.engine.concepts import ConceptSet
from dissect_study.engine.models.base import (
    Dissector,
    HasSentenceEncoder,
    ReportsTraining,
    SharesImagePass,
    Target,
    TrainModeSwitch,
)
from dissect_study.engine.probes.base import Probe
from dissect_study.engine.plan.steps import Plan
from dissect_study.dsl.vocabulary import SIMILARITIES
from dissect_study.errors import DissectStudyError


class RunError(DissectStudyError):
    """A run-time problem the user can fix (missing file, unset variable, bad layer)."""


@dataclass
class RunOptions:
    db: Path | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    device: str | None = None  # overrides the study's `device`
    batch_size: int | None = None
    quiet: bool = False
    strict: bool = False
    reports: bool = True
    calibration: bool = True


@dataclass
class RunResult:
    run_id: str
    db: Path
    reports: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


logger = logging.getLogger(__name__)


class _Log:
    """The run's voice on top of `logging`: one line per finished step, and warnings the run keeps.

    Why a class and not the bare logger: a warning also lands in the run's `warnings`
    table, so it is recorded here as well as logged.  `quiet` (RunOptions) demotes step
    summaries to DEBUG, so a library caller can silence them without touching the
    logging configuration; the CLI's -v still shows them.
    """

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.warnings: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        logger.log(logging.DEBUG if self.quiet else logging.INFO, msg)

    def warn(self, step: str, msg: str) -> None:
        self.warnings.append((step, msg))
        logger.warning(msg)


# ----------------------------------------------------------------------------- helpers

def _unset_env_check(name: str, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if isinstance(value, UnsetEnv):
            span = value.span
            raise RunError(
                f"{span.path}:{span.line}:{span.col}: {name}: parameter '{key}' comes from the environment variable "
                f"{value.var}, which is not set.\n  hint: export {value.var}=... before running, "
                f"or give a default: env(\"{value.var}\", \"/path\")"
            )


def _device(requested: str) -> str:
    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RunError("device cuda was requested but no CUDA device is available; use --device cpu")
    return requested


def _dedup_indices(probe: Probe) -> list[int]:
    seen: set[str] = set()
    keep: list[int] = []
    for i, item in enumerate(probe.items):
        if item.image_id in seen:
            continue
        seen.add(item.image_id)
        keep.append(i)
    return keep


def resolve_layers(target: Target, items: tuple[ast.LayerItem, ...],
                   study_aliases: dict[str, tuple[ast.LayerItem, ...]]) -> list[tuple[str, str | None]]:
    """Symbolic layer items -> [(canonical layer name, alias or None)] in depth order."""
    infos = target.layers()
    names = [l.name for l in infos]
    builtin = target.aliases()
    out: dict[str, str | None] = {}

    def add(name: str, alias: str | None) -> None:
        if name not in out or out[name] is None:
            out[name] = alias

    def resolve_one(text: str, alias: str | None) -> None:
        if text in builtin:
            add(builtin[text], alias or text)
            return
        try:
            add(target.resolve_layer(text), alias)
        except KeyError:
            import difflib

            close = difflib.get_close_matches(text, names + list(builtin), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RunError(
                f"target {target.name!r} has no layer {text!r}.{hint} "
                f"Run `dissect-study inspect` on its weights to list layers "
                f"({len(names)} layers: {', '.join(names[:4])} ... {', '.join(names[-2:])})."
            ) from None

    def resolve_item(item: ast.LayerItem, alias: str | None) -> None:
        if isinstance(item, ast.LayerAll):
            for n in names:
                add(n, alias)
        elif isinstance(item, ast.LayerRange):
            for layer in item.names():
                resolve_one(layer, alias)
        else:
            resolve_one(item.text, alias or (item.text if item.text in builtin else None))

    for item in items:
        if isinstance(item, ast.LayerName) and item.text in study_aliases:
            for sub in study_aliases[item.text]:  # the checker has already inlined nested aliases
                resolve_item(sub, item.text)
        else:
            resolve_item(item, None)
    order = {n: i for i, n in enumerate(names)}
    return sorted(out.items(), key=lambda kv: order.get(kv[0], 1 << 30))


# ----------------------------------------------------------------------------- executor

class Executor:
    """Runs one plan; the plan is its only input besides the run options (no study object)."""

    def __init__(self, plan: Plan, options: RunOptions):
        self.plan = plan
        self.opt = options
        self.log = _Log(options.quiet)
        self.base_dir = str(Path(plan.study_path).resolve().parent)
        self.cache = Cache(Path(options.cache_dir or default_cache_dir()), enabled=options.use_cache)
        self.run_id = store.new_run_id()
        self.record = store.RunRecord(self.run_id, {})
        self.concept_sets: dict[str, ConceptSet] = {}
        self.probes: dict[str, Probe] = {}
        self.probe_rows: dict[str, list[int]] = {}
        self.dissectors: dict[str, Dissector] = {}
        self.targets: dict[str, Target] = {}
        self.acts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.act_rows: dict[tuple[str, str], list[int]] = {}
        #: probe rows asked of each target pass (act_rows holds those actually read)
        self.act_requested: dict[tuple[str, str], list[int]] = {}
        self.text_emb: dict[tuple[str, str], torch.Tensor] = {}
        self.img_emb: dict[tuple[str, str], tuple[torch.Tensor, list[int]]] = {}
        #: rows the zero-shot check uses when the dissector embedded only a top-k union
        self.sanity_rows: dict[tuple[str, str], list[int] | None] = {}
        self.layer_names: dict[str, list[tuple[str, str | None]]] = {}
        self.S: dict[tuple[str, str], torch.Tensor] = {}
        #: (model, layer, unit, top) of each `show neuron`, filled by the analyses
        self.neuron_requests: list[tuple[str, str, int, int]] = []

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        from dissect_study.engine.concepts import load_concept_set
        from dissect_study.engine.models import build_dissector, build_target
        from dissect_study.engine.models.base import BuildContext
        from dissect_study.engine.probes import build_probe

        if self.opt.reports:  # refuse before hours of work, not after
            for r in self.plan.reports:
                _unset_env_check("report", {"out": r.out})
        device = _device(self.opt.device or self._study_device())
        self.device = device
        ctx = BuildContext(base_dir=self.base_dir, cache_dir=str(self.cache.root), device=device,
                           log=self.log.info, probes=self.probes)
        self.ctx = ctx
        for step in self.plan.concept_sets:
            _unset_env_check(step.name, step.params)
            cs = load_concept_set(step.name, step.func, step.params, self.base_dir)
            for w in cs.warnings:
                self.log.warn(f"concepts {step.name}", f"concept set {step.name}: {w}")
            self.concept_sets[step.name] = cs
            self.log.info(f"concepts  {step.name}: {len(cs.concepts)} concepts ({step.func})")
        for step in self.plan.probes:
            _unset_env_check(step.name, step.params)
            probe = build_probe(step.name, step.func, step.params, ctx, sample=step.sample)
            self.probes[step.name] = probe
            self.log.info(f"probe     {step.name}: {len(probe)} images ({step.func})")
        for step in self.plan.dissectors:
            _unset_env_check(step.name, step.params)
            t0 = time.perf_counter()
            d = build_dissector(step.name, step.func, step.params, ctx)
            ctx.dissectors[step.name] = d
            self.dissectors[step.name] = d
            self.log.info(f"dissector {step.name}: {step.func} ready ({time.perf_counter() - t0:.1f}s)")
        for step in self.plan.targets:
            _unset_env_check(step.name, step.params)
            t0 = time.perf_counter()
            t = build_target(step.name, step.func, step.params, ctx)
            self.targets[step.name] = t
            self.log.info(f"target    {step.name}: {step.func}, {len(t.layers())} hookable layers "
                          f"({time.perf_counter() - t0:.1f}s)")
        for x in self.plan.dissections:
            if x.options.get("dissector_train_mode"):
                d = self.dissectors[x.dissector]
                if not isinstance(d, TrainModeSwitch):
                    raise RunError(f"dissect {x.target}: dissector_train_mode=true, but dissector {x.dissector} "
                                   f"has no train mode (only mammo_clip dissectors reproduce that reference bug)")
                d.train_mode = True
                self.log.warn("build", f"dissector {x.dissector} runs its image tower in train mode "
                                       f"(reference parity; embeddings depend on the batch)")
            self.layer_names[x.target] = resolve_layers(self.targets[x.target], x.layers, self.plan.layer_aliases)

    def _study_device(self) -> str:
        devs = {x.options.get("device", "auto") for x in self.plan.dissections}
        return devs.pop() if len(devs) == 1 else "auto"

    # ------------------------------------------------------------------ passes
    def _rows(self, probe_name: str, dedup: bool) -> list[int]:
        probe = self.probes[probe_name]
        return _dedup_indices(probe) if dedup else list(range(len(probe)))

    def _shared_passes(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(dissector, probe) -> (target, probe) whose forward pass also yields the dissector's embeddings.

        A target shares the dissector's image pass when it IS the dissector's image tower
        (same fingerprint, same preprocessing), runs in fp32, and the dissector is not in
        train mode; then one B5 pass over the probe serves M and the dissector.
        """
        shared: dict[tuple[str, str], tuple[str, str]] = {}
        for dname, pname in self.plan.image_passes:
            d = self.dissectors[dname]
            if not isinstance(d, SharesImagePass) or (isinstance(d, TrainModeSwitch) and d.train_mode):
                continue
            for x in self.plan.dissections:
                t = self.targets[x.target]
                if (x.probe == pname and x.options.get("precision", "fp32") == "fp32"
                        and t.fingerprint() == d.tower_fingerprint()
                        and t.preprocess.describe == d.preprocess.describe):
                    shared[(dname, pname)] = (x.target, x.probe)
                    break
        return shared

    def passes(self) -> None:
        from dissect_study.engine.passes.activations import embed_images, embed_texts, extract_activations

        progress = not self.opt.quiet
        for dname, cname in self.plan.text_passes:
            d, cs = self.dissectors[dname], self.concept_sets[cname]
            parts = dict(dissector=d.fingerprint(), texts=cs.texts)
            t0 = time.perf_counter()
            res, hit = self.cache.get_or_compute("text", parts, lambda: {"emb": embed_texts(d, cs.texts)})
            self.text_emb[(dname, cname)] = res["emb"].float()
            self.log.info(f"text      {dname} x {cname}: {len(cs.texts)} concepts embedded "
                          f"({'cache' if hit else f'{time.perf_counter() - t0:.1f}s'})")

        shared = self._shared_passes()
        tower_out: dict[tuple[str, str], tuple[torch.Tensor, list[int]]] = {}
        for x in self.plan.dissections:
            target, probe = self.targets[x.target], self.probes[x.probe]
            key = (x.target, x.probe)
            if key in self.acts:
                continue
            rows = self._rows(x.probe, x.options.get("dedup_images", True))
            layers = [n for n, _ in self.layer_names[x.target]]
            bs = self.opt.batch_size or x.options.get("batch") or target.batch_size
            t0 = time.perf_counter()
            tensors: dict[str, torch.Tensor] = {}
            missing: list[str] = []
            base = dict(target=target.fingerprint(), preprocess=target.preprocess.describe,
                        probe=probe.manifest_sha256(), rows=rows, pooling=x.options.get("pooling", "avg"),
                        precision=x.options.get("precision", "fp32"))
            cached_rows: set[tuple[int, ...]] = set()
            for layer in layers:
                got = self.cache.load("acts", self.cache.key("acts", layer=layer, **base))
                if got is None:
                    missing.append(layer)
                else:
                    tensors[layer] = got["acts"]
                    kept = got["rows"].tolist()
                    cached_rows.add(tuple(kept))
            if missing and cached_rows:
                # rows kept can differ between runs (an image became unreadable): recompute
                # every layer in one pass rather than mixing misaligned matrices
                missing, tensors = list(layers), {}
            if missing:
                res = extract_activations(target, probe, missing, pooling=x.options.get("pooling", "avg"),
                                          batch_size=bs, device=self.device, workers=x.options.get("workers", 0),
                                          precision=x.options.get("precision", "fp32"), progress=progress,
                                          indices=rows, keep_output=key in shared.values())
                kept = list(res.indices)
                if res.output is not None:
                    tower_out[key] = (res.output, kept)
                for idx, reason in res.skipped:
                    self.log.warn(f"activations {x.target}", f"{x.probe}[{idx}] skipped: {reason}")
                    if self.opt.strict:
                        raise RunError(f"probe {x.probe}: image {idx} is unreadable ({reason}); "
                                       f"--strict makes that fatal")
                for layer in missing:
                    tensors[layer] = res.acts[layer]
                    self.cache.save("acts", self.cache.key("acts", layer=layer, **base),
                                    {"acts": res.acts[layer], "rows": torch.tensor(kept)}, {"layer": layer})
                speed = f"{res.images_per_s:.1f} images/s"
            else:
                speed = "cache"
            self.acts[key] = tensors
            self.act_rows[key] = kept
            self.act_requested[key] = rows
            self.log.info(f"target    {x.target} on {x.probe}: {len(kept)} images x {len(layers)} layers "
                          f"({speed}, {time.perf_counter() - t0:.1f}s)")

        # dissector image passes: the cheapest pass every dissection sharing it allows
        from dissect_study.engine.plan import cheapest_pass
        from dissect_study.engine.plan.cheapest_pass import RowUser, choose_rows
        from dissect_study.dsl.vocabulary import SIMILARITIES

        for dname, pname in self.plan.image_passes:
            d, probe = self.dissectors[dname], self.probes[pname]
            users = [x for x in self.plan.dissections if (x.dissector, x.probe) == (dname, pname)]
            rows = sorted(set().union(*(self.act_rows[(x.target, x.probe)] for x in users)))
            calibrating = self.opt.calibration and probe.has_ground_truth
            row_users = []
            for x in users:
                spec = SIMILARITIES[x.similarity].param("top_k")
                row_users.append(RowUser(
                    name=x.target, similarity=x.similarity, family=x.family,
                    top_k=int(x.similarity_params.get("top_k", spec.default if spec else 0)),
                    acts=self.acts[(x.target, x.probe)], kept=self.act_rows[(x.target, x.probe)],
                    top_images=int(x.options.get("top_images", 5)),
                    train_mode=bool(x.options.get("dissector_train_mode")),
                    needs_all_rows="the calibration bench scores every function on every image" if calibrating else None))
            choice = choose_rows(rows, row_users)
            if choice.reduced or len(rows) > cheapest_pass.MIN_PROBE_IMAGES:  # say why a large probe is whole
                self.log.info(f"image     {dname} x {pname}: embedding {choice.reason}")
            rows = choice.rows
            self.sanity_rows[(dname, pname)] = choice.sanity_rows
            train_mode = any(u.train_mode for u in row_users)
            parts = dict(dissector=d.fingerprint(), preprocess=d.preprocess.describe,
                         probe=probe.manifest_sha256(), rows=rows, train_mode=train_mode,
                         # train-mode BatchNorm makes embeddings depend on the batch composition
                         batch=(self.opt.batch_size or d.batch_size) if train_mode else None)
            t0 = time.perf_counter()
            from_pass = tower_out.get(shared.get((dname, pname), ("", "")))
            how = "embedded"

            def compute() -> dict[str, torch.Tensor]:
                nonlocal how
                if from_pass is not None and isinstance(d, SharesImagePass):
                    out, kept = from_pass
                    at = {r: i for i, r in enumerate(kept)}
                    if all(r in at for r in rows):
                        how = f"embedded from {shared[(dname, pname)][0]}'s pass (shared)"
                        emb = d.embed_tower_output(out[torch.tensor([at[r] for r in rows], dtype=torch.long)])
                        return {"emb": emb, "rows": torch.tensor(rows)}
                bs = self.opt.batch_size or d.batch_size
                r = embed_images(d, probe, indices=rows, batch_size=bs, device=self.device, progress=progress)
                return {"emb": r.emb, "rows": torch.tensor(list(r.indices))}

            res, hit = self.cache.get_or_compute("images", parts, compute)
            self.img_emb[(dname, pname)] = (res["emb"].float(), res["rows"].tolist())
            self.log.info(f"image     {dname} x {pname}: {len(res['rows'])} images {how} "
                          f"({'cache' if hit else f'{time.perf_counter() - t0:.1f}s'})")

    # ------------------------------------------------------------------ score + label
    def score(self) -> None:
        from dissect_study.engine.scores.labels import layer_taus, top_concepts, top_images
        from dissect_study.engine.scores.similarity import compute_similarity, concept_activation_matrix

        rec = self.record
        for cname, cs in self.concept_sets.items():
            rec.add("concepts", cs.to_frame())
        for x in self.plan.dissections:
            cs = self.concept_sets[x.concepts]
            rows = self.act_rows[(x.target, x.probe)]
            emb, emb_rows = self.img_emb[(x.dissector, x.probe)]
            pos = {r: i for i, r in enumerate(emb_rows)}
            text = self.text_emb[(x.dissector, x.concepts)]
            tmpl = x.similarity_params.get("template") if x.similarity == "mammi" else None
            if tmpl:
                # MAMMI's prompts are "<template> <concept>"; the template's own embedding
                # is subtracted below (adaptive cosine, docs/METHOD.md §3.6)
                text = self._embed_prompts(x.dissector, [f"{tmpl} {c}" for c in cs.texts])
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
                t_emb = self._embed_prompts(x.dissector, [tmpl])
                template = concept_activation_matrix(emb[[pos[r] for r in rows if r in pos]], t_emb)[:, 0]
            tau_stat = self.plan.tau_statistic
            for layer, alias in self.layer_names[x.target]:
                X = self.acts[(x.target, x.probe)][layer].float()
                params = {k: v for k, v in x.similarity_params.items() if k != "template"}
                res = compute_similarity(x.similarity, P, X, params, template_feats=template)
                for n in res.notes:
                    if n not in notes:
                        notes.append(n)
                        self.log.info(f"note      {x.target}: {n}")
                if res.top_k_used is not None:
                    used_params["top_k"] = res.top_k_used
                S = res.S.float()
                self.S[(x.target, layer)] = S
                K, M = S.shape
                taus = layer_taus(S)
                rec.add("layers", dict(model=x.target, layer=layer, layer_index=self._layer_index(x.target, layer),
                                       alias=alias, n_neurons=K, tau=taus[tau_stat], tau_statistic=tau_stat,
                                       tau_mean_top1=taus["mean_top1"], tau_mean_all=taus["mean_all"],
                                       tau_median_top1=taus["median_top1"]))
                k = min(int(x.options.get("top_concepts", 10)), M)
                sc, idx = top_concepts(S, k)
                units = np.repeat(np.arange(K), k)
                cid = idx.numpy().reshape(-1)
                texts = np.array(cs.texts, dtype=object)
                rec.add("neuron_labels", pd.DataFrame(dict(
                    model=x.target, layer=layer, unit=units, rank=np.tile(np.arange(1, k + 1), K),
                    concept_id=cid, concept=texts[cid], score=sc.numpy().reshape(-1).astype(float))))
                ti = min(int(x.options.get("top_images", 5)), X.shape[0])
                acts, img_idx = top_images(X, ti)[:2]
                constant = (X.max(dim=0).values - X.min(dim=0).values) <= 1e-12
                rec.add("neurons", pd.DataFrame(dict(
                    model=x.target, layer=layer, unit=np.arange(K), concept_id=idx[:, 0].numpy(),
                    label=texts[idx[:, 0].numpy()], score=sc[:, 0].numpy().astype(float),
                    constant=constant.numpy())))
                rows_arr = np.array(rows)
                rec.add("top_images", pd.DataFrame(dict(
                    model=x.target, layer=layer, unit=np.repeat(np.arange(K), ti),
                    rank=np.tile(np.arange(1, ti + 1), K), image_idx=rows_arr[img_idx.numpy().reshape(-1)],
                    activation=acts.numpy().reshape(-1).astype(float))))
                rec.add("similarities", pd.DataFrame(dict(
                    model=x.target, layer=layer, unit=np.repeat(np.arange(K, dtype=np.int32), M),
                    concept_id=np.tile(np.arange(M, dtype=np.int32), K),
                    score=S.numpy().reshape(-1).astype(np.float32))))
            rec.add("dissections", dict(model=x.target, dissector=x.dissector, probe=x.probe, concept_set=x.concepts,
                                        similarity=x.similarity, similarity_params=used_params,
                                        pooling=x.options.get("pooling", "avg"), options=x.options, notes=notes))
            self.log.info(f"dissect   {x.target}: {len(self.layer_names[x.target])} layer(s) labelled with "
                          f"{x.similarity} ({len(cs.texts)} concepts, {len(rows)} images)")

    def _embed_prompts(self, dname: str, texts: list[str]) -> torch.Tensor:
        """Text embeddings of prompts other than the raw concepts (cached like them)."""
        from dissect_study.engine.passes.activations import embed_texts

        d = self.dissectors[dname]
        res, _ = self.cache.get_or_compute("text", dict(dissector=d.fingerprint(), texts=texts),
                                           lambda: {"emb": embed_texts(d, texts)})
        return res["emb"].float()

    def _layer_index(self, target: str, layer: str) -> int:
        for info in self.targets[target].layers():
            if info.name == layer:
                return info.index
        return -1

    # ------------------------------------------------------------------ record
    def describe_inputs(self) -> None:
        rec = self.record
        for name, d in self.dissectors.items():
            step = next(s for s in self.plan.dissectors if s.name == name)
            details = d.describe()
            if isinstance(d, ReportsTraining):  # demo models: zero-shot / Table-2 style numbers
                details["training_report"] = d.training_report()
            rec.add("models", dict(model=name, role="dissector", kind=step.func, source=step.params,
                                   sha256=d.fingerprint(), details=details))
        for name, t in self.targets.items():
            step = next(s for s in self.plan.targets if s.name == name)
            details = t.describe()
            details["layers"] = [{"name": l.name, "channels": l.channels, "index": l.index} for l in t.layers()]
            if isinstance(t, ReportsTraining):
                details["training_report"] = t.training_report()
            rec.add("models", dict(model=name, role="target", kind=step.func, source=step.params,
                                   sha256=t.fingerprint(), details=details))
        for name, probe in self.probes.items():
            used = set().union(*(v for k, v in self.act_rows.items() if k[1] == name))
            asked = set().union(*(v for k, v in self.act_requested.items() if k[1] == name))
            n_skipped = len(asked - used)
            rec.add("probes", dict(probe=name, n_images=len(used) or len(probe), n_skipped=n_skipped,
                                   manifest_sha256=probe.manifest_sha256(), source=probe.describe()))
            items = probe.items
            rec.add("images", pd.DataFrame(dict(
                probe=name, image_idx=np.arange(len(items)), image_id=[it.image_id for it in items],
                path=[it.path for it in items],
                attributes=[json.dumps(it.attributes, default=str, sort_keys=True) for it in items])))

    def sanity(self) -> None:
        from dissect_study.engine.models.zero_shot import zero_shot_sanity

        for dname, pname in self.plan.image_passes:
            emb, rows = self.img_emb[(dname, pname)]
            sample = self.sanity_rows.get((dname, pname))
            if sample is not None:  # a top-k union is biased by the targets: use the random sample only
                keep = set(sample)
                sel = [i for i, r in enumerate(rows) if r in keep]
                emb, rows = emb[sel], [rows[i] for i in sel]
            attrs = [self.probes[pname].items[r].attributes for r in rows]
            try:
                results = zero_shot_sanity(self.dissectors[dname], emb, attrs)
            except Exception as e:  # a sanity check must never sink a run
                self.log.warn("sanity", f"zero-shot sanity check of {dname} on {pname} failed: {e}")
                continue
            for r in results:
                self.record.add("sanity", dict(dissector=dname, probe=pname, **r))
                if r.get("value") is not None and r.get("chance") is not None and abs(r["value"] - r["chance"]) < 0.05:
                    self.log.warn("sanity", f"dissector {dname} is near chance on '{r['attribute']}' "
                                            f"({r['metric']} {r['value']:.2f}); labels naming it are not trustworthy")

    def _optional(self, step: str, fn: Callable[[], None]) -> None:
        """Run a step the study did not ask for; if it cannot run on this data, warn and go on.

        Only the study's own dissections may fail a run (`--strict` makes optional steps fatal).
        """
        try:
            fn()
        except Exception as e:
            if self.opt.strict:
                raise
            logging.getLogger(__name__).debug("optional step %s failed", step, exc_info=True)
            self.log.warn(step, f"{step} skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            self.record.frames.pop(step, None)

    def calibration(self) -> None:
        """Ground-truth calibration bench, for probes that carry ground truth (the phantom)."""
        if not self.opt.calibration:
            return
        from dissect_study.engine.analyses import calibration as cal
        from dissect_study.engine.scores.similarity import compute_similarity, concept_activation_matrix

        for x in self.plan.dissections:
            probe = self.probes[x.probe]
            if not probe.has_ground_truth:
                continue
            cs = self.concept_sets[x.concepts]
            rows = self.act_rows[(x.target, x.probe)]
            emb, emb_rows = self.img_emb[(x.dissector, x.probe)]
            pos = {r: i for i, r in enumerate(emb_rows)}
            if not all(r in pos for r in rows):
                self.log.warn("calibration", f"calibration of {x.target} skipped: the dissector embedded only "
                                             f"part of probe {x.probe}")
                continue
            P = concept_activation_matrix(emb[[pos[r] for r in rows]], self.text_emb[(x.dissector, x.concepts)])
            attrs = [probe.items[r].attributes for r in rows]
            dissector = self.dissectors[x.dissector]
            encoder = dissector.sentence_encoder if isinstance(dissector, HasSentenceEncoder) else None
            t0 = time.perf_counter()
            skipped: dict[str, str] = {}
            for layer, _ in self.layer_names[x.target]:
                X = self.acts[(x.target, x.probe)][layer].float()
                sel = cal.neuron_selectivity(X, attrs)
                truth = cal.assign_ground_truth(sel)
                for sim in SIMILARITIES:
                    if sim in skipped:
                        continue
                    params = {p.name: p.default for p in SIMILARITIES[sim].params if p.name != "template"}
                    # the study's own function was already scored (with the study's parameters)
                    try:
                        S = (self.S[(x.target, layer)] if sim == x.similarity
                             else compute_similarity(sim, P, X, params).S)
                    except DissectStudyError as e:
                        # the bench is optional: a function the probe cannot support
                        # (too few images, say) is left out, the run goes on
                        skipped[sim] = str(e).splitlines()[0]
                        self.log.warn("calibration", f"calibration of {x.target}: {sim} skipped ({skipped[sim]})")
                        continue
                    df = cal.calibration_table(layer, sim, S, cs.texts, truth, text_encoder=encoder)
                    df["model"] = x.target
                    self.record.add("calibration", df)
            self.log.info(f"calibrate {x.target}: {len(SIMILARITIES) - len(skipped)} similarity functions x "
                          f"{len(self.layer_names[x.target])} layers ({time.perf_counter() - t0:.1f}s)")

    # ------------------------------------------------------------------ analyses
    def analyses(self) -> None:
        """Record each analysis statement as an `analyses` row: the arguments of its macros.

        The tables are computed by the analyses' SQL macros inside the transaction that
        stores the run (engine/analyses/macros.py `store_analyses`), so a stored table
        always equals its macro called with that row's arguments.
        """
        from dissect_study.engine.analyses.macros import store_analyses

        self.neuron_requests: list[tuple[str, str, int, int]] = []
        for a in self.plan.analyses:
            models = list(a.models)
            layers = self._analysis_layers(a, models)
            th, flt = a.threshold, a.filter
            kind = "show_neuron" if a.kind == "neuron" else a.kind
            options = dict(a.options)
            if kind == "show_neuron" and a.unit is not None and a.top is not None:
                options.update(unit=a.unit, top=a.top)
                self.neuron_requests.extend((models[0], layer, a.unit, a.top) for layer in layers)
            self.record.add("analyses", dict(
                analysis_id=a.index, kind=kind, analysis_names=list(a.analysis_names), statement=a.text,
                line=a.span.line, models=models, layers=layers,
                filter_level=flt.level if flt else None, filter_name=flt.name if flt else None,
                threshold_rule=dict(combine=th.combine, statistic=th.statistic, value=th.value, op=th.op),
                count_unit=a.count, options=options))
        self.record.derive.append(store_analyses)
        self.log.info(f"analyses  {len(self.plan.analyses)} statement(s); computed in SQL as the run is stored")

    def _analysis_layers(self, a: CheckedAnalysis, models: list[str]) -> list[str]:
        per_model = []
        for m in models:
            if m not in self.layer_names:
                raise RunError(f"{a.text}: model {m} is not dissected in this study")
            dissected = [n for n, _ in self.layer_names[m]]
            if a.layers:
                names = [n for n, _ in resolve_layers(self.targets[m], tuple(a.layers), self.plan.layer_aliases)]
                bad = [n for n in names if n not in dissected]
                if bad:
                    raise RunError(f"line {a.span.line}: {a.text!r} asks for layer(s) "
                                   f"{', '.join(bad)} of {m}, which the dissect statement does not cover "
                                   f"(dissected: {', '.join(dissected)})")
            else:
                names = dissected
            per_model.append(names)
        common = [n for n in per_model[0] if all(n in p for p in per_model[1:])]
        if per_model and len(common) < len(per_model[0]) and a.layers:
            raise RunError(f"line {a.span.line}: {a.text!r}: the models do not share the "
                           f"layer names {sorted(set(per_model[0]) - set(common))}; compare models of one architecture")
        return common

    # ------------------------------------------------------------------ neuron cards
    def neuron_images(self) -> None:
        """Thumbnails with activation-map overlays for the neurons a study looks up."""
        if not self.neuron_requests:
            return
        from dissect_study.engine.passes.spatial import spatial_maps
        from dissect_study.engine.report.overlay import activation_overlay_png

        for model, layer, unit, top in self.neuron_requests:
            x = next(d for d in self.plan.dissections if d.target == model)
            target, probe = self.targets[model], self.probes[x.probe]
            X = self.acts[(model, x.probe)][layer]
            if unit >= X.shape[1]:
                raise RunError(f"show neuron {model}.{layer}[{unit}]: layer {layer} has {X.shape[1]} neurons "
                               f"(units 0..{X.shape[1] - 1})")
            rows = self.act_rows[(model, x.probe)]
            order = torch.argsort(X[:, unit], descending=True, stable=True)[:top].tolist()
            probe_rows = [rows[i] for i in order]
            maps = spatial_maps(target, probe, layer, unit, probe_rows, device=self.device)
            out = []
            for rank, (i, r) in enumerate(zip(order, probe_rows), start=1):
                img = probe.load(r)
                png = activation_overlay_png(img if img.ndim == 2 else img.mean(axis=2), maps[rank - 1])
                out.append(dict(model=model, layer=layer, unit=unit, rank=rank, image_idx=r,
                                activation=float(X[i, unit]), png=png))
            self.record.add("neuron_images", pd.DataFrame(out))

    # ------------------------------------------------------------------ all
    def execute(self) -> RunResult:
        t0 = time.perf_counter()
        started = _dt.datetime.now()
        if self.cache.enabled:
            self.log.info(f"cache     {self.cache.root} (--cache-dir or $DISSECT_STUDY_CACHE moves it)")
        self.build()
        self.passes()
        self.score()
        self.describe_inputs()
        self.sanity()
        self._optional("calibration", self.calibration)
        self.analyses()
        self.neuron_images()
        for step, msg in self.log.warnings:
            self.record.add("warnings", dict(step=step, message=msg))
        self.record.run = dict(
            study_path=str(Path(self.plan.study_path).resolve()), study_title=self.plan.title,
            study_sha256=self.plan.study_sha256, study_text=self.plan.study_text,
            started_at=started, finished_at=_dt.datetime.now(), status="ok", tool_version=__version__,
            params=dict(device=self.device, cache=str(self.cache.root) if self.opt.use_cache else None,
                        batch_size=self.opt.batch_size, strict=self.opt.strict, torch=torch.__version__,
                        python=platform.python_version(), machine=platform.machine()))
        db = Path(self.opt.db) if self.opt.db else Path(self.base_dir) / "results.duckdb"
        store.write_run(db, self.record)
        self.log.info(f"stored    run {self.run_id} in {db}")
        result = RunResult(run_id=self.run_id, db=db, warnings=[m for _, m in self.log.warnings])
        if self.opt.reports:
            from dissect_study.engine.report import write_report

            for r in self.plan.reports:
                assert isinstance(r.out, str)  # build() refused unset report paths
                out = Path(r.out)
                if not out.is_absolute():
                    out = Path(self.base_dir) / out
                t1 = time.perf_counter()
                paths = write_report(db, out, run_id=self.run_id, formats=tuple(r.formats),
                                     sections=list(r.sections) if r.sections else None)
                result.reports.extend(paths)
                self.log.info(f"report    {', '.join(str(p) for p in paths)} ({time.perf_counter() - t1:.1f}s)")
        result.seconds = time.perf_counter() - t0
        return result


def run_study(study: CheckedStudy, options: RunOptions) -> RunResult:
    """Plan a checked study and execute the plan."""
    from dissect_study.engine.plan.steps import build_plan

    return Executor(build_plan(study), options).execute()
