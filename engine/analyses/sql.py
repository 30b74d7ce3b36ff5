"""The analyses as DuckDB table macros, so users can re-run them in SQL.

Each macro has the name of its analysis (and of the store table holding the
results the study computed): `FROM captured_concepts` reads the stored rows,
`FROM captured_concepts('<run_id>', models := ['M','C4'], combine := 'own')`
recomputes them from the base tables (`layers`, `neurons`, `neuron_labels`,
`top_images`, `concepts`, `dissections`) under any threshold rule.  DuckDB keeps
tables and table macros in separate namespaces, so the names can be shared.
The semantics are those of engine/analysis.py (tests check they agree row for row).

Common parameters (all optional except the run):
    models := ['M','C4']          (NULL: every model of the run)
    layers := ['_blocks.38']      (NULL: every dissected layer)
    statistic := 'mean_top1'      ('mean_all', 'median_top1')
    combine := 'max'              ('own', 'fixed' with value := 0.9)
    op := '>='                    ('>')
    filter_level := 'task', filter_name := 'calcification'
    include_constant := false

Extra macros: `applied_thresholds(run, ...)` (the τ each (model, layer) gets),
`model_concepts(run)` (each model's concept set), `normalise_phrase(s)` and
`category_key(s)` (scalar, as in Python), `neuron_profile_images(run, model_name,
layer_name, unit_idx, top)`.

`install(con)` is idempotent (CREATE OR REPLACE); store.ensure_schema calls it.
"""

from __future__ import annotations

from typing import Any

from dissect_study.engine.analyses.frames import DEFAULT_STOPWORDS
from dissect_study.engine.concepts import MAMMO_CATEGORIES, NON_MAMMO_CATEGORY, category_key

_COMMON = ("models := NULL, layers := NULL, statistic := 'mean_top1', combine := 'max', value := NULL, "
           "op := '>=', filter_level := NULL, filter_name := NULL, include_constant := false")
_PASS = ("models := models, layers := layers, statistic := statistic, combine := combine, value := value, "
         "op := op, filter_level := filter_level, filter_name := filter_name, include_constant := include_constant")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _cat_rank_case(col: str) -> str:
    """SQL for the fixed category order (concepts.category_order)."""
    whens = " ".join(f"WHEN {_sql_str(category_key(c))} THEN {i}" for i, c in enumerate(MAMMO_CATEGORIES))
    return (f"CASE category_key({col}) {whens} WHEN {_sql_str(category_key(NON_MAMMO_CATEGORY))} THEN 2000 "
            f"ELSE 1000 END")


_FILTER = """(filter_name IS NULL OR CASE lower(filter_level)
        WHEN 'category' THEN coalesce(category_key({a}.category) = category_key(filter_name), false)
        WHEN 'subcategory' THEN coalesce(category_key({a}.subcategory) = category_key(filter_name), false)
        WHEN 'domain' THEN coalesce(lower({a}.domain) = lower(trim(filter_name)), false)
        WHEN 'task' THEN coalesce(list_contains({a}.tasks, lower(trim(filter_name))), false)
        ELSE false END)"""

MACROS: dict[str, str] = {
    "category_key": r"""
CREATE OR REPLACE MACRO category_key(s) AS trim(regexp_replace(lower(s), '[\s_\-]+', ' ', 'g'))""",
    "normalise_phrase": r"""
CREATE OR REPLACE MACRO normalise_phrase(s) AS
    regexp_replace(trim(regexp_replace(replace(lower(s), '-', ' '), '\s+', ' ', 'g')), '([a-z0-9])s\b', '\1', 'g')""",
    "model_concepts": """
CREATE OR REPLACE MACRO model_concepts(run) AS TABLE
    WITH ms AS (SELECT DISTINCT model FROM main.neurons WHERE run_id = run
                UNION SELECT DISTINCT model FROM main.layers WHERE run_id = run),
         ds AS (SELECT model, min(concept_set) AS concept_set FROM main.dissections WHERE run_id = run GROUP BY model)
    SELECT ms.model, c.concept_set, c.concept_id, c.concept, c.category, c.subcategory, c.domain,
           coalesce(c.tasks, []::VARCHAR[]) AS tasks
    FROM ms LEFT JOIN ds ON ds.model = ms.model
    JOIN main.concepts c ON c.run_id = run AND (ds.concept_set IS NULL OR c.concept_set = ds.concept_set)""",
    "layer_thresholds": """
CREATE OR REPLACE MACRO layer_thresholds(run, models := NULL, layers := NULL, statistic := 'mean_top1') AS TABLE
    WITH ns AS (SELECT model, layer, count(*) AS n, avg(score) FILTER (WHERE NOT isnan(score)) AS m1,
                       median(score) FILTER (WHERE NOT isnan(score)) AS md
                FROM main.neurons WHERE run_id = run GROUP BY model, layer),
         ly AS (SELECT * FROM main.layers WHERE run_id = run
                QUALIFY row_number() OVER (PARTITION BY model, layer ORDER BY layer_index) = 1),
         j AS (SELECT coalesce(ly.model, ns.model) AS model, coalesce(ly.layer, ns.layer) AS layer,
                      ly.layer_index, ly.alias, coalesce(ly.n_neurons, ns.n)::INTEGER AS n_neurons,
                      coalesce(ly.tau_mean_top1, CASE WHEN ly.tau_statistic = 'mean_top1' THEN ly.tau END, ns.m1) AS tau_mean_top1,
                      coalesce(ly.tau_mean_all, CASE WHEN ly.tau_statistic = 'mean_all' THEN ly.tau END) AS tau_mean_all,
                      coalesce(ly.tau_median_top1, CASE WHEN ly.tau_statistic = 'median_top1' THEN ly.tau END, ns.md) AS tau_median_top1
               FROM ly FULL OUTER JOIN ns ON ly.model = ns.model AND ly.layer = ns.layer)
    SELECT model, layer, layer_index, alias, n_neurons,
           CASE statistic WHEN 'mean_top1' THEN tau_mean_top1 WHEN 'mean_all' THEN tau_mean_all
                          WHEN 'median_top1' THEN tau_median_top1 END AS tau,
           statistic AS tau_statistic, tau_mean_top1, tau_mean_all, tau_median_top1
    FROM j
    WHERE (models IS NULL OR list_contains(models, model)) AND (layers IS NULL OR list_contains(layers, layer))
    ORDER BY coalesce(list_position(models, model), 0), model,
             coalesce(list_position(layers, layer), 0), layer_index NULLS LAST, layer""",
    "applied_thresholds": """
CREATE OR REPLACE MACRO applied_thresholds(run, models := NULL, layers := NULL, statistic := 'mean_top1',
                                           combine := 'max', value := NULL) AS TABLE
    SELECT model, layer, layer_index, tau,
           CASE combine WHEN 'own' THEN tau WHEN 'fixed' THEN CAST(value AS DOUBLE)
                        ELSE max(tau) OVER (PARTITION BY layer) END AS threshold
    FROM layer_thresholds(run, models := models, layers := layers, statistic := statistic)""",
    "captured_concepts": f"""
CREATE OR REPLACE MACRO captured_concepts(run, {_COMMON}) AS TABLE
    WITH thr AS (FROM applied_thresholds(run, models := models, layers := layers, statistic := statistic,
                                         combine := combine, value := value)),
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
      AND {_FILTER.format(a='mc')}
    GROUP BY n.model, n.layer, n.concept_id
    ORDER BY coalesce(list_position(models, n.model), 0), n.model,
             coalesce(list_position(layers, n.layer), 0), any_value(thr.layer_index) NULLS LAST, n.layer, n.concept_id""",
    "category_counts": f"""
CREATE OR REPLACE MACRO category_counts(run, {_COMMON}) AS TABLE
    WITH cap AS (FROM captured_concepts(run, {_PASS})),
         pairs AS (SELECT model, layer, layer_index FROM applied_thresholds(run, models := models, layers := layers,
                                                     statistic := statistic, combine := combine, value := value)),
         uc AS (SELECT DISTINCT category, subcategory, domain, coalesce(tasks, []::VARCHAR[]) AS tasks
                FROM main.concepts c WHERE run_id = run AND {_FILTER.format(a='c')}),
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
             CASE WHEN a.level = 'category' THEN {_cat_rank_case('a.grp')} ELSE 0 END, lower(a.grp) NULLS LAST, a.grp""",
    "top_categories": f"""
CREATE OR REPLACE MACRO top_categories(run, {_COMMON}, count_unit := 'concepts', n := 3) AS TABLE
    SELECT model, layer,
           row_number() OVER (PARTITION BY model, layer ORDER BY
               CASE WHEN count_unit = 'neurons' THEN n_neurons ELSE n_concepts END DESC,
               {_cat_rank_case('grp')}, lower(grp), grp)::INTEGER AS rank,
           grp AS category, n_concepts, n_neurons
    FROM category_counts(run, {_PASS})
    WHERE level = 'category' AND grp IS NOT NULL
      AND (CASE WHEN count_unit = 'neurons' THEN n_neurons ELSE n_concepts END) > 0
    QUALIFY rank <= n
    ORDER BY coalesce(list_position(models, model), 0), model, coalesce(list_position(layers, layer), 0), layer, rank""",
    "concept_changes": f"""
CREATE OR REPLACE MACRO concept_changes(run, {_COMMON}) AS TABLE
    WITH cap AS (FROM captured_concepts(run, {_PASS})),
         nm AS (SELECT coalesce(len(models), (SELECT count(DISTINCT model) FROM model_concepts(run))) AS k),
         li AS (SELECT layer, min(layer_index) AS layer_index FROM main.layers WHERE run_id = run GROUP BY layer)
    SELECT cap.layer, cap.concept_id, any_value(concept) AS concept, any_value(category) AS category,
           any_value(subcategory) AS subcategory,
           CASE WHEN count(DISTINCT cap.model) = any_value(nm.k) THEN 'shared'
                WHEN count(DISTINCT cap.model) = 1 THEN 'unique' ELSE 'partial' END AS status,
           list(cap.model ORDER BY coalesce(list_position(models, cap.model), 0), cap.model) AS present_in
    FROM cap CROSS JOIN nm LEFT JOIN li ON li.layer = cap.layer
    GROUP BY cap.layer, cap.concept_id
    ORDER BY coalesce(list_position(layers, cap.layer), 0), any_value(li.layer_index) NULLS LAST, cap.layer, cap.concept_id""",
    "missed_concepts": f"""
CREATE OR REPLACE MACRO missed_concepts(run, model_name, layers := NULL, statistic := 'mean_top1', combine := 'own',
                                        value := NULL, op := '>=', filter_level := NULL, filter_name := NULL,
                                        include_constant := false, dedup := 'forward', models := NULL) AS TABLE
    WITH cap AS (SELECT concept_id FROM captured_concepts(run,
                     models := list_distinct(list_prepend(model_name, coalesce(models, []::VARCHAR[]))),
                     layers := layers, statistic := statistic, combine := combine, value := value, op := op,
                     include_constant := include_constant)
                 WHERE model = model_name),
         learned AS (SELECT DISTINCT concept_id FROM cap),
         mc AS (SELECT * FROM model_concepts(run) WHERE model = model_name),
         lt AS (SELECT mc.concept AS l, normalise_phrase(mc.concept) AS nl FROM mc JOIN learned USING (concept_id)
                WHERE normalise_phrase(mc.concept) <> ''),
         univ AS (SELECT * FROM mc WHERE {_FILTER.format(a='mc')}),
         miss AS (SELECT univ.concept_id, normalise_phrase(univ.concept) AS nc FROM univ
                  WHERE univ.concept_id NOT IN (SELECT concept_id FROM learned)),
         ov AS (SELECT m.concept_id,
                       arg_min(lt.l, (CASE WHEN m.nc = lt.nl THEN 0 ELSE 1 END, length(lt.l), lt.l)) AS overlap_with
                FROM miss m JOIN lt ON dedup <> 'none' AND m.nc <> ''
                     AND (m.nc = lt.nl OR contains(' ' || lt.nl || ' ', ' ' || m.nc || ' ')
                          OR (dedup = 'both' AND contains(' ' || m.nc || ' ', ' ' || lt.nl || ' ')))
                GROUP BY m.concept_id)
    SELECT model_name AS model, univ.concept_id, univ.concept, univ.category, univ.subcategory, univ.domain,
           CASE WHEN univ.concept_id IN (SELECT concept_id FROM learned) THEN 'learned'
                WHEN ov.concept_id IS NOT NULL THEN 'missed_overlap' ELSE 'missed' END AS status,
           ov.overlap_with
    FROM univ LEFT JOIN ov ON ov.concept_id = univ.concept_id
    ORDER BY univ.concept_id""",
    "neuron_profile": """
CREATE OR REPLACE MACRO neuron_profile(run, model_name, layer_name, unit_idx, top := 5) AS TABLE
    SELECT l.rank, l.concept_id, l.concept, l.score, mc.category, mc.subcategory, mc.domain
    FROM main.neuron_labels l
    LEFT JOIN model_concepts(run) mc ON mc.model = l.model AND mc.concept_id = l.concept_id
    WHERE l.run_id = run AND l.model = model_name AND l.layer = layer_name AND l.unit = unit_idx AND l.rank <= top
    ORDER BY l.rank""",
    "neuron_profile_images": """
CREATE OR REPLACE MACRO neuron_profile_images(run, model_name, layer_name, unit_idx, top := 5) AS TABLE
    SELECT rank, image_idx, activation FROM main.top_images
    WHERE run_id = run AND model = model_name AND layer = layer_name AND unit = unit_idx AND rank <= top
    ORDER BY rank""",
    "keyword_neurons": """
CREATE OR REPLACE MACRO keyword_neurons(run, models := NULL, layers := NULL, top := 5, min_share := 0.6,
                                        stopwords := {stop}) AS TABLE
    WITH lab AS (SELECT model, layer, unit, rank, concept FROM main.neuron_labels
                 WHERE run_id = run AND rank <= top
                   AND (models IS NULL OR list_contains(models, model))
                   AND (layers IS NULL OR list_contains(layers, layer))),
         nl AS (SELECT model, layer, unit, count(*) AS n_labels, list(concept ORDER BY rank) AS labels
                FROM lab GROUP BY model, layer, unit),
         w AS (SELECT model, layer, unit, rank, unnest(string_split_regex(lower(concept), '[^a-z0-9]+')) AS word FROM lab),
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
             li.layer_index NULLS LAST, b.layer, b.unit""".replace("{stop}", "[" + ", ".join(_sql_str(w) for w in DEFAULT_STOPWORDS) + "]"),
}


def install(con: Any) -> None:
    """Create (or replace) every analysis macro on a DuckDB connection whose schema exists."""
    for ddl in MACROS.values():
        con.execute(ddl)
