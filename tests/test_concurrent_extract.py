"""Several collections are read at once while staging still sees them one by one, in order."""

from __future__ import annotations

import threading

import pytest

from migrate.errors import PipedriveError
from migrate.pipedrive.client import Page
from migrate.pipedrive.collections import BY_NAME
from migrate.pipedrive.extract import ConcurrentSource

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
    for collection, kind, item in arrivals:
        seen.setdefault(collection.name, []).append(item.records if kind == "page" else kind)
    return seen


def test_every_collection_is_read_at_once_and_each_ones_pages_arrive_in_order():
    source = ScriptedSource({"persons": [[1, 2], [3], [4]], "notes": [[10], [11]], "deals": [[20]]})
    reader = ConcurrentSource(source, [(PERSONS, None), (NOTES, None), (DEALS, None)], workers=3)
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
    reader = ConcurrentSource(source, [(PERSONS, None), (NOTES, None), (DEALS, None)], workers=3)
    order = []
    try:
        for collection, kind, _ in reader.arrivals():
            order.append((collection.name, kind))
            if collection.name == "deals":
                deals_seen.set()
    finally:
        reader.close()
    assert order.index(("deals", "page")) < order.index(("persons", "end"))
    assert order.count(("persons", "page")) == 2


def test_an_error_arrives_for_its_collection_and_close_does_not_hang():
    source = ScriptedSource({"persons": [[1]], "notes": [[10]], "deals": [[20]]}, fail="notes")
    reader = ConcurrentSource(source, [(PERSONS, None), (NOTES, None), (DEALS, None)], workers=2, depth=1)
    try:
        arrived = {(c.name, kind): item for c, kind, item in reader.arrivals()}
    finally:
        reader.close()
    assert isinstance(arrived[("notes", "error")], PipedriveError) and arrived[("notes", "error")].status == 404
    assert ("persons", "end") in arrived and ("deals", "end") in arrived


def test_close_stops_readers_blocked_on_a_full_queue():
    source = ScriptedSource({"persons": [[i] for i in range(50)], "notes": [[10]], "deals": [[20]]})
    reader = ConcurrentSource(source, [(PERSONS, None), (NOTES, None), (DEALS, None)], workers=3, depth=1)
    next(reader.arrivals())
    done = threading.Thread(target=reader.close)
    done.start()
    done.join(5)
    assert not done.is_alive()
