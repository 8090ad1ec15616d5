"""Reference data for the transform, in memory that does not grow with the account.

A million-record account has hundreds of thousands of ids and names to look up, and notes and
deal products for a good share of its records. Held as dicts of Python objects that is more
memory than the whole run should take, so:

* `IdSet` keeps numeric ids as bits (a 10-million id range is 1.25 MB) and only the others
  (lead UUIDs) as strings;
* `NameTable` keeps names in one UTF-8 buffer with an offset array, found by binary search;
* `LookupLog` notes which records each record looked up, for the incremental transform;
* `SortedGroups` reads rows grouped by the record they belong to (notes, deal products) from a
  stream sorted the way the records are read, holding one record's group at a time.
"""

from __future__ import annotations

import bisect
import json
from array import array
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from migrate.staging.keys import order_key

_MAX_BITMAP_ID = 1 << 31  # ids beyond this (none in Pipedrive) go into the string set

T = TypeVar("T")


class IdSet:
    """A set of record ids (strings), numeric ones stored as bits."""

    def __init__(self, ids: Iterable[str] = ()):
        self._bits = bytearray()
        self._others: set[str] = set()
        for identity in ids:
            self.add(identity)

    def add(self, identity: str) -> None:
        number = _number(identity)
        if number is None:
            self._others.add(identity)
            return
        byte = number >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits) // 2)))
        self._bits[byte] |= 1 << (number & 7)

    def update(self, ids: Iterable[str]) -> None:
        for identity in ids:
            self.add(identity)

    def __contains__(self, identity: object) -> bool:
        if not isinstance(identity, str):
            return False
        number = _number(identity)
        if number is None:
            return identity in self._others
        byte = number >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (number & 7)))


def _number(identity: str) -> int | None:
    """The id as a bit position, when it is a canonical non-negative integer ("12", not "012")."""
    if identity.isdigit() and (identity == "0" or identity[0] != "0") and len(identity) < 11:
        number = int(identity)
        return number if number < _MAX_BITMAP_ID else None
    return None


class NameTable:
    """id → name for many records: the names as one UTF-8 buffer with offsets, by sorted numeric id.

    UTF-8, not one joined str: a single name outside Latin-1 would make a str take two or four
    bytes for every character of every name. Pairs given in ascending numeric id order (as the
    transform reads them) are stored as they come; others are sorted once at the end."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self._others: dict[str, str] = {}
        self._ids = array("q")
        self._offsets = array("q", [0])
        self._text = bytearray()
        ascending = True
        for identity, name in pairs:
            number = _number(identity)
            if number is None:
                self._others[identity] = name
                continue
            ascending = ascending and (not self._ids or self._ids[-1] <= number)
            self._ids.append(number)
            self._text += name.encode()
            self._offsets.append(len(self._text))
        if not ascending:
            self._sort()

    def _sort(self) -> None:
        order = sorted(range(len(self._ids)), key=self._ids.__getitem__)
        ids, offsets, text = array("q"), array("q", [0]), bytearray()
        for at in order:
            ids.append(self._ids[at])
            text += self._text[self._offsets[at] : self._offsets[at + 1]]
            offsets.append(len(text))
        self._ids, self._offsets, self._text = ids, offsets, text

    def get(self, identity: str, default: str | None = None) -> str | None:
        number = _number(identity)
        if number is None:
            return self._others.get(identity, default)
        at = bisect.bisect_left(self._ids, number)
        if at == len(self._ids) or self._ids[at] != number:
            return default
        return self._text[self._offsets[at] : self._offsets[at + 1]].decode()

    def __len__(self) -> int:
        return len(self._ids) + len(self._others)


class SortedGroups(Generic[T]):
    """Rows of a stream sorted by `order_key(group id)`, handed out group by group to a caller
    that asks for ascending group ids (the records, read in that same order). Groups nobody asks
    for (those of deleted records) are skipped; asking out of order is a bug and raises."""

    def __init__(self, rows: Iterator[tuple[str, T]]):
        self._rows = rows
        self._pending: tuple[str, T] | None = next(rows, None)
        self._current: str | None = None
        self._current_key: tuple[int, int, int, str] | None = None
        self._group: list[T] = []

    def get(self, group_id: str, default: Any = None) -> list[T]:
        if group_id == self._current:
            return self._group
        key = order_key(group_id)
        if self._current_key is not None and key < self._current_key:
            raise RuntimeError(f"internal error: group {group_id!r} asked for after {self._current!r}")
        self._current, self._current_key, self._group = group_id, key, []
        while self._pending is not None and self._pending[0] != group_id and order_key(self._pending[0]) < key:
            self._pending = next(self._rows, None)
        while self._pending is not None and self._pending[0] == group_id:
            self._group.append(self._pending[1])
            self._pending = next(self._rows, None)
        return self._group


class LookupLog:
    """The records looked up while one record is transformed, whether they exist or not: a
    record that links to a missing organization is made again when that organization arrives."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def watch(self, table: Any, entity: str) -> Watched:
        return Watched(table, entity, self.seen)

    def take(self, entity: str, source_id: str) -> str | None:
        """The records looked up since the last take (but the record itself), as JSON [[entity, id], ...]."""
        if not self.seen:
            return None
        refs = set(self.seen)
        refs.discard((entity, source_id))
        self.seen.clear()
        return json.dumps(sorted(refs)) if refs else None


class Watched:
    """An id set or name table (`transform.lookups`) whose lookups go into a `LookupLog`."""

    __slots__ = ("_entity", "_seen", "_table")

    def __init__(self, table: Any, entity: str, seen: list[tuple[str, str]]):
        self._table, self._entity, self._seen = table, entity, seen

    def __contains__(self, identity: object) -> bool:
        if isinstance(identity, str):
            self._seen.append((self._entity, identity))
        return identity in self._table

    def get(self, identity: str, default: Any = None) -> Any:
        self._seen.append((self._entity, identity))
        return self._table.get(identity, default)
