"""Which companies a state file belongs to.

A state file maps one Pipedrive company's ids to one Customermates company's records. Used with
another company's token or key (the next client's settings, the last client's working directory),
it would stage the new company's records over the old one's checkpoints, update the old company's
Customermates records with the new company's data (Pipedrive ids repeat across companies), or let
`undo` forget every migrated record as "already gone". So every command that talks to either side
first checks that it is the same company, before it reads a page or writes anything:

* Pipedrive: the company id of the token's user (`/v1/users/me`), kept in the state file's `meta`
  the first time a token is used with it (a state file of an older version adopts the first one).
* Customermates: `/v1/users/me` names no company, so the check is on the custom columns the state
  file set up (or matched) there: their ids are the company's own. At least one must still be
  there; a state file that has none (nothing loaded yet, or every column undone) has nothing to
  lose and goes with any Customermates. When none is, a few of its migrated records are looked up
  by their Customermates ids (record ids are the company's own too): one there means a user deleted
  every column in this company, which a run or sync makes again (writing every record's values,
  its Pipedrive ID among them, into them); none there, another company.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from migrate.customermates.client import SINGULAR, CustomermatesClient
from migrate.errors import ConfigError
from migrate.staging.store import Staging
from migrate.transform.columns import PIPEDRIVE_ID_LABEL
from migrate.transform.engine import ENTITY_ORDER

PIPEDRIVE_COMPANY_KEY = "pipedrive_company"
SAMPLED_RECORDS = 5  # migrated records looked up when none of the state file's columns is in the Customermates


def _describe(company: dict[str, Any]) -> str:
    name = company.get("name") or "(no name)"
    domain = f" ({company['domain']}.pipedrive.com)" if company.get("domain") else ""
    return f"{name}{domain}, company id {company.get('id')}"


def check_pipedrive(staging: Staging, me: dict[str, Any], *, record: bool = True) -> None:
    """Refuse a token of another Pipedrive company than the state file's (`me`: `/v1/users/me`'s
    data); with `record`, a state file that names none yet takes this one."""
    if me.get("company_id") is None:
        return  # nothing to compare with
    company = {"id": me.get("company_id"), "name": me.get("company_name"), "domain": me.get("company_domain")}
    known_text = staging.meta(PIPEDRIVE_COMPANY_KEY)
    if known_text is None:
        if record:
            staging.set_meta(PIPEDRIVE_COMPANY_KEY, json.dumps(company))
        return
    known = json.loads(known_text)
    if str(known.get("id")) != str(company["id"]):
        raise ConfigError(
            f"the state file {staging.path} holds the migration of the Pipedrive company {_describe(known)}, but the "
            f"Pipedrive token belongs to {_describe(company)}; nothing was read or written. Use another state file for "
            "this company (--state or MIGRATE_STATE; a fresh one starts from scratch), or the token of the state file's company"
        )


def check_customermates(
    staging: Staging, client: CustomermatesClient, url: str, *, makes_columns: bool, plans: bool = False
) -> str | None:
    """Refuse a Customermates company none of whose custom columns the state file knows and none of
    whose sampled migrated records is there, and one that already holds migrated records while the
    state file knows none (`check_not_migrated_before`).

    Every column deleted with the records still there is the same company: a command that sets up
    the columns (`makes_columns`: run, sync) makes them again, and one that `plans` it (plan, a dry
    run) plans that; either gets back a note saying so. One that reads the records by their
    Pipedrive ID column (verify, undo) is refused, saying what happened and to run first."""
    read: dict[str, list[dict[str, Any]]] = {}

    def columns_of(entity: str) -> list[dict[str, Any]]:  # each entity's configuration read once for both checks
        if entity not in read:
            read[entity] = [c for c in client.configuration(entity).get("customColumns") or [] if isinstance(c, dict)]
        return read[entity]

    known: dict[str, set[str]] = {}
    for (entity, _key), column in staging.column_map().items():
        known.setdefault(entity, set()).add(str(column["id"]))
    check_not_migrated_before(staging, client, url, columns_of)
    if not known:
        return None
    for entity in sorted(known, key=lambda e: ENTITY_ORDER.index(e) if e in ENTITY_ORDER else len(ENTITY_ORDER)):
        if {str(c.get("id")) for c in columns_of(entity)} & known[entity]:
            return None
    columns = sum(map(len, known.values()))
    migrated = staging.con.execute("SELECT count(*) FROM id_map").fetchone()[0]
    sampled, found = _migrated_record_here(staging, client)
    if found:
        what = (
            f"the {columns} custom columns the state file {staging.path} set up in the Customermates at {url} (the Pipedrive ID "
            f"columns among them) were deleted in Customermates, but its migrated records are still there (a migrated "
            f"{found}, looked up by its Customermates id, is)"
        )
        remade = (
            "makes the columns again and writes every migrated record's values into them, its Pipedrive ID too: an update "
            f"of each of the {migrated:,} records, none created again"
        )
        if makes_columns:
            return f"{what}; this run {remade}"
        if plans:
            return (
                f"{what}; the run will make the columns again and write every migrated record's values into them, its Pipedrive ID "
                f"too: the plan shows an update of each of the {migrated:,} records, none created again"
            )
        raise ConfigError(
            f"{what}. Run `migrate run` (or `migrate sync`) first: it {remade}. A verify or an undo reads the records by "
            "their Pipedrive ID column, which is not there now; nothing was written or deleted"
        )
    raise ConfigError(
        f"the state file {staging.path} belongs to another Customermates company than the one at {url} with this API key: "
        f"none of the {columns} custom columns it set up there (the Pipedrive ID columns among them) is in this one"
        + (f", none of the {sampled} migrated records it looked up there exists" if sampled else "")
        + f", and its {migrated:,} migrated records are in the other; nothing was written or deleted. "
        "Set CUSTOMERMATES_URL and CUSTOMERMATES_API_KEY (or --customermates-url and --customermates-key) to the "
        "Customermates this state file migrated to, or use another state file for this one (--state or MIGRATE_STATE)"
    )


def _migrated_record_here(staging: Staging, client: CustomermatesClient) -> tuple[int, str | None]:
    """Up to `SAMPLED_RECORDS` migrated records, picked at random among those not known to be deleted
    there, looked up by their Customermates ids until one is there: (how many were looked up, the
    entity, singular, of the one there, or None)."""
    rows = staging.con.execute(
        "SELECT entity, target_id FROM id_map WHERE target_id NOT IN (SELECT target_id FROM target_gone) "
        f"ORDER BY random() LIMIT {SAMPLED_RECORDS}"
    ).fetchall()
    for n, (entity, target_id) in enumerate(rows, 1):
        if client.get(entity, target_id) is not None:
            return n, SINGULAR[entity]
    return len(rows), None


def check_not_migrated_before(
    staging: Staging, client: CustomermatesClient, url: str, columns_of: Callable[[str], list[dict[str, Any]]]
) -> None:
    """A state file that knows no migrated record (a new one: another directory, MIGRATE_STATE unset
    in a new shell, the file deleted) against a Customermates whose records already carry Pipedrive
    IDs would create every record a second time: the Pipedrive ID column is found by its label, but
    the records in it are not taken over (they may be another Pipedrive company's: ids repeat)."""
    if staging.con.execute("SELECT count(*) FROM id_map").fetchone()[0] or staging.pending_batches():
        return  # it knows its records, or a killed run's first batch is to be settled
    found: list[str] = []
    for entity in ENTITY_ORDER:
        for column in columns_of(entity):
            if column.get("label") != PIPEDRIVE_ID_LABEL or column.get("type") != "plain":
                continue
            page = client.search(entity, filters=[{"field": column["id"], "operator": "isNotNull"}], page_size=5)
            total = int((page.get("pagination") or {}).get("total") or 0)
            if total:
                found.append(f"{total:,} {entity}")
    if found:
        raise ConfigError(
            f"the Customermates at {url} already holds records with a {PIPEDRIVE_ID_LABEL} ({', '.join(found)}), migrated "
            f"with another state file, but the state file {staging.path} knows none of them: a run with it would create every "
            "record a second time. Use the state file of that migration (--state or MIGRATE_STATE; `migrate status --state "
            "FILE` shows what one holds), or `migrate undo --yes` with it first; nothing was written"
        )
