"""Passes stage: probe images through the targets (hooked) and the dissectors.

One text pass per (dissector, concept set), one hooked pass per (target, probe)
with every layer at once, and one image pass per (dissector, probe) -- or none,
when a target is the dissector's own image tower and its pass yields the
embeddings too (docs/METHOD.md §1).  Everything goes through the content cache.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from dissect_study.dsl.vocabulary import min_probe_images
from dissect_study.engine.models.base import Dissector, SharesImagePass, TrainModeSwitch
from dissect_study.engine.plan.steps import DissectionStep
from dissect_study.engine.probes.base import Probe
from dissect_study.engine.run import RunError

if TYPE_CHECKING:
    from dissect_study.engine.run import Executor


def run_passes(ex: Executor) -> None:
    """Text passes, then hooked target passes, then the dissectors' image passes."""
    for dname, cname in ex.plan.text_passes:
        _text_pass(ex, dname, cname)
    shared = shared_passes(ex)
    tower_out: dict[tuple[str, str], tuple[torch.Tensor, list[int]]] = {}
    for x in ex.plan.dissections:
        key = (x.target, x.probe)
        if key not in ex.acts:
            out = _target_pass(ex, x, keep_output=key in shared.values())
            if out is not None:
                tower_out[key] = out
    for dname, pname in ex.plan.image_passes:
        via = shared.get((dname, pname))
        _image_pass(ex, dname, pname, via[0] if via else None, tower_out.get(via) if via else None)


def _text_pass(ex: Executor, dname: str, cname: str) -> None:
    from dissect_study.engine.passes.activations import embed_texts

    d, cs = ex.dissectors[dname], ex.concept_sets[cname]
    t0 = time.perf_counter()
    res, hit = ex.cache.get_or_compute(
        "text", dict(dissector=d.fingerprint(), texts=cs.texts), lambda: {"emb": embed_texts(d, cs.texts)}
    )
    ex.text_emb[(dname, cname)] = res["emb"].float()
    ex.log.info(
        f"text      {dname} x {cname}: {len(cs.texts)} concepts embedded "
        f"({'cache' if hit else f'{time.perf_counter() - t0:.1f}s'})"
    )


def _target_pass(ex: Executor, x: DissectionStep, keep_output: bool) -> tuple[torch.Tensor, list[int]] | None:
    """One hooked pass of a target over its probe (every layer at once), or the cached layers.

    Returns the target's forward output and its rows when `keep_output` and the pass ran:
    the dissector's embeddings when the target is its image tower.
    """
    target, probe = ex.targets[x.target], ex.probes[x.probe]
    key = (x.target, x.probe)
    rows = _rows(ex, x.probe, x.options.get("dedup_images", True))
    layers = [n for n, _ in ex.layer_names[x.target]]
    t0 = time.perf_counter()
    base = dict(
        target=target.fingerprint(),
        preprocess=target.preprocess.describe,
        probe=probe.manifest_sha256(),
        rows=rows,
        pooling=x.options.get("pooling", "avg"),
        precision=x.options.get("precision", "fp32"),
    )
    tensors: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    cached_rows: set[tuple[int, ...]] = set()
    kept: list[int] = []
    for layer in layers:
        got = ex.cache.load("acts", ex.cache.key("acts", layer=layer, **base))
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
    output = None
    if missing:
        res = ex.passes.activations(  # this process, or shards on a Ray cluster (engine/passes/shards.py)
            target,
            probe,
            missing,
            pooling=x.options.get("pooling", "avg"),
            batch_size=ex.opt.batch_size or x.options.get("batch") or target.batch_size,
            device=ex.device,
            workers=x.options.get("workers", 0),
            precision=x.options.get("precision", "fp32"),
            progress=not ex.opt.quiet,
            indices=rows,
            keep_output=keep_output,
        )
        kept = list(res.indices)
        if res.output is not None:
            output = (res.output, kept)
        for idx, reason in res.skipped:
            ex.log.warn(f"activations {x.target}", f"{x.probe}[{idx}] skipped: {reason}")
            if ex.opt.strict:
                raise RunError(f"probe {x.probe}: image {idx} is unreadable ({reason}); --strict makes that fatal")
        for layer in missing:
            tensors[layer] = res.acts[layer]
            ex.cache.save(
                "acts",
                ex.cache.key("acts", layer=layer, **base),
                {"acts": res.acts[layer], "rows": torch.tensor(kept)},
                {"layer": layer},
            )
        speed = f"{res.images_per_s:.1f} images/s"
    else:
        speed = "cache"
    need, why = min_probe_images(x.similarity, x.similarity_params)
    if len(kept) < need:  # the pre-flight counted the probe; unreadable images can leave fewer
        raise RunError(
            f"probe {x.probe}: only {len(kept)} of {len(rows)} images could be read; {x.similarity} needs {need} ({why})"
        )
    ex.acts[key] = tensors
    ex.act_rows[key] = kept
    ex.act_requested[key] = rows
    ex.log.info(
        f"target    {x.target} on {x.probe}: {len(kept)} images x {len(layers)} layers "
        f"({speed}, {time.perf_counter() - t0:.1f}s)"
    )
    return output


def _image_pass(
    ex: Executor, dname: str, pname: str, tower: str | None, tower_out: tuple[torch.Tensor, list[int]] | None
) -> None:
    """The dissector's image embeddings: the cheapest pass its dissections allow, or none when
    `tower`'s pass already yielded them (`tower_out`: its forward output and rows)."""
    from dissect_study.dsl.vocabulary import SIMILARITIES
    from dissect_study.engine.plan import cheapest_pass
    from dissect_study.engine.plan.cheapest_pass import RowUser, choose_rows

    d, probe = ex.dissectors[dname], ex.probes[pname]
    users = [x for x in ex.plan.dissections if (x.dissector, x.probe) == (dname, pname)]
    rows = sorted(set().union(*(ex.act_rows[(x.target, x.probe)] for x in users)))
    calibrating = ex.opt.calibration and probe.has_ground_truth
    row_users = []
    for x in users:
        spec = SIMILARITIES[x.similarity].param("top_k")
        row_users.append(
            RowUser(
                name=x.target,
                similarity=x.similarity,
                family=x.family,
                top_k=int(x.similarity_params.get("top_k", spec.default if spec else 0)),
                acts=ex.acts[(x.target, x.probe)],
                kept=ex.act_rows[(x.target, x.probe)],
                top_images=int(x.options.get("top_images", 5)),
                train_mode=bool(x.options.get("dissector_train_mode")),
                needs_all_rows="the calibration bench scores every function on every image" if calibrating else None,
            )
        )
    choice = choose_rows(rows, row_users)
    if choice.reduced or len(rows) > cheapest_pass.MIN_PROBE_IMAGES:  # say why a large probe is whole
        ex.log.info(f"image     {dname} x {pname}: embedding {choice.reason}")
    rows = choice.rows
    ex.sanity_rows[(dname, pname)] = choice.sanity_rows
    train_mode = any(u.train_mode for u in row_users)
    parts = dict(
        dissector=d.fingerprint(),
        preprocess=d.preprocess.describe,
        probe=probe.manifest_sha256(),
        rows=rows,
        train_mode=train_mode,
        # train-mode BatchNorm makes embeddings depend on the batch composition
        batch=(ex.opt.batch_size or d.batch_size) if train_mode else None,
    )
    t0 = time.perf_counter()
    how = "embedded"

    def compute() -> dict[str, torch.Tensor]:  # only on a cache miss
        nonlocal how
        shared = _from_tower(d, rows, tower_out)
        if shared is not None:
            how = f"embedded from {tower}'s pass (shared)"
            return shared
        r = ex.passes.embeddings(
            d,
            probe,
            indices=rows,
            batch_size=ex.opt.batch_size or d.batch_size,
            device=ex.device,
            progress=not ex.opt.quiet,
        )
        return {"emb": r.emb, "rows": torch.tensor(list(r.indices))}

    res, hit = ex.cache.get_or_compute("images", parts, compute)
    ex.img_emb[(dname, pname)] = (res["emb"].float(), res["rows"].tolist())
    ex.log.info(
        f"image     {dname} x {pname}: {len(res['rows'])} images {how} "
        f"({'cache' if hit else f'{time.perf_counter() - t0:.1f}s'})"
    )


def _from_tower(
    d: Dissector, rows: list[int], tower_out: tuple[torch.Tensor, list[int]] | None
) -> dict[str, torch.Tensor] | None:
    """The dissector's embeddings of `rows` from its image tower's forward output, when that covers them."""
    if tower_out is None or not isinstance(d, SharesImagePass):
        return None
    out, kept = tower_out
    at = {r: i for i, r in enumerate(kept)}
    if not all(r in at for r in rows):
        return None
    emb = d.embed_tower_output(out[torch.tensor([at[r] for r in rows], dtype=torch.long)])
    return {"emb": emb, "rows": torch.tensor(rows)}


def _rows(ex: Executor, probe_name: str, dedup: bool) -> list[int]:
    probe = ex.probes[probe_name]
    return _dedup_indices(probe) if dedup else list(range(len(probe)))


def shared_passes(ex: Executor) -> dict[tuple[str, str], tuple[str, str]]:
    """(dissector, probe) -> (target, probe) whose forward pass also yields the dissector's embeddings.

    A target shares the dissector's image pass when it IS the dissector's image tower
    (same fingerprint, same preprocessing), runs in fp32, and the dissector is not in
    train mode; then one B5 pass over the probe serves M and the dissector.
    """
    shared: dict[tuple[str, str], tuple[str, str]] = {}
    for dname, pname in ex.plan.image_passes:
        d = ex.dissectors[dname]
        if not isinstance(d, SharesImagePass) or (isinstance(d, TrainModeSwitch) and d.train_mode):
            continue
        for x in ex.plan.dissections:
            t = ex.targets[x.target]
            if (
                x.probe == pname
                and x.options.get("precision", "fp32") == "fp32"
                and t.fingerprint() == d.tower_fingerprint()
                and t.preprocess.describe == d.preprocess.describe
            ):
                shared[(dname, pname)] = (x.target, x.probe)
                break
    return shared


def _dedup_indices(probe: Probe) -> list[int]:
    seen: set[str] = set()
    keep: list[int] = []
    for i, item in enumerate(probe.items):
        if item.image_id in seen:
            continue
        seen.add(item.image_id)
        keep.append(i)
    return keep
