"""The analyses, implemented once: as DuckDB table macros.

Each analysis of `dsl/vocabulary.py` ANALYSES has one table macro of its name,
registered here with `engine.registry.ANALYSES`.  The macro is the analysis:

* a study's results tables are filled by calling it (`store_analyses`), inside
  the transaction that writes the run, with the arguments recorded in the run's
  `analyses` row -- so `FROM captured_concepts` (the stored rows) and
  `FROM captured_concepts('<run_id>', ...)` (a recomputation) can never disagree;
* a user re-runs it in SQL under another rule, e.g.
  `FROM captured_concepts('<run_id>', models := ['M','C4'], combine := 'own')`;
* the report and the tests read what it returns.

DuckDB keeps tables and table macros in separate namespaces, so a stored table
and its macro share the name.  Why SQL rather than pandas is the one
implementation: see docs/ANALYSES.md.

Parameters (all optional except the run); defaults come from the vocabulary, so a
macro called without them computes what a study statement without options stores:

    models := ['M','C4']          (NULL: every model of the run)
    layers := ['_blocks.38']      (NULL: every dissected layer)
    statistic := 'mean_top1'      ('mean_all', 'median_top1')
    combine := 'max'              ('own', 'fixed' with value := 0.9)
    op := '>='                    ('>')
    filter_level := 'task', filter_name := 'calcification'
    include_constant := false
    plus each analysis's statement options (dedup, top, min_share), and
    top_categories' count_unit := 'concepts' and n := 3.

Helper macros: `applied_thresholds(run, ...)` (the τ each (model, layer) gets),
`model_concepts(run)` (each model's concept set), `normalise_phrase(s)` and
`category_key(s)` (scalar, as in Python), `neuron_profile_images(run, model_name,
layer_name, unit_idx, top)`.

`install(con)` is idempotent (CREATE OR REPLACE); store.ensure_schema calls it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import duckdb

from dissect_study.dsl.vocabulary import ANALYSES as SPECS
from dissect_study.dsl.vocabulary import CATEGORY_LEVELS, DEFAULT_THRESHOLD, AnalysisSpec
from dissect_study.engine.concepts import MAMMO_CATEGORIES, NON_MAMMO_CATEGORY, category_key
from dissect_study.engine.registry import ANALYSES
from dissect_study.errors import DissectStudyError

logger = logging.getLogger(__name__)

#: words never taken as a neuron's keyword (plus every word shorter than 3 letters)
STOPWORDS: tuple[str, ...] = (
    "and", "are", "for", "from", "into", "its", "not", "of", "on", "or", "the", "to", "with", "without", "in", "at",
    "by",
)  # fmt: skip


class AnalysisError(DissectStudyError):
    """An analysis that cannot be computed from this run; the message says why and what to change."""


# --------------------------------------------------------------------------- SQL text


def sql_literal(value: Any) -> str:
    """A Python value as a DuckDB literal (str, number, bool, None, list of those)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AnalysisError(f"an analysis argument must be a finite number, not {value!r}")
        return f"{value!r}::DOUBLE"  # a bare 0.6 would be a DECIMAL
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        items = [sql_literal(v) for v in value]
        kind = "VARCHAR" if all(isinstance(v, str) for v in value) else None
        return f"[{', '.join(items)}]" + (f"::{kind}[]" if kind else "")
    raise AnalysisError(f"cannot pass {type(value).__name__} {value!r} to an analysis macro")


def _cat_rank_case(col: str) -> str:
    """SQL for the fixed category order (concepts.category_order)."""
    whens = " ".join(f"WHEN {sql_literal(category_key(c))} THEN {i}" for i, c in enumerate(MAMMO_CATEGORIES))
    return (
        f"CASE category_key({col}) {whens} WHEN {sql_literal(category_key(NON_MAMMO_CATEGORY))} THEN 2000 ELSE 1000 END"
    )


_FILTER = """(filter_name IS NULL OR CASE lower(filter_level)
        WHEN 'category' THEN coalesce(category_key({a}.category) = category_key(filter_name), false)
        WHEN 'subcategory' THEN coalesce(category_key({a}.subcategory) = category_key(filter_name), false)
        WHEN 'domain' THEN coalesce(lower({a}.domain) = lower(trim(filter_name)), false)
        WHEN 'task' THEN coalesce(list_contains({a}.tasks, lower(trim(filter_name))), false)
        ELSE false END)"""

_RULE: tuple[tuple[str, str], ...] = (
    ("statistic", sql_literal(DEFAULT_THRESHOLD["statistic"])),
    ("combine", sql_literal(DEFAULT_THRESHOLD["combine"])),
    ("value", "NULL"),
    ("op", sql_literal(DEFAULT_THRESHOLD["op"])),
)
_SCOPE = (("models", "NULL"), ("layers", "NULL"))
_COMMON = (*_SCOPE, *_RULE, ("filter_level", "NULL"), ("filter_name", "NULL"), ("include_constant", "false"))


def _pass(names: tuple[tuple[str, str], ...]) -> str:
    """`a := a, b := b`: hand a macro's own parameters on to the macro it calls."""
    return ", ".join(f"{n} := {n}" for n, _ in names)


# --------------------------------------------------------------------------- macros


@dataclass(frozen=True)
class TableMacro:
    """One DuckDB table macro: `name(run, *positional, param := default, ...) AS TABLE body`.

    For an analysis the parameters end with its statement options, whose defaults
    are the vocabulary's (`for_analysis`), so the defaults are never written twice.
    """

    name: str
    params: tuple[tuple[str, str], ...]
    body: str
    positional: tuple[str, ...] = ()

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.params)

    def ddl(self) -> str:
        args = ", ".join(["run", *self.positional, *(f"{n} := {d}" for n, d in self.params)])
        return f"CREATE OR REPLACE MACRO {self.name}({args}) AS TABLE\n{self.body}"

    def call(self, run_id: str, args: dict[str, Any]) -> str:
        """SQL calling the macro with those `args` it takes (None leaves the macro's default)."""
        given = [f"{n} := {sql_literal(args[n])}" for n in self.param_names if args.get(n) is not None]
        return f"{self.name}({', '.join([sql_literal(run_id), *given])})"


#: every macro in the order it must be created (a macro binds the ones it calls at creation)
_DDL: list[str] = []
#: the analyses this module registers (plugins may register more)
_BUILTIN: list[str] = []


def _scalar(ddl: str) -> None:
    _DDL.append(ddl.strip())


def _helper(macro: TableMacro) -> TableMacro:
    _DDL.append(macro.ddl())
    return macro


def _analysis(
    name: str, params: tuple[tuple[str, str], ...], body: str, positional: tuple[str, ...] = ()
) -> TableMacro:
    """Define and register the macro of analysis `name`; its options' defaults come from the vocabulary."""
    spec: AnalysisSpec = SPECS[name]
    options = tuple((p.name, sql_literal(p.default)) for p in spec.options)
    macro = TableMacro(name, params + options, body, positional)
    _DDL.append(macro.ddl())
    _BUILTIN.append(name)
    return ANALYSES.register(name)(macro)


_scalar(r"""
CREATE OR REPLACE MACRO category_key(s) AS trim(regexp_replace(lower(s), '[\s_\-]+', ' ', 'g'))""")
_scalar(r"""
CREATE OR REPLACE MACRO normalise_phrase(s) AS
    regexp_replace(trim(regexp_replace(replace(lower(s), '-', ' '), '\s+', ' ', 'g')), '([a-z0-9])s\b', '\1', 'g')""")

_helper(
    TableMacro(
        "model_concepts",
        (),
        """
    WITH ms AS (SELECT DISTINCT model FROM main.neurons WHERE run_id = run
                UNION SELECT DISTINCT model FROM main.layers WHERE run_id = run),
         ds AS (SELECT model, min(concept_set) AS concept_set FROM main.dissections WHERE run_id = run GROUP BY model)
    SELECT ms.model, c.concept_set, c.concept_id, c.concept, c.category, c.subcategory, c.domain,
           coalesce(c.tasks, []::VARCHAR[]) AS tasks
    FROM ms LEFT JOIN ds ON ds.model = ms.model
    JOIN main.concepts c ON c.run_id = run AND (ds.concept_set IS NULL OR c.concept_set = ds.concept_set)""",
    )
)

_analysis(
    "layer_thresholds",
    (*_SCOPE, _RULE[0]),
    """
    WITH ns AS (SELECT model, layer, count(*) AS n, avg(score) FILTER (WHERE NOT isnan(score)) AS m1,
                       median(score) FILTER (WHERE NOT isnan(score)) AS md
                FROM main.neurons WHERE run_id = run GROUP BY model, layer),
         ly AS (SELECT * FROM main.layers WHERE run_id = run
                QUALIFY row_number() OVER (PARTITION BY model, layer ORDER BY layer_index) = 1),
         j AS (SELECT coalesce(ly.model, ns.model) AS model, coalesce(ly.layer, ns.layer) AS layer,
                      ly.layer_index, ly.alias, coalesce(ly.n_neurons, ns.n)::INTEGER AS n_neurons,
                      coalesce(ly.tau_mean_top1, CASE WHEN ly.tau_statistic = 'mean_top1' THEN ly.tau END, ns.m1)
                          AS tau_mean_top1,
                      coalesce(ly.tau_mean_all, CASE WHEN ly.tau_statistic = 'mean_all' THEN ly.tau END) AS tau_mean_all,
                      coalesce(ly.tau_median_top1, CASE WHEN ly.tau_statistic = 'median_top1' THEN ly.tau END, ns.md)
                          AS tau_median_top1
               FROM ly FULL OUTER JOIN ns ON ly.model = ns.model AND ly.layer = ns.layer)
    SELECT model, layer, layer_index, alias, n_neurons,
           CASE statistic WHEN 'mean_top1' THEN tau_mean_top1 WHEN 'mean_all' THEN tau_mean_all
                          WHEN 'median_top1' THEN tau_median_top1 END AS tau,
           statistic AS tau_statistic, tau_mean_top1, tau_mean_all, tau_median_top1
    FROM j
    WHERE (models IS NULL OR list_contains(models, model)) AND (layers IS NULL OR list_contains(layers, layer))
    ORDER BY coalesce(list_position(models, model), 0), model,
             coalesce(list_position(layers, layer), 0), layer_index NULLS LAST, layer""",
)

_THRESHOLDS = _helper(
    TableMacro(
        "applied_thresholds",
        (*_SCOPE, *_RULE[:3]),
        f"""
    SELECT model, layer, layer_index, tau,
           CASE combine WHEN 'own' THEN tau WHEN 'fixed' THEN CAST(value AS DOUBLE)
                        ELSE max(tau) OVER (PARTITION BY layer) END AS threshold
    FROM layer_thresholds(run, {_pass((*_SCOPE, _RULE[0]))})""",
    )
)

_analysis(
    "captured_concepts",
    _COMMON,
    f"""
    WITH thr AS (FROM applied_thresholds(run, {_pass((*_SCOPE, *_RULE[:3]))})),
         mc AS (FROM model_concepts(run))
    SELECT n.model, n.layer, n.concept_id, any_value(mc.concept) AS concept, any_value(mc.category) AS category,
           any_value(mc.subcategory) AS subcategory, any_value(mc.domain) AS domain, any_value(mc.tasks) AS tasks,
           count(*)::INTEGER AS n_neurons, list(n.unit ORDER BY n.unit) AS units, max(n.score) AS max_score,
           any_value(thr.threshold) AS threshold
    FROM main.neurons n
    JOIN thr ON thr.model = n.model AND thr.layer = n.layer
    JOIN mc ON mc.model = n.model AND mc.concept_id = n.concept_id
    WHERE n.run_id = run
      AND (include_constant OR NOT coalesce(n.constant, false)) AND NOT isnan(n.score)
      AND CASE WHEN op = '>' THEN n.score > thr.threshold ELSE n.score >= thr.threshold END
      AND {_FILTER.format(a="mc")}
    GROUP BY n.model, n.layer, n.concept_id
    ORDER BY coalesce(list_position(models, n.model), 0), n.model,
             coalesce(list_position(layers, n.layer), 0), any_value(thr.layer_index) NULLS LAST, n.layer, n.concept_id""",
)

_analysis(
    "category_counts",
    _COMMON,
    f"""
    WITH cap AS (FROM captured_concepts(run, {_pass(_COMMON)})),
         pairs AS (SELECT model, layer, layer_index FROM applied_thresholds(run, {_pass((*_SCOPE, *_RULE[:3]))})),
         uc AS (SELECT DISTINCT category, subcategory, domain, coalesce(tasks, []::VARCHAR[]) AS tasks
                FROM main.concepts c WHERE run_id = run AND {_FILTER.format(a="c")}),
         grps AS (SELECT DISTINCT 'category' AS level, category AS grp FROM uc
                  UNION SELECT DISTINCT 'subcategory', subcategory FROM uc
                  UNION SELECT DISTINCT 'domain', domain FROM uc
                  UNION SELECT DISTINCT 'task', unnest(tasks) FROM uc),
         capl AS (SELECT model, layer, concept_id, n_neurons, 'category' AS level, category AS grp FROM cap
                  UNION ALL SELECT model, layer, concept_id, n_neurons, 'subcategory', subcategory FROM cap
                  UNION ALL SELECT model, layer, concept_id, n_neurons, 'domain', domain FROM cap
                  UNION ALL SELECT model, layer, concept_id, n_neurons, 'task', unnest(tasks) FROM cap),
         allg AS (SELECT p.model, p.layer, p.layer_index, g.level, g.grp FROM pairs p CROSS JOIN grps g
                  UNION SELECT c.model, c.layer, p.layer_index, c.level, c.grp FROM capl c
                  JOIN pairs p ON p.model = c.model AND p.layer = c.layer)
    SELECT a.model, a.layer, a.level, a.grp, count(c.concept_id)::INTEGER AS n_concepts,
           coalesce(sum(c.n_neurons), 0)::INTEGER AS n_neurons
    FROM allg a LEFT JOIN capl c ON c.model = a.model AND c.layer = a.layer AND c.level = a.level
                                 AND c.grp IS NOT DISTINCT FROM a.grp
    GROUP BY a.model, a.layer, a.layer_index, a.level, a.grp
    ORDER BY coalesce(list_position(models, a.model), 0), a.model, coalesce(list_position(layers, a.layer), 0),
             a.layer_index NULLS LAST, a.layer, list_position(['category', 'subcategory', 'domain', 'task'], a.level),
             a.grp IS NULL, CASE WHEN a.level = 'category' THEN {_cat_rank_case("a.grp")} ELSE 0 END, lower(a.grp),
             a.grp""",
)

_analysis(
    "top_categories",
    (*_COMMON, ("count_unit", "'concepts'"), ("n", "3")),
    f"""
    SELECT model, layer,
           row_number() OVER (PARTITION BY model, layer ORDER BY
               CASE WHEN count_unit = 'neurons' THEN n_neurons ELSE n_concepts END DESC,
               {_cat_rank_case("grp")}, lower(grp), grp)::INTEGER AS rank,
           grp AS category, n_concepts, n_neurons
    FROM category_counts(run, {_pass(_COMMON)})
    WHERE level = 'category' AND grp IS NOT NULL
      AND (CASE WHEN count_unit = 'neurons' THEN n_neurons ELSE n_concepts END) > 0
    QUALIFY rank <= n
    ORDER BY coalesce(list_position(models, model), 0), model, coalesce(list_position(layers, layer), 0), layer, rank""",
)

_analysis(
    "concept_changes",
    _COMMON,
    f"""
    WITH cap AS (FROM captured_concepts(run, {_pass(_COMMON)})),
         nm AS (SELECT coalesce(len(models), (SELECT count(DISTINCT model) FROM model_concepts(run))) AS k),
         li AS (SELECT layer, min(layer_index) AS layer_index FROM main.layers WHERE run_id = run GROUP BY layer)
    SELECT cap.layer, cap.concept_id, any_value(concept) AS concept, any_value(category) AS category,
           any_value(subcategory) AS subcategory,
           CASE WHEN count(DISTINCT cap.model) = any_value(nm.k) THEN 'shared'
                WHEN count(DISTINCT cap.model) = 1 THEN 'unique' ELSE 'partial' END AS status,
           list(cap.model ORDER BY coalesce(list_position(models, cap.model), 0), cap.model) AS present_in
    FROM cap CROSS JOIN nm LEFT JOIN li ON li.layer = cap.layer
    GROUP BY cap.layer, cap.concept_id
    ORDER BY coalesce(list_position(layers, cap.layer), 0), any_value(li.layer_index) NULLS LAST, cap.layer,
             cap.concept_id""",
)

# Learned = a model's captured concepts over the layers, under the rule (`max` over
# all `models`); the de-dup compares each missed concept with ALL of the model's
# learned ones, and the filter restricts only the rows returned (docs/METHOD.md §5.8).
_analysis(
    "missed_concepts",
    _COMMON,
    f"""
    WITH ms AS (SELECT model, coalesce(list_position(models, model), 0) AS pos
                FROM (SELECT DISTINCT model FROM model_concepts(run))
                WHERE models IS NULL OR list_contains(models, model)),
         learned AS (SELECT DISTINCT model, concept_id FROM captured_concepts(run, {_pass((*_SCOPE, *_RULE))},
                                                                                include_constant := include_constant)),
         mc AS (SELECT mc.* FROM model_concepts(run) mc JOIN ms USING (model)),
         lt AS (SELECT mc.model, mc.concept AS l, normalise_phrase(mc.concept) AS nl
                FROM mc JOIN learned USING (model, concept_id) WHERE normalise_phrase(mc.concept) <> ''),
         univ AS (SELECT * FROM mc WHERE {_FILTER.format(a="mc")}),
         miss AS (SELECT univ.model, univ.concept_id, normalise_phrase(univ.concept) AS nc
                  FROM univ ANTI JOIN learned USING (model, concept_id)),
         ov AS (SELECT m.model, m.concept_id,
                       arg_min(lt.l, (CASE WHEN m.nc = lt.nl THEN 0 ELSE 1 END, length(lt.l), lt.l)) AS overlap_with
                FROM miss m JOIN lt ON lt.model = m.model AND dedup <> 'none' AND m.nc <> ''
                     AND (m.nc = lt.nl OR contains(' ' || lt.nl || ' ', ' ' || m.nc || ' ')
                          OR (dedup = 'both' AND contains(' ' || m.nc || ' ', ' ' || lt.nl || ' ')))
                GROUP BY m.model, m.concept_id)
    SELECT univ.model, univ.concept_id, univ.concept, univ.category, univ.subcategory, univ.domain,
           CASE WHEN l.concept_id IS NOT NULL THEN 'learned'
                WHEN ov.concept_id IS NOT NULL THEN 'missed_overlap' ELSE 'missed' END AS status,
           ov.overlap_with
    FROM univ JOIN ms ON ms.model = univ.model
    LEFT JOIN learned l ON l.model = univ.model AND l.concept_id = univ.concept_id
    LEFT JOIN ov ON ov.model = univ.model AND ov.concept_id = univ.concept_id
    ORDER BY ms.pos, univ.model, univ.concept_id""",
)

_PROFILE = _analysis(
    "neuron_profile",
    (),
    """
    SELECT l.rank, l.concept_id, l.concept, l.score, mc.category, mc.subcategory, mc.domain
    FROM main.neuron_labels l
    LEFT JOIN model_concepts(run) mc ON mc.model = l.model AND mc.concept_id = l.concept_id
    WHERE l.run_id = run AND l.model = model_name AND l.layer = layer_name AND l.unit = unit_idx AND l.rank <= top
    ORDER BY l.rank""",
    positional=("model_name", "layer_name", "unit_idx"),
)

_helper(
    TableMacro(
        "neuron_profile_images",
        _PROFILE.params,
        """
    SELECT rank, image_idx, activation FROM main.top_images
    WHERE run_id = run AND model = model_name AND layer = layer_name AND unit = unit_idx AND rank <= top
    ORDER BY rank""",
        positional=("model_name", "layer_name", "unit_idx"),
    )
)

# Words: lower-case runs of [a-z0-9] of 3+ letters, stopwords dropped, a final "s" folded;
# a neuron is listed when its best word is in >= 2 labels and in a share >= min_share of
# them.  Best word: most labels, then the longer, then alphabetical (docs/METHOD.md §5.9).
_analysis(
    "keyword_neurons",
    (*_SCOPE, ("stopwords", sql_literal(STOPWORDS))),
    """
    WITH lab AS (SELECT model, layer, unit, rank, concept FROM main.neuron_labels
                 WHERE run_id = run AND rank <= top
                   AND (models IS NULL OR list_contains(models, model))
                   AND (layers IS NULL OR list_contains(layers, layer))),
         nl AS (SELECT model, layer, unit, count(*) AS n_labels, list(concept ORDER BY rank) AS labels
                FROM lab GROUP BY model, layer, unit),
         w AS (SELECT model, layer, unit, rank, unnest(string_split_regex(lower(concept), '[^a-z0-9]+')) AS word
               FROM lab),
         k AS (SELECT model, layer, unit, regexp_replace(word, '([a-z0-9])s$', '\\1') AS key,
                      count(DISTINCT rank) AS cnt, min(word) AS surface
               FROM w WHERE length(word) >= 3 AND NOT list_contains(stopwords, word)
               GROUP BY model, layer, unit, key),
         best AS (SELECT * FROM k QUALIFY row_number() OVER (PARTITION BY model, layer, unit
                                                             ORDER BY cnt DESC, length(key) DESC, key) = 1),
         li AS (SELECT model, layer, min(layer_index) AS layer_index FROM main.layers WHERE run_id = run GROUP BY ALL)
    SELECT b.model, b.layer, b.unit, b.surface AS keyword, b.cnt / nl.n_labels AS share, nl.labels
    FROM best b JOIN nl ON nl.model = b.model AND nl.layer = b.layer AND nl.unit = b.unit
    LEFT JOIN li ON li.model = b.model AND li.layer = b.layer
    WHERE nl.n_labels >= 2 AND b.cnt >= 2 AND b.cnt / nl.n_labels >= min_share
    ORDER BY coalesce(list_position(models, b.model), 0), b.model, coalesce(list_position(layers, b.layer), 0),
             li.layer_index NULLS LAST, b.layer, b.unit""",
)


def install(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or replace) every analysis macro, and those plugins registered, on a connection whose schema exists."""
    for ddl in _DDL:
        con.execute(ddl)
    for name in ANALYSES.names():
        if name not in _BUILTIN:
            con.execute(ANALYSES.get(name).ddl())


# --------------------------------------------------------------------------- a study's analyses


def resolve_filter(
    con: duckdb.DuckDBPyConnection, run_id: str, level: str | None, name: str | None
) -> tuple[str, str] | None:
    """Find the group a statement's `on <level> <name>` names in the run's concepts.

    `compare M vs C4 at layer last on category Calcification`: "Calcification" is no
    broad category of the paper's set but a task, so when the name is not found at
    the given level the other levels are tried in the order category, subcategory,
    task, domain (exact names only -- never substrings).  Returns (level, name as
    stored); raises AnalysisError naming the groups that exist otherwise.
    """
    if name is None:
        return None
    rows = con.execute(
        "SELECT DISTINCT category, subcategory, domain, tasks FROM concepts WHERE run_id = ?", [run_id]
    ).fetchall()
    groups: dict[str, dict[str, str]] = {lvl: {} for lvl in CATEGORY_LEVELS}
    for category, subcategory, domain, tasks in rows:
        for lvl, value in (("category", category), ("subcategory", subcategory), ("domain", domain)):
            if value is not None:
                groups[lvl].setdefault(category_key(value) if lvl != "domain" else value.lower(), value)
        for t in tasks or ():
            groups["task"].setdefault(t.lower(), t)
    if level is not None and level not in groups:
        raise AnalysisError(f"filter level {level!r} unknown; use one of {', '.join(CATEGORY_LEVELS)}.")
    order = [level] if level else []
    order += [lvl for lvl in ("category", "subcategory", "task", "domain") if lvl not in order]
    for lvl in order:
        key = category_key(name) if lvl in ("category", "subcategory") else name.strip().lower()
        if key in groups[lvl]:
            return lvl, groups[lvl][key]
    avail = "; ".join(
        f"{lvl}: {', '.join(sorted(set(groups[lvl].values())))}" for lvl in ("category", "task") if groups[lvl]
    )
    raise AnalysisError(f"no {level or 'group'} named {name!r} in the concept set ({avail}).")


def statement_args(row: dict[str, Any]) -> dict[str, Any]:
    """The macro arguments an `analyses` row records: scope, rule, filter, count unit and options."""
    rule = _json(row.get("threshold_rule")) or {}
    return {
        "models": list(row.get("models") or []) or None,
        "layers": list(row.get("layers") or []) or None,
        **{k: rule.get(k) for k in ("statistic", "combine", "value", "op")},
        "filter_level": row.get("filter_level"),
        "filter_name": row.get("filter_name"),
        "count_unit": row.get("count_unit"),
        **(_json(row.get("options")) or {}),
    }


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def _check_thresholds(con: duckdb.DuckDBPyConnection, run_id: str, args: dict[str, Any], statement: str) -> None:
    """Refuse a rule that gives some (model, layer) no τ, instead of storing an empty analysis."""
    if args.get("combine") == "fixed" and args.get("value") is None:
        raise AnalysisError(f"{statement}: a fixed threshold needs a value, e.g. `threshold 0.9`.")
    missing = con.execute(
        f"SELECT model, layer FROM {_THRESHOLDS.call(run_id, args)} WHERE threshold IS NULL OR isnan(threshold)"
    ).fetchall()
    if missing:
        # in the statement's order: by depth, then the models as listed (the query's order is arbitrary)
        depth = dict(
            ((m, layer), i)
            for m, layer, i in con.execute(
                "SELECT model, layer, layer_index FROM layers WHERE run_id = ?", [run_id]
            ).fetchall()
        )
        models = list(args.get("models") or [])
        missing.sort(key=lambda ml: (depth.get(ml, 1 << 30), models.index(ml[0]) if ml[0] in models else len(models)))
        stat = args.get("statistic") or DEFAULT_THRESHOLD["statistic"]
        where = ", ".join(f"{m} {layer}" for m, layer in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise AnalysisError(
            f"{statement}: no τ for {where} under statistic {stat!r}"
            + (" (the full-matrix mean is stored only when the run kept S)" if stat == "mean_all" else "")
            + "; choose another statistic or a fixed threshold."
        )


def store_analyses(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Fill the stored tables of every analysis statement of run `run_id` from its macros.

    Runs inside the transaction that writes the run (RunRecord.derive), after the base
    tables and the `analyses` rows are in: each stored analysis of a statement is its
    macro called with the arguments of the statement's `analyses` row, so the stored
    rows are exactly what `FROM <name>('<run_id>', ...)` returns.  A filter naming a
    group at another level is resolved first and the row updated to what was used.
    """
    cur = con.execute("SELECT * FROM analyses WHERE run_id = ? ORDER BY analysis_id", [run_id])
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    for row in rows:
        resolved = resolve_filter(con, run_id, row["filter_level"], row["filter_name"])
        if resolved is not None and resolved != (row["filter_level"], row["filter_name"]):
            row["filter_level"], row["filter_name"] = resolved
            con.execute(
                "UPDATE analyses SET filter_level = ?, filter_name = ? WHERE run_id = ? AND analysis_id = ?",
                [*resolved, run_id, row["analysis_id"]],
            )
        args = statement_args(row)
        stored = [(SPECS[n], ANALYSES.get(n)) for n in row["analysis_names"] or () if n in SPECS and SPECS[n].stored]
        if any("combine" in macro.param_names for _, macro in stored):
            _check_thresholds(con, run_id, args, str(row["statement"] or row["kind"]))
        for spec, macro in stored:
            name = spec.name
            cols = ", ".join(f'"{c.name}"' for c in spec.columns)
            con.execute(
                f'INSERT INTO "{name}" (run_id, analysis_id, {cols}) '
                f"SELECT ?, ?, {cols} FROM {macro.call(run_id, args)}",
                [run_id, int(row["analysis_id"])],
            )
    logger.debug("stored the analyses of %d statement(s) of run %s", len(rows), run_id)
