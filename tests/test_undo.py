"""`migrate undo`: delete what one run created, keep what users edited, and let a later run recreate it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from migrate.cli import cli
from migrate.customermates import undo as undo_module
from migrate.customermates.client import UncertainWriteError
from migrate.customermates.columns import settle_pending_columns
from migrate.customermates.mcp import McpClient
from migrate.staging.store import Staging
from tests.fakes.customermates import VALID_KEY, FakeCustomermates

ENTITIES = ("organizations", "contacts", "services", "deals", "tasks")
# The fake's clock runs a little ahead during bulk writes (strictly increasing milliseconds), so
# the tests keep a small slack and wait it out before editing, instead of the 5 s default.
EDIT_SLACK = timedelta(seconds=1)


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def api(customermates: FakeCustomermates, method: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.request(method, f"{customermates.url}/api/v1{path}", json=body, headers={"x-api-key": VALID_KEY})
    assert response.status_code in (200, 201), response.text
    return response.json()


def counts(customermates: FakeCustomermates) -> dict[str, int]:
    return {e: len(customermates.records(e)) for e in ENTITIES}


def state(env: dict[str, str], sql: str, params: list[Any] | None = None) -> list[tuple]:
    con = duckdb.connect(env["MIGRATE_STATE"])
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def table_rows(output: str) -> dict[str, list[str]]:
    """The body rows of the rich table on screen: entity → its other cells."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) > 1 and cells[0] in ENTITIES:
            rows[cells[0]] = cells[1:]
    return rows


def test_undo_dry_run_lists_everything_and_deletes_nothing(migrated, customermates, tmp_path):
    before = counts(customermates)
    writes = customermates.write_count()

    result = invoke(["undo", "--report-dir", str(tmp_path / "out")], migrated)

    assert result.exit_code == 0, result.output
    assert "Undo plan (dry run)" in result.output and "nothing was deleted" in result.output
    rows = table_rows(result.output)
    for entity, n in before.items():
        assert rows[entity][:4] == [str(n), str(n), "0", "0"], entity  # created by the run, would delete, kept, gone
    listing = json.loads((tmp_path / "out" / "undo.json").read_text())
    assert listing["dry_run"] and len(listing["records"]) == sum(before.values())
    assert {r["action"] for r in listing["records"]} == {"would delete"}
    assert {r["target_id"] for r in listing["records"]} == {r["id"] for e in ENTITIES for r in customermates.records(e)}
    assert counts(customermates) == before
    assert customermates.write_count() == writes
    assert state(migrated, "SELECT count(*) FROM undone") == [(0,)]


def test_undo_yes_deletes_exactly_the_runs_records_and_a_later_run_recreates_them(env, sample_dir, customermates):
    source = ["--source", str(sample_dir)]
    persons_file = sample_dir / "persons.jsonl"
    lines = persons_file.read_text(encoding="utf-8").splitlines(keepends=True)
    live = [line for line in lines if line.strip() and not json.loads(line).get("is_deleted")]
    late = {str(json.loads(line)["id"]) for line in live[-5:]}
    persons_file.write_text("".join(line for line in lines if line not in live[-5:]), encoding="utf-8")
    assert invoke(["run", *source], env).exit_code == 0
    first = {e: {r["id"] for r in customermates.records(e)} for e in ENTITIES}
    persons_file.write_text("".join(lines), encoding="utf-8")
    assert invoke(["run", *source], env).exit_code == 0
    second_run = state(env, "SELECT run_id FROM runs WHERE command = 'run' ORDER BY started_at DESC LIMIT 1")[0][0]
    new_contacts = {r["id"] for r in customermates.records("contacts")} - first["contacts"]
    assert len(new_contacts) == 5
    # records linked to the late persons were updated by the second run, but it did not create them
    updated = state(env, "SELECT count(*) FROM id_map WHERE run_id = ? AND created_by_run <> run_id", [second_run])[0][0]
    assert updated > 0

    result = invoke(["undo", "--yes"], env)

    assert result.exit_code == 0, result.output
    assert second_run in result.output
    assert {e: {r["id"] for r in customermates.records(e)} for e in ENTITIES} == first
    undone = state(env, "SELECT entity, source_id, target_id, run_id, outcome FROM undone")
    assert {(e, s, r, o) for e, s, _, r, o in undone} == {("contacts", sid, second_run, "deleted") for sid in late}
    assert {t for *_, t, _, _ in undone} == new_contacts
    assert state(env, "SELECT count(*) FROM id_map WHERE entity = 'contacts' AND source_id IN (SELECT source_id FROM undone)") == [(0,)]

    assert invoke(["run", *source], env).exit_code == 0
    assert len(customermates.records("contacts")) == len(first["contacts"]) + 5
    assert invoke(["verify"], env).exit_code == 0


def test_an_edited_record_is_kept_without_force_with_its_columns_and_deleted_with_it(migrated, customermates, monkeypatch):
    monkeypatch.setattr(undo_module, "EDIT_SLACK", EDIT_SLACK)  # the edit below comes right after the run
    time.sleep(EDIT_SLACK.total_seconds() + 0.1)
    contact = customermates.records("contacts")[0]
    api(customermates, "PUT", "/contacts/many", {"contacts": [{"id": contact["id"], "firstName": "Edited"}]})

    result = invoke(["undo", "--yes", "--columns"], migrated)

    assert result.exit_code == 0, result.output
    assert "edited in Customermates since migrated" in result.output and contact["id"] in result.output
    assert [r["id"] for r in customermates.records("contacts")] == [contact["id"]]
    assert all(not customermates.records(e) for e in ENTITIES if e != "contacts")
    assert {c["entityType"] for c in customermates.columns()} == {"contact"}  # still used by the kept record

    result = invoke(["undo", "--yes", "--force", "--columns"], migrated)

    assert result.exit_code == 0, result.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    assert customermates.columns() == []
    assert state(migrated, "SELECT count(*) FROM id_map") == [(0,)]


def test_undo_columns_removes_the_runs_columns_in_reverse_dependency_order(migrated, sample_dir, customermates):
    assert customermates.columns()
    customermates.clear_requests()

    result = invoke(["undo", "--yes", "--columns"], migrated)

    assert result.exit_code == 0, result.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    assert customermates.columns() == []
    assert state(migrated, "SELECT count(*) FROM column_map") == [(0,)]
    deletes = [r.path.split("/")[3] for r in customermates.requests if r.method == "DELETE"]
    assert list(dict.fromkeys(deletes)) == ["tasks", "deals", "services", "contacts", "organizations"]

    assert invoke(["run", "--source", str(sample_dir)], migrated).exit_code == 0
    assert all(counts(customermates).values())
    assert invoke(["verify"], migrated).exit_code == 0


def test_records_already_deleted_by_a_user_are_reported_not_fatal(migrated, customermates, monkeypatch):
    gone_before = customermates.records("deals")[0]["id"]
    api(customermates, "DELETE", "/deals/many", {"ids": [gone_before]})
    real_page_through = undo_module._page_through
    raced: list[str] = []

    def page_through_then_a_user_deletes_one(client, entity, id_column):
        records = list(real_page_through(client, entity, id_column))
        if entity == "contacts":  # deleted between the listing and the delete: the batch gets a 400 naming it
            raced.append(records[0]["id"])
            api(customermates, "DELETE", "/contacts/many", {"ids": raced})
        return records

    monkeypatch.setattr(undo_module, "_page_through", page_through_then_a_user_deletes_one)

    result = invoke(["undo", "--yes"], migrated)

    assert result.exit_code == 0, result.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    outcomes = dict(state(migrated, "SELECT target_id, outcome FROM undone"))
    assert outcomes[gone_before] == "already_gone"
    assert outcomes[raced[0]] == "already_gone"
    assert sum(1 for o in outcomes.values() if o == "deleted") == len(outcomes) - 2
    assert state(migrated, "SELECT count(*) FROM id_map") == [(0,)]


def test_undo_deletes_fifty_records_a_request_and_sends_one_that_timed_out_again_in_halves(migrated, customermates):
    """The contract (§ Observed): a lone batch of 100 contacts took 6.7 s once, and the server's transaction
    limit failed it with a 500 that wrote nothing. Undo deleted 100 a request and never fewer: on a server
    that slow, every undo failed so."""
    customermates.latency_per_item, customermates.transaction_timeout = 0.002, 0.075  # 25 records take 0.05 s, 50 take 0.1 s
    customermates.clear_requests()

    result = invoke(["undo", "--yes"], migrated)

    assert result.exit_code == 0, result.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    deletes = [(r.path.split("/")[3], r.item_count, r.status) for r in customermates.requests if r.method == "DELETE"]
    assert max(n for _, n, _ in deletes) == 50
    contacts = [(n, status) for entity, n, status in deletes if entity == "contacts"]
    assert contacts[:3] == [(50, 500), (25, 200), (25, 200)] and all(n <= 25 and status == 200 for n, status in contacts[3:])
    assert {outcome for _, outcome in state(migrated, "SELECT target_id, outcome FROM undone")} == {"deleted"}


def test_an_undo_delete_whose_answer_was_lost_is_sent_again_and_its_records_counted_deleted(migrated, customermates):
    """The resent request finds the records gone: the lost one deleted them, not a user. The undo ended
    at the lost answer, and its rerun counted them as already gone."""
    customermates.drop_after_apply(1, path_contains="/tasks/many")

    result = invoke(["undo", "--yes"], migrated)

    assert result.exit_code == 0, result.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    assert {outcome for _, outcome in state(migrated, "SELECT target_id, outcome FROM undone")} == {"deleted"}


def test_a_record_a_user_deletes_while_the_undo_lists_the_target_makes_it_miss_none(migrated, customermates):
    """The listing pages by number: a contact of the first page deleted once it was read moves the
    rest a place back, so the second page starts one contact late. That contact is looked up by its
    Pipedrive ID before it counts as already gone, and is deleted with the others."""
    assert len(customermates.records("contacts")) > 100  # two pages
    raced: list[str] = []

    def delete_after_the_first_page(entity, body):
        if entity == "contact" and body["pagination"] == {"page": 1, "pageSize": 100} and not raced:
            column = next(c["id"] for c in customermates.columns("contact") if c["label"] == "Pipedrive ID")
            pid = lambda r: next(v["value"] for v in r["customFieldValues"] if v["columnId"] == column)  # noqa: E731
            raced.append(min(customermates.records("contacts"), key=pid)["id"])  # the first of the first page
            customermates.delete_records("contacts", raced)

    customermates.after_search = delete_after_the_first_page
    result = invoke(["undo", "--yes"], migrated)
    assert result.exit_code == 0, result.output
    assert raced and counts(customermates) == dict.fromkeys(ENTITIES, 0)
    outcomes = dict(state(migrated, "SELECT target_id, outcome FROM undone"))
    assert [t for t, o in outcomes.items() if o == "already_gone"] == raced  # the one the user deleted, none other


def test_undo_plans_and_reports_in_batches_from_the_state_file_in_the_order_of_a_whole_listing(migrated, customermates, monkeypatch, tmp_path):
    """The target is read into the state file a few records at a time and the plan read back in
    small batches, yet undo.json lists every record as before: per entity (tasks first) those to
    delete, then those kept as edited, then those already gone, each group by source id as text."""
    monkeypatch.setattr(undo_module, "EDIT_SLACK", EDIT_SLACK)
    monkeypatch.setattr(undo_module, "READ_BATCH", 3)
    undo_records = Staging.undo_records
    monkeypatch.setattr(Staging, "undo_records", lambda self, *args, **kwargs: undo_records(self, *args, **{**kwargs, "batch_size": 4}))
    time.sleep(EDIT_SLACK.total_seconds() + 0.1)
    edited, gone = customermates.records("contacts")[:2]
    api(customermates, "PUT", "/contacts/many", {"contacts": [{"id": edited["id"], "firstName": "Edited"}]})
    api(customermates, "DELETE", "/contacts/many", {"ids": [gone["id"]]})
    ids = {e: {r["id"] for r in customermates.records(e)} for e in ENTITIES}
    mapped = dict(state(migrated, "SELECT target_id, source_id FROM id_map WHERE entity = 'contacts'"))

    result = invoke(["undo", "--report-dir", str(tmp_path / "plan")], migrated)

    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "plan" / "undo.json").read_text())["records"]
    assert [r["entity"] for r in records] == sorted((r["entity"] for r in records), key=undo_module.UNDO_ORDER.index)
    contacts = [r for r in records if r["entity"] == "contacts"]
    would = sorted(s for t, s in mapped.items() if t not in (edited["id"], gone["id"]))
    assert [(r["source_id"], r["action"]) for r in contacts] == [
        *((s, "would delete") for s in would), (mapped[edited["id"]], "kept (edited)"), (mapped[gone["id"]], "already gone")
    ]
    assert set(contacts[-2]) == {"entity", "source_id", "target_id", "updated_at", "written_at", "action"}
    for entity in ENTITIES:
        listed = [r for r in records if r["entity"] == entity]
        assert [r["source_id"] for r in listed if r["action"] == "would delete"] == sorted(r["source_id"] for r in listed if r["action"] == "would delete")
        assert {r["target_id"] for r in listed} == ids[entity] | ({gone["id"]} if entity == "contacts" else set())

    result = invoke(["undo", "--yes", "--report-dir", str(tmp_path / "done")], migrated)

    assert result.exit_code == 0, result.output
    done = json.loads((tmp_path / "done" / "undo.json").read_text())
    assert [(r["source_id"], r["action"]) for r in done["records"] if r["entity"] == "contacts"] == [
        *((s, "deleted") for s in would), (mapped[edited["id"]], "kept (edited)"), (mapped[gone["id"]], "already gone")
    ]
    assert done["entities"]["contacts"] == {
        "created_by_run": len(mapped), "delete": len(would), "kept_edited": 1, "already_gone": 1, "deleted": len(would), "failed": 0
    }
    assert [r["id"] for r in customermates.records("contacts")] == [edited["id"]]


def _kill_at_the_second_contacts_commit(monkeypatch) -> Callable[..., Any]:
    """The next run dies (SIGKILL) after the server wrote its second contacts batch, before its ids are
    stored; returns the real `commit_batch`, to put back."""
    from migrate.errors import Interrupted

    real_commit = Staging.commit_batch
    seen: list[str] = []

    def killed(self, batch_id, entity, written, run_id, *stored, **options):
        if entity == "contacts" and written:
            seen.append(batch_id)
            if len(seen) == 2:
                raise Interrupted("SIGKILL", 9)
        return real_commit(self, batch_id, entity, written, run_id, *stored, **options)

    monkeypatch.setattr(Staging, "commit_batch", killed)
    return real_commit


def test_undo_after_a_run_killed_between_a_write_and_its_commit_deletes_that_batch_too(env, sample_dir, customermates, monkeypatch):
    real_commit = _kill_at_the_second_contacts_commit(monkeypatch)
    result = CliRunner().invoke(cli, ["run", "--source", str(sample_dir)], env=env)
    assert result.exit_code == 137, result.output
    monkeypatch.setattr(Staging, "commit_batch", real_commit)
    assert state(env, "SELECT count(*) FROM pending_batches") == [(1,)]
    in_target = len(customermates.records("contacts"))
    assert in_target > state(env, "SELECT count(*) FROM id_map WHERE entity = 'contacts'")[0][0]

    listing = invoke(["undo"], env)
    assert listing.exit_code == 0, listing.output
    assert table_rows(listing.output)["contacts"][0] == str(in_target)  # the listing names every contact the run created
    result = invoke(["undo", "--yes"], env)
    assert result.exit_code == 0, result.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    assert state(env, "SELECT count(*) FROM pending_batches") == [(0,)]


def test_records_a_resumed_run_adopts_from_a_killed_runs_batch_are_reported_and_undone_as_the_killed_runs(
    env, sample_dir, customermates, monkeypatch, tmp_path
):
    """The killed run's last contacts batch was written but its ids not stored. The resuming run's
    report counted the records it found by Pipedrive ID as created by it, yet undo of that run
    listed none of them: the id map keeps them as the killed run's, which sent them."""
    real_commit = _kill_at_the_second_contacts_commit(monkeypatch)
    assert CliRunner().invoke(cli, ["run", "--source", str(sample_dir)], env=env).exit_code == 137
    monkeypatch.setattr(Staging, "commit_batch", real_commit)
    [(pending,)] = state(env, "SELECT json_array_length(source_ids) FROM pending_batches")

    resumed = invoke(["run", "--source", str(sample_dir), "--report-dir", str(tmp_path / "r")], env)

    assert resumed.exit_code == 0, resumed.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    contacts = report["entities"]["contacts"]
    assert contacts["adopted_after_uncertain_write"] == pending
    assert contacts["created"] + contacts["updated"] + contacts["unchanged"] == contacts["to_migrate"]
    in_map = dict(state(env, "SELECT coalesce(created_by_run, run_id), count(*) FROM id_map WHERE entity = 'contacts' GROUP BY 1"))
    killed_run = state(env, "SELECT run_id FROM runs WHERE command = 'run' ORDER BY started_at LIMIT 1")[0][0]
    assert in_map[killed_run] > pending  # its first batch and the one it died in

    listing = invoke(["undo"], env)  # the resuming run: exactly what its report says it created
    assert {e: int(row[0]) for e, row in table_rows(listing.output).items()} == {e: row["created"] for e, row in report["entities"].items()}
    for _ in range(2):  # then the killed run, its adopted batch included: nothing left behind
        assert invoke(["undo", "--yes"], env).exit_code == 0
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)


@pytest.mark.parametrize("settled_by", ["undo", "run"])
def test_a_record_a_user_edits_before_its_uncertain_batch_is_settled_is_kept_by_undo(env, sample_dir, customermates, monkeypatch, settled_by):
    """The killed run's last contacts batch was written, its ids not stored, and a user edited one of its
    contacts before the batch was settled (by the undo itself, or by a resuming run). The adoption
    stamped the settling as our write, later than the edit, and undo deleted the edited contact."""
    monkeypatch.setattr(undo_module, "EDIT_SLACK", EDIT_SLACK)
    real_commit = _kill_at_the_second_contacts_commit(monkeypatch)
    assert CliRunner().invoke(cli, ["run", "--source", str(sample_dir)], env=env).exit_code == 137
    monkeypatch.setattr(Staging, "commit_batch", real_commit)
    killed_run = state(env, "SELECT run_id FROM runs ORDER BY started_at LIMIT 1")[0][0]
    mapped = {t for (t,) in state(env, "SELECT target_id FROM id_map WHERE entity = 'contacts'")}
    edited = next(r["id"] for r in customermates.records("contacts") if r["id"] not in mapped)  # one of the pending batch
    time.sleep(EDIT_SLACK.total_seconds() + 0.1)
    customermates.edit_records("contacts", [{"id": edited, "firstName": "Edited"}])
    if settled_by == "run":
        assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0

    result = invoke(["undo", "--run", killed_run, "--yes"], env)

    assert result.exit_code == 0, result.output
    assert table_rows(result.output)["contacts"][2] == "1"  # kept (edited)
    assert [(r["id"], r["firstName"]) for r in customermates.records("contacts") if r["id"] in mapped or r["id"] == edited] == [(edited, "Edited")]


def test_undo_columns_of_each_run_removes_the_columns_it_made_replaced_ones_too(migrated, pipedrive, customermates, tmp_path):
    """A second run makes "Phone" again beside the one a user made take one value, and "Job title"
    again after a user deleted it; a sync makes "Vertragsbeginn" again for a field turned text.
    Undo of the second run and of the sync listed none of those (the state file gave them to the
    first run), and undo of the first run left the two replaced columns, no longer known, behind."""
    def ids(entity, label):
        return [c["id"] for c in customermates.columns(entity) if c["label"] == label]

    [phone], [job], [begin] = ids("contact", "Phone"), ids("contact", "Job title"), ids("deal", "Vertragsbeginn")
    customermates._columns[phone]["options"]["allowMultiple"] = False  # as the app's column settings do
    customermates._tool_delete_column(job)
    assert invoke(["run"], migrated).exit_code == 0
    next(f for f in pipedrive.collections["dealFields"] if f["field_name"] == "Vertragsbeginn")["field_type"] = "varchar"
    assert invoke(["sync"], migrated).exit_code == 0
    first, second, third = (r for (r,) in state(migrated, "SELECT run_id FROM runs ORDER BY started_at"))
    [new_phone] = set(ids("contact", "Phone")) - {phone}
    [new_job] = ids("contact", "Job title")
    [new_begin] = set(ids("deal", "Vertragsbeginn")) - {begin}

    def listed(run):
        assert invoke(["undo", "--run", run, "--columns", "--report-dir", str(tmp_path / run)], migrated).exit_code == 0
        return {c["id"] for c in json.loads((tmp_path / run / "undo.json").read_text())["columns"]}

    assert listed(second) == {new_phone, new_job}
    assert listed(third) == {new_begin}
    assert {phone, begin} <= listed(first) and not {new_phone, new_job, new_begin} & listed(first)

    result = invoke(["undo", "--run", first, "--yes", "--force", "--columns"], migrated)

    assert result.exit_code == 0, result.output
    assert {c["id"] for c in customermates.columns()} == {new_phone, new_job, new_begin}
    for run in (second, third):
        assert invoke(["undo", "--run", run, "--yes", "--columns"], migrated).exit_code == 0
    assert customermates.columns() == []


def _lose_the_answer_to_the_first_column_create(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first column a run makes is made in Customermates, and its answer is lost on the way back."""
    real_create = McpClient.create_custom_column

    def create_then_lose_the_answer(self, *args, **kwargs):
        real_create(self, *args, **kwargs)
        monkeypatch.setattr(McpClient, "create_custom_column", real_create)
        raise UncertainWriteError("timed out waiting for an answer")

    monkeypatch.setattr(McpClient, "create_custom_column", create_then_lose_the_answer)


def test_undo_columns_of_a_run_that_died_making_a_column_deletes_that_column(env, sample_dir, customermates, monkeypatch):
    _lose_the_answer_to_the_first_column_create(monkeypatch)
    failed = invoke(["run", "--source", str(sample_dir)], env)
    assert failed.exit_code != 0 and "Run again" in failed.output
    assert len(customermates.columns()) == 1  # the first column the run made, its answer lost

    result = invoke(["undo", "--yes", "--columns"], env)

    assert result.exit_code == 0, result.output
    assert customermates.columns() == []
    assert state(env, "SELECT count(*) FROM column_map") == [(0,)]


def test_a_column_whose_answer_was_lost_belongs_to_the_run_that_made_it_and_its_undo_deletes_it(env, sample_dir, customermates, monkeypatch):
    _lose_the_answer_to_the_first_column_create(monkeypatch)
    assert invoke(["run", "--source", str(sample_dir)], env).exit_code != 0
    died = state(env, "SELECT run_id FROM runs WHERE command = 'run'")[0][0]
    (lost,) = customermates.columns()

    assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0

    same = [c["id"] for c in customermates.columns() if (c["label"], c["entityType"]) == (lost["label"], lost["entityType"])]
    assert same == [lost["id"]]  # found, not made twice
    assert state(env, "SELECT DISTINCT created_by_run FROM column_map WHERE column_id = ?", [lost["id"]]) == [(died,)]
    assert invoke(["undo", "--yes", "--columns"], env).exit_code == 0  # the run that created the records, and the rest of the columns
    assert [c["id"] for c in customermates.columns()] == [lost["id"]]
    result = invoke(["undo", "--yes", "--columns"], env)  # then the run that died
    assert result.exit_code == 0 and died in result.output, result.output
    assert customermates.columns() == []


def test_a_column_whose_create_was_lost_is_not_found_in_a_users_column_of_its_label_and_type(env, sample_dir, customermates, monkeypatch):
    """Labels are not unique (contract §6): a user's one-number "Phone" column, there before the run,
    was taken for the migration's several-numbers one whose create never reached the server, then
    set aside as replaced, and undo --columns of the run that died deleted it with its values."""
    with McpClient(customermates.url, VALID_KEY) as mcp:
        users = mcp.create_custom_column("contact", "Phone", "phone", allow_multiple=False)
    real_create = McpClient.create_custom_column

    def lose_the_phone_column_create(self, entity_type, label, column_type, **kwargs):
        if (entity_type, label, column_type) == ("contact", "Phone", "phone"):
            raise UncertainWriteError("connection reset before the request was sent")
        return real_create(self, entity_type, label, column_type, **kwargs)

    monkeypatch.setattr(McpClient, "create_custom_column", lose_the_phone_column_create)
    assert invoke(["run", "--source", str(sample_dir)], env).exit_code != 0
    died = state(env, "SELECT run_id FROM runs WHERE command = 'run'")[0][0]
    monkeypatch.setattr(McpClient, "create_custom_column", real_create)

    assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0

    phones = {c["id"]: c for c in customermates.columns("contact") if c["type"] == "phone" and c["label"].startswith("Phone")}
    assert phones[users]["label"] == "Phone" and not phones[users]["options"].get("allowMultiple")
    ours = state(env, "SELECT column_id, created_by_run FROM column_map WHERE entity = 'contacts' AND label = 'Phone'")
    assert len(ours) == 1 and ours[0][0] != users and ours[0][1] != died
    assert phones[ours[0][0]]["options"]["allowMultiple"]
    assert state(env, "SELECT count(*) FROM replaced_columns") == [(0,)]
    assert invoke(["undo", "--yes", "--columns"], env).exit_code == 0
    assert invoke(["undo", "--yes", "--columns", "--run", died, "--force"], env).exit_code in (0, 2)
    assert [c["id"] for c in customermates.columns("contact")] == [users]


def test_records_a_sync_marked_deleted_in_pipedrive_are_not_taken_for_edits_made_in_customermates(migrated, pipedrive, customermates, monkeypatch):
    """The mark is this tool's write: undo kept the marked records as edited there (without --force)."""
    monkeypatch.setattr(undo_module, "EDIT_SLACK", EDIT_SLACK)
    run_id = state(migrated, "SELECT run_id FROM runs WHERE command = 'run'")[0][0]
    time.sleep(EDIT_SLACK.total_seconds() + 0.1)
    for person in [p for p in pipedrive.collections["persons"] if not p.get("is_deleted")][:2]:
        person["is_deleted"], person["update_time"] = True, "2026-11-28T12:00:00Z"
    result = invoke(["sync"], migrated)
    assert result.exit_code == 0 and "deleted in Pipedrive 2 (mark)" in result.output, result.output

    result = invoke(["undo", "--run", run_id], migrated)

    assert result.exit_code == 0, result.output
    contacts = len(customermates.records("contacts"))
    assert table_rows(result.output)["contacts"][:3] == [str(contacts), str(contacts), "0"]  # created, would delete, kept


def test_undo_columns_removes_the_deletion_mark_column_a_sync_made_once_the_records_are_gone(migrated, pipedrive, customermates):
    """The mark column was made outside the state file: no undo removed it."""
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted"))
    person["is_deleted"], person["update_time"] = True, "2026-11-28T12:00:00Z"
    assert invoke(["sync"], migrated).exit_code == 0
    assert [c["label"] for c in customermates.columns("contact") if c["label"] == "Deleted in Pipedrive"]

    first = invoke(["undo", "--yes", "--columns"], migrated)  # the run's records and columns first: the mark column's sync made no record
    second = invoke(["undo", "--yes", "--columns"], migrated)

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert counts(customermates) == dict.fromkeys(ENTITIES, 0)
    assert customermates.columns() == []
    assert state(migrated, "SELECT count(*) FROM column_map") == [(0,)]


def test_a_pending_column_saved_before_its_spec_was_is_found_by_its_label_and_type(tmp_path):
    """A state file from before pending columns kept their spec and the columns there before: its
    pending column is found as it was then, by label and type, currency or not."""
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.con.execute("INSERT INTO pending_columns (entity, key, label, type, run_id) VALUES ('deals', 'value_chf', 'Value CHF', 'currency', 'r1')")
        made = {"id": "c-1", "label": "Value CHF", "type": "currency", "options": {"currency": "chf"}}

        settle_pending_columns(staging, {"deals": {"customColumns": [made]}})

        assert staging.column_map()[("deals", "value_chf")]["id"] == "c-1"
        assert staging.pending_columns() == []


def test_syncs_after_an_undo_report_no_duplicates_of_the_records_it_deleted(migrated, customermates, tmp_path):
    """A sync reads only what changed in Customermates and keeps the rest as last read: the records an
    undo deleted stayed there, so once the next sync created them again, the sync after it found each
    Pipedrive ID on two records (the deleted one first) and reported every record as duplicated."""
    assert invoke(["sync"], migrated).exit_code == 0  # reads back what the run wrote
    assert invoke(["undo", "--yes"], migrated).exit_code == 0
    assert invoke(["sync"], migrated).exit_code == 0  # creates them again

    result = invoke(["sync", "--report-dir", str(tmp_path / "r")], migrated)

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["duplicates_in_target"] == []
    assert "duplicate_in_target" not in report["issues"]["by_rule"]
    assert sum(len(customermates.records(e)) for e in ENTITIES) == sum(row["unchanged"] for row in report["entities"].values())


def test_a_conflict_kept_as_customermates_has_it_stays_an_edit_that_undo_keeps(migrated, pipedrive, customermates, monkeypatch):
    """`--on-conflict target-wins` writes nothing to the record, yet it stamped the record as written
    then: the user's edit, made before, no longer counted as one, and undo deleted the record without --force."""
    monkeypatch.setattr(undo_module, "EDIT_SLACK", EDIT_SLACK)
    first = state(migrated, "SELECT run_id FROM runs WHERE command = 'run'")[0][0]
    time.sleep(EDIT_SLACK.total_seconds() + 0.1)
    person = next(p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("first_name"))
    person["first_name"] += "-Src"
    person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()
    [target_id] = [t for (t,) in state(migrated, "SELECT target_id FROM id_map WHERE entity = 'contacts' AND source_id = ?", [str(person["id"])])]
    api(customermates, "PUT", "/contacts/many", {"contacts": [{"id": target_id, "lastName": "Edited-In-Target"}]})
    time.sleep(EDIT_SLACK.total_seconds() + 0.1)
    assert invoke(["run", "--on-conflict", "target-wins"], migrated).exit_code == 0

    result = invoke(["undo", "--run", first, "--yes"], migrated)

    assert result.exit_code == 0, result.output
    assert [r["id"] for r in customermates.records("contacts")] == [target_id]
    assert table_rows(result.output)["contacts"][2] == "1"  # kept (edited)
