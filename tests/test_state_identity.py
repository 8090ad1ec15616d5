"""A state file belongs to one Pipedrive company and one Customermates company: used against another
(a token or URL switched for the next client, the working directory not), every command that would
read or write with it refuses before anything is written, naming the state file and both sides."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from migrate.cli import cli
from tests.fakes.customermates import FakeCustomermates
from tests.fakes.pipedrive import FakePipedrive


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def state(env: dict[str, str], sql: str) -> list[tuple]:
    con = duckdb.connect(env["MIGRATE_STATE"], read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def snapshot(env: dict[str, str]) -> dict[str, Any]:
    """What the state file knows of the target: its id map and column map."""
    return {
        "id_map": sorted(state(env, "SELECT entity, source_id, target_id, payload_hash FROM id_map")),
        "column_map": sorted(state(env, "SELECT entity, key, column_id FROM column_map")),
    }


@pytest.fixture
def migrated(env: dict[str, str], customermates: FakeCustomermates) -> dict[str, str]:
    result = invoke(["run"], env)  # through the Pipedrive API, so the state file knows the company
    assert result.exit_code == 0, result.output
    return env


@pytest.fixture
def other_customermates() -> Iterator[FakeCustomermates]:
    with FakeCustomermates() as fake:
        yield fake


@pytest.mark.parametrize("command", [["run"], ["sync"], ["extract"]])
def test_a_state_file_of_one_pipedrive_company_is_refused_for_another(
    migrated: dict[str, str], pipedrive: FakePipedrive, customermates: FakeCustomermates, command: list[str]
):
    before, writes = snapshot(migrated), customermates.write_count()
    raw_before = state(migrated, "SELECT count(*) FROM raw_persons")
    pipedrive.company = {"company_id": 1234, "company_name": "Other Company Ltd", "company_domain": "other-company"}
    result = invoke(command, migrated)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Nordlicht Systems GmbH" in result.output and "Other Company Ltd" in result.output
    assert migrated["MIGRATE_STATE"] in result.output.replace("\n", "")
    assert customermates.write_count() == writes
    assert snapshot(migrated) == before
    assert state(migrated, "SELECT count(*) FROM raw_persons") == raw_before


@pytest.mark.parametrize("command", [["run"], ["sync"], ["run", "--dry-run"]])
def test_a_state_file_of_one_customermates_is_refused_for_another(
    migrated: dict[str, str], other_customermates: FakeCustomermates, command: list[str]
):
    before = snapshot(migrated)
    result = invoke(command, {**migrated, "CUSTOMERMATES_URL": other_customermates.url})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert other_customermates.url in result.output.replace("\n", "")
    assert other_customermates.write_count() == 0
    assert other_customermates.columns() == []
    assert snapshot(migrated) == before


def test_undo_yes_against_another_customermates_forgets_nothing(migrated: dict[str, str], other_customermates: FakeCustomermates):
    before = snapshot(migrated)
    result = invoke(["undo", "--yes", "--columns"], {**migrated, "CUSTOMERMATES_URL": other_customermates.url})
    assert result.exit_code == 2, result.output
    assert other_customermates.url in result.output.replace("\n", "")
    assert snapshot(migrated) == before  # the id map still knows every migrated record
    assert state(migrated, "SELECT count(*) FROM undone") == [(0,)]


def test_verify_against_another_customermates_says_so_rather_than_all_missing(
    migrated: dict[str, str], other_customermates: FakeCustomermates
):
    result = invoke(["verify"], {**migrated, "CUSTOMERMATES_URL": other_customermates.url})
    assert result.exit_code == 2, result.output
    assert other_customermates.url in result.output.replace("\n", "")


def test_the_same_companies_under_another_url_or_key_are_accepted(migrated: dict[str, str], customermates: FakeCustomermates):
    url = customermates.url.replace("127.0.0.1", "localhost")
    result = invoke(["sync"], {**migrated, "CUSTOMERMATES_URL": url})
    assert result.exit_code == 0, result.output
    result = invoke(["verify"], {**migrated, "CUSTOMERMATES_URL": url})
    assert result.exit_code == 0, result.output


def test_doctor_names_a_state_file_of_another_company(migrated: dict[str, str], pipedrive: FakePipedrive, other_customermates):
    pipedrive.company = {"company_id": 1234, "company_name": "Other Company Ltd", "company_domain": "other-company"}
    result = invoke(["doctor"], {**migrated, "CUSTOMERMATES_URL": other_customermates.url})
    assert result.exit_code == 1, result.output
    assert "Other Company Ltd" in result.output
    assert other_customermates.url in result.output.replace("\n", "")


@pytest.mark.parametrize("command", [["run"], ["sync"]])
def test_a_fresh_state_file_against_a_customermates_already_migrated_to_is_refused(
    env: dict[str, str], sample_dir, customermates: FakeCustomermates, tmp_path, command: list[str]
):
    assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0
    contacts = len(customermates.records("contacts"))
    lost = {**env, "MIGRATE_STATE": str(tmp_path / "elsewhere" / "migration.duckdb")}  # another directory, a deleted file
    (tmp_path / "elsewhere").mkdir()
    result = invoke([*command, "--source", str(sample_dir)], lost)
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "already holds" in line and "Pipedrive ID" in line and customermates.url in line
    assert len(customermates.records("contacts")) == contacts  # not every record a second time


def test_a_run_killed_before_its_first_batch_was_stored_resumes(env: dict[str, str], sample_dir, customermates, monkeypatch):
    from migrate.errors import Interrupted
    from migrate.staging.store import Staging

    real_commit = Staging.commit_batch

    def killed(self, batch_id, entity, written, run_id, payloads=()):
        if written:
            raise Interrupted("SIGKILL", 9)  # the server wrote the first batch; its ids were never stored
        return real_commit(self, batch_id, entity, written, run_id, payloads)

    monkeypatch.setattr(Staging, "commit_batch", killed)
    assert CliRunner().invoke(cli, ["run", "--source", str(sample_dir)], env=env).exit_code == 137
    monkeypatch.setattr(Staging, "commit_batch", real_commit)
    assert customermates.records("organizations") and state(env, "SELECT count(*) FROM id_map") == [(0,)]
    result = invoke(["run", "--source", str(sample_dir)], env)
    assert result.exit_code == 0, result.output
    assert len(customermates.records("organizations")) == 39
