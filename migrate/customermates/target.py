"""A read of the whole target: every record of every entity, by Pipedrive ID.

One page-through per entity sorted by the Pipedrive ID column (⌈records/100⌉ searches);
shared by the plan (field diffs, conflicts), the loader (records deleted or duplicated in
Customermates) and deletions. The records go to the state file as they are read
(`target_snapshot`) and are looked up from there a batch at a time, so a million-record
target costs no memory (kept in Python, even compressed, it took about 1 KiB a record).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from migrate.customermates.client import CustomermatesClient
from migrate.customermates.columns import ColumnIndex
from migrate.staging.store import Staging
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER

ROWS_PER_INSERT = 1000
# a relation of the create/update bodies → the field a record read back lists those records in
DTO_RELATIONS = {"organizationIds": "organizations", "contactIds": "contacts", "dealIds": "deals", "serviceIds": "services"}


class TargetState:
    """What Customermates holds, keyed by Pipedrive ID, with ids translated back to Pipedrive ids.

    Without a staging file it is an empty target (a dry run with no Customermates to read)."""

    def __init__(self, staging: Staging | None = None, fingerprint: str = ""):
        self.staging = staging
        self.fingerprint = fingerprint

    @classmethod
    def read(cls, client: CustomermatesClient, columns: ColumnIndex, staging: Staging) -> TargetState:
        staging.clear_target_snapshot()
        digest = hashlib.sha256()
        seq = 0
        for entity in ENTITY_ORDER:
            column_id = columns.ids.get((entity, PIPEDRIVE_ID))
            if column_id is None:
                continue
            rows: list[tuple[int, str, str | None, str]] = []
            for dto in client.iter_records(entity, sort=(column_id, "asc")):
                pid = next((v["value"] for v in dto.get("customFieldValues") or [] if v.get("columnId") == column_id), None)
                digest.update(f"{entity}:{dto['id']}:{dto.get('updatedAt')}\n".encode())
                rows.append((seq, dto["id"], pid, json.dumps(dto, separators=(",", ":"), ensure_ascii=False)))
                seq += 1
                if len(rows) >= ROWS_PER_INSERT:
                    staging.add_to_target_snapshot(entity, rows)
                    rows = []
            staging.add_to_target_snapshot(entity, rows)
        return cls(staging, digest.hexdigest()[:32])

    def records(self, entity: str, pids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Pipedrive ID → the records carrying it (usually one; the first read first)."""
        return self.staging.snapshot_records(entity, pids) if self.staging and pids else {}

    def pids_of(self, target_ids: list[str]) -> dict[str, str]:
        """Customermates id → Pipedrive ID, for those of `target_ids` that carry one."""
        return self.staging.snapshot_pids(target_ids) if self.staging and target_ids else {}

    def pids_of_related(self, dtos: Iterable[dict[str, Any]]) -> dict[str, str]:
        """Customermates id → Pipedrive ID of every record these records link to (relations and
        deal services), for those that carry one."""
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
