"""The loader's batch size follows the server's latency (its transactions time out after 5 s), and its
requests stay under the host's body limit."""

from __future__ import annotations

import json
import math

import tenacity
from click.testing import CliRunner

from migrate.cli import cli
from migrate.customermates.client import MAX_REQUEST_BYTES, encoded_size
from migrate.customermates.columns import ColumnIndex
from migrate.customermates.load import Loader
from migrate.staging.store import Staging
from tests.test_end_to_end import (
    by_pipedrive_id,
    note_text,
    read_issues,
    read_quarantine,
)


def loader(tmp_path) -> Loader:
    return Loader(Staging(tmp_path / "s.duckdb"), client=None, columns=ColumnIndex(), run_id="r")  # type: ignore[arg-type]


def test_batches_stay_at_fifty_by_default_as_the_contract_advises(tmp_path):
    load = loader(tmp_path)
    load._tune(elapsed=0.55, size=50)
    assert (load.max_batch, load.batch_size) == (50, 50)


def test_batches_start_at_fifty_and_grow_while_predicted_fast_up_to_a_higher_cap(tmp_path):
    load = Loader(Staging(tmp_path / "s.duckdb"), client=None, columns=ColumnIndex(), run_id="r", max_batch=100)  # type: ignore[arg-type]
    assert load.batch_size == 50
    load._tune(elapsed=0.55, size=50)  # 11 ms per item: 63 items ≈ 0.7 s
    assert load.batch_size == 63
    for _ in range(5):
        load._tune(elapsed=load.batch_size * 0.011, size=load.batch_size)
    assert load.batch_size == 100


def test_a_slow_batch_shrinks_the_next_ones(tmp_path):
    load = loader(tmp_path)
    load._tune(elapsed=3.4, size=50)
    assert load.batch_size == 30


def test_growth_stops_where_the_predicted_time_gets_long(tmp_path):
    load = loader(tmp_path)
    load._tune(elapsed=1.8, size=50)  # 36 ms per item: 63 items would take 2.3 s
    assert load.batch_size == 50


def test_a_size_that_failed_is_never_reached_again(tmp_path):
    load = Loader(Staging(tmp_path / "s.duckdb"), client=None, columns=ColumnIndex(), run_id="r", max_batch=100)  # type: ignore[arg-type]
    load.ceiling = 59  # as after an uncertain failure at 60 items
    load.batch_size = 55
    load._tune(elapsed=0.3, size=55)
    assert load.batch_size == 59


# -- request body size: Vercel functions take about 4.5 MB (contract §10), a proxy may take less ----------------------

LONG_NOTE = "<p>" + "契約は年末まで延長されました。" * 2600 + "</p>"  # 39,000 characters, 117 KB in UTF-8


def _with_long_contact_notes(pipedrive) -> list[str]:
    persons = [p for p in pipedrive.collections["persons"] if not p.get("is_deleted")]
    for person in persons:
        person["notes"] = LONG_NOTE
    return [str(p["id"]) for p in persons]


def _writes(customermates, entity: str) -> list:
    return [r for r in customermates.requests if r.method in ("POST", "PUT") and r.path == f"/api/v1/{entity}/many"]


def test_records_with_long_notes_go_in_requests_under_the_hosts_limit_and_are_read_back_in_smaller_pages(
    env, pipedrive, customermates, tmp_path, monkeypatch
):
    """A batch of 50 contacts with 39,000-character notes in Japanese is 5.9 MB, over Vercel's 4.5 MB: the loader
    sends such records in smaller requests, so the host never refuses one. A search page of 100 of them is a
    12 MB answer, which Vercel fails with a 500: a rerun (which reads every record back) reads the rest in
    pages of 25 and finds nothing to write."""
    monkeypatch.setattr("migrate.customermates.client._default_read_wait", tenacity.wait_none)  # the 500s' retries, without their 8 s of backoff
    persons = _with_long_contact_notes(pipedrive)
    result = CliRunner().invoke(cli, ["run", "--report-dir", str(tmp_path / "r")], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    writes = _writes(customermates, "contacts")
    assert all(r.status == 201 for r in writes)
    sizes = [encoded_size(r.body) for r in writes]
    assert max(sizes) <= MAX_REQUEST_BYTES and sum(sizes) > 2 * MAX_REQUEST_BYTES
    assert len(writes) > math.ceil(len(persons) / 50)  # more requests than the batch size alone would make
    contacts = by_pipedrive_id(customermates, "contacts")
    truncated = {i["source_id"] for i in read_issues(tmp_path / "r") if i["rule"] == "notes_truncated"}  # a sample person's own long notes
    assert all(len(contacts[sid]) == 1 for sid in persons) and len(truncated) <= 1
    assert all("契約は年末まで延長されました。" in note_text(contacts[sid][0]["notes"]) for sid in persons if sid not in truncated)
    customermates.clear_requests()
    result = CliRunner().invoke(cli, ["run", "--report-dir", str(tmp_path / "again")], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    searches = [r for r in customermates.requests if r.path == "/api/v1/contacts/search"]
    assert any(r.status == 500 and r.body["pagination"]["pageSize"] == 100 for r in searches)
    assert searches[-1].status == 200 and searches[-1].body["pagination"]["pageSize"] == 25
    assert not _writes(customermates, "contacts")
    row = json.loads((tmp_path / "again" / "report.json").read_text())["entities"]["contacts"]
    assert (row["created"], row["updated"], row["unchanged"]) == (0, 0, len(customermates.records("contacts")))


def test_a_proxy_with_a_smaller_body_limit_is_learned_from_its_413s(env, pipedrive, customermates, tmp_path):
    """Behind a proxy taking 1 MiB (nginx's default), a refused body (413, nothing written) is split and
    the limit learned: every record arrives, none quarantined, after a few refusals only."""
    customermates.max_body_bytes = 1_048_576
    persons = _with_long_contact_notes(pipedrive)
    result = CliRunner().invoke(cli, ["run", "--report-dir", str(tmp_path / "r")], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    refused = [r for r in _writes(customermates, "contacts") if r.status == 413]
    assert 1 <= len(refused) <= 3
    contacts = by_pipedrive_id(customermates, "contacts")
    assert all(len(contacts[sid]) == 1 for sid in persons)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["quarantined"]["count"] == 0


def test_a_record_bigger_than_the_hosts_limit_is_quarantined_saying_so_and_the_others_arrive(env, pipedrive, customermates, tmp_path):
    customermates.max_body_bytes = 100_000  # the sample's longest record is 69 KB, the long note 117 KB
    persons = [p for p in pipedrive.collections["persons"] if not p.get("is_deleted")]
    persons[0]["notes"] = LONG_NOTE
    result = CliRunner().invoke(cli, ["run", "--report-dir", str(tmp_path / "r")], env=env, catch_exceptions=False)
    assert result.exit_code == 3, result.output
    [row] = read_quarantine(tmp_path / "r")
    assert (row["entity"], row["source_id"]) == ("contacts", str(persons[0]["id"]))
    assert "HTTP 413, nothing was written" in row["message"] and "is over its size limit" in row["message"]
    contacts = by_pipedrive_id(customermates, "contacts")
    assert str(persons[0]["id"]) not in contacts and all(str(p["id"]) in contacts for p in persons[1:])
