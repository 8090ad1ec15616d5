"""Transform rules on the bundled sample: types, labels, lossy values, determinism."""

from __future__ import annotations

import copy
import errno
import json
import multiprocessing.context
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from migrate.config import Settings
from migrate.errors import ConfigError, MigrateError
from migrate.pipedrive.extract import SnapshotSource, extract
from migrate.report import plan
from migrate.staging import store
from migrate.staging.store import Staging
from migrate.transform import encoders, engine, records
from migrate.transform.columns import ColumnRegistry, ColumnSpec
from migrate.transform.engine import transform
from migrate.transform.mapping import DEFAULT_DIR, load_mappings
from migrate.transform.records import SWITCH_INTERVAL, MakerPool
from tests.fakes.customermates import is_secure_url

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "pipedrive"


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "state.duckdb"
    staging = Staging(path)
    extract(staging, SnapshotSource(SAMPLE), staging.start_run("test"))
    summary = transform(staging, load_mappings())
    yield staging, summary
    staging.close()


def columns(staging: Staging, entity: str) -> dict[str, dict]:
    return {c["label"]: c for c in staging.target_columns() if c["entity"] == entity}


def targets(staging: Staging, entity: str) -> dict[str, dict]:
    return {sid: payload for sid, payload, _ in staging.iter_targets(entity)}


def issues(staging: Staging, rule: str) -> list[dict]:
    return [i for i in staging.transform_issues() if i["rule"] == rule]


def test_every_pipedrive_custom_field_gets_the_mapped_column_type(staged):
    staging, _ = staged
    expected = {
        "varchar": "plain", "varchar_auto": "plain", "text": "plain", "double": "plain", "enum": "singleSelect",
        "set": "plain", "user": "plain", "org": "plain", "people": "plain", "phone": "phone", "date": "date",
        "daterange": "dateRange", "time": "plain", "timerange": "plain", "address": "plain", "monetary": "currency",
    }
    seen = set()
    for meta, entity in (("personFields", "contacts"), ("organizationFields", "organizations"), ("dealFields", "deals"), ("productFields", "services")):
        cols = columns(staging, entity)
        for line in (SAMPLE / f"{meta}.jsonl").read_text().splitlines():
            field = json.loads(line)
            if not field["is_custom_field"]:
                continue
            matching = [c for label, c in cols.items() if label == field["field_name"] or label.startswith(field["field_name"] + " (")]
            assert matching, f"{entity}: no column for {field['field_name']}"
            assert {c["type"] for c in matching} >= {expected[field["field_type"]]}
            seen.add(field["field_type"])
    assert seen == set(expected)


def test_custom_field_named_like_a_standard_field_gets_a_distinct_label(staged):
    staging, _ = staged
    assert "Email (Pipedrive field)" in columns(staging, "contacts")


def test_enum_options_differing_only_in_case_are_both_kept(staged):
    staging, _ = staged
    options = columns(staging, "deals")["Lead-Quelle"]["options"]
    assert "Messe" in options and "messe" in options


def test_a_select_columns_options_keep_their_pipedrive_option_ids(staged):
    """By the option id the next runs know an option renamed in Pipedrive; options of no field have none."""
    staging, _ = staged
    contacts = columns(staging, "contacts")
    assert contacts["Anrede"]["option_ids"] == {"101": "Herr", "102": "Frau", "103": "Divers", "104": "Dr."}
    assert contacts["Marketing status"]["option_ids"]["no_consent"] == "No consent"
    assert columns(staging, "deals")["Status"]["option_ids"] == {}


def test_deal_values_get_one_currency_column_per_supported_currency(staged):
    staging, _ = staged
    cols = columns(staging, "deals")
    assert cols["Value (EUR)"]["type"] == "currency" and cols["Value (EUR)"]["currency"] == "eur"
    assert cols["Value (other currency)"]["type"] == "plain"
    unsupported = issues(staging, "currency_unsupported")
    assert any("RUB" in i["detail"] for i in unsupported)
    deal = targets(staging, "deals")[unsupported[0]["source_id"]]
    assert deal["values"]["value:other_currency"].endswith(("RUB", "PKT"))


def test_leads_become_deals_marked_lead_with_v1_custom_values(staged):
    staging, _ = staged
    leads = {sid: p for sid, p in targets(staging, "deals").items() if sid.startswith("lead:")}
    assert len(leads) == 10
    assert {p["values"]["status"] for p in leads.values()} == {"Lead"}
    raw = [json.loads(line) for line in (SAMPLE / "leads.jsonl").read_text().splitlines()]
    with_value = next(r for r in raw if r.get("value"))
    payload = leads[f"lead:{with_value['id']}"]
    currency = with_value["value"]["currency"].lower()
    assert float(payload["values"][f"value:{currency}"]) == float(with_value["value"]["amount"])


def test_a_leads_v1_address_field_keeps_the_parts_its_one_line_leaves_out_as_a_deals_v2_address_does():
    """Contract §8.4: v1 writes an address custom field flat, `K` plus `K_subpremise`, …,
    `K_formatted_address`; v2 nests the same parts. The reader joined only `formatted_address` to the
    v1 value, so a lead's building and state went without a word where a deal's were carried."""
    key = "ad" * 20
    parts = {
        "value": "Carl-Zeiss-Ring 140, Leipzig", "subpremise": "Gebäude B", "street_number": "140", "route": "Carl-Zeiss-Ring",
        "sublocality": "Zentrum", "locality": "Leipzig", "admin_area_level_1": "Sachsen", "admin_area_level_2": None,
        "country": "Deutschland", "postal_code": "04109", "formatted_address": "Carl-Zeiss-Ring 140, 04109 Leipzig, Deutschland",
    }
    lead = {key: parts["value"], **{f"{key}_{name}": part for name, part in parts.items() if name != "value"}}
    assert records.v.format_address(records._v1_value(lead, key)) == records.v.format_address(parts)
    assert records.v.format_address(records._v1_value(lead, key)) == "Carl-Zeiss-Ring 140, 04109 Leipzig, Deutschland (Gebäude B, Zentrum, Sachsen)"


def test_invalid_and_non_ascii_emails_are_kept_aside_and_reported(staged):
    staging, _ = staged
    reported = issues(staging, "email_invalid")
    assert any("jürgen@müller.de" in i["detail"] for i in reported)
    contact = targets(staging, "contacts")[reported[0]["source_id"]]
    assert "jürgen@müller.de" in contact["values"]["other_emails"] or any("@" in e for e in contact["fields"]["emails"])


def test_zero_price_product_is_carried_with_minimum_amount_and_reported(staged):
    staging, _ = staged
    [issue] = issues(staging, "product_zero_price")
    assert targets(staging, "services")[issue["source_id"]]["fields"]["amount"] == 0.01


def test_a_deal_product_line_carries_its_discount_tax_billing_terms_and_comment(staged):
    staging, _ = staged
    lines = targets(staging, "deals")["22"]["values"]["products"]
    assert (
        "3 × Mobile App Add-on @ 18.39 EUR (tax 19% exclusive) (monthly, 12 cycles, from 2022-06-10) (comment: Rabatt laut Rahmenvertrag)"
        in lines.split("; ")
    )
    one_time = targets(staging, "deals")["23"]["values"]["products"].split("; ")
    assert "3 × Nordlicht CRM Lizenz (pro Nutzer/Monat) @ 49 EUR (discount 5%) (tax 19% inclusive) (comment: Rabatt laut Rahmenvertrag)" in one_time


@pytest.mark.parametrize(
    ("method", "written"),
    [("exclusive", "tax 19% exclusive"), ("inclusive", "tax 19% inclusive"), ("none", "tax 19% not applied"), (None, "tax 19%")],
)
def test_a_deal_product_lines_tax_says_its_method_and_a_tax_not_applied_reads_so(method, written):
    """Contract §7.5: `tax_method` is `exclusive`, `inclusive` or `none`; a line with `none` read as taxed at 19%."""
    assert encoders._line_tax({"tax": 19, "tax_method": method}) == written


def test_an_activity_keeps_its_video_meeting(staged):
    staging, _ = staged
    tasks = targets(staging, "tasks")
    with_meeting = [p["values"] for p in tasks.values() if "meeting_link" in p["values"]]
    assert len(with_meeting) == 8  # the sample's activities with a conference_meeting_url
    assert {"meeting_link": "https://meet.google.com/20a-0027-abc", "meeting_client": "google_meet", "meeting_id": "meet-27"}.items() <= with_meeting[0].items()
    assert columns(staging, "tasks")["Meeting link"]["type"] == "link"


def test_a_deal_keeps_its_recurring_revenue_and_a_lead_whether_it_was_archived(staged):
    staging, _ = staged
    deals = targets(staging, "deals")
    mrr = {sid: p["values"] for sid, p in deals.items() if any(key.startswith("mrr:") for key in p["values"])}
    staged_deals = [*staging.iter_raw("deals"), *staging.iter_raw("deals_archived")]
    raw = {str(d["id"]): d for d in staged_deals if d.get("mrr") and not d.get("is_deleted")}
    assert mrr and set(mrr) == set(raw)
    sid, deal = next(iter(raw.items()))
    assert mrr[sid][f"mrr:{deal['currency'].lower()}"] == records.v.decimal_string(deal["mrr"])
    assert columns(staging, "deals")[f"MRR ({deal['currency'].upper()})"]["type"] == "currency"
    archived = {p["values"].get("lead_archived") for sid, p in deals.items() if sid.startswith("lead:")}
    assert archived == {"Yes", "No"}


def test_a_lead_keeps_its_source_channel_by_the_deal_fields_label(sample_staging):
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    channel = next(f for f in sample_staging.iter_raw("dealFields") if f.get("field_code") == "channel")
    option = channel["options"][0]
    lead = next(sample_staging.iter_raw("leads"))
    made = maker.make(records.Batch("leads", [(json.dumps({**lead, "channel": option["id"]}), [], [])], {}))
    assert json.loads(made.rows[0][2])["values"]["channel"] == option["label"]


def test_a_service_keeps_every_price_with_its_cost_and_note(staged):
    staging, _ = staged
    assert targets(staging, "services")["1"]["values"]["prices"] == "49 EUR (cost 8, Listenpreis); 52 CHF (cost 9, Sonderpreis Schweiz)"


def test_a_note_whose_records_are_all_gone_is_reported_not_dropped(staged):
    staging, _ = staged
    assert [(i["entity"], i["source_id"], i["detail"]) for i in issues(staging, "note_not_attached")] == [
        ("notes", "40", "Pipedrive note 40 is attached only to deal 32, deleted or missing in Pipedrive; not migrated"),
        ("notes", "50", "Pipedrive note 50 is attached only to organization 40, deleted or missing in Pipedrive; not migrated"),
    ]


def test_deleted_records_are_not_transformed_but_reported(staged):
    staging, summary = staged
    assert summary.skipped["contacts"] == 3
    assert summary.skipped["deals"] == 4
    deleted = {i["source_id"] for i in issues(staging, "deleted_in_pipedrive") if i["entity"] == "contacts"}
    assert deleted.isdisjoint(targets(staging, "contacts"))


def test_notes_are_markdown_without_html(staged):
    staging, _ = staged
    with_notes = [p["notes"] for p in targets(staging, "deals").values() if p["notes"]]
    assert len(with_notes) > 10
    for text in with_notes:
        assert "<div" not in text and "<script" not in text and "![" not in text
        assert len(text) <= 65_535


def test_transform_is_deterministic(staged, tmp_path):
    staging, _ = staged
    first = {(e, s): h for e, s, h in staging.con.execute("SELECT entity, source_id, payload_hash FROM target_records").fetchall()}
    transform(staging, load_mappings())
    second = {(e, s): h for e, s, h in staging.con.execute("SELECT entity, source_id, payload_hash FROM target_records").fetchall()}
    assert first == second


def test_every_target_record_carries_its_pipedrive_id(staged):
    staging, _ = staged
    for entity in ("organizations", "contacts", "services", "deals", "tasks"):
        for sid, payload in targets(staging, entity).items():
            assert payload["values"]["pipedrive_id"] == sid


@pytest.fixture()
def sample_staging(tmp_path):
    """The sample, staged in a state file of this test's own."""
    staging = Staging(tmp_path / "state.duckdb")
    extract(staging, SnapshotSource(SAMPLE), staging.start_run("test"))
    yield staging
    staging.close()


def test_notes_and_record_texts_are_converted_once_per_distinct_text_and_kept_for_the_next_transform(sample_staging, monkeypatch):
    from migrate.transform import notes

    staging = sample_staging
    calls: list[str] = []
    convert = notes.html_to_markdown
    monkeypatch.setattr(notes, "html_to_markdown", lambda html: calls.append(html) or convert(html))

    def run() -> tuple[int, list[tuple]]:
        calls.clear()
        transform(staging, load_mappings())
        rows = staging.con.execute("SELECT entity, source_id, payload_hash FROM target_records ORDER BY ALL").fetchall()
        return len(calls), rows

    first_calls, first = run()
    second_calls, second = run()
    texts = staging.con.execute(
        "SELECT count(DISTINCT html) FROM (SELECT coalesce(data->>'content', '') AS html FROM raw_notes WHERE NOT coalesce(is_deleted, false) "
        "UNION ALL SELECT data->>'note' FROM raw_activities UNION ALL SELECT data->>'public_description' FROM raw_activities "
        "UNION ALL SELECT data->>'description' FROM raw_products UNION ALL SELECT data->>'notes' FROM raw_persons) WHERE html <> ''"
    ).fetchone()[0]
    activity_notes = staging.con.execute("SELECT count(*), count(DISTINCT data->>'note') FROM raw_activities WHERE data->>'note' <> ''").fetchone()
    assert activity_notes[0] > activity_notes[1] > 5  # the sample repeats activity notes
    assert first_calls == texts
    assert second_calls == 0
    assert second == first

    monkeypatch.setattr(notes, "MARKDOWN_VERSION", "notes-test")  # a changed converter converts them again
    third_calls, third = run()
    assert third_calls == first_calls and third == first


def test_issues_flushed_and_notes_fetched_in_small_pieces_give_the_same_output(sample_staging, monkeypatch):
    """The transform writes issues as they come and reads notes' markdown per batch; in pieces of
    3 the output is what it is in one piece."""

    def output() -> tuple[list[tuple], list[tuple]]:
        transform(sample_staging, load_mappings())
        con = sample_staging.con
        return (
            con.execute("SELECT * FROM transform_issues ORDER BY ALL").fetchall(),
            con.execute("SELECT entity, source_id, payload_hash FROM target_records ORDER BY ALL").fetchall(),
        )

    whole = output()
    monkeypatch.setattr(engine, "ISSUES_PER_FLUSH", 3)
    monkeypatch.setattr(engine, "NOTES_PER_BATCH", 3)
    assert len(whole[0]) > 30 and output() == whole


def test_records_made_in_worker_processes_are_byte_for_byte_those_made_in_the_main_process(sample_staging, monkeypatch):
    """In batches of 7 the two workers each make some of every collection, and each finds column
    options and variants (an enum option, a currency column) the other does not know; merged in
    the order of the batches they come out as one process gives them. The notes' markdown too,
    the long texts converted in the main process and the others in the workers."""

    def output(workers: int) -> tuple[int, list[tuple], list[tuple], list[str], list[tuple]]:
        con = sample_staging.con
        con.execute("DELETE FROM meta WHERE key = 'transform_context'")  # a full transform each time
        con.execute("DELETE FROM note_markdown")
        summary = transform(sample_staging, load_mappings(), workers=workers)
        return (
            summary.made,
            con.execute("SELECT entity, source_id, payload::VARCHAR, payload_hash, lookups FROM target_records ORDER BY ALL").fetchall(),
            con.execute("SELECT * FROM transform_issues ORDER BY ALL").fetchall(),
            [json.dumps(column) for column in sample_staging.target_columns()],  # with their options in order
            con.execute("SELECT * FROM note_markdown ORDER BY ALL").fetchall(),
        )

    in_process = output(0)
    monkeypatch.setattr(engine, "RECORDS_PER_BATCH", 7)
    monkeypatch.setattr(engine, "TEXTS_PER_BATCH", 7)
    monkeypatch.setattr(engine, "LONG_TEXT", 150)
    in_workers = output(2)
    assert in_workers == in_process
    made, records, issues, columns, markdown = in_workers
    assert made > len(records) > 300 and len(issues) > 30 and any('"value:eur"' in c for c in columns)
    texts = sample_staging.con.execute("SELECT count(*) FILTER (length(data->>'content') > 150), count(*) FROM raw_notes").fetchone()
    assert 0 < texts[0] < texts[1] and len(markdown) > 50  # long and short texts both


def test_a_worker_process_that_ends_unexpectedly_stops_the_transform_with_a_message(sample_staging):
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    with MakerPool(maker, 1) as pool, pytest.raises(MigrateError, match="worker process ended unexpectedly.*--transform-workers 0"):
        list(pool.map(os._exit, [3], here=str))  # the worker process exits with status 3 mid-task


def _refuse_to_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(process: object) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "_Popen", staticmethod(refuse))


def _have_no_semaphores(monkeypatch: pytest.MonkeyPatch) -> None:  # as without /dev/shm
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(records, "ProcessPoolExecutor", refuse)


@pytest.mark.parametrize(("failure", "errno_shown"), [(_refuse_to_spawn, 11), (_have_no_semaphores, 38)], ids=["spawn", "semaphores"])
def test_a_worker_process_that_cannot_start_stops_the_transform_with_a_message(
    sample_staging, monkeypatch, tmp_path, failure, errno_shown
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    failure(monkeypatch)
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    message = rf"cannot start a transform worker process \(\[Errno {errno_shown}\].*--transform-workers 0"
    with pytest.raises(MigrateError, match=message), MakerPool(maker, 1):  # the workers start as the pool is entered
        pass
    assert not list(tmp_path.glob("migrate-maker-*"))  # nor is the maker's file left behind


def test_no_room_for_the_workers_reference_data_stops_the_transform_with_a_message(sample_staging, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    with pytest.raises(MigrateError, match=r"cannot write the reference data .*/missing \(.*TMPDIR.*--transform-workers 0"):
        MakerPool(maker, 1).__enter__()


def test_a_disk_filling_up_under_the_workers_reference_data_leaves_no_partial_file(sample_staging, monkeypatch, tmp_path):
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(records.pickle, "dump", full)
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    with pytest.raises(MigrateError, match=r"cannot write the reference data .*\[Errno 28\].*--transform-workers 0"):
        MakerPool(maker, 1).__enter__()
    assert not list(tmp_path.glob("migrate-maker-*"))


def test_worker_processes_end_when_the_main_process_is_killed_outright(tmp_path):
    """A main process killed with SIGKILL (or by the kernel for memory) stops nothing; its worker
    must not linger (one waiting to send a result back would wait forever)."""
    script = (
        "import operator, os\n"
        "from migrate.transform.columns import ColumnRegistry\n"
        "from migrate.transform.encoders import Lookups\n"
        "from migrate.transform.lookups import LookupLog\n"
        "from migrate.transform.records import MakerPool, RecordMaker\n"
        "maker = RecordMaker({}, ColumnRegistry(), Lookups(), {}, LookupLog(), {}, {})\n"
        "pool = MakerPool(maker, 1).__enter__()\n"
        "print(next(pool.map(operator.call, [os.getpid], here=operator.call)), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    # a lingering worker holds the output pipe open: the run then times out
    environment = {**os.environ, "TMPDIR": str(tmp_path)}  # where the pool writes its maker file, left behind by a kill
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20, cwd=ROOT, env=environment, check=False)
    worker = int(done.stdout)
    assert done.returncode == -9
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended; only its parent (init) has not reaped it yet
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _pid_after_sigterm(_: object) -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    return os.getpid()


def test_worker_processes_leave_ctrl_c_and_sigterm_to_the_main_process(sample_staging):
    """Ctrl-C, or a SIGTERM to the process group, reaches the workers too: the main process stops
    gracefully, so they must not die first and break the transform."""
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    with MakerPool(maker, 1) as pool:
        [worker_pid] = pool.map(_pid_after_sigterm, [None], here=lambda _: os.getpid())
    assert worker_pid != os.getpid()


def test_a_pool_hands_the_gil_round_sooner_while_it_runs_and_leaves_the_switch_interval_as_it_found_it(sample_staging):
    before = sys.getswitchinterval()
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    with MakerPool(maker, 1) as pool:
        assert sys.getswitchinterval() == SWITCH_INTERVAL < before
        assert list(pool.map(str, [1, 2], here=str)) == ["1", "2"]
    assert sys.getswitchinterval() == before


def test_a_registry_merging_the_changes_of_its_copies_batch_by_batch_lists_options_in_the_order_of_the_records():
    main = ColumnRegistry()
    tier = main.declare(ColumnSpec("deals", "tier", "Tier", "singleSelect", options=["Gold"]))
    first, second = copy.deepcopy(main), copy.deepcopy(main)  # two workers' copies
    mark = first.mark()
    for option in ("Silver", "Gold", "Bronze"):
        first.get("deals", "tier").add_option(option)
    first_batch = first.changes_since(mark)
    mark = second.mark()
    for option in ("Bronze", "Iron"):
        second.get("deals", "tier").add_option(option)
    second.variant(second.get("deals", "tier"), "as_entered", "as entered", "plain").used = True
    second_batch = second.changes_since(mark)

    main.merge(first_batch)
    main.merge(second_batch)
    assert tier.options == ["Gold", "Silver", "Bronze", "Iron"]
    assert main.get("deals", "tier:as_entered").used and main.get("deals", "tier:as_entered").label == "Tier (as entered)"
    assert [c.key for c in first.changes_since(first.mark())] == []


def test_transform_workers_out_of_range_are_refused_with_the_setting_named():
    with pytest.raises(ValidationError, match="transform_workers"):
        Settings(transform_workers=-1)


def test_the_transform_output_is_replaced_within_the_memory_limit_however_many_records_it_had(tmp_path, monkeypatch):
    """At 30 MB a key on target_records overflowed the limit at 150,000 records (the old and the
    new rows each indexed in the one transaction), as at 160 MB near a million."""
    monkeypatch.setattr(store, "DUCKDB_MEMORY_LIMIT_MB", 30)
    payload = json.dumps({"fields": {"name": "x" * 40}, "values": {"note": "y" * 200}})
    rows = [("contacts", str(i), payload, f"{i:032x}", None) for i in range(150_000)]
    with Staging(tmp_path / "state.duckdb") as staging:
        for _ in range(2):
            staging.replace_transform_output(iter(rows), lambda: ([], []))
        assert staging.count_targets("contacts") == 150_000
        assert staging.target_fields("contacts", "149999") == {"name": "x" * 40}


def test_a_state_file_of_big_records_gets_a_memory_limit_that_holds_a_vector_of_them(tmp_path):
    """DuckDB holds a vector (2,048 rows) whole, and each JSON function a parse of each of its rows:
    300 contacts with 117 KB notes, read twice by one query, ran out of 160 MB. The limit grows with
    the biggest vector written, and a later run on the state file starts with it."""
    note = "契約は年末まで延長されました。" * 2600
    query = "SELECT data->>'notes' FROM raw_persons WHERE data->>'notes' <> ''"
    with Staging(tmp_path / "state.duckdb") as staging:
        assert staging.memory_limit_mb() == store.DUCKDB_MEMORY_LIMIT_MB
        staging.upsert_records("persons", [{"id": i, "notes": note} for i in range(300)])
        limit = staging.memory_limit_mb()
        assert limit > 8 * 300 * len(note.encode()) // 2**20
        set_to = staging.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # e.g. "346.1 MiB"
        assert abs(float(set_to.removesuffix(" MiB")) - limit * 10**6 / 2**20) < 0.2
        assert len(staging.con.execute(query).fetchall()) == 300
    with Staging(tmp_path / "state.duckdb") as staging:
        assert staging.memory_limit_mb() == limit
        staging.con.execute(f"SET memory_limit = '{store.DUCKDB_MEMORY_LIMIT_MB}MB'")
        with pytest.raises(duckdb.OutOfMemoryException):
            staging.con.execute(query).fetchall()


def test_a_record_the_transform_gives_twice_is_named_and_the_previous_output_kept(tmp_path):
    rows = [("deals", "7", "{}", "a", None), ("deals", "8", "{}", "b", None), ("deals", "7", "{}", "c", None)]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.replace_transform_output(iter(rows[:2]), lambda: ([], []))
        with pytest.raises(MigrateError, match="deals 7 2 times"):
            staging.replace_transform_output(iter(rows), lambda: ([], []))
        assert staging.count_targets("deals") == 2


def test_a_state_file_with_a_key_on_target_records_is_rewritten_without_it_keeping_its_rows(tmp_path):
    state = tmp_path / "state.duckdb"
    with Staging(state) as staging:
        staging.replace_transform_output(iter([("deals", "7", "{}", "a", None)]), lambda: ([], []))
        staging.con.execute("CREATE TABLE keyed (entity VARCHAR, source_id VARCHAR, payload JSON, payload_hash VARCHAR, num_id BIGINT, PRIMARY KEY (entity, source_id))")
        staging.con.execute("INSERT INTO keyed SELECT entity, source_id, payload, payload_hash, num_id FROM target_records")
        staging.con.execute("DROP TABLE target_records")
        staging.con.execute("ALTER TABLE keyed RENAME TO target_records")
    with Staging(state) as staging:
        keys = staging.con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'target_records' AND constraint_type = 'PRIMARY KEY'").fetchone()
        assert keys == (0,)
        assert [(sid, digest) for sid, _, digest in staging.iter_targets("deals")] == [("7", "a")]


def test_a_character_replaced_in_staging_is_an_issue_of_its_record_and_field(tmp_path):
    """A lone surrogate cannot be staged (`test_staging`): its U+FFFD arrives, and the report says where."""
    cut = json.loads('{"id": 5, "name": "Zoë \\ud83d", "first_name": "Zoë \\ud83d", "emails": [{"value": "z@example.com", "primary": true}]}')
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", [cut], store.Checkpoint("persons", None, 1, 1, True), "run")
        transform(staging, load_mappings())
        assert targets(staging, "contacts")["5"]["fields"]["firstName"] == "Zoë \ufffd"
        assert [(i["source_id"], i["field"]) for i in issues(staging, "character_replaced")] == [("5", "name"), ("5", "first_name")]


def test_a_nul_character_is_taken_out_of_every_text_and_reported_where_it_was(tmp_path):
    """Postgres stores no U+0000 in text, and Customermates answers a batch holding one with a 500
    that names no record: the character goes, and the report names the record and the field."""
    person = {"id": 5, "first_name": "An\x00na", "last_name": "Berg", "job_title": "CEO\x00"}
    deal = {"id": 7, "title": "Rollout\x00", "person_id": 5, "value": 10, "currency": "EUR", "status": "open"}
    product = {"id": 3, "name": "Widget", "prices": [{"price": 10, "currency": "EUR"}]}
    line = {"id": 70, "deal_id": 7, "product_id": 3, "name": "Widget", "quantity": 1, "item_price": 10, "currency": "EUR", "comments": "see\x00 below"}
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, row in (("persons", person), ("deals", deal), ("products", product), ("deal_products", line)):
            staging.write_page(collection, [row], store.Checkpoint(collection, None, 1, 1, True), "run")
        transform(staging, load_mappings())
        contact, made = targets(staging, "contacts")["5"], targets(staging, "deals")["7"]
        assert "\\u0000" not in json.dumps([contact, made])
        assert (contact["fields"]["firstName"], made["fields"]["name"]) == ("Anna", "Rollout")
        assert "comment: see below" in made["values"]["products"]
        assert sorted((i["entity"], i["source_id"], i["field"]) for i in issues(staging, "character_replaced")) == [
            ("contacts", "5", "first_name"), ("contacts", "5", "job_title"), ("deals", "7", "products.70.comments"), ("deals", "7", "title"),
        ]


def test_a_currency_value_past_what_the_column_holds_is_kept_as_text(tmp_path):
    """Customermates also stores a currency value as DECIMAL(20,4), where Postgres refuses 10^16 or
    more and fails the whole batch with a 500: such a value is kept as text and reported."""
    deals = [{"id": n, "title": f"D{n}", "value": value, "currency": "EUR", "status": "open"} for n, value in ((1, 12345678901234567), (2, 9999999999999999.5), (3, 1500.25))]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("deals", deals, store.Checkpoint("deals", None, 1, 1, True), "run")
        transform(staging, load_mappings())
        made = targets(staging, "deals")
        assert made["3"]["values"]["value:eur"] == "1500.25"
        assert made["1"]["values"]["value:as_entered"] == "12345678901234567 EUR"
        assert [key for n in ("1", "2") for key in made[n]["values"] if key.startswith("value:")] == ["value:as_entered"] * 2
        assert sorted(i["source_id"] for i in issues(staging, "invalid_value_kept_as_text")) == ["1", "2"]


def test_a_character_replaced_in_reference_data_is_an_issue_of_every_record(tmp_path):
    """A user's, a stage's or a custom field's name is not a record of its own: the report names
    the row and its field, for every record (`*`), as it does for a field type with no mapping."""
    user = json.loads('{"id": 3, "name": "Zo\\ud83d", "email": "z@example.com", "active_flag": true}')
    stage = json.loads('{"id": 7, "name": "Won \\udc00", "pipeline_id": 1, "order_nr": 1}')
    field = json.loads('{"field_code": "abc", "field_name": "Region \\ud83d", "field_type": "varchar", "is_custom_field": true}')
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, record, key in (("users", user, "id"), ("stages", stage, "id"), ("personFields", field, "field_code")):
            staging.write_page(collection, [record], store.Checkpoint(collection, None, 1, 1, True), "run", key=key)
        staging.write_page("persons", [{"id": 5, "name": "Ann", "owner_id": 3}], store.Checkpoint("persons", None, 1, 1, True), "run")
        transform(staging, load_mappings())
        assert sorted((i["entity"], i["source_id"], i["field"], i["detail"].split(":")[0]) for i in issues(staging, "character_replaced")) == [
            ("*", "*", "personFields.field_name", "Pipedrive personFields abc"),
            ("*", "*", "stages.name", "Pipedrive stages 7"),
            ("*", "*", "users.name", "Pipedrive users 3"),
        ]
        assert columns(staging, "contacts")["Region \ufffd"]["key"] == "cf:abc"


def test_a_character_replaced_in_a_note_is_an_issue_of_each_record_the_note_joins(tmp_path):
    cut = json.loads('{"id": 41, "content": "<p>Call back \\ud83d</p>", "person_id": 5, "org_id": 9, "add_time": "2024-01-02 10:00:00"}')
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", [{"id": 5, "name": "Zoë", "org_id": 9}], store.Checkpoint("persons", None, 1, 1, True), "run")
        staging.write_page("organizations", [{"id": 9, "name": "Acme"}], store.Checkpoint("organizations", None, 1, 1, True), "run")
        staging.write_page("notes", [cut, {"id": 42, "content": "<p>fine</p>", "person_id": 5}], store.Checkpoint("notes", None, 1, 2, True), "run")
        transform(staging, load_mappings())
        assert "Call back \ufffd" in targets(staging, "contacts")["5"]["notes"]
        assert [(i["entity"], i["source_id"], i["field"], i["detail"].split(":")[0]) for i in issues(staging, "character_replaced")] == [
            ("contacts", "5", "notes", "Pipedrive note 41, content"),
            ("organizations", "9", "notes", "Pipedrive note 41, content"),
        ]


def test_fields_of_the_wrong_json_type_are_carried_or_reported_and_never_stop_the_transform(sample_staging):
    """Pipedrive sends these as text, lists and objects; a record that does not is still transformed."""
    staging = sample_staging
    odd = {
        "persons": {"id": 900, "name": 4711, "emails": "solo@example.com", "notes": 12.5, "custom_fields": 7},
        "products": {"id": 900, "name": ["Kit", 2], "prices": {"price": 10, "currency": "EUR"}, "description": 99},
        "activities": {"id": 900, "subject": 5, "participants": 3, "note": ["call", "back"], "public_description": True},
    }
    for collection, record in odd.items():
        staging.upsert_records(collection, [record])
    transform(staging, load_mappings())
    person, product, task = (targets(staging, e)["900"] for e in ("contacts", "services", "tasks"))
    assert person["fields"]["firstName"] == "4711" and person["fields"]["emails"] == ["solo@example.com"]
    assert person["notes"] == "Contact notes\n\n12\\.5"  # markdown: "12." would begin a numbered list
    assert product["fields"] == {"name": '["Kit", 2]', "amount": 10.0} and product["notes"] == "Description\n\n99"
    assert task["fields"]["name"] == "5"
    assert task["notes"] == 'Activity note\n\n\\["call", "back"\\]\n\n---\n\nPublic description\n\ntrue'
    unreadable = issues(staging, "custom_fields_unreadable")
    assert [(i["entity"], i["source_id"], i["field"]) for i in unreadable] == [("contacts", "900", "custom_fields")]
    assert "'7', not an object" in unreadable[0]["detail"]


def test_reference_data_of_the_wrong_json_type_is_read_as_far_as_it_goes_and_never_stops_the_transform(sample_staging):
    """A user named by a number, a stage ordered by text, a custom field whose options are not a list."""
    staging = sample_staging
    user = next(u for u in staging.iter_raw("users") if u["id"] == 1)
    stage = next(s for s in staging.iter_raw("stages") if s["id"] == 2)
    field = next(f for f in staging.iter_raw("personFields") if f.get("is_custom_field") and f.get("options"))
    staging.upsert_records("users", [dict(user, name=4711)])
    staging.upsert_records("stages", [dict(stage, order_nr="second")])
    staging.upsert_records("personFields", [dict(field, options=5)], key="field_code")
    transform(staging, load_mappings())
    note_of_user_1 = targets(staging, "contacts")["53"]["notes"]
    assert note_of_user_1.startswith("**4711** · 2021-01-12 16:15 UTC")
    stages = columns(staging, "deals")["Stage"]["options"]
    assert stages.index(f"{next(iter(staging.iter_raw('pipelines')))['name']} / {stage['name']}") == 0  # no number: first
    assert columns(staging, "contacts")[field["field_name"]]["options"] == []


def test_a_mapping_file_that_is_not_valid_yaml_is_refused_with_its_name_and_the_line_at_fault(tmp_path):
    for name in ("columns.yaml", "field_types.yaml"):
        (tmp_path / name).write_text((DEFAULT_DIR / name).read_text(encoding="utf-8"), encoding="utf-8")
    assert load_mappings(tmp_path) == load_mappings()
    with (tmp_path / "columns.yaml").open("a", encoding="utf-8") as fh:
        fh.write("persons:\n  entity: contacts\n  columns: [{key: x, label: X\n")
    with pytest.raises(ConfigError) as refused:
        load_mappings(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"mapping file {tmp_path / 'columns.yaml'} is not valid YAML")
    assert "columns: [{key: x, label: X" in message and "^" in message


WRONG_SHAPE_MARK = "shape-marker-7q"
WRONG_SHAPES = {
    "text": WRONG_SHAPE_MARK,
    "an object without value": {"note": WRONG_SHAPE_MARK},
    "an object": {"value": WRONG_SHAPE_MARK},
    "a list of lists": [[WRONG_SHAPE_MARK]],
    "a list of objects without value": [{"note": WRONG_SHAPE_MARK}],
}
# Read only when first_name and last_name are missing (Pipedrive sends all three, the name made of the other two)
NOT_READ_BESIDE_OTHERS = {("persons", "name")}


def test_a_value_of_a_shape_its_field_does_not_read_is_kept_as_text_or_reported(sample_staging):
    """Pipedrive sends typed values, but one of the wrong shape must not vanish without a word:
    each field a declared or custom column reads, and each other field the coverage says is
    migrated (names, emails, links, ...), in three records of every collection, replaced by text,
    objects and lists around a marker, shows the marker in the record's payload or in an issue
    (where a column reads inside an object, by text and lists only: an object there is read as one)."""
    mappings = load_mappings()
    maker = engine.Transformer(sample_staging, mappings).maker
    silent, cases = [], 0
    for collection in mappings.sources:
        if not sample_staging.has_collection(collection):
            continue
        rows = sample_staging.con.execute(
            f"SELECT data FROM {store.raw_table(collection)} WHERE NOT coalesce(is_deleted, false) ORDER BY num_id, id LIMIT 3"
        ).fetchall()
        v1 = collection in records.V1_ENCODED
        places = [path[:1] for column in maker.declared[collection] for path in (column.path, *column.also)]
        places += [(custom.code,) if v1 else ("custom_fields", custom.code) for custom in maker.custom[collection]]
        coverage = mappings.coverage.get(collection.removesuffix("_archived"), {})
        places += [(name,) for name, goes_to in coverage.items() if "not migrated" not in goes_to]
        nested = {column.path[0] for column in maker.declared[collection] if len(column.path) > 1}
        for (data,) in rows:
            for path in dict.fromkeys(places):
                if path == ("id",) or (collection.removesuffix("_archived"), path[-1]) in NOT_READ_BESIDE_OTHERS:
                    continue
                for shape, value in WRONG_SHAPES.items():
                    if path[-1] in nested and isinstance(value, dict):
                        continue
                    record = json.loads(data)
                    (record.setdefault(path[0], {}) if len(path) > 1 else record)[path[-1]] = value
                    made = maker.make(records.Batch(collection, [(json.dumps(record), [], [])], {}))
                    cases += 1
                    shown = [made.rows[0][2].casefold(), *(issue[4].casefold() for issue in made.issues)]  # a status is capitalised
                    if not any(WRONG_SHAPE_MARK in text for text in shown):
                        silent.append((collection, record["id"], ".".join(path), shape))
    assert cases > 2000
    assert silent == []


def test_a_set_value_naming_options_the_field_lacks_is_reported_once_naming_them(tmp_path):
    """As an enum value is: each id becomes 'Deleted option #<id>' among the labels, and one issue of
    the record and field names them all."""
    interests = {"field_code": "abc", "field_name": "Interessen", "field_type": "set", "is_custom_field": True,
                 "options": [{"id": 105, "label": "CRM"}, {"id": 106, "label": "ERP"}]}
    persons = [{"id": 5, "name": "Ann", "custom_fields": {"abc": [105, 3, 7]}}, {"id": 6, "name": "Bo", "custom_fields": {"abc": [106, 9]}},
               {"id": 7, "name": "Cy", "custom_fields": {"abc": [105, 106]}}]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("personFields", [interests], store.Checkpoint("personFields", None, 1, 1, True), "run", key="field_code")
        staging.write_page("persons", persons, store.Checkpoint("persons", None, 1, 3, True), "run")
        transform(staging, load_mappings())
        made = {sid: payload["values"]["cf:abc"] for sid, payload in targets(staging, "contacts").items()}
        assert made == {"5": "CRM, Deleted option #3, Deleted option #7", "6": "ERP, Deleted option #9", "7": "CRM, ERP"}
        assert [(i["source_id"], i["field"], i["detail"]) for i in issues(staging, "option_unknown")] == [
            ("5", "Interessen", "option ids 3, 7 are not among the field's options; carried as 'Deleted option #3', 'Deleted option #7'"),
            ("6", "Interessen", "option id 9 is not among the field's options; carried as 'Deleted option #9'"),
        ]


def test_an_option_deleted_in_pipedrive_keeps_the_label_its_field_keeps_for_it_and_is_noted(tmp_path):
    """v1 field metadata keeps the options deleted while records still hold their ids (`options_deleted`):
    such an id is carried by its label, reported as deleted in Pipedrive (not as unknown), and the label
    joins a select column's options only when a record carries it."""
    tier = {"key": "abc", "name": "Tier", "field_type": "enum", "edit_flag": True,
            "options": [{"id": 1, "label": "Gold"}], "options_deleted": [{"id": 2, "label": "Platin"}, {"id": 4, "label": "Bronze"}]}
    interests = {"key": "def", "name": "Interessen", "field_type": "set", "edit_flag": True,
                 "options": [{"id": 105, "label": "CRM"}], "options_deleted": [{"id": 106, "label": "ERP"}, {"id": 107, "label": "BI"}]}
    persons = [{"id": 5, "name": "Ann", "custom_fields": {"abc": 2, "def": [105, 106, 107, 3]}},
               {"id": 6, "name": "Bo", "custom_fields": {"abc": 1, "def": [106]}}]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("personFields", [tier, interests], store.Checkpoint("personFields", None, 1, 2, True), "run", key="key")
        staging.write_page("persons", persons, store.Checkpoint("persons", None, 1, 2, True), "run")
        transform(staging, load_mappings())
        made = {sid: payload["values"] for sid, payload in targets(staging, "contacts").items()}
        assert made["5"]["cf:abc"] == "Platin" and made["5"]["cf:def"] == "CRM, ERP, BI, Deleted option #3"
        assert made["6"]["cf:abc"] == "Gold" and made["6"]["cf:def"] == "ERP"
        assert columns(staging, "contacts")["Tier"]["options"] == ["Gold", "Platin"]
        assert [(i["source_id"], i["field"], i["detail"]) for i in issues(staging, "option_deleted")] == [
            ("5", "Tier", "option id 2 was deleted in Pipedrive; carried by the label it had, 'Platin'"),
            ("5", "Interessen", "option ids 106, 107 were deleted in Pipedrive; carried by the labels they had, 'ERP', 'BI'"),
            ("6", "Interessen", "option id 106 was deleted in Pipedrive; carried by the label it had, 'ERP'"),
        ]
        assert [(i["source_id"], i["field"], i["detail"]) for i in issues(staging, "option_unknown")] == [
            ("5", "Interessen", "option id 3 is not among the field's options; carried as 'Deleted option #3'"),
        ]


def test_labels_are_named_from_v1_field_metadata_and_an_unknown_or_deleted_label_is_reported(tmp_path):
    """v1 metadata keys the labels field `label` (a v1 record's key), where v2 says `label_ids`."""
    labels = {"key": "label", "name": "Label", "field_type": "set", "edit_flag": False,
              "options": [{"id": 1, "label": "Kunde"}], "options_deleted": [{"id": 2, "label": "Lieferant"}]}
    persons = [{"id": 5, "name": "Ann", "label_ids": [1, 2, 9]}, {"id": 6, "name": "Bo", "label_ids": [1]}]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("personFields", [labels], store.Checkpoint("personFields", None, 1, 1, True), "run", key="key")
        staging.write_page("persons", persons, store.Checkpoint("persons", None, 1, 2, True), "run")
        transform(staging, load_mappings())
        made = {sid: payload["values"]["labels"] for sid, payload in targets(staging, "contacts").items()}
        assert made == {"5": "Kunde, Lieferant, Label #9", "6": "Kunde"}
        assert sorted((i["source_id"], i["rule"], i["detail"]) for i in staging.transform_issues() if i["field"] == "label_ids") == [
            ("5", "option_deleted", "option id 2 was deleted in Pipedrive; carried by the label it had, 'Lieferant'"),
            ("5", "option_unknown", "option id 9 is not among the field's options; carried as 'Label #9'"),
        ]


def test_an_instant_messaging_entry_of_another_shape_beside_readable_ones_is_kept_as_text_and_reported(tmp_path):
    """Alone, such an entry goes to 'as entered' as any value a column passes over; beside readable
    ones it went nowhere, without a word. An entry without a value is an empty one, not reported."""
    im = [{"value": "@ann", "primary": True, "label": "skype"}, "@ann-old", {"note": "ask for telegram"}, {"value": None, "label": "work"}]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", [{"id": 5, "name": "Ann", "im": im}], store.Checkpoint("persons", None, 1, 1, True), "run")
        transform(staging, load_mappings())
        values = targets(staging, "contacts")["5"]["values"]
        assert (values["im"], values["im:as_entered"]) == ("@ann (skype)", "@ann-old, ask for telegram")
        assert [(i["source_id"], i["field"], i["detail"]) for i in issues(staging, "invalid_value_kept_as_text")] == [
            ("5", "im", "'@ann-old, ask for telegram' cannot be read (not an item with a value); kept as text in 'Instant messaging (as entered)'"),
        ]


def test_a_phone_number_given_bare_is_read_and_an_item_of_another_shape_beside_numbers_is_reported(tmp_path):
    phones = [{"value": "+49 30 1234567", "primary": True, "label": "work"}, "+49 40 7654321", 4989123456, {"label": "fax"}, ["+4930"]]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", [{"id": 5, "name": "Ann", "phones": phones}], store.Checkpoint("persons", None, 1, 1, True), "run")
        transform(staging, load_mappings())
        values = targets(staging, "contacts")["5"]["values"]
        assert values["phones"] == "+49301234567,+49407654321"
        assert values["phones:as_entered"] == "4989123456, fax, +4930"  # no country code and no users' locale to read it in
        assert [(i["rule"], i["detail"]) for i in staging.transform_issues() if i["field"] == "phones"] == [
            ("invalid_value_kept_as_text", "'fax, +4930' cannot be read (not a phone number or an item with one); kept as text in 'Phone (as entered)'"),
            ("phone_not_e164", "'4989123456' cannot be normalised to E.164; kept as text in 'Phone (as entered)'"),
        ]


def test_instant_messaging_sent_as_ims_fills_its_column_as_im_does_and_both_show_each_item_once(tmp_path):
    """Pipedrive's schema names a person's instant messaging `im`, its docs `ims` (contract §7.2)."""
    skype = {"value": "@ann", "primary": True, "label": "skype"}
    persons = [
        {"id": 5, "name": "Ann", "ims": [skype]},
        {"id": 6, "name": "Bo", "im": [skype], "ims": [dict(skype, primary=False), {"value": "@bo", "primary": False, "label": "telegram"}]},
        {"id": 7, "name": "Cy", "im": [{"value": "@cy", "primary": True, "label": None}], "ims": None},
        {"id": 8, "name": "Di", "im": [], "ims": []},
    ]
    field = {"field_code": "ims", "field_name": "Instant messenger", "field_type": "varchar", "is_custom_field": False}
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", persons, store.Checkpoint("persons", None, 1, 4, True), "run")
        staging.write_page("personFields", [field], store.Checkpoint("personFields", None, 1, 1, True), "run", key="field_code")
        mappings = load_mappings()
        transform(staging, mappings)
        made = {sid: payload["values"].get("im") for sid, payload in targets(staging, "contacts").items()}
        assert made == {"5": "@ann (skype)", "6": "@ann (skype), @bo (telegram)", "7": "@cy", "8": None}
        assert staging.transform_issues() == []
        [row] = [r for r in plan.coverage(staging, mappings.sources, mappings.coverage) if r["code"] == "ims"]
        assert row["goes_to"] == "column 'Instant messaging' (plain)"


# A host whose last label is a number is an IPv4 address to a WHATWG URL parser (Customermates
# checks links with `new URL()`), refused unless it is a valid one: then the server refuses the record.
LINKS_ENDING_IN_A_NUMBER = {
    "https://shop.acme.24": False,
    "shop.acme.24": False,
    "https://shop.acme.24./cart": False,
    "http://acme.0x1F": False,
    "http://1.2.3.4.5": False,
    "http://256.1.1.1": False,
    "http://1.2.3.256": False,
    "http://192.168.0.1": True,
    "http://192.168.0.1:8080/admin": True,
    "http://0x7f.0.0.1": True,
    "http://10.1": True,
    "https://acme.24.de": True,
    "https://shop.acme.24h": True,
}


def website_outcomes(tmp_path, urls) -> dict[str, tuple[dict, bool]]:
    """url → (the website values its organization is made with, whether a link_invalid issue names it)."""
    organizations = [{"id": n, "name": f"Org {n}", "website": url} for n, url in enumerate(urls, 1)]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("organizations", organizations, store.Checkpoint("organizations", None, 1, len(organizations), True), "run")
        transform(staging, load_mappings())
        made = targets(staging, "organizations")
        refused = {i["source_id"] for i in issues(staging, "link_invalid")}
    return {
        url: ({key: value for key, value in made[str(n)]["values"].items() if key.startswith("website")}, str(n) in refused)
        for n, url in enumerate(urls, 1)
    }


def assert_linked_or_kept_as_text(tmp_path, table: dict[str, bool], *, as_the_fake_takes_it: bool) -> None:
    """Each text of `table` is written as a link (`https://` before it when it has no scheme) when
    True, else kept as text and reported (`link_invalid`); with `as_the_fake_takes_it`, the fake
    Customermates takes exactly the links written."""
    outcomes = website_outcomes(tmp_path, table)
    for url, valid in table.items():
        link = url if "://" in url else f"https://{url}"
        assert outcomes[url] == ({"website": link} if valid else {"website:as_entered": url}, not valid), url
        if as_the_fake_takes_it:
            assert is_secure_url(link) is valid, f"the fake Customermates on {link}"


def test_a_link_whose_host_ends_in_a_number_but_is_no_ipv4_address_is_kept_as_text_as_the_server_refuses_it(tmp_path):
    assert_linked_or_kept_as_text(tmp_path, LINKS_ENDING_IN_A_NUMBER, as_the_fake_takes_it=True)


# Links Customermates takes (contract §6: an absolute URL with scheme https, http, mailto or tel, as
# `new URL()` parses it, which lowercases the scheme) that the transform kept as text; and near misses.
LINKS_WITH_A_SCHEME = {
    "tel:+4930123": True,
    "TEL:+4930123": True,
    "MailTo:info@acme.de": True,
    "HTTPS://Example.COM/Pfad": True,
    "Http://example.com": True,
    "http://localhost:8080/x": True,
    "https://intranet": True,
    "https://[2001:db8::1]/": True,
    "http://[::1]:8080/": True,
    "https://[2001:db8::zz]/": False,
    "https://[2001:db8::1]:99999/": False,
    "ftp://files.acme.de": False,
    "intranet": False,
}


def test_a_link_with_a_scheme_the_server_takes_is_written_as_a_link_in_any_case_and_to_any_host(tmp_path):
    outcomes = website_outcomes(tmp_path, LINKS_WITH_A_SCHEME)
    for url, valid in LINKS_WITH_A_SCHEME.items():
        assert outcomes[url] == ({"website": url} if valid else {"website:as_entered": url}, not valid), url
        if "://" in url or ":" in url[:7]:
            assert is_secure_url(url) is valid, f"the fake Customermates on {url}"


# A space of another kind in a host (a no-break one, pasted from a document; an ideographic one,
# typed with a Japanese input method): the server's URL parser maps it to a space (IDNA, UTS #46),
# which no host holds, and refuses the link, and with it the record; a space that maps to nothing is none.
LINKS_WITH_ANOTHER_SPACE = {
    "https://acme\u00a0corp.de": False,
    "www.acme\u3000corp.de": False,
    "https://acme.de\u2002/": False,
    "https://exa\u200bmple.com": True,
}


def test_a_link_whose_host_holds_a_space_of_another_kind_is_kept_as_text_as_the_server_refuses_it(tmp_path):
    assert_linked_or_kept_as_text(tmp_path, LINKS_WITH_ANOTHER_SPACE, as_the_fake_takes_it=True)


# Text without "://" is a link once "https://" is put before it, if its host name has a dot: a dot
# anywhere else made a scheme typed wrong a host of its own ("https://https:/www.acme.de" links to
# the host "https"), which the server takes, the link going nowhere.
LINKS_WITHOUT_A_SCHEME = {
    "https:/www.acme.de": False,
    "http//www.acme.de": False,
    "https//acme.de/kontakt": False,
    "n/a.pdf": False,
    "www.acme.de": True,
    "acme.de/kontakt.html": True,
    "acme.de:8080/x": True,
}


def test_a_link_without_a_scheme_is_one_only_when_its_host_name_has_a_dot_not_its_path(tmp_path):
    # the server takes "https://https:/www.acme.de", a link to the host "https": no check against the fake
    assert_linked_or_kept_as_text(tmp_path, LINKS_WITHOUT_A_SCHEME, as_the_fake_takes_it=False)


def test_a_double_field_keeps_all_16_digits_pipedrive_holds_and_drops_only_a_sums_binary_noise(tmp_path):
    """Contract §8.3: `double` (precision 16). The 16th digit was rounded away without a word."""
    key = "d" * 40
    sent = {"123456789012345.6": "123456789012345.6", "0.1234567890123456": "0.1234567890123456", "12.5": "12.5",
            "0.30000000000000004": "0.3"}
    field = {"field_code": key, "field_name": "Kennzahl", "field_type": "double", "is_custom_field": True}
    persons = [json.loads(f'{{"id": {n}, "name": "P{n}", "custom_fields": {{"{key}": {text}}}}}') for n, text in enumerate(sent, 1)]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("personFields", [field], store.Checkpoint("personFields", None, 1, 1, True), "run", "field_code")
        staging.write_page("persons", persons, store.Checkpoint("persons", None, 1, len(persons), True), "run")
        transform(staging, load_mappings())
        made = targets(staging, "contacts")
        assert {text: made[str(n)]["values"][f"cf:{key}"] for n, text in enumerate(sent, 1)} == sent
        assert staging.transform_issues() == []


def test_a_v1_note_whose_active_flag_is_0_is_a_deleted_note_and_is_not_migrated(tmp_path):
    """Contract §7.9: active_flag false = deleted; §12.4: v1 booleans are 0/1 in places."""
    base = {"user_id": 1, "person_id": 5, "add_time": "2024-01-01 10:00:00"}
    notes = [dict(base, id=1, content="<p>live</p>", active_flag=1), dict(base, id=2, content="<p>gone as 0</p>", active_flag=0),
             dict(base, id=3, content="<p>gone as false</p>", active_flag=False), dict(base, id=4, content="<p>gone as '0'</p>", active_flag="0")]
    pages = {"users": [{"id": 1, "name": "Ann", "email": "ann@x.com"}], "persons": [{"id": 5, "name": "Bob Smith"}], "notes": notes}
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, records in pages.items():
            staging.write_page(collection, records, store.Checkpoint(collection, None, 1, len(records), True), "run")
        transform(staging, load_mappings())
        text = targets(staging, "contacts")["5"]["notes"]
    assert "live" in text and "gone" not in text


def test_a_price_written_with_underscores_or_other_digits_is_no_number_and_never_stops_the_transform(tmp_path):
    """float() reads `-1_000` and `٠` (an Arabic-Indic zero) as numbers, which the text of the
    zero-price issue then could not write: the whole transform stopped on one product."""
    products = [{"id": n, "name": f"P{n}", "prices": [{"price": price, "currency": "EUR"}]} for n, price in ((1, "-1_000"), (2, "\u0660"), (3, "1_000"))]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("products", products, store.Checkpoint("products", None, 1, 3, True), "run")
        transform(staging, load_mappings())
        made = targets(staging, "services")
        assert [made[n]["fields"]["amount"] for n in ("1", "2", "3")] == [0.01] * 3
        assert [made[n]["values"]["prices:as_entered"] for n in ("1", "2", "3")] == ["-1_000 EUR", "\u0660 EUR", "1_000 EUR"]
        assert [(i["source_id"], i["detail"].split(";")[0]) for i in issues(staging, "product_zero_price")] == [
            ("1", "price is '-1_000' (not a number) EUR"), ("2", "price is '\u0660' (not a number) EUR"), ("3", "price is '1_000' (not a number) EUR"),
        ]
        assert all(i["detail"].endswith("(prices kept in 'Prices (as entered)')") for i in issues(staging, "product_zero_price"))


def test_a_deal_product_line_whose_number_is_no_number_is_carried_as_written_with_the_other_lines(tmp_path):
    """A quantity or price written as text (`2,5`) stopped the lines' encoder: every line of the deal
    was lost, and 'Products (Pipedrive) (as entered)' got the deal's id, reported on field `id`."""
    deal = {"id": 7, "title": "Rollout", "value": 10, "currency": "EUR", "status": "open"}
    products = [{"id": n, "name": name, "prices": [{"price": 10, "currency": "EUR"}]} for n, name in ((3, "Widget"), (4, "Gadget"), (5, "Gizmo"))]
    lines = [
        {"id": 70, "deal_id": 7, "product_id": 3, "name": "Widget", "quantity": "2,5", "item_price": 10, "currency": "EUR"},
        {"id": 71, "deal_id": 7, "product_id": 4, "name": "Gadget", "quantity": 1, "item_price": "1.234,50", "currency": "EUR", "discount": "5%"},
        {"id": 72, "deal_id": 7, "product_id": 5, "name": "Gizmo", "quantity": -2, "item_price": 5, "currency": "EUR"},
    ]
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, rows in (("deals", [deal]), ("products", products), ("deal_products", lines)):
            staging.write_page(collection, rows, store.Checkpoint(collection, None, 1, len(rows), True), "run")
        transform(staging, load_mappings())
        made = targets(staging, "deals")["7"]
        assert made["values"]["products"] == "2,5 × Widget @ 10 EUR; 1 × Gadget @ 1.234,50 EUR (discount 5% EUR); -2 × Gizmo @ 5 EUR"
        assert "products:as_entered" not in made["values"]
        assert made["services"] == [["3", 0.0], ["4", 1.0], ["5", 0.0]]
        assert [(i["field"], i["rule"], i["detail"]) for i in staging.transform_issues()] == [
            ("products", "invalid_value_kept_as_text", "product 3's quantity '2,5' is no number of 0 or more; linked with quantity 0, the line as written in 'Products (Pipedrive)'"),
            ("products", "invalid_value_kept_as_text", "product 5's quantity -2 is no number of 0 or more; linked with quantity 0, the line as written in 'Products (Pipedrive)'"),
        ]


def test_a_nul_character_in_reference_data_is_taken_out_of_every_value_and_column_and_reported_for_every_record(tmp_path):
    """A user's, a stage's, an option's or a field's name with U+0000 reached the records and columns
    made of it, which Postgres refuses: every batch holding such a record failed, and so did the column."""
    user = {"id": 1, "name": "Ad\x00a", "email": "ada@example.com"}
    pipeline, stage = {"id": 1, "name": "Sal\x00es", "order_nr": 1}, {"id": 2, "name": "Won\x00", "pipeline_id": 1, "order_nr": 1}
    tier = {"field_code": "abc", "field_name": "Ti\x00er", "field_type": "enum", "is_custom_field": True, "options": [{"id": 1, "label": "Go\x00ld"}]}
    person = {"id": 5, "name": "Ann", "owner_id": 1, "org_id": 9, "custom_fields": {"abc": 1}}
    deal = {"id": 7, "title": "Rollout", "status": "open", "pipeline_id": 1, "stage_id": 2, "org_id": 9}
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, rows, key in (("users", [user], "id"), ("pipelines", [pipeline], "id"), ("stages", [stage], "id"),
                                      ("personFields", [tier], "field_code"), ("persons", [person], "id"), ("deals", [deal], "id"),
                                      ("organizations", [{"id": 9, "name": "Ac\x00me"}], "id")):
            staging.write_page(collection, rows, store.Checkpoint(collection, None, 1, 1, True), "run", key=key)
        transform(staging, load_mappings())
        made = [payload for entity in ("contacts", "deals", "organizations") for _, payload, _ in staging.iter_targets(entity)]
        assert "\\u0000" not in json.dumps(made) + json.dumps(staging.target_columns())
        contact, deal_made = targets(staging, "contacts")["5"], targets(staging, "deals")["7"]
        assert (contact["values"]["owner"], contact["values"]["cf:abc"]) == ("Ada <ada@example.com>", "Gold")
        assert (deal_made["values"]["pipeline"], deal_made["values"]["stage"]) == ("Sales", "Sales / Won")
        assert columns(staging, "contacts")["Tier"]["options"] == ["Gold"]
        in_reference = {"personFields.field_name": "personFields abc", "personFields.options.0.label": "personFields abc",
                        "pipelines.name": "pipelines 1", "stages.name": "stages 2", "users.name": "users 1"}
        assert sorted((i["entity"], i["source_id"], i["field"], i["detail"].split(":")[0]) for i in issues(staging, "character_replaced")) == [
            *(("*", "*", path, f"Pipedrive {row}") for path, row in in_reference.items()),
            ("organizations", "9", "name", "a NUL character (U+0000), which Customermates' database cannot store in text; removed"),
        ]


def test_several_ids_in_a_pipeline_or_stage_are_kept_as_text_not_all_but_the_last_dropped(tmp_path):
    """A single select holds one option: each id was chosen in turn, and only the last one stayed."""
    pipelines = [{"id": 1, "name": "Sales", "order_nr": 1}, {"id": 2, "name": "Partners", "order_nr": 2}]
    stages = [{"id": 3, "name": "Lead in", "pipeline_id": 1, "order_nr": 1}, {"id": 4, "name": "Won", "pipeline_id": 2, "order_nr": 1}]
    deal = {"id": 7, "title": "Rollout", "status": "open", "pipeline_id": [1, 2], "stage_id": [3, 4]}
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, rows in (("pipelines", pipelines), ("stages", stages), ("deals", [deal])):
            staging.write_page(collection, rows, store.Checkpoint(collection, None, 1, len(rows), True), "run")
        transform(staging, load_mappings())
        values = targets(staging, "deals")["7"]["values"]
        assert (values.get("pipeline"), values.get("stage")) == (None, None)
        assert (values["pipeline:as_entered"], values["stage:as_entered"]) == ("1, 2", "3, 4")
        assert sorted(i["field"] for i in issues(staging, "invalid_value_kept_as_text")) == ["pipeline_id", "stage_id"]


def test_a_number_column_keeps_a_value_that_is_no_number_as_json_text_and_names_the_column(tmp_path):
    """An object was written as Python shows it ({'value': 5}), and the issue named no column."""
    organizations = [{"id": 9, "name": "Acme", "employee_count": {"value": 5}, "annual_revenue": False}, {"id": 10, "name": "Beta", "employee_count": "1.234,50"}]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("organizations", organizations, store.Checkpoint("organizations", None, 1, 2, True), "run")
        transform(staging, load_mappings())
        made = {sid: (payload["values"].get("employee_count"), payload["values"].get("annual_revenue")) for sid, payload in targets(staging, "organizations").items()}
        assert made == {"9": ('{"value": 5}', "false"), "10": ("1.234,50", None)}
        assert sorted((i["source_id"], i["field"], i["detail"]) for i in issues(staging, "number_kept_as_text")) == [
            ("10", "employee_count", "'1.234,50' is not a number; kept as text in 'Employees'"),
            ("9", "annual_revenue", "'false' is not a number; kept as text in 'Annual revenue'"),
            ("9", "employee_count", """'{"value": 5}' is not a number; kept as text in 'Employees'"""),
        ]


def _made(staging: Staging, collection: str, record: dict) -> tuple[dict, list[tuple[str, str, str]]]:
    """One record made from the staged sample: its payload's values, and its issues (field, rule, detail)."""
    made = engine.Transformer(staging, load_mappings()).maker.make(records.Batch(collection, [(json.dumps(record), [], [])], {}))
    return json.loads(made.rows[0][2])["values"], [issue[2:] for issue in made.issues]


def test_a_custom_field_value_whose_field_the_field_list_does_not_name_is_reported_not_dropped(sample_staging):
    """Contract §8.4, §12.3: a custom value is keyed by a 40-hex key that means something only with
    the *Fields metadata. The field lists are read beside the records (and a resumed extract does not
    read them again), so a field made meanwhile has values no definition names: they went without a word."""
    new_field = "f0" * 20
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    _, found = _made(sample_staging, "deals", {**deal, "custom_fields": {**deal["custom_fields"], new_field: "Rahmenvertrag 2025"}})
    assert [(fld, rule) for fld, rule, _ in found if rule == "custom_field_unknown"] == [(new_field, "custom_field_unknown")]
    assert "'Rahmenvertrag 2025'" in next(detail for _, rule, detail in found if rule == "custom_field_unknown")
    lead = next(sample_staging.iter_raw("leads"))
    _, found = _made(sample_staging, "leads", {**lead, new_field: 1500, f"{new_field}_currency": "EUR"})
    assert [(fld, rule) for fld, rule, _ in found if rule == "custom_field_unknown"] == [(new_field, "custom_field_unknown")]


def test_an_item_naming_no_id_beside_ids_is_kept_as_text_and_reported_not_dropped(sample_staging):
    """Alone, an object with neither value nor id goes to 'as entered' as any value a column passes
    over; beside an id it went nowhere, without a word (owner, organization, person, labels, stage)."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    odd = {"name": "Nordwind"}
    custom = {**deal["custom_fields"], "173550ca9b331807a6aafa6f8f5f2a8824d3a0ae": [1, odd], "df27b77906b6ef3bf3ed705a7e04de8eb8fbc5b4": [odd, 1],
              "21d581e2db9b0ffb4296826fb5d8c801d1e6b495": [1, [odd]]}
    values, found = _made(sample_staging, "deals", {**deal, "custom_fields": custom, "label_ids": [1, odd], "creator_user_id": [1, odd], "stage_id": [1, odd]})
    columns = {  # the field an issue names (a custom field by its name) → its column
        "Vertriebspartner": "Vertriebspartner", "Technischer Ansprechpartner": "Technischer Ansprechpartner", "Pre-Sales Engineer": "Pre-Sales Engineer",
        "label_ids": "Labels", "creator_user_id": "Created by", "stage_id": "Stage",
    }
    for key in ("creator", "labels", "stage"):
        assert values[key] and values[f"{key}:as_entered"] == "Nordwind"
    kept = sorted((fld, detail) for fld, rule, detail in found if rule == "invalid_value_kept_as_text")
    assert kept == sorted(
        (fld, f"'Nordwind' cannot be read (not an id or an object with one); kept as text in '{label} (as entered)'") for fld, label in columns.items()
    )
    lead = next(sample_staging.iter_raw("leads"))
    values, found = _made(sample_staging, "leads", {**lead, "label_ids": ["6513270e-269e-4d37-b2a7-4de452e6b438", odd]})
    assert (values["labels"], values["labels:as_entered"]) == ("Heiß", "Nordwind")
    assert ("label_ids", "invalid_value_kept_as_text", "'Nordwind' cannot be read (not an id or an object with one); kept as text in 'Labels (as entered)'") in found


def test_an_attendee_that_is_no_object_beside_attendees_is_kept_as_text_and_reported_not_dropped(sample_staging):
    activity = next(sample_staging.iter_raw("activities"))
    attendees = [{"name": "Ann", "email": "ann@example.com"}, "bo@example.com", {"note": "ask Cy"}, {"email_address": None}]
    values, found = _made(sample_staging, "activities", {**activity, "attendees": attendees})
    assert (values["attendees"], values["attendees:as_entered"]) == ("Ann <ann@example.com>", "bo@example.com, ask Cy")
    assert [i for i in found if i[0] == "attendees"] == [
        ("attendees", "invalid_value_kept_as_text", "'bo@example.com, ask Cy' cannot be read (not an attendee, an object with a name or an email); kept as text in 'Attendees (as entered)'"),
    ]


def test_an_attendee_keeps_whether_they_organize_the_activity_and_their_answer(sample_staging):
    """Contract §7.7: attendees carry `status` and `is_organizer`; both were dropped. The flag is read
    as every yes/no value is (1, "true"), where only True, 1 and "1" were an organizer; one that is
    neither is kept as written."""
    activity = next(sample_staging.iter_raw("activities"))
    attendees = [{"name": "Ann", "email": "ann@example.com", "is_organizer": True, "status": "accepted"},
                 {"email": "carl@example.com", "is_organizer": False, "status": "declined"}, {"name": "Bo"},
                 {"name": "Dee", "is_organizer": "true"}, {"name": "Eve", "is_organizer": "maybe"}]
    values, found = _made(sample_staging, "activities", {**activity, "attendees": attendees})
    assert values["attendees"] == "Ann <ann@example.com> (organizer, accepted), carl@example.com (declined), Bo, Dee (organizer), Eve (organizer: maybe)"
    assert [i for i in found if i[0] == "attendees"] == []


def test_a_price_that_is_no_object_beside_prices_is_kept_as_text_and_reported_not_dropped(sample_staging):
    product = next(p for p in sample_staging.iter_raw("products") if p["id"] == 1)
    values, found = _made(sample_staging, "products", {**product, "prices": [{"price": 49, "currency": "EUR"}, "52 CHF", [60]]})
    assert (values["prices"], values["prices:as_entered"]) == ("49 EUR", "52 CHF, 60")
    assert [i for i in found if i[0] == "prices"] == [
        ("prices", "invalid_value_kept_as_text", "'52 CHF, 60' cannot be read (not a price, an object with one); kept as text in 'Prices (as entered)'"),
    ]


def _made_payload(staging: Staging, collection: str, record: dict) -> tuple[dict, list[tuple[str, str, str]]]:
    """One record made from the staged sample: its whole payload, and its issues (field, rule, detail)."""
    made = engine.Transformer(staging, load_mappings()).maker.make(records.Batch(collection, [(json.dumps(record), [], [])], {}))
    return json.loads(made.rows[0][2]), [issue[2:] for issue in made.issues]


def test_a_deal_status_or_activity_type_given_as_a_list_is_kept_as_text_not_made_an_option(sample_staging):
    """A list became an option labelled as Python shows it, lowercased ("['won']"); spaces became an
    option of spaces. Neither names an option: a list is kept as entered, reported, spaces are no value."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    values, found = _made(sample_staging, "deals", {**deal, "status": ["won"]})
    assert ("status" not in values, values["status:as_entered"]) == (True, "won")
    assert [i[:2] for i in found if i[0] == "status"] == [("status", "invalid_value_kept_as_text")]
    values, found = _made(sample_staging, "deals", {**deal, "status": "  won "})
    assert values["status"] == "Won" and not [i for i in found if i[0] == "status"]
    values, found = _made(sample_staging, "deals", {**deal, "status": "   "})
    assert "status" not in values and "status:as_entered" not in values and not [i for i in found if i[0] == "status"]
    activity = next(sample_staging.iter_raw("activities"))
    values, found = _made(sample_staging, "activities", {**activity, "type": {"key": "call"}})
    assert ("type" not in values, values["type:as_entered"]) == (True, "call")
    assert [i[:2] for i in found if i[0] == "type"] == [("type", "invalid_value_kept_as_text")]


def test_an_owner_given_as_a_list_makes_each_id_a_user_not_one_user_named_by_the_list(sample_staging):
    """`owner_id: [1, 2]` became the one user "[1, 2]", whom no Customermates user could match."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    for owner in ([1, 2], {"value": [1, 2]}, [{"id": 1}, 2, 2]):
        payload, _ = _made_payload(sample_staging, "deals", {**deal, "owner_id": owner})
        assert payload["users"] == ["1", "2"], owner


def test_a_link_given_as_a_list_is_reported_unreadable_not_as_a_record_missing_in_pipedrive(sample_staging):
    """`org_id: [1, 2]` was looked up as the organization "[1, 2]" and reported deleted or missing in Pipedrive."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    payload, found = _made_payload(sample_staging, "deals", {**deal, "org_id": [1, 2], "person_id": {"value": [53]}})
    assert "organizationIds" not in payload["links"] and "contactIds" not in payload["links"]
    assert sorted(i for i in found if i[1].startswith("link_")) == [
        ("org_id", "link_unreadable", "[1, 2] is a list where one record's id belongs; link dropped"),
        ("person_id", "link_unreadable", "{'value': [53]} is a list where one record's id belongs; link dropped"),
    ]


def test_ids_in_a_list_wrapped_in_an_object_are_read_and_an_item_naming_none_is_kept_as_text(sample_staging):
    """`{"value": [1, {"name": "X"}]}`: the item naming no id went nowhere, without a word."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    values, found = _made(sample_staging, "deals", {**deal, "label_ids": {"value": [1, {"name": "Nordwind"}]}})
    assert values["labels"] and values["labels:as_entered"] == "Nordwind"
    assert [i[0] for i in found if i[1] == "invalid_value_kept_as_text"] == ["label_ids"]


def test_a_control_character_the_notes_conversion_takes_out_is_reported_naming_the_note(tmp_path):
    """A NUL or another control character in a note's HTML, or a NUL in its author's name, was taken out
    without a word; so was a control character other than NUL in a record's own text joining its notes."""
    person = {"id": 5, "name": "Ann", "notes": "<p>own\x01text</p>"}
    notes_rows = [
        {"id": 1, "content": "<p>x\x00y\x7f</p>", "person_id": 5, "add_time": "2024-01-01 00:00:00", "user_id": 99, "user": {"name": "Gh\x00ost"}},
        {"id": 2, "content": "<p>clean\tline</p>", "person_id": 5, "add_time": "2024-01-02 00:00:00"},
    ]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", [person], store.Checkpoint("persons", None, 1, 1, True), "run")
        staging.write_page("notes", notes_rows, store.Checkpoint("notes", None, 1, 2, True), "run")
        transform(staging, load_mappings())
        assert targets(staging, "contacts")["5"]["notes"] == (
            "**Ghost** · 2024-01-01 00:00 UTC\n\nxy\n\n---\n\n2024-01-02 00:00 UTC\n\nclean line\n\n---\n\nContact notes\n\nowntext"
        )
        removed = "a NUL or other control character, which the conversion of notes to Markdown takes out; removed"
        assert sorted((i["entity"], i["source_id"], i["field"], i["detail"]) for i in issues(staging, "character_replaced")) == [
            ("contacts", "5", "notes", f"Contact notes (U+0001): {removed}"),
            ("contacts", "5", "notes", f"Pipedrive note 1, content (U+0000, U+007F), user.name (U+0000): {removed}"),
        ]


LEAD_SOURCE = "a9aaa4ec75fed51f5c537d11513ab877d57b268f"  # the sample deals' enum "Lead-Quelle": 113 Messe, 114 messe, ...


def test_an_option_id_given_as_a_float_or_a_list_of_one_is_that_option_and_other_shapes_are_kept_as_text(sample_staging):
    """Any value that was no digit text became an option labelled as Python shows it: 114.0 the new
    option "114.0" beside option 114, [101] "[101]", [113, 114] "[113, 114]", true "True"; no issue."""
    maker = engine.Transformer(sample_staging, load_mappings()).maker
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    made = {}
    for n, value in enumerate((114.0, [114], {"id": 114.0}, [113, 114], True, 114.5, [[114]])):
        record = {**deal, "id": 900 + n, "custom_fields": {**deal["custom_fields"], LEAD_SOURCE: value}}
        batch = maker.make(records.Batch("deals", [(json.dumps(record), [], [])], {}))
        values = json.loads(batch.rows[0][2])["values"]
        made[json.dumps(value)] = (values.get(f"cf:{LEAD_SOURCE}"), values.get(f"cf:{LEAD_SOURCE}:as_entered"), [i[3] for i in batch.issues])
    assert made == {
        "114.0": ("messe", None, []), "[114]": ("messe", None, []), '{"id": 114.0}': ("messe", None, []),
        "[113, 114]": (None, "113, 114", ["invalid_value_kept_as_text"]),
        "true": (None, "true", ["invalid_value_kept_as_text"]),
        "114.5": (None, "114.5", ["invalid_value_kept_as_text"]),
        "[[114]]": (None, "114", ["invalid_value_kept_as_text"]),
    }
    assert maker.registry.get("deals", f"cf:{LEAD_SOURCE}").options == ["Messe", "messe", "Website", "Empfehlung", "Kaltakquise", "Partner"]


def test_a_pipeline_or_stage_id_naming_none_keeps_its_id_in_the_option_and_is_reported(sample_staging):
    """`pipeline_id: 9999` became the option "Pipeline #9999" (and a stage "Stage #9999") without a word."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    values, found = _made(sample_staging, "deals", {**deal, "pipeline_id": 9999, "stage_id": 9999})
    assert (values["pipeline"], values["stage"]) == ("Pipeline #9999", "Stage #9999")
    assert [i for i in found if i[0] in ("pipeline_id", "stage_id")] == [
        ("pipeline_id", "option_unknown", "option id 9999 is not among the field's options; carried as 'Pipeline #9999'"),
        ("stage_id", "option_unknown", "option id 9999 is not among the field's options; carried as 'Stage #9999'"),
    ]
    values, found = _made(sample_staging, "deals", deal)
    assert values["pipeline"] and values["stage"] and not [i for i in found if i[0] in ("pipeline_id", "stage_id")]


ASSISTANT, PARTNER, ENGINEER = (  # the sample deals' person, organization and user fields
    "df27b77906b6ef3bf3ed705a7e04de8eb8fbc5b4", "173550ca9b331807a6aafa6f8f5f2a8824d3a0ae", "21d581e2db9b0ffb4296826fb5d8c801d1e6b495",
)


def test_a_person_organization_or_user_missing_in_pipedrive_is_reported_and_a_value_that_is_no_id_kept_as_text(sample_staging):
    """A record id naming none became "Pipedrive person #99999" without a word, and text that is no
    id at all ("Hans", "-5") "Pipedrive person #Hans", as if it were one."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    missing = {ASSISTANT: 99999, PARTNER: 0, ENGINEER: 9999}
    values, found = _made(sample_staging, "deals", {**deal, "custom_fields": {**deal["custom_fields"], **missing}, "creator_user_id": 9998})
    assert [values[key] for key in (f"cf:{ASSISTANT}", f"cf:{PARTNER}", f"cf:{ENGINEER}", "creator")] == [
        "Pipedrive person #99999", "Pipedrive organization #0", "Pipedrive user #9999", "Pipedrive user #9998",
    ]
    assert sorted(i for i in found if i[1] == "link_target_not_migrated") == [
        ("Pre-Sales Engineer", "link_target_not_migrated", "user 9999 is missing in Pipedrive; carried as 'Pipedrive user #9999'"),
        ("Technischer Ansprechpartner", "link_target_not_migrated", "person 99999 is missing in Pipedrive; carried as 'Pipedrive person #99999'"),
        ("Vertriebspartner", "link_target_not_migrated", "organization 0 is missing in Pipedrive; carried as 'Pipedrive organization #0'"),
        ("creator_user_id", "link_target_not_migrated", "user 9998 is missing in Pipedrive; carried as 'Pipedrive user #9998'"),
    ]
    no_ids = {ASSISTANT: "Hans", PARTNER: ["ACME", 1], ENGINEER: "-5"}
    values, found = _made(sample_staging, "deals", {**deal, "custom_fields": {**deal["custom_fields"], **no_ids}, "creator_user_id": {"value": "Ada"}})
    first = next(o["name"] for o in sample_staging.iter_raw("organizations") if o["id"] == 1)
    assert [values.get(key) for key in (f"cf:{ASSISTANT}", f"cf:{PARTNER}", f"cf:{ENGINEER}", "creator")] == [None, first, None, None]
    assert [values[f"{key}:as_entered"] for key in (f"cf:{ASSISTANT}", f"cf:{PARTNER}", f"cf:{ENGINEER}", "creator")] == ["Hans", "ACME", "-5", "Ada"]
    assert sorted(i[:2] for i in found if i[1] in ("invalid_value_kept_as_text", "link_target_not_migrated")) == [
        ("Pre-Sales Engineer", "invalid_value_kept_as_text"), ("Technischer Ansprechpartner", "invalid_value_kept_as_text"),
        ("Vertriebspartner", "invalid_value_kept_as_text"), ("creator_user_id", "invalid_value_kept_as_text"),
    ]


ORDER_NO, PERIOD, MODULES = (  # the sample deals' varchar, daterange and set fields
    "92a6fbe339649605a2bbd8f7c5fa0ce26174a20e", "ec87faadedd2249c8a7677673e7005df5486d854", "d7f6097bb26ed2a5ec16d52ab55856d20b120959",
)
MOBILE = "39ae291f888b9541611ffb0ac675f332b1b762dc"  # the sample persons' phone field


def test_a_value_of_an_odd_shape_is_never_written_as_python_shows_it_and_is_reported(sample_staging):
    """A list in a text field was written "['a@b.de']", a bad date range "{'value': ..., 'until': ...}",
    a set's list of lists "[119]", all without a word; two good numbers in a phone field were kept
    as "['+4917012345678', '+4917087654321']", reported as no E.164 number."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    odd = {ORDER_NO: ["a@b.de"], PERIOD: {"value": "2025-05-01", "until": "2025-01-01"}, MODULES: [[119]]}
    values, found = _made(sample_staging, "deals", {**deal, "custom_fields": {**deal["custom_fields"], **odd}})
    assert [(values.get(f"cf:{key}"), values.get(f"cf:{key}:as_entered")) for key in odd] == [
        (None, "a@b.de"), (None, "2025-05-01 2025-01-01"), (None, "119"),
    ]
    assert sorted(i[0] for i in found if i[1] == "invalid_value_kept_as_text") == ["Bestellnummer", "Module", "Projektzeitraum"]
    assert not [i for i in found if "{'" in i[2] or "['" in i[2]]
    person = next(p for p in sample_staging.iter_raw("persons") if not p.get("is_deleted"))
    numbers = ["+4917012345678", "+4917087654321"]
    values, found = _made(sample_staging, "persons", {**person, "custom_fields": {**person["custom_fields"], MOBILE: numbers}})
    assert (values.get(f"cf:{MOBILE}"), values[f"cf:{MOBILE}:as_entered"]) == (None, "+4917012345678, +4917087654321")
    assert [i[:2] for i in found if i[0] == "Mobil (privat)"] == [("Mobil (privat)", "invalid_value_kept_as_text")]
    values, found = _made(sample_staging, "persons", {**person, "custom_fields": {**person["custom_fields"], MOBILE: numbers[:1]}})
    assert values[f"cf:{MOBILE}"] == "+4917012345678" and not [i for i in found if i[0] == "Mobil (privat)"]


WORKSHOP = "4f2b7496cf24df4ec06d06e4c2c130d8381f0cbf"  # the sample deals' timerange field


def test_a_date_range_missing_a_side_and_a_set_item_naming_no_option_or_one_twice_are_reported(sample_staging):
    """A date range without its end became the one-day range of its start, a set item "abc" an option's
    label, and [105, 105] "CRM, CRM": all without a word. A time range ending before it starts is an
    overnight one, written as it is."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    odd = {PERIOD: {"value": "2025-01-01"}, WORKSHOP: {"value": "22:00", "until": "02:00", "timezone_name": "Europe/Berlin"}, MODULES: [119, "abc", 119]}
    values, found = _made(sample_staging, "deals", {**deal, "custom_fields": {**deal["custom_fields"], **odd}})
    assert [values.get(f"cf:{key}") for key in odd] == ["2025-01-01,2025-01-01", "22:00–02:00 Europe/Berlin", "CRM, abc"]
    assert sorted(i for i in found if i[0] in ("Projektzeitraum", "Workshop-Termin", "Module")) == [
        ("Module", "option_repeated", "'CRM' given 2 times; written once"),
        ("Module", "option_unknown", "option id abc is not among the field's options; carried as 'abc'"),
        ("Projektzeitraum", "date_range_one_day", "'2025-01-01' has no end; written as the one-day range 2025-01-01,2025-01-01"),
    ]
    fine = {PERIOD: {"value": "2025-01-01", "until": "2025-02-01"}, WORKSHOP: {"value": "09:00", "until": "11:00", "timezone_name": "Europe/Berlin"}, MODULES: [119, "ERP"]}
    values, found = _made(sample_staging, "deals", {**deal, "custom_fields": {**deal["custom_fields"], **fine}})
    assert [values.get(f"cf:{key}") for key in fine] == ["2025-01-01,2025-02-01", "09:00–11:00 Europe/Berlin", "CRM, ERP"]
    assert not [i for i in found if i[0] in ("Projektzeitraum", "Workshop-Termin", "Module")]


def test_an_enum_value_with_an_empty_id_makes_no_empty_option_and_a_lead_label_naming_none_is_reported(sample_staging):
    """`{"id": ""}` added an empty option to the column; a lead's label id naming no lead label was
    written 'Label <id>' without a word, where a deal's is reported."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    transformer = engine.Transformer(sample_staging, load_mappings())
    made = transformer.maker.make(records.Batch("deals", [(json.dumps({**deal, "custom_fields": {**deal["custom_fields"], LEAD_SOURCE: {"id": ""}}}), [], [])], {}))
    assert f"cf:{LEAD_SOURCE}" not in json.loads(made.rows[0][2])["values"]
    assert all(option.strip() for option in transformer.maker.registry.get("deals", f"cf:{LEAD_SOURCE}").options)
    lead = next(sample_staging.iter_raw("leads"))
    values, found = _made(sample_staging, "leads", {**lead, "label_ids": ["6513270e-269e-4d37-b2a7-4de452e6b438", "0000-gone"]})
    assert values["labels"] == "Heiß, Label 0000-gone"
    assert ("label_ids", "option_unknown", "option id 0000-gone is not among the field's options; carried as 'Label 0000-gone'") in found


def test_a_long_note_does_not_push_a_later_one_out_and_the_issue_names_the_pipedrive_note_cut(tmp_path):
    """A contact with a 75,000-character note: a later short note was cut away whole, and the issue said
    only that the end was cut. Now the long note is cut, the short one kept, and the issue names the note."""
    person = {"id": 5, "name": "Ann"}
    long_html = "".join(f"<p>{'Absatz ' * 100}{n}</p>" for n in range(110))
    notes_rows = [
        {"id": 1, "content": long_html, "person_id": 5, "add_time": "2024-01-01 00:00:00"},
        {"id": 2, "content": "<p>Rückruf vereinbart.</p>", "person_id": 5, "add_time": "2024-02-01 00:00:00"},
    ]
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.write_page("persons", [person], store.Checkpoint("persons", None, 1, 1, True), "run")
        staging.write_page("notes", notes_rows, store.Checkpoint("notes", None, 1, 2, True), "run")
        transform(staging, load_mappings())
        text = targets(staging, "contacts")["5"]["notes"]
        assert text.endswith("2024-02-01 00:00 UTC\n\nRückruf vereinbart.") and len(text) <= 65_535
        [issue] = issues(staging, "notes_truncated")
        assert issue["detail"].startswith("notes exceed 65,535 characters; the longest notes were cut, each marked in the text: Pipedrive note 1 (")


def test_a_field_naming_a_person_without_a_name_shows_the_name_their_contact_gets(tmp_path):
    """The contact was named after the email's local part, the deal's field naming that person '(no name)'."""
    people = {"field_code": "ppl", "field_name": "Technical contact", "field_type": "people", "is_custom_field": True}
    persons = [
        {"id": 5, "name": "", "emails": [{"value": "not an address"}, {"value": "info@acme.de", "primary": True}]},
        {"id": 6, "name": None},
    ]
    deals = [{"id": n, "title": f"Deal {n}", "status": "open", "custom_fields": {"ppl": person}} for n, person in ((7, 5), (8, 6))]
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, rows, key in (("dealFields", [people], "field_code"), ("persons", persons, "id"), ("deals", deals, "id")):
            staging.write_page(collection, rows, store.Checkpoint(collection, None, 1, len(rows), True), "run", key=key)
        transform(staging, load_mappings())
        contacts, made = targets(staging, "contacts"), targets(staging, "deals")
        assert (contacts["5"]["fields"]["firstName"], contacts["6"]["fields"]["firstName"]) == ("info", "(no name)")
        assert (made["7"]["values"]["cf:ppl"], made["8"]["values"]["cf:ppl"]) == ("info", "(no name)")


def test_prices_kept_as_entered_leave_out_the_ids_pipedrive_gives_each_price(sample_staging):
    """'Prices (as entered)' read '9002 12,50 EUR': the product's id before each price."""
    prices = [{"id": 31, "product_id": 9002, "price": "12,50", "currency": "EUR"}]
    payload, _ = _made_payload(sample_staging, "products", {"id": 9002, "name": "Beratung", "prices": prices})
    assert payload["values"]["prices:as_entered"] == "12,50 EUR"


def test_a_deal_without_its_own_probability_gets_its_stages_when_the_pipeline_uses_probabilities(tmp_path):
    """Pipedrive applies the stage's `deal_probability` to a deal whose own is null (contract §7.4),
    where 'Probability %' stayed empty; a pipeline with probabilities off applies none, and a deal's
    own probability, 0 too, is kept."""
    pipelines = [{"id": 1, "name": "Sales", "order_nr": 1, "is_deal_probability_enabled": True},
                 {"id": 2, "name": "Renewals", "order_nr": 2, "is_deal_probability_enabled": False}]
    stages = [{"id": 3, "pipeline_id": 1, "name": "Proposal", "order_nr": 1, "deal_probability": 50},
              {"id": 4, "pipeline_id": 2, "name": "Offer", "order_nr": 1, "deal_probability": 80}]
    deals = [{"id": n, "title": f"Deal {n}", "status": "open", "pipeline_id": pipeline, "stage_id": stage, "probability": own}
             for n, pipeline, stage, own in ((7, 1, 3, None), (8, 1, 3, 20), (9, 1, 3, 0), (10, 2, 4, None), (11, 2, 4, 30))]
    with Staging(tmp_path / "state.duckdb") as staging:
        for collection, rows in (("pipelines", pipelines), ("stages", stages), ("deals", deals)):
            staging.write_page(collection, rows, store.Checkpoint(collection, None, 1, len(rows), True), "run")
        transform(staging, load_mappings())
        made = {sid: payload["values"].get("probability") for sid, payload in targets(staging, "deals").items()}
        assert made == {"7": "50", "8": "20", "9": "0", "10": None, "11": "30"}
        assert staging.transform_issues() == []


def test_a_money_amount_of_spaces_only_is_no_value_not_the_text_none(sample_staging):
    """An amount of spaces is no number (`values.decimal_string` reads it as none), as "" and null
    are; it was written as the text "None" in '<column> (other currency)', or kept 'as entered'
    with Python's error for a reason ("object of type 'NoneType' has no len()")."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    budget = "9cfdb087392ee83413ed1f5adac30c45ec3504da"  # a monetary custom field, "Budget"
    for amount, currency, custom in ((" ", "EUR", " "), ("\t", "XYZ", {"value": " ", "currency": "EUR"}), (" ", None, {"value": " ", "currency": None})):
        record = {**deal, "value": amount, "currency": currency, "custom_fields": {**deal["custom_fields"], budget: custom}}
        values, found = _made(sample_staging, "deals", record)
        assert [key for key in values if key.startswith(("value", f"cf:{budget}"))] == [], (amount, currency, custom)
        assert [i for i in found if i[0] in ("value", "Budget")] == [], (amount, currency, custom)


def test_a_deal_product_lines_product_id_naming_no_one_product_is_reported_not_dropped_without_a_word(sample_staging):
    """Contract §7.5: a line's `product_id` is one id. Given as a list or as an object naming no id,
    the service went unlinked without a word, where a deal's own links given so are `link_unreadable`."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    line = {"deal_id": deal["id"], "quantity": 2, "item_price": 10, "currency": "EUR"}
    rows = [{**line, "id": 1, "product_id": [1], "name": "A"}, {**line, "id": 2, "product_id": {"name": "Lizenz"}, "name": "B"},
            {**line, "id": 3, "product_id": {"value": 2}, "name": "C"}, {**line, "id": 4, "product_id": None, "name": "D"}]
    batch = records.Batch("deals", [(json.dumps(deal), [], [json.dumps(row) for row in rows])], {})
    made = engine.Transformer(sample_staging, load_mappings()).maker.make(batch)
    assert json.loads(made.rows[0][2])["services"] == [["2", 2.0]]
    assert [issue[2:] for issue in made.issues if issue[2] == "products"] == [
        ("products", "link_unreadable", "[1] is a list where one record's id belongs; link dropped"),
        ("products", "link_unreadable", "{'name': 'Lizenz'} is an object with neither value nor id; link dropped"),
    ]


def test_an_id_written_as_a_whole_float_is_that_id_and_a_boolean_or_a_fraction_names_none(sample_staging):
    """A snapshot (`--source`) written by a tool that keeps a column of integers with nulls as floats
    gives `org_id: 1.0`: that id, as option id 114.0 is option 114. It made an option "Pipeline #1.0"
    beside pipeline 1, dropped the link as to an organization "deleted or missing in Pipedrive", and
    kept the owner as text; a boolean made an option "Pipeline #True", a user "True", a label "Label #True"."""
    deal = next(d for d in sample_staging.iter_raw("deals") if not d.get("is_deleted"))
    ids = {"pipeline_id": 1.0, "stage_id": 2.0, "org_id": 1.0, "person_id": 53.0, "owner_id": 1.0, "creator_user_id": 3.0, "label_ids": [9.0, 10]}
    payload, found = _made_payload(sample_staging, "deals", {**deal, **ids})
    assert {key: payload["values"].get(key) for key in ("pipeline", "stage", "owner", "creator", "labels")} == {
        "pipeline": "Vertrieb Neukunden", "stage": "Vertrieb Neukunden / Bedarfsanalyse", "owner": "Katrin Vogel <katrin.vogel@nordlicht-systems.de>",
        "creator": "Aylin Demir <aylin.demir@nordlicht-systems.de>", "labels": "Heiß, Kalt",
    }
    assert (payload["links"], payload["users"]) == ({"contactIds": ["53"], "organizationIds": ["1"]}, ["1"])
    assert [issue for issue in found if issue[0] in ids] == []
    odd = {"pipeline_id": True, "stage_id": 1.5, "org_id": True, "owner_id": True, "label_ids": [9, True]}
    payload, found = _made_payload(sample_staging, "deals", {**deal, **odd})
    values = payload["values"]
    assert {key: values.get(key) for key in ("pipeline", "stage", "owner", "labels")} == {"pipeline": None, "stage": None, "owner": None, "labels": "Heiß"}
    assert {key: values.get(f"{key}:as_entered") for key in ("pipeline", "stage", "owner", "labels")} == {"pipeline": "true", "stage": "1.5", "owner": "true", "labels": "true"}
    assert ("organizationIds" not in payload["links"], payload["users"]) == (True, [])
    assert sorted((fld, rule) for fld, rule, _ in found if fld in odd) == [
        ("label_ids", "invalid_value_kept_as_text"), ("org_id", "link_unreadable"), ("owner_id", "invalid_value_kept_as_text"),
        ("pipeline_id", "invalid_value_kept_as_text"), ("stage_id", "invalid_value_kept_as_text"),
    ]


def test_an_activitys_person_missing_in_pipedrive_is_reported_once_though_it_is_its_participant_too(sample_staging):
    """An activity's `person_id` is its primary participant, listed in `participants` too (contract
    §7.7): a person deleted in Pipedrive was reported twice, doubling the count in the report."""
    activity = next(a for a in sample_staging.iter_raw("activities") if not a.get("is_deleted"))
    participants = [{"person_id": 99999, "primary": True}, {"person_id": 99998, "primary": False}, {"person_id": 99998.0, "primary": False}]
    _, found = _made(sample_staging, "activities", {**activity, "person_id": 99999, "participants": participants})
    assert [detail for fld, rule, detail in found if rule == "link_target_not_migrated"] == [
        "contact 99999 is deleted or missing in Pipedrive; link dropped", "contact 99998 is deleted or missing in Pipedrive; link dropped",
    ]


def test_an_address_part_or_an_email_given_as_an_object_is_never_written_as_python_shows_it(sample_staging):
    """Contract §9: an address's parts and an email's value are text. An object there was written as
    Python shows it ("Carl-Zeiss-Ring 140 ({'building': 'B'})"), in the address without a word."""
    organization = next(o for o in sample_staging.iter_raw("organizations") if not o.get("is_deleted"))
    address = {"value": "Carl-Zeiss-Ring 140", "subpremise": {"building": "B"}}
    values, found = _made(sample_staging, "organizations", {**organization, "address": address})
    assert (values.get("address"), values["address:as_entered"]) == (None, "Carl-Zeiss-Ring 140 B")
    assert [(fld, rule) for fld, rule, _ in found if fld == "address"] == [("address", "invalid_value_kept_as_text")]
    person = next(p for p in sample_staging.iter_raw("persons") if not p.get("is_deleted"))
    values, found = _made(sample_staging, "persons", {**person, "emails": [{"value": {"address": "ann@acme.de"}, "primary": True}]})
    assert values["other_emails"] == '{"address": "ann@acme.de"}'
    assert not [i for i in found if "{'" in i[2]]


def test_a_product_line_or_note_naming_its_record_by_a_fraction_or_text_is_reported_naming_its_field(tmp_path):
    """Ids written as floats are read as the integers they are (`5.0` is deal 5); an id field holding a
    fraction or text names no record: the product line was lost without a word, and a note attached to
    no other record was said to be on a deal `5.5`, deleted or missing."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    files = {
        "deals": [{"id": 5.0, "title": "Rollout", "status": "open"}],
        "persons": [{"id": 7.0, "name": "Ann Lee"}],
        "products": [{"id": 3.0, "name": "Widget", "prices": [{"price": 10, "currency": "EUR"}]}],
        "deal_products": [
            {"id": 70, "deal_id": 5.0, "product_id": 3.0, "quantity": 2, "item_price": 10, "currency": "EUR"},
            {"id": 71, "deal_id": 5.5, "product_id": 3, "quantity": 1, "item_price": 10, "currency": "EUR"},
            {"id": 72, "deal_id": "five", "product_id": 3, "quantity": 1, "item_price": 10, "currency": "EUR"},
        ],
        "notes": [
            {"id": 80, "content": "<p>on the deal</p>", "deal_id": 5.0, "add_time": "2024-01-02 10:00:00"},
            {"id": 81, "content": "<p>a fraction</p>", "deal_id": 5.5, "add_time": "2024-01-02 10:00:00"},
            {"id": 82, "content": "<p>on Ann, not the deal</p>", "person_id": 7.0, "deal_id": "five", "add_time": "2024-01-02 10:00:00"},
        ],
    }
    for name, rows in files.items():
        (snapshot / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with Staging(tmp_path / "state.duckdb") as staging:
        extract(staging, SnapshotSource(snapshot), staging.start_run("test"))
        transform(staging, load_mappings())
        deal = targets(staging, "deals")["5"]
        assert deal["services"] == [["3", 2.0]]
        assert "on the deal" in deal["notes"] and "a fraction" not in deal["notes"]
        assert "on Ann, not the deal" in targets(staging, "contacts")["7"]["notes"]
        assert sorted((i["entity"], i["source_id"], i["field"], i["detail"]) for i in issues(staging, "link_unreadable")) == [
            ("deal_products", "71", "deal_id", "Pipedrive deal product 71: deal_id 5.5 is no id; not on any deal"),
            ("deal_products", "72", "deal_id", "Pipedrive deal product 72: deal_id 'five' is no id; not on any deal"),
            ("notes", "81", "deal_id", "Pipedrive note 81: deal_id 5.5 is no id; not on any deal"),
            ("notes", "82", "deal_id", "Pipedrive note 82: deal_id 'five' is no id; not on any deal"),
        ]
        assert [(i["source_id"], i["detail"]) for i in issues(staging, "note_not_attached")] == [
            ("81", "Pipedrive note 81 is attached to no contact, organization, deal or lead; not migrated"),
        ]


def test_a_product_line_on_a_deal_missing_in_pipedrive_is_reported_not_dropped(tmp_path):
    """A line joins its deal by `deal_id`: one naming a deal the account (or a snapshot's deals file) lacks,
    or none, was lost without a word. A line of a deleted deal goes with its deal, which is counted as
    deleted (`deleted_in_pipedrive`): no issue of its own; one naming no id is `link_unreadable` alone."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    line = {"product_id": 3, "quantity": 1, "item_price": 10, "currency": "EUR"}
    files = {
        "deals": [{"id": 5, "title": "Rollout", "status": "open"}, {"id": 6, "title": "Gone", "status": "deleted", "is_deleted": True}],
        "deals_archived": [{"id": 8, "title": "Old", "status": "won", "is_archived": True}],
        "products": [{"id": 3, "name": "Widget", "prices": [{"price": 10, "currency": "EUR"}]}],
        "deal_products": [
            {"id": 70, "deal_id": 5, **line},
            {"id": 71, "deal_id": 99, **line},
            {"id": 72, "deal_id": 6, **line},
            {"id": 73, "deal_id": 8, **line},
            {"id": 74, **line},
            {"id": 75, "deal_id": 5.5, **line},
        ],
    }
    for name, rows in files.items():
        (snapshot / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with Staging(tmp_path / "state.duckdb") as staging:
        extract(staging, SnapshotSource(snapshot), staging.start_run("test"))
        transform(staging, load_mappings())
        deals = targets(staging, "deals")
        assert deals["5"]["services"] == [["3", 1.0]] and deals["8"]["services"] == [["3", 1.0]]
        assert sorted((i["entity"], i["source_id"], i["field"], i["detail"]) for i in issues(staging, "deal_product_not_attached")) == [
            ("deal_products", "71", "deal_id", "Pipedrive deal product 71 is on deal 99, missing in Pipedrive; not migrated"),
            ("deal_products", "74", "deal_id", "Pipedrive deal product 74 is on no deal; not migrated"),
        ]
        assert [i["source_id"] for i in issues(staging, "link_unreadable")] == ["75"]


def test_a_product_line_staged_as_deleted_is_not_on_its_deal(tmp_path):
    """A line the snapshot gives as deleted (v1's `active_flag: false`) is staged so, as a note is, and
    joins its deal no more than a deleted note joins its record."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    line = {"deal_id": 5, "quantity": 1, "item_price": 10, "currency": "EUR"}
    files = {
        "deals": [{"id": 5, "title": "Rollout", "status": "open"}],
        "products": [{"id": 3, "name": "Widget", "prices": [{"price": 10, "currency": "EUR"}]}, {"id": 4, "name": "Gadget"}],
        "deal_products": [{"id": 70, "product_id": 3, **line}, {"id": 71, "product_id": 4, "active_flag": False, **line}],
    }
    for name, rows in files.items():
        (snapshot / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with Staging(tmp_path / "state.duckdb") as staging:
        extract(staging, SnapshotSource(snapshot), staging.start_run("test"))
        transform(staging, load_mappings())
        assert targets(staging, "deals")["5"]["services"] == [["3", 1.0]]


def test_the_sample_product_lines_are_all_on_deals_staged(staged):
    """Its lines of deleted deals (16, 32, 48) go with their deals, counted as deleted: no issue of their own."""
    staging, _ = staged
    assert issues(staging, "deal_product_not_attached") == []


def _ids_as_floats(value):
    """`value` with every id (`id`, `*_id`, at any depth) a float, as a JSON tool that writes every number as one leaves it."""
    if isinstance(value, dict):
        return {k: float(item) if (k == "id" or k.endswith("_id")) and type(item) is int else _ids_as_floats(item) for k, item in value.items()}
    return [_ids_as_floats(item) for item in value] if isinstance(value, list) else value


def test_a_snapshot_whose_every_id_is_a_float_is_transformed_as_the_one_with_integer_ids(sample_staging, tmp_path):
    """Users, stages, field options, attendees and links are keyed by the id's text as well: 5.0 is id 5 everywhere."""
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for path in SAMPLE.glob("*.jsonl"):
        rows = [_ids_as_floats(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
        (snapshot / path.name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert '"deal_id": 29.0' in (snapshot / "notes.jsonl").read_text(encoding="utf-8")
    transform(sample_staging, load_mappings())
    with Staging(tmp_path / "floats.duckdb") as floats:
        extract(floats, SnapshotSource(snapshot), floats.start_run("test"))
        transform(floats, load_mappings())
        for entity in ("organizations", "contacts", "services", "deals", "tasks"):
            assert targets(floats, entity) == targets(sample_staging, entity)
        assert floats.transform_issues() == sample_staging.transform_issues()
