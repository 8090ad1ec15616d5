"""Tests of the fake Customermates server (tests/fakes/customermates.py).

1. Replay fidelity: every exchange recorded against a real server
   (``recorded/*.yaml``) is replayed against a fresh fake, ids are mapped from
   the recording to the fake, and status codes, error texts and body shapes must
   match.
2. Focused behaviour tests, one per behaviour the migration tool relies on.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.fakes import toon, zod_messages
from tests.fakes.customermates import (
    CONTRACT_DIR,
    DEFAULT_USERS,
    VALID_KEY,
    VALID_KEY_USER2,
    FakeCustomermates,
    markdown_to_tiptap,
)

RECORDED = CONTRACT_DIR / "recorded"
ADMIN_ID = DEFAULT_USERS[0]["id"]
JANE_ID = DEFAULT_USERS[1]["id"]
UNKNOWN_ID = "9b2f4c1e-7d3a-4e5b-8c6d-0a1b2c3d4e5f"
UUID_ANY = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

pytestmark = pytest.mark.skipif(not RECORDED.is_dir(), reason="contract recordings not available")


# ==========================================================================
# replay of the recordings

# Interactions that cannot be replayed one after another. 12_concurrency's
# rounds ran 4 batches in parallel (their outcome depends on timing); the two
# searches at the end count what those rounds wrote. The sequential prefix is
# replayed; the concurrent behaviour has its own test below.
NOT_REPLAYABLE: dict[str, set[int]] = {
    "12_concurrency.yaml": set(range(8, 18)),
}
# Interactions whose body depends on timing/randomness: compare the shape only.
SHAPE_ONLY: dict[str, set[int]] = {
    # page 1 of 5 *without* sortDescriptor: the real server returned the rows in
    # database (uuid) order, so which 5 contacts come back depends on random ids.
    "08_search.yaml": {11},
}

CASSETTES = sorted(p.name for p in RECORDED.glob("*.yaml")) if RECORDED.is_dir() else []
SKIPPED_HEADERS = {"host", "content-length", "accept-encoding", "connection", "user-agent"}
TIMESTAMP_KEYS = {"createdAt", "updatedAt"}


def _load(name: str) -> list[dict]:
    with open(RECORDED / name, encoding="utf-8") as fh:
        return yaml.safe_load(fh)["interactions"]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _monotonic_ids():
    """uuid4-shaped ids in creation order (so ties and unsorted lists are deterministic)."""
    counter = itertools.count(1)

    def factory() -> str:
        n = next(counter)
        return f"{n:08x}-0000-4000-8000-{n:012x}"

    return factory


class IdMap:
    """real id (from the recording) <-> fake id (from the replay)."""

    def __init__(self) -> None:
        self.real_to_fake: dict[str, str] = {}
        self.fake_to_real: dict[str, str] = {}

    def learn(self, real: str, fake: str) -> None:
        if real == fake or real in self.real_to_fake or fake in self.fake_to_real:
            return
        self.real_to_fake[real] = fake
        self.fake_to_real[fake] = real

    def walk(self, real: Any, fake: Any) -> None:
        if isinstance(real, dict) and isinstance(fake, dict):
            for key in real.keys() & fake.keys():
                self.walk(real[key], fake[key])
        elif isinstance(real, list) and isinstance(fake, list):
            for a, b in zip(real, fake, strict=False):
                self.walk(a, b)
        elif isinstance(real, str) and isinstance(fake, str):
            if UUID_ANY.fullmatch(real) and UUID_ANY.fullmatch(fake):
                self.learn(real, fake)
            elif UUID_ANY.search(real) and UUID_ANY.search(fake):
                # TOON text of MCP answers (and other texts): map ids by position
                ra, fa = UUID_ANY.findall(real), UUID_ANY.findall(fake)
                if len(ra) == len(fa):
                    for a, b in zip(ra, fa, strict=True):
                        self.learn(a, b)

    def to_fake(self, text: str) -> str:
        return UUID_ANY.sub(lambda m: self.real_to_fake.get(m.group(0), m.group(0)), text)

    def to_real(self, text: str) -> str:
        return UUID_ANY.sub(lambda m: self.fake_to_real.get(m.group(0), m.group(0)), text)


def _normalise(value: Any, ids: IdMap) -> Any:
    """Fake ids -> recorded ids, timestamps -> placeholder."""
    if isinstance(value, dict):
        return {
            k: ("<ts>" if k in TIMESTAMP_KEYS and isinstance(v, str) else _normalise(v, ids)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalise(v, ids) for v in value]
    if isinstance(value, str):
        return ids.to_real(value)
    return value


def _strip_timestamps(value: Any) -> Any:
    return _normalise(value, IdMap())


def _unordered_items(value: Any) -> Any:
    """Search results without a sortDescriptor come back in unspecified order."""
    if isinstance(value, dict) and "items" in value and "pagination" in value and "sortDescriptor" not in value:
        value = dict(value)
        value["items"] = sorted(value["items"], key=lambda item: json.dumps(item, sort_keys=True))
    return value


def _shape(value: Any, depth: int = 0) -> Any:
    """Keys of objects (recursively), types of scalars, lengths of top-level arrays."""
    if isinstance(value, dict):
        return {k: _shape(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth > 1:
            return "list"
        first = [_shape(value[0], depth + 1)] if value and isinstance(value[0], dict) else []
        return ["list", len(value)] + first
    return type(value).__name__


def _sse_payloads(body: str) -> list[Any]:
    out = []
    for block in body.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("data: ")]
        if lines:
            out.append(json.loads("".join(line[len("data: "):] for line in lines)))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal including the key order of every object."""
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def _first_diff(a: Any, b: Any, path: str = "$") -> str:
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} != {type(b).__name__} ({str(a)[:120]!r} vs {str(b)[:120]!r})"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            if not _same(a[k], b[k]):
                return _first_diff(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if not _same(x, y):
                return _first_diff(x, y, f"{path}[{i}]")
    return f"{path}: {str(a)[:300]!r} != {str(b)[:300]!r}"


def replay(name: str) -> tuple[list[str], int]:
    """Replay one cassette; return (differences, number of interactions compared)."""
    interactions = _load(name)
    skip = NOT_REPLAYABLE.get(name, set())
    shape_only = SHAPE_ONLY.get(name, set())
    diffs: list[str] = []
    compared = 0
    ids = IdMap()
    fake = FakeCustomermates(
        users=DEFAULT_USERS,
        api_keys={"REDACTED": ADMIN_ID, "REDACTED_USER2": JANE_ID},
        id_factory=_monotonic_ids(),
    )
    with fake, httpx.Client(base_url=fake.url, timeout=20) as client:
        for idx, interaction in enumerate(interactions):
            if idx in skip:
                continue
            req, rec = interaction["request"], interaction["response"]
            split = urlsplit(req["uri"])
            target = ids.to_fake(split.path + (f"?{split.query}" if split.query else ""))
            headers = {
                k: v[0] if isinstance(v, list) else v
                for k, v in (req.get("headers") or {}).items()
                if k.lower() not in SKIPPED_HEADERS
            }
            body = ids.to_fake(_text(req.get("body")))
            response = client.request(req["method"], target, headers=headers, content=body.encode("utf-8") if body else None)
            compared += 1
            label = f"{name}[{idx}] {req['method']} {split.path}"
            want_status = rec["status"]["code"]
            if response.status_code != want_status:
                diffs.append(f"{label}: status {response.status_code} != recorded {want_status}: {response.text[:300]!r}")
                continue
            want_text = _text(rec["body"]["string"])
            got_text = response.text
            rec_ctype = (rec.get("headers") or {}).get("content-type", [""])[0]
            if rec_ctype.startswith("text/event-stream"):
                want_events, got_events = _sse_payloads(want_text), _sse_payloads(got_text)
                ids.walk(want_events, got_events)
                if idx in shape_only:
                    ok = _shape(want_events) == _shape(got_events)
                else:
                    ok = _same(want_events, _normalise(got_events, ids))
                if not ok:
                    diffs.append(f"{label}: SSE body differs: {_first_diff(want_events, _normalise(got_events, ids))}")
                continue
            if want_text == "":
                if got_text != "":
                    diffs.append(f"{label}: expected an empty body, got {got_text[:200]!r}")
                continue
            want = json.loads(want_text)
            try:
                got = json.loads(got_text)
            except ValueError:
                diffs.append(f"{label}: body is not JSON: {got_text[:200]!r}")
                continue
            ids.walk(want, got)
            if isinstance(want, str):
                got_real = ids.to_real(got) if isinstance(got, str) else got
                if got_real != want:
                    diffs.append(f"{label}: error text differs:\n    recorded: {want!r}\n    fake:     {got_real!r}")
                continue
            if idx in shape_only:
                if _shape(want) != _shape(got):
                    diffs.append(f"{label}: shape differs: {_first_diff(_shape(want), _shape(got))}")
                continue
            want_n = _unordered_items(_strip_timestamps(want))
            got_n = _unordered_items(_normalise(got, ids))
            if not _same(want_n, got_n):
                diffs.append(f"{label}: body differs: {_first_diff(want_n, got_n)}")
        if fake.errors:
            diffs.extend(f"{name}: fake raised {e}" for e in fake.errors)
    return diffs, compared


@pytest.mark.parametrize("cassette", CASSETTES)
def test_replay_matches_recording(cassette: str) -> None:
    diffs, compared = replay(cassette)
    assert compared > 0
    assert not diffs, f"{len(diffs)} of {compared} interactions differ:\n" + "\n".join(diffs)


def test_all_required_cassettes_are_replayed() -> None:
    required = {f"{n:02d}_" for n in range(1, 12)}
    present = {name[:3] for name in CASSETTES}
    assert required <= present


# ==========================================================================
# focused behaviour tests

MCP_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2025-06-18",
}


@pytest.fixture
def cm():
    with FakeCustomermates() as fake:
        yield fake


@pytest.fixture
def api(cm):
    with httpx.Client(base_url=cm.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=10) as client:
        yield client


def mcp_post(client: httpx.Client, payload: Any, *, headers: dict | None = None) -> httpx.Response:
    hdrs = dict(MCP_HEADERS)
    hdrs.update(headers or {})
    return client.post("/mcp", content=json.dumps(payload).encode(), headers=hdrs)


def call_tool(client: httpx.Client, name: str, arguments: Any, *, headers: dict | None = None) -> tuple[str, bool]:
    response = mcp_post(client, {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments}}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    (event,) = _sse_payloads(response.text)
    result = event["result"]
    return result["content"][0]["text"], bool(result.get("isError"))


def make_column(client: httpx.Client, tool: str, **arguments: Any) -> str:
    text, is_error = call_tool(client, tool, arguments)
    assert not is_error, text
    return toon.read_simple_fields(text)["id"]


def config_column(client: httpx.Client, entity: str, column_id: str) -> dict:
    config = client.get(f"/{entity}/configuration").json()
    return next(c for c in config["customColumns"] if c["id"] == column_id)


def create(client: httpx.Client, entity: str, items: list[dict]) -> list[dict]:
    response = client.post(f"/{entity}/many", json={entity: items})
    assert response.status_code == 201, response.text
    return response.json()


def error_text(response: httpx.Response) -> str:
    assert response.status_code == 400, (response.status_code, response.text)
    return response.json()


# ---------------------------------------------------------------- auth


def test_wrong_key_gets_500_with_empty_body(cm):
    for key in ("cmWrongKey0123456789abcdef0123456789abcdef0123456789abcdefXXXXXX", "cm_short_key_123"):
        with httpx.Client(base_url=cm.url + "/api/v1", headers={"x-api-key": key}) as client:
            for response in (
                client.get("/users/me"),
                client.post("/contacts/search", json={}),
                client.post("/contacts/many", json={"contacts": [{"firstName": "A", "lastName": "B"}]}),
                client.get("/contacts/configuration"),
            ):
                assert response.status_code == 500
                assert response.content == b""
                assert "content-type" not in response.headers
    assert cm.records("contacts") == []


def test_missing_or_empty_key_gets_401_not_authenticated(cm):
    with httpx.Client(base_url=cm.url + "/api/v1") as client:
        for headers in ({}, {"x-api-key": ""}):
            response = client.get("/users/me", headers=headers)
            assert response.status_code == 401
            assert response.json() == "Not authenticated"
            assert client.post("/contacts/search", json={}, headers=headers).status_code == 401


def test_second_users_key_acts_as_that_user(cm):
    with httpx.Client(base_url=cm.url + "/api/v1", headers={"x-api-key": VALID_KEY_USER2}) as client:
        assert client.get("/users/me").json()["firstName"] == "Jane"


def test_inactive_users_key_gets_500():
    users = [dict(DEFAULT_USERS[0], status="inactive")]
    with FakeCustomermates(users=users) as fake, httpx.Client(base_url=fake.url + "/api/v1", headers={"x-api-key": VALID_KEY}) as client:
        response = client.get("/users/me")
        assert response.status_code == 500 and response.content == b""


def test_openapi_is_served_without_auth(cm):
    response = httpx.get(cm.url + "/api/v1/openapi")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.1")


def test_unknown_path_gets_404_and_wrong_method_405(cm, api):
    assert api.get("/no-such-thing").status_code == 404
    assert httpx.get(cm.url + "/elsewhere").status_code == 404
    assert api.get("/contacts").status_code == 405
    assert api.get("/contacts/many").status_code == 405


# ---------------------------------------------------------------- batch validation


def test_batch_with_one_invalid_item_writes_nothing(cm, api):
    response = api.post("/contacts/many", json={"contacts": [
        {"firstName": "Hannah", "lastName": "Becker", "emails": ["hannah@example.com"]},
        {"firstName": "Omar", "lastName": "Haddad", "emails": ["omar(at)example.com"]},
        {"firstName": "Chloé", "lastName": "Martin"},
    ]})
    assert error_text(response) == "✖ Invalid email address\n  → at contacts[1].emails[0]"
    assert cm.records("contacts") == []
    assert api.post("/contacts/search", json={}).json()["pagination"]["total"] == 0


def test_shape_and_reference_errors_are_reported_together(api):
    response = api.post("/contacts/many", json={"contacts": [
        {"firstName": "Mia", "lastName": "Keller", "emails": ["not-an-email"], "organizationIds": [UNKNOWN_ID]},
        {"firstName": "Noah", "lastName": "Graf", "userIds": [UNKNOWN_ID], "organizationIds": ["not-a-uuid"]},
    ]})
    assert error_text(response) == (
        "✖ Invalid email address\n  → at contacts[0].emails[0]\n"
        "✖ Invalid UUID\n  → at contacts[1].organizationIds[0]\n"
        "✖ Organization ID not found or not accessible.\n  → at contacts[0].organizationIds[0]\n"
        "✖ Organization ID not found or not accessible.\n  → at contacts[1].organizationIds[0]\n"
        "✖ User ID not found or not accessible.\n  → at contacts[1].userIds[0]"
    )


def test_type_errors_skip_the_reference_checks(api):
    # zod does not run refinements after an aborting (type) issue
    response = api.post("/contacts/many", json={"contacts": [
        {"firstName": "NoLastName", "organizationIds": [UNKNOWN_ID]},
    ]})
    assert error_text(response) == "✖ Invalid input: expected string, received undefined\n  → at contacts[0].lastName"


def test_malformed_or_missing_body_gets_500_empty(api):
    for content in (b'{"contacts":[{"firstName":"Trunc', b"", b"NaN"):
        response = api.post("/contacts/many", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 500 and response.content == b""
    response = api.post("/contacts/search", content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 500 and response.content == b""


def test_bare_array_wrong_wrapper_and_batch_size_get_400(api):
    assert error_text(api.post("/contacts/many", json=[{"firstName": "A", "lastName": "B"}])) == (
        "✖ Invalid input: expected object, received array"
    )
    assert error_text(api.post("/contacts/many", json={"contact": [{"firstName": "A", "lastName": "B"}]})) == (
        "✖ Invalid input: expected array, received undefined\n  → at contacts"
    )
    assert error_text(api.post("/contacts/many", json={"contacts": []})) == (
        "✖ Too small: expected array to have >=1 items\n  → at contacts"
    )
    many = [{"firstName": f"P{i}", "lastName": "X"} for i in range(101)]
    assert error_text(api.post("/contacts/many", json={"contacts": many})) == (
        "✖ Too big: expected array to have <=100 items\n  → at contacts"
    )
    assert error_text(api.post("/contacts/many", json={"contacts": [{"firstName": "", "lastName": "X"}]})) == (
        "✖ Too small: expected string to have >=1 characters\n  → at contacts[0].firstName"
    )
    assert error_text(api.post("/deals/many", json={"deals": [{"name": "D", "customFieldValues": [{"columnId": UNKNOWN_ID, "value": 12}]}]})) == (
        "✖ Invalid input: expected string, received number\n  → at deals[0].customFieldValues[0].value"
    )


def test_unknown_keys_are_dropped_and_created_records_come_back_in_input_order(cm, api):
    created = create(api, "contacts", [
        {"firstName": "Anna", "lastName": "", "email": "anna@example.com", "createdAt": "2001-01-01T00:00:00Z"},
        {"firstName": "Ben", "lastName": "Bauer"},
    ])
    assert [c["firstName"] for c in created] == ["Anna", "Ben"]
    assert created[0]["emails"] == [] and created[0]["lastName"] == ""
    assert not created[0]["createdAt"].startswith("2001")
    assert list(created[0]) == [
        "id", "firstName", "lastName", "emails", "notes", "createdAt", "updatedAt",
        "organizations", "users", "deals", "tasks", "customFieldValues",
    ]
    assert created[0]["createdAt"] != created[1]["createdAt"]  # each row has its own timestamp


def test_duplicate_relation_id_gets_500_and_writes_nothing(cm, api):
    (org,) = create(api, "organizations", [{"name": "Brightwater"}])
    response = api.post("/contacts/many", json={"contacts": [{"firstName": "Dup", "lastName": "Org", "organizationIds": [org["id"], org["id"]]}]})
    assert response.status_code == 500 and response.content == b""
    (service,) = create(api, "services", [{"name": "Audit", "amount": 100}])
    response = api.post("/deals/many", json={"deals": [{"name": "D", "services": [
        {"serviceId": service["id"], "quantity": 1}, {"serviceId": service["id"], "quantity": 2}]}]})
    assert response.status_code == 500 and response.content == b""
    assert cm.records("contacts") == [] and cm.records("deals") == []


def test_deal_unknown_service_is_reported_for_every_deal(cm, api):
    (service,) = create(api, "services", [{"name": "Audit", "amount": 2500}])
    response = api.post("/deals/many", json={"deals": [
        {"name": "OK", "services": [{"serviceId": service["id"]}]},
        {"name": "Bad", "services": [{"serviceId": UNKNOWN_ID}]},
        {"name": "None"},
    ]})
    assert error_text(response) == "\n".join(
        f"✖ Service ID not found or not accessible.\n  → at deals[{i}].services[1]" for i in range(3)
    )
    assert cm.records("deals") == []


def test_an_unknown_service_is_reported_at_the_index_of_its_deal_not_of_the_service(cm, api):
    a, b = create(api, "services", [{"name": "Audit", "amount": 2500}, {"name": "Backup", "amount": 90}])
    response = api.post("/deals/many", json={"deals": [
        {"name": "Two known", "services": [{"serviceId": a["id"]}, {"serviceId": b["id"]}]},
        {"name": "Unknown", "services": [{"serviceId": UNKNOWN_ID}]},
    ]})
    # the contract's record: the inner index is deal #1's, not the unknown id's place among the batch's services (2)
    assert error_text(response) == "\n".join(
        f"✖ Service ID not found or not accessible.\n  → at deals[{i}].services[1]" for i in range(2)
    )
    response = api.post("/deals", json={"name": "One deal", "services": [{"serviceId": a["id"]}, {"serviceId": UNKNOWN_ID}]})
    assert error_text(response) == "✖ Service ID not found or not accessible.\n  → at services[1]"  # one deal: the service's own
    assert cm.records("deals") == []


def test_service_amount_must_be_positive_and_quantity_non_negative(api):
    assert error_text(api.post("/services/many", json={"services": [{"name": "Free", "amount": 0}]})) == (
        "✖ Too small: expected number to be >0\n  → at services[0].amount"
    )
    assert error_text(api.post("/services/many", json={"services": [{"name": "No price"}]})) == (
        "✖ Invalid input: expected number, received undefined\n  → at services[0].amount"
    )
    (service,) = create(api, "services", [{"name": "S", "amount": 1}])
    response = api.post("/deals/many", json={"deals": [{"name": "D", "services": [{"serviceId": service["id"], "quantity": -1}]}]})
    assert error_text(response) == "✖ Too small: expected number to be >=0\n  → at deals[0].services[0].quantity"


# ---------------------------------------------------------------- relations and deal totals


def test_deal_totals_follow_services_and_quantities(cm, api):
    licence, training = create(api, "services", [{"name": "Licence", "amount": 12000}, {"name": "Training", "amount": 1450.5}])
    deal, pilot = create(api, "deals", [
        {"name": "Rollout", "services": [{"serviceId": licence["id"], "quantity": 3}, {"serviceId": training["id"], "quantity": 2.5}]},
        {"name": "Pilot", "services": [{"serviceId": training["id"]}]},
    ])
    assert (deal["totalValue"], deal["totalQuantity"]) == (39626.25, 5.5)
    assert (pilot["totalValue"], pilot["totalQuantity"]) == (1450.5, 1)
    assert deal["updatedAt"] > deal["createdAt"]
    assert deal["services"] == [
        {"id": licence["id"], "name": "Licence", "amount": 12000, "quantity": 3},
        {"id": training["id"], "name": "Training", "amount": 1450.5, "quantity": 2.5},
    ]
    # a price change recomputes the totals of every linked deal
    api.put("/services/many", json={"services": [{"id": training["id"], "amount": 1000}]}).raise_for_status()
    deals = {d["name"]: d for d in cm.records("deals")}
    assert deals["Rollout"]["totalValue"] == 38500 and deals["Pilot"]["totalValue"] == 1000
    # linking from the service side gives quantity 1; existing links keep theirs
    (extra,) = create(api, "services", [{"name": "Extra", "amount": 10, "dealIds": [pilot["id"]]}])
    api.put("/services/many", json={"services": [{"id": training["id"], "dealIds": [deal["id"], pilot["id"]]}]}).raise_for_status()
    deals = {d["name"]: d for d in cm.records("deals")}
    assert [s["quantity"] for s in deals["Rollout"]["services"]] == [3, 2.5]
    assert {s["name"]: s["quantity"] for s in deals["Pilot"]["services"]} == {"Training": 1, "Extra": 1}
    # deleting a service removes it from the deals
    api.request("DELETE", "/services/many", json={"ids": [licence["id"]]}).raise_for_status()
    deals = {d["name"]: d for d in cm.records("deals")}
    assert deals["Rollout"]["totalValue"] == 2500 and deals["Rollout"]["totalQuantity"] == 2.5


def test_relations_are_symmetric_and_a_replace_from_the_other_side_removes_links(cm, api):
    kestrel, mariposa = create(api, "organizations", [{"name": "Kestrel"}, {"name": "Mariposa"}])
    lucia, daniel = create(api, "contacts", [
        {"firstName": "Lucia", "lastName": "F", "organizationIds": [mariposa["id"]]},
        {"firstName": "Daniel", "lastName": "K", "organizationIds": [kestrel["id"], mariposa["id"]]},
    ])
    orgs = {o["name"]: o for o in cm.records("organizations")}
    assert [c["firstName"] for c in orgs["Mariposa"]["contacts"]] == ["Lucia", "Daniel"]
    response = api.put("/organizations/many", json={"organizations": [{"id": kestrel["id"], "contactIds": [lucia["id"]]}]})
    assert [c["firstName"] for c in response.json()[0]["contacts"]] == ["Lucia"]
    contacts = {c["firstName"]: c for c in cm.records("contacts")}
    assert [o["name"] for o in contacts["Daniel"]["organizations"]] == ["Mariposa"]
    assert [o["name"] for o in contacts["Lucia"]["organizations"]] == ["Mariposa", "Kestrel"]
    # tasks link contacts, organizations, deals, services and users; type is "custom"
    (service,) = create(api, "services", [{"name": "S", "amount": 5}])
    (task,) = create(api, "tasks", [{"name": "Call", "contactIds": [daniel["id"]], "serviceIds": [service["id"]], "userIds": [ADMIN_ID]}])
    assert task["type"] == "custom"
    assert task["services"] == [{"id": service["id"], "name": "S", "amount": 5}]
    assert task["users"][0] == {"id": ADMIN_ID, "firstName": "Ada", "lastName": "Admin", "avatarUrl": None, "email": "admin@example.com"}
    contacts = {c["firstName"]: c for c in cm.records("contacts")}
    assert contacts["Daniel"]["tasks"] == [{"id": task["id"], "name": "Call", "type": "custom"}]
    assert cm.records("services")[0]["tasks"] == [{"id": task["id"], "name": "Call", "type": "custom"}]


def test_update_semantics(cm, api):
    plain = make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID")
    phone = make_column(api, "create_phone_custom_column", entityType="contact", label="Phones", color="info", allowMultiple=True)
    mail = make_column(api, "create_email_custom_column", entityType="contact", label="Private", color="info", allowMultiple=False)
    (org,) = create(api, "organizations", [{"name": "O"}])
    (c,) = create(api, "contacts", [{
        "firstName": "Lucía", "lastName": "F", "emails": ["l@example.com"], "organizationIds": [org["id"]],
        "userIds": [ADMIN_ID], "notes": "Met at *Fair*.",
        "customFieldValues": [{"columnId": plain, "value": "2001"}, {"columnId": phone, "value": "+34911234567"}, {"columnId": mail, "value": "l@example.net"}],
    }])

    def put(**fields):
        response = api.put("/contacts/many", json={"contacts": [{"id": c["id"], **fields}]})
        assert response.status_code == 200, response.text
        return response.json()[0]

    after = put(firstName="Lucia")
    assert after["lastName"] == "F" and after["emails"] == ["l@example.com"] and after["notes"] == c["notes"]
    assert after["organizations"] == c["organizations"] and after["updatedAt"] > c["updatedAt"]
    assert put(organizationIds=None)["organizations"] == []
    assert cm.records("organizations")[0]["contacts"] == []
    after = put(customFieldValues=[{"columnId": plain, "value": "2001-B"}])
    assert [v["columnId"] for v in after["customFieldValues"]] == [phone, mail, plain]  # rewritten moves to the end
    assert [v["columnId"] for v in put(customFieldValues=[{"columnId": phone, "value": None}])["customFieldValues"]] == [mail, plain]
    assert [v["columnId"] for v in put(customFieldValues=[{"columnId": mail, "value": ""}])["customFieldValues"]] == [plain]
    assert put(customFieldValues=[])["customFieldValues"] == [{"columnId": plain, "value": "2001-B"}]
    assert put(customFieldValues=None)["customFieldValues"] == []
    assert put(emails=None)["emails"] == ["l@example.com"]
    assert put(emails=[])["emails"] == []
    assert put(notes="   ")["notes"] is None
    assert error_text(api.put("/contacts/many", json={"contacts": [{"id": c["id"], "lastName": ""}]})) == (
        "✖ Too small: expected string to have >=1 characters\n  → at contacts[0].lastName"
    )
    assert error_text(api.put("/contacts/many", json={"contacts": [{"id": UNKNOWN_ID, "firstName": "Ghost"}]})) == (
        "✖ Contact ID not found or not accessible.\n  → at contacts[0].id"
    )
    # single PUT: the path id wins over an id in the body
    response = api.put(f"/contacts/{c['id']}", json={"lastName": "Kim", "id": UNKNOWN_ID})
    assert response.status_code == 200 and response.json()["id"] == c["id"] and response.json()["lastName"] == "Kim"
    response = api.put(f"/contacts/{UNKNOWN_ID}", json={"lastName": "X"})
    assert error_text(response) == "✖ Contact ID not found or not accessible.\n  → at id"


# ---------------------------------------------------------------- custom field values


@pytest.fixture
def columns(api) -> dict[str, str]:
    return {
        "plain": make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID"),
        "phone": make_column(api, "create_phone_custom_column", entityType="contact", label="Phones", color="info", allowMultiple=True),
        "phone1": make_column(api, "create_phone_custom_column", entityType="contact", label="Phone", color="info", allowMultiple=False),
        "email": make_column(api, "create_email_custom_column", entityType="contact", label="Private email", color="info", allowMultiple=False),
        "emails": make_column(api, "create_email_custom_column", entityType="contact", label="Emails", color="info", allowMultiple=True),
        "date": make_column(api, "create_date_custom_column", entityType="contact", label="Birthday"),
        "dateTime": make_column(api, "create_datetime_custom_column", entityType="contact", label="Last contacted"),
        "link": make_column(api, "create_link_custom_column", entityType="contact", label="LinkedIn", color="info", allowMultiple=False),
        "currency": make_column(api, "create_currency_custom_column", entityType="contact", label="Value", currency="eur"),
        "dateRange": make_column(api, "create_date_range_custom_column", entityType="contact", label="Term"),
        "dateTimeRange": make_column(api, "create_datetime_range_custom_column", entityType="contact", label="Slot"),
        "select": make_column(api, "create_single_select_custom_column", entityType="contact", label="Status",
                              options=[{"label": "New", "color": "info", "isDefault": False, "index": 0}]),
    }


GOOD_VALUES = [
    ("phone", "+4971112345678,+491701234567"), ("phone1", "+491234567"), ("email", "a@example.com"),
    ("emails", "a@example.com, b@example.org"), ("date", "2024-02-29"), ("date", "1990-11-02T00:00:00Z"),
    ("dateTime", "2026-05-01T14:30:00Z"), ("dateTime", "2026-05-01T14:30Z"), ("dateTime", "2026-05-01T14:30:00.123Z"),
    ("link", "https://www.linkedin.com/in/x"), ("link", "mailto:a@example.com"), ("link", "tel:+49123"),
    ("link", "http://192.168.0.1/admin"),
    ("currency", "38901.25"), ("currency", " 12 "), ("currency", "1e3"), ("dateRange", "2024-01-15,2024-01-22"),
    ("dateTimeRange", "2024-01-15T09:00:00Z,2024-01-15T17:00:00Z"), ("plain", "anything at all"),
]
BAD_VALUES = [
    ("date", "01/02/2024", "The date value is invalid", ""),
    ("date", "2023-02-29", "The date value is invalid", ""),
    ("dateTime", "2026-05-01T14:30:00+02:00", "The date-time value is invalid", ""),
    ("dateTime", "2026-05-01T14:30:00", "The date-time value is invalid", ""),
    ("phone1", "+49 123 456", "The phone value is invalid", ""),
    ("phone1", "+4912345678,+4912345679", "The phone value is invalid", ""),
    ("phone", "+4912345678,0049123", "The phone value is invalid", "[1]"),
    ("currency", "1.234,56", "The currency value is invalid", ""),
    ("currency", "$1234", "The currency value is invalid", ""),
    ("link", "www.example.com", "The URL value is invalid", ""),
    ("link", "javascript:alert(1)", "The URL value is invalid", ""),
    ("link", "https://shop.acme.24", "The URL value is invalid", ""),  # ends in a number: an IPv4 address, and no valid one
    ("link", "https://acme\u00a0corp.de", "The URL value is invalid", ""),  # IDNA maps a no-break space to a space
    ("email", "a@example.com, b@example.com", "The email value is invalid", ""),
    ("emails", "a@example.com, nope", "The email value is invalid", "[1]"),
    ("dateRange", "2024-02-01,2024-01-01", "The date range is invalid", ""),
    ("dateRange", "2024-02-01", "The date range is invalid", ""),
    ("dateTimeRange", "2024-01-15,2024-01-16", "The date-time range is invalid", ""),
    ("select", "New", "The single select value is invalid. Must be one of the allowed options: New (", ""),
]


@pytest.mark.parametrize("kind,value", GOOD_VALUES)
def test_valid_custom_values_are_stored_verbatim(api, columns, kind, value):
    (contact,) = create(api, "contacts", [{"firstName": "A", "lastName": "B", "customFieldValues": [{"columnId": columns[kind], "value": value}]}])
    assert contact["customFieldValues"] == [{"columnId": columns[kind], "value": value}]


@pytest.mark.parametrize("kind,value,message,suffix", BAD_VALUES)
def test_invalid_custom_values_get_400_with_the_server_message(cm, api, columns, kind, value, message, suffix):
    response = api.post("/contacts/many", json={"contacts": [{"firstName": "A", "lastName": "B", "customFieldValues": [
        {"columnId": columns["plain"], "value": "1"}, {"columnId": columns[kind], "value": value}]}]})
    text = error_text(response)
    assert text.startswith("✖ " + message)
    assert text.endswith(f"\n  → at contacts[0].customFieldValues[1].value{suffix}")
    assert cm.records("contacts") == []


@pytest.mark.parametrize("item", [
    {"firstName": "An\x00na", "lastName": "B"},
    {"firstName": "A", "lastName": "B", "customFieldValues": [{"columnId": "plain", "value": "x\x00y"}]},
    {"firstName": "A", "lastName": "B", "customFieldValues": [{"columnId": "currency", "value": "10000000000000000"}]},
])
def test_a_value_postgres_refuses_gets_500_with_an_empty_body_and_writes_nothing(cm, api, columns, item):
    """Postgres stores no U+0000 in text, and a currency value past its DECIMAL(20,4) overflows:
    the batch rolls back, and the answer names no record (contract §6, §10)."""
    item = {**item, "customFieldValues": [{**cv, "columnId": columns[cv["columnId"]]} for cv in item.get("customFieldValues", [])]}
    response = api.post("/contacts/many", json={"contacts": [{"firstName": "Fine", "lastName": "Row"}, item]})
    assert response.status_code == 500 and response.content == b""
    assert cm.records("contacts") == []
    assert create(api, "contacts", [{"firstName": "A", "lastName": "B", "customFieldValues": [
        {"columnId": columns["currency"], "value": "9999999999999999.9999"}]}])


def test_single_select_takes_option_uuid_and_same_column_twice_stores_both(api, columns):
    option = config_column(api, "contacts", columns["select"])["options"]["options"][0]["value"]
    (contact,) = create(api, "contacts", [{"firstName": "A", "lastName": "B", "customFieldValues": [
        {"columnId": columns["select"], "value": option},
        {"columnId": columns["plain"], "value": "77"}, {"columnId": columns["plain"], "value": "78"}]}])
    assert [v["value"] for v in contact["customFieldValues"]] == [option, "77", "78"]


def test_unknown_column_lists_the_available_columns(api):
    plain = make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID")
    birthday = make_column(api, "create_date_custom_column", entityType="contact", label="Birthday")
    make_column(api, "create_plain_custom_column", entityType="deal", label="Deal only")
    response = api.post("/contacts/many", json={"contacts": [{"firstName": "A", "lastName": "B", "customFieldValues": [{"columnId": UNKNOWN_ID, "value": "x"}]}]})
    assert error_text(response) == (
        f"✖ Custom column ID not found or not accessible. Available columns: Birthday ({birthday}), Pipedrive ID ({plain}).\n"
        "  → at contacts[0].customFieldValues[0].columnId"
    )


# ---------------------------------------------------------------- notes


def test_notes_markdown_is_stored_as_tiptap_json(api):
    (contact,) = create(api, "contacts", [{"firstName": "A", "lastName": "B", "notes": "# Kick-off\n\nMet **Lena** at _Hannover_.\n\n- one\n- two"}])
    assert contact["notes"] == {"type": "doc", "content": [
        {"type": "heading", "attrs": {"level": 1}, "content": [{"text": "Kick-off", "type": "text"}]},
        {"type": "paragraph", "content": [
            {"text": "Met ", "type": "text"}, {"text": "Lena", "type": "text", "marks": [{"type": "bold"}]},
            {"text": " at ", "type": "text"}, {"text": "Hannover", "type": "text", "marks": [{"type": "italic"}]},
            {"text": ".", "type": "text"}]},
        {"type": "bulletList", "content": [
            {"type": "listItem", "content": [{"type": "paragraph", "content": [{"text": "one", "type": "text"}]}]},
            {"type": "listItem", "content": [{"type": "paragraph", "content": [{"text": "two", "type": "text"}]}]}]},
    ]}
    fetched = api.get(f"/contacts/{contact['id']}").json()["contact"]
    assert fetched["notes"] == contact["notes"]


@pytest.mark.parametrize("notes,message", [
    ("| a | b |\n|---|---|\n| 1 | 2 |", "Invalid notes format. Must be valid Tiptap JSON or markdown text"),
    ("Intro\n\n| a |\n| --- |\n| 1 |", "Invalid notes format. Must be valid Tiptap JSON or markdown text"),
    ("Logo: ![logo](https://example.com/logo.png)", "Invalid notes format. Must be valid Tiptap JSON or markdown text"),
    ({"type": "doc", "content": [{"type": "table", "content": []}]}, "Invalid notes format. Must be valid Tiptap JSON or markdown text"),
    (12, "Invalid notes format. Must be valid Tiptap JSON or markdown text"),
    ("x" * 65_536, "Notes content exceeds maximum length"),
    ("🚀" * 32_768, "Notes content exceeds maximum length"),  # the limit counts UTF-16 code units
])
def test_invalid_notes_get_400(cm, api, notes, message):
    response = api.post("/organizations/many", json={"organizations": [{"name": "O", "notes": notes}]})
    assert error_text(response) == f"✖ {message}\n  → at organizations[0].notes"
    assert cm.records("organizations") == []


def test_notes_edge_cases_that_pass(api):
    created = create(api, "contacts", [
        {"firstName": "Max", "lastName": "Len", "notes": "y" * 65_535},
        {"firstName": "Not", "lastName": "Doc", "notes": {"type": "paragraph", "foo": 1}},
        {"firstName": "Html", "lastName": "Only", "notes": "<p>Hello &amp; <b>world</b></p>"},
        {"firstName": "Blank", "lastName": "Notes", "notes": "   "},
        {"firstName": "Str", "lastName": "Doc", "notes": json.dumps({"type": "doc", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}]})},
    ])
    assert created[0]["notes"]["content"][0]["content"][0]["text"] == "y" * 65_535
    assert created[1]["notes"] == {"foo": 1, "type": "paragraph"}
    assert created[2]["notes"]["content"][0]["content"] == [{"text": "<p>Hello & <b>world</b></p>", "type": "text"}]
    assert created[3]["notes"] is None
    assert created[4]["notes"] == {"type": "doc", "content": [{"type": "paragraph", "content": [{"text": "hi", "type": "text"}]}]}


def test_markdown_conversion_details():
    doc = markdown_to_tiptap("Line one\nline two  \nhard break\n\n1. a\n2. b\n\n- [x] done\n- [ ] open\n\n> quote\n\n```py\ncode\n```\n\n---\n\n<https://x.example> and [t](https://y.example)")
    types = [n["type"] for n in doc["content"]]
    assert types == ["paragraph", "orderedList", "taskList", "blockquote", "codeBlock", "horizontalRule", "paragraph"]
    assert doc["content"][0]["content"] == [
        {"type": "text", "text": "Line one line two"}, {"type": "hardBreak"}, {"type": "text", "text": "hard break"}]
    assert doc["content"][1]["attrs"] == {"type": None, "start": 1}
    assert [i["attrs"]["checked"] for i in doc["content"][2]["content"]] == [True, False]
    assert doc["content"][4] == {"type": "codeBlock", "attrs": {"language": "py"}, "content": [{"type": "text", "text": "code"}]}
    links = [n["marks"][0]["attrs"]["href"] for n in doc["content"][6]["content"] if n.get("marks")]
    assert links == ["https://x.example", "https://y.example"]


# ---------------------------------------------------------------- delete and get


def test_delete_many_semantics(cm, api):
    (org,) = create(api, "organizations", [{"name": "Quarry"}])
    a, b, c = create(api, "contacts", [
        {"firstName": "A", "lastName": "A"}, {"firstName": "B", "lastName": "B"},
        {"firstName": "C", "lastName": "C", "organizationIds": [org["id"]]}])
    response = api.request("DELETE", "/contacts/many", json={"ids": [a["id"], UNKNOWN_ID]})
    assert error_text(response) == "✖ Contact ID not found or not accessible.\n  → at ids[1]"
    assert len(cm.records("contacts")) == 3
    response = api.request("DELETE", "/contacts/many", json={"ids": ["not-a-uuid"]})
    assert error_text(response) == (
        "✖ Invalid UUID\n  → at ids[0]\n✖ Contact ID not found or not accessible.\n  → at ids[0]"
    )
    response = api.request("DELETE", "/contacts/many", json={"ids": [a["id"], a["id"]]})
    assert response.status_code == 200 and response.json() == [a["id"], a["id"]]
    api.request("DELETE", "/organizations/many", json={"ids": [org["id"]]}).raise_for_status()
    assert api.get(f"/contacts/{c['id']}").json()["contact"]["organizations"] == []
    response = api.delete(f"/contacts/{b['id']}")
    assert response.status_code == 200 and response.json() == b["id"]
    assert error_text(api.delete(f"/contacts/{b['id']}")) == "✖ Contact ID not found or not accessible.\n  → at id"
    assert [r["id"] for r in cm.records("contacts")] == [c["id"]]


def test_get_by_id_shapes(api):
    (org,) = create(api, "organizations", [{"name": "Helios"}])
    (contact,) = create(api, "contacts", [{"firstName": "Jana", "lastName": "N"}])
    assert api.get(f"/contacts/{contact['id']}").json() == {"contact": contact, "customColumns": []}
    assert api.get(f"/contacts/{UNKNOWN_ID}").json() == {"contact": None, "customColumns": []}
    assert error_text(api.get("/contacts/not-a-uuid")) == "✖ Invalid UUID\n  → at id"
    assert api.get(f"/organizations/{org['id']}").json() == {"ok": True, "data": {"organization": org, "customColumns": []}}
    assert api.get(f"/deals/{UNKNOWN_ID}").json() == {"ok": True, "data": {"deal": None, "customColumns": []}}
    bad = api.get("/tasks/not-a-uuid")
    assert bad.status_code == 200 and bad.json()["ok"] is False
    assert json.loads(bad.json()["error"]["message"])[0]["message"] == "Invalid UUID"


# ---------------------------------------------------------------- search


@pytest.fixture
def people(api) -> dict[str, Any]:
    pid = make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID")
    vanguard, ostsee = create(api, "organizations", [{"name": "Vanguard Robotics"}, {"name": "Ostsee Fisch KG"}])
    rows = [("Anna", "Schmidt", "123", vanguard), ("Annabelle", "Moreau", "1234", ostsee), ("Ben", "Carter", "0123", vanguard),
            ("Carla", "J", "abc-123", None), ("David", "Okoye", "200", ostsee), ("Kai", "Anders", None, None)]
    contacts = create(api, "contacts", [
        {"firstName": f, "lastName": l, "emails": [f"{f}.{l}@example.com"] if f != "Kai" else [],
         "organizationIds": [o["id"]] if o else [],
         "customFieldValues": [{"columnId": pid, "value": v}] if v else []}
        for f, l, v, o in rows])
    return {"pid": pid, "vanguard": vanguard, "ostsee": ostsee, "contacts": contacts}


def names(result: dict) -> list[str]:
    return [i["firstName"] for i in result["items"]]


def test_search_default_sort_trap(api, people):
    everything = api.post("/contacts/search", json={}).json()
    assert everything["sortDescriptor"] == {"field": "name", "direction": "asc"}
    assert names(everything) == ["Anna", "Annabelle", "Ben", "Carla", "David", "Kai"]
    assert list(everything) == ["items", "customColumns", "filters", "sortDescriptor", "pagination", "filterableFields"]
    paged = api.post("/contacts/search", json={"pagination": {"page": 1, "pageSize": 5}}).json()
    assert "sortDescriptor" not in paged
    assert paged["pagination"] == {"page": 1, "pageSize": 5, "totalPages": 2, "total": 6}
    sorted_page = api.post("/contacts/search", json={"pagination": {"page": 2, "pageSize": 5}, "sortDescriptor": {"field": "createdAt", "direction": "desc"}}).json()
    assert names(sorted_page) == ["Anna"]
    tasks = api.post("/tasks/search", json={}).json()
    assert tasks["sortDescriptor"] == {"field": "updatedAt", "direction": "desc"}


def test_lookup_by_external_id_with_a_plain_column(api, people):
    pid = people["pid"]
    result = api.post("/contacts/search", json={
        "filters": [{"field": pid, "operator": "equals", "value": "123"}],
        "pagination": {"page": 1, "pageSize": 5}, "sortDescriptor": {"field": "createdAt", "direction": "asc"}}).json()
    assert names(result) == ["Anna"] and result["pagination"]["total"] == 1
    contains = api.post("/contacts/search", json={"filters": [{"field": pid, "operator": "contains", "value": "ABC"}]}).json()
    assert names(contains) == ["Carla"]
    assert names(api.post("/contacts/search", json={"filters": [{"field": pid, "operator": "isNull"}]}).json()) == ["Kai"]
    by_column = api.post("/contacts/search", json={"sortDescriptor": {"field": pid, "direction": "desc"}}).json()
    assert names(by_column)[-1] == "Kai"  # missing values sort last in both directions
    assert names(by_column)[:2] == ["Carla", "David"]


def test_plain_column_rejects_in_operator_with_the_list_of_fields(api, people):
    pid = people["pid"]
    response = api.post("/contacts/search", json={"filters": [{"field": pid, "operator": "in", "value": ["123"]}]})
    assert error_text(response) == (
        "✖ Filter field not found or not accessible. Available fields: organizationIds (in, notIn, hasNone, hasSome), "
        "dealIds (in, notIn, hasNone, hasSome), taskIds (in, notIn, hasNone, hasSome), "
        f"Pipedrive ID - {pid} (equals, contains, isNull, isNotNull), emails (equals, isNull, isNotNull), "
        "userIds (in, notIn, hasNone, hasSome), updatedAt (gt, gte, lt, lte, between, inLastDays), "
        "createdAt (gt, gte, lt, lte, between, inLastDays).\n  → at filters[0].field"
    )


def test_search_validation_errors(api, people):
    def err(body):
        return error_text(api.post("/contacts/search", json=body))

    assert err({"pagination": {"page": 1, "pageSize": 50}}) == "✖ Invalid input\n  → at pagination.pageSize"
    assert err({"pagination": {"page": 0, "pageSize": 5}}) == "✖ Too small: expected number to be >=1\n  → at pagination.page"
    assert err({"sortDescriptor": {"field": "lastName", "direction": "asc"}}) == "✖ Sort field not found or not accessible.\n  → at sortDescriptor.field"
    date_msg = ("✖ The date value is invalid. Must be in ISO 8601 date format (e.g., 2024-01-15) or ISO 8601 datetime "
                "format (e.g., 2024-01-15T00:00:00Z).\n  → at filters[0].value")
    assert err({"filters": [{"field": "createdAt", "operator": "gte", "value": "2024-01-01"}]}) == date_msg
    assert err({"filters": [{"field": "createdAt", "operator": "gte", "value": "2024-01-01T00:00:00+02:00"}]}) == date_msg
    assert err({"filters": [{"field": "organizationIds", "operator": "in", "value": [UNKNOWN_ID]}]}) == (
        "✖ Organization ID not found or not accessible.\n  → at filters[0].value[0]")
    assert err({"filters": [{"field": "createdAt", "operator": "between", "value": ["2024-01-01T00:00:00Z"]}]}) == (
        "✖ The 'between' operator requires an array with exactly 2 elements.\n  → at filters[0].value")


def test_search_filters_and_search_term(api, people):
    def search(body):
        response = api.post("/contacts/search", json=body)
        assert response.status_code == 200, response.text
        return sorted(names(response.json()))

    ostsee = people["ostsee"]["id"]
    assert search({"filters": [{"field": "organizationIds", "operator": "hasSome", "value": [ostsee]}]}) == ["Annabelle", "David"]
    assert search({"filters": [{"field": "organizationIds", "operator": "notIn", "value": [ostsee]}]}) == ["Anna", "Ben", "Carla", "Kai"]
    assert search({"filters": [{"field": "emails", "operator": "equals", "value": "Ben.Carter@example.com"}]}) == ["Ben"]
    assert search({"filters": [{"field": "emails", "operator": "equals", "value": "ben.carter@example.com"}]}) == []
    assert search({"filters": [{"field": "emails", "operator": "isNull"}]}) == ["Kai"]
    assert search({"filters": [{"field": "createdAt", "operator": "inLastDays", "value": 7}]}) == ["Anna", "Annabelle", "Ben", "Carla", "David", "Kai"]
    assert search({"filters": [{"field": "createdAt", "operator": "lt", "value": "2001-01-01T00:00:00Z"}]}) == []
    assert search({"searchTerm": "anna"}) == ["Anna", "Annabelle"]
    assert search({"searchTerm": "schmidt ANNA"}) == ["Anna"]
    assert search({"searchTerm": "vanguard"}) == ["Anna", "Ben"]  # linked organization name
    assert search({"searchTerm": "1234"}) == []  # custom values are not searched
    orgs = api.post("/organizations/search", json={"searchTerm": "okoye"}).json()
    assert [o["name"] for o in orgs["items"]] == ["Ostsee Fisch KG"]
    assert orgs["searchTerm"] == "okoye" and "sortDescriptor" not in orgs


def test_configuration_and_search_column_shapes(api):
    plain = make_column(api, "create_plain_custom_column", entityType="deal", label="Pipedrive ID")
    stage = make_column(api, "create_single_select_custom_column", entityType="deal", label="Stage", options=[
        {"label": "Won", "color": "success", "isDefault": False, "index": 0}])
    money = make_column(api, "create_currency_custom_column", entityType="deal", label="A value", currency="usd")
    config = api.get("/deals/configuration").json()
    assert [c["label"] for c in config["customColumns"]] == ["A value", "Pipedrive ID", "Stage"]
    assert config["customColumns"][1] == {"id": plain, "label": "Pipedrive ID", "entityType": "deal", "type": "plain"}
    assert list(config["customColumns"][2]["options"]["options"][0]) == ["value", "label", "color", "isDefault", "index"]
    assert {"field": money, "operators": ["equals", "gt", "gte", "lt", "lte", "isNull", "isNotNull"], "label": "A value"} in config["filterableFields"]
    assert config["sortableFields"][:5] == [{"field": f} for f in ("name", "totalValue", "totalQuantity", "createdAt", "updatedAt")]
    search = api.post("/deals/search", json={}).json()
    cols = {c["id"]: c for c in search["customColumns"]}
    assert cols[plain] == {"id": plain, "label": "Pipedrive ID", "type": "plain", "entityType": "deal", "options": None}
    assert list(cols[stage]["options"]["options"][0]) == ["color", "index", "label", "value", "isDefault"]


def test_users_search_and_me(api):
    me = api.get("/users/me").json()
    assert me == {"id": ADMIN_ID, "firstName": "Ada", "lastName": "Admin", "country": "de", "avatarUrl": None,
                  "roleId": "00000000-0000-4000-8000-000000000002", "roleName": "Admin"}
    everyone = api.post("/users/search", json={"filters": [{"field": "email", "operator": "equals", "value": "x"}]}).json()
    assert list(everyone) == ["sortDescriptor", "pagination", "items"]
    assert [u["email"] for u in everyone["items"]] == ["admin@example.com", "jane.doe@example.com"]
    assert [u["id"] for u in api.post("/users/search", json={"searchTerm": "jane"}).json()["items"]] == [JANE_ID]
    assert api.post("/users/search", json={"searchTerm": "jane.doe@example.com"}).json()["items"] == []
    assert error_text(api.post("/users/search", json={"pagination": {"page": 1, "pageSize": 1}})) == "✖ Invalid input\n  → at pagination.pageSize"
    assert error_text(api.post("/contacts/many", json={"contacts": [{"firstName": "A", "lastName": "B", "userIds": [UNKNOWN_ID]}]})) == (
        "✖ User ID not found or not accessible.\n  → at contacts[0].userIds[0]")


# ---------------------------------------------------------------- MCP


def test_mcp_transport_rules(cm, api):
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_custom_columns", "arguments": {}}}
    response = mcp_post(api, call, headers={"accept": "application/json"})
    assert response.status_code == 406
    assert response.json()["error"]["message"] == "Not Acceptable: Client must accept both application/json and text/event-stream"
    assert mcp_post(api, call, headers={"content-type": "text/plain"}).status_code == 415
    response = mcp_post(api, call, headers={"mcp-protocol-version": "1999-01-01"})
    assert response.status_code == 400 and "Unsupported protocol version" in response.text
    assert api.get("/mcp").status_code == 405
    assert api.delete("/mcp").status_code == 405
    no_version = {k: v for k, v in MCP_HEADERS.items() if k != "mcp-protocol-version"}
    response = api.post("/mcp", content=json.dumps(call), headers=no_version)
    assert response.status_code == 200 and _sse_payloads(response.text)[0]["result"]["content"][0]["text"] == "items[0]:"
    init = mcp_post(api, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    assert response.text.startswith("event: message\ndata: ")
    assert _sse_payloads(init.text)[0]["result"]["serverInfo"]["name"] == "mcp-typescript server on vercel"
    assert mcp_post(api, {"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
    unknown = _sse_payloads(mcp_post(api, {"jsonrpc": "2.0", "id": 3, "method": "no/such"}).text)[0]
    assert unknown == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "Method not found"}}
    tools = _sse_payloads(mcp_post(api, {"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {}}).text)[0]
    assert len(tools["result"]["tools"]) == 61
    batch = mcp_post(api, [dict(call, id=901), dict(call, id=902)])
    assert [e["id"] for e in _sse_payloads(batch.text)] == [901, 902]


def test_mcp_malformed_json_gets_no_response():
    with FakeCustomermates(mcp_hang_seconds=0.3) as fake:
        with httpx.Client(base_url=fake.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(httpx.RemoteProtocolError):
                client.post("/mcp", content=b'{"jsonrpc":"2.0","id":1,', headers=MCP_HEADERS)
            assert time.monotonic() - started >= 0.25
        with httpx.Client(base_url=fake.url + "/api/v1", timeout=0.2) as client:
            fake.mcp_hang_seconds = 2
            with pytest.raises(httpx.ReadTimeout):
                client.post("/mcp", content=b"{", headers=MCP_HEADERS)


def test_mcp_tool_errors(cm, api):
    text, is_error = call_tool(api, "no_such_tool", {})
    assert (text, is_error) == ("MCP error -32602: Tool no_such_tool not found", True)
    text, is_error = call_tool(api, "create_link_custom_column", {"entityType": "contact", "label": "Blog", "color": "primary", "allowMultiple": False})
    assert is_error and text.startswith("MCP error -32602: Input validation error: Invalid arguments for tool create_link_custom_column: [\n  {\n    \"code\": \"invalid_value\",")
    assert 'Invalid option: expected one of \\"default\\"|\\"secondary\\"|\\"destructive\\"|\\"success\\"|\\"warning\\"|\\"info\\"' in text
    text, is_error = call_tool(api, "create_single_select_custom_column", {"entityType": "contact", "label": "E", "options": []})
    assert is_error and '"message": "Too small: expected array to have >=1 items"' in text
    text, is_error = call_tool(api, "create_plain_custom_column", {"entityType": "contact"})
    assert is_error and '"message": "Invalid input: expected string, received undefined"' in text
    assert call_tool(api, "list_custom_columns", {}, headers={"x-api-key": ""}) == ("Error: Not authenticated", True)
    assert call_tool(api, "create_plain_custom_column", {"entityType": "contact", "label": "N"}, headers={"x-api-key": "wrong"}) == ("Error: Invalid API key.", True)
    assert cm.columns() == []


def test_mcp_create_list_update_and_delete_columns(cm, api):
    text, is_error = call_tool(api, "create_plain_custom_column", {"entityType": "contact", "label": "Pipedrive ID"})
    first = toon.read_simple_fields(text)["id"]
    assert text == f'id: {first}\nlabel: Pipedrive ID\nmessage: "Custom field \\"Pipedrive ID\\" created successfully"'
    second = make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID")
    assert first != second and [c["label"] for c in cm.columns("contact")] == ["Pipedrive ID", "Pipedrive ID"]
    status = make_column(api, "create_single_select_custom_column", entityType="deal", label="Stage", options=[
        {"label": "Lead in", "color": "default", "isDefault": False, "index": 0}])
    listing, _ = call_tool(api, "list_custom_columns", {"entityType": "deal"})
    option = cm.columns("deal")[0]["options"]["options"][0]["value"]
    assert listing == (f"items[1]:\n  - id: {status}\n    label: Stage\n    entityType: deal\n    type: singleSelect\n"
                       f"    options:\n      options[1]{{value,label,color,isDefault,index}}:\n        {option},Lead in,default,false,0")
    text, is_error = call_tool(api, "update_plain_custom_column", {"id": first, "label": "Legacy ID"})
    assert not is_error and text.endswith('message: "Custom field \\"Legacy ID\\" updated successfully"')
    text, is_error = call_tool(api, "update_date_custom_column", {"id": first, "label": "X"})
    assert is_error and text == (f'Validation error: Custom column {first} is type "plain", not "date". '
                                 "Use update_plain_custom_column instead.")
    assert call_tool(api, "update_plain_custom_column", {"id": UNKNOWN_ID, "label": "X"}) == (
        f"Validation error: Custom column {UNKNOWN_ID} not found", True)
    (contact,) = create(api, "contacts", [{"firstName": "A", "lastName": "B", "customFieldValues": [{"columnId": second, "value": "7"}]}])
    assert call_tool(api, "delete_custom_column", {"id": second}) == (f"Deleted custom column {second}", False)
    assert cm.records("contacts")[0]["customFieldValues"] == []
    assert call_tool(api, "delete_custom_column", {"id": second})[1] is True


def test_isdefault_option_fills_existing_records(cm, api):
    created = create(api, "contacts", [{"firstName": "Old", "lastName": "One"}, {"firstName": "Old", "lastName": "Two"}])
    status = make_column(api, "create_single_select_custom_column", entityType="contact", label="Lead status", options=[
        {"label": "New", "color": "info", "isDefault": False, "index": 0},
        {"label": "Qualified", "color": "success", "isDefault": True, "index": 1}])
    qualified = config_column(api, "contacts", status)["options"]["options"][1]["value"]
    assert all(r["customFieldValues"] == [{"columnId": status, "value": qualified}] for r in cm.records("contacts"))
    assert len(created) == 2
    # a new record without a value for the column gets the default too
    (fresh,) = create(api, "contacts", [{"firstName": "New", "lastName": "One"}])
    assert fresh["customFieldValues"] == [{"columnId": status, "value": qualified}]
    # ... but not when the column is sent explicitly (null = no value)
    (explicit,) = create(api, "contacts", [{"firstName": "New", "lastName": "Two", "customFieldValues": [{"columnId": status, "value": None}]}])
    assert explicit["customFieldValues"] == []


def contact_single_select(api, label: str, options: list[str]) -> tuple[str, list[str]]:
    """A contact single-select column with these options, none the default: its id and its options' values."""
    column = make_column(api, "create_single_select_custom_column", entityType="contact", label=label, options=[
        {"label": option, "color": "info", "isDefault": False, "index": index} for index, option in enumerate(options)])
    return column, [o["value"] for o in config_column(api, "contacts", column)["options"]["options"]]


def test_an_option_made_the_default_by_an_update_fills_only_the_records_without_a_value(cm, api):
    """Contract §6: updating a singleSelect column with an `isDefault` option fills it into every
    record of the entity that has no value; a record's own value stays. (The contract does not say
    whether the fill touches `updatedAt`; the fake leaves it.)"""
    status, (gold, standard) = contact_single_select(api, "Tier", ["Gold", "Standard"])
    create(api, "contacts", [
        {"firstName": "Has", "lastName": "Gold", "customFieldValues": [{"columnId": status, "value": gold}]},
        {"firstName": "Has", "lastName": "None"}])
    assert {r["lastName"]: r["customFieldValues"] for r in cm.records("contacts")}["None"] == []
    text, is_error = call_tool(api, "update_single_select_custom_column", {"id": status, "label": "Tier", "options": [
        {"value": gold, "label": "Gold", "color": "info", "isDefault": False, "index": 0},
        {"value": standard, "label": "Standard", "color": "info", "isDefault": True, "index": 1}]})
    assert not is_error, text
    values = {r["lastName"]: r["customFieldValues"] for r in cm.records("contacts")}
    assert values == {"Gold": [{"columnId": status, "value": gold}], "None": [{"columnId": status, "value": standard}]}


def test_single_select_update_replaces_options(cm, api):
    status, (a, b) = contact_single_select(api, "Status", ["A", "B"])
    create(api, "contacts", [
        {"firstName": "Keeps", "lastName": "A", "customFieldValues": [{"columnId": status, "value": a}]},
        {"firstName": "Loses", "lastName": "B", "customFieldValues": [{"columnId": status, "value": b}]}])
    text, is_error = call_tool(api, "update_single_select_custom_column", {"id": status, "label": "Status", "options": [
        {"value": a, "label": "A", "color": "info", "isDefault": False, "index": 0},
        {"label": "C", "color": "warning", "isDefault": False, "index": 1}]})
    assert not is_error, text
    values = {r["firstName"]: r["customFieldValues"] for r in cm.records("contacts")}
    assert values == {"Keeps": [{"columnId": status, "value": a}], "Loses": []}
    options = config_column(api, "contacts", status)["options"]["options"]
    assert [o["label"] for o in options] == ["A", "C"] and options[0]["value"] == a


# ---------------------------------------------------------------- fault injection and the transaction limit


def test_fail_next_answers_the_status_and_writes_nothing(cm, api):
    cm.fail_next(1, status=502, path_contains="/deals/many")
    assert api.post("/contacts/search", json={}).status_code == 200  # reads are not affected
    (contact,) = create(api, "contacts", [{"firstName": "A", "lastName": "B"}])  # other paths are not affected
    response = api.post("/deals/many", json={"deals": [{"name": "D"}]})
    assert response.status_code == 502 and response.content == b""
    assert cm.records("deals") == []
    assert api.post("/deals/many", json={"deals": [{"name": "D"}]}).status_code == 201
    cm.fail_next(2)
    assert api.put(f"/contacts/{contact['id']}", json={"firstName": "Z"}).status_code == 500
    assert api.request("DELETE", "/contacts/many", json={"ids": [contact["id"]]}).status_code == 500
    assert cm.records("contacts")[0]["firstName"] == "A"


def test_drop_after_apply_writes_then_closes_connection(cm):
    cm.drop_after_apply(1, path_contains="/contacts/many")
    with httpx.Client(base_url=cm.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/contacts/many", json={"contacts": [{"firstName": "A", "lastName": "B"}]})
        assert [r["firstName"] for r in cm.records("contacts")] == ["A"]
        assert client.post("/contacts/many", json={"contacts": [{"firstName": "C", "lastName": "D"}]}).status_code == 201
    dropped = [r for r in cm.requests if r.outcome == "dropped"]
    assert len(dropped) == 1 and dropped[0].status is None and dropped[0].item_count == 1


def test_stall_next_applies_and_delays_the_answer(cm):
    cm.stall_next(0.6)
    with httpx.Client(base_url=cm.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/organizations/many", json={"organizations": [{"name": "Slow"}]})
    assert [r["name"] for r in cm.records("organizations")] == ["Slow"]
    with httpx.Client(base_url=cm.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=5) as client:
        started = time.monotonic()
        assert client.post("/organizations/many", json={"organizations": [{"name": "Fast"}]}).status_code == 201
        assert time.monotonic() - started < 0.5


def test_transaction_timeout_under_latency_returns_500_and_writes_nothing():
    with FakeCustomermates(latency_per_item=0.01, transaction_timeout=0.5) as fake, \
            httpx.Client(base_url=fake.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=5) as client:
        batch = [{"firstName": f"P{i:03d}", "lastName": "X"} for i in range(100)]
        started = time.monotonic()
        response = client.post("/contacts/many", json={"contacts": batch})
        assert response.status_code == 500 and response.content == b""
        assert 0.4 <= time.monotonic() - started < 2
        assert fake.records("contacts") == []
        assert client.post("/contacts/many", json={"contacts": batch[:25]}).status_code == 201
        assert len(fake.records("contacts")) == 25


def test_concurrent_batches_queue_on_the_company_lock_and_late_ones_time_out():
    # 0.5 s a batch: the third ends at 1.5 s, the fourth would at 2.0; a quarter second either side of
    # the timeout, wide enough for the CPU time a busy machine adds to each batch
    with FakeCustomermates(latency_per_item=0.005, transaction_timeout=1.75) as fake:
        statuses: list[int] = []

        def send(tag: str) -> None:
            with httpx.Client(base_url=fake.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=10) as client:
                batch = [{"firstName": tag, "lastName": f"{i:03d}"} for i in range(100)]
                statuses.append(client.post("/contacts/many", json={"contacts": batch}).status_code)

        threads = [threading.Thread(target=send, args=(f"A{n}",)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(statuses) == [201, 201, 201, 500]
        assert len(fake.records("contacts")) == 300


# ---------------------------------------------------------------- bookkeeping


def test_write_count_and_request_log(cm, api):
    make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID")
    api.post("/contacts/search", json={})
    api.post("/users/search", json={})
    create(api, "contacts", [{"firstName": "A", "lastName": "B"}, {"firstName": "C", "lastName": "D"}])
    api.post("/contacts/many", json={"contacts": []})
    (org,) = create(api, "organizations", [{"name": "O"}])
    api.put(f"/organizations/{org['id']}", json={"name": "P"})
    api.delete(f"/organizations/{org['id']}")
    assert cm.write_count() == 5
    many = [r for r in cm.requests if r.path == "/api/v1/contacts/many"]
    assert [(r.method, r.status, r.item_count) for r in many] == [("POST", 201, 2), ("POST", 400, 0)]
    assert many[0].body == {"contacts": [{"firstName": "A", "lastName": "B"}, {"firstName": "C", "lastName": "D"}]}


def test_reset_empties_the_tenant_but_keeps_users(cm, api):
    make_column(api, "create_plain_custom_column", entityType="contact", label="Pipedrive ID")
    create(api, "contacts", [{"firstName": "A", "lastName": "B", "userIds": [JANE_ID]}])
    cm.reset()
    assert cm.records("contacts") == [] and cm.columns() == []
    assert len(api.post("/users/search", json={}).json()["items"]) == 2
    assert create(api, "contacts", [{"firstName": "A", "lastName": "B", "userIds": [JANE_ID]}])[0]["users"][0]["id"] == JANE_ID


def test_the_search_cache_answers_as_without_it_and_forgets_at_the_next_write():
    def read_all(client: httpx.Client) -> list[list[str]]:
        pages = []
        for page in (1, 2, 3):
            body = client.post("/organizations/search", json={"pagination": {"page": page, "pageSize": 10}}).json()
            pages.append([o["name"] for o in body["items"]])
        return pages

    answers = []
    for cached in (False, True):
        ids = itertools.count(1)
        with FakeCustomermates(search_cache=cached, id_factory=lambda ids=ids: str(uuid.UUID(int=next(ids)))) as fake, httpx.Client(
            base_url=fake.url + "/api/v1", headers={"x-api-key": VALID_KEY}, timeout=10
        ) as client:
            created = client.post("/organizations/many", json={"organizations": [{"name": f"Org {n:02}"} for n in range(25)]})
            assert created.status_code == 201, created.text
            before = read_all(client)
            assert client.post("/organizations/many", json={"organizations": [{"name": "Org 00a"}]}).status_code == 201
            answers.append((before, read_all(client)))
    assert answers[0] == answers[1]
    (before, after) = answers[1]
    assert sum(map(len, before)) == 25 and sum(map(len, after)) == 26  # the write was seen


def test_a_body_over_the_hosts_limit_is_refused_with_413_before_the_app_and_nothing_written(cm, api):
    """Vercel functions take about 4.5 MB (contract §10): the fake refuses a bigger body as Vercel does."""
    long_notes = "x" * 60_000
    contacts = [{"firstName": f"N{i}", "lastName": "", "notes": long_notes} for i in range(76)]  # 4.56 MB
    response = api.post("/contacts/many", json={"contacts": contacts})
    assert response.status_code == 413 and b"FUNCTION_PAYLOAD_TOO_LARGE" in response.content
    assert cm.records("contacts") == []
    assert api.post("/contacts/many", json={"contacts": contacts[:70]}).status_code == 201  # 4.2 MB
    assert len(cm.records("contacts")) == 70


def test_an_answer_over_the_hosts_limit_is_a_500_after_the_write_was_applied(cm, api):
    """Vercel fails a function whose response is over about 4.5 MB; the database has committed by then."""
    cm.max_body_bytes = None  # a request this big passes (the answer's notes are Tiptap JSON, bigger again)
    contacts = [{"firstName": f"N{i}", "lastName": "", "notes": "x" * 60_000} for i in range(76)]
    response = api.post("/contacts/many", json={"contacts": contacts})
    assert response.status_code == 500 and b"FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE" in response.content
    assert len(cm.records("contacts")) == 76
    page = api.post("/contacts/search", json={"pagination": {"page": 1, "pageSize": 100}, "sortDescriptor": {"field": "createdAt", "direction": "asc"}})
    assert page.status_code == 500
    page = api.post("/contacts/search", json={"pagination": {"page": 1, "pageSize": 25}, "sortDescriptor": {"field": "createdAt", "direction": "asc"}})
    assert page.status_code == 200 and len(page.json()["items"]) == 25


# ---------------------------------------------------------------- the fast schema check


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, prefix + (index,))
    return found


def _shortened(value: Any) -> Any:
    """Lists of up to two items: an item of a batch is checked like the first."""
    if isinstance(value, dict):
        return {k: _shortened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shortened(v) for v in value[:2]]
    return value


TEXT_MUTANTS = ("", "x" * 300, "not-a-uuid", "00000000-0000-4000-8000-000000000000", "a@b", "a@b.co\n", "a@b.co")
OTHER_MUTANTS = (None, True, 0, -1, 1.5, 10**15, [], [None], {})


def _mutations(instance: Any, rng: random.Random, count: int | None) -> list[Any]:
    """Bodies with one value swapped (a text for every other text, a value of another type) or
    dropped, at `count` places drawn at random or, with None, at every place."""
    out = []
    paths = _paths(instance)
    for path in paths if count is None else rng.sample(paths, min(count, len(paths))):
        value = instance
        for step in path:
            value = value[step]
        texts = TEXT_MUTANTS if isinstance(value, str) else rng.sample(TEXT_MUTANTS, 2)
        for mutant in (*texts, *rng.sample(OTHER_MUTANTS, 3), "drop"):
            changed = copy.deepcopy(instance)
            if not path:
                out.append(mutant if mutant != "drop" else None)
                continue
            parent = changed
            for step in path[:-1]:
                parent = parent[step]
            if mutant != "drop":
                parent[path[-1]] = copy.deepcopy(mutant)
            elif isinstance(parent, dict):
                del parent[path[-1]]
            else:
                continue
            out.append(changed)
    return out


def test_the_fast_schema_check_passes_exactly_what_the_full_validation_passes(env, monkeypatch):
    """The fake skips jsonschema's walk of a body that passes the check fastjsonschema compiled
    from the same schema, so that check must pass nothing the walk would fault. Every schema and
    body the fake validated in a run of the sample (writes, searches, MCP tools), and
    values swapped for other types, lengths, formats or dropped, get the same verdict from both."""
    from click.testing import CliRunner

    from migrate.cli import cli

    validated: dict[int, list[tuple[dict, Any]]] = {}
    full = zod_messages.validate

    def recording(schema: dict, instance: Any) -> list:
        bodies = validated.setdefault(id(schema), [])
        if len(bodies) < 4:  # the sample creates over a hundred columns through one tool
            bodies.append((schema, _shortened(instance)))
        return full(schema, instance)

    monkeypatch.setattr(zod_messages, "validate", recording)
    assert CliRunner().invoke(cli, ["run"], env=env).exit_code == 0
    rng = random.Random(7)
    verdicts = []
    for schema, instance, first in ((s, i, n == 0) for bodies in validated.values() for n, (s, i) in enumerate(bodies)):
        for body in [instance, *_mutations(instance, rng, None if first else 6)]:
            verdicts.append((zod_messages.passes(schema, body), zod_messages.walk_issues(schema, body) == [], schema.get("title"), body))
    assert len(validated) >= 15
    assert sum(fast for fast, *_ in verdicts) > 100 and sum(not fast for fast, *_ in verdicts) > 1000
    assert [v for v in verdicts if v[0] != v[1]] == []
