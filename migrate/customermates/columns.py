"""Make sure every custom column the transform asked for exists in Customermates.

Columns are matched by (entity type, label, type, and currency or whether it takes several
values) — labels are not unique in
Customermates, so a rerun must find and reuse what an earlier run created instead of
creating a twin. Missing ones are created through MCP (the only way; contract §6), with
every single-select option it makes `isDefault: false` so that nothing is written into existing
records (an existing option keeps its default, which a user may have chosen). Option UUIDs are read back from `GET /v1/<e>/configuration`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from migrate.customermates.client import (
    SINGULAR,
    CustomermatesClient,
    CustomermatesError,
    UncertainWriteError,
)
from migrate.customermates.mcp import McpAuthenticationError, McpClient, McpToolError
from migrate.staging.store import Staging

log = structlog.get_logger(__name__)

OPTION_COLORS = ("default", "secondary", "info", "success", "warning", "destructive")
# in the state file's meta: the columns (JSON [entity, key]) and the options ([entity, key, label])
# made since the last complete load. A record's value missing in one is no edit made in
# Customermates: the column or the option is new (or made again after a user deleted it).
NEW_COLUMNS_KEY = "columns_made_since_load"
# the key of a sync's "Deleted in Pipedrive" mark column in the state file's column map (`customermates.deletions`)
MARK_KEY = "deleted_in_pipedrive"


@dataclass
class ColumnIndex:
    """Target column ids and option ids, by (entity, column key)."""

    ids: dict[tuple[str, str], str] = field(default_factory=dict)
    options: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # label → option uuid
    # the uuid of a single select's default option, of the columns that have one (a user's choice: the
    # server fills it into the records without a value, contract §6)
    defaults: dict[tuple[str, str], str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    options_added: list[str] = field(default_factory=list)
    options_renamed: list[str] = field(default_factory=list)
    # (entity, key) → {label the records were written with: label now} of the options renamed in
    # Pipedrive, renamed in place (`Staging.relabel_written_options`; a dry run's plan applies them)
    option_renames: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    renamed: list[str] = field(default_factory=list)
    retyped: list[str] = field(default_factory=list)
    # columns of the migration's whose Pipedrive field is gone (deleted there): left with their values
    left: list[str] = field(default_factory=list)
    # (entity, key) of a column, (entity, key, label) of an option, made (or to be made) since the
    # last complete load
    new: set[tuple[str, ...]] = field(default_factory=set)

    def made_since_load(self, staging: Staging) -> set[tuple[str, ...]]:
        saved = staging.meta(NEW_COLUMNS_KEY)
        return self.new | {tuple(made) for made in json.loads(saved)} if saved else set(self.new)

    def _note_new(self, staging: Staging, made: list[tuple[str, ...]], *, dry_run: bool) -> None:
        """Note columns or options about to be made; saved first, so that a run stopped after
        making them still knows them."""
        if not made:
            return  # a meta write is a commit: none for every select column met with nothing new
        self.new.update(made)
        if not dry_run:
            staging.set_meta(NEW_COLUMNS_KEY, json.dumps(sorted(self.made_since_load(staging))))

    def migration_columns(self, entity: str) -> list[str]:
        return sorted(cid for (e, _), cid in self.ids.items() if e == entity)


def _matches(existing: dict[str, Any], spec: dict[str, Any]) -> bool:
    if existing.get("label") != spec["label"] or existing.get("type") != spec["type"]:
        return False
    if spec["type"] == "currency":
        return _currency(existing) == (spec.get("currency") or "")
    if spec["type"] in ("phone", "email", "link"):
        # a one-value column refuses a comma-joined list, and a list column splits a value at its commas
        return _multiple(existing) == bool(spec.get("allow_multiple"))
    return True


def _currency(column: dict[str, Any]) -> str:
    return ((column.get("options") or {}).get("currency") or "").lower()


def _multiple(column: dict[str, Any]) -> bool:
    return bool((column.get("options") or {}).get("allowMultiple"))


def _changed_shape(column: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """Why a column of the migration's, changed in Customermates since, can no longer hold what the
    migration writes into it (None: it still can). Its currency is the currency of every value in
    it; a one-value column refuses the comma-joined lists a several-values column is written."""
    if spec["type"] == "currency" and _currency(column) != (spec.get("currency") or ""):
        return f"its currency is {_currency(column) or 'none'} now, not {spec.get('currency')}"
    if spec["type"] in ("phone", "email", "link") and spec.get("allow_multiple") and not _multiple(column):
        return "it takes one value now, and the migration writes several"
    return None


def ensure_columns(
    staging: Staging, client: CustomermatesClient, mcp: McpClient | None, run_id: str, *, dry_run: bool = False
) -> ColumnIndex:
    specs = staging.target_columns()
    index = ColumnIndex()
    entities = sorted({s["entity"] for s in specs})
    configs = {e: client.configuration(e) for e in entities}
    if not dry_run:
        settle_pending_columns(staging, configs)
    known = staging.column_map()
    intended = {(s["entity"], s["key"]): s for s in specs}
    # the columns the state file gives to a column the migration still wants: another one whose
    # label matches (a field renamed in Pipedrive leaves its old label to a new field) is not one
    # of them, nor is one taken by an earlier spec of this run; nor one replaced for another (a field
    # whose type changes back takes its own back)
    replaced = staging.replaced_columns()
    claimed = {known[(s["entity"], s["key"])]["id"] for s in specs if (s["entity"], s["key"]) in known}
    claimed.update(*replaced.values())
    for spec in specs:
        entity, key = spec["entity"], spec["key"]
        existing_cols = configs[entity].get("customColumns") or []
        by_id = {c["id"]: c for c in existing_cols}
        remembered = known.get((entity, key))
        column = by_id.get(remembered["id"]) if remembered else None
        changed = None if column is None else _changed_shape(column, spec)
        replacing = None
        if column is not None and column.get("type") != spec["type"]:
            # the Pipedrive field changed type: a new column of the new type; the old one keeps
            # the values written before
            replacing = f"the {column['type']} column"
            kept = _set_aside(staging, mcp, entity, key, column, spec, dry_run=dry_run)
            index.retyped.append(f"{entity}: {spec['label']} ({column['type']} → {spec['type']}); the old column is kept{kept}")
            column = None
        elif changed is not None:
            # changed in Customermates so that the values would be refused or misread: a column
            # of its own, as a first run makes next to such a column; the old one keeps its settings
            replacing = "the column changed in Customermates"
            kept = _set_aside(staging, mcp, entity, key, column, spec, dry_run=dry_run)
            index.retyped.append(f"{entity}: {spec['label']} ({changed}); a new column is made, the old one is kept{kept}")
            column = None
        elif column is not None and remembered and remembered["label"] != spec["label"]:
            # renamed in Pipedrive (a label changed only in Customermates is left as the user set it)
            if not dry_run and mcp is not None:
                mcp.rename_custom_column(column, spec["label"])
                column["label"] = spec["label"]  # the configuration read at the start says so too now
            index.renamed.append(f"{entity}: {remembered['label']} → {spec['label']}")
        if column is None:
            mine = replaced.get((entity, key), set()) | ({remembered["id"]} if remembered else set())
            column = next(
                (
                    c for c in existing_cols
                    if (_matches(c, spec) or (c["id"] in mine and _matches({**c, "label": spec["label"]}, spec)))
                    and (c["id"] not in claimed or c["id"] in mine) and c["id"] not in index.ids.values()
                ),
                None,
            )
            if column is not None and column["label"] != spec["label"]:
                # a replaced column taken back: its label again
                index.renamed.append(f"{entity}: {column['label']} → {spec['label']}")
                if not dry_run and mcp is not None:
                    mcp.rename_custom_column(column, spec["label"])
                    column["label"] = spec["label"]
        if column is None:
            made = f"{entity}: {spec['label']} ({spec['type']})" + (f", replacing {replacing}" if replacing else "")
            if dry_run or mcp is None:
                index._note_new(staging, [(entity, key)], dry_run=True)
                index.created.append(made)
                continue
            with staging.transaction():
                index._note_new(staging, [(entity, key)], dry_run=False)
                staging.record_pending_column(entity, key, _shape(spec), [c["id"] for c in existing_cols], run_id)
            column_id = _create(staging, mcp, entity, key, spec)
            index.created.append(made)
            staging.save_column(entity, key, {"id": column_id, "label": spec["label"], "type": spec["type"]}, run_id)
            index.ids[(entity, key)] = column_id
            continue
        index.ids[(entity, key)] = column["id"]
        if remembered is not None and remembered["id"] != column["id"]:
            # taken (back) by its label: it holds what was written into it then (a field whose
            # type changed back), and records written since hold their values elsewhere
            index._note_new(staging, [(entity, key)], dry_run=dry_run or mcp is None)
        # remember the label Pipedrive gave, not the column's: a later difference then means a
        # rename in Pipedrive, while a rename made in Customermates stays (a dry run remembers
        # nothing: the run after it would take the rename it did not make as made)
        same = remembered is not None and remembered["id"] == column["id"]
        options = remembered["options"] if same else None
        pipedrive_options = remembered["pipedrive_options"] if same else None
        if not (dry_run or mcp is None):
            _remember(
                staging, known, entity, key,
                {"id": column["id"], "label": spec["label"], "type": column["type"], "options": options, "pipedrive_options": pipedrive_options},
            )
        if spec["type"] == "singleSelect":
            present = [o for o in (column.get("options") or {}).get("options") or []]
            ids = _option_ids(present, options)
            renamed = _renamed_options(spec, pipedrive_options, ids)
            for value, (_, label) in renamed.items():
                ids = {old: v for old, v in ids.items() if v != value} | {label: value}
            index.options[(entity, key)] = ids
            _note_default(index, entity, key, present)
            missing = [label for label in spec["options"] if label not in ids]
            index._note_new(staging, [(entity, key, label) for label in missing], dry_run=dry_run or mcp is None)
            if (missing or renamed) and not dry_run and mcp is not None:
                kept = [
                    {
                        "value": o["value"], "label": renamed[o["value"]][1] if o["value"] in renamed else o["label"],
                        "color": o.get("color") or "default", "isDefault": bool(o.get("isDefault")), "index": i,
                    }
                    for i, o in enumerate(sorted(present, key=lambda o: o.get("index", 0)))
                ]
                added = [
                    {"label": label, "color": OPTION_COLORS[(len(kept) + i) % len(OPTION_COLORS)], "isDefault": False, "index": len(kept) + i}
                    for i, label in enumerate(missing)
                ]
                mcp.update_single_select_options(column["id"], column["label"], kept + added)
                if renamed:
                    staging.relabel_written_options(entity, key, dict(renamed.values()))
            index.options_added.extend(f"{entity}: {spec['label']} → {label}" for label in missing)
            shown = {o["value"]: o["label"] for o in present}
            index.options_renamed.extend(f"{entity}: {spec['label']}: {shown[value]} → {label}" for value, (_, label) in renamed.items())
            if renamed:
                index.option_renames[(entity, key)] = dict(renamed.values())
    present = {entity: {c["id"] for c in config.get("customColumns") or []} for entity, config in configs.items()}
    index.left = sorted(
        f"{entity}: {column['label']}" for (entity, key), column in known.items()
        if (entity, key) not in intended and key != MARK_KEY and column["id"] in present.get(entity, ())
    )
    if dry_run or mcp is None:
        return index
    for entity in entities:  # read back ids and option uuids
        config = client.configuration(entity)
        by_id = {c["id"]: c for c in config.get("customColumns") or []}
        for (e, key), column_id in list(index.ids.items()):
            if e != entity:
                continue
            column = by_id.get(column_id)
            if column is None:
                raise CustomermatesError(
                    f"the {entity} column {intended[(entity, key)]['label']!r} ({column_id}) was deleted in Customermates while "
                    "this run set up its columns; nothing was written to the records yet. Run again: the column is made again"
                )
            if column.get("type") == "singleSelect":
                spec = intended[(entity, key)]
                # the labels as set up above: those of options renamed in Pipedrive are not remembered
                present = (column.get("options") or {}).get("options") or []
                index.options[(entity, key)] = _option_ids(present, index.options.get((entity, key)))
                _note_default(index, entity, key, present)
                _remember(
                    staging, known, entity, key,
                    {
                        "id": column_id, "label": spec["label"], "type": column["type"], "options": index.options[(entity, key)],
                        "pipedrive_options": spec.get("option_ids") or None,
                    },
                )
    return index


def _option_ids(present: list[dict[str, Any]], remembered: dict[str, str] | None) -> dict[str, str]:
    """Option label → option uuid: the column's options by their labels, and by the label the
    migration wrote an option under (`remembered`, from the state file) the option a user renamed
    in Customermates since; it is the same option, so it is neither added again nor moved off."""
    ids = {o["label"]: o["value"] for o in present}
    values = set(ids.values())
    for label, value in (remembered or {}).items():
        if label not in ids and value in values:
            ids[label] = value
    return ids


def _note_default(index: ColumnIndex, entity: str, key: str, present: list[dict[str, Any]]) -> None:
    """Note the column's default option (`ColumnIndex.defaults`), or that it has none."""
    default = next((o["value"] for o in present if o.get("isDefault")), None)
    if default is None:
        index.defaults.pop((entity, key), None)
    else:
        index.defaults[(entity, key)] = default


def _renamed_options(spec: dict[str, Any], remembered: dict[str, str] | None, ids: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Option uuid → (the label the migration wrote it under, the label Pipedrive gives it now), of
    the options renamed in Pipedrive since (`remembered`: Pipedrive option id → label, from the
    state file). An old label another option still has, or a new one another option of the column
    has, makes no rename: such labels are matched as they are, as without remembered ids."""
    renamed: dict[str, tuple[str, str]] = {}
    for option_id, label in (spec.get("option_ids") or {}).items():
        old = (remembered or {}).get(option_id)
        value = ids.get(old)
        if value is None or old in spec["options"] or ids.get(label, value) != value:
            continue
        if value not in renamed and label not in {new for _, new in renamed.values()}:
            renamed[value] = (old, label)
    return renamed


def _set_aside(
    staging: Staging, mcp: McpClient | None, entity: str, key: str, column: dict[str, Any], spec: dict[str, Any], *, dry_run: bool
) -> str:
    """Keep a column a new one replaces in the state file as replaced (its run's undo deletes it),
    renamed to say so while it has the new one's label (users could not tell the two apart).
    Returns what the report says of it."""
    if column["label"] != spec["label"]:
        label, said = column["label"], ""
    else:
        label = f"{spec['label']} (replaced)"
        said = f', renamed "{label}"'
    if not dry_run and mcp is not None:
        if label != column["label"]:
            mcp.rename_custom_column(column, label)
            column["label"] = label
        staging.replace_column(entity, key, label)
    return said


def _shape(spec: dict[str, Any]) -> dict[str, Any]:
    """What of a column's spec `_matches` compares."""
    return {name: spec.get(name) for name in ("label", "type", "currency", "allow_multiple")}


def settle_pending_columns(staging: Staging, configurations: Mapping[str, dict[str, Any]]) -> None:
    """Give each column a run was making when it died (its answer lost, or the run killed before it
    saved the column's id) to that run, as it would have: found by its label, type and shape among
    the columns of its entity (`configurations`: entity → configuration) that were not there before
    the request and that the state file holds for no field. One not found was not made, and is
    forgotten: the next run makes it."""
    pending = [p for p in staging.pending_columns() if p["entity"] in configurations]
    if not pending:
        return
    held = {c["id"] for c in staging.column_map().values()}.union(*staging.replaced_columns().values())
    for column in pending:
        entity, key = column["entity"], column["key"]
        found = next(
            (
                c for c in configurations[entity].get("customColumns") or []
                if _may_be_made_by(column, c) and c["id"] not in held and c["id"] not in column["there_before"]
            ),
            None,
        )
        if found is None:
            staging.forget_pending_column(entity, key)
            continue
        log.info("columns.settled_pending", entity=entity, label=found["label"], run_id=column["run_id"])
        staging.save_column(entity, key, {"id": found["id"], "label": found["label"], "type": found["type"]}, column["run_id"])
        held.add(found["id"])


def _may_be_made_by(pending: dict[str, Any], column: dict[str, Any]) -> bool:
    if pending["spec"] is None:  # saved before the spec was: its label and type are all there is
        return (column["label"], column["type"]) == (pending["label"], pending["type"])
    return _matches(column, pending["spec"])


def _remember(staging: Staging, known: dict[tuple[str, str], dict[str, Any]], entity: str, key: str, column: dict[str, Any]) -> None:
    """Save a column's row in the state file unless it holds that already: every run and sync
    meets every column, and a write is a commit of its own (a few ms each, a hundred columns)."""
    if known.get((entity, key)) != column:
        staging.save_column(entity, key, column, None)


def _create(staging: Staging, mcp: McpClient, entity: str, key: str, spec: dict[str, Any]) -> str:
    options = None
    if spec["type"] == "singleSelect":
        labels = spec["options"] or ["(none)"]
        options = [
            {"label": label, "color": OPTION_COLORS[i % len(OPTION_COLORS)], "isDefault": False, "index": i}
            for i, label in enumerate(labels)
        ]
    log.info("columns.create", entity=entity, label=spec["label"], type=spec["type"])
    what = f"the {entity} column {spec['label']!r} ({spec['type']})"
    try:
        return mcp.create_custom_column(
            SINGULAR[entity],
            spec["label"],
            spec["type"],
            options=options,
            currency=spec.get("currency"),
            allow_multiple=spec.get("allow_multiple") if spec["type"] in ("phone", "email", "link") else None,
        )
    except UncertainWriteError as exc:
        # a rerun finds the column by its label, if it was made, and makes it if not
        raise UncertainWriteError(
            f"{exc} (making {what}). Run again: a column made meanwhile is found and used, not made twice",
            status=exc.status, body=exc.body, cause=exc.cause,
        ) from exc
    except McpAuthenticationError:
        raise
    except McpToolError as exc:
        staging.forget_pending_column(entity, key)  # not made: a column a user makes under its label later is the user's
        raise CustomermatesError(f"Customermates refused to make {what}: {exc.text}", status=exc.status, body=exc.body) from exc
