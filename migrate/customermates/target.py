"""A read of the target: every record of every entity, by Pipedrive ID.

One page-through per entity sorted by the Pipedrive ID column (⌈records/100⌉ searches);
shared by the plan (field diffs, conflicts), the loader (records deleted or duplicated in
Customermates) and deletions. The records go to the state file as they are read
(`target_snapshot`) and are looked up from there a batch at a time, so a million-record
target costs no memory (kept in Python, even compressed, it took about 1 KiB a record).

A sync may read only what changed since (`read_changes`): the records whose `updatedAt` is at
or after the server's clock when the last read began, less `READ_SINCE_MARGIN`, merged into the
snapshot, paged by `updatedAt` (`CustomermatesClient.iter_updated_since`). That finds every record
created or edited there since, by anyone; not a record deleted there, which only a whole read sees,
but for one a record read again no longer links to (`_look_up_links_lost`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from migrate.customermates.client import CustomermatesClient
from migrate.customermates.columns import ColumnIndex
from migrate.staging.store import Staging, batched
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER
from migrate.transform.entities import LINK_ENTITY

log = structlog.get_logger(__name__)

ROWS_PER_INSERT = 1000
# Covers what the server's Date header does not: its second resolution, a write's transaction
# committing after later ones began, app servers whose clocks differ a little.
READ_SINCE_MARGIN = timedelta(minutes=5)
READ_SINCE_KEY = "target_read_since"  # in the state file's meta: where the next read of what changed starts
# a relation of the create/update bodies → the field a record read back lists those records in
DTO_RELATIONS = {"organizationIds": "organizations", "contactIds": "contacts", "dealIds": "deals", "serviceIds": "services"}


def notes_digest(notes: Any) -> str:
    """A digest of a record's notes as Customermates returns them (Tiptap JSON, or null). Kept for
    each record as its write's answer gave them: a later read that differs is an edit made there
    (the markdown written is not what is read back, so the two cannot be compared)."""
    return hashlib.md5(json.dumps(notes, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


class TargetState:
    """What Customermates holds, keyed by Pipedrive ID, with ids translated back to Pipedrive ids.

    Without a staging file it is an empty target (a dry run with no Customermates to read)."""

    def __init__(
        self, staging: Staging | None = None, fingerprint: str | None = "", *, since: str | None = None, records_read: int = 0
    ):
        self.staging = staging
        self._fingerprint = fingerprint  # None: computed from the snapshot when asked for
        self.since = since  # None: the whole target was read; else only what changed from then on
        self.records_read = records_read

    @property
    def fingerprint(self) -> str:
        """A digest of the target as read (what a saved plan was made against)."""
        if self._fingerprint is None:
            self._fingerprint = self.staging.snapshot_fingerprint() if self.staging else ""
        return self._fingerprint

    @classmethod
    def read(cls, client: CustomermatesClient, columns: ColumnIndex, staging: Staging) -> TargetState:
        """Read the whole target."""
        staging.set_meta(READ_SINCE_KEY, None)  # a read cut short leaves part of a snapshot: the next must be whole
        staging.clear_target_snapshot()
        digest = hashlib.sha256()
        clock = _ReadClock(client)
        seq = 0
        for entity in ENTITY_ORDER:
            unmarked = _pipedrive_ids_unwritten(columns, staging, entity)
            for dto in clock.store(columns, entity, staging.add_to_target_snapshot, seq, unmarked=unmarked):
                digest.update(f"{entity}:{dto['id']}:{dto.get('updatedAt')}\n".encode())
                seq += 1
            for dto in _look_up_unseen(client, columns, staging, entity, seq, unmarked=unmarked):
                digest.update(f"{entity}:{dto['id']}:{dto.get('updatedAt')}\n".encode())
                seq += 1
            if unmarked:
                staging.snapshot_pids_from_id_map(entity)
        staging.set_meta(READ_SINCE_KEY, clock.since())
        return cls(staging, digest.hexdigest()[:32], records_read=seq)

    @classmethod
    def read_changes(cls, client: CustomermatesClient, columns: ColumnIndex, staging: Staging) -> TargetState:
        """Read only the records created or edited in the target since the last read began, and
        merge them into what that read kept; the whole target when no complete read is kept."""
        since = staging.meta(READ_SINCE_KEY)
        if since is None:
            return cls.read(client, columns, staging)
        clock = _ReadClock(client)
        read = 0
        for entity in ENTITY_ORDER:
            unmarked = _pipedrive_ids_unwritten(columns, staging, entity)
            column_id = columns.ids.get((entity, PIPEDRIVE_ID))
            dtos = clock.store(columns, entity, staging.merge_into_target_snapshot, read, since, unmarked=unmarked)
            for chunk in batched(dtos, ROWS_PER_INSERT):
                read += len(chunk)
                _look_up_links_lost(client, staging, entity, [(pid_of(dto, column_id), dto) for dto in chunk])
            if unmarked:
                staging.snapshot_pids_from_id_map(entity)
        staging.set_meta(READ_SINCE_KEY, clock.since())
        return cls(staging, None, since=since, records_read=read)

    def records(self, entity: str, pids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Pipedrive ID → the records carrying it (usually one; the first read first)."""
        return self.staging.snapshot_records(entity, pids) if self.staging and pids else {}

    def pids_of(self, target_ids: list[str]) -> dict[str, str]:
        """Customermates id → Pipedrive ID, for those of `target_ids` that carry one."""
        return self.staging.snapshot_pids(target_ids) if self.staging and target_ids else {}

    def pids_of_related(self, dtos: Iterable[dict[str, Any]]) -> dict[str, str]:
        """Customermates id → Pipedrive ID of every record these records link to (relations and
        deal services), for those that carry one; a migrated one deleted there since too, so that a
        record last read linking it is known to (`plan._comparable` leaves such links out)."""
        fields = sorted(set(DTO_RELATIONS.values()))
        return self.pids_of(sorted({ref["id"] for dto in dtos for name in fields for ref in dto.get(name) or []}))

    def duplicates(self, entity: str) -> dict[str, list[str]]:
        """Pipedrive IDs on more than one record → those records' ids."""
        return self.staging.snapshot_duplicates(entity) if self.staging else {}

    def present(self, entity: str, target_ids: list[str]) -> set[str]:
        """Those of `target_ids` the target holds."""
        return self.staging.snapshot_has(entity, target_ids) if self.staging and target_ids else set()

    def migrated_but_gone(self, entity: str) -> list[str]:
        """Source ids migrated to a record the target no longer holds (deleted there), sorted."""
        return self.staging.migrated_not_in_snapshot(entity) if self.staging else []


def linked_records(staging: Staging, payloads: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """entity → Pipedrive ID → Customermates id, for every migrated record these transformed payloads link to."""
    wanted: dict[str, set[str]] = {}
    for payload in payloads:
        for entity, pids in _links_of(payload):
            wanted.setdefault(entity, set()).update(pids)
    return {
        entity: {sid: target for sid, (target, _) in staging.id_map_for(entity, sorted(pids)).items()}
        for entity, pids in wanted.items()
        if pids
    }


def _links_of(payload: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(entity, Pipedrive ids) of the records a transformed payload links to, by relation; deal services too."""
    for key, pids in payload["links"].items():
        yield LINK_ENTITY[key], pids
    yield "services", [pid for pid, _ in payload.get("services") or []]


def _look_up_links_lost(client: CustomermatesClient, staging: Staging, entity: str, read: list[tuple[str | None, dict[str, Any]]]) -> None:
    """Records read again ((Pipedrive ID, record): changed there since the last read) that no longer
    link to a record their last write linked: a user unlinked them, or deleted the linked record, which
    a read of what changed does not see. Each such linked record the last read held is looked up by its
    id, and those gone are taken as a whole read takes them (`Staging.note_deleted_in_target`): the plan
    takes a link lost to one for no edit made in Customermates (it made the record a conflict, its
    Pipedrive edits skipped at every sync), and the load reports it deleted there."""
    written = staging.written_for(entity, [pid for pid, _ in read if pid is not None])
    linked = linked_records(staging, written.values())
    lost: dict[str, set[str]] = {}  # entity → Customermates ids
    for pid, dto in read:
        if pid not in written:
            continue
        for linked_entity, pids in _links_of(written[pid]):
            held = {ref["id"] for ref in dto.get(linked_entity) or []}  # a record's relations are named by entity
            targets = linked.get(linked_entity, {})
            lost.setdefault(linked_entity, set()).update(targets[p] for p in pids if p in targets and targets[p] not in held)
    for linked_entity, target_ids in lost.items():
        gone = [t for t in sorted(staging.snapshot_has(linked_entity, sorted(target_ids))) if client.get(linked_entity, t) is None]
        if gone:
            log.info("target.links_lost_to_deletions", entity=linked_entity, deleted=len(gone))
            staging.note_deleted_in_target(linked_entity, gone)


def _pipedrive_ids_unwritten(columns: ColumnIndex, staging: Staging, entity: str) -> bool:
    """Whether the entity's migrated records carry no Pipedrive ID: its column is to be made (a
    plan's) or was made since the last complete load (a user deleted it). Then the read goes by
    creation (sorted by an empty column, records come in no set order), and the id map says which
    Pipedrive record each is, where the column would: without, the plan took every migrated record
    for one deleted in Customermates."""
    return (entity, PIPEDRIVE_ID) in columns.made_since_load(staging) and staging.migrated_count(entity) > 0


def _look_up_unseen(
    client: CustomermatesClient, columns: ColumnIndex, staging: Staging, entity: str, first: int, *, unmarked: bool
) -> list[dict[str, Any]]:
    """Migrated records a whole read did not see, looked up by Pipedrive ID; those found go into
    the snapshot after the others (numbered from `first`) and are returned.

    Searches page by number: a record deleted in Customermates while the read goes on moves every
    later record one place back, and the next page starts one record late. Such a record would
    count as deleted there: reported, or, with `--on-target-deleted recreate`, created a second
    time. So every record the read missed is looked up (one search each) before it counts as gone;
    once, as a record id never comes back: later reads do not look up those found gone again
    (records a team deleted there would otherwise cost a search each at every whole read). By its
    Pipedrive ID, or, while the records carry none (`unmarked`: `_pipedrive_ids_unwritten`), by its
    Customermates id."""
    column_id = columns.ids.get((entity, PIPEDRIVE_ID))
    unseen = staging.migrated_not_in_snapshot(entity, unless_known_gone=True) if column_id is not None or unmarked else []
    found: dict[str, dict[str, Any]] = {}
    if unmarked:
        # the records hold no value in the Pipedrive ID column (`_pipedrive_ids_unwritten`), so none is found by
        # it: each is looked up by its own id
        targets = staging.id_map_for(entity, unseen)
        for pid in unseen:
            dto = client.get(entity, targets[pid][0])
            if dto is not None:
                found.setdefault(dto["id"], dto)
    else:
        for pid in unseen:
            for dto in client.find_by_column(entity, column_id, pid):
                found.setdefault(dto["id"], dto)
    staging.note_gone(entity, unseen, still_there=list(found))
    held = staging.snapshot_has(entity, list(found)) if found else set()
    fresh = [dto for target_id, dto in found.items() if target_id not in held]
    if unseen:
        log.info("target.unseen_looked_up", entity=entity, unseen=len(unseen), found=len(fresh))
    rows = [(first + n, dto["id"], pid_of(dto, column_id), json.dumps(dto, separators=(",", ":"), ensure_ascii=False)) for n, dto in enumerate(fresh)]
    staging.add_to_target_snapshot(entity, rows)
    return fresh


def pid_of(dto: dict[str, Any], column_id: str | None) -> str | None:
    """The record's value in the Pipedrive ID column."""
    return next((v["value"] for v in dto.get("customFieldValues") or [] if v.get("columnId") == column_id), None)


class _ReadClock:
    """Pages through the target and notes the server's clock when the read began: the next read
    of what changed starts from there (less a margin), so a record written while this read went
    on, whichever page it fell on, is read again next time."""

    def __init__(self, client: CustomermatesClient):
        self.client = client
        self.began: datetime | None = None
        client.last_read_date = None

    def records(
        self, columns: ColumnIndex, entity: str, since: str | None = None, *, unmarked: bool = False
    ) -> Iterator[tuple[str | None, dict[str, Any]]]:
        """(Pipedrive ID or None, record) of the entity's records, sorted by the Pipedrive ID column,
        or by creation when the records carry none (`unmarked`: `_pipedrive_ids_unwritten`); with
        `since`, those changed since, in the order they changed (`iter_updated_since`)."""
        column_id = columns.ids.get((entity, PIPEDRIVE_ID))
        if column_id is None and not unmarked:
            return
        if since is None:
            dtos = self.client.iter_records(entity) if unmarked else self.client.iter_records(entity, sort=(column_id, "asc"))
        else:
            dtos = self.client.iter_updated_since(entity, since)
        for dto in dtos:
            self.began = self.began or self.client.last_read_date  # the first page's answer
            yield pid_of(dto, column_id), dto
        self.began = self.began or self.client.last_read_date  # no records: the empty page's answer

    def store(
        self, columns: ColumnIndex, entity: str, write: Callable[[str, list[tuple[int, str, str | None, str]]], None],
        first: int, since: str | None = None, *, unmarked: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Page through the entity's records into `write` (rows numbered from `first` in read
        order, `ROWS_PER_INSERT` at a time), yielding each record as it is read."""
        rows: list[tuple[int, str, str | None, str]] = []
        for pid, dto in self.records(columns, entity, since, unmarked=unmarked):
            rows.append((first + len(rows), dto["id"], pid, json.dumps(dto, separators=(",", ":"), ensure_ascii=False)))
            yield dto
            if len(rows) >= ROWS_PER_INSERT:
                write(entity, rows)
                first += len(rows)
                rows = []
        write(entity, rows)

    def since(self) -> str | None:
        """When the next read of what changed starts, as the server's filters take it (a `Z` time)."""
        if self.began is None:  # no answer carried a date: the next read is whole
            return None
        began = self.began if self.began.tzinfo else self.began.replace(tzinfo=UTC)
        return (began.astimezone(UTC) - READ_SINCE_MARGIN).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def find_by_pipedrive_id(client: CustomermatesClient, entity: str, column_id: str, source_ids: list[str]) -> dict[str, list[str]]:
    """Pipedrive ID → the ids of every Customermates record carrying it, for those of `source_ids`
    the target holds (the records of an uncertain create batch). Costs min(len(source_ids),
    ⌈target size/100⌉) search calls: a page-through sorted by the ID column when that is cheaper."""
    total = client.search(entity, page=1, page_size=5)["pagination"]["total"]
    wanted = set(source_ids)
    matches: dict[str, list[str]] = {}
    look_up = source_ids
    if len(source_ids) > (total + 99) // 100:
        read = 0
        for record in client.iter_records(entity, sort=(column_id, "asc")):
            read += 1
            sid = pid_of(record, column_id)
            if sid in wanted and record["id"] not in matches.get(sid, []):  # read twice if the list moved
                matches.setdefault(sid, []).append(record["id"])
        # records came or went while it was read: pages by number then skip a record where the
        # list moved back, so what was not seen is looked up one by one
        look_up = sorted(wanted - matches.keys()) if read != total else []
    for sid in look_up:
        hits = client.find_by_column(entity, column_id, sid)
        if hits:
            matches[sid] = [h["id"] for h in hits]
    return matches
