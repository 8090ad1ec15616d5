"""Transform: staged Pipedrive records → Customermates target records and columns.

Deterministic: the same staging gives byte-identical payloads (sorted keys, id order), so a
payload hash tells whether a record changed since it was last written. Records stream from
DuckDB and back. What every record may refer to (ids that exist, names) is held compactly
(`transform.lookups`); notes and deal products stream alongside the records, sorted the same
way, one record's worth at a time. Each distinct note body is converted to markdown once and
kept in the state file, so reruns and syncs do not convert it again; and a transform after the
first makes again only the records whose inputs changed (`transform.incremental`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from migrate.staging.keys import REPLACED_CHARACTERS
from migrate.staging.store import Staging, batched, raw_table
from migrate.transform import entities, incremental, notes
from migrate.transform import values as v
from migrate.transform.columns import (
    PIPEDRIVE_ID,
    PIPEDRIVE_ID_LABEL,
    ColumnRegistry,
    ColumnSpec,
)
from migrate.transform.encoders import Field, Lookups
from migrate.transform.lookups import IdSet, LookupLog, NameTable, SortedGroups
from migrate.transform.mapping import ColumnDecl, Mappings, SourceMapping
from migrate.transform.records import (
    CHARACTER_REPLACED,
    NUL_ESCAPE,
    NUL_REMOVED,
    OWN_TEXTS,
    V1_ENCODED,
    Batch,
    CustomColumn,
    DeclaredColumn,
    Issue,
    Made,
    MakerPool,
    RecordMaker,
    TargetRow,
    utc_or_none,
    without_nul,
)

ProgressFn = Callable[[str, int], None]
ENTITY_ORDER = ("organizations", "contacts", "services", "deals", "tasks")
ENTITY_SOURCES = {
    "organizations": ("organizations",),
    "contacts": ("persons",),
    "services": ("products",),
    "deals": ("deals", "deals_archived", "leads", "leads_archived"),
    "tasks": ("activities",),
}
DEAL_COLLECTIONS = ("deals", "deals_archived")  # those whose records a deal product line's deal_id names
FIELD_META = {
    "persons": "personFields",
    "organizations": "organizationFields",
    "products": "productFields",
    "deals": "dealFields",
    "deals_archived": "dealFields",
    "leads": "dealFields",
    "leads_archived": "dealFields",
    "activities": "activityFields",
}
ISSUES_PER_FLUSH = 5000
NOTES_PER_BATCH = 2000
# A control character as a note's JSON text holds it (escaped, or DEL as itself): a note with one is read again for which
CONTROL_ESCAPES = r"\\u00[01][0-9a-fA-F]|\\[bf]|\x7f"
TEXTS_PER_BATCH = 500  # note bodies and record texts converted to markdown at a time
LONG_TEXT = 20_000  # characters of HTML from which a text is converted in the main process
RECORDS_PER_BATCH = 500  # records made at a time (in a worker process, when there are workers)
PARALLEL_FROM = 20_000  # records to make from which worker processes pay for their start (about a second)
PROGRESS_TASK = "transform records"
MAX_WORKERS = 3  # by default: past that the main process, which reads and writes for all of them, sets the pace
# A standard field's key in v1 field metadata (read when an account lacks the v2 one), where it differs
# from the v2 field code: v1 records call the labels `label` (contract §7.2-§7.4), and v1 keys are record keys (§8.1)
V1_FIELD_KEYS = {"label_ids": "label"}
# Staged collections the transform reads for names, labels and field definitions, not as records
REFERENCE_COLLECTIONS = ("users", "pipelines", "stages", "activityTypes", "leadLabels", *sorted(set(FIELD_META.values())))
RESERVED_LABELS = {
    "contacts": {"first name", "last name", "name", "email", "emails", "notes", "organizations", "users"},
    "organizations": {"name", "notes", "contacts", "users"},
    "services": {"name", "amount", "notes", "users"},
    "deals": {"name", "notes", "services", "total value", "total quantity", "contacts", "organizations", "users"},
    "tasks": {"name", "notes", "type", "contacts", "organizations", "deals", "services", "users"},
}


@dataclass
class TransformSummary:
    records: Counter[str] = field(default_factory=Counter)  # entity → target records
    skipped: Counter[str] = field(default_factory=Counter)  # entity → deleted in Pipedrive
    issues: Counter[str] = field(default_factory=Counter)  # rule → count
    columns: list[dict[str, Any]] = field(default_factory=list)
    made: int = 0  # staged records transformed this time (the others' output was kept)
    full_reason: str | None = None  # why every record was transformed; None: only those whose inputs changed
    seconds: float = 0.0


class Transformer:
    def __init__(
        self, staging: Staging, mappings: Mappings, phone_region: str | None = None, *,
        workers: int | None = None, progress: ProgressFn | None = None,
    ):
        self.staging = staging
        self.workers = workers
        self.progress = progress
        self.mappings = mappings
        self.sources: incremental.Sources = {c: (m.entity, "lead:" if c in V1_ENCODED else "") for c, m in mappings.sources.items()}
        self.registry = ColumnRegistry()
        self.log = LookupLog()
        self.lookups = self._lookups(phone_region)
        self.known = {entity: self.log.watch(ids, entity) for entity, ids in self._known_ids().items()}
        self.fields = {meta: self._field_meta(meta) for meta in set(FIELD_META.values())}
        self.issues: list[Issue] = self._reference_issues()
        self.summary = TransformSummary()
        self._writing = False
        self._only_dirty = False
        # the labels earlier runs gave the columns (`_kept_labels`)
        self._column_labels = {key: column["label"] for key, column in staging.column_map().items()}
        self._declare_columns()
        self.maker = RecordMaker(self.sources, self.registry, self.lookups, self.known, self.log, self._declared, self._custom)

    # -- reference data -------------------------------------------------------------------
    def _lookups(self, phone_region: str | None) -> Lookups:
        st = self.staging
        users = {str(u["id"]): u for u in self._reference("users")}
        pipelines = {str(p["id"]): p for p in self._reference("pipelines")}
        stages = sorted(
            self._reference("stages"),
            key=lambda s: (_rank(pipelines.get(str(s.get("pipeline_id")), {}).get("order_nr")), _rank(s.get("pipeline_id")), _rank(s.get("order_nr")), _rank(s["id"]), str(s["id"])),
        )
        stage_labels = {
            str(s["id"]): f"{pipelines.get(str(s.get('pipeline_id')), {}).get('name') or 'Pipeline #' + str(s.get('pipeline_id'))} / {s.get('name')}"
            for s in stages
        }
        return Lookups(
            users=users,
            pipelines={pid: p.get("name") or f"Pipeline #{pid}" for pid, p in sorted(pipelines.items(), key=lambda kv: (_rank(kv[1].get("order_nr")), _rank(kv[0]), kv[0]))},
            stages=stage_labels,
            stage_probabilities={
                str(s["id"]): s.get("deal_probability") for s in stages
                if pipelines.get(str(s.get("pipeline_id")), {}).get("is_deal_probability_enabled")
            },
            activity_types={str(t.get("key_string")): t.get("name") or str(t.get("key_string")) for t in self._reference("activityTypes")},
            lead_labels={str(label["id"]): label.get("name") or str(label["id"]) for label in self._reference("leadLabels")},
            organization_names=self.log.watch(self._names("organizations"), "organizations"),
            person_names=self.log.watch(self._names("persons"), "contacts"),
            product_names=self.log.watch({str(p["id"]): str(p.get("name") or "").replace("\x00", "") for p in st.iter_raw("products")}, "services"),
            phone_region=phone_region or self._region_from_users(users),
        )

    def _reference(self, collection: str) -> Iterator[dict[str, Any]]:
        """The rows of a reference collection (`REFERENCE_COLLECTIONS`) without NUL characters, which
        Postgres stores in no text: a user's name with one would fail every batch holding a record
        the user owns, a field's label or option the column. `_reference_issues` reports them."""
        for row in self.staging.iter_raw(collection):
            yield without_nul(row, "", [])

    def _reference_issues(self) -> list[Issue]:
        """A character replaced in reference data (a user's name, a stage's, a field's label) or a
        NUL taken out of it shows wherever it is used: one issue for every record (`*`), on field
        `<collection>.<field>`."""
        found = []
        for collection in REFERENCE_COLLECTIONS:
            if not self.staging.has_collection(collection):
                continue
            where = f"(data->'{REPLACED_CHARACTERS}') IS NOT NULL"
            for identity, paths in self.staging.scan_in_id_order(f"id, data->>'{REPLACED_CHARACTERS}'", raw_table(collection), "id", where):
                detail = f"Pipedrive {collection} {identity}: {CHARACTER_REPLACED}"
                found += [("*", "*", f"{collection}.{path}", "character_replaced", detail) for path in json.loads(paths)]
            for identity, data in self.staging.scan_in_id_order("id, data", raw_table(collection), "id", f"contains(data, '{NUL_ESCAPE}')"):
                without_nul(json.loads(data), "", removed := [])
                detail = f"Pipedrive {collection} {identity}: {NUL_REMOVED}"
                found += [("*", "*", f"{collection}.{path}", "character_replaced", detail) for path in removed]
        return found

    @staticmethod
    def _region_from_users(users: dict[str, dict[str, Any]]) -> str | None:
        """Numbers without a country code are read in the country most users' locale names."""
        regions = Counter(
            str(u.get("locale")).split("_")[-1].upper() for u in users.values() if u.get("locale") and "_" in str(u.get("locale"))
        )
        return regions.most_common(1)[0][0] if regions else None

    def _names(self, collection: str) -> NameTable:
        """id → the name a field naming the record shows: its own, without a NUL (as the record's own
        name), or the name its record gets without one (a person's from their email)."""
        if not self.staging.has_collection(collection):
            return NameTable(())
        unnamed = entities.unnamed_person_name if collection == "persons" else lambda _: entities.NO_NAME
        sql = (
            f"SELECT id, data->>'name', CASE WHEN coalesce(data->>'name', '') = '' THEN data END FROM {raw_table(collection)} ORDER BY num_id"
        )
        return NameTable(
            (str(identity), (name or "").replace("\x00", "") or unnamed(json.loads(data) if data is not None else {}))
            for identity, name, data in self.staging.stream(sql)
        )

    def _deal_products(self) -> SortedGroups[str]:
        """The deal product lines (JSON) of the deals, in the order the deals are read (then by position)."""
        if not self.staging.has_collection("deal_products"):
            return SortedGroups(iter(()))
        where = "data->>'deal_id' IS NOT NULL AND NOT coalesce(is_deleted, false)"  # a line deleted there, as a note
        if self._only_dirty:
            where += " AND " + incremental.grouped_filter("deal_products") + " AND " + incremental.dirty_filter("deals", "data->>'deal_id'")
        rows = self.staging.stream_ordered(
            "data->>'deal_id', data", raw_table("deal_products"), "data->>'deal_id'", where,
            then="coalesce(try_cast(data->>'order_nr' AS DOUBLE), 0), coalesce(try_cast(data->>'id' AS BIGINT), 0)",
        )
        return SortedGroups(iter(rows))

    def _known_ids(self) -> dict[str, IdSet]:
        """The ids of the records that exist (not deleted), by entity."""
        known = {e: IdSet() for e in ENTITY_ORDER}
        for collection, (entity, prefix) in self.sources.items():
            if not self.staging.has_collection(collection):
                continue
            rows = self.staging.stream(f"SELECT id FROM {raw_table(collection)} WHERE NOT coalesce(is_deleted, false)")
            known[entity].update(prefix + identity for (identity,) in rows)
        return known

    def _field_meta(self, meta: str) -> dict[str, dict[str, Any]]:
        return {str(f.get("field_code") or f.get("key")): f for f in self._reference(meta)}

    # -- columns --------------------------------------------------------------------------
    def _declare_columns(self) -> None:
        reg = self.registry
        for entity in ENTITY_ORDER:
            reg.declare(ColumnSpec(entity, PIPEDRIVE_ID, PIPEDRIVE_ID_LABEL, "plain", always=True))
        reg.declare(ColumnSpec("contacts", "other_emails", "Other emails", "plain"))
        self._declared: dict[str, list[DeclaredColumn]] = {}
        for collection, mapping in self.mappings.sources.items():
            columns = self._declared[collection] = []
            for decl in mapping.columns:
                spec = reg.declare(
                    ColumnSpec(
                        mapping.entity,
                        decl.key,
                        decl.label,
                        decl.type,
                        allow_multiple=decl.allow_multiple,
                        template=decl.type == "currency",
                    )
                )
                columns.append(DeclaredColumn.of(decl, spec, self._source_field(collection, decl)))
                for option_id, label in self._declared_options(collection, decl):
                    spec.add_option(label, option_id)
        self._custom: dict[str, list[CustomColumn]] = {}
        for collection, mapping in self.mappings.sources.items():
            self._custom[collection] = self._custom_columns(collection, mapping)

    def _source_field(self, collection: str, decl: ColumnDecl) -> Field:
        """Where a declared column's values come from, with the labels of their option ids."""
        option_field = decl.field or (decl.options_from.split(":", 1)[1] if (decl.options_from or "").startswith("field:") else None)
        if option_field is None:
            return Field(name=decl.source_field)
        meta = FIELD_META[collection]
        return Field(decl.source_field, self._options(meta, option_field), self._options(meta, option_field, "options_deleted"))

    def _declared_options(self, collection: str, decl: ColumnDecl) -> list[tuple[str | None, str]]:
        """(Pipedrive id, label) of a declared select column's options: a field option's id, a
        pipeline's, a stage's or an activity type's key, by which an option renamed in Pipedrive is
        known; the statuses, fixed labels, have none."""
        source = decl.options_from
        lk = self.lookups
        if source and source.startswith("field:"):
            return list(self._options(FIELD_META[collection], source.split(":", 1)[1]).items())
        named = {"pipelines": lk.pipelines, "stages": lk.stages, "activity_types": lk.activity_types}.get(source or "")
        if named is not None:
            return list(named.items())
        if source == "deal_statuses":
            labels = ["Open", "Won", "Lost", "Lead"]
        elif source == "done":
            labels = ["Open", "Done"]
        else:
            labels = []
        return [(None, label) for label in labels]

    def _options(self, meta: str, field_code: str, which: str = "options") -> dict[str, str]:
        """Option id → label, of a field's `options` or of its `options_deleted` (v1 metadata: the
        options deleted in Pipedrive, whose ids records may still hold; they become a select
        column's options only when a record carries one)."""
        fields = self.fields.get(meta, {})
        definition = fields.get(field_code) or fields.get(V1_FIELD_KEYS.get(field_code, "")) or {}
        return {str(o.get("id")): str(o.get("label")) for o in v.as_list(definition.get(which)) if isinstance(o, dict)}

    def _custom_columns(self, collection: str, mapping: SourceMapping) -> list[CustomColumn]:
        """One column per Pipedrive custom field, typed by `field_types.yaml`."""
        meta = FIELD_META.get(collection)
        result = []
        taken = RESERVED_LABELS.get(mapping.entity, set()) | {
            column.spec.label.casefold()
            for c, columns in self._declared.items()
            if self.mappings.sources[c].entity == mapping.entity
            for column in columns
        } | {PIPEDRIVE_ID_LABEL.casefold(), "other emails"}
        fields = [
            (code, definition)
            for code, definition in sorted(self.fields.get(meta, {}).items(), key=lambda kv: (_rank(kv[1].get("order_nr")), kv[0]))
            if (definition.get("is_custom_field") or definition.get("edit_flag")) and not definition.get("is_subfield")
        ]
        labels = self._kept_labels(mapping.entity, fields, taken)
        for code, definition in fields:
            rule = self.mappings.field_types.get(str(definition.get("field_type")))
            name = _field_name(definition, code)
            if rule is None:
                self.issues.append((mapping.entity, "*", name, "field_type_unsupported", f"field type {definition.get('field_type')!r} has no mapping; values kept as text"))
                rule_type, rule_encode = "plain", "text"
            else:
                rule_type, rule_encode = rule.type, rule.encode
            key = f"cf:{code}"
            label = labels.get(key) or self._free_label(mapping.entity, name, taken, key)
            spec = self.registry.declare(
                ColumnSpec(mapping.entity, key, label, rule_type, always=rule_type != "currency", template=rule_type == "currency")
            )
            options = self._options(meta, code)
            if rule_type == "singleSelect":
                for option_id, label in options.items():
                    spec.add_option(label, option_id)
            result.append(CustomColumn(spec, Field(name, options, self._options(meta, code, "options_deleted")), code, rule_encode))
        return result

    def _kept_labels(self, entity: str, fields: list[tuple[str, dict[str, Any]]], taken: set[str]) -> dict[str, str]:
        """The labels earlier runs gave fields that still fit their names (the name, or the name
        with its suffix), kept before any other field is labelled: a field renamed to another
        field's name gets the suffix, where the first of the two by order took the name, and the
        column of the field that kept its name was renamed."""
        kept = {}
        for code, definition in fields:
            key = f"cf:{code}"
            if self.registry.find(entity, key) is not None:
                continue
            earlier = self._column_labels.get((entity, key))
            name = _field_name(definition, code)
            fits = earlier == name or re.fullmatch(rf"{re.escape(name)} \(Pipedrive field(?: \d+)?\)", earlier or "") is not None
            if earlier and fits and earlier.casefold() not in taken:
                taken.add(earlier.casefold())
                kept[key] = earlier
        return kept

    def _free_label(self, entity: str, name: str, taken: set[str], key: str) -> str:
        """The field's name, unless a standard column or another field has it already."""
        existing = self.registry.find(entity, key)
        if existing is not None:
            return existing.label
        label = name
        if label.casefold() in taken:
            label = f"{name} (Pipedrive field)"
        n = 2
        while label.casefold() in taken:
            label = f"{name} (Pipedrive field {n})"
            n += 1
        taken.add(label.casefold())
        return label

    # -- records --------------------------------------------------------------------------
    def run(self) -> TransformSummary:
        """Transform the records whose inputs changed since the last transform (`incremental`),
        or every record when what they all share changed."""
        started = time.monotonic()
        context = incremental.context(self.staging, self.sources, self.mappings, self.lookups.phone_region)
        self.summary.full_reason = incremental.why_full(self.staging, context)
        to_make = staged = self._staged()
        if self.summary.full_reason is None:
            to_make = incremental.mark_dirty(self.staging, self.sources)
            if to_make > staged // 2:  # then reading them by id costs more than reading everything
                self.summary.full_reason = f"{to_make:,} of {staged:,} records changed or depend on a change"
                to_make = staged
        self._only_dirty = self.summary.full_reason is None
        if self._only_dirty:
            incremental.restore_columns(self.registry, self.staging.target_columns())
            self.issues = []  # the column issues are the kept ones

        def finish() -> tuple[list[dict[str, Any]], list[Issue]]:
            self.summary.columns = [spec.to_json() for spec in self.registry.to_create()]
            self.staging.note_unattached_issues(incremental.GROUPED["notes"])
            self.staging.product_unattached_issues(DEAL_COLLECTIONS)
            self.staging.unreadable_owner_issues(incremental.GROUPED)
            incremental.keep_inputs(self.staging, self.sources, context, only_changed=self._only_dirty)
            return self.summary.columns, self.issues

        workers = self._workers(to_make)
        with MakerPool(self.maker, workers) if workers else contextlib.nullcontext() as pool:
            self._convert_notes(pool)  # committed before the output transaction: the note streams read it
            if hasattr(self.progress, "expect"):
                self.progress.expect(PROGRESS_TASK, to_make)
            made = pool.make(self._batches()) if pool else map(self.maker.make, self._batches())
            self.staging.replace_transform_output(self._target_rows(made), finish, only_dirty=self._only_dirty)
        self.summary.records, self.summary.skipped, self.summary.issues = self.staging.transform_counts()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _workers(self, to_make: int) -> int:
        """Worker processes: as asked; else one per core but one (at most `MAX_WORKERS`) from
        `PARALLEL_FROM` records to make, none below."""
        if self.workers is not None:
            return self.workers
        return min((os.cpu_count() or 1) - 1, MAX_WORKERS) if to_make >= PARALLEL_FROM else 0

    def _staged(self) -> int:
        return sum(self.staging.count_raw(collection)[0] for collection in self.sources)

    def _target_rows(self, made: Iterator[Made]) -> Iterator[TargetRow]:
        self._writing = True  # inside the output transaction: issues may be written as they come
        for batch in made:
            self.registry.merge(batch.columns)
            self.summary.made += batch.made
            if self.progress is not None:
                self.progress(PROGRESS_TASK, batch.made)
            for issue in batch.issues:
                self._issue(*issue)
            yield from batch.rows

    def _batches(self) -> Iterator[Batch]:
        """The records to make, collection by collection in `ENTITY_ORDER`, each with its notes
        and deal product rows, and the kept conversions of its own texts."""
        for entity in ENTITY_ORDER:
            for collection, mapping in self.mappings.sources.items():
                if mapping.entity == entity:
                    yield from self._collection_batches(collection)

    def _collection_batches(self, collection: str) -> Iterator[Batch]:
        if not self.staging.has_collection(collection):
            return
        notes_by_target = self._notes_for(collection)
        products = self._deal_products() if collection in DEAL_COLLECTIONS else SortedGroups[str](iter(()))
        entity, prefix = self.sources[collection]
        where = incremental.dirty_filter(entity, "id", prefix) if self._only_dirty else "TRUE"
        own_digests = "".join(f", md5(data->>'{key}')" for key, _ in OWN_TEXTS.get(collection, ()))
        rows = self.staging.scan_in_id_order(f"id, data{own_digests}", raw_table(collection), "id", where)
        for batch in batched(rows, RECORDS_PER_BATCH):
            digests = {digest for _, _, *own in batch for digest in own if digest}
            yield Batch(
                collection,
                [(data, notes_by_target.get(identity, []), products.get(identity, [])) for identity, data, *_ in batch],
                self.staging.note_markdown(digests) if digests else {},
            )

    def _issue(self, entity: str, sid: str, field_name: str, rule: str, detail: str) -> None:
        self.issues.append((entity, sid, field_name, rule, detail))
        if len(self.issues) >= ISSUES_PER_FLUSH and self._writing:
            self.staging.add_transform_issues(self.issues)
            self.issues = []

    # -- notes ----------------------------------------------------------------------------
    def _notes_for(self, collection: str) -> SortedGroups[notes.NoteEntry]:
        """Pipedrive notes attached to records of this collection, grouped by record id, in the
        order the records are read. Sorted as narrow rows (the markdown is fetched per batch)."""
        # the note field naming a record of this collection: one declaration, which the incremental transform reads too
        column = next((f for f, entity, prefix in incremental.GROUPED["notes"] if (entity, prefix) == self.sources[collection]), None)
        if column is None or not self.staging.has_collection("notes"):
            return SortedGroups(iter(()))
        pin_flag = {"person_id": "pinned_to_person_flag", "org_id": "pinned_to_organization_flag", "deal_id": "pinned_to_deal_flag", "lead_id": "pinned_to_lead_flag"}[column]
        # Each JSON path read parses the whole note, and DuckDB holds a parse per expression per
        # thread: a 3 MB note read six ways took 145 MB. So the note is parsed once, for all six.
        paths = [f"$.{column}", "$.user_id", "$.add_time", f"$.{pin_flag}", "$.user.name", "$.content", f"$.{REPLACED_CHARACTERS}"]
        rows_read = "NOT coalesce(is_deleted, false)"
        if self._only_dirty:  # then only the notes that may belong to a record made again are parsed
            rows_read += " AND " + incremental.grouped_filter("notes")
        # `controls`: the note's JSON holds a control character, which its conversion takes out (escaped
        # as \u0001, \b or \f, or DEL itself); then `_removed_in_notes` reads its content for which.
        notes_read = (
            "(SELECT try_cast(id AS BIGINT) AS note_id, f[1]->>'$' AS target, f[2]->>'$' AS user_id, f[3]->>'$' AS add_time, "
            "f[4] AS pinned, f[5]->>'$' AS user_name, md5(coalesce(f[6]->>'$', '')) AS digest, f[7] AS replaced, controls "
            f"FROM (SELECT id, json_extract(data, {paths!r}) AS f, regexp_matches(data, '{CONTROL_ESCAPES}') AS controls "
            f"FROM {raw_table('notes')} WHERE {rows_read}))"
        )
        where = "target IS NOT NULL"
        if self._only_dirty:
            entity, prefix = self.sources[collection]
            where += " AND " + incremental.dirty_filter(entity, "target", prefix)
        rows = self.staging.stream_ordered(
            "target, user_id, add_time, pinned, user_name, digest, replaced, controls, note_id", notes_read, "target", where, then="note_id"
        )

        def entries(batch: list[tuple[Any, ...]]) -> Iterator[tuple[str, notes.NoteEntry]]:
            markdown = self.staging.note_markdown({r[5] for r in batch})
            removed_in_content = self._removed_in_notes({r[8] for r in batch if r[7]})
            for target, user_id, add_time, pinned, user_name, digest, replaced, _, note_id in batch:
                user = self.lookups.users.get(str(user_id))
                author = v.as_plain_text((user or {}).get("name") or user_name) or None
                # a user's name is without NUL (`_reference`); a name the note itself gives loses it in the notes
                removed = [f"content ({chars})"] if (chars := removed_in_content.get(note_id)) else []
                removed += ["user.name (U+0000)"] if author and "\x00" in author else []
                yield target, notes.NoteEntry(
                    author=author,
                    created=utc_or_none(add_time),
                    html="",
                    title="Pinned" if pinned is not None and json.loads(pinned) else None,
                    markdown=markdown[digest],
                    replaced=None if replaced is None else ", ".join(json.loads(replaced)),
                    removed=", ".join(removed) or None,
                    source=f"Pipedrive note {note_id}",
                )

        return SortedGroups(entry for batch in batched(rows, NOTES_PER_BATCH) for entry in entries(batch))

    def _removed_in_notes(self, note_ids: set[int]) -> dict[int, str]:
        """What the conversion takes out of these notes' content (`notes.removed_characters`), by note
        id, for those it takes something out of (few notes hold a control character: their JSON is read again)."""
        if not note_ids:
            return {}
        rows = self.staging.con.execute(
            f"SELECT try_cast(id AS BIGINT), data FROM {raw_table('notes')} WHERE id IN (SELECT unnest($ids))", {"ids": sorted(map(str, note_ids))}
        ).fetchall()
        found = {note_id: notes.removed_characters(v.as_plain_text(json.loads(data).get("content"))) for note_id, data in rows}
        return {note_id: chars for note_id, chars in found.items() if chars}

    def _convert_notes(self, pool: MakerPool | None) -> None:
        """Convert every note body and record text (`OWN_TEXTS`) not converted yet (by this
        converter) and keep it, once per distinct text: a note is usually on a deal, its person
        and their organization, activity notes repeat, and a rerun finds them done. The workers
        convert the short texts beside this process; the long ones are converted here, since a
        worker that converted them would keep tens of megabytes more for the rest of the transform."""
        texts = []
        if self.staging.has_collection("notes"):
            texts.append(f"SELECT coalesce(data->>'content', '') AS html FROM {raw_table('notes')} WHERE NOT coalesce(is_deleted, false)")
        for collection, fields in OWN_TEXTS.items():
            if self.staging.has_collection(collection):
                texts += [f"SELECT data->>'{key}' AS html FROM {raw_table(collection)} WHERE data->>'{key}' <> ''" for key, _ in fields]
        if not texts:
            return
        con = self.staging.con
        con.execute("DELETE FROM note_markdown WHERE converter <> ?", [notes.MARKDOWN_VERSION])
        bodies = self.staging.stream(
            f"SELECT DISTINCT md5(html) AS h, html FROM ({' UNION ALL '.join(texts)}) WHERE h NOT IN (SELECT content_hash FROM note_markdown)"
        )

        def short_ones() -> Iterator[list[tuple[str, str]]]:
            for batch in batched(bodies, TEXTS_PER_BATCH):
                self.staging.save_markdown(notes.markdown_of([text for text in batch if len(text[1]) > LONG_TEXT]), notes.MARKDOWN_VERSION)
                yield [text for text in batch if len(text[1]) <= LONG_TEXT]

        converted = pool.map(notes.markdown_of, short_ones(), here=notes.markdown_of) if pool else map(notes.markdown_of, short_ones())
        for markdown in converted:
            self.staging.save_markdown(markdown, notes.MARKDOWN_VERSION)


def _field_name(definition: dict[str, Any], code: str) -> str:
    return str(definition.get("field_name") or definition.get("name") or code)


def _rank(value: Any) -> float:
    """An order number or id as a number to sort by (Pipedrive sends integers); 0 when it is no number."""
    return v.finite_number(value) or 0.0


def transform(
    staging: Staging, mappings: Mappings, phone_region: str | None = None, *,
    workers: int | None = None, progress: ProgressFn | None = None,
) -> TransformSummary:
    """Transform the staged records. `workers`: processes that make records beside this one; by
    default one per core but one (at most `MAX_WORKERS`) when there are `PARALLEL_FROM` records or
    more to make, else none.
    Workers are spawned: a script that calls this must start from `if __name__ == "__main__":`.
    `progress` is told the records made, batch by batch (and how many there will be, if it has `expect`)."""
    return Transformer(staging, mappings, phone_region, workers=workers, progress=progress).run()
