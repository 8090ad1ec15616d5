"""A read of the whole target: every record of every entity, by Pipedrive ID.

One page-through per entity sorted by the Pipedrive ID column (⌈records/100⌉ searches);
shared by the plan (field diffs, conflicts) and the loader (records deleted or duplicated
in Customermates). Records are kept as compressed JSON and parsed when asked for: a record
with a hundred custom values is 14 KiB as Python dicts, about 0.6 KiB compressed.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from migrate.customermates.client import CustomermatesClient
from migrate.customermates.columns import ColumnIndex
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER


class Records(Mapping[str, list[dict[str, Any]]]):
    """Pipedrive ID → the target records carrying it (usually one), stored compressed."""

    def __init__(self) -> None:
        self._by_pid: dict[str, list[tuple[str, bytes]]] = {}  # pid → [(target id, DTO as zlib'd JSON)]

    def add(self, pid: str, dto: dict[str, Any]) -> None:
        packed = zlib.compress(json.dumps(dto, separators=(",", ":")).encode(), 1)
        self._by_pid.setdefault(pid, []).append((dto["id"], packed))

    def ids(self) -> dict[str, list[str]]:
        """pid → target ids, without parsing the records."""
        return {pid: [target_id for target_id, _ in kept] for pid, kept in self._by_pid.items()}

    def __getitem__(self, pid: str) -> list[dict[str, Any]]:
        return [json.loads(zlib.decompress(packed)) for _, packed in self._by_pid[pid]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_pid)

    def __len__(self) -> int:
        return len(self._by_pid)


@dataclass
class TargetState:
    """What Customermates holds, keyed by Pipedrive ID, with ids translated back to Pipedrive ids."""

    records: dict[str, Records] = field(default_factory=dict)  # entity → pid → DTOs
    pid_of: dict[str, str] = field(default_factory=dict)  # Customermates id → pid
    ids: dict[str, set[str]] = field(default_factory=dict)  # entity → every record id, with a Pipedrive ID or not
    fingerprint: str = ""

    @classmethod
    def read(cls, client: CustomermatesClient, columns: ColumnIndex) -> TargetState:
        state = cls()
        digest = hashlib.sha256()
        for entity in ENTITY_ORDER:
            column_id = columns.ids.get((entity, PIPEDRIVE_ID))
            by_pid = Records()
            ids = state.ids.setdefault(entity, set())
            if column_id is not None:
                for dto in client.iter_records(entity, sort=(column_id, "asc")):
                    ids.add(dto["id"])
                    pid = next((v["value"] for v in dto.get("customFieldValues") or [] if v.get("columnId") == column_id), None)
                    digest.update(f"{entity}:{dto['id']}:{dto.get('updatedAt')}\n".encode())
                    if pid is None:
                        continue
                    by_pid.add(pid, dto)
                    state.pid_of[dto["id"]] = pid
            state.records[entity] = by_pid
        state.fingerprint = digest.hexdigest()[:32]
        return state
