"""The run report: what arrived, what did not and why. Printed as tables and saved as JSON."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from migrate.staging.store import Staging

ISSUES_FILE = "issues.csv"
ISSUE_COLUMNS = ("entity", "source_id", "field", "rule", "detail")
ISSUE_EXAMPLES = 3  # per rule, in report.json; every issue is in issues.csv
QUARANTINE_FILE = "quarantine.csv"
QUARANTINE_COLUMNS = ("entity", "source_id", "message", "run_id")
QUARANTINE_EXAMPLES = 20  # in report.json, `migrate status` and verify.json; every one is in quarantine.csv


@contextmanager
def private_file(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """A text file written from scratch, readable by its owner only (0600: reports hold customer data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as handle:
        yield handle


def print_listed(
    console: Console, title: str, found: dict[str, Any], line: Callable[[dict[str, Any]], str], *,
    after: str = "", max_rows: int | None = None, unlisted: str = "`--report-dir` lists every one",
) -> None:
    """A list kept as `{count, examples, file}`: its title and count, where the whole list is, the
    examples (one line each, cut to 200 characters) and how many more there are."""
    if not found["count"]:
        return
    listed = f", listed in {found['file']}" if found.get("file") else ""
    console.print(f"{title} ({found['count']}{listed}){after}", highlight=False)
    shown = found["examples"][:max_rows]
    for item in shown:
        console.print(f"  • {line(item)}"[:200], highlight=False)
    if found["count"] > len(shown):
        where = "" if found.get("file") else f"; {unlisted}"
        console.print(f"  … and {found['count'] - len(shown)} more{where}", highlight=False)


def quarantine_line(item: dict[str, Any]) -> str:
    return f"{item['entity']} {item['source_id']}: {item['message']}"


def write_json(report: dict[str, Any], directory: Path, name: str = "report.json") -> Path:
    path = directory / name
    with private_file(path) as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")
    return path


def pipedrive_usage(usage: dict[str, Any]) -> str:
    """One line: what the extract cost in Pipedrive requests and tokens, against the estimate and the budget."""
    text = f"Pipedrive: {usage['requests']:,} requests, {usage['tokens_spent']:,} tokens"
    if usage.get("tokens_estimated") is not None:
        text += f" (estimated {usage['tokens_estimated']:,} from the {usage['estimate_basis'].removeprefix('sizes of the ')})"
    if usage.get("rate_limited_429"):
        text += f", {usage['rate_limited_429']} rate-limited (429) and retried"
    if usage.get("shared_token_requests"):
        text += (f"; another client on this API token used up to {usage['shared_token_requests']:,} of its "
                 f"{usage['burst_limit']:,} requests per 2 s, and was left them")
    if usage.get("budget_remaining") is not None:
        text += f"; {usage['budget_remaining']:,} tokens left today"
    return text + "."


def print_report(report: dict[str, Any], console: Console, *, max_issue_rows: int = 15) -> None:
    dry = report.get("dry_run")
    table = Table(
        title=f"{'Plan (dry run)' if dry else 'Migration'} — run {report['run_id']}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    headers = ["entity", "source", "deleted", *(("create", "update") if dry else ("created", "updated")), "unchanged", "quarantined"]
    for n, header in enumerate(headers):
        table.add_column(header, justify="left" if n == 0 else "right", no_wrap=True)
    for entity, row in report["entities"].items():
        table.add_row(entity, *(str(row[k]) for k in ("extracted", "deleted_skipped", "created", "updated", "unchanged", "quarantined")))
    console.print(table)
    created = sum(row["created"] for row in report["entities"].values())
    updated = sum(row["updated"] for row in report["entities"].values())
    unchanged = sum(row["unchanged"] for row in report["entities"].values())
    verb = ("would be created", "would be updated") if dry else ("created", "updated")
    conflicts = sum(row.get("conflicts", 0) for row in report["entities"].values())
    changes = "0 changes: " if created + updated == 0 else ""
    kept = f", {conflicts} edited on both sides and left as they are (conflict_skipped)" if conflicts else ""
    console.print(f"{changes}{created} records {verb[0]}, {updated} {verb[1]}, {unchanged} unchanged{kept}.")
    if report.get("pipedrive"):
        console.print(pipedrive_usage(report["pipedrive"]), highlight=False)
    transform = report.get("transform")
    if transform:
        made = f"every record ({transform['records_made']:,}): {transform['why_full']}" if transform["full"] else (
            f"{transform['records_made']:,} records whose inputs changed since the last transform; the others kept"
        )
        console.print(f"Transform: {made}.", highlight=False)
    gone = {e: row.get("deleted_in_target", 0) for e, row in report["entities"].items() if row.get("deleted_in_target")}
    if gone:
        console.print(
            "[bold yellow]Deleted in Customermates since migrated:[/bold yellow] "
            + ", ".join(f"{n} {e}" for e, n in gone.items())
            + (" (recreated)" if any(row.get("recreated") for row in report["entities"].values()) else " (not recreated; see report)")
        )
    if report.get("duplicates_in_target"):
        console.print(f"[bold yellow]Duplicates in Customermates:[/bold yellow] {len(report['duplicates_in_target'])} Pipedrive IDs on more than one record (see report)")
    columns = report.get("columns_created") or []
    if columns:
        console.print(f"[bold]Custom columns {'to create' if dry else 'created'}:[/bold] {len(columns)}")
        for line in columns[:40]:
            console.print(f"  • {line}")
        if len(columns) > 40:
            console.print(f"  … and {len(columns) - 40} more (see report.json)")
    if report.get("columns_left"):
        console.print(
            f"[bold]Columns whose Pipedrive field is gone (deleted there), left with their values:[/bold] {', '.join(report['columns_left'])}",
            highlight=False,
        )
    print_unmatched_owners(console, report.get("unmatched_users") or [])
    by_rule: dict[str, int] = report["issues"]["by_rule"]
    if by_rule:
        issues = Table(title="Values not carried exactly (each handled by a documented rule)", title_justify="left")
        issues.add_column("rule")
        issues.add_column("count", justify="right")
        issues.add_column("example")
        for rule, count in sorted(by_rule.items(), key=lambda kv: -kv[1])[:max_issue_rows]:
            first = (report["issues"]["examples"].get(rule) or [{}])[0]
            example = f"{first['entity']} {first['source_id']} {first['field']}: {first['detail']}" if first else ""
            issues.add_row(rule, str(count), example[:110])
        console.print(issues)
        if report["issues"].get("file"):
            console.print(f"Every issue, with record, field and reason: {report['issues']['file']}")
    print_listed(
        console, "[bold red]Quarantined records[/bold red]", report["quarantined"], quarantine_line,
        after=": rejected by Customermates in an earlier run; a run tries them again" if dry else ": rejected by Customermates",
    )
    load = report.get("load") or {}
    if load.get("records_written"):
        console.print(
            f"Load: {load['records_written']} records in {load['write_requests']} requests, "
            f"{load['records_per_second']:.1f} records/s while writing, {load['records_per_second_overall']:.1f} over the whole load"
        )
    for warning in report.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False)
    console.print(f"Status: [bold]{report['status']}[/bold]")


def print_unmatched_owners(console: Console, owners: list[dict[str, Any]]) -> None:
    """The Pipedrive owners without a Customermates user (`unmatched_users` of a run report or a plan), one line each."""
    if not owners:
        return
    console.print("[bold yellow]Owners without a Customermates user[/bold yellow] (kept in 'Pipedrive owner'):")
    for user in owners:
        console.print(f"  • {user['pipedrive_user']}: {user['records']} records")


def issue_summary(counts: list[tuple[str, int]], examples: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The issues by rule, with the first few of each; the full list is `issues.csv` (`write_issues`)."""
    return {"count": sum(n for _, n in counts), "by_rule": dict(counts), "examples": examples}


def quarantine_summary(staging: Staging) -> dict[str, Any]:
    """The quarantined records: how many, and the first few; every one is in quarantine.csv (`write_quarantine`)."""
    return {"count": sum(staging.quarantine_counts().values()), "examples": list(staging.quarantined(QUARANTINE_EXAMPLES))}


def write_quarantine(staging: Staging, directory: Path) -> Path:
    """Every quarantined record, one CSV row each (entity, source_id, message, run_id), streamed
    from the state file by entity and source id."""
    rows = (tuple(item[c] for c in QUARANTINE_COLUMNS) for item in staging.quarantined())
    return write_csv(rows, QUARANTINE_COLUMNS, directory / QUARANTINE_FILE)


def write_issues(rows: Iterable[tuple[str, str, str, str, str]], directory: Path, name: str = ISSUES_FILE) -> Path:
    """Every issue, one CSV row each (entity, source_id, field, rule, detail)."""
    return write_csv(rows, ISSUE_COLUMNS, directory / name)


def write_csv(rows: Iterable[tuple[Any, ...]], columns: tuple[str, ...], path: Path) -> Path:
    """A CSV file of `columns`, written as the rows stream in: a report file of a million rows
    lists them all without holding them."""
    with private_file(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(tuple(map(_as_text, row)) for row in rows)
    return path


_FORMULA = re.compile(r"[=+\-@\t\r]")  # how a cell a spreadsheet reads as a formula begins
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _as_text(cell: Any) -> Any:
    """A cell from the data (a name, a field, an id a user typed) that a spreadsheet would run as a
    formula, with an apostrophe before it, which makes it text there; a negative number as it is."""
    if isinstance(cell, str) and _FORMULA.match(cell) and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell

