"""The per-record part of the transform: a staged record, with its notes and deal product rows,
becomes its target payload, the issues it raises and the records it looked up.

It reads nothing from staging: the engine streams batches of records in (`Batch`) and writes what
comes out (`Made`). So batches can be made in worker processes as well as in the engine's own,
with byte for byte the same output (`MakerPool`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from migrate import jsontext
from migrate.errors import MigrateError
from migrate.staging.keys import REPLACED_CHARACTERS, is_deleted_record
from migrate.transform import entities, notes
from migrate.transform import values as v
from migrate.transform.columns import PIPEDRIVE_ID, ColumnRegistry, ColumnSpec
from migrate.transform.encoders import (
    ENCODERS,
    KEYED,
    Encoder,
    Field,
    Lookups,
    RecordOut,
    as_entered,
    content,
    json_kind,
    keep_as_entered,
)
from migrate.transform.lookups import LookupLog
from migrate.transform.mapping import ColumnDecl

if TYPE_CHECKING:
    from migrate.transform.incremental import Sources

T = TypeVar("T")
R = TypeVar("R")
V1_ENCODED = frozenset({"leads", "leads_archived"})
# The main thread holds the GIL nearly all the time; the pool's own threads, which hand batches to
# the workers and take results back, wait up to a switch interval for it each time, and the workers
# idle meanwhile. With 0.5 ms rather than Python's 5, a 1M state file's transform took 77–83 s, not 88–94.
SWITCH_INTERVAL = 0.0005

CHARACTER_REPLACED = "half of a character cut in two (a lone UTF-16 surrogate), which no UTF-8 text holds; replaced by U+FFFD"
NUL_REMOVED = "a NUL character (U+0000), which Customermates' database cannot store in text; removed"
CONTROLS_REMOVED = "a NUL or other control character, which the conversion of notes to Markdown takes out; removed"
# Texts of a record that join its notes: (field, title), by collection. They are dated like the record.
OWN_TEXTS = {
    "activities": (("note", "Activity note"), ("public_description", "Public description")),
    "products": (("description", "Description"),),
    "persons": (("notes", "Contact notes"),),
}
Issue = tuple[str, str, str, str, str]  # entity, source id, field, rule, detail
TargetRow = tuple[str, str, str, str, str | None]  # entity, source id, payload text, payload hash, lookups


# One encoder for every payload (`json.dumps` with options builds one a call). A payload is a tree made
# for its record, so it is not checked for cycles.
_PAYLOAD_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, check_circular=False)


def payload_text(payload: dict[str, Any]) -> str:
    """The payload as stored (and hashed): sorted keys, so equal payloads are equal text."""
    return _PAYLOAD_JSON.encode(payload)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def payload_hash(payload: dict[str, Any]) -> str:
    return text_hash(payload_text(payload))


NUL_ESCAPE = "\\u0000"  # how a JSON text writes U+0000


def without_nul(value: Any, path: str, removed: list[str]) -> Any:
    """`value` with the NUL characters taken out of its strings (keys too); `removed` gets their
    dotted paths (list items by index). Postgres refuses U+0000 in text, and Customermates answers
    a batch holding one with a 500 that names no record."""
    if isinstance(value, str):
        if "\x00" in value:
            removed.append(path or "(the value)")
            return value.replace("\x00", "")
        return value
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            items[without_nul(key, where, removed)] = without_nul(item, where, removed)
        return items
    if isinstance(value, list):
        return [without_nul(item, f"{path}.{n}" if path else str(n), removed) for n, item in enumerate(value)]
    return value


def source_id(collection: str, record: dict[str, Any]) -> str:
    return f"lead:{record['id']}" if collection in V1_ENCODED else str(record["id"])


def md5(text: str) -> str:
    """As DuckDB's md5() of the same text (a text it cannot hold just misses the kept conversions)."""
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def utc_or_none(value: Any) -> str | None:
    try:
        return v.to_utc_datetime(value)
    except (ValueError, TypeError):
        return None


@dataclass
class Batch:
    """Records of one collection to make, in the order they are read."""

    collection: str
    records: list[tuple[str, list[notes.NoteEntry], list[str]]]  # record JSON, its notes, its deal product rows (JSON)
    markdown: dict[str, str]  # kept conversions of the records' own texts (`OWN_TEXTS`), by md5 of the text


@dataclass
class Made:
    """What a batch gave: target rows (none for a record deleted in Pipedrive), issues, and the
    columns it declared, used or gave options (to merge into the engine's registry)."""

    made: int = 0  # records read, those deleted in Pipedrive included
    rows: list[TargetRow] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    columns: list[ColumnSpec] = field(default_factory=list)


@dataclass(frozen=True)
class DeclaredColumn:
    """A declared column as the record loop reads it: its encoder and source paths resolved once."""

    encoder: Encoder
    path: tuple[str, ...]
    currency_path: tuple[str, ...] | None
    spec: ColumnSpec
    field: Field
    also: tuple[tuple[str, ...], ...] = ()  # other names of the field (`ColumnDecl.also_from`)

    @classmethod
    def of(cls, decl: ColumnDecl, spec: ColumnSpec, fld: Field) -> DeclaredColumn:
        currency = tuple(decl.currency_from.split(".")) if decl.currency_from else None
        also = tuple(tuple(name.split(".")) for name in decl.also_from)
        return cls(ENCODERS[decl.encode], tuple(decl.source_field.split(".")), currency, spec, fld, also)


@dataclass(frozen=True)
class CustomColumn:
    """A Pipedrive custom field's column: where its value is (`code`) and how it is encoded."""

    spec: ColumnSpec
    field: Field
    code: str
    encode: str


@dataclass
class RecordMaker:
    """Makes batches of records. The engine builds one; each worker process gets a copy, and so do
    the batches the main process makes beside the workers (their column changes merge in order)."""

    sources: Sources
    registry: ColumnRegistry
    lookups: Lookups
    known: dict[str, Any]  # entity → the ids that exist (watched by `log`)
    log: LookupLog
    declared: dict[str, list[DeclaredColumn]]  # by collection
    custom: dict[str, list[CustomColumn]]  # by collection

    def __post_init__(self) -> None:
        self.custom_codes = {collection: {c.code for c in columns} for collection, columns in self.custom.items()}

    def make(self, batch: Batch) -> Made:
        mark = self.registry.mark()
        made = Made(made=len(batch.records))
        collection = batch.collection
        entity = self.sources[collection][0]
        for text, note_entries, product_rows in batch.records:
            record = jsontext.loads(text)
            sid = source_id(collection, record)
            if is_deleted_record(record):
                made.issues.append((entity, sid, "*", "deleted_in_pipedrive", f"{collection} {record.get('id')} is deleted in Pipedrive; not written (one migrated before stays: `sync --deletes` marks or removes it)"))
                continue
            if NUL_ESCAPE in text:  # JSON writes U+0000 only escaped: the text tells whether to look
                record = without_nul(record, "", removed := [])
                made.issues += [(entity, sid, path, "character_replaced", NUL_REMOVED) for path in removed]
            rows = []
            for row_text in product_rows:
                row = jsontext.loads(row_text)
                if NUL_ESCAPE in row_text:
                    row = without_nul(row, f"products.{row.get('id')}", removed := [])
                    made.issues += [(entity, sid, path, "character_replaced", NUL_REMOVED) for path in removed]
                rows.append(row)
            self.lookups.deal_products = {str(record.get("id")): rows} if rows else {}
            payload = payload_text(self._payload(collection, record, sid, note_entries, batch.markdown, made.issues))
            made.rows.append((entity, sid, payload, text_hash(payload), self.log.take(entity, sid)))
        made.columns = self.registry.changes_since(mark)
        return made

    def _payload(
        self, collection: str, record: dict[str, Any], sid: str, note_entries: list[notes.NoteEntry],
        own_markdown: dict[str, str], issues: list[Issue],
    ) -> dict[str, Any]:
        entity = self.sources[collection][0]
        core = self._core(collection, record)
        out = RecordOut(self.registry)
        for key, value in core.values.items():
            out.put(self.registry.get(entity, key), value)
        out.put(self.registry.get(entity, PIPEDRIVE_ID), sid)
        for column in self.declared[collection]:
            value = _get(record, column.path)
            if column.also:
                value = _one_value([value, *(_get(record, path) for path in column.also)])
            if value is None and len(column.path) > 1 and not isinstance(parent := record.get(column.path[0]), dict) and content(parent):
                keep_as_entered(parent, column.spec, Field(column.path[0], column.field.options), out, "it is not an object")
                continue
            if column.currency_path:
                value = None if value in (None, "") else {"value": value, "currency": _get(record, column.currency_path)}
            self._encode(column.encoder, value, record, column.spec, column.field, out)
        custom_values = record if collection in V1_ENCODED else record.get("custom_fields")
        if custom_values is None:
            custom_values = {}
        elif not isinstance(custom_values, dict):
            out.issue("custom_fields", "custom_fields_unreadable", f"custom_fields is {as_entered(custom_values)!r}, not an object: no custom field value could be read")
            custom_values = {}
        for custom in self.custom[collection]:
            value = _v1_value(custom_values, custom.code) if collection in V1_ENCODED else custom_values.get(custom.code)
            if value is None or value == "" or value == []:
                continue
            self._encode(ENCODERS[custom.encode], value, record, custom.spec, custom.field, out)
        for code, value in _unknown_custom_values(custom_values, self.custom_codes[collection], collection in V1_ENCODED).items():
            out.issue(code, "custom_field_unknown", f"{as_entered(value)!r}: a value of a custom field the field list read from Pipedrive does not name (made since?); not migrated, until a sync or run reads the field list again")
        issues += [(entity, sid, field_name, rule, detail) for field_name, rule, detail in core.issues + out.issues]
        issues += [(entity, sid, field_name, "character_replaced", CHARACTER_REPLACED) for field_name in record.get(REPLACED_CHARACTERS) or ()]
        return {
            "fields": core.fields,
            "links": core.links,
            "services": core.services,
            "users": core.users,
            "values": dict(sorted(out.values.items())),
            "notes": self._notes(collection, record, entity, sid, note_entries, own_markdown, issues),
        }

    def _encode(self, encoder: Encoder, value: Any, record: dict[str, Any], spec: ColumnSpec, fld: Field, out: RecordOut) -> None:
        """Run one encoder. A value it cannot read (text where a number belongs, say) is kept as
        text in '<column> (as entered)' and reported with its record and field: never a traceback.
        So is a value of a shape it passes over, writing and reporting nothing (an object where text
        belongs, a list of lists): never dropped without a word."""
        before = (out.written, len(out.issues))
        try:
            encoder(value, record, spec, fld, self.lookups, out)
        except (ValueError, TypeError, AttributeError) as exc:
            keep_as_entered(value, spec, fld, out, str(exc))
            return
        if (out.written, len(out.issues)) == before and encoder not in KEYED and content(value):
            keep_as_entered(value, spec, fld, out, f"{json_kind(value)} this column cannot hold")

    def _core(self, collection: str, record: dict[str, Any]) -> entities.Core:
        known, lookups = self.known, self.lookups
        if collection == "persons":
            return entities.contact_core(record, known)
        if collection == "organizations":
            return entities.organization_core(record, known)
        if collection == "products":
            return entities.service_core(record, known)
        if collection in ("deals", "deals_archived"):
            return entities.deal_core(record, known, lookups.deal_products)
        if collection in V1_ENCODED:
            return entities.lead_core(record, known)
        if collection == "activities":
            return entities.task_core(record, known, lookups.activity_types)
        raise ValueError(f"mappings name the collection {collection!r}, which has no entity builder")

    def _notes(
        self, collection: str, record: dict[str, Any], entity: str, sid: str, entries: list[notes.NoteEntry],
        own_markdown: dict[str, str], issues: list[Issue],
    ) -> str | None:
        entries = list(entries)
        # the record's own texts are dated like the record, so they sort before later notes
        created = utc_or_none(record.get("add_time"))
        for key, title in OWN_TEXTS.get(collection, ()):
            if (html := v.as_plain_text(record.get(key))).strip():
                entries.append(notes.NoteEntry(author=None, created=created, html=html, title=title, markdown=own_markdown.get(md5(html)), source=title))
                if removed := notes.removed_characters(html):  # a NUL is out already, reported by its path (`without_nul`)
                    issues.append((entity, sid, key, "character_replaced", f"{title} ({removed}): {CONTROLS_REMOVED}"))
        if not entries:
            return None
        issues += [(entity, sid, "notes", "character_replaced", f"{entry.name()}, {entry.replaced}: {CHARACTER_REPLACED}") for entry in entries if entry.replaced]
        issues += [(entity, sid, "notes", "character_replaced", f"{entry.name()}, {entry.removed}: {CONTROLS_REMOVED}") for entry in entries if entry.removed]
        composed = notes.compose_notes(entries)
        if detail := notes_truncated_detail(composed):
            issues.append((entity, sid, "notes", "notes_truncated", detail))
        return composed.text or None


def notes_truncated_detail(composed: notes.Composed) -> str | None:
    """The `notes_truncated` issue's detail, naming each note cut and what it lost; None if nothing was cut."""
    if composed.end_cut:
        return f"notes exceed {notes.NOTES_LIMIT:,} characters even with every note's content left out; the end was cut (marked in the text)"
    if not composed.cut:
        return None
    cut = "; ".join(f"{entry.name()} ({dropped:,} characters not migrated)" for entry, dropped in composed.cut)
    return f"notes exceed {notes.NOTES_LIMIT:,} characters; the longest notes were cut, each marked in the text: {cut}"


class MakerPool:
    """Worker processes, each with a copy of one `RecordMaker`, and this process beside them,
    making batches in order: a batch goes to the workers while they have fewer than three each
    (`queued`), else it is made here (by a copy too, so that the column changes of every batch
    merge in the order of the batches). At most `ahead` batches are out at once.

    Workers are spawned as the pool is entered (a fork would copy DuckDB's threads mid-work), and
    ignore Ctrl-C and SIGTERM: the main process stops gracefully on them, and then stops its workers.
    They read the maker from a file: passed to a spawned process, it would be written down a pipe
    that the new process reads only once it has imported its modules, the main process waiting
    meanwhile (half a second at 100k records). The file goes when the pool ends (a main process
    killed outright leaves it in the temporary directory)."""

    def __init__(self, maker: RecordMaker, workers: int):
        self._maker, self._workers = maker, workers
        registry, declared, custom = copy.deepcopy((maker.registry, maker.declared, maker.custom))
        self._here = replace(maker, registry=registry, declared=declared, custom=custom)
        self.queued = 3 * workers
        self.ahead = self.queued + 4

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as undo:  # what is set up so far, undone if the rest fails
            try:
                with tempfile.NamedTemporaryFile(prefix="migrate-maker-", suffix=".pickle", delete=False) as file:
                    self._maker_file = Path(file.name)
                    undo.callback(self._maker_file.unlink, missing_ok=True)
                    pickle.dump(self._maker, file, protocol=pickle.HIGHEST_PROTOCOL)
            except OSError as exc:
                raise MigrateError(
                    f"cannot write the reference data for the transform worker processes to {tempfile.gettempdir()} ({exc}). "
                    "Free space there, set TMPDIR to another directory, or run with --transform-workers 0"
                ) from exc
            try:
                self._executor = ProcessPoolExecutor(
                    self._workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(self._maker_file,)
                )
            except OSError as exc:  # no semaphores (no /dev/shm), say
                raise _cannot_start(exc) from exc
            undo.callback(self._executor.shutdown, wait=True, cancel_futures=True)
            self._submit(_nothing, None)  # spawns the workers: they load the maker while this process goes on
            self._undo = undo.pop_all()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setswitchinterval(self._switch_interval)
        self._undo.close()  # the workers stopped, then the maker's file removed

    def make(self, batches: Iterable[Batch]) -> Iterator[Made]:
        return self.map(_make_in_worker, batches, self._here.make)

    def map(self, function: Callable[[T], R], items: Iterable[T], here: Callable[[T], R]) -> Iterator[R]:
        """`function(item)` in a worker, or `here(item)` in this process, for each item, in order;
        `items` are read as results are taken."""
        pending: deque[Future[R] | _Done[R]] = deque()
        try:
            for item in items:
                queued = sum(1 for out in pending if isinstance(out, Future) and not out.done())
                pending.append(self._submit(function, item) if queued < self.queued else _Done(here(item)))
                while pending and (pending[0].done() or len(pending) >= self.ahead):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise MigrateError(
                f"a transform worker process ended unexpectedly ({exc}); this transform kept nothing of its own. "
                "Run again, or with --transform-workers 0 to make the records in the main process"
            ) from exc

    def _submit(self, function: Callable[[T], R], item: T) -> Future[R]:
        try:
            return self._executor.submit(function, item)  # starts a worker process, the first times
        except OSError as exc:
            raise _cannot_start(exc) from exc


def _cannot_start(exc: OSError) -> MigrateError:
    return MigrateError(
        f"cannot start a transform worker process ({exc}). Run again with --transform-workers 0 to make the records in the main process"
    )


@dataclass(frozen=True)
class _Done(Generic[R]):
    """A result made in this process, read like a worker's future."""

    value: R

    def done(self) -> bool:
        return True

    def result(self) -> R:
        return self.value


_maker: RecordMaker | None = None


def _start_worker(maker_file: Path) -> None:
    global _maker
    for signum in (signal.SIGINT, signal.SIGTERM):  # sent to the whole process group too: the main process stops us
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_exit_with_the_main_process, daemon=True).start()
    with maker_file.open("rb") as file:
        _maker = pickle.load(file)


def _exit_with_the_main_process() -> None:
    """A main process killed outright (SIGKILL, out of memory) does not stop its workers, and one
    sending a result back would wait for it forever: the worker ends when the main process does."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _nothing(_: object) -> None:
    pass


def _make_in_worker(batch: Batch) -> Made:
    assert _maker is not None
    return _maker.make(batch)


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    if len(path) == 1:  # most columns: a field of the record itself
        return record.get(path[0])
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _one_value(values: list[Any]) -> Any:
    """The value of a field that goes by several names (persons' `im`, `ims`): the one present or,
    when more than one name carries a value, the items of them all, each once."""
    present = [value for value in values if value not in (None, "", [])]
    if len(present) < 2:
        return present[0] if present else values[0]
    items: list[Any] = []
    for value in present:
        for item in value if isinstance(value, list) else [value]:
            if item not in items:
                items.append(item)
    return items


_CUSTOM_KEY = re.compile(r"[0-9a-f]{40}")  # a custom field's key (contract §8.1)


def _unknown_custom_values(values: dict[str, Any], known: set[str], v1: bool) -> dict[str, Any]:
    """The custom values whose field is not in `known`, by field key; in a v1 record (leads), the
    40-hex keys with their flat siblings (`K_currency`, contract §8.4), each field once."""
    unknown: dict[str, Any] = {}
    for key, value in values.items():
        code = key[:40] if v1 else key
        if code in known or code in unknown or value in (None, "", []) or (v1 and (not _CUSTOM_KEY.fullmatch(code) or key[40:41] not in ("", "_"))):
            continue
        unknown[code] = _v1_value(values, code) if v1 and values.get(code) is not None else value
    return unknown


# the flat siblings of a v1 address custom field `K`: `K_subpremise`, … (contract §8.4)
V1_ADDRESS_PARTS = (
    "subpremise", "street_number", "route", "sublocality", "locality", "admin_area_level_1", "admin_area_level_2",
    "country", "postal_code", "formatted_address",
)


def _v1_value(record: dict[str, Any], code: str) -> Any:
    """Reassemble a v1 flat custom value (leads) into the v2 shape the encoders read."""
    value = record.get(code)
    if value is None:
        return None
    if f"{code}_currency" in record:
        return {"value": value, "currency": record.get(f"{code}_currency")}
    if f"{code}_until" in record:
        return {"value": value, "until": record.get(f"{code}_until")}
    if f"{code}_formatted_address" in record:
        return {"value": value, **{part: record.get(f"{code}_{part}") for part in V1_ADDRESS_PARTS}}
    return value
