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

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from migrate import jsontext
from migrate.staging.store import REPLACED_CHARACTERS, Staging, batched, raw_table
from migrate.transform import entities, incremental, notes
from migrate.transform import values as v
from migrate.transform.columns import (
    PIPEDRIVE_ID,
    PIPEDRIVE_ID_LABEL,
    ColumnRegistry,
    ColumnSpec,
)
from migrate.transform.encoders import ENCODERS, Encoder, Field, Lookups, RecordOut
from migrate.transform.lookups import IdSet, NameTable, SortedGroups
from migrate.transform.mapping import ColumnDecl, Mappings, SourceMapping

ENTITY_ORDER = ("organizations", "contacts", "services", "deals", "tasks")
ENTITY_SOURCES = {
    "organizations": ("organizations",),
    "contacts": ("persons",),
    "services": ("products",),
    "deals": ("deals", "deals_archived", "leads", "leads_archived"),
    "tasks": ("activities",),
}
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
V1_ENCODED = frozenset({"leads", "leads_archived"})
# Staged collections the transform reads for names, labels and field definitions, not as records
REFERENCE_COLLECTIONS = ("users", "pipelines", "stages", "activityTypes", "leadLabels", *sorted(set(FIELD_META.values())))
CHARACTER_REPLACED = "half of a character cut in two (a lone UTF-16 surrogate), which no UTF-8 text holds; replaced by U+FFFD"
# Texts of a record that join its notes: (field, title), by collection. They are dated like the record.
OWN_TEXTS = {
    "activities": (("note", "Activity note"), ("public_description", "Public description")),
    "products": (("description", "Description"),),
    "persons": (("notes", "Contact notes"),),
}
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


def payload_text(payload: dict[str, Any]) -> str:
    """The payload as stored (and hashed): sorted keys, so equal payloads are equal text."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def payload_hash(payload: dict[str, Any]) -> str:
    return text_hash(payload_text(payload))


def source_id(collection: str, record: dict[str, Any]) -> str:
    return f"lead:{record['id']}" if collection in V1_ENCODED else str(record["id"])


class Transformer:
    def __init__(self, staging: Staging, mappings: Mappings, phone_region: str | None = None):
        self.staging = staging
        self.mappings = mappings
        self.sources: incremental.Sources = {c: (m.entity, "lead:" if c in V1_ENCODED else "") for c, m in mappings.sources.items()}
        self.registry = ColumnRegistry()
        self.log = incremental.LookupLog()
        self.lookups = self._lookups(phone_region)
        self.known = {entity: self.log.watch(ids, entity) for entity, ids in self._known_ids().items()}
        self.fields = {meta: self._field_meta(meta) for meta in set(FIELD_META.values())}
        self.issues: list[tuple[str, str, str, str, str]] = self._reference_issues()
        self.summary = TransformSummary()
        self._writing = False
        self._only_dirty = False
        self._declare_columns()

    # -- reference data -------------------------------------------------------------------
    def _lookups(self, phone_region: str | None) -> Lookups:
        st = self.staging
        users = {str(u["id"]): u for u in st.iter_raw("users")}
        pipelines = {str(p["id"]): p for p in st.iter_raw("pipelines")}
        stages = sorted(
            st.iter_raw("stages"),
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
            activity_types={str(t.get("key_string")): t.get("name") or str(t.get("key_string")) for t in st.iter_raw("activityTypes")},
            lead_labels={str(label["id"]): label.get("name") or str(label["id"]) for label in st.iter_raw("leadLabels")},
            organization_names=self.log.watch(self._names("organizations"), "organizations"),
            person_names=self.log.watch(self._names("persons"), "contacts"),
            product_names=self.log.watch({str(p["id"]): p.get("name") or "" for p in st.iter_raw("products")}, "services"),
            phone_region=phone_region or self._region_from_users(users),
        )

    def _reference_issues(self) -> list[tuple[str, str, str, str, str]]:
        """A character replaced in reference data (a user's name, a stage's, a field's label) shows
        wherever it is used: one issue for every record (`*`), on field `<collection>.<field>`."""
        found = []
        for collection in REFERENCE_COLLECTIONS:
            if not self.staging.has_collection(collection):
                continue
            where = f"(data->'{REPLACED_CHARACTERS}') IS NOT NULL"
            for identity, paths in self.staging.scan_in_id_order(f"id, data->>'{REPLACED_CHARACTERS}'", raw_table(collection), "id", where):
                detail = f"Pipedrive {collection} {identity}: {CHARACTER_REPLACED}"
                found += [("*", "*", f"{collection}.{path}", "character_replaced", detail) for path in json.loads(paths)]
        return found

    @staticmethod
    def _region_from_users(users: dict[str, dict[str, Any]]) -> str | None:
        """Numbers without a country code are read in the country most users' locale names."""
        regions = Counter(
            str(u.get("locale")).split("_")[-1].upper() for u in users.values() if u.get("locale") and "_" in str(u.get("locale"))
        )
        return regions.most_common(1)[0][0] if regions else None

    def _names(self, collection: str) -> NameTable:
        if not self.staging.has_collection(collection):
            return NameTable(())
        return NameTable(
            (str(identity), name if name else entities.NO_NAME)
            for identity, name in self.staging.stream(f"SELECT id, data->>'name' FROM {raw_table(collection)} ORDER BY num_id")
        )

    def _deal_products(self, collection: str) -> SortedGroups[dict[str, Any]]:
        """The deal product lines of the deals, in the order the deals are read (then by position)."""
        if not self.staging.has_collection("deal_products"):
            return SortedGroups(iter(()))
        where = "data->>'deal_id' IS NOT NULL"
        if self._only_dirty:
            where += " AND " + incremental.grouped_filter("deal_products") + " AND " + incremental.dirty_filter("deals", "data->>'deal_id'")
        rows = self.staging.stream_ordered(
            "data->>'deal_id', data", raw_table("deal_products"), "data->>'deal_id'", where,
            then="coalesce(try_cast(data->>'order_nr' AS DOUBLE), 0), coalesce(try_cast(data->>'id' AS BIGINT), 0)",
        )
        return SortedGroups((deal, jsontext.loads(data)) for deal, data in rows)

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
        return {str(f.get("field_code") or f.get("key")): f for f in self.staging.iter_raw(meta)}

    # -- columns --------------------------------------------------------------------------
    def _declare_columns(self) -> None:
        reg = self.registry
        for entity in ENTITY_ORDER:
            reg.declare(ColumnSpec(entity, PIPEDRIVE_ID, PIPEDRIVE_ID_LABEL, "plain", always=True))
        reg.declare(ColumnSpec("contacts", "other_emails", "Other emails", "plain"))
        self._declared: dict[str, list[_DeclaredColumn]] = {}
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
                columns.append(_DeclaredColumn.of(decl, spec, self._source_field(collection, decl)))
                for label in self._declared_options(collection, decl):
                    spec.add_option(label)
        self._custom: dict[str, list[tuple[ColumnSpec, Field, str, str]]] = {}
        for collection, mapping in self.mappings.sources.items():
            self._custom[collection] = self._custom_columns(collection, mapping)

    def _source_field(self, collection: str, decl: ColumnDecl) -> Field:
        """Where a declared column's values come from, with the labels of their option ids."""
        option_field = decl.field or (decl.options_from.split(":", 1)[1] if (decl.options_from or "").startswith("field:") else None)
        return Field(name=decl.source_field, options=self._options(FIELD_META[collection], option_field) if option_field else {})

    def _declared_options(self, collection: str, decl: ColumnDecl) -> list[str]:
        source = decl.options_from
        lk = self.lookups
        if source == "pipelines":
            return list(lk.pipelines.values())
        if source == "stages":
            return list(lk.stages.values())
        if source == "activity_types":
            return list(lk.activity_types.values())
        if source == "deal_statuses":
            return ["Open", "Won", "Lost", "Lead"]
        if source == "done":
            return ["Open", "Done"]
        if source and source.startswith("field:"):
            return list(self._options(FIELD_META[collection], source.split(":", 1)[1]).values())
        return []

    def _options(self, meta: str, field_code: str) -> dict[str, str]:
        definition = self.fields.get(meta, {}).get(field_code) or {}
        return {str(o.get("id")): str(o.get("label")) for o in v.as_list(definition.get("options")) if isinstance(o, dict)}

    def _custom_columns(self, collection: str, mapping: SourceMapping) -> list[tuple[ColumnSpec, Field, str, str]]:
        """One column per Pipedrive custom field, typed by `field_types.yaml`."""
        meta = FIELD_META.get(collection)
        result = []
        taken = RESERVED_LABELS.get(mapping.entity, set()) | {
            column.spec.label.casefold()
            for c, columns in self._declared.items()
            if self.mappings.sources[c].entity == mapping.entity
            for column in columns
        } | {PIPEDRIVE_ID_LABEL.casefold(), "other emails"}
        for code, definition in sorted(self.fields.get(meta, {}).items(), key=lambda kv: (_rank(kv[1].get("order_nr")), kv[0])):
            if not (definition.get("is_custom_field") or definition.get("edit_flag")) or definition.get("is_subfield"):
                continue
            rule = self.mappings.field_types.get(str(definition.get("field_type")))
            name = str(definition.get("field_name") or definition.get("name") or code)
            if rule is None:
                self.issues.append((mapping.entity, "*", name, "field_type_unsupported", f"field type {definition.get('field_type')!r} has no mapping; values kept as text"))
                rule_type, rule_encode = "plain", "text"
            else:
                rule_type, rule_encode = rule.type, rule.encode
            key = f"cf:{code}"
            label = self._free_label(mapping.entity, name, taken, key)
            spec = self.registry.declare(
                ColumnSpec(mapping.entity, key, label, rule_type, always=rule_type != "currency", template=rule_type == "currency")
            )
            options = self._options(meta, code)
            if rule_type == "singleSelect":
                for option in options.values():
                    spec.add_option(option)
            result.append((spec, Field(name=name, options=options), code, rule_encode))
        return result

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
        self._convert_notes()  # committed before the output transaction: the note streams read it
        context = incremental.context(self.staging, self.sources, self.mappings, self.lookups.phone_region)
        self.summary.full_reason = incremental.why_full(self.staging, context)
        if self.summary.full_reason is None:
            dirty, staged = incremental.mark_dirty(self.staging, self.sources), self._staged()
            if dirty > staged // 2:  # then reading them by id costs more than reading everything
                self.summary.full_reason = f"{dirty:,} of {staged:,} records changed or depend on a change"
        self._only_dirty = self.summary.full_reason is None
        if self._only_dirty:
            incremental.restore_columns(self.registry, self.staging.target_columns())
            self.issues = []  # the column issues are the kept ones

        def finish() -> tuple[list[dict[str, Any]], list[tuple[str, str, str, str, str]]]:
            self.summary.columns = [spec.to_json() for spec in self.registry.to_create()]
            incremental.keep_inputs(self.staging, self.sources, context, only_changed=self._only_dirty)
            return self.summary.columns, self.issues

        self.staging.replace_transform_output(self._records(), finish, only_dirty=self._only_dirty)
        self.summary.records, self.summary.skipped, self.summary.issues = self.staging.transform_counts()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _staged(self) -> int:
        return sum(self.staging.count_raw(collection)[0] for collection in self.sources)

    def _records(self) -> Iterator[tuple[str, str, str, str, str | None]]:
        self._writing = True  # inside the output transaction: issues may be written as they come
        for entity in ENTITY_ORDER:
            for collection, mapping in self.mappings.sources.items():
                if mapping.entity == entity:
                    yield from self._collection_records(collection, mapping)

    def _collection_records(self, collection: str, mapping: SourceMapping) -> Iterator[tuple[str, str, str, str, str | None]]:
        notes_by_target = self._notes_for(collection)
        if collection in ("deals", "deals_archived"):
            self.lookups.deal_products = self._deal_products(collection)
        entity, prefix = self.sources[collection]
        where = incremental.dirty_filter(entity, "id", prefix) if self._only_dirty else "TRUE"
        for batch in batched(self.staging.iter_raw(collection, where=where), NOTES_PER_BATCH):
            own_markdown = self._own_text_markdown(collection, batch)
            for record in batch:
                sid = source_id(collection, record)
                self.summary.made += 1
                if _deleted(record):
                    self._issue(entity, sid, "*", "deleted_in_pipedrive", f"{collection} {record.get('id')} is deleted in Pipedrive; not migrated")
                    continue
                text = payload_text(self._payload(collection, mapping, record, sid, notes_by_target, own_markdown))
                yield entity, sid, text, text_hash(text), self.log.take(entity, sid)

    def _own_text_markdown(self, collection: str, records: list[dict[str, Any]]) -> dict[str, str]:
        """The kept conversions of these records' own texts (activity notes, descriptions), by text."""
        digest_of = {text: _md5(text) for record in records for key, _ in OWN_TEXTS.get(collection, ()) if (text := v.as_plain_text(record.get(key)))}
        kept = self.staging.note_markdown(set(digest_of.values())) if digest_of else {}
        return {text: kept[digest] for text, digest in digest_of.items() if digest in kept}

    def _payload(
        self, collection: str, mapping: SourceMapping, record: dict[str, Any], sid: str,
        notes_by_target: SortedGroups[notes.NoteEntry], own_markdown: dict[str, str],
    ) -> dict[str, Any]:
        core = self._core(collection, record)
        out = RecordOut(self.registry)
        for key, value in core.values.items():
            out.put(self.registry.get(mapping.entity, key), value)
        out.put(self.registry.get(mapping.entity, PIPEDRIVE_ID), sid)
        for column in self._declared[collection]:
            value = _get(record, column.path)
            if column.currency_path:
                value = None if value in (None, "") else {"value": value, "currency": _get(record, column.currency_path)}
            self._encode(column.encoder, value, record, column.spec, column.field, out)
        custom_values = record if collection in V1_ENCODED else (record.get("custom_fields") or {})
        if not isinstance(custom_values, dict):
            out.issue("custom_fields", "custom_fields_unreadable", f"custom_fields is {_as_entered(custom_values)!r}, not an object: no custom field value could be read")
            custom_values = {}
        for spec, fld, code, encode in self._custom[collection]:
            value = _v1_value(custom_values, code, spec.type) if collection in V1_ENCODED else custom_values.get(code)
            if value is None or value == "" or value == []:
                continue
            self._encode(ENCODERS[encode], value, record, spec, fld, out)
        for field_name, rule, detail in core.issues + out.issues:
            self._issue(mapping.entity, sid, field_name, rule, detail)
        for field_name in record.get(REPLACED_CHARACTERS) or ():
            self._issue(mapping.entity, sid, field_name, "character_replaced", CHARACTER_REPLACED)
        note_text = self._compose_notes(collection, record, sid, mapping.entity, notes_by_target, own_markdown)
        return {
            "fields": core.fields,
            "links": core.links,
            "services": core.services,
            "users": core.users,
            "values": dict(sorted(out.values.items())),
            "notes": note_text,
        }

    def _encode(self, encoder: Encoder, value: Any, record: dict[str, Any], spec: ColumnSpec, fld: Field, out: RecordOut) -> None:
        """Run one encoder. A value it cannot read (text where a number belongs, say) is kept as
        text in '<column> (as entered)' and reported with its record and field: never a traceback."""
        try:
            encoder(value, record, spec, fld, self.lookups, out)
        except (ValueError, TypeError, AttributeError) as exc:
            text = _as_entered(value)
            fallback = self.registry.variant(spec, "as_entered", "as entered", "plain")
            out.put(fallback, text)
            out.issue(fld.name, "invalid_value_kept_as_text", f"{text!r} cannot be read ({exc}); kept as text in '{fallback.label}'")

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
        notes_read = (
            "(SELECT try_cast(id AS BIGINT) AS note_id, f[1]->>'$' AS target, f[2]->>'$' AS user_id, f[3]->>'$' AS add_time, "
            "f[4] AS pinned, f[5]->>'$' AS user_name, md5(coalesce(f[6]->>'$', '')) AS digest, f[7] AS replaced "
            f"FROM (SELECT id, json_extract(data, {paths!r}) AS f FROM {raw_table('notes')} WHERE {rows_read}))"
        )
        where = "target IS NOT NULL"
        if self._only_dirty:
            entity, prefix = self.sources[collection]
            where += " AND " + incremental.dirty_filter(entity, "target", prefix)
        rows = self.staging.stream_ordered(
            "target, user_id, add_time, pinned, user_name, digest, replaced, note_id", notes_read, "target", where, then="note_id"
        )

        def entries(batch: list[tuple[Any, ...]]) -> Iterator[tuple[str, notes.NoteEntry]]:
            markdown = self.staging.note_markdown({r[5] for r in batch})
            for target, user_id, add_time, pinned, user_name, digest, replaced, note_id in batch:
                author = self.lookups.users.get(str(user_id))
                yield target, notes.NoteEntry(
                    author=v.as_plain_text((author or {}).get("name") or user_name) or None,
                    created=_utc_or_none(add_time),
                    html="",
                    title="Pinned" if pinned is not None and json.loads(pinned) else None,
                    markdown=markdown[digest],
                    replaced=None if replaced is None else f"Pipedrive note {note_id}, {', '.join(json.loads(replaced))}",
                )

        return SortedGroups(entry for batch in batched(rows, NOTES_PER_BATCH) for entry in entries(batch))

    def _convert_notes(self) -> None:
        """Convert every note body and record text (`OWN_TEXTS`) not converted yet (by this
        converter) and keep it, once per distinct text: a note is usually on a deal, its person
        and their organization, activity notes repeat, and a rerun finds them done."""
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
        batch: list[tuple[str, str]] = []
        for digest, html in bodies:
            batch.append((digest, notes.html_to_markdown(html)))
            if len(batch) >= 1000:
                self.staging.save_markdown(batch, notes.MARKDOWN_VERSION)
                batch = []
        self.staging.save_markdown(batch, notes.MARKDOWN_VERSION)

    def _compose_notes(
        self, collection: str, record: dict[str, Any], sid: str, entity: str,
        notes_by_target: SortedGroups[notes.NoteEntry], own_markdown: dict[str, str],
    ) -> str | None:
        entries = list(notes_by_target.get(str(record.get("id")), []))
        # the record's own texts are dated like the record, so they sort before later notes
        created = _utc_or_none(record.get("add_time"))
        for key, title in OWN_TEXTS.get(collection, ()):
            if (html := v.as_plain_text(record.get(key))).strip():
                entries.append(notes.NoteEntry(author=None, created=created, html=html, title=title, markdown=own_markdown.get(html)))
        if not entries:
            return None
        for entry in entries:
            if entry.replaced:
                self._issue(entity, sid, "notes", "character_replaced", f"{entry.replaced}: {CHARACTER_REPLACED}")
        text, truncated = notes.compose_notes(entries)
        if truncated:
            self._issue(entity, sid, "notes", "notes_truncated", f"notes exceed {notes.NOTES_LIMIT:,} characters; the end was cut (marked in the text)")
        return text or None


def _md5(text: str) -> str:
    """As DuckDB's md5() of the same text (a text it cannot hold just misses the kept conversions)."""
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()


def _rank(value: Any) -> float:
    """An order number or id as a number to sort by (Pipedrive sends integers); 0 when it is no number."""
    return v.finite_number(value) or 0.0


def _utc_or_none(value: Any) -> str | None:
    try:
        return v.to_utc_datetime(value)
    except (ValueError, TypeError):
        return None


def _as_entered(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(_as_entered(v) for v in value.values() if v not in (None, "", [], {}))
    if isinstance(value, list):
        return ", ".join(_as_entered(v) for v in value)
    return str(value)


def _deleted(record: dict[str, Any]) -> bool:
    return bool(record.get("is_deleted") or record.get("status") == "deleted" or record.get("active_flag") is False)


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class _DeclaredColumn:
    """A declared column as the record loop reads it: its encoder and source paths resolved once."""

    encoder: Encoder
    path: tuple[str, ...]
    currency_path: tuple[str, ...] | None
    spec: ColumnSpec
    field: Field

    @classmethod
    def of(cls, decl: ColumnDecl, spec: ColumnSpec, fld: Field) -> _DeclaredColumn:
        currency = tuple(decl.currency_from.split(".")) if decl.currency_from else None
        return cls(ENCODERS[decl.encode], tuple(decl.source_field.split(".")), currency, spec, fld)


def _v1_value(record: dict[str, Any], code: str, column_type: str) -> Any:
    """Reassemble a v1 flat custom value (leads) into the v2 shape the encoders read."""
    value = record.get(code)
    if value is None:
        return None
    if f"{code}_currency" in record:
        return {"value": value, "currency": record.get(f"{code}_currency")}
    if f"{code}_until" in record:
        return {"value": value, "until": record.get(f"{code}_until")}
    if f"{code}_formatted_address" in record:
        return {"value": value, "formatted_address": record.get(f"{code}_formatted_address")}
    return value


def transform(staging: Staging, mappings: Mappings, phone_region: str | None = None) -> TransformSummary:
    return Transformer(staging, mappings, phone_region).run()
