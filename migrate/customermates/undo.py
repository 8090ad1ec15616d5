"""`migrate undo`: remove what one run created, newest dependants first.

Which records: those whose id-map row says the run created them (`id_map.created_by_run`; an
update by a later run keeps it). Rows written before that column existed count for the run that
last wrote them.

Edited since we wrote it: a record is kept (unless `force`) when the target's `updatedAt` is
more than `EDIT_SLACK` after the later of its `createdAt` (server clock) and our last write
(`id_map.written_at`, local clock). `createdAt` makes a record we never updated immune to clock
skew; the slack absorbs server-side touches inside our own write (a deal's totals are written
just after the deal) and small skew. A deal whose totals changed because a linked service was
updated later counts as edited: kept, which is the safe side.

Deletes go through delete-many, 100 ids at a time, in the order tasks, deals, services,
contacts, organizations. A batch is all-or-nothing and an unknown id fails it with a 400 that
names the id: those ids are dropped and reported as already gone, the rest is sent again.
Every batch deleted is logged in `undone` and removed from the id map in one transaction, so a
later `migrate run` creates those records again and an interrupted undo can simply be rerun.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from migrate.customermates.client import (
    SINGULAR,
    BatchRejectedError,
    CustomermatesClient,
    CustomermatesError,
)
from migrate.customermates.mcp import McpClient
from migrate.errors import ConfigError, MigrateError
from migrate.staging.store import Staging
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER

log = structlog.get_logger(__name__)

UNDO_ORDER = tuple(reversed(ENTITY_ORDER))  # tasks, deals, services, contacts, organizations
EDIT_SLACK = timedelta(seconds=5)
DELETE_BATCH = 100


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))  # 3.11+ reads the Z suffix
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def edited_since_written(record: dict[str, Any], written_at: datetime | None) -> bool:
    """The rule in the module docstring. A record without timestamps is treated as edited (kept)."""
    updated = _utc(record.get("updatedAt"))
    baseline = max((t for t in (_utc(record.get("createdAt")), _utc(written_at)) if t is not None), default=None)
    if updated is None or baseline is None:
        return True
    return updated > baseline + EDIT_SLACK


def undo(
    staging: Staging,
    client: CustomermatesClient,
    mcp: McpClient | None,
    *,
    run_id: str | None = None,
    execute: bool = False,
    force: bool = False,
    columns: bool = False,
) -> dict[str, Any]:
    """Plan (and with `execute`, carry out) the undo of one run; returns what was (or would be) done."""
    if run_id is None:
        run_id = staging.latest_creating_run()
        if run_id is None:
            return {"run_id": None, "dry_run": not execute, "entities": {}, "records": [], "columns": [], "status": "nothing"}
    elif staging.con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0] == 0:
        raise ConfigError(f"no run {run_id!r} in the state file {staging.path} (see `migrate status`)")
    column_map = staging.column_map()
    plan: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for entity in UNDO_ORDER:
        created = staging.created_by(run_id, entity)
        buckets: dict[str, list[dict[str, Any]]] = {"delete": [], "edited": [], "gone": []}
        plan[entity] = buckets
        if not created:
            continue
        present = {r["id"]: r for r in _page_through(client, entity, column_map.get((entity, PIPEDRIVE_ID)))}
        for sid, (tid, written_at) in sorted(created.items()):
            item = {"entity": entity, "source_id": sid, "target_id": tid}
            record = present.get(tid)
            if record is None:
                buckets["gone"].append(item)
            elif edited_since_written(record, written_at):
                item["updated_at"] = record.get("updatedAt")
                item["written_at"] = _utc(written_at).isoformat(timespec="seconds") if written_at else None
                buckets["edited"].append(item)
            else:
                buckets["delete"].append(item)

    undo_run = staging.start_run(f"undo {run_id}") if execute else None
    outcome: dict[str, dict[str, list[dict[str, Any]]]] = {e: {"deleted": [], "gone": [], "failed": []} for e in UNDO_ORDER}
    status = "ok"
    try:
        if execute:
            for entity in UNDO_ORDER:
                buckets = plan[entity]
                staging.record_undone(entity, [(i["source_id"], i["target_id"]) for i in buckets["gone"]], run_id, "already_gone")
                outcome[entity]["gone"].extend(buckets["gone"])
                targets = buckets["delete"] + (buckets["edited"] if force else [])
                _delete(staging, client, entity, targets, run_id, outcome[entity])
        column_rows = _columns(staging, client, mcp, run_id, plan, columns=columns, execute=execute, force=force)
        if any(o["failed"] for o in outcome.values()) or any(c["action"] == "failed" for c in column_rows):
            status = "partial"
    except BaseException:
        status = "failed"
        raise
    finally:
        if undo_run is not None:
            staging.finish_run(undo_run, status, {"undone_run": run_id})

    entities = {}
    records = []
    for entity in UNDO_ORDER:
        buckets, done = plan[entity], outcome[entity]
        to_delete = buckets["delete"] + (buckets["edited"] if force else [])
        entities[entity] = {
            "created_by_run": sum(len(b) for b in buckets.values()),
            "delete": len(to_delete),
            "kept_edited": 0 if force else len(buckets["edited"]),
            "already_gone": len(done["gone"]) if execute else len(buckets["gone"]),
            "deleted": len(done["deleted"]),
            "failed": len(done["failed"]),
        }
        deleted_ids = {i["target_id"] for i in done["deleted"]}
        failed = {i["target_id"]: i.get("message") for i in done["failed"]}
        late_gone = {i["target_id"] for i in done["gone"]} - {i["target_id"] for i in buckets["gone"]}
        for item in to_delete:
            if not execute:
                action = "would delete"
            elif item["target_id"] in deleted_ids:
                action = "deleted"
            elif item["target_id"] in late_gone:
                action = "already gone"
            else:
                action = "failed"
            records.append({**item, "action": action, **({"message": failed[item["target_id"]]} if item["target_id"] in failed else {})})
        if not force:
            records.extend({**i, "action": "kept (edited)"} for i in buckets["edited"])
        records.extend({**i, "action": "already gone"} for i in buckets["gone"])
    return {
        "run_id": run_id,
        "dry_run": not execute,
        "force": force,
        "status": status,
        "entities": entities,
        "records": records,
        "columns": column_rows,
    }


def _page_through(client: CustomermatesClient, entity: str, id_column: dict[str, Any] | None) -> list[dict[str, Any]]:
    # sorted by the unique Pipedrive ID column so offset paging neither repeats nor skips rows
    sort = (id_column["id"], "asc") if id_column else ("createdAt", "asc")
    return list(client.iter_records(entity, sort=sort))


def _delete(
    staging: Staging, client: CustomermatesClient, entity: str, items: list[dict[str, Any]], run_id: str, done: dict[str, list]
) -> None:
    for start in range(0, len(items), DELETE_BATCH):
        batch = items[start : start + DELETE_BATCH]
        while batch:
            try:
                client.delete_many(entity, [i["target_id"] for i in batch])
            except BatchRejectedError as exc:
                named: dict[int, list[str]] = {}
                for issue in exc.issues:
                    index = issue.item_index()
                    if index is not None and index < len(batch):
                        named.setdefault(index, []).append(issue.message)
                if not named:
                    raise
                gone = [batch[n] for n, msgs in sorted(named.items()) if any("not found" in m.lower() for m in msgs)]
                failed = [
                    {**batch[n], "message": "; ".join(msgs)} for n, msgs in sorted(named.items()) if not any("not found" in m.lower() for m in msgs)
                ]
                staging.record_undone(entity, [(i["source_id"], i["target_id"]) for i in gone], run_id, "already_gone")
                done["gone"].extend(gone)
                done["failed"].extend(failed)
                log.warning("undo.dropped", entity=entity, already_gone=len(gone), failed=len(failed))
                batch = [item for n, item in enumerate(batch) if n not in named]
                continue
            except CustomermatesError as exc:
                raise MigrateError(
                    f"{exc}. Everything deleted before this batch is recorded; run `migrate undo --run {run_id} --yes` again to finish"
                ) from None
            staging.record_undone(entity, [(i["source_id"], i["target_id"]) for i in batch], run_id, "deleted")
            done["deleted"].extend(batch)
            break


def _columns(
    staging: Staging,
    client: CustomermatesClient,
    mcp: McpClient | None,
    run_id: str,
    plan: dict[str, dict[str, list[dict[str, Any]]]],
    *,
    columns: bool,
    execute: bool,
    force: bool,
) -> list[dict[str, Any]]:
    """The custom columns the run created. With `columns`, those of entities left without migrated
    records are deleted (with `force`: all of them, and the values other records hold in them)."""
    created = staging.columns_created_by(run_id)
    if not columns or not created:
        return [{**c, "action": "kept (no --columns)"} for c in created] if created else []
    rows = []
    for entity in sorted({c["entity"] for c in created}):
        if execute:
            remaining = staging.migrated_count(entity)
        else:
            buckets = plan.get(entity) or {}
            leaving = len(buckets.get("delete", [])) + len(buckets.get("gone", [])) + (len(buckets.get("edited", [])) if force else 0)
            remaining = staging.migrated_count(entity) - leaving
        existing = {c["id"] for c in client.configuration(entity).get("customColumns") or []}
        for column in (c for c in created if c["entity"] == entity):
            if remaining > 0 and not force:
                rows.append({**column, "action": f"kept ({remaining} migrated {entity} still use the columns)"})
            elif column["id"] not in existing:
                if execute:
                    staging.forget_column(entity, column["key"])
                rows.append({**column, "action": "already gone"})
            elif not execute:
                rows.append({**column, "action": "would delete"})
            else:
                if mcp is None:
                    raise MigrateError("deleting custom columns needs the MCP endpoint")
                try:
                    mcp.delete_custom_column(column["id"])
                except CustomermatesError as exc:
                    rows.append({**column, "action": "failed", "message": str(exc)})
                    continue
                staging.forget_column(entity, column["key"])
                rows.append({**column, "action": "deleted"})
    return rows


def print_undo(result: dict[str, Any], console: Console, *, max_rows: int = 20) -> None:
    if result["status"] == "nothing":
        console.print("Nothing to undo: no run in the state file created records or columns.")
        return
    dry = result["dry_run"]
    table = Table(title=f"{'Undo plan (dry run)' if dry else 'Undo'} — run {result['run_id']}", title_justify="left")
    headers = ["entity", "created by the run", "would delete" if dry else "deleted", "kept (edited)", "already gone"]
    if not dry:
        headers.append("failed")
    for n, header in enumerate(headers):
        table.add_column(header, justify="left" if n == 0 else "right")
    for entity, row in result["entities"].items():
        cells = [str(row["created_by_run"]), str(row["delete"] if dry else row["deleted"]), str(row["kept_edited"]), str(row["already_gone"])]
        if not dry:
            cells.append(str(row["failed"]))
        table.add_row(entity, *cells)
    console.print(table)
    kept = [r for r in result["records"] if r["action"] == "kept (edited)"]
    if kept:
        console.print(f"[bold yellow]Kept: edited in Customermates since migrated[/bold yellow] ({len(kept)}; --force deletes them too):")
        for item in kept[:max_rows]:
            console.print(f"  • {SINGULAR[item['entity']]} {item['source_id']} ({item['target_id']}): updated {item['updated_at']}", highlight=False)
    failed = [r for r in result["records"] if r["action"] == "failed"]
    if failed:
        console.print(f"[bold red]Not deleted[/bold red] ({len(failed)}):")
        for item in failed[:max_rows]:
            console.print(f"  • {SINGULAR[item['entity']]} {item['source_id']} ({item['target_id']}): {item.get('message')}", highlight=False)
    columns = result["columns"]
    if columns and all(c["action"] == "kept (no --columns)" for c in columns):
        console.print(f"The run created {len(columns)} custom columns: kept (--columns deletes them).")
    elif columns:
        console.print(f"Custom columns the run created ({len(columns)}):")
        for column in columns[:60]:
            console.print(f"  • {column['entity']}: {column['label']} ({column['type']}) — {column['action']}", highlight=False)
        if len(columns) > 60:
            console.print(f"  … and {len(columns) - 60} more")
    if dry:
        console.print("Dry run: nothing was deleted. Run again with --yes to delete.")
    else:
        console.print(f"Status: [bold]{result['status']}[/bold]. Undone records are out of the id map: `migrate run` creates them again.")
