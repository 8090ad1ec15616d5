"""Load: target records from staging → Customermates, in dependency order, exactly once.

The protocol (see README, "Crash safety"):

1. Every record carries its Pipedrive id in the "Pipedrive ID" column, and the state keeps an
   id map (entity, Pipedrive id) → (Customermates id, hash of the body last written).
2. Intent before effect: a batch is recorded as pending (its Pipedrive ids and hashes) before
   the request; the response's ids (in input order) and the removal of the pending row are
   committed in one transaction after it.
3. An uncertain outcome (5xx, timeout, dropped connection, or a crash found on restart) is
   settled by reading the target by Pipedrive ID: records found are adopted, the rest are
   sent again, in smaller batches.
4. A 400 is certain (the batch is all-or-nothing and nothing was written): the batch is split
   to isolate the records the server names, the others are loaded and each failing record is
   quarantined with the server's message.
5. A rerun skips records whose body hash is unchanged and updates the changed ones. When the
   users and columns are those of the last complete load, it builds bodies only for the records
   that may have changed (`Staging.mark_load_candidates`); the others are counted unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from migrate import stopping
from migrate.customermates.client import (
    MAX_REQUEST_BYTES,
    BatchRejectedError,
    CustomermatesClient,
    Issue,
    RequestTooLargeError,
    UncertainWriteError,
    encoded_size,
)
from migrate.customermates.columns import NEW_COLUMNS_KEY, ColumnIndex
from migrate.customermates.target import TargetState, find_by_pipedrive_id, linked_records, notes_digest
from migrate.errors import CustomermatesError
from migrate.staging.store import Staging
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.encoders import user_label
from migrate.transform.engine import ENTITY_ORDER
from migrate.transform.entities import LINK_ENTITY
from migrate.transform.records import payload_hash

log = structlog.get_logger(__name__)

MAX_BATCH = 100  # the server's limit per request
DEFAULT_MAX_BATCH = 50  # the contract's advice (§ Observed): a lone batch of 100 contacts took 6.7 s once, and failed
MIN_BATCH = 5
START_BATCH = 50  # the recorded server took ~0.75 s for 50 contacts; the size adapts from there
SLOW_BATCH_SECONDS = 2.5  # the server's transaction limit is 5 s: stay well under it
FAST_BATCH_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 10  # uncertain writes with no write between: the server is down, not one record
MAX_BACKOFF_SECONDS = 2.0
LOAD_CONTEXT_KEY = "load_context"  # in the state file's meta: what bodies depended on at the last complete load
LOAD_USERS_KEY = "load_users"  # in the state file's meta: the user map the last complete load wrote bodies with (JSON)
# The relations each entity's records set (from their side only: links are symmetric). A body names only
# the links a record has, and an update without a relation's key leaves it as it is: an update sends each
# of these, empty when the record has none left.
LINKS_SET = {"contacts": ("organizationIds",), "deals": ("organizationIds", "contactIds"), "tasks": ("contactIds", "organizationIds", "dealIds")}
RELATIONS_SET = {**LINKS_SET, "deals": (*LINKS_SET["deals"], "services")}  # and a deal's services, replaced the same way
RECREATE_ADVICE = "run with --on-target-deleted recreate to create it again"  # for records deleted in Customermates
QUOTED_VALUE_CHARS = 200  # of a refused custom value, in its quarantine message (the body keeps it whole)
_VALUE_PATH = re.compile(r"\w+\[\d+\]\.customFieldValues\[(?P<index>\d+)\]\.(?:value|columnId)")  # a custom value of a write's body
_OPTION_REFUSED = "single select value is invalid"  # the server's refusal of an option id it has not (contract §6)
_SERVICE_PATH = re.compile(r"deals\[\d+\]\.services\[(?P<deal>\d+)\]")  # an unknown service in deal create-many (contract §3.8)
_LINK_PATH = re.compile(r"(?P<entity>\w+)\[0\]\.(?P<key>\w+)\[(?P<index>\d+)\]")  # a link of a one-record write's body


@dataclass
class LoadSummary:
    created: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    unchanged: Counter[str] = field(default_factory=Counter)
    adopted: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    deleted_in_target: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    deleted_in_pipedrive: Counter[str] = field(default_factory=Counter)  # marked or removed by a sync
    recreated: Counter[str] = field(default_factory=Counter)
    duplicates_in_target: list[dict[str, Any]] = field(default_factory=list)
    unmatched_users: list[dict[str, Any]] = field(default_factory=list)
    write_requests: int = 0
    write_seconds: float = 0.0  # inside the write requests
    records_written: int = 0
    seconds: float = 0.0  # the whole load: users, pending batches, target reads, bodies, writes, bookkeeping

    @property
    def records_per_second(self) -> float:
        """While writing: the server's pace, as the requests saw it."""
        return self.records_written / self.write_seconds if self.write_seconds else 0.0

    @property
    def records_per_second_overall(self) -> float:
        """Over the whole load: what a user waits for."""
        return self.records_written / self.seconds if self.seconds else 0.0


@dataclass
class _Item:
    source_id: str
    body: dict[str, Any]
    digest: str
    target_id: str | None = None  # set for updates
    payload: dict[str, Any] | None = None  # the transformed payload the body was built from
    create_body: dict[str, Any] | None = None  # for updates: the body to create it with, should the target have lost it
    as_written: bool = False  # for updates: the payload is the one last written (`Loader.context_update`)
    kept: Container[str] = ()  # for updates: the columns it leaves as they are (`Loader.as_update`)
    relations_sent: dict[str, list[Any]] | None = None  # for updates: the relations last sent, when known
    size: int = 0  # bytes of `body` in a request, once measured
    failed_in: list[int] = field(default_factory=list)  # sizes of the batches that failed uncertainly with it


ProgressFn = Callable[[str, int], None]


class Loader:
    def __init__(
        self,
        staging: Staging,
        client: CustomermatesClient,
        columns: ColumnIndex,
        run_id: str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        on_target_deleted: str = "report",
        target: TargetState | None = None,
        conflicts: dict[str, set[str]] | None = None,
        on_conflict: str = "skip",
        progress: ProgressFn | None = None,
    ):
        if on_conflict not in ("skip", "source-wins", "target-wins"):
            raise ValueError(f"on_conflict must be skip, source-wins or target-wins, not {on_conflict!r}")
        self.target = target
        self.conflicts = conflicts or {}
        self.on_conflict = on_conflict
        if on_target_deleted not in ("report", "recreate"):
            raise ValueError(f"on_target_deleted must be report or recreate, not {on_target_deleted!r}")
        self.on_target_deleted = on_target_deleted
        self.gone: dict[str, set[str]] = {}
        # entity → Customermates id → Pipedrive id: records a refused link showed deleted, created again (`_found_deleted`)
        self.replaced: dict[str, dict[str, str]] = {}
        self.staging = staging
        self.client = client
        self.columns = columns
        self.run_id = run_id
        self.max_batch = max(1, min(MAX_BATCH, max_batch))
        self.min_batch = min(MIN_BATCH, self.max_batch)
        self.batch_size = min(START_BATCH, self.max_batch)
        self.ceiling = self.max_batch  # lowered below any size whose write failed uncertainly
        self.failed_sizes: Counter[int] = Counter()  # sizes of the batches that failed uncertainly, but those a record explains
        self.max_request_bytes = max_request_bytes  # lowered when the host refuses a body as too large
        self.progress = progress
        self.summary = LoadSummary()
        self.user_map: dict[str, str] = {}
        self.users_removed: set[str] = set()  # Customermates users found removed from the company during the load
        self.written_user_map: dict[str, str] | None = None  # the user map of the last complete load, if known
        self.made_since_load: set[tuple[str, ...]] = set()  # columns and options made since it (`ColumnIndex`)
        self.only_candidates = False
        self._issue_rows: list[tuple[str, str, str, str, str, str]] = []  # noted while bodies are built, saved a batch at a time
        self.failures_in_a_row = 0  # uncertain writes since the last write that went through
        self.writes_done = 0  # write requests that went through
        self.set_aside: list[tuple[str, str, _Item, int]] = []  # (entity, operation, item, writes_done then): failed alone once
        self.set_aside_alone = False  # the entity's only record set aside: a read may vouch for the server
        # (entity, operation, item, writes_done then): failed alone again with nothing written since; the later
        # entities' writes tell a record Customermates refuses from a server that is down (`_retry_deferred`)
        self.deferred: list[tuple[str, str, _Item, int]] = []
        self.last_chance = False  # sending the deferred records again, after every entity

    # -- users ----------------------------------------------------------------------------
    def match_users(self) -> None:
        """Pipedrive users → Customermates users by email (case-insensitive). Owners without a
        match are reported once each, with the number of records they own."""
        written = self.staging.meta(LOAD_USERS_KEY)
        self.written_user_map = json.loads(written) if written else None
        pipedrive_users = {str(u["id"]): u for u in self.staging.iter_raw("users")}
        matched = users_by_email(pipedrive_users.values(), self.client.list_users())
        owned = self.staging.referenced_users()
        self.user_map = {uid: matched[uid] for uid in sorted(owned) if uid in matched}
        self.summary.unmatched_users = unmatched_owners(pipedrive_users, owned, self.user_map)
        for owner in self.summary.unmatched_users:
            self._note_issue(*owner_unmatched_issue(owner))

    # -- request bodies ---------------------------------------------------------------------
    def build_body(self, entity: str, source_id: str, payload: dict[str, Any], linked: dict[str, dict[str, str]]) -> dict[str, Any]:
        """The create body: relations (by `linked`, entity → Pipedrive ID → Customermates id, from
        `linked_records`) and users resolved to Customermates ids, values to column ids."""
        body: dict[str, Any] = dict(payload["fields"])
        for key, ids in payload["links"].items():
            target_entity = LINK_ENTITY[key]
            resolved = []
            for pid in ids:
                mapped = linked.get(target_entity, {}).get(pid)
                if pid in self.gone.get(target_entity, ()):
                    self._link_to_gone(entity, source_id, key, target_entity, pid)
                elif mapped is None:
                    self._note_issue(
                        entity, source_id, key, "link_target_not_loaded",
                        f"{target_entity[:-1]} {pid} was not written (Customermates failed on it; see the quarantine); link dropped until a run writes it",
                    )
                elif mapped not in resolved:
                    resolved.append(mapped)
            body[key] = resolved
        if entity == "deals":
            services = []
            for pid, quantity in payload["services"]:
                mapped = linked.get("services", {}).get(pid)
                if pid in self.gone.get("services", ()):
                    self._link_to_gone(entity, source_id, "services", "services", pid)
                elif mapped is None:
                    self._note_issue(
                        entity, source_id, "services", "link_target_not_loaded",
                        f"service {pid} was not written (Customermates failed on it; see the quarantine); not linked until a run writes it",
                    )
                else:
                    services.append({"serviceId": mapped, "quantity": quantity})
            body["services"] = services
        body["userIds"] = matched_users(payload["users"], self.user_map)
        values = []
        for key, value in payload["values"].items():
            column_id = self.columns.ids.get((entity, key))
            if column_id is None:
                raise CustomermatesError(f"no Customermates column for {entity}.{key}; run the column setup again")
            options = self.columns.options.get((entity, key))
            if options is not None:
                if value not in options:
                    raise CustomermatesError(f"column {entity}.{key} has no option {value!r}")
                value = options[value]
            values.append({"columnId": column_id, "value": value})
        body["customFieldValues"] = sorted(values, key=lambda v: v["columnId"])
        if payload["notes"]:
            body["notes"] = payload["notes"]
        return body

    def _link_to_gone(self, entity: str, source_id: str, field: str, target_entity: str, pid: str) -> None:
        """A link to a record deleted in Customermates after it was migrated (and not recreated):
        the server refuses its id, which would keep this record out; the link is dropped instead."""
        self._note_issue(
            entity, source_id, field, "link_target_deleted_in_target",
            f"{target_entity[:-1]} {pid} was deleted in Customermates after it was migrated; link dropped "
            "(--on-target-deleted recreate creates it again, linked)",
        )

    def context_update(
        self, entity: str, target_id: str, payload: dict[str, Any], body: dict[str, Any], relations_sent: dict[str, list[Any]] | None,
    ) -> dict[str, Any] | None:
        """The update of a record whose payload is the one last written, when its body is new for a
        reason besides the record: columns or options made again (a user deleted them), owners matched
        since, or relations other than those last sent (`relations_sent`: a record linked was made again,
        its id is new). Only the values in those columns, the users and those relations (all when not
        known) are sent, so what a user edited in Customermates since (a name, emails, notes, other values,
        links) stays. None when no reason holds, or the relations alone may differ but those last sent are
        not known (`as_update` then sends it whole)."""
        made = self.made_since_load
        refilled = {self.columns.ids[(entity, key)] for key, value in payload["values"].items() if (entity, key) in made or (entity, key, value) in made}
        cells = [cell for cell in body["customFieldValues"] if cell["columnId"] in refilled]
        users_then = None if self.written_user_map is None else matched_users(payload["users"], self.written_user_map)
        sent = relations_sent or {}
        relations = {key: ids for key, ids in relations_of(entity, body).items() if sent.get(key) != ids}
        if not cells and users_then == body["userIds"] and (relations_sent is None or not relations):
            return None
        update = {"id": target_id, **relations}
        if cells:
            update["customFieldValues"] = cells
        if users_then != body["userIds"]:
            update["userIds"] = body["userIds"]
        return update

    def as_update(self, entity: str, target_id: str, body: dict[str, Any], kept: Container[str] = ()) -> dict[str, Any]:
        """The update body for a changed record: arrays replace, so they are sent whole (and the
        relations the record no longer has, empty); custom values merge per column, so our columns
        the record no longer uses are cleared, but those `kept` (`defaults_unwritten`)."""
        update = {"id": target_id, **{key: [] for key in LINKS_SET.get(entity, ())}, **body, "notes": body.get("notes")}
        used = {v["columnId"] for v in body["customFieldValues"]}
        update["customFieldValues"] = body["customFieldValues"] + [
            {"columnId": cid, "value": None} for cid in self.columns.migration_columns(entity) if cid not in used and cid not in kept
        ]
        if entity == "contacts" and update.get("lastName") == "":
            update.pop("lastName")  # update rejects "", create accepts it
        return update

    def defaults_unwritten(self, entity: str, written: dict[str, Any] | None) -> set[str]:
        """The ids of the columns with a default option that the record was last written (`written`)
        with no value in. An update leaves them as they are: the server filled the default in there
        (contract §6), or a user picked it, which looks the same (`Planner._without_default_fill`);
        another option a user picked there made the record a conflict."""
        if written is None:
            return set()
        return {self.columns.ids[(e, key)] for e, key in self.columns.defaults if e == entity and key not in written["values"]}

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> LoadSummary:
        started = time.monotonic()
        try:
            self.match_users()
            self.resolve_pending()
            self.staging.release_quarantine_not_to_migrate()
            context = self._body_context()
            self.made_since_load = self.columns.made_since_load(self.staging)
            self.only_candidates = self.staging.meta(LOAD_CONTEXT_KEY) == context
            if not self.only_candidates:  # until this load is complete, bodies may be of either context
                self.staging.set_meta(LOAD_CONTEXT_KEY, None)
            for entity in ENTITY_ORDER:
                self.load_entity(entity)
            self._retry_deferred()
        finally:  # a load stopped or failed keeps the issues it noted
            self._save_issues()
        self.staging.set_meta(LOAD_CONTEXT_KEY, context)
        self.staging.set_meta(NEW_COLUMNS_KEY, None)  # every record has been written with them
        # the plan tells the owners a record was written with from an edit made in Customermates by it
        self.staging.set_meta(LOAD_USERS_KEY, json.dumps(self.user_map, sort_keys=True))
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _body_context(self) -> str:
        """A digest of what request bodies depend on besides the records and the ids of the
        records they link to: the user map and the columns with their options."""
        context = {
            "users": sorted(self.user_map.items()),
            "columns": sorted([*key, column_id] for key, column_id in self.columns.ids.items()),
            "options": sorted([*key, sorted(options.items())] for key, options in self.columns.options.items()),
        }
        return hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()

    def scan_target(self, entity: str) -> None:
        """Compare the id map with what the target holds now, in one page-through sorted by the
        Pipedrive ID column (⌈records/100⌉ reads, no writes). Records a user deleted in
        Customermates are reported (default) or forgotten so they are created again; two
        records with one Pipedrive ID are reported."""
        if not self.staging.migrated_count(entity):
            return
        if self.target is None:
            self.target = TargetState.read(self.client, self.columns, self.staging)
        for sid, ids in sorted(self.target.duplicates(entity).items()):
            self._report_duplicate(entity, sid, ids)
        gone = self.target.migrated_but_gone(entity)
        if gone:
            self._deleted_in_target(entity, gone, RECREATE_ADVICE)

    def _deleted_in_target(self, entity: str, gone: list[str], advice: str) -> None:
        """Migrated records the target no longer holds: forgotten, so they are created again, or
        reported and left alone."""
        self.summary.deleted_in_target[entity] += len(gone)
        if self.on_target_deleted == "recreate":
            self.staging.forget(entity, gone)
            self.summary.recreated[entity] += len(gone)
            return
        self.gone.setdefault(entity, set()).update(gone)
        for sid in gone:
            self._note_issue(
                entity, sid, "*", "deleted_in_target",
                f"{entity[:-1]} {sid} was deleted in Customermates after it was migrated; not recreated ({advice})",
            )

    def load_entity(self, entity: str) -> None:
        """Write the entity's records that are new or whose body changed. When users and columns
        are as at the last complete load, only the records whose body may have changed are read
        (`mark_load_candidates`); the others are unchanged."""
        self.scan_target(entity)
        gone = self.gone.get(entity, set())
        creates: list[_Item] = []
        updates: list[_Item] = []
        conflicts = self.conflicts.get(entity, set())
        among = None
        if self.only_candidates:
            self.staging.mark_load_candidates(entity, LINK_ENTITY)
            among = "load_candidates"
            self.summary.unchanged[entity] += self.staging.count_targets_outside(entity, among, excluding=gone)
        for batch in self.staging.iter_target_batches(entity, among=among):
            known = self.staging.id_map_for(entity, [sid for sid, _, _ in batch])
            linked = linked_records(self.staging, [payload for _, payload, _ in batch])
            self._save_issues()  # those of the batch before: a batch's worth held at a time
            changed: list[tuple[str, dict[str, Any], dict[str, Any], str, str]] = []
            for source_id, payload, _ in batch:
                if source_id in gone:
                    continue
                existing = known.get(source_id)
                body = self.build_body(entity, source_id, payload, linked)
                digest = payload_hash(body)
                if source_id in conflicts and existing is not None and self.on_conflict != "source-wins":
                    self._keep_target(entity, source_id, existing[0], payload, body, digest)
                    continue
                if existing is None:
                    creates.append(self._as_item(entity, source_id, payload, body, digest, None))
                elif existing[1] == digest:
                    self.summary.unchanged[entity] += 1
                    continue
                else:
                    changed.append((source_id, payload, body, digest, existing[0]))
                    if entity == "contacts" and body.get("lastName") == "":
                        self._last_name_kept(source_id)
                if len(creates) >= self.batch_size:
                    self._send(entity, "create", creates)
                    creates = []
            written = self.staging.written_for(entity, [c[0] for c in changed]) if changed else {}
            sent = self.staging.relations_written_for(entity, [c[0] for c in changed]) if changed else {}
            for source_id, payload, body, digest, target_id in changed:
                last = written.get(source_id)
                kept = set() if source_id in conflicts else self.defaults_unwritten(entity, last)  # source-wins writes a conflict whole
                updates.append(self._as_item(
                    entity, source_id, payload, body, digest, target_id, as_written=last == payload, kept=kept, relations_sent=sent.get(source_id),
                ))
                if len(updates) >= self.batch_size:
                    self._send(entity, "update", updates)
                    updates = []
        if creates:
            self._send(entity, "create", creates)
        if updates:
            self._send(entity, "update", updates)
        self._retry_set_aside()

    def _as_item(
        self, entity: str, source_id: str, payload: dict[str, Any], body: dict[str, Any], digest: str, target_id: str | None,
        *, as_written: bool = False, kept: Container[str] = (), relations_sent: dict[str, list[Any]] | None = None,
    ) -> _Item:
        """The write of a record's body (`digest` its hash): its create, or with `target_id` the update of
        that record (leaving the columns `kept`: `as_update`); of a record whose payload is `as_written`,
        the narrower `context_update` when it applies."""
        if target_id is None:
            return _Item(source_id, body, digest, payload=payload)
        narrow = self.context_update(entity, target_id, payload, body, relations_sent) if as_written else None
        update = narrow or self.as_update(entity, target_id, body, kept)
        return _Item(source_id, update, digest, target_id, payload, body, as_written, kept, relations_sent)

    def _last_name_kept(self, source_id: str) -> None:
        """An update cannot clear a contact's last name (`as_update`): say so when it had one."""
        written = self.staging.written_for("contacts", [source_id]).get(source_id) or {}
        kept = (written.get("fields") or {}).get("lastName")
        if kept:
            self._note_issue(
                "contacts", source_id, "last_name", "last_name_not_cleared",
                f"the last name is empty in Pipedrive now, and Customermates refuses an empty last name on an update: the contact keeps {kept!r}",
            )

    def _refusal(self, entity: str, body: dict[str, Any], error: BatchRejectedError) -> str:
        """The server's refusal of one record's body, each issue at its path; a custom value's names
        its column and the value sent, as the path names only its place among the body's values."""
        labels = None
        texts = []
        cells = body.get("customFieldValues") or []
        for issue in error.issues:
            match = _VALUE_PATH.fullmatch(issue.path)
            if match is None or int(match["index"]) >= len(cells):
                texts.append(f"{issue.message} (at {issue.path})")
                continue
            labels = labels or self._column_labels(entity)
            cell = cells[int(match["index"])]
            column = labels.get(cell.get("columnId"), cell.get("columnId"))
            value = repr(cell.get("value"))
            value = value if len(value) <= QUOTED_VALUE_CHARS else f"{value[:QUOTED_VALUE_CHARS]}… ({len(value):,} characters)"
            texts.append(f"{issue.message} (at {issue.path}: column {column!r}, value {value})")
        return "; ".join(texts) or str(error)

    def _column_labels(self, entity: str) -> dict[str, str]:
        """The entity's migration columns: Customermates id → label."""
        specs = {(s["entity"], s["key"]): s["label"] for s in self.staging.target_columns()}
        return {cid: specs.get(key, key[1]) for key, cid in self.columns.ids.items() if key[0] == entity}

    def _stop_if_columns_deleted(self, entity: str, error: BatchRejectedError) -> None:
        """A column of the migration's, or an option of one, that a user deleted in Customermates while
        the load ran makes the server refuse every later record with a value in it. Rather than
        quarantine those one by one (two requests each), the load stops and says so, when a read of the
        columns confirms it; the next run makes them again (`ensure_columns`) and goes on."""
        if not any(_VALUE_PATH.fullmatch(i.path) and (i.is_id_not_found() or _OPTION_REFUSED in i.message.lower()) for i in error.issues):
            return
        present = {c["id"]: c for c in self.client.configuration(entity).get("customColumns") or []}
        labels = self._column_labels(entity)
        gone = []
        for (e, key), column_id in self.columns.ids.items():
            if e != entity:
                continue
            if column_id not in present:
                gone.append(f"the column {labels[column_id]!r}")
                continue
            options = {o.get("value") for o in (present[column_id].get("options") or {}).get("options") or []}
            gone += [f"the option {label!r} of {labels[column_id]!r}" for label, option_id in self.columns.options.get((e, key), {}).items() if option_id not in options]
        if gone:
            raise CustomermatesError(
                f"{', '.join(gone)} ({entity}) {'was' if len(gone) == 1 else 'were'} deleted in Customermates while the load ran, and "
                "the server refuses every record with a value there. Run again: the run makes what was deleted again and writes "
                "the records this one did not"
            )

    def _note_issue(self, entity: str, source_id: str, field: str, rule: str, detail: str) -> None:
        self._issue_rows.append((self.run_id, entity, source_id, field, rule, detail))

    def _save_issues(self) -> None:
        """Save the issues noted, in one statement (an issue a commit took a few ms each: a run
        has one for every link of every record to a quarantined one)."""
        if self._issue_rows:
            self.staging.add_load_issues(self._issue_rows)
            self._issue_rows = []

    def _keep_target(self, entity: str, source_id: str, target_id: str, payload: dict[str, Any], body: dict[str, Any], digest: str) -> None:
        """A conflict (edited on both sides) under skip or target-wins: the target is not written.
        target-wins also records the source as seen (its body as written), so the record stops being a conflict."""
        self.summary.conflicts[entity] += 1
        if self.on_conflict == "target-wins":
            self.staging.commit_batch(
                None, entity, [(source_id, target_id, digest)], self.run_id, [(source_id, payload)], wrote=False,
                relations=[(source_id, relations_of(entity, body))],
            )
            return
        self._note_issue(
            entity, source_id, "*", "conflict_skipped",
            f"{entity[:-1]} {source_id} changed in Pipedrive and was edited in Customermates since the last run; "
            "left as it is (--on-conflict source-wins overwrites, target-wins keeps Customermates' version for good)",
        )

    def _send(self, entity: str, operation: str, items: list[_Item], set_aside_after: int | None = None) -> None:
        """Write one batch (splitting it to the current batch size) and settle every outcome.
        `set_aside_after`: the record is sent again alone after failing alone, with this many
        writes done then (`_retry_set_aside`)."""
        while len(items) > self.batch_size:
            head, items = items[: self.batch_size], items[self.batch_size :]
            self._send(entity, operation, head)
        if not items:
            return
        if len(items) > 1 and self._request_bytes(entity, items) > self.max_request_bytes:
            for part in self._by_size(entity, items):
                self._send(entity, operation, part)
            return
        stopping.check()  # a requested stop happens between batches, never inside one
        batch_id = self.staging.record_pending(entity, operation, [i.source_id for i in items], [i.digest for i in items], self.run_id)
        started = time.monotonic()
        try:
            call = self.client.create_many if operation == "create" else self.client.update_many
            result = call(entity, [i.body for i in items])
        except BatchRejectedError as exc:
            self.staging.commit_batch(batch_id, entity, [], self.run_id)  # certain: nothing written
            self.failures_in_a_row = 0  # the server is up: it read the batch and answered
            self._isolate(entity, operation, items, exc)
            return
        except UncertainWriteError as exc:
            self._uncertain(entity, operation, items, batch_id, started, exc, set_aside_after)
            return
        self.failures_in_a_row = 0
        self.writes_done += 1
        elapsed = time.monotonic() - started
        self._tune(elapsed, len(items))
        written = [(i.source_id, dto["id"], i.digest) for i, dto in zip(items, result, strict=True)]
        self.staging.commit_batch(
            batch_id, entity, written, self.run_id, [(i.source_id, i.payload) for i in items if i.payload is not None],
            [(i.source_id, notes_digest(dto.get("notes"))) for i, dto in zip(items, result, strict=True) if i.payload is not None],
            relations=_relations_written(entity, items),
        )
        counter = self.summary.created if operation == "create" else self.summary.updated
        counter[entity] += len(items)
        self.summary.write_requests += 1
        self.summary.write_seconds += elapsed
        self.summary.records_written += len(items)
        if self.progress:
            self.progress(entity, len(items))

    def _uncertain(
        self, entity: str, operation: str, items: list[_Item], batch_id: str, started: float,
        error: UncertainWriteError, set_aside_after: int | None,
    ) -> None:
        """A 5xx, a timeout or a lost connection: settle by lookup, then send what is missing
        again in halves. A record that fails alone is set aside and sent again after the entity's
        other records; if it fails again while others went through, or, the only one set aside,
        while the server answers a read, Customermates refuses that record (a 500 names none: a value its database cannot
        hold, say), and it is quarantined; else it is deferred, and sent again after every entity (`_retry_deferred`).
        `MAX_FAILURES_IN_A_ROW` with nothing written between end the run: the server is down."""
        elapsed = time.monotonic() - started
        log.warning("load.uncertain", entity=entity, items=len(items), error=str(error), seconds=round(elapsed, 2))
        self.failures_in_a_row += 1
        self.failed_sizes[len(items)] += 1
        for item in items:
            item.failed_in.append(len(items))
        self.ceiling = max(self.min_batch, min(self.ceiling, len(items) - 1))
        self.batch_size = max(self.min_batch, len(items) // 2)
        missing = self._settle(batch_id, entity, operation, items)
        self.summary.created[entity] += len(items) - len(missing)  # sent by this run: its creations
        if not missing:
            return
        if len(missing) == 1 and set_aside_after is not None and (
            self.writes_done > set_aside_after
            or ((self.set_aside_alone or self._quarantined_before(entity, missing[0])) and self._answers_reads(entity))
        ):
            (item,) = missing
            message = f"Customermates failed on this record alone, twice, while it answered other requests ({error})"
            self.staging.quarantine(entity, item.source_id, message, item.body, self.run_id)
            self.summary.quarantined[entity] += 1
            log.warning("load.quarantined", entity=entity, source_id=item.source_id, reason=message)
            self._explained_by(item)
            return
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise CustomermatesError(
                f"Customermates failed {self.failures_in_a_row} times in a row writing {entity} ({error}); "
                "everything written so far is recorded: run again to resume"
            ) from None
        if len(missing) == 1 and set_aside_after is not None and not self.last_chance:
            self.deferred.append((entity, operation, missing[0], set_aside_after))
            self._explained_by(missing[0])
            return
        if len(missing) == 1 and set_aside_after is None:
            self.set_aside.append((entity, operation, missing[0], self.writes_done))
            self._explained_by(missing[0])
            return
        time.sleep(min(MAX_BACKOFF_SECONDS, 0.25 * 2**self.failures_in_a_row))
        if len(missing) == 1:
            self._send(entity, operation, missing, set_aside_after)
            return
        half = len(missing) // 2
        for part in (missing[:half], missing[half:]):
            self._send(entity, operation, part)

    def _quarantined_before(self, entity: str, item: _Item) -> bool:
        """Whether an earlier run quarantined the record: Customermates refused it then, while it
        wrote others. Failing alone again, while the server answers a read, it still does (several
        such records, with nothing else to write, ended every later run as a server that is down)."""
        return bool(self.staging.quarantine_messages(entity, [item.source_id]))

    def _answers_reads(self, entity: str) -> bool:
        """Whether Customermates answers a read now. With no write since the entity's only record
        set aside was (a rerun whose only new record is that one), this tells a record it refuses
        from a server that is down."""
        try:
            self.client.search(entity, page=1, page_size=5)
        except CustomermatesError:
            return False
        return True

    def _explained_by(self, item: _Item) -> None:
        """A record that failed alone explains the failures of the batches it was in: they say
        nothing of the batch size, which goes back to what the other failures allow."""
        self.failed_sizes.subtract(item.failed_in)
        self.failed_sizes = +self.failed_sizes
        item.failed_in.clear()
        self.ceiling = max(self.min_batch, min([self.max_batch, *(size - 1 for size in self.failed_sizes)]))
        self.batch_size = max(self.batch_size, min(self.ceiling, START_BATCH))

    def _retry_set_aside(self) -> None:
        self.set_aside_alone = len(self.set_aside) == 1  # several failing alone with nothing written: the server, more likely
        while self.set_aside:
            entity, operation, item, writes_then = self.set_aside.pop(0)
            self._send(entity, operation, [item], set_aside_after=writes_then)

    def _retry_deferred(self) -> None:
        """Send the records deferred (each failed alone twice, nothing written between) once more,
        after every entity: one that fails again while writes went through since is refused by
        Customermates and quarantined; with nothing written since, the server is down and the run
        ends as it does then. Until now, several such records of one entity ended every run, and
        the entities after it were never written."""
        self.last_chance = True
        self.set_aside_alone = len(self.deferred) == 1
        while self.deferred:
            entity, operation, item, writes_then = self.deferred.pop(0)
            self._send(entity, operation, [item], set_aside_after=writes_then)

    def _request_bytes(self, entity: str, items: list[_Item]) -> int:
        for item in items:
            item.size = item.size or encoded_size(item.body)
        return _envelope_bytes(entity) + sum(i.size for i in items) + max(0, len(items) - 1)  # commas between

    def _by_size(self, entity: str, items: list[_Item]) -> list[list[_Item]]:
        """`items` (sizes measured by `_request_bytes`) in consecutive parts whose request bodies fit
        `max_request_bytes` (a record bigger than that alone goes alone: the host says whether it takes it)."""
        parts: list[list[_Item]] = [[]]
        used = _envelope_bytes(entity)
        for item in items:
            if parts[-1] and used + 1 + item.size > self.max_request_bytes:
                parts.append([])
                used = _envelope_bytes(entity)
            used += item.size + (1 if parts[-1] else 0)
            parts[-1].append(item)
        return parts

    def _tune(self, elapsed: float, size: int) -> None:
        """Adapt the batch size to the observed latency: shrink when a batch was slow, grow only
        when the next size is predicted (per-item time × size) to stay fast, and never back up
        to a size that once failed (the server's 5 s transaction limit)."""
        if elapsed > SLOW_BATCH_SECONDS:
            self.batch_size = max(self.min_batch, int(size * 0.6))
        elif size >= self.batch_size:
            grown = min(self.max_batch, self.ceiling, int(self.batch_size * 1.25) + 1)
            if elapsed / size * grown < FAST_BATCH_SECONDS:
                self.batch_size = max(self.batch_size, grown)

    def _isolate(self, entity: str, operation: str, items: list[_Item], error: BatchRejectedError) -> None:
        """Load what is valid, quarantine what the server rejects (with its message)."""
        self._stop_if_columns_deleted(entity, error)
        if isinstance(error, RequestTooLargeError) and error.size // 2 < self.max_request_bytes:
            # a host with a smaller body limit than Customermates' own (a proxy's 1 MB, say): learn it
            self.max_request_bytes = max(1, error.size // 2)
            log.warning("load.request_too_large", entity=entity, bytes=error.size, max_request_bytes=self.max_request_bytes)
        if len(items) == 1:
            item = items[0]
            if operation == "update" and _record_not_found(entity, error):
                # deleted there since the target was last read (a sync reads only what changed)
                self._deleted_in_target(entity, [item.source_id], "with --on-target-deleted recreate the next run creates it again")
                if self.on_target_deleted == "recreate" and item.create_body is not None:
                    self._send(entity, "create", [_Item(item.source_id, item.create_body, item.digest, payload=item.payload)])
                return
            if self._sent_without_what_was_deleted(entity, operation, item, error):
                return
            message = self._refusal(entity, item.body, error)
            self.staging.quarantine(entity, item.source_id, message, item.body, self.run_id)
            self.summary.quarantined[entity] += 1
            log.warning("load.quarantined", entity=entity, source_id=item.source_id, reason=message)
            return
        named = {_refused_item(entity, operation, i) for i in error.issues} - {None}
        suspects = [items[n] for n in sorted(named) if n is not None and n < len(items)]
        if suspects and len(suspects) < len(items):
            rest = [item for n, item in enumerate(items) if n not in named]
            groups = [rest, *([s] for s in suspects)]
        else:
            half = len(items) // 2
            groups = [items[:half], items[half:]]
        for group in groups:
            self._send(entity, operation, group)

    def _sent_without_what_was_deleted(self, entity: str, operation: str, item: _Item, error: BatchRejectedError) -> bool:
        """A record refused for linking records a user deleted in Customermates since they were last
        read (a read of what changed does not see a deletion), or users removed from the company since
        `match_users`, is sent again without those links, the records taken as gone (`_found_deleted`),
        the users as unmatched (`_forget_removed_users`; a body built before holds them still). Each time
        drops links its body had, so this ends; a record refused still for anything else is quarantined.
        Whether it was sent again."""
        if item.payload is None:
            return False
        refused = _ids_not_found(entity, error, item.body, LINKS_SET.get(entity, ())) | self._services_gone(entity, error, item.body)
        users = _ids_not_found(entity, error, item.body, ("userIds",)).get("userIds", set())
        if not (refused or users) or not users <= set(self.user_map.values()) | self.users_removed:
            return False
        linked = linked_records(self.staging, [item.payload])
        found: dict[str, dict[str, str]] = {}  # linked entity → Customermates id → Pipedrive id
        for key, target_ids in refused.items():
            linked_entity = LINK_ENTITY.get(key, key)
            # a body built before a record was created again names its old id
            pid_of = {target_id: pid for pid, target_id in linked.get(linked_entity, {}).items()} | self.replaced.get(linked_entity, {})
            if not target_ids <= pid_of.keys():
                return False  # not the records it links to (the id map moved on): nothing to take as gone
            found.setdefault(linked_entity, {}).update({target_id: pid_of[target_id] for target_id in target_ids})
        for linked_entity, pids in found.items():
            self._found_deleted(linked_entity, pids)
        self._forget_removed_users(users)
        body = self.build_body(entity, item.source_id, item.payload, linked_records(self.staging, [item.payload]))
        self._send(entity, operation, [
            self._as_item(
                entity, item.source_id, item.payload, body, payload_hash(body), item.target_id,
                as_written=item.as_written, kept=item.kept, relations_sent=item.relations_sent,
            )
        ])
        return True

    def _services_gone(self, entity: str, error: BatchRejectedError, body: dict[str, Any]) -> dict[str, set[str]]:
        """{"services": the ids of the deal body's services the server no longer has}, when it refused
        one ("Service ID not found or not accessible."): its path names the deal, not the service
        (contract §3.8), so each is looked up by its id. Empty for any other refusal."""
        if entity != "deals" or not any(i.is_id_not_found() and i.path.startswith("deals[0].services[") for i in error.issues):
            return {}
        try:
            gone = {line["serviceId"] for line in body.get("services") or [] if self.client.get("services", line["serviceId"]) is None}
        except CustomermatesError as exc:  # the deal is quarantined with the server's refusal, as without the lookup
            log.warning("load.service_lookup_failed", reason=str(exc))
            return {}
        return {"services": gone} if gone else {}

    def _forget_removed_users(self, target_ids: set[str]) -> None:
        """Customermates users removed from the company during the run (the server refuses their ids):
        the Pipedrive owners matched to them are unmatched from here on, reported as `match_users`
        reports an owner without a user. The records written before keep the ids the server dropped."""
        self.users_removed |= target_ids
        removed = {uid: self.user_map.pop(uid) for uid, target_id in list(self.user_map.items()) if target_id in target_ids}
        if not removed:
            return
        owned = self.staging.referenced_users()
        pipedrive_users = {str(u["id"]): u for u in self.staging.iter_raw("users")}
        for owner in unmatched_owners(pipedrive_users, {uid: owned[uid] for uid in removed}, self.user_map):
            owner["why"] = f"its Customermates user ({removed[owner['source_id']]}) was removed from the company during this run"
            self.summary.unmatched_users.append(owner)
            self._note_issue(*owner_unmatched_issue(owner))
            log.warning("load.user_removed", pipedrive_user=owner["pipedrive_user"], customermates_user=removed[owner["source_id"]])

    def _found_deleted(self, entity: str, pids: dict[str, str]) -> None:
        """Records a refused link showed deleted in Customermates (Customermates id → Pipedrive id),
        taken as a whole read takes them: out of what the last read holds (no later plan takes the
        links they lost for an edit made there), and reported, their links dropped, or with
        --on-target-deleted recreate created again at once (their entity's load is over: links go to
        entities loaded before), so that the refused record is sent again linked to them."""
        self.staging.note_deleted_in_target(entity, sorted(pids))
        replaced = self.replaced.setdefault(entity, {})
        fresh = sorted(set(pids.values()) - self.gone.get(entity, set()) - set(replaced.values()))
        self._deleted_in_target(entity, fresh, RECREATE_ADVICE)
        if self.on_target_deleted == "recreate":
            replaced.update(pids)
            self._create_again(entity, fresh)

    def _create_again(self, entity: str, source_ids: list[str]) -> None:
        """Create these migrated records again (forgotten by `_deleted_in_target`), linked as their load links them.
        Their entity's load counted them unchanged (an update would have found them deleted), or conflicts
        left alone: from now on they count as created."""
        records = self.staging.payloads_for(entity, source_ids)
        linked = linked_records(self.staging, [payload for _, payload in records])
        left_alone = self.conflicts.get(entity, set()) if self.on_conflict != "source-wins" else set()
        items = []
        for source_id, payload in records:
            (self.summary.conflicts if source_id in left_alone else self.summary.unchanged)[entity] -= 1
            body = self.build_body(entity, source_id, payload, linked)
            items.append(self._as_item(entity, source_id, payload, body, payload_hash(body), None))
        if items:
            self._send(entity, "create", items)

    # -- uncertain outcomes -----------------------------------------------------------------
    def _settle(self, batch_id: str, entity: str, operation: str, items: list[_Item]) -> list[_Item]:
        """Find out which records of an uncertain batch exist; adopt them (for the run that sent the
        batch, as `commit_batch` records), return the rest."""
        if operation == "update":
            # an update is idempotent: sending it again gives the same state
            self.staging.commit_batch(batch_id, entity, [], self.run_id)
            return items
        found = self.find_in_target(entity, [i.source_id for i in items])
        adopted = [(i.source_id, found[i.source_id], i.digest) for i in items if i.source_id in found]
        payloads = [(i.source_id, i.payload) for i in items if i.source_id in found and i.payload is not None]
        relations = _relations_written(entity, [i for i in items if i.source_id in found])
        self.staging.commit_batch(batch_id, entity, adopted, self.run_id, payloads, adopted=True, relations=relations)
        self.summary.adopted[entity] += len(adopted)
        return [i for i in items if i.source_id not in found]

    def find_in_target(self, entity: str, source_ids: list[str]) -> dict[str, str]:
        """Pipedrive id → Customermates id for those of `source_ids` present in the target (the first,
        a Pipedrive ID on several records reported). Costs min(len(source_ids), ⌈target size/100⌉) searches."""
        result = {}
        for sid, ids in find_by_pipedrive_id(self.client, entity, self.columns.ids[(entity, PIPEDRIVE_ID)], source_ids).items():
            if len(ids) > 1:
                self._report_duplicate(entity, sid, ids)
            result[sid] = ids[0]
        return result

    def _report_duplicate(self, entity: str, source_id: str, target_ids: list[str]) -> None:
        self.summary.duplicates_in_target.append({"entity": entity, "source_id": source_id, "target_ids": target_ids})
        self._note_issue(
            entity, source_id, PIPEDRIVE_ID, "duplicate_in_target",
            f"{len(target_ids)} Customermates records carry Pipedrive ID {source_id}: {', '.join(target_ids)}; "
            "the migration keeps writing to the first, the others are left alone",
        )

    def resolve_pending(self) -> None:
        """Settle batches a crashed run left pending (their outcome is unknown). The records found
        written stay that run's creations (undone with it): this run counts them unchanged, or
        updated, when the load comes to them."""
        for batch in self.staging.pending_batches():
            entity = batch["entity"]
            if batch["operation"] == "delete":
                continue  # a sync's deletes: settled by the next sync's (`deletions._deletes_in_flight`)
            items = [_Item(sid, {}, digest) for sid, digest in zip(batch["source_ids"], batch["hashes"], strict=True)]
            log.info("load.resume_pending", entity=entity, items=len(items), operation=batch["operation"])
            if batch["operation"] == "update":
                self.staging.commit_batch(batch["batch_id"], entity, [], self.run_id)  # the rerun recomputes updates
                continue
            self._settle(batch["batch_id"], entity, "create", items)


def relations_of(entity: str, body: dict[str, Any]) -> dict[str, list[Any]]:
    """The relations a body sets (`RELATIONS_SET`), each empty when it names none."""
    return {key: body.get(key) or [] for key in RELATIONS_SET.get(entity, ())}


def _relations_written(entity: str, items: Iterable[_Item]) -> list[tuple[str, dict[str, list[Any]]]]:
    """(source id, relations) the server holds as these writes set them: those of the whole body, of
    which an update of a payload as written (`Loader.context_update`) leaves out only those last sent."""
    if entity not in RELATIONS_SET:
        return []
    return [(i.source_id, relations_of(entity, i.create_body or i.body)) for i in items if i.payload is not None]


def matched_users(user_ids: Iterable[str], user_map: Mapping[str, str]) -> list[str]:
    """The Customermates users `user_map` matches Pipedrive users `user_ids` to, each once, in order."""
    return list(dict.fromkeys(user_map[uid] for uid in user_ids if uid in user_map))


def users_by_email(pipedrive_users: Iterable[dict[str, Any]], customermates_users: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Pipedrive user id → the id of the Customermates user of the same email (case-insensitive): how
    owners are matched, by the load and by what forecasts or checks it (plan, verify, doctor)."""
    by_email = {str(u.get("email") or "").lower(): u["id"] for u in customermates_users if u.get("email")}
    return {str(u["id"]): by_email[email] for u in pipedrive_users if (email := str(u.get("email") or "").lower()) in by_email}


def unmatched_owners(users: Mapping[str, dict[str, Any]], owned: Mapping[str, int], matched: Container[str]) -> list[dict[str, Any]]:
    """The Pipedrive users owning records (`owned`: user id → records naming it) whom no Customermates
    user matches by email (`matched`: the ids of those matched), by id, as the run report lists them
    (`unmatched_users`): name and email, Pipedrive id and the records they own. The load's, and the
    plan's forecast of it."""
    return [
        {
            "pipedrive_user": user_label(users.get(uid), uid), "source_id": uid, "records": count,
            "why": _unmatched_why(users.get(uid)),
        }
        for uid, count in sorted(owned.items())
        if uid not in matched
    ]


def _unmatched_why(user: dict[str, Any] | None) -> str:
    if user is None:
        return "is not among Pipedrive's users (deleted there), so no Customermates user can match"
    if not str(user.get("email") or "").strip():
        return "has no email in Pipedrive to match a Customermates user by"
    return "has no Customermates user with that email"


def owner_unmatched_issue(owner: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """The issue (entity, source_id, field, rule, detail) of an owner `unmatched_owners` lists."""
    detail = (
        f"{owner['pipedrive_user']} owns {owner['records']} record{'' if owner['records'] == 1 else 's'} but {owner['why']}; kept in the "
        "'Pipedrive owner' column (invite the user and run again to assign)"
    )
    return "users", owner["source_id"], "owner_id", "owner_unmatched", detail


def _envelope_bytes(entity: str) -> int:
    """Bytes of a write body around its records: `{"<entity>":[...]}`."""
    return len(f'{{"{entity}":[]}}')


def _ids_not_found(entity: str, error: BatchRejectedError, body: dict[str, Any], keys: Container[str]) -> dict[str, set[str]]:
    """Key → the ids of the one record's body the server says it has not ("<Entity> ID not found or
    not accessible." at `<entity>[0].<key>[k]`), of the id arrays `keys` names."""
    refused: dict[str, set[str]] = {}
    for issue in error.issues:
        match = _LINK_PATH.fullmatch(issue.path)
        if match is None or match["entity"] != entity or not issue.is_id_not_found():
            continue
        key, index = match["key"], int(match["index"])
        if key in keys and index < len(body.get(key) or []):
            refused.setdefault(key, set()).add(body[key][index])
    return refused


def _refused_item(entity: str, operation: str, issue: Issue) -> int | None:
    """The index of the batch item an issue refuses. In deal create-many an unknown service is reported
    at `deals[i].services[k]` for every deal i, where k is the deal that links it (contract §3.8)."""
    match = _SERVICE_PATH.fullmatch(issue.path) if (entity, operation) == ("deals", "create") and issue.is_id_not_found() else None
    return int(match["deal"]) if match else issue.item_index()


def _record_not_found(entity: str, error: BatchRejectedError) -> bool:
    """The server's answer to an update of one record it no longer has: "<Entity> ID not found
    or not accessible." at `<entity>[0].id`, and nothing else."""
    return bool(error.issues) and all(i.path == f"{entity}[0].id" and i.is_id_not_found() for i in error.issues)
