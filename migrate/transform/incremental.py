"""Transform again only the records whose inputs changed since the last transform.

A target record is made from its own staged row, the notes and deal products attached to it, the
records it looks up (ids checked before they become links, names of linked organizations,
persons and products), and what every record shares: the reference collections (users,
pipelines, stages, field definitions, ...), the mappings, the phone region, and the transform's
own code and libraries. Each transform keeps, beside its output:

* `transform_inputs`: a digest of every record, note and deal product row;
* `transform_owners`: the records each note and deal product belongs to;
* `target_records.lookups`: the records each record looked up, found or not (`LookupLog`);
* a digest of each shared part (`meta`, key `transform_context`).

When a shared part changed, the next transform makes everything again, and says which part.
Otherwise it makes again the records whose own row changed (appeared, went), those a changed
note or deal product belongs to (before or after the change), and those that looked up a changed,
new or gone record; every other record would come out byte for byte as it is, so it is kept.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from migrate.staging.store import Staging, raw_table
from migrate.transform.columns import ColumnRegistry, ColumnSpec

CODE_DIR = Path(__file__).parent
LIBRARIES = ("phonenumbers", "markdownify", "beautifulsoup4")
CONTEXT_KEY = "transform_context"  # in the state file's meta: the digest of each shared part
# collection → (JSON field naming the record it belongs to, that record's entity, id prefix); the
# engine reads which notes belong to a record from here too
GROUPED = {
    "notes": (("person_id", "contacts", ""), ("org_id", "organizations", ""), ("deal_id", "deals", ""), ("lead_id", "deals", "lead:")),
    "deal_products": (("deal_id", "deals", ""),),
}
Sources = dict[str, tuple[str, str]]  # record collection → (entity, source id prefix)


def context(staging: Staging, sources: Sources, mappings: Any, phone_region: str | None) -> dict[str, str]:
    """A digest of each part every record depends on, by a name a report can show."""
    code = hashlib.sha256()
    for path in sorted(CODE_DIR.glob("*.py")):
        code.update(path.name.encode() + b"\0" + path.read_bytes())
    for library in LIBRARIES:
        code.update(f"{library}=={_version(library)}".encode())
    code.update(f"python=={platform.python_version()}".encode())
    parts = {
        "the transform's code or libraries": code.hexdigest(),
        "the mappings": hashlib.sha256(repr(mappings).encode()).hexdigest(),
        "the phone region": phone_region or "",
    }
    inputs = {raw_table(c) for c in (*sources, *GROUPED)}
    tables = staging.con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'raw\\_%' ESCAPE '\\' ORDER BY table_name"
    ).fetchall()
    for (table,) in tables:
        if table not in inputs:
            digest = staging.con.execute(f"SELECT count(*) || ':' || coalesce(md5(string_agg({_row_digest()}::VARCHAR, ',' ORDER BY id)), '') FROM {table}").fetchone()[0]
            parts[f"the staged {table.removeprefix('raw_').replace('_', ' ')}"] = digest
    return parts


def _version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "absent"


def _row_digest() -> str:
    """DuckDB's 64-bit hash of the row: five times md5's speed. A DuckDB whose hash differs
    makes every row look changed, which costs one full transform and loses nothing."""
    return "hash(data::VARCHAR, is_deleted)"


def why_full(staging: Staging, parts: dict[str, str]) -> str | None:
    """Why this transform must make every record again, or None when it need not."""
    kept_text = staging.meta(CONTEXT_KEY)
    if kept_text is None:
        return "first transform of this state file"
    kept = json.loads(kept_text)
    changed = [name for name, digest in parts.items() if kept.get(name) != digest] + [name for name in kept if name not in parts]
    return f"{', '.join(changed)} changed" if changed else None


def _changed(collection: str) -> str:
    return f"id IN (SELECT id FROM transform_changed WHERE collection = '{collection}')"


def _inputs_sql(staging: Staging, sources: Sources, only_changed: bool = False) -> str:
    selects = [
        f"SELECT '{collection}' AS collection, id, {_row_digest()} AS digest FROM {raw_table(collection)}"
        + (f" WHERE {_changed(collection)}" if only_changed else "")
        for collection in (*sources, *GROUPED)
        if staging.has_collection(collection)
    ]
    return " UNION ALL ".join(selects) or "SELECT NULL::VARCHAR AS collection, NULL::VARCHAR AS id, NULL::UBIGINT AS digest WHERE false"


def _owners_sql(staging: Staging, only_changed: bool = False) -> str:
    selects = [
        f"SELECT '{collection}' AS collection, id, '{entity}' AS entity, '{prefix}' || (data->>'{field}') AS source_id "
        f"FROM {raw_table(collection)} WHERE data->>'{field}' IS NOT NULL" + (f" AND {_changed(collection)}" if only_changed else "")
        for collection, owners in GROUPED.items()
        if staging.has_collection(collection)
        for field, entity, prefix in owners
    ]
    return " UNION ALL ".join(selects) or "SELECT NULL::VARCHAR AS collection, NULL::VARCHAR AS id, NULL::VARCHAR AS entity, NULL::VARCHAR AS source_id WHERE false"


def mark_dirty(staging: Staging, sources: Sources) -> int:
    """Fill `transform_dirty` with the records to make again (committed: the record streams read
    it on cursors of their own); returns how many. A step at a time, a collection at a time: each
    join then fits in DuckDB's memory cap at a million records."""
    con = staging.con
    con.execute("DELETE FROM transform_changed")
    for collection in (*sources, *GROUPED):
        if not staging.has_collection(collection):
            con.execute("INSERT INTO transform_changed SELECT collection, id FROM transform_inputs WHERE collection = ?", [collection])
            continue
        kept = f"(SELECT id, digest FROM transform_inputs WHERE collection = '{collection}')"
        con.execute(  # new or changed (the digests are joined, not the records)
            f"INSERT INTO transform_changed SELECT '{collection}', n.id FROM (SELECT id, {_row_digest()} AS digest "
            f"FROM {raw_table(collection)}) n ANTI JOIN {kept} o ON n.id = o.id AND n.digest = o.digest"
        )
        con.execute(  # gone
            f"INSERT INTO transform_changed SELECT '{collection}', o.id FROM {kept} o ANTI JOIN {raw_table(collection)} n ON n.id = o.id"
        )
    values = ", ".join(f"('{collection}', '{entity}', '{prefix}')" for collection, (entity, prefix) in sources.items())
    con.execute(
        "CREATE OR REPLACE TEMP TABLE transform_changed_records AS SELECT s.entity, s.prefix || c.id AS source_id "
        f"FROM transform_changed c JOIN (VALUES {values}) s(collection, entity, prefix) USING (collection)"
    )
    found = [
        "SELECT entity, source_id FROM transform_changed_records",
        (
            "SELECT t.entity, t.source_id FROM (SELECT entity, source_id, unnest(from_json(lookups, '[[\"VARCHAR\"]]')) AS ref "
            "FROM target_records WHERE lookups IS NOT NULL) t JOIN transform_changed_records c ON t.ref[1] = c.entity AND t.ref[2] = c.source_id"
        ),
        "SELECT o.entity, o.source_id FROM transform_owners o JOIN transform_changed c USING (collection, id)",
        f"SELECT entity, source_id FROM ({_owners_sql(staging, only_changed=True)})",
    ]
    con.execute("CREATE OR REPLACE TEMP TABLE transform_found (entity VARCHAR, source_id VARCHAR)")
    for select in found:
        con.execute(f"INSERT INTO transform_found {select}")
    con.execute("DELETE FROM transform_dirty")
    con.execute("INSERT INTO transform_dirty SELECT DISTINCT entity, source_id FROM transform_found")
    con.execute("DELETE FROM transform_dirty_groups")
    con.execute(  # the notes and deal products that may belong to them: they did, or they changed
        "INSERT INTO transform_dirty_groups SELECT o.collection, o.id FROM transform_owners o JOIN transform_dirty d USING (entity, source_id) "
        f"UNION SELECT collection, id FROM transform_changed WHERE collection IN ({', '.join(repr(c) for c in GROUPED)})"
    )
    return int(con.execute("SELECT count(*) FROM transform_dirty").fetchone()[0])


def dirty_filter(entity: str, key_sql: str, prefix: str = "") -> str:
    """A WHERE condition: the row (its record id `key_sql`) belongs to a record being made again."""
    return f"'{prefix}' || ({key_sql}) IN (SELECT source_id FROM transform_dirty WHERE entity = '{entity}')"


def grouped_filter(collection: str) -> str:
    """A WHERE condition on notes or deal products, before their JSON is read: the row may belong
    to a record being made again (a table of its own, so that DuckDB sees how few they are and
    does not hash the notes instead: that took 89 MB at 1M)."""
    return f"id IN (SELECT id FROM transform_dirty_groups WHERE collection = '{collection}')"


def keep_inputs(staging: Staging, sources: Sources, parts: dict[str, str], only_changed: bool) -> None:
    """Record what this transform read (inside its output transaction): every row, or after
    `mark_dirty` the rows that changed."""
    con = staging.con
    for table in ("transform_inputs", "transform_owners"):
        con.execute(
            f"DELETE FROM {table} USING transform_changed c WHERE {table}.collection = c.collection AND {table}.id = c.id"
            if only_changed else f"DELETE FROM {table}"
        )
    con.execute(f"INSERT INTO transform_inputs {_inputs_sql(staging, sources, only_changed)}")
    con.execute(f"INSERT INTO transform_owners {_owners_sql(staging, only_changed)}")
    staging.set_meta(CONTEXT_KEY, json.dumps(parts, sort_keys=True))


def restore_columns(registry: ColumnRegistry, kept: Iterable[dict[str, Any]]) -> None:
    """Columns the kept records use (as the last transform listed them) stay wanted, their
    options found then stay, in their order."""
    for spec in kept:
        column = registry.find(spec["entity"], spec["key"]) or registry.declare(
            ColumnSpec(spec["entity"], spec["key"], spec["label"], spec["type"], currency=spec.get("currency"), allow_multiple=bool(spec.get("allow_multiple")))
        )
        column.used = True
        for option in spec.get("options") or []:
            column.add_option(option)
