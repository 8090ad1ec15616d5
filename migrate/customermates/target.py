"""A read of the whole target: every record of every entity, by Pipedrive ID.

One page-through per entity sorted by the Pipedrive ID column (⌈records/100⌉ searches);
shared by the plan (field diffs, conflicts) and the loader (records deleted or duplicated
in Customermates).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from migrate.customermates.client import CustomermatesClient
from migrate.customermates.columns import ColumnIndex
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER


@dataclass
class TargetState:
    """What Customermates holds, keyed by Pipedrive ID, with ids translated back to Pipedrive ids."""

    records: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # entity → pid → DTOs
    pid_of: dict[str, str] = field(default_factory=dict)  # Customermates id → pid
    ids: dict[str, set[str]] = field(default_factory=dict)  # entity → every record id, with a Pipedrive ID or not
    fingerprint: str = ""

    @classmethod
    def read(cls, client: CustomermatesClient, columns: ColumnIndex) -> TargetState:
        state = cls()
        digest = hashlib.sha256()
        for entity in ENTITY_ORDER:
            column_id = columns.ids.get((entity, PIPEDRIVE_ID))
            by_pid: dict[str, list[dict[str, Any]]] = {}
            ids = state.ids.setdefault(entity, set())
            if column_id is not None:
                for dto in client.iter_records(entity, sort=(column_id, "asc")):
                    ids.add(dto["id"])
                    pid = next((v["value"] for v in dto.get("customFieldValues") or [] if v.get("columnId") == column_id), None)
                    digest.update(f"{entity}:{dto['id']}:{dto.get('updatedAt')}\n".encode())
                    if pid is None:
                        continue
                    by_pid.setdefault(pid, []).append(dto)
                    state.pid_of[dto["id"]] = pid
            state.records[entity] = by_pid
        state.fingerprint = digest.hexdigest()[:32]
        return state
