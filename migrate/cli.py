"""`migrate`: the command line. Each command is a thin wrapper over `migrate.pipeline`."""

from __future__ import annotations

import functools
import json
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import duckdb
import structlog
from rich.console import Console
from rich.table import Table

from migrate import pipeline, stopping
from migrate.config import Settings, load_settings
from migrate.errors import ConfigError, Interrupted, MigrateError
from migrate.logs import configure, log_format, redact, register_secret
from migrate.progress import ProgressDisplay
from migrate.report.plan_output import print_plan, write_plan
from migrate.report.run_report import (
    pipedrive_usage,
    print_listed,
    print_report,
    quarantine_line,
    write_json,
)
from migrate.report.undo_report import print_undo, write_undo
from migrate.report.verify import EXIT_MISMATCH, print_verify
from migrate.staging.store import MEMORY_LIMIT_ENV, Staging

EXIT_PARTIAL = 3
log = structlog.get_logger(__name__)


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="migrate.toml with a [migrate] table."),
        click.option("--state", type=click.Path(path_type=Path, dir_okay=False), help="DuckDB state file [env MIGRATE_STATE; ./migration.duckdb]."),
        click.option("--source", type=click.Path(path_type=Path, file_okay=False), help="Read an offline snapshot (one JSON Lines file per collection) instead of the API."),
        click.option("--pipedrive-url", "pipedrive_base_url", help="Pipedrive base URL [env PIPEDRIVE_BASE_URL], e.g. https://acme.pipedrive.com."),
        click.option("--pipedrive-token", "pipedrive_api_token", help="Pipedrive API token [env PIPEDRIVE_API_TOKEN]."),
        click.option("--customermates-url", "customermates_url", help="Customermates base URL [env CUSTOMERMATES_URL]."),
        click.option("--customermates-key", "customermates_api_key", help="Customermates API key of an Admin [env CUSTOMERMATES_API_KEY]."),
        click.option("--phone-region", help="Country for phone numbers without a country code, e.g. DE (default: from the Pipedrive users' locale)."),
        click.option(
            "--transform-workers", type=int,
            help="Processes that make target records beside the main one (default: one per core but one, at most 3, from 20,000 records; 0: none).",
        ),
        click.option("--mappings", type=click.Path(path_type=Path, file_okay=False), help="Directory with your own columns.yaml and field_types.yaml."),
        click.option("--ca-bundle", type=click.Path(path_type=Path, dir_okay=False), help="CA bundle for self-hosted TLS certificates."),
        click.option("--log-format", type=click.Choice(["console", "json"]), default="console", show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        configure(kwargs.pop("log_format"))
        config_file = kwargs.pop("config_file")
        setting_names = set(Settings.model_fields)
        flags = {k: kwargs.pop(k) for k in list(kwargs) if k in setting_names}
        state: Path | None = None
        try:
            with _stop_signals():
                settings = load_settings(flags, config_file)
                state = settings.state
                register_secret(settings.pipedrive_api_token)
                register_secret(settings.customermates_api_key)
                return fn(settings=settings, **kwargs)
        except MigrateError as exc:
            _fail(str(exc), exc.exit_code)
        except duckdb.OutOfMemoryException as exc:
            _fail(
                f"the state file {state} needs more memory than DuckDB was given: {str(exc).splitlines()[0]} "
                f"Set {MEMORY_LIMIT_ENV} to more megabytes (e.g. {MEMORY_LIMIT_ENV}=2000) and run again: "
                "what was committed before is kept and the run resumes from there",
                1,
            )
        except (duckdb.OperationalError, duckdb.FatalException, duckdb.PermissionException) as exc:
            _fail(
                f"cannot write the state file {state}: {exc}. Free disk space (or fix its permissions) and run again: "
                "what was committed before is kept and the run resumes from there",
                1,
            )
        except OSError as exc:  # a report or list file: the disk full, a directory gone
            if not exc.filename:
                _fail(f"{type(exc).__name__}: {exc}", 1)
            _fail(
                f"{exc.filename}: {exc.strerror or exc}. What the command did before is recorded in the state "
                "file (see `migrate status`); fix this and run it again to write its reports",
                1,
            )
        except KeyboardInterrupt:
            interrupted = Interrupted("Ctrl-C", signal.SIGINT)
            _fail(str(interrupted), interrupted.exit_code)
        except Interrupted as exc:
            _fail(str(exc), exc.exit_code)

    return wrapper


def _report_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Make the report directory and try a file in it before the command does any work, so that a
    path that cannot take the reports is a usage error up front, not a traceback after the run."""
    if value is None:
        return None
    try:
        value.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=value, prefix=".migrate-write-test-"):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write reports to {value}: {exc.strerror or exc}", ctx=ctx, param=param) from None
    return value


def report_dir_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--report-dir", type=click.Path(path_type=Path, file_okay=False), callback=_report_dir, expose_value=True, help=help_text,
    )


def _fail(message: str, exit_code: int) -> NoReturn:
    if log_format() == "json":  # unattended: a log that collects both streams gets one JSON line an event
        log.error("command.failed", error=redact(message), exit_code=exit_code)
    else:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {redact(message)}", highlight=False)
    sys.exit(exit_code)


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM stops the command gracefully (`migrate.stopping`): the batch or page in flight
    may finish and be recorded for a few seconds, then `Interrupted` is raised where the command
    is, so the same rollbacks and `finally` blocks run as for any error, and it ends with one
    line instead of a silent death."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if stopping.requested():
            signal.signal(signum, signal.SIG_IGN)  # a third signal must not cut the cleanup short
            raise Interrupted(name, signum)
        stopping.request(name, signum)  # the batch in flight may finish and be recorded
        signal.setitimer(signal.ITIMER_REAL, stopping.GRACE_SECONDS)

    def too_slow(signum: int, frame: object) -> None:
        stopping.check()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    previous_alarm = signal.signal(signal.SIGALRM, too_slow)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.signal(signal.SIGALRM, previous_alarm)
        stopping.reset()


@click.group()
@click.version_option(package_name="pipedrive-to-customermates")
def cli() -> None:
    """Move a Pipedrive CRM into Customermates: extract, transform, load."""


@cli.command()
@common_options
@click.option("--dry-run", is_flag=True, help="Extract and transform, then print what would be created; write nothing to Customermates.")
@click.option("--use-staged", is_flag=True, help="Skip extraction and migrate what `migrate extract` staged.")
@report_dir_option("Write report.json, issues.csv (every value not carried exactly: record, field, reason) and quarantine.csv (every record Customermates rejected) here.")
@click.option(
    "--batch-size", type=click.IntRange(1, 100), default=pipeline.DEFAULT_MAX_BATCH, show_default=True,
    help="Largest batch per write request (the server takes up to 100); sizes adapt below it to the server's latency.",
)
@click.option(
    "--on-target-deleted", type=click.Choice(["report", "recreate"]), default="report", show_default=True,
    help="What to do with migrated records a user has since deleted in Customermates.",
)
@click.option(
    "--on-conflict", type=click.Choice(["skip", "source-wins", "target-wins"]), default="skip", show_default=True,
    help="Records changed in Pipedrive AND edited in Customermates since the last run: leave them (reported), "
    "overwrite them, or keep Customermates' version for good.",
)
@click.option("--plan", "plan_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), help="Apply this plan.json only if neither side changed since.")
def run(
    settings: Settings, dry_run: bool, use_staged: bool, report_dir: Path | None, batch_size: int, on_target_deleted: str,
    on_conflict: str, plan_file: Path | None,
) -> None:
    """Migrate everything: extract → transform → load, with a report.

    Safe to run again: records already migrated are skipped when unchanged and updated
    when changed; a run that died is resumed."""
    if dry_run and plan_file is not None:
        raise ConfigError("--dry-run and --plan contradict each other: --plan applies a saved plan (checked first), "
                          "--dry-run writes nothing; drop one (`migrate plan` makes a new plan)")
    console = Console()
    with _report_if_stopped(settings, report_dir), ProgressDisplay(enabled=None if log_format() == "console" else False) as progress:
        report = pipeline.run_migration(
            settings, dry_run=dry_run, use_staged=use_staged, max_batch=batch_size, on_target_deleted=on_target_deleted,
            on_conflict=on_conflict, saved_plan=plan_file, progress=progress,
        )
    if report_dir:
        for key, path in pipeline.write_run_lists(settings, report["run_id"], report_dir).items():
            report[key]["file"] = str(path)
    written = write_json(report, report_dir) if report_dir else None
    if log_format() == "json":  # unattended: one line, as a sync's, where the tables were printed
        click.echo(json.dumps({
            "event": "run", "run_id": report["run_id"], "status": report["status"], "dry_run": report["dry_run"],
            "entities": _entity_counts(report), "warnings": report.get("warnings") or [], "report": str(written) if written else None,
        }, ensure_ascii=False))
    else:
        print_report(report, console)
        if written:
            console.print(f"Report: {written}")
    if report["status"] == "partial":
        sys.exit(EXIT_PARTIAL)


@cli.command()
@common_options
@click.option("--use-staged", is_flag=True, help="Skip extraction and plan from what `migrate extract` staged.")
@report_dir_option("Write plan.json, plan.md and plan.html here.")
@click.option(
    "--on-target-deleted", type=click.Choice(["report", "recreate"]), default="report", show_default=True,
    help="How records deleted in Customermates since they were migrated are planned.",
)
def plan(settings: Settings, use_staged: bool, report_dir: Path | None, on_target_deleted: str) -> None:
    """Show what `migrate run` would do to every record, field by field; write nothing.

    Without Customermates settings the plan is made against an empty target."""
    console = Console()
    report = pipeline.run_migration(settings, dry_run=True, use_staged=use_staged, on_target_deleted=on_target_deleted)
    with pipeline.plan_records(settings) as records:
        if log_format() != "json":
            print_plan(report["plan"], records, console)
        written = [str(path) for path in write_plan(report["plan"], records, report_dir)] if report_dir else []
    plan_made = report["plan"]
    if log_format() == "json":  # unattended: one line, where the tables were printed
        click.echo(json.dumps({
            "event": "plan", "run_id": report["run_id"], "summary": plan_made["summary"],
            "schema": {key: len(items) for key, items in plan_made["schema"].items()},
            "lossy": {rule: info["count"] for rule, info in plan_made["lossy"].items()}, "files": written,
        }, ensure_ascii=False))
    else:
        for path in written:
            console.print(f"Wrote {path}")


@cli.command()
@common_options
@click.option(
    "--deletes", type=click.Choice(["mark", "delete", "ignore"]), default="mark", show_default=True,
    help="Migrated records deleted in Pipedrive since: mark them (a 'Deleted in Pipedrive' date), delete them, or leave them.",
)
@click.option("--every", "interval", help="Run again and again, this long apart (e.g. 15m, 1h, 90s); SIGTERM or Ctrl-C stops it, as does a "
    "configuration error (exit 2), which no later sync would get past.")
@report_dir_option("Write each sync's report.json, issues.csv and quarantine.csv here.")
@click.option(
    "--on-conflict", type=click.Choice(["skip", "source-wins", "target-wins"]), default="skip", show_default=True,
    help="Records changed on both sides since the last run.",
)
@click.option(
    "--reconcile-every", type=click.IntRange(0), default=96, show_default=True,
    help="Every Nth sync reads both sides whole: every Pipedrive id (records that vanished without a trace) and every "
    "Customermates record (records deleted there); the others read only what changed (0: never).",
)
@click.option(
    "--on-target-deleted", type=click.Choice(["report", "recreate"]), default="report", show_default=True,
    help="Migrated records a user has since deleted in Customermates: found when their update is refused, or by a "
    "reconciling sync's whole read.",
)
def sync(
    settings: Settings, deletes: str, interval: str | None, report_dir: Path | None, on_conflict: str, reconcile_every: int,
    on_target_deleted: str,
) -> None:
    """Bring Customermates up to date with what changed in Pipedrive since the last run.

    Reads only what changed (Pipedrive's updated_since, from each collection's watermark minus
    five minutes), writes only what differs. Exit codes as for `run`; with --every a failed sync
    is logged and the next one runs on schedule, but a configuration error (exit 2: the state file
    belongs to another company, say) ends the loop, since no later sync could get past it."""
    seconds = _duration(interval) if interval else None
    while True:
        started = time.monotonic()
        try:
            with _report_if_stopped(settings, report_dir):
                report = pipeline.run_migration(
                    settings, incremental=True, deletes=deletes, on_conflict=on_conflict, reconcile_every=reconcile_every,
                    on_target_deleted=on_target_deleted,
                )
        except MigrateError as exc:
            if seconds is None or isinstance(exc, ConfigError):
                raise
            log.error("sync.failed", error=redact(str(exc)), exit_code=exc.exit_code)
        else:
            written = None
            if report_dir:
                for key, path in pipeline.write_run_lists(settings, report["run_id"], report_dir).items():
                    report[key]["file"] = str(path)
                written = write_json(report, report_dir)
            if log_format() == "json":
                click.echo(json.dumps({
                    "event": "sync", "line": _sync_line(report), "run_id": report["run_id"], "status": report["status"],
                    "entities": _entity_counts(report), "sync": report.get("sync"), "warnings": report.get("warnings") or [],
                    "report": str(written) if written else None,
                }, ensure_ascii=False))
            else:
                click.echo(_sync_line(report))
            if seconds is None:
                sys.exit(EXIT_PARTIAL if report["status"] == "partial" else 0)
        stopping.wait(max(0.0, seconds - (time.monotonic() - started)))


@contextmanager
def _report_if_stopped(settings: Settings, report_dir: Path | None) -> Iterator[None]:
    """A run that fails or is stopped once it has begun still writes its report.json (status failed
    or interrupted, the error, what it wrote, issues and quarantined records so far) to `report_dir`,
    in place of an earlier run's."""
    try:
        yield
    except (MigrateError, Interrupted, KeyboardInterrupt) as exc:
        run_id = getattr(exc, "run_id", None)
        if report_dir is not None and run_id is not None:
            stopped = isinstance(exc, Interrupted | KeyboardInterrupt)
            error = str(exc if isinstance(exc, MigrateError | Interrupted) else Interrupted("Ctrl-C", signal.SIGINT))
            path = pipeline.write_stopped_report(settings, run_id, "interrupted" if stopped else "failed", redact(error), report_dir)
            Console(stderr=True).print(f"Report: {path}", highlight=False)
        raise


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit() or float(number) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m or 1h", param_hint="--every")
    return float(number) * units[unit]


def _entity_counts(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per entity, the counts a run's or a sync's JSON line gives."""
    counts = ("extracted", "deleted_skipped", "created", "updated", "unchanged", "conflicts", "quarantined")
    return {e: {k: row[k] for k in counts} for e, row in report["entities"].items()}


def _sync_line(report: dict[str, Any]) -> str:
    """One line per sync, for logs and cron mail."""
    entities = report["entities"].values()
    sync_info = report.get("sync") or {}
    deleted = sum((sync_info.get("deleted_in_pipedrive") or {}).values())
    usage = report.get("pipedrive") or {}
    tokens = f", {usage['tokens_spent']:,} tokens" if usage else ""
    left = f" ({usage['budget_remaining']:,} left today)" if usage.get("budget_remaining") is not None else ""
    target_read = sync_info.get("customermates_read") or {}
    read = (
        f"; Customermates records read {target_read['records']:,}" + (" (changed since the last read)" if target_read["since"] else " (all)")
        if target_read else ""
    )
    return (
        f"sync {report['run_id']}: {report['status']}; created {sum(r['created'] for r in entities)}, "
        f"updated {sum(r['updated'] for r in entities)}, unchanged {sum(r['unchanged'] for r in entities)}, "
        f"conflicts {sum(r['conflicts'] for r in entities)}, "
        f"deleted in Pipedrive {deleted} ({sync_info.get('deletes', 'mark')}), "
        f"quarantined {sum(r['quarantined'] for r in entities)}; "
        # every request the sync made, as its tokens are: the change reads' count left out the check of the token's company
        f"Pipedrive requests {usage['requests'] if usage else sync_info.get('pipedrive_requests', 'full extract')}"
        f"{tokens}{left}{read}"
    )


@cli.command(name="extract")
@common_options
def extract_command(settings: Settings) -> None:
    """Stage every Pipedrive record in the DuckDB state file (resumable), nothing else."""
    with Staging(settings.state) as staging:
        run_id = staging.start_run("extract")
        try:
            with ProgressDisplay(enabled=None if log_format() == "console" else False) as progress:
                summary = pipeline.run_extract(settings, staging, run_id, progress)
        except BaseException:  # a refusal, an error, a stop: the run's row says it ended, as run's does
            staging.finish_run(run_id, "failed", {})
            raise
        staging.finish_run(run_id, "ok", {"records": summary.records})
    console = Console()
    for name, count in summary.records.items():
        console.print(f"{name:>20}  {count}")
    if summary.missing:
        console.print(f"[yellow]not in the snapshot:[/yellow] {', '.join(summary.missing)}")
    if summary.pipedrive:
        console.print(pipedrive_usage(summary.pipedrive), highlight=False)
    console.print(f"Staged in {settings.state} ({summary.pages} pages). Inspect: duckdb {settings.state} \"show tables\"")


@cli.command()
@common_options
def doctor(settings: Settings) -> None:
    """Check both sides before a migration: tokens, permissions, reachability."""
    console = Console()
    results = pipeline.doctor(settings)
    marks = {"ok": "[green]ok[/green]  ", "warn": "[yellow]WARN[/yellow]", "fail": "[red]FAIL[/red]"}
    for check, outcome, detail in results:
        console.print(f"{marks[outcome]} {check}: {redact(detail)}", highlight=False)
    if any(outcome == "fail" for _, outcome, _ in results):
        sys.exit(1)


@cli.command(name="status")
@common_options
def status_command(settings: Settings) -> None:
    """Show runs, extract checkpoints, migrated counts, pending batches and quarantined records."""
    console = Console()
    info = pipeline.status(settings)
    runs = Table(title=f"Runs ({info['state']})", title_justify="left")
    longest_id = max((len(run["run_id"] or "") for run in info["runs"]), default=0)
    for name in ("run_id", "command", "started_at", "finished_at", "status"):  # a run id whole: `undo --run` takes it
        runs.add_column(name, **({"no_wrap": True, "min_width": longest_id} if name == "run_id" else {}))
    for run in info["runs"]:
        runs.add_row(*(str(run[k] or "") for k in ("run_id", "command", "started_at", "finished_at", "status")))
    console.print(runs)
    done = sum(1 for c in info["checkpoints"] if c["done"])
    console.print(f"Extract: {done}/{len(info['checkpoints'])} collections complete")
    for checkpoint in info["checkpoints"]:
        if checkpoint["updated_at"] is None:
            console.print(f"  • {checkpoint['collection']}: not read yet")
        elif not checkpoint["done"]:
            console.print(f"  • {checkpoint['collection']}: {checkpoint['records']} records in {checkpoint['pages']} pages so far")
    console.print("Migrated: " + ", ".join(f"{n} {e}" for e, n in info["migrated"].items()))
    if info["pending_batches"]:
        console.print(f"[yellow]Pending batches (settled on the next run):[/yellow] {len(info['pending_batches'])}")
    print_listed(
        console, "[red]Quarantined records[/red]", info["quarantined"], quarantine_line,
        unlisted="`--report-dir` of run, sync or verify lists every one in quarantine.csv",
    )


@cli.command()
@common_options
@report_dir_option("Write verify.json, extras.csv, quarantine.csv and every failure, a CSV file per kind (missing.csv, duplicates.csv, …), here.")
def verify(settings: Settings, report_dir: Path | None) -> None:
    """Read Customermates back and compare it with what was migrated: records, links, values, notes.

    Exit code 0 when everything matches; 1 when a migrated record is missing or duplicated in
    Customermates, or a relationship, custom value or notes text does not match."""
    console = Console()
    result = pipeline.verify(settings)
    if report_dir:
        for key, path in pipeline.write_verify_lists(settings, report_dir).items():
            result[key]["file"] = str(path)
    path = write_json(result, report_dir, "verify.json") if report_dir else None
    if log_format() == "json":  # unattended: one line, where the tables were printed
        click.echo(json.dumps({
            "event": "verify", "status": result["status"], "summary": result["summary"], "entities": result["entities"],
            "extras": result["extras"]["count"], "report": str(path) if path else None,
        }, ensure_ascii=False))
    else:
        print_verify(result, console)
        if path:
            console.print(f"Report: {path}")
    if result["status"] != "ok":
        sys.exit(EXIT_MISMATCH)


@cli.command()
@common_options
@click.option("--run", "run_id", help="The run to undo (see `migrate status`) [default: the latest run that created records].")
@click.option("--yes", is_flag=True, help="Delete; without it, only list what would be deleted.")
@click.option("--force", is_flag=True, help="Also delete records edited in Customermates since they were migrated.")
@click.option("--columns", is_flag=True, help="Also delete the custom columns the run created.")
@report_dir_option("Write undo.json (every record and column, and what happened to it) here.")
def undo(settings: Settings, run_id: str | None, yes: bool, force: bool, columns: bool, report_dir: Path | None) -> None:
    """Delete the records (and with --columns the custom columns) one run created.

    Lists what would be deleted unless --yes. Records edited in Customermates since the
    migration wrote them are kept unless --force. `migrate run` creates undone records again.
    Exit code 1 if a record or column could not be deleted."""
    console = Console()
    result = pipeline.undo(settings, run_id=run_id, execute=yes, force=force, columns=columns)
    with pipeline.undo_records(settings) as records:
        if log_format() != "json":
            print_undo(result, records, console)
        path = write_undo(result, records, report_dir) if report_dir else None
    if log_format() == "json":  # unattended: one line, where the tables were printed
        click.echo(json.dumps({
            "event": "undo", "run_id": result["run_id"], "dry_run": result["dry_run"], "status": result["status"],
            "entities": result["entities"], "columns": [{k: c.get(k) for k in ("entity", "label", "action")} for c in result["columns"]],
            "report": str(path) if path else None,
        }, ensure_ascii=False))
    elif path:
        console.print(f"Report: {path}")
    if result["status"] == "partial":
        sys.exit(1)


def main() -> None:
    cli()
