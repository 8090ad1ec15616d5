"""The state file's raw pages: what a page writes, whatever the order pages come in."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from migrate.staging.store import Checkpoint, PageWrite, Staging


def _page(ids: list[int], name: str) -> list[dict]:
    return [{"id": i, "name": f"{name} {i}", "update_time": "2026-01-02 03:04:05"} for i in ids]


def _staged(staging: Staging, collection: str = "persons") -> dict[str, dict]:
    return {str(r["id"]): r for r in staging.iter_raw(collection)}


def test_a_record_met_again_during_a_first_extract_is_staged_once_as_last_read(tmp_path):
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_page("persons", _page([1, 2, 3], "first"), Checkpoint("persons", "c1", 1, 3, False), "run")
        # An offset list that shifted hands record 3 out again, then record 4 with it.
        staging.write_page("persons", _page([3, 4], "second"), Checkpoint("persons", "c2", 2, 5, False), "run")
        staging.write_page("persons", _page([5, 5], "third"), Checkpoint("persons", "c3", 3, 7, False), "run")
        staged = _staged(staging)
        assert sorted(staged, key=int) == ["1", "2", "3", "4", "5"]
        assert staged["3"]["name"] == "second 3"
        assert staging.checkpoint("persons") == Checkpoint("persons", "c3", 3, 7, False)


def test_a_page_that_cannot_be_written_leaves_neither_its_records_nor_its_checkpoint(tmp_path):
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_page("persons", _page([1], "first"), Checkpoint("persons", "c1", 1, 1, False), "run")
        with pytest.raises(Exception, match="has no id"):
            staging.write_page("persons", [*_page([2], "second"), {"name": "no id"}], Checkpoint("persons", "c2", 2, 3, False), "run")
        assert list(_staged(staging)) == ["1"]
        assert staging.checkpoint("persons") == Checkpoint("persons", "c1", 1, 1, False)


def test_pages_written_together_are_staged_with_each_rows_last_checkpoint(tmp_path):
    pages = [
        PageWrite("persons", _page([1, 2], "asc"), Checkpoint("persons", "a1", 1, 2, False)),
        PageWrite("persons", _page([9], "desc"), Checkpoint("persons~desc", "d1", 1, 1, False)),
        PageWrite("persons", _page([3, 4], "asc"), Checkpoint("persons", "a2", 2, 4, False)),
        PageWrite("organizations", _page([7], "org"), Checkpoint("organizations", None, 1, 1, True)),
    ]
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_pages(pages, "run")
        assert sorted(_staged(staging), key=int) == ["1", "2", "3", "4", "9"]
        assert list(_staged(staging, "organizations")) == ["7"]
        assert staging.checkpoint("persons") == Checkpoint("persons", "a2", 2, 4, False)
        assert staging.checkpoint("persons~desc") == Checkpoint("persons~desc", "d1", 1, 1, False)
        assert staging.checkpoint("organizations") == Checkpoint("organizations", None, 1, 1, True)


def test_pages_written_together_are_all_staged_or_none(tmp_path):
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_page("persons", _page([1], "first"), Checkpoint("persons", "c1", 1, 1, False), "run")
        group = [
            PageWrite("persons", _page([2], "second"), Checkpoint("persons", "c2", 2, 2, False)),
            PageWrite("organizations", _page([5], "org"), Checkpoint("organizations", "o1", 1, 1, False)),
            PageWrite("persons", [{"name": "no id"}], Checkpoint("persons", "c3", 3, 3, False)),
        ]
        with pytest.raises(Exception, match="has no id"):
            staging.write_pages(group, "run")
        assert list(_staged(staging)) == ["1"]
        assert staging.checkpoint("persons") == Checkpoint("persons", "c1", 1, 1, False)
        assert staging.checkpoint("organizations") is None
        staging.write_pages(group[:2], "run")  # the tables the rollback touched are still there
        assert sorted(_staged(staging), key=int) == ["1", "2"]


def test_a_record_met_twice_among_pages_written_together_is_staged_once_as_last_read(tmp_path):
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_pages(
            [
                PageWrite("organizations", _page([7], "org"), Checkpoint("organizations", "o1", 1, 1, False)),
                PageWrite("persons", _page([1, 2, 3], "asc"), Checkpoint("persons", "a1", 1, 3, False)),
                PageWrite("persons", _page([5, 4, 3], "desc"), Checkpoint("persons~desc", "d1", 1, 3, False)),  # the lanes met
            ],
            "run",
        )
        staged = _staged(staging)
        assert sorted(staged, key=int) == ["1", "2", "3", "4", "5"]
        assert staged["3"]["name"] == "desc 3"
        assert list(_staged(staging, "organizations")) == ["7"]
        assert staging.checkpoint("persons~desc") == Checkpoint("persons~desc", "d1", 1, 3, False)


def test_each_lane_keeps_its_own_checkpoint_row_as_its_pages_arrive(tmp_path):
    with Staging(tmp_path / "s.duckdb") as staging:
        for page in range(1, 4):
            staging.write_page("persons", _page([page], "asc"), Checkpoint("persons#asc", f"a{page}", page, page, False), "run")
            staging.write_page("persons", _page([100 - page], "desc"), Checkpoint("persons#desc", f"d{page}", page, page, False), "run")
        assert staging.checkpoint("persons#asc") == Checkpoint("persons#asc", "a3", 3, 3, False)
        assert staging.checkpoint("persons#desc") == Checkpoint("persons#desc", "d3", 3, 3, False)
        assert staging.con.execute("SELECT count(*) FROM extract_checkpoints").fetchone()[0] == 2


def test_raw_records_keep_every_value_exactly_even_past_what_orjson_writes(tmp_path):
    odd = {
        "id": 1,
        "big": 123456789012345678901234567890,  # past 64 bits: written by json instead
        "float": 0.1 + 0.2,
        "text": "Zoë 日本 🙂 \"quoted\" \\ back\nslash",
        "nested": {"list": [1, None, True, 1e-300]},
    }
    plain = {"id": 2, "float": 1e16, "text": "Zoë"}
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_page("persons", [odd, plain], Checkpoint("persons", None, 1, 2, True), "run")
        staged = _staged(staging)
        text = staging.con.execute("SELECT data::VARCHAR FROM raw_persons WHERE id = '1'").fetchone()[0]
    assert staged["1"] == odd and staged["2"] == plain
    assert json.loads(text)["big"] == odd["big"]


def test_a_record_json_would_write_nan_in_is_staged_as_json_duckdb_reads(tmp_path):
    record = {"id": 1, "big": 123456789012345678901234567890, "score": float("nan"), "name": "Zoë"}
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.write_page("persons", [record], Checkpoint("persons", None, 1, 1, True), "run")
        valid, name = staging.con.execute("SELECT json_valid(data), data->>'name' FROM raw_persons").fetchone()
        staged = _staged(staging)["1"]
    assert valid and name == "Zoë"
    assert staged == {**record, "score": None}  # NaN is carried as null, as for any other record


def test_a_rerun_over_a_staged_collection_replaces_its_records(tmp_path):
    path = tmp_path / "s.duckdb"
    with Staging(path) as staging:
        staging.write_page("persons", _page([1, 2], "first"), Checkpoint("persons", None, 1, 2, True), "run1")
    with Staging(path) as staging:  # a new connection: the table is not empty, pages replace
        staging.write_page("persons", _page([2, 3], "again"), Checkpoint("persons", None, 1, 2, True), "run2")
        staged = _staged(staging)
    assert {i: r["name"] for i, r in staged.items()} == {"1": "first 1", "2": "again 2", "3": "again 3"}


def test_a_raw_table_an_earlier_version_made_with_a_json_column_takes_and_gives_records_alike(tmp_path):
    path = tmp_path / "s.duckdb"
    with Staging(path) as staging:
        staging.con.execute(
            "CREATE TABLE raw_persons (id VARCHAR PRIMARY KEY, data JSON USING COMPRESSION zstd, is_deleted BOOLEAN, "
            "update_time VARCHAR, extracted_at TIMESTAMP, num_id BIGINT)"
        )
        staging.con.execute("INSERT INTO raw_persons VALUES ('1', '{\"id\": 1, \"name\": \"old 1\"}', false, NULL, now(), 1)")
    with Staging(path) as staging:
        staging.write_page("persons", _page([1, 2], "new"), Checkpoint("persons", None, 1, 2, True), "run")
        staged = _staged(staging)
        names = staging.con.execute("SELECT data->>'name' FROM raw_persons ORDER BY num_id").fetchall()
        kind = staging.con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'raw_persons' AND column_name = 'data'").fetchone()[0]
    assert {i: r["name"] for i, r in staged.items()} == {"1": "new 1", "2": "new 2"}
    assert names == [("new 1",), ("new 2",)] and kind == "JSON"


def test_a_lone_surrogate_is_staged_as_a_replacement_character_and_the_record_and_field_named(tmp_path):
    """Half of an emoji cut in two (Pipedrive sends "\\ud83d" alone): no UTF-8 text holds it, so
    DuckDB cannot; the record is staged with U+FFFD in its place rather than stopping the extract."""
    cut = json.loads('{"id": 2, "name": "Zoë \\ud83d", "update_time": "2026-01-02 03:04:05"}')
    with Staging(tmp_path / "s.duckdb") as staging, capture_logs() as logs:
        staging.write_page("persons", [*_page([1], "first"), cut], Checkpoint("persons", None, 1, 2, True), "run")
        staged = _staged(staging)
    assert staged["2"]["name"] == "Zoë \ufffd" and staged["2"]["_replaced_characters"] == ["name"]
    assert staged["1"] == _page([1], "first")[0]
    assert [(e["event"], e["collection"], e["id"], e["fields"]) for e in logs] == [("staging.character_replaced", "persons", 2, ["name"])]


def test_the_pipedrive_ids_of_linked_records_come_from_the_snapshot_and_for_one_deleted_there_from_the_id_map(tmp_path):
    """A migrated record deleted in Customermates is named by its id-map row (a record last read
    linking it counts the link as lost, not as an edit). The id map, read by target id with no index
    for it, is read only for ids the snapshot lacks: not for a record a user made, held without one."""
    with Staging(tmp_path / "s.duckdb") as staging:
        staging.con.execute(
            "INSERT INTO target_snapshot VALUES ('contacts', 0, 't-migrated', '7', '{}'), ('contacts', 1, 't-user-made', NULL, '{}')"
        )
        staging.con.execute("INSERT INTO id_map VALUES ('contacts', '7', 't-migrated', 'h', 'r', now(), 'r'), ('contacts', '8', 't-deleted', 'h', 'r', now(), 'r')")
        statements: list[str] = []
        con = staging.con

        class Recording:
            def execute(self, sql, *args):
                statements.append(sql)
                return con.execute(sql, *args)

        staging.con = Recording()
        try:
            assert staging.snapshot_pids(["t-migrated", "t-user-made"]) == {"t-migrated": "7"}
            assert not [sql for sql in statements if "id_map" in sql]
            assert staging.snapshot_pids(["t-migrated", "t-user-made", "t-deleted", "t-unknown"]) == {"t-migrated": "7", "t-deleted": "8"}
        finally:
            staging.con = con
