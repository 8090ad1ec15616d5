"""The Pipedrive client replayed from vcrpy cassettes (recorded once against the fake API,
replayed here without any server): cursor and offset paging and a burst 429, byte for byte."""

from __future__ import annotations

from pathlib import Path

import vcr

from migrate.pipedrive.client import PipedriveClient
from migrate.pipedrive.collections import BY_NAME

CASSETTES = Path(__file__).parent / "cassettes"
TOKEN = "3f2a9c5e7b1d4f6a8c0e2b4d6f8a1c3e5b7d9f0a"
RECORDER = vcr.VCR(
    cassette_library_dir=str(CASSETTES),
    record_mode="once",
    match_on=["method", "path", "query"],
    filter_headers=[("x-api-token", "REDACTED")],
)
BASE = "http://127.0.0.1:9"  # nothing listens here: every answer comes from the cassette


def _record_if_missing(name: str) -> None:
    """Record the cassette against the fake Pipedrive when it does not exist yet."""
    if (CASSETTES / name).exists():
        return
    from tests.fakes.pipedrive import FakePipedrive

    collections = {
        "persons": [{"id": i, "name": f"Person {i}", "custom_fields": {}} for i in range(1, 1203)],
        "notes": [{"id": i, "content": f"<p>note {i}</p>", "active_flag": True} for i in range(1, 702)],
    }
    fake = FakePipedrive(collections=collections, burst_limit=1000)
    with fake:
        fake.inject(429, count=1, path_contains="/api/v1/notes", headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"})
        with RECORDER.use_cassette(name), PipedriveClient(fake.url, TOKEN) as client:
            _read(client)


def _read(client: PipedriveClient) -> tuple[list[dict], list[dict]]:
    persons = [r for page in client.pages(BY_NAME["persons"]) for r in page.records]
    notes = [r for page in client.pages(BY_NAME["notes"]) for r in page.records]
    return persons, notes


def test_paging_and_429_replayed_from_cassette():
    _record_if_missing("pipedrive_paging.yaml")
    with RECORDER.use_cassette("pipedrive_paging.yaml", allow_playback_repeats=False) as cassette:
        with PipedriveClient(BASE, TOKEN) as client:
            persons, notes = _read(client)
            assert client.rate_limited == 1
        assert cassette.all_played
    assert [p["id"] for p in persons] == list(range(1, 1203))
    assert [n["id"] for n in notes] == list(range(1, 702))
    assert all("x-api-token" not in str(r.uri) and "api_token" not in r.uri for r in cassette.requests)
