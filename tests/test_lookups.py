"""The transform's compact lookups answer exactly as the dicts and sorts they replace."""

from __future__ import annotations

import random

import duckdb
import pytest

from migrate.staging.store import ID_ORDER
from migrate.transform.lookups import IdSet, NameTable, SortedGroups, order_key

IDS = ["1", "2", "10", "9", "012", "12", "0", "4294967296", "-3", "b7e4c2a0-1f3d-4c5b-9a8e-0d6f7a8b9c0d", "lead:abc", "", "x"]


def test_order_key_sorts_ids_the_way_staging_orders_them():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id VARCHAR)")
    con.execute("INSERT INTO t SELECT unnest($ids)", {"ids": IDS})
    in_duckdb = [r[0] for r in con.execute(f"SELECT id FROM t ORDER BY {ID_ORDER}").fetchall()]
    assert sorted(IDS, key=order_key) == in_duckdb


def test_an_id_set_holds_exactly_the_ids_put_in_it():
    rng = random.Random(3)
    members = {str(rng.randrange(1, 2_000_000)) for _ in range(5_000)} | {"b7e4c2a0", "lead:abc", "0", "4294967296"}
    ids = IdSet(members)
    probes = members | {str(rng.randrange(1, 2_000_000)) for _ in range(5_000)} | {"012", "12 ", "", "-1", "1e3"}
    assert {p for p in probes if p in ids} == members
    assert 17 not in ids  # not a string: never a member


def test_a_name_table_finds_the_names_a_dict_would():
    rng = random.Random(4)
    names = {str(rng.randrange(1, 10**7)): f"Name {i} Ä" for i in range(3_000)}
    names.update({"lead:x": "A lead", "00": "zero zero", "7": ""})
    table = NameTable(names.items())
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
