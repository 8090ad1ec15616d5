"""`migrate sync`: incremental reads, minimal writes, deletions by policy, convergence."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from migrate.cli import cli
from migrate.customermates import target
from migrate.customermates.client import (
    BatchRejectedError,
    CustomermatesClient,
    Issue,
    ServerError,
)
from migrate.customermates.load import Loader
from migrate.pipedrive.collections import PAGE_LIMIT
from migrate.staging.store import Staging
from tests.crash_harness import snapshot
from tests.fakes.customermates import VALID_KEY, FakeCustomermates
from tests.test_end_to_end import NoSleep, by_pipedrive_id, read_issues, read_quarantine
from tests.test_pipedrive_client import answer_field_definitions_at_v1_only

NOW = "2026-11-28T12:00:00Z"


def invoke(env, *args):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def live_persons(pipedrive):
    return [p for p in pipedrive.collections["persons"] if not p.get("is_deleted")]


def test_a_sync_without_changes_costs_a_handful_of_reads_and_no_writes(migrated, pipedrive, customermates):
    requests_before, writes_before = len(pipedrive.requests), customermates.write_count()
    result = invoke(migrated, "sync")
    assert result.exit_code == 0, result.output
    assert "created 0, updated 0" in result.output
    sync_requests = pipedrive.requests[requests_before:]
    assert customermates.write_count() == writes_before
    incremental = [r for r in sync_requests if "updated_since" in r.query]
    assert len(incremental) == 8  # one page per collection with updated_since
    assert len(sync_requests) == 22  # plus the small collections read whole and users/me (as README.md says)
    assert "Pipedrive requests 22, 292 tokens" in result.output  # every request counted, as the tokens are


def test_a_sync_carries_edits_and_new_records_with_minimal_writes(migrated, pipedrive, customermates):
    person = live_persons(pipedrive)[5]
    person["first_name"] = person["first_name"] + "-Synced"
    person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()
    person["update_time"] = NOW
    newcomer = dict(live_persons(pipedrive)[6], id=9001, name="Nora Neu", first_name="Nora", last_name="Neu", add_time=NOW, update_time=NOW)
    pipedrive.collections["persons"].append(newcomer)
    customermates.clear_requests()
    result = invoke(migrated, "sync")
    assert result.exit_code == 0, result.output
    writes = [(r.method, r.path, r.item_count) for r in customermates.requests if r.path.endswith("/many")]
    assert writes == [("POST", "/api/v1/contacts/many", 1), ("PUT", "/api/v1/contacts/many", 1)]
    contacts = by_pipedrive_id(customermates, "contacts")
    assert contacts[str(person["id"])][0]["firstName"].endswith("-Synced")
    assert contacts["9001"][0]["lastName"] == "Neu"


def test_deleted_records_are_marked_by_default_and_removed_on_request(migrated, pipedrive, customermates):
    first, second = live_persons(pipedrive)[:2]
    for person in (first, second):
        person["is_deleted"], person["update_time"] = True, NOW
    assert invoke(migrated, "sync").exit_code == 0
    contacts = by_pipedrive_id(customermates, "contacts")
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    for person in (first, second):
        values = {v["columnId"]: v["value"] for v in contacts[str(person["id"])][0]["customFieldValues"]}
        assert values[column] == NOW[:10]
    writes = customermates.write_count()
    assert invoke(migrated, "sync").exit_code == 0
    assert customermates.write_count() == writes  # marked once
    assert invoke(migrated, "sync", "--deletes", "delete").exit_code == 0
    contacts = by_pipedrive_id(customermates, "contacts")
    assert str(first["id"]) not in contacts and str(second["id"]) not in contacts


def test_syncs_converge_to_what_a_fresh_migration_produces(migrated, pipedrive, customermates, tmp_path):
    rng = random.Random(5)
    next_id = 10_000
    for round_number in range(3):
        stamp = f"2026-11-28T1{round_number}:00:00Z"
        for person in rng.sample(live_persons(pipedrive), 4):
            person["first_name"] = (person.get("first_name") or "X") + f"-r{round_number}"
            person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()
            person["update_time"] = stamp
        for deal in rng.sample([d for d in pipedrive.collections["deals"] if d.get("status") == "open"], 2):
            deal["title"] += f" (r{round_number})"
            deal["update_time"] = stamp
        victim = rng.choice(live_persons(pipedrive))
        victim["is_deleted"], victim["update_time"] = True, stamp
        template = live_persons(pipedrive)[0]
        next_id += 1
        pipedrive.collections["persons"].append(
            dict(template, id=next_id, name=f"New Person {next_id}", first_name="New", last_name=f"Person {next_id}", add_time=stamp, update_time=stamp)
        )
        result = invoke(migrated, "sync", "--deletes", "delete")
        assert result.exit_code == 0, result.output
    with FakeCustomermates() as fresh:
        fresh_env = dict(migrated, CUSTOMERMATES_URL=fresh.url, MIGRATE_STATE=str(tmp_path / "fresh.duckdb"))
        assert invoke(fresh_env, "run").exit_code == 0
        assert snapshot(customermates) == snapshot(fresh)


def test_records_that_vanish_without_a_trace_are_caught_by_id_reconciliation(migrated, pipedrive, customermates):
    purged = live_persons(pipedrive)[3]
    pipedrive.collections["persons"].remove(purged)  # gone for good: no is_deleted row, no update_time bump
    assert invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", "0").exit_code == 0
    assert str(purged["id"]) in by_pipedrive_id(customermates, "contacts")  # the window cannot see it
    result = invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", "1")
    assert result.exit_code == 0, result.output
    assert str(purged["id"]) not in by_pipedrive_id(customermates, "contacts")


def test_id_reconciliation_holds_a_page_of_ids_at_a_time_and_still_catches_every_vanished_record(
    env, pipedrive, customermates, monkeypatch, tmp_path
):
    """The ids read are checked against the state file page by page and the missing ones found
    in SQL: records vanished from the first and the last of several pages are both caught, and
    one without update_time arrives."""
    pipedrive.collections["persons"] = [dict(p, id=i) for i, p in enumerate(pipedrive.collections["persons"] * 10, start=1)]
    assert invoke(env, "run").exit_code == 0
    live = live_persons(pipedrive)
    vanished = [live[0], live[-1]]
    for person in vanished:
        pipedrive.collections["persons"].remove(person)
    pipedrive.collections["persons"].append(dict(live[1], id=99999, name="No Stamp", first_name="No", last_name="Stamp", update_time=None))
    asked: list[int] = []
    staged_among = Staging.staged_among

    def counting(self, collection, ids):
        if collection == "persons":
            asked.append(len(ids))
        return staged_among(self, collection, ids)

    monkeypatch.setattr(Staging, "staged_among", counting)

    result = invoke(env, "sync", "--deletes", "delete", "--reconcile-every", "1", "--report-dir", str(tmp_path / "out"))

    assert result.exit_code == 0, result.output
    assert len(asked) == math.ceil(len(pipedrive.collections["persons"]) / PAGE_LIMIT) >= 3
    assert max(asked) <= PAGE_LIMIT
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["sync"]["vanished"]["persons"] == 2
    contacts = by_pipedrive_id(customermates, "contacts")
    assert all(str(person["id"]) not in contacts for person in vanished)
    assert contacts["99999"][0]["lastName"] == "Stamp"


def test_a_sync_with_many_changes_reads_and_writes_in_proportion(env, pipedrive, customermates):
    pipedrive.collections["persons"] = [dict(p, id=i) for i, p in enumerate(pipedrive.collections["persons"] * 10, start=1)]
    assert invoke(env, "run").exit_code == 0
    changed = live_persons(pipedrive)[:600]
    for person in changed:
        person["job_title"] = "Changed"
        person["update_time"] = NOW
    requests_before = len(pipedrive.requests)
    customermates.clear_requests()
    assert invoke(env, "sync", "--reconcile-every", "0").exit_code == 0
    person_pages = [r for r in pipedrive.requests[requests_before:] if r.path == "/api/v2/persons"]
    assert len(person_pages) == 2  # ⌈600/500⌉ (+ the few in the overlap window)
    updates = [r for r in customermates.requests if r.method == "PUT" and r.path.endswith("/many")]
    assert sum(r.item_count for r in updates) == 600
    assert len(updates) <= 600 // 50 + 1


def _field(pipedrive, meta, name):
    return next(f for f in pipedrive.collections[meta] if f.get("field_name") == name)


def _rename_field_and_add_one(pipedrive, renamed: str, to: str, *, added: str, code: str, value: str) -> dict:
    """In Pipedrive: the person field `renamed` is renamed `to`, a new text field `added` appears,
    and the first live person, returned, is given `value` in it."""
    _field(pipedrive, "personFields", renamed)["field_name"] = to
    pipedrive.collections["personFields"].append(
        {"field_code": code, "field_name": added, "field_type": "varchar", "is_custom_field": True, "options": None}
    )
    person = live_persons(pipedrive)[0]
    person.setdefault("custom_fields", {})[code] = value
    person["update_time"] = NOW
    return person


def test_schema_drift_new_field_new_column_renamed_field_renamed_column(migrated, pipedrive, customermates):
    _sync_a_renamed_field_and_a_new_one(migrated, pipedrive, customermates)


def test_a_sync_on_an_account_with_only_v1_field_definitions_reads_them(env, pipedrive, customermates):
    """v1 field definitions are staged by their `key` as a full extract stages them, where the sync staged them
    by the v2 `field_code` they lack and failed."""
    answer_field_definitions_at_v1_only(pipedrive)
    assert invoke(env, "run").exit_code == 0
    _sync_a_renamed_field_and_a_new_one(env, pipedrive, customermates)


def _sync_a_renamed_field_and_a_new_one(migrated, pipedrive, customermates) -> None:
    """The sync renames the column of the field renamed in Pipedrive and makes one for the new field, with its value."""
    before = {c["label"]: c["id"] for c in customermates.columns("contact")}
    person = _rename_field_and_add_one(pipedrive, "Anrede", "Salutation", added="Newsletter", code="f" * 40, value="weekly")
    result = invoke(migrated, "sync")
    assert result.exit_code == 0, result.output
    after = {c["label"]: c["id"] for c in customermates.columns("contact")}
    assert after["Salutation"] == before["Anrede"] and "Anrede" not in after  # renamed, same column and option ids
    assert "Newsletter" in after
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert {"columnId": after["Newsletter"], "value": "weekly"} in record["customFieldValues"]


def test_a_value_of_a_field_the_field_list_did_not_name_yet_is_reported_then_migrated_by_the_next_sync(migrated, pipedrive, customermates, tmp_path):
    """A field made in Pipedrive after its field list was read (or served late): its value is reported
    (`custom_field_unknown`), not written under no column; once the list names it, the next sync makes
    its column and writes the value, as README's issue table says."""
    code = "e" * 40
    person = live_persons(pipedrive)[0]
    person.setdefault("custom_fields", {})[code] = "weekly"
    person["update_time"] = NOW
    assert invoke(migrated, "sync", "--report-dir", str(tmp_path / "r")).exit_code == 0
    [issue] = [i for i in read_issues(tmp_path / "r") if i["rule"] == "custom_field_unknown"]
    assert (issue["entity"], issue["source_id"], issue["field"]) == ("contacts", str(person["id"]), code)
    pipedrive.collections["personFields"].append(
        {"field_code": code, "field_name": "Newsletter", "field_type": "varchar", "is_custom_field": True, "options": None}
    )
    assert invoke(migrated, "sync", "--report-dir", str(tmp_path / "again")).exit_code == 0
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Newsletter")
    assert {"columnId": column, "value": "weekly"} in by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["customFieldValues"]
    assert not [i for i in read_issues(tmp_path / "again") if i["rule"] == "custom_field_unknown"]


def _edited_in_customermates(customermates, contact: dict, **fields) -> None:
    response = httpx.put(
        f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY}, json={"contacts": [{"id": contact["id"], **fields}]}
    )
    assert response.status_code == 200, response.text


def test_a_contact_edited_only_in_customermates_keeps_its_edit_when_a_column_it_has_a_value_in_is_made_again(migrated, pipedrive, customermates):
    """Pipedrive left the person alone; a user renamed the contact in Customermates, and another
    deleted the "Job title" column. The sync makes the column again and fills it, sending only that
    value, where it sent the whole body and the contact's name went back to Pipedrive's."""
    person = next(p for p in live_persons(pipedrive) if p.get("job_title"))
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    _edited_in_customermates(customermates, contact, firstName="Renamed-in-Customermates")
    customermates._tool_delete_column(next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title"))

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    [new] = _labels(customermates, "contact")["Job title"]
    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert kept["firstName"] == "Renamed-in-Customermates"
    assert {"columnId": new, "value": person["job_title"]} in kept["customFieldValues"]
    writes = customermates.write_count()
    assert invoke(migrated, "sync").exit_code == 0
    assert customermates.write_count() == writes  # and nothing is sent again


def test_a_contact_edited_in_customermates_keeps_its_edit_when_its_owner_is_invited_and_assigned(migrated, pipedrive, customermates):
    """An owner matched since the last load is assigned their records: only their users are sent, so
    a contact's name a user changed in Customermates meanwhile stays."""
    owner = pipedrive.collections["users"][0]
    person = next(p for p in live_persons(pipedrive) if p.get("owner_id") == owner["id"])
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    _edited_in_customermates(customermates, contact, firstName="Renamed-in-Customermates")
    joined = customermates.add_user({"email": owner["email"], "firstName": "Katrin", "lastName": "Vogel"})

    assert invoke(migrated, "sync").exit_code == 0

    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert kept["firstName"] == "Renamed-in-Customermates" and [u["id"] for u in kept["users"]] == [joined["id"]]


def _moved_to_another_organization(customermates, person: dict) -> str:
    """A user links the person's contact to another organization in Customermates; its id."""
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert contact["organizations"]
    other = next(o["id"] for o in customermates.records("organizations") if o["id"] not in {r["id"] for r in contact["organizations"]})
    customermates.edit_records("contacts", [{"id": contact["id"], "organizationIds": [other]}])
    return other


def test_a_contact_a_user_moved_to_another_organization_keeps_it_when_a_column_it_has_a_value_in_is_made_again(migrated, pipedrive, customermates):
    """No record it links to was made again: its relations are what was last sent, and are not sent
    with the refilled value, where they were and the user's link went back to Pipedrive's."""
    person = next(p for p in live_persons(pipedrive) if p.get("job_title") and p.get("org_id"))
    moved_to = _moved_to_another_organization(customermates, person)
    customermates._tool_delete_column(next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title"))

    assert invoke(migrated, "sync").exit_code == 0

    [new] = _labels(customermates, "contact")["Job title"]
    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert [o["id"] for o in kept["organizations"]] == [moved_to]
    assert {"columnId": new, "value": person["job_title"]} in kept["customFieldValues"]


def test_a_state_file_from_before_the_relations_written_were_kept_sends_them_with_a_refilled_column_once(migrated, pipedrive, customermates):
    """Not knowing the relations a contact was last written with, the update refilling its column sends them
    (a record linked may have been made again since), and keeps them: the next such update leaves a link a user changed."""
    person = next(p for p in live_persons(pipedrive) if p.get("job_title") and p.get("org_id"))
    with Staging(Path(migrated["MIGRATE_STATE"])) as staging:
        staging.con.execute("DROP TABLE written_relations")
    _moved_to_another_organization(customermates, person)
    customermates._tool_delete_column(next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title"))
    assert invoke(migrated, "sync").exit_code == 0
    organization = by_pipedrive_id(customermates, "organizations")[str(person["org_id"])][0]
    assert [o["id"] for o in by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["organizations"]] == [organization["id"]]

    moved_to = _moved_to_another_organization(customermates, person)
    customermates._tool_delete_column(next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title"))
    assert invoke(migrated, "sync").exit_code == 0

    assert [o["id"] for o in by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["organizations"]] == [moved_to]


def test_a_contact_a_user_moved_to_another_organization_keeps_it_when_its_owner_is_invited_and_assigned(migrated, pipedrive, customermates):
    """The owner's organization is assigned too, before its contacts: that write gives it no new id,
    so the contact's relations are not sent with its users."""
    owner = pipedrive.collections["users"][0]
    orgs = {o["id"]: o for o in pipedrive.collections["organizations"] if not o.get("is_deleted")}
    person = next(p for p in live_persons(pipedrive) if p.get("owner_id") == owner["id"] and orgs.get(p.get("org_id"), {}).get("owner_id") == owner["id"])
    moved_to = _moved_to_another_organization(customermates, person)
    joined = customermates.add_user({"email": owner["email"], "firstName": "Katrin", "lastName": "Vogel"})

    assert invoke(migrated, "sync").exit_code == 0

    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert [o["id"] for o in kept["organizations"]] == [moved_to] and [u["id"] for u in kept["users"]] == [joined["id"]]
    organization = by_pipedrive_id(customermates, "organizations")[str(person["org_id"])][0]
    assert [u["id"] for u in organization["users"]] == [joined["id"]]


def test_a_deal_whose_contacts_and_services_a_user_changed_keeps_them_when_its_owner_is_invited_and_assigned(migrated, pipedrive, customermates):
    """A deal's services, like its contacts, are sent with its users only when a record they name was made again."""
    owner = pipedrive.collections["users"][0]
    services = {str(line["deal_id"]) for line in pipedrive.collections["deal_products"]}
    deals = by_pipedrive_id(customermates, "deals")
    deal = next(d for d in pipedrive.collections["deals"] if d.get("owner_id") == owner["id"] and str(d["id"]) in services and str(d["id"]) in deals)
    [written] = deals[str(deal["id"])]
    assert written["contacts"] and written["services"]
    other = next(c["id"] for c in customermates.records("contacts") if c["id"] not in {r["id"] for r in written["contacts"]})
    customermates.edit_records("deals", [{"id": written["id"], "contactIds": [other], "services": []}])
    joined = customermates.add_user({"email": owner["email"], "firstName": "Katrin", "lastName": "Vogel"})

    assert invoke(migrated, "sync").exit_code == 0

    [kept] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert [c["id"] for c in kept["contacts"]] == [other] and kept["services"] == []
    assert [u["id"] for u in kept["users"]] == [joined["id"]]


def test_a_contact_whose_organization_was_made_again_is_linked_to_it_when_a_column_it_has_a_value_in_is_made_again(migrated, pipedrive, customermates):
    """A user deleted the contact's organization and a column: the run makes both again. The organization's
    new id is sent with the refilled value (its relations can differ from those last sent), while the
    name the user changed stays."""
    person = next(p for p in live_persons(pipedrive) if p.get("job_title") and p.get("org_id"))
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    _edited_in_customermates(customermates, contact, firstName="Renamed-in-Customermates")
    customermates.delete_records("organizations", [by_pipedrive_id(customermates, "organizations")[str(person["org_id"])][0]["id"]])
    customermates._tool_delete_column(next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title"))

    assert invoke(migrated, "run", "--on-target-deleted", "recreate").exit_code == 0

    [made_again] = by_pipedrive_id(customermates, "organizations")[str(person["org_id"])]
    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert [o["id"] for o in kept["organizations"]] == [made_again["id"]] and kept["firstName"] == "Renamed-in-Customermates"


def test_a_contact_renamed_in_customermates_whose_organization_was_made_again_keeps_its_name(migrated, pipedrive, customermates, tmp_path):
    """Pipedrive left the person alone; a user renamed the contact and deleted its organization in
    Customermates. The run makes the organization again and links the contact to it, as the plan
    says (that link its only change), where it sent the contact's whole body and the name went back
    to Pipedrive's."""
    person = next(p for p in live_persons(pipedrive) if p.get("org_id"))
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    _edited_in_customermates(customermates, contact, firstName="Renamed-in-Customermates")
    customermates.delete_records("organizations", [by_pipedrive_id(customermates, "organizations")[str(person["org_id"])][0]["id"]])
    assert invoke(migrated, "plan", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path)).exit_code == 0
    [planned] = [r for r in json.loads((tmp_path / "plan.json").read_text())["records"]["contacts"] if r["source_id"] == str(person["id"])]
    assert planned["action"] == "update" and [c["field"] for c in planned["changes"]] == ["organizations"]

    assert invoke(migrated, "run", "--on-target-deleted", "recreate").exit_code == 0

    [made_again] = by_pipedrive_id(customermates, "organizations")[str(person["org_id"])]
    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert [o["id"] for o in kept["organizations"]] == [made_again["id"]] and kept["firstName"] == "Renamed-in-Customermates"


def test_a_plan_made_after_a_field_was_renamed_lists_the_column_rename_and_leaves_it_to_the_next_sync(migrated, pipedrive, customermates, tmp_path):
    """A plan lists the rename and makes none, and the sync after it renames the column, where the
    plan saved the field's new label as the column's and the sync saw no rename to make."""
    before = {c["label"]: c["id"] for c in customermates.columns("contact")}
    _field(pipedrive, "personFields", "Anrede")["field_name"] = "Salutation"

    planned = invoke(migrated, "plan", "--report-dir", str(tmp_path / "p"))
    assert planned.exit_code == 0, planned.output
    assert json.loads((tmp_path / "p" / "plan.json").read_text())["schema"]["columns_to_rename"] == ["contacts: Anrede → Salutation"]
    assert "- contacts: Anrede → Salutation" in (tmp_path / "p" / "plan.md").read_text()
    assert "columns to rename: 1" in planned.output
    assert {c["label"]: c["id"] for c in customermates.columns("contact")} == before
    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    after = {c["label"]: c["id"] for c in customermates.columns("contact")}
    assert after["Salutation"] == before["Anrede"] and "Anrede" not in after


def test_a_field_whose_type_changed_gets_a_new_column_and_is_reported(migrated, pipedrive, customermates, tmp_path):
    """The old column keeps its values under a label saying it was replaced, where both had one
    label and users could not tell which one is kept up to date; the plan says what the new one replaces."""
    field = _field(pipedrive, "personFields", "Geburtstag")
    field["field_type"] = "varchar"
    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    assert "- contacts: Geburtstag (plain), replacing the date column" in (tmp_path / "p" / "plan.md").read_text()
    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output

    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["columns_retyped"] == ['contacts: Geburtstag (date → plain); the old column is kept, renamed "Geburtstag (replaced)"']
    kinds = {c["label"]: c["type"] for c in customermates.columns("contact") if c["label"].startswith("Geburtstag")}
    assert kinds == {"Geburtstag": "plain", "Geburtstag (replaced)": "date"}


def test_a_field_whose_type_changed_back_writes_its_latest_value_into_its_first_column(migrated, pipedrive, customermates):
    """"Geburtstag" turns plain and back to date, a person's birthday changing each time. The
    first column, taken back, gets the latest value, where the value it still held from the first
    run read as an edit made in Customermates and the person was skipped as a conflict."""
    field = _field(pipedrive, "personFields", "Geburtstag")
    [first] = [c["id"] for c in customermates.columns("contact") if c["label"] == "Geburtstag"]
    person = next(p for p in live_persons(pipedrive) if (p.get("custom_fields") or {}).get(field["field_code"]))
    field["field_type"] = "varchar"
    person["custom_fields"][field["field_code"]], person["update_time"] = "1999-09-09", NOW
    assert invoke(migrated, "sync").exit_code == 0
    field["field_type"] = "date"
    person["custom_fields"][field["field_code"]], person["update_time"] = "2001-01-01", "2026-11-28T13:00:00Z"

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    values = {v["columnId"]: v["value"] for v in by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["customFieldValues"]}
    assert values[first] == "2001-01-01"
    labels = {c["label"]: (c["id"], c["type"]) for c in customermates.columns("contact") if c["label"].startswith("Geburtstag")}
    assert labels.keys() == {"Geburtstag", "Geburtstag (replaced)"}
    assert labels["Geburtstag"] == (first, "date") and labels["Geburtstag (replaced)"][1] == "plain"


def test_a_column_deleted_in_customermates_while_a_sync_sets_up_columns_stops_it_with_a_message_and_the_next_makes_it_again(
    migrated, pipedrive, customermates, monkeypatch
):
    """A user deletes a migrated column between the sync's first read of the columns and its read
    back: the sync stops with a message saying so (exit 1, nothing written), where it raised a
    RuntimeError with a traceback that said the column vanished right after it was created."""
    job = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    reads = []
    configuration = CustomermatesClient.configuration

    def deleting(self, entity):
        reads.append(entity)
        if reads.count("contacts") == 2:
            customermates._tool_delete_column(job)
        return configuration(self, entity)

    monkeypatch.setattr(CustomermatesClient, "configuration", deleting)
    writes = customermates.write_count()

    result = invoke(migrated, "sync")

    assert result.exit_code == 1
    assert "'Job title'" in result.output and "was deleted in Customermates while this run set up its columns" in result.output
    assert customermates.write_count() == writes
    monkeypatch.setattr(CustomermatesClient, "configuration", configuration)
    assert invoke(migrated, "sync").exit_code == 0
    assert [c["label"] for c in customermates.columns("contact")].count("Job title") == 1


def test_a_column_the_server_refuses_or_does_not_answer_for_is_named_and_a_rerun_makes_no_twin(env, pipedrive, customermates, monkeypatch):
    """A new Pipedrive field whose column the server refuses (a tool error) stops the sync with a
    message naming the column; one whose create goes unanswered (made all the same) says that a
    rerun finds it. Where the message named only the MCP tool (or said "check before retrying"),
    and the rerun makes no second column."""
    from migrate.customermates.client import UncertainWriteError
    from migrate.customermates.mcp import McpClient

    assert invoke(env, "run").exit_code == 0
    pipedrive.collections["personFields"].append(
        {"field_code": "c" * 40, "field_name": "Newsletter", "field_type": "varchar", "is_custom_field": True, "options": None}
    )
    create = customermates._tool_create_column
    monkeypatch.setattr(customermates, "_tool_create_column", lambda ctype, args: ("Validation error: label refused", True))

    result = invoke(env, "sync")

    assert result.exit_code == 1
    assert "Customermates refused to make the contacts column 'Newsletter' (plain): Validation error: label refused" in result.output
    monkeypatch.setattr(customermates, "_tool_create_column", create)
    made = McpClient.create_custom_column

    def unanswered(self, *args, **kwargs):
        made(self, *args, **kwargs)
        raise UncertainWriteError("Outcome unknown for MCP tool create_plain_custom_column: ReadTimeout (timed out)")

    monkeypatch.setattr(McpClient, "create_custom_column", unanswered)
    result = invoke(env, "sync")
    assert result.exit_code == 1
    assert "(making the contacts column 'Newsletter' (plain)). Run again: a column made meanwhile is found and used" in result.output
    monkeypatch.setattr(McpClient, "create_custom_column", made)
    assert invoke(env, "sync").exit_code == 0
    assert [c["label"] for c in customermates.columns("contact")].count("Newsletter") == 1


def _labels(customermates, entity):
    found: dict[str, list[str]] = {}
    for column in customermates.columns(entity):
        found.setdefault(column["label"], []).append(column["id"])
    return found


def test_a_new_field_taking_the_label_a_renamed_field_left_gets_a_column_of_its_own(migrated, pipedrive, customermates):
    """Pipedrive: "Beste Anrufzeit" renamed to "Rückrufzeit", and a new field named "Beste
    Anrufzeit". The renamed field keeps its column (renamed); the new one gets its own, where it
    took the renamed field's column by its old label and both fields wrote into it."""
    before = {c["label"]: c["id"] for c in customermates.columns("contact")}
    person = _rename_field_and_add_one(pipedrive, "Beste Anrufzeit", "Rückrufzeit", added="Beste Anrufzeit", code="a" * 40, value="abends")

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    after = _labels(customermates, "contact")
    assert after["Rückrufzeit"] == [before["Beste Anrufzeit"]]
    [new] = after["Beste Anrufzeit"]
    assert new != before["Beste Anrufzeit"]
    values = {v["columnId"]: v["value"] for v in by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["customFieldValues"]}
    assert values[new] == "abends"
    assert values.get(before["Beste Anrufzeit"]) != "abends"


def test_a_phone_column_made_one_value_in_customermates_gets_a_list_column_of_its_own(migrated, pipedrive, customermates, tmp_path):
    """A user turns the migrated "Phone" column (several numbers, comma-joined) into a one-number
    column: the server would refuse every contact with two numbers, and the sync quarantined them
    all, sync after sync. A column of its own is made, as a first run does next to such a column,
    and the report says why; the user's column is left as they set it."""
    phone = next(c for c in customermates.columns("contact") if c["label"] == "Phone")
    customermates._columns[phone["id"]]["options"]["allowMultiple"] = False  # as the app's column settings do
    for person in live_persons(pipedrive):
        person["job_title"], person["update_time"] = "Changed", NOW

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["columns_retyped"] == [
        'contacts: Phone (it takes one value now, and the migration writes several); a new column is made, the old one is kept, renamed "Phone (replaced)"'
    ]
    assert customermates._columns[phone["id"]]["label"] == "Phone (replaced)"
    [made] = [c for c in customermates.columns("contact") if c["label"] == "Phone" and c["id"] != phone["id"]]
    assert made["options"]["allowMultiple"] is True
    assert customermates.columns("contact")[[c["id"] for c in customermates.columns("contact")].index(phone["id"])]["options"]["allowMultiple"] is False
    several = [
        v["value"] for found in by_pipedrive_id(customermates, "contacts").values()
        for v in found[0]["customFieldValues"] if v["columnId"] == made["id"] and "," in v["value"]
    ]
    assert len(several) > 5


def test_a_column_deleted_in_customermates_is_made_again_with_the_values_changed_in_pipedrive_too(migrated, pipedrive, customermates):
    """A user deletes the migrated "Job title" column, and a person's job title changes in Pipedrive.
    The sync makes the column again and fills it, that person's new title too, where the empty new
    column looked like an edit made in Customermates: the person was skipped as a conflict."""
    old = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    customermates._tool_delete_column(old)  # as the app's column settings do
    titled = [p for p in live_persons(pipedrive) if p.get("job_title")]
    person = titled[0]
    person["job_title"], person["update_time"] = "Chief Synchroniser", NOW

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    [new] = _labels(customermates, "contact")["Job title"]
    contacts = by_pipedrive_id(customermates, "contacts")
    titles = {pid: next((v["value"] for v in found[0]["customFieldValues"] if v["columnId"] == new), None) for pid, found in contacts.items()}
    assert titles[str(person["id"])] == "Chief Synchroniser"
    assert all(titles[str(p["id"])] for p in titled)


def test_a_new_field_named_as_a_column_a_user_renamed_gets_a_column_of_its_own(migrated, pipedrive, customermates):
    """A user renames the migrated "Job title" column to "Position"; then a Pipedrive field
    "Position" comes. It gets a column of its own, where it took the job title column by that
    label, and job titles and positions overwrote each other in it."""
    job = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    customermates._columns[job]["label"] = "Position"  # as the app's column settings do
    pipedrive.collections["personFields"].append(
        {"field_code": "b" * 40, "field_name": "Position", "field_type": "varchar", "is_custom_field": True, "options": None}
    )
    person = next(p for p in live_persons(pipedrive) if p.get("job_title"))
    person.setdefault("custom_fields", {})["b" * 40] = "Board"
    person["update_time"] = NOW

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    [theirs, new] = sorted(_labels(customermates, "contact")["Position"], key=lambda cid: cid != job)
    assert theirs == job
    values = {v["columnId"]: v["value"] for v in by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["customFieldValues"]}
    assert (values[job], values[new]) == (person["job_title"], "Board")


def test_a_field_renamed_to_another_fields_name_takes_the_suffix_and_the_other_keeps_its_column_label(migrated, pipedrive, customermates):
    """Pipedrive: "Geburtstag" renamed to "Anrede", the name of another field. The renamed field's
    column becomes "Anrede (Pipedrive field)" and the Anrede column stays "Anrede", where the field
    first by order took "Anrede": the salutation column, untouched in Pipedrive, was renamed
    "Anrede (Pipedrive field)" and the birthday column was called "Anrede"."""
    before = {c["label"]: c["id"] for c in customermates.columns("contact")}
    _field(pipedrive, "personFields", "Geburtstag")["field_name"] = "Anrede"

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    after = _labels(customermates, "contact")
    assert after["Anrede"] == [before["Anrede"]]
    assert after["Anrede (Pipedrive field)"] == [before["Geburtstag"]]


def test_a_default_option_a_user_chose_stays_the_default_when_a_sync_adds_an_option(migrated, pipedrive, customermates):
    """A user makes "Frau" the default of the migrated "Anrede" column; then Pipedrive gets a new
    option. The sync adds it and "Frau" stays the default, where every option was sent back with
    isDefault false and the user's choice was undone."""
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    for option in customermates._columns[column["id"]]["options"]["options"]:  # as the app's column settings do
        option["isDefault"] = option["label"] == "Frau"
    field = _field(pipedrive, "personFields", "Anrede")
    field["options"].append({"id": 999, "label": "Prof."})

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    assert {o["label"]: o["isDefault"] for o in column["options"]["options"]} == {
        "Herr": False, "Frau": True, "Divers": False, "Dr.": False, "Prof.": False
    }


def _make_default(customermates, column: dict, label: str) -> None:
    """A user makes the option `label` the column's default (the server fills it into every record
    without a value: contract §6)."""
    options = [{**o, "isDefault": o["label"] == label} for o in column["options"]["options"]]
    assert customermates._tool_update_column("singleSelect", {"id": column["id"], "label": column["label"], "options": options})[1] is False


def _cell(customermates, column_id: str, person: dict) -> str | None:
    cells = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["customFieldValues"]
    return next((c["value"] for c in cells if c["columnId"] == column_id), None)


def _without_anrede(pipedrive, customermates) -> list[dict]:
    column = _anrede(customermates)
    return [p for p in live_persons(pipedrive) if _cell(customermates, column["id"], p) is None]


@pytest.mark.parametrize("read_back", [True, False], ids=["fill-read-by-the-sync", "fill-not-read-again"])
def test_a_default_a_user_sets_on_a_migrated_column_is_no_edit_and_stays_on_records_pipedrive_changes(
    migrated, pipedrive, customermates, tmp_path, read_back
):
    """A user makes "Frau" the default of the migrated "Anrede" column, and the server fills it into
    the contacts the migration wrote no Anrede for; then Pipedrive changes one of them. The sync
    writes the change, no conflict, and the contact keeps "Frau". Read back (the first sync after a
    run reads what it wrote; a fill that touched `updatedAt` would be read by any), the filled value
    read as an edit made in Customermates: the person was skipped as a conflict. Not read again
    (the fake's fill leaves `updatedAt`), the update cleared the column: the default was gone."""
    if not read_back:
        customermates.advance_clock(600)  # ten minutes later: the next read of what changed starts after the run's writes
        assert invoke(migrated, "sync").exit_code == 0  # reads back what the run wrote, before the fill
    column = _anrede(customermates)
    person = _without_anrede(pipedrive, customermates)[0]
    _make_default(customermates, column, "Frau")
    frau = next(o["value"] for o in _anrede(customermates)["options"]["options"] if o["label"] == "Frau")
    assert _cell(customermates, column["id"], person) == frau
    person["job_title"], person["update_time"] = "Changed", NOW

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert _conflicts(tmp_path) == [] and "conflicts 0," in result.output
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert {"columnId": _labels(customermates, "contact")["Job title"][0], "value": "Changed"} in contact["customFieldValues"]
    assert _cell(customermates, column["id"], person) == frau


def test_an_option_a_user_picked_where_the_migration_wrote_none_is_still_an_edit_beside_a_default(
    migrated, pipedrive, customermates, tmp_path
):
    """Beside a default a user set on the "Anrede" column: a contact without an Anrede on which a
    user picked "Herr" (no default) is an edit made in Customermates, and so is the default on a
    contact Pipedrive now gives an Anrede (a user's pick of the default option looks the same as the
    server's fill, so the sync does not write over it): both are conflicts when Pipedrive changes them."""
    column = _anrede(customermates)
    picked, given = _without_anrede(pipedrive, customermates)[:2]
    herr = next(o["value"] for o in column["options"]["options"] if o["label"] == "Herr")
    _edited_in_customermates(
        customermates, by_pipedrive_id(customermates, "contacts")[str(picked["id"])][0],
        customFieldValues=[{"columnId": column["id"], "value": herr}],
    )
    _make_default(customermates, column, "Frau")
    picked["job_title"], picked["update_time"] = "Changed", NOW
    given.setdefault("custom_fields", {})[_field(pipedrive, "personFields", "Anrede")["field_code"]] = 104  # Dr.
    given["update_time"] = NOW

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert sorted(i["source_id"] for i in _conflicts(tmp_path)) == sorted([str(picked["id"]), str(given["id"])])
    frau = next(o["value"] for o in _anrede(customermates)["options"]["options"] if o["label"] == "Frau")
    assert (_cell(customermates, column["id"], picked), _cell(customermates, column["id"], given)) == (herr, frau)


def test_an_option_deleted_in_customermates_is_made_again_on_every_record_changed_in_pipedrive_too(migrated, pipedrive, customermates):
    """A user deletes the option "Herr" (the server clears it on every record), and a Herr
    contact's job title changes in Pipedrive. The sync adds "Herr" again and sets it on every such
    contact, that one too, where its missing value read as an edit made in Customermates: it was
    skipped as a conflict, without its option and its new job title."""
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    herr = next(o["value"] for o in column["options"]["options"] if o["label"] == "Herr")

    def on_herr(option):
        return sorted(
            sid for sid, found in by_pipedrive_id(customermates, "contacts").items()
            if {"columnId": column["id"], "value": option} in found[0]["customFieldValues"]
        )

    had_herr = on_herr(herr)
    kept = [o for o in column["options"]["options"] if o["value"] != herr]
    assert customermates._tool_update_column("singleSelect", {"id": column["id"], "label": "Anrede", "options": kept})[1] is False
    assert on_herr(herr) == []
    person = next(p for p in live_persons(pipedrive) if str(p["id"]) == had_herr[0])
    person["job_title"], person["update_time"] = "Changed", NOW

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    again = next(o["value"] for o in column["options"]["options"] if o["label"] == "Herr")
    assert on_herr(again) == had_herr


def test_an_option_renamed_in_customermates_is_kept_and_not_added_again(migrated, pipedrive, customermates):
    """A user renames the migrated option "Herr" to "Mr.": a sync leaves it so and keeps the
    records on it, where it added a second option "Herr" and moved every such record onto it."""
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    herr = next(o["value"] for o in column["options"]["options"] if o["label"] == "Herr")
    for option in customermates._columns[column["id"]]["options"]["options"]:  # as the app's column settings do
        if option["value"] == herr:
            option["label"] = "Mr."
    on_herr = sorted(
        sid for sid, found in by_pipedrive_id(customermates, "contacts").items()
        if {"columnId": column["id"], "value": herr} in found[0]["customFieldValues"]
    )
    assert on_herr
    for person in live_persons(pipedrive):  # every record written again
        person["job_title"], person["update_time"] = "Changed", NOW

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    assert [o["label"] for o in column["options"]["options"]] == ["Mr.", "Frau", "Divers", "Dr."]
    assert on_herr == sorted(
        sid for sid, found in by_pipedrive_id(customermates, "contacts").items()
        if {"columnId": column["id"], "value": herr} in found[0]["customFieldValues"]
    )
    assert invoke(migrated, "sync").exit_code == 0  # and stays so
    column = next(c for c in customermates.columns("contact") if c["label"] == "Anrede")
    assert [o["label"] for o in column["options"]["options"]] == ["Mr.", "Frau", "Divers", "Dr."]


def _anrede(customermates) -> dict:
    return next(c for c in customermates.columns("contact") if c["label"] == "Anrede")


def _on_option(customermates, column_id: str, value: str) -> list[str]:
    return sorted(
        sid for sid, found in by_pipedrive_id(customermates, "contacts").items()
        if {"columnId": column_id, "value": value} in found[0]["customFieldValues"]
    )


def _rename_option(pipedrive, field: str, label: str, to: str) -> None:
    """In Pipedrive: the option `label` of the person field `field` is renamed `to` (its id kept)."""
    next(o for o in _field(pipedrive, "personFields", field)["options"] if o["label"] == label)["label"] = to


def test_an_option_renamed_in_pipedrive_is_renamed_in_place_keeping_its_uuid(migrated, pipedrive, customermates, tmp_path):
    """Pipedrive: the option "Herr" renamed "Mister", and a Herr person's job title changed. The
    sync renames the option, the records keep its uuid and that person gets the new job title,
    where a second option "Mister" was added, every Herr record moved onto it and "Herr" was left
    behind with none. A later edit of another such person is no conflict either."""
    column = _anrede(customermates)
    herr = next(o["value"] for o in column["options"]["options"] if o["label"] == "Herr")
    on_herr = _on_option(customermates, column["id"], herr)
    assert on_herr
    _rename_option(pipedrive, "Anrede", "Herr", "Mister")
    person = next(p for p in live_persons(pipedrive) if str(p["id"]) == on_herr[0])
    person["job_title"], person["update_time"] = "Changed", NOW

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    column = _anrede(customermates)
    assert [(o["label"], o["value"] == herr) for o in column["options"]["options"]] == [
        ("Mister", True), ("Frau", False), ("Divers", False), ("Dr.", False)
    ]
    assert _on_option(customermates, column["id"], herr) == on_herr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["options_renamed"] == ["contacts: Anrede: Herr → Mister"] and report["options_added"] == []
    assert (report["entities"]["contacts"]["updated"], report["entities"]["contacts"]["conflicts"]) == (1, 0)
    job = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    assert {"columnId": job, "value": "Changed"} in by_pipedrive_id(customermates, "contacts")[on_herr[0]][0]["customFieldValues"]
    other = next(p for p in live_persons(pipedrive) if str(p["id"]) == on_herr[1])
    other["job_title"], other["update_time"] = "Changed", "2026-11-28T13:00:00Z"

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r2"))  # the next: no rename, no conflict

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["options_renamed"] == []
    assert (report["entities"]["contacts"]["updated"], report["entities"]["contacts"]["conflicts"]) == (1, 0)
    assert [o["label"] for o in _anrede(customermates)["options"]["options"]] == ["Mister", "Frau", "Divers", "Dr."]


def test_a_stage_renamed_in_pipedrive_renames_its_option_in_place(migrated, pipedrive, customermates, tmp_path):
    """A stage's option is "<pipeline> / <stage>", known by the stage's id: renaming the stage in
    Pipedrive renames the option and its deals keep it, where a new option was added and every deal
    of the stage moved onto it."""
    column = next(c for c in customermates.columns("deal") if c["label"] == "Stage")
    old = next(o for o in column["options"]["options"] if o["label"] == "Vertrieb Neukunden / Qualifiziert")
    deals = by_pipedrive_id(customermates, "deals")
    staged = sorted(pid for pid, found in deals.items() if {"columnId": column["id"], "value": old["value"]} in found[0]["customFieldValues"])
    assert staged
    stage = next(s for s in pipedrive.collections["stages"] if s["id"] == 1)
    stage["name"], stage["update_time"] = "Qualified", NOW

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    column = next(c for c in customermates.columns("deal") if c["label"] == "Stage")
    labels = {o["value"]: o["label"] for o in column["options"]["options"]}
    assert labels[old["value"]] == "Vertrieb Neukunden / Qualified" and "Vertrieb Neukunden / Qualifiziert" not in labels.values()
    deals = by_pipedrive_id(customermates, "deals")
    assert staged == sorted(pid for pid, found in deals.items() if {"columnId": column["id"], "value": old["value"]} in found[0]["customFieldValues"])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["options_renamed"] == ["deals: Stage: Vertrieb Neukunden / Qualifiziert → Vertrieb Neukunden / Qualified"]
    assert report["options_added"] == []


def test_a_plan_shows_an_option_renamed_in_pipedrive_and_renames_nothing(migrated, pipedrive, customermates, tmp_path):
    """A plan after "Herr" was renamed "Mister" in Pipedrive lists the rename, writes nothing and
    finds the Herr records unchanged (they keep their option), where it planned a new option
    "Mister" and an update of each of them; the sync after it renames the option."""
    column = _anrede(customermates)
    herr = next(o["value"] for o in column["options"]["options"] if o["label"] == "Herr")
    _rename_option(pipedrive, "Anrede", "Herr", "Mister")
    customermates.clear_requests()

    result = invoke(migrated, "plan", "--report-dir", str(tmp_path / "p"))

    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["schema"]["options_to_rename"] == ["contacts: Anrede: Herr → Mister"] and plan["schema"]["options_to_add"] == []
    assert (plan["summary"]["contacts"]["update"], plan["summary"]["contacts"]["conflict"]) == (0, 0)
    assert "- contacts: Anrede: Herr → Mister" in (tmp_path / "p" / "plan.md").read_text()
    assert "options to rename: 1" in result.output
    assert customermates.write_count() == 0 and _anrede(customermates) == column
    assert invoke(migrated, "sync").exit_code == 0
    assert next((o["label"], o["value"] == herr) for o in _anrede(customermates)["options"]["options"]) == ("Mister", True)


def test_an_option_renamed_in_customermates_stays_so_while_one_renamed_in_pipedrive_is_renamed(migrated, pipedrive, customermates):
    """A user renames the migrated option "Herr" to "Mr." in Customermates, and "Frau" is renamed
    "Madam" in Pipedrive: the sync renames "Frau" only; "Mr." stays as the user set it."""
    column = _anrede(customermates)
    before = {o["label"]: o["value"] for o in column["options"]["options"]}
    for option in customermates._columns[column["id"]]["options"]["options"]:  # as the app's column settings do
        if option["label"] == "Herr":
            option["label"] = "Mr."
    _rename_option(pipedrive, "Anrede", "Frau", "Madam")

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    assert {o["label"]: o["value"] for o in _anrede(customermates)["options"]["options"]} == {
        "Mr.": before["Herr"], "Madam": before["Frau"], "Divers": before["Divers"], "Dr.": before["Dr."]
    }


def test_a_state_file_without_option_ids_adds_a_renamed_option_and_knows_them_from_then_on(migrated, pipedrive, customermates):
    """A state file of an earlier version remembers options by label alone: an option renamed in
    Pipedrive is added as a new one, as that version did. That sync remembers the option ids, so
    the next rename is made in place."""
    with Staging(Path(migrated["MIGRATE_STATE"])) as staging:
        staging.con.execute("UPDATE column_map SET pipedrive_options = NULL")
    _rename_option(pipedrive, "Anrede", "Herr", "Mister")
    assert invoke(migrated, "sync").exit_code == 0
    assert [o["label"] for o in _anrede(customermates)["options"]["options"]] == ["Herr", "Frau", "Divers", "Dr.", "Mister"]
    mister = next(o["value"] for o in _anrede(customermates)["options"]["options"] if o["label"] == "Mister")
    _rename_option(pipedrive, "Anrede", "Mister", "Monsieur")

    assert invoke(migrated, "sync").exit_code == 0

    options = {o["label"]: o["value"] for o in _anrede(customermates)["options"]["options"]}
    assert list(options) == ["Herr", "Frau", "Divers", "Dr.", "Monsieur"] and options["Monsieur"] == mister


def test_sigterm_lets_the_batch_in_flight_finish_and_be_recorded(tmp_path, pipedrive):
    import json
    import signal
    import subprocess
    import sys
    import time

    from tests.crash_harness import ROOT, migrate_env

    with FakeCustomermates() as cm:
        env = migrate_env(pipedrive, cm, tmp_path / "state.duckdb")
        cm.stall_next(1.0, count=1)  # the first write is applied and answered a second later
        child = subprocess.Popen([sys.executable, "-m", "migrate", "run"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not any(r.path.endswith("/many") for r in cm.requests):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=15)
        assert child.returncode == 128 + signal.SIGTERM, err.decode()
        assert "interrupted by SIGTERM" in err.decode()
        written = len(cm.records("organizations"))
        assert written > 0 and len([r for r in cm.requests if r.path.endswith("/many")]) == 1  # stopped after it
        result = invoke({k: v for k, v in env.items() if k.startswith(("PIPEDRIVE", "CUSTOMERMATES", "MIGRATE"))}, "run", "--report-dir", str(tmp_path / "r"))
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "r" / "report.json").read_text())
        assert report["entities"]["organizations"]["adopted_after_uncertain_write"] == 0  # it had been recorded
        assert all(len(records) == 1 for records in by_pipedrive_id(cm, "organizations").values())


def test_a_record_without_update_time_arrives_with_the_id_reconciliation(migrated, pipedrive, customermates):
    template = live_persons(pipedrive)[0]
    pipedrive.collections["persons"].append(dict(template, id=7777, name="No Stamp", first_name="No", last_name="Stamp", update_time=None))
    assert invoke(migrated, "sync", "--reconcile-every", "0").exit_code == 0
    assert "7777" not in by_pipedrive_id(customermates, "contacts")  # no updated_since window shows it
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0
    assert by_pipedrive_id(customermates, "contacts")["7777"][0]["lastName"] == "Stamp"


def test_an_exhausted_daily_budget_stops_the_sync_with_exit_4_and_the_next_one_resumes(migrated, pipedrive, customermates):
    person = live_persons(pipedrive)[2]
    person["job_title"], person["update_time"] = "Budget Tester", NOW
    pipedrive.daily_token_budget = pipedrive.tokens_spent + 60  # a few requests, then 429 until "midnight"
    result = invoke(migrated, "sync")
    assert result.exit_code == 4, result.output
    assert "daily API token budget" in result.output
    assert pipedrive.count_429 == 1 and pipedrive.count_403 == 0  # stopped at the first one: no 429 storm
    pipedrive.reset_daily_budget()
    pipedrive.daily_token_budget = None
    assert invoke(migrated, "sync").exit_code == 0
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    assert {"columnId": column, "value": "Budget Tester"} in record["customFieldValues"]


def test_json_logs_give_one_json_line_per_sync_with_its_counts_per_entity_and_report_path(migrated, tmp_path):
    result = invoke(migrated, "sync", "--log-format", "json", "--report-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert line["event"] == "sync" and line["status"] == "ok" and "created 0" in line["line"] and "conflicts 0" in line["line"]
    assert line["report"] == str(tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(line["entities"]) == set(report["entities"])
    assert all(line["entities"][e]["unchanged"] == row["unchanged"] and line["entities"][e]["conflicts"] == row["conflicts"] for e, row in report["entities"].items())


def test_a_deal_or_lead_archived_after_the_migration_is_synced_once_from_its_archived_copy(migrated, pipedrive, customermates):
    deal = next(d for d in pipedrive.collections["deals"] if not d.get("is_deleted"))
    lead = next(d for d in pipedrive.collections["leads"] if not d.get("is_deleted"))
    archived = {
        "deals": dict(deal, is_archived=True, title=deal["title"] + " (archived)", update_time=NOW),
        "leads": dict(lead, is_archived=True, title=lead["title"] + " (archived)", update_time="2026-11-28T12:00:00.000Z"),
    }
    for name, record in (("deals", deal), ("leads", lead)):
        pipedrive.collections[name].remove(record)
        pipedrive.collections[f"{name}_archived"].append(archived[name])
    result = invoke(migrated, "sync")
    assert result.exit_code == 0, result.output
    deals = by_pipedrive_id(customermates, "deals")
    assert [d["name"] for d in deals[str(deal["id"])]] == [archived["deals"]["title"]]
    assert [d["name"] for d in deals[f"lead:{lead['id']}"]] == [archived["leads"]["title"]]

    restored = dict(archived["deals"], is_archived=False, title=deal["title"], update_time="2026-11-28T13:00:00Z")
    pipedrive.collections["deals_archived"].remove(archived["deals"])
    pipedrive.collections["deals"].append(restored)
    result = invoke(migrated, "sync", "--reconcile-every", "1", "--deletes", "delete")
    assert result.exit_code == 0, result.output
    deals = by_pipedrive_id(customermates, "deals")
    assert [d["name"] for d in deals[str(deal["id"])]] == [deal["title"]]
    assert [d["name"] for d in deals[f"lead:{lead['id']}"]] == [archived["leads"]["title"]]


def test_a_state_file_holding_both_copies_of_an_archived_deal_keeps_the_newer(tmp_path):
    state = tmp_path / "state.duckdb"
    with Staging(state) as staging:
        staging.upsert_records("deals", [{"id": 7, "title": "old", "update_time": "2026-01-01T00:00:00Z"}])
        staging.upsert_records("deals_archived", [{"id": 8, "title": "only archived", "update_time": "2026-01-01T00:00:00Z"}])
        # as an older version staged them: both lists hold deal 7, and the file was never settled
        staging.con.execute("DELETE FROM meta WHERE key = 'archive_pairs_settled'")
        staging.con.execute(
            "INSERT INTO raw_deals_archived SELECT '7', '{\"id\": 7, \"title\": \"new\"}', false, '2026-02-01T00:00:00Z', now(), 7"
        )
    with Staging(state) as staging:
        assert [r["title"] for r in staging.iter_raw("deals")] == []
        assert [r["title"] for r in staging.iter_raw("deals_archived")] == ["new", "only archived"]
        staging.upsert_records("deals", [{"id": 7, "title": "stale", "update_time": "2026-01-15T00:00:00Z"}])
        assert [r["title"] for r in staging.iter_raw("deals")] == []
        staging.upsert_records("deals", [{"id": 7, "title": "restored", "update_time": "2026-03-01T00:00:00Z"}])
        assert [r["title"] for r in staging.iter_raw("deals")] == ["restored"]
        assert [r["title"] for r in staging.iter_raw("deals_archived")] == ["only archived"]


def test_a_sync_transforms_again_only_the_records_whose_inputs_changed_and_says_so(env, pipedrive, customermates, tmp_path):
    first = invoke(env, "run", "--report-dir", str(tmp_path / "run"))
    assert "Transform: every record" in first.output and "first transform of this state file" in first.output
    person = live_persons(pipedrive)[2]
    person["first_name"], person["update_time"] = "Renamed", NOW
    assert invoke(env, "sync", "--report-dir", str(tmp_path / "sync")).exit_code == 0
    transform = json.loads((tmp_path / "sync" / "report.json").read_text())["transform"]
    assert transform["full"] is False and transform["why_full"] is None
    staged = json.loads((tmp_path / "run" / "report.json").read_text())["transform"]["records_made"]
    assert 1 <= transform["records_made"] < staged / 10  # the person and the records that looked it up


def _searches(customermates):
    return [r for r in customermates.requests if r.path.endswith("/search") and r.path != "/api/v1/users/search"]


def _edit_in_customermates(customermates, record, **fields):
    response = httpx.put(
        f"{customermates.url}/api/v1/contacts/many", json={"contacts": [{"id": record["id"], **fields}]}, headers={"x-api-key": VALID_KEY}
    )
    assert response.status_code == 200, response.text


def test_a_sync_reads_from_customermates_only_what_changed_there_since_the_last_read(migrated, pipedrive, customermates, tmp_path):
    """Between reconciling syncs, Customermates is searched for records whose updatedAt is at or after
    the server's clock when the last read began: what the run wrote is read once, then nothing, and
    an edit made there is still seen (here: a conflict with an edit in Pipedrive, skipped)."""
    written = sum(len(customermates.records(e)) for e in ("contacts", "organizations", "deals", "services", "tasks"))
    reports = tmp_path / "reports"

    def sync():
        customermates.clear_requests()
        result = invoke(migrated, "sync", "--report-dir", str(reports))
        assert result.exit_code == 0, result.output
        return json.loads((reports / "report.json").read_text())["sync"]["customermates_read"], result.output

    customermates.advance_clock(600)  # ten minutes later, by the server's clock
    first, _ = sync()
    assert first["since"] is not None and first["records"] == written  # all of it was written after the run's read began
    second, output = sync()
    assert second == {"since": second["since"], "records": 0} and second["since"] > first["since"]
    searches = _searches(customermates)
    assert len(searches) == 5 and all(r.body["filters"] == [{"field": "updatedAt", "operator": "gte", "value": second["since"]}] for r in searches)
    assert "Customermates records read 0 (changed since the last read)" in output

    person = next(p for p in live_persons(pipedrive) if p.get("first_name"))
    _edit_in_customermates(customermates, by_pipedrive_id(customermates, "contacts")[str(person["id"])][0], lastName="Edited-In-Target")
    person["first_name"] += "-Src"
    person["name"], person["update_time"] = f"{person['first_name']} {person.get('last_name') or ''}".strip(), NOW
    third, _ = sync()
    assert third["records"] == 1
    report = json.loads((reports / "report.json").read_text())
    assert report["entities"]["contacts"]["conflicts"] == 1
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert record["lastName"] == "Edited-In-Target" and not record["firstName"].endswith("-Src")


def test_edits_in_customermates_are_all_seen_by_a_read_of_what_changed_that_a_deletion_moves(migrated, pipedrive, customermates, tmp_path):
    """A sync reads what changed in Customermates since the last read. Paged by number, a contact
    deleted there once the first page was read made the second page start one contact late: that
    contact's edit there was never read, and the sync wrote Pipedrive's edit over it instead of
    reporting a conflict. Paged by the last updatedAt read, every edit is read: each is a conflict."""
    customermates.advance_clock(600)
    assert invoke(migrated, "sync").exit_code == 0  # reads what the run wrote; the next read starts after it
    customermates.advance_clock(600)
    index = by_pipedrive_id(customermates, "contacts")
    persons = sorted((p for p in live_persons(pipedrive) if str(p["id"]) in index and p.get("first_name")), key=lambda p: p["id"])
    assert len(persons) > 101  # two pages of edits
    linked = _persons_referred_to(pipedrive)
    gone = next(p for p in persons if str(p["id"]) not in linked)  # deleted there, no record refers to it
    edited = [p for p in persons if p is not gone]
    customermates.edit_records("contacts", [{"id": index[str(p["id"])][0]["id"], "lastName": "Edited-In-Target"} for p in [gone, *edited]])
    for person in edited:
        person["first_name"] += "-Src"
        person["name"], person["update_time"] = f"{person['first_name']} {person.get('last_name') or ''}".strip(), NOW

    def delete_after_the_first_page(entity, body):
        if entity == "contact" and body.get("filters"):
            customermates.after_search = None
            customermates.delete_records("contacts", [index[str(gone["id"])][0]["id"]])

    customermates.after_search = delete_after_the_first_page
    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert customermates.after_search is None  # the deletion happened mid-read
    assert json.loads((tmp_path / "r" / "report.json").read_text())["entities"]["contacts"]["conflicts"] == len(edited)
    after = by_pipedrive_id(customermates, "contacts")
    kept = [after[str(p["id"])][0] for p in edited]
    assert all(r["lastName"] == "Edited-In-Target" and not r["firstName"].endswith("-Src") for r in kept)


def test_records_deleted_in_customermates_are_found_by_a_refused_update_or_the_next_reconciling_sync(migrated, pipedrive, customermates, tmp_path):
    """A deletion leaves no updatedAt to find, so a read of what changed cannot see it. A deleted record
    that changed in Pipedrive is found when the server refuses its update (reported, not quarantined);
    an unchanged one by the whole read of every `--reconcile-every`-th sync (or by a link a record read
    again lost to it: none links these)."""
    assert invoke(migrated, "sync", "--reconcile-every", "0").exit_code == 0
    changed, unchanged = [p for p in live_persons(pipedrive) if str(p["id"]) not in _persons_referred_to(pipedrive)][:2]
    contacts = by_pipedrive_id(customermates, "contacts")
    response = httpx.request(
        "DELETE", f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY},
        json={"ids": [contacts[str(p["id"])][0]["id"] for p in (changed, unchanged)]},
    )
    assert response.status_code == 200, response.text
    changed["first_name"], changed["update_time"] = "Changed-After-Deletion", NOW
    for reconcile_every, found in (("0", {changed["id"]}), ("1", {changed["id"], unchanged["id"]})):
        result = invoke(migrated, "sync", "--reconcile-every", reconcile_every, "--report-dir", str(tmp_path / reconcile_every))
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / reconcile_every / "report.json").read_text())
        assert (report["sync"]["customermates_read"]["since"] is None) == (reconcile_every == "1")
        assert report["entities"]["contacts"]["deleted_in_target"] == len(found) and report["quarantined"]["count"] == 0
        reported = {i["source_id"] for i in read_issues(tmp_path / reconcile_every) if i["rule"] == "deleted_in_target"}
        assert reported == {str(i) for i in found}


def test_a_record_whose_update_is_refused_as_deleted_is_created_again_by_the_same_sync_under_recreate(migrated, pipedrive, customermates, tmp_path):
    """With --on-target-deleted recreate, a record deleted in Customermates that changed in Pipedrive
    is created again by the sync that finds it gone (its update refused), not left to the next run:
    the report's "recreated" is what Customermates holds when the sync ends."""
    assert invoke(migrated, "sync", "--reconcile-every", "0").exit_code == 0
    person = live_persons(pipedrive)[2]
    old_id = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["id"]
    response = httpx.request("DELETE", f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY}, json={"ids": [old_id]})
    assert response.status_code == 200, response.text
    person["first_name"], person["update_time"] = "Changed-After-Deletion", NOW
    args = ("sync", "--reconcile-every", "0", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "sync"))
    result = invoke(migrated, *args)
    assert result.exit_code == 0, result.output
    contacts = json.loads((tmp_path / "sync" / "report.json").read_text())["entities"]["contacts"]
    assert (contacts["deleted_in_target"], contacts["recreated"], contacts["created"]) == (1, 1, 1)
    [recreated] = by_pipedrive_id(customermates, "contacts")[str(person["id"])]
    assert recreated["id"] != old_id and recreated["firstName"] == "Changed-After-Deletion"
    with Staging(tmp_path / "state.duckdb") as staging:
        assert staging.id_map_for("contacts", [str(person["id"])])[str(person["id"])][0] == recreated["id"]
    writes = customermates.write_count()
    assert invoke(migrated, *args).exit_code == 0  # and the next sync has nothing left to do
    assert customermates.write_count() == writes and len(by_pipedrive_id(customermates, "contacts")[str(person["id"])]) == 1


def test_a_reconciling_sync_under_recreate_creates_again_an_unchanged_record_deleted_in_customermates(migrated, pipedrive, customermates, tmp_path):
    """An unchanged record deleted in Customermates is seen only by a reconciling sync's whole read;
    under recreate that sync creates it again, and the records linking to it link to the new one."""
    organization = next(o for o in pipedrive.collections["organizations"] if not o.get("is_deleted")
                        and any(p.get("org_id") == o["id"] for p in live_persons(pipedrive)))
    members = {str(p["id"]) for p in live_persons(pipedrive) if p.get("org_id") == organization["id"]}
    old_id = by_pipedrive_id(customermates, "organizations")[str(organization["id"])][0]["id"]
    response = httpx.request("DELETE", f"{customermates.url}/api/v1/organizations/many", headers={"x-api-key": VALID_KEY}, json={"ids": [old_id]})
    assert response.status_code == 200, response.text
    result = invoke(migrated, "sync", "--reconcile-every", "1", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "r" / "report.json").read_text())["entities"]["organizations"]
    assert (row["deleted_in_target"], row["recreated"], row["created"]) == (1, 1, 1)
    [recreated] = by_pipedrive_id(customermates, "organizations")[str(organization["id"])]
    contacts = by_pipedrive_id(customermates, "contacts")
    assert all([o["id"] for o in contacts[sid][0]["organizations"]] == [recreated["id"]] for sid in members)


def test_records_deleted_in_customermates_while_it_is_read_whole_do_not_make_the_read_miss_others(migrated, pipedrive, customermates, tmp_path):
    """Searches page by number: two contacts of the first page deleted once it was read move every
    later contact two places back, so the second page starts two contacts late. Those two are
    looked up by Pipedrive ID before they count as deleted: neither reported nor created again."""
    contacts = sorted(customermates.records("contacts"), key=lambda r: by_pid_value(customermates, r))
    assert len(contacts) > 100  # two pages
    deleted = [contacts[10]["id"], contacts[20]["id"]]
    shifted = {by_pid_value(customermates, r) for r in contacts[100:102]}  # the second page's first two, until then

    def delete_after_the_first_page(entity, body):
        if entity == "contact" and not body.get("filters") and body["pagination"]["page"] == 1 and customermates.after_search:
            customermates.after_search = None
            customermates.delete_records("contacts", deleted)

    customermates.after_search = delete_after_the_first_page
    result = invoke(migrated, "sync", "--reconcile-every", "1", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert customermates.after_search is None  # the deletion happened mid-read
    row = json.loads((tmp_path / "r" / "report.json").read_text())["entities"]["contacts"]
    assert (row["deleted_in_target"], row["recreated"], row["created"]) == (0, 0, 0)  # the deleted two were read before they went
    index = by_pipedrive_id(customermates, "contacts")
    assert all(len(index[pid]) == 1 for pid in shifted)  # not created a second time
    assert len(customermates.records("contacts")) == len(contacts) - 2


def _persons_referred_to(pipedrive) -> set[str]:
    """Ids of the persons a deal, lead or activity refers to, an activity's participants too (their
    contacts are linked to others)."""
    records = [r for c in ("deals", "leads", "activities") for r in pipedrive.collections.get(c, [])]
    return {str(p.get("person_id")) for r in records for p in [r, *(r.get("participants") or [])]}


def _reconciling_sync(env, customermates, tmp_path) -> tuple[int, int]:
    """A sync that reads both sides whole: (contacts reported deleted in Customermates, lookups by Pipedrive ID)."""
    customermates.clear_requests()
    result = invoke(env, "sync", "--reconcile-every", "1", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    lookups = [r for r in _searches(customermates) if any(f["operator"] == "equals" for f in r.body.get("filters") or [])]
    return json.loads((tmp_path / "r" / "report.json").read_text())["entities"]["contacts"]["deleted_in_target"], len(lookups)


def test_records_deleted_in_customermates_are_looked_up_once_not_at_every_whole_read(migrated, pipedrive, customermates, tmp_path):
    """A whole read looks up each migrated record it did not see before it counts as deleted there.
    Once found gone, a record is not looked up again: a team that deleted 2,000 contacts would
    otherwise pay 2,000 searches at every reconciling sync. Each sync still reports them."""
    linked = _persons_referred_to(pipedrive)
    index = by_pipedrive_id(customermates, "contacts")
    gone = [index[pid][0]["id"] for pid in sorted(index) if pid not in linked][:5]
    customermates.delete_records("contacts", gone)

    assert _reconciling_sync(migrated, customermates, tmp_path) == (5, 5)
    assert _reconciling_sync(migrated, customermates, tmp_path) == (5, 0)


def test_a_deleted_record_whose_pipedrive_id_another_record_carries_counts_as_gone_and_is_looked_up_once(migrated, pipedrive, customermates, tmp_path):
    """A user deleted a migrated contact and made another by hand with its Pipedrive ID. The lookup
    finds that other contact, which is kept with what was read; the migrated one is still gone,
    reported, and not looked up again."""
    linked = _persons_referred_to(pipedrive)
    index = by_pipedrive_id(customermates, "contacts")
    pid = next(pid for pid in sorted(index) if pid not in linked)
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Pipedrive ID")
    customermates.delete_records("contacts", [index[pid][0]["id"]])
    made = httpx.post(
        f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY},
        json={"contacts": [{"firstName": "By", "lastName": "Hand", "customFieldValues": [{"columnId": column, "value": pid}]}]},
    )
    assert made.status_code == 201, made.text

    assert _reconciling_sync(migrated, customermates, tmp_path) == (1, 1)
    assert _reconciling_sync(migrated, customermates, tmp_path) == (1, 0)
    assert [r["lastName"] for r in by_pipedrive_id(customermates, "contacts")[pid]] == ["Hand"]  # left alone


def test_an_uncertain_create_settled_by_a_read_that_deletions_moved_creates_no_duplicates(migrated, pipedrive, customermates):
    """An uncertain write is settled by reading the entity back when that takes fewer searches than
    one per record. Contacts of the first page deleted once it was read move the rest back until the
    second page is empty, so the read ends before the new contacts (last by Pipedrive ID): its count
    differs from the total, and what it did not see is looked up one by one before it is sent again."""
    template = live_persons(pipedrive)[0]
    pipedrive.collections["persons"] += [
        dict(template, id=99991 + i, name=f"Neu {i}", first_name="Neu", last_name=str(i), add_time=NOW, update_time=NOW) for i in range(5)
    ]
    customermates.drop_after_apply(1, path_contains="/contacts/many")  # the create is written, its answer lost

    def delete_after_the_first_page(entity, body):
        if entity == "contact" and not body.get("filters") and body["pagination"] == {"page": 1, "pageSize": 100}:
            customermates.after_search = None
            contacts = sorted(customermates.records("contacts"), key=lambda r: by_pid_value(customermates, r))
            customermates.delete_records("contacts", [r["id"] for r in contacts[: len(contacts) - 100]])  # page 2 now empty

    customermates.after_search = delete_after_the_first_page
    result = invoke(migrated, "sync", "--reconcile-every", "0")
    assert result.exit_code == 0, result.output
    assert customermates.after_search is None  # the settling read was moved under
    index = by_pipedrive_id(customermates, "contacts")
    assert [len(index[str(99991 + i)]) for i in range(5)] == [1] * 5


def test_a_record_read_twice_in_one_page_through_is_not_a_duplicate(tmp_path):
    """A record created before the read's offset moves the later ones a place on: one is read twice."""
    staging = Staging(tmp_path / "state.duckdb")
    staging.add_to_target_snapshot("contacts", [(0, "t1", "7", "{}"), (1, "t2", "8", "{}"), (2, "t2", "8", "{}"), (3, "t3", "8", "{}")])
    assert staging.snapshot_duplicates("contacts") == {"8": ["t2", "t3"]}


def by_pid_value(customermates, record) -> str:
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Pipedrive ID")
    return next(v["value"] for v in record["customFieldValues"] if v["columnId"] == column)


def test_a_target_read_cut_short_makes_the_next_one_whole(migrated, pipedrive, customermates, tmp_path, monkeypatch):
    """A whole read forgets where reads of changes start before it clears the kept records, and
    notes it again only when complete: after a read that failed half way, the next read is whole."""
    with Staging(tmp_path / "state.duckdb") as staging:
        assert staging.meta(target.READ_SINCE_KEY) is not None
    iter_records = CustomermatesClient.iter_records

    def deals_unreadable(self, entity, **kwargs):
        if entity == "deals":
            raise ServerError("Customermates answered HTTP 500 to POST /deals/search 5 times")
        return iter_records(self, entity, **kwargs)

    monkeypatch.setattr(CustomermatesClient, "iter_records", deals_unreadable)
    result = invoke(migrated, "sync", "--reconcile-every", "1")
    assert result.exit_code != 0 and "POST /deals/search" in result.output
    monkeypatch.setattr(CustomermatesClient, "iter_records", iter_records)
    with Staging(tmp_path / "state.duckdb") as staging:
        assert staging.meta(target.READ_SINCE_KEY) is None
    result = invoke(migrated, "sync", "--reconcile-every", "0", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "report.json").read_text())["sync"]["customermates_read"]["since"] is None


def test_a_user_invited_after_the_migration_is_assigned_their_records_by_the_next_sync(migrated, pipedrive, customermates, tmp_path):
    """What a record's request body holds besides the record itself (the user map, the columns)
    changed, so the sync compares every record, not only those that changed in Pipedrive."""
    owner = pipedrive.collections["users"][0]
    owned = {str(p["id"]) for p in live_persons(pipedrive) if p.get("owner_id") == owner["id"]}
    assert owned
    joined = customermates.add_user(
        {"id": "33333333-3333-4333-8333-333333333333", "email": owner["email"].upper(), "firstName": "Katrin", "lastName": "Vogel"}
    )
    assert invoke(migrated, "sync", "--report-dir", str(tmp_path / "r")).exit_code == 0
    contacts = by_pipedrive_id(customermates, "contacts")
    assert {pid for pid, dtos in contacts.items() if any(u["id"] == joined["id"] for u in dtos[0]["users"])} == owned
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["entities"]["contacts"]["updated"] == len(owned)
    writes = customermates.write_count()
    assert invoke(migrated, "sync").exit_code == 0
    assert customermates.write_count() == writes  # and the next sync is back to reading what changed


def _values(record):
    return {v["columnId"]: v["value"] for v in record["customFieldValues"]}


def test_a_record_deleted_in_pipedrive_without_an_update_time_is_marked_with_the_day_the_sync_found_it(migrated, pipedrive, customermates):
    """Pipedrive gives no date to go by (update_time null): the mark says the day the sync found the
    record deleted, as for one that vanished, where the sync wrote an empty mark, counted it marked,
    and wrote it again at every sync."""
    person = live_persons(pipedrive)[4]
    person["is_deleted"], person["update_time"] = True, None
    result = invoke(migrated, "sync", "--reconcile-every", "1")
    assert result.exit_code == 0, result.output
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    today = datetime.now(UTC).date().isoformat()
    assert _values(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0])[column] == today
    writes = customermates.write_count()
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0
    assert customermates.write_count() == writes


def test_a_record_restored_in_pipedrive_loses_the_deleted_mark_a_sync_gave_it(migrated, pipedrive, customermates):
    """A person deleted in Pipedrive is marked by a sync; restored there (Pipedrive keeps deleted
    records 30 days), the next sync takes the mark off instead of leaving a date that is no longer true."""
    person = live_persons(pipedrive)[4]
    person["is_deleted"], person["update_time"] = True, NOW
    assert invoke(migrated, "sync").exit_code == 0
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    assert _values(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0])[column] == NOW[:10]
    person["is_deleted"], person["update_time"] = False, "2026-11-28T13:00:00Z"
    assert invoke(migrated, "sync").exit_code == 0
    [record] = by_pipedrive_id(customermates, "contacts")[str(person["id"])]
    assert column not in _values(record)


def _mark_a_person_deleted(migrated, pipedrive, customermates, person) -> str:
    """The person is deleted in Pipedrive and a sync marks its contact: the id of the mark column."""
    person["is_deleted"], person["update_time"] = True, NOW
    assert invoke(migrated, "sync").exit_code == 0
    [column] = [c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive"]
    return column


def _marks(customermates, person) -> dict[str, str]:
    """The contact's values in the contact columns labelled as the mark is, or as the user renamed it."""
    labels = {c["id"] for c in customermates.columns("contact") if c["label"] in ("Deleted in Pipedrive", "Gelöscht in Pipedrive")}
    [record] = by_pipedrive_id(customermates, "contacts")[str(person["id"])]
    return {column: value for column, value in _values(record).items() if column in labels and value}


def test_a_mark_column_a_user_renamed_in_customermates_stays_the_mark_and_none_is_made_beside_it(migrated, pipedrive, customermates):
    """Found by its label, the renamed column was not found: the next sync made a second one and marked
    the contacts marked already again, and one restored in Pipedrive kept its mark in the renamed column."""
    first, second = live_persons(pipedrive)[4:6]
    column = _mark_a_person_deleted(migrated, pipedrive, customermates, first)
    customermates._columns[column]["label"] = "Gelöscht in Pipedrive"  # as the app's column settings do
    second["is_deleted"], second["update_time"] = True, NOW
    first["is_deleted"], first["update_time"] = False, "2026-11-28T13:00:00Z"

    assert invoke(migrated, "sync").exit_code == 0

    assert [c["id"] for c in customermates.columns("contact") if c["label"] in ("Deleted in Pipedrive", "Gelöscht in Pipedrive")] == [column]
    assert (_marks(customermates, first), _marks(customermates, second)) == ({}, {column: NOW[:10]})


def test_a_column_a_user_made_with_the_mark_columns_label_and_type_is_left_alone(migrated, pipedrive, customermates):
    """Equal labels list the newest column first: a sync marked the next deletion in the user's column,
    and left the mark of a record restored in Pipedrive in its own."""
    first, second = live_persons(pipedrive)[4:6]
    column = _mark_a_person_deleted(migrated, pipedrive, customermates, first)
    customermates._tool_create_column("date", {"label": "Deleted in Pipedrive", "entityType": "contact"})
    [theirs] = {c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive"} - {column}
    second["is_deleted"], second["update_time"] = True, NOW
    first["is_deleted"], first["update_time"] = False, "2026-11-28T13:00:00Z"

    assert invoke(migrated, "sync").exit_code == 0

    assert (_marks(customermates, first), _marks(customermates, second)) == ({}, {column: NOW[:10]})
    assert all(theirs not in _values(r) or not _values(r)[theirs] for r in customermates.records("contacts"))


def test_a_mark_column_found_there_by_its_label_is_kept_as_found_and_stays_the_mark_when_renamed(migrated, pipedrive, customermates):
    """A column labelled and typed as the mark is, there before the first mark (the state file keeps
    none), is taken for it and kept in the state file as found there, not made by a run (no undo
    deletes it): renamed later, it stays the mark, and none is made beside it."""
    first, second = live_persons(pipedrive)[4:6]
    customermates._tool_create_column("date", {"label": "Deleted in Pipedrive", "entityType": "contact"})
    column = _mark_a_person_deleted(migrated, pipedrive, customermates, first)
    with Staging(Path(migrated["MIGRATE_STATE"])) as staging:
        assert staging.con.execute("SELECT column_id, created_by_run FROM column_map WHERE key = 'deleted_in_pipedrive'").fetchall() == [(column, None)]
    customermates._columns[column]["label"] = "Gelöscht in Pipedrive"
    second["is_deleted"], second["update_time"] = True, NOW

    assert invoke(migrated, "sync").exit_code == 0

    assert [c["id"] for c in customermates.columns("contact") if c["label"] in ("Deleted in Pipedrive", "Gelöscht in Pipedrive")] == [column]
    assert (_marks(customermates, first), _marks(customermates, second)) == ({column: NOW[:10]}, {column: NOW[:10]})


def test_a_record_restored_in_pipedrive_after_a_sync_removed_it_is_created_once_and_not_reported_twice(migrated, pipedrive, customermates, tmp_path):
    """`--deletes delete` removes the contact; the target as read kept it, so once the person was
    restored and created again, every later sync reported two contacts with its Pipedrive ID."""
    person = live_persons(pipedrive)[4]
    person["is_deleted"], person["update_time"] = True, NOW
    assert invoke(migrated, "sync", "--deletes", "delete").exit_code == 0
    assert str(person["id"]) not in by_pipedrive_id(customermates, "contacts")
    person["is_deleted"], person["update_time"] = False, "2026-11-28T13:00:00Z"
    for n in range(2):
        result = invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", "0", "--report-dir", str(tmp_path / str(n)))
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / str(n) / "report.json").read_text())
        assert report["duplicates_in_target"] == [], report["duplicates_in_target"]
        assert len(by_pipedrive_id(customermates, "contacts")[str(person["id"])]) == 1


def test_a_sync_stopped_before_it_read_the_deal_products_reads_them_next_time(migrated, pipedrive, customermates):
    """The deals that changed are read first, their product lines after; a sync stopped between the
    two (here Pipedrive fails the product read) has moved the deals' watermark past those deals, so
    the next sync did not read their product lines again and the old quantity stayed for good."""
    line = next(
        p for p in pipedrive.collections["deal_products"]
        if any(d["id"] == p["deal_id"] and not d.get("is_deleted") for d in pipedrive.collections["deals"])
        and sum(q["deal_id"] == p["deal_id"] and q["product_id"] == p["product_id"] for q in pipedrive.collections["deal_products"]) == 1
    )
    deal = next(d for d in pipedrive.collections["deals"] if d["id"] == line["deal_id"])
    line["quantity"] = 17
    deal["title"], deal["update_time"] = deal["title"] + " (more)", NOW
    later = next(d for d in pipedrive.collections["deals"] if d is not deal and not d.get("is_deleted"))
    later["title"], later["update_time"] = later["title"] + " (later)", "2026-11-28T13:00:00Z"  # an hour on: past the overlap
    pipedrive.inject(402, count=1, path_contains="/deals/products")
    result = invoke(migrated, "sync")
    assert result.exit_code != 0
    assert invoke(migrated, "sync").exit_code == 0
    [record] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert record["name"] == deal["title"]
    service = by_pipedrive_id(customermates, "services")[str(line["product_id"])][0]["id"]
    assert [s["quantity"] for s in record["services"] if s["id"] == service] == [17]


def test_an_edit_stamped_before_the_watermark_arrives_with_the_id_reconciliation(migrated, pipedrive, customermates):
    """An edit whose update_time is older than the watermark less the overlap (a Pipedrive server
    whose clock is behind, a change made visible late) falls outside every updated_since window. The
    whole read of a reconciling sync sees it: the staged copy's update_time differs, so it is staged."""
    person = live_persons(pipedrive)[3]
    person["job_title"], person["update_time"] = "Skewed", "2020-01-01T00:00:00Z"
    assert invoke(migrated, "sync", "--reconcile-every", "0").exit_code == 0
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    assert _values(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]).get(column) != "Skewed"  # no window shows it
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0
    assert _values(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]).get(column) == "Skewed"


def test_a_record_that_vanished_and_came_back_unchanged_is_live_again_after_the_next_reconciliation(migrated, pipedrive, customermates):
    """A record missing from a whole read (out of the token's sight for a while, say) is flagged
    deleted and marked; when a later whole read finds it again with the same update_time, it was
    left flagged deleted for good, marked in Customermates, and left out of every later run."""
    person = live_persons(pipedrive)[3]
    pipedrive.collections["persons"].remove(person)
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    assert column in _values(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0])
    pipedrive.collections["persons"].append(person)
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0
    [record] = by_pipedrive_id(customermates, "contacts")[str(person["id"])]
    assert column not in _values(record)
    with Staging(migrated["MIGRATE_STATE"]) as staging:
        assert [r.get("is_deleted") for r in staging.iter_raw("persons") if r["id"] == person["id"]] in ([None], [False])


def test_a_quarantined_record_deleted_in_pipedrive_stops_counting_as_quarantined(env, pipedrive, customermates, tmp_path, monkeypatch):
    """A record the server refused is quarantined; the user deletes it in Pipedrive. It is no longer
    to be migrated, yet it stayed quarantined: every sync after ended partial (exit 3) for good."""
    from tests.test_end_to_end import NoSleep

    monkeypatch.setattr("migrate.customermates.load.time", NoSleep())
    person = live_persons(pipedrive)[30]
    person["job_title"] = "Refused by the database"
    customermates.refuse_text("Refused by the database")
    assert invoke(env, "run").exit_code == 3
    person["is_deleted"], person["update_time"] = True, NOW
    result = invoke(env, "sync", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["status"] == "ok" and report["quarantined"]["count"] == 0


def test_a_sync_after_a_run_stopped_in_its_extract_finishes_that_extract_before_it_writes(migrated, pipedrive, customermates, tmp_path):
    """A second `migrate run` starts its extract afresh (the staged records go) and stops half way:
    Pipedrive's daily budget ran out. The sync that cron starts next must not take the half it staged
    for the account: it read only what changed since the old watermarks, and wrote the records as made
    from that half (the notes not staged again were cleared from every organization)."""
    snapshot_before = snapshot(customermates)
    pipedrive.daily_token_budget = pipedrive.tokens_spent + 150  # the rerun's extract stops early
    assert invoke(migrated, "run").exit_code == 4
    pipedrive.reset_daily_budget()
    pipedrive.daily_token_budget = None
    result = invoke(migrated, "sync", "--reconcile-every", "0")
    assert result.exit_code == 0, result.output
    assert snapshot(customermates) == snapshot_before  # nothing changed in Pipedrive: nothing to write


def test_an_archived_lead_deleted_in_pipedrive_is_handled_by_deletes_like_any_other(migrated, pipedrive, customermates, tmp_path):
    """Archived leads are read whole at every sync (no updated_since there). One deleted in Pipedrive
    left the list, and the sync dropped it from the state file without a trace: --deletes never saw
    it, and its deal stayed in Customermates, unmarked, where a fresh migration has none."""
    lead = pipedrive.collections["leads_archived"][0]
    assert f"lead:{lead['id']}" in by_pipedrive_id(customermates, "deals")
    pipedrive.collections["leads_archived"].remove(lead)
    result = invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", "0", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert f"lead:{lead['id']}" not in by_pipedrive_id(customermates, "deals")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["sync"]["deleted_in_pipedrive"] == {"deals": 1}


def test_a_link_removed_in_pipedrive_is_removed_in_customermates_by_the_sync(migrated, pipedrive, customermates):
    """An update names only the links a record has: a person taken out of their organization, or a
    deal moved to an organization not (yet) migrated, left the update without `organizationIds`,
    which Customermates reads as "unchanged": the old link stayed, though the issue said it was dropped."""
    person = next(p for p in live_persons(pipedrive) if p.get("org_id"))
    deal = next(d for d in pipedrive.collections["deals"] if not d.get("is_deleted") and d.get("org_id") and d.get("person_id"))
    assert by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["organizations"]
    person["org_id"], person["update_time"] = None, NOW
    deal["org_id"], deal["person_id"], deal["update_time"] = 7777, None, NOW  # an organization not read yet
    assert invoke(migrated, "sync").exit_code == 0
    assert by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["organizations"] == []
    [record] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert (record["organizations"], record["contacts"]) == ([], [])


def test_a_record_purged_in_pipedrive_before_a_rerun_is_still_handled_by_the_deletes_of_later_syncs(migrated, pipedrive, customermates):
    """A person gone from Pipedrive for good (purged 30 days after its deletion) while only `migrate
    run` ran: its extract starts afresh, so the state file holds no trace of the person, and no later
    sync, reconciling or not, applied --deletes to its contact, left in Customermates for good."""
    purged = next(p for p in live_persons(pipedrive) if str(p["id"]) not in _persons_referred_to(pipedrive))
    pipedrive.collections["persons"].remove(purged)
    assert invoke(migrated, "run").exit_code == 0  # a rerun leaves deletions alone
    assert str(purged["id"]) in by_pipedrive_id(customermates, "contacts")
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0  # marked, with the day it was found gone
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    assert len(_values(by_pipedrive_id(customermates, "contacts")[str(purged["id"])][0]).get(column) or "") == 10
    result = invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", "1")
    assert result.exit_code == 0, result.output
    assert str(purged["id"]) not in by_pipedrive_id(customermates, "contacts")


def _two_persons_deleted_in_pipedrive_one_also_by_a_user_in_customermates(migrated, pipedrive, customermates) -> tuple[dict, dict]:
    """After a run and a sync, two persons deleted in Pipedrive, the first's contact also deleted in
    Customermates: a sync reading only what changed there cannot see that deletion."""
    assert invoke(migrated, "sync").exit_code == 0  # reads back what the run wrote: the contact is held as there
    gone_there, other = live_persons(pipedrive)[5:7]
    for person in (gone_there, other):
        person["is_deleted"], person["update_time"] = True, NOW
    [contact] = by_pipedrive_id(customermates, "contacts")[str(gone_there["id"])]
    customermates.delete_records("contacts", [contact["id"]])
    return gone_there, other


@pytest.mark.parametrize("reconcile_every", ["0", "1"])
def test_a_record_a_user_removed_before_deletes_delete_reached_it_is_reported_once_and_not_asked_again(
    migrated, pipedrive, customermates, tmp_path, reconcile_every
):
    """The person is deleted in Pipedrive and its contact in Customermates between two syncs: a sync
    reading only what changed there cannot see the deletion, and the server refuses the delete of an
    id it no longer has. The sync reports the record as already removed and forgets it, where it
    skipped it without a word and asked again at every sync until a reconciling one. A sync whose read
    found the contact gone (read whole, `reconcile_every` 1) does so without asking, where it skipped
    the record and reported it deleted in Customermates at every sync."""
    gone_there, other = _two_persons_deleted_in_pipedrive_one_also_by_a_user_in_customermates(migrated, pipedrive, customermates)

    result = invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", reconcile_every, "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    assert str(other["id"]) not in by_pipedrive_id(customermates, "contacts")
    issues = {(i["source_id"], i["rule"]) for i in read_issues(tmp_path / "r")}
    assert (str(gone_there["id"]), "deleted_in_pipedrive_already_removed") in issues
    assert (str(other["id"]), "deleted_in_pipedrive_removed") in issues
    customermates.requests.clear()
    assert invoke(migrated, "sync", "--deletes", "delete", "--reconcile-every", reconcile_every).exit_code == 0
    assert [r for r in customermates.requests if r.method == "DELETE"] == []


@pytest.mark.parametrize("reconcile_every", ["0", "1"])
def test_a_sync_marking_a_record_a_user_already_deleted_in_customermates_marks_the_rest_and_reports_it(
    migrated, pipedrive, customermates, tmp_path, reconcile_every
):
    """As above, under the default `--deletes mark`: the server refuses the update of an id it no longer
    has (contract, recorded 07_update_many: 400 at `contacts[0].id`, nothing of the batch written), and
    every sync failed so, marking none of the others, until a reconciling one."""
    gone_there, other = _two_persons_deleted_in_pipedrive_one_also_by_a_user_in_customermates(migrated, pipedrive, customermates)

    result = invoke(migrated, "sync", "--reconcile-every", reconcile_every, "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    assert "deleted in Pipedrive 1 (mark)" in result.output
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    assert _values(by_pipedrive_id(customermates, "contacts")[str(other["id"])][0])[column] == NOW[:10]
    issues = {(i["source_id"], i["rule"]) for i in read_issues(tmp_path / "r")}
    assert (str(gone_there["id"]), "deleted_in_pipedrive_already_removed") in issues
    customermates.requests.clear()
    assert invoke(migrated, "sync", "--reconcile-every", reconcile_every).exit_code == 0
    assert [r for r in customermates.requests if r.method == "PUT"] == []


def _contact_writes(customermates, method: str) -> list[tuple[int | None, int | None]]:
    return [(r.item_count, r.status) for r in customermates.requests if r.method == method and r.path == "/api/v1/contacts/many"]


def test_a_sync_marks_and_deletes_fifty_records_a_request_and_sends_one_that_timed_out_again_in_halves(migrated, pipedrive, customermates):
    """The contract (§ Observed): a lone batch of 100 contacts took 6.7 s once, and the server's transaction
    limit failed it with a 500 that wrote nothing. Marks and deletes went 100 a request and never fewer: on
    a server that slow, every sync failed so."""
    gone = live_persons(pipedrive)[:105]
    for person in gone:
        person["is_deleted"], person["update_time"] = True, NOW
    customermates.latency_per_item, customermates.transaction_timeout = 0.002, 0.075  # 25 records take 0.05 s, 50 take 0.1 s
    customermates.clear_requests()

    result = invoke(migrated, "sync")

    assert result.exit_code == 0, result.output
    assert "deleted in Pipedrive 105 (mark)" in result.output
    assert _contact_writes(customermates, "PUT") == [(50, 500), (25, 200), (25, 200), (25, 200), (25, 200), (5, 200)]
    customermates.clear_requests()

    result = invoke(migrated, "sync", "--deletes", "delete")

    assert result.exit_code == 0, result.output
    assert "deleted in Pipedrive 105 (delete)" in result.output
    assert _contact_writes(customermates, "DELETE") == [(50, 500), (25, 200), (25, 200), (25, 200), (25, 200), (5, 200)]
    contacts = by_pipedrive_id(customermates, "contacts")
    assert not [p for p in gone if str(p["id"]) in contacts]


def test_a_mark_refused_for_another_reason_than_a_missing_record_fails_the_sync_with_the_servers_words(env, pipedrive, customermates, monkeypatch):
    """A column the server does not find is named "not found" too, but at the column's path: that is
    no record deleted in Customermates, and the sync may not forget the records as if it were."""
    assert invoke(env, "run").exit_code == 0
    person = live_persons(pipedrive)[5]
    person["is_deleted"], person["update_time"] = True, NOW

    def refusing(self, entity, items):
        issue = Issue("Custom column ID not found or not accessible. Available columns: none.", "contacts[0].customFieldValues[0].columnId")
        raise BatchRejectedError(f"Customermates rejected update {len(items)} {entity} (HTTP 400, nothing was written): {issue}", issues=[issue])

    monkeypatch.setattr(CustomermatesClient, "update_many", refusing)

    result = CliRunner().invoke(cli, ["sync"], env=env)

    assert result.exit_code == 1
    assert "Custom column ID not found or not accessible" in result.output
    assert str(person["id"]) in by_pipedrive_id(customermates, "contacts")
    monkeypatch.undo()
    assert invoke(env, "sync").exit_code == 0
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    assert _values(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0])[column] == NOW[:10]


def test_a_record_restored_in_pipedrive_whose_marked_record_a_user_deleted_is_reported_and_the_sync_goes_on(migrated, pipedrive, customermates, tmp_path):
    """Taking the mark off is an update too, refused for an id the server no longer has: every sync
    failed so until a reconciling one. Reported, the next sync's load finds the record deleted there."""
    restored, other = live_persons(pipedrive)[4:6]
    for person in (restored, other):
        person["is_deleted"], person["update_time"] = True, NOW
    assert invoke(migrated, "sync").exit_code == 0
    assert invoke(migrated, "sync").exit_code == 0  # reads the marks back
    [contact] = by_pipedrive_id(customermates, "contacts")[str(restored["id"])]
    customermates.delete_records("contacts", [contact["id"]])
    for person in (restored, other):
        person["is_deleted"], person["update_time"] = False, "2026-11-28T13:00:00Z"

    result = invoke(migrated, "sync", "--reconcile-every", "0", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    assert column not in _values(by_pipedrive_id(customermates, "contacts")[str(other["id"])][0])
    issues = {(i["source_id"], i["rule"]) for i in read_issues(tmp_path / "r")}
    assert {(str(restored["id"]), "deleted_in_target"), (str(other["id"]), "restored_in_pipedrive")} <= issues
    result = invoke(migrated, "sync", "--reconcile-every", "0", "--on-target-deleted", "recreate")
    assert result.exit_code == 0, result.output
    assert len(by_pipedrive_id(customermates, "contacts")[str(restored["id"])]) == 1


def test_a_record_customermates_refuses_to_remove_for_another_reason_is_reported_with_its_message_and_the_rest_removed(migrated, pipedrive, customermates, tmp_path, monkeypatch):
    """A delete refused for a reason other than a missing id (the contract's "Only custom tasks can
    be deleted") leaves that record as it is, reported with the server's words; the others go."""
    kept, removed = live_persons(pipedrive)[5:7]
    for person in (kept, removed):
        person["is_deleted"], person["update_time"] = True, NOW
    kept_id = by_pipedrive_id(customermates, "contacts")[str(kept["id"])][0]["id"]
    delete_many = CustomermatesClient.delete_many

    def refusing(self, entity, ids):
        if kept_id in ids:
            raise BatchRejectedError("400", issues=[Issue("Only custom contacts can be deleted", f"ids[{ids.index(kept_id)}]")], status=400, body="")
        return delete_many(self, entity, ids)

    monkeypatch.setattr(CustomermatesClient, "delete_many", refusing)

    result = invoke(migrated, "sync", "--deletes", "delete", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    contacts = by_pipedrive_id(customermates, "contacts")
    assert str(kept["id"]) in contacts and str(removed["id"]) not in contacts
    issues = {(i["source_id"], i["rule"]): i["detail"] for i in read_issues(tmp_path / "r")}
    assert "Only custom contacts can be deleted" in issues[(str(kept["id"]), "deleted_in_pipedrive_not_removed")]
    assert (str(removed["id"]), "deleted_in_pipedrive_removed") in issues


def test_sync_every_logs_a_failed_sync_and_runs_the_next_but_stops_at_a_configuration_error(env, pipedrive, customermates, monkeypatch):
    """A loop under --every outlives what the next sync can get past (here Pipedrive's daily
    budget, spent: exit 4, checkpointed), and ends with exit 2 at what it cannot: a token of
    another Pipedrive company, where it would have logged the same refusal every interval."""
    from migrate import stopping

    assert invoke(env, "run").exit_code == 0
    person = live_persons(pipedrive)[2]
    person["job_title"], person["update_time"] = "Loop Tester", NOW
    pipedrive.daily_token_budget = pipedrive.tokens_spent + 60
    waits = []

    def between_syncs(seconds):
        waits.append(seconds)
        if len(waits) == 1:  # after the sync the budget stopped: midnight comes
            pipedrive.reset_daily_budget()
            pipedrive.daily_token_budget = None
        elif len(waits) == 2:  # after the sync that went through: the token now belongs elsewhere
            pipedrive.company = {"company_id": 1234, "company_name": "Other Company Ltd", "company_domain": "other-company"}
        else:
            raise AssertionError("the loop went on past a configuration error")

    monkeypatch.setattr(stopping, "wait", between_syncs)
    result = CliRunner().invoke(cli, ["sync", "--every", "15m", "--log-format", "json"], env=env)
    assert result.exit_code == 2, result.output
    assert len(waits) == 2 and all(0 < s <= 900 for s in waits)
    assert "Other Company Ltd" in result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [line.get("exit_code") for line in lines if line.get("event") == "sync.failed"] == [4]
    assert [line["status"] for line in lines if line.get("event") == "sync"] == ["ok"]
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    assert {"columnId": column, "value": "Loop Tester"} in record["customFieldValues"]


def test_a_record_found_vanished_is_marked_with_the_day_found_and_removed_by_the_next_sync_given_deletes(migrated, pipedrive, customermates):
    """Person 2 is deleted in Pipedrive, person 6 purged (absent from every list). The reconciling
    sync flagged 6 deleted but marked it with its last update_time (2021-12-31), not the day it was
    found gone; person 2 keeps the date Pipedrive gives. The next `--deletes delete` sync, not
    reconciling, removes both."""
    persons = {p["id"]: p for p in pipedrive.collections["persons"]}
    persons[2]["is_deleted"], persons[2]["update_time"] = True, NOW
    pipedrive.collections["persons"].remove(persons[6])
    assert invoke(migrated, "sync").exit_code == 0
    assert invoke(migrated, "sync", "--reconcile-every", "1").exit_code == 0
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive")
    contacts = by_pipedrive_id(customermates, "contacts")
    assert _values(contacts["2"][0])[column] == NOW[:10]  # the date Pipedrive gives
    with Staging(migrated["MIGRATE_STATE"]) as staging:
        [vanished_at] = [r.get("vanished_at") for r in staging.iter_raw("persons") if r["id"] == 6]
    assert _values(contacts["6"][0])[column] == (vanished_at or "")[:10] != persons[6]["update_time"][:10]  # the day it was found gone

    result = invoke(migrated, "sync", "--deletes", "delete")

    assert result.exit_code == 0, result.output
    contacts = by_pipedrive_id(customermates, "contacts")
    assert "2" not in contacts and "6" not in contacts


def test_a_sync_that_fails_with_log_format_json_says_so_in_a_json_line(env, customermates):
    """`sync --log-format json >> sync.log 2>&1` is the documented cron line; a failed sync wrote one
    plain-text `error: …` line into that log of JSON lines."""
    assert invoke(env, "run").exit_code == 0
    result = CliRunner().invoke(cli, ["sync", "--log-format", "json"], env={**env, "CUSTOMERMATES_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.strip()]  # every line is JSON
    [failed] = [line for line in lines if line.get("event") == "command.failed"]
    assert failed["exit_code"] == 1 and "http://127.0.0.1:9" in failed["error"] and failed["level"] == "error"


def test_a_record_purged_in_pipedrive_is_still_known_deleted_after_a_run_and_the_next_sync_given_deletes_removes_it(migrated, pipedrive, customermates):
    """Person 6 is purged (absent from every list). A run in between starts its extract afresh and
    dropped what the reconciling sync had found: the next `sync --deletes delete` left contact 6 until
    the next reconciling sync, up to a day later. A complete extract now stages the migrated records
    it did not see as deleted, as a reconciliation does."""
    pipedrive.collections["persons"].remove(next(p for p in pipedrive.collections["persons"] if p["id"] == 6))
    assert invoke(migrated, "run").exit_code == 0  # no reconciling sync before it: the run finds it gone itself

    result = invoke(migrated, "sync", "--deletes", "delete")

    assert result.exit_code == 0, result.output
    assert "6" not in by_pipedrive_id(customermates, "contacts")


def _conflicts(tmp_path: Path) -> list[dict[str, str]]:
    return [i for i in read_issues(tmp_path) if i["rule"] == "conflict_skipped"]


def _a_deal_and_its_contact(pipedrive, customermates) -> tuple[dict, str, str]:
    """An open deal with a contact: (the deal, the contact's Pipedrive id, its Customermates id)."""
    deal = next(d for d in pipedrive.collections["deals"] if d.get("status") == "open" and d.get("person_id"))
    person_id = str(deal["person_id"]["value"] if isinstance(deal["person_id"], dict) else deal["person_id"])
    return deal, person_id, by_pipedrive_id(customermates, "contacts")[person_id][0]["id"]


def _delete_a_deals_contact_and_edit_the_deal(pipedrive, customermates) -> tuple[dict, str, str]:
    """A user deletes an open deal's contact in Customermates, and the deal is edited in Pipedrive:
    (the deal, the contact's Pipedrive id, the id it had in Customermates)."""
    deal, person_id, contact_id = _a_deal_and_its_contact(pipedrive, customermates)
    customermates.delete_records("contacts", [contact_id])
    _edit_in_pipedrive(deal)
    return deal, person_id, contact_id


def _sync_an_hour_later(migrated, customermates) -> None:
    """A sync an hour after the run, whose read of Customermates holds every record; then an hour
    passes (the next sync reads again only what changed there since)."""
    customermates.advance_clock(3600)
    assert invoke(migrated, "sync").exit_code == 0
    customermates.advance_clock(3600)


def _edit_in_pipedrive(deal: dict) -> None:
    deal["title"] += " (edited in Pipedrive)"
    deal["update_time"] = NOW


def _synced_deal(env, customermates, report_dir: Path, deal: dict) -> dict:
    """A sync that ends well, with no record quarantined and no conflict: the deal as it left it."""
    result = invoke(env, "sync", "--report-dir", str(report_dir))
    assert result.exit_code == 0, result.output
    assert read_quarantine(report_dir) == [] and _conflicts(report_dir) == []
    [written] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    return written


def _says_deleted_and_link_dropped(report_dir: Path, deal: dict, person_id: str) -> bool:
    """Whether the sync's issues say the contact was deleted in Customermates and the deal's link to it dropped."""
    deleted = [(i["entity"], i["source_id"]) for i in read_issues(report_dir) if i["rule"] == "deleted_in_target"]
    return deleted == [("contacts", person_id)] and _says_link_dropped(report_dir, deal, person_id, "--on-target-deleted recreate")


def _says_link_dropped(report_dir: Path, deal: dict, person_id: str, recreated_by: str) -> bool:
    """Whether the sync's issues say the deal's link to the contact was dropped, the contact deleted in Customermates."""
    dropped = [(i["entity"], i["source_id"], i["detail"]) for i in read_issues(report_dir) if i["rule"] == "link_target_deleted_in_target"]
    return (
        "deals", str(deal["id"]), f"contact {person_id} was deleted in Customermates after it was migrated; link dropped "
        f"({recreated_by} creates it again, linked)"
    ) in dropped  # with those of the records written with the deal that link the contact too


def test_a_deal_whose_contact_a_user_deleted_in_customermates_takes_its_pipedrive_edit_as_no_conflict(migrated, pipedrive, customermates, tmp_path):
    """The deal's contacts no longer held the deleted contact, which read as an edit of the deal
    made in Customermates: every later Pipedrive edit of the deal was skipped as a conflict."""
    deal, _, _ = _delete_a_deals_contact_and_edit_the_deal(pipedrive, customermates)

    assert _synced_deal(migrated, customermates, tmp_path, deal)["name"] == deal["title"]


def test_a_sync_writes_a_deal_whose_contact_a_user_deleted_in_customermates_without_that_link_and_says_so(
    migrated, pipedrive, customermates, tmp_path
):
    """A sync reads what changed in Customermates, and a deletion is no change it can read: the deal's
    update named the deleted contact, the server refused it ("Contact ID not found or not accessible."
    at deals[0].contactIds[0]), and every sync quarantined the deal, its Pipedrive edits never written.
    The refusal tells the sync the contact is gone, as a whole read would: the link is dropped and said so."""
    _sync_an_hour_later(migrated, customermates)  # the next sync does not read the deal: nothing changed it there
    deal, person_id, contact_id = _delete_a_deals_contact_and_edit_the_deal(pipedrive, customermates)

    written = _synced_deal(migrated, customermates, tmp_path / "refused", deal)

    assert written["name"] == deal["title"] and contact_id not in [c["id"] for c in written["contacts"]]
    assert _says_deleted_and_link_dropped(tmp_path / "refused", deal, person_id)
    _edit_in_pipedrive(deal)  # the next sync reads the deal again (this one wrote it): its lost contact is no edit made there
    assert _synced_deal(migrated, customermates, tmp_path / "next", deal)["name"] == deal["title"]
    assert _says_deleted_and_link_dropped(tmp_path / "next", deal, person_id)


def test_a_sync_writes_a_deal_whose_service_a_user_deleted_in_customermates_without_it_and_says_so(
    migrated, pipedrive, customermates, tmp_path
):
    """A service's deletion changes its deals' totals, so a sync reads them again and finds the
    link lost: the service is looked up by its id, found gone, reported and dropped from the deal,
    whose other services stay. A deal of the service not read again (one whose totals the server
    did not date) holds it still as last read: that is no edit made in Customermates either, where
    it made a Pipedrive edit of the deal a conflict, skipped."""
    _sync_an_hour_later(migrated, customermates)
    deals = by_pipedrive_id(customermates, "deals")
    with_services = [d for d in pipedrive.collections["deals"] if d.get("status") == "open" and len(deals[str(d["id"])][0]["services"]) >= 2]
    deal = with_services[0]
    [before] = deals[str(deal["id"])]
    services = [s["id"] for s in before["services"]]
    product_of = {record["id"]: pid for pid, [record] in by_pipedrive_id(customermates, "services").items()}
    sharing = [d for d in pipedrive.collections["deals"] if str(d["id"]) in deals and d is not deal
               and services[-1] in [s["id"] for s in deals[str(d["id"])][0]["services"]]]
    assert sharing  # another deal of the service: read again for it, where this one is not
    customermates.delete_records("services", [services[-1]])
    customermates.stamp_updated_at("deals", [before["id"]], before["updatedAt"])  # not read again
    _edit_in_pipedrive(deal)

    written = _synced_deal(migrated, customermates, tmp_path / "r", deal)

    assert written["name"] == deal["title"] and [s["id"] for s in written["services"]] == services[:-1]
    issues = read_issues(tmp_path / "r")
    assert [(i["entity"], i["source_id"]) for i in issues if i["rule"] == "deleted_in_target"] == [("services", product_of[services[-1]])]
    assert ("deals", str(deal["id"])) in [(i["entity"], i["source_id"]) for i in issues if i["rule"] == "link_target_deleted_in_target"]


def test_a_deal_update_refused_for_a_service_a_user_deleted_is_sent_again_without_it(migrated, pipedrive, customermates, tmp_path):
    """No deal of the service read again (none whose totals the server dated): the deal's update names
    the deleted service and is refused at deals[0].services[0], the deal's index and not the service's
    (contract §3.8). Each of its services is looked up, and the update sent again without the one gone,
    reported, where the deal was quarantined at every sync."""
    deal, services = _a_deal_whose_service_a_user_deleted_unread(migrated, pipedrive, customermates)

    written = _synced_deal(migrated, customermates, tmp_path / "r", deal)

    assert written["name"] == deal["title"] and [s["id"] for s in written["services"]] == services[:-1]
    assert [r.status for r in customermates.requests if r.method == "PUT"] == [400, 200]
    assert f"/api/v1/services/{services[-1]}" in [r.path for r in customermates.requests if r.method == "GET"]
    issues = read_issues(tmp_path / "r")
    assert [i["entity"] for i in issues if i["rule"] == "deleted_in_target"] == ["services"]
    assert ("deals", str(deal["id"])) in [(i["entity"], i["source_id"]) for i in issues if i["rule"] == "link_target_deleted_in_target"]


def test_a_new_deal_refused_for_a_service_a_user_deleted_is_created_without_it(migrated, pipedrive, customermates, tmp_path):
    """A deal new in Pipedrive whose product's service a user deleted in Customermates: its create is
    refused as an update is (contract §3.8), and created without the service, reported."""
    deal, services = _a_deal_whose_service_a_user_deleted_unread(migrated, pipedrive, customermates)
    newcomer = dict(deal, id=9001, title="Newcomer with the same products", add_time=NOW, update_time=NOW)
    pipedrive.collections["deals"].append(newcomer)
    lines = [p for p in pipedrive.collections["deal_products"] if p["deal_id"] == deal["id"]]
    pipedrive.collections["deal_products"] += [dict(p, id=90_000 + n, deal_id=9001) for n, p in enumerate(lines)]

    written = _synced_deal(migrated, customermates, tmp_path / "r", newcomer)

    assert sorted(s["id"] for s in written["services"]) == sorted(services[:-1])
    assert [r.status for r in customermates.requests if r.method == "POST" and r.path == "/api/v1/deals/many"] == [400, 201]
    issues = {(i["entity"], i["source_id"], i["rule"]) for i in read_issues(tmp_path / "r")}
    assert ("deals", "9001", "link_target_deleted_in_target") in issues


def test_new_deals_refused_for_one_deals_deleted_service_set_that_deal_apart_at_once(migrated, pipedrive, customermates, tmp_path):
    """In deal create-many the server reports an unknown service at deals[i].services[k] for every deal
    i, k naming the deal that links it (contract §3.8): that deal is sent alone and the others together,
    where the batch was halved down to it."""
    deal, services = _a_deal_whose_service_a_user_deleted_unread(migrated, pipedrive, customermates)
    others = [d for d in pipedrive.collections["deals"] if d.get("status") == "open" and d is not deal][:7]
    newcomers = [dict(d, id=9100 + n, title=f"Newcomer {n}", add_time=NOW, update_time=NOW) for n, d in enumerate([*others[:3], deal, *others[3:]])]
    pipedrive.collections["deals"] += newcomers
    pipedrive.collections["deal_products"] += [
        dict(p, id=91_000 + 10 * n + k, deal_id=new["id"])
        for n, (old, new) in enumerate(zip([*others[:3], deal, *others[3:]], newcomers, strict=True))
        for k, p in enumerate(p for p in pipedrive.collections["deal_products"] if p["deal_id"] == old["id"])
    ]
    customermates.clear_requests()

    written = _synced_deal(migrated, customermates, tmp_path / "r", newcomers[3])

    assert sorted(s["id"] for s in written["services"]) == sorted(services[:-1])
    assert [r.status for r in customermates.requests if r.method == "POST" and r.path == "/api/v1/deals/many"] == [400, 201, 400, 201]
    created = by_pipedrive_id(customermates, "deals")
    assert all(len(created[str(new["id"])]) == 1 for new in newcomers)


def test_a_service_lookup_that_fails_quarantines_the_refused_deal_and_the_sync_goes_on(migrated, pipedrive, customermates, tmp_path, monkeypatch):
    """The lookup is the sync's own addition to the server's refusal: when it fails, the deal is
    quarantined with the server's words as without it, where the sync stopped and wrote no task."""
    deal, _ = _a_deal_whose_service_a_user_deleted_unread(migrated, pipedrive, customermates)
    task = next(a for a in pipedrive.collections["activities"] if not a.get("is_deleted"))
    task["subject"], task["update_time"] = f"{task['subject']} (edited)", NOW
    get = CustomermatesClient.get

    def failing(self, entity, record_id):
        if entity == "services":
            raise ServerError("Customermates answered GET /services/{id} with 503", status=503)
        return get(self, entity, record_id)

    monkeypatch.setattr(CustomermatesClient, "get", failing)
    result = invoke(migrated, "sync", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 3, result.output  # partial: one record quarantined
    [row] = read_quarantine(tmp_path / "r")
    assert (row["entity"], row["source_id"]) == ("deals", str(deal["id"])) and "Service ID not found" in row["message"]
    assert by_pipedrive_id(customermates, "tasks")[str(task["id"])][0]["name"] == task["subject"]


def test_a_deal_refused_for_a_user_removed_during_the_sync_is_written_without_the_user_and_its_owner_reported(
    migrated, pipedrive, customermates, tmp_path, monkeypatch,
):
    """A user removed from the company after the sync matched owners: the deal's update is refused at
    deals[0].userIds[0] ("User ID not found or not accessible.", contract §3.8). The owner is unmatched
    from then on, reported as an owner without a user is, and the deal sent again without the user,
    where it was quarantined."""
    owner = pipedrive.collections["users"][0]
    katrin = customermates.add_user({"email": owner["email"], "firstName": "Katrin", "lastName": "Vogel"})["id"]
    assert invoke(migrated, "sync").exit_code == 0  # her records assigned to her
    deals = {pid: found[0] for pid, found in by_pipedrive_id(customermates, "deals").items()}
    deal, second = [d for d in pipedrive.collections["deals"] if [u["id"] for u in deals.get(str(d["id"]), {}).get("users") or []] == [katrin]][:2]
    _edit_in_pipedrive(deal)
    _edit_in_pipedrive(second)  # refused in the same batch: sent alone after the user was found removed
    match_users = Loader.match_users

    def removed_once_matched(self):
        match_users(self)
        customermates.remove_user(katrin)

    monkeypatch.setattr(Loader, "match_users", removed_once_matched)
    customermates.clear_requests()
    written = _synced_deal(migrated, customermates, tmp_path / "r", deal)

    assert written["name"] == deal["title"] and written["users"] == []
    assert by_pipedrive_id(customermates, "deals")[str(second["id"])][0]["users"] == []
    assert [r.status for r in customermates.requests if r.method == "PUT"] == [400, 400, 200, 400, 200]
    [issue] = [i for i in read_issues(tmp_path / "r") if i["rule"] == "owner_unmatched" and i["source_id"] == str(owner["id"])]
    assert f"its Customermates user ({katrin}) was removed from the company during this run" in issue["detail"]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert str(owner["id"]) in [u["source_id"] for u in report["unmatched_users"]]


def _a_deal_whose_service_a_user_deleted_unread(migrated, pipedrive, customermates) -> tuple[dict, list[str]]:
    """After a sync an hour after the run, a user deletes the last service of an open deal with two or
    more, no deal reads as changed since, and the deal is edited in Pipedrive: (the deal, its services'
    Customermates ids)."""
    _sync_an_hour_later(migrated, customermates)
    deals = {pid: found[0] for pid, found in by_pipedrive_id(customermates, "deals").items()}
    deal = next(d for d in pipedrive.collections["deals"] if d.get("status") == "open" and len(deals.get(str(d["id"]), {}).get("services") or []) >= 2)
    services = [s["id"] for s in deals[str(deal["id"])]["services"]]
    customermates.delete_records("services", [services[-1]])
    for record in deals.values():  # as they were: no deal reads as changed
        customermates.stamp_updated_at("deals", [record["id"]], record["updatedAt"])
    _edit_in_pipedrive(deal)
    customermates.clear_requests()
    return deal, services


def test_under_recreate_a_contact_a_refused_link_shows_deleted_is_created_again_linked_and_counted_by_the_same_sync(
    migrated, pipedrive, customermates, tmp_path
):
    """The sync that found the contact deleted by the server's refusal of the deal's link had written
    the contacts by then: it wrote the deal without the link and counted neither the deletion nor a
    recreation, left to the next sync, while its issue named the contact. It creates the contact
    again at once, counts it, and writes the deal linked to it; the next sync has nothing left to do."""
    _sync_an_hour_later(migrated, customermates)
    deal, person_id, contact_id = _delete_a_deals_contact_and_edit_the_deal(pipedrive, customermates)
    recreate = ("sync", "--on-target-deleted", "recreate", "--report-dir")

    assert invoke(migrated, *recreate, str(tmp_path / "refused")).exit_code == 0

    assert read_quarantine(tmp_path / "refused") == []
    assert [i for i in read_issues(tmp_path / "refused") if i["rule"] in ("deleted_in_target", "link_target_deleted_in_target")] == []
    [contact] = by_pipedrive_id(customermates, "contacts")[person_id]
    [written] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert contact["id"] != contact_id and [c["id"] for c in written["contacts"]] == [contact["id"]] and written["name"] == deal["title"]
    counts = json.loads((tmp_path / "refused" / "report.json").read_text())["entities"]["contacts"]
    assert (counts["deleted_in_target"], counts["recreated"], counts["created"]) == (1, 1, 1)
    assert counts["created"] + counts["updated"] + counts["unchanged"] + counts["conflicts"] == counts["to_migrate"]  # counted once
    writes = customermates.write_count()
    assert invoke(migrated, *recreate, str(tmp_path / "next")).exit_code == 0
    counts = json.loads((tmp_path / "next" / "report.json").read_text())["entities"]["contacts"]
    assert (counts["deleted_in_target"], counts["recreated"], counts["created"]) == (0, 0, 0)
    assert customermates.write_count() == writes and len(by_pipedrive_id(customermates, "contacts")[person_id]) == 1


def test_under_recreate_two_deals_refused_for_one_deleted_contact_link_the_one_contact_made_again(migrated, pipedrive, customermates, tmp_path):
    """Both deals' updates name the deleted contact: the first refusal makes it again, and the second
    deal, whose body was built before with the old id, is sent again linked to the new contact."""
    _sync_an_hour_later(migrated, customermates)
    contacts = by_pipedrive_id(customermates, "contacts")
    person_id = next(pid for pid, n in Counter(_person_of(d) for d in pipedrive.collections["deals"] if d.get("status") == "open").items()
                     if pid in contacts and n == 2)
    deals = [d for d in pipedrive.collections["deals"] if d.get("status") == "open" and _person_of(d) == person_id]
    customermates.delete_records("contacts", [contacts[person_id][0]["id"]])
    for deal in deals:
        _edit_in_pipedrive(deal)

    result = invoke(migrated, "sync", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    assert read_quarantine(tmp_path / "r") == []
    [contact] = by_pipedrive_id(customermates, "contacts")[person_id]
    written = [by_pipedrive_id(customermates, "deals")[str(d["id"])][0] for d in deals]
    assert [([c["id"] for c in w["contacts"]], w["name"]) for w in written] == [([contact["id"]], d["title"]) for d in deals]
    counts = json.loads((tmp_path / "r" / "report.json").read_text())["entities"]["contacts"]
    assert (counts["deleted_in_target"], counts["recreated"], counts["created"]) == (1, 1, 1)


def test_under_recreate_a_contact_made_again_whose_create_fails_alone_is_sent_again_as_a_contact(migrated, pipedrive, customermates, tmp_path):
    """The contact's create, sent during the deals' load, fails with a 500 (nothing written) and is set
    aside: it is sent again at the end of that load as a contact, not as a deal. The deal is written
    without the link meanwhile, and the next sync links it."""
    _sync_an_hour_later(migrated, customermates)
    deal, person_id, _ = _delete_a_deals_contact_and_edit_the_deal(pipedrive, customermates)
    customermates.fail_next(1, path_contains="/contacts/many")

    result = invoke(migrated, "sync", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "r"))

    assert result.exit_code == 0, result.output
    assert read_quarantine(tmp_path / "r") == []
    [contact] = by_pipedrive_id(customermates, "contacts")[person_id]
    assert invoke(migrated, "sync", "--on-target-deleted", "recreate").exit_code == 0
    [written] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert [c["id"] for c in written["contacts"]] == [contact["id"]] and len(by_pipedrive_id(customermates, "contacts")[person_id]) == 1


def test_under_recreate_a_deal_linking_a_contact_made_again_by_another_deals_refused_link_takes_its_pipedrive_edit_next(
    migrated, pipedrive, customermates, tmp_path
):
    """The first deal's refused link makes the contact again; the second deal, linking it too and not
    written by that sync, is edited in Pipedrive before the next. It lost its link to the deletion, no
    edit made in Customermates: the next sync writes its edit and links it to the contact made again."""
    _sync_an_hour_later(migrated, customermates)
    contacts = by_pipedrive_id(customermates, "contacts")
    person_id = next(pid for pid, n in Counter(_person_of(d) for d in pipedrive.collections["deals"] if d.get("status") == "open").items()
                     if pid in contacts and n == 2)
    first, second = [d for d in pipedrive.collections["deals"] if d.get("status") == "open" and _person_of(d) == person_id]
    customermates.delete_records("contacts", [contacts[person_id][0]["id"]])
    _edit_in_pipedrive(first)
    assert invoke(migrated, "sync", "--on-target-deleted", "recreate").exit_code == 0
    second["title"] += " (edited in Pipedrive)"
    second["update_time"] = "2026-12-03T15:30:00Z"

    result = invoke(migrated, "sync", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert _conflicts(tmp_path) == []
    [contact] = by_pipedrive_id(customermates, "contacts")[person_id]
    [written] = by_pipedrive_id(customermates, "deals")[str(second["id"])]
    assert ([c["id"] for c in written["contacts"]], written["name"]) == ([contact["id"]], second["title"])


@pytest.mark.parametrize("killed_at", ["record_pending", "commit_batch"])
def test_a_sync_killed_while_it_creates_again_a_contact_a_refused_link_showed_deleted_leaves_one_contact_linked_by_the_next(
    migrated, pipedrive, customermates, monkeypatch, tmp_path, killed_at
):
    """Killed before the contact's create is sent (the id map row forgotten already), or after it was
    written and before its id was stored (the batch pending): the next sync creates it, or adopts it,
    once, and writes the deal's Pipedrive edit linked to it, where the plan, no longer knowing the
    contact's old id, took the link the deal lost to the deletion for an edit made in Customermates
    and skipped the deal as a conflict."""
    from migrate.errors import Interrupted

    _sync_an_hour_later(migrated, customermates)
    deal, person_id, _ = _delete_a_deals_contact_and_edit_the_deal(pipedrive, customermates)
    real = getattr(Staging, killed_at)

    def killed(self, *args, **options):
        entity = args[1] if killed_at == "commit_batch" else args[0]
        if entity == "contacts" and (killed_at == "record_pending" or args[2]):
            if killed_at == "commit_batch":
                assert customermates.records("contacts")  # written: its id is not stored
            raise Interrupted("SIGKILL", 9)
        return real(self, *args, **options)

    monkeypatch.setattr(Staging, killed_at, killed)
    assert invoke(migrated, "sync", "--on-target-deleted", "recreate").exit_code == 137
    monkeypatch.setattr(Staging, killed_at, real)

    result = invoke(migrated, "sync", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert _conflicts(tmp_path) == []  # the link the deal lost to the deletion is no edit made in Customermates
    [contact] = by_pipedrive_id(customermates, "contacts")[person_id]
    [written] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert [c["id"] for c in written["contacts"]] == [contact["id"]] and written["name"] == deal["title"]


def _person_of(deal: dict) -> str | None:
    person = deal.get("person_id")
    return str(person["value"] if isinstance(person, dict) else person) if person else None


def test_a_deal_read_again_without_the_contact_a_user_deleted_in_customermates_takes_its_pipedrive_edit_without_that_link(
    migrated, pipedrive, customermates, tmp_path
):
    """A sync reads again the records written since the last read began. The deal, written by the last
    sync and read again without the contact a user deleted since (which a read of what changed does
    not see gone), had lost a link there: an edit made in Customermates, and its Pipedrive edit was
    skipped as a conflict, at every sync. The contact is looked up, found gone, and taken so as a
    whole read takes it."""
    _sync_an_hour_later(migrated, customermates)
    deal, person_id, contact_id = _a_deal_and_its_contact(pipedrive, customermates)
    _edit_in_pipedrive(deal)
    assert invoke(migrated, "sync").exit_code == 0  # writes the deal, which the next sync reads again
    customermates.delete_records("contacts", [contact_id])
    _edit_in_pipedrive(deal)

    written = _synced_deal(migrated, customermates, tmp_path, deal)

    assert written["name"] == deal["title"] and contact_id not in [c["id"] for c in written["contacts"]]
    assert _says_deleted_and_link_dropped(tmp_path, deal, person_id)


def test_a_deal_whose_contact_a_user_unlinked_in_customermates_is_a_conflict_when_pipedrive_edits_it(migrated, pipedrive, customermates, tmp_path):
    """The contact the deal read again no longer links to is looked up, and there: the link was
    removed in Customermates, an edit made there, which the sync leaves as it is."""
    _sync_an_hour_later(migrated, customermates)
    deal, person_id, contact_id = _a_deal_and_its_contact(pipedrive, customermates)
    customermates.edit_records("deals", [{"id": by_pipedrive_id(customermates, "deals")[str(deal["id"])][0]["id"], "contactIds": []}])
    _edit_in_pipedrive(deal)

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert [(i["entity"], i["source_id"]) for i in _conflicts(tmp_path)] == [("deals", str(deal["id"]))]
    [kept] = by_pipedrive_id(customermates, "deals")[str(deal["id"])]
    assert kept["contacts"] == [] and kept["name"] != deal["title"]
    assert [c["id"] for c in by_pipedrive_id(customermates, "contacts")[person_id]] == [contact_id]


def test_a_custom_field_deleted_in_pipedrive_makes_no_conflict_of_the_records_that_held_a_value(migrated, pipedrive, customermates, tmp_path):
    """The values the records were written with, in a column no field fills now, read as edits made
    in Customermates: every record that held one became a conflict, for good."""
    field = next(f for f in pipedrive.collections["personFields"] if f.get("is_custom_field") and f["field_type"] == "enum")
    pipedrive.collections["personFields"].remove(field)
    held = [p for p in live_persons(pipedrive) if (p.get("custom_fields") or {}).pop(field["field_code"], None) is not None]
    assert held
    for person in held:
        person["update_time"] = NOW
    held[0]["first_name"] = "Renamed"
    held[0]["name"] = f"Renamed {held[0].get('last_name') or ''}".strip()

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert _conflicts(tmp_path) == []
    assert by_pipedrive_id(customermates, "contacts")[str(held[0]["id"])][0]["firstName"] == "Renamed"
    assert json.loads((tmp_path / "report.json").read_text())["columns_left"] == [f"contacts: {field['field_name']}"]


def test_notes_edited_in_customermates_are_a_conflict_when_pipedrive_changes_the_record_not_overwritten(migrated, pipedrive, customermates, tmp_path):
    """The plan saw notes only as there or not: a line a user typed into a contact's notes was
    wiped by the next sync that wrote the contact (a job title changed in Pipedrive)."""
    person = next(p for p in live_persons(pipedrive) if by_pipedrive_id(customermates, "contacts")[str(p["id"])][0]["notes"])
    contact = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    response = httpx.put(
        f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY},
        json={"contacts": [{"id": contact["id"], "notes": "CALL BACK MONDAY"}]},
    )
    assert response.status_code == 200, response.text
    person["job_title"] = "Changed in Pipedrive"
    person["update_time"] = NOW

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert [(i["entity"], i["source_id"]) for i in _conflicts(tmp_path)] == [("contacts", str(person["id"]))]
    assert "conflicts 1," in result.output  # on the sync's line, beside created, updated and unchanged
    kept = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert "CALL BACK MONDAY" in json.dumps(kept["notes"])
    assert invoke(migrated, "sync", "--on-conflict", "source-wins").exit_code == 0
    assert "CALL BACK MONDAY" not in json.dumps(by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["notes"])


def test_two_records_customermates_refuses_are_quarantined_once_a_later_entity_writes_and_the_sync_goes_on(env, pipedrive, customermates, tmp_path, monkeypatch):
    """Two records failing alone, with nothing else of their entity to write, looked like a server
    that is down: every sync ended after ten failures in a row, and the deals after them never synced."""
    monkeypatch.setattr("migrate.customermates.load.time", NoSleep())
    assert invoke(env, "run").exit_code == 0
    refused = live_persons(pipedrive)[:2]
    for person in refused:
        person["job_title"], person["update_time"] = "Refused by the database", NOW
    customermates.refuse_text("Refused by the database")
    deal = next(d for d in pipedrive.collections["deals"] if d.get("status") == "open")
    deal["title"] += " (edited in Pipedrive)"
    deal["update_time"] = NOW

    result = invoke(env, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 3, result.output
    assert sorted((q["entity"], q["source_id"]) for q in read_quarantine(tmp_path)) == sorted(("contacts", str(p["id"])) for p in refused)
    assert by_pipedrive_id(customermates, "deals")[str(deal["id"])][0]["name"] == deal["title"]
    again = invoke(env, "sync", "--report-dir", str(tmp_path / "again"))  # nothing else to write: still refused, not a server down
    assert again.exit_code == 3, again.output
    assert len(read_quarantine(tmp_path / "again")) == 2


def test_a_deletion_whose_answer_was_lost_is_sent_again_and_counted_as_this_syncs(migrated, pipedrive, customermates, tmp_path):
    """The sync ended with "reconcile before retrying", and the next one reported the record as
    removed by a user first: no sync ever counted the deletion it made."""
    person = live_persons(pipedrive)[0]
    person["is_deleted"], person["update_time"] = True, NOW
    customermates.drop_after_apply(1, path_contains="/contacts/many")  # the delete is applied, its answer lost

    result = invoke(migrated, "sync", "--deletes", "delete", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert "deleted in Pipedrive 1 (delete)" in result.output
    assert [(i["source_id"], i["rule"]) for i in read_issues(tmp_path) if i["rule"].startswith("deleted_in_pipedrive_")] == [
        (str(person["id"]), "deleted_in_pipedrive_removed")
    ]
    assert str(person["id"]) not in by_pipedrive_id(customermates, "contacts")


def test_a_reconciling_sync_that_fails_half_way_is_followed_by_one_that_reconciles(env, pipedrive, customermates, monkeypatch):
    """Every sync started counted towards --reconcile-every: a reconciling sync that failed put the
    next reconciliation off a whole cycle (a day, at 96 syncs of 15 minutes)."""
    from migrate import pipeline

    assert invoke(env, "run").exit_code == 0
    purged = live_persons(pipedrive)[3]
    pipedrive.collections["persons"].remove(purged)  # gone for good: only a reconciliation finds it
    real_reconcile = pipeline.reconcile_ids

    def fails_once(*args, **kwargs):
        monkeypatch.setattr(pipeline, "reconcile_ids", real_reconcile)
        raise RuntimeError("the connection dropped half way")

    monkeypatch.setattr(pipeline, "reconcile_ids", fails_once)
    sync = ("sync", "--deletes", "delete", "--reconcile-every", "2")
    assert invoke(env, *sync).exit_code == 0  # the first of two: changes only
    with pytest.raises(RuntimeError):
        invoke(env, *sync)  # the second reconciles, and fails
    assert str(purged["id"]) in by_pipedrive_id(customermates, "contacts")

    reconciled = [json.loads(invoke(env, *sync, "--log-format", "json").output.splitlines()[-1])["sync"]["reconciled"] for _ in range(3)]

    assert str(purged["id"]) not in by_pipedrive_id(customermates, "contacts")
    assert reconciled == [True, None, True]  # then every second one again


class _Killed(BaseException):
    """The process dies (kill -9, power cut): nothing after it runs, not even an `except Exception`."""


def test_an_update_that_landed_before_a_crash_is_no_edit_made_in_customermates_and_a_later_pipedrive_edit_arrives(migrated, pipedrive, customermates, tmp_path, monkeypatch):
    """A sync killed between an update's effect and its commit left the state file holding the body
    written before: the next sync took the values the killed one wrote for edits made in
    Customermates, and the record, edited again in Pipedrive meanwhile, became a conflict whose
    Pipedrive edit was never written."""
    person = live_persons(pipedrive)[4]
    person["job_title"], person["update_time"] = "Written, then the sync died", NOW
    real_commit = Staging.commit_batch

    def dies_after_the_write(self, batch_id, entity, written, *args, **kwargs):
        if entity == "contacts" and written:
            raise _Killed
        return real_commit(self, batch_id, entity, written, *args, **kwargs)

    monkeypatch.setattr(Staging, "commit_batch", dies_after_the_write)
    with pytest.raises(_Killed):
        invoke(migrated, "sync")
    monkeypatch.setattr(Staging, "commit_batch", real_commit)
    person["first_name"] = "Renamed"
    person["name"], person["update_time"] = f"Renamed {person.get('last_name') or ''}".strip(), "2026-11-28T13:00:00Z"

    result = invoke(migrated, "sync", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert [i for i in read_issues(tmp_path) if i["rule"] == "conflict_skipped"] == []
    assert by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]["firstName"] == "Renamed"


def test_a_deletion_made_by_a_sync_killed_before_it_noted_it_is_counted_as_removed_by_the_next(migrated, pipedrive, customermates, tmp_path, monkeypatch):
    """A sync killed between a delete's effect and the state file's note of it left the record known as
    migrated: the next sync's delete was refused ("not found"), and it reported the record as removed
    by a user first; no sync counted the deletion."""
    person = live_persons(pipedrive)[0]
    person["is_deleted"], person["update_time"] = True, NOW
    real_forget = Staging.forget

    def dies(self, entity, source_ids):
        raise _Killed

    monkeypatch.setattr(Staging, "forget", dies)
    with pytest.raises(_Killed):
        invoke(migrated, "sync", "--deletes", "delete")
    monkeypatch.setattr(Staging, "forget", real_forget)
    assert str(person["id"]) not in by_pipedrive_id(customermates, "contacts")  # removed before the sync died

    result = invoke(migrated, "sync", "--deletes", "delete", "--report-dir", str(tmp_path))

    assert result.exit_code == 0, result.output
    assert "deleted in Pipedrive 1 (delete)" in result.output
    assert [(i["source_id"], i["rule"]) for i in read_issues(tmp_path) if i["rule"].startswith("deleted_in_pipedrive_")] == [
        (str(person["id"]), "deleted_in_pipedrive_removed")
    ]
    with Staging(migrated["MIGRATE_STATE"]) as staging:
        assert staging.pending_batches() == []
