"""CustomermatesClient: replayed against real recorded exchanges (vcrpy cassettes), plus MockTransport unit tests."""

from __future__ import annotations

import functools
import json

import httpx
import pytest
import tenacity
import vcr
import yaml

from migrate import errors as base_errors
from migrate.customermates.client import (
    ENTITIES,
    REJECTED_KEY_MESSAGE,
    SINGULAR,
    AuthenticationError,
    BatchRejectedError,
    CustomermatesClient,
    CustomermatesError,
    Issue,
    PermissionDeniedError,
    RequestRejectedError,
    RequestTooLargeError,
    ServerError,
    UncertainWriteError,
    encoded_size,
    parse_issues,
)
from tests.fakes.customermates import VALID_KEY, FakeCustomermates
from tests.recorded import (
    ADMIN_KEY,
    CASSETTES,
    SERVER,
    WRONG_KEY,
    api_key,
    json_body,
    needs_cassettes,
)

# ------------------------------------------------------------------------------------------------------------------
# Cassette plumbing
# ------------------------------------------------------------------------------------------------------------------

SHORT_KEY = "cm_short_key_123"



EXACT = ("method", "scheme", "host", "port", "path", "query", "json_body", "api_key")
NO_BODY = ("method", "scheme", "host", "port", "path", "query", "api_key")


def replay(name: str, *, match_on=EXACT, repeats: bool = False):
    recorder = vcr.VCR(record_mode="none", match_on=list(match_on))
    recorder.register_matcher("json_body", json_body)
    recorder.register_matcher("api_key", api_key)
    return recorder.use_cassette(str(CASSETTES / name), allow_playback_repeats=repeats)


@functools.lru_cache(maxsize=None)
def _interactions(name: str) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((CASSETTES / name).read_text(encoding="utf-8"), Loader=loader)["interactions"]


def recorded_request_body(name: str, index: int) -> dict:
    """The JSON body of interaction ``index`` of a cassette, to reproduce that exact request."""
    return json.loads(_interactions(name)[index]["request"]["body"])


def recorded_response(name: str, index: int) -> tuple[int, dict[str, str], str]:
    response = _interactions(name)[index]["response"]
    headers = {k: v[0] for k, v in response["headers"].items() if k != "transfer-encoding"}
    return response["status"]["code"], headers, response["body"]["string"]


def cm(key: str = ADMIN_KEY, **kwargs) -> CustomermatesClient:
    client = CustomermatesClient(SERVER, key, **kwargs)
    client.read_wait = tenacity.wait_none()
    return client


# ------------------------------------------------------------------------------------------------------------------
# 01_auth: the key preflight
# ------------------------------------------------------------------------------------------------------------------


@needs_cassettes
def test_me_with_the_admin_key_returns_the_profile_without_email():
    with replay("01_auth.yaml") as cassette, cm() as client:
        me = client.me()
    assert me["id"] == "11111111-1111-4111-8111-111111111111"
    assert me["roleName"] == "Admin"
    assert "email" not in me
    assert cassette.play_count == 1


@needs_cassettes
@pytest.mark.parametrize("key", [WRONG_KEY, SHORT_KEY])
def test_me_with_a_wrong_key_raises_authentication_error_at_once(key):
    with replay("01_auth.yaml") as cassette, cm(key) as client:
        with pytest.raises(AuthenticationError) as caught:
            client.me()
    assert str(caught.value) == REJECTED_KEY_MESSAGE
    assert "rejected the API key" in str(caught.value)
    assert caught.value.status == 500
    assert key not in str(caught.value) and key not in repr(caught.value)
    assert cassette.play_count == 1  # the bad-key signature is not retried


@needs_cassettes
def test_me_without_a_key_raises_authentication_error_401():
    with replay("01_auth.yaml"), cm("") as client:
        with pytest.raises(AuthenticationError) as caught:
            client.me()
    assert caught.value.status == 401
    assert "Not authenticated" in str(caught.value)


@needs_cassettes
def test_a_wrong_key_on_a_data_route_is_a_server_error_after_bounded_retries():
    # The recorded request body was `{}`; the client always sends pagination and a sort, so match without the body.
    with replay("01_auth.yaml", match_on=NO_BODY, repeats=True) as cassette, cm(WRONG_KEY, read_retries=2) as client:
        with pytest.raises(ServerError) as caught:
            client.search("contacts")
    assert caught.value.status == 500
    assert "empty body" in str(caught.value)
    assert cassette.play_count == 3
    assert not isinstance(caught.value, AuthenticationError)


# ------------------------------------------------------------------------------------------------------------------
# 02_users
# ------------------------------------------------------------------------------------------------------------------


@needs_cassettes
def test_list_users_returns_every_user_with_email():
    sent: list[dict] = []
    # No recording has the client's exact paging body; match method + path + key and check the body we sent.
    with replay("02_users.yaml", match_on=NO_BODY) as cassette, cm() as client:
        client._http.event_hooks["request"] = [lambda request: sent.append(json.loads(request.content))]
        users = client.list_users()
    assert [u["email"] for u in users] == ["admin@example.com", "jane.doe@example.com"]
    assert cassette.play_count == 1  # totalPages 1: no second page requested
    assert sent == [{"pagination": {"page": 1, "pageSize": 100}, "sortDescriptor": {"field": "createdAt", "direction": "asc"}}]


# ------------------------------------------------------------------------------------------------------------------
# 05_create_many_happy
# ------------------------------------------------------------------------------------------------------------------

HAPPY = "05_create_many_happy.yaml"


@needs_cassettes
def test_create_many_returns_the_dtos_in_input_order_for_every_entity():
    requests = {"organizations": 11, "contacts": 12, "services": 13, "deals": 14, "tasks": 15}
    with replay(HAPPY) as cassette, cm() as client:
        for entity in ENTITIES:  # dependency order
            items = recorded_request_body(HAPPY, requests[entity])[entity]
            created = client.create_many(entity, items)
            assert len(created) == len(items)
            for item, dto in zip(items, created, strict=True):
                if entity == "contacts":
                    assert (dto["firstName"], dto["lastName"]) == (item["firstName"], item["lastName"])
                else:
                    assert dto["name"] == item["name"]
                assert dto["id"]
        assert client.write_requests == 5
    assert cassette.play_count == 5


@needs_cassettes
def test_create_many_deal_totals_are_derived_from_services():
    with replay(HAPPY) as cassette, cm() as client:
        deals = client.create_many("deals", recorded_request_body(HAPPY, 14)["deals"])
    assert [(d["totalValue"], d["totalQuantity"]) for d in deals][0] == (39626.25, 5.5)
    assert cassette.play_count == 1


@needs_cassettes
def test_configuration_lists_custom_columns_sorted_by_label():
    with replay(HAPPY) as cassette, cm() as client:
        config = client.configuration("contacts")
    labels = [c["label"] for c in config["customColumns"]]
    assert labels == sorted(labels)
    plain = next(c for c in config["customColumns"] if c["type"] == "plain")
    assert "options" not in plain  # a plain column has no options key here (observed)
    assert {"customColumns", "filterableFields", "sortableFields"} <= set(config)
    assert cassette.play_count == 1


# ------------------------------------------------------------------------------------------------------------------
# 06_create_many_failures
# ------------------------------------------------------------------------------------------------------------------

FAIL = "06_create_many_failures.yaml"


def _rejected(index: int, entity: str = "contacts") -> BatchRejectedError:
    with replay(FAIL) as cassette, cm() as client:
        with pytest.raises(BatchRejectedError) as caught:
            client.create_many(entity, recorded_request_body(FAIL, index)[entity])
        assert client.write_requests == 1
    assert cassette.play_count == 1
    return caught.value


@needs_cassettes
def test_an_invalid_email_rejects_the_whole_batch_with_the_issue_path():
    error = _rejected(13)
    assert error.status == 400
    assert error.issues == [Issue("Invalid email address", "contacts[1].emails[0]")]
    assert error.issues[0].item_index() == 1
    assert "nothing was written" in str(error)
    assert isinstance(error, CustomermatesError) and isinstance(error, base_errors.CustomermatesError)


@needs_cassettes
def test_shape_and_reference_errors_come_back_together():
    across_items = _rejected(19)
    assert across_items.issues == [
        Issue("Invalid email address", "contacts[0].emails[0]"),
        Issue("Organization ID not found or not accessible.", "contacts[1].organizationIds[0]"),
    ]
    assert [i.item_index() for i in across_items.issues] == [0, 1]
    same_item = _rejected(21)
    assert [i.path for i in same_item.issues] == ["contacts[0].emails[0]", "contacts[0].organizationIds[0]"]


@needs_cassettes
def test_an_unknown_service_is_reported_for_every_deal():
    error = _rejected(41, "deals")
    assert [i.path for i in error.issues] == ["deals[0].services[1]", "deals[1].services[1]", "deals[2].services[1]"]
    assert {i.message for i in error.issues} == {"Service ID not found or not accessible."}


@needs_cassettes
def test_custom_value_errors_carry_the_server_message():
    error = _rejected(62)
    (issue,) = error.issues
    assert issue.path == "contacts[0].customFieldValues[0].columnId"
    assert issue.message.startswith("Custom column ID not found or not accessible. Available columns: Birthday (")
    number = _rejected(64)
    assert number.issues == [
        Issue("Invalid input: expected string, received number", "contacts[0].customFieldValues[0].value")
    ]


@needs_cassettes
def test_an_empty_500_on_a_write_is_an_uncertain_write_and_is_not_retried():
    # Same organizationId twice in one contact: the DB unique index fails, the batch rolls back, 500 with no body.
    with replay(FAIL) as cassette, cm() as client:
        with pytest.raises(UncertainWriteError) as caught:
            client.create_many("contacts", recorded_request_body(FAIL, 33)["contacts"])
        assert client.write_requests == 1
    assert cassette.play_count == 1
    assert caught.value.status == 500
    assert caught.value.body == ""
    assert caught.value.cause is None
    assert "empty body" in str(caught.value)


@needs_cassettes
def test_the_control_batch_after_the_failures_is_created():
    with replay(FAIL) as cassette, cm() as client:
        created = client.create_many("contacts", recorded_request_body(FAIL, 68)["contacts"])
    assert created[0]["firstName"] == "Sofia"
    assert cassette.play_count == 1


# ------------------------------------------------------------------------------------------------------------------
# 07_update_many
# ------------------------------------------------------------------------------------------------------------------

UPDATE = "07_update_many.yaml"


@needs_cassettes
def test_update_many_returns_dtos_and_rejects_a_batch_with_one_bad_item():
    with replay(UPDATE) as cassette, cm() as client:
        updated = client.update_many("contacts", recorded_request_body(UPDATE, 10)["contacts"])
        assert updated[0]["firstName"] == "Lucia" and updated[0]["lastName"] == "Fernández"
        with pytest.raises(BatchRejectedError) as caught:
            client.update_many("contacts", recorded_request_body(UPDATE, 28)["contacts"])
        with pytest.raises(BatchRejectedError) as unknown:
            client.update_many("contacts", recorded_request_body(UPDATE, 26)["contacts"])
        assert client.write_requests == 3
    assert caught.value.issues == [Issue("Invalid email address", "contacts[1].emails[0]")]
    assert unknown.value.issues[0].path == "contacts[0].id"
    assert unknown.value.issues[0].item_index() == 0
    assert cassette.play_count == 3


# ------------------------------------------------------------------------------------------------------------------
# 08_search
# ------------------------------------------------------------------------------------------------------------------

SEARCH = "08_search.yaml"
PIPEDRIVE_ID = "772bef49-014b-4d2c-8073-d56ab44a881a"


@needs_cassettes
def test_iter_records_pages_until_the_last_page():
    with replay(SEARCH) as cassette, cm() as client:
        records = list(client.iter_records("contacts", sort=("name", "asc"), page_size=5))
    assert len(records) == 12
    assert len({r["id"] for r in records}) == 12
    assert [r["firstName"] for r in records[:2]] == ["Anna", "Annabelle"]
    assert cassette.play_count == 3  # totalPages 3: page 4 is never asked for


@needs_cassettes
def test_search_past_the_last_page_returns_no_items():
    with replay(SEARCH) as cassette, cm() as client:
        page = client.search("contacts", page=4, page_size=5, sort=("name", "asc"))
    assert page["items"] == []
    assert page["pagination"] == {"page": 4, "pageSize": 5, "totalPages": 3, "total": 12}
    assert cassette.play_count == 1


@needs_cassettes
def test_search_sorts_by_a_custom_column_as_strings():
    with replay(SEARCH) as cassette, cm() as client:
        page = client.search("contacts", page_size=10, sort=(PIPEDRIVE_ID, "asc"))
        newest = client.search("contacts", page_size=10, sort=("createdAt", "desc"))
    values = [
        next((v["value"] for v in r["customFieldValues"] if v["columnId"] == PIPEDRIVE_ID), None) for r in page["items"]
    ]
    assert values == ["0123", "123", "123", "1234", "200", "201", "202", "203", "204", "205"]
    assert page["pagination"] == {"page": 1, "pageSize": 10, "totalPages": 2, "total": 12}
    assert newest["items"][0]["firstName"] == "Kai"
    assert cassette.play_count == 2


@needs_cassettes
def test_find_by_column_returns_every_match():
    with replay(SEARCH) as cassette, cm() as client:
        matches = client.find_by_column("contacts", PIPEDRIVE_ID, "123")
    assert sorted(m["firstName"] for m in matches) == ["Anna", "Hiro"]
    assert all({"columnId": PIPEDRIVE_ID, "value": "123"} in m["customFieldValues"] for m in matches)
    assert cassette.play_count == 1


@needs_cassettes
@pytest.mark.parametrize(
    ("kwargs", "issue"),
    [
        ({"page_size": 50}, Issue("Invalid input", "pagination.pageSize")),
        ({"page": 0, "page_size": 5}, Issue("Too small: expected number to be >=1", "pagination.page")),
    ],
)
def test_a_rejected_search_raises_request_rejected_with_issues(kwargs, issue):
    with replay(SEARCH) as cassette, cm() as client:
        with pytest.raises(RequestRejectedError) as caught:
            client.search("contacts", sort=("name", "asc"), **kwargs)
    assert caught.value.issues == [issue]
    assert caught.value.issues[0].item_index() is None
    assert cassette.play_count == 1  # a 400 is not retried


@needs_cassettes
def test_configuration_shows_the_custom_column_as_filterable():
    with replay(SEARCH) as cassette, cm() as client:
        config = client.configuration("contacts")
    (column,) = config["customColumns"]
    assert column == {"id": PIPEDRIVE_ID, "label": "Pipedrive ID", "entityType": "contact", "type": "plain"}
    assert any(f["field"] == PIPEDRIVE_ID for f in config["filterableFields"])
    assert cassette.play_count == 1


# ------------------------------------------------------------------------------------------------------------------
# 10_delete_many
# ------------------------------------------------------------------------------------------------------------------

DELETE = "10_delete_many.yaml"


@needs_cassettes
def test_delete_many_returns_the_deleted_ids():
    ids = ["3aa964d2-634a-4440-ba92-ec2f15cfadaf", "c6cfe88a-6711-4898-a054-030788a4a36c"]
    with replay(DELETE) as cassette, cm() as client:
        assert client.delete_many("contacts", ids) == ids
        assert client.write_requests == 1
    assert cassette.play_count == 1


@needs_cassettes
def test_delete_many_with_an_unknown_id_deletes_nothing_and_names_the_index():
    ids = ["f3b76b6e-cb91-4f0d-b0fa-c11250085074", "9b2f4c1e-7d3a-4e5b-8c6d-0a1b2c3d4e5f"]
    with replay(DELETE) as cassette, cm() as client:
        with pytest.raises(BatchRejectedError) as caught:
            client.delete_many("contacts", ids)
    assert caught.value.issues == [Issue("Contact ID not found or not accessible.", "ids[1]")]
    assert caught.value.issues[0].item_index() == 1
    assert cassette.play_count == 1


@needs_cassettes
def test_a_malformed_id_gives_two_issues_at_the_same_path():
    with replay(DELETE) as cassette, cm() as client:
        with pytest.raises(BatchRejectedError) as caught:
            client.delete_many("contacts", ["not-a-uuid"])
    assert caught.value.issues == [
        Issue("Invalid UUID", "ids[0]"),
        Issue("Contact ID not found or not accessible.", "ids[0]"),
    ]
    assert cassette.play_count == 1


# ------------------------------------------------------------------------------------------------------------------
# 11_get_by_id: one record by its id, in each entity's own answer shape
# ------------------------------------------------------------------------------------------------------------------

GET_BY_ID = "11_get_by_id.yaml"
RECORDED_IDS = {
    "contacts": "541ed8de-eef0-4fad-ab5b-52f347335fc3",
    "organizations": "52a13e55-cd4a-4900-8644-ef714d145023",
    "deals": "75d402fd-be03-4f36-9f60-a8c9bd8caeed",
    "services": "32d7ef2c-1a58-4cb0-a52f-b65e596f7292",
    "tasks": "9a505a2a-897e-4b22-9875-347aeff88fcf",
}


@needs_cassettes
@pytest.mark.parametrize("entity", list(RECORDED_IDS))
def test_get_returns_the_record_or_none_for_an_id_the_company_does_not_have(entity):
    with replay(GET_BY_ID, match_on=NO_BODY) as cassette, cm() as client:
        found = client.get(entity, RECORDED_IDS[entity])
        unknown = client.get(entity, "9b2f4c1e-7d3a-4e5b-8c6d-0a1b2c3d4e5f")
    assert found["id"] == RECORDED_IDS[entity] and "customFieldValues" in found
    assert unknown is None
    assert cassette.play_count == 2


def test_get_refuses_what_is_no_record_id_without_a_request():
    with cm() as client, pytest.raises(ValueError, match="no Customermates record id"):
        client.get("contacts", "../users/me")


@needs_cassettes
def test_deleting_the_same_id_twice_returns_it_twice():
    same = "110ec2e2-42d6-432b-a051-76f7f1238121"
    with replay(DELETE) as cassette, cm() as client:
        assert client.delete_many("contacts", [same, same]) == [same, same]
    assert cassette.play_count == 1


# ------------------------------------------------------------------------------------------------------------------
# Unit tests with httpx.MockTransport
# ------------------------------------------------------------------------------------------------------------------

SECRET = "cm_live_5ecret_key_0123456789abcdef0123456789abcdef0123456789abcd"


class Recorder:
    """A MockTransport handler that answers from a list of responses/exceptions and records every request."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


def mock(*answers, key: str = SECRET, base_url: str = "https://cm.example", **kwargs):
    handler = Recorder(*answers)
    client = CustomermatesClient(base_url, key, transport=httpx.MockTransport(handler), **kwargs)
    client.read_wait = tenacity.wait_none()
    return client, handler


def ok(data, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


def page(items, page: int = 1, total_pages: int = 1, total: int | None = None) -> dict:
    return {
        "items": items,
        "pagination": {"page": page, "pageSize": 100, "totalPages": total_pages, "total": total or len(items)},
    }


def test_reads_are_retried_on_5xx_then_succeed():
    client, handler = mock(httpx.Response(500), httpx.Response(503, text="busy"), ok({"customColumns": []}))
    assert client.configuration("deals") == {"customColumns": []}
    assert len(handler.requests) == 3


def test_reads_are_retried_on_connection_errors_and_timeouts():
    client, handler = mock(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), ok(page([{"id": "a"}])))
    assert client.search("contacts")["items"] == [{"id": "a"}]
    assert len(handler.requests) == 3


def test_read_retries_are_bounded_and_end_in_server_error():
    client, handler = mock(httpx.Response(502), read_retries=2)
    with pytest.raises(ServerError) as caught:
        client.search("deals")
    assert caught.value.status == 502
    assert len(handler.requests) == 3


def test_an_unreachable_server_on_a_read_is_a_server_error_without_status():
    client, handler = mock(httpx.ConnectError("connection refused"), read_retries=1)
    with pytest.raises(ServerError) as caught:
        client.configuration("contacts")
    assert caught.value.status is None
    assert "ConnectError" in str(caught.value)
    assert len(handler.requests) == 2


def test_the_read_wait_strategy_is_used_between_retries():
    waits: list[int] = []

    def wait(state: tenacity.RetryCallState) -> float:
        waits.append(state.attempt_number)
        return 0.0

    client, handler = mock(httpx.Response(500), httpx.Response(500), ok({"a": 1}))
    client.read_wait = wait
    client.configuration("tasks")
    assert waits == [1, 2]


def test_the_default_read_wait_is_small_bounded_exponential_backoff_with_jitter():
    client = CustomermatesClient("https://cm.example", SECRET)
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    waits = []
    for attempt in (1, 2, 3, 10):
        state.attempt_number = attempt
        waits.append(client.read_wait(state))
    client.close()
    assert 0.5 <= waits[0] <= 1.0
    assert 1.0 <= waits[1] <= 1.5
    assert 2.0 <= waits[2] <= 2.5
    assert 8.0 <= waits[3] <= 8.5


def test_a_page_that_keeps_failing_is_read_again_in_smaller_pages_from_where_it_began():
    """Vercel fails an answer over about 4.5 MB with a 500: a hundred records with long notes."""
    records = [{"id": str(n)} for n in range(150)]

    def answer(request: httpx.Request) -> httpx.Response:
        pagination = json.loads(request.content)["pagination"]
        page, size = pagination["page"], pagination["pageSize"]
        if size == 100 and page == 2:
            return httpx.Response(500, text="FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE")
        return ok(page_of(records, page, size))

    client, handler = mock(answer, read_retries=1)
    assert [r["id"] for r in client.iter_records("contacts")] == [str(n) for n in range(150)]
    asked = [(json.loads(r.content)["pagination"]["page"], json.loads(r.content)["pagination"]["pageSize"]) for r in handler.requests]
    assert asked == [(1, 100), (2, 100), (2, 100), (5, 25), (6, 25)]


# ------------------------------------------------------------------------------------------------------------------
# What changed since: paged by updatedAt, against the fake server
# ------------------------------------------------------------------------------------------------------------------


def contacts_in(fake: FakeCustomermates, client: CustomermatesClient, count: int) -> list[dict]:
    made: list[dict] = []
    while len(made) < count:
        batch = [{"firstName": f"C{n}", "lastName": "x"} for n in range(len(made), min(count, len(made) + 100))]
        made += client.create_many("contacts", batch)
    return made


def test_a_read_of_what_changed_misses_nothing_when_records_read_are_deleted_or_edited_while_it_reads():
    """Paged by number, each record of the first page deleted or edited (an edit moves it to the end)
    once that page was read moves the rest one place back, and the second page starts one record
    late. Paged by the last updatedAt read, every record still there is read; an edited one again,
    as it is now."""
    with FakeCustomermates() as fake, CustomermatesClient(fake.url, VALID_KEY) as client:
        made = contacts_in(fake, client, 250)
        deleted, edited = [made[3]["id"], made[50]["id"]], [made[7]["id"], made[60]["id"]]

        def meddle_after_the_first_page(entity, body):
            fake.after_search = None
            fake.delete_records("contacts", deleted)
            fake.edit_records("contacts", [{"id": rid, "lastName": "edited"} for rid in edited])

        fake.after_search = meddle_after_the_first_page
        read = list(client.iter_updated_since("contacts", made[0]["updatedAt"]))
    assert fake.after_search is None
    ids = [r["id"] for r in read]
    assert set(ids) == {r["id"] for r in made}  # the deleted two were read before they went
    assert len(ids) == 252 and [r["lastName"] for r in read[-2:]] == ["edited", "edited"]
    assert [r["id"] for r in read[-2:]] == edited


def test_a_full_page_of_records_changed_at_one_instant_is_read_by_page_then_the_read_goes_on_after_it():
    with FakeCustomermates() as fake, CustomermatesClient(fake.url, VALID_KEY) as client:
        made = contacts_in(fake, client, 150)
        instant = made[10]["updatedAt"]
        fake.stamp_updated_at("contacts", [r["id"] for r in made[10:130]], instant)  # one instant, more than a page
        fake.clear_requests()
        read = [r["id"] for r in client.iter_updated_since("contacts", made[0]["updatedAt"])]
        bodies = [r.body for r in fake.requests]
    assert sorted(read) == sorted(r["id"] for r in made) and len(read) == 150
    filters = [[(f["operator"], f["value"]) for f in b["filters"]] for b in bodies]
    assert filters == [
        [("gte", made[0]["updatedAt"])],
        [("gte", instant)],  # ten records before the instant, then ninety of it; now a full page of it
        [("gte", instant), ("lte", instant)],  # so the instant is read by page number
        [("gte", instant), ("lte", instant)],
        [("gt", instant)],
    ]


def test_a_read_of_what_changed_takes_smaller_pages_when_a_page_keeps_failing():
    records = [{"id": str(n), "updatedAt": f"2026-11-30T00:00:{n:02d}.000Z"} for n in range(30)]

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        size, bound = body["pagination"]["pageSize"], body["filters"][0]
        if size == 100:
            return httpx.Response(500, text="FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE")
        matching = [r for r in records if r["updatedAt"] >= bound["value"]]
        return ok(page_of(matching, 1, size))

    client, handler = mock(answer, read_retries=1)
    assert [r["id"] for r in client.iter_updated_since("tasks", "2026-11-30T00:00:00.000Z")] == [str(n) for n in range(30)]
    assert [json.loads(r.content)["pagination"]["pageSize"] for r in handler.requests] == [100, 100, 25, 25]


@pytest.mark.parametrize(
    "first_page",
    [
        [{"id": str(n), "updatedAt": f"2026-11-30T00:{n // 60:02d}:{n % 60:02d}.000Z"} for n in range(100)],  # from before `since`
        [{"id": str(n), "updatedAt": "2026-11-30T01:00:00.000Z"} for n in range(100)],  # at `since`, whatever the filter
        [{"id": str(n)} for n in range(100)],  # no updatedAt
    ],
)
def test_a_read_of_what_changed_stops_with_an_error_when_the_answers_do_not_let_it_move_on(first_page):
    """A server that ignored the filters would hand out the same page for ever."""
    client, handler = mock(lambda request: ok(page(first_page, 1, 2, 150)))
    with pytest.raises(CustomermatesError, match="cannot read on from there"):
        list(client.iter_updated_since("contacts", "2026-11-30T01:00:00.000Z"))
    assert len(handler.requests) <= 4


def page_of(records: list[dict], number: int, size: int) -> dict:
    return page(records[(number - 1) * size : number * size], number, -(-len(records) // size), len(records))


def test_a_400_on_a_read_is_not_retried():
    client, handler = mock(httpx.Response(400, json="✖ Sort field not found or not accessible.\n  → at sortDescriptor.field"))
    with pytest.raises(RequestRejectedError) as caught:
        client.search("tasks", sort=("name", "asc"))
    assert caught.value.issues == [Issue("Sort field not found or not accessible.", "sortDescriptor.field")]
    assert len(handler.requests) == 1


def test_a_413_on_a_write_is_a_refusal_with_nothing_written_that_gives_the_bodys_size():
    """Vercel refuses a body over its limit before the app runs (FUNCTION_PAYLOAD_TOO_LARGE)."""
    client, handler = mock(httpx.Response(413, text="Request Entity Too Large\n\nFUNCTION_PAYLOAD_TOO_LARGE\n"))
    items = [{"firstName": "A", "lastName": "", "notes": "x" * 1000}]
    with pytest.raises(RequestTooLargeError) as caught:
        client.create_many("contacts", items)
    assert isinstance(caught.value, BatchRejectedError) and caught.value.issues == []
    assert caught.value.size == len(handler.requests[0].content) == encoded_size({"contacts": items})
    assert "HTTP 413, nothing was written" in str(caught.value) and f"{caught.value.size:,} bytes" in str(caught.value)
    assert len(handler.requests) == 1


def test_a_write_refused_with_429_is_sent_again_after_the_retry_after_it_gives():
    client, handler = mock(httpx.Response(429, headers={"retry-after": "7"}), httpx.Response(429), ok([{"id": "x"}], 201))
    waits: list[float] = []
    client.sleep = waits.append
    assert client.create_many("contacts", [{"firstName": "A", "lastName": ""}]) == [{"id": "x"}]
    assert waits == [7.0, 1.0] and len(handler.requests) == 3 == client.write_requests
    assert handler.requests[0].content == handler.requests[2].content


def test_a_write_refused_with_429_every_time_stops_saying_nothing_was_written():
    client, handler = mock(httpx.Response(429, headers={"retry-after": "600"}), read_retries=2)
    waits: list[float] = []
    client.sleep = waits.append
    with pytest.raises(CustomermatesError) as caught:
        client.update_many("contacts", [{"id": "x", "firstName": "A"}])
    assert not isinstance(caught.value, (UncertainWriteError, BatchRejectedError)) and caught.value.status == 429
    assert "HTTP 429, too many requests, 3 times; nothing of it was written" in str(caught.value)
    assert waits == [60.0, 60.0] and len(handler.requests) == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_writes_are_never_retried_and_a_5xx_is_an_uncertain_write(status):
    client, handler = mock(httpx.Response(status), ok([{"id": "x"}], 201))
    with pytest.raises(UncertainWriteError) as caught:
        client.create_many("contacts", [{"firstName": "A", "lastName": ""}])
    assert len(handler.requests) == 1
    assert client.write_requests == 1
    assert caught.value.status == status


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("timed out"), httpx.WriteTimeout("timed out"), httpx.RemoteProtocolError("closed"),
     httpx.ReadError("connection reset by peer"), httpx.ConnectError("refused")],
)
def test_a_write_without_an_answer_is_an_uncertain_write_with_its_cause(exc):
    client, handler = mock(exc)
    with pytest.raises(UncertainWriteError) as caught:
        client.update_many("deals", [{"id": "d1", "name": "X"}])
    assert caught.value.cause is exc
    assert caught.value.__cause__ is exc
    assert caught.value.status is None
    assert len(handler.requests) == 1
    assert "Reconcile" in str(caught.value)


def test_a_timeout_on_delete_is_an_uncertain_write():
    client, handler = mock(httpx.ReadTimeout("timed out"))
    with pytest.raises(UncertainWriteError):
        client.delete_many("tasks", ["t1"])
    assert len(handler.requests) == 1


def test_a_2xx_write_answer_that_is_not_json_is_uncertain():
    client, _ = mock(httpx.Response(201, text="<html>ok</html>", headers={"content-type": "text/html"}))
    with pytest.raises(UncertainWriteError):
        client.create_many("services", [{"name": "S", "amount": 1}])


def test_a_write_answer_with_the_wrong_number_of_dtos_is_uncertain():
    client, _ = mock(ok([{"id": "only-one"}], 201))
    with pytest.raises(UncertainWriteError):
        client.create_many("organizations", [{"name": "A"}, {"name": "B"}])


def test_an_html_error_page_is_reported_with_status_and_the_first_200_characters():
    html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>" + "x" * 500 + "</body></html>"
    client, _ = mock(httpx.Response(502, text=html, headers={"content-type": "text/html; charset=utf-8"}))
    with pytest.raises(ServerError) as caught:
        client.search("contacts")
    message = str(caught.value)
    assert "HTTP 502" in message and "HTML page" in message
    assert html[:200] in message
    assert html[:300] not in message


def test_an_html_404_on_a_write_says_the_base_url_may_be_wrong():
    client, handler = mock(httpx.Response(404, text="<html>Not Found</html>", headers={"content-type": "text/html"}))
    with pytest.raises(CustomermatesError) as caught:
        client.create_many("contacts", [{"firstName": "A", "lastName": "B"}])
    assert not isinstance(caught.value, UncertainWriteError)
    assert "HTTP 404" in str(caught.value) and "base URL" in str(caught.value)
    assert len(handler.requests) == 1


def test_a_non_json_400_is_rejected_with_the_body_described():
    client, _ = mock(httpx.Response(400, text="Bad Request", headers={"content-type": "text/plain"}))
    with pytest.raises(BatchRejectedError) as caught:
        client.create_many("contacts", [{"firstName": "A", "lastName": "B"}])
    assert caught.value.issues == []
    assert "non-JSON" in str(caught.value) and "Bad Request" in str(caught.value)


def test_403_is_permission_denied_with_the_server_text():
    client, _ = mock(httpx.Response(403, json="Access denied. Required permissions: create on contacts"))
    with pytest.raises(PermissionDeniedError) as caught:
        client.create_many("contacts", [{"firstName": "A", "lastName": "B"}])
    assert "Access denied. Required permissions: create on contacts" in str(caught.value)
    assert caught.value.status == 403


def test_401_on_any_call_is_an_authentication_error():
    client, _ = mock(httpx.Response(401, json="Not authenticated"))
    with pytest.raises(AuthenticationError):
        client.search("deals")


def test_an_empty_500_outside_the_preflight_is_not_an_authentication_error():
    client, _ = mock(httpx.Response(500), read_retries=0)
    with pytest.raises(ServerError) as caught:
        client.configuration("contacts")
    assert not isinstance(caught.value, AuthenticationError)


def test_the_preflight_retries_a_5xx_that_is_not_the_bad_key_signature():
    client, handler = mock(httpx.Response(503, text="upstream busy"), ok({"id": "u1"}))
    assert client.me() == {"id": "u1"}
    assert len(handler.requests) == 2


def test_the_api_key_never_appears_in_messages_bodies_or_reprs():
    def echo(status):
        return lambda request: httpx.Response(status, json=f"bad key {request.headers['x-api-key']}")

    client, _ = mock(echo(403), echo(400), echo(500), httpx.ConnectError(f"boom {SECRET}"), read_retries=0)
    errors = []
    for call in (
        lambda: client.me(),
        lambda: client.search("contacts"),
        lambda: client.create_many("contacts", [{"firstName": "A", "lastName": "B"}]),
        lambda: client.create_many("contacts", [{"firstName": "A", "lastName": "B"}]),
    ):
        with pytest.raises(CustomermatesError) as caught:
            call()
        errors.append(caught.value)
    assert [type(e) for e in errors] == [PermissionDeniedError, RequestRejectedError, UncertainWriteError,
                                         UncertainWriteError]
    for error in errors:
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
        assert SECRET not in error.body
        assert SECRET not in "".join(str(i) for i in getattr(error, "issues", []))
    assert SECRET not in repr(client)
    assert "***" in repr(client)


def test_every_request_carries_the_headers_and_a_json_body():
    client, handler = mock(ok({"id": "u"}), ok(page([])), ok([{"id": "c"}], 201))
    client.me()
    client.search("contacts")
    client.create_many("contacts", [{"firstName": "Zoë", "lastName": ""}])
    get, search, create = handler.requests
    for request in handler.requests:
        assert request.headers["x-api-key"] == SECRET
        assert request.headers["accept"] == "application/json"
        assert request.headers["user-agent"].startswith("pipedrive-to-customermates/")
    assert get.method == "GET" and get.content == b""
    for request in (search, create):
        assert request.headers["content-type"] == "application/json"
        assert request.content  # never an empty body: the server answers that with a 500
        json.loads(request.content)
    assert json.loads(search.content) == {
        "pagination": {"page": 1, "pageSize": 100},
        "sortDescriptor": {"field": "createdAt", "direction": "asc"},
    }
    assert json.loads(create.content) == {"contacts": [{"firstName": "Zoë", "lastName": ""}]}


@pytest.mark.parametrize(
    "base_url",
    ["https://cm.example", "https://cm.example/", "https://cm.example/api", "https://cm.example/api/v1/",
     "https://cm.example/api/v1"],
)
def test_the_base_url_may_end_in_a_slash_api_or_api_v1(base_url):
    client, handler = mock(ok({"id": "u"}), base_url=base_url)
    client.me()
    assert str(handler.requests[0].url) == "https://cm.example/api/v1/users/me"
    assert client.base_url == "https://cm.example"


def test_a_base_url_without_scheme_is_a_config_error():
    with pytest.raises(base_errors.ConfigError):
        CustomermatesClient("cm.example", SECRET)


@pytest.mark.parametrize("count", [0, 101])
def test_a_batch_holds_1_to_100_items(count):
    client, handler = mock(ok([], 201))
    with pytest.raises(ValueError):
        client.create_many("contacts", [{"firstName": f"C{i}", "lastName": ""} for i in range(count)])
    with pytest.raises(ValueError):
        client.delete_many("contacts", [f"id-{i}" for i in range(count)])
    assert handler.requests == [] and client.write_requests == 0


def test_a_batch_of_exactly_100_is_sent():
    client, handler = mock(lambda request: ok([{"id": str(i)} for i in range(100)], 201))
    assert len(client.create_many("contacts", [{"firstName": f"C{i}", "lastName": ""} for i in range(100)])) == 100
    assert len(handler.requests) == 1


def test_a_body_that_cannot_be_valid_json_is_refused_before_sending():
    client, handler = mock(ok([], 201))
    with pytest.raises(ValueError):
        client.create_many("services", [{"name": "S", "amount": float("nan")}])
    assert handler.requests == [] and client.write_requests == 0


def test_update_items_need_an_id_and_entities_must_be_known():
    client, handler = mock(ok([], 200))
    with pytest.raises(ValueError):
        client.update_many("contacts", [{"firstName": "A"}])
    with pytest.raises(ValueError):
        client.create_many("persons", [{"name": "A"}])
    with pytest.raises(ValueError):
        client.search("users")
    assert handler.requests == []


def test_list_users_pages_sorted_by_creation():
    first = page([{"id": f"u{i}", "email": f"u{i}@x.com"} for i in range(100)], 1, 2, 101)
    second = page([{"id": "u100", "email": "u100@x.com"}], 2, 2, 101)
    client, handler = mock(ok(first), ok(second), ok(first), ok(second))  # read twice: see below
    users = client.list_users()
    assert len(users) == 101
    bodies = [json.loads(r.content) for r in handler.requests]
    assert [b["pagination"]["page"] for b in bodies] == [1, 2, 1, 2]
    assert all(b["pagination"]["pageSize"] == 100 for b in bodies)
    assert all(b["sortDescriptor"] == {"field": "createdAt", "direction": "asc"} for b in bodies)
    assert all(r.url.path == "/api/v1/users/search" for r in handler.requests)


def test_find_by_column_pages_through_duplicates():
    dup = [{"id": f"c{i}"} for i in range(7)]
    client, handler = mock(ok(page(dup[:5], 1, 2, 7)), ok(page(dup[5:], 2, 2, 7)))
    assert [m["id"] for m in client.find_by_column("deals", "col-uuid", "42")] == [d["id"] for d in dup]
    first = json.loads(handler.requests[0].content)
    assert first == {
        "filters": [{"field": "col-uuid", "operator": "equals", "value": "42"}],
        "pagination": {"page": 1, "pageSize": 5},
        "sortDescriptor": {"field": "createdAt", "direction": "asc"},
    }
    assert json.loads(handler.requests[1].content)["pagination"] == {"page": 2, "pageSize": 5}


def test_a_users_list_that_lost_a_user_while_it_was_read_is_read_again():
    """Users page by number: one removed after the first page moved the next page one user late
    (u100 was never read). The pages' totals disagree, so the list is read until two reads agree."""
    before = [{"id": f"u{i}", "email": f"u{i}@x.com"} for i in range(102)]
    after = before[:5] + before[6:]
    client, handler = mock(
        ok(page(before[:100], 1, 2, 102)), ok(page(after[100:], 2, 2, 101)),
        ok(page(after[:100], 1, 2, 101)), ok(page(after[100:], 2, 2, 101)),
        ok(page(after[:100], 1, 2, 101)), ok(page(after[100:], 2, 2, 101)),
    )
    assert [u["id"] for u in client.list_users()] == [u["id"] for u in after]
    assert len(handler.requests) == 6


def test_a_user_added_and_one_removed_while_the_list_is_read_cost_no_user():
    """The totals agree (one user less, one more), yet the second page starts one user late and
    u100 is missing from the first read. The next read differs from it, so a third settles it."""
    before = [{"id": f"u{i}", "email": f"u{i}@x.com"} for i in range(102)]
    after = before[:5] + before[6:] + [{"id": "new", "email": "new@x.com"}]
    client, handler = mock(
        ok(page(before[:100], 1, 2, 102)), ok(page(after[100:], 2, 2, 102)),
        ok(page(after[:100], 1, 2, 102)), ok(page(after[100:], 2, 2, 102)),
        ok(page(after[:100], 1, 2, 102)), ok(page(after[100:], 2, 2, 102)),
    )
    assert [u["id"] for u in client.list_users()] == [u["id"] for u in after]
    assert len(handler.requests) == 6


def test_a_users_list_of_one_page_is_read_once():
    client, handler = mock(ok(page([{"id": "u1", "email": "u1@x.com"}])))
    assert [u["id"] for u in client.list_users()] == ["u1"]
    assert len(handler.requests) == 1


def test_find_by_column_with_no_match_is_empty():
    client, handler = mock(ok(page([], 1, 1, 0)))
    assert client.find_by_column("contacts", "col", "9") == []
    assert len(handler.requests) == 1


def test_iter_records_always_sends_a_sort_with_pagination_and_passes_filters():
    client, handler = mock(ok(page([{"id": "1"}])))
    filters = [{"field": "createdAt", "operator": "gte", "value": "2024-01-01T00:00:00Z"}]
    assert list(client.iter_records("tasks", filters=filters, sort=("updatedAt", "desc"))) == [{"id": "1"}]
    body = json.loads(handler.requests[0].content)
    assert body == {
        "filters": filters,
        "pagination": {"page": 1, "pageSize": 100},
        "sortDescriptor": {"field": "updatedAt", "direction": "desc"},
    }


def test_search_term_is_sent():
    client, handler = mock(ok(page([])))
    client.search("organizations", search_term="acme", page_size=25)
    assert json.loads(handler.requests[0].content)["searchTerm"] == "acme"


def test_the_client_closes_as_a_context_manager():
    client, _ = mock(ok({}))
    with client as same:
        assert same is client
    assert client._http.is_closed


def test_entities_are_in_dependency_order_with_singulars():
    assert ENTITIES == ("organizations", "contacts", "services", "deals", "tasks")
    assert set(SINGULAR) == set(ENTITIES)
    assert SINGULAR["organizations"] == "organization"


# ------------------------------------------------------------------------------------------------------------------
# parse_issues / Issue
# ------------------------------------------------------------------------------------------------------------------


def test_parse_issues_handles_several_issues_multi_line_messages_and_missing_paths():
    text = (
        "✖ Invalid input: expected object, received array\n"
        "✖ First line of a long message\nsecond line of it\n  → at contacts[3].notes\n"
        "✖ Invalid UUID\n  → at ids[1]\n"
        "✖ Contact ID not found or not accessible.\n  → at ids[1]"
    )
    assert parse_issues(text) == [
        Issue("Invalid input: expected object, received array", ""),
        Issue("First line of a long message\nsecond line of it", "contacts[3].notes"),
        Issue("Invalid UUID", "ids[1]"),
        Issue("Contact ID not found or not accessible.", "ids[1]"),
    ]


def test_parse_issues_of_text_without_markers_keeps_the_text():
    assert parse_issues("Only custom tasks can be deleted") == [Issue("Only custom tasks can be deleted", "")]
    assert parse_issues("") == []


@needs_cassettes
def test_parse_issues_of_the_recorded_bare_array_answer_has_no_path():
    status, _, body = recorded_response(FAIL, 28)
    assert status == 400
    assert parse_issues(json.loads(body)) == [Issue("Invalid input: expected object, received array", "")]


@pytest.mark.parametrize(
    ("path", "index"),
    [("contacts[3].emails[0]", 3), ("ids[1]", 1), ("deals[0].services[1]", 0), ("contacts", None), ("id", None),
     ("pagination.pageSize", None), ("", None), ("[2].name", 2)],
)
def test_issue_item_index(path, index):
    assert Issue("m", path).item_index() == index


@pytest.mark.parametrize(
    ("message", "missing"),
    [
        ("Contact ID not found or not accessible.", True),
        ("Organization ID not found or not accessible.", True),  # a linked record
        ("Custom column ID not found or not accessible. Available columns: Label (uuid)", True),
        ("Sort field not found or not accessible.", False),  # the request's own mistake, no id
        ("Filter field not found or not accessible. Available fields: …", False),
        ("Invalid UUID", False),  # with it, a malformed id has the not-found issue at the same path
    ],
)
def test_an_issue_says_an_id_is_not_found_with_the_servers_words_for_records_links_and_columns(message, missing):
    assert Issue(message, "contacts[0].id").is_id_not_found() is missing
