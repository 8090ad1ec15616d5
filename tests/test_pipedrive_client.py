"""The Pipedrive client against the fake API: paging, rate limits, and one clear line per failure."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from pathlib import Path

import pytest

from migrate.errors import BudgetExhaustedError, PipedriveError
from migrate.httpdate import parse_http_date
from migrate.pipedrive import client as pipedrive_client
from migrate.pipedrive.client import BurstLimiter, PipedriveClient
from migrate.pipedrive.collections import BY_NAME, PAGE_LIMIT
from migrate.pipedrive.extract import extract, extract_changes, since_params
from migrate.staging.store import Checkpoint, Staging, raw_table
from tests.fakes.pipedrive import V1_FIELDS, VALID_TOKEN, FakePipedrive

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pipedrive"


@pytest.fixture
def fake():
    with FakePipedrive(SAMPLE, burst_limit=1000) as server:
        yield server


def client_for(fake: FakePipedrive, **kwargs) -> PipedriveClient:
    return PipedriveClient(fake.url, kwargs.pop("token", VALID_TOKEN), max_attempts=kwargs.pop("max_attempts", 4), **kwargs)


def all_records(client: PipedriveClient, name: str) -> list[dict]:
    return [r for page in client.pages(BY_NAME[name]) for r in page.records]


def test_cursor_and_offset_paging_return_every_record_once(fake):
    fake.collections["persons"] = [dict(p, id=i) for i, p in enumerate(fake.collections["persons"] * 10, start=1)]
    with client_for(fake) as client:
        persons = all_records(client, "persons")
        notes = all_records(client, "notes")
    assert sorted(p["id"] for p in persons) == list(range(1, 1201))
    assert len(notes) == len(fake.collections["notes"])
    assert {r.query.get("limit") for r in fake.requests} == {"500"}


def test_token_travels_in_the_header_never_in_the_url(fake):
    with client_for(fake) as client:
        all_records(client, "users")
    assert all("api_token" not in r.query for r in fake.requests)
    assert fake.requests[0].headers.get("x-api-token") == VALID_TOKEN


def test_burst_429_waits_and_retries(fake):
    fake.inject(429, count=2, path_contains="/api/v2/stages", headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"})
    with client_for(fake) as client:
        stages = all_records(client, "stages")
        assert client.rate_limited == 2
    assert len(stages) == len(fake.collections["stages"])
    assert fake.count_403 == 0


def test_a_429_with_retry_after_waits_that_long_even_when_the_window_resets_sooner(fake):
    """Contract §4: `Retry-After` is not in the current docs, "honour if present". The client took
    `x-ratelimit-reset` whenever it came and sent again after 1 s where the server asked for 3."""
    fake.inject(429, count=1, path_contains="/api/v2/stages", headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1", "retry-after": "3"})
    with client_for(fake) as client:
        all_records(client, "stages")
    limited, retried = [r.time for r in fake.requests if r.path == "/api/v2/stages"][:2]
    assert retried - limited >= 3


def test_a_429_with_retry_after_as_an_http_date_waits_until_then(fake):
    """RFC 9110 lets Retry-After be a date; it was read as seconds only, and a date was ignored."""
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    fake.inject(429, count=1, path_contains="/api/v2/stages", headers={"x-ratelimit-remaining": "0", "retry-after": when})
    with client_for(fake) as client:
        all_records(client, "stages")
    limited, retried = [r.time for r in fake.requests if r.path == "/api/v2/stages"][:2]
    assert retried - limited >= 2  # the date has whole seconds


def test_a_429_whose_reset_header_is_a_moment_not_seconds_waits_no_longer_than_the_cap(fake, monkeypatch):
    """An epoch in x-ratelimit-reset (the contract gives no unit) would have stalled the run for decades."""
    monkeypatch.setattr(pipedrive_client, "MAX_BURST_WAIT", 0.5)
    fake.inject(429, count=1, path_contains="/api/v2/stages", headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1764763200"})
    with client_for(fake) as client:
        all_records(client, "stages")
    limited, retried = [r.time for r in fake.requests if r.path == "/api/v2/stages"][:2]
    assert 0.5 <= retried - limited < 5


def test_daily_budget_exhaustion_stops_at_once(fake):
    fake.inject(429, count=5, headers={"x-ratelimit-remaining": "15", "x-daily-ratelimit-token-remaining": "0"})
    with client_for(fake) as client, pytest.raises(BudgetExhaustedError, match="daily API token budget"):
        all_records(client, "persons")
    assert len(fake.requests) == 1


def test_a_second_full_extract_on_the_same_state_file_connection_stages_everything_again(fake, tmp_path):
    """A fresh start drops the raw tables; the connection took them for still there, and the
    second extract failed with 'Table raw_users does not exist' (a script or a long-lived process)."""
    with client_for(fake) as client, Staging(tmp_path / "s.duckdb") as staging:
        first = extract(staging, client, "run1")
        second = extract(staging, client, "run2")
    assert second.records == first.records and second.records["persons"] == len(fake.collections["persons"])


def test_extract_resumes_from_the_last_committed_page(fake, tmp_path):
    fake.collections["persons"] = [dict(p, id=i) for i, p in enumerate(fake.collections["persons"] * 10, start=1)]
    staging = Staging(tmp_path / "s.duckdb")
    fake.inject(401, count=1, path_contains="cursor=")  # dies on the second page of the first cursor list
    with client_for(fake) as client, pytest.raises(PipedriveError):
        extract(staging, client, "run1")
    done_before = {c for c in ("users", "activityTypes", "currencies", "leadLabels") if staging.checkpoint(c).done}
    assert done_before == {"users", "activityTypes", "currencies", "leadLabels"}
    began = staging.meta("extract_began")
    requests_before = len(fake.requests)
    time.sleep(1.1)
    with client_for(fake) as client:
        summary = extract(staging, client, "run2")
    resumed = fake.requests[requests_before:]
    assert not any(r.path == "/api/v1/users" for r in resumed)
    assert summary.records["persons"] == 1200
    assert summary.resumed
    assert staging.meta("extract_began") == began  # the first start: edits since then are for the next sync


@pytest.mark.parametrize(
    ("status", "body", "content_type", "message"),
    [
        (401, '{"success":false,"error":"unauthorized access","errorCode":401}', "application/json", "rejected the API token"),
        (402, '{"success":false,"error":"Company account is not open"}', "application/json", "account is not open"),
        (403, "<!DOCTYPE html><html><title>Cloudflare</title></html>", "text/html", "blocked the requests"),
        (403, '{"success":false,"error":"Forbidden","errorCode":403}', "application/json", "global-admin"),
        (404, '{"success":false,"error":"Not found"}', "application/json", "PIPEDRIVE_BASE_URL"),
        (410, '{"success":false,"error":"Gone"}', "application/json", "410 Gone"),
    ],
)
def test_hard_failures_give_one_clear_sentence_without_retrying(fake, status, body, content_type, message):
    fake.inject(status, count=10, body=body, content_type=content_type)
    with client_for(fake) as client, pytest.raises(PipedriveError, match=message) as caught:
        all_records(client, "users")
    assert len(fake.requests) == 1
    assert VALID_TOKEN not in str(caught.value)


def test_after_the_firewalls_403_page_no_request_is_sent_to_any_collection_but_a_403_json_answer_stops_none(fake):
    """The firewall blocks the token (contract §12): every request would add to the block. A JSON
    403 is one endpoint's permission, and other collections may still be read."""
    fake.inject(403, count=1, body="<!DOCTYPE html><html><title>Cloudflare</title></html>", content_type="text/html")
    with client_for(fake) as client:
        with pytest.raises(PipedriveError, match="blocked the requests"):
            all_records(client, "users")
        with pytest.raises(PipedriveError, match="blocked the requests"):
            all_records(client, "stages")
    assert len(fake.requests) == 1
    fake.inject(403, count=1, body='{"success":false,"error":"Forbidden","errorCode":403}', content_type="application/json")
    with client_for(fake) as client:
        with pytest.raises(PipedriveError, match="global-admin"):
            all_records(client, "users")
        assert all_records(client, "stages")


def test_malformed_json_and_5xx_are_retried_then_reported(fake):
    fake.inject(200, count=10, body='{"success": true, "data": [', content_type="application/json")
    with client_for(fake, max_attempts=3) as client, pytest.raises(PipedriveError, match="malformed JSON"):
        all_records(client, "users")
    assert len(fake.requests) == 3


def test_transient_5xx_recovers(fake):
    fake.inject(503, count=1, body="maintenance", content_type="text/plain")
    with client_for(fake) as client:
        assert len(all_records(client, "users")) == len(fake.collections["users"])


def test_a_full_page_without_next_cursor_is_the_end_of_the_list_as_the_contract_says(fake):
    """Contract §3: `next_cursor` is null or absent at the end, so a list of exactly 500 ends there."""
    page = json.dumps({"success": True, "data": [{"id": i} for i in range(1, 501)], "additional_data": {}})
    fake.inject(200, count=1, body=page, content_type="application/json", path_contains="/api/v2/persons")
    fake.collections["persons"] = [{"id": i, "name": f"P{i}", "custom_fields": {}} for i in range(1, 501)]
    with client_for(fake) as client:
        assert [r["id"] for r in all_records(client, "persons")] == list(range(1, 501))
    [_, probe] = [r for r in fake.requests if "/api/v2/persons" in r.path]  # one record in the other order: the page's last
    assert (probe.query["limit"], probe.query["sort_direction"]) == ("1", "desc")


def test_a_full_page_without_next_cursor_in_the_middle_of_a_list_is_refused(fake):
    fake.collections["persons"] = [{"id": i, "name": f"P{i}", "custom_fields": {}} for i in range(1, 1201)]
    page = json.dumps({"success": True, "data": [{"id": i} for i in range(1, 501)], "additional_data": {}})
    fake.inject(200, count=1, body=page, content_type="application/json", path_contains="/api/v2/persons")
    with client_for(fake) as client, pytest.raises(PipedriveError, match="its last record in the other order is 1200, not 500"):
        all_records(client, "persons")


def test_an_edit_made_during_the_extract_to_a_record_already_read_arrives_with_the_next_sync(fake, tmp_path):
    """The extract reads by id, so a person edited after its page was read is staged as it was. The
    next sync reads what changed since the extract began, not since the newest update_time staged:
    a person edited later still, on a page read after that, would put that past the first edit."""
    fake.collections["persons"] = [dict(p, id=i) for i, p in enumerate(fake.collections["persons"] * 10, start=1)]
    early, late = fake.collections["persons"][0], fake.collections["persons"][-1]
    began = datetime.now(UTC).replace(microsecond=0)

    def edit_once_the_first_page_was_read(record):
        if record.path == "/api/v2/persons" and "cursor" not in record.query and early["name"] != "Edited Meanwhile":
            early.update(name="Edited Meanwhile", update_time=(began + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
            late.update(update_time=(began + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ"))  # a long extract

    fake.after_serving = edit_once_the_first_page_was_read
    staging = Staging(tmp_path / "s.duckdb")
    with client_for(fake) as client:
        extract(staging, client, "run1")
        assert staging_record(staging, "persons", early["id"])["name"] != "Edited Meanwhile"  # read before the edit
        extract_changes(staging, client, "sync1")
    assert staging_record(staging, "persons", early["id"])["name"] == "Edited Meanwhile"


def test_an_edit_made_while_an_extract_was_paused_arrives_with_the_next_sync_when_this_machines_clock_is_ahead(fake, tmp_path, monkeypatch):
    """A resumed extract took the earlier of this machine's clock at its fresh start and Pipedrive's at
    its first answer after the resumption: with this machine's clock ahead, that was the resumption, and
    a person edited after its page was read, while the extract waited (its budget spent, say), was
    behind the watermark, never read by a sync."""
    from migrate.pipedrive import extract as extract_module

    fake.collections["persons"] = [dict(p, id=i) for i, p in enumerate(fake.collections["persons"] * 10, start=1)]
    early, late = fake.collections["persons"][0], fake.collections["persons"][-1]
    began = datetime.now(UTC).replace(microsecond=0)

    class AheadByAnHour(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(hours=1)

    monkeypatch.setattr(extract_module, "datetime", AheadByAnHour)
    staging = Staging(tmp_path / "s.duckdb")
    fake.inject(401, count=1, path_contains="cursor=")  # stops after the first page of persons
    with client_for(fake) as client, pytest.raises(PipedriveError):
        client.get("/api/v1/users/me", cost=2)  # as every run's preflight asks first
        extract(staging, client, "run1")
    early.update(name="Edited Meanwhile", update_time=(began + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    late.update(update_time=(began + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    # resumed ten minutes later by Pipedrive's clock
    monkeypatch.setattr(pipedrive_client, "parse_http_date", lambda value: parse_http_date(value) + timedelta(minutes=10))
    with client_for(fake) as client:
        extract(staging, client, "run2")
        assert staging_record(staging, "persons", early["id"])["name"] != "Edited Meanwhile"  # read before the edit
        extract_changes(staging, client, "sync1")
    assert staging_record(staging, "persons", early["id"])["name"] == "Edited Meanwhile"


def staging_record(staging: Staging, collection: str, record_id: int) -> dict:
    return json.loads(staging.con.execute(f"SELECT data FROM raw_{collection} WHERE id = ?", [str(record_id)]).fetchone()[0])


def _many_notes(fake: FakePipedrive, count: int) -> list[dict]:
    """`count` notes, ids 1..count, each edited a second after the one before."""
    template = fake.collections["notes"][0]
    first = datetime(2026, 1, 1, tzinfo=UTC)
    fake.collections["notes"] = [
        dict(template, id=i, update_time=(first + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S")) for i in range(1, count + 1)
    ]
    return fake.collections["notes"]


def _on_notes_request(fake: FakePipedrive, number: int, edit) -> None:
    """Run `edit` once, right after the `number`th notes request was served (before the next one)."""
    served = []

    def after(record):
        if record.path.endswith("/notes") and record.status == 200:
            served.append(record)
            if len(served) == number:
                edit()

    fake.after_serving = after


def test_notes_deleted_while_the_list_is_read_do_not_make_the_next_page_skip_others(fake):
    notes = _many_notes(fake, 1200)
    gone = {10, 20, 30}  # from the first page, once it was read: offset 500 now starts at note 504
    _on_notes_request(fake, 1, lambda: notes.__setitem__(slice(None), [n for n in notes if n["id"] not in gone]))
    with client_for(fake) as client:
        read = all_records(client, "notes")
    assert set(range(1, 1201)) - gone - {n["id"] for n in read} == set()  # the deleted ones were read before they went
    assert [r.query["start"] for r in fake.requests] == ["0", "499", "489", "988"]  # the list moved: ten rows back


def test_a_note_edited_while_changed_notes_are_read_by_update_time_is_read_and_none_after_it_is_skipped(fake):
    notes = _many_notes(fake, 1200)
    later = (datetime(2026, 1, 2, tzinfo=UTC)).strftime("%Y-%m-%d %H:%M:%S")

    def edit():  # two notes of the first page move to the end of the update_time order
        for note in notes[4:6]:
            note["update_time"] = later

    _on_notes_request(fake, 1, edit)
    with client_for(fake) as client:
        read = [r for page in client.pages(BY_NAME["notes"], extra=since_params(BY_NAME["notes"], "2025-12-31T00:00:00Z")) for r in page.records]
    assert {n["id"] for n in read} == set(range(1, 1201))
    assert [n["update_time"] for n in read if n["id"] in (5, 6)][-2:] == [later, later]


def test_more_rows_removed_than_a_page_holds_are_stepped_back_over_a_page_at_a_time(fake):
    notes = _many_notes(fake, 2000)
    gone = set(range(300, 820))  # 520 notes, some read already, some not yet
    _on_notes_request(fake, 2, lambda: notes.__setitem__(slice(None), [n for n in notes if n["id"] not in gone]))
    with client_for(fake) as client:
        read = all_records(client, "notes")
    assert set(range(1, 2001)) - gone - {n["id"] for n in read} == set()
    assert [r.query["start"] for r in fake.requests][:11] == ["0", "499", "998", "988", "978", "958", "918", "838", "678", "358", "857"]


def test_a_list_that_keeps_losing_rows_before_the_offset_is_still_read_to_its_end(fake):
    """Another integration deletes a note already read before every page: each request finds the
    list moved, and the short step back still moves the read on by most of a page."""
    notes = _many_notes(fake, 3000)

    def delete_one_read_note(record):
        if record.path.endswith("/notes") and len(notes) > 2000:
            notes.pop(0)

    fake.after_serving = delete_one_read_note
    with client_for(fake) as client:
        read = all_records(client, "notes")
    assert {n["id"] for n in notes} - {n["id"] for n in read} == set()
    assert len(fake.requests) <= 2 * math.ceil(3000 / 490) + 1


def test_offset_pages_overlap_by_one_row_that_is_not_handed_out_twice(fake):
    _many_notes(fake, 1200)
    with client_for(fake) as client:
        pages = [[n["id"] for n in page.records] for page in client.pages(BY_NAME["notes"])]
    assert [len(p) for p in pages] == [500, 499, 201]
    assert sum(pages, []) == list(range(1, 1201))
    assert [r.query["start"] for r in fake.requests] == ["0", "499", "998"]


def _many_leads(fake: FakePipedrive, count: int) -> list[dict]:
    """`count` leads in the list's order (add_time), none archived: `fake.collections["leads"]`."""
    template = fake.collections["leads"][0]
    first = datetime(2026, 1, 1, tzinfo=UTC)
    fake.collections["leads_archived"] = []
    fake.collections["leads"] = [
        dict(template, id=f"00000000-0000-0000-0000-{i:012d}", add_time=(first + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        for i in range(count)
    ]
    return fake.collections["leads"]


def test_a_v1_list_paged_flat_without_next_start_is_read_to_its_end(fake):
    """Contract §3: the v1 schema of /v1/leads and the *Fields puts start, limit and
    more_items_in_collection flat in additional_data, without next_start: the next page starts
    after the rows this one holds."""
    leads = _many_leads(fake, 1200)
    fake.flat_pagination = {"leads"}
    with client_for(fake) as client:
        pages = [[lead["id"] for lead in page.records] for page in client.pages(BY_NAME["leads"])]
    assert sum(pages, []) == [lead["id"] for lead in leads]
    assert [r.query["start"] for r in fake.requests] == ["0", "499", "998"]


def test_a_v1_page_without_rows_that_says_more_follow_without_next_start_is_refused(fake):
    empty = {"success": True, "data": [], "additional_data": {"start": 0, "limit": 500, "more_items_in_collection": True}}
    fake.inject(200, count=5, path_contains="/api/v1/leads", body=json.dumps(empty), content_type="application/json")
    with client_for(fake) as client, pytest.raises(PipedriveError, match="no rows, no next_start"):
        all_records(client, "leads")
    assert len(fake.requests) == 1


def test_an_extract_stages_every_lead_and_v1_field_pipedrive_pages_flat_without_next_start(fake, tmp_path):
    _many_leads(fake, 1200)
    fake.collections["dealFields"] += [  # more than a page of v1 fields
        {"field_code": f"{i:040x}", "field_name": f"Extra {i}", "field_type": "varchar", "is_custom_field": True, "options": None}
        for i in range(600)
    ]
    fake.inject(404, count=100, path_contains="/api/v2/dealFields")  # an account without the v2 Fields API: v1 read instead
    staged = {}
    for flat in (False, True):
        fake.flat_pagination = {"leads", "dealFields"} if flat else set()
        staging = Staging(tmp_path / f"flat-{flat}.duckdb")
        with client_for(fake) as client:
            extract(staging, client, "run")
        staged[flat] = {name: sorted(staging_ids(staging, name)) for name in ("leads", "dealFields")}
    assert staged[True] == staged[False]
    assert len(staged[True]["leads"]) == 1200 and len(staged[True]["dealFields"]) > 600


def test_an_extract_whose_v2_lists_leave_next_cursor_out_at_the_end_stages_what_one_with_null_does(fake, tmp_path):
    """Contract §3: a v2 list's last page has next_cursor null or absent."""
    staged = {}
    for null in (True, False):
        fake.end_cursor_null = null
        staging = Staging(tmp_path / f"null-{null}.duckdb")
        with client_for(fake) as client:
            extract(staging, client, "run")
        staged[null] = {name: sorted(staging_ids(staging, name)) for name in ("persons", "deals", "activities", "personFields")}
    assert staged[True] == staged[False] and all(staged[True].values())


def test_a_full_last_page_of_v2_fields_without_next_cursor_is_their_end_and_sends_no_probe(fake, tmp_path):
    """A full page without next_cursor is checked by asking one record in the other order; the v2
    *Fields take no sort order (contract §6 lists none), and their records have no `id`: such a
    page is their end, where the check compared two missing ids and passed by chance."""
    fields = fake.collections["personFields"]
    fields += [
        {"field_code": f"{i:040x}", "field_name": f"Extra {i}", "field_type": "varchar", "is_custom_field": True, "options": None}
        for i in range(500 - len(fields))
    ]
    fake.end_cursor_null = False
    staging = Staging(tmp_path / "s.duckdb")
    with client_for(fake) as client:
        extract(staging, client, "run")
    assert len(staging_ids(staging, "personFields")) == 500
    assert [r.query.get("limit") for r in fake.requests if r.path == "/api/v2/personFields"] == ["500"]


def _extract_stopped_after_the_first_page_of_leads(fake: FakePipedrive, staging: Staging) -> None:
    fake.inject(401, count=1, path_contains="/api/v1/leads?limit=500&start=499")
    with client_for(fake) as client, pytest.raises(PipedriveError):
        extract(staging, client, "run1")
    assert staging.count_raw("leads")[0] == 500


def test_a_resumed_offset_list_whose_rows_shifted_since_reads_every_row(fake, tmp_path):
    """A lead of the first page archived between a run stopped after that page (its budget spent,
    say) and the next: the resumed read asks from one row early and joins on the last lead read,
    as from page to page within a run, where it started past the lead that slid into the offset."""
    leads = _many_leads(fake, 1200)
    expected = {lead["id"] for lead in leads}
    staging = Staging(tmp_path / "s.duckdb")
    _extract_stopped_after_the_first_page_of_leads(fake, staging)
    archived = leads.pop(10)
    fake.collections["leads_archived"].append({**archived, "is_archived": True})
    with client_for(fake) as client:
        extract(staging, client, "run2")
    assert set(staging_ids(staging, "leads")) | set(staging_ids(staging, "leads_archived")) == expected


def test_an_offset_list_resumed_from_a_checkpoint_of_its_offset_alone_starts_there(fake, tmp_path):
    """A state file written before checkpoints kept the last row read: its offset is all there is."""
    leads = _many_leads(fake, 1200)
    staging = Staging(tmp_path / "s.duckdb")
    _extract_stopped_after_the_first_page_of_leads(fake, staging)
    staging.write_page("leads", [], Checkpoint("leads", "500", 1, 500, False), "run1")
    requests_before = len(fake.requests)
    with client_for(fake) as client:
        extract(staging, client, "run2")
    assert [r.query["start"] for r in fake.requests[requests_before:] if r.path == "/api/v1/leads"] == ["500", "999"]
    assert sorted(staging_ids(staging, "leads")) == sorted(lead["id"] for lead in leads)


UNPAGED = ("users", "activityTypes", "currencies", "leadLabels")


def test_users_are_read_from_each_next_start_when_pipedrive_pages_the_user_list(fake):
    fake.paginate_unpaged = {"users": 2}  # contract §3: /v1/users may be paginated after all
    with client_for(fake) as client:
        pages = [[u["id"] for u in page.records] for page in client.pages(BY_NAME["users"])]
    assert [i for page in pages for i in page] == [u["id"] for u in fake.collections["users"]]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r.query for r in fake.requests] == [{}, {"start": "2"}, {"start": "4"}]  # no limit asked first, none after


def test_an_unpaged_list_follows_v1_pagination_given_flat_in_additional_data_too(fake):
    users = fake.collections["users"]
    first = {"success": True, "data": users[:3], "additional_data": {"start": 0, "limit": 3, "more_items_in_collection": True, "next_start": 3}}
    fake.inject(200, count=1, path_contains="/api/v1/users", body=json.dumps(first), content_type="application/json")
    fake.paginate_unpaged = {"users": 3}
    with client_for(fake) as client:
        read = all_records(client, "users")
    assert read == users
    assert [r.query.get("start") for r in fake.requests] == [None, "3"]


def test_an_unpaged_list_whose_next_start_does_not_move_on_is_refused(fake):
    stuck = {"success": True, "data": fake.collections["users"][:2],
             "additional_data": {"pagination": {"start": 0, "limit": 2, "more_items_in_collection": True, "next_start": 2}}}
    fake.inject(200, count=5, path_contains="/api/v1/users", body=json.dumps(stuck), content_type="application/json")  # start ignored
    with client_for(fake) as client, pytest.raises(PipedriveError, match="next_start 2 does not move past start 2"):
        all_records(client, "users")
    assert len(fake.requests) == 2


def test_an_offset_list_whose_next_start_does_not_move_on_is_refused_not_read_again_and_again(fake):
    """Contract §3: no cap on `start` is documented, but one was observed (v1 /pipelines at 100). A
    v1 offset list answering every `start` with its first page and the same next_start was asked
    again without end, 20 tokens a request, each page joined on the last note read and left empty;
    an unpaged list is refused so already."""
    stuck = {"success": True, "data": fake.collections["notes"][:2],
             "additional_data": {"pagination": {"start": 0, "limit": 500, "more_items_in_collection": True, "next_start": 2}}}
    fake.inject(200, count=50, path_contains="/api/v1/notes", body=json.dumps(stuck), content_type="application/json")  # start ignored
    with client_for(fake) as client, pytest.raises(PipedriveError, match="next_start 2 does not move past start 2"):
        all_records(client, "notes")
    assert len(fake.requests) <= 3


def test_a_v2_list_whose_next_cursor_is_the_one_it_was_read_with_is_refused_not_read_again_and_again(fake):
    """The contract (§3) does not say a cursor cannot repeat; one that does would have the same page
    asked for without end, 10 tokens a request."""
    stuck = {"success": True, "data": fake.collections["stages"][:1], "additional_data": {"next_cursor": "c1"}}
    fake.inject(200, count=50, path_contains="/api/v2/stages", body=json.dumps(stuck), content_type="application/json")
    with client_for(fake) as client, pytest.raises(PipedriveError, match="next_cursor 'c1' is the cursor this page was read with"):
        all_records(client, "stages")
    assert len(fake.requests) == 2


def test_every_user_and_reference_row_is_staged_when_pipedrive_pages_the_unpaged_lists(fake, tmp_path):
    fake.paginate_unpaged = dict.fromkeys(UNPAGED, 2)
    staging = Staging(tmp_path / "s.duckdb")
    with client_for(fake) as client:
        summary = extract(staging, client, "run")
    assert {name: summary.records[name] for name in UNPAGED} == {name: len(fake.collections[name]) for name in UNPAGED}
    assert sorted(staging_ids(staging, "users")) == sorted(str(u["id"]) for u in fake.collections["users"])
    assert all(staging.checkpoint(name).done for name in UNPAGED)


def test_an_extract_stopped_between_two_pages_of_users_resumes_from_their_next_start(fake, tmp_path):
    fake.paginate_unpaged = {"users": 2}
    staging = Staging(tmp_path / "s.duckdb")
    fake.inject(401, count=1, path_contains="/api/v1/users?start=4")  # dies on the third page of users
    with client_for(fake) as client, pytest.raises(PipedriveError):
        extract(staging, client, "run1")
    checkpoint = staging.checkpoint("users")
    assert (checkpoint.cursor, checkpoint.pages, checkpoint.records, checkpoint.done) == ("4", 2, 4, False)
    requests_before = len(fake.requests)
    with client_for(fake) as client:
        summary = extract(staging, client, "run2")
    assert [r.query for r in fake.requests[requests_before:] if r.path == "/api/v1/users"] == [{"start": "4"}]
    assert summary.records["users"] == len(fake.collections["users"])
    assert staging.checkpoint("users") == Checkpoint("users", None, 3, 5, True)


def staging_ids(staging: Staging, collection: str) -> list[str]:
    return [row[0] for row in staging.con.execute(f"SELECT id FROM {raw_table(collection)}").fetchall()]


def test_unreachable_host_is_one_line():
    with PipedriveClient("http://127.0.0.1:9", VALID_TOKEN, max_attempts=2) as client:
        with pytest.raises(PipedriveError, match="cannot reach Pipedrive"):
            all_records(client, "users")


def test_the_burst_limiter_keeps_requests_under_the_plan_limit(tmp_path):
    with FakePipedrive(SAMPLE, burst_limit=5, window_seconds=1.0) as fake:
        with PipedriveClient(fake.url, VALID_TOKEN, burst_limit=5) as client:
            client.limiter.window = 1.0
            for _ in range(12):
                client.get("/api/v1/users")
        assert fake.count_429 == 0


def users_from_threads(client: PipedriveClient, *, readers: int, each: int) -> None:
    """`readers` threads share `client`, each asking for the users `each` times."""
    threads = [threading.Thread(target=lambda: [client.get("/api/v1/users") for _ in range(each)]) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def four_threads_arriving_late(late_by: float, window: float, each: int, seed: int) -> tuple[FakePipedrive, BurstLimiter]:
    """Four threads share one client (limit 5 per `window`); every request reaches the fake up to
    `late_by` seconds after it was sent, at random. Returns the stopped fake and the client's limiter."""
    import random
    rng = random.Random(seed)
    with FakePipedrive(SAMPLE, burst_limit=5, window_seconds=window) as fake:
        serve = fake.handle

        def late(*args):
            time.sleep(rng.uniform(0, late_by))
            return serve(*args)

        fake.handle = late
        with PipedriveClient(fake.url, VALID_TOKEN, burst_limit=5) as client:
            client.limiter.window = window
            users_from_threads(client, readers=4, each=each)
            return fake, client.limiter


def test_concurrent_readers_with_jittery_arrival_times_are_never_rate_limited():
    """Pipedrive counts a request when it arrives: arrivals 0-40 ms late, within the limiter's
    first allowance (0.1 s), never draw a 429. (The margin is for the scheduler: with the suite on
    both cores, 0-60 ms drew a 429 in one run of many.)"""
    fake, limiter = four_threads_arriving_late(0.04, window=0.5, each=10, seed=5)
    assert len(fake.requests) == 40
    assert fake.count_429 == 0
    assert limiter.shared_most == 0  # its own late requests never look like another client's


def test_requests_that_reach_pipedrive_later_than_expected_draw_a_few_429s_then_none():
    """Arrivals up to 0.4 s late: each 429 pauses everyone and doubles the allowance, so the
    429s stop after a couple and Cloudflare never blocks."""
    fake, limiter = four_threads_arriving_late(0.4, window=1.0, each=15, seed=7)
    assert limiter.arrival_bound > 0.1
    assert limiter.shared_most == 0
    assert sum(1 for r in fake.requests if r.status == 200) == 60
    assert fake.count_429 <= 4 and fake.count_403 == 0


def requests_out_at_once(burst_limit: int, readers: int, seconds_each: float, each: int = 3) -> tuple[FakePipedrive, int]:
    """`readers` threads share one client; every answer takes `seconds_each`. Returns the stopped
    fake and the most requests that were out at once."""
    out, most, guard = [0], [0], threading.Lock()
    with FakePipedrive(SAMPLE, burst_limit=burst_limit) as fake:
        serve = fake.handle

        def counted(*args):
            with guard:
                out[0] += 1
                most[0] = max(most[0], out[0])
            time.sleep(seconds_each)
            try:
                return serve(*args)
            finally:
                with guard:
                    out[0] -= 1

        fake.handle = counted
        with PipedriveClient(fake.url, VALID_TOKEN, burst_limit=burst_limit) as client:
            users_from_threads(client, readers=readers, each=each)
    return fake, most[0]


def test_as_many_requests_are_out_at_once_as_the_rate_needs_at_the_time_a_request_takes():
    """40 per 2 s is 20 a second; at 0.3 s a request that needs 6 out at once, 8 with the margin:
    four (the start) would reach two thirds of the rate. A busy machine makes requests take longer
    than 0.3 s, and the limiter lets out more, up to a quarter of the limit (10)."""
    fake, most = requests_out_at_once(burst_limit=40, readers=12, seconds_each=0.3)
    assert len(fake.requests) == 36 and fake.count_429 == 0
    assert 8 <= most <= 10


def test_requests_out_at_once_start_at_four_reach_a_quarter_of_the_limit_at_most_and_fall_back_to_four_after_a_429():
    limiter = BurstLimiter(120)
    assert limiter.in_flight_cap() == 4  # nothing measured yet
    limiter.done([math.inf, time.monotonic() - 0.35])
    assert limiter.in_flight_cap() == 27  # ⌈60/s × 0.35 s × 1.25⌉
    limiter.done([math.inf, time.monotonic() - 3.0])
    assert limiter.in_flight_cap() == 30  # a quarter of the limit at most
    limiter.pause(0.0)
    assert limiter.in_flight_cap() == 4  # a 429: the requests out draw theirs too, and Cloudflare counts them
    lite = BurstLimiter(20)
    lite.done([math.inf, time.monotonic() - 0.05])
    assert lite.in_flight_cap() == 4  # fast answers: four are plenty


def test_thirty_readers_at_ultimate_with_slow_and_late_arrivals_draw_no_429():
    """Answers 0.3 s slow and requests reaching Pipedrive up to 0.2 s later than counted (past the
    0.1 s allowance). More requests out at once fill the window, where a late arrival can tip it
    over; the margin kept short of the limit absorbs that. Without it: 429s and a Cloudflare block."""
    import random
    rng = random.Random(1)
    with FakePipedrive(SAMPLE, burst_limit=120, latency=0.3) as fake:
        serve = fake.handle

        def late(*args):
            time.sleep(rng.uniform(0, 0.2))
            return serve(*args)

        fake.handle = late
        with PipedriveClient(fake.url, VALID_TOKEN, burst_limit=120) as client:
            users_from_threads(client, readers=30, each=12)
            assert client.limiter.in_flight_cap() > 4
    assert len(fake.requests) == 360
    assert fake.count_429 == 0 and fake.count_403 == 0


def test_eight_readers_with_fast_answers_have_four_requests_out_at_once():
    """After a 429 the requests already sent draw 429s too, and Cloudflare blocks a client that
    piles them up: no more are out than the rate needs."""
    fake, most = requests_out_at_once(burst_limit=20, readers=8, seconds_each=0.02, each=5)
    assert len(fake.requests) == 40 and most == 4


def eight_readers_beside_another_client(share: float) -> tuple[FakePipedrive, BurstLimiter]:
    """Eight threads share one client (limit 20 per 0.5 s) and send 120 requests, while another
    client on the same API token sends `share` of the limit (the fake's `shared_rate`)."""
    with FakePipedrive(SAMPLE, burst_limit=20, window_seconds=0.5, shared_rate=share * 20 / 0.5) as fake, \
            PipedriveClient(fake.url, VALID_TOKEN, burst_limit=20) as client:
        client.limiter.window = 0.5
        users_from_threads(client, readers=8, each=15)
        return fake, client.limiter


def test_another_client_on_the_same_token_is_left_its_share_of_the_burst_limit():
    """The burst limit is per token. Counting only its own requests, the client drew 23 429s beside
    a client taking a quarter of the limit and 37 beside one taking half; reading what Pipedrive
    counted (`x-ratelimit-remaining`), 1 and 2 (the first windows, before it has seen the other)."""
    for share, most_429 in ((0.25, 3), (0.5, 4)):
        fake, limiter = eight_readers_beside_another_client(share)
        assert sum(1 for r in fake.requests if r.status == 200) == 120
        assert fake.count_429 <= most_429 and fake.count_403 == 0
        assert limiter.shared_most > 0


def test_places_pipedrive_counted_beyond_the_clients_own_requests_are_kept_for_another_client():
    limiter = BurstLimiter(20, window=1.0, max_in_flight=8)
    mine = [limiter.acquire() for _ in range(8)]
    for slot in mine[:5]:
        limiter.done(slot)
    # 5 answered and 3 still out, sent after the one read: Pipedrive may not have counted those 3 yet
    limiter.observe("12", mine[4])  # it counted 8: all of them may be this client's
    assert limiter.shared_most == 0
    limiter.observe("10", mine[4])  # it counted 10: at least 2 are another's, and up to 5
    assert limiter.shared_most == 5
    for slot in mine[5:]:
        limiter.done(slot)
    for _ in range(20 - 5 - 8):  # the window's 20 less the other's 5
        limiter.done(limiter.acquire())
    late = threading.Thread(target=limiter.acquire, daemon=True)
    late.start()
    late.join(timeout=0.3)
    assert late.is_alive()  # the next place is the other client's until the window moves on
    late.join(timeout=2.0)
    assert not late.is_alive()


def test_missing_v2_field_endpoints_fall_back_to_v1_with_the_same_columns(fake, tmp_path):
    from migrate.transform.engine import transform
    from migrate.transform.mapping import load_mappings

    def custom_columns(staging: Staging) -> set[tuple[str, str, str]]:
        transform(staging, load_mappings())
        return {(c["entity"], c["label"], c["type"]) for c in staging.target_columns() if c["key"].startswith("cf:")}

    with client_for(fake) as client:
        normal = Staging(tmp_path / "v2.duckdb")
        extract(normal, client, "v2")
    answer_field_definitions_at_v1_only(fake)
    with client_for(fake) as client:
        fallback = Staging(tmp_path / "v1.duckdb")
        extract(fallback, client, "v1")
    assert any(r.path == "/api/v1/personFields" for r in fake.requests)
    assert custom_columns(fallback) == custom_columns(normal)


def answer_field_definitions_at_v1_only(fake: FakePipedrive) -> None:
    """An account without the v2 Fields API (it came with client 30.7.0): its field definitions are at v1 alone."""
    for name in V1_FIELDS:
        fake.inject(404, count=100, path_contains=f"/api/v2/{name}", body='{"success":false,"error":"Not found","errorCode":404}', content_type="application/json")


def test_an_extract_stopped_while_reading_field_definitions_from_v1_resumes_there(fake, tmp_path):
    """The checkpoint holds the v1 offset the fallback reached: the next run goes on from it at v1, where it sent
    that offset to v2 as a cursor, was answered 404 with pages already staged, and every later run failed so."""
    fake.collections["personFields"] += [
        {"field_code": f"{n:040x}", "field_name": f"Field {n}", "field_type": "varchar", "is_custom_field": True, "options": None}
        for n in range(1, PAGE_LIMIT + 1)
    ]  # two v1 pages
    answer_field_definitions_at_v1_only(fake)
    served, v1_reads = fake.handle, []

    def handle(method, target, headers):
        if target.startswith("/api/v1/personFields"):
            v1_reads.append(target)
            if len(v1_reads) == 2:
                return 401, {"content-type": "application/json"}, b'{"success":false,"error":"unauthorized access","errorCode":401}'
        return served(method, target, headers)

    fake.handle = handle
    staging = Staging(tmp_path / "s.duckdb")
    with client_for(fake) as client, pytest.raises(PipedriveError):
        extract(staging, client, "run1")
    assert staging.checkpoint("personFields").pages == 1
    fake.handle = served
    requests_before = len(fake.requests)
    with client_for(fake) as client:
        extract(staging, client, "run2")
        resumed = [r for r in fake.requests[requests_before:] if r.path.endswith("/personFields")]
        v1 = {r["key"] for page in client.pages(BY_NAME["personFields"].fallback) for r in page.records}
    assert [r.path for r in resumed] == ["/api/v1/personFields"] * len(resumed)
    assert int(resumed[0].query["start"]) > 0
    assert {r["key"] for r in staging.iter_raw("personFields")} == v1


def test_an_account_without_archived_deals_is_reported_not_failed(fake, tmp_path):
    fake.inject(404, count=100, path_contains="/api/v2/deals/archived", body='{"success":false,"error":"Not found"}', content_type="application/json")
    with client_for(fake) as client:
        summary = extract(Staging(tmp_path / "s.duckdb"), client, "run")
    assert "deals_archived" in summary.missing
    assert summary.records["deals"] == len(fake.collections["deals"])


def test_a_429_without_headers_after_an_answer_left_less_budget_than_the_request_costs_is_the_daily_budget(fake):
    """The budget headers can be missing (contract §4): then the budget an earlier answer left tells."""
    fake.inject(429, count=10, path_contains="/api/v2/persons", body='{"success":false,"error":"Too many requests"}', content_type="application/json")
    with client_for(fake) as client:
        client.budget_remaining = 5
        with pytest.raises(BudgetExhaustedError, match="daily API token budget"):
            all_records(client, "persons")
    assert len([r for r in fake.requests if r.path == "/api/v2/persons"]) == 1  # not retried


def test_a_429_whose_budget_header_says_tokens_are_left_is_the_burst_window_waited_out_not_the_daily_budget(fake):
    """Contract §4: the daily budget is spent when `x-daily-ratelimit-token-remaining` says 0; the
    window's header may count another scope (the burst limit is "per token", also "per user")."""
    left = {"x-ratelimit-remaining": "7", "x-ratelimit-reset": "1", "x-daily-ratelimit-token-remaining": "25000"}
    fake.inject(429, count=1, path_contains="/api/v2/persons", headers=left)
    with client_for(fake) as client:
        persons = all_records(client, "persons")
        assert client.rate_limited == 1
    assert len(persons) == len(fake.collections["persons"])


def test_once_the_daily_budget_is_spent_no_reader_sends_another_request(tmp_path):
    """Every request after the budget's 429 draws another (contract §4: no retry helps), and clients
    that keep sending after 429s are blocked by the firewall (§12): the other readers stop too, so
    that only the requests already out (4 at most at first) draw a 429, where 5 to 7 more were sent."""
    with FakePipedrive(SAMPLE, burst_limit=20, latency=0.05, daily_token_budget=60) as fake:
        with client_for(fake, burst_limit=20) as client, Staging(tmp_path / "s.duckdb") as staging:
            with pytest.raises(BudgetExhaustedError):
                extract(staging, client, "run")
            assert client.limiter.max_in_flight == 4
        refused = [r.path for r in fake.requests if r.status == 429]
    assert 1 <= len(refused) <= 4 and fake.count_403 == 0, refused


def test_a_halted_limiter_gives_every_caller_the_error_it_was_halted_with():
    limiter = BurstLimiter(20)
    limiter.done(limiter.acquire())
    spent = BudgetExhaustedError("budget spent")

    limiter.halt(spent)

    for _ in range(2):
        with pytest.raises(BudgetExhaustedError, match="budget spent"):
            limiter.acquire()


def test_an_account_without_the_leads_feature_is_reported_not_failed(fake, tmp_path):
    """Contract §2: 415 is Pipedrive's 'feature not enabled'."""
    body = '{"success":false,"error":"Feature not enabled"}'
    fake.inject(415, count=100, path_contains="/api/v1/leads", body=body, content_type="application/json")
    with client_for(fake) as client:
        summary = extract(Staging(tmp_path / "s.duckdb"), client, "run")
    assert {"leads", "leads_archived"} <= set(summary.missing)
    assert summary.records["persons"] == len(fake.collections["persons"])


def test_http_dates_are_read_as_aware_utc_datetimes_and_unreadable_ones_as_none():
    assert parse_http_date("Sun, 29 Nov 2026 23:40:00 GMT") == datetime(2026, 11, 29, 23, 40, tzinfo=UTC)
    assert parse_http_date("Mon, 30 Nov 2026 01:40:00 +0200") == datetime(2026, 11, 29, 23, 40, tzinfo=UTC)
    assert parse_http_date("Sun, 29 Nov 2026 23:40:00 -0000") == datetime(2026, 11, 29, 23, 40, tzinfo=UTC)  # no zone: UTC
    assert [parse_http_date(v) for v in (None, "", "yesterday")] == [None, None, None]


def test_values_are_read_exactly_whatever_their_size_or_form(fake):
    # orjson reads pages unless they hold what it would read differently from json: then json does.
    odd = {
        "big": 123456789012345678901234567890,  # past 64 bits: orjson would make it a float
        "u64": 18446744073709551615,
        "float": 0.1 + 0.2,
        "tiny": 5e-324,
        "text": "Zoë 日本 🙂 \"quoted\" 0123456789012345678901234",
    }
    fake.collections["persons"] = [dict(fake.collections["persons"][0], id=1, custom_fields=odd),
                                   dict(fake.collections["persons"][0], id=2, custom_fields={"small": 7, "float": 1e16})]
    with client_for(fake) as client:
        persons = {p["id"]: p["custom_fields"] for p in all_records(client, "persons")}
    assert persons == {1: odd, 2: {"small": 7, "float": 1e16}}
    assert type(persons[1]["big"]) is int and type(persons[2]["float"]) is float


@pytest.mark.parametrize("raw, expected", [
    (b'{"success": true, "data": [{"id": 1, "x": NaN}], "additional_data": {}}', "nan"),
    (b'{"success": true, "data": [{"id": 1, "x": 1e400}], "additional_data": {}}', "inf"),
    (b'{"success": true, "data": [{"id": 1, "x": "\\ud800"}], "additional_data": {}}', "'\\ud800'"),
])
def test_a_page_orjson_refuses_is_read_as_json_reads_it(fake, raw, expected):
    fake.inject(200, path_contains="/api/v1/users", body=raw, content_type="application/json")
    with client_for(fake) as client:
        (user,) = all_records(client, "users")
    assert repr(user["x"]) == expected
