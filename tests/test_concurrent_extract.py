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


def test_later_collections_are_read_while_an_earlier_one_is_consumed():
    source = ScriptedSource({"persons": [[1, 2], [3]], "notes": [[10]], "deals": [[20]]})
    reader = ConcurrentSource(source, [(PERSONS, None), (NOTES, None), (DEALS, None)], workers=3)
    try:
        first = next(iter(reader.pages(PERSONS)))
        assert first.records == [{"id": 1}, {"id": 2}]
        assert source.started["deals"].wait(5)  # fetched before persons is consumed
        rest = [p.records for p in reader.pages(PERSONS)]  # the rest of persons' queue, in order
        assert rest == [[{"id": 3}]]
        assert [p.records for p in reader.pages(NOTES)] == [[{"id": 10}]]
        assert [p.records for p in reader.pages(DEALS)] == [[{"id": 20}]]
    finally:
        reader.close()


def test_an_error_reaches_the_consumer_of_that_collection_and_close_does_not_hang():
    source = ScriptedSource({"persons": [[1]], "notes": [[10]], "deals": [[20] * 1]}, fail="notes")
    reader = ConcurrentSource(source, [(PERSONS, None), (NOTES, None), (DEALS, None)], workers=2, depth=1)
    try:
        assert [p.records for p in reader.pages(PERSONS)] == [[{"id": 1}]]
        with pytest.raises(PipedriveError, match="404"):
            list(reader.pages(NOTES))
    finally:
        reader.close()


def test_unplanned_reads_go_straight_to_the_source():
    source = ScriptedSource({"persons": [[1]], "notes": [[10]], "deals": [[30]]})
    reader = ConcurrentSource(source, [(PERSONS, None)], workers=1)
    try:
        assert [p.records for p in reader.pages(DEALS, extra={"deal_ids": "1"})] == [[{"id": 30}]]
        assert [p.records for p in reader.pages(PERSONS)] == [[{"id": 1}]]
    finally:
        reader.close()
