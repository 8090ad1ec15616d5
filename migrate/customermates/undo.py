"""`migrate undo`: remove what one run created, newest dependants first.

Which records: those whose id-map row says the run created them (`id_map.created_by_run`; an
update by a later run keeps it). Rows written before that column existed count for the run that
last wrote them.

Edited since we wrote it: a record is kept (unless `force`) when the target's `updatedAt` is
more than `EDIT_SLACK` after the later of its `createdAt` (server clock) and our last write
(`id_map.written_at`, local clock; for a record adopted after an uncertain create, when its batch
was recorded, so that an edit made before the adoption stays one). `createdAt` makes a record we
never updated immune to clock skew; the slack absorbs server-side touches inside our own write (a deal's totals are written
just after the deal) and small skew. A deal whose totals changed because a linked service was
updated later counts as edited: kept, which is the safe side.

Deletes go through delete-many, 50 ids at a time (`write_idempotent`: a batch whose outcome is
unknown, a 500 from the server's transaction limit say, is sent again in halves), in the order tasks,
deals, services, contacts, organizations. A batch is all-or-nothing and an unknown id fails it with a
400 that names the id: those ids are dropped and reported as already gone, the rest is sent again.
Every batch deleted is logged in `undone` and removed from the id map in one transaction, so a
later `migrate run` creates those records again and an interrupted undo can simply be rerun.

Nothing is held whole: the target's ids and timestamps are read into the state file, where the
plan is made and each record's outcome kept (`undo_records`); the report is written from there.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from migrate.customermates.client import CustomermatesClient, CustomermatesError
from migrate.customermates.columns import settle_pending_columns
from migrate.customermates.idempotent import write_idempotent
from migrate.customermates.mcp import McpClient
from migrate.customermates.target import find_by_pipedrive_id
from migrate.errors import ConfigError, MigrateError
from migrate.staging.store import Staging, batched
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER

log = structlog.get_logger(__name__)

UNDO_ORDER = tuple(reversed(ENTITY_ORDER))  # tasks, deals, services, contacts, organizations
EDIT_SLACK = timedelta(seconds=5)
READ_BATCH = 2000  # target records written to the state file, and planned records handled, at a time
BUCKETS = ("delete", "edited", "gone")  # a record's place in the plan, and in the report's order per entity


def as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))  # 3.11+ reads the Z suffix
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def edited_since_written(created_at: Any, updated_at: Any, written_at: datetime | None) -> bool:
    """The rule in the module docstring. A record without timestamps is treated as edited (kept)."""
    updated = as_utc(updated_at)
    baseline = max((t for t in (as_utc(created_at), as_utc(written_at)) if t is not None), default=None)
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
    """Plan (and with `execute`, carry out) the undo of one run; returns what was (or would be)
    done. Its records, each with what happened to it, stay in the state file (`UndoRecords`)."""
    staging.clear_undo_records()
    _settle_pending(staging, client)
    settle_pending_columns(staging, {e: client.configuration(e) for e in {c["entity"] for c in staging.pending_columns()}})
    if run_id is None:
        run_id = staging.latest_creating_run()
        if run_id is None:
            return {"run_id": None, "dry_run": not execute, "entities": {}, "columns": [], "status": "nothing"}
    elif staging.con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0] == 0:
        raise ConfigError(f"no run {run_id!r} in the state file {staging.path} (see `migrate status`)")
    column_map = staging.column_map()
    for entity in UNDO_ORDER:
        if staging.created_count(run_id, entity):
            _plan(staging, client, entity, run_id, column_map.get((entity, PIPEDRIVE_ID)), force=force)

    undo_run = staging.start_run(f"undo {run_id}") if execute else None
    status = "ok"
    try:
        if execute:
            for entity in UNDO_ORDER:
                _carry_out(staging, client, entity, run_id, force=force)
        entities = _entities(staging, execute=execute, force=force)
        column_rows = _columns(staging, client, mcp, run_id, entities, columns=columns, execute=execute, force=force)
        if any(row["failed"] for row in entities.values()) or any(c["action"] == "failed" for c in column_rows):
            status = "partial"
    except BaseException:
        status = "failed"
        raise
    finally:
        if undo_run is not None:
            staging.finish_run(undo_run, status, {"undone_run": run_id})
    return {"run_id": run_id, "dry_run": not execute, "force": force, "status": status, "entities": entities, "columns": column_rows}


def _settle_pending(staging: Staging, client: CustomermatesClient) -> None:
    """A run that died between a create batch's write and its commit left the batch pending: its
    records may exist without an id-map row, and an undo would leave them there. Those found by their
    Pipedrive ID are adopted first, as the next run would (for the run that sent the batch)."""
    column_map = staging.column_map()
    for batch in staging.pending_batches(operation="create"):  # an update created nothing; the next run sends it again
        entity = batch["entity"]
        id_column = column_map.get((entity, PIPEDRIVE_ID))
        if id_column is None:
            continue  # nothing can carry its Pipedrive ID; the next run settles it
        found = find_by_pipedrive_id(client, entity, id_column["id"], batch["source_ids"])
        adopted = [(sid, found[sid][0], digest) for sid, digest in zip(batch["source_ids"], batch["hashes"], strict=True) if sid in found]
        staging.commit_batch(batch["batch_id"], entity, adopted, batch.get("run_id") or "undo", adopted=True)
        log.info("undo.settled_pending", entity=entity, adopted=len(adopted), sent=len(batch["source_ids"]))


def _plan(staging: Staging, client: CustomermatesClient, entity: str, run_id: str, id_column: dict[str, Any] | None, *, force: bool) -> None:
    """Sort the entity's records the run created into delete, edited and gone (`undo_records`),
    reading the target's ids and timestamps into the state file a page at a time."""
    staging.start_undo_target()
    read = ((n, r["id"], r.get("createdAt"), r.get("updatedAt")) for n, r in enumerate(_page_through(client, entity, id_column)))
    count = 0
    for rows in batched(read, READ_BATCH):
        staging.add_undo_target(rows)
        count += len(rows)
    if id_column:
        # a record deleted there while the listing went on moves the later ones back a place, and the
        # next page starts one late: what was not seen is looked up before it counts as already gone
        found = [
            hit for source_id, target_id in staging.undo_unseen(run_id, entity)
            for hit in client.find_by_column(entity, id_column["id"], source_id) if hit["id"] == target_id
        ]
        staging.add_undo_target([(count + n, r["id"], r.get("createdAt"), r.get("updatedAt")) for n, r in enumerate(found)])
    staging.plan_undo(run_id, entity)
    action = "would delete" if force else "kept (edited)"
    for rows in batched(staging.undo_records(entity, "delete"), READ_BATCH):
        staging.mark_undo_edited([r["seq"] for r in rows if edited_since_written(r["created_at"], r["updated_at"], r["written_at"])], action)


def _page_through(client: CustomermatesClient, entity: str, id_column: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    # sorted by the unique Pipedrive ID column: records created meanwhile (without one) come last
    sort = (id_column["id"], "asc") if id_column else ("createdAt", "asc")
    return client.iter_records(entity, sort=sort)


def _carry_out(staging: Staging, client: CustomermatesClient, entity: str, run_id: str, *, force: bool) -> None:
    """Log the records already gone, then delete the rest (the edited ones too with `force`)."""
    for rows in batched(staging.undo_records(entity, "gone"), READ_BATCH):
        staging.record_undone(entity, [(r["source_id"], r["target_id"]) for r in rows], run_id, "already_gone")
    targets = itertools.chain(staging.undo_records(entity, "delete"), staging.undo_records(entity, "edited") if force else ())
    try:
        write_idempotent(
            targets,
            lambda batch: client.delete_many(entity, [r["target_id"] for r in batch]),
            written=lambda batch: _undone(staging, entity, batch, run_id, "deleted"),
            # not found when sent again after an unknown outcome: that request deleted it
            gone=lambda batch, resent: _undone(staging, entity, batch, run_id, "deleted" if resent else "already_gone"),
            refused=lambda failed: staging.set_undo_outcomes([(r["seq"], "failed", message) for r, message in failed]),
        )
    except CustomermatesError as exc:
        raise MigrateError(
            f"{exc}. Everything deleted before this batch is recorded; run `migrate undo --run {run_id} --yes` again to finish"
        ) from None


def _undone(staging: Staging, entity: str, records: list[dict[str, Any]], run_id: str, outcome: str) -> None:
    """Log records deleted (or found gone) in `undone`, which takes them out of the id map, and give each its outcome."""
    staging.record_undone(entity, [(r["source_id"], r["target_id"]) for r in records], run_id, outcome)
    staging.set_undo_outcomes([(r["seq"], outcome.replace("_", " "), None) for r in records])


def _entities(staging: Staging, *, execute: bool, force: bool) -> dict[str, dict[str, int]]:
    """The counts per entity the undo reports, from its records."""
    counts = staging.undo_counts()
    entities = {}
    for entity in UNDO_ORDER:
        n = Counter(counts.get(entity))
        entities[entity] = {
            "created_by_run": n["records"],
            "delete": n["delete"] + (n["edited"] if force else 0),
            "kept_edited": 0 if force else n["edited"],
            "already_gone": n["already_gone"] if execute else n["gone"],
            "deleted": n["deleted"],
            "failed": n["failed"],
        }
    return entities


def _columns(
    staging: Staging,
    client: CustomermatesClient,
    mcp: McpClient | None,
    run_id: str,
    entities: dict[str, dict[str, int]],
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
            remaining = staging.migrated_count(entity) - entities[entity]["delete"] - entities[entity]["already_gone"]
        existing = {c["id"] for c in client.configuration(entity).get("customColumns") or []}
        for column in (c for c in created if c["entity"] == entity):
            if remaining > 0 and not force:
                rows.append({**column, "action": f"kept ({remaining} migrated {entity} still use the columns)"})
            elif column["id"] not in existing:
                if execute:
                    staging.forget_column(column["id"])
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
                staging.forget_column(column["id"])
                rows.append({**column, "action": "deleted"})
    return rows
