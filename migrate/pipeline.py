"""The library behind the CLI: extract, transform and load as callable steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from migrate.config import Settings
from migrate.customermates.client import CustomermatesClient
from migrate.customermates.columns import ColumnIndex, ensure_columns
from migrate.customermates.deletions import propagate_deletions
from migrate.customermates.load import (
    DEFAULT_MAX_BATCH,
    Loader,
    LoadSummary,
    owner_unmatched_issue,
    users_by_email,
)
from migrate.customermates.mcp import McpClient
from migrate.customermates.target import TargetState
from migrate.errors import ConfigError, Interrupted, LockHeldError, MigrateError
from migrate.identity import check_customermates, check_pipedrive
from migrate.pipedrive import budget
from migrate.pipedrive.client import PipedriveClient
from migrate.pipedrive.collections import COLLECTIONS, DEAL_PRODUCTS
from migrate.pipedrive.extract import (
    ExtractSummary,
    PageSource,
    SnapshotSource,
    extract,
    extract_changes,
    extract_unfinished,
    reconcile_ids,
)
from migrate.report.plan import (
    NO_TARGET,
    SpooledRecords,
    build_plan,
    check_saved_plan,
    coverage,
    saved_plan_fingerprints,
)
from migrate.report.run_report import (
    ISSUE_EXAMPLES,
    issue_summary,
    quarantine_summary,
    write_json,
    write_quarantine,
)
from migrate.report.run_report import write_issues as write_issue_rows
from migrate.report.undo_report import UndoRecords
from migrate.staging.store import Staging
from migrate.transform.encoders import user_label
from migrate.transform.engine import (
    ENTITY_ORDER,
    ENTITY_SOURCES,
    V1_ENCODED,
    TransformSummary,
    transform,
)
from migrate.transform.mapping import load_mappings

log = structlog.get_logger(__name__)

Progress = Callable[[str, int], None]


def open_source(settings: Settings, stack: ExitStack) -> PageSource:
    if settings.source is not None:
        return SnapshotSource(settings.source)
    settings.require("pipedrive_api_token")
    return stack.enter_context(
        PipedriveClient(
            settings.pipedrive_base_url,
            settings.pipedrive_api_token or "",
            verify=settings.verify,
            burst_limit=settings.pipedrive_burst_limit,
        )
    )


def customermates_clients(settings: Settings, stack: ExitStack) -> tuple[CustomermatesClient, McpClient]:
    settings.require("customermates_url", "customermates_api_key")
    url, key = settings.customermates_url or "", settings.customermates_api_key or ""
    client = stack.enter_context(CustomermatesClient(url, key, verify=settings.verify))
    mcp = McpClient(url, key, verify=settings.verify)
    stack.callback(getattr(mcp, "close", lambda: None))
    return client, mcp


def run_extract(settings: Settings, staging: Staging, run_id: str, progress: Progress | None = None) -> ExtractSummary:
    with ExitStack() as stack:
        source = open_source(settings, stack)
        if isinstance(source, PipedriveClient):
            check_pipedrive(staging, pipedrive_me(source))  # before a page of another company is staged
        usage = watch_tokens(source, staging, progress)
        summary = extract(staging, source, run_id, progress=_labelled(progress, "extract"))
        summary.pipedrive = usage.report()
        return summary


class TokenWatch:
    """The extract's Pipedrive token account: the estimate before, the spending during (as a
    progress bar with the budget left today), the figures after."""

    def __init__(self, client: PipedriveClient | None, estimate: budget.CostEstimate | None, progress: Progress | None):
        self.client, self.estimate = client, estimate
        if client is None:
            return
        if estimate is not None:
            if estimate.tokens > (client.budget_remaining if client.budget_remaining is not None else estimate.tokens):
                log.warning("pipedrive.budget_short", detail=estimate.describe(client.budget_remaining))
            else:
                log.info("pipedrive.cost", detail=estimate.describe(client.budget_remaining))
        if progress is None:
            return
        if hasattr(progress, "expect"):
            progress.expect("pipedrive tokens", estimate.tokens if estimate else None)

        def spent(cost: int) -> None:
            progress("pipedrive tokens", cost)
            if hasattr(progress, "detail") and client.budget_remaining is not None:
                progress.detail("pipedrive tokens", f"{client.budget_remaining:,} left today")

        client.on_tokens = spent

    def report(self) -> dict[str, Any] | None:
        if self.client is None:
            return None
        c, e = self.client, self.estimate
        return {
            "requests": c.requests_sent,
            "tokens_spent": c.tokens_spent,
            "tokens_estimated": e.tokens if e else None,
            "estimate_basis": e.basis if e else None,
            "rate_limited_429": c.rate_limited,
            "shared_token_requests": c.limiter.shared_most,
            "burst_limit": c.limiter.limit,
            "budget_remaining": c.budget_remaining,
        }


def watch_tokens(source: PageSource | None, staging: Staging, progress: Progress | None, *, full: bool = True) -> TokenWatch:
    """Estimate a full extract's cost from the previous extract's sizes (`full`; a sync's cost
    is not estimated) and watch the spending."""
    if not isinstance(source, PipedriveClient):
        return TokenWatch(None, None, None)
    return TokenWatch(source, budget.estimate_from_staging(staging) if full else None, progress)


def _labelled(progress: Progress | None, phase: str) -> Progress | None:
    """Progress reports of one phase, named "<phase> <collection or entity>"."""
    if progress is None:
        return None
    return lambda name, records: progress(f"{phase} {name}", records)


def run_migration(
    settings: Settings,
    *,
    dry_run: bool = False,
    use_staged: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_target_deleted: str = "report",
    on_conflict: str = "skip",
    saved_plan: Path | None = None,
    incremental: bool = False,
    deletes: str | None = None,
    reconcile_every: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The whole migration (or its dry run); returns the run report. With `saved_plan` (a plan.json) the run
    goes ahead only if neither side changed since that plan was made. `incremental` (sync)
    extracts only what changed since the last extract, and every `reconcile_every`-th sync also
    checks every id for records that vanished without a trace; `deletes` says what happens to migrated
    records deleted in Pipedrive since (mark, delete, ignore; None leaves them, as `run` does)."""
    started = datetime.now(UTC)
    if saved_plan is not None:
        saved_plan_fingerprints(saved_plan)  # a file that is not a plan is refused before any work
    if use_staged and not settings.state.exists():  # a mistyped --state: no empty state file made, no empty run
        raise ConfigError(f"--use-staged: nothing is staged in {settings.state} (no such file); run `migrate extract` first, with the same --state")
    with Staging(settings.state) as staging, ExitStack() as stack:
        if use_staged:
            require_staged(staging)
        run_id = staging.start_run("sync" if incremental else "run --dry-run" if dry_run else "run")
        status = "failed"
        report: dict[str, Any] = {}
        try:
            target: tuple[CustomermatesClient, McpClient] | None = None
            if not dry_run or (settings.customermates_url and settings.customermates_api_key):
                target = customermates_clients(settings, stack)
            source = None if use_staged else open_source(settings, stack)
            warnings = preflight(  # before anything is written
                source, target[0] if target else None, staging, settings, dry_run=dry_run, recreates=on_target_deleted == "recreate"
            )
            extracted = None
            changes = None
            vanished: dict[str, int] = {}
            # a sync reads what changed since a complete extract; one stopped half way (a run's) is finished first
            syncing = incremental and isinstance(source, PipedriveClient) and bool(staging.watermark("persons")) and not extract_unfinished(staging)
            tokens = watch_tokens(source, staging, progress, full=not syncing)
            # every `reconcile_every`-th sync reads both sides whole; the others only what changed
            reconciling = syncing and bool(reconcile_every) and _syncs_since_reconciled(staging) >= reconcile_every
            if syncing:
                changes = extract_changes(staging, source, run_id, progress=_labelled(progress, "extract"))
                if reconciling:
                    vanished = reconcile_ids(staging, source, run_id)
                    _mark_untraced(staging, read_whole={*vanished, *changes.reread}, vanished=vanished)
            elif source is not None:
                extracted = extract(staging, source, run_id, progress=_labelled(progress, "extract"))
                if isinstance(source, PipedriveClient):
                    # it started afresh, dropping the purged records found before: what it did not see of
                    # the migrated ones is gone from Pipedrive, staged as deleted for `--deletes`
                    _mark_untraced(staging, read_whole={c.name for c in COLLECTIONS}, vanished=vanished)
                if extracted.missing:  # a snapshot without a collection's file: read as none, which a misspelt name also is
                    missing = (
                        f"the snapshot {settings.source} has no file for {', '.join(extracted.missing)} "
                        f"({', '.join(f'{name}.jsonl' for name in extracted.missing)}): read as holding no records"
                    )
                    log.warning("extract.collections_missing", detail=missing)
                    warnings.append(missing)
            mappings = load_mappings(settings.mappings)
            transformed = transform(staging, mappings, settings.phone_region, workers=settings.transform_workers, progress=progress)
            columns = ColumnIndex(created=[f"{c['entity']}: {c['label']} ({c['type']})" for c in staging.target_columns()])
            loaded = LoadSummary()
            state: TargetState | None = None
            if target is not None:
                client, mcp = target
                if saved_plan is not None and not dry_run:  # checked before anything is written
                    existing = ensure_columns(staging, client, mcp, run_id, dry_run=True)
                    check_saved_plan(saved_plan, staging, TargetState.read(client, existing, staging))
                columns = ensure_columns(staging, client, mcp, run_id, dry_run=dry_run)
                if not dry_run:
                    state = (TargetState.read_changes if syncing and not reconciling else TargetState.read)(client, columns, staging)
                    now = make_plan(staging, columns, client, on_target_deleted, state, conflicts_only=True)
                    if hasattr(progress, "expect"):
                        for entity, counts in now["summary"].items():
                            progress.expect(f"load {entity}", counts["create"] + counts["update"])
                    in_flight = _updates_in_flight(staging)
                    conflicts = {
                        e: {r["source_id"] for r in rs if r["action"] == "conflict"} - in_flight.get(e, set()) for e, rs in now["records"].items()
                    }
                    loaded = Loader(
                        staging, client, columns, run_id, max_batch=max_batch, on_target_deleted=on_target_deleted,
                        target=state, conflicts=conflicts, on_conflict=on_conflict, progress=_labelled(progress, "load"),
                    ).run()
                    if deletes is not None:
                        loaded.deleted_in_pipedrive = propagate_deletions(staging, client, mcp, columns, state, deletes, run_id)
            plan = None
            if dry_run:
                plan = make_plan(staging, columns, target[0] if target else None, on_target_deleted, spool=True)
                plan["coverage"] = coverage(staging, mappings.sources, mappings.coverage)
                # the owners the run will report unmatched, reported as it reports them (issues and list)
                loaded.unmatched_users = plan["unmatched_users"]
                staging.add_load_issues([(run_id, *owner_unmatched_issue(owner)) for owner in loaded.unmatched_users])
            report = build_report(staging, run_id, started, dry_run, extracted, transformed, columns, loaded, plan)
            report["warnings"] = warnings
            report["pipedrive"] = tokens.report()
            if changes is not None:
                report["sync"] = {
                    "changed": changes.changed, "reread": changes.reread, "pipedrive_requests": changes.requests,
                    "reconciled": reconciling or None, "vanished": vanished,
                    "customermates_read": None if state is None else {"since": state.since, "records": state.records_read},
                }
            if deletes is not None:
                report["sync"] = {**report.get("sync", {}), "deletes": deletes, "deleted_in_pipedrive": dict(loaded.deleted_in_pipedrive)}
            status = report["status"]
            if not dry_run and (reconciling or not syncing):  # both sides were read whole
                staging.set_meta(SYNCS_SINCE_RECONCILED_KEY, "0")
            return report
        except BaseException as exc:
            # the CLI's report of a run that did not end names it (`write_stopped_report`)
            exc.run_id = run_id  # type: ignore[attr-defined]
            if isinstance(exc, Interrupted | KeyboardInterrupt):
                status = "interrupted"
            raise
        finally:
            staging.finish_run(run_id, status, {k: report.get(k) for k in ("entities", "status")} if report else {})


SYNCS_SINCE_RECONCILED_KEY = "syncs_since_reconciled"  # in the state file's meta


def _syncs_since_reconciled(staging: Staging) -> int:
    """Count this sync among those since both sides were last read whole to the end (a reconciling
    sync or a run that ended): one that failed or was killed half way is not one, so the next
    sync reconciles, where a count of every sync started put it off a whole cycle."""
    count = int(staging.meta(SYNCS_SINCE_RECONCILED_KEY) or 0) + 1
    staging.set_meta(SYNCS_SINCE_RECONCILED_KEY, str(count))
    return count


def _updates_in_flight(staging: Staging) -> dict[str, set[str]]:
    """The records, by entity, of the updates a killed run or sync sent without learning their outcome
    (pending batches): the values they hold that differ from the body last recorded as written may be
    that write's, no edit made in Customermates, so none of them is a conflict; the load writes them."""
    in_flight: dict[str, set[str]] = {}
    for batch in staging.pending_batches(operation="update"):
        in_flight.setdefault(batch["entity"], set()).update(batch["source_ids"])
    return in_flight


def require_staged(staging: Staging) -> None:
    """`--use-staged` migrates what a complete extract staged: none, or one stopped half way (its
    collections partly read, the earlier extract's dropped), would make a run of nothing or of part of
    the account that ends "ok"."""
    checkpoints = {c.name: staging.checkpoint(c.name) for c in (*COLLECTIONS, DEAL_PRODUCTS)}
    if all(cp is None for cp in checkpoints.values()):
        raise ConfigError(f"--use-staged: nothing is staged in {staging.path}; run `migrate extract` first, with the same --state")
    unfinished = sorted(name for name, cp in checkpoints.items() if cp is None or not cp.done)
    if unfinished:
        raise ConfigError(
            f"--use-staged: the extract staged in {staging.path} stopped half way ({', '.join(unfinished)} not read whole); "
            "run `migrate extract` again to finish it (it resumes), or `migrate run` without --use-staged"
        )


def _mark_untraced(staging: Staging, read_whole: set[str], vanished: dict[str, int]) -> None:
    """After a reconciling read or a full extract: migrated records no staged record stands for (gone
    from Pipedrive; a full extract starts afresh, so it holds no trace of them) are staged as deleted,
    for `--deletes`; only where every collection they may come from was just read whole. Counted in `vanished`."""
    for entity, collections in ENTITY_SOURCES.items():
        for prefix in sorted({"lead:" if c in V1_ENCODED else "" for c in collections}):
            group = [c for c in collections if ("lead:" if c in V1_ENCODED else "") == prefix]
            if all(c in read_whole and staging.has_collection(c) for c in group):
                found = staging.mark_untraced_as_deleted(entity, prefix, group)
                if found:
                    vanished[group[0]] = vanished.get(group[0], 0) + found


def build_report(
    staging: Staging,
    run_id: str,
    started: datetime,
    dry_run: bool,
    extracted: ExtractSummary | None,
    transformed: TransformSummary,
    columns: ColumnIndex,
    loaded: LoadSummary,
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    entities: dict[str, Any] = {}
    quarantined = staging.quarantine_counts()
    for entity in ENTITY_ORDER:
        sources = {name: staging.count_raw(name)[0] for name in ENTITY_SOURCES[entity]}
        to_migrate = transformed.records[entity]
        if plan is not None:
            counts = plan["summary"][entity]
            created, updated, unchanged = counts["create"], counts["update"], counts["unchanged"]
        else:
            created, updated, unchanged = loaded.created[entity], loaded.updated[entity], loaded.unchanged[entity]
        entities[entity] = {
            "sources": sources,
            "extracted": sum(sources.values()),
            "deleted_skipped": transformed.skipped[entity],
            "to_migrate": to_migrate,
            "created": created,
            "updated": updated,
            "unchanged": unchanged,
            "adopted_after_uncertain_write": loaded.adopted[entity],
            "deleted_in_target": loaded.deleted_in_target[entity],
            "conflicts": loaded.conflicts[entity],
            "recreated": loaded.recreated[entity],
            "quarantined": quarantined.get(entity, 0),
        }
    # a dry run writes and quarantines nothing: records an earlier run quarantined are reported, not its status
    status = "partial" if quarantined and not dry_run else "ok"
    report = {
        "run_id": run_id,
        "dry_run": dry_run,
        "status": status,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "entities": entities,
        "extract": {
            "pages": extracted.pages if extracted else 0,
            "resumed": extracted.resumed if extracted else [],
            "missing_collections": extracted.missing if extracted else [],
            "records": extracted.records if extracted else {},
        },
        "transform": {
            "records_made": transformed.made, "full": transformed.full_reason is not None, "why_full": transformed.full_reason,
            "seconds": round(transformed.seconds, 3),
        },
        "columns_created": columns.created,
        "options_added": columns.options_added,
        "options_renamed": columns.options_renamed,
        "columns_renamed": columns.renamed,
        "columns_retyped": columns.retyped,
        "columns_left": columns.left,
        "unmatched_users": loaded.unmatched_users,
        "duplicates_in_target": loaded.duplicates_in_target,
        "issues": issue_summary(staging.run_issue_counts(run_id), staging.run_issue_examples(run_id, ISSUE_EXAMPLES)),
        "quarantined": quarantine_summary(staging),
        "plan": plan,
        "load": {
            "records_written": loaded.records_written,
            "write_requests": loaded.write_requests,
            "write_seconds": round(loaded.write_seconds, 3),
            "records_per_second": round(loaded.records_per_second, 1),
            "seconds": round(loaded.seconds, 3),
            "records_per_second_overall": round(loaded.records_per_second_overall, 1),
        },
    }
    if not dry_run and not columns.ids and any(transformed.records.values()):
        raise MigrateError("no Customermates columns were set up; nothing was loaded")
    return report


def make_plan(
    staging: Staging,
    columns: ColumnIndex,
    client: CustomermatesClient | None,
    on_target_deleted: str,
    state: TargetState | None = None,
    conflicts_only: bool = False,
    spool: bool = False,
) -> dict[str, Any]:
    """The field-level plan against the target's current state (an empty one without a target);
    it holds every record's entry, or with `conflicts_only` the conflicts (`build_plan`), or with
    `spool` writes them all to the state file (read back with `plan_records`)."""
    if client is None:
        return build_plan(
            staging, columns, TargetState(fingerprint=NO_TARGET), {}, {}, on_target_deleted=on_target_deleted, conflicts_only=conflicts_only, spool=spool
        )
    users = client.list_users()
    user_map = users_by_email(staging.iter_raw("users"), users)
    names = {u["id"]: f"{u.get('firstName') or ''} {u.get('lastName') or ''}".strip() for u in users}
    state = state or TargetState.read(client, columns, staging)
    return build_plan(staging, columns, state, user_map, names, on_target_deleted=on_target_deleted, conflicts_only=conflicts_only, spool=spool)


DIED = "died (killed or crashed before its end; run it again to resume)"


def status(settings: Settings) -> dict[str, Any]:
    """What the state file knows: runs, extract checkpoints, id map, pending batches, quarantine."""
    if not settings.state.exists():
        raise MigrateError(f"no state file at {settings.state}: nothing has run yet")
    with Staging(settings.state) as staging:
        con = staging.con
        # the latest ten, and any older one that still owns records or columns (`undo --run` takes its id)
        runs = con.execute(
            "SELECT run_id, command, started_at, finished_at, status FROM runs WHERE run_id IN ("
            "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 10) OR run_id IN (SELECT created_by_run FROM id_map "
            "UNION SELECT created_by_run FROM column_map UNION SELECT created_by_run FROM replaced_columns) ORDER BY started_at DESC"
        ).fetchall()
        checkpoints = con.execute(
            "SELECT collection, pages, records, done, updated_at FROM extract_checkpoints WHERE collection NOT LIKE '%~%' ORDER BY collection"  # not the lanes' rows
        ).fetchall()
        if checkpoints:  # an extract began: each collection it has not reached yet is one still to read, not none
            reached = {row[0] for row in checkpoints}
            checkpoints = sorted([*checkpoints, *((c.name, 0, 0, False, None) for c in (*COLLECTIONS, DEAL_PRODUCTS) if c.name not in reached)])
        migrated = dict(con.execute("SELECT entity, count(*) FROM id_map GROUP BY entity").fetchall())
        # the state file's lock is ours: a run still marked running holds none, so it died (a kill, a crash)
        runs = [(*r[:4], DIED if r[4] == "running" else r[4]) for r in runs]
        return {
            "state": str(settings.state),
            "runs": [dict(zip(("run_id", "command", "started_at", "finished_at", "status"), map(_text, r), strict=True)) for r in runs],
            "checkpoints": [dict(zip(("collection", "pages", "records", "done", "updated_at"), map(_text, r), strict=True)) for r in checkpoints],
            "migrated": {e: migrated.get(e, 0) for e in ENTITY_ORDER},
            "pending_batches": staging.pending_batches(),
            "quarantined": quarantine_summary(staging),
        }


@contextmanager
def plan_records(settings: Settings) -> Iterator[SpooledRecords]:
    """The records of the last dry run's plan, read from the state file while the context lasts."""
    with Staging(settings.state) as staging:
        yield SpooledRecords(staging)


def write_run_lists(settings: Settings, run_id: str, directory: Path) -> dict[str, Path]:
    """Write every issue of a run and every quarantined record to `directory` (issues.csv,
    quarantine.csv), streamed from the state file; the paths by their report.json key."""
    with Staging(settings.state) as staging:
        return {
            "issues": write_issue_rows(staging.iter_run_issues(run_id), directory),
            "quarantined": write_quarantine(staging, directory),
        }


def write_stopped_report(settings: Settings, run_id: str, status: str, error: str, directory: Path) -> Path:
    """report.json (with issues.csv and quarantine.csv) of a run that failed or was stopped: what
    it did not finish, the records it wrote before, every issue and quarantined record so far,
    so that a report directory never keeps an earlier run's report as if it were this one's."""
    with Staging(settings.state) as staging:
        row = staging.con.execute("SELECT command, started_at FROM runs WHERE run_id = ?", [run_id]).fetchone()
        written = dict(staging.con.execute("SELECT entity, count(*) FROM id_map WHERE run_id = ? GROUP BY entity", [run_id]).fetchall())
        report = {
            "run_id": run_id,
            "dry_run": bool(row) and row[0] == "run --dry-run",
            "status": status,
            "error": error,
            "started_at": _text(row[1]) if row else None,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            # written (or found written after an uncertain write) before it stopped; the rest is
            # written by the next run, which resumes
            "written_before_it_stopped": {e: written.get(e, 0) for e in ENTITY_ORDER},
            "issues": issue_summary(staging.run_issue_counts(run_id), staging.run_issue_examples(run_id, ISSUE_EXAMPLES)),
            "quarantined": quarantine_summary(staging),
        }
        report["issues"]["file"] = str(write_issue_rows(staging.iter_run_issues(run_id), directory))
        report["quarantined"]["file"] = str(write_quarantine(staging, directory))
    return write_json(report, directory)


def verify(settings: Settings) -> dict[str, Any]:
    """Read the target back and compare it with staging (see `migrate.report.verify`)."""
    from migrate.report.verify import verify as verify_target

    if not settings.state.exists():
        raise MigrateError(f"no state file at {settings.state}: nothing has run yet")
    with Staging(settings.state) as staging, ExitStack() as stack:
        client, _ = _migrated_target(settings, staging, stack)
        return verify_target(staging, client)


def write_verify_lists(settings: Settings, directory: Path) -> dict[str, Path]:
    """Write every extra record and every failure the last verify found, and every quarantined
    record, to `directory` (extras.csv, missing.csv, …, quarantine.csv), streamed from the state
    file; the paths by their verify.json key."""
    from migrate.report.verify import write_extras, write_findings

    with Staging(settings.state) as staging:
        return {
            "extras": write_extras(staging, directory), **write_findings(staging, directory),
            "known_failures": write_quarantine(staging, directory),
        }


def undo(
    settings: Settings, *, run_id: str | None = None, execute: bool = False, force: bool = False, columns: bool = False
) -> dict[str, Any]:
    """Delete what one run created (a dry-run listing unless `execute`; see `migrate.customermates.undo`)."""
    from migrate.customermates.undo import undo as undo_run

    if not settings.state.exists():
        raise MigrateError(f"no state file at {settings.state}: nothing has run yet")
    with Staging(settings.state) as staging, ExitStack() as stack:
        client, mcp = _migrated_target(settings, staging, stack)
        return undo_run(staging, client, mcp, run_id=run_id, execute=execute, force=force, columns=columns)


def _migrated_target(settings: Settings, staging: Staging, stack: ExitStack) -> tuple[CustomermatesClient, McpClient]:
    """The clients of a command that reads the migrated records back (verify, undo): the key
    checked first, as a run's preflight (a bad one is said so, not a failed read after retries),
    then that this Customermates is the state file's, before a record is judged gone."""
    client, mcp = customermates_clients(settings, stack)
    client.me()
    check_customermates(staging, client, settings.customermates_url or "", makes_columns=False)
    return client, mcp


@contextmanager
def undo_records(settings: Settings) -> Iterator[UndoRecords]:
    """The records of the last undo, with what happened to each, read from the state file while the context lasts."""
    with Staging(settings.state) as staging:
        yield UndoRecords(staging)


def _text(value: Any) -> Any:
    return value.isoformat(sep=" ", timespec="seconds") if isinstance(value, datetime) else value


def pipedrive_me(client: PipedriveClient) -> dict[str, Any]:
    """The token's user (`/v1/users/me`), with its company."""
    return client.get("/api/v1/users/me", cost=2).get("data") or {}


def pipedrive_identity(client: PipedriveClient, me: dict[str, Any] | None = None) -> tuple[str, bool]:
    """Who the token belongs to, and whether that user is an admin (sees every record)."""
    me = pipedrive_me(client) if me is None else me
    admin = bool(me.get("is_admin")) or any(
        a.get("admin") for a in me.get("access") or [] if isinstance(a, dict) and a.get("app") in ("global", "sales")
    )
    return f"{me.get('name')} <{me.get('email')}> at {me.get('company_name') or client.base_url}", admin


def customermates_identity(client: CustomermatesClient) -> tuple[str, bool]:
    """Who the key belongs to, and whether that user has the Admin (system) role."""
    me = client.me()
    role = str(me.get("roleName") or "")
    return f"{me.get('firstName')} {me.get('lastName')} (role {role or 'none'})", role.lower() == "admin"


def preflight(
    source: PageSource | None, target: CustomermatesClient | None, staging: Staging, settings: Settings, *, dry_run: bool,
    recreates: bool = False,
) -> list[str]:
    """The checks every run starts with; hard failures raise (among them a state file of another
    company on either side: `migrate.identity`), doubts come back as warnings. A run sets up the
    columns, so columns deleted in Customermates are made again; a dry run plans that."""
    warnings = []
    if target is not None:
        who, admin = customermates_identity(target)
        if recreates and not admin:
            raise ConfigError(
                f"--on-target-deleted recreate needs an Admin's Customermates key; this one belongs to {who}. A record out of "
                "a key's access answers as a deleted one does (\"not found or not accessible\"), so it would be created twice. "
                "Use an Admin's key, or leave --on-target-deleted at report"
            )
        remade = check_customermates(staging, target, settings.customermates_url or "", makes_columns=not dry_run, plans=dry_run)
        if remade:
            log.warning("customermates.columns_deleted", detail=remade)
            warnings.append(remade)
        if not admin:
            warnings.append(
                f"the Customermates key belongs to {who}, not an Admin: records outside its access fail to load (use an Admin's key)"
            )
    if isinstance(source, PipedriveClient):
        me = pipedrive_me(source)
        check_pipedrive(staging, me)
        who, admin = pipedrive_identity(source, me)
        if not admin:
            warnings.append(f"the Pipedrive token belongs to {who}, not an admin: records it cannot see are not migrated")
    return warnings


def _pipedrive_users(settings: Settings, source: PageSource) -> list[dict[str, Any]]:
    """Pipedrive's users: those an extract staged, else read (the users list, one page)."""
    if settings.state.exists():
        with suppress(LockHeldError), Staging(settings.state) as staging:  # a run holds it: read them
            if staging.has_collection("users"):
                return list(staging.iter_raw("users"))
    users = next(c for c in COLLECTIONS if c.name == "users")
    return [user for page in source.pages(users) for user in page.records]


def _owners_matched(pipedrive_users: list[dict[str, Any]], customermates_users: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether every active Pipedrive user has a Customermates user of the same email (`users_by_email`:
    as owners are matched), and which have none: the records they own would land without an owner."""
    matched = users_by_email(pipedrive_users, customermates_users)
    active = [u for u in pipedrive_users if u.get("active_flag", True)]
    unmatched = [u for u in active if str(u["id"]) not in matched]
    if not unmatched:
        return True, f"each of the {len(active)} active Pipedrive users has a Customermates user of the same email"
    named = ", ".join(user_label(u, str(u.get("id"))) for u in unmatched[:5]) + (" …" if len(unmatched) > 5 else "")
    return False, (
        f"{len(unmatched)} of the {len(active)} active Pipedrive users have no Customermates user of the same email ({named}): "
        "the records they own land without an owner, their name kept in 'Pipedrive owner'; invite them first (`migrate plan` counts their records)"
    )


def doctor(settings: Settings) -> list[tuple[str, str, str]]:
    """Preflight checks of both sides: (check, "ok" | "warn" | "fail", detail)."""
    results: list[tuple[str, str, str]] = []

    def add(check: str, passed: bool, detail: str, *, warn_only: bool = False) -> None:
        results.append((check, "ok" if passed else "warn" if warn_only else "fail", detail))

    with ExitStack() as stack:
        try:
            source = open_source(settings, stack)
            if isinstance(source, PipedriveClient):
                me = pipedrive_me(source)
                who, admin = pipedrive_identity(source, me)
                add("Pipedrive token", True, who)
                add("Pipedrive admin", admin, "admin: sees every record" if admin else "not an admin: records it cannot see will be missing")
                cost = None
                if settings.state.exists():
                    try:
                        with Staging(settings.state) as staging:
                            try:
                                check_pipedrive(staging, me, record=False)
                            except MigrateError as exc:
                                add("Pipedrive company of the state file", False, str(exc))
                            cost = budget.estimate_from_staging(staging)
                    except LockHeldError:  # a run is going on: size it by probing instead
                        pass
                cost = cost or budget.estimate_by_probing(source)
                remaining = source.budget_remaining
                add("Pipedrive budget", remaining is None or cost.tokens <= remaining, cost.describe(remaining), warn_only=True)
            else:
                add("Pipedrive snapshot", True, str(settings.source))
            pipedrive_users = _pipedrive_users(settings, source)
        except MigrateError as exc:
            add("Pipedrive", False, str(exc))
            pipedrive_users = None
        try:
            client, mcp = customermates_clients(settings, stack)
            who, admin = customermates_identity(client)
            add("Customermates key", True, who)
            add("Customermates admin", admin, "Admin role" if admin else "migrations need an Admin (system role) key")
            users = client.list_users()
            add("Customermates users", bool(users), f"{len(users)} users to match Pipedrive owners against")
            if pipedrive_users is not None:
                add("Pipedrive users in Customermates", *_owners_matched(pipedrive_users, users), warn_only=True)
        except MigrateError as exc:
            add("Customermates key", False, str(exc))
            return results
        if settings.state.exists():
            try:
                with Staging(settings.state) as staging:
                    remade = check_customermates(staging, client, settings.customermates_url or "", makes_columns=True)
                if remade:  # what the next run does about it
                    add("Customermates company of the state file", False, remade, warn_only=True)
            except LockHeldError:  # a run holds it, and checked it when it began
                pass
            except MigrateError as exc:
                add("Customermates company of the state file", False, str(exc))
        try:
            active = mcp.active_webhooks()
            add(
                "Customermates webhooks", active == 0,
                "none active" if active == 0 else f"{active} active: a bulk import sends every subscriber an event per record; "
                "disable them for the migration (UI, or MCP update_webhook enabled:false)",
                warn_only=True,
            )
        except MigrateError as exc:
            add("Customermates webhooks", False, f"could not list webhooks ({exc})", warn_only=True)
    return results
