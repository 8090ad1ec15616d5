"""Secrets: the Pipedrive token and the Customermates key never show in output, files or URLs.

One account, migrated with distinctive secrets through every command and several failures
(`--log-format json`, `--report-dir`); then every byte the tool wrote or printed is searched for
the secrets (whole, and their first and last 12 characters, so a cut-off copy is caught too), and
every request the fakes received is checked for where the secret travelled. Also: the state file
and the report are private (0600), and TLS verification is always on.
"""

from __future__ import annotations

import copy
import json
import os
import ssl
import stat
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import certifi
import duckdb
import pytest

from migrate import logs, pipeline
from migrate.config import Settings, load_settings
from migrate.pipedrive.client import PipedriveClient
from tests.fakes.customermates import FakeCustomermates
from tests.fakes.pipedrive import FakePipedrive
from tests.test_bad_input import clean_account, invoke, no_backoff

PIPEDRIVE_TOKEN = "pdSECRETtoken-7Q9xK2mZ4vB8nR1sW6yH3jL5cF0gD4kT"
CUSTOMERMATES_KEY = "cmSECRETkey-Zx81Qw73Er65Ty49Ui27Op05As93Df71Gh59Jk37Lz15XcVb"
WRONG_TOKEN = "pdWRONGtoken-Aa11Bb22Cc33Dd44Ee55Ff66Gg77Hh88"
WRONG_KEY = "cmWRONGkey-Mm11Nn22Oo33Pp44Qq55Rr66Ss77Tt88Uu99"
SECRETS = {"the Pipedrive token": PIPEDRIVE_TOKEN, "the Customermates key": CUSTOMERMATES_KEY,
           "a wrong Pipedrive token": WRONG_TOKEN, "a wrong Customermates key": WRONG_KEY}


def leaks(text: str) -> list[str]:
    """Which secrets (or their first/last 12 characters) occur in `text`."""
    return [name for name, secret in SECRETS.items() if any(part in text for part in (secret, secret[:12], secret[-12:]))]


def state_file_text(path: Path) -> str:
    """Every row of every table of the DuckDB state file, as text."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        parts = []
        for (table,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY table_name").fetchall():
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()
            parts.append(f"{table}: {rows!r}")
        return "\n".join(parts)
    finally:
        con.close()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every command, successful and failing, against fakes that accept only the secrets."""
    tmp = tmp_path_factory.mktemp("secrets")
    account = clean_account()
    outputs: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp, \
            FakePipedrive(collections=copy.deepcopy(account), token=PIPEDRIVE_TOKEN, burst_limit=10_000) as pd, \
            FakeCustomermates(api_key=CUSTOMERMATES_KEY) as cm:
        no_backoff(mp)
        env = {
            "PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN,
            "PIPEDRIVE_BASE_URL": pd.url,
            "CUSTOMERMATES_URL": cm.url,
            "CUSTOMERMATES_API_KEY": CUSTOMERMATES_KEY,
            "MIGRATE_STATE": str(tmp / "state" / "migration.duckdb"),
        }
        (tmp / "state").mkdir()
        codes: dict[str, int] = {}

        def run(name: str, args: list[str], environ: dict[str, str] | None = None) -> None:
            mp.setattr(logs, "_secrets", set())  # as in a fresh process: only what this command registers is redacted
            result = invoke([*args, "--log-format", "json"], env if environ is None else environ)
            outputs[name] = result.output + result.stderr
            codes[name] = result.exit_code

        run("doctor", ["doctor"])
        run("run", ["run", "--report-dir", str(tmp / "report-ok")])
        run("extract", ["extract"])
        run("status", ["status"])
        for person in [p for p in pd.collections["persons"] if not p.get("is_deleted")][:2]:
            person["job_title"], person["update_time"] = "Head of Sales", "2024-06-01T00:00:00Z"
        cm.fail_next(10, status=500, path_contains="/contacts/many")  # Customermates fails every write of the two updates
        run("run-customermates-500", ["run", "--report-dir", str(tmp / "report-500")])
        pd.inject(401, count=1, path_contains="/api/v2/deals")  # Pipedrive turns the token down in the middle of a run
        run("run-pipedrive-401", ["run", "--report-dir", str(tmp / "report-401")])
        run("run-wrong-token", ["run"], dict(env, PIPEDRIVE_API_TOKEN=WRONG_TOKEN))
        run("run-wrong-key", ["run"], dict(env, CUSTOMERMATES_API_KEY=WRONG_KEY))
        run("doctor-wrong-both", ["doctor"], dict(env, PIPEDRIVE_API_TOKEN=WRONG_TOKEN, CUSTOMERMATES_API_KEY=WRONG_KEY))
        flags = {k: v for k, v in env.items() if k not in ("PIPEDRIVE_API_TOKEN", "CUSTOMERMATES_API_KEY")}
        run("run-flags", ["run", "--pipedrive-token", PIPEDRIVE_TOKEN, "--customermates-key", CUSTOMERMATES_KEY,
                          "--report-dir", str(tmp / "report-flags")], flags)
        run("run-pasted", ["run"], dict(env, PIPEDRIVE_API_TOKEN=f"{PIPEDRIVE_TOKEN}\n", CUSTOMERMATES_API_KEY=f" {CUSTOMERMATES_KEY}\r\n"))
        run("status-after", ["status"])
        return {"tmp": tmp, "outputs": outputs, "codes": codes, "pd_requests": list(pd.requests), "cm_requests": list(cm.requests)}


def test_the_session_ran_every_command_and_every_failure(session: dict[str, Any]) -> None:
    assert session["codes"] == {
        "doctor": 0, "run": 0, "extract": 0, "status": 0, "run-pipedrive-401": 1, "run-customermates-500": 1,
        "run-wrong-token": 1, "run-wrong-key": 1, "doctor-wrong-both": 1, "run-flags": 0, "run-pasted": 0, "status-after": 0,
    }, session["outputs"]
    outputs = session["outputs"]
    assert "Pipedrive rejected the API token (HTTP 401)" in outputs["run-pipedrive-401"]
    assert "Customermates failed 10 times in a row writing contacts" in outputs["run-customermates-500"]
    assert '"event": "load.uncertain"' in outputs["run-customermates-500"]  # JSON log lines were written, and checked
    assert "Customermates rejected the API key" in outputs["run-wrong-key"]


def test_no_secret_in_any_output(session: dict[str, Any]) -> None:
    for name, text in session["outputs"].items():
        assert not leaks(text), f"{leaks(text)} in the output of {name}"


def test_no_secret_in_any_file_written(session: dict[str, Any]) -> None:
    files = [p for p in session["tmp"].rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"report.json", "migration.duckdb"} <= names, names
    for path in files:
        raw = path.read_bytes()
        assert not leaks(raw.decode("utf-8", "replace")), f"{leaks(raw.decode('utf-8', 'replace'))} in {path}"
        if path.suffix == ".duckdb":
            text = state_file_text(path)
            assert "raw_persons" in text and "id_map" in text
            assert not leaks(text), f"{leaks(text)} in a table of {path}"


def test_the_pipedrive_token_travels_only_in_the_x_api_token_header(session: dict[str, Any]) -> None:
    requests = session["pd_requests"]
    assert len(requests) > 40
    for request in requests:
        where = f"{request.path}?{json.dumps(request.query)}"
        assert not leaks(where), f"a secret in the URL {where}"
        assert "api_token" not in request.query
        assert request.headers.get("x-api-token") in (PIPEDRIVE_TOKEN, WRONG_TOKEN)
        others = {k: v for k, v in request.headers.items() if k != "x-api-token"}
        assert not leaks(json.dumps(others)), others


def test_the_customermates_key_travels_only_in_the_x_api_key_header(session: dict[str, Any]) -> None:
    requests = session["cm_requests"]
    assert any(r.path.endswith("/many") for r in requests) and any(r.path == "/api/v1/mcp" for r in requests)
    for request in requests:
        assert not leaks(request.path)
        assert not leaks(json.dumps(request.body, ensure_ascii=False)), f"a secret in the body of {request.method} {request.path}"
        assert request.headers.get("x-api-key") in (CUSTOMERMATES_KEY, WRONG_KEY)
        others = {k: v for k, v in request.headers.items() if k != "x-api-key"}
        assert not leaks(json.dumps(others)), others


def test_the_state_file_and_the_reports_are_private(session: dict[str, Any]) -> None:
    tmp: Path = session["tmp"]
    private = [tmp / "state" / "migration.duckdb", *sorted(tmp.glob("report-*/report.json"))]
    assert len(private) == 5  # the state file and four reports: the runs that failed (500, 401) write theirs too
    for path in private:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# -- TLS ---------------------------------------------------------------------------------------


def _client_contexts(settings: Settings) -> list[ssl.SSLContext]:
    """The SSL context of each HTTP client a run builds from these settings."""
    with ExitStack() as stack:
        source = pipeline.open_source(settings, stack)
        rest, mcp = pipeline.customermates_clients(settings, stack)
        assert isinstance(source, PipedriveClient)
        return [client._http._transport._pool._ssl_context for client in (source, rest, mcp)]


SETTINGS = {"pipedrive_api_token": PIPEDRIVE_TOKEN, "pipedrive_base_url": "https://acme.pipedrive.com",
            "customermates_url": "https://customermates.example", "customermates_api_key": CUSTOMERMATES_KEY}


def test_tls_verification_is_on_by_default_and_cannot_be_switched_off() -> None:
    settings = load_settings(dict(SETTINGS), environ={})
    contexts = _client_contexts(settings)
    assert len(contexts) == 3
    for context in contexts:
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert len(context.get_ca_certs()) > 20  # the usual public CAs
    assert not any("verify" in name or "insecure" in name or "tls" in name for name in Settings.model_fields)


def test_a_ca_bundle_passes_through_to_every_client(tmp_path: Path) -> None:
    pem = certifi.contents().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    bundle = tmp_path / "company-ca.pem"
    bundle.write_text(pem)
    settings = load_settings(dict(SETTINGS, ca_bundle=bundle), environ={})
    expected = ssl.create_default_context(cafile=str(bundle)).get_ca_certs()
    assert len(expected) == 1
    for context in _client_contexts(settings):
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert context.get_ca_certs() == expected  # only the bundle's CA: the run trusts what --ca-bundle says
    via_env = load_settings({}, environ={"MIGRATE_CA_BUNDLE": str(bundle)})
    assert via_env.verify.get_ca_certs() == expected


def test_an_unusable_ca_bundle_is_one_line_naming_it(tmp_path: Path) -> None:
    bundle = tmp_path / "not-a-cert.pem"
    bundle.write_text("hello\n")
    env = {"PIPEDRIVE_API_TOKEN": PIPEDRIVE_TOKEN, "CUSTOMERMATES_URL": "https://customermates.example",
           "CUSTOMERMATES_API_KEY": CUSTOMERMATES_KEY, "MIGRATE_STATE": str(tmp_path / "s.duckdb")}
    for path, reason in ((bundle, "no certificate or crl found"), (tmp_path / "missing.pem", "No such file or directory")):
        result = invoke(["doctor", "--ca-bundle", str(path)], env)
        assert result.exit_code == 2, result.output
        assert f"ca_bundle: Value error, {path} cannot be used as a CA bundle" in result.output and reason in result.output
        assert "Traceback" not in result.output and not leaks(result.output)
