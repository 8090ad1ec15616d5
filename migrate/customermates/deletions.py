"""Records deleted in Pipedrive after they were migrated: `migrate sync --deletes mark|delete|ignore`.

`mark` (the default) writes the deletion date into a "Deleted in Pipedrive" date column and
keeps the record; `delete` removes it from Customermates (100 ids per request) and forgets
it, so that the target equals what a fresh migration would produce; `ignore` leaves it. A
user deciding to delete data in the target must say so.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

from migrate.customermates.client import (
    SINGULAR,
    BatchRejectedError,
    CustomermatesClient,
    UncertainWriteError,
)
from migrate.customermates.columns import MARK_KEY, ColumnIndex
from migrate.customermates.mcp import McpClient
from migrate.customermates.target import TargetState
from migrate.staging.store import Staging, raw_table
from migrate.transform.engine import ENTITY_ORDER, ENTITY_SOURCES, V1_ENCODED

log = structlog.get_logger(__name__)

POLICIES = ("mark", "delete", "ignore")
MARK_LABEL = "Deleted in Pipedrive"
BATCH = 100


def deleted_since_migrated(staging: Staging, entity: str) -> dict[str, tuple[str, str]]:
    """Pipedrive id → (Customermates id, deletion date) for migrated records now deleted in Pipedrive:
    the day a vanished one was found gone, else the date Pipedrive gives (its update_time). Matched
    in SQL: only those two fields of the migrated ones are read, however many were deleted."""
    gone: dict[str, tuple[str, str]] = {}
    for collection in ENTITY_SOURCES[entity]:
        if not staging.has_collection(collection):
            continue
        prefix = "lead:" if collection in V1_ENCODED else ""
        rows = staging.con.execute(
            f"SELECT m.source_id, m.target_id, left(coalesce(r.data->>'vanished_at', r.data->>'update_time', ''), 10) FROM {raw_table(collection)} r "
            "JOIN id_map m ON m.entity = $e AND m.source_id = $p || r.id WHERE r.is_deleted ORDER BY r.id",
            {"e": entity, "p": prefix},
        ).fetchall()
        gone.update({sid: (target_id, day) for sid, target_id, day in rows})
    return gone


def propagate_deletions(
    staging: Staging,
    client: CustomermatesClient,
    mcp: McpClient,
    columns: ColumnIndex,
    state: TargetState,
    policy: str,
    run_id: str,
) -> Counter[str]:
    """Apply `policy` to every migrated record deleted in Pipedrive; returns counts per entity."""
    if policy not in POLICIES:
        raise ValueError(f"deletes policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    done: Counter[str] = Counter()
    if policy == "ignore":
        return done
    for entity in reversed(ENTITY_ORDER):
        _unmark_restored(staging, client, entity, run_id)
        gone = deleted_since_migrated(staging, entity)
        present = state.present(entity, [target_id for target_id, _ in gone.values()])
        gone = {sid: value for sid, value in gone.items() if value[0] in present}
        if not gone:
            continue
        if policy == "delete":
            done[entity] += _delete(staging, client, entity, gone, run_id)
        else:
            done[entity] += _mark(staging, client, mcp, entity, gone, state, run_id)
    return done


def _delete(staging: Staging, client: CustomermatesClient, entity: str, gone: dict[str, tuple[str, str]], run_id: str) -> int:
    items = sorted(gone.items())
    deleted = 0
    for start in range(0, len(items), BATCH):
        chunk, already = _delete_chunk(staging, client, entity, items[start : start + BATCH], run_id)
        removed = chunk + [(sid, gone[sid]) for sid in already]
        staging.forget(entity, [sid for sid, _ in removed])
        staging.drop_from_target_snapshot(entity, [target for _, (target, _) in removed])  # not held any more
        staging.add_load_issues(
            [(run_id, entity, sid, "*", "deleted_in_pipedrive_removed", f"{entity[:-1]} {sid} deleted in Pipedrive; removed from Customermates") for sid, _ in chunk]
            + [(run_id, entity, sid, "*", "deleted_in_pipedrive_already_removed", f"{entity[:-1]} {sid} deleted in Pipedrive; already removed from Customermates") for sid in already]
        )
        deleted += len(chunk)
    return deleted


DELETE_TRIES = 3


def _delete_chunk(
    staging: Staging, client: CustomermatesClient, entity: str, chunk: list[tuple[str, tuple[str, str]]], run_id: str
) -> tuple[list[tuple[str, tuple[str, str]]], list[str]]:
    """Delete one request's worth: returns (those this sync removed, the source ids a user removed
    first). A refused request deleted nothing: the ids it names are set apart (not found: removed
    already; else reported) and the rest sent again. A lost answer sends them all again: those the
    server then does not find, the lost request removed."""
    removed: list[tuple[str, tuple[str, str]]] = []
    already: list[str] = []
    answer_lost = False
    attempt = 0
    while True:
        attempt += 1
        try:
            client.delete_many(entity, [target for _, (target, _) in chunk])
        except UncertainWriteError:
            if attempt == DELETE_TRIES:
                raise
            answer_lost = True
            continue
        except BatchRejectedError as exc:
            named = {i.item_index(): i.message for i in exc.issues}
            refused = [(n, sid, named[n]) for n, (sid, _) in enumerate(chunk) if n in named]
            not_found = [n for n, _, message in refused if "not found" in message]
            if answer_lost:
                removed += [chunk[n] for n in not_found]
            else:
                already += [chunk[n][0] for n in not_found]
            staging.add_load_issues(
                [(run_id, entity, sid, "*", "deleted_in_pipedrive_not_removed", f"{entity[:-1]} {sid} deleted in Pipedrive; Customermates refused to remove it: {message}")
                 for n, sid, message in refused if n not in not_found]
            )
            chunk = [item for n, item in enumerate(chunk) if n not in named]
            if chunk and attempt == DELETE_TRIES:
                raise
            if chunk:
                continue
        return removed + chunk, already


def _mark(
    staging: Staging, client: CustomermatesClient, mcp: McpClient, entity: str, gone: dict[str, tuple[str, str]], state: TargetState, run_id: str
) -> int:
    column_id = _mark_column(staging, client, mcp, entity, run_id)
    updates: list[tuple[str, dict[str, Any]]] = []
    held = state.records(entity, sorted(gone))
    for sid, (target_id, day) in sorted(gone.items()):
        dto = next((d for d in held.get(sid, []) if d["id"] == target_id), None)
        current = next((c["value"] for c in (dto or {}).get("customFieldValues") or [] if c["columnId"] == column_id), None)
        if current:
            continue  # marked by an earlier sync
        updates.append((sid, {"id": target_id, "customFieldValues": [{"columnId": column_id, "value": day or None}]}))
    for start in range(0, len(updates), BATCH):
        chunk = updates[start : start + BATCH]
        client.update_many(entity, [body for _, body in chunk])
        staging.note_written(entity, [sid for sid, _ in chunk])
    return len(updates)


def _unmark_restored(staging: Staging, client: CustomermatesClient, entity: str, run_id: str) -> int:
    """Records a sync marked deleted in Pipedrive that are back there (restored within Pipedrive's 30
    days): the mark is taken off, as the date it holds is no longer true. Found in the target as read
    (its marked records whose Pipedrive ID a live staged record has, migrated to that very record)."""
    column_id = next(
        (c["id"] for c in client.configuration(entity).get("customColumns") or [] if c.get("label") == MARK_LABEL and c.get("type") == "date"),
        None,
    )
    if column_id is None:
        return 0
    restored = staging.marked_but_live(entity, column_id)
    for start in range(0, len(restored), BATCH):
        chunk = restored[start : start + BATCH]
        client.update_many(entity, [{"id": target_id, "customFieldValues": [{"columnId": column_id, "value": None}]} for _, target_id in chunk])
        staging.note_written(entity, [sid for sid, _ in chunk])
        staging.add_load_issues(
            [(run_id, entity, sid, MARK_LABEL, "restored_in_pipedrive", f"{entity[:-1]} {sid} is back in Pipedrive; its deletion mark was taken off")
             for sid, _ in chunk]
        )
    return len(restored)


def _mark_column(staging: Staging, client: CustomermatesClient, mcp: McpClient, entity: str, run_id: str) -> str:
    """The entity's mark column: found by its label, or made and kept in the state file as the
    run's, for its `undo --columns` (pending first, as the migration's columns are)."""
    columns = client.configuration(entity).get("customColumns") or []
    for column in columns:
        if column.get("label") == MARK_LABEL and column.get("type") == "date":
            return column["id"]
    log.info("deletions.mark_column", entity=entity)
    staging.record_pending_column(entity, MARK_KEY, {"label": MARK_LABEL, "type": "date"}, [c["id"] for c in columns], run_id)
    column_id = mcp.create_custom_column(SINGULAR[entity], MARK_LABEL, "date")
    staging.save_column(entity, MARK_KEY, {"id": column_id, "label": MARK_LABEL, "type": "date"}, run_id)
    return column_id
