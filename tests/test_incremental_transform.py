"""A transform makes again only the records whose inputs changed, and keeps the rest: what it
keeps and what it makes must be what a full transform of the same staging gives, byte for byte."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from migrate.pipedrive.extract import SnapshotSource, extract
from migrate.staging.store import Staging, raw_table
from migrate.transform.engine import TransformSummary, transform
from migrate.transform.mapping import load_mappings

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pipedrive"
RECORDS = ("persons", "organizations", "products", "deals", "deals_archived", "leads", "activities")
REFERENCES = {  # field → collection its ids come from
    "org_id": "organizations", "person_id": "persons", "deal_id": "deals", "product_id": "products",
}


@pytest.fixture
def staging(tmp_path: Path):
    with Staging(tmp_path / "state.duckdb") as staging:
        extract(staging, SnapshotSource(SAMPLE), staging.start_run("test"))
        unsupported = {"field_code": "f" * 40, "field_name": "Favourite colour", "field_type": "color", "is_custom_field": True}
        staging.upsert_records("personFields", [unsupported], key="field_code")  # an issue of no one record
        first = transform(staging, load_mappings())
        assert first.full_reason == "first transform of this state file"
        yield staging


def output(staging: Staging) -> dict[str, Any]:
    con = staging.con
    return {
        "records": con.execute("SELECT entity, source_id, payload::VARCHAR, payload_hash FROM target_records ORDER BY ALL").fetchall(),
        "issues": con.execute("SELECT * FROM transform_issues ORDER BY ALL").fetchall(),
        "columns": {(c["entity"], c["key"]): c for c in staging.target_columns()},
    }


def full_transform_of(staging: Staging, tmp_path: Path) -> tuple[TransformSummary, dict[str, Any]]:
    """A full transform of a copy of the state file (its transform memory wiped)."""
    staging.con.execute("CHECKPOINT")
    copy = tmp_path / f"full-{random.random()}.duckdb"
    shutil.copy(staging.path, copy)
    with Staging(copy) as other:
        other.con.execute("DELETE FROM meta WHERE key = 'transform_context'")
        summary = transform(other, load_mappings())
        assert summary.full_reason is not None
        return summary, output(other)


def rows(staging: Staging, collection: str) -> list[dict[str, Any]]:
    return list(staging.iter_raw(collection))


def mutate(staging: Staging, rng: random.Random, round_number: int) -> None:
    """Edit, delete, restore, re-point and drop a few rows of every input collection."""
    ids = {c: [r["id"] for r in rows(staging, c)] for c in ("organizations", "persons", "deals", "products")}
    for collection in (*RECORDS, "notes", "deal_products"):
        changed = []
        for record in rng.sample(rows(staging, collection), 3):
            change = rng.choice(("edit", "delete", "restore", "repoint", "repoint-missing"))
            if change == "edit":
                for name in ("name", "title", "subject", "content", "quantity", "first_name"):
                    if name in record:
                        record[name] = f"{record[name]} r{round_number}" if isinstance(record[name], str) else (record[name] or 0) + 1
                        break
            elif change == "delete":
                record["is_deleted"] = True
                if "active_flag" in record:
                    record["active_flag"] = False
            elif change == "restore":
                record["is_deleted"] = False
                record.pop("active_flag", None)
            else:
                fields = [f for f in REFERENCES if f in record and f != "id"]
                if fields:
                    field = rng.choice(fields)
                    record[field] = rng.choice(ids[REFERENCES[field]]) if change == "repoint" else 900_000 + round_number
            changed.append(record)
        staging.upsert_records(collection, changed)
    # a record that vanished from Pipedrive (and from staging), one that arrives, one archived
    victim = rng.choice(rows(staging, "persons"))
    staging.con.execute(f"DELETE FROM {raw_table('persons')} WHERE id = ?", [str(victim["id"])])
    staging.upsert_records("organizations", [dict(rows(staging, "organizations")[0], id=900_000 + round_number - 1, name=f"Arrived {round_number}")])
    staging.upsert_records("deals_archived", [dict(rng.choice(rows(staging, "deals")), is_archived=True)])


def test_what_the_transform_keeps_and_makes_is_what_a_full_transform_gives(staging, tmp_path):
    rng = random.Random(7)
    before = output(staging)
    for round_number in range(1, 5):
        mutate(staging, rng, round_number)
        summary = transform(staging, load_mappings())
        assert summary.full_reason is None
        total = sum(summary.records.values()) + sum(summary.skipped.values())
        assert 0 < summary.made < total / 2
        full_summary, full = full_transform_of(staging, tmp_path)
        now = output(staging)
        assert now["records"] == full["records"]
        assert now["issues"] == full["issues"]
        assert (summary.records, summary.skipped, summary.issues) == (full_summary.records, full_summary.skipped, full_summary.issues)
        # a column the kept records no longer use stays listed (it exists in Customermates already)
        for key, spec in full["columns"].items():
            kept = now["columns"][key]
            assert {**kept, "options": None} == {**spec, "options": None}
            assert set(spec["options"]) <= set(kept["options"])
        assert set(now["columns"]) - set(full["columns"]) <= set(before["columns"])
        before = now


def test_a_transform_of_unchanged_staging_makes_nothing_and_keeps_everything(staging):
    before = output(staging)
    summary = transform(staging, load_mappings())
    assert (summary.full_reason, summary.made) == (None, 0)
    assert output(staging) == before
    assert sum(summary.records.values()) == len(before["records"])


def test_a_renamed_organization_remakes_the_records_that_show_its_name(staging):
    org_field = next(
        f["field_code"] for f in staging.iter_raw("dealFields") if f.get("field_type") == "org" and f.get("is_custom_field")
    )
    deal = next(d for d in rows(staging, "deals") if (d.get("custom_fields") or {}).get(org_field))
    org_id = str(deal["custom_fields"][org_field])
    org = next(o for o in rows(staging, "organizations") if str(o["id"]) == org_id)
    staging.upsert_records("organizations", [dict(org, name="Renamed GmbH")])
    summary = transform(staging, load_mappings())
    assert summary.full_reason is None
    assert "Renamed GmbH" in staging.con.execute(
        "SELECT payload::VARCHAR FROM target_records WHERE entity = 'deals' AND source_id = ?", [str(deal["id"])]
    ).fetchone()[0]
    made = {tuple(r) for r in staging.con.execute("SELECT entity, source_id FROM transform_dirty").fetchall()}
    assert ("organizations", org_id) in made and ("deals", str(deal["id"])) in made
    assert len(made) < 30


def test_a_changed_reference_collection_makes_everything_again_and_says_why(staging):
    user = rows(staging, "users")[0]
    staging.upsert_records("users", [dict(user, name="Someone Else")])
    summary = transform(staging, load_mappings())
    assert summary.full_reason == "the staged users changed"
    assert summary.made == sum(summary.records.values()) + sum(summary.skipped.values())
    again = transform(staging, load_mappings())
    assert (again.full_reason, again.made) == (None, 0)


def test_when_most_records_changed_every_record_is_made_again(staging):
    for collection in RECORDS:
        staging.con.execute(f"UPDATE {raw_table(collection)} SET data = json_merge_patch(data, '{{\"update_time\": \"2026-11-29T00:00:00Z\"}}')")
    summary = transform(staging, load_mappings())
    assert summary.full_reason is not None and summary.full_reason.endswith("records changed or depend on a change")
    assert summary.made == sum(summary.records.values()) + sum(summary.skipped.values())


def test_a_rerun_of_a_snapshot_whose_ids_are_floats_keeps_its_product_lines_and_notes_and_remakes_only_what_changed(tmp_path):
    """Ids written as floats (`"deal_id": 5.0`) are staged as the integers they are, so the rows that
    name a deal join it on every transform: a rerun makes nothing again, and a changed line remakes its deal."""
    snapshot = tmp_path / "snapshot"
    shutil.copytree(SAMPLE, snapshot)

    def write(name: str, change: Any = lambda row: row) -> None:
        rows = [json.loads(line) for line in (SAMPLE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        floats = [change({k: float(value) if (k == "id" or k.endswith("_id")) and type(value) is int else value for k, value in row.items()}) for row in rows]
        (snapshot / f"{name}.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in floats), encoding="utf-8")

    for name in ("deals", "products", "persons", "deal_products", "notes"):
        write(name)
    noted = {json.loads(note).get("deal_id") for note in (SAMPLE / "notes.jsonl").read_text(encoding="utf-8").splitlines()}
    line = next(row for row in map(json.loads, (SAMPLE / "deal_products.jsonl").read_text(encoding="utf-8").splitlines()) if row["deal_id"] in noted)
    deal = str(line["deal_id"])

    def transformed() -> tuple[TransformSummary, dict[str, Any]]:
        extract(staging, SnapshotSource(snapshot), staging.start_run("test"))
        summary = transform(staging, load_mappings())
        payload = json.loads(staging.con.execute("SELECT payload FROM target_records WHERE entity = 'deals' AND source_id = ?", [deal]).fetchone()[0])
        return summary, payload

    with Staging(tmp_path / "state.duckdb") as staging:
        _, first = transformed()
        assert [str(line["product_id"]), float(line["quantity"])] in first["services"] and first["notes"]
        again, kept = transformed()
        assert (again.full_reason, again.made) == (None, 0) and kept == first
        write("deal_products", lambda row: dict(row, quantity=row["quantity"] + 1) if row["id"] == line["id"] else row)
        changed, remade = transformed()
        assert changed.full_reason is None and 0 < changed.made < 5
        assert [str(line["product_id"]), float(line["quantity"] + 1)] in remade["services"] and remade["notes"] == first["notes"]


def test_a_product_line_on_a_missing_deal_stays_reported_on_a_rerun_and_joins_the_deal_once_it_appears(staging):
    """The issue is found over every staged line, so a rerun that makes nothing again gives it as a full transform does."""
    product = rows(staging, "products")[0]
    staging.upsert_records("deal_products", [{"id": 990_070, "deal_id": 990_001, "product_id": product["id"], "quantity": 2}])

    def reported() -> list[tuple[str, str, str]]:
        return staging.con.execute(
            "SELECT entity, source_id, field FROM transform_issues WHERE rule = 'deal_product_not_attached' ORDER BY ALL"
        ).fetchall()

    transform(staging, load_mappings())
    assert reported() == [("deal_products", "990070", "deal_id")]
    again = transform(staging, load_mappings())
    assert (again.full_reason, again.made) == (None, 0)
    assert reported() == [("deal_products", "990070", "deal_id")]
    staging.upsert_records("deals", [dict(rows(staging, "deals")[0], id=990_001, is_deleted=False, status="open")])
    arrived = transform(staging, load_mappings())
    assert arrived.full_reason is None and arrived.made == 1
    assert reported() == []
    payload = json.loads(staging.con.execute("SELECT payload FROM target_records WHERE entity = 'deals' AND source_id = '990001'").fetchone()[0])
    assert [str(product["id"]), 2.0] in payload["services"]
