"""The command line: settings, preflight, and one clear line for each kind of failure."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
import tenacity
from click.testing import CliRunner

from migrate.cli import cli
from migrate.config import load_settings
from migrate.errors import ConfigError


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_settings_precedence_flags_over_file_over_environment(tmp_path: Path):
    config = tmp_path / "migrate.toml"
    config.write_text('[migrate]\ncustomermates_url = "http://file.example"\nstate = "from-file.duckdb"\n')
    environ = {"CUSTOMERMATES_URL": "http://env.example", "MIGRATE_STATE": "env.duckdb", "PIPEDRIVE_API_TOKEN": "s3cr3t-token"}
    settings = load_settings({"state": Path("flag.duckdb")}, config, environ)
    assert settings.customermates_url == "http://file.example"
    assert settings.state == Path("flag.duckdb")
    assert settings.pipedrive_api_token == "s3cr3t-token"
    assert "s3cr3t-token" not in str(settings.redacted())


def test_invalid_setting_names_the_setting(tmp_path: Path):
    with pytest.raises(ConfigError, match="customermates_url"):
        load_settings({}, None, {"CUSTOMERMATES_URL": "customermates.com"})


def test_missing_customermates_settings_exit_2_with_the_variable_name(env, tmp_path):
    del env["CUSTOMERMATES_API_KEY"]
    result = invoke(["run"], env)
    assert result.exit_code == 2
    assert "CUSTOMERMATES_API_KEY" in result.output


def test_wrong_customermates_key_is_one_clear_line(env):
    env["CUSTOMERMATES_API_KEY"] = "x" * 64
    result = invoke(["run"], env)
    assert result.exit_code == 1
    assert "Customermates rejected the API key" in result.output
    assert "Traceback" not in result.output
    assert "x" * 64 not in result.output


def test_wrong_pipedrive_token_is_one_clear_line(env, customermates):
    env["PIPEDRIVE_API_TOKEN"] = "wrong-token-0000"
    result = invoke(["run"], env)
    assert result.exit_code == 1
    assert "Pipedrive rejected the API token" in result.output
    assert customermates.write_count() == 0


def test_unreachable_customermates_is_one_clear_line(env, monkeypatch):
    monkeypatch.setattr("migrate.customermates.client._default_read_wait", tenacity.wait_none)  # the retries, without their backoff
    env["CUSTOMERMATES_URL"] = "http://127.0.0.1:9"
    result = invoke(["run"], env)
    assert result.exit_code == 1
    assert "127.0.0.1:9" in result.output
    assert "Traceback" not in result.output


def test_doctor_reports_both_sides(env):
    result = invoke(["doctor"], env)
    assert result.exit_code == 0, result.output
    for check in ("Pipedrive token", "Pipedrive admin", "Customermates key", "Customermates admin", "Customermates users"):
        assert check in result.output


def test_doctor_fails_on_a_wrong_key(env):
    env["CUSTOMERMATES_API_KEY"] = "y" * 64
    result = invoke(["doctor"], env)
    assert result.exit_code == 1
    assert "rejected the API key" in result.output


def test_extract_then_run_from_staging(env, customermates):
    result = invoke(["extract"], env)
    assert result.exit_code == 0, result.output
    assert "persons" in result.output
    result = invoke(["run", "--use-staged"], env)
    assert result.exit_code == 0, result.output
    assert len(customermates.records("contacts")) > 100


def test_state_file_from_a_newer_version_is_refused(env, tmp_path):
    import duckdb

    state = tmp_path / "newer.duckdb"
    con = duckdb.connect(str(state))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR); INSERT INTO meta VALUES ('schema_version', '99')")
    con.close()
    env["MIGRATE_STATE"] = str(state)
    result = invoke(["run"], env)
    assert result.exit_code == 1
    assert "newer version" in result.output


def test_state_file_is_private(env, tmp_path):
    invoke(["extract"], env)
    assert (Path(env["MIGRATE_STATE"]).stat().st_mode & 0o777) == 0o600


def test_a_second_run_on_the_same_state_file_names_the_holder(env):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; con = duckdb.connect({env['MIGRATE_STATE']!r}); print('ok', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"ok"
        result = invoke(["run"], env)
        assert result.exit_code == 5
        assert f"PID {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()
    result = invoke(["extract"], env)  # the dead holder's lock is gone: the state file is usable again
    assert result.exit_code == 0, result.output


def test_status_lists_runs_checkpoints_and_migrated_counts(migrated):
    result = invoke(["status"], migrated)
    assert result.exit_code == 0, result.output
    assert "Extract: 21/21 collections complete" in result.output
    assert "117 contacts" in result.output
    assert "run" in result.output and "ok" in result.output


def test_status_after_an_extract_stopped_early_counts_the_collections_not_reached_yet(env, sample_dir, monkeypatch):
    """An extract stopped after its first collection said "1/1 collections complete": only collections
    with a checkpoint were counted, those not reached yet not at all."""
    from migrate.errors import Interrupted
    from migrate.pipedrive import extract as extract_module

    real = extract_module._extract_collection
    reached: list[str] = []

    def stop_after_the_first(stager, source, collection, checkpoint):
        if reached:
            raise Interrupted("SIGTERM", 15)
        reached.append(collection.name)
        real(stager, source, collection, checkpoint)

    monkeypatch.setattr(extract_module, "_extract_collection", stop_after_the_first)
    assert invoke(["extract", "--source", str(sample_dir)], env).exit_code == 143
    monkeypatch.undo()
    result = invoke(["status"], env)
    assert result.exit_code == 0, result.output
    assert "Extract: 1/21 collections complete" in result.output
    assert "  • persons: not read yet" in result.output and f"  • {reached[0]}:" not in result.output


def test_status_shows_each_run_id_whole_on_80_columns_for_undo_to_take(env, tmp_path, monkeypatch):
    """On 80 columns (piped, or not a terminal) the table cut run ids to `20261202T15424…`, which
    `undo --run` refuses; an operator had to dig the id out of report.json."""
    assert invoke(["run", "--report-dir", str(tmp_path / "r")], env).exit_code == 0
    run_id = json.loads((tmp_path / "r" / "report.json").read_text())["run_id"]
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(["status"], env)
    assert any(run_id in line for line in result.output.splitlines()), result.output
    assert "no run" not in invoke(["undo", "--run", run_id], env).output


def test_status_lists_the_run_that_made_the_records_however_many_syncs_came_after(migrated):
    """With `sync --every 15m` the run that created the records fell off the ten runs listed within
    hours, and README sends users to `status` for the id `undo --run` takes."""
    from migrate.staging.store import Staging

    with Staging(Path(migrated["MIGRATE_STATE"])) as staging:
        [creator] = {row[0] for row in staging.con.execute("SELECT created_by_run FROM id_map").fetchall()}
        for _ in range(12):
            staging.finish_run(staging.start_run("sync"), "ok", {})
    result = invoke(["status"], migrated)
    assert result.exit_code == 0, result.output
    assert any(creator in line for line in result.output.splitlines()), result.output
    assert result.output.count(" sync ") == 10


def test_status_without_a_state_file_says_so(env, tmp_path):
    env["MIGRATE_STATE"] = str(tmp_path / "none.duckdb")
    result = invoke(["status"], env)
    assert result.exit_code == 1
    assert "nothing has run yet" in result.output


def test_a_non_admin_customermates_key_is_warned_about(env, tmp_path):
    import copy

    from tests.fakes.customermates import DEFAULT_USERS, VALID_KEY, FakeCustomermates

    users = copy.deepcopy(DEFAULT_USERS)
    users[0]["roleName"] = "Sales"
    with FakeCustomermates(users=users) as fake:
        env = dict(env, CUSTOMERMATES_URL=fake.url, CUSTOMERMATES_API_KEY=VALID_KEY)
        result = invoke(["run", "--dry-run"], env)
    assert result.exit_code == 0, result.output
    assert "not an Admin" in result.output


def test_recreating_records_deleted_in_customermates_is_refused_with_a_non_admin_key(env):
    """A record out of a key's access answers "not found or not accessible" as a deleted one does
    (contract §1, §3.8): recreating it would make it twice, so the run stops before it writes."""
    import copy

    from tests.fakes.customermates import DEFAULT_USERS, VALID_KEY, FakeCustomermates

    users = copy.deepcopy(DEFAULT_USERS)
    users[0]["roleName"] = "Sales"
    with FakeCustomermates(users=users) as fake:
        env = dict(env, CUSTOMERMATES_URL=fake.url, CUSTOMERMATES_API_KEY=VALID_KEY)
        result = invoke(["run", "--on-target-deleted", "recreate"], env)
        assert fake.write_count() == 0
    assert result.exit_code == 2, result.output
    assert "--on-target-deleted recreate needs an Admin's Customermates key; this one belongs to Ada Admin (role Sales)" in result.output


def test_doctor_warns_about_active_webhooks(env, customermates):
    customermates.webhooks.append(
        {"id": "0b6f0c1e-7d3a-4e5b-8c6d-0a1b2c3d4e5f", "url": "https://hooks.example.com/crm", "description": "ERP sync",
         "events": ["contact.created", "deal.updated"], "enabled": True, "createdAt": "2026-01-01T00:00:00.000Z",
         "updatedAt": "2026-01-01T00:00:00.000Z"}
    )
    result = invoke(["doctor"], env)
    assert result.exit_code == 0, result.output
    assert "WARN Customermates webhooks: 1 active" in result.output


def test_doctor_warns_when_pipedrive_users_have_no_customermates_user_and_not_once_each_has_one(env, tmp_path):
    """doctor said ok with "2 users to match Pipedrive owners against" while none of the sample's
    owners had a Customermates user: every record would land without an owner."""
    import copy

    from tests.fakes.customermates import DEFAULT_USERS, VALID_KEY, FakeCustomermates

    line = " ".join(invoke(["doctor"], env).output.split())
    assert "WARN Pipedrive users in Customermates: 4 of the 4 active Pipedrive users have no Customermates user of the same email" in line
    assert "Katrin Vogel <katrin.vogel@nordlicht-systems.de>" in line and "stefan.koehler" not in line  # he is inactive
    invited = [
        {**copy.deepcopy(DEFAULT_USERS[-1]), "id": f"2222222{n}-2222-4222-8222-222222222222", "email": email, "firstName": email.split(".")[0], "lastName": "X"}
        for n, email in enumerate(["Katrin.Vogel@nordlicht-systems.de", "thomas.brandt@nordlicht-systems.de", "aylin.demir@nordlicht-systems.de", "olivia.bennett.sales@gmail.com"])
    ]
    with FakeCustomermates(users=[*copy.deepcopy(DEFAULT_USERS), *invited]) as fake:
        result = invoke(["doctor"], dict(env, CUSTOMERMATES_URL=fake.url, CUSTOMERMATES_API_KEY=VALID_KEY))
    assert "ok Pipedrive users in Customermates: each of the 4 active Pipedrive users has a Customermates user of the same email" in " ".join(result.output.split())


def test_a_run_out_of_duckdb_memory_names_the_setting_that_gives_more_and_the_next_run_uses_it(env, monkeypatch, tmp_path):
    from migrate import pipeline
    from migrate.staging.store import MEMORY_LIMIT_ENV, Staging

    def out_of_memory(*args, **kwargs):
        raise duckdb.OutOfMemoryException(
            "Out of Memory Error: failed to allocate data of size 16.0 MiB (145.4 MiB/152.5 MiB used)\n\nPossible solutions: ..."
        )

    monkeypatch.setattr(pipeline, "transform", out_of_memory)
    result = CliRunner().invoke(cli, ["run"], env=env)
    assert result.exit_code == 1
    line = " ".join(result.output.split())
    assert "needs more memory than DuckDB was given: Out of Memory Error: failed to allocate data of size 16.0 MiB" in line
    assert f"Set {MEMORY_LIMIT_ENV} to more megabytes (e.g. {MEMORY_LIMIT_ENV}=2000) and run again" in line
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2000")
    with Staging(tmp_path / "state.duckdb") as staging:
        assert staging.memory_limit_mb() == 2000


@pytest.mark.parametrize("command", [["run"], ["sync"], ["plan"], ["verify"], ["undo"]])
def test_a_report_dir_that_cannot_be_made_is_refused_before_anything_runs(env, sample_dir, customermates, tmp_path, command):
    if command[0] in ("verify", "undo"):
        assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0
    runs = _count_runs(env)
    writes = customermates.write_count()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, [*command, "--report-dir", str(blocker / "reports")], env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert "--report-dir" in result.output and str(blocker / "reports") in result.output.replace("\n", "")
    assert customermates.write_count() == writes  # refused before the run, not after its work was done
    assert _count_runs(env) == runs


def _count_runs(env) -> int:
    if not Path(env["MIGRATE_STATE"]).exists():
        return 0
    con = duckdb.connect(env["MIGRATE_STATE"], read_only=True)
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()


def test_a_disk_that_fills_while_the_reports_are_written_is_one_line_naming_the_file(env, sample_dir, customermates, tmp_path, monkeypatch):
    import errno

    from migrate import cli as cli_module

    def full(report, directory, name="report.json"):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / name))

    monkeypatch.setattr(cli_module, "write_json", full)
    result = CliRunner().invoke(cli, ["run", "--source", str(sample_dir), "--report-dir", str(tmp_path / "reports")], env=env)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    line = " ".join(result.output.split())
    assert f"{tmp_path / 'reports' / 'report.json'}: No space left on device" in line
    assert "recorded in the state file" in line
    assert len(customermates.records("contacts")) > 100  # the run itself went through


@pytest.mark.parametrize("suffix", ["/api/v1", "/api/v2/", "/api"])
def test_a_pipedrive_url_pasted_with_its_api_path_works(env, pipedrive, suffix):
    # Pipedrive's docs give the API's address as https://<company>.pipedrive.com/api/v1
    env["PIPEDRIVE_BASE_URL"] = pipedrive.url + suffix
    result = invoke(["extract"], env)
    assert result.exit_code == 0, result.output
    assert load_settings({}, None, env).pipedrive_base_url == pipedrive.url


def test_use_staged_with_nothing_staged_is_refused_without_making_a_state_file(env, customermates, tmp_path):
    env["MIGRATE_STATE"] = str(tmp_path / "typo.duckdb")  # not where `migrate extract` staged the account
    for command in (["run", "--use-staged"], ["run", "--use-staged", "--dry-run"], ["plan", "--use-staged"]):
        result = invoke(command, env)
        assert result.exit_code == 2, result.output
        line = " ".join(result.output.split())
        assert f"nothing is staged in {tmp_path / 'typo.duckdb'}" in line and "migrate extract" in line
        assert not (tmp_path / "typo.duckdb").exists()
    assert customermates.columns() == [] and customermates.write_count() == 0


def test_use_staged_after_an_extract_that_stopped_half_way_is_refused(env, sample_dir, customermates):
    assert invoke(["extract", "--source", str(sample_dir)], env).exit_code == 0
    con = duckdb.connect(env["MIGRATE_STATE"])
    con.execute("UPDATE extract_checkpoints SET done = false WHERE collection IN ('persons', 'notes')")
    con.close()
    result = invoke(["run", "--use-staged"], env)
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert "stopped half way" in line and "notes, persons" in line and "migrate extract" in line
    assert customermates.columns() == [] and customermates.write_count() == 0


def test_status_after_a_killed_run_says_it_died_not_that_it_is_running(env, sample_dir, monkeypatch):
    from migrate.staging.store import Staging

    monkeypatch.setattr(Staging, "finish_run", lambda self, run_id, status, summary: None)  # killed before its end was recorded
    assert invoke(["run", "--source", str(sample_dir)], env).exit_code == 0
    monkeypatch.undo()
    result = invoke(["status"], env)
    assert result.exit_code == 0, result.output
    assert "running" not in result.output
    assert "died" in result.output


@pytest.mark.parametrize("text", ["migrate = 3\n", 'migrate = "state.duckdb"\n', "[[migrate]]\nstate = 'x.duckdb'\n"])
def test_a_config_file_whose_migrate_entry_is_no_table_names_it(tmp_path, text):
    config = tmp_path / "migrate.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"migrate\.toml.*\[migrate\] table"):
        load_settings({}, config, {})


def test_a_config_file_that_cannot_be_read_names_it(tmp_path, monkeypatch):
    (tmp_path / "migrate.toml").mkdir()  # found in the working directory, but a directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot read the config file migrate\.toml"):
        load_settings({}, None, {})


def test_a_plan_made_without_customermates_settings_is_refused_as_such_not_as_a_changed_target(env, sample_dir, customermates, tmp_path):
    offline = {k: v for k, v in env.items() if not k.startswith("CUSTOMERMATES_")}
    assert invoke(["plan", "--source", str(sample_dir), "--report-dir", str(tmp_path / "plan")], offline).exit_code == 0
    result = invoke(["run", "--source", str(sample_dir), "--plan", str(tmp_path / "plan" / "plan.json")], env)
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split())
    assert "made without Customermates settings" in line and "CUSTOMERMATES_URL" in line
    assert "Customermates changed since" not in line
    assert customermates.write_count() == 0


def test_dry_run_with_a_plan_to_apply_is_a_usage_error(env, sample_dir, tmp_path):
    assert invoke(["plan", "--source", str(sample_dir), "--report-dir", str(tmp_path / "plan")], env).exit_code == 0
    result = invoke(["run", "--dry-run", "--source", str(sample_dir), "--plan", str(tmp_path / "plan" / "plan.json")], env)
    assert result.exit_code == 2, result.output
    assert "--dry-run" in result.output and "--plan" in result.output


def test_an_extract_that_fails_is_recorded_as_failed(env):
    result = invoke(["extract"], {**env, "PIPEDRIVE_API_TOKEN": "wrong-token-0000"})
    assert result.exit_code == 1, result.output
    con = duckdb.connect(env["MIGRATE_STATE"], read_only=True)
    try:
        assert con.execute("SELECT command, status, finished_at IS NOT NULL FROM runs").fetchall() == [("extract", "failed", True)]
    finally:
        con.close()


def test_a_duckdb_file_that_is_no_state_file_is_refused_untouched(env, sample_dir, tmp_path):
    other = tmp_path / "analytics.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE sales (id INTEGER, amount DOUBLE); INSERT INTO sales VALUES (1, 9.5)")
    con.close()
    for command in (["status"], ["run", "--dry-run", "--source", str(sample_dir)]):
        result = invoke([*command, "--state", str(other)], env)
        assert result.exit_code == 1, result.output
        assert f"{other} is a DuckDB database but no migrate state file" in " ".join(result.output.split())
    con = duckdb.connect(str(other), read_only=True)
    try:
        assert [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()] == ["sales"]
    finally:
        con.close()


def test_a_run_with_log_format_json_prints_one_json_line_of_its_outcome(env, tmp_path):
    """Unattended (`--log-format json`), a run printed its tables, a hundred lines of them, on stdout."""
    result = invoke(["run", "--log-format", "json", "--report-dir", str(tmp_path / "r")], env)
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    outcome = json.loads(line)
    assert (outcome["event"], outcome["status"], outcome["dry_run"]) == ("run", "ok", False)
    assert outcome["entities"]["contacts"]["created"] == 117 and outcome["report"] == str(tmp_path / "r" / "report.json")


def test_plan_verify_and_undo_with_log_format_json_print_one_json_line_each(env, tmp_path):
    """They printed their tables, unattended as on a terminal."""
    plan = invoke(["plan", "--log-format", "json", "--report-dir", str(tmp_path / "p")], env)
    assert plan.exit_code == 0, plan.output
    [line] = plan.stdout.splitlines()
    planned = json.loads(line)
    assert planned["event"] == "plan" and planned["summary"]["contacts"]["create"] == 117
    assert sorted(Path(f).name for f in planned["files"]) == ["plan.html", "plan.json", "plan.md"]
    assert invoke(["run"], env).exit_code == 0

    verify = invoke(["verify", "--log-format", "json", "--report-dir", str(tmp_path / "v")], env)
    assert verify.exit_code == 0, verify.output
    [line] = verify.stdout.splitlines()
    verified = json.loads(line)
    assert (verified["event"], verified["status"], verified["report"]) == ("verify", "ok", str(tmp_path / "v" / "verify.json"))
    assert verified["entities"]["contacts"]["matched"] == 117

    undo = invoke(["undo", "--log-format", "json"], env)
    assert undo.exit_code == 0, undo.output
    [line] = undo.stdout.splitlines()
    undone = json.loads(line)
    assert (undone["event"], undone["dry_run"], undone["entities"]["contacts"]["delete"]) == ("undo", True, 117)
