"""Several collections are read at once while staging still sees them one by one, in order."""

from __future__ import annotations

import threading

import pytest

from migrate import stopping
from migrate.errors import Interrupted, PipedriveError
from migrate.pipedrive.client import Page
from migrate.pipedrive.collections import BY_NAME
from migrate.pipedrive.extract import (
    ConcurrentSource,
    ExtractSummary,
    Lane,
    _ConcurrentRun,
    _Stager,
)
from migrate.staging.store import Checkpoint, Staging

PERSONS, NOTES, DEALS = BY_NAME["persons"], BY_NAME["notes"], BY_NAME["deals"]


class ScriptedSource:
    """Pages on demand; records which collections were started."""

    def __init__(self, pages: dict[str, list[list[int]]], fail: str | None = None):
        self.pages_of = pages
        self.fail = fail
        self.started: dict[str, threading.Event] = {name: threading.Event() for name in pages}

    def pages(self, collection, start=None, extra=None):
        self.started[collection.name].set()
        if collection.name == self.fail:
            raise PipedriveError("Pipedrive has no endpoint (HTTP 404)", status=404)
        batches = self.pages_of[collection.name]
        for n, batch in enumerate(batches):
            yield Page([{"id": i} for i in batch], None if n == len(batches) - 1 else str(n + 1))


def pages_by_collection(arrivals) -> dict[str, list]:
    seen: dict[str, list] = {}
    for lane, kind, item in arrivals:
        seen.setdefault(lane.collection.name, []).append(item[0].records if kind == "page" else kind)
    return seen


def test_every_collection_is_read_at_once_and_each_ones_pages_arrive_in_order():
    source = ScriptedSource({"persons": [[1, 2], [3], [4]], "notes": [[10], [11]], "deals": [[20]]})
    reader = ConcurrentSource(source, [Lane(PERSONS, None), Lane(NOTES, None), Lane(DEALS, None)], workers=3)
    try:
        assert pages_by_collection(reader.arrivals()) == {
            "persons": [[{"id": 1}, {"id": 2}], [{"id": 3}], [{"id": 4}], "end"],
            "notes": [[{"id": 10}], [{"id": 11}], "end"],
            "deals": [[{"id": 20}], "end"],
        }
    finally:
        reader.close()


def test_a_slow_collection_does_not_hold_back_the_others():
    """persons' second page comes only once deals' page was handed over: with collections
    consumed one after another, this would wait forever."""
    deals_seen = threading.Event()

    class SlowPersons(ScriptedSource):
        def pages(self, collection, start=None, extra=None):
            for n, page in enumerate(super().pages(collection, start, extra)):
                if collection.name == "persons" and n == 1:
                    assert deals_seen.wait(5), "persons waited for deals in vain"
                yield page

    source = SlowPersons({"persons": [[1], [2]], "notes": [[10]], "deals": [[20]]})
    reader = ConcurrentSource(source, [Lane(PERSONS, None), Lane(NOTES, None), Lane(DEALS, None)], workers=3)
    order = []
    try:
        for lane, kind, _ in reader.arrivals():
            order.append((lane.collection.name, kind))
            if lane.collection.name == "deals":
                deals_seen.set()
    finally:
        reader.close()
    assert order.index(("deals", "page")) < order.index(("persons", "end"))
    assert order.count(("persons", "page")) == 2


def test_an_error_arrives_for_its_collection_and_close_does_not_hang():
    source = ScriptedSource({"persons": [[1]], "notes": [[10]], "deals": [[20]]}, fail="notes")
    reader = ConcurrentSource(source, [Lane(PERSONS, None), Lane(NOTES, None), Lane(DEALS, None)], workers=2, depth=1)
    try:
        arrived = {(lane.collection.name, kind): item for lane, kind, item in reader.arrivals()}
    finally:
        reader.close()
    assert isinstance(arrived[("notes", "error")], PipedriveError) and arrived[("notes", "error")].status == 404
    assert ("persons", "end") in arrived and ("deals", "end") in arrived


def test_close_stops_readers_blocked_on_a_full_queue():
    source = ScriptedSource({"persons": [[i] for i in range(50)], "notes": [[10]], "deals": [[20]]})
    reader = ConcurrentSource(source, [Lane(PERSONS, None), Lane(NOTES, None), Lane(DEALS, None)], workers=3, depth=1)
    next(reader.arrivals())
    done = threading.Thread(target=reader.close)
    done.start()
    done.join(5)
    assert not done.is_alive()


def test_after_a_hard_error_the_pages_in_flight_are_handed_over_and_no_new_request_starts():
    """Pipedrive has charged a request that is out: its page is kept (staged by the caller), but
    no reader asks for another page once the run winds down."""
    answer = threading.Event()
    asked: list[str] = []

    class InFlight(ScriptedSource):
        def pages(self, collection, start=None, extra=None):
            for n, page in enumerate(super().pages(collection, start, extra)):
                asked.append(f"{collection.name} {n}")
                if collection.name == "deals":
                    assert answer.wait(5)  # the answer comes only after the error was handed over
                yield page

    source = InFlight({"persons": [[1]], "notes": [[10]], "deals": [[20], [21]]}, fail="notes")
    reader = ConcurrentSource(source, [Lane(PERSONS, None), Lane(NOTES, None), Lane(DEALS, None)], workers=3)
    try:
        for _lane, kind, _ in reader.arrivals():
            if kind == "error":
                break
        threading.Timer(0.2, answer.set).start()  # answered while the reader winds down
        kept = [(lane.collection.name, item[0].records) for lane, kind, item in reader.leftovers() if kind == "page"]
    finally:
        reader.close()
    assert ("deals", [{"id": 20}]) in kept
    assert "deals 1" not in asked  # deals' second page was never asked for


# -- big collections from both ends, against the fake Pipedrive ---------------------------------


@pytest.fixture()
def big_persons(pipedrive):
    persons = pipedrive.collections["persons"]
    pipedrive.collections["persons"] = [dict(p, id=i) for i, p in enumerate(persons * 50, start=1)]  # 6,000: 12 pages
    return pipedrive


def extract_persons(pipedrive, tmp_path, name="s.duckdb"):
    from migrate.pipedrive.client import PipedriveClient
    from migrate.pipedrive.extract import extract
    from migrate.staging.store import Staging
    from tests.fakes.pipedrive import VALID_TOKEN

    with Staging(tmp_path / name) as staging, PipedriveClient(pipedrive.url, VALID_TOKEN, burst_limit=1000) as client:
        extract(staging, client, "run")
        return sorted(r["id"] for r in staging.iter_raw("persons"))


def test_a_big_collection_is_read_from_both_ends_with_at_most_a_page_per_end_read_twice(big_persons, tmp_path):
    ids = extract_persons(big_persons, tmp_path)
    assert ids == list(range(1, 6001))
    reads = [r for r in big_persons.requests if r.path == "/api/v2/persons" and r.status == 200]
    assert any(r.query.get("sort_direction") == "desc" for r in reads)
    assert len(reads) <= 12 + 2  # each end may have a request out when the two meet


def test_a_collection_of_four_pages_is_read_from_one_end_at_four_requests(pipedrive, tmp_path):
    persons = pipedrive.collections["persons"]
    pipedrive.collections["persons"] = [dict(p, id=i) for i, p in enumerate(persons * 16, start=1)]  # 1,920: 4 pages
    assert extract_persons(pipedrive, tmp_path) == list(range(1, 1921))
    reads = [r for r in pipedrive.requests if r.path == "/api/v2/persons"]
    assert len(reads) == 4 and not any(r.query.get("sort_direction") == "desc" for r in reads)


def test_a_one_page_collection_costs_one_request(pipedrive, tmp_path):
    extract_persons(pipedrive, tmp_path)
    assert len([r for r in pipedrive.requests if r.path == "/api/v2/products"]) == 1


@pytest.mark.parametrize("failing_read", [3, 5, 6, 9])
def test_an_extract_interrupted_at_any_page_of_either_end_resumes_to_every_record(big_persons, tmp_path, failing_read):
    """The `failing_read`-th persons request is refused (401: the run stops there); the next run
    resumes both ends from their checkpoints and stages every record. The descending read opens
    after the fourth ascending page: read 3 fails before it, 5 and 6 as it opens, 9 on either end."""
    served, count = big_persons.handle, {"n": 0}

    def handle(method, target, headers):
        if target.startswith("/api/v2/persons"):
            count["n"] += 1
            if count["n"] == failing_read:
                return 401, {"content-type": "application/json"}, b'{"success":false,"error":"unauthorized access","errorCode":401}'
        return served(method, target, headers)

    big_persons.handle = handle
    with pytest.raises(PipedriveError):
        extract_persons(big_persons, tmp_path)
    big_persons.handle = served
    assert extract_persons(big_persons, tmp_path) == list(range(1, 6001))


class QueuedArrivals:
    """A reader whose pages are all waiting at once, as when staging is slower than the reads."""

    def __init__(self, arrivals):
        self.left = list(arrivals)

    def arrivals(self):
        while self.left:
            yield self.left.pop(0)

    def waiting(self):
        return bool(self.left)


def _consume(staging, arrivals, *, stop_after=None) -> tuple[list[int], ExtractSummary]:
    """Stage the arrivals as an extract does; the sizes of the commits, and the summary. With
    `stop_after`, a stop is requested once that many pages are committed."""
    groups: list[int] = []
    write_pages = staging.write_pages

    def counted(pages, run_id):
        write_pages(pages, run_id)
        groups.append(len(pages))
        if stop_after is not None and sum(groups) >= stop_after:
            stopping.request("SIGTERM", 15)

    staging.write_pages = counted
    stager = _Stager(staging, "run", ExtractSummary(), None)
    try:
        _ConcurrentRun(stager, client=None, totals={"persons": (0, 0)}).consume(QueuedArrivals(arrivals))
    finally:
        stopping.reset()
    return groups, stager.summary


def _pages(lane, count, *, last_ends=True):
    return [(lane, "page", (Page([{"id": n}], None if last_ends and n == count else str(n)), False)) for n in range(1, count + 1)]


def test_pages_waiting_to_be_staged_are_committed_together_at_most_eight_at_a_time(tmp_path):
    lane = Lane(PERSONS, None)
    with Staging(tmp_path / "s.duckdb") as staging:
        groups, summary = _consume(staging, [*_pages(lane, 10), (lane, "end", None)])
        assert groups == [8, 2]
        assert summary.pages == 10
        assert staging.count_raw("persons")[0] == 10
        assert staging.checkpoint("persons") == Checkpoint("persons", None, 10, 10, True)


def test_a_stop_requested_while_pages_wait_comes_after_they_are_committed(tmp_path):
    lane = Lane(PERSONS, None)
    with Staging(tmp_path / "s.duckdb") as staging:
        with pytest.raises(Interrupted):
            _consume(staging, _pages(lane, 12, last_ends=False), stop_after=1)
        assert staging.count_raw("persons")[0] == 8  # the first commit's eight pages, and their checkpoint
        assert staging.checkpoint("persons") == Checkpoint("persons", "8", 8, 8, False)
