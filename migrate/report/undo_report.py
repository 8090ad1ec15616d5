"""The undo report: what `migrate undo` did or would do to each record and column, printed and
written as undo.json (streamed from the state file, where the undo keeps every record's outcome)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from migrate.customermates.client import SINGULAR
from migrate.customermates.undo import BUCKETS, UNDO_ORDER, as_utc
from migrate.report.run_report import private_file
from migrate.staging.store import Staging


@dataclass
class UndoRecords:
    """The records of the last undo with what happened to each (undo.json's `records`): per
    entity those to delete, the edited ones, those already gone; read from the state file."""

    staging: Staging

    def of(self, action: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        rows = (r for e in UNDO_ORDER for bucket in BUCKETS for r in self.staging.undo_records(e, bucket, action))
        return (_entry(r) for r in itertools.islice(rows, limit))


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    item = {"entity": row["entity"], "source_id": row["source_id"], "target_id": row["target_id"]}
    if row["bucket"] == "edited":
        item["updated_at"] = row["updated_at"]
        item["written_at"] = as_utc(row["written_at"]).isoformat(timespec="seconds") if row["written_at"] else None
    item["action"] = row["action"]
    if row["action"] == "failed":
        item["message"] = row["message"]
    return item


def write_undo(result: dict[str, Any], records: UndoRecords, directory: Path) -> Path:
    """undo.json: the result's keys, with `records` (every record and what happened to it, one a
    line, streamed from the state file) before `columns`."""
    path = directory / "undo.json"
    with private_file(path) as out:
        for n, (key, value) in enumerate(result.items()):
            if key == "columns":
                out.write(',\n  "records": [')
                out.writelines(("," if m else "") + "\n    " + json.dumps(r, ensure_ascii=False) for m, r in enumerate(records.of()))
                out.write("\n  ]")
            text = json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            out.write(("," if n else "{") + f"\n  {json.dumps(key)}: {text}")
        out.write("\n}\n")
    return path


def print_undo(result: dict[str, Any], records: UndoRecords, console: Console, *, max_rows: int = 20) -> None:
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
    kept = sum(row["kept_edited"] for row in result["entities"].values())
    if kept:
        console.print(f"[bold yellow]Kept: edited in Customermates since migrated[/bold yellow] ({kept}; --force deletes them too):")
        for item in records.of("kept (edited)", max_rows):
            console.print(f"  • {SINGULAR[item['entity']]} {item['source_id']} ({item['target_id']}): updated {item['updated_at']}", highlight=False)
    failed = sum(row["failed"] for row in result["entities"].values())
    if failed:
        console.print(f"[bold red]Not deleted[/bold red] ({failed}):")
        for item in records.of("failed", max_rows):
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
