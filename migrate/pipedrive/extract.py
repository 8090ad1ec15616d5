"""Extract: every Pipedrive collection into DuckDB staging, page by page, resumable.

A source is anything with `pages(collection, start)`: the live API (`PipedriveClient`) or an
offline snapshot directory (`SnapshotSource`, one JSON Lines file per collection). Each page
is written together with the checkpoint that points past it (the pages already read and waiting
for staging in one commit), so a crash loses at most the pages in flight and a rerun resumes
where the last committed page ended.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog

from migrate import stopping
from migrate.errors import BudgetExhaustedError, MigrateError, PipedriveError
from migrate.pipedrive.client import Page, PipedriveClient
from migrate.pipedrive.collections import (
    COLLECTIONS,
    DEAL_IDS_PER_REQUEST,
    DEAL_PRODUCTS,
    NOT_ON_THIS_ACCOUNT,
    PAGE_LIMIT,
    Collection,
)
from migrate.staging.keys import is_deleted_record, with_whole_ids
from migrate.staging.store import (
    ARCHIVE_PAIRS,
    Checkpoint,
    PageWrite,
    Staging,
    raw_table,
)

log = structlog.get_logger(__name__)

DEAL_PRODUCT_READERS = 4  # deal-product requests in flight at once
PAGES_PER_COMMIT = 8  # pages already read that are written in one transaction, at most
EXTRACT_BEGAN_KEY = "extract_began"  # in the state file's meta: when the current (or last) full extract began


class PageSource(Protocol):
    def pages(self, collection: Collection, start: str | None = None, extra: dict[str, Any] | None = None) -> Iterator[Page]: ...


class SnapshotSource:
    """Reads `<dir>/<collection>.jsonl`; the checkpoint is the line offset. Ids written as whole
    floats are read as the integers they are (`with_whole_ids`)."""

    def __init__(self, directory: Path):
        if not directory.is_dir():
            raise PipedriveError(f"--source {directory} is not a directory")
        self.directory = directory
        self.missing: list[str] = []

    def pages(self, collection: Collection, start: str | None = None, extra: dict[str, Any] | None = None) -> Iterator[Page]:
        path = self.directory / f"{collection.name}.jsonl"
        if not path.exists():
            self.missing.append(collection.name)
            yield Page([], None)
            return
        skip = int(start or 0)
        line_no = 0
        batch: list[dict[str, Any]] = []
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if line_no <= skip or not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PipedriveError(f"{path}:{line_no}: not valid UTF-8 at byte {exc.start + 1} of the line ({exc.reason}); save the file as UTF-8") from None
                try:
                    record = json.loads(line, object_hook=with_whole_ids)
                except json.JSONDecodeError as exc:
                    reason = exc.msg.removesuffix(" at").removesuffix(" starting")
                    raise PipedriveError(f"{path}:{line_no}: not valid JSON at column {exc.colno} ({reason})") from None
                if not isinstance(record, dict):
                    raise PipedriveError(f"{path}:{line_no}: expected a JSON object per line")
                batch.append(record)
                if len(batch) == PAGE_LIMIT:
                    yield Page(batch, str(line_no))
                    batch = []
        yield Page(batch, None)


@dataclass
class ExtractSummary:
    records: dict[str, int] = field(default_factory=dict)
    pages: int = 0
    resumed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    pipedrive: dict[str, Any] | None = None  # requests, tokens spent and estimated (API source only)


ProgressFn = Callable[[str, int], None]


def extract(staging: Staging, source: PageSource, run_id: str, *, progress: ProgressFn | None = None) -> ExtractSummary:
    """Stage every collection. A completed earlier extract is replaced by a fresh one."""
    names = [c.name for c in COLLECTIONS] + [DEAL_PRODUCTS.name]
    checkpoints = {n: staging.checkpoint(n) for n in names}
    if all(cp is not None and cp.done for cp in checkpoints.values()) or all(cp is None for cp in checkpoints.values()):
        _start_fresh(staging, names)
        staging.set_meta(EXTRACT_BEGAN_KEY, _stamp(datetime.now(UTC)))
        staging.set_meta(EXTRACT_BEGAN_KEY, _began(staging, source))  # Pipedrive's clock too, for a resumed extract
        checkpoints = dict.fromkeys(names)
    summary = ExtractSummary()
    stager = _Stager(staging, run_id, summary, progress)
    if isinstance(source, PipedriveClient):  # live API: several collections at once, one limiter
        _extract_concurrently(stager, source, checkpoints)
    else:
        for collection in COLLECTIONS:
            _extract_collection(stager, source, collection, checkpoints[collection.name])
    _extract_deal_products(stager, source, checkpoints[DEAL_PRODUCTS.name])
    staging.clear_products_due()  # every deal's product lines are read
    summary.missing += list(getattr(source, "missing", []))
    set_watermarks(staging, run_id, _began(staging, source))
    for name in names:
        summary.records[name] = staging.count_raw(name)[0]
    return summary


def extract_unfinished(staging: Staging) -> bool:
    """Whether a full extract began and has not finished (it has dropped what was staged before): only
    its end makes the staged records the account's, and a sync cannot start from the watermarks."""
    checkpoints = [staging.checkpoint(c.name) for c in (*COLLECTIONS, DEAL_PRODUCTS)]
    return any(cp is not None for cp in checkpoints) and not all(cp is not None and cp.done for cp in checkpoints)


def _start_fresh(staging: Staging, names: list[str]) -> None:
    staging.reset_checkpoints()
    staging.clear_watermarks()  # they date what is staged, which goes: a sync must not start from them
    staging.drop_raw(names)


def _extract_collection(stager: _Stager, source: PageSource, collection: Collection, checkpoint: Checkpoint | None) -> None:
    if checkpoint and checkpoint.done:
        return
    totals = stager.begin(collection, checkpoint)
    answering = stager.answering(collection)
    try:
        for page in source.pages(answering, start=checkpoint.cursor if checkpoint else None):
            totals = stager.stage(answering, page, totals)
    except PipedriveError as exc:
        stager.unavailable(source, answering, exc, totals)


def _extract_concurrently(stager: _Stager, client: PipedriveClient, checkpoints: dict[str, Checkpoint | None]) -> None:
    """Every unfinished collection read at once, the big ones from both ends (see `Meeting`);
    pages staged as they arrive, whichever collection they belong to, each lane's own pages in
    order with a checkpoint row of its own (`<collection>` and `<collection>~desc`). A
    collection is done once what is *staged* from both ends overlaps (the readers run ahead)."""
    staging = stager.staging
    run = _ConcurrentRun(stager, client)
    lanes: list[Lane] = []
    for collection in COLLECTIONS:
        checkpoint = checkpoints[collection.name]
        if checkpoint and checkpoint.done:
            continue
        run.totals[collection.name] = stager.begin(collection, checkpoint)
        if not _two_lanes(collection):
            lanes.append(Lane(stager.answering(collection), checkpoint.cursor if checkpoint else None))
            continue
        down = staging.checkpoint(collection.name + DESC)
        up_cursor, high = _read_lane(checkpoint.cursor if checkpoint else None)
        down_cursor, low = _read_lane(down.cursor if down else None)
        run.staged[collection.name] = [high, low]
        if _whole(high, low) or (down is not None and down_cursor is None):  # read whole before an interruption
            run.finish(collection.name)
            continue
        meeting = Meeting(high, low)
        run.totals[collection.name + DESC] = (down.pages, down.records) if down else (0, 0)
        lanes.append(Lane(collection, up_cursor, "asc", meeting, opens_descending=checkpoint is None and down is None))
        if down is not None or checkpoint is not None:
            lanes.append(Lane(collection, down_cursor, "desc", meeting))
    reader = ConcurrentSource(client, lanes)
    try:
        run.consume(reader)
    except (PipedriveError, BudgetExhaustedError):  # a hard error, the budget spent: keep every page read (fewer tokens next run)
        for lane, kind, item in reader.leftovers():
            if kind == "page" and lane.collection.name not in run.finished:
                run.stage(lane, item[0])
        stager.flush()
        raise
    finally:
        reader.close()
    unread = [name for name in run.staged if name not in run.finished]
    if unread:  # cannot happen: each lane reads on until the two meet or it reaches its end
        raise MigrateError(f"internal error: {', '.join(unread)} not read whole from both ends; run again to resume")


def _whole(high: int | None, low: int | None) -> bool:
    return high is not None and low is not None and high >= low


@dataclass
class _ConcurrentRun:
    """What one concurrent extract keeps while pages arrive from its lanes."""

    stager: _Stager
    client: PipedriveClient
    totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # checkpoint row → (pages, records)
    staged: dict[str, list[int | None]] = field(default_factory=dict)  # two-lane collection → [highest id staged ascending, lowest descending]
    finished: set[str] = field(default_factory=set)  # two-lane collections read whole

    def finish(self, name: str) -> None:
        """A two-lane collection is read whole: both its checkpoint rows are done."""
        self.finished.add(name)
        for row in (name, name + DESC):
            self.stager.finish(row)

    def consume(self, reader: ConcurrentSource) -> None:
        """Stage pages as they arrive: those waiting together in one commit (`_Stager.flush`)."""
        for lane, kind, item in reader.arrivals():
            self.take(lane, kind, item)
            if not reader.waiting() or len(self.stager.pending) >= PAGES_PER_COMMIT:
                self.stager.flush()
                stopping.check()  # the pages are recorded: a requested stop can happen here
        self.stager.flush()

    def take(self, lane: Lane, kind: str, item: Any) -> None:
        """Queue a page (or stage what an error leaves), and mark a collection read whole."""
        collection = lane.collection
        if kind == "page":
            page = item[0]
            if collection.name in self.finished:  # read ahead by the other lane: keep it, the checkpoints are final
                self.stager.flush()
                self.stager.staging.upsert_records(collection.name, page.records, collection.key)
                return
            self.stage(lane, page)
            if lane.meeting is not None and (page.next_cursor is None or _whole(*self.staged[collection.name])):
                self.finish(collection.name)
        elif kind == "error":
            if not isinstance(item, PipedriveError):
                raise item
            if lane.meeting is not None and collection.name in self.finished:
                return
            if lane.meeting is not None:
                self.finished.add(collection.name)
            self.stager.unavailable(self.client, collection, item, self.totals[collection.name])
            if lane.meeting is not None:
                self.stager.finish(collection.name + DESC)

    def stage(self, lane: Lane, page: Page) -> None:
        """Queue a page for the next commit, with its lane's checkpoint row."""
        collection = lane.collection
        if lane.meeting is None:
            self.totals[collection.name] = self.stager.write(collection, page, collection.name, page.next_cursor, self.totals[collection.name])
            return
        row = collection.name + (DESC if lane.direction == "desc" else "")
        ids = _int_ids(page.records)
        bounds = self.staged[collection.name]
        if ids and lane.direction == "asc":
            bounds[0] = max(ids) if bounds[0] is None else max(bounds[0], *ids)
        elif ids:
            bounds[1] = min(ids) if bounds[1] is None else min(bounds[1], *ids)
        cursor = json.dumps({"c": page.next_cursor, "b": bounds[0] if lane.direction == "asc" else bounds[1]})
        # never None, so the row is not done: it is marked done only when the collection is whole (by
        # `consume`), as a reader's decision to stop rests on pages the other lane may not have staged yet
        self.totals[row] = self.stager.write(collection, page, row, cursor, self.totals.get(row, (0, 0)))


@dataclass
class _Stager:
    """Writes pages into staging, each with the checkpoint row that points past it, and counts
    them. Pages queued by `write` are committed together by `flush`."""

    staging: Staging
    run_id: str
    summary: ExtractSummary
    progress: ProgressFn | None
    pending: list[PageWrite] = field(default_factory=list)

    def begin(self, collection: Collection, checkpoint: Checkpoint | None) -> tuple[int, int]:
        """(pages, records) staged so far, from the checkpoint of an interrupted extract."""
        if checkpoint:
            self.summary.resumed.append(collection.name)
            log.info("extract.resume", collection=collection.name, after_pages=checkpoint.pages)
        self.staging.ensure_raw_table(collection.name)
        return (checkpoint.pages, checkpoint.records) if checkpoint else (0, 0)

    def write(self, collection: Collection, page: Page, row: str, cursor: str | None, totals: tuple[int, int]) -> tuple[int, int]:
        """Queue a page, to move checkpoint row `row` (past `totals`) to `cursor`, done when there
        is none; returns the row's new (pages, records)."""
        pages, records = totals[0] + 1, totals[1] + len(page.records)
        self.pending.append(PageWrite(collection.name, page.records, Checkpoint(row, cursor, pages, records, cursor is None), collection.key))
        return pages, records

    def flush(self) -> None:
        """Commit the queued pages, in one transaction."""
        if not self.pending:
            return
        self.staging.write_pages(self.pending, self.run_id)
        self.summary.pages += len(self.pending)
        if self.progress:
            for page in self.pending:
                self.progress(page.collection, len(page.records))
        self.pending = []

    def finish(self, row: str) -> None:
        """Mark checkpoint row `row` done (a lane's row, once its collection is read whole)."""
        self.flush()
        self.staging.finish_checkpoint(row, self.run_id)

    def stage(self, collection: Collection, page: Page, totals: tuple[int, int]) -> tuple[int, int]:
        """Write a page of a collection read from one end: its checkpoint row is the collection's."""
        totals = self.write(collection, page, collection.name, page.next_cursor, totals)
        self.flush()
        stopping.check()  # the page is recorded: a requested stop can happen here
        return totals

    def answering(self, collection: Collection) -> Collection:
        """The collection to read: its fallback once that answered for it in this extract, whose checkpoint then holds
        the fallback's position (a v1 offset, which the v2 endpoint would not take for a cursor), else itself."""
        if collection.fallback is not None and self.staging.checkpoint(collection.name + FALLBACK) is not None:
            return collection.fallback
        return collection

    def unavailable(self, source: PageSource, collection: Collection, exc: PipedriveError, totals: tuple[int, int]) -> None:
        """An endpoint that answered as not on this account before its first page: read the fallback, or report an
        optional collection as not on this account; anything else is raised."""
        if exc.status not in NOT_ON_THIS_ACCOUNT or totals[0]:
            raise exc
        if collection.fallback is not None:
            log.warning("extract.fallback", collection=collection.name, path=collection.fallback.path, reason=str(exc))
            self.finish(collection.name + FALLBACK)
            for page in source.pages(collection.fallback):
                totals = self.stage(collection.fallback, page, totals)
        elif collection.optional:
            self.summary.missing.append(collection.name)
            log.warning("extract.unavailable", collection=collection.name, reason=str(exc))
            self.staging.write_page(collection.name, [], Checkpoint(collection.name, None, 0, 0, True), self.run_id, collection.key)
        else:
            raise exc


def _extract_deal_products(stager: _Stager, source: PageSource, checkpoint: Checkpoint | None) -> None:
    """Deal products come from /deals/products?deal_ids=…, 100 deals per request, only for
    deals that have products (`products_count`, when the API gave it). A snapshot has them whole."""
    if checkpoint and checkpoint.done:
        return
    if isinstance(source, SnapshotSource):
        _extract_collection(stager, source, DEAL_PRODUCTS, checkpoint)
        return
    staging = stager.staging
    staging.ensure_raw_table(DEAL_PRODUCTS.name)
    deal_ids = _deal_ids_with_products(staging)
    chunks = [deal_ids[i : i + DEAL_IDS_PER_REQUEST] for i in range(0, len(deal_ids), DEAL_IDS_PER_REQUEST)]
    # checkpoint cursor: "<chunk index>" or "<chunk index>:<cursor inside the chunk>"
    first_chunk, inner = 0, None
    totals = (checkpoint.pages, checkpoint.records) if checkpoint else (0, 0)
    if checkpoint and checkpoint.cursor:
        head, _, rest = checkpoint.cursor.partition(":")
        first_chunk, inner = int(head), rest or None
    if not chunks:
        staging.write_page(DEAL_PRODUCTS.name, [], Checkpoint(DEAL_PRODUCTS.name, None, *totals, True), stager.run_id)
        return
    def fetch(index: int) -> list[Page]:
        extra = {"deal_ids": ",".join(chunks[index])}
        return list(source.pages(DEAL_PRODUCTS, start=inner if index == first_chunk else None, extra=extra))

    with ThreadPoolExecutor(max_workers=DEAL_PRODUCT_READERS, thread_name_prefix="deal-products") as pool:
        ahead: deque[Future[list[Page]]] = deque()
        try:
            for index in range(first_chunk, len(chunks)):
                # requests run a few chunks ahead (Pipedrive's answer time overlaps); staging stays in order
                while len(ahead) < DEAL_PRODUCT_READERS and index + len(ahead) < len(chunks):
                    ahead.append(pool.submit(fetch, index + len(ahead)))
                for page in ahead.popleft().result():
                    cursor = _deal_products_cursor(index, len(chunks), page)
                    totals = stager.write(DEAL_PRODUCTS, page, DEAL_PRODUCTS.name, cursor, totals)
                if not (ahead and ahead[0].done()) or len(stager.pending) >= PAGES_PER_COMMIT:
                    stager.flush()  # nothing more to take at once
        except (PipedriveError, BudgetExhaustedError):  # keep every page read
            stager.flush()
            raise
    stager.flush()


def _deal_products_cursor(index: int, chunks: int, page: Page) -> str | None:
    """The checkpoint past a page of chunk `index`: inside the chunk, the next chunk, or None at the end."""
    if page.next_cursor is not None:
        return f"{index}:{page.next_cursor}"
    return str(index + 1) if index + 1 < chunks else None


def _deal_ids_with_products(staging: Staging) -> list[str]:
    ids: list[str] = []
    for name in ("deals", "deals_archived"):
        if not staging.has_collection(name):
            continue
        rows = staging.con.execute(
            f"SELECT id FROM {raw_table(name)} WHERE NOT coalesce(is_deleted, false) AND "
            "coalesce(try_cast(data->>'products_count' AS INTEGER), 1) > 0 ORDER BY try_cast(id AS BIGINT)"
        ).fetchall()
        ids.extend(r[0] for r in rows)
    return ids


@dataclass
class ChangeSummary:
    """What one incremental extract read: changed records per collection, and the requests."""

    changed: dict[str, int] = field(default_factory=dict)
    reread: dict[str, int] = field(default_factory=dict)
    requests: int = 0


def extract_changes(
    staging: Staging, client: PipedriveClient, run_id: str, *, overlap_seconds: int = 300, progress: ProgressFn | None = None
) -> ChangeSummary:
    """Stage what changed since the last extract (its watermarks), for `migrate sync`.

    Collections with `updated_since` are read from their watermark minus `overlap_seconds`
    (Pipedrive timestamps have no milliseconds: ties at the boundary must not be lost; the
    overlap's records are upserted again by id), sorted by update_time ascending, so the
    watermark moves with every staged page: an interrupted sync goes on from its last page.
    The small collections without that filter are read whole and replaced; deal products are
    read again for the deals that changed. Records whose update_time is null never match
    `updated_since`: `reconcile_ids` and a full `migrate run` pick them up.
    """
    summary = ChangeSummary()
    requests_before = client.requests_sent
    for collection in COLLECTIONS:
        if collection.incremental and staging.watermark(collection.name):
            since = _minus(staging.watermark(collection.name) or "", overlap_seconds)
            extra = since_params(collection, since)
            count = 0
            try:
                for page in client.pages(collection, extra=extra):
                    staging.upsert_records(collection.name, page.records, collection.key)
                    count += len(page.records)
                    if collection.name in ("deals", "deals_archived"):  # noted before the watermark moves past them
                        staging.add_products_due([str(r["id"]) for r in page.records if not r.get("is_deleted")])
                    # sorted by update_time ascending: everything up to this page's newest is staged
                    newest_on_page = max((str(r["update_time"]) for r in page.records if r.get("update_time")), default=None)
                    if newest_on_page:
                        staging.set_watermark(collection.name, max(_utc(newest_on_page), staging.watermark(collection.name) or ""), run_id)
                    if progress:
                        progress(collection.name, len(page.records))
                    stopping.check()
            except PipedriveError as exc:
                if exc.status in NOT_ON_THIS_ACCOUNT and collection.optional:
                    continue
                raise
            summary.changed[collection.name] = count
        else:
            read = _read_whole(client, collection)
            if read is None:
                continue
            answered, records = read
            if collection.name in ARCHIVE_PAIRS:  # records to migrate (archived leads): one gone from the list is deleted, not forgotten
                staging.upsert_records(collection.name, records, collection.key)
                staging.start_present_ids()
                staging.add_present_ids([str(r[collection.key]) for r in records])
                staging.flag_missing_as_deleted(collection.name)
            else:  # staged as a full extract stages what answered: a fallback's records by the fallback's key
                staging.replace_records(answered.name, records, answered.key)
            summary.reread[collection.name] = len(records)
        newest = staging.latest_update_time(collection.name)
        if collection.incremental and newest:
            staging.set_watermark(collection.name, _utc(newest), run_id)
    ids = staging.products_due()  # those of this sync's deals, and of a sync stopped before it read them
    for start in range(0, len(ids), DEAL_IDS_PER_REQUEST):
        chunk = ids[start : start + DEAL_IDS_PER_REQUEST]
        rows = [r for page in client.pages(DEAL_PRODUCTS, extra={"deal_ids": ",".join(chunk)}) for r in page.records]
        staging.replace_records(DEAL_PRODUCTS.name, rows, where_json=("deal_id", chunk))
        staging.clear_products_due(chunk)
        summary.changed[DEAL_PRODUCTS.name] = summary.changed.get(DEAL_PRODUCTS.name, 0) + len(rows)
    summary.requests = client.requests_sent - requests_before
    return summary


def set_watermarks(staging: Staging, run_id: str, began: str | None = None) -> None:
    """After a full extract: each incremental collection's watermark is its newest update_time, or
    the time the extract `began` when that is earlier. Pages are read by id, so a record edited
    after its page was read is staged as it was; a record edited later still, on a page read after,
    can make the newest update_time later than that edit, and a sync from there would never read it."""
    for collection in COLLECTIONS:
        newest = staging.latest_update_time(collection.name) if collection.incremental else None
        if newest:
            mark = _utc(newest)
            staging.set_watermark(collection.name, min(mark, began) if began else mark, run_id)


def _began(staging: Staging, source: PageSource) -> str | None:
    """When the extract began: this machine's clock or Pipedrive's at its fresh start (the earlier, kept in
    the state file for a resumed one), or Pipedrive's at its first answer in this process, whichever is
    earliest. A machine whose clock is ahead makes Pipedrive's the one that counts."""
    began = [staging.meta(EXTRACT_BEGAN_KEY)]
    if isinstance(source, PipedriveClient) and source.first_answer_at is not None:
        began.append(_stamp(source.first_answer_at))
    return min((b for b in began if b), default=None)


def _read_whole(client: PipedriveClient, collection: Collection) -> tuple[Collection, list[dict[str, Any]]] | None:
    """A small collection in full, with the collection that answered: its fallback when it is not on this
    account (v1 field definitions, keyed otherwise); None when an optional one is not on this account."""
    try:
        return collection, [r for page in client.pages(collection) for r in page.records]
    except PipedriveError as exc:
        if exc.status in NOT_ON_THIS_ACCOUNT and collection.fallback is not None:
            return collection.fallback, [r for page in client.pages(collection.fallback) for r in page.records]
        if exc.status in NOT_ON_THIS_ACCOUNT and collection.optional:
            return None
        raise


def since_params(collection: Collection, since: str) -> dict[str, str]:
    if collection.paging == "cursor":
        return {"updated_since": since, "sort_by": "update_time", "sort_direction": "asc"}
    return {"updated_since": since, "sort": "update_time ASC"}


def _utc(value: str) -> str:
    """A Pipedrive timestamp (v2 RFC 3339, v1 `YYYY-MM-DD HH:MM:SS` UTC, leads with millis) as
    `YYYY-MM-DDTHH:MM:SSZ`."""
    text = value.strip().replace(" ", "T")
    moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _stamp(moment)


def _minus(timestamp: str, seconds: int) -> str:
    return _stamp(datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - timedelta(seconds=seconds))


def _stamp(moment: datetime) -> str:
    """An aware datetime as a watermark: `YYYY-MM-DDTHH:MM:SSZ` in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile_ids(staging: Staging, client: PipedriveClient, run_id: str) -> dict[str, int]:
    """Find records that vanished from Pipedrive without a trace in `updated_since` windows
    (purged after 30 days, merged, converted leads, deletions that did not bump update_time):
    read each incremental collection whole (⌈records/500⌉ requests each), flag staged records
    missing from it as deleted, and stage the records no window can show (null update_time,
    never staged). Returns the vanished count per collection."""
    vanished: dict[str, int] = {}
    for collection in COLLECTIONS:
        if not collection.incremental or not staging.has_collection(collection.name):
            continue
        staging.start_present_ids()  # in the state file: a page's ids at a time in memory
        try:
            for page in client.pages(collection):
                ids = [str(r[collection.key]) for r in page.records]
                staged = staging.staged_among(collection.name, ids)
                # records no window can show: new ones without update_time, never staged, stamped other than
                # the staged copy (an update_time behind the watermark: a server's clock behind), or back
                # after they vanished
                unseen = [r for i, r in zip(ids, page.records, strict=True) if _unseen(r, staged.get(i))]
                staging.upsert_records(collection.name, unseen, collection.key)
                staging.add_present_ids(ids)
        except PipedriveError as exc:
            if exc.status in NOT_ON_THIS_ACCOUNT and collection.optional:
                continue
            raise
        vanished[collection.name] = staging.flag_missing_as_deleted(collection.name)
    return vanished


def _unseen(record: dict[str, Any], staged: tuple[str | None, bool] | None) -> bool:
    """Whether a record a whole read found differs from its staged copy in a way no window shows."""
    if staged is None or not record.get("update_time"):
        return True
    update_time, deleted = staged
    return str(record["update_time"]) != str(update_time) or (deleted and not is_deleted_record(record))


DESC = "~desc"  # checkpoint row of a collection's descending lane
FALLBACK = "~fallback"  # checkpoint row, done, of a collection whose fallback answered for it (see `_Stager.answering`)


def _two_lanes(collection: Collection) -> bool:
    """Big v2 lists are read from both ends at once: a cursor hands out one page after another,
    so one reader per collection waits out Pipedrive's answer time page by page, and the
    biggest collection would outlast the burst limit's floor."""
    return collection.paging == "cursor" and collection.incremental


# The descending read opens once the ascending one has read this many pages and there are more.
# Meeting in the middle costs up to two requests (the page the two ends share, and the one in
# flight when they meet): a collection of up to four pages is cheaper read from one end.
DESCENDING_AFTER_PAGES = 4


class Meeting:
    """How far the two reads of one collection have got: the highest id the ascending read has
    seen and the lowest the descending one has. The descending read stops once the gap left is
    about two of its pages wide; the ascending one reads on until it reaches the other's lowest
    id. At most a page per end is read twice (the requests out when the two meet)."""

    def __init__(self, high: int | None = None, low: int | None = None):
        self.high, self.low = high, low
        self._lock = threading.Lock()

    def ascending(self, records: list[dict[str, Any]]) -> bool:
        """Record an ascending page; True once the two reads overlap (the collection is read)."""
        ids = _int_ids(records)
        with self._lock:
            if ids:
                self.high = max(ids) if self.high is None else max(self.high, *ids)
            return self.met()

    def descending(self, records: list[dict[str, Any]]) -> bool:
        """Record a descending page; True when the descending read should stop."""
        ids = _int_ids(records)
        with self._lock:
            if ids:
                self.low = min(ids) if self.low is None else min(self.low, *ids)
            span = max(ids) - min(ids) if ids else 0
            return self.met() or (self.high is not None and self.low is not None and self.low - self.high <= 2 * span)

    def met(self) -> bool:
        return self.high is not None and self.low is not None and self.high >= self.low


def _int_ids(records: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in records if isinstance(r.get("id"), int)]


@dataclass(frozen=True)
class Lane:
    """One read of a collection: all of it, or (with a `meeting`) one end of it. An ascending
    lane that `opens_descending` starts the descending one once it has read
    `DESCENDING_AFTER_PAGES` pages and there are more (a small collection costs no extra request)."""

    collection: Collection
    start: str | None
    direction: str = "asc"
    meeting: Meeting | None = field(default=None, compare=False)
    opens_descending: bool = False


def _read_lane(cursor: str | None) -> tuple[str | None, int | None]:
    """(API cursor, id bound) from a lane checkpoint; a plain cursor (an older run) has no bound."""
    if cursor and cursor.startswith('{"c"'):
        saved = json.loads(cursor)
        return saved["c"], saved["b"]
    return cursor, None


class ConcurrentSource:
    """Reads several collections at once (a few threads, all under the client's one burst
    limiter) and hands their pages over in arrival order through one small bounded queue:
    memory does not grow with the account, no reader waits for another collection to be
    consumed first, and writing to staging stays on the caller's thread."""

    def __init__(self, source: PageSource, plan: list[Lane], *, workers: int = 8, depth: int = 4):
        self.source = source
        self._box: queue.Queue[tuple[Lane, str, Any]] = queue.Queue(maxsize=depth)
        self._cancelled = threading.Event()
        self._winding_down = threading.Event()  # readers finish the request they have out, then stop
        self._open = len(plan)  # lanes whose "end" or "error" has not been handed over
        self._count = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="extract")
        self._readers = [self._pool.submit(self._fill, lane) for lane in plan]

    def _fill(self, lane: Lane) -> None:
        if self._winding_down.is_set():  # queued behind the readers; no new request now
            return
        try:
            extra = {"sort_by": "id", "sort_direction": "desc"} if lane.direction == "desc" else None
            for number, page in enumerate(self.source.pages(lane.collection, start=lane.start, extra=extra)):
                stop = False
                if lane.meeting is not None:
                    stop = lane.meeting.ascending(page.records) if lane.direction == "asc" else lane.meeting.descending(page.records)
                if not self._put((lane, "page", (page, stop))) or self._winding_down.is_set():
                    return
                if stop:
                    break
                if lane.opens_descending and number == DESCENDING_AFTER_PAGES - 1 and page.next_cursor is not None:
                    self._start(Lane(lane.collection, None, "desc", lane.meeting))  # a big collection: read from the top too
        except Exception as exc:  # handed to the consumer, which deals with it in its own thread
            self._put((lane, "error", exc))
            return
        self._put((lane, "end", None))

    def _start(self, lane: Lane) -> None:
        with self._count:
            if self._winding_down.is_set():
                return
            self._open += 1
            self._readers.append(self._pool.submit(self._fill, lane))

    def _put(self, item: tuple[Lane, str, Any]) -> bool:
        while not self._cancelled.is_set():
            try:
                self._box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def waiting(self) -> bool:
        """Whether another arrival is there to take at once."""
        return not self._box.empty()

    def arrivals(self) -> Iterator[tuple[Lane, str, Any]]:
        """(lane, "page" | "error" | "end", (page, lane stops) or exception) until every lane
        ended, those started along the way included; each lane's pages in their order."""
        while True:
            with self._count:
                if not self._open:
                    return
            lane, kind, item = self._box.get()
            if kind != "page":
                with self._count:
                    self._open -= 1
            yield lane, kind, item

    def leftovers(self) -> Iterator[tuple[Lane, str, Any]]:
        """Let each reader finish the request it has out (Pipedrive has charged it) and stop, and
        hand over everything read: after a hard error every page paid for is staged."""
        self._winding_down.set()
        while True:
            try:
                yield self._box.get(timeout=0.05)
            except queue.Empty:
                with self._count:
                    if all(reader.done() for reader in self._readers) and self._box.empty():
                        return

    def close(self) -> None:
        self._cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
