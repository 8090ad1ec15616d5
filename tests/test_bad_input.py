"""The bad-input catalogue: every kind of bad input we know of, in one table, with its exact outcome.

Two tables. `DATA_CASES` are dirty records: all of them go into one small Pipedrive account that
is migrated once (exit 0) and then again (no write at all); each case names the report issue it
must produce (entity, Pipedrive id, field, rule, a fragment of the detail) and what the record
looks like in Customermates. `RUN_CASES` break a run (tokens, HTTP failures, the state file, a
record the server refuses): each case gives the exit code and the one line the person running the
tool reads, then undoes the cause, runs again and checks that every record arrived exactly once.
Two more cases need their own shape: SIGTERM in the middle of a run (a real child process), and
an empty Customermates key reaching the server (the client on its own, since the CLI refuses it).
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import tenacity
from click.testing import CliRunner, Result

from migrate.cli import cli
from migrate.customermates.load import Loader
from tests.crash_harness import fakes_env, values_by_label
from tests.fakes.customermates import VALID_KEY, FakeCustomermates
from tests.test_end_to_end import NoSleep, read_issues
from tests.fakes.pipedrive import CLOUDFLARE_HTML, VALID_TOKEN, FakePipedrive

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "pipedrive"
ENTITIES = ("organizations", "contacts", "services", "deals", "tasks")
SOURCES = {"organizations": "organizations", "persons": "contacts", "products": "services", "deals": "deals", "activities": "tasks"}
T0 = "2024-01-02T03:04:05Z"
JOB_TITLE_FIELD = "a1" * 20  # a custom field named like the standard "Job title" column
TIER_FIELD = "b2" * 20  # an enum whose options differ only in case
SCORE_FIELD = "c3" * 20  # a number field


# -- the account ------------------------------------------------------------------------------


def _standard_fields(name: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (SAMPLE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if not r.get("is_custom_field")]


def person(pid: int, name: str | None, **extra: Any) -> dict[str, Any]:
    first, _, last = (name or "").partition(" ")
    record = {
        "id": pid, "name": name, "first_name": first or None, "last_name": last or None, "owner_id": 1, "org_id": None,
        "add_time": T0, "update_time": T0, "emails": [], "phones": [], "is_deleted": False, "visible_to": 3,
        "label_ids": [], "custom_fields": {}, "im": [], "birthday": None, "job_title": None, "postal_address": None,
    }
    record.update(extra)
    return record


def deal(pid: int, title: str, **extra: Any) -> dict[str, Any]:
    record = {
        "id": pid, "title": title, "owner_id": 1, "value": 1000, "currency": "EUR", "person_id": None, "org_id": None,
        "stage_id": 1, "pipeline_id": 1, "status": "open", "is_deleted": False, "add_time": T0, "update_time": T0,
        "expected_close_date": None, "custom_fields": {},
    }
    record.update(extra)
    return record


def note(nid: int, html: str, **target: Any) -> dict[str, Any]:
    record = {"id": nid, "user_id": 1, "person_id": None, "deal_id": None, "org_id": None, "lead_id": None, "content": html,
              "add_time": "2024-01-02 03:04:05", "update_time": "2024-01-02 03:04:05", "active_flag": True}
    record.update(target)
    return record


def clean_account() -> dict[str, list[dict[str, Any]]]:
    """A small, clean Pipedrive account (7 records). Its one user has the email of the fake
    Customermates admin, so owners match and no issue is reported for them."""
    return {
        "users": [{"id": 1, "name": "Ada Admin", "email": "admin@example.com", "locale": "de_DE", "active_flag": True,
                   "is_you": True, "is_deleted": False, "access": [{"app": "global", "admin": True}]}],
        "pipelines": [{"id": 1, "name": "Sales", "order_nr": 1, "is_deleted": False, "add_time": T0, "update_time": T0}],
        "stages": [{"id": 1, "order_nr": 1, "name": "Lead in", "is_deleted": False, "pipeline_id": 1, "add_time": T0, "update_time": T0}],
        "activityTypes": [{"id": 1, "order_nr": 1, "name": "Call", "key_string": "call", "active_flag": True}],
        "currencies": [{"id": 1, "code": "EUR", "name": "Euro"}],
        "leadLabels": [], "leads": [], "leads_archived": [], "deals_archived": [], "deal_products": [],
        **{name: _standard_fields(name) for name in ("personFields", "organizationFields", "dealFields", "productFields", "activityFields")},
        "organizations": [
            {"id": 1, "name": "Acme GmbH", "owner_id": 1, "add_time": T0, "update_time": T0, "is_deleted": False, "website": "https://acme.example", "custom_fields": {}},
            {"id": 2, "name": "Beta AG", "owner_id": 1, "add_time": T0, "update_time": T0, "is_deleted": False, "custom_fields": {}},
        ],
        "persons": [
            person(1, "Anna Normal", org_id=1, emails=[{"value": "anna@acme.example", "primary": True}], phones=[{"value": "+49 30 1234567", "primary": True}]),
            person(2, "Ben Beispiel", org_id=2, emails=[{"value": "ben@beta.example", "primary": True}]),
        ],
        "products": [{"id": 1, "name": "Licence", "owner_id": 1, "is_deleted": False, "add_time": T0, "update_time": T0,
                      "prices": [{"price": 49, "currency": "EUR"}], "custom_fields": {}}],
        "deals": [deal(1, "Acme rollout", person_id=1, org_id=1)],
        "activities": [{"id": 1, "subject": "Kick-off call", "type": "call", "owner_id": 1, "is_deleted": False, "add_time": T0, "update_time": T0,
                        "deal_id": 1, "person_id": 1, "org_id": None, "due_date": "2024-05-02", "due_time": "10:00", "duration": None,
                        "busy": False, "done": False, "participants": [], "note": None, "public_description": ""}],
        "notes": [note(1, "<p>Met at the fair.</p>", person_id=1)],
    }


def live_ids(account: dict[str, list[dict[str, Any]]]) -> dict[str, set[str]]:
    """What must arrive: every record Pipedrive does not mark deleted, by target entity."""
    return {
        entity: {str(r["id"]) for r in account.get(source, []) if not r.get("is_deleted") and r.get("status") != "deleted"}
        for source, entity in SOURCES.items()
    }


# -- reading the target back ------------------------------------------------------------------


def _doc_text(notes: Any) -> str:
    if not isinstance(notes, dict):
        return notes or ""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "text":
                parts.append(node.get("text", ""))
            elif node.get("type") == "hardBreak":
                parts.append("\n")
            for child in node.get("content") or []:
                walk(child)
            if node.get("type") in ("paragraph", "heading", "listItem"):
                parts.append("\n")

    walk(notes)
    return "".join(parts)


@dataclass
class Record:
    fields: dict[str, Any]
    values: dict[str, str]  # column label → value (single selects as their option label)
    links: dict[str, list[str]]  # relation → Pipedrive ids
    notes: str


def read_target(cm: FakeCustomermates) -> dict[tuple[str, str], list[Record]]:
    """Every Customermates record by (entity, Pipedrive ID), as a list so duplicates show."""
    columns = {c["id"]: c for c in cm.columns()}
    raw = {entity: cm.records(entity) for entity in ENTITIES}

    def pid(record: dict[str, Any]) -> str | None:
        return next((c["value"] for c in record["customFieldValues"] if columns[c["columnId"]]["label"] == "Pipedrive ID"), None)

    pid_of = {r["id"]: pid(r) for records in raw.values() for r in records}
    target: dict[tuple[str, str], list[Record]] = {}
    for entity, records in raw.items():
        for r in records:
            values = values_by_label(r, columns)
            links = {rel: sorted(pid_of[x["id"]] for x in r[rel]) for rel in ("organizations", "contacts", "deals", "services") if rel in r and rel != entity}
            fields = {k: r[k] for k in ("name", "firstName", "lastName", "emails", "amount") if k in r}
            target.setdefault((entity, pid(r)), []).append(Record(fields, values, links, _doc_text(r.get("notes"))))
    return target


def assert_each_arrived_once(target: dict[tuple[str, str], list[Record]], account: dict[str, list[dict[str, Any]]]) -> None:
    expected = {(entity, sid) for entity, ids in live_ids(account).items() for sid in ids}
    assert set(target) == expected, f"missing {sorted(expected - set(target))}, unexpected {sorted(set(target) - expected)}"
    duplicated = sorted(key for key, records in target.items() if len(records) != 1)
    assert not duplicated, f"duplicated in Customermates: {duplicated}"


def flat(text: str) -> str:
    """Console output with its line wrapping undone."""
    return " ".join(text.split())


# -- running --------------------------------------------------------------------------------


def invoke(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


@contextmanager
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for the state file: RAM-backed when there is one (DuckDB commits fsync; a
    state file preallocates megabytes), removed afterwards; else tmp_path."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(dir=shm, prefix="migrate-test-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """No backoff sleeps: retried requests are retried at once (the same number of times)."""
    monkeypatch.setattr("migrate.pipedrive.client.wait_exponential_jitter", lambda **_: tenacity.wait_none())
    monkeypatch.setattr("migrate.customermates.client._default_read_wait", tenacity.wait_none)
    monkeypatch.setattr("migrate.customermates.load.time", NoSleep())


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    no_backoff(monkeypatch)


@dataclass
class World:
    """Both fakes, the environment pointing at them, and a place for patches a case undoes."""

    account: dict[str, list[dict[str, Any]]]
    pd: FakePipedrive
    cm: FakeCustomermates
    env: dict[str, str]
    tmp: Path
    patches: pytest.MonkeyPatch = field(default_factory=pytest.MonkeyPatch)
    source: Path | None = None  # an offline snapshot (--source) instead of the fake API
    rerun_from: int = 0  # index of the rerun's first request in pd.requests

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        source = ["--source", str(self.source)] if self.source else []
        return invoke(["run", *source, *args], self.env if env is None else env)

    def report(self, name: str) -> dict[str, Any]:
        return json.loads((self.tmp / name / "report.json").read_text(encoding="utf-8"))

    def issues(self, name: str) -> list[dict[str, str]]:
        return read_issues(self.tmp / name)


@contextmanager
def world(tmp_path: Path, account: dict[str, list[dict[str, Any]]] | None = None) -> Iterator[World]:
    account = account if account is not None else clean_account()
    with state_dir(tmp_path) as state, FakePipedrive(collections=copy.deepcopy(account), burst_limit=10_000) as pd, \
            FakeCustomermates() as cm:
        w = World(account, pd, cm, fakes_env(pd, cm, state / "state.duckdb"), tmp_path)
        try:
            yield w
        finally:
            w.patches.undo()


# =============================================================================================
# Table 1: dirty records, all in one account
# =============================================================================================


Issue = tuple[str, str, str, str, str]  # entity, Pipedrive id, field, rule, fragment of the detail


@dataclass(frozen=True)
class DataCase:
    name: str
    does: str
    dirty: Callable[[dict[str, list[dict[str, Any]]]], None]
    record: tuple[str, str]  # the record the case is about: (entity, Pipedrive id)
    issues: tuple[Issue, ...]  # exactly these issues for that record (none: the value is carried exactly)
    check: Callable[[Record], None]
    arrives: bool = True


def _add(collection: str, *records: dict[str, Any]) -> Callable[[dict[str, list[dict[str, Any]]]], None]:
    def dirty(account: dict[str, list[dict[str, Any]]]) -> None:
        account[collection].extend(copy.deepcopy(list(records)))

    return dirty


def _custom_fields(account: dict[str, list[dict[str, Any]]]) -> None:
    if not any(f["field_code"] == JOB_TITLE_FIELD for f in account["personFields"]):
        account["personFields"] += [
            {"field_code": JOB_TITLE_FIELD, "field_name": "Job title", "field_type": "varchar", "is_custom_field": True, "options": None, "subfields": None},
            {"field_code": TIER_FIELD, "field_name": "Tier", "field_type": "enum", "is_custom_field": True, "subfields": None,
             "options": [{"id": 1, "label": "VIP"}, {"id": 2, "label": "vip"}]},
            {"field_code": SCORE_FIELD, "field_name": "Score", "field_type": "double", "is_custom_field": True, "options": None, "subfields": None},
        ]


def _with_custom_fields(*records: dict[str, Any]) -> Callable[[dict[str, list[dict[str, Any]]]], None]:
    def dirty(account: dict[str, list[dict[str, Any]]]) -> None:
        _custom_fields(account)
        _add("persons", *records)(account)

    return dirty


def _three_mb_note(account: dict[str, list[dict[str, Any]]]) -> None:
    paragraph = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20 + "</p>"
    html = paragraph * (3 * 1024 * 1024 // len(paragraph) + 1)
    assert len(html) >= 3 * 1024 * 1024
    account["persons"].append(person(30, "Long Notes"))
    account["notes"].append(note(30, html, person_id=30))


def _expect(condition: bool, message: str = "") -> None:
    assert condition, message


DATA_CASES: list[DataCase] = [
    DataCase(
        "person_without_name", "a person with no name but an email",
        _add("persons", person(10, None, emails=[{"value": "info@gamma.example", "primary": True}])),
        ("contacts", "10"), (("contacts", "10", "name", "name_missing", "firstName set to 'info'"),),
        lambda r: _expect(r.fields["firstName"] == "info" and r.fields["emails"] == ["info@gamma.example"]),
    ),
    DataCase(
        "person_without_name_or_email", "a person with neither name nor email",
        _add("persons", person(11, "")),
        ("contacts", "11"), (("contacts", "11", "name", "name_missing", "firstName set to '(no name)'"),),
        lambda r: _expect(r.fields["firstName"] == "(no name)"),
    ),
    DataCase(
        "email_non_ascii", "an email with non-ASCII letters (Customermates takes ASCII only)",
        _add("persons", person(12, "Jürgen Müller", emails=[{"value": "jürgen@müller.de", "primary": True}, {"value": "jm@mueller.example", "primary": False}])),
        ("contacts", "12"), (("contacts", "12", "emails", "email_invalid", "'jürgen@müller.de' is not accepted by Customermates"),),
        lambda r: _expect(r.fields["emails"] == ["jm@mueller.example"] and r.values["Other emails"] == "jürgen@müller.de"),
    ),
    DataCase(
        "email_malformed", "an email with two @",
        _add("persons", person(13, "Max Muster", emails=[{"value": "max@@example", "primary": True}])),
        ("contacts", "13"), (("contacts", "13", "emails", "email_invalid", "'max@@example' is not accepted"),),
        lambda r: _expect(r.fields["emails"] == [] and r.values["Other emails"] == "max@@example"),
    ),
    DataCase(
        "phone_with_letters", "a vanity number with letters",
        _add("persons", person(14, "Vanity Number", phones=[{"value": "+1 800 FLOWERS", "primary": True}])),
        ("contacts", "14"), (("contacts", "14", "phones", "phone_not_e164", "'+1 800 FLOWERS' cannot be normalised to E.164; kept as text in 'Phone (as entered)'"),),
        lambda r: _expect(r.values["Phone (as entered)"] == "+1 800 FLOWERS" and "Phone" not in r.values),
    ),
    DataCase(
        "phone_with_extension", "a number with an extension next to a good one",
        _add("persons", person(15, "Ext Ension", phones=[{"value": "+49 30 1234567", "primary": True}, {"value": "+49 30 1234567 ext. 12", "primary": False}])),
        ("contacts", "15"), (("contacts", "15", "phones", "phone_not_e164", "'+49 30 1234567 ext. 12' cannot be normalised"),),
        lambda r: _expect(r.values["Phone"] == "+49301234567" and r.values["Phone (as entered)"] == "+49 30 1234567 ext. 12"),
    ),
    DataCase(
        "note_of_3_mb", "a 3 MB note (Customermates keeps 65,535 characters)",
        _three_mb_note,
        ("contacts", "30"), (("contacts", "30", "notes", "notes_truncated", "notes exceed 65,535 characters"),),
        lambda r: _expect(r.notes.startswith("Ada Admin · 2024-01-02 03:04 UTC") and "characters not migrated]" in r.notes and len(r.notes) <= 65_535),
    ),
    DataCase(
        "note_html_with_scripts", "a note with <script>, an onerror handler and a javascript: link",
        _add("notes", note(31, '<p>Call back <b>soon</b></p><script>alert("x")</script><img src=x onerror="alert(1)">'
                               '<a href="javascript:alert(2)">click</a>', deal_id=1)),
        ("deals", "1"), (),
        lambda r: _expect("Call back soon" in r.notes and "click" in r.notes and "alert" not in r.notes and "<script" not in r.notes, r.notes),
    ),
    DataCase(
        "product_zero_price", "a product priced 0 (Customermates needs amount > 0)",
        _add("products", {"id": 20, "name": "Free pilot", "owner_id": 1, "is_deleted": False, "add_time": T0, "update_time": T0,
                          "prices": [{"price": 0, "currency": "EUR"}], "custom_fields": {}}),
        ("services", "20"), (("services", "20", "prices", "product_zero_price", "price is 0 EUR; Customermates needs an amount > 0, so amount is 0.01"),),
        lambda r: _expect(r.fields["amount"] == 0.01 and r.values["Prices"] == "0 EUR"),
    ),
    DataCase(
        "product_price_not_a_number", "a product whose prices are text with a decimal comma and a number past what a double holds",
        _add("products", {"id": 21, "name": "Odd prices", "owner_id": 1, "is_deleted": False, "add_time": T0, "update_time": T0,
                          "prices": [{"price": "12,50", "currency": "EUR"}, {"price": "1e999", "currency": "USD"}], "custom_fields": {}}),
        ("services", "21"),
        (("services", "21", "prices", "product_zero_price",
          "price is '12,50' (not a number) EUR; '1e999' (past what a number holds) USD; Customermates needs an amount > 0, so amount is 0.01"),
         ("services", "21", "prices", "invalid_value_kept_as_text", "kept as text in 'Prices (as entered)'")),
        lambda r: _expect(r.fields["amount"] == 0.01 and r.values["Prices (as entered)"] == "12,50 EUR, 1e999 USD" and "Prices" not in r.values, str(r)),
    ),
    DataCase(
        "organization_named_by_a_number", "an organization whose name is a JSON number (4711), not text",
        _add("organizations", {"id": 41, "name": 4711, "owner_id": 1, "add_time": T0, "update_time": T0, "is_deleted": False, "custom_fields": {}}),
        ("organizations", "41"), (),
        lambda r: _expect(r.fields["name"] == "4711", str(r)),
    ),
    DataCase(
        "deal_titled_by_a_list", "a deal whose title is a JSON list, not text (carried as its JSON, not lost)",
        _add("deals", deal(41, ["Phase", 2])),  # type: ignore[arg-type]
        ("deals", "41"), (),
        lambda r: _expect(r.fields["name"] == '["Phase", 2]', str(r)),
    ),
    DataCase(
        "currency_not_in_customermates", "a deal value in RUB (not one of Customermates' 27 currencies)",
        _add("deals", deal(20, "Moscow rollout", value=1250000, currency="RUB")),
        ("deals", "20"), (("deals", "20", "value", "currency_unsupported", "1250000 RUB: Customermates has no RUB currency; kept as text in 'Value (other currency)'"),),
        lambda r: _expect(r.values["Value (other currency)"] == "1250000 RUB" and not any(k.startswith("Value (") and k != "Value (other currency)" for k in r.values)),
    ),
    DataCase(
        "currency_missing", "a deal value with no currency (said 'Customermates has no empty currency')",
        _add("deals", deal(42, "No currency", value=980, currency="")),
        ("deals", "42"), (("deals", "42", "value", "currency_unsupported", "980 without a currency, which a currency column needs; kept as text in 'Value (other currency)'"),),
        lambda r: _expect(r.values["Value (other currency)"] == "980", str(r)),
    ),
    DataCase(
        "dates_1970_and_2099", "a birthday on 1970-01-01, a deal created at the epoch and closing on 2099-12-31",
        lambda a: (_add("persons", person(16, "Epoch Born", birthday="1970-01-01"))(a),
                   _add("deals", deal(21, "Far future", add_time="1970-01-01T00:00:00Z", expected_close_date="2099-12-31"))(a)),
        ("deals", "21"), (),
        lambda r: _expect(r.values["Created in Pipedrive"] == "1970-01-01T00:00:00Z" and r.values["Expected close date"] == "2099-12-31"),
    ),
    DataCase(
        "date_1970_birthday", "(the birthday of the case above)",
        lambda a: None,
        ("contacts", "16"), (),
        lambda r: _expect(r.values["Birthday"] == "1970-01-01"),
    ),
    DataCase(
        "dst_edges", "an activity due 2024-03-31 02:30 (no such local time in Berlin) created 2024-10-27 01:30 (twice in Berlin)",
        _add("activities", {"id": 20, "subject": "DST call", "type": "call", "owner_id": 1, "is_deleted": False,
                            "add_time": "2024-10-27T01:30:00Z", "update_time": "2024-03-31T01:30:00Z", "deal_id": None, "person_id": None,
                            "org_id": None, "due_date": "2024-03-31", "due_time": "02:30", "duration": "00:30", "busy": False,
                            "done": False, "participants": [], "note": None, "public_description": ""}),
        ("tasks", "20"), (),
        lambda r: _expect(r.values["Due"] == "2024-03-31T02:30:00Z" and r.values["Created in Pipedrive"] == "2024-10-27T01:30:00Z"
                          and r.values["Updated in Pipedrive"] == "2024-03-31T01:30:00Z", r.values),
    ),
    DataCase(
        "custom_field_named_like_a_standard_one", "a custom field called 'Job title' next to the standard job title",
        _with_custom_fields(person(17, "Two Titles", job_title="Engineer", custom_fields={JOB_TITLE_FIELD: "Chief Tinkerer"})),
        ("contacts", "17"), (),
        lambda r: _expect(r.values["Job title"] == "Engineer" and r.values["Job title (Pipedrive field)"] == "Chief Tinkerer"),
    ),
    DataCase(
        "number_beyond_64_bits", "a number field holding a 30-digit integer (beyond 64 bits: a faster JSON reader, orjson, made it a float)",
        _with_custom_fields(person(31, "Big Score", custom_fields={SCORE_FIELD: 123456789012345678901234567890})),
        ("contacts", "31"), (),
        lambda r: _expect(r.values["Score"] == "123456789012345678901234567890", str(r.values)),
    ),
    DataCase(
        "options_differing_only_in_case", "an enum with options 'VIP' and 'vip': each record keeps its own",
        _with_custom_fields(person(18, "Lower Tier", custom_fields={TIER_FIELD: 2}), person(19, "Upper Tier", custom_fields={TIER_FIELD: 1})),
        ("contacts", "18"), (),
        lambda r: _expect(r.values["Tier"] == "vip"),
    ),
    DataCase(
        "options_differing_only_in_case_upper", "(the other record of the case above)",
        lambda a: None,
        ("contacts", "19"), (),
        lambda r: _expect(r.values["Tier"] == "VIP"),
    ),
    DataCase(
        "option_deleted_in_pipedrive", "an enum value pointing at an option that no longer exists",
        _with_custom_fields(person(21, "Old Tier", custom_fields={TIER_FIELD: 9})),
        ("contacts", "21"), (("contacts", "21", "Tier", "option_unknown", "option id 9 is not among the field's options; carried as 'Deleted option #9'"),),
        lambda r: _expect(r.values["Tier"] == "Deleted option #9"),
    ),
    DataCase(
        "deal_whose_person_was_deleted", "a deal whose person is deleted in Pipedrive (listed with is_deleted)",
        lambda a: (_add("persons", person(22, "Gone Person", is_deleted=True))(a), _add("deals", deal(22, "Orphan deal", person_id=22, org_id=1))(a)),
        ("deals", "22"), (("deals", "22", "person_id", "link_target_not_migrated", "contact 22 is deleted or missing in Pipedrive; link dropped"),),
        lambda r: _expect(r.links["contacts"] == [] and r.links["organizations"] == ["1"]),
    ),
    DataCase(
        "deleted_person_itself", "(the deleted person of the case above: counted, not migrated)",
        lambda a: None,
        ("contacts", "22"), (("contacts", "22", "*", "deleted_in_pipedrive", "persons 22 is deleted in Pipedrive; not written (one migrated before stays: `sync --deletes` marks or removes it)"),),
        lambda r: None, arrives=False,
    ),
    DataCase(
        "deal_whose_person_was_purged", "a deal whose person is gone from Pipedrive altogether",
        _add("deals", deal(23, "Purged person deal", person_id=999)),
        ("deals", "23"), (("deals", "23", "person_id", "link_target_not_migrated", "contact 999 is deleted or missing in Pipedrive; link dropped"),),
        lambda r: _expect(r.links["contacts"] == []),
    ),
    DataCase(
        "website_the_server_refuses", "a website with a '>' in the host (Customermates' URL check refuses it)",
        _add("organizations", {"id": 20, "name": "Gamma KG", "owner_id": 1, "add_time": T0, "update_time": T0, "is_deleted": False,
                               "website": "https://gamma.example>", "custom_fields": {}}),
        ("organizations", "20"), (("organizations", "20", "website", "link_invalid", "'https://gamma.example>' is not a usable URL; kept as text in 'Website (as entered)'"),),
        lambda r: _expect(r.values["Website (as entered)"] == "https://gamma.example>" and "Website" not in r.values),
    ),
    DataCase(
        "number_that_is_text", "a deal value that is text ('1.234,50'), as an old export may have it",
        _add("deals", deal(24, "Text value", value="1.234,50")),
        ("deals", "24"), (("deals", "24", "value", "invalid_value_kept_as_text", "'1.234,50 EUR' cannot be read (not a plain number: '1.234,50'); kept as text in 'Value (as entered)'"),),
        lambda r: _expect(r.values["Value (as entered)"] == "1.234,50 EUR"),
    ),
    DataCase(
        "date_that_does_not_exist", "a birthday on 2023-02-30",
        _add("persons", person(23, "Leap Less", birthday="2023-02-30")),
        ("contacts", "23"), (("contacts", "23", "birthday", "invalid_value_kept_as_text", "'2023-02-30'"),),
        lambda r: _expect(r.values["Birthday (as entered)"] == "2023-02-30" and "Birthday" not in r.values),
    ),
    DataCase(
        "half_an_emoji", "a name ending in half of an emoji (a lone UTF-16 surrogate, as a string cut in two leaves it)",
        _add("persons", person(24, "Zoë \ud83d")),
        ("contacts", "24"),
        (("contacts", "24", "name", "character_replaced", "replaced by U+FFFD"), ("contacts", "24", "last_name", "character_replaced", "replaced by U+FFFD")),
        lambda r: _expect(r.fields["firstName"] == "Zoë" and r.fields["lastName"] == "\ufffd"),
    ),
    DataCase(
        "half_an_emoji_in_a_note", "a note on a person ending in half of an emoji",
        lambda a: (_add("persons", person(25, "Noted Person"))(a), _add("notes", note(32, "<p>Signed \ud83d</p>", person_id=25))(a)),
        ("contacts", "25"), (("contacts", "25", "notes", "character_replaced", "Pipedrive note 32, content: half of a character cut in two"),),
        lambda r: _expect("Signed \ufffd" in r.notes, r.notes),
    ),
]


@dataclass
class DirtyRun:
    account: dict[str, list[dict[str, Any]]]
    first: Result
    report: dict[str, Any]
    issues: list[dict[str, str]]
    target: dict[tuple[str, str], list[Record]]
    second: Result
    second_report: dict[str, Any]
    second_writes: int
    second_target: dict[tuple[str, str], list[Record]]


@pytest.fixture(scope="module")
def dirty_run(tmp_path_factory: pytest.TempPathFactory) -> DirtyRun:
    tmp = tmp_path_factory.mktemp("dirty")
    account = clean_account()
    for case in DATA_CASES:
        case.dirty(account)
    with world(tmp, account) as w:
        first = w.run("--report-dir", str(tmp / "first"))
        report = w.report("first")
        issues = w.issues("first")
        target = read_target(w.cm)
        writes = w.cm.write_count()
        second = w.run("--report-dir", str(tmp / "second"))
        second_writes = w.cm.write_count() - writes
        return DirtyRun(account, first, report, issues, target, second, w.report("second"), second_writes, read_target(w.cm))


def test_the_dirty_account_migrates_whole_and_a_rerun_changes_nothing(dirty_run: DirtyRun) -> None:
    assert dirty_run.first.exit_code == 0, dirty_run.first.output
    assert "Traceback" not in dirty_run.first.output
    assert dirty_run.report["status"] == "ok" and dirty_run.report["quarantined"]["count"] == 0
    assert_each_arrived_once(dirty_run.target, dirty_run.account)
    assert dirty_run.second.exit_code == 0, dirty_run.second.output
    assert dirty_run.second_writes == 0
    assert dirty_run.second_target == dirty_run.target
    assert all(row["created"] == row["updated"] == 0 for row in dirty_run.second_report["entities"].values())


def test_every_issue_of_the_dirty_account_is_in_the_catalogue(dirty_run: DirtyRun) -> None:
    """No surprise: what the report lists is what the table expects, nothing more."""
    expected = {issue[:4] for case in DATA_CASES for issue in case.issues}
    listed = {(i["entity"], i["source_id"], i["field"], i["rule"]) for i in dirty_run.issues}
    assert listed == expected


@pytest.mark.parametrize("case", DATA_CASES, ids=lambda c: c.name)
def test_data_case(case: DataCase, dirty_run: DirtyRun) -> None:
    entity, sid = case.record
    items = [i for i in dirty_run.issues if (i["entity"], i["source_id"]) == (entity, sid)]
    assert len(items) == len(case.issues), items
    for want_entity, want_sid, want_field, want_rule, fragment in case.issues:
        match = [i for i in items if (i["entity"], i["source_id"], i["field"], i["rule"]) == (want_entity, want_sid, want_field, want_rule)]
        assert match, f"no {want_rule} issue for {want_entity} {want_sid} {want_field}: {items}"
        assert any(fragment in i["detail"] for i in match), [i["detail"] for i in match]
    records = dirty_run.target.get(case.record, [])
    if not case.arrives:
        assert records == []
        return
    assert len(records) == 1, f"{case.record}: {len(records)} copies"
    case.check(records[0])


# =============================================================================================
# Table 2: runs that break, and the run after the cause is fixed
# =============================================================================================


@dataclass(frozen=True)
class RunCase:
    name: str
    does: str
    breaks: Callable[[World, dict[str, str]], None]  # changes the fakes, or the environment of the bad run
    exit_code: int
    messages: tuple[str, ...]  # fragments of the output (line wrapping undone)
    after: Callable[[World, Result], None] = lambda w, r: None  # more checks of the bad run
    args: tuple[str, ...] = ()  # of the bad run
    repair: Callable[[World], None] = lambda w: None  # fixes the cause (injected faults are used up by the bad run)
    rerun_args: tuple[str, ...] = ()
    after_rerun: Callable[[World, dict[str, Any]], None] = lambda w, report: None


def _env(**changes: str) -> Callable[[World, dict[str, str]], None]:
    def breaks(w: World, env: dict[str, str]) -> None:
        env.update({k: v.format(pd=w.pd.url, cm=w.cm.url) for k, v in changes.items()})

    return breaks


def _inject(status: int, **kwargs: Any) -> Callable[[World, dict[str, str]], None]:
    def breaks(w: World, env: dict[str, str]) -> None:
        w.pd.inject(status, **kwargs)

    return breaks


def _resumed(w: World, report: dict[str, Any]) -> None:
    """The rerun did not fetch again what the broken run had staged completely."""
    fetched = {r.path for r in w.pd.requests[w.rerun_from:]}
    assert "/api/v1/users" not in fetched and "/api/v2/pipelines" not in fetched, sorted(fetched)


def _nothing_written(w: World, result: Result) -> None:
    assert w.cm.write_count() == 0


def _nothing_requested(w: World, result: Result) -> None:
    assert w.cm.requests == [] and w.pd.requests == []


def _wrong_key_answer(w: World, result: Result) -> None:
    [me] = [r for r in w.cm.requests if r.path == "/api/v1/users/me"]
    assert (me.status, me.response_body, me.headers["x-api-key"]) == (500, b"", "x" * 64)  # the recorded server's answer
    assert w.cm.write_count() == 0 and "x" * 64 not in result.output


PROXY_502 = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"


def _truncated_persons_page(w: World, env: dict[str, str]) -> None:
    page = json.dumps({"success": True, "data": w.account["persons"], "additional_data": {"next_cursor": None}})
    w.pd.inject(200, count=1, path_contains="/api/v2/persons", body=page[: len(page) // 2], content_type="application/json")


def _full_page_without_cursor(w: World, env: dict[str, str]) -> None:
    page = {"success": True, "data": [person(1000 + i, f"Bulk {i}") for i in range(500)], "additional_data": {}}
    w.pd.inject(200, count=1, path_contains="/api/v2/persons", body=json.dumps(page), content_type="application/json")


def _delete_an_organization_in_the_target(w: World, env: dict[str, str]) -> None:
    assert w.run().exit_code == 0
    [acme] = [r for r in w.cm.records("organizations") if r["name"] == "Acme GmbH"]
    response = httpx.request("DELETE", f"{w.cm.url}/api/v1/organizations/many", json={"ids": [acme["id"]]}, headers={"x-api-key": VALID_KEY})
    assert response.status_code == 200
    anna = next(p for p in w.pd.collections["persons"] if p["id"] == 1)
    anna["job_title"], anna["update_time"] = "Head of Sales", "2024-06-01T00:00:00Z"  # so the contact is written again


def _delete_an_organization_in_the_target_during_the_run(w: World, env: dict[str, str]) -> None:
    """As `_delete_an_organization_in_the_target`, but the user deletes it while the run goes on,
    after the run read the organizations: the contact's link names an id the server no longer has."""
    assert w.run().exit_code == 0
    [acme] = [r for r in w.cm.records("organizations") if r["name"] == "Acme GmbH"]
    scan_target = Loader.scan_target

    def deleted_meanwhile(loader: Loader, entity: str) -> None:
        if entity == "contacts" and any(r["id"] == acme["id"] for r in w.cm.records("organizations")):
            w.cm.delete_records("organizations", [acme["id"]])
        scan_target(loader, entity)

    w.patches.setattr(Loader, "scan_target", deleted_meanwhile)
    anna = next(p for p in w.pd.collections["persons"] if p["id"] == 1)
    anna["job_title"], anna["update_time"] = "Head of Sales", "2024-06-01T00:00:00Z"  # so the contact is written again


def _link_dropped(w: World, result: Result) -> None:
    report = w.report("bad")
    assert report["quarantined"]["count"] == 0
    [dropped] = [i for i in w.issues("bad") if i["rule"] == "link_target_deleted_in_target" and i["entity"] == "contacts"]
    assert (dropped["source_id"], dropped["field"]) == ("1", "organizationIds")
    [anna] = read_target(w.cm)[("contacts", "1")]
    assert anna.links["organizations"] == [] and anna.values["Job title"] == "Head of Sales"


def _recreated(w: World, report: dict[str, Any]) -> None:
    assert report["quarantined"]["count"] == 0 and report["entities"]["organizations"]["recreated"] == 1
    [anna] = read_target(w.cm)[("contacts", "1")]
    assert anna.links["organizations"] == ["1"] and anna.values["Job title"] == "Head of Sales"


def _newer_state_file(w: World, env: dict[str, str]) -> None:
    path = Path(env["MIGRATE_STATE"]).with_name("newer.duckdb")
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR); INSERT INTO meta VALUES ('schema_version', '99')")
    con.close()
    env["MIGRATE_STATE"] = str(path)


class _FullDisk:
    """A DuckDB connection on a disk that fills up: the COMMIT that stores the first batch's
    Customermates ids fails the way DuckDB reports it (the transaction is gone), and every
    write after it fails too, until the test frees the disk (undoes the patch)."""

    def __init__(self, con: Any, path: str):
        self._con, self._path = con, path
        # DuckDB looks up a Python variable a query names (staging's page columns) in the frame
        # that calls `execute`: this wrapper's frame sits in between, so DuckDB looks further up.
        con.execute("SET python_scan_all_frames = true")
        self._storing_ids = False
        self.full = False

    def execute(self, sql: str, *args: Any) -> Any:
        words = sql.split()
        verb = words[0].upper() if words else ""
        if self.full and verb in ("INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "DROP", "COMMIT", "CHECKPOINT"):
            raise self._error()
        if verb == "INSERT" and "id_map" in sql:
            self._storing_ids = True
        if verb == "COMMIT" and self._storing_ids:
            self._con.execute("ROLLBACK")
            self.full = True
            raise self._error()
        return self._con.execute(sql, *args)

    def _error(self) -> Exception:
        return duckdb.TransactionException(
            f'TransactionContext Error: Failed to commit: Could not write file "{self._path}.wal": No space left on device'
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _fill_the_disk(w: World, env: dict[str, str]) -> None:
    connect = duckdb.connect
    w.patches.setattr(duckdb, "connect", lambda path, *a, **k: _FullDisk(connect(path, *a, **k), str(path)))


def _first_batch_was_adopted(w: World, report: dict[str, Any]) -> None:
    # the organizations batch reached Customermates but its ids were not stored: found by Pipedrive ID, not sent again
    assert report["entities"]["organizations"]["adopted_after_uncertain_write"] == 2
    assert invoke(["status"], w.env).exit_code == 0


def _write_snapshot(w: World, bad_line: str | None = None) -> None:
    """The account as an offline snapshot (one JSON Lines file per collection), used from now on."""
    w.source = w.tmp / "snapshot"
    w.source.mkdir(exist_ok=True)
    for name, records in w.account.items():
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        if name == "persons" and bad_line is not None:
            lines.insert(1, bad_line)
        (w.source / f"{name}.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")


def _snapshot_with(bad_line: str) -> Callable[[World, dict[str, str]], None]:
    return lambda w, env: _write_snapshot(w, bad_line)


def _snapshot_without_persons(w: World, env: dict[str, str]) -> None:
    """The snapshot with persons.jsonl missing (or misspelt: Persons.jsonl), as a partial export leaves it."""
    _write_snapshot(w)
    (w.source / "persons.jsonl").rename(w.source / "Persons.jsonl")


def _snapshot_in_latin_1(w: World, env: dict[str, str]) -> None:
    """The snapshot with a person's line saved as Latin-1 (an editor's "ANSI"), not UTF-8."""
    _write_snapshot(w)
    path = w.source / "persons.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(1, '{"id": 3, "name": "Jürgen Müller"}\n'.encode("latin-1"))
    path.write_bytes(b"".join(lines))


RUN_CASES: list[RunCase] = [
    # -- tokens and keys ------------------------------------------------------------------------
    RunCase("pipedrive_token_wrong", "a Pipedrive token that Pipedrive does not know", _env(PIPEDRIVE_API_TOKEN="wrong-token-0000"),
            1, ("error: Pipedrive rejected the API token (HTTP 401): check PIPEDRIVE_API_TOKEN",), _nothing_written),
    RunCase("pipedrive_token_empty", "PIPEDRIVE_API_TOKEN set but empty", _env(PIPEDRIVE_API_TOKEN=""),
            2, ("error: missing setting: PIPEDRIVE_API_TOKEN (or --pipedrive-token)",), _nothing_requested),
    RunCase("pipedrive_token_with_newline", "a token pasted with its trailing newline and spaces (stripped, works)",
            _env(PIPEDRIVE_API_TOKEN=f"  {VALID_TOKEN}\n"), 0, ("Status: ok",)),
    RunCase("customermates_key_wrong", "a Customermates key the server does not know: it answers 500 with an empty body",
            _env(CUSTOMERMATES_API_KEY="x" * 64), 1,
            ("error: Customermates rejected the API key (HTTP 500 with an empty body: the key is invalid, expired or disabled, or its user is not active)",),
            _wrong_key_answer),
    RunCase("customermates_key_empty", "CUSTOMERMATES_API_KEY set but empty", _env(CUSTOMERMATES_API_KEY=""),
            2, ("error: missing setting: CUSTOMERMATES_API_KEY (or --customermates-key)",), _nothing_requested),
    RunCase("customermates_key_blank", "a Customermates key of spaces only", _env(CUSTOMERMATES_API_KEY="   "),
            2, ("error: missing setting: CUSTOMERMATES_API_KEY (or --customermates-key)",), _nothing_requested),
    RunCase("customermates_key_with_space_inside", "a key with a space inside (a bad paste)", _env(CUSTOMERMATES_API_KEY=VALID_KEY[:10] + " " + VALID_KEY[10:]),
            2, ("error: invalid settings: customermates_api_key: Value error, contains a space or control character inside it; paste the token again",),
            lambda w, r: (_nothing_requested(w, r), _expect(VALID_KEY[10:] not in r.output))),
    # -- Pipedrive answers ------------------------------------------------------------------------
    RunCase("pipedrive_402_account_not_open", "Pipedrive answers 402: trial expired or unpaid",
            _inject(402, count=1, body='{"success":false,"error":"Company account is not open","errorCode":402}'),
            1, ("error: Pipedrive says the company account is not open (HTTP 402: trial expired or payment missing)",), _nothing_written),
    RunCase("pipedrive_410_removed_endpoint", "Pipedrive answers 410 Gone for the persons list",
            _inject(410, count=1, path_contains="/api/v2/persons", body='{"success":false,"error":"Gone","errorCode":410}'),
            1, ("error: Pipedrive removed /api/v2/persons (HTTP 410 Gone)",), _nothing_written,
            after_rerun=_resumed),
    RunCase("pipedrive_403_cloudflare_page", "Pipedrive's firewall answers 403 with its Cloudflare HTML page",
            _inject(403, count=1, path_contains="/api/v2/deals", body=CLOUDFLARE_HTML, content_type="text/html; charset=UTF-8"),
            1, ("error: Pipedrive blocked the requests (HTTP 403 HTML page from its firewall, usually after too many 429s); stop, wait a few minutes, and run again",),
            _nothing_written),
    RunCase("pipedrive_502_proxy_page_once", "a proxy answers 502 with an HTML page twice, then Pipedrive answers (retried)",
            _inject(502, count=2, path_contains="/api/v2/organizations", body=PROXY_502, content_type="text/html"), 0, ("Status: ok",)),
    RunCase("pipedrive_502_proxy_page_persistent", "a proxy answers 502 with an HTML page to all 6 attempts",
            _inject(502, count=6, path_contains="/api/v2/organizations", body=PROXY_502, content_type="text/html"),
            1, ("error: Pipedrive /api/v2/organizations: gave up after 6 attempts: HTTP 502: an HTML page ('502 Bad Gateway')",), _nothing_written),
    RunCase("pipedrive_html_instead_of_json", "HTTP 200 with a login page (a wrong base URL behind a portal)",
            _inject(200, count=1, path_contains="/api/v1/users/me", body="<!DOCTYPE html><html><head><title>Sign in</title></head><body>…</body></html>", content_type="text/html"),
            1, ("error: Pipedrive /api/v1/users/me: HTTP 200 with an HTML page ('Sign in') instead of JSON; check PIPEDRIVE_BASE_URL",), _nothing_written),
    RunCase("pipedrive_malformed_json_once", "one answer is not JSON at all (retried)",
            _inject(200, count=1, path_contains="/api/v2/products", body='{"success": true, "data": [', content_type="application/json"), 0, ("Status: ok",)),
    RunCase("pipedrive_malformed_json_persistent", "every answer for products is malformed JSON",
            _inject(200, count=6, path_contains="/api/v2/products", body='{"success": true, "data": [{"id": 1,,}]}', content_type="application/json"),
            1, ('error: Pipedrive /api/v2/products: gave up after 6 attempts: malformed JSON from /api/v2/products: {"success": true, "data": [{"id": 1,,}]}',),
            _nothing_written),
    RunCase("pipedrive_truncated_page", "a persons page cut in the middle of its body (retried: nothing half-stored)",
            _truncated_persons_page, 0, ("Status: ok",)),
    RunCase("pipedrive_full_page_without_next_cursor", "a full page of 500 persons without additional_data.next_cursor",
            _full_page_without_cursor, 1,
            (("error: Pipedrive /api/v2/persons: a full page came without additional_data.next_cursor, and the list may go on "
              "(its last record in the other order is 2, not 1499); refusing to guess whether more records exist"),),
            _nothing_written),
    RunCase("pipedrive_daily_budget_spent", "Pipedrive's daily token budget runs out during the extract",
            _inject(429, count=1, path_contains="/api/v2/deals", headers={"x-ratelimit-remaining": "15", "x-daily-ratelimit-token-remaining": "0"}),
            4, ("error: Pipedrive's daily API token budget is used up (HTTP 429); what was extracted is checkpointed",), _nothing_written,
            after_rerun=_resumed),
    RunCase("pipedrive_unreachable", "PIPEDRIVE_BASE_URL points at a closed port", _env(PIPEDRIVE_BASE_URL="http://127.0.0.1:9"),
            1, ("error: cannot reach Pipedrive at http://127.0.0.1:9",), _nothing_written),
    RunCase("pipedrive_wrong_base_url", "PIPEDRIVE_BASE_URL with a path: every API path is 404", _env(PIPEDRIVE_BASE_URL="{pd}/crm"),
            1, ("error: Pipedrive has no /api/v1/users/me (HTTP 404): check PIPEDRIVE_BASE_URL",), _nothing_written),
    # -- Customermates answers ----------------------------------------------------------------------
    RunCase("customermates_refuses_a_link_to_one_deleted_there", "a contact's organization is deleted in Customermates while the run "
            "goes on, after the run read the organizations, and the contact changed in Pipedrive: the server answers 400 (Organization ID "
            "not found at contacts[0].organizationIds[0]), and the contact is sent again without that link: written, reported",
            _delete_an_organization_in_the_target_during_the_run, 0, ("link_target_deleted_in_target", "Status: ok"),
            _link_dropped, repair=lambda w: w.patches.undo(),
            rerun_args=("--on-target-deleted", "recreate", "--on-conflict", "source-wins"), after_rerun=_recreated),
    RunCase("customermates_record_links_one_deleted_there", "a contact's organization was deleted in Customermates between runs and "
            "the contact changed in Pipedrive (written with --on-conflict source-wins): written without that link, reported",
            _delete_an_organization_in_the_target, 0, ("link_target_deleted_in_target", "Status: ok"),
            _link_dropped, args=("--on-conflict", "source-wins"),
            rerun_args=("--on-target-deleted", "recreate", "--on-conflict", "source-wins"), after_rerun=_recreated),
    RunCase("customermates_500_during_load", "one contacts batch answers 500 with an empty body (settled by lookup, sent again)",
            lambda w, env: w.cm.fail_next(1, status=500, path_contains="/contacts/many"), 0, ("Status: ok",)),
    RunCase("customermates_500_persistent", "every write answers 500 (each record fails alone, nothing written between)",
            lambda w, env: w.cm.fail_next(10, status=500, path_contains="/many"), 1,
            ("error: Customermates failed 10 times in a row writing contacts (Outcome unknown for create 1 contacts: HTTP 500 with an empty body.",
             "everything written so far is recorded: run again to resume"),
            lambda w, r: _expect(w.cm.records("organizations") == [] and w.cm.records("contacts") == [])),
    RunCase("customermates_refuses_two_contacts", "two contacts get a 500 every time, the entities after them go through",
            lambda w, env: w.cm.fail_next(7, status=500, path_contains="/contacts/many"), 3, ("Status: partial",),
            lambda w, r: _expect(
                w.cm.records("contacts") == [] and w.report("bad")["quarantined"]["count"] == 2 and bool(w.cm.records("tasks"))
            )),
    RunCase("customermates_drops_the_connection_after_writing", "a deals batch is written, then the connection drops before the answer",
            lambda w, env: w.cm.drop_after_apply(1, path_contains="/deals/many"), 0, ("Status: ok",),
            lambda w, r: _expect(w.report("bad")["entities"]["deals"]["adopted_after_uncertain_write"] == 1)),
    RunCase("customermates_unreachable", "CUSTOMERMATES_URL points at a closed port", _env(CUSTOMERMATES_URL="http://127.0.0.1:9"),
            1, ("error: Could not get an answer from Customermates at http://127.0.0.1:9 for GET /users/me after 5 attempt(s): ConnectError",)),
    # -- the state file -----------------------------------------------------------------------------
    RunCase("state_file_from_a_newer_version", "a state file whose schema version is 99", _newer_state_file, 1,
            ("was written by a newer version of migrate (schema 99, this version understands 1); upgrade migrate or use another state file",),
            _nothing_requested),
    RunCase("state_file_disk_full", "the disk fills up while the first batch's ids are stored", _fill_the_disk, 1,
            ("error: cannot write the state file", 'Failed to commit: Could not write file', "No space left on device. Free disk space",
             "what was committed before is kept and the run resumes from there"),
            repair=lambda w: w.patches.undo(), after_rerun=_first_batch_was_adopted),
    # -- offline snapshots (--source) ---------------------------------------------------------------
    RunCase("snapshot_line_not_json", "a --source snapshot with a broken line in persons.jsonl", _snapshot_with('{"id": 3, "name": "Cut'), 1,
            ("persons.jsonl:2: not valid JSON at column 23 (Invalid control character)",), repair=_write_snapshot),
    RunCase("snapshot_file_missing", "a --source snapshot without persons.jsonl (there as Persons.jsonl): a warning, not a silent empty collection",
            _snapshot_without_persons, 0, ("has no file for persons (persons.jsonl): read as holding no records", "Status: ok"),
            lambda w, r: _expect(w.cm.records("contacts") == []), repair=_write_snapshot),
    RunCase("snapshot_line_not_utf_8", "a --source snapshot with a line in persons.jsonl saved as Latin-1", _snapshot_in_latin_1, 1,
            ("persons.jsonl:2: not valid UTF-8 at byte 21 of the line (invalid start byte); save the file as UTF-8",), repair=_write_snapshot),
    RunCase("snapshot_record_without_id", "a --source snapshot with a person that has no id", _snapshot_with('{"name": "Nobody"}'), 1,
            ('error: a persons record has no id: {"name": "Nobody"}',), repair=_write_snapshot),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=lambda c: c.name)
def test_run_case(case: RunCase, tmp_path: Path, fast_retries: None) -> None:
    with world(tmp_path) as w:
        env = dict(w.env)
        case.breaks(w, env)
        result = w.run(*case.args, "--report-dir", str(tmp_path / "bad"), env=env)
        assert result.exit_code == case.exit_code, result.output
        assert "Traceback" not in result.output
        for fragment in case.messages:
            assert fragment in flat(result.output), result.output
        case.after(w, result)

        case.repair(w)
        w.rerun_from = len(w.pd.requests)
        rerun = w.run(*case.rerun_args, "--report-dir", str(tmp_path / "good"))
        assert rerun.exit_code == 0, rerun.output
        assert_each_arrived_once(read_target(w.cm), w.account)
        case.after_rerun(w, w.report("good"))


def test_the_catalogue_covers_at_least_thirty_cases() -> None:
    names = [c.name for c in DATA_CASES] + [c.name for c in RUN_CASES] + ["sigterm_mid_run", "customermates_no_key_reaches_the_server"]
    assert len(names) == len(set(names)) and len(names) >= 30


# =============================================================================================
# Cases of their own shape
# =============================================================================================


def test_sigterm_mid_run_stops_with_one_line_and_a_rerun_completes(tmp_path: Path) -> None:
    """`migrate run` as a child process; SIGTERM lands while a contacts batch has been written in
    Customermates and its answer is still on the way (the hardest instant for exactly-once)."""
    from tests.crash_harness import migrate_env

    account = clean_account()
    with state_dir(tmp_path) as state, FakePipedrive(collections=copy.deepcopy(account), burst_limit=10_000) as pd, \
            FakeCustomermates() as cm:
        env = migrate_env(pd, cm, state / "state.duckdb")
        cm.stall_next(10.0, count=1)  # the first write is applied, its answer held back
        child = subprocess.Popen([sys.executable, "-m", "migrate", "run"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not any(r.path.endswith("/many") for r in cm.requests):
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "no write within 30 s"
                time.sleep(0.02)
            sent = time.monotonic()
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert time.monotonic() - sent < 5
        stderr = err.decode()
        assert child.returncode == 128 + signal.SIGTERM, stderr
        assert stderr.strip() == (
            "error: interrupted by SIGTERM; everything written so far is recorded in the state file: run the same command again to resume"
        )
        assert len(cm.records("organizations")) == 2  # the batch in flight did arrive

        rerun = invoke(["run", "--report-dir", str(tmp_path / "r")], {k: env[k] for k in env if k.startswith(("PIPEDRIVE", "CUSTOMERMATES", "MIGRATE"))})
        assert rerun.exit_code == 0, rerun.output
        report = json.loads((tmp_path / "r" / "report.json").read_text())
        assert report["entities"]["organizations"]["adopted_after_uncertain_write"] == 2
        assert_each_arrived_once(read_target(cm), account)


def test_an_empty_key_that_reaches_the_server_gets_401_in_one_line() -> None:
    """The CLI never sends an empty key (exit 2 above); the client, used on its own, sends no
    header at all and the server answers 401 "Not authenticated"."""
    from migrate.customermates.client import AuthenticationError, CustomermatesClient

    with FakeCustomermates() as cm, CustomermatesClient(cm.url, "") as client:
        with pytest.raises(AuthenticationError) as caught:
            client.me()
        [request] = cm.requests
        assert "x-api-key" not in request.headers and request.status == 401
    assert caught.value.status == 401
    assert str(caught.value) == "Customermates refused GET /users/me: HTTP 401 'Not authenticated' (no API key was sent, or it was empty)"


def test_a_key_sent_to_a_server_that_answers_401_is_not_said_to_be_missing() -> None:
    """Customermates answers 401 only to a request without a key. CUSTOMERMATES_URL pointed at another
    server (Pipedrive's, say) got 401 for the key sent, and the message said no key was sent."""
    from migrate.customermates.client import AuthenticationError, CustomermatesClient

    with FakePipedrive() as pd, CustomermatesClient(pd.url, VALID_KEY) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.me()
        assert "no API key was sent" not in str(caught.value)
        assert f"a key was sent; is {pd.url} a Customermates server? It answers 401 only to a request without one" in str(caught.value)


@pytest.mark.parametrize("command", [["verify"], ["undo"]])
def test_verify_and_undo_with_a_key_the_server_does_not_know_say_the_key_was_rejected(command: list[str], tmp_path: Path, fast_retries: None) -> None:
    """A run checks the key first and says it was rejected; verify and undo went straight to reading, retried
    the server's 500 and said a read failed "with an empty body"."""
    with world(tmp_path) as w:
        assert w.run().exit_code == 0
        result = CliRunner().invoke(cli, command, env={**w.env, "CUSTOMERMATES_API_KEY": "x" * 64})
        assert result.exit_code == 1, result.output
        assert "error: Customermates rejected the API key (HTTP 500 with an empty body" in flat(result.output)
        assert "Traceback" not in result.output
