"""`migrate plan`: exact counts and field diffs against an empty, a migrated and an edited target."""

from __future__ import annotations

import json
import re
from collections import Counter

import httpx
from click.testing import CliRunner

from migrate.cli import cli
from migrate.staging import store
from tests.fakes.customermates import VALID_KEY
from tests.test_end_to_end import by_pipedrive_id, live, read, read_issues


def invoke(env, *args):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def load_plan(directory):
    return json.loads((directory / "plan.json").read_text())


def test_plan_against_an_empty_target_creates_everything(env, sample_dir, customermates, tmp_path):
    result = invoke(env, "plan", "--report-dir", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "p")
    persons = read(sample_dir, "persons")
    assert plan["summary"]["contacts"] == {
        "create": len(live(persons)), "update": 0, "unchanged": 0, "skip": len(persons) - len(live(persons)), "conflict": 0,
    }
    assert customermates.write_count() == 0 and customermates.columns() == []
    assert any(c.startswith("contacts: Pipedrive ID") for c in plan["schema"]["columns_to_create"])
    assert (tmp_path / "p" / "plan.md").read_text().startswith("# Migration plan")


def test_plan_after_a_full_migration_is_all_unchanged(migrated, customermates, tmp_path):
    result = invoke(migrated, "plan", "--report-dir", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "p")
    for entity, counts in plan["summary"].items():
        assert counts["create"] == counts["update"] == counts["conflict"] == 0, (entity, counts)
        assert counts["unchanged"] > 0
    assert plan["schema"]["columns_to_create"] == []


def test_plan_after_edits_on_both_sides_shows_updates_and_conflicts(migrated, pipedrive, customermates, tmp_path):
    persons = [p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("first_name")]
    source_only, target_only, both = persons[20], persons[21], persons[22]
    for person in (source_only, both):
        person["first_name"] = person["first_name"] + "-Src"
        person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()
    contacts = by_pipedrive_id(customermates, "contacts")
    for person in (target_only, both):
        record = contacts[str(person["id"])][0]
        response = httpx.put(
            f"{customermates.url}/api/v1/contacts/many",
            json={"contacts": [{"id": record["id"], "lastName": "Edited-In-Target"}]},
            headers={"x-api-key": VALID_KEY},
        )
        assert response.status_code == 200, response.text
    result = invoke(migrated, "plan", "--report-dir", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "p")
    assert plan["summary"]["contacts"]["update"] == 1
    assert plan["summary"]["contacts"]["conflict"] == 1
    records = {r["source_id"]: r for r in plan["records"]["contacts"]}
    update = records[str(source_only["id"])]
    assert update["action"] == "update"
    assert update["changes"] == [
        {"field": "firstName", "before": source_only["first_name"][: -len("-Src")], "after": source_only["first_name"]}
    ]
    conflict = records[str(both["id"])]
    assert conflict["action"] == "conflict"
    assert {c["field"] for c in conflict["changes"]} == {"firstName", "lastName"}
    assert conflict["target_edits"] == [{"field": "lastName", "before": both.get("last_name") or "", "after": "Edited-In-Target"}]
    kept = records[str(target_only["id"])]
    assert kept["action"] == "unchanged" and kept["target_edits"][0]["after"] == "Edited-In-Target"
    assert customermates.write_count() > 0  # only the first run wrote
    assert "conflict" in result.output


def test_coverage_accounts_for_every_pipedrive_field(env, sample_dir, tmp_path):
    assert invoke(env, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    rows = load_plan(tmp_path / "p")["coverage"]
    for meta, entity in (("personFields", "contacts"), ("organizationFields", "organizations"), ("productFields", "services"), ("dealFields", "deals"), ("activityFields", "tasks")):
        codes = {f["field_code"] for f in read(sample_dir, meta)}
        assert {r["code"] for r in rows if r["entity"] == entity} == codes
    unmapped = [r for r in rows if "no mapping declared" in r["goes_to"]]
    assert unmapped == [], unmapped
    email = next(r for r in rows if r["entity"] == "contacts" and r["pipedrive_field"] == "Email" and r["custom"] == "yes")
    assert "Email (Pipedrive field)" in email["goes_to"]



def test_the_coverage_table_lists_every_destination_of_a_field_and_no_lookup_as_one(env, tmp_path):
    """A declared column won over coverage.yaml: an owner lost its users, a product's prices the
    amount, and a deal's id, which only finds the deal's product lines, went to 'Products (Pipedrive)';
    a column of variants was named by its template ('Value'), not by the columns made ('Value (EUR)', …)."""
    assert invoke(env, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    goes_to = {(r["entity"], r["code"]): r["goes_to"] for r in load_plan(tmp_path / "p")["coverage"]}
    assert goes_to["deals", "id"] == "Pipedrive ID column"
    for entity in ("contacts", "organizations", "services", "deals", "tasks"):
        assert goes_to[entity, "owner_id"] == "userIds (matched by email), column 'Pipedrive owner' (plain)"
    assert goes_to["services", "prices"] == "amount (first non-zero price), column 'Prices' (plain)"
    assert goes_to["contacts", "phones"] == "column 'Phone' (phone), column 'Phone (as entered)' (plain)"
    values = goes_to["deals", "value"].split(", ")
    assert "column 'Value (EUR)' (currency)" in values and "column 'Value (other currency)' (plain)" in values
    assert "column 'Value' (currency)" not in values

def test_a_saved_plan_is_applied_only_if_nothing_changed(env, pipedrive, customermates, tmp_path):
    assert invoke(env, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted"))
    person["name"], person["first_name"], person["last_name"] = "Changed After-Planning", "Changed", "After-Planning"
    result = invoke(env, "run", "--plan", str(tmp_path / "p" / "plan.json"))
    assert result.exit_code == 1
    assert f"contacts {person['id']}" in result.output and "Make a new plan" in result.output
    assert customermates.write_count() == 0 and customermates.columns() == []  # refused before any write
    assert invoke(env, "plan", "--report-dir", str(tmp_path / "p2")).exit_code == 0
    result = invoke(env, "run", "--plan", str(tmp_path / "p2" / "plan.json"))
    assert result.exit_code == 0, result.output
    assert len(customermates.records("contacts")) == load_plan(tmp_path / "p2")["summary"]["contacts"]["create"]


def test_a_saved_plan_refused_for_a_customermates_change_names_the_records_created_edited_or_deleted_there(migrated, pipedrive, customermates, tmp_path):
    """The refusal said only that Customermates changed (the plan kept one digest of what it read there)."""
    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    contacts = by_pipedrive_id(customermates, "contacts")
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and str(p["id"]) in contacts)
    response = httpx.put(
        f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY},
        json={"contacts": [{"id": contacts[str(person["id"])][0]["id"], "lastName": "Edited-After-Planning"}]},
    )
    assert response.status_code == 200, response.text
    made = httpx.post(
        f"{customermates.url}/api/v1/organizations/many", headers={"x-api-key": VALID_KEY}, json={"organizations": [{"name": "Made by hand"}]}
    ).json()[0]

    result = invoke(migrated, "run", "--plan", str(tmp_path / "p" / "plan.json"))

    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "Customermates changed since the plan was made: 2 records" in said
    assert f"contacts {person['id']} edited" in said and f"organizations {made['id']} (Customermates id) created" in said


def _conflict(migrated, pipedrive, customermates):
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("first_name"))
    person["first_name"] += "-Src"
    person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    response = httpx.put(
        f"{customermates.url}/api/v1/contacts/many",
        json={"contacts": [{"id": record["id"], "lastName": "Edited-In-Target"}]},
        headers={"x-api-key": VALID_KEY},
    )
    assert response.status_code == 200
    return person


def test_conflicts_are_skipped_and_reported_by_default(migrated, pipedrive, customermates, tmp_path):
    person = _conflict(migrated, pipedrive, customermates)
    result = invoke(migrated, "run", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["entities"]["contacts"]["conflicts"] == 1
    assert any(i["rule"] == "conflict_skipped" and i["source_id"] == str(person["id"]) for i in read_issues(tmp_path / "r"))
    # the summary line said only "0 changes: 0 records created, 0 updated, N unchanged."
    assert "unchanged, 1 edited on both sides and left as they are (conflict_skipped)." in " ".join(result.output.split())
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert record["lastName"] == "Edited-In-Target" and not record["firstName"].endswith("-Src")


def test_source_wins_overwrites_a_conflict(migrated, pipedrive, customermates):
    person = _conflict(migrated, pipedrive, customermates)
    assert invoke(migrated, "run", "--on-conflict", "source-wins").exit_code == 0
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert record["firstName"].endswith("-Src") and record["lastName"] != "Edited-In-Target"


def test_target_wins_keeps_the_edit_and_stops_flagging_it(migrated, pipedrive, customermates, tmp_path):
    person = _conflict(migrated, pipedrive, customermates)
    assert invoke(migrated, "run", "--on-conflict", "target-wins").exit_code == 0
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert record["lastName"] == "Edited-In-Target"
    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    assert load_plan(tmp_path / "p")["summary"]["contacts"]["conflict"] == 0


def test_plan_and_rerun_read_the_target_a_batch_at_a_time(env, pipedrive, customermates, tmp_path, monkeypatch):
    """The plan and the load look the id map, the last written payloads and the target's records
    up per batch of records (the target read is kept in the state file, not in memory). Batches
    of 7 records, so relations and changes cross batch boundaries."""
    monkeypatch.setattr(store, "TARGET_BATCH", 7)
    assert invoke(env, "run").exit_code == 0
    organizations = {o["id"]: o["name"] for o in pipedrive.collections["organizations"] if not o.get("is_deleted")}
    mover = [p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("org_id") in organizations][30]
    old_org = mover["org_id"]
    new_org = next(o for o in sorted(organizations) if o != old_org)
    mover["org_id"] = new_org
    writes = customermates.write_count()

    result = invoke(env, "plan", "--report-dir", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "p")
    assert plan["summary"]["contacts"]["update"] == 1 and plan["summary"]["contacts"]["conflict"] == 0
    for entity, counts in plan["summary"].items():
        assert counts["create"] == 0, (entity, counts)
    moved = next(r for r in plan["records"]["contacts"] if r["action"] == "update")
    assert moved["source_id"] == str(mover["id"])
    assert moved["changes"] == [{"field": "organizations", "before": [organizations[old_org]], "after": [organizations[new_org]]}]
    assert plan["summary"]["contacts"]["unchanged"] == len(plan["records"]["contacts"]) - 1 - plan["summary"]["contacts"]["skip"]

    assert invoke(env, "run").exit_code == 0
    assert customermates.write_count() == writes + 1
    contact = by_pipedrive_id(customermates, "contacts")[str(mover["id"])][0]
    target_org = by_pipedrive_id(customermates, "organizations")[str(new_org)][0]
    assert [o["id"] for o in contact["organizations"]] == [target_org["id"]]


def test_a_file_that_is_not_a_plan_is_refused_with_its_name_before_anything_is_read(env, pipedrive, customermates, tmp_path):
    for name, text in (("broken.json", '{"summary": {"contacts": '), ("other.json", '{"records": {}}')):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        result = invoke(env, "run", "--plan", str(path))
        assert result.exit_code == 1, result.output
        assert f"{name} is not a plan.json made by `migrate plan`" in result.output.replace("\n", "")
    assert customermates.write_count() == 0 and pipedrive.requests == []


def _invite_an_owner(migrated, sample_dir, customermates):
    """After a migration that matched no Pipedrive user, have the owner of the most records join
    Customermates (the README's advice for `owner_unmatched`: invite them and run again)."""
    owners = Counter(str(p["owner_id"]) for p in live(read(sample_dir, "persons")) if p.get("owner_id"))
    user = next(u for u in read(sample_dir, "users") if str(u["id"]) == owners.most_common(1)[0][0])
    customermates.add_user({"email": user["email"], "firstName": "Invited", "lastName": "Owner"})
    return user


def test_after_an_owner_joins_customermates_the_plan_shows_the_updates_the_run_then_makes(migrated, sample_dir, customermates, tmp_path):
    """The run assigns the owner's records to the new user: the plan says so, field `users`, and
    does not take the records' missing owner for an edit made in Customermates."""
    user = _invite_an_owner(migrated, sample_dir, customermates)
    owned = {str(p["id"]) for p in live(read(sample_dir, "persons")) if str(p.get("owner_id")) == str(user["id"])}

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    plan = load_plan(tmp_path / "p")
    updates = {r["source_id"]: r for r in plan["records"]["contacts"] if r["action"] == "update"}
    assert set(updates) == owned
    assert all(r["changes"] == [{"field": "users", "before": [], "after": ["Invited Owner"]}] for r in updates.values())
    assert not [r for rs in plan["records"].values() for r in rs if r.get("target_edits")]

    _assert_the_run_does_as_planned(migrated, tmp_path, plan)


def test_a_record_edited_only_in_pipedrive_after_its_owner_joins_customermates_is_updated_not_a_conflict(
    migrated, sample_dir, pipedrive, customermates, tmp_path
):
    user = _invite_an_owner(migrated, sample_dir, customermates)
    person = next(p for p in live(pipedrive.collections["persons"]) if str(p.get("owner_id")) == str(user["id"]) and p.get("first_name"))
    person["first_name"] += "-Src"
    person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()

    result = invoke(migrated, "run", "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["entities"]["contacts"]["conflicts"] == 0
    assert not [i for i in read_issues(tmp_path / "r") if i["rule"] == "conflict_skipped"]
    record = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    assert record["firstName"] == person["first_name"] and [u["email"] for u in record["users"]] == [user["email"]]


def test_a_note_edited_with_another_field_of_its_record_is_planned_with_the_lines_it_changes(migrated, pipedrive, tmp_path):
    """The plan listed the other field alone, and the run rewrote the notes all the same."""
    note = next(n for n in pipedrive.collections["notes"] if n.get("active_flag") and n.get("person_id") and not n.get("deal_id"))
    old_text = note["content"]
    note["content"] = "<div>Rewritten in Pipedrive.</div>"
    note["update_time"] = "2026-11-28 12:00:00"
    person = next(p for p in pipedrive.collections["persons"] if p["id"] == note["person_id"])
    person["job_title"] = "Head of Rewrites"
    person["update_time"] = "2026-11-28 12:00:00"

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0

    plan = load_plan(tmp_path / "p")
    (record,) = [r for r in plan["records"]["contacts"] if r["source_id"] == str(person["id"])]
    assert record["action"] == "update"
    changes = {c["field"]: c for c in record["changes"]}
    assert changes["Job title"]["after"] == "Head of Rewrites"
    assert changes["notes"]["after"] == ["Rewritten in Pipedrive."]
    assert any(re.sub(r"<[^>]+>", "", old_text).strip()[:20] in line for line in changes["notes"]["before"])
    assert "Rewritten in Pipedrive." in (tmp_path / "p" / "plan.md").read_text()
    _assert_the_run_does_as_planned(migrated, tmp_path, plan, "--plan", str(tmp_path / "p" / "plan.json"))


def _assert_the_run_does_as_planned(env, tmp_path, plan, *args: str) -> dict:
    """Run (with `args`) and check it created, updated and left unchanged as many records as `plan` said; returns its report."""
    result = invoke(env, "run", *args, "--report-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {e: (row["created"], row["updated"], row["unchanged"]) for e, row in report["entities"].items()} == {
        e: (c["create"], c["update"], c["unchanged"]) for e, c in plan["summary"].items()
    }
    return report


def test_a_note_edited_in_pipedrive_and_an_edit_made_the_same_way_on_both_sides_are_planned_as_the_updates_the_run_makes(
    migrated, pipedrive, customermates, tmp_path
):
    """The run writes a record whose payload changed; the plan said unchanged when the change was a
    note's text (the target's form shows notes only as there or not) or Customermates already held it."""
    note = next(n for n in pipedrive.collections["notes"] if n.get("active_flag") and n.get("person_id") and not n.get("deal_id"))
    note["content"] = "<div>Rewritten in Pipedrive.</div>"
    note["update_time"] = "2026-11-28 12:00:00"
    both = next(p for p in live(pipedrive.collections["persons"]) if p.get("first_name") and p["id"] != note["person_id"])
    both["first_name"] += "-Both"
    both["name"] = f"{both['first_name']} {both.get('last_name') or ''}".strip()
    record = by_pipedrive_id(customermates, "contacts")[str(both["id"])][0]
    response = httpx.put(
        f"{customermates.url}/api/v1/contacts/many", json={"contacts": [{"id": record["id"], "firstName": both["first_name"]}]},
        headers={"x-api-key": VALID_KEY},
    )
    assert response.status_code == 200, response.text

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    plan = load_plan(tmp_path / "p")
    updates = {r["source_id"]: r for r in plan["records"]["contacts"] if r["action"] == "update"}
    assert set(updates) == {str(note["person_id"]), str(both["id"])}
    (notes,) = updates[str(note["person_id"])]["changes"]
    assert notes["field"] == "notes" and "Rewritten in Pipedrive." in notes["after"] and notes["before"]
    assert "already holds" in updates[str(both["id"])]["reason"]

    _assert_the_run_does_as_planned(migrated, tmp_path, plan, "--plan", str(tmp_path / "p" / "plan.json"))


def test_a_column_deleted_in_customermates_is_planned_as_the_updates_that_fill_it_again_and_the_run_makes_them(
    migrated, pipedrive, customermates, tmp_path
):
    """A user deletes the migrated "Job title" column; nothing changes in Pipedrive. The run makes the
    column again and updates every contact with a job title (its body names the new column); the
    plan said they were all unchanged."""
    old = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Job title")
    customermates._tool_delete_column(old)  # as the app's column settings do
    titled = {str(p["id"]): p["job_title"] for p in live(pipedrive.collections["persons"]) if p.get("job_title")}
    assert titled

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    plan = load_plan(tmp_path / "p")
    updates = {r["source_id"]: r for r in plan["records"]["contacts"] if r["action"] == "update"}
    assert set(updates) == set(titled)
    assert all(r["changes"] == [{"field": "Job title", "before": None, "after": titled[sid]}] for sid, r in updates.items())
    assert "contacts: Job title (plain)" in plan["schema"]["columns_to_create"]

    _assert_the_run_does_as_planned(migrated, tmp_path, plan)


def test_a_pipedrive_id_column_deleted_in_customermates_is_planned_as_updates_not_as_records_deleted_there(
    migrated, pipedrive, customermates, tmp_path
):
    """A user deletes the contacts' Pipedrive ID column. The plan read the contacts by it: it found none,
    and said every migrated contact was deleted in Customermates (skipped), while the run made the column
    again and updated each. It now reads them by creation and knows each by the state file's id map."""
    contacts = {r["id"] for r in customermates.records("contacts")}
    column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Pipedrive ID")
    customermates._tool_delete_column(column)

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    plan = load_plan(tmp_path / "p")
    assert plan["summary"]["contacts"]["update"] == len(contacts)
    assert not [r for r in plan["records"]["contacts"] if r["action"] == "skip" and "Customermates" in r.get("reason", "")]
    assert "contacts: Pipedrive ID (plain)" in plan["schema"]["columns_to_create"]

    _assert_the_run_does_as_planned(migrated, tmp_path, plan)
    assert {r["id"] for r in customermates.records("contacts")} == contacts


def test_the_plan_lists_the_owners_the_run_will_report_without_a_customermates_user(env, customermates, tmp_path):
    """owner_unmatched is a value not carried exactly: the plan (against a target, whose users it
    reads) left it out, and the run then reported it."""
    assert invoke(env, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    planned = load_plan(tmp_path / "p")["lossy"]["owner_unmatched"]

    assert invoke(env, "run", "--report-dir", str(tmp_path / "r")).exit_code == 0
    reported = [i for i in read_issues(tmp_path / "r") if i["rule"] == "owner_unmatched"]
    assert planned["count"] == len(reported) > 0
    assert planned["examples"] == reported[:5]
    assert "owner_unmatched" in (tmp_path / "p" / "plan.md").read_text()



def _owner_lines(output: str) -> list[str]:
    """The console's list of owners without a Customermates user: its title and one line per owner."""
    lines = output.splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith("Owners without a Customermates user")), None)
    if start is None:
        return []
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("  • "):
            break
        block.append(line)
    return block


def _issue_rules(output: str) -> set[str]:
    """The rules the console's table of values not carried exactly names."""
    return {line.split("│")[1].strip() for line in output.splitlines() if line.startswith("│") and "│" in line[1:]}


def test_the_dry_run_and_the_plan_show_the_owners_without_a_customermates_user_as_the_run_does(env, customermates, tmp_path):
    """A dry run and `migrate plan` read Customermates' users: their console names the owners whose
    records will land without an owner, as the run's does, where only report.json or plan.json did."""
    dry = invoke(env, "run", "--dry-run", "--report-dir", str(tmp_path / "dry"))
    assert dry.exit_code == 0, dry.output
    planned = invoke(env, "plan")
    assert planned.exit_code == 0, planned.output
    run = invoke(env, "run", "--report-dir", str(tmp_path / "run"))
    assert run.exit_code == 0, run.output

    owners = _owner_lines(run.output)
    assert len(owners) > 1
    assert _owner_lines(dry.output) == owners
    assert _owner_lines(planned.output) == owners
    assert "owner_unmatched" in _issue_rules(dry.output) and "owner_unmatched" in _issue_rules(run.output)
    dry_report = json.loads((tmp_path / "dry" / "report.json").read_text())
    run_report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert dry_report["unmatched_users"] == run_report["unmatched_users"]
    assert dry_report["issues"]["by_rule"]["owner_unmatched"] == run_report["issues"]["by_rule"]["owner_unmatched"]
    assert [i for i in read_issues(tmp_path / "dry") if i["rule"] == "owner_unmatched"] == [
        i for i in read_issues(tmp_path / "run") if i["rule"] == "owner_unmatched"
    ]


def test_a_dry_run_without_customermates_names_no_owner_unmatched(env, sample_dir, tmp_path):
    """Without Customermates settings the users there are unknown: no owner is said to be unmatched."""
    offline = {k: v for k, v in env.items() if not k.startswith("CUSTOMERMATES_")}
    result = invoke(offline, "run", "--dry-run", "--source", str(sample_dir), "--report-dir", str(tmp_path / "dry"))
    assert result.exit_code == 0, result.output
    assert _owner_lines(result.output) == [] and "owner_unmatched" not in _issue_rules(result.output)
    assert json.loads((tmp_path / "dry" / "report.json").read_text())["unmatched_users"] == []


def test_plan_md_shows_hostile_names_and_values_as_written_without_breaking_its_tables_or_lists(migrated, pipedrive, customermates, tmp_path):
    """plan.md took names and values raw: a record named `<script>…` reached a Markdown viewer as HTML, a
    field renamed `USt | IdNr` with a line break split the coverage table's row, a title's line break
    broke the list, and a backtick in a value closed its code span early."""
    email = "7e0a25e3ba4c25eb45bb84806b6215cfad0f42fd"  # the sample persons' varchar custom field "Email"
    next(f for f in pipedrive.collections["personFields"] if f["field_code"] == email)["field_name"] = "USt | IdNr\n<b>neu</b>"
    person = next(p for p in live(pipedrive.collections["persons"]) if p.get("first_name"))
    person["first_name"], person["last_name"] = "<script>alert(5)</script>", "Ende\n- injected | cell"
    person["name"] = f"{person['first_name']} {person['last_name']}"
    person["custom_fields"] = {**(person.get("custom_fields") or {}), email: "CTO | `code` **bold**"}
    person["update_time"] = "2026-11-28T12:00:00Z"

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    markdown = (tmp_path / "p" / "plan.md").read_text()
    outside_code = re.sub(r"(`+).+?\1", "", markdown)  # a code span shows its text as it is
    assert "<script>" not in outside_code and "<b>" not in outside_code
    [line] = [x for x in markdown.splitlines() if f"(Pipedrive {person['id']})" in x]
    assert line.startswith("- **update** \\<script\\>alert(5)\\</script\\> Ende - injected \\| cell")
    rows = [x for x in markdown.splitlines() if x.startswith("| ")]
    assert rows and {len(re.findall(r"(?<!\\)\|", row)) for row in rows} <= {6, 7}  # the coverage table's 5 cells, the summary's 6
    assert any(r.startswith("| contacts | USt \\| IdNr \\<b\\>neu\\</b\\> |") for r in rows)
    assert "``CTO | `code` **bold**``" in markdown


def test_an_unmatched_owners_issue_says_why_no_customermates_user_matches_them():
    """A user without an email, or no user at all, was said to have no Customermates user "with that email"."""
    from migrate.customermates.load import owner_unmatched_issue, unmatched_owners

    users = {"1": {"id": 1, "name": "Ada", "email": "ada@example.com"}, "2": {"id": 2, "name": "Bo", "email": ""}}
    owners = unmatched_owners(users, {"1": 3, "2": 2, "99": 1}, matched=set())
    details = {owner["source_id"]: owner_unmatched_issue(owner)[4] for owner in owners}
    assert details["1"].startswith("Ada <ada@example.com> owns 3 records but has no Customermates user with that email;")
    assert details["2"].startswith("Bo owns 2 records but has no email in Pipedrive to match a Customermates user by;")
    assert details["99"].startswith("Pipedrive user #99 owns 1 record but is not among Pipedrive's users (deleted there)")


def test_a_users_copy_read_first_is_not_taken_for_the_migrated_record(migrated, pipedrive, customermates, tmp_path):
    """Two records carry one Pipedrive ID: the migrated one and a user's copy of it, which the
    server happened to list first. The plan compared the copy, so the copy's differences counted
    as edits of the migrated record, and a change in Pipedrive made it a conflict the run skipped:
    the migrated record, never edited, was left out of date."""
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("first_name"))
    original = by_pipedrive_id(customermates, "contacts")[str(person["id"])][0]
    copy = {**original, "lastName": "Copy"}
    made = httpx.post(
        f"{customermates.url}/api/v1/contacts/many", headers={"x-api-key": VALID_KEY},
        json={"contacts": [{k: copy[k] for k in ("firstName", "lastName", "emails")} | {"customFieldValues": [
            {"columnId": c["columnId"], "value": c["value"]} for c in original["customFieldValues"]]}]},
    ).json()[0]
    content = customermates.content()
    contacts = content["data"]["contact"]
    content["data"]["contact"] = {made["id"]: contacts[made["id"]], **contacts}  # the copy comes first
    customermates.restore(content)
    person["first_name"] += "-Src"
    person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    planned = {r["source_id"]: r for r in load_plan(tmp_path / "p")["records"]["contacts"]}[str(person["id"])]
    assert planned["action"] == "update" and "target_edits" not in planned
    assert [c["field"] for c in planned["changes"]] == ["firstName"]

    result = invoke(migrated, "run")

    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in by_pipedrive_id(customermates, "contacts")[str(person["id"])]}
    assert records[original["id"]]["firstName"] == person["first_name"]
    assert records[made["id"]]["lastName"] == "Copy"


def test_a_link_to_a_record_deleted_in_customermates_is_not_planned_as_written(migrated, pipedrive, customermates, tmp_path):
    """A contact's organization was deleted in Customermates, and the contact's name then changed in
    Pipedrive. The run writes the new name and leaves the link out (link_target_deleted_in_target),
    yet the plan listed the organization among the changes, as if the run linked it again."""
    organizations = {o["id"] for o in pipedrive.collections["organizations"] if not o.get("is_deleted")}
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("first_name") and p.get("org_id") in organizations)
    [organization] = by_pipedrive_id(customermates, "organizations")[str(person["org_id"])]
    response = httpx.request(
        "DELETE", f"{customermates.url}/api/v1/organizations/many", json={"ids": [organization["id"]]}, headers={"x-api-key": VALID_KEY}
    )
    assert response.status_code == 200, response.text
    person["first_name"] += "-Src"
    person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()

    assert invoke(migrated, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    planned = {r["source_id"]: r for r in load_plan(tmp_path / "p")["records"]["contacts"]}[str(person["id"])]
    assert planned["action"] == "update"
    assert [c["field"] for c in planned["changes"]] == ["firstName"]

    assert invoke(migrated, "run").exit_code == 0
    [contact] = by_pipedrive_id(customermates, "contacts")[str(person["id"])]
    assert contact["firstName"] == person["first_name"] and contact["organizations"] == []


def test_records_linking_one_the_run_creates_again_are_planned_as_the_updates_it_makes(migrated, pipedrive, customermates, tmp_path):
    """An organization was deleted in Customermates; with --on-target-deleted recreate the run creates
    it again and updates every record linking it, to link the new one. The plan called those records
    unchanged (none changed in Pipedrive), and the run then updated them."""
    organizations = {o["id"] for o in pipedrive.collections["organizations"] if not o.get("is_deleted")}
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("org_id") in organizations)
    [organization] = by_pipedrive_id(customermates, "organizations")[str(person["org_id"])]
    response = httpx.request(
        "DELETE", f"{customermates.url}/api/v1/organizations/many", json={"ids": [organization["id"]]}, headers={"x-api-key": VALID_KEY}
    )
    assert response.status_code == 200, response.text

    assert invoke(migrated, "plan", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "p")).exit_code == 0
    plan = load_plan(tmp_path / "p")
    planned = {r["source_id"]: r for r in plan["records"]["contacts"]}[str(person["id"])]
    assert planned["action"] == "update"
    assert planned["changes"] == [{"field": "organizations", "before": [], "after": [organization["name"]]}]

    assert invoke(migrated, "run", "--on-target-deleted", "recreate", "--report-dir", str(tmp_path / "r")).exit_code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {e: (c["create"], c["update"]) for e, c in plan["summary"].items()} == {
        e: (row["created"], row["updated"]) for e, row in report["entities"].items()
    }
    assert report["entities"]["contacts"]["updated"] > 0
