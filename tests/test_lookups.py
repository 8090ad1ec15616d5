"""The transform's compact lookups answer exactly as the dicts and sorts they replace."""

from __future__ import annotations

import random

import pytest

from migrate.staging.keys import order_key
from migrate.staging.store import Staging
from migrate.transform.lookups import IdSet, NameTable, SortedGroups

IDS = [
    "1", "2", "10", "9", "012", "12", "0", "00", "4294967296", "9223372036854775808", "-3", "+5", " 5", "1e3",
    "b7e4c2a0-1f3d-4c5b-9a8e-0d6f7a8b9c0d", "lead:abc", "", "x", "Ä",
]


def test_order_key_sorts_ids_the_way_staging_streams_them(tmp_path):
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.con.execute("CREATE TABLE t (id VARCHAR)")
        staging.con.execute("INSERT INTO t SELECT unnest($ids)", {"ids": IDS})
        in_duckdb = [r[0] for r in staging.stream_ordered("id", "t", "id")]
    assert sorted(IDS, key=order_key) == in_duckdb


def test_an_id_set_holds_exactly_the_ids_put_in_it():
    rng = random.Random(3)
    members = {str(rng.randrange(1, 2_000_000)) for _ in range(5_000)} | {"b7e4c2a0", "lead:abc", "0", "4294967296"}
    ids = IdSet(members)
    probes = members | {str(rng.randrange(1, 2_000_000)) for _ in range(5_000)} | {"012", "12 ", "", "-1", "1e3"}
    assert {p for p in probes if p in ids} == members
    assert 17 not in ids  # not a string: never a member


def test_a_name_table_finds_the_names_a_dict_would_whatever_order_they_come_in():
    rng = random.Random(4)
    names = {str(rng.randrange(1, 10**7)): f"Name {i} {rng.choice('AÄ日🙂')}" for i in range(3_000)}
    names.update({"lead:x": "A lead", "00": "zero zero", "7": ""})
    in_id_order = sorted(names.items(), key=lambda kv: order_key(kv[0]))
    for pairs in (names.items(), in_id_order):
        table = NameTable(pairs)
        for identity in list(names) + ["8", "lead:y", "99999999", "0"]:
            assert table.get(identity) == names.get(identity)
            assert table.get(identity, "?") == names.get(identity, "?")
        assert len(table) == len(names)


def test_sorted_groups_hand_out_each_records_rows_and_skip_the_rest():
    rows = sorted(
        [("1", "a"), ("1", "b"), ("3", "c"), ("10", "d"), ("b7e4", "e"), ("b7e4", "f"), ("zz", "g")],
        key=lambda r: order_key(r[0]),
    )
    groups = SortedGroups(iter(rows))
    assert groups.get("1") == ["a", "b"]
    assert groups.get("1") == ["a", "b"]  # asked twice (the deal and its products column): same rows
    assert groups.get("2") == []
    assert groups.get("10") == ["d"]  # "3" was nobody's: skipped
    assert groups.get("b7e4") == ["e", "f"]
    assert groups.get("zzz") == []


def test_sorted_groups_refuse_to_go_back():
    groups = SortedGroups(iter([("1", "a"), ("5", "b")]))
    groups.get("5")
    with pytest.raises(RuntimeError, match="internal error"):
        groups.get("1")


def test_a_collection_far_bigger_than_duckdbs_memory_cap_streams_in_id_order(tmp_path):
    """200 MB of records at a 64 MB cap (a run's is 256 MB), then 3,000 of them changed by a
    sync and some new ones: sorting the rows in one go would run out of memory."""
    with Staging(tmp_path / "s.duckdb") as staging:
        table = staging.ensure_raw_table("persons")
        record = "json_object('id', k, 'bio', repeat(md5(k || v), 80)), false, NULL, now(), try_cast(k AS BIGINT)"
        staging.con.execute(
            f"INSERT INTO {table} SELECT k, {record} FROM (SELECT (i * 3)::VARCHAR AS k, 'a' AS v FROM range(1, 70001) r(i))"
        )
        staging.con.execute(  # a sync: changed records and new ones (some lead-style ids), in update order
            f"INSERT OR REPLACE INTO {table} SELECT k, {record} FROM (SELECT CASE WHEN i % 500 = 0 THEN 'lead-' || i "
            "ELSE ((i * 7919) % 210000)::VARCHAR END AS k, 'b' AS v FROM range(3000) r(i))"
        )
        expected = sorted((r[0] for r in staging.con.execute(f"SELECT id FROM {table}").fetchall()), key=order_key)
        staging.con.execute("SET memory_limit = '64MB'")
        ids = [record["id"] for record in staging.iter_raw("persons")]
    assert len(expected) > 71_000 and ids == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_in_any_storage_order_come_out_in_id_order(tmp_path, seed):
    rng = random.Random(seed)
    ids = [str(i) for i in rng.sample(range(1, 5000), 400)] + ["lead-b", "lead-a", "00", "0"]
    in_order = sorted(ids[:300], key=order_key)
    stored = in_order[: rng.randrange(300)] + rng.sample(ids, len(ids))  # a sorted run, then anything
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.upsert_records("notes", [{"id": i} for i in stored])
        assert [r["id"] for r in staging.iter_raw("notes")] == sorted(set(stored), key=order_key)


def test_a_state_file_from_before_numeric_ids_gets_them_when_opened(tmp_path):
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR); INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("CREATE TABLE raw_persons (id VARCHAR PRIMARY KEY, data JSON, is_deleted BOOLEAN, update_time VARCHAR, extracted_at TIMESTAMP)")
    con.execute("INSERT INTO raw_persons SELECT unnest(['10', '9', 'x']), unnest(['{\"id\": 10}', '{\"id\": 9}', '{\"id\": \"x\"}']), false, NULL, now()")
    con.execute("CREATE TABLE target_records (entity VARCHAR, source_id VARCHAR, payload JSON, payload_hash VARCHAR, PRIMARY KEY (entity, source_id))")
    con.execute("INSERT INTO target_records VALUES ('contacts', '10', '{}', 'h10'), ('contacts', '9', '{}', 'h9')")
    con.close()
    with Staging(path) as staging:
        assert [r["id"] for r in staging.iter_raw("persons")] == [9, 10, "x"]
        assert [sid for sid, _, _ in staging.iter_targets("contacts")] == ["9", "10"]
        staging.upsert_records("persons", [{"id": 8}])
        assert [r["id"] for r in staging.iter_raw("persons")] == [8, 9, 10, "x"]
