"""Showing a plan: the terminal summary and the plan.json / plan.md / plan.html files.

The records come from a `PlanRecords` (held, or spooled in the state file) and are written as
they are read, so the files of a million-record plan are written in bounded memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from migrate.report.plan import ACTIONS, PlanRecords, plan_entities, plan_markdown
from migrate.report.plan_html import write_plan_html
from migrate.report.run_report import print_unmatched_owners, private_file


def print_plan(plan: dict[str, Any], records: PlanRecords, console: Console, *, top_issues: int = 10) -> None:
    table = Table(title="Plan: what a run would do", title_justify="left")
    table.add_column("entity", no_wrap=True)
    for action in ACTIONS:
        table.add_column(action, justify="right")
    for entity, counts in plan["summary"].items():
        table.add_row(entity, *(str(counts[a]) for a in ACTIONS))
    console.print(table)
    schema = plan["schema"]
    console.print(f"Custom columns to create: {len(schema['columns_to_create'])}; columns to rename: {len(schema['columns_to_rename'])}")
    console.print(f"Options to add: {len(schema['options_to_add'])}; options to rename: {len(schema['options_to_rename'])}")
    print_unmatched_owners(console, plan.get("unmatched_users") or [])
    if plan["lossy"]:
        issues = Table(title="Top issues (values not carried exactly)", title_justify="left")
        issues.add_column("rule")
        issues.add_column("count", justify="right")
        issues.add_column("example")
        for rule, info in list(plan["lossy"].items())[:top_issues]:
            example = info["examples"][0]
            issues.add_row(rule, str(info["count"]), f"{example['entity']} {example['source_id']}: {example['detail']}"[:100])
        console.print(issues)
    shown = 0
    for entity in plan["summary"]:
        for record in records.of(entity, ("conflict",), 10 - shown):
            fields = ", ".join(c["field"] for c in record["changes"])
            console.print(f"[bold yellow]conflict[/bold yellow] {entity} {record['source_id']} {record['name']}: {fields}", highlight=False)
            shown += 1
        if shown >= 10:
            break


def write_plan(plan: dict[str, Any], records: PlanRecords, directory: Path) -> list[Path]:
    paths = [directory / "plan.json", directory / "plan.md", directory / "plan.html"]
    with private_file(paths[0]) as out:
        write_plan_json(out, plan, records)
    with private_file(paths[1]) as out:
        out.write(plan_markdown(plan, records))
    with private_file(paths[2]) as out:
        write_plan_html(out, plan, records)
    return paths


def write_plan_json(out: TextIO, plan: dict[str, Any], records: PlanRecords) -> None:
    """plan.json: the plan's keys as they are, then `records` ({entity: [entry, …]}), one entry a line."""
    header = json.dumps({k: v for k, v in plan.items() if k != "records"}, indent=2, ensure_ascii=False)
    out.write(header.removesuffix("\n}") + ',\n  "records": {')
    for n, entity in enumerate(plan_entities(plan, records)):
        out.write(("," if n else "") + f"\n    {json.dumps(entity)}: [")
        out.writelines(("," if m else "") + "\n      " + json.dumps(record, ensure_ascii=False) for m, record in enumerate(records.of(entity)))
        out.write("\n    ]")
    out.write("\n  }\n}\n")

