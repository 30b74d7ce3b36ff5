"""The `dissect-study` command line.

Commands are thin: each parses options, calls one library function and turns
its outcome into output and an exit status (0 ok, 1 the input has errors, 2
usage, 130 interrupted).  Heavy imports (torch, transformers, weasyprint) happen
inside the commands so `check`, `fmt` and `--help` stay fast.

Output and messages are kept apart: what a command produces (check verdicts,
query rows, the run summary, report paths) is echoed to stdout; what the library
says while it works goes through `logging` to stderr, at INFO by default, WARNING
with -q, DEBUG with -v.  A `DissectStudyError` is caught in one place
(`_Group.invoke`) and printed as one paragraph; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dissect_study import __version__
from dissect_study.errors import DissectStudyError

#: `Context.meta` is shared by a group's context and its command's: keys set while a
#: command parses or runs are seen by the group's error handler.
_QUIET = "dissect_study.quiet"
_VERBOSE = "dissect_study.verbose"
_NOTE = "dissect_study.error_note"  # a sentence added to an error or interrupt (what the failure left behind)

#: filesystem errors that name a path: the user's environment (a missing folder, no permission), not a bug
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class _LineFormatter(logging.Formatter):
    """Plain lines: INFO as it is, anything else prefixed by its level ('warning: ...')."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


class _StderrHandler(logging.Handler):
    """Writes each record with `click.echo(err=True)`.

    Why not a StreamHandler: it would hold the `sys.stderr` of the moment it was made,
    while click's test runner and redirections swap the stream between invocations.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 -- logging's contract: report, never raise
            self.handleError(record)


@contextmanager
def _logging_to_stderr(level: int) -> Iterator[None]:
    """Send the `dissect_study` loggers to stderr at `level` for one command, then restore them.

    Only our package's loggers: third-party libraries keep their own defaults (their
    warnings still reach stderr through logging's last-resort handler).
    """
    pkg = logging.getLogger("dissect_study")
    handler = _StderrHandler()
    handler.setFormatter(_LineFormatter("%(message)s"))
    old_level = pkg.level
    pkg.addHandler(handler)
    pkg.setLevel(level)
    try:
        yield
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(old_level)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"dissect_study.{param.name}"] = value
    return value


class _Command(click.Command):
    """A command with -q/--quiet and -v/--verbose, run under the logging they choose."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["-q", "--quiet"],
                is_flag=True,
                expose_value=False,
                callback=_remember,
                help="Warnings and errors only: no progress bars or step summaries.",
            )
        )
        self.params.append(
            click.Option(
                ["-v", "--verbose"],
                is_flag=True,
                expose_value=False,
                callback=_remember,
                help="Also debug messages (and the traceback of an error).",
            )
        )

    def invoke(self, ctx: click.Context) -> Any:
        quiet, verbose = ctx.meta.get(_QUIET, False), ctx.meta.get(_VERBOSE, False)
        if quiet and verbose:
            raise click.UsageError("-q/--quiet and -v/--verbose exclude each other", ctx)
        level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
        with _logging_to_stderr(level):
            return super().invoke(ctx)


class _Group(click.Group):
    """The one place user errors become messages and exit statuses."""

    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            note = ctx.meta.get(_NOTE)
            click.echo("\ninterrupted" + (f": {note}" if note else ""), err=True)
            ctx.exit(130)
        except DissectStudyError as e:
            _fail(ctx, e.user_message(), e.exit_code)
        except _PATH_ERRORS as e:
            if e.filename is None:
                raise  # no path named: nothing tells the user what to fix, so it is a bug
            _fail(ctx, f"error: {e.filename}: {e.strerror or e}", 1)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    """Print one paragraph (plus the command's note) to stderr and exit; -v adds the traceback first."""
    if ctx.meta.get(_VERBOSE):
        click.echo(traceback.format_exc().rstrip(), err=True)
    note = ctx.meta.get(_NOTE)
    click.echo(message.rstrip() + (f"\n  note: {note}" if note else ""), err=True)
    ctx.exit(code)


EXAMPLES = """
\b
Examples:
  dissect-study check studies/*.study          validate studies (no models loaded)
  dissect-study run studies/demo.study         run the embedded demo end to end
  dissect-study run rq1.study --db rq1.duckdb --device cuda --batch-size 8
  dissect-study query "SELECT model, layer, tau FROM layer_thresholds ORDER BY model, layer_index"
  dissect-study report --out out/rq1 --format html,pdf
  dissect-study inspect b5-model-best-epoch-7.tar
"""


@click.group(cls=_Group, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dissect-study")
def cli() -> None:
    """Concept-based dissection of mammography vision models, declared in .study files."""


# ------------------------------------------------------------------------- check / fmt


def _check_paths(paths: tuple[str, ...], quiet_ok: bool = False) -> tuple[int, list]:
    from dissect_study.dsl import check_file, render

    n_errors = 0
    checked = []
    for p in paths:
        study, diags = check_file(p)
        source = _read_quietly(p)
        if diags:
            click.echo(render(diags, source), err=True)
        errs = [d for d in diags if d.severity == "error"]
        n_errors += len(errs)
        if not errs and not quiet_ok:
            warns = len(diags) - len(errs)
            click.echo(f"{p}: ok" + (f" ({warns} warning{'s' * (warns != 1)})" if warns else ""))
        checked.append(study)
    return n_errors, checked


def _read_quietly(path: str) -> str:
    """The study's text for rendering diagnostics; "" where it cannot be read (a FIFO, /dev/zero, ...)."""
    from dissect_study.dsl import StudyError, read_study_text

    try:
        return read_study_text(path)
    except StudyError:
        return ""


@cli.command()
@click.argument("files", nargs=-1, required=True)
def check(files: tuple[str, ...]) -> None:
    """Validate study FILES without loading any model or data.

    Exit status: 0 clean (warnings allowed), 1 errors found, 2 usage error.
    """
    n_errors, _ = _check_paths(files)
    if n_errors:
        click.echo(f"{n_errors} error{'s' * (n_errors != 1)} found", err=True)
        sys.exit(1)


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option(
    "--check", "check_only", is_flag=True, help="Exit 1 if a file is not canonically formatted; write nothing."
)
@click.option("--stdout", is_flag=True, help="Print the formatted study instead of rewriting the file.")
def fmt(files: tuple[str, ...], check_only: bool, stdout: bool) -> None:
    """Rewrite study FILES in canonical formatting (idempotent)."""
    from dissect_study.dsl import StudyError, format_study, parse_file, render

    status = 0
    for p in files:
        try:
            study = parse_file(p)
        except StudyError as e:
            click.echo(render(e.diagnostics, _read_quietly(p)), err=True)
            status = 1
            continue
        text = format_study(study)
        original = _read_quietly(p)
        if stdout:
            click.echo(text, nl=False)
        elif check_only:
            if text != original:
                click.echo(f"{p}: would reformat")
                status = 1
        elif text != original:
            from dissect_study.engine.atomic import write_bytes_atomic

            write_bytes_atomic(Path(p), text.encode("utf-8"))  # an interrupted fmt never truncates a study
            click.echo(f"{p}: reformatted")
    sys.exit(status)


# ------------------------------------------------------------------------- run


@cli.command()
@click.argument("file")
@click.option(
    "--db", type=click.Path(dir_okay=False), help="Results database (default: results.duckdb beside the study)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Cache for embeddings, activations and built demo models (default: $DISSECT_STUDY_CACHE or ~/.cache/dissect-study).",
)
@click.option("--no-cache", is_flag=True, help="Recompute everything; read and write no cache.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Override the study's device.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override images per forward pass.")
@click.option(
    "--strict",
    is_flag=True,
    help="Fail on an unreadable probe image, or an optional step that cannot run, instead of skipping it.",
)
@click.option(
    "--no-calibration",
    is_flag=True,
    help="Skip the calibration bench that runs automatically on probes with ground truth (phantoms).",
)
@click.option("--no-report", is_flag=True, help="Skip the study's report statements.")
@click.option("--dry-run", is_flag=True, help="Check the study and print the plan; compute nothing.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="CPU threads for torch (default: torch's choice). "
    "On a loaded shared machine 1 can beat 2: parallel ops wait for descheduled threads.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the model passes run: this process, or shards on a Ray cluster "
    "(needs pip install 'dissect-study[ray]'; scoring and the store stay here).",
)
@click.option(
    "--address",
    metavar="ADDRESS",
    help="The Ray cluster for --executor ray, e.g. 10.0.0.5:6379 from `ray start --head` "
    "(default: $RAY_ADDRESS, else a local cluster).",
)
def run(
    file: str,
    db: str | None,
    cache_dir: str | None,
    no_cache: bool,
    device: str | None,
    batch_size: int | None,
    strict: bool,
    no_calibration: bool,
    no_report: bool,
    dry_run: bool,
    threads: int | None,
    executor: str = "local",
    address: str | None = None,
) -> None:
    """Execute the study FILE: dissect, analyse, store in DuckDB, render reports."""
    ctx = click.get_current_context()
    quiet = bool(ctx.meta.get(_QUIET))
    n_errors, studies = _check_paths((file,), quiet_ok=True)
    if n_errors or studies[0] is None:
        sys.exit(1)
    study = studies[0]
    from dissect_study.engine.plan.steps import build_plan

    if dry_run:
        click.echo(build_plan(study).describe())
        return
    from dissect_study.engine.run import RunOptions, run_study

    if threads:
        import torch

        torch.set_num_threads(threads)
    if quiet:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass

    opts = RunOptions(
        db=Path(db) if db else None,
        cache_dir=Path(cache_dir) if cache_dir else None,
        use_cache=not no_cache,
        device=device,
        batch_size=batch_size,
        quiet=quiet,
        strict=strict,
        reports=not no_report,
        calibration=not no_calibration,
        executor=executor,
        address=address,
    )
    ctx.meta[_NOTE] = "earlier runs are intact; a run is stored only once computed (cached work is kept)"

    def stored(run_id: str, db_path: Path) -> None:  # from here on, a failure can only be the report's
        ctx.meta[_NOTE] = (
            f"run {run_id} is stored in {db_path}; its report was not written or changed -- "
            f"render it with: dissect-study report --db {db_path} --run {run_id}"
        )

    opts.on_stored = stored
    result = run_study(study, opts)
    click.echo(f"run {result.run_id} finished in {result.seconds:.1f}s -> {result.db}")
    for p in result.reports:
        click.echo(f"report: {p}")
    if result.warnings:
        click.echo(
            f"{len(result.warnings)} warning(s); see: dissect-study query \"SELECT * FROM warnings WHERE run_id = '{result.run_id}'\" --db {result.db}"
        )


# ------------------------------------------------------------------------- query

_DB_HELP = (
    "Results database (default: ./results.duckdb, else the most recently written results.duckdb "
    "up to 3 folders below, e.g. studies/results.duckdb after `make demo`; named on stderr)."
)


def _results_db(db: str | None) -> str:
    """The --db given, or the one `locate_results_db` finds from here (said on stderr)."""
    if db:
        return db
    from dissect_study.engine.store.locate import describe, locate_results_db

    located = locate_results_db(".")
    if located.how != "cwd":
        logging.getLogger(__name__).info(describe(located))
    return str(located.path)


def _ellipsis() -> str:
    """'…' where stdout can print it, '...' elsewhere."""
    try:
        "…".encode(sys.stdout.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return "..."
    return "…"


@cli.command()
@click.argument("sql")
@click.option("--db", type=click.Path(dir_okay=False), help=_DB_HELP)
@click.option("--format", "fmt_", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option(
    "--max-width",
    type=click.IntRange(min=0),
    help="Widest line of a table; long cells are cut with an ellipsis (default: the terminal's width, "
    "120 when not a terminal; 0: no limit).",
)
def query(sql: str, db: str | None, fmt_: str, max_width: int | None) -> None:
    """Run read-only SQL against a results database.

    \b
    Tables: runs, models, probes, images, concepts, dissections, layers,
    similarities, neurons, neuron_labels, top_images, sanity, analyses,
    captured_concepts, category_counts, top_categories, concept_changes,
    missed_concepts, keyword_neurons, calibration, warnings, reviews (see README).
    """
    import duckdb

    from dissect_study.engine.store.database import StoreError, check_read_only_sql, connect

    con = connect(_results_db(db), read_only=True)
    try:
        # no file access from a query: `query` must not write (COPY ... TO) or read outside the database
        con.execute("SET enable_external_access = false")
        rel = con.execute(check_read_only_sql(sql, con))
        if rel.description is None:
            return
        df = rel.df()
    except duckdb.Error as e:
        raise StoreError(str(e)) from None
    finally:
        con.close()
    if fmt_ == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt_ == "json":
        click.echo(df.to_json(orient="records", date_format="iso", default_handler=str))
    elif not len(df):
        click.echo("(no rows)")
    else:
        import shutil

        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        from dissect_study.engine.text_table import render_table

        width = shutil.get_terminal_size((120, 24)).columns if max_width is None else max_width
        numeric = [is_numeric_dtype(df[c]) and not is_bool_dtype(df[c]) for c in df.columns]
        table = render_table(
            [str(c) for c in df.columns],
            df.itertuples(index=False, name=None),
            numeric,
            max_width=width,
            mark=_ellipsis(),
        )
        click.echo(table.text)
        if table.n_elided or table.n_hidden_columns:
            hidden = f", {table.n_hidden_columns} column(s) left out" if table.n_hidden_columns else ""
            logging.getLogger(__name__).info(
                f"({table.n_elided} cell(s) cut{hidden} to fit {width} characters; "
                "--max-width 0 or --format csv shows everything)"
            )


# ------------------------------------------------------------------------- report


@cli.command()
@click.option("--db", type=click.Path(dir_okay=False), help=_DB_HELP)
@click.option("--run", "run_id", help="Run id (default: the latest run).")
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False))
@click.option("--format", "formats", default="html,pdf", show_default=True, help="Comma-separated: html, pdf.")
@click.option("--sections", help="Comma-separated sections (default: every section with data).")
def report(db: str | None, run_id: str | None, out: str, formats: str, sections: str | None) -> None:
    """Render the report of a stored run to HTML and/or PDF."""
    from dissect_study.dsl.vocabulary import REPORT_FORMATS, REPORT_SECTIONS

    fmts = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in REPORT_FORMATS]
    if bad:
        raise click.UsageError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(REPORT_FORMATS)}")
    secs = [s.strip() for s in sections.split(",")] if sections else None
    if secs:
        bad = [s for s in secs if s not in REPORT_SECTIONS]
        if bad:
            raise click.UsageError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(REPORT_SECTIONS)}")
    from dissect_study.engine.report import write_report

    paths = write_report(_results_db(db), out, run_id=run_id, formats=fmts, sections=secs)
    for p in paths:
        click.echo(f"report: {p}")


# ------------------------------------------------------------------------- init


@cli.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option(
    "--images", type=click.Path(file_okay=False), help="Folder of probe images (with --csv: the root of its paths)."
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    help="CSV manifest: one row per image, a path column and attribute columns.",
)
@click.option("--path-column", default="path", show_default=True, help="The CSV's image-path column.")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="Mammo-CLIP checkpoint (default: $MAMMOCLIP_CHECKPOINT at run time).",
)
@click.option(
    "--text", type=click.Path(file_okay=False), help="Bio_ClinicalBERT folder (default: $BIOCLINICALBERT at run time)."
)
@click.option(
    "--classifier",
    "classifiers",
    multiple=True,
    metavar="TASK=CHECKPOINT",
    help="A fine-tuned classifier to dissect too, e.g. calcification=c4.pth (repeatable).",
)
@click.option("--title", help="The study's title.")
@click.option("--force", is_flag=True, help="Overwrite STUDY_FILE if it exists.")
def init(
    study_file: str,
    images: str | None,
    csv_path: str | None,
    path_column: str,
    checkpoint: str | None,
    text: str | None,
    classifiers: tuple[str, ...],
    title: str | None,
    force: bool,
) -> None:
    """Write a commented study skeleton for your images and checkpoints, and check it."""
    from dissect_study.engine.init import SkeletonSpec, write_skeleton

    pairs = []
    for c in classifiers:
        task, sep, path = c.partition("=")
        if not sep or not task or not path:
            raise click.BadParameter(
                f"{c!r}: write TASK=CHECKPOINT, e.g. calcification=c4.pth", param_hint="--classifier"
            )
        pairs.append((task.strip(), path.strip()))
    spec = SkeletonSpec(
        Path(study_file),
        images=images,
        csv=csv_path,
        path_column=path_column,
        checkpoint=checkpoint,
        text=text,
        classifiers=pairs,
        title=title,
    )
    write_skeleton(spec, force=force)
    n_errors, _ = _check_paths((study_file,))
    if n_errors:  # a skeleton that does not check is a bug of `init`; say so rather than hide it
        click.echo(f"{study_file}: the skeleton has errors; please report this", err=True)
        sys.exit(1)
    click.echo(f"next: dissect-study run {study_file} --dry-run")


# ------------------------------------------------------------------------- inspect


@cli.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--trust-checkpoint", is_flag=True, help="Allow unpickling beyond tensors and allow-listed config classes."
)
def inspect(path: str, as_json: bool, trust_checkpoint: bool) -> None:
    """Recognise a checkpoint or model folder and list its hookable layers."""
    from dissect_study.engine.models.inspect import format_inspect, inspect_path

    info = inspect_path(path, trust_checkpoint=trust_checkpoint)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        click.echo(format_inspect(info))


# ------------------------------------------------------------------------- review


class _CommandGroup(_Command, click.Group):
    """A group of subcommands that, like every command, takes -q/-v (and so do its subcommands)."""

    command_class = _Command


@cli.group(cls=_CommandGroup)
def review() -> None:
    """Radiologist review packets: bring filled answers back into the results database."""


@review.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--db", type=click.Path(dir_okay=False), help=_DB_HELP)
@click.option("--run", "run_id", help="Refuse files that are not packets of this run.")
def review_import(files: tuple[str, ...], db: str | None, run_id: str | None) -> None:
    """Import filled report PDFs and exported JSON answers into the `reviews` table.

    All files or none: a file of another run, with unknown neurons or edited
    field names is refused and nothing is imported.  A file imported before
    (same content) is skipped.  `dissect-study report` then shows the agreement.
    """
    from dissect_study.engine.review.importer import import_reviews

    res = import_reviews(_results_db(db), list(files), run=run_id)
    click.echo(
        f"imported {res.rows} answer(s) from {len(res.imported)} file(s)"
        + (f"; {len(res.skipped)} file(s) imported before, skipped" if res.skipped else "")
    )


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        cli.main(prog_name="dissect-study", standalone_mode=True)
    except BrokenPipeError:  # `dissect-study query ... | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
