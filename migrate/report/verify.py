"""`migrate verify`: read the target back and compare it with what the transform intended.

Staging holds the intent (`target_records`: fields, links, services, users, values, notes per
record, keyed by Pipedrive id) and what was written (`id_map`). The target is read once per
entity, page after page sorted by the "Pipedrive ID" column (⌈records/100⌉ searches, no
per-record reads). Records are matched by their Pipedrive ID value, not by the id map, so
the check says what Customermates holds now whatever the state file believes.

What counts as a failure (exit code 1): a record of staging missing in the target (quarantined
ones included: they are listed as known failures), a Pipedrive ID on two or more target
records, a relationship, own field (name, emails, amount), custom value or notes text of a found record that is not there.
Failures are written to the state file as they are found (`verify_findings`); the report holds
their counts and the first few of each kind, and `write_findings` streams every one to a CSV
file per kind, so a verify of a million records that are not there holds none of them.
Migrated records deleted in Pipedrive since and still in the target (`sync --deletes mark`) are
counted apart, per entity. Extras (target records without a Pipedrive ID, or with one neither
staging nor the id map knows) are counted,
with a few examples, and listed in `extras.csv` (`write_extras`, streamed from the state file),
not failures: users create records. Values the transform could not carry exactly are already
carried as the transform wrote them (the payload is the reference), so they compare equal; the
rules that fired (`transform_issues`) are listed as known and lossy. Links to a quarantined
record and owners without a Customermates user are excepted: counted apart, not failures.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from migrate.customermates.client import SINGULAR, CustomermatesClient
from migrate.customermates.columns import ColumnIndex
from migrate.customermates.load import users_by_email
from migrate.customermates.target import DTO_RELATIONS, TargetState
from migrate.report.run_report import (
    ISSUE_EXAMPLES,
    issue_summary,
    print_listed,
    quarantine_summary,
    write_csv,
)
from migrate.staging.store import Staging
from migrate.transform.columns import PIPEDRIVE_ID
from migrate.transform.engine import ENTITY_ORDER
from migrate.transform.entities import LINK_ENTITY

EXIT_MISMATCH = 1
OWNER_KIND = "owner→user"
BUILT_IN = "built-in"  # a record's own fields (name, first and last name, emails, amount), tallied beside the column types
EXTRAS_FILE = "extras.csv"
EXTRA_COLUMNS = ("entity", "target_id", "pipedrive_id")
EXTRA_EXAMPLES = 3  # per entity, in verify.json; every extra record is in extras.csv
# The kinds of failure: the key of each in verify.json, and the columns of its CSV file (<key>.csv)
FINDINGS = {
    "missing": ("entity", "source_id", "quarantined", "reason"),
    "duplicates": ("entity", "source_id", "target_ids"),
    "link_mismatches": ("entity", "source_id", "kind", "missing"),
    "value_mismatches": ("entity", "source_id", "column", "type", "expected", "found"),
    "notes_missing": ("entity", "source_id", "target_id"),
}
JSON_CELLS = {"quarantined", "target_ids", "missing", "expected", "found"}  # written as JSON in the CSV files
FINDING_EXAMPLES = 15  # per kind, in verify.json and printed; every failure is in the state file
FINDINGS_PER_INSERT = 2000


def link_kind(entity: str, key: str) -> str:
    return f"{SINGULAR[entity]}→{SINGULAR[LINK_ENTITY[key]]}"


def services_kind() -> str:
    return "deal→service (with quantity)"


class _Tally:
    """Expected / preserved / excepted counters under one name (a link kind, a column type)."""

    def __init__(self) -> None:
        self.expected: Counter[str] = Counter()
        self.preserved: Counter[str] = Counter()
        self.excepted: Counter[str] = Counter()

    def add(self, name: str, ok: bool, *, excepted: bool = False) -> None:
        self.expected[name] += 1
        if excepted:
            self.excepted[name] += 1
        elif ok:
            self.preserved[name] += 1

    def to_json(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in sorted(self.expected):
            checked = self.expected[name] - self.excepted[name]
            out[name] = {
                "expected": self.expected[name],
                "preserved": self.preserved[name],
                "excepted": self.excepted[name],
                "percent": round(100.0 * self.preserved[name] / checked, 2) if checked else None,
            }
        return out

    def complete(self) -> bool:
        return all(self.preserved[n] + self.excepted[n] == self.expected[n] for n in self.expected)


class _Findings:
    """The failures verify finds, of each kind (`FINDINGS`): written to the state file a batch at
    a time, in the order found; only their counts per entity and the first few are held."""

    def __init__(self, staging: Staging) -> None:
        self.staging = staging
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, entity)
        self.examples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in FINDINGS}
        self.rows: list[tuple[str, str, int, str]] = []
        self.seq = 0
        staging.clear_verify_findings()

    def add(self, kind: str, item: dict[str, Any]) -> None:
        self.counts[kind, item["entity"]] += 1
        if len(self.examples[kind]) < FINDING_EXAMPLES:
            self.examples[kind].append(item)
        self.rows.append((kind, item["entity"], self.seq, json.dumps(item, ensure_ascii=False)))
        self.seq += 1
        if len(self.rows) >= FINDINGS_PER_INSERT:
            self.flush()

    def flush(self) -> None:
        self.staging.add_verify_findings(self.rows)
        self.rows = []

    def count(self, kind: str, entity: str | None = None) -> int:
        return sum(n for (k, e), n in self.counts.items() if k == kind and entity in (None, e))

    def to_json(self, kind: str) -> dict[str, Any]:
        return {"count": self.count(kind), "examples": self.examples[kind]}


def verify(staging: Staging, client: CustomermatesClient) -> dict[str, Any]:
    """Compare the target with staging; returns the verify report (see the module docstring)."""
    columns = staging.column_map()
    users = users_by_email(staging.iter_raw("users"), client.list_users())  # matched as the load matches them
    reads = 0

    # 1. read the target into the state file, one page-through per entity
    pid_columns = ColumnIndex(ids={key: column["id"] for key, column in columns.items() if key[1] == PIPEDRIVE_ID})
    target = TargetState.read(client, pid_columns, staging)
    entities: dict[str, dict[str, Any]] = {}
    extras: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    for entity in ENTITY_ORDER:
        if (entity, PIPEDRIVE_ID) not in pid_columns.ids:
            # nothing was ever set up for this entity: whatever the target holds has no Pipedrive ID
            total = int(client.search(entity, page=1, page_size=5)["pagination"]["total"])
            reads += 1
            extras[entity] = total
            if total:
                examples.append({"entity": entity, "target_id": None, "pipedrive_id": None, "count": total})
        else:
            total = staging.snapshot_count(entity)
            reads += max(1, -(-total // 100))
            extras[entity] = staging.snapshot_unknown_count(entity)
            unknown = staging.snapshot_unknown(entity, EXTRA_EXAMPLES)
            examples.extend({"entity": entity, "target_id": t, "pipedrive_id": p} for t, p in unknown)
        entities[entity] = {"source": staging.count_targets(entity), "target": total}
        if (entity, PIPEDRIVE_ID) in pid_columns.ids:
            entities[entity]["deleted_in_pipedrive"] = staging.snapshot_deleted_in_pipedrive_count(entity)

    # 2. records (matched, missing, duplicates), then the links, values and notes of each found
    findings = _Findings(staging)
    links, values, notes = _Tally(), _Tally(), _Tally()
    unmatched_owner_links = 0
    for entity in ENTITY_ORDER:
        matched = quarantined = 0
        for batch in staging.iter_target_batches(entity):
            sids = [sid for sid, _, _ in batch]
            found = target.records(entity, sids)
            mapped = staging.id_map_for(entity, sids)
            pid_of = target.pids_of_related(r for records in found.values() for r in records)
            absent = [sid for sid in sids if not found.get(sid)]
            rejected = staging.quarantine_messages(entity, absent) if absent else {}
            undone = staging.undone_among(entity, absent) if absent else set()
            rejected_refs = _quarantined_refs(staging, entity, [payload for sid, payload, _ in batch if found.get(sid)])
            for sid, payload, _ in batch:
                records = found.get(sid) or []
                if not records:
                    message = rejected.get(sid)
                    if message is not None:
                        known = f"quarantined: {message}"
                        quarantined += 1
                    elif sid in mapped:
                        known = "deleted in Customermates after it was migrated"
                    elif sid in undone:
                        known = "removed by `migrate undo`; `migrate run` creates it again"
                    else:
                        known = "not loaded yet"
                    findings.add("missing", {"entity": entity, "source_id": sid, "quarantined": message is not None, "reason": known})
                    continue
                if len(records) > 1:
                    findings.add("duplicates", {"entity": entity, "source_id": sid, "target_ids": [r["id"] for r in records]})
                else:
                    matched += 1
                written = mapped.get(sid, (None, None))[0]
                record = next((r for r in records if r["id"] == written), records[0])
                for key, wanted in (payload.get("links") or {}).items():
                    target_entity = LINK_ENTITY[key]
                    kind = link_kind(entity, key)
                    have = {pid_of.get(ref.get("id")) for ref in record.get(DTO_RELATIONS[key]) or []}
                    lost = []
                    for ref in wanted:
                        excepted = (target_entity, ref) in rejected_refs and not target.records(target_entity, [ref])
                        ok = ref in have
                        links.add(kind, ok, excepted=excepted)
                        if not ok and not excepted:
                            lost.append(ref)
                    if lost:
                        findings.add("link_mismatches", {"kind": kind, "entity": entity, "source_id": sid, "missing": lost})
                if entity == "deals":
                    kind = services_kind()
                    have_qty = {pid_of.get(s.get("id")): s.get("quantity") for s in record.get("services") or []}
                    lost = []
                    for ref, quantity in payload.get("services") or []:
                        excepted = ("services", ref) in rejected_refs and not target.records("services", [ref])
                        ok = ref in have_qty and _same_number(have_qty[ref], quantity)
                        links.add(kind, ok, excepted=excepted)
                        if not ok and not excepted:
                            lost.append({"service": ref, "quantity": quantity, "found": have_qty.get(ref)})
                    if lost:
                        findings.add("link_mismatches", {"kind": kind, "entity": entity, "source_id": sid, "missing": lost})
                have_users = {u.get("id") for u in record.get("users") or []}
                lost = []
                for uid in dict.fromkeys(payload.get("users") or []):
                    target_user = users.get(uid)
                    if target_user is None:
                        unmatched_owner_links += 1
                    ok = target_user is not None and target_user in have_users
                    links.add(OWNER_KIND, ok, excepted=target_user is None)
                    if target_user is not None and not ok:
                        lost.append(uid)
                if lost:
                    findings.add("link_mismatches", {"kind": OWNER_KIND, "entity": entity, "source_id": sid, "missing": lost})
                for name, wanted_value in (payload.get("fields") or {}).items():
                    got_value = record.get(name)
                    # an update cannot clear a contact's last name: it keeps the one it had (rule last_name_not_cleared)
                    kept = entity == "contacts" and name == "lastName" and wanted_value == "" and bool(got_value)
                    ok = _same_field(wanted_value, got_value)
                    values.add(BUILT_IN, ok, excepted=kept and not ok)
                    if not ok and not kept:
                        findings.add(
                            "value_mismatches",
                            {"entity": entity, "source_id": sid, "column": name, "type": BUILT_IN, "expected": wanted_value, "found": got_value},
                        )
                actual: dict[str, list[Any]] = {}
                for cell in record.get("customFieldValues") or []:
                    actual.setdefault(cell.get("columnId"), []).append(cell.get("value"))
                for key, value in (payload.get("values") or {}).items():
                    if key == PIPEDRIVE_ID:
                        continue  # the match key itself
                    column = columns.get((entity, key))
                    if column is None:
                        values.add("(no column)", False)
                        findings.add("value_mismatches", {"entity": entity, "source_id": sid, "column": key, "type": None, "expected": value, "found": None})
                        continue
                    expected = value
                    if column["type"] == "singleSelect":
                        expected = (column.get("options") or {}).get(value, f"(no option {value!r})")
                    got = actual.get(column["id"]) or []
                    ok = expected in got
                    values.add(column["type"], ok)
                    if not ok:
                        findings.add(
                            "value_mismatches",
                            {"entity": entity, "source_id": sid, "column": column["label"], "type": column["type"], "expected": value, "found": got}
                        )
                if payload.get("notes"):
                    ok = record.get("notes") not in (None, "")
                    notes.add(entity, ok)
                    if not ok:
                        findings.add("notes_missing", {"entity": entity, "source_id": sid, "target_id": record["id"]})
        row = entities[entity]
        row["matched"] = matched
        row["missing"] = findings.count("missing", entity)
        row["quarantined"] = quarantined
        row["duplicates"] = findings.count("duplicates", entity)
        row["extras"] = extras[entity]

    findings.flush()

    lossy = staging.transform_issue_counts()
    missing, duplicates = findings.count("missing"), findings.count("duplicates")
    ok = not missing and not duplicates and links.complete() and values.complete() and notes.complete()
    problems = []
    if missing:
        problems.append(f"{missing} missing")
    if duplicates:
        problems.append(f"{duplicates} duplicated")
    if not links.complete():
        problems.append(f"{findings.count('link_mismatches')} records with lost links")
    if not values.complete():
        problems.append(f"{findings.count('value_mismatches')} values differ")
    if not notes.complete():
        problems.append(f"{findings.count('notes_missing')} notes missing")
    return {
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": "ok" if ok else "mismatch",
        "summary": "everything matches" if ok else ", ".join(problems),
        "entities": entities,
        "links": links.to_json(),
        "values": values.to_json(),
        "notes": notes.to_json(),
        "missing": findings.to_json("missing"),
        "duplicates": findings.to_json("duplicates"),
        "extras": {"count": sum(extras.values()), "examples": examples},
        "link_mismatches": findings.to_json("link_mismatches"),
        "value_mismatches": findings.to_json("value_mismatches"),
        "notes_missing": findings.to_json("notes_missing"),
        "known_failures": quarantine_summary(staging),
        "known_lossy": issue_summary(lossy, {rule: staging.transform_issues(rule=rule, limit=ISSUE_EXAMPLES) for rule, _ in lossy}),
        "owner_links_unmatched": unmatched_owner_links,
        "search_requests": reads,
    }


def _quarantined_refs(staging: Staging, entity: str, payloads: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(entity, source id) of the records these payloads link to that are quarantined: one
    lookup per linked entity, for a batch of records."""
    refs: dict[str, set[str]] = {}
    for payload in payloads:
        for key, wanted in (payload.get("links") or {}).items():
            refs.setdefault(LINK_ENTITY[key], set()).update(wanted)
        if entity == "deals":
            refs.setdefault("services", set()).update(ref for ref, _ in payload.get("services") or [])
    return {(linked, ref) for linked, ids in refs.items() if ids for ref in staging.quarantine_messages(linked, list(ids))}


def write_extras(staging: Staging, directory: Path) -> Path:
    """Every extra record the last read of the target found (`extras.csv`: entity, target id,
    Pipedrive ID), streamed from the state file. An entity nothing was migrated to is not read
    (verify.json gives its count)."""
    rows = ((entity, t, p) for entity in ENTITY_ORDER for t, p in staging.snapshot_unknown(entity))
    return write_csv(rows, EXTRA_COLUMNS, directory / EXTRAS_FILE)


def write_findings(staging: Staging, directory: Path) -> dict[str, Path]:
    """Every failure the last verify found, a CSV file per kind (`FINDINGS`: missing.csv, …; by
    verify.json key), streamed from the state file in entity order, then the order found. Each
    file is written even when empty, so that a directory never keeps an earlier verify's list."""
    paths = {}
    for kind, columns in FINDINGS.items():
        rows = (tuple(_cell(item[c], c) for c in columns) for item in staging.verify_findings(kind))
        paths[kind] = write_csv(rows, columns, directory / f"{kind}.csv")
    return paths


def _cell(value: Any, column: str) -> Any:
    return json.dumps(value, ensure_ascii=False) if column in JSON_CELLS else value


def _same_field(wanted: Any, got: Any) -> bool:
    """A record's own field (name, emails, amount) as written and as read back: lists in any
    order, numbers by value."""
    if isinstance(wanted, list):
        return isinstance(got, list) and sorted(map(str, wanted)) == sorted(map(str, got))
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        return got is not None and _same_number(wanted, got)
    return wanted == got or (wanted in (None, "") and got in (None, ""))


def _same_number(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return a == b


def _pct(row: dict[str, Any]) -> str:
    return "—" if row["percent"] is None else f"{row['percent']:.1f}%"


def print_verify(result: dict[str, Any], console: Console, *, max_rows: int = FINDING_EXAMPLES) -> None:
    table = Table(title="Records: staging vs Customermates", title_justify="left")
    headers = ("entity", "in staging", "in target", "matched", "missing", "duplicates", "extras")
    for n, header in enumerate(headers):
        table.add_column(header, justify="left" if n == 0 else "right")
    for entity, row in result["entities"].items():
        missing = str(row["missing"]) + (f" ({row['quarantined']} quarantined)" if row["quarantined"] else "")
        table.add_row(entity, str(row["source"]), str(row["target"]), str(row["matched"]), missing, str(row["duplicates"]), str(row["extras"]))
    console.print(table)
    for title, key, first in (("Relationships preserved", "links", "link"), ("Custom values preserved", "values", "column type"), ("Notes present", "notes", "entity")):
        if not result[key]:
            continue
        tally = Table(title=title, title_justify="left")
        for n, header in enumerate((first, "expected", "preserved", "excepted", "%")):
            tally.add_column(header, justify="left" if n == 0 else "right")
        for name, row in result[key].items():
            style = None if row["percent"] in (None, 100.0) else "red"
            tally.add_row(name, str(row["expected"]), str(row["preserved"]), str(row["excepted"]), _pct(row), style=style)
        console.print(tally)
    sections = (
        ("Missing in Customermates", "missing", lambda m: f"{m['entity']} {m['source_id']}: {m['reason']}"),
        ("Duplicated in Customermates", "duplicates", lambda d: f"{d['entity']} {d['source_id']}: {', '.join(d['target_ids'])}"),
        ("Lost links", "link_mismatches", lambda m: f"{m['kind']} on {m['entity'][:-1]} {m['source_id']}: {m['missing']}"),
        ("Values that differ", "value_mismatches", lambda m: f"{m['entity']} {m['source_id']} {m['column']} ({m['type']}): expected {m['expected']!r}, found {m['found']!r}"),
        ("Notes missing", "notes_missing", lambda m: f"{m['entity']} {m['source_id']}"),
    )
    for title, key, line in sections:
        print_listed(console, f"[bold red]{title}[/bold red]", result[key], line, after=":", max_rows=max_rows)
    kept = sum(row.get("deleted_in_pipedrive", 0) for row in result["entities"].values())
    if kept:
        console.print(
            f"Deleted in Pipedrive since migrated, still in Customermates (not a failure; `sync --deletes delete` removes them): {kept}",
            highlight=False,
        )
    extras = result["extras"]
    if extras["count"]:
        listed = f" (listed in {extras['file']})" if extras.get("file") else ""
        console.print(f"Extras (in Customermates without a known Pipedrive ID, not a failure): {extras['count']}{listed}", highlight=False)
    known = result["known_failures"]
    if known["count"]:
        listed = f" (listed in {known['file']})" if known.get("file") else ""
        console.print(f"[yellow]Known failures[/yellow] (quarantined by the load, counted as missing): {known['count']}{listed}", highlight=False)
    by_rule = result["known_lossy"]["by_rule"]
    if by_rule:
        parts = [f"{rule} {count}" for rule, count in by_rule.items()]
        console.print("Known lossy transforms (excepted, see the run report): " + ", ".join(parts), highlight=False)
    if result["owner_links_unmatched"]:
        console.print(
            f"Owners without a Customermates user of the same email (excepted): {result['owner_links_unmatched']} owner links",
            highlight=False,
        )
    colour = "green" if result["status"] == "ok" else "red"
    console.print(f"Verify: [bold {colour}]{result['summary']}[/bold {colour}] ({result['search_requests']} search requests)")
