"""The paper's analyses (RQ1-RQ3) as pure functions on store-shaped DataFrames.

Each analysis has ONE name everywhere: a study statement, a function here, a
store table and a DuckDB table macro (engine/analysis_sql.py) that computes the
same rows from the base tables, so a user can re-run an analysis in SQL with a
different threshold rule.

Where the paper's text and its code disagree (docs/METHOD.md §5, §12, §13) both
readings are offered and the default is the one of docs/METHOD.md §12:

* τ_l statistic: ``mean_top1`` (code/figures; default), ``mean_all`` (paper
  text; needs the full S, so it is read from `layers.tau_mean_all`),
  ``median_top1`` (Dorszewski et al.).
* comparison threshold: ``max`` of the compared models' τ_l per layer name
  (paper default), ``own`` τ_l, or a ``fixed`` value; operator ``>=`` (MCD) or ``>``.
* counts: every count comes both as unique concepts (``n_concepts``, paper
  text) and as neurons (``n_neurons``, reference notebook).
* "learned": union of captured concepts over all dissected layers (default).
* missed-concept de-dup: the deterministic rule of docs/METHOD.md §5.8 (see `dedup_overlaps`).

Only the top-1 label of a neuron is ever counted (docs/METHOD.md §5.3).  Neurons flagged
``constant`` (activation constant over the probe: the label is meaningless) are
left out of captured concepts unless ``include_constant``; they still enter τ,
as every neuron did in the reference code.

Deterministic order everywhere: models in the request's order, layers in depth
order (`layer_index`, then name), concepts by `concept_id`; ties in rankings
are broken by the fixed category order, then name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd

from dissect_study.engine.concepts import category_key, category_order
from dissect_study.errors import DissectStudyError

STATISTICS = ("mean_top1", "mean_all", "median_top1")
COMBINES = ("max", "own", "fixed")
OPS = (">=", ">")
LEVELS = ("category", "subcategory", "domain", "task")
DEDUP_DIRECTIONS = ("forward", "both", "none")

DEFAULT_RULE: dict[str, Any] = {"combine": "max", "statistic": "mean_top1", "value": None, "op": ">="}

#: words never taken as a neuron's keyword (plus every word shorter than 3 letters)
DEFAULT_STOPWORDS: tuple[str, ...] = (
    "and", "are", "for", "from", "into", "its", "not", "of", "on", "or", "the", "to", "with", "without", "in", "at", "by",
)

# columns of the store tables (minus run_id / analysis_id)
CAPTURED_COLUMNS = ["model", "layer", "concept_id", "concept", "category", "subcategory", "domain", "tasks",
                    "n_neurons", "units", "max_score", "threshold"]
COUNT_COLUMNS = ["model", "layer", "level", "grp", "n_concepts", "n_neurons"]
TOP_COLUMNS = ["model", "layer", "rank", "category", "n_concepts", "n_neurons"]
CHANGE_COLUMNS = ["layer", "concept_id", "concept", "category", "subcategory", "status", "present_in"]
MISSED_COLUMNS = ["model", "concept_id", "concept", "category", "subcategory", "domain", "status", "overlap_with"]
KEYWORD_COLUMNS = ["model", "layer", "unit", "keyword", "share", "labels"]
THRESHOLD_COLUMNS = ["model", "layer", "layer_index", "alias", "n_neurons", "tau", "tau_statistic",
                     "tau_mean_top1", "tau_mean_all", "tau_median_top1"]


class AnalysisError(DissectStudyError):
    """An analysis that cannot be computed from this run; the message says why and what to change."""


# --------------------------------------------------------------------------- inputs


def _frame(df: pd.DataFrame | None, cols: Sequence[str]) -> pd.DataFrame:
    if df is None:
        return pd.DataFrame(columns=list(cols))
    df = df.drop(columns=[c for c in ("run_id",) if c in df.columns])
    for c in cols:
        if c not in df.columns:
            df = df.assign(**{c: None})
    return df.reset_index(drop=True)


@dataclass
class AnalysisInput:
    """The base tables of ONE run (any number of models and layers)."""

    layers: pd.DataFrame
    neurons: pd.DataFrame
    neuron_labels: pd.DataFrame
    top_images: pd.DataFrame
    concepts: pd.DataFrame
    #: optional `dissections` rows: which concept set each model was dissected with
    dissections: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.layers = _frame(self.layers, ["model", "layer", "layer_index", "alias", "n_neurons", "tau", "tau_statistic",
                                           "tau_mean_top1", "tau_mean_all", "tau_median_top1"])
        self.neurons = _frame(self.neurons, ["model", "layer", "unit", "concept_id", "label", "score", "constant"])
        self.neuron_labels = _frame(self.neuron_labels, ["model", "layer", "unit", "rank", "concept_id", "concept", "score"])
        self.top_images = _frame(self.top_images, ["model", "layer", "unit", "rank", "image_idx", "activation"])
        self.concepts = _frame(self.concepts, ["concept_set", "concept_id", "concept", "category", "subcategory", "domain", "tasks"])
        self.concepts["tasks"] = self.concepts["tasks"].map(_tasks)
        for col in ("category", "subcategory", "domain"):
            self.concepts[col] = _objects(self.concepts[col])
        self.dissections = _frame(self.dissections, ["model", "concept_set"])

    @classmethod
    def from_store(cls, con: Any, run_id: str) -> "AnalysisInput":
        """Read one run's base tables from an open DuckDB connection."""

        def q(table: str) -> pd.DataFrame:
            return con.execute(f"SELECT * FROM {table} WHERE run_id = ?", [run_id]).df()

        return cls(q("layers"), q("neurons"), q("neuron_labels"), q("top_images"), q("concepts"), q("dissections"))


def _df(rows: list[dict[str, Any]], cols: Sequence[str]) -> pd.DataFrame:
    """DataFrame whose text columns keep None (not NaN) for missing values, as DuckDB returns them."""
    df = pd.DataFrame(rows, columns=list(cols))
    for c in df.columns:
        if not pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            df[c] = pd.Series([_none(v) for v in df[c]], index=df.index, dtype=object)
    return df


def _objects(col: pd.Series) -> pd.Series:
    """Object column with None for missing (pandas 3 string columns would turn None into NaN)."""
    return pd.Series([_none(v) for v in col], index=col.index, dtype=object)


def _none(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _tasks(x: Any) -> tuple[str, ...]:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ()
    if isinstance(x, str):
        return tuple(t for t in x.split(";") if t)
    return tuple(str(t) for t in x)


def normalise_rule(rule: dict[str, Any] | None, default_combine: str = "max") -> dict[str, Any]:
    """The full threshold rule (defaults filled in, validated) -- record this with the result."""
    r = {**DEFAULT_RULE, "combine": default_combine, **{k: v for k, v in (rule or {}).items() if v is not None}}
    if r["statistic"] not in STATISTICS:
        raise AnalysisError(f"threshold statistic {r['statistic']!r} unknown; use one of {', '.join(STATISTICS)}.")
    if r["combine"] not in COMBINES:
        raise AnalysisError(f"threshold combine {r['combine']!r} unknown; use one of {', '.join(COMBINES)}.")
    if r["op"] not in OPS:
        raise AnalysisError(f"threshold operator {r['op']!r} unknown; use '>=' or '>'.")
    if r["combine"] == "fixed":
        if r.get("value") is None:
            raise AnalysisError("a fixed threshold needs a value, e.g. `threshold 0.9`.")
        r["value"] = float(r["value"])
    return r


def _passes(score: float, tau: float, op: str) -> bool:
    return score > tau if op == ">" else score >= tau


# --------------------------------------------------------------------------- models, layers, concepts


def _models(inp: AnalysisInput, models: Sequence[str] | None) -> list[str]:
    if models:
        return list(models)
    seen = list(dict.fromkeys(list(inp.layers["model"]) + list(inp.neurons["model"])))
    return seen


def _model_layers(inp: AnalysisInput, model: str, layers: Sequence[str] | None) -> list[str]:
    """The model's dissected layers: the requested ones it has (request order), or all in depth order."""
    ly = inp.layers[inp.layers["model"] == model]
    have = list(dict.fromkeys(list(ly["layer"]) + list(inp.neurons.loc[inp.neurons["model"] == model, "layer"])))
    if layers:
        return [l for l in layers if l in have]
    index = {r.layer: _none(r.layer_index) for r in ly.itertuples()}
    return sorted(have, key=lambda l: (index.get(l) is None, index.get(l) or 0, l))


def concepts_for(inp: AnalysisInput, model: str) -> pd.DataFrame:
    """The concept table the model was dissected with, indexed by concept_id.

    The model's set comes from `dissections` (first by name when several);
    without one the run must hold a single concept set.
    """
    c = inp.concepts
    d = inp.dissections
    sets = sorted(set(d.loc[d["model"] == model, "concept_set"].dropna()))
    if sets:
        c = c[c["concept_set"] == sets[0]]
    elif c["concept_set"].nunique() > 1:
        raise AnalysisError(
            f"model {model!r}: the run holds several concept sets ({', '.join(sorted(c['concept_set'].unique()))}) "
            "and no `dissections` row says which one labelled this model."
        )
    return c.set_index("concept_id", drop=False)


def filter_mask(concepts: pd.DataFrame, flt: tuple[str, str] | None) -> pd.Series:
    """Which concepts belong to group `flt = (level, name)`; names are matched case-,
    underscore- and spacing-insensitively (category_key)."""
    if not flt or flt[1] is None:
        return pd.Series(True, index=concepts.index)
    level, name = flt
    if level in ("category", "subcategory"):
        key = category_key(name)
        return concepts[level].map(lambda v: _none(v) is not None and category_key(v) == key).astype(bool)
    if level == "domain":
        return concepts["domain"].map(lambda v: _none(v) is not None and v.lower() == name.strip().lower()).astype(bool)
    if level == "task":
        return concepts["tasks"].map(lambda ts: name.strip().lower() in ts)
    raise AnalysisError(f"filter level {level!r} unknown; use one of {', '.join(LEVELS)}.")


def resolve_filter(concepts: pd.DataFrame, level: str | None, name: str | None) -> tuple[str, str] | None:
    """Find the group a study's `on <level> <name>` names.

    `compare M vs C4 at layer last on category Calcification`: "Calcification"
    is no broad category of the paper's set but a task category, so when the
    name is not found at the given level the other levels are tried in the order
    category, subcategory, task, domain (exact names only -- never substrings).
    Returns (level, name as stored).  Raises with the available names otherwise.
    """
    if name is None:
        return None
    cs = _frame(concepts, ["category", "subcategory", "domain", "tasks"])
    cs = cs.assign(tasks=cs["tasks"].map(_tasks))
    groups = {
        "category": {category_key(v): v for v in cs["category"].dropna()},
        "subcategory": {category_key(v): v for v in cs["subcategory"].dropna()},
        "task": {t.lower(): t for ts in cs["tasks"] for t in ts},
        "domain": {v.lower(): v for v in cs["domain"].dropna()},
    }
    order = [level] if level else []
    order += [l for l in ("category", "subcategory", "task", "domain") if l not in order]
    for lvl in order:
        if lvl not in groups:
            raise AnalysisError(f"filter level {lvl!r} unknown; use one of {', '.join(LEVELS)}.")
        key = category_key(name) if lvl in ("category", "subcategory") else name.strip().lower()
        if key in groups[lvl]:
            return lvl, groups[lvl][key]
    avail = "; ".join(f"{l}: {', '.join(sorted(set(groups[l].values())))}" for l in ("category", "task") if groups[l])
    raise AnalysisError(f"no {level or 'group'} named {name!r} in the concept set ({avail}).")


# --------------------------------------------------------------------------- thresholds


def layer_thresholds(inp: AnalysisInput, models: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                     statistic: str = "mean_top1") -> pd.DataFrame:
    """τ per (model, layer) under `statistic` (Fig. 4a/8: plot tau against layer_index).

    Stored values in `layers` win; top-1 statistics missing there are computed
    from `neurons` (all neurons, constant ones included).  `mean_all` needs the
    full S and is only read from the store.
    """
    if statistic not in STATISTICS:
        raise AnalysisError(f"threshold statistic {statistic!r} unknown; use one of {', '.join(STATISTICS)}.")
    rows = []
    neu = inp.neurons
    index = neu.groupby(["model", "layer"], sort=False).indices if len(neu) else {}
    for m in _models(inp, models):
        ly = inp.layers[inp.layers["model"] == m].drop_duplicates("layer").set_index("layer")
        for l in _model_layers(inp, m, layers):
            scores = neu["score"].iloc[index.get((m, l), [])].astype(float)
            rec = ly.loc[l] if l in ly.index else None
            get = (lambda c: _none(rec[c])) if rec is not None else (lambda c: None)
            stored_stat = get("tau_statistic")

            def pick(stat: str, computed: float | None) -> float | None:
                v = get(f"tau_{stat}")
                if v is None and stored_stat == stat:
                    v = get("tau")
                return computed if v is None else float(v)

            t = {
                "mean_top1": pick("mean_top1", float(scores.mean()) if len(scores) else None),
                "mean_all": pick("mean_all", None),
                "median_top1": pick("median_top1", float(scores.median()) if len(scores) else None),
            }
            n = get("n_neurons")
            rows.append({
                "model": m, "layer": l, "layer_index": get("layer_index"), "alias": get("alias"),
                "n_neurons": int(n) if n is not None else int(len(scores)),
                "tau": t[statistic], "tau_statistic": statistic,
                "tau_mean_top1": t["mean_top1"], "tau_mean_all": t["mean_all"], "tau_median_top1": t["median_top1"],
            })
    return _df(rows, THRESHOLD_COLUMNS)


def thresholds_for(inp: AnalysisInput, models: Sequence[str] | None, layers: Sequence[str] | None,
                   rule: dict[str, Any] | None) -> dict[tuple[str, str], float]:
    """The τ applied to each (model, layer): own, max over `models` per layer name, or fixed."""
    r = normalise_rule(rule)
    lt = layer_thresholds(inp, models, layers, r["statistic"])
    out: dict[tuple[str, str], float] = {}
    for row in lt.itertuples():
        if r["combine"] == "fixed":
            out[(row.model, row.layer)] = r["value"]
            continue
        if r["combine"] == "own":
            tau = row.tau
        else:
            taus = [t for t in lt.loc[lt["layer"] == row.layer, "tau"] if _none(t) is not None]
            tau = max(taus) if taus else None
        if _none(tau) is None:
            raise AnalysisError(
                f"no τ for {row.model} {row.layer} under statistic {r['statistic']!r}"
                + (" (the full-matrix mean is stored only when the run kept S)" if r["statistic"] == "mean_all" else "")
                + "; choose another statistic or a fixed threshold."
            )
        out[(row.model, row.layer)] = float(tau)
    return out


# --------------------------------------------------------------------------- captured concepts and counts


def captured_concepts(inp: AnalysisInput, models: Sequence[str] | None, layers: Sequence[str] | None,
                      rule: dict[str, Any] | None, filter: tuple[str, str] | None = None,
                      include_constant: bool = False) -> pd.DataFrame:
    """Concepts each (model, layer) encodes: top-1 labels of neurons whose score passes τ (docs/METHOD.md §5.3)."""
    r = normalise_rule(rule)
    thr = thresholds_for(inp, models, layers, r)
    rows = []
    n = inp.neurons
    index = n.groupby(["model", "layer"], sort=False).indices if len(n) else {}
    sets: dict[str, tuple[pd.DataFrame, pd.Series]] = {}
    for (m, l), tau in thr.items():
        if m not in sets:
            cs_m = concepts_for(inp, m)
            sets[m] = (cs_m, filter_mask(cs_m, filter))
        cs, keep = sets[m]
        sel = n.iloc[index.get((m, l), [])]
        if not include_constant:
            sel = sel[~sel["constant"].map(lambda v: bool(_none(v)))]
        sel = sel[[_passes(float(s), tau, r["op"]) for s in sel["score"]]]
        groups: dict[int, list[tuple[int, float]]] = {}
        for u, cid, s in zip(sel["unit"], sel["concept_id"], sel["score"]):
            groups.setdefault(int(cid), []).append((int(u), float(s)))
        for cid in sorted(groups):
            if cid not in cs.index or not keep.get(cid, False):
                continue
            c = cs.loc[cid]
            units = sorted(u for u, _ in groups[cid])
            rows.append({
                "model": m, "layer": l, "concept_id": cid, "concept": c["concept"], "category": c["category"],
                "subcategory": c["subcategory"], "domain": c["domain"], "tasks": list(c["tasks"]),
                "n_neurons": len(units), "units": units, "max_score": max(s for _, s in groups[cid]), "threshold": tau,
            })
    return _df(rows, CAPTURED_COLUMNS)


def _level_values(row: Any, level: str) -> list[Any]:
    if level == "task":
        return list(_tasks(row["tasks"]))
    return [_none(row[level])]


def _grp_sort(level: str, groups: Iterable[Any]) -> list[Any]:
    gs = list(dict.fromkeys(groups))
    named = [g for g in gs if g is not None]
    if level == "category":
        ordered = category_order(named)
    else:
        ordered = sorted(named, key=lambda g: (g.lower(), g))
    return ordered + ([None] if None in gs else [])


def category_counts(captured: pd.DataFrame, concepts: pd.DataFrame, pairs: Sequence[tuple[str, str]] | None = None,
                    filter: tuple[str, str] | None = None) -> pd.DataFrame:
    """Captured concepts per group at four levels, as unique concepts AND as neurons (Fig. 4b, 9).

    Every group of the concept set (after `filter`) gets a row for every
    (model, layer) in `pairs` -- zeros included, so layer-wise plots need no
    filling -- plus a NULL group for uncategorised concepts.
    """
    cs = _frame(concepts, ["category", "subcategory", "domain", "tasks"])
    cs = cs.assign(tasks=cs["tasks"].map(_tasks), category=_objects(cs["category"]),
                   subcategory=_objects(cs["subcategory"]), domain=_objects(cs["domain"]))
    cs = cs[filter_mask(cs, filter)]
    if pairs is None:
        pairs = list(dict.fromkeys(zip(captured["model"], captured["layer"])))
    recs = cs.to_dict("records")
    universe = {lvl: _grp_sort(lvl, [v for r in recs for v in _level_values(r, lvl)]) for lvl in LEVELS}
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in captured.to_dict("records"):
        by_pair.setdefault((r["model"], r["layer"]), []).append(r)
    rows = []
    for m, l in pairs:
        cap = by_pair.get((m, l), [])
        for lvl in LEVELS:
            acc: dict[Any, list[int]] = {g: [0, 0] for g in universe[lvl]}
            for r in cap:
                for g in _level_values(r, lvl):
                    a = acc.setdefault(g, [0, 0])
                    a[0] += 1
                    a[1] += int(r["n_neurons"])
            for g in _grp_sort(lvl, acc):
                rows.append({"model": m, "layer": l, "level": lvl, "grp": g, "n_concepts": acc[g][0], "n_neurons": acc[g][1]})
    return _df(rows, COUNT_COLUMNS)


def top_categories(counts: pd.DataFrame, unit: str = "concepts", n: int = 3, order: Sequence[str] | None = None) -> pd.DataFrame:
    """The top `n` broad categories per (model, layer) by `unit` (Fig. 4c).

    Ranked by count descending, ties by the fixed category order (then name);
    categories with a zero count and uncategorised concepts are not ranked (the
    notebook's value_counts drops NaN).
    """
    col = {"concepts": "n_concepts", "neurons": "n_neurons"}.get(unit)
    if col is None:
        raise AnalysisError(f"count unit {unit!r} unknown; use 'concepts' or 'neurons'.")
    c = counts[(counts["level"] == "category") & counts["grp"].map(lambda g: _none(g) is not None)]
    c = c[c[col] > 0]
    order = list(order) if order is not None else category_order(c["grp"])
    pos = {category_key(g): i for i, g in enumerate(order)}
    rows = []
    for (m, l), g in c.groupby(["model", "layer"], sort=False):
        ranked = sorted(g.itertuples(), key=lambda r: (-getattr(r, col), pos.get(category_key(r.grp), len(pos)), r.grp.lower(), r.grp))
        for i, r in enumerate(ranked[:n], start=1):
            rows.append({"model": m, "layer": l, "rank": i, "category": r.grp, "n_concepts": int(r.n_concepts), "n_neurons": int(r.n_neurons)})
    return _df(rows, TOP_COLUMNS)


def concept_changes(captured: pd.DataFrame, models: Sequence[str], layers: Sequence[str] | None = None,
                    filter: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per layer, each captured concept with the models capturing it (Table 3).

    status: 'shared' (every model), 'unique' (exactly one, present_in names it),
    'partial' (some).  Models should share one concept set (ids are compared).
    """
    cap = captured[captured["model"].isin(models)]
    if filter:
        cap = cap[filter_mask(cap.assign(tasks=cap["tasks"].map(_tasks)), filter)]
    layer_list = list(layers) if layers else list(dict.fromkeys(cap["layer"]))
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for r in cap.to_dict("records"):
        e = seen.setdefault((r["layer"], int(r["concept_id"])), {"first": r, "models": set()})
        e["models"].add(r["model"])
    rows = []
    for l in layer_list:
        for cid in sorted(cid for (ll, cid) in seen if ll == l):
            e = seen[(l, cid)]
            present = [m for m in models if m in e["models"]]
            status = "shared" if len(present) == len(models) else "unique" if len(present) == 1 else "partial"
            first = e["first"]
            rows.append({"layer": l, "concept_id": cid, "concept": first["concept"], "category": _none(first["category"]),
                         "subcategory": _none(first["subcategory"]), "status": status, "present_in": present})
    return _df(rows, CHANGE_COLUMNS)


# --------------------------------------------------------------------------- learned / missed


def normalise_phrase(text: str) -> str:
    """docs/METHOD.md §5.8 normal form: lower-case, hyphens to spaces, collapsed spaces, a final "s"
    stripped from EVERY word (per word, so the paper's own example
    "amorphous" / "amorphous calcification" matches)."""
    s = re.sub(r"\s+", " ", text.lower().replace("-", " ")).strip()
    return re.sub(r"([a-z0-9])s\b", r"\1", s)


def dedup_overlaps(missed: Sequence[str], learned: Sequence[str], direction: str = "forward") -> dict[str, str]:
    """Missed concepts that appear "in a slightly different form" among the learned ones.

    forward (default): norm(missed) equals norm(learned) or is a whole-word
    contiguous sub-phrase of it ("extremely" vs "extremely dense").  both: also
    the reverse (a learned phrase inside the missed one; removes far more).
    none: nothing.  When several learned concepts match, the one reported is the
    exact normal-form match if any, else the shortest, then alphabetical.
    """
    if direction not in DEDUP_DIRECTIONS:
        raise AnalysisError(f"de-dup direction {direction!r} unknown; use one of {', '.join(DEDUP_DIRECTIONS)}.")
    if direction == "none":
        return {}
    nl = [(l, normalise_phrase(l)) for l in learned]
    nl = [(l, n) for l, n in nl if n]
    out: dict[str, str] = {}
    for m in missed:
        nm = normalise_phrase(m)
        if not nm:
            continue
        hits = [(0 if n == nm else 1, len(l), l) for l, n in nl
                if n == nm or f" {nm} " in f" {n} " or (direction == "both" and f" {n} " in f" {nm} ")]
        if hits:
            out[m] = min(hits)[2]
    return out


def missed_concepts(inp: AnalysisInput, model: str, layers: Sequence[str] | None = None, rule: dict[str, Any] | None = None,
                    dedup: str = "forward", filter: tuple[str, str] | None = None,
                    threshold_models: Sequence[str] | None = None, include_constant: bool = False) -> pd.DataFrame:
    """Every concept of the model's set as learned / missed / missed_overlap (RQ3, Fig. 10-11).

    Learned = union of captured concepts over `layers` (default: every dissected
    layer of the model) under `rule` (default: the model's own τ).  `threshold_models`
    widens a `max` rule to the compared models.  The de-dup compares missed
    concepts with ALL learned ones; `filter` restricts only the rows returned.
    """
    r = normalise_rule(rule, default_combine="own")
    tm = list(threshold_models) if threshold_models else [model]
    if model not in tm:
        tm = [model] + tm
    cap = captured_concepts(inp, tm, layers, r, include_constant=include_constant)
    cap = cap[cap["model"] == model]
    learned_ids = set(int(x) for x in cap["concept_id"])
    cs = concepts_for(inp, model).sort_index()
    learned_texts = [t for cid, t in zip(cs["concept_id"], cs["concept"]) if int(cid) in learned_ids]
    univ = cs[filter_mask(cs, filter)]
    missed_texts = [t for cid, t in zip(univ["concept_id"], univ["concept"]) if int(cid) not in learned_ids]
    overlaps = dedup_overlaps(missed_texts, learned_texts, dedup)
    rows = []
    for _, c in univ.iterrows():
        cid = int(c["concept_id"])
        if cid in learned_ids:
            status, ov = "learned", None
        elif c["concept"] in overlaps:
            status, ov = "missed_overlap", overlaps[c["concept"]]
        else:
            status, ov = "missed", None
        rows.append({"model": model, "concept_id": cid, "concept": c["concept"], "category": c["category"],
                     "subcategory": c["subcategory"], "domain": c["domain"], "status": status, "overlap_with": ov})
    return _df(rows, MISSED_COLUMNS)


def missed_summary(missed: pd.DataFrame) -> pd.DataFrame:
    """Per (model, domain, category): learned / missed / missed_overlap counts (Fig. 10)."""
    m = missed.assign(category=missed["category"].map(lambda v: _none(v) if _none(v) is not None else "(uncategorised)"))
    out = m.pivot_table(index=["model", "domain", "category"], columns="status", values="concept_id", aggfunc="count", fill_value=0)
    for s in ("learned", "missed", "missed_overlap"):
        if s not in out.columns:
            out[s] = 0
    return out[["learned", "missed", "missed_overlap"]].reset_index()


# --------------------------------------------------------------------------- neurons


def neuron_profile(inp: AnalysisInput, model: str, layer: str, unit: int, top: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top concepts (with categories) and top probe images of one neuron (Fig. 6-7)."""
    nl = inp.neuron_labels
    lab = nl[(nl["model"] == model) & (nl["layer"] == layer) & (nl["unit"] == unit) & (nl["rank"] <= top)].sort_values("rank")
    if lab.empty and not ((inp.neurons["model"] == model) & (inp.neurons["layer"] == layer)).any():
        raise AnalysisError(f"no neuron {model}.{layer}[{unit}] in this run; check the model and layer names.")
    cs = concepts_for(inp, model)
    cats = [cs.loc[int(c)] if int(c) in cs.index else None for c in lab["concept_id"]]
    concepts_df = _df([
        {"rank": int(r), "concept_id": int(c), "concept": t, "score": float(sc),
         "category": None if k is None else k["category"], "subcategory": None if k is None else k["subcategory"],
         "domain": None if k is None else k["domain"]}
        for r, c, t, sc, k in zip(lab["rank"], lab["concept_id"], lab["concept"], lab["score"], cats)
    ], ["rank", "concept_id", "concept", "score", "category", "subcategory", "domain"])
    ti = inp.top_images
    img = ti[(ti["model"] == model) & (ti["layer"] == layer) & (ti["unit"] == unit) & (ti["rank"] <= top)].sort_values("rank")
    images_df = img[["rank", "image_idx", "activation"]].reset_index(drop=True)
    return concepts_df, images_df


def _keyword_key(word: str) -> str:
    return re.sub(r"([a-z0-9])s$", r"\1", word)


def keyword_neurons(inp: AnalysisInput, models: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                    top: int = 5, min_share: float = 0.6, stopwords: Iterable[str] = DEFAULT_STOPWORDS) -> pd.DataFrame:
    """Neurons whose top-`top` labels are dominated by one word (the paper's "keyword-driven" caveat).

    Words: lower-case runs of [a-z0-9] of 3+ letters, stopwords dropped, a final
    "s" folded ("calcifications" ~ "calcification").  share = labels containing
    the word / labels considered; a neuron is listed when share >= min_share and
    at least two labels share it.  Best word: most labels, then the longer word,
    then alphabetical; the keyword shown is its alphabetically first spelling.
    """
    stop = set(stopwords)
    order: dict[tuple[str, str], int] = {}
    for m in _models(inp, models):
        for l in _model_layers(inp, m, layers):
            order[(m, l)] = len(order)
    nl = inp.neuron_labels
    nl = nl[(nl["rank"] <= top) & pd.Series([(m, l) in order for m, l in zip(nl["model"], nl["layer"])], index=nl.index)]
    by_neuron: dict[tuple[str, str, int], list[tuple[int, str]]] = {}
    for m, l, u, r, c in zip(nl["model"], nl["layer"], nl["unit"], nl["rank"], nl["concept"]):
        by_neuron.setdefault((m, l, int(u)), []).append((int(r), str(c)))
    rows = []
    for (m, l, unit) in sorted(by_neuron, key=lambda k: (order[(k[0], k[1])], k[2])):
        ranked = sorted(by_neuron[(m, l, unit)])
        labels = [c for _, c in ranked]
        if len(labels) < 2:
            continue
        cnt: dict[str, set[int]] = {}
        surface: dict[str, str] = {}
        for rank, lab in ranked:
            for w in re.split(r"[^a-z0-9]+", lab.lower()):
                if len(w) < 3 or w in stop:
                    continue
                k = _keyword_key(w)
                cnt.setdefault(k, set()).add(rank)
                surface[k] = min(surface.get(k, w), w)
        if not cnt:
            continue
        k = min(cnt, key=lambda k: (-len(cnt[k]), -len(k), k))
        c = len(cnt[k])
        share = c / len(labels)
        if c >= 2 and share >= min_share:
            rows.append({"model": m, "layer": l, "unit": unit, "keyword": surface[k], "share": share, "labels": labels})
    return _df(rows, KEYWORD_COLUMNS)


# --------------------------------------------------------------------------- dispatch


@dataclass
class AnalysisRequest:
    """One analysis statement, resolved by the planner (aliases -> canonical layers)."""

    analysis_id: int
    kind: str  # compare | learned | gained | thresholds | keywords | show_neuron | analyze
    names: tuple[str, ...] = ()
    models: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # canonical, depth order; empty = all dissected
    filter_level: str | None = None
    filter_name: str | None = None
    threshold: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_RULE))
    count: str = "concepts"
    options: dict[str, Any] = field(default_factory=dict)
    unit: int | None = None
    top: int | None = None


KIND_TABLES: dict[str, tuple[str, ...]] = {
    "compare": ("captured_concepts", "category_counts", "top_categories", "concept_changes"),
    "learned": ("captured_concepts", "missed_concepts"),
    "gained": ("concept_changes",),
    "thresholds": (),  # layer_thresholds is a view over `layers`
    "keywords": ("keyword_neurons",),
    "show_neuron": (),  # read from neuron_labels / top_images
}


def tables_for(req: AnalysisRequest) -> tuple[str, ...]:
    """Store tables an analysis statement fills."""
    if req.kind == "analyze":
        want = set(req.names)
        order = ("captured_concepts", "category_counts", "top_categories", "concept_changes", "missed_concepts", "keyword_neurons")
        return tuple(t for t in order if t in want)
    if req.kind not in KIND_TABLES:
        raise AnalysisError(f"analysis kind {req.kind!r} unknown; use one of {', '.join(list(KIND_TABLES) + ['analyze'])}.")
    return KIND_TABLES[req.kind]


def run_analysis(req: AnalysisRequest, inp: AnalysisInput) -> dict[str, pd.DataFrame]:
    """Compute the tables of one analysis statement; every row carries analysis_id.

    Options: dedup (forward|both|none), include_constant (bool), top_n (3),
    min_share (0.6), stopwords (list).  `req.top` is the keyword top-k (default 5).
    """
    tables = tables_for(req)
    if not tables:
        return {}
    opt = req.options or {}
    rule = normalise_rule(req.threshold)
    models = _models(inp, req.models)
    layers = list(req.layers) or None
    flt = resolve_filter(inp.concepts, req.filter_level, req.filter_name)
    inc = bool(opt.get("include_constant", False))
    out: dict[str, pd.DataFrame] = {}

    need_cap = {"captured_concepts", "category_counts", "top_categories", "concept_changes"} & set(tables)
    if need_cap:
        cap = captured_concepts(inp, models, layers, rule, flt, include_constant=inc)
        if "captured_concepts" in tables:
            out["captured_concepts"] = cap
        if {"category_counts", "top_categories"} & set(tables):
            pairs = list(thresholds_for(inp, models, layers, rule))
            counts = category_counts(cap, inp.concepts, pairs, flt)
            if "category_counts" in tables:
                out["category_counts"] = counts
            if "top_categories" in tables:
                out["top_categories"] = top_categories(counts, req.count, int(opt.get("top_n", 3)))
        if "concept_changes" in tables:
            layer_order = layers or _union_layers(inp, models)
            out["concept_changes"] = concept_changes(cap, models, layer_order)
    if "missed_concepts" in tables:
        frames = [missed_concepts(inp, m, layers, rule, opt.get("dedup", "forward"), flt, models, inc) for m in models]
        out["missed_concepts"] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MISSED_COLUMNS)
    if "keyword_neurons" in tables:
        out["keyword_neurons"] = keyword_neurons(inp, models, layers, req.top or 5, float(opt.get("min_share", 0.6)),
                                                 tuple(opt.get("stopwords", DEFAULT_STOPWORDS)))
    return {k: v.assign(analysis_id=req.analysis_id)[["analysis_id", *v.columns]] for k, v in out.items()}


def _union_layers(inp: AnalysisInput, models: Sequence[str]) -> list[str]:
    """Layers of all models in depth order (min layer_index across models, then name)."""
    seen: dict[str, tuple[bool, float, str]] = {}
    for m in models:
        ly = inp.layers[inp.layers["model"] == m].set_index("layer")
        for l in _model_layers(inp, m, None):
            idx = _none(ly.loc[l, "layer_index"]) if l in ly.index else None
            key = (idx is None, float(idx) if idx is not None else 0.0, l)
            seen[l] = min(seen.get(l, key), key)
    return sorted(seen, key=lambda l: seen[l])
