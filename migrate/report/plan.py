"""The plan: what a run would do to every record, field by field, without writing anything.

For each transformed record the plan compares three states, all in one symbolic form
(relations as Pipedrive ids, single selects as option labels, columns by their key):

* intended — what the transform makes of the Pipedrive record now;
* target — what Customermates holds now (read by the Pipedrive ID column, ⌈records/100⌉
  searches per entity);
* written — what this tool last wrote (kept in the state file by the loader).

Actions: `create` (not in the target), `unchanged` (target equals intended), `update`
(they differ: each changed field with before → after), `conflict` (the target was edited
since we wrote it AND the source changed too), `skip` (with the reason: deleted in
Pipedrive, or deleted in Customermates after the migration).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import ijson

from migrate.customermates.columns import ColumnIndex
from migrate.customermates.load import (
    LINKS_SET,
    LOAD_USERS_KEY,
    owner_unmatched_issue,
    unmatched_owners,
)
from migrate.customermates.target import DTO_RELATIONS, TargetState, notes_digest
from migrate.errors import MigrateError
from migrate.report.run_report import ISSUE_COLUMNS
from migrate.staging.store import Staging
from migrate.transform.encoders import ENCODERS, KEYED
from migrate.transform.engine import ENTITY_ORDER
from migrate.transform.entities import LINK_ENTITY
from migrate.transform.mapping import ColumnDecl

ACTIONS = ("create", "update", "unchanged", "skip", "conflict")
NAME_FIELDS = {"contacts": ("firstName", "lastName"), "organizations": ("name",), "services": ("name",), "deals": ("name",), "tasks": ("name",)}
PLAN_VERSION = 1


def source_fingerprint(staging: Staging) -> str:
    """A digest of every transformed record's hash, streamed (the lines "entity:id:hash", joined by newlines)."""
    digest = hashlib.sha256()
    rows = staging.stream("SELECT entity || ':' || source_id || ':' || payload_hash FROM target_records ORDER BY entity, source_id")
    for n, (line,) in enumerate(rows):
        digest.update(("\n" if n else "").encode() + line.encode())
    return digest.hexdigest()[:32]


class Planner:
    def __init__(self, staging: Staging, columns: ColumnIndex, target: TargetState, user_map: dict[str, str], user_names: dict[str, str]):
        self.staging = staging
        self.columns = columns
        self.target = target
        self.user_map = user_map
        # a record was last written with the users matched then: an owner who joined Customermates
        # since is a change the run makes, not an edit made there (read from the last complete load)
        written_users = staging.meta(LOAD_USERS_KEY)
        self.written_user_map: dict[str, str] = json.loads(written_users) if written_users else user_map
        self.user_names = user_names
        self.labels = {key: spec["label"] for spec in staging.target_columns() for key in [(spec["entity"], spec["key"])]}
        self.key_of_column = {cid: key for key, cid in columns.ids.items()}
        # by entity, the keys of the columns and the (key, label) of the options made since the last complete load
        self.new_keys: dict[str, set[str]] = {}
        self.new_options: dict[str, set[tuple[str, ...]]] = {}
        for made in columns.made_since_load(staging):
            if len(made) == 2:
                self.new_keys.setdefault(made[0], set()).add(made[1])
            else:
                self.new_options.setdefault(made[0], set()).add(made[1:])
        self.option_label = {
            cid: {uuid: label for label, uuid in columns.options.get(key, {}).items()} for key, cid in columns.ids.items()
        }
        self.default_labels: dict[str, dict[str, str]] = {}  # entity → key → the label of the column's default option
        for (entity, key), value in columns.defaults.items():
            self.default_labels.setdefault(entity, {})[key] = self.option_label.get(columns.ids[(entity, key)], {}).get(value, value)
        self.option_renames: dict[str, dict[str, dict[str, str]]] = {}  # entity → key → old label → new
        for (entity, key), labels in columns.option_renames.items():
            self.option_renames.setdefault(entity, {})[key] = labels
        self.name_of = functools.lru_cache(maxsize=10_000)(self._name)
        self.gone: dict[str, frozenset[str]] = {}

    def _name(self, entity: str, sid: str) -> str:
        """A related record's display name (looked up when a change shows it)."""
        fields = self.staging.target_fields(entity, sid)
        return _display_name(entity, fields) if fields is not None else ""

    # -- normal forms ---------------------------------------------------------------------
    def intended(self, payload: dict[str, Any], user_map: dict[str, str] | None = None) -> dict[str, Any]:
        """The payload in plan form, its users matched by `user_map` (by default the users matched now)."""
        user_map = self.user_map if user_map is None else user_map
        return {
            "fields": dict(payload["fields"]),
            "links": {k: sorted(v) for k, v in payload["links"].items() if v},
            "services": sorted([str(p), float(q)] for p, q in payload.get("services") or []),
            "users": sorted({user_map[u] for u in payload["users"] if u in user_map}),
            "values": dict(payload["values"]),
            "notes": bool(payload.get("notes")),
        }

    def from_target(self, entity: str, dto: dict[str, Any], like: dict[str, Any], pid_of: dict[str, str]) -> dict[str, Any]:
        """The target record in intended form; only relations set from this side are compared.
        `pid_of` translates the related records' Customermates ids to Pipedrive ids."""
        fields = {k: dto.get(k) for k in like["fields"]}
        links = {}
        for key in like["links"].keys() | set(LINKS_SET.get(entity, ())):
            related = dto.get(DTO_RELATIONS[key]) or []
            pids = sorted(pid_of.get(r["id"], f"?{r['id']}") for r in related)
            if pids:
                links[key] = pids
        services = []
        if entity == "deals":
            services = sorted([pid_of.get(s["id"], f"?{s['id']}"), float(s.get("quantity") or 0)] for s in dto.get("services") or [])
        values = {}
        for cell in dto.get("customFieldValues") or []:
            key = self.key_of_column.get(cell["columnId"])
            if key is None or key[0] != entity or cell.get("value") in (None, ""):
                continue
            values[key[1]] = self.option_label.get(cell["columnId"], {}).get(cell["value"], cell["value"])
        return {
            "fields": fields,
            "links": links,
            "services": services,
            "users": sorted(u["id"] for u in dto.get("users") or []),
            "values": values,
            "notes": bool(dto.get("notes")),
        }

    def _relabelled(self, entity: str, written: dict[str, Any]) -> dict[str, Any]:
        """A payload as last written, with the labels of the options renamed in Pipedrive (and in
        place) since: the record holds the same option, which is no change."""
        renames = self.option_renames.get(entity, {})
        if not renames.keys() & written["values"].keys():
            return written
        values = {key: renames[key].get(value, value) if key in renames else value for key, value in written["values"].items()}
        return {**written, "values": values}

    def _without_new_columns(self, entity: str, before: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        """`before` with the values of columns made since the record was last written as it was
        written then: such a column (one a user deleted, made again; a field's new type) holds no
        value yet, and that is no edit made in Customermates; nor is a value missing whose option
        was made since (one a user deleted, made again)."""
        keys, options = self.new_keys.get(entity, set()), self.new_options.get(entity, set())
        if not keys and not options:
            return before
        values = {k: v for k, v in before["values"].items() if k not in keys}
        values.update({k: v for k, v in last["values"].items() if k in keys or (k not in values and (k, v) in options)})
        return {**before, "values": values}

    def _without_default_fill(self, entity: str, before: dict[str, Any], last: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """`before` without the values that are their column's default option where the record was
        last written with none and is to be written with none: the server fills a default into every
        record without a value when a user sets it, and into a record created without one (contract
        §6), which is no edit made in Customermates, and an update leaves such a value
        (`Loader.as_update`). A user's pick of that option looks the same and stays too; where
        Pipedrive gives the record a value now, the default counts as an edit, so that the value
        written never replaces a pick."""
        defaults = self.default_labels.get(entity, {})
        filled = {
            key for key, label in defaults.items()
            if before["values"].get(key) == label and key not in last["values"] and key not in after["values"]
        }
        if not filled:
            return before
        return {**before, "values": {k: v for k, v in before["values"].items() if k not in filled}}

    def _comparable(self, entity: str, form: dict[str, Any]) -> dict[str, Any]:
        """A record's form without what the record cannot hold for an edit made in Customermates to
        show in: the values of columns no Pipedrive field fills now (a field deleted there) and links
        to records deleted in Customermates (a user deleted the contact, not the deal)."""
        values = {k: value for k, value in form["values"].items() if (entity, k) in self.labels}
        return {**self._without_gone(form), "values": values}

    def _without_gone(self, form: dict[str, Any]) -> dict[str, Any]:
        """A record's form without its links to records deleted in Customermates, which a run leaves
        out of what it writes (`link_target_deleted_in_target`)."""
        links = {key: [p for p in pids if p not in self._gone(LINK_ENTITY[key])] for key, pids in form["links"].items()}
        services = [line for line in form["services"] if line[0] not in self._gone("services")]
        return {**form, "links": {k: v for k, v in links.items() if v}, "services": services}

    def _gone(self, entity: str) -> frozenset[str]:
        """The Pipedrive ids of the migrated records of `entity` deleted in Customermates."""
        if entity not in self.gone:
            self.gone[entity] = frozenset(self.target.migrated_but_gone(entity))
        return self.gone[entity]

    def _refilled(self, entity: str, before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
        """The values a run writes although the record is as last written: those in columns (or
        options) made since, which name the new ids, so the record's request body is new."""
        keys, options = self.new_keys.get(entity, set()), self.new_options.get(entity, set())
        return [
            {"field": self.labels.get((entity, key), key), "before": before["values"].get(key), "after": value}
            for key, value in sorted(after["values"].items())
            if (key in keys or (key, value) in options) and before["values"].get(key) != value
        ]

    def _relinked(self, entity: str, before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
        """The links a run writes although the record is as last written: those to records deleted in
        Customermates, which it creates again (new ids, so the record's request body is new)."""
        gone = any(set(pids) & self._gone(LINK_ENTITY[key]) for key, pids in after["links"].items())
        if not gone and not any(line[0] in self._gone("services") for line in after["services"]):
            return []
        links_only = {"fields": {}, "users": [], "values": {}, "notes": False}
        return self.changes(entity, {**before, **links_only}, {**after, **links_only})

    # -- diff -----------------------------------------------------------------------------
    def changes(self, entity: str, before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
        result = []
        for name in sorted(before["fields"].keys() | after["fields"].keys()):
            old, new = before["fields"].get(name), after["fields"].get(name)
            if _norm(old) != _norm(new):
                result.append({"field": name, "before": old, "after": new})
        for key in sorted(before["links"].keys() | after["links"].keys()):
            old, new = before["links"].get(key, []), after["links"].get(key, [])
            if old != new:
                kind = LINK_ENTITY[key]
                result.append({"field": kind, "before": self._shown(kind, old), "after": self._shown(kind, new)})
        if before["services"] != after["services"]:
            result.append({"field": "services", "before": self._quantities(before["services"]), "after": self._quantities(after["services"])})
        if before["users"] != after["users"]:
            result.append({"field": "users", "before": [self.user_names.get(u, u) for u in before["users"]], "after": [self.user_names.get(u, u) for u in after["users"]]})
        for key in sorted(before["values"].keys() | after["values"].keys()):
            old, new = before["values"].get(key), after["values"].get(key)
            if old != new:
                result.append({"field": self.labels.get((entity, key), key), "before": old, "after": new})
        if before["notes"] != after["notes"]:
            result.append({"field": "notes", "before": "present" if before["notes"] else None, "after": "present" if after["notes"] else None})
        return result

    def _shown(self, entity: str, pids: list[str]) -> list[str]:
        return [self.name_of(entity, p) or f"#{p}" for p in pids]

    def _quantities(self, services: list[list[Any]]) -> list[str]:
        return [f"{q:g} × {self.name_of('services', p) or '#' + str(p)}" for p, q in services]

    # -- the plan -------------------------------------------------------------------------
    def plan(
        self, on_target_deleted: str, listed: Callable[[str, dict[str, Any]], None], *, changed_only: bool = False
    ) -> dict[str, dict[str, int]]:
        """Every record's action, handed to `listed` (entity, entry) one by one; returns the counts.
        With `changed_only`, only the records whose payload changed since it was last written
        (or never was): the others cannot be a conflict, and a run sends them nothing."""
        summary = {e: dict.fromkeys(ACTIONS, 0) for e in ENTITY_ORDER}
        for entity in ENTITY_ORDER:
            if changed_only:
                self.staging.mark_changed_since_written(entity)
            for batch in self.staging.iter_target_batches(entity, among="targets_changed" if changed_only else None):
                sids = [sid for sid, _, _ in batch]
                id_map = self.staging.id_map_for(entity, sids)
                written = self.staging.written_for(entity, sids)
                notes_read = self.staging.notes_read_for(entity, sids)
                held = self.target.records(entity, sids)
                pid_of = self.target.pids_of_related(dto for dtos in held.values() for dto in dtos)
                for sid, payload, digest in batch:
                    item = self._plan_record(
                        entity, sid, payload, id_map, written.get(sid), notes_read.get(sid), held.get(sid, []), pid_of, on_target_deleted
                    )
                    item["hash"] = digest
                    summary[entity][item["action"]] += 1
                    listed(entity, item)
            for (sid,) in self.staging.stream(
                "SELECT source_id FROM transform_issues WHERE rule = 'deleted_in_pipedrive' AND entity = $e ORDER BY source_id", {"e": entity}
            ):
                summary[entity]["skip"] += 1
                listed(entity, {"source_id": sid, "name": "", "action": "skip", "reason": "deleted in Pipedrive", "changes": []})
        return summary

    def _plan_record(
        self,
        entity: str,
        sid: str,
        payload: dict[str, Any],
        id_map: dict[str, tuple[str, str]],
        written: dict[str, Any] | None,
        notes_read: str | None,
        dtos: list[dict[str, Any]],
        pid_of: dict[str, str],
        on_target_deleted: str,
    ) -> dict[str, Any]:
        after = self.intended(payload)
        item: dict[str, Any] = {"source_id": sid, "name": _display_name(entity, payload["fields"]), "changes": []}
        if written is not None:
            written = self._relabelled(entity, written)
        if not dtos:
            if sid in id_map and on_target_deleted == "report":
                return {**item, "action": "skip", "reason": "deleted in Customermates after it was migrated"}
            # a new record's content is the source's; listing every field of every create would
            # multiply the plan's size by ten (176 MB instead of 16 MB for 100k records)
            return {**item, "action": "create"}
        # of several records carrying the Pipedrive ID, the one the run writes to (a user's copy may be read first)
        dto = next((d for d in dtos if d["id"] == id_map.get(sid, ("",))[0]), dtos[0])
        if len(dtos) > 1:
            item["warning"] = f"{len(dtos)} Customermates records carry this Pipedrive ID; the one migrated (else the first) is compared"
        before = self.from_target(entity, dto, after, pid_of)
        if on_target_deleted == "report":  # the run writes no link to a record deleted there (else creates it again, linked)
            before, after = self._without_gone(before), self._without_gone(after)
        changes = self.changes(entity, before, after)
        if written is not None:
            last = self.intended(written, self.written_user_map)
            # what the run goes by: the payload as last written (a note's text too, which the
            # target's form shows only as there or not) and the owners matched then
            source_changed = _canonical(written) != _canonical(payload) or last["users"] != after["users"]
            unfilled = self._without_default_fill(entity, before, last, after)
            target_edits = self.changes(
                entity, self._comparable(entity, last), self._comparable(entity, self._without_new_columns(entity, unfilled, last))
            )
            if notes_read is not None and notes_digest(dto.get("notes")) != notes_read:
                target_edits = [c for c in target_edits if c["field"] != "notes"]
                target_edits.append({"field": "notes", "before": "as last written", "after": "edited in Customermates"})
            if target_edits:
                item["target_edits"] = target_edits
            if not source_changed:
                refilled = self._refilled(entity, before, after)
                if refilled:
                    return {**item, "action": "update", "changes": refilled,
                            "reason": "a column or option it has a value in was deleted in Customermates; made again and filled"}
                relinked = self._relinked(entity, before, after) if on_target_deleted == "recreate" else []
                if relinked:
                    return {**item, "action": "update", "changes": relinked,
                            "reason": "a record it links was deleted in Customermates; created again and linked"}
                return {**item, "action": "unchanged"}  # a run sends nothing; edits made in Customermates stay
            # an update leaves a default the server filled in (`Loader.as_update`); `source-wins` writes a conflict whole
            updated = changes if unfilled is before else self.changes(entity, unfilled, after)
            if (written.get("notes") or "") != (payload.get("notes") or ""):
                # the target's form shows notes only as there or not: their change is the text's, as last written
                notes = notes_change(written.get("notes"), payload.get("notes"))
                changes = [c for c in changes if c["field"] != "notes"] + [notes]
                updated = [c for c in updated if c["field"] != "notes"] + [notes]
            if target_edits and updated:
                return {**item, "action": "conflict", "changes": changes}
            changes = updated
            if not changes:  # the run writes what changed in Pipedrive all the same
                return {**item, "action": "update", "reason": "Customermates already holds the new values (edited there the same way); written again"}
        if not changes:
            return {**item, "action": "unchanged"}
        return {**item, "action": "update", "changes": changes}


NOTES_LINES_SHOWN = 10  # of the lines a notes change removes and of those it adds; the rest are counted


def notes_change(before: str | None, after: str | None) -> dict[str, Any]:
    """A record's notes change as the lines it removes and the lines it adds (the notes are one
    Markdown text of every note attached; the whole texts would make the plan as large as the notes)."""
    old, new = (before or "").splitlines(), (after or "").splitlines()
    removed: list[str] = []
    added: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag != "equal":
            removed += old[i1:i2]
            added += new[j1:j2]

    def shown(lines: list[str]) -> list[str] | None:
        lines = [line for line in lines if line.strip()]
        more = len(lines) - NOTES_LINES_SHOWN
        return (lines[:NOTES_LINES_SHOWN] + ([f"… {more} more lines"] if more > 0 else [])) or None

    change = {"field": "notes", "before": shown(removed), "after": shown(added)}
    if change["before"] is None and change["after"] is None:
        change["after"] = ["(blank lines only)"]
    return change


NO_TARGET = "no-target"  # the target fingerprint of a plan made without Customermates settings


def check_saved_plan(path: Path, staging: Staging, target: TargetState) -> None:
    """Refuse to apply a plan made on other data: say what changed since. The plan file is read
    as a stream: a million-record plan.json is not loaded whole."""
    problems = []
    fingerprints = saved_plan_fingerprints(path)
    if fingerprints.get("source") != source_fingerprint(staging):
        count, first = staging.changed_since_plan(_saved_hashes(path), shown=10)
        shown = ", ".join(f"{e} {s}" for e, s in first) + (f" and {count - 10} more" if count > 10 else "")
        problems.append(f"Pipedrive changed since the plan was made: {count} records ({shown})")
    if fingerprints.get("target") == NO_TARGET:
        problems.append(
            "the plan was made without Customermates settings, against an empty Customermates, not this one: make it "
            "again with CUSTOMERMATES_URL and CUSTOMERMATES_API_KEY set"
        )
    elif fingerprints.get("target") != target.fingerprint:
        changed = staging.target_changed_since_plan(str(fingerprints.get("target")), shown=10)
        if changed is None:  # the plan was made with another state file, or another plan since
            problems.append("Customermates changed since the plan was made (records were created, edited or deleted there)")
        else:
            count, first = changed
            shown = ", ".join(first) + (f" and {count - 10} more" if count > 10 else "")
            problems.append(f"Customermates changed since the plan was made: {count} records ({shown})")
    if problems:
        raise MigrateError("; ".join(problems) + ". Make a new plan with `migrate plan` and review it.")


def saved_plan_fingerprints(path: Path) -> dict[str, Any]:
    """The fingerprints of a saved plan.json (read from its head); a clear error if it is none."""
    try:
        with path.open("rb") as handle:
            found = next(ijson.items(handle, "fingerprints"), None)
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise MigrateError(f"{path} is not a plan.json made by `migrate plan`: {exc}") from None
    if not isinstance(found, dict):
        raise MigrateError(f"{path} is not a plan.json made by `migrate plan`: it has no fingerprints")
    return found


def _saved_hashes(path: Path) -> Iterator[tuple[str, str, str]]:
    """(entity, Pipedrive id, payload hash) of every planned record that has a hash, streamed."""
    found: dict[str, str]
    with path.open("rb") as handle:
        entity, found = "", {}  # the entity and the keys seen of the record being read
        for prefix, event, value in ijson.parse(handle):
            parts = prefix.split(".")  # records.<entity>.item[.<key>]
            if len(parts) < 3 or parts[0] != "records" or parts[2] != "item":
                continue
            if len(parts) == 3 and event == "start_map":
                entity, found = parts[1], {}
            elif len(parts) == 3 and event == "end_map" and found.get("source_id") and found.get("hash"):
                yield entity, found["source_id"], found["hash"]
            elif len(parts) == 4 and parts[3] in ("source_id", "hash") and event in ("string", "number"):
                found[parts[3]] = str(value)


def _display_name(entity: str, fields: dict[str, Any]) -> str:
    return " ".join(str(fields.get(f) or "") for f in NAME_FIELDS[entity]).strip()


def _norm(value: Any) -> Any:
    if isinstance(value, list):
        return sorted(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def build_plan(
    staging: Staging,
    columns: ColumnIndex,
    target: TargetState,
    user_map: dict[str, str],
    user_names: dict[str, str],
    *,
    on_target_deleted: str = "report",
    field_coverage: list[dict[str, str]] | None = None,
    conflicts_only: bool = False,
    spool: bool = False,
) -> dict[str, Any]:
    """The plan. Its records are held in `plan["records"]` (all, or with `conflicts_only` the
    conflicts, looked for among the records whose payload changed since last written, so its
    counts are of those records), or with `spool` written to the state file as they are planned
    and read back by `SpooledRecords`."""
    planner = Planner(staging, columns, target, user_map, user_names)
    listed: dict[str, list[dict[str, Any]]] = {e: [] for e in ENTITY_ORDER}
    if spool:
        staging.clear_plan_records()
        if target.fingerprint != NO_TARGET:  # for `run --plan` to name what changed there since
            staging.keep_planned_target(target.fingerprint)
        with _Spool(staging) as spooled:
            summary = planner.plan(on_target_deleted, spooled.add)
    else:

        def hold(entity: str, item: dict[str, Any]) -> None:
            if not conflicts_only or item["action"] == "conflict":
                listed[entity].append(item)

        summary = planner.plan(on_target_deleted, hold, changed_only=conflicts_only)
    lossy = {rule: {"count": count, "examples": staging.transform_issues(rule=rule, limit=5)} for rule, count in staging.transform_issue_counts()}
    owners: list[dict[str, Any]] = []
    if target.fingerprint != NO_TARGET:  # the users are known: the owners the run will report unmatched
        owners = unmatched_owners({str(u["id"]): u for u in staging.iter_raw("users")}, staging.referenced_users(), user_map)
        if owners:
            examples = [dict(zip(ISSUE_COLUMNS, owner_unmatched_issue(owner), strict=True)) for owner in owners[:5]]
            lossy["owner_unmatched"] = {"count": len(owners), "examples": examples}
            lossy = dict(sorted(lossy.items(), key=lambda item: -item[1]["count"]))
    plan = {
        "summary": summary,
        "version": PLAN_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # what a saved plan is checked against (a run's own plan of conflicts is never saved)
        **({} if conflicts_only else {"fingerprints": {"source": source_fingerprint(staging), "target": target.fingerprint}}),
        "schema": {
            "columns_to_create": columns.created, "columns_to_rename": columns.renamed,
            "options_to_add": columns.options_added, "options_to_rename": columns.options_renamed,
        },
        "lossy": lossy,
        "unmatched_users": owners,  # as the run report lists them; with the issues in `lossy` too
        "coverage": field_coverage or [],
    }
    if not spool:
        plan["records"] = listed
    return plan


class _Spool:
    """Writes plan entries into the state file, a few thousand at a time."""

    def __init__(self, staging: Staging, batch: int = 2000):
        self.staging, self.batch = staging, batch
        self.rows: list[tuple[str, int, str, str]] = []
        self.seq = 0

    def add(self, entity: str, item: dict[str, Any]) -> None:
        self.rows.append((entity, self.seq, item["action"], json.dumps(item, ensure_ascii=False)))
        self.seq += 1
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        self.staging.add_plan_records(self.rows)
        self.rows = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


class PlanRecords(Protocol):
    """A plan's records by entity, in plan order: held in memory or spooled in the state file."""

    def entities(self) -> list[str]: ...

    def actions(self) -> list[str]: ...

    def count(self, entity: str, actions: Sequence[str]) -> int: ...

    def of(self, entity: str, actions: Sequence[str] | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]: ...


@dataclass
class ListedRecords:
    """The records a plan holds (`plan["records"]`)."""

    by_entity: dict[str, list[dict[str, Any]]]

    def entities(self) -> list[str]:
        return list(self.by_entity)

    def actions(self) -> list[str]:
        return sorted({str(r.get("action")) for records in self.by_entity.values() for r in records})

    def count(self, entity: str, actions: Sequence[str]) -> int:
        return sum(1 for _ in self.of(entity, actions))

    def of(self, entity: str, actions: Sequence[str] | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        chosen = (r for r in self.by_entity.get(entity, []) if actions is None or r.get("action") in actions)
        return itertools.islice(chosen, limit)


@dataclass
class SpooledRecords:
    """The records of a plan built with `spool=True`, read from the state file as needed."""

    staging: Staging

    def entities(self) -> list[str]:
        return list(ENTITY_ORDER)

    def actions(self) -> list[str]:
        return self.staging.plan_actions()

    def count(self, entity: str, actions: Sequence[str]) -> int:
        return self.staging.plan_record_count(entity, list(actions))

    def of(self, entity: str, actions: Sequence[str] | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self.staging.plan_records(entity, list(actions) if actions is not None else None, limit)


def plan_entities(plan: dict[str, Any], records: PlanRecords) -> list[str]:
    """The entities a plan's files show, in the summary's order (then any only the records name)."""
    return list(dict.fromkeys([*plan.get("summary", {}), *records.entities()]))


def plan_markdown(plan: dict[str, Any], records: PlanRecords, *, max_rows: int = 200) -> str:
    """plan.md: the summary, the schema changes, lossy values, then every non-trivial record."""
    lines = ["# Migration plan", "", f"Generated {plan['generated_at']}.", "", "| entity | " + " | ".join(ACTIONS) + " |"]
    lines.append("|---|" + "---:|" * len(ACTIONS))
    for entity, counts in plan["summary"].items():
        lines.append(f"| {entity} | " + " | ".join(str(counts[a]) for a in ACTIONS) + " |")
    schema = plan["schema"]
    lines += ["", f"## Custom columns to create ({len(schema['columns_to_create'])})", ""]
    lines += [f"- {_md_text(c)}" for c in schema["columns_to_create"]] or ["None."]
    if schema["columns_to_rename"]:
        lines += ["", "## Columns to rename", ""] + [f"- {_md_text(c)}" for c in schema["columns_to_rename"]]
    if schema["options_to_add"]:
        lines += ["", "## Options to add", ""] + [f"- {_md_text(o)}" for o in schema["options_to_add"]]
    if schema["options_to_rename"]:
        lines += ["", "## Options to rename", ""] + [f"- {_md_text(o)}" for o in schema["options_to_rename"]]
    lines += ["", "## Values not carried exactly", ""]
    if not plan["lossy"]:
        lines.append("None.")
    for rule, info in plan["lossy"].items():
        examples = "; ".join(_md_text(f"{e['entity']} {e['source_id']} {e['field']}: {e['detail']}") for e in info["examples"][:3])
        lines.append(f"- **{rule}** ({info['count']}): {examples}")
    if plan.get("coverage"):
        lines += ["", "## Field coverage", "", "| entity | Pipedrive field | type | custom | goes to |", "|---|---|---|---|---|"]
        cells = ("entity", "pipedrive_field", "type", "custom", "goes_to")
        lines += ["| " + " | ".join(_md_text(r[cell]) for cell in cells) + " |" for r in plan["coverage"]]
    decisions = ("update", "conflict", "skip")
    for entity in plan_entities(plan, records):
        interesting, creates = records.count(entity, decisions), records.count(entity, ("create",))
        if not interesting and not creates:
            continue
        lines += ["", f"## {entity}", ""]
        if creates:
            shown = ", ".join(_md_text(f"{r['name'] or '#' + r['source_id']} ({r['source_id']})") for r in records.of(entity, ("create",), 20))
            lines.append(f"Create {creates}: {shown}{' …' if creates > 20 else ''}")
            lines.append("")
        for record in records.of(entity, decisions, max_rows):
            title = f"- **{record['action']}** {_md_text(record['name'] or '')} (Pipedrive {_md_text(record['source_id'])})"
            lines.append(title + (f": {_md_text(record['reason'])}" if record.get("reason") else ""))
            for change in record["changes"]:
                lines.append(f"  - {_md_text(change['field'])}: {_md(change['before'])} → {_md(change['after'])}")
        if interesting > max_rows:
            lines.append(f"- … {interesting - max_rows} more in plan.json")
    return "\n".join(lines) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")  # what makes HTML, links, emphasis, code or cells; not `_`, for the file read raw
_BACKTICKS = re.compile(r"`+")


def _md_text(value: Any) -> str:
    """Text from the data (a name, a field's label, a detail) as plan.md shows it: on one line, with
    the characters Markdown, HTML and tables read escaped, so a record named `<script>…` or a field
    named `a | b` shows as written, where it broke the table or reached a viewer as HTML."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).splitlines()))


def _md(value: Any) -> str:
    """A value as a code span, on one line: fenced by more backticks than any run in it (a backtick
    in a value closed the span early); `|` left as it is, as no table holds these."""
    if value is None or value == [] or value == "":
        return "∅"
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    text = " ".join(text.splitlines())
    text = f"{text[:120]}{'…' if len(text) > 120 else ''}"
    fence = "`" * (max(map(len, _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" or (text[:1] == " " and text[-1:] == " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


FIELD_SOURCES = (
    ("contacts", "persons", "personFields"),
    ("organizations", "organizations", "organizationFields"),
    ("services", "products", "productFields"),
    ("deals", "deals", "dealFields"),
    ("tasks", "activities", "activityFields"),
)


NOT_MIGRATED = "not migrated"  # how coverage.yaml's reasons for leaving a field behind begin


def coverage(staging: Staging, sources: dict[str, Any], builtin: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """For every Pipedrive field (standard and custom) of every entity: where it goes, or why not.

    A standard field goes where coverage.yaml says (a built-in field, a link, the notes) and to every
    column a declared mapping writes it into; a mapping that reads it only as a key to what it
    writes (a deal's id to its product lines, `encoders.KEYED`) is none. coverage.yaml's reason for
    leaving a field behind holds only while nothing takes it.

    `sources` is `Mappings.sources` (columns declared per collection); `builtin` is coverage.yaml."""
    columns = {(c["entity"], c["key"]): c for c in staging.target_columns()}
    rows = []
    for entity, collection, meta in FIELD_SOURCES:
        declared: dict[str, list[ColumnDecl]] = {}
        for decl in sources[collection].columns:
            if ENCODERS[decl.encode] not in KEYED:
                for name in (decl.source_field, *decl.also_from):
                    declared.setdefault(name.split(".")[0], []).append(decl)
        for definition in staging.iter_raw(meta):
            if definition.get("is_subfield"):
                continue
            code = str(definition.get("field_code") or definition.get("key"))
            name = str(definition.get("field_name") or definition.get("name") or code)
            custom = bool(definition.get("is_custom_field") or definition.get("edit_flag"))
            kind = str(definition.get("field_type"))
            if custom:
                where = ", ".join(_columns_of(columns, entity, f"cf:{code}")) or "a column created when a record has a value"
            else:
                said = str(builtin.get(collection, {}).get(code) or "")
                places = [said] if said and not said.startswith(NOT_MIGRATED) else []
                for decl in declared.get(code, ()):
                    places += _columns_of(columns, entity, decl.key) or [f"column '{decl.label}' ({decl.type})"]
                where = ", ".join(dict.fromkeys(places)) or said or f"{NOT_MIGRATED} — no mapping declared"
            rows.append({"entity": entity, "pipedrive_field": name, "code": code, "type": kind, "custom": "yes" if custom else "no", "goes_to": where})
    return rows


def _columns_of(columns: dict[tuple[str, str], dict[str, Any]], entity: str, key: str) -> list[str]:
    """The columns made for one column key, as the coverage table names them: the column itself and
    its variants (one per currency, '(as entered)')."""
    return [f"column '{c['label']}' ({c['type']})" for (e, k), c in columns.items() if e == entity and (k == key or k.startswith(f"{key}:"))]
