"""The fake Pipedrive behaves like the contract says the real one does (paging, auth, limits, costs)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.pipedrive import CLOUDFLARE_HTML, FakePipedrive, VALID_TOKEN

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "pipedrive"


@pytest.fixture(scope="module")
def snapshot() -> dict[str, list[dict]]:
    out = {}
    for path in sorted(SAMPLE.glob("*.jsonl")):
        out[path.stem] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out


@pytest.fixture()
def fake(snapshot):
    copy = json.loads(json.dumps(snapshot))
    with FakePipedrive(collections=copy, burst_limit=10_000) as server:
        yield server


@pytest.fixture()
def client(fake):
    with httpx.Client(base_url=fake.url, headers={"x-api-token": VALID_TOKEN}, timeout=10) as http:
        yield http


def collect_v2(client: httpx.Client, path: str, **params) -> tuple[list[dict], int]:
    records, pages, cursor = [], 0, None
    while True:
        query = dict(params)
        if cursor:
            query["cursor"] = cursor
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is True
        records.extend(body["data"])
        pages += 1
        cursor = body["additional_data"]["next_cursor"]
        if cursor is None:
            return records, pages


# -- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [500, 7])
@pytest.mark.parametrize("path,name", [
    ("/api/v2/persons", "persons"), ("/api/v2/organizations", "organizations"), ("/api/v2/activities", "activities"),
    ("/api/v2/products", "products"), ("/api/v2/stages", "stages"), ("/api/v2/deals/archived", "deals_archived"),
])
def test_cursor_paging_returns_every_record_once(client, snapshot, path, name, limit):
    records, pages = collect_v2(client, path, limit=limit)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(r["id"] for r in snapshot[name])
    assert ids == sorted(ids)  # default sort_by=id asc
    assert pages == max(1, -(-len(ids) // limit))


def test_field_metadata_is_cursor_paged(client, snapshot):
    fields, pages = collect_v2(client, "/api/v2/dealFields", limit=5)
    assert [f["field_code"] for f in fields] == [f["field_code"] for f in snapshot["dealFields"]]
    assert pages == -(-len(fields) // 5)


def test_sort_by_update_time_desc(client, snapshot):
    records, _ = collect_v2(client, "/api/v2/persons", limit=13, sort_by="update_time", sort_direction="desc")
    times = [r["update_time"] for r in records]
    assert times == sorted(times, reverse=True)
    assert len(records) == len(snapshot["persons"])


def test_default_limit_is_100(client):
    body = client.get("/api/v2/persons").json()
    assert len(body["data"]) == 100
    assert body["additional_data"]["next_cursor"]


def test_cursors_are_opaque(client):
    first = client.get("/api/v2/persons", params={"limit": 7}).json()
    cursor = first["additional_data"]["next_cursor"]
    assert isinstance(cursor, str) and not cursor.isdigit()
    assert str(first["data"][-1]["id"]) != cursor
    for bad in ("7", "garbage!!", base64.urlsafe_b64encode(b"[1,2]").decode()):
        assert client.get("/api/v2/persons", params={"limit": 7, "cursor": bad}).status_code == 400
    # a cursor belongs to its sort order
    other = client.get("/api/v2/persons", params={"limit": 7, "cursor": cursor, "sort_by": "update_time"})
    assert other.status_code == 400


def test_limit_above_500_is_a_400(client):
    response = client.get("/api/v2/persons", params={"limit": 501})
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert client.get("/api/v2/persons", params={"limit": 500}).status_code == 200
    assert client.get("/api/v2/persons", params={"limit": 0}).status_code == 400


def test_edits_between_runs_are_visible(fake, client):
    fake.collections["persons"][0]["name"] = "Geändert"
    fake.collections["persons"].append({**fake.collections["persons"][1], "id": 100000, "name": "Neu"})
    records, _ = collect_v2(client, "/api/v2/persons", limit=500)
    by_id = {r["id"]: r for r in records}
    assert by_id[1]["name"] == "Geändert" and by_id[100000]["name"] == "Neu"


# -- filters -----------------------------------------------------------------------------------


def test_updated_since_is_inclusive_and_until_exclusive(client, snapshot):
    persons = sorted(snapshot["persons"], key=lambda r: r["update_time"])
    pivot = persons[len(persons) // 2]["update_time"]
    since, _ = collect_v2(client, "/api/v2/persons", limit=500, updated_since=pivot)
    until, _ = collect_v2(client, "/api/v2/persons", limit=500, updated_until=pivot)
    assert all(r["update_time"] >= pivot for r in since)
    assert any(r["update_time"] == pivot for r in since)
    assert all(r["update_time"] < pivot for r in until)
    assert len(since) + len(until) == len(persons)
    assert client.get("/api/v2/persons", params={"updated_since": "yesterday"}).status_code == 400


def test_deleted_deals_only_when_status_asks(client, snapshot):
    default, _ = collect_v2(client, "/api/v2/deals", limit=500)
    assert default and all(d["status"] != "deleted" and not d["is_deleted"] for d in default)
    deleted, _ = collect_v2(client, "/api/v2/deals", limit=500, status="deleted")
    assert deleted and all(d["status"] == "deleted" and d["is_deleted"] for d in deleted)
    everything, _ = collect_v2(client, "/api/v2/deals", limit=500, status="open,won,lost,deleted")
    assert len(everything) == len(snapshot["deals"]) == len(default) + len(deleted)
    won, _ = collect_v2(client, "/api/v2/deals", limit=500, status="won")
    assert won and all(d["status"] == "won" for d in won)
    assert client.get("/api/v2/deals", params={"status": "archived"}).status_code == 400
    archived, _ = collect_v2(client, "/api/v2/deals/archived", limit=500, status="open,won,lost,deleted")
    assert archived and all(d["is_archived"] for d in archived)
    assert not {d["id"] for d in archived} & {d["id"] for d in everything}


def test_deleted_persons_are_listed_unless_switched_off(fake, client):
    records, _ = collect_v2(client, "/api/v2/persons", limit=500)
    assert any(r["is_deleted"] for r in records)
    fake.list_deleted_rows = False
    records, _ = collect_v2(client, "/api/v2/persons", limit=500)
    assert records and not any(r["is_deleted"] for r in records)


def test_ids_and_entity_filters(client):
    body = client.get("/api/v2/persons", params={"ids": "1,2,3,9999"}).json()
    assert [r["id"] for r in body["data"]] == [1, 2, 3]
    too_many = ",".join(str(i) for i in range(1, 102))
    assert client.get("/api/v2/persons", params={"ids": too_many}).status_code == 400
    stages = client.get("/api/v2/stages", params={"pipeline_id": 2}).json()["data"]
    assert stages and all(s["pipeline_id"] == 2 for s in stages)


def test_include_fields_and_option_labels(client, snapshot):
    plain = client.get("/api/v2/activities", params={"limit": 500}).json()["data"]
    assert all("attendees" not in a for a in plain)
    full = client.get("/api/v2/activities", params={"limit": 500, "include_fields": "attendees"}).json()["data"]
    assert all("attendees" in a for a in full)
    deals = client.get("/api/v2/deals", params={"limit": 500, "include_fields": "products_count"}).json()["data"]
    counts = {}
    for row in snapshot["deal_products"]:
        counts[row["deal_id"]] = counts.get(row["deal_id"], 0) + 1
    assert all(d["products_count"] == counts.get(d["id"], 0) for d in deals)
    assert all("products_count" not in d for d in client.get("/api/v2/deals").json()["data"])
    assert not any("marketing_status" in p for p in client.get("/api/v2/persons", params={"limit": 500}).json()["data"])
    asked = client.get("/api/v2/persons", params={"limit": 500, "include_fields": "marketing_status"}).json()["data"]
    assert [p.get("marketing_status") for p in asked] == [p.get("marketing_status") for p in snapshot["persons"]]
    enum_field = next(f for f in snapshot["dealFields"] if f["is_custom_field"] and f["field_type"] == "enum")
    labelled = client.get("/api/v2/deals", params={"limit": 500, "include_option_labels": "true"}).json()["data"]
    values = [d["custom_fields"][enum_field["field_code"]] for d in labelled if d["custom_fields"][enum_field["field_code"]]]
    assert values and all(set(v) == {"id", "label"} for v in values)


def test_deal_products_by_deal_ids(client, snapshot):
    deal_ids = sorted({r["deal_id"] for r in snapshot["deal_products"]})[:5]
    rows, pages = collect_v2(client, "/api/v2/deals/products", deal_ids=",".join(map(str, deal_ids)), limit=2)
    expected = [r["id"] for r in snapshot["deal_products"] if r["deal_id"] in deal_ids]
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert pages == -(-len(expected) // 2)
    assert client.get("/api/v2/deals/products").status_code == 400
    too_many = ",".join(str(i) for i in range(1, 102))
    assert client.get("/api/v2/deals/products", params={"deal_ids": too_many}).status_code == 400
    one = client.get(f"/api/v2/deals/{deal_ids[0]}/products").json()["data"]
    assert one and all(r["deal_id"] == deal_ids[0] for r in one)


# -- v1 ----------------------------------------------------------------------------------------


def test_leads_offset_paging(client, snapshot):
    seen, start, pages = [], 0, 0
    while True:
        body = client.get("/api/v1/leads", params={"start": start, "limit": 3}).json()
        pagination = body["additional_data"]["pagination"]
        assert pagination["start"] == start and pagination["limit"] == 3
        seen.extend(lead["id"] for lead in body["data"])
        pages += 1
        if not pagination["more_items_in_collection"]:
            assert "next_start" not in pagination
            break
        start = pagination["next_start"]
    assert sorted(seen) == sorted(lead["id"] for lead in snapshot["leads"])
    assert len(seen) == len(set(seen)) and pages == -(-len(seen) // 3)
    archived = client.get("/api/v1/leads/archived", params={"limit": 500}).json()
    assert {lead["id"] for lead in archived["data"]} == {lead["id"] for lead in snapshot["leads_archived"]}


def test_leads_and_v1_fields_can_be_paged_flat_without_next_start_as_the_v1_schema_has_it(fake, client, snapshot):
    fake.flat_pagination = {"leads", "dealFields"}
    first = client.get("/api/v1/leads", params={"limit": 3}).json()
    assert first["data"] == snapshot["leads"][:3]  # the sample's leads are in add_time order
    assert first["additional_data"] == {"start": 0, "limit": 3, "more_items_in_collection": True}
    last = client.get("/api/v1/leads", params={"start": 6, "limit": 3}).json()
    assert last["additional_data"] == {"start": 6, "limit": 3, "more_items_in_collection": False}
    fields = client.get("/api/v1/dealFields", params={"limit": 2}).json()
    assert fields["additional_data"] == {"start": 0, "limit": 2, "more_items_in_collection": True}
    notes = client.get("/api/v1/notes", params={"limit": 2}).json()  # the others still nested
    assert notes["additional_data"]["pagination"]["next_start"] == 2


def test_a_v2_lists_last_page_has_next_cursor_null_or_left_out(fake, client):
    first = client.get("/api/v2/persons", params={"limit": 2}).json()
    assert first["additional_data"]["next_cursor"]
    assert client.get("/api/v2/persons", params={"limit": 500}).json()["additional_data"] == {"next_cursor": None}
    fake.end_cursor_null = False
    assert client.get("/api/v2/persons", params={"limit": 500}).json()["additional_data"] == {}
    assert client.get("/api/v2/stages", params={"limit": 500}).json()["additional_data"] == {}


def test_notes_offset_paging_and_updated_since(client, snapshot):
    seen, start = [], 0
    while True:
        body = client.get("/api/v1/notes", params={"start": start, "limit": 25}).json()
        seen.extend(n["id"] for n in body["data"])
        pagination = body["additional_data"]["pagination"]
        if not pagination["more_items_in_collection"]:
            break
        start = pagination["next_start"]
    assert seen == sorted(n["id"] for n in snapshot["notes"])
    pivot = sorted(n["update_time"] for n in snapshot["notes"])[40]
    since = pivot.replace(" ", "T") + "Z"
    body = client.get("/api/v1/notes", params={"updated_since": since, "limit": 500}).json()
    assert body["data"] and all(n["update_time"] >= pivot for n in body["data"])
    assert len(body["data"]) == sum(1 for n in snapshot["notes"] if n["update_time"] >= pivot)
    newest = client.get("/api/v1/notes", params={"sort": "update_time DESC", "limit": 5}).json()["data"]
    assert [n["update_time"] for n in newest] == sorted((n["update_time"] for n in snapshot["notes"]), reverse=True)[:5]


def test_unpaginated_v1_lists_and_me(client, snapshot):
    for path, name in (("users", "users"), ("activityTypes", "activityTypes"), ("currencies", "currencies"),
                       ("leadLabels", "leadLabels")):
        body = client.get(f"/api/v1/{path}").json()
        assert body["success"] and body["data"] == snapshot[name]
    me = client.get("/api/v1/users/me").json()["data"]
    assert me["company_domain"] == "nordlicht-systems" and me["is_you"] is True


def test_unpaged_v1_lists_can_be_served_in_v1_offset_pages(fake, client, snapshot):
    fake.paginate_unpaged = {"users": 2}
    first = client.get("/api/v1/users").json()
    assert first["data"] == snapshot["users"][:2]
    assert first["additional_data"]["pagination"] == {"start": 0, "limit": 2, "more_items_in_collection": True, "next_start": 2}
    seen, start = [], 0
    while True:
        body = client.get("/api/v1/users", params={"start": start}).json()
        seen.extend(body["data"])
        pagination = body["additional_data"]["pagination"]
        if not pagination["more_items_in_collection"]:
            assert "next_start" not in pagination
            break
        start = pagination["next_start"]
    assert seen == snapshot["users"]
    assert len(client.get("/api/v1/users", params={"limit": 1}).json()["data"]) == 1  # a smaller limit is kept
    assert len(client.get("/api/v1/users", params={"limit": 500}).json()["data"]) == 2  # a bigger one capped at the page size
    assert client.get("/api/v1/currencies").json()["data"] == snapshot["currencies"]  # the others still whole


def test_v1_field_metadata_has_subfield_rows(client):
    fields = client.get("/api/v1/dealFields", params={"limit": 500}).json()["data"]
    subs = [f for f in fields if f.get("is_subfield")]
    assert any(f["key"].endswith("_currency") for f in subs)
    assert all(len(f["key"]) > 40 for f in subs)


def test_unknown_paths_404_and_deprecated_v1_410(client):
    assert client.get("/api/v2/nothing").status_code == 404
    assert client.get("/v2/deals").status_code == 404
    for path in ("/api/v1/persons", "/api/v1/deals", "/api/v1/organizations", "/api/v1/activities", "/api/v1/deals/1"):
        response = client.get(path)
        assert response.status_code == 410, path
        assert response.json()["success"] is False
    assert client.post("/api/v2/persons", json={}).status_code == 405


# -- auth --------------------------------------------------------------------------------------


def test_wrong_or_missing_token_is_401(fake):
    with httpx.Client(base_url=fake.url) as http:
        for headers in ({}, {"x-api-token": "wrong"}):
            response = http.get("/api/v2/persons", headers=headers)
            assert response.status_code == 401
            assert response.json() == {"success": False, "error": "unauthorized access", "errorCode": 401,
                                       "error_info": "Please check developers.pipedrive.com"}
            assert response.headers["x-ratelimit-limit"]


def test_query_param_token_is_refused(fake):
    with httpx.Client(base_url=fake.url) as http:
        assert http.get("/api/v2/persons", params={"api_token": VALID_TOKEN}).status_code == 401
        both = http.get("/api/v2/persons", params={"api_token": VALID_TOKEN}, headers={"x-api-token": VALID_TOKEN})
        assert both.status_code == 401


# -- rate limits -------------------------------------------------------------------------------


def test_burst_limit_429_headers_and_recovery(snapshot):
    with FakePipedrive(collections=snapshot, burst_limit=5, window_seconds=1.0) as fake, \
            httpx.Client(base_url=fake.url, headers={"x-api-token": VALID_TOKEN}) as http:
        remaining = [int(http.get("/api/v2/pipelines").headers["x-ratelimit-remaining"]) for _ in range(5)]
        assert remaining == [4, 3, 2, 1, 0]
        limited = http.get("/api/v2/pipelines")
        assert limited.status_code == 429
        assert limited.json() == {"success": False, "error": "Request over limit", "errorCode": 429}
        assert limited.headers["x-ratelimit-limit"] == "5"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        reset = int(limited.headers["x-ratelimit-reset"])
        assert reset >= 1
        time.sleep(reset)
        assert http.get("/api/v2/pipelines").status_code == 200
        assert fake.count_429 == 1 and fake.count_403 == 0
        assert fake.tokens_spent == 6 * 5  # the 429 is not charged


def test_ignoring_429s_gets_the_cloudflare_403(snapshot):
    with FakePipedrive(collections=snapshot, burst_limit=3, window_seconds=1.0) as fake, \
            httpx.Client(base_url=fake.url, headers={"x-api-token": VALID_TOKEN}) as http:
        statuses = [http.get("/api/v2/stages").status_code for _ in range(3 + 4)]
        assert statuses == [200, 200, 200, 429, 429, 429, 429]
        blocked = http.get("/api/v2/stages")
        assert blocked.status_code == 403
        assert blocked.headers["content-type"].startswith("text/html")
        assert blocked.text == CLOUDFLARE_HTML and "Cloudflare" in blocked.text
        assert http.get("/api/v2/stages").status_code == 403  # for the rest of the window
        assert fake.count_429 == 4 and fake.count_403 == 2
        time.sleep(1.05)
        assert http.get("/api/v2/stages").status_code == 200


def test_another_client_on_the_same_token_takes_places_in_the_burst_window(snapshot):
    """`shared_rate`: another integration's requests, evenly spaced from the first request, each in
    the window while there is room. They are not ours: not in `requests`, not charged to us."""
    with FakePipedrive(collections=snapshot, burst_limit=20, window_seconds=1.0, shared_rate=40) as fake, \
            httpx.Client(base_url=fake.url, headers={"x-api-token": VALID_TOKEN}) as http:
        assert http.get("/api/v2/stages").headers["x-ratelimit-remaining"] == "18"  # ours and the other's first
        time.sleep(0.2)
        remaining = int(http.get("/api/v2/stages").headers["x-ratelimit-remaining"])
        assert fake.shared_served >= 8  # one every 25 ms
        assert remaining == 20 - 2 - fake.shared_served
        assert len(fake.requests) == 2 and fake.tokens_spent == 2 * 5
        time.sleep(0.6)  # twice the limit: the other client has filled the window, and ours is refused
        limited = http.get("/api/v2/stages")
        assert limited.status_code == 429 and limited.headers["x-ratelimit-remaining"] == "0"


TOKEN_TABLE = [
    ("/api/v2/persons", {}, 10), ("/api/v2/organizations", {}, 10), ("/api/v2/deals", {}, 10),
    ("/api/v2/products", {}, 10), ("/api/v2/activities", {}, 10), ("/api/v2/pipelines", {}, 5),
    ("/api/v2/stages", {}, 5), ("/api/v2/deals/archived", {}, 20), ("/api/v2/deals/products", {"deal_ids": "1"}, 10),
    ("/api/v2/dealFields", {}, 10), ("/api/v2/persons/1", {}, 1), ("/api/v1/users", {}, 20),
    ("/api/v1/notes", {}, 20), ("/api/v1/leads", {}, 20), ("/api/v1/activityTypes", {}, 20),
    ("/api/v1/currencies", {}, 20), ("/api/v1/dealFields", {}, 20), ("/api/v1/leads/archived", {}, 40),
    ("/api/v1/leadLabels", {}, 10), ("/api/v1/users/me", {}, 2),
]


def test_token_accounting_matches_the_contract_table(fake, client):
    for path, params, cost in TOKEN_TABLE:
        assert client.get(path, params=params).status_code == 200, path
        assert fake.requests[-1].token_cost == cost, path
    client.get("/api/v2/persons", params={"limit": 501})  # errors are not charged
    client.get("/api/v1/persons")
    assert fake.requests[-1].token_cost == 0 and fake.requests[-2].token_cost == 0
    assert fake.tokens_spent == sum(cost for _, _, cost in TOKEN_TABLE)


def test_daily_budget_exhaustion(snapshot):
    with FakePipedrive(collections=snapshot, daily_token_budget=25) as fake, \
            httpx.Client(base_url=fake.url, headers={"x-api-token": VALID_TOKEN}) as http:
        first = http.get("/api/v2/persons")
        assert first.headers["x-daily-ratelimit-token-limit"] == "25"
        assert first.headers["x-daily-ratelimit-token-remaining"] == "15"
        assert http.get("/api/v2/persons").headers["x-daily-ratelimit-token-remaining"] == "5"
        last = http.get("/api/v2/persons")  # the last few tokens still buy one request
        assert last.status_code == 200 and last.headers["x-daily-ratelimit-token-remaining"] == "0"
        for _ in range(2):
            refused = http.get("/api/v2/pipelines")
            assert refused.status_code == 429
            assert refused.headers["x-daily-ratelimit-token-remaining"] == "0"
            assert int(refused.headers["x-ratelimit-remaining"]) > 0  # not a burst 429
        assert fake.tokens_spent == 30
        fake.reset_daily_budget()
        assert http.get("/api/v2/pipelines").status_code == 200


def test_injected_answers(fake, client):
    fake.inject(500, count=2, path_contains="/api/v2/persons")
    assert client.get("/api/v2/organizations").status_code == 200
    assert [client.get("/api/v2/persons").status_code for _ in range(3)] == [500, 500, 200]
    fake.inject(403, body="<html>blocked</html>")
    html = client.get("/api/v2/deals")
    assert html.status_code == 403 and html.headers["content-type"].startswith("text/html")
    fake.inject(200, body="{not json", content_type="application/json")
    assert client.get("/api/v2/deals").text == "{not json"
    fake.inject(429, headers={"x-ratelimit-reset": "3"})
    limited = client.get("/api/v2/deals")
    assert limited.status_code == 429 and limited.headers["x-ratelimit-reset"] == "3"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert client.get("/api/v2/deals").status_code == 200


def test_request_log(fake, client):
    client.get("/api/v2/persons", params={"limit": 3, "sort_by": "id"})
    record = fake.requests[-1]
    assert (record.method, record.path, record.status, record.token_cost) == ("GET", "/api/v2/persons", 200, 10)
    assert record.query == {"limit": "3", "sort_by": "id"}
    assert record.headers["x-api-token"] == VALID_TOKEN and record.time > 0


def test_loads_snapshot_directory():
    with FakePipedrive(SAMPLE) as fake:
        assert {"persons", "deals_archived", "deal_products", "dealFields", "leads_archived"} <= set(fake.collections)
        assert fake.url.startswith("http://127.0.0.1:")


# -- frozen snapshots (the benchmark's indexes) ------------------------------------------------


@pytest.mark.parametrize("path,params", [
    ("/api/v2/persons", {"limit": 7}),
    ("/api/v2/persons", {"limit": 9, "sort_by": "update_time", "sort_direction": "desc"}),
    ("/api/v2/deals", {"limit": 5, "status": "open,won,lost,deleted", "include_fields": "products_count"}),
    ("/api/v2/deals", {"limit": 4, "sort_direction": "desc"}),  # the default statuses: deleted deals hidden
    ("/api/v2/deals", {"limit": 3, "status": "won,lost", "sort_by": "add_time"}),
    ("/api/v2/activities", {"limit": 6, "include_fields": "attendees"}),
    ("/api/v2/deals/products", {"limit": 3, "deal_ids": "3,1,2,4,5,6,7,8"}),
    ("/api/v1/notes", {"limit": 11}),
    ("/api/v1/notes", {"limit": 11, "sort": "id ASC"}),
    ("/api/v1/leads", {"limit": 4}),
])
def test_frozen_snapshot_serves_the_same_pages_as_a_live_one(snapshot, path, params):
    def pages(frozen: bool) -> list[dict]:
        copy = json.loads(json.dumps(snapshot))
        with FakePipedrive(collections=copy, burst_limit=10_000, frozen=frozen) as server, httpx.Client(
            base_url=server.url, headers={"x-api-token": VALID_TOKEN}, timeout=10
        ) as http:
            bodies, query = [], dict(params)
            for _ in range(2):  # twice: the second pass is served from what the first built
                query.pop("cursor", None)
                query.pop("start", None)
                while True:
                    body = http.get(path, params=query).json()
                    bodies.append(body)
                    extra = body["additional_data"] or {}
                    if extra.get("next_cursor"):
                        query["cursor"] = extra["next_cursor"]
                    elif (extra.get("pagination") or {}).get("next_start"):
                        query["start"] = extra["pagination"]["next_start"]
                    else:
                        break
            return bodies

    live, frozen = pages(False), pages(True)
    assert len(live) > 2 and live == frozen
