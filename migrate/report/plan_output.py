"""Showing a plan: the terminal summary and the plan.json / plan.md / plan.html files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from migrate.report.plan import ACTIONS, plan_markdown
from migrate.report.plan_html import plan_html
from migrate.report.run_report import write_json


def print_plan(plan: dict[str, Any], console: Console, *, top_issues: int = 10) -> None:
    table = Table(title="Plan: what a run would do", title_justify="left")
    table.add_column("entity", no_wrap=True)
    for action in ACTIONS:
        table.add_column(action, justify="right")
    for entity, counts in plan["summary"].items():
        table.add_row(entity, *(str(counts[a]) for a in ACTIONS))
    console.print(table)
    schema = plan["schema"]
    console.print(f"Custom columns to create: {len(schema['columns_to_create'])}; options to add: {len(schema['options_to_add'])}")
    if plan["lossy"]:
        issues = Table(title="Top issues (values not carried exactly)", title_justify="left")
        issues.add_column("rule")
        issues.add_column("count", justify="right")
        issues.add_column("example")
        for rule, info in list(plan["lossy"].items())[:top_issues]:
            example = info["examples"][0]
            issues.add_row(rule, str(info["count"]), f"{example['entity']} {example['source_id']}: {example['detail']}"[:100])
        console.print(issues)
    conflicts = [(e, r) for e, records in plan["records"].items() for r in records if r["action"] == "conflict"]
    for entity, record in conflicts[:10]:
        fields = ", ".join(c["field"] for c in record["changes"])
        console.print(f"[bold yellow]conflict[/bold yellow] {entity} {record['source_id']} {record['name']}: {fields}", highlight=False)


def write_plan(plan: dict[str, Any], directory: Path) -> list[Path]:
    json_path = write_json(plan, directory, "plan.json")
    md_path = _write_private(directory / "plan.md", plan_markdown(plan))
    html_path = _write_private(directory / "plan.html", plan_html(plan))
    return [json_path, md_path, html_path]


def _write_private(path: Path, text: str) -> Path:
    """Write text to path, readable by its owner only (0600, like plan.json)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
