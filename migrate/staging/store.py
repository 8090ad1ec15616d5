"""The DuckDB file that holds everything a run knows: raw Pipedrive records, extract
checkpoints, transformed target records, the id map and the run log.

Raw records live in one table per collection, ``raw_<collection>``, with the record as
returned by the API in ``data`` (JSON text), so a user can inspect them with the duckdb CLI::

    duckdb migration.duckdb "select data->>'name' from raw_persons limit 5"
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy
import structlog

from migrate import jsontext
from migrate.errors import MigrateError
from migrate.staging.keys import (
    NUMERIC_ID,
    REPLACED_CHARACTERS,
    is_deleted_record,
    numeric_id,
)

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1
CHECKPOINT_THRESHOLD_MB = 256  # write-ahead log kept before it is written into the file
DUCKDB_MEMORY_LIMIT_MB = 160  # the least; more when a state file's rows are big (`Staging.memory_limit_mb`)
MEMORY_LIMIT_ENV = "MIGRATE_DUCKDB_MEMORY_MB"  # a higher floor, should a query still run out
VECTOR_ROWS = 2048  # DuckDB scans rows a vector at a time and holds a vector's values together
VECTOR_BYTES_KEY = "largest_vector_bytes"
PLANNED_TARGET_KEY = "planned_target_fingerprint"  # in meta: the fingerprint of the target `planned_target` holds
SORT_WINDOW = 5000  # rows sorted at a time by `scan_in_id_order`
TARGET_BATCH = 2000  # target records handled at a time by the plan and the load (`iter_target_batches`)
# A deal or lead is in one list of its pair at a time (`Staging._claim_from_sibling`).
ARCHIVED_LIST = {"deals": "deals_archived", "leads": "leads_archived"}
ARCHIVE_PAIRS = {**ARCHIVED_LIST, **{archived: main for main, archived in ARCHIVED_LIST.items()}}


T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter); itertools.batched from Python 3.12."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, command VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    status VARCHAR, summary JSON);
CREATE TABLE IF NOT EXISTS extract_checkpoints (
    collection VARCHAR PRIMARY KEY, cursor VARCHAR, pages INTEGER, records BIGINT,
    done BOOLEAN, run_id VARCHAR, updated_at TIMESTAMP);
-- Columns of records' JSON are compressed with zstd rather than what DuckDB picks (FSST): the 1M
-- benchmark account's raw records took 161 MB of the file, not 589, its transform output 127 MB,
-- not 370; with the extract's pages written alone, the longest wait on a checkpoint fell from
-- 3.8 s to 1.5; the transform that reads them took no longer (113.5 s against 115.0).
-- The transform's output, replaced whole by each transform in one transaction. No key: the
-- transaction would hold two indexes of every record (the rows it deletes and those it adds)
-- in memory, past the memory limit at a million records; the transform checks uniqueness.
-- `lookups`: the records the record looked up, a JSON list of [entity, id] (`transform.incremental`).
CREATE TABLE IF NOT EXISTS target_records (
    entity VARCHAR, source_id VARCHAR, payload JSON USING COMPRESSION zstd, payload_hash VARCHAR, num_id BIGINT, lookups VARCHAR);
CREATE TABLE IF NOT EXISTS target_columns (
    entity VARCHAR, key VARCHAR, spec JSON, PRIMARY KEY (entity, key));
CREATE TABLE IF NOT EXISTS note_markdown (
    content_hash VARCHAR PRIMARY KEY, converter VARCHAR, markdown VARCHAR);
CREATE TABLE IF NOT EXISTS transform_issues (
    entity VARCHAR, source_id VARCHAR, field VARCHAR, rule VARCHAR, detail VARCHAR);
-- What the last transform read, so that the next transforms again only what changed
-- (`transform.incremental`): a digest of each record, note and deal product row, and the records
-- each note and deal product belongs to. The transform in progress finds the rows changed since
-- (`transform_changed`), the records it makes again (`transform_dirty`) and the notes and deal
-- products they may have (`transform_dirty_groups`).
CREATE TABLE IF NOT EXISTS transform_inputs (collection VARCHAR, id VARCHAR, digest UBIGINT);
CREATE TABLE IF NOT EXISTS transform_owners (collection VARCHAR, id VARCHAR, entity VARCHAR, source_id VARCHAR);
CREATE TABLE IF NOT EXISTS transform_changed (collection VARCHAR, id VARCHAR);
CREATE TABLE IF NOT EXISTS transform_dirty (entity VARCHAR, source_id VARCHAR);
CREATE TABLE IF NOT EXISTS transform_dirty_groups (collection VARCHAR, id VARCHAR);
CREATE TABLE IF NOT EXISTS column_map (
    entity VARCHAR, key VARCHAR, column_id VARCHAR, label VARCHAR, type VARCHAR, options JSON,
    created_by_run VARCHAR, PRIMARY KEY (entity, key));
CREATE TABLE IF NOT EXISTS id_map (
    entity VARCHAR, source_id VARCHAR, target_id VARCHAR, payload_hash VARCHAR, run_id VARCHAR,
    written_at TIMESTAMP, PRIMARY KEY (entity, source_id));
CREATE TABLE IF NOT EXISTS pending_batches (
    batch_id VARCHAR PRIMARY KEY, entity VARCHAR, operation VARCHAR, source_ids JSON, hashes JSON,
    run_id VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS watermarks (
    collection VARCHAR PRIMARY KEY, updated_at VARCHAR, run_id VARCHAR);
-- Deals a sync found changed whose product lines it has still to read: kept here before the deals'
-- watermark moves past them, so that a sync stopped before it read the lines reads them next time.
CREATE TABLE IF NOT EXISTS deal_products_due (deal_id VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS written_payloads (
    entity VARCHAR, source_id VARCHAR, payload JSON USING COMPRESSION zstd, PRIMARY KEY (entity, source_id));
-- What Customermates held when last read (every record, in the order read; `pid` its Pipedrive ID).
-- No key: an index would hold every id in memory, and lookups go by the batch.
CREATE TABLE IF NOT EXISTS target_snapshot (
    entity VARCHAR, seq BIGINT, target_id VARCHAR, pid VARCHAR, dto JSON USING COMPRESSION zstd);
-- Migrated records a lookup by Pipedrive ID found deleted in Customermates: a record id never comes
-- back, so later whole reads that miss them do not look them up again.
CREATE TABLE IF NOT EXISTS target_gone (entity VARCHAR, target_id VARCHAR, PRIMARY KEY (entity, target_id));
-- The records of the last full plan (`migrate plan`), in plan order: written as they are planned,
-- read back by the plan's files, so that a plan of a million records is not held in memory.
CREATE TABLE IF NOT EXISTS plan_records (entity VARCHAR, seq BIGINT, action VARCHAR, item JSON);
-- What the target held when the last full plan was made (each record's id, Pipedrive ID and updatedAt; its
-- fingerprint in meta): `run --plan` names the records created, edited or deleted there since.
CREATE TABLE IF NOT EXISTS planned_target (entity VARCHAR, target_id VARCHAR, pid VARCHAR, updated_at VARCHAR);
CREATE TABLE IF NOT EXISTS quarantine (
    entity VARCHAR, source_id VARCHAR, message VARCHAR, payload JSON, run_id VARCHAR,
    quarantined_at TIMESTAMP, PRIMARY KEY (entity, source_id));
CREATE TABLE IF NOT EXISTS load_issues (
    run_id VARCHAR, entity VARCHAR, source_id VARCHAR, field VARCHAR, rule VARCHAR, detail VARCHAR);
-- The records of the last `migrate undo`: planned (bucket delete, edited or gone; numbered in source id order),
-- then given what happened to each (`action`); read back for its report, so that an undo is not held in memory.
CREATE TABLE IF NOT EXISTS undo_records (
    entity VARCHAR, seq BIGINT, source_id VARCHAR, target_id VARCHAR, bucket VARCHAR, created_at VARCHAR,
    updated_at VARCHAR, written_at TIMESTAMP, action VARCHAR, message VARCHAR);
-- The failures the last `migrate verify` found (`kind`: missing, duplicates, link_mismatches, value_mismatches,
-- notes_missing), numbered in the order found: written as found, read back for its CSV files, so that a verify
-- of a million records that are not there does not hold them.
CREATE TABLE IF NOT EXISTS verify_findings (kind VARCHAR, entity VARCHAR, seq BIGINT, item JSON);
CREATE TABLE IF NOT EXISTS undone (
    entity VARCHAR, source_id VARCHAR, target_id VARCHAR, run_id VARCHAR, undone_at TIMESTAMP, outcome VARCHAR);
-- Added without a schema bump: which run first created the record (an update keeps it; `run_id` is the last writer).
-- NULL in rows written before the column existed: their creator is unknown, `run_id` is the best guess.
ALTER TABLE id_map ADD COLUMN IF NOT EXISTS created_by_run VARCHAR;
-- Added without a schema bump: a select column's Pipedrive option ids, each with the label its option was
-- written under (`customermates.columns`). NULL in rows written before: their options are matched by label alone.
ALTER TABLE column_map ADD COLUMN IF NOT EXISTS pipedrive_options JSON;
-- Columns of the migration's a new one replaced (`customermates.columns`: a field whose type changed, a column
-- changed in Customermates so that it cannot hold the values), left there with their values: known here so that
-- `migrate undo --columns` of the run that made one deletes it, and a field whose type changes back takes its own back.
CREATE TABLE IF NOT EXISTS replaced_columns (
    column_id VARCHAR PRIMARY KEY, entity VARCHAR, key VARCHAR, label VARCHAR, type VARCHAR, created_by_run VARCHAR);
-- A column about to be made through MCP, saved before the request: a run that dies before it saves the column's
-- id (its answer lost, or killed) leaves it here, and the next run or undo finds the column by its label and type
-- and gives it to this run (`customermates.columns.settle_pending_columns`), as `pending_batches` do records.
-- A digest of each record's notes as Customermates answered its last write (`customermates.target.notes_digest`):
-- notes read back otherwise were edited there. No row: not known (written before this table, or adopted).
CREATE TABLE IF NOT EXISTS written_notes (entity VARCHAR, source_id VARCHAR, digest VARCHAR, PRIMARY KEY (entity, source_id));
CREATE TABLE IF NOT EXISTS pending_columns (
    entity VARCHAR, key VARCHAR, label VARCHAR, type VARCHAR, run_id VARCHAR, PRIMARY KEY (entity, key));
-- Added without a schema bump: the column's spec (currency, several values) and the ids of the entity's columns
-- before the request, none of which the request made (labels are not unique: a user's column can share its label).
-- NULL in rows written before: such a column is found by its label and type alone.
ALTER TABLE pending_columns ADD COLUMN IF NOT EXISTS spec JSON;
ALTER TABLE pending_columns ADD COLUMN IF NOT EXISTS there_before JSON;
-- Added without a schema bump: the Pipedrive ID of a target_gone record, from the id map when it was found gone, so
-- that a record last read linking it is known to after the id map moved on (`snapshot_pids`: made again, or forgotten
-- to be). NULL in rows written before.
ALTER TABLE target_gone ADD COLUMN IF NOT EXISTS source_id VARCHAR;
-- The relations each record's last write set (`customermates.load.relations_of`: key → Customermates ids, a deal's
-- services with their quantities): an update refilling a column made again or assigning an owner matched since sends
-- only those that differ (a record linked was made again: its id is new), and leaves the links a user changed in
-- Customermates. No row: not known (written before this table), and all are sent. Only entities with relations have rows.
CREATE TABLE IF NOT EXISTS written_relations (
    entity VARCHAR, source_id VARCHAR, relations JSON USING COMPRESSION zstd, PRIMARY KEY (entity, source_id));
"""


NOTE_UNATTACHED = "note_not_attached"  # the rule of a note that joins no migrated record
LINK_UNREADABLE = "link_unreadable"  # the rule of a value that names no one record
PRODUCT_UNATTACHED = "deal_product_not_attached"  # the rule of a deal product line whose deal is not staged


def raw_table(collection: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", collection):
        raise ValueError(f"not a collection name: {collection!r}")
    return "raw_" + re.sub(r"(?<!^)(?=[A-Z])", "_", collection).lower()


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Checkpoint:
    collection: str
    cursor: str | None
    pages: int
    records: int
    done: bool


@dataclass(frozen=True)
class PageWrite:
    """A page of records to stage (identified by `key`) and the checkpoint row that points past it."""

    collection: str
    records: list[dict[str, Any]]
    checkpoint: Checkpoint
    key: str = "id"


class _RowWindow:
    """The bytes of the last `VECTOR_ROWS` rows written to one table: what a scan's vector of them holds."""

    def __init__(self) -> None:
        self.sizes: deque[int] = deque(maxlen=VECTOR_ROWS)
        self.total = 0

    def add(self, texts: Iterable[str]) -> int:
        """Add rows of these texts; the most bytes the window held meanwhile."""
        most = self.total
        for text in texts:
            if len(self.sizes) == VECTOR_ROWS:
                self.total -= self.sizes[0]
            size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            self.sizes.append(size)
            self.total += size
            most = max(most, self.total)
        return most


class Staging:
    """One open DuckDB state file. Not thread-safe: one run, one connection."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        fresh = not self.path.exists()
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                from migrate.errors import LockHeldError

                raise LockHeldError(f"another migrate process holds the state file {self.path}: {exc}") from None
            raise MigrateError(f"cannot open the state file {self.path}: {exc}") from None
        if fresh and self.path.exists():
            os.chmod(self.path, 0o600)
        if not fresh and not self._has_own_tables():
            self.con.close()
            raise MigrateError(
                f"{self.path} is a DuckDB database but no migrate state file (none of its tables is one of ours); "
                "nothing was changed in it. Give the state file of this migration, or a new path, with --state or MIGRATE_STATE"
            )
        self.con.execute("SET enable_progress_bar = false")  # DuckDB's own bar would write into our output
        # At the 16 MB default, an extract's stream of page upserts writes its log back into the
        # file over and over: 400k persons in pages of 500 took 66–72 µs a row, 46–48 at 256 MB.
        # A kill leaves up to that much log to replay when the file is opened next (0.5 s).
        self.con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD_MB}MB'")
        # DuckDB would cache up to 80 % of RAM; a million-record state file then fills it. Above the
        # limit it spills to <state>.tmp instead, so the run's memory stays flat at any account size.
        self._windows: dict[str, _RowWindow] = {}
        self._raw_tables: set[str] = set()  # raw tables known to exist (`drop_raw` forgets one)
        self._fresh_tables: set[str] = set()  # raw tables empty when this connection first wrote them
        self.con.execute(_SCHEMA)
        self._vector_bytes = int(self.meta(VECTOR_BYTES_KEY) or 0)
        self._apply_memory_limit()
        self._check_version()
        self._add_numeric_ids()
        self.con.execute("ALTER TABLE target_records ADD COLUMN IF NOT EXISTS lookups VARCHAR")  # after num_id
        self._drop_target_records_key()
        self.settle_archive_pairs()

    def _has_own_tables(self) -> bool:
        """Whether an existing database is a state file (or an empty one, as an interrupted first open leaves)."""
        tables = {t for (t,) in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        return not tables or bool(tables & {"meta", "runs", "id_map", "extract_checkpoints"})

    def _add_numeric_ids(self) -> None:
        """State files written before `num_id` existed get it, filled from the ids, once."""
        tables = self.con.execute(
            "SELECT table_name, any_value(table_name LIKE 'raw_%') FROM information_schema.columns "
            "WHERE (table_name LIKE 'raw_%' OR table_name = 'target_records') GROUP BY table_name "
            "HAVING count(*) FILTER (WHERE column_name = 'num_id') = 0"
        ).fetchall()
        for table, raw in tables:
            key = "id" if raw else "source_id"
            self.con.execute(f"ALTER TABLE {table} ADD COLUMN num_id BIGINT")
            self.con.execute(
                f"UPDATE {table} SET num_id = CAST({key} AS BIGINT) WHERE regexp_full_match({key}, '{NUMERIC_ID}')"
            )

    def _drop_target_records_key(self) -> None:
        """State files written with a key on `target_records` get the table without it, once."""
        keyed = self.con.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'target_records' AND constraint_type = 'PRIMARY KEY'"
        ).fetchone()[0]
        if keyed:
            with self.transaction():
                self.con.execute("CREATE TABLE target_records_unkeyed AS SELECT * FROM target_records")
                self.con.execute("DROP TABLE target_records")
                self.con.execute("ALTER TABLE target_records_unkeyed RENAME TO target_records")

    def _check_version(self) -> None:
        version = self.meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) > SCHEMA_VERSION:
            raise MigrateError(
                f"the state file {self.path} was written by a newer version of migrate "
                f"(schema {version}, this version understands {SCHEMA_VERSION}); upgrade migrate or use another state file"
            )

    def close(self) -> None:
        self.con.close()

    # -- memory ---------------------------------------------------------------------------
    def memory_limit_mb(self) -> int:
        """DuckDB's memory limit for this state file. A vector of rows is held whole, and each JSON
        function over it keeps a parse of every row of the vector (about 3.7 times its text): a
        vector of 120 contacts with 117 KB notes each, read twice, took 105 MB. The least limit
        holds vectors up to 8 MB (rows of 4 KB); beyond, it grows by eight times the biggest vector written."""
        floor = max(DUCKDB_MEMORY_LIMIT_MB, int(os.environ.get(MEMORY_LIMIT_ENV) or 0))
        return floor + max(0, 8 * self._vector_bytes // 2**20 - 64)

    def _apply_memory_limit(self) -> None:
        self.con.execute(f"SET memory_limit = '{self.memory_limit_mb()}MB'")

    def _note_row_sizes(self, table: str, texts: Iterable[str]) -> None:
        """Keep the biggest vector of rows written (in the state file's meta, for later runs) and
        raise the memory limit to fit it."""
        most = self._windows.setdefault(table, _RowWindow()).add(texts)
        if most > self._vector_bytes * 1.1:
            self._vector_bytes = most
            self.set_meta(VECTOR_BYTES_KEY, str(most))
            self._apply_memory_limit()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around the block: committed at its end, rolled back if it raises. A block
        of small writes commits once instead of once a statement (about a millisecond each)."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
            self.con.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back the open transaction, if there still is one: a COMMIT that failed (disk
        full) has already ended it, and the error to report is that one, not the rollback's."""
        try:
            self.con.execute("ROLLBACK")
        except duckdb.Error:
            pass

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, command: str) -> str:
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        self.con.execute("INSERT INTO runs VALUES (?, ?, ?, NULL, 'running', NULL)", [run_id, command, now()])
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any]) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE run_id = ?",
            [now(), status, json.dumps(summary, sort_keys=True), run_id],
        )

    # -- raw records ----------------------------------------------------------------------
    def ensure_raw_table(self, collection: str) -> str:
        table = raw_table(collection)
        if table not in self._raw_tables:
            # `data` is the record's JSON as VARCHAR, which DuckDB's JSON functions read alike: the
            # text is written by `jsontext.dumps`, valid by construction, and a JSON column would parse
            # every record again to check it (inserting the 1M benchmark account's persons, 1.5 µs a
            # row of 10–11). Tables made before keep their JSON column.
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (id VARCHAR PRIMARY KEY, data VARCHAR USING COMPRESSION zstd, is_deleted BOOLEAN, "
                "update_time VARCHAR, extracted_at TIMESTAMP, num_id BIGINT)"
            )
            if self.con.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                self._fresh_tables.add(table)
            self._raw_tables.add(table)
        return table

    def write_page(
        self, collection: str, records: list[dict[str, Any]], checkpoint: Checkpoint, run_id: str, key: str = "id"
    ) -> None:
        """Upsert one page (records identified by `key`) and move its checkpoint row (named by
        `checkpoint.collection`: the collection, or one lane of it), atomically."""
        self.write_pages([PageWrite(collection, records, checkpoint, key)], run_id)

    def write_pages(self, pages: Sequence[PageWrite], run_id: str) -> None:
        """Write pages and move each one's checkpoint row, in order, in one transaction: all of
        them or none. Commits are a good part of a page's cost (the pages of the 100k benchmark account:
        34–43 µs a row with a commit each, 28–35 with one for eight), so an extract writes the pages
        waiting together.

        Into a table that was empty when this connection first wrote it (a first extract), pages
        go by plain INSERT, a third cheaper than an upsert; the first record met twice (pages of
        an offset list that shifted, two lanes meeting) rolls the transaction back, and from then
        on that table's pages replace what they find: the pages are written again that way."""
        tables = [self.ensure_raw_table(page.collection) for page in pages]  # created outside: a rollback would drop them
        while True:
            writing = None
            try:
                with self.transaction():
                    for page, table in zip(pages, tables, strict=True):
                        writing = table
                        self._write_records(page.collection, table, page.records, page.key, plain=table in self._fresh_tables)
                    writing = None
                    for checkpoint in {page.checkpoint.collection: page.checkpoint for page in pages}.values():
                        self._move_checkpoint(checkpoint, run_id)  # a row's last position is the one that counts
                return
            except duckdb.ConstraintException:
                if writing not in self._fresh_tables:
                    raise
                self._fresh_tables.discard(writing)

    def _move_checkpoint(self, checkpoint: Checkpoint, run_id: str) -> None:
        row = [checkpoint.collection, checkpoint.cursor, checkpoint.pages, checkpoint.records, checkpoint.done, run_id, now()]
        self._update_or_insert(
            "UPDATE extract_checkpoints SET cursor = ?, pages = ?, records = ?, done = ?, run_id = ?, updated_at = ? WHERE collection = ?",
            [*row[1:], row[0]],
            "INSERT INTO extract_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def _update_or_insert(self, update: str, update_params: Any, insert: str, insert_params: Any) -> None:
        """Change the row a key has, or add it when there is none. Cheaper than DuckDB's upserts:
        moving an extract checkpoint 1 ms where INSERT OR REPLACE took 3–4; saving a column's row
        into the sample's state file 2.8 ms (5 when new) where INSERT ... ON CONFLICT took 7–8;
        quarantining a record 2–4 ms where INSERT OR REPLACE took 6–7."""
        if not self.con.execute(update, update_params).fetchone()[0]:
            self.con.execute(insert, insert_params)

    def upsert_records(self, collection: str, records: list[dict[str, Any]], key: str = "id") -> None:
        """Insert or replace records by `key`, in one transaction."""
        table = self.ensure_raw_table(collection)
        with self.transaction():
            self._write_records(collection, table, records, key)

    def _write_records(self, collection: str, table: str, records: list[dict[str, Any]], key: str, *, plain: bool = False) -> None:
        """Write records into their raw table: replacing those it holds, or with `plain` by INSERT
        (a record it holds already raises `duckdb.ConstraintException`)."""
        records = self._claim_from_sibling(collection, records, key)
        if not records:
            return
        try:
            data = [jsontext.dumps(r) for r in records]
        except jsontext.LoneSurrogateError:
            data = [_storable_text(r, key, collection) for r in records]
        self._note_row_sizes(table, data)
        ids = [_identity(r, key, collection) for r in records]
        columns = [ids, data, [is_deleted_record(r) for r in records], [r.get("update_time") for r in records], [numeric_id(i) for i in ids]]
        self._insert_columns(table, columns, "c0, c1, c2, c3, $at, c4", {"at": now()}, replace=not plain)

    def _claim_from_sibling(self, collection: str, records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        """A deal or lead moves between the main list and the archived one when it is archived or
        restored: the pair keeps one copy of it, the newer by `update_time` (a tie goes to the
        copy read last). Returns the records to stage; their older copies in the other list go."""
        sibling = ARCHIVE_PAIRS.get(collection)
        if not records or sibling is None or not self.has_collection(sibling):
            return records
        ids = [_identity(r, key, collection) for r in records]
        held = dict(
            self.con.execute(
                f"SELECT id, coalesce(update_time, '') FROM {raw_table(sibling)} WHERE id IN (SELECT unnest($ids))", {"ids": ids}
            ).fetchall()
        )
        if not held:
            return records
        claims = [i not in held or str(r.get("update_time") or "") >= held[i] for i, r in zip(ids, records, strict=True)]
        stale = [i for i, claim in zip(ids, claims, strict=True) if claim and i in held]
        self.con.execute(f"DELETE FROM {raw_table(sibling)} WHERE id IN (SELECT unnest($ids))", {"ids": stale})
        return [r for r, claim in zip(records, claims, strict=True) if claim]

    def settle_archive_pairs(self) -> None:
        """State files written before `_claim_from_sibling` may hold a record in both lists of a
        pair: the older copy goes, once (marked in `meta`)."""
        if self.meta("archive_pairs_settled"):
            return
        with self.transaction():
            for main, archived in ARCHIVED_LIST.items():
                if not (self.has_collection(main) and self.has_collection(archived)):
                    continue
                m, a = raw_table(main), raw_table(archived)
                self.con.execute(
                    f"DELETE FROM {m} WHERE id IN (SELECT x.id FROM {m} x JOIN {a} y ON x.id = y.id "
                    "WHERE (coalesce(x.update_time, ''), x.extracted_at) <= (coalesce(y.update_time, ''), y.extracted_at))"
                )
                self.con.execute(f"DELETE FROM {a} WHERE id IN (SELECT id FROM {m})")
            self.set_meta("archive_pairs_settled", "true")

    def checkpoint(self, collection: str) -> Checkpoint | None:
        row = self.con.execute(
            "SELECT collection, cursor, pages, records, done FROM extract_checkpoints WHERE collection = ?", [collection]
        ).fetchone()
        return Checkpoint(*row) if row else None

    def finish_checkpoint(self, name: str, run_id: str) -> None:
        """Mark an extract checkpoint row done, keeping what it holds (created if missing)."""
        at = now()
        self._update_or_insert(
            "UPDATE extract_checkpoints SET done = true, run_id = ?, updated_at = ? WHERE collection = ?",
            [run_id, at, name],
            "INSERT INTO extract_checkpoints VALUES (?, NULL, 0, 0, true, ?, ?)",
            [name, run_id, at],
        )

    def reset_checkpoints(self) -> None:
        self.con.execute("DELETE FROM extract_checkpoints")

    def watermark(self, collection: str) -> str | None:
        row = self.con.execute("SELECT updated_at FROM watermarks WHERE collection = ?", [collection]).fetchone()
        return row[0] if row else None

    def set_watermark(self, collection: str, updated_at: str, run_id: str) -> None:
        self._update_or_insert(
            "UPDATE watermarks SET updated_at = ?, run_id = ? WHERE collection = ?",
            [updated_at, run_id, collection],
            "INSERT INTO watermarks VALUES (?, ?, ?)",
            [collection, updated_at, run_id],
        )

    def clear_watermarks(self) -> None:
        self.con.execute("DELETE FROM watermarks")

    def latest_update_time(self, collection: str) -> str | None:
        """The newest `update_time` staged for a collection, as the API wrote it."""
        if not self.has_collection(collection):
            return None
        return self.con.execute(f"SELECT max(update_time) FROM {raw_table(collection)}").fetchone()[0]

    def replace_records(
        self, collection: str, records: list[dict[str, Any]], key: str = "id", *, where_json: tuple[str, list[str]] | None = None
    ) -> None:
        """Replace a collection's records in one transaction: all of them, or with `where_json`
        (a JSON field and its values) only the rows whose field has one of those values."""
        table = self.ensure_raw_table(collection)
        with self.transaction():
            if where_json is None:
                self.con.execute(f"DELETE FROM {table}")
            else:
                field_name, values = where_json
                self.con.execute(f"DELETE FROM {table} WHERE data->>'{field_name}' IN (SELECT unnest($v))", {"v": values})
            self._write_records(collection, table, records, key)

    def add_products_due(self, deal_ids: list[str]) -> None:
        """Deals whose product lines are to be read again (`products_due`)."""
        if deal_ids:
            self.con.execute("INSERT OR IGNORE INTO deal_products_due SELECT DISTINCT unnest($d)", {"d": deal_ids})

    def products_due(self) -> list[str]:
        """The deals whose product lines a sync has still to read, in id order."""
        rows = self.con.execute("SELECT deal_id FROM deal_products_due ORDER BY try_cast(deal_id AS BIGINT), deal_id").fetchall()
        return [r[0] for r in rows]

    def clear_products_due(self, deal_ids: list[str] | None = None) -> None:
        """These deals' product lines are read (all of them, without `deal_ids`)."""
        if deal_ids is None:
            self.con.execute("DELETE FROM deal_products_due")
        elif deal_ids:
            self.con.execute("DELETE FROM deal_products_due WHERE deal_id IN (SELECT unnest($d))", {"d": deal_ids})

    def staged_among(self, collection: str, ids: list[str]) -> dict[str, tuple[str | None, bool]]:
        """Those of `ids` staged for `collection`: id → (update_time as staged, deleted)."""
        rows = self.con.execute(
            f"SELECT id, update_time, coalesce(is_deleted, false) FROM {raw_table(collection)} WHERE id IN (SELECT unnest($ids))", {"ids": ids}
        ).fetchall()
        return {r[0]: (r[1], bool(r[2])) for r in rows}

    def start_present_ids(self) -> None:
        """Begin the list of ids a full read of a collection found (`add_present_ids`), kept in the
        state file rather than in memory, for `flag_missing_as_deleted`."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE present_ids (id VARCHAR)")

    def add_present_ids(self, ids: list[str]) -> None:
        self.con.execute("INSERT INTO present_ids SELECT unnest($ids)", {"ids": ids})

    def flag_missing_as_deleted(self, collection: str) -> int:
        """Mark staged records whose id `add_present_ids` did not list as deleted (in the flag and
        in the record, `is_deleted: true, vanished: true`, where the transform looks), dated the day
        they were found gone (`vanished_at`: their update_time dates their last edit); the list
        is dropped."""
        table = raw_table(collection)
        where = "WHERE NOT coalesce(is_deleted, false) AND id NOT IN (SELECT id FROM present_ids)"
        count = self.con.execute(f"SELECT count(*) FROM {table} {where}").fetchone()[0]
        if count:
            self.con.execute(f"UPDATE {table} SET is_deleted = true, data = json_merge_patch(data, ?) {where}", [jsontext.dumps(_vanished())])
        self.con.execute("DROP TABLE present_ids")
        return int(count)

    def mark_untraced_as_deleted(self, entity: str, prefix: str, collections: Sequence[str]) -> int:
        """Migrated records of `entity` (source ids with `prefix`; without one, those with none) that
        none of `collections`, each just read whole, holds: gone from Pipedrive with no trace in the
        state file (purged while only a full extract ran, which starts afresh). Each is staged in the
        first collection as deleted (`vanished`, with the day it was found gone), so that deletions
        reach it. Returns how many."""
        tables = [raw_table(c) for c in collections]
        owned = "starts_with(source_id, $p)" if prefix else "NOT contains(source_id, ':')"
        unstaged = " AND ".join(f"sid NOT IN (SELECT id FROM {t})" for t in tables)
        ids = [r[0] for r in self.con.execute(
            f"SELECT sid FROM (SELECT substr(source_id, length($p) + 1) AS sid FROM id_map WHERE entity = $e AND {owned}) "
            f"WHERE {unstaged} ORDER BY sid",
            {"e": entity, "p": prefix},
        ).fetchall()]
        if ids:
            flags = _vanished()
            records = [{"id": int(i) if i.isdigit() else i, **flags} for i in ids]
            with self.transaction():
                self._insert_columns(
                    tables[0], [ids, [jsontext.dumps(r) for r in records], [True] * len(ids), [None] * len(ids), [numeric_id(i) for i in ids]],
                    "c0, c1, c2, c3, $at, c4", {"at": now()}, replace=True,
                )
        return len(ids)

    def drop_raw(self, collections: Iterable[str]) -> None:
        """Drop what is staged of these collections (a full extract starting afresh)."""
        for collection in collections:
            table = raw_table(collection)
            self.con.execute(f"DROP TABLE IF EXISTS {table}")
            self._raw_tables.discard(table)
            self._fresh_tables.discard(table)

    def has_collection(self, collection: str) -> bool:
        table = raw_table(collection)
        if table in self._raw_tables:
            return True
        return bool(self.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])

    def iter_raw(self, collection: str) -> Iterator[dict[str, Any]]:
        """Stream a collection's records, those deleted in Pipedrive included, in id order (numeric
        ids sort numerically)."""
        if not self.has_collection(collection):
            return
        for (data,) in self.scan_in_id_order("data", raw_table(collection), "id"):
            yield jsontext.loads(data)

    def stream(self, sql: str, params: list[Any] | dict[str, Any] | None = None, batch_size: int = 2000) -> Iterator[tuple[Any, ...]]:
        """Rows of a query, fetched in batches on a cursor of their own (several streams can be
        read side by side, and while the main connection writes)."""
        cursor = self.con.cursor()
        cursor.execute(sql, params or [])
        while rows := cursor.fetchmany(batch_size):
            yield from rows

    def _keyset_pages(
        self, sql: str, params: dict[str, Any], after: Callable[[tuple[Any, ...]], dict[str, Any]]
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of `sql`, a query ordered by a key and limited to a page, page after page: each
        page a query of its own, run with the parameters `after(last row of the page before)`. A
        page is sorted in a small heap, and the caller may write to the tables between pages."""
        while rows := self.con.execute(sql, params).fetchall():
            yield from rows
            params = params | after(rows[-1])

    def scan_in_id_order(
        self, columns: str, table: str, key: str, where: str = "TRUE", params: list[Any] | None = None, batch_size: int = 2000
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of a big table in `order_key` order of its id column `key`, in windows of about
        `SORT_WINDOW` rows by the numeric `num_id` column, then the rows without one by text.

        DuckDB cannot sort a million wide rows under its memory cap (it fails rather than spill),
        and does not keep rows in insertion order either; a window's sort always fits."""
        bounds: list[int] = []
        for n, (num_id,) in enumerate(
            self.stream(f"SELECT num_id FROM {table} WHERE ({where}) AND num_id IS NOT NULL ORDER BY num_id", params, 20_000)
        ):
            if n % SORT_WINDOW == 0 and (not bounds or num_id > bounds[-1]):
                bounds.append(num_id)
        for i, low in enumerate(bounds):
            high = f"AND num_id < {bounds[i + 1]}" if i + 1 < len(bounds) else ""
            yield from self.stream(
                f"SELECT {columns} FROM {table} WHERE ({where}) AND num_id >= {low} {high} ORDER BY num_id, length({key}), {key}",
                params, batch_size,
            )
        yield from self.stream(f"SELECT {columns} FROM {table} WHERE ({where}) AND num_id IS NULL ORDER BY {key}", params, batch_size)

    def stream_ordered(
        self, columns: str, source: str, key: str, where: str = "TRUE", then: str = "", params: list[Any] | None = None,
        batch_size: int = 2000,
    ) -> Iterator[tuple[Any, ...]]:
        """`SELECT columns FROM source WHERE where`, ordered by the id expression `key` (numeric
        ids as numbers, shorter first on a tie, then the others as text) and then `then` (numeric
        expressions). Two queries, each sorting on numbers only where the rows are many: DuckDB
        spills a sort of large rows on number keys to disk, but runs out of memory at its cap on
        text keys."""
        numeric = f"regexp_full_match({key}, '{NUMERIC_ID}')"
        extra = f", {then}" if then else ""
        yield from self.stream(
            f"SELECT {columns} FROM {source} WHERE ({where}) AND {numeric} ORDER BY CAST({key} AS BIGINT), length({key}){extra}",
            params, batch_size,
        )
        yield from self.stream(
            f"SELECT {columns} FROM {source} WHERE ({where}) AND NOT {numeric} ORDER BY {key}{extra}", params, batch_size
        )

    def count_raw(self, collection: str) -> tuple[int, int]:
        """(records, deleted records) staged for a collection."""
        if not self.has_collection(collection):
            return (0, 0)
        total, deleted = self.con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE is_deleted) FROM {raw_table(collection)}"
        ).fetchone()
        return int(total), int(deleted)

    def deals_with_products(self) -> int:
        """Deals with at least one staged product line (each costs a share of a deal-products request)."""
        if not self.has_collection("deal_products"):
            return 0
        return int(self.con.execute(f"SELECT count(DISTINCT data->>'deal_id') FROM {raw_table('deal_products')}").fetchone()[0])

    def save_markdown(self, converted: list[tuple[str, str]], converter: str) -> None:
        """Keep converted note bodies: (md5 of the HTML, markdown), made by `converter`."""
        if converted:
            self.con.execute(
                "INSERT OR REPLACE INTO note_markdown SELECT unnest($h), $c, unnest($m)",
                {"h": [h for h, _ in converted], "c": converter, "m": [m for _, m in converted]},
            )

    def note_markdown(self, digests: set[str]) -> dict[str, str]:
        """Kept conversions by md5 of the HTML (every one asked for must be there)."""
        rows = self.con.execute(
            "SELECT content_hash, markdown FROM note_markdown WHERE content_hash IN (SELECT unnest($h))", {"h": sorted(digests)}
        ).fetchall()
        return dict(rows)

    # -- transform output -----------------------------------------------------------------
    def replace_transform_output(
        self,
        records: Iterable[tuple[str, str, str, str, str | None]],
        finish: Callable[[], tuple[list[dict[str, Any]], list[tuple[str, str, str, str, str]]]],
        chunk: int = 1000,
        *,
        only_dirty: bool = False,
    ) -> None:
        """Replace the transform output in one transaction. `records` (entity, source id, payload
        JSON text, payload hash, lookups) stream in, inserted `chunk` at a time (a chunk's rows are what
        is held of them at once); `finish` is called once they are consumed and returns the columns and
        issues they gave rise to.
        With `only_dirty`, the output of the records in `transform_dirty` is replaced and the rest kept."""
        with self.transaction():
            self.con.execute("DELETE FROM target_columns")
            for table in ("target_records", "transform_issues"):
                self.con.execute(
                    f"DELETE FROM {table} USING transform_dirty d WHERE {table}.entity = d.entity AND {table}.source_id = d.source_id"
                    if only_dirty else f"DELETE FROM {table}"
                )
            buffer: list[tuple[str, str, str, str, int | None, str | None]] = []
            for entity, sid, payload, digest, lookups in records:
                buffer.append((entity, sid, payload, digest, numeric_id(sid), lookups))
                if len(buffer) >= chunk:
                    self._note_row_sizes("target_records", (row[2] for row in buffer))
                    self._insert_rows("target_records", buffer, json_column=2)
                    buffer = []
            self._note_row_sizes("target_records", (row[2] for row in buffer))
            self._insert_rows("target_records", buffer, json_column=2)
            self._check_unique_targets()
            columns, issues = finish()
            if columns:
                self.con.execute(
                    "INSERT INTO target_columns SELECT unnest($e), unnest($k), unnest($s)::JSON",
                    {"e": [c["entity"] for c in columns], "k": [c["key"] for c in columns], "s": [json.dumps(c) for c in columns]},
                )
            self.add_transform_issues(issues)

    def note_unattached_issues(self, targets: Sequence[tuple[str, str, str]]) -> None:
        """Replace the issues of the notes that join no migrated record: every record the note names
        (`targets`: the note's JSON field, the record's entity, its id prefix) is deleted or missing
        in Pipedrive, or it names none. Found in SQL over the whole output, so a transform that made
        only some records again gives the same rows as one that made them all."""
        self.con.execute(f"DELETE FROM transform_issues WHERE rule = '{NOTE_UNATTACHED}'")
        if not self.has_collection("notes"):
            return
        # each note's JSON parsed once for all its fields (a note can be megabytes: see `_notes_for`)
        paths = [f"$.{field}" for field, _, _ in targets]
        attached = " OR ".join(
            f"coalesce('{prefix}' || (f[{i}]->>'$') IN (SELECT source_id FROM target_records WHERE entity = '{entity}'), false)"
            for i, (_, entity, prefix) in enumerate(targets, 1)
        )
        # a value that is no id names no record (`unreadable_owner_issues` reports it)
        named = ", ".join(
            f"CASE WHEN {_names_an_id(f'f[{i}]', prefix)} THEN '{entity[:-1]} {prefix}' || (f[{i}]->>'$') END"
            for i, (_, entity, prefix) in enumerate(targets, 1)
        )
        self.con.execute(
            f"INSERT INTO transform_issues SELECT 'notes', id, 'notes', '{NOTE_UNATTACHED}', 'Pipedrive note ' || id || "
            f"CASE WHEN n = '' THEN ' is attached to no contact, organization, deal or lead' "
            "ELSE ' is attached only to ' || n || ', deleted or missing in Pipedrive' END || '; not migrated' "
            f"FROM (SELECT id, concat_ws(', ', {named}) AS n FROM "
            f"(SELECT id, json_extract(data, {paths!r}) AS f FROM {raw_table('notes')} WHERE NOT coalesce(is_deleted, false)) "
            f"WHERE NOT ({attached}))"
        )

    def product_unattached_issues(self, deals: Sequence[str]) -> None:
        """Replace the issues of the deal product lines on a deal no collection of `deals` stages (missing
        in the account or the snapshot), or on none: joined by `deal_id`, they would be lost without a
        word. A line of a deleted deal goes with its deal, which is counted as deleted. Found in SQL over
        every line, as `note_unattached_issues` does notes."""
        self.con.execute(f"DELETE FROM transform_issues WHERE rule = '{PRODUCT_UNATTACHED}'")
        if not self.has_collection("deal_products"):
            return
        staged = " UNION ALL ".join(f"SELECT id FROM {raw_table(c)}" for c in deals if self.has_collection(c))
        # a value that is no id names no deal (`unreadable_owner_issues` reports it)
        self.con.execute(
            f"INSERT INTO transform_issues SELECT 'deal_products', l.id, 'deal_id', '{PRODUCT_UNATTACHED}', 'Pipedrive deal product ' || l.id || "
            "CASE WHEN l.deal IS NULL THEN ' is on no deal' ELSE ' is on deal ' || l.deal || ', missing in Pipedrive' END || '; not migrated' "
            f"FROM (SELECT id, data->>'deal_id' AS deal FROM {raw_table('deal_products')} WHERE NOT coalesce(is_deleted, false)) l "
            f"ANTI JOIN ({staged or 'SELECT NULL::VARCHAR AS id WHERE false'}) d ON d.id = l.deal "
            f"WHERE l.deal IS NULL OR regexp_full_match(l.deal, '{NUMERIC_ID}')"
        )

    def unreadable_owner_issues(self, grouped: Mapping[str, Sequence[tuple[str, str, str]]]) -> None:
        """Replace the issues of the notes and deal product lines whose field naming their record
        (`grouped`: collection → (JSON field, entity, id prefix)) holds no id: a fraction (5.5; a whole
        float was staged as its integer), text other than digits, a boolean, an object. Joined by the
        id's text, they would join no record without a word. A field with a prefix holds lead ids, which are text."""
        self.con.execute(f"DELETE FROM transform_issues WHERE rule = '{LINK_UNREADABLE}' AND entity IN (SELECT unnest($c))", {"c": list(grouped)})
        for collection, owners in grouped.items():
            numbered = [(name, entity) for name, entity, prefix in owners if not prefix]
            if not numbered or not self.has_collection(collection):
                continue
            paths = [f"$.{name}" for name, _ in numbered]
            fields = ", ".join(f"{{'name': '{name}', 'entity': '{entity[:-1]}', 'value': f[{i}]}}" for i, (name, entity) in enumerate(numbered, 1))
            shown = "CASE WHEN json_type(o.value) = 'VARCHAR' THEN '''' || (o.value->>'$') || '''' ELSE o.value::VARCHAR END"
            what = collection.replace("_", " ").removesuffix("s")
            unreadable = "(o.value->>'$') IS NOT NULL AND NOT " + _names_an_id("o.value", "")
            self.con.execute(  # each row's JSON parsed once for all its fields (a note can be megabytes: see `note_unattached_issues`)
                f"INSERT INTO transform_issues SELECT '{collection}', id, o.name, '{LINK_UNREADABLE}', "
                f"'Pipedrive {what} ' || id || ': ' || o.name || ' ' || {shown} || ' is no id; not on any ' || o.entity "
                f"FROM (SELECT id, unnest(list_filter([{fields}], lambda o: {unreadable})) AS o FROM (SELECT id, json_extract(data, {paths!r}) AS f "
                f"FROM {raw_table(collection)} WHERE NOT coalesce(is_deleted, false)))"
            )

    def _check_unique_targets(self) -> None:
        twice = self.con.execute(
            "SELECT entity, source_id, count(*) FROM target_records GROUP BY entity, source_id HAVING count(*) > 1 ORDER BY ALL LIMIT 1"
        ).fetchone()
        if twice:
            entity, sid, times = twice
            raise MigrateError(f"internal error: the transform gave {entity} {sid} {times} times; nothing was replaced")

    def add_transform_issues(self, issues: list[tuple[str, str, str, str, str]]) -> None:
        """(entity, source id, field, rule, detail) rows; inside `replace_transform_output` they
        join its transaction (the transform flushes them as it goes, to keep memory flat)."""
        self._insert_rows("transform_issues", issues)

    def transform_counts(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        """The transform output in numbers: target records by entity, records deleted in
        Pipedrive (skipped) by entity, issues by rule."""
        records = Counter(dict(self.con.execute("SELECT entity, count(*) FROM target_records GROUP BY entity").fetchall()))
        skipped = Counter(dict(self.con.execute(
            "SELECT entity, count(*) FROM transform_issues WHERE rule = 'deleted_in_pipedrive' GROUP BY entity"
        ).fetchall()))
        return records, skipped, Counter(dict(self.transform_issue_counts()))

    def _insert_rows(self, table: str, rows: list[tuple[Any, ...]], json_column: int | None = None) -> None:
        """Insert rows (tuples in the table's column order) in one statement; `json_column` is cast to JSON."""
        if rows:
            width = len(rows[0])
            select = ", ".join(f"c{i}" + ("::JSON" if i == json_column else "") for i in range(width))
            self._insert_columns(table, list(zip(*rows, strict=True)), select)

    def _insert_columns(
        self, table: str, columns: Sequence[Sequence[Any]], select: str, params: dict[str, Any] | None = None, *, replace: bool = False
    ) -> None:
        """Insert rows given column by column, named c0, c1, ... in `select`, in one statement; with
        `replace` a row replaces the one with its key. The columns go to DuckDB as NumPy arrays, which
        it reads where they lie: a list parameter per column, unnested, took 7–8 µs a row to bind for a
        page of 500 persons, the arrays 1.7."""
        page_columns = {f"c{i}": numpy.fromiter(c, dtype=object, count=len(c)) for i, c in enumerate(columns)}  # noqa: F841
        # DuckDB finds `page_columns` among the variables of the frame that calls it (a replacement
        # scan). Registering them as a view instead would keep every page's arrays alive until the
        # transaction ends: a transform's output is one transaction.
        self.con.execute(f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} SELECT {select} FROM page_columns", params)

    def target_columns(self) -> list[dict[str, Any]]:
        return [json.loads(s) for (s,) in self.con.execute("SELECT spec FROM target_columns ORDER BY entity, key").fetchall()]

    def iter_targets(self, entity: str, batch_size: int = 2000, *, among: str | None = None) -> Iterator[tuple[str, dict[str, Any], str]]:
        """An entity's target records in id order; with `among`, only those whose source id is in
        that table (made by `mark_changed_since_written` or `mark_load_candidates`)."""
        where = "entity = ?" + (f" AND source_id IN (SELECT source_id FROM {among})" if among else "")
        rows = self.scan_in_id_order(
            "source_id, payload, payload_hash", "target_records", "source_id", where, params=[entity], batch_size=batch_size
        )
        for source_id, payload, digest in rows:
            yield source_id, json.loads(payload), digest

    # Tables of source ids, not temporary ones, so that the scans' cursors see them. Digests, not
    # payloads, are joined: the joins' tables stay small at a million records.
    _CHANGED_SINCE_WRITTEN = (
        "SELECT t.source_id FROM target_records t LEFT JOIN id_map m ON m.entity = $e AND m.source_id = t.source_id "
        "LEFT JOIN (SELECT source_id, md5(payload::VARCHAR) AS digest FROM written_payloads WHERE entity = $e) w "
        "ON w.source_id = t.source_id WHERE t.entity = $e AND (m.source_id IS NULL OR w.digest IS NULL OR w.digest <> md5(t.payload::VARCHAR))"
    )

    def mark_changed_since_written(self, entity: str) -> None:
        """Table `targets_changed`: the entity's target records never written (or forgotten since),
        or whose payload is not the one last written."""
        self.con.execute(f"CREATE OR REPLACE TABLE targets_changed AS {self._CHANGED_SINCE_WRITTEN}", {"e": entity})

    def mark_load_candidates(self, entity: str, link_entities: dict[str, str]) -> int:
        """Table `load_candidates`: the entity's target records whose request body may differ from
        the one last written, given the same users and columns: those `mark_changed_since_written`
        marks, and those linking (payload links, by `link_entities`: link key → entity, and deal
        services) to a record whose id map row is missing or was written at or after theirs (its
        Customermates id may be new). Returns how many."""
        # In steps, each with one join's table in memory: as one query (a union of both parts) it
        # ran out of 160 MB at a million records.
        self.con.execute(f"CREATE OR REPLACE TABLE load_candidates AS {self._CHANGED_SINCE_WRITTEN}", {"e": entity})
        links = ", ".join(f'"{key}": ["VARCHAR"]' for key in link_entities)
        linked = " UNION ALL ".join(
            f"SELECT source_id, '{linked_entity}' AS entity, unnest(p.links.{key}) AS pid FROM parsed"
            for key, linked_entity in link_entities.items()
        )
        self.con.execute(
            "CREATE OR REPLACE TABLE load_links AS WITH parsed AS (SELECT source_id, from_json(payload, "
            f"'{{\"links\": {{{links}}}, \"services\": [[\"VARCHAR\"]]}}') AS p FROM target_records WHERE entity = $e) "
            f"{linked} UNION ALL SELECT source_id, 'services', unnest(list_transform(p.services, lambda line: line[1])) FROM parsed",
            {"e": entity},
        )
        self.con.execute(
            "CREATE OR REPLACE TABLE load_links AS SELECT l.source_id, l.entity, l.pid, m.written_at FROM load_links l "
            "JOIN id_map m ON m.entity = $e AND m.source_id = l.source_id",
            {"e": entity},
        )
        self.con.execute(
            "INSERT INTO load_candidates SELECT DISTINCT l.source_id FROM load_links l "
            "LEFT JOIN id_map lm ON lm.entity = l.entity AND lm.source_id = l.pid "
            "WHERE (lm.source_id IS NULL OR lm.written_at >= l.written_at) AND l.source_id NOT IN (SELECT source_id FROM load_candidates)"
        )
        self.con.execute("DROP TABLE load_links")
        return int(self.con.execute("SELECT count(*) FROM load_candidates").fetchone()[0])

    def referenced_users(self) -> Counter[str]:
        """Pipedrive user id → the target records naming it among their users."""
        return Counter(dict(self.con.execute(
            "SELECT uid, count(*) FROM (SELECT unnest(from_json(payload->'users', '[\"VARCHAR\"]')) AS uid FROM target_records) "
            "GROUP BY uid"
        ).fetchall()))

    def meta(self, key: str) -> str | None:
        """A value the state file keeps about itself (None: not set)."""
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or, with None, forget) a `meta` value."""
        self.con.execute("DELETE FROM meta WHERE key = ?", [key])
        if value is not None:
            self.con.execute("INSERT INTO meta VALUES (?, ?)", [key, value])

    def count_targets_outside(self, entity: str, table: str, excluding: Iterable[str] = ()) -> int:
        """The entity's target records whose source id is neither in `table` nor in `excluding`."""
        return int(self.con.execute(
            f"SELECT count(*) FROM target_records WHERE entity = $e AND source_id NOT IN (SELECT source_id FROM {table}) "
            "AND source_id NOT IN (SELECT unnest($x::VARCHAR[]))",
            {"e": entity, "x": sorted(excluding)},
        ).fetchone()[0])

    def count_targets(self, entity: str) -> int:
        return int(self.con.execute("SELECT count(*) FROM target_records WHERE entity = ?", [entity]).fetchone()[0])

    def target_fields(self, entity: str, source_id: str) -> dict[str, Any] | None:
        """One transformed record's built-in fields (its name), or None."""
        number = numeric_id(source_id)
        # without a key, num_id (sorted as written) lets DuckDB skip the row groups that cannot hold it
        row = self.con.execute(
            "SELECT payload->'fields' FROM target_records WHERE entity = ? AND source_id = ? AND "
            + ("num_id = ?" if number is not None else "num_id IS NULL"),
            [entity, source_id, *([number] if number is not None else [])],
        ).fetchone()
        return json.loads(row[0]) if row and row[0] is not None else None

    def payloads_for(self, entity: str, source_ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """(source id, payload) of those of `source_ids` transformed, by source id."""
        rows = self.con.execute(
            "SELECT source_id, payload FROM target_records WHERE entity = $e AND source_id IN (SELECT unnest($s)) ORDER BY source_id",
            {"e": entity, "s": source_ids},
        ).fetchall()
        return [(source_id, json.loads(payload)) for source_id, payload in rows]

    def iter_target_batches(self, entity: str, *, among: str | None = None) -> Iterator[list[tuple[str, dict[str, Any], str]]]:
        """`iter_targets` in lists of `TARGET_BATCH`: what a batch needs from other tables (id map,
        last written payloads, the target's records) is read per batch, never for the whole account."""
        yield from batched(self.iter_targets(entity, among=among), TARGET_BATCH)

    def transform_issues(self, *, rule: str | None = None, entity: str | None = None, limit: int | None = None) -> list[dict[str, str]]:
        """The transform's issues (those of one rule, of one entity, the first `limit`), by entity, rule and record."""
        cols = ("entity", "source_id", "field", "rule", "detail")
        where = " AND ".join(c for c, v in (("rule = $rule", rule), ("entity = $entity", entity)) if v is not None) or "TRUE"
        params = {k: v for k, v in (("rule", rule), ("entity", entity)) if v is not None}
        rows = self.con.execute(
            f"SELECT {', '.join(cols)} FROM transform_issues WHERE {where} ORDER BY entity, rule, source_id"
            + (f" LIMIT {int(limit)}" if limit is not None else ""),
            params,
        ).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def transform_issue_counts(self) -> list[tuple[str, int]]:
        """(rule, issues), most first; ties in the order `transform_issues` meets the rules."""
        return self.con.execute(
            "SELECT rule, count(*) FROM transform_issues GROUP BY rule ORDER BY count(*) DESC, min(entity), rule"
        ).fetchall()

    # -- load state -----------------------------------------------------------------------
    def column_map(self) -> dict[tuple[str, str], dict[str, Any]]:
        rows = self.con.execute("SELECT entity, key, column_id, label, type, options, pipedrive_options FROM column_map").fetchall()
        return {
            (e, k): {
                "id": cid, "label": label, "type": typ, "options": json.loads(opts) if opts else None,
                "pipedrive_options": json.loads(pipedrive) if pipedrive else None,
            }
            for e, k, cid, label, typ, opts, pipedrive in rows
        }

    def save_column(self, entity: str, key: str, column: dict[str, Any], created_by_run: str | None) -> None:
        """`created_by_run`: the run that made the column, None for one found there. Another column than
        the row had takes that run, or the run that made it if it was a replaced one (taken back)."""
        values = [column["id"], column["label"], column["type"], json.dumps(column.get("options")), json.dumps(column.get("pipedrive_options"))]
        maker = "coalesce($run, (SELECT created_by_run FROM replaced_columns WHERE column_id = $id))"
        params = dict(zip(("id", "label", "type", "options", "pipedrive"), values, strict=True)) | {"run": created_by_run, "e": entity, "k": key}
        with self.transaction():  # one commit, where each statement was one
            self._update_or_insert(
                "UPDATE column_map SET column_id = $id, label = $label, type = $type, options = $options, pipedrive_options = $pipedrive, "
                f"created_by_run = CASE WHEN column_id = $id THEN coalesce(created_by_run, $run) ELSE {maker} END WHERE entity = $e AND key = $k",
                params,
                "INSERT INTO column_map (entity, key, column_id, label, type, options, pipedrive_options, created_by_run) "
                f"VALUES ($e, $k, $id, $label, $type, $options, $pipedrive, {maker})",
                params,
            )
            self.con.execute("DELETE FROM replaced_columns WHERE column_id = ?", [column["id"]])
            self.con.execute("DELETE FROM pending_columns WHERE entity = ? AND key = ?", [entity, key])

    def record_pending_column(self, entity: str, key: str, spec: dict[str, Any], there_before: list[str], run_id: str) -> None:
        """A column about to be made from `spec` (label, type, currency, allow_multiple), when the
        entity's columns were those of `there_before` (ids). A DELETE and an INSERT, where INSERT OR
        REPLACE took 3–4 ms: call it inside `transaction()`, which makes them one."""
        self.con.execute("DELETE FROM pending_columns WHERE entity = ? AND key = ?", [entity, key])
        self.con.execute(
            "INSERT INTO pending_columns (entity, key, label, type, run_id, spec, there_before) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [entity, key, spec["label"], spec["type"], run_id, json.dumps(spec), json.dumps(there_before)],
        )

    def pending_columns(self) -> list[dict[str, Any]]:
        rows = self.con.execute(
            "SELECT entity, key, label, type, run_id, spec, there_before FROM pending_columns ORDER BY entity, key"
        ).fetchall()
        return [
            {
                "entity": entity, "key": key, "label": label, "type": column_type, "run_id": run_id,
                "spec": json.loads(spec) if spec else None, "there_before": set(json.loads(before)) if before else set(),
            }
            for entity, key, label, column_type, run_id, spec, before in rows
        ]

    def forget_pending_column(self, entity: str, key: str) -> None:
        self.con.execute("DELETE FROM pending_columns WHERE entity = ? AND key = ?", [entity, key])

    def replace_column(self, entity: str, key: str, label: str) -> None:
        """Keep the column saved for (entity, key), which a new one is about to replace, as replaced
        (under `label`, its label from now on), with the run that made it."""
        self.con.execute(
            "INSERT OR REPLACE INTO replaced_columns SELECT column_id, entity, key, ?, type, created_by_run FROM column_map "
            "WHERE entity = ? AND key = ?",
            [label, entity, key],
        )

    def replaced_columns(self) -> dict[tuple[str, str], set[str]]:
        """(entity, key) → the ids of the columns replaced for it."""
        rows = self.con.execute("SELECT entity, key, column_id FROM replaced_columns").fetchall()
        found: dict[tuple[str, str], set[str]] = {}
        for entity, key, column_id in rows:
            found.setdefault((entity, key), set()).add(column_id)
        return found

    def relabel_written_options(self, entity: str, key: str, labels: dict[str, str]) -> None:
        """Give the payloads as last written the new labels of options renamed in place (`labels`:
        old → new): the records hold the same option, so their payloads are no change to write."""
        ids = [
            sid for (sid,) in self.con.execute(
                "SELECT source_id FROM written_payloads WHERE entity = $e AND payload->'values'->>$k IN (SELECT unnest($old))",
                {"e": entity, "k": key, "old": list(labels)},
            ).fetchall()
        ]
        for start in range(0, len(ids), 2000):
            payloads = self.written_for(entity, ids[start:start + 2000])
            for payload in payloads.values():
                payload["values"][key] = labels[payload["values"][key]]
            self._save_written_payloads(entity, list(payloads.items()))

    def _save_written_payloads(self, entity: str, payloads: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Keep (source id, payload) as the payloads last written of these records."""
        self.con.execute(
            "INSERT OR REPLACE INTO written_payloads SELECT $e, unnest($s), unnest($p)::JSON",
            {"e": entity, "s": [sid for sid, _ in payloads], "p": [json.dumps(p, ensure_ascii=False, sort_keys=True) for _, p in payloads]},
        )

    def id_map_for(self, entity: str, source_ids: list[str]) -> dict[str, tuple[str, str]]:
        """source id → (target id, payload hash) for those of `source_ids` migrated."""
        rows = self.con.execute(
            "SELECT source_id, target_id, payload_hash FROM id_map WHERE entity = $e AND source_id IN (SELECT unnest($s))",
            {"e": entity, "s": source_ids},
        ).fetchall()
        return {s: (t, h) for s, t, h in rows}

    def written_for(self, entity: str, source_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The payloads last written for those of `source_ids` that were written."""
        rows = self.con.execute(
            "SELECT source_id, payload FROM written_payloads WHERE entity = $e AND source_id IN (SELECT unnest($s))",
            {"e": entity, "s": source_ids},
        ).fetchall()
        return {s: json.loads(p) for s, p in rows}

    def note_written(self, entity: str, source_ids: list[str]) -> None:
        """These records were written now by a write that is no payload's (a sync's deletion mark, taken
        off): an `updatedAt` from it is no edit made in Customermates (`undo`)."""
        self.con.execute(
            "UPDATE id_map SET written_at = $at WHERE entity = $e AND source_id IN (SELECT unnest($s))",
            {"at": now(), "e": entity, "s": source_ids},
        )

    def notes_read_for(self, entity: str, source_ids: list[str]) -> dict[str, str]:
        """The digests of the notes Customermates answered the last write of these records with (those known)."""
        return self._column_by_source_id("written_notes", "digest", entity, source_ids)

    def relations_written_for(self, entity: str, source_ids: list[str]) -> dict[str, dict[str, list[Any]]]:
        """The relations the last write of these records set (those known)."""
        return {sid: json.loads(r) for sid, r in self._column_by_source_id("written_relations", "relations", entity, source_ids).items()}

    def _column_by_source_id(self, table: str, column: str, entity: str, source_ids: list[str]) -> dict[str, str]:
        rows = self.con.execute(
            f"SELECT source_id, {column} FROM {table} WHERE entity = $e AND source_id IN (SELECT unnest($s))",
            {"e": entity, "s": source_ids},
        ).fetchall()
        return dict(rows)

    def forget(self, entity: str, source_ids: list[str]) -> None:
        """Drop what we know of these records' target copies, so they are created again."""
        self._drop_identity(entity, source_ids)

    def _drop_identity(self, entity: str, source_ids: list[str]) -> None:
        for table in ("id_map", "written_payloads", "written_notes", "written_relations"):
            self.con.execute(
                f"DELETE FROM {table} WHERE entity = $entity AND source_id IN (SELECT unnest($s))", {"entity": entity, "s": source_ids}
            )

    # -- undo -----------------------------------------------------------------------------
    def latest_creating_run(self) -> str | None:
        """The most recent run that created records still in the id map; with none left, the most
        recent that created custom columns. A sync that made only a column (a new Pipedrive field, the
        deletion mark) is undone after the records, which use its columns until they are gone."""
        for creators in (
            "SELECT coalesce(created_by_run, run_id) FROM id_map",
            "SELECT created_by_run FROM column_map UNION SELECT created_by_run FROM replaced_columns",
        ):
            row = self.con.execute(f"SELECT run_id FROM runs WHERE run_id IN ({creators}) ORDER BY started_at DESC LIMIT 1").fetchone()
            if row:
                return row[0]
        return None

    def created_count(self, run_id: str, entity: str) -> int:
        """How many records of `entity` in the id map `run_id` created (rows from before
        `created_by_run` existed count for the run that last wrote them)."""
        return int(
            self.con.execute(
                "SELECT count(*) FROM id_map WHERE entity = ? AND coalesce(created_by_run, run_id) = ?", [entity, run_id]
            ).fetchone()[0]
        )

    def start_undo_target(self) -> None:
        """Begin a read of the target for `plan_undo` (`add_undo_target`), kept in the state file."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE undo_target (seq BIGINT, target_id VARCHAR, created_at VARCHAR, updated_at VARCHAR)")

    def add_undo_target(self, rows: list[tuple[int, str, str | None, str | None]]) -> None:
        """(position in the read, target id, createdAt, updatedAt) rows."""
        self._insert_rows("undo_target", rows)

    def undo_unseen(self, run_id: str, entity: str) -> list[tuple[str, str]]:
        """(source id, target id) of the records of `entity` that `run_id` created and the target
        read (`add_undo_target`) did not see."""
        return self.con.execute(
            "SELECT source_id, target_id FROM id_map WHERE entity = $e AND coalesce(created_by_run, run_id) = $run "
            "AND target_id NOT IN (SELECT target_id FROM undo_target) ORDER BY source_id",
            {"e": entity, "run": run_id},
        ).fetchall()

    def plan_undo(self, run_id: str, entity: str) -> None:
        """Add the records of `entity` that `run_id` created to `undo_records`, numbered in source id
        order (as text) after those there: bucket 'delete' with the timestamps of the target read
        (`add_undo_target`; a record read twice counts as last read), or 'gone' when it was not
        read. The read is dropped."""
        self.con.execute(
            "INSERT INTO undo_records SELECT $e, (SELECT coalesce(max(seq), 0) FROM undo_records) + row_number() OVER (ORDER BY m.source_id), "
            "m.source_id, m.target_id, CASE WHEN t.target_id IS NULL THEN 'gone' ELSE 'delete' END, t.created_at, t.updated_at, "
            "m.written_at, CASE WHEN t.target_id IS NULL THEN 'already gone' ELSE 'would delete' END, NULL "
            "FROM id_map m LEFT JOIN (SELECT target_id, arg_max_null(created_at, seq) AS created_at, "
            "arg_max_null(updated_at, seq) AS updated_at FROM undo_target GROUP BY target_id) t ON t.target_id = m.target_id "
            "WHERE m.entity = $e AND coalesce(m.created_by_run, m.run_id) = $run",
            {"e": entity, "run": run_id},
        )
        self.con.execute("DROP TABLE undo_target")

    def clear_undo_records(self) -> None:
        self.con.execute("DELETE FROM undo_records")

    def undo_records(self, entity: str, bucket: str, action: str | None = None, batch_size: int = 2000) -> Iterator[dict[str, Any]]:
        """The last undo's records of `entity` in one bucket (of this action), in order; read a batch
        at a time, each batch a query of its own, so that the undo can mark them as it goes."""
        cols = ("seq", "entity", "source_id", "target_id", "bucket", "created_at", "updated_at", "written_at", "action", "message")
        where = "entity = $e AND bucket = $b AND seq > $after" + (" AND action = $a" if action is not None else "")
        params: dict[str, Any] = {"e": entity, "b": bucket, "after": 0} | ({"a": action} if action is not None else {})
        sql = f"SELECT {', '.join(cols)} FROM undo_records WHERE {where} ORDER BY seq LIMIT {int(batch_size)}"
        for row in self._keyset_pages(sql, params, lambda last: {"after": last[0]}):
            yield dict(zip(cols, row, strict=True))

    def mark_undo_edited(self, seqs: list[int], action: str) -> None:
        """Move these records of the last undo to bucket 'edited', with `action`."""
        if seqs:
            self.con.execute(
                "UPDATE undo_records SET bucket = 'edited', action = $a WHERE seq IN (SELECT unnest($s))", {"a": action, "s": seqs}
            )

    def set_undo_outcomes(self, rows: list[tuple[int, str, str | None]]) -> None:
        """(seq, action, message) of records of the last undo, once carried out."""
        if rows:
            self.con.execute(
                "UPDATE undo_records SET action = o.action, message = o.message "
                "FROM (SELECT unnest($s) AS seq, unnest($a) AS action, unnest($m) AS message) o WHERE undo_records.seq = o.seq",
                {"s": [r[0] for r in rows], "a": [r[1] for r in rows], "m": [r[2] for r in rows]},
            )

    def undo_counts(self) -> dict[str, dict[str, int]]:
        """Per entity, the last undo's records: all, per bucket (delete, edited, gone) and per
        outcome (deleted, failed, already_gone)."""
        rows = self.con.execute(
            "SELECT entity, count(*), count(*) FILTER (WHERE bucket = 'delete'), count(*) FILTER (WHERE bucket = 'edited'), "
            "count(*) FILTER (WHERE bucket = 'gone'), count(*) FILTER (WHERE action = 'deleted'), "
            "count(*) FILTER (WHERE action = 'failed'), count(*) FILTER (WHERE action = 'already gone') FROM undo_records GROUP BY entity"
        ).fetchall()
        keys = ("records", "delete", "edited", "gone", "deleted", "failed", "already_gone")
        return {row[0]: dict(zip(keys, map(int, row[1:]), strict=True)) for row in rows}

    def record_undone(self, entity: str, rows: list[tuple[str, str]], run_id: str, outcome: str) -> None:
        """Log (source_id, target_id) rows as undone and drop them from the id map and from the target
        as last read (a sync reads only what changed there, and would hold them on), in one transaction."""
        if not rows:
            return
        with self.transaction():
            self.con.execute(
                "INSERT INTO undone SELECT $entity, unnest($s), unnest($t), $run, $at, $outcome",
                {"entity": entity, "s": [r[0] for r in rows], "t": [r[1] for r in rows], "run": run_id, "at": now(), "outcome": outcome},
            )
            self._drop_identity(entity, [r[0] for r in rows])
            self.drop_from_target_snapshot(entity, [r[1] for r in rows])

    def undone_among(self, entity: str, source_ids: list[str]) -> set[str]:
        """Those of `source_ids` a `migrate undo` removed."""
        rows = self.con.execute(
            "SELECT DISTINCT source_id FROM undone WHERE entity = $e AND source_id IN (SELECT unnest($s))", {"e": entity, "s": source_ids}
        ).fetchall()
        return {r[0] for r in rows}

    def columns_created_by(self, run_id: str) -> list[dict[str, Any]]:
        """The columns `run_id` made, those a later one replaced too."""
        rows = self.con.execute(
            "SELECT entity, key, column_id, label, type FROM column_map WHERE created_by_run = $run "
            "UNION ALL SELECT entity, key, column_id, label, type FROM replaced_columns WHERE created_by_run = $run ORDER BY entity, label",
            {"run": run_id},
        ).fetchall()
        return [dict(zip(("entity", "key", "id", "label", "type"), r, strict=True)) for r in rows]

    def forget_column(self, column_id: str) -> None:
        for table in ("column_map", "replaced_columns"):
            self.con.execute(f"DELETE FROM {table} WHERE column_id = ?", [column_id])

    def migrated_count(self, entity: str) -> int:
        return int(self.con.execute("SELECT count(*) FROM id_map WHERE entity = ?", [entity]).fetchone()[0])

    def record_pending(self, entity: str, operation: str, source_ids: list[str], hashes: list[str], run_id: str) -> str:
        batch_id = uuid.uuid4().hex
        self.con.execute(
            "INSERT INTO pending_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
            [batch_id, entity, operation, json.dumps(source_ids), json.dumps(hashes), run_id, now()],
        )
        return batch_id

    def pending_batches(self, entity: str | None = None, operation: str | None = None) -> list[dict[str, Any]]:
        """The batches whose outcome no run has settled, oldest first; of `entity`, of `operation`, when given."""
        rows = self.con.execute(
            "SELECT batch_id, entity, operation, source_ids, hashes, run_id FROM pending_batches "
            "WHERE ($e IS NULL OR entity = $e) AND ($o IS NULL OR operation = $o) ORDER BY created_at",
            {"e": entity, "o": operation},
        ).fetchall()
        return [
            {"batch_id": b, "entity": e, "operation": o, "source_ids": json.loads(s), "hashes": json.loads(h), "run_id": r}
            for b, e, o, s, h, r in rows
        ]

    def commit_batch(
        self, batch_id: str | None, entity: str, written: list[tuple[str, str, str]], run_id: str,
        payloads: Sequence[tuple[str, dict[str, Any]]] = (),
        notes_read: Sequence[tuple[str, str]] = (),
        *,
        wrote: bool = True,
        adopted: bool = False,
        relations: Sequence[tuple[str, dict[str, list[Any]]]] = (),
    ) -> None:
        """Store (source_id, target_id, hash) rows and the transformed payloads written (the plan's
        'written' state), with the digests of the notes the write's answer gave (`notes_read`:
        source id, digest; a payload's record without one has its notes unknown) and the relations
        it set (`relations`: source id, relations; a payload's record without them has them unknown),
        and clear the pending intent, in one transaction. Without `wrote` (a conflict kept as
        Customermates has it) the rows keep their `written_at`: nothing was written, and an edit made
        there before stays one for `undo`. With `adopted` (records of the uncertain batch `batch_id`
        found in Customermates) `written_at` is when the batch was recorded, before it was sent: its
        write came at an instant not known, and the settling, later, would make an edit made there
        meanwhile look older than our write.

        `created_by_run` is set when a row gets a new target id (a create, or an adoption after an
        uncertain create: then the run that sent the pending batch) and kept when only the hash changes."""
        with self.transaction():
            if written:
                sender = self.con.execute("SELECT run_id, created_at FROM pending_batches WHERE batch_id = ?", [batch_id]).fetchone() if batch_id else None
                self.con.execute(
                    "INSERT INTO id_map (entity, source_id, target_id, payload_hash, run_id, written_at, created_by_run) "
                    "SELECT $entity, unnest($s), unnest($t), unnest($h), $run, $at, $creator "
                    "ON CONFLICT (entity, source_id) DO UPDATE SET target_id = excluded.target_id, "
                    "payload_hash = excluded.payload_hash, run_id = excluded.run_id, "
                    "written_at = CASE WHEN $wrote THEN excluded.written_at ELSE id_map.written_at END, "
                    "created_by_run = CASE WHEN id_map.target_id = excluded.target_id "
                    "THEN coalesce(id_map.created_by_run, id_map.run_id) ELSE excluded.created_by_run END",
                    {
                        "entity": entity,
                        "s": [w[0] for w in written],
                        "t": [w[1] for w in written],
                        "h": [w[2] for w in written],
                        "run": run_id,
                        "at": sender[1] if adopted else now(),
                        "creator": (sender[0] if sender and sender[0] else run_id),
                        "wrote": wrote,
                    },
                )
                self.con.execute(
                    "DELETE FROM quarantine WHERE entity = $entity AND source_id IN (SELECT unnest($s))",
                    {"entity": entity, "s": [w[0] for w in written]},
                )
            if payloads:
                self._save_written_payloads(entity, payloads)
                for table in ("written_notes", "written_relations"):
                    self.con.execute(
                        f"DELETE FROM {table} WHERE entity = $e AND source_id IN (SELECT unnest($s))", {"e": entity, "s": [sid for sid, _ in payloads]}
                    )
            if notes_read:
                self.con.execute(
                    "INSERT OR REPLACE INTO written_notes SELECT $e, unnest($s), unnest($d)",
                    {"e": entity, "s": [sid for sid, _ in notes_read], "d": [digest for _, digest in notes_read]},
                )
            if relations:
                self.con.execute(
                    "INSERT OR REPLACE INTO written_relations SELECT $e, unnest($s), unnest($r)::JSON",
                    {"e": entity, "s": [sid for sid, _ in relations], "r": [json.dumps(r, sort_keys=True) for _, r in relations]},
                )
            if batch_id:
                self.con.execute("DELETE FROM pending_batches WHERE batch_id = ?", [batch_id])

    # -- plans --------------------------------------------------------------------------------
    def changed_since_plan(self, planned: Iterable[tuple[str, str, str]], shown: int) -> tuple[int, list[tuple[str, str]]]:
        """Records whose transformed payload is not the one planned (entity, source id, hash),
        or that are new or gone since: how many, and the first `shown`."""
        self.con.execute("CREATE OR REPLACE TEMP TABLE planned_hashes (entity VARCHAR, source_id VARCHAR, payload_hash VARCHAR)")
        for rows in batched(planned, 5000):
            self._insert_rows("planned_hashes", rows)
        differing = (
            "SELECT coalesce(p.entity, t.entity) AS entity, coalesce(p.source_id, t.source_id) AS source_id FROM planned_hashes p "
            "FULL OUTER JOIN target_records t ON p.entity = t.entity AND p.source_id = t.source_id "
            "WHERE p.payload_hash IS DISTINCT FROM t.payload_hash"
        )
        try:
            count = self.con.execute(f"SELECT count(*) FROM ({differing})").fetchone()[0]
            first = self.con.execute(f"{differing} ORDER BY 1, 2 LIMIT {int(shown)}").fetchall()
        finally:
            self.con.execute("DROP TABLE planned_hashes")
        return int(count), [(e, s) for e, s in first]

    def keep_planned_target(self, fingerprint: str) -> None:
        """Keep what the target held (the snapshot whose fingerprint is `fingerprint`) as the plan's."""
        with self.transaction():
            self.con.execute("DELETE FROM planned_target")
            self.con.execute("INSERT INTO planned_target SELECT entity, target_id, pid, dto->>'updatedAt' FROM target_snapshot")
            self.set_meta(PLANNED_TARGET_KEY, fingerprint)

    def target_changed_since_plan(self, fingerprint: str, shown: int) -> tuple[int, list[str]] | None:
        """The target records created, edited or deleted since the plan whose target fingerprint is
        `fingerprint` was made (the snapshot against `planned_target`): how many, and the first
        `shown` named; None when this state file did not keep that plan's target."""
        if self.meta(PLANNED_TARGET_KEY) != fingerprint:
            return None
        differing = (
            "SELECT coalesce(s.entity, p.entity) AS entity, coalesce(s.pid, p.pid) AS pid, coalesce(s.target_id, p.target_id) AS target_id, "
            "CASE WHEN p.target_id IS NULL THEN 'created' WHEN s.target_id IS NULL THEN 'deleted' ELSE 'edited' END AS what "
            "FROM planned_target p FULL OUTER JOIN (SELECT entity, target_id, pid, dto->>'updatedAt' AS updated_at FROM target_snapshot) s "
            "ON p.entity = s.entity AND p.target_id = s.target_id WHERE p.updated_at IS DISTINCT FROM s.updated_at"
        )
        count = int(self.con.execute(f"SELECT count(*) FROM ({differing})").fetchone()[0])
        first = self.con.execute(f"{differing} ORDER BY 1, 2 NULLS LAST, 3 LIMIT {int(shown)}").fetchall()
        return count, [f"{e} {pid} {what}" if pid else f"{e} {target} (Customermates id) {what}" for e, pid, target, what in first]

    def clear_plan_records(self) -> None:
        self.con.execute("DELETE FROM plan_records")

    def add_plan_records(self, rows: list[tuple[str, int, str, str]]) -> None:
        """(entity, position in the plan, action, the record's plan entry as JSON) rows."""
        self._insert_rows("plan_records", rows, json_column=3)

    def plan_records(self, entity: str, actions: list[str] | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """An entity's plan entries (of these actions), in plan order; streamed."""
        where = "entity = $e" + (" AND action IN (SELECT unnest($a))" if actions is not None else "")
        params: dict[str, Any] = {"e": entity} | ({"a": actions} if actions is not None else {})
        sql = f"SELECT item FROM plan_records WHERE {where} ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else "")
        for (item,) in self.stream(sql, params):
            yield json.loads(item)

    def plan_record_count(self, entity: str, actions: list[str]) -> int:
        row = self.con.execute(
            "SELECT count(*) FROM plan_records WHERE entity = $e AND action IN (SELECT unnest($a))", {"e": entity, "a": actions}
        ).fetchone()
        return int(row[0]) if row else 0

    def plan_actions(self) -> list[str]:
        return [a for (a,) in self.con.execute("SELECT DISTINCT action FROM plan_records ORDER BY action").fetchall()]

    # -- the target as last read ---------------------------------------------------------
    def clear_target_snapshot(self) -> None:
        self.con.execute("DELETE FROM target_snapshot")

    def add_to_target_snapshot(self, entity: str, rows: list[tuple[int, str, str | None, str]]) -> None:
        """(position in the read, target id, Pipedrive ID or None, the record as JSON) rows."""
        if rows:
            self._note_row_sizes("target_snapshot", (r[3] for r in rows))
            self.con.execute(
                "INSERT INTO target_snapshot SELECT $e, unnest($n), unnest($t), unnest($p), unnest($d)::JSON",
                {"e": entity, "n": [r[0] for r in rows], "t": [r[1] for r in rows], "p": [r[2] for r in rows], "d": [r[3] for r in rows]},
            )

    def merge_into_target_snapshot(self, entity: str, rows: list[tuple[int, str, str | None, str]]) -> None:
        """Rows as for `add_to_target_snapshot`, read again since: each replaces the record of its
        target id (which keeps its place in the read order), a new one comes after the others."""
        if not rows:
            return
        self._note_row_sizes("target_snapshot", (r[3] for r in rows))
        with self.transaction():
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE snapshot_merge AS SELECT * FROM (SELECT unnest($n) AS n, unnest($t) AS target_id, "
                "unnest($p) AS pid, unnest($d)::JSON AS dto) QUALIFY row_number() OVER (PARTITION BY target_id ORDER BY n DESC) = 1",
                {"n": [r[0] for r in rows], "t": [r[1] for r in rows], "p": [r[2] for r in rows], "d": [r[3] for r in rows]},
            )
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE snapshot_merged AS SELECT coalesce(old.seq, (SELECT coalesce(max(seq), -1) + 1 "
                "FROM target_snapshot) + m.n) AS seq, m.target_id, m.pid, m.dto FROM snapshot_merge m "
                "LEFT JOIN target_snapshot old ON old.entity = $e AND old.target_id = m.target_id",
                {"e": entity},
            )
            self.con.execute(
                "DELETE FROM target_snapshot WHERE entity = $e AND target_id IN (SELECT target_id FROM snapshot_merged)", {"e": entity}
            )
            self.con.execute("INSERT INTO target_snapshot SELECT $e, seq, target_id, pid, dto FROM snapshot_merged", {"e": entity})
            self.con.execute("DROP TABLE snapshot_merge")
            self.con.execute("DROP TABLE snapshot_merged")

    def drop_from_target_snapshot(self, entity: str, target_ids: list[str]) -> None:
        """Records this tool deleted in the target: no longer held."""
        if target_ids:
            self.con.execute(
                "DELETE FROM target_snapshot WHERE entity = $e AND target_id IN (SELECT unnest($t))", {"e": entity, "t": target_ids}
            )

    def note_deleted_in_target(self, entity: str, target_ids: list[str]) -> None:
        """Records a user deleted in the target, found so without a whole read (which would not have seen
        them): the server refused a link to one, or a record read again lost its link to one, looked up
        by its id. No longer held, and known gone (`note_gone`)."""
        with self.transaction():
            self.drop_from_target_snapshot(entity, target_ids)
            self.con.execute(
                "INSERT OR IGNORE INTO target_gone SELECT $e, t.target_id, m.source_id FROM (SELECT unnest($t) AS target_id) t "
                "LEFT JOIN id_map m ON m.entity = $e AND m.target_id = t.target_id",
                {"e": entity, "t": target_ids},
            )

    def marked_but_live(self, entity: str, column_id: str) -> list[tuple[str, str]]:
        """(source id, target id) of migrated records whose target record, as last read, has a value in
        `column_id` (the deletion mark) while their Pipedrive record is live (transformed), by source id."""
        rows = self.con.execute(
            "SELECT m.source_id, m.target_id FROM target_snapshot s JOIN id_map m ON m.entity = s.entity AND m.target_id = s.target_id "
            "WHERE s.entity = $e AND m.source_id IN (SELECT source_id FROM target_records WHERE entity = $e) "
            "AND len(list_filter(from_json(s.dto->'customFieldValues', '[{\"columnId\": \"VARCHAR\", \"value\": \"VARCHAR\"}]'), "
            "lambda v: v.columnId = $c AND coalesce(v.value, '') <> '')) > 0 ORDER BY m.source_id",
            {"e": entity, "c": column_id},
        ).fetchall()
        return [(s, t) for s, t in dict(rows).items()]

    def snapshot_fingerprint(self) -> str:
        """A digest of the target as held: every record's id and updatedAt, in read order."""
        row = self.con.execute(
            "SELECT md5(coalesce(string_agg(entity || ':' || target_id || ':' || coalesce(dto->>'updatedAt', ''), chr(10) "
            "ORDER BY entity, seq), '')) FROM target_snapshot"
        ).fetchone()
        return str(row[0])

    def snapshot_records(self, entity: str, pids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Pipedrive ID → the target records carrying it, in the order they were read."""
        rows = self.con.execute(
            "SELECT pid, dto FROM target_snapshot WHERE entity = $e AND pid IN (SELECT unnest($p)) ORDER BY seq",
            {"e": entity, "p": pids},
        ).fetchall()
        found: dict[str, list[dict[str, Any]]] = {}
        for pid, dto in rows:
            found.setdefault(pid, []).append(json.loads(dto))
        return found

    def snapshot_pids_from_id_map(self, entity: str) -> None:
        """Give the entity's snapshot records that carry no Pipedrive ID the one the id map holds for
        their target id (`target._pipedrive_ids_unwritten`)."""
        self.con.execute(
            "UPDATE target_snapshot SET pid = m.source_id FROM id_map m WHERE target_snapshot.entity = $e AND m.entity = $e "
            "AND target_snapshot.pid IS NULL AND m.target_id = target_snapshot.target_id",
            {"e": entity},
        )

    def snapshot_pids(self, target_ids: list[str]) -> dict[str, str]:
        """Target id → Pipedrive ID, for those of `target_ids` that carry one, and for those the
        snapshot no longer holds at all the id map's (migrated, then deleted there), or the one kept
        with a record found deleted (`target_gone`) when the id map moved on (it was made again). A record
        a user made carries none and is held: the id map, which has no index by target id, is not read for it."""
        rows = self.con.execute("SELECT target_id, pid FROM target_snapshot WHERE target_id IN (SELECT unnest($t))", {"t": target_ids}).fetchall()
        found = {target_id: pid for target_id, pid in rows if pid is not None}
        absent = sorted(set(target_ids) - {target_id for target_id, _ in rows})
        if absent:
            found.update(self.con.execute(
                "SELECT target_id, source_id FROM target_gone WHERE source_id IS NOT NULL AND target_id IN (SELECT unnest($t)) "
                "UNION ALL SELECT target_id, source_id FROM id_map WHERE target_id IN (SELECT unnest($t))",
                {"t": absent},
            ).fetchall())
        return found

    def snapshot_duplicates(self, entity: str) -> dict[str, list[str]]:
        """Pipedrive IDs carried by more than one target record → their target ids, in read order.
        A record read twice (a page-through the list moved under) is one record."""
        rows = self.con.execute(
            "SELECT pid, list(target_id ORDER BY seq) FROM (SELECT pid, target_id, min(seq) AS seq FROM target_snapshot "
            "WHERE entity = ? AND pid IS NOT NULL GROUP BY pid, target_id) GROUP BY pid HAVING count(*) > 1",
            [entity],
        ).fetchall()
        return dict(rows)

    def snapshot_has(self, entity: str, target_ids: list[str]) -> set[str]:
        """Those of `target_ids` the target held."""
        rows = self.con.execute(
            "SELECT DISTINCT target_id FROM target_snapshot WHERE entity = $e AND target_id IN (SELECT unnest($t))",
            {"e": entity, "t": target_ids},
        ).fetchall()
        return {r[0] for r in rows}

    def snapshot_count(self, entity: str) -> int:
        return int(self.con.execute("SELECT count(*) FROM target_snapshot WHERE entity = ?", [entity]).fetchone()[0])

    _NOT_TRANSFORMED = "NOT EXISTS (SELECT 1 FROM target_records t WHERE t.entity = $e AND t.source_id = s.pid)"
    _MIGRATED = "EXISTS (SELECT 1 FROM id_map m WHERE m.entity = $e AND m.source_id = s.pid)"

    def _unknown_sql(self) -> str:
        """Target records with no Pipedrive ID, or one neither a transformed nor a migrated record has."""
        return f"FROM target_snapshot s WHERE entity = $e AND (pid IS NULL OR ({self._NOT_TRANSFORMED} AND NOT {self._MIGRATED}))"

    def snapshot_deleted_in_pipedrive_count(self, entity: str) -> int:
        """Target records of migrated records deleted in Pipedrive since (no transformed record has
        their Pipedrive ID): kept by `sync --deletes mark` or `ignore`, or not synced yet."""
        sql = f"SELECT count(*) FROM target_snapshot s WHERE entity = $e AND pid IS NOT NULL AND {self._NOT_TRANSFORMED} AND {self._MIGRATED}"
        return int(self.con.execute(sql, {"e": entity}).fetchone()[0])

    def snapshot_unknown(self, entity: str, limit: int | None = None) -> Iterator[tuple[str, str | None]]:
        """(target id, Pipedrive ID) of target records without a Pipedrive ID, or with one no
        transformed record has, in the order read (the first `limit`); streamed."""
        sql = f"SELECT target_id, pid {self._unknown_sql()} ORDER BY seq" + (f" LIMIT {int(limit)}" if limit is not None else "")
        yield from self.stream(sql, {"e": entity})

    def snapshot_unknown_count(self, entity: str) -> int:
        return int(self.con.execute(f"SELECT count(*) {self._unknown_sql()}", {"e": entity}).fetchone()[0])

    def migrated_not_in_snapshot(self, entity: str, *, unless_known_gone: bool = False) -> list[str]:
        """Source ids in the id map whose target record the target no longer held, sorted; with
        `unless_known_gone`, not those whose record a lookup found gone before (`note_gone`)."""
        known_gone = "AND target_id NOT IN (SELECT target_id FROM target_gone WHERE entity = $e) " if unless_known_gone else ""
        rows = self.con.execute(
            "SELECT source_id FROM id_map WHERE entity = $e AND target_id NOT IN "
            f"(SELECT target_id FROM target_snapshot WHERE entity = $e) {known_gone}ORDER BY source_id",
            {"e": entity},
        ).fetchall()
        return [r[0] for r in rows]

    def note_gone(self, entity: str, source_ids: list[str], still_there: list[str]) -> None:
        """These migrated records were looked up: their target records are gone unless among the
        target ids `still_there` (another record may carry the Pipedrive ID)."""
        if source_ids:
            self.con.execute(
                "INSERT OR IGNORE INTO target_gone SELECT entity, target_id, source_id FROM id_map WHERE entity = $e "
                "AND source_id IN (SELECT unnest($s)) AND target_id NOT IN (SELECT unnest($t))",
                {"e": entity, "s": source_ids, "t": still_there},
            )

    def quarantine(self, entity: str, source_id: str, message: str, payload: dict[str, Any], run_id: str) -> None:
        values = [message, json.dumps(payload, ensure_ascii=False), run_id, now()]
        self._update_or_insert(
            "UPDATE quarantine SET message = ?, payload = ?, run_id = ?, quarantined_at = ? WHERE entity = ? AND source_id = ?",
            [*values, entity, source_id],
            "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)",
            [entity, source_id, *values],
        )

    def quarantined(self, limit: int | None = None, batch_size: int = 2000) -> Iterator[dict[str, str]]:
        """The quarantined records (entity, source_id, message, run_id) by entity and source id,
        the first `limit` or all; read a batch at a time, each the next `batch_size` by (entity,
        source id): DuckDB sorts that few in a heap, where sorting a million at once takes its
        whole memory limit."""
        columns = ("entity", "source_id", "message", "run_id")
        sql = (
            f"SELECT {', '.join(columns)} FROM quarantine WHERE entity > $e OR (entity = $e AND source_id > $s) "
            f"ORDER BY entity, source_id LIMIT {int(min(batch_size, limit or batch_size))}"
        )
        rows = self._keyset_pages(sql, {"e": "", "s": ""}, lambda last: {"e": last[0], "s": last[1]})
        for row in islice(rows, limit):
            yield dict(zip(columns, row, strict=True))

    def release_quarantine_not_to_migrate(self) -> int:
        """Quarantined records the transform no longer makes (deleted in Pipedrive since, or gone
        from it) are no failure left to report: they leave the quarantine. Returns how many."""
        where = "WHERE NOT EXISTS (SELECT 1 FROM target_records t WHERE t.entity = q.entity AND t.source_id = q.source_id)"
        count = int(self.con.execute(f"SELECT count(*) FROM quarantine q {where}").fetchone()[0])
        if count:
            self.con.execute(f"DELETE FROM quarantine q {where}")
        return count

    def quarantine_counts(self) -> dict[str, int]:
        """Quarantined records per entity (only the entities that have some)."""
        return dict(self.con.execute("SELECT entity, count(*) FROM quarantine GROUP BY entity").fetchall())

    def quarantine_messages(self, entity: str, source_ids: list[str]) -> dict[str, str]:
        """source id → the server's message, for those of `source_ids` quarantined."""
        return self._column_by_source_id("quarantine", "message", entity, source_ids)

    def add_load_issues(self, rows: list[tuple[str, str, str, str, str, str]]) -> None:
        """(run id, entity, source id, field, rule, detail) rows, in one statement: a statement
        is a commit of its own, a few milliseconds, and a run can have an issue for each link of
        each record."""
        self._insert_rows("load_issues", rows)

    # -- the last verify's findings ---------------------------------------------------------
    def clear_verify_findings(self) -> None:
        self.con.execute("DELETE FROM verify_findings")

    def add_verify_findings(self, rows: list[tuple[str, str, int, str]]) -> None:
        """(kind, entity, position in the verify, the finding as JSON) rows."""
        self._insert_rows("verify_findings", rows, json_column=3)

    def verify_findings(self, kind: str, batch_size: int = 2000) -> Iterator[dict[str, Any]]:
        """The last verify's findings of one kind, in the order found; read a batch at a time, each
        the next `batch_size` by `seq` (sorting a million of them at once added 70 MB of peak RSS)."""
        params: dict[str, Any] = {"k": kind, "after": -1}
        sql = f"SELECT seq, item FROM verify_findings WHERE kind = $k AND seq > $after ORDER BY seq LIMIT {int(batch_size)}"
        for _, item in self._keyset_pages(sql, params, lambda last: {"after": last[0]}):
            yield json.loads(item)

    # -- a run's issues: the transform's and those of the run's load -------------------------
    def _run_issues_sql(self) -> str:
        return (
            "(SELECT entity, source_id, field, rule, detail, 0 AS phase FROM transform_issues "
            "UNION ALL SELECT entity, source_id, field, rule, detail, 1 FROM load_issues WHERE run_id = $run)"
        )

    def run_issue_counts(self, run_id: str) -> list[tuple[str, int]]:
        """(rule, issues) of the run, most first."""
        return self.con.execute(
            f"SELECT rule, count(*) FROM {self._run_issues_sql()} GROUP BY rule ORDER BY count(*) DESC, rule", {"run": run_id}
        ).fetchall()

    def run_issue_examples(self, run_id: str, per_rule: int) -> dict[str, list[dict[str, str]]]:
        """The first `per_rule` issues of each rule, in the order `iter_run_issues` lists them."""
        cols = ("entity", "source_id", "field", "rule", "detail")
        rows = self.con.execute(
            f"SELECT {', '.join(cols)} FROM (SELECT *, row_number() OVER (PARTITION BY rule ORDER BY phase, entity, rule, source_id, field, detail) AS n "
            f"FROM {self._run_issues_sql()}) WHERE n <= $n ORDER BY rule, n",
            {"run": run_id, "n": per_rule},
        ).fetchall()
        examples: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            examples.setdefault(row[3], []).append(dict(zip(cols, row, strict=True)))
        return examples

    def iter_run_issues(self, run_id: str) -> Iterator[tuple[str, str, str, str, str]]:
        """Every issue of the run, (entity, source id, field, rule, detail): the transform's by
        entity, rule and record, then the load's; streamed, however many there are."""
        yield from self.stream(
            f"SELECT entity, source_id, field, rule, detail FROM {self._run_issues_sql()} ORDER BY phase, entity, rule, source_id, field, detail",
            {"run": run_id},
        )


def _names_an_id(json_sql: str, prefix: str) -> str:
    """SQL: whether a JSON value can name a record: a lead id (`prefix`) is any text, another id digits."""
    return "true" if prefix else f"regexp_full_match({json_sql}->>'$', '{NUMERIC_ID}')"


def _storable_text(record: dict[str, Any], key: str, collection: str) -> str:
    """The record's JSON text, each lone surrogate replaced by U+FFFD (DuckDB's JSON cannot hold
    one, nor can Customermates' database): half of an emoji cut in two, which would otherwise stop
    the extract. The record keeps where they were (`REPLACED_CHARACTERS`, for the transform's
    issues), and a warning names it."""
    try:
        return jsontext.dumps(record)
    except jsontext.LoneSurrogateError as exc:
        log.warning(
            "staging.character_replaced", collection=collection, id=record.get(key), fields=exc.paths,
            reason="half of a UTF-16 surrogate pair, which no UTF-8 text can hold; replaced by U+FFFD",
        )
        return jsontext.dumps({**jsontext.replace_lone_surrogates(record), REPLACED_CHARACTERS: exc.paths})


def _identity(record: dict[str, Any], key: str, collection: str) -> str:
    value = record.get(key)
    if value is None or value == "":
        raise MigrateError(f"a {collection} record has no {key}: {json.dumps(record, ensure_ascii=False)[:200]}")
    return str(value)


def _vanished() -> dict[str, Any]:
    """The flags a record gone from Pipedrive without a trace is staged with, dated the day it was found gone."""
    return {"is_deleted": True, "vanished": True, "vanished_at": datetime.now(UTC).strftime("%Y-%m-%d")}
