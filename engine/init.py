"""`dissect-study init`: a commented study skeleton from the paths a user has.

A newcomer has a folder of mammograms (perhaps with a CSV of attributes), a
Mammo-CLIP checkpoint, a Bio_ClinicalBERT folder and perhaps fine-tuned
classifiers; the first study is the hardest file to write.  The skeleton names
those paths (relative to the study's folder, as the engine resolves them), picks
the paper's defaults, and explains each statement in a comment, so editing it
teaches the language.  It is plain text built here and checked by the caller;
nothing is imported from the engine and no file is opened except the CSV's
header row, to catch a missing path column now rather than at run time.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dissect_study.dsl.vocabulary import SOURCES
from dissect_study.errors import DissectStudyError

#: the tasks a `classifier(...)` target accepts, from the language's vocabulary
_TASK = SOURCES["target"]["classifier"].param("task")
CLASSIFIER_TASKS: tuple[str, ...] = (_TASK.choices or ()) if _TASK is not None else ()


class InitError(DissectStudyError):
    """The paths or options given to `init` cannot make a study."""


@dataclass
class SkeletonSpec:
    """What `init` was told; paths as the user typed them."""

    study_path: Path
    images: str | None = None
    csv: str | None = None
    path_column: str = "path"
    checkpoint: str | None = None
    text: str | None = None
    classifiers: list[tuple[str, str]] = field(default_factory=list)  # (task, checkpoint)
    title: str | None = None


def _literal(value: str) -> str:
    """A study string literal: quotes and backslashes escaped; `${` would start an interpolation."""
    if "${" in value:
        raise InitError(f"{value!r}: a path containing '${{' cannot be written into a study string")
    if "\n" in value:
        raise InitError(f"{value!r}: a path with a line break cannot be written into a study string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _relative(path: str, study_dir: Path) -> str:
    """`path` relative to the study's folder if it is at most one level up (the project moves as one), else absolute."""
    target = Path(path).expanduser().absolute()
    try:
        rel = Path(os.path.relpath(target, study_dir.absolute())).as_posix()
    except ValueError:  # another drive on Windows
        return target.as_posix()
    return target.as_posix() if rel.startswith("../..") else rel


def _csv_columns(path: Path) -> list[str] | None:
    """The header of the probe CSV, or None when it cannot be read yet (it may not exist)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return [h.strip() for h in header] if header else None


def _classifier_targets(classifiers: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(target name, task, checkpoint) with unique names C_<task>, C_<task>_2, ..."""
    out: list[tuple[str, str, str]] = []
    used: set[str] = set()
    for task, ckpt in classifiers:
        if task not in CLASSIFIER_TASKS:
            raise InitError(f"classifier task {task!r} is not one of {', '.join(CLASSIFIER_TASKS)}")
        name, n = f"C_{task}", 2
        while name in used:
            name, n = f"C_{task}_{n}", n + 1
        used.add(name)
        out.append((name, task, ckpt))
    return out


def _probe_lines(spec: SkeletonSpec, study_dir: Path) -> list[str]:
    if spec.csv:
        csv_rel = _relative(spec.csv, study_dir)
        columns = _csv_columns(Path(spec.csv).expanduser())
        if columns is not None and spec.path_column not in columns:
            raise InitError(
                f"{spec.csv} has no column {spec.path_column!r} (columns: {', '.join(columns) or 'none'}); "
                "name the image-path column with --path-column"
            )
        args = [f"path={_literal(csv_rel)}"]
        if spec.path_column != "path":
            args.append(f"path_column={_literal(spec.path_column)}")
        if spec.images:
            args.append(f"root={_literal(_relative(spec.images, study_dir))}")
        known = [c for c in (columns or []) if c != spec.path_column]
        found = f"# Columns found in the CSV: {', '.join(known)}." if known else "# (The CSV could not be read yet.)"
        return [
            "# The probe: the images every neuron is scored on, one CSV row per image.  Image paths are",
            "# relative to `root` (default: the CSV's folder).  Columns named density (A-D or 1-4), birads,",
            "# mass, calcification (yes/no), view and laterality feed the dissector's zero-shot sanity check",
            "# and `sample ... balanced by`; other columns are stored as image attributes.",
            found,
            "# While you try things out, dissect a balanced subset first: end the line below with",
            "# `sample 200 balanced by density seed 0`.",
            f"probe images = csv({', '.join(args)})",
        ]
    return [
        "# The probe: the images every neuron is scored on -- every PNG/JPEG/TIFF below the folder,",
        "# in sorted path order.  A CSV manifest with attribute columns (density, mass, calcification,",
        "# ...) adds the zero-shot sanity check: `dissect-study init --csv probe.csv --images DIR`.",
        "# While you try things out, dissect a subset first: end the line below with `sample 200 seed 0`.",
        f"probe images = folder({_literal(_relative(spec.images or '.', study_dir))})",
    ]


def study_skeleton(spec: SkeletonSpec) -> str:
    """The commented study text for `spec` (not yet checked; the caller checks it)."""
    if not spec.images and not spec.csv:
        raise InitError("say where the images are: --images FOLDER, --csv MANIFEST.csv, or both")
    study_dir = spec.study_path.parent
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.study_path.stem) or "study"
    title = spec.title or f"{spec.study_path.stem}: Mammo-CLIP Dissect on my images"
    ckpt = _literal(_relative(spec.checkpoint, study_dir)) if spec.checkpoint else 'env("MAMMOCLIP_CHECKPOINT")'
    text = _literal(_relative(spec.text, study_dir)) if spec.text else 'env("BIOCLINICALBERT")'
    classifiers = _classifier_targets(spec.classifiers)
    names = ["M", *(n for n, _, _ in classifiers)]
    lines = [
        f"# {spec.study_path.name}: written by `dissect-study init`; edit freely.",
        f"#   dissect-study check {spec.study_path.name}            validate (no model is loaded)",
        f"#   dissect-study run {spec.study_path.name} --dry-run    the plan: passes, layers, analyses",
        f"#   dissect-study run {spec.study_path.name}              compute; results in results.duckdb here",
        "# Relative paths are resolved against this file's folder.  The language: docs/LANGUAGE.md.",
        f"study {_literal(title)}",
        "",
        "# The concept set: the text labels every neuron is scored against -- 767 mammography and",
        '# everyday concepts shipped with dissect-study.  Your own: csv("my_concepts.csv") or txt(...).',
        'concepts mammo_set = shipped("mammo_v1")',
        "",
        *_probe_lines(spec, study_dir),
        "",
        "# The dissector: Mammo-CLIP's image and text towers (B5 or B2, recognised from the file;",
        "# `dissect-study inspect CHECKPOINT` shows what it is).  `text` is the local Bio_ClinicalBERT",
        "# folder (tokenizer and config; the weights come from the checkpoint).",
    ]
    if not spec.checkpoint or not spec.text:
        lines.append("# env(...) reads a path from the environment at run time (export it before `run`).")
    lines += [
        f"dissector mammo = mammo_clip(checkpoint={ckpt}, text={text})",
        "",
        "# Targets: the models whose neurons get labels.  M is Mammo-CLIP's own image tower.",
    ]
    if not classifiers:
        lines.append(
            '# A fine-tuned classifier: target C = classifier(checkpoint="c.pth", base=mammo, task="calcification")'
        )
    lines.append("target M = image_tower(mammo)")
    for name, task, path in classifiers:
        lines.append(
            f"target {name} = classifier(checkpoint={_literal(_relative(path, study_dir))}, base=mammo, task={_literal(task)})"
        )
    lines += [
        "",
        "# What to compute: every neuron of these layers (early/middle/last are the paper's Blocks 1/4/7;",
        "# `all` or `_blocks.0-38` for every block) labelled with SoftWPMI, the paper's default.",
        "# On a CPU, Mammo-CLIP's B5 takes seconds per image: start with a small probe.",
        f"dissect {', '.join(names)}",
        "    at layers early, middle, last",
        "    by mammo on images with concepts mammo_set",
        "    using soft_wpmi(top_k=100, lambda=1)",
        "    batch 4",
        "",
        "# A neuron captures its top-1 concept when its score reaches the layer's threshold tau: here",
        "# the largest of the compared models' mean top-1 scores (the paper's rule).",
        "threshold max mean_top1 >= count concepts",
        "",
        "# The questions.  Each becomes a table in results.duckdb and a section of the report.",
        f"thresholds {', '.join(names)}",
        "learned M threshold own mean_top1 >=",
    ]
    if classifiers:
        first = classifiers[0]
        lines += [
            f"compare {' vs '.join(names)} at layers early, middle, last",
            f"gained {first[0]} over M at layer last",
        ]
    lines += [
        "show neuron M.last[0] top 5",
        f"keywords {', '.join(names)} at layer last top 5",
        "",
        f'report "out/{stem}" as html, pdf',
        "",
    ]
    return "\n".join(lines)


def write_skeleton(spec: SkeletonSpec, force: bool = False) -> str:
    """Write the skeleton to `spec.study_path` (never over an existing file unless `force`); return the text."""
    if spec.study_path.exists() and not force:
        raise InitError(f"{spec.study_path} exists; choose another name or pass --force to overwrite it")
    text = study_skeleton(spec)
    spec.study_path.parent.mkdir(parents=True, exist_ok=True)
    spec.study_path.write_text(text, encoding="utf-8")
    return text
