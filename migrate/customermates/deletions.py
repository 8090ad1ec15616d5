"""Records deleted in Pipedrive after they were migrated: `migrate sync --deletes mark|delete|ignore`.

`mark` (the default) writes the deletion date into a "Deleted in Pipedrive" date column and
keeps the record; `delete` removes it from Customermates and forgets
it, so that the target equals what a fresh migration would produce; `ignore` leaves it. A
user deciding to delete data in the target must say so. Marks and deletes go 50 records a request
(`write_idempotent`: one whose outcome is unknown is sent again in halves).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import structlog

from migrate.customermates.client import SINGULAR, CustomermatesClient
from migrate.customermates.columns import MARK_KEY, ColumnIndex
from migrate.customermates.idempotent import write_idempotent
from migrate.customermates.mcp import McpClient
from migrate.customermates.target import TargetState
from migrate.staging.store import Staging, raw_table
from migrate.transform.engine import ENTITY_ORDER, ENTITY_SOURCES, V1_ENCODED

log = structlog.get_logger(__name__)

POLICIES = ("mark", "delete", "ignore")
MARK_LABEL = "Deleted in Pipedrive"
Gone = tuple[str, tuple[str, str]]  # (Pipedrive id, (Customermates id, deletion date)), as `deleted_since_migrated` gives them


def deleted_since_migrated(staging: Staging, entity: str) -> dict[str, tuple[str, str]]:
    """Pipedrive id → (Customermates id, deletion date) for migrated records now deleted in Pipedrive:
    the day a vanished one was found gone, else the date Pipedrive gives (its update_time), else today
    (Pipedrive gave none). Matched in SQL: only those two fields of the migrated ones are read, however
    many were deleted."""
    gone: dict[str, tuple[str, str]] = {}
    today = datetime.now(UTC).date().isoformat()
    for collection in ENTITY_SOURCES[entity]:
        if not staging.has_collection(collection):
            continue
        prefix = "lead:" if collection in V1_ENCODED else ""
        rows = staging.con.execute(
            f"SELECT m.source_id, m.target_id, left(coalesce(nullif(r.data->>'vanished_at', ''), nullif(r.data->>'update_time', ''), $today), 10) FROM {raw_table(collection)} r "
            "JOIN id_map m ON m.entity = $e AND m.source_id = $p || r.id WHERE r.is_deleted ORDER BY r.id",
            {"e": entity, "p": prefix, "today": today},
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
        in_flight = _deletes_in_flight(staging, entity)
        present = state.present(entity, [target_id for target_id, _ in gone.values()])
        removed_first = [(sid, value) for sid, value in sorted(gone.items()) if value[0] not in present]
        if removed_first:  # the last read found them gone: nothing to ask for
            done[entity] += _removed(staging, entity, [item for item in removed_first if item[0] in in_flight], run_id)
            _removed_first(staging, entity, [item for item in removed_first if item[0] not in in_flight], run_id)
        gone = {sid: value for sid, value in gone.items() if value[0] in present}
        if policy == "delete" and gone:
            done[entity] += _delete(staging, client, entity, gone, in_flight, run_id)
        elif gone:
            done[entity] += _mark(staging, client, mcp, entity, gone, state, run_id)
        _settle_deletes_in_flight(staging, entity, run_id)
    return done


def _deletes_in_flight(staging: Staging, entity: str) -> set[str]:
    """The Pipedrive ids of the records a sync killed before it learnt its deletes' outcome was removing
    (its pending delete batches): one the server no longer has was removed by that request."""
    return {sid for batch in staging.pending_batches(entity, "delete") for sid in batch["source_ids"]}


def _settle_deletes_in_flight(staging: Staging, entity: str, run_id: str) -> None:
    """The entity's deletes are settled: what this sync knows of each outcome is in the state file."""
    for batch in staging.pending_batches(entity, "delete"):
        staging.commit_batch(batch["batch_id"], entity, [], run_id)


def _delete(
    staging: Staging, client: CustomermatesClient, entity: str, gone: dict[str, tuple[str, str]], in_flight: set[str], run_id: str
) -> int:
    """Remove them from Customermates and forget them: returns how many this sync removed. Those a
    user removed first are reported so; those the server refuses to remove stay, reported with its words.
    Each request is noted as pending first (`_deletes_in_flight`: a killed sync's are `in_flight`)."""
    removed: list[str] = []

    def deleted(items: list[Gone]) -> None:
        removed.extend(sid for sid, _ in items)
        _removed(staging, entity, items, run_id)

    def not_found(items: list[Gone], resent: bool) -> None:
        ours = [item for item in items if resent or item[0] in in_flight]  # the request whose answer was lost removed them
        deleted(ours)
        _removed_first(staging, entity, [item for item in items if item not in ours], run_id)

    def send(batch: list[Gone]) -> None:
        staging.record_pending(entity, "delete", [sid for sid, _ in batch], [], run_id)
        client.delete_many(entity, [target for _, (target, _) in batch])

    def refused(items: list[tuple[Gone, str]]) -> None:
        staging.add_load_issues(
            [(run_id, entity, sid, "*", "deleted_in_pipedrive_not_removed", f"{entity[:-1]} {sid} deleted in Pipedrive; Customermates refused to remove it: {message}")
             for (sid, _), message in items]
        )

    write_idempotent(sorted(gone.items()), send, written=deleted, gone=not_found, refused=refused)
    return len(removed)


def _removed(staging: Staging, entity: str, items: list[Gone], run_id: str) -> int:
    """Records this tool removed from Customermates: forgotten and reported; returns how many."""
    if items:
        _forget(staging, entity, items)
        staging.add_load_issues(
            [(run_id, entity, sid, "*", "deleted_in_pipedrive_removed", f"{entity[:-1]} {sid} deleted in Pipedrive; removed from Customermates") for sid, _ in items]
        )
    return len(items)


def _forget(staging: Staging, entity: str, items: list[Gone]) -> None:
    """Records gone from Customermates: no longer migrated, nor held as there."""
    staging.forget(entity, [sid for sid, _ in items])
    staging.drop_from_target_snapshot(entity, [target for _, (target, _) in items])


def _removed_first(staging: Staging, entity: str, items: list[Gone], run_id: str) -> None:
    """Records a user removed from Customermates before the sync came to them, found so by the last read
    (a whole one, or one that read again a record that lost its link to one) or by the server's refusal of
    a request (a sync reading only what changed there still holds them): reported and forgotten, so that no
    later sync asks again."""
    if not items:
        return
    _forget(staging, entity, items)
    staging.add_load_issues(
        [(run_id, entity, sid, "*", "deleted_in_pipedrive_already_removed", f"{entity[:-1]} {sid} deleted in Pipedrive; already removed from Customermates")
         for sid, _ in items]
    )


def _mark(
    staging: Staging, client: CustomermatesClient, mcp: McpClient, entity: str, gone: dict[str, tuple[str, str]], state: TargetState, run_id: str
) -> int:
    """Write the deletion date into the mark column of those not marked yet: returns how many this sync
    marked. Those a user removed from Customermates first are reported so (as `_delete` does)."""
    column_id = _mark_column(staging, client, mcp, entity, run_id)
    unmarked: list[Gone] = []
    held = state.records(entity, sorted(gone))
    for sid, (target_id, day) in sorted(gone.items()):
        dto = next((d for d in held.get(sid, []) if d["id"] == target_id), None)
        current = next((c["value"] for c in (dto or {}).get("customFieldValues") or [] if c["columnId"] == column_id), None)
        if current:
            continue  # marked by an earlier sync
        unmarked.append((sid, (target_id, day)))
    marked: list[str] = []

    def written(items: list[Gone]) -> None:
        staging.note_written(entity, [sid for sid, _ in items])
        marked.extend(sid for sid, _ in items)

    write_idempotent(
        unmarked,
        lambda batch: client.update_many(
            entity, [{"id": target_id, "customFieldValues": [{"columnId": column_id, "value": day or None}]} for _, (target_id, day) in batch]
        ),
        written=written, gone=lambda items, _resent: _removed_first(staging, entity, items, run_id),
    )
    return len(marked)


def _unmark_restored(staging: Staging, client: CustomermatesClient, entity: str, run_id: str) -> None:
    """Records a sync marked deleted in Pipedrive that are back there (restored within Pipedrive's 30
    days): the mark is taken off, as the date it holds is no longer true. Found in the target as read
    (its marked records whose Pipedrive ID a live staged record has, migrated to that very record).
    One a user deleted in Customermates since is no longer held as there: the next sync's load finds it
    so (reported, or with `--on-target-deleted recreate` created again)."""
    column_id = _find_mark_column(staging, entity, client.configuration(entity).get("customColumns") or [])
    if column_id is None:
        return

    def written(items: list[tuple[str, str]]) -> None:
        staging.note_written(entity, [sid for sid, _ in items])
        staging.add_load_issues(
            [(run_id, entity, sid, MARK_LABEL, "restored_in_pipedrive", f"{entity[:-1]} {sid} is back in Pipedrive; its deletion mark was taken off")
             for sid, _ in items]
        )

    def deleted_there(items: list[tuple[str, str]], _resent: bool) -> None:
        staging.drop_from_target_snapshot(entity, [target_id for _, target_id in items])
        staging.add_load_issues(
            [(run_id, entity, sid, "*", "deleted_in_target", f"{entity[:-1]} {sid} is back in Pipedrive, but was deleted in Customermates "
              "after it was migrated: its deletion mark is gone with it (the next sync reports it, or with --on-target-deleted recreate creates it again)")
             for sid, _ in items]
        )

    write_idempotent(
        staging.marked_but_live(entity, column_id),
        lambda batch: client.update_many(entity, [{"id": target_id, "customFieldValues": [{"columnId": column_id, "value": None}]} for _, target_id in batch]),
        written=written, gone=deleted_there,
    )


def _find_mark_column(staging: Staging, entity: str, columns: list[dict[str, Any]]) -> str | None:
    """The id of the entity's mark column among `columns` (its configuration's): the one the state file
    keeps, whatever a user renamed it to (another column a user labels so is theirs); else, when that
    is gone or none was kept, one labelled and typed as the mark is that no other key of the state
    file's holds. None when there is none."""
    known = staging.column_map()
    kept = known.get((entity, MARK_KEY))
    if kept and kept["id"] in {c["id"] for c in columns}:
        return kept["id"]
    taken = {c["id"] for (e, _), c in known.items() if e == entity}.union(*staging.replaced_columns().values())
    return next((c["id"] for c in columns if c.get("label") == MARK_LABEL and c.get("type") == "date" and c["id"] not in taken), None)


def _mark_column(staging: Staging, client: CustomermatesClient, mcp: McpClient, entity: str, run_id: str) -> str:
    """The entity's mark column (`_find_mark_column`: one found by its label is kept in the state file
    from then on, as found there), or one made and kept as the run's, for its `undo --columns`
    (pending first, as the migration's columns are)."""
    columns = client.configuration(entity).get("customColumns") or []
    column_id = _find_mark_column(staging, entity, columns)
    if column_id is not None:
        if (staging.column_map().get((entity, MARK_KEY)) or {}).get("id") != column_id:
            staging.save_column(entity, MARK_KEY, {"id": column_id, "label": MARK_LABEL, "type": "date"}, None)
        return column_id
    log.info("deletions.mark_column", entity=entity)
    with staging.transaction():
        staging.record_pending_column(entity, MARK_KEY, {"label": MARK_LABEL, "type": "date"}, [c["id"] for c in columns], run_id)
    column_id = mcp.create_custom_column(SINGULAR[entity], MARK_LABEL, "date")
    staging.save_column(entity, MARK_KEY, {"id": column_id, "label": MARK_LABEL, "type": "date"}, run_id)
    return column_id
