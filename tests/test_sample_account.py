"""The bundled sample Pipedrive account (samples/pipedrive) is complete, realistic, dirty on purpose and reproducible."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "pipedrive"

_spec = importlib.util.spec_from_file_location("samples_generate", ROOT / "samples" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

HEX40 = re.compile(r"^[0-9a-f]{40}$")
V2_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
V1_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
LEAD_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DATE = re.compile(r"^\d{4}-\d\d-\d\d$")
CUSTOMERMATES_CURRENCIES = set(
    "eur usd gbp jpy cny inr brl cad aud chf sek nok dkk pln czk huf try twd zar mxn krw hkd sgd nzd aed sar ils".split()
)

EXPECTED_RANGES = {
    "users": (5, 5), "organizations": (35, 45), "persons": (110, 130), "deals": (60, 70), "deals_archived": (5, 8),
    "deal_products": (70, 90), "products": (12, 18), "activities": (110, 130), "notes": (80, 100), "pipelines": (2, 2),
    "stages": (8, 10), "leads": (7, 9), "leads_archived": (2, 2), "activityTypes": (6, 12), "currencies": (5, 40),
    "personFields": (10, 60), "organizationFields": (10, 60), "dealFields": (10, 60), "productFields": (5, 60),
    "activityFields": (10, 60), "leadLabels": (2, 10),
}
ENTITY_FILES = {"person": ("personFields", "persons"), "organization": ("organizationFields", "organizations"),
                "deal": ("dealFields", "deals"), "product": ("productFields", "products")}


def load(name: str) -> list[dict]:
    with (SAMPLE / f"{name}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def account() -> dict[str, list[dict]]:
    return {name: load(name) for name in generate.COLLECTION_FILES}


def test_every_collection_file_exists_and_parses(account):
    assert set(EXPECTED_RANGES) == set(generate.COLLECTION_FILES)
    for name in generate.COLLECTION_FILES:
        text = (SAMPLE / f"{name}.jsonl").read_text(encoding="utf-8")
        assert text.endswith("\n") and "\r" not in text
        assert all(isinstance(r, dict) for r in account[name])


@pytest.mark.parametrize("name", sorted(EXPECTED_RANGES))
def test_counts_are_in_the_intended_ranges(account, name):
    low, high = EXPECTED_RANGES[name]
    assert low <= len(account[name]) <= high, (name, len(account[name]))


def test_ids_are_unique_and_ascending(account):
    for name in ("persons", "organizations", "deals", "deals_archived", "deal_products", "products", "activities",
                 "notes", "pipelines", "stages", "users"):
        ids = [r["id"] for r in account[name]]
        assert ids == sorted(set(ids)), name
    deal_ids = [r["id"] for r in account["deals"]] + [r["id"] for r in account["deals_archived"]]
    assert len(deal_ids) == len(set(deal_ids))


def test_all_sixteen_custom_field_types_are_covered_with_values(account):
    assert len(generate.CUSTOM_FIELD_TYPES) == 16
    seen_types: set[str] = set()
    for entity, (fields_file, records_file) in ENTITY_FILES.items():
        custom = [f for f in account[fields_file] if f["is_custom_field"]]
        for f in custom:
            assert HEX40.match(f["field_code"]), f
            values = [r["custom_fields"][f["field_code"]] for r in account[records_file]]
            assert any(v is not None for v in values), (entity, f["field_name"])
            seen_types.add(f["field_type"])
        for record in account[records_file]:
            assert set(record["custom_fields"]) == {f["field_code"] for f in custom}
    assert seen_types == set(generate.CUSTOM_FIELD_TYPES)


def _check_v2_value(ftype: str, value, options: set) -> None:
    if value is None:
        return
    if ftype in ("varchar", "varchar_auto", "text", "phone"):
        assert isinstance(value, str)
    elif ftype == "double":
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ftype == "monetary":
        assert set(value) == {"value", "currency"} and isinstance(value["value"], (int, float))
    elif ftype == "date":
        assert DATE.match(value)
    elif ftype == "daterange":
        assert set(value) == {"value", "until"} and DATE.match(value["value"]) and DATE.match(value["until"])
    elif ftype == "time":
        assert set(value) == {"value", "timezone_id", "timezone_name"} and isinstance(value["timezone_id"], int)
    elif ftype == "timerange":
        assert set(value) == {"value", "until", "timezone_id", "timezone_name"}
    elif ftype == "enum":
        assert isinstance(value, int) and value in options
    elif ftype == "set":
        assert isinstance(value, list) and value and all(isinstance(v, int) and v in options for v in value)
    elif ftype in ("user", "org", "people"):
        assert isinstance(value, int) and not isinstance(value, bool)
    elif ftype == "address":
        assert "value" in value and {"locality", "postal_code", "formatted_address", "route"} <= set(value)
    else:
        raise AssertionError(ftype)


def test_v2_custom_field_encodings_follow_contract(account):
    for fields_file, records_file in ENTITY_FILES.values():
        for f in (f for f in account[fields_file] if f["is_custom_field"]):
            options = {o["id"] for o in f["options"] or []}
            if f["field_type"] in ("enum", "set"):
                assert options
            for record in account[records_file]:
                _check_v2_value(f["field_type"], record["custom_fields"][f["field_code"]], options)


def test_leads_use_v1_flat_deal_field_encoding(account):
    deal_custom = {f["field_code"]: f for f in account["dealFields"] if f["is_custom_field"]}
    seen = Counter()
    for lead in account["leads"] + account["leads_archived"]:
        assert "custom_fields" not in lead
        for key, value in lead.items():
            base = key[:40]
            if not HEX40.match(base):
                continue
            assert base in deal_custom, key
            if key == base:
                assert value is not None  # unset custom fields are omitted, not null
            ftype = deal_custom[base]["field_type"]
            if key == base:
                seen[ftype] += 1
                if ftype == "enum":
                    assert isinstance(value, str) and value.isdigit()
                elif ftype == "set":
                    assert isinstance(value, str) and all(p.isdigit() for p in value.split(","))
                elif ftype in ("monetary", "double"):
                    assert isinstance(value, (int, float))
                elif ftype in ("daterange", "timerange"):
                    assert f"{key}_until" in lead
                elif ftype == "address":
                    assert isinstance(value, str) and f"{key}_locality" in lead
            if ftype == "monetary" and key == base:
                assert f"{key}_currency" in lead
    assert seen["enum"] and seen["set"] and seen["monetary"]


def test_standard_fields_are_described(account):
    def codes(name):
        return {f["field_code"]: f for f in account[name] if not f["is_custom_field"]}

    person, org, deal, activity = codes("personFields"), codes("organizationFields"), codes("dealFields"), codes("activityFields")
    assert {"name", "owner_id", "org_id", "emails", "phones", "label_ids"} <= set(person)
    assert person["label_ids"]["options"] and org["industry"]["options"] and activity["priority"]["options"]
    assert {"title", "value", "currency", "status", "stage_id", "label_ids"} <= set(deal)
    assert all(not f["is_custom_field"] for f in account["activityFields"])
    for name in ("personFields", "organizationFields", "dealFields", "productFields", "activityFields"):
        for f in account[name]:
            assert {"field_code", "field_name", "field_type", "is_custom_field", "options", "subfields"} <= set(f)
            if f["field_type"] in ("monetary", "daterange", "timerange", "time", "address") and f["is_custom_field"]:
                assert f["subfields"], f


def test_field_quirks(account):
    person_custom = [f for f in account["personFields"] if f["is_custom_field"]]
    standard_names = {f["field_name"].lower() for f in account["personFields"] if not f["is_custom_field"]}
    assert any(f["field_name"].lower() in standard_names for f in person_custom)  # custom "Email" vs standard
    labels_differing_by_case = False
    for name in ENTITY_FILES.values():
        for f in account[name[0]]:
            labels = [o["label"] for o in f["options"] or []]
            if len({lab.lower() for lab in labels}) < len(labels):
                labels_differing_by_case = True
    assert labels_differing_by_case
    assert any(f["field_type"] == "set" and f["is_custom_field"] for n in ENTITY_FILES.values() for f in account[n[0]])


def test_timestamp_formats_per_collection(account):
    for name in ("persons", "organizations", "deals", "deals_archived", "products", "activities", "deal_products", "pipelines"):
        for r in account[name]:
            assert V2_TIME.match(r["add_time"]) and V2_TIME.match(r["update_time"]), (name, r["id"])
    for r in account["deals"] + account["deals_archived"]:
        for key in ("won_time", "lost_time", "close_time", "stage_change_time", "archive_time"):
            assert r[key] is None or V2_TIME.match(r[key])
    for name in ("notes", "activityTypes"):
        for r in account[name]:
            assert V1_TIME.match(r["add_time"]) and V1_TIME.match(r["update_time"])
    for r in account["users"]:
        assert V1_TIME.match(r["created"])
    for name in ("leads", "leads_archived", "leadLabels"):
        for r in account[name]:
            assert LEAD_TIME.match(r["add_time"]) and LEAD_TIME.match(r["update_time"])


def test_deals_shape_statuses_currencies(account):
    deals = account["deals"]
    statuses = Counter(d["status"] for d in deals)
    assert statuses["open"] and statuses["won"] and statuses["lost"] and 3 <= statuses["deleted"] <= 6
    assert all(d["is_deleted"] == (d["status"] == "deleted") for d in deals)
    assert all(d["is_archived"] and d["archive_time"] for d in account["deals_archived"])
    assert not any(d["is_archived"] for d in deals)
    assert all(d["won_time"] for d in deals if d["status"] == "won")
    assert all(d["lost_time"] for d in deals if d["status"] == "lost")
    assert any(d["lost_reason"] for d in deals) and any(d["probability"] is not None for d in deals)
    currencies = {d["currency"] for d in deals}
    assert {"EUR", "USD", "GBP", "CHF"} <= currencies
    assert any(c.lower() not in CUSTOMERMATES_CURRENCIES for c in currencies)
    assert {d["pipeline_id"] for d in deals} == {1, 2}
    stage_pipeline = {s["id"]: s["pipeline_id"] for s in account["stages"]}
    assert all(stage_pipeline[d["stage_id"]] == d["pipeline_id"] for d in deals + account["deals_archived"])
    custom_codes = {c["code"] for c in account["currencies"] if c["is_custom_flag"]}
    assert custom_codes & currencies


def test_references_and_products(account):
    all_deals = {d["id"]: d for d in account["deals"] + account["deals_archived"]}
    products = {p["id"]: p for p in account["products"]}
    for row in account["deal_products"]:
        assert row["deal_id"] in all_deals and row["product_id"] in products
        assert row["currency"] == all_deals[row["deal_id"]]["currency"]
    for deal in all_deals.values():
        assert deal["products_count"] == sum(1 for r in account["deal_products"] if r["deal_id"] == deal["id"])
    assert any(all(p["price"] == 0 for p in prod["prices"]) for prod in products.values())
    assert any(len(prod["prices"]) == 2 for prod in products.values())
    assert len({p["currency"] for prod in products.values() for p in prod["prices"]}) >= 4
    persons = {p["id"] for p in account["persons"]}
    assert all(d["person_id"] is None or d["person_id"] in persons for d in all_deals.values())


def test_dirty_data_is_present(account):
    persons = {p["id"]: p for p in account["persons"]}
    emails = [e["value"] for p in persons.values() for e in p["emails"]]
    phones = [ph["value"] for p in persons.values() for ph in p["phones"]]
    names = [p["name"] for p in persons.values()]
    assert any(p["name"] == "" and p["first_name"] == "" and p["last_name"] == "" for p in persons.values())
    assert "jürgen@müller.de" in emails and "max@@example" in emails and "anna@" in emails
    assert "+49 30 1234567 ext. 12" in phones and "call me" in phones
    assert any(ph.startswith("0") for ph in phones)  # no country code
    assert any(any(ord(ch) > 0xFFFF for ch in n) for n in names)  # emoji
    assert any(any("\u0590" <= ch <= "\u06ff" for ch in n) for n in names)  # Hebrew / Arabic (RTL)
    deleted_persons = {pid for pid, p in persons.items() if p["is_deleted"]}
    assert len(deleted_persons) == 3
    assert sum(o["is_deleted"] for o in account["organizations"]) == 1
    assert any(d["person_id"] in deleted_persons for d in account["deals"] if d["status"] != "deleted")
    deleted_deals = {d["id"] for d in account["deals"] if d["status"] == "deleted"}
    assert any(a["deal_id"] in deleted_deals for a in account["activities"])
    dates = [d["expected_close_date"] for d in account["deals"]] + [a["due_date"] for a in account["activities"]]
    assert any(x and x.startswith("2099") for x in dates) and any(x and x.startswith("1970") for x in dates)
    contents = [n["content"] for n in account["notes"]]
    assert any(len(c) > 70_000 for c in contents)
    for needle in ("<script", "<table", "<img", "<br", "<ul>", "<b>", "<a href", "&amp;"):
        assert any(needle in c for c in contents), needle
    assert any("<script" in (a["note"] or "") for a in account["activities"])
    assert any(n["deal_id"] and n["person_id"] and n["org_id"] for n in account["notes"])
    assert any(n["lead_id"] for n in account["notes"])


def test_activities_and_users(account):
    activities = account["activities"]
    types = {a["type"] for a in activities}
    assert {"call", "meeting", "task", "email", "deadline", "lunch"} <= types
    assert {a["type"] for a in activities} <= {t["key_string"] for t in account["activityTypes"]}
    assert any(a["done"] for a in activities) and any(not a["done"] for a in activities)
    assert any(a["due_time"] for a in activities) and any(a["due_time"] is None for a in activities)
    assert any(len(a["participants"]) > 1 for a in activities)
    assert any(a["deal_id"] for a in activities) and any(a["org_id"] and not a["person_id"] for a in activities)
    users = account["users"]
    assert sum(not u["active_flag"] for u in users) == 1
    assert sum(u["is_you"] for u in users) == 1
    assert any(not u["email"].endswith("@nordlicht-systems.de") for u in users)


def test_generation_is_deterministic_and_matches_the_committed_sample(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    counts = generate.generate_account(first, seed=7)
    assert generate.generate_account(second, seed=7) == counts
    for name in generate.COLLECTION_FILES:
        data = (first / f"{name}.jsonl").read_bytes()
        assert data == (second / f"{name}.jsonl").read_bytes(), name
        assert data == (SAMPLE / f"{name}.jsonl").read_bytes(), f"samples/pipedrive/{name}.jsonl is stale"
        assert counts[name] == data.count(b"\n")
    other = tmp_path / "c"
    generate.generate_account(other, seed=8)
    assert (other / "persons.jsonl").read_bytes() != (first / "persons.jsonl").read_bytes()


def test_scale_mode_proportions(tmp_path):
    counts = generate.generate_account(tmp_path, seed=3, scale=5000)
    total = sum(counts.values())
    assert 4800 <= total <= 5400
    assert 0.38 <= counts["persons"] / total <= 0.42
    assert 0.08 <= counts["organizations"] / total <= 0.12
    assert 0.12 <= (counts["deals"] + counts["deals_archived"]) / total <= 0.16
    assert 0.18 <= counts["activities"] / total <= 0.22
    assert 0.08 <= counts["notes"] / total <= 0.12
    assert counts["deal_products"] and counts["products"] and counts["leads"]
    for name, count in counts.items():
        lines = (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == count
        json.loads(lines[-1]) if lines else None
    again = tmp_path / "again"
    generate.generate_account(again, seed=3, scale=5000)
    assert (again / "notes.jsonl").read_bytes() == (tmp_path / "notes.jsonl").read_bytes()
