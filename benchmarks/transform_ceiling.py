"""How fast could a set-based transform be? The persons of a synthetic account, made by the tool and by one SQL query.

    .venv/bin/python benchmarks/transform_ceiling.py [--records 100000]

The transform makes every record in Python (about 90 µs a record on this project's machine, on two
cores). Issue 6 asks for 200,000 records/s, which only a transform in SQL could approach. Before
such a rewrite, this script measures its ceiling on the same machine, in the same minute:

- the tool: `RecordMaker.make` on every person of the account, in this one process, reading and
  writing nothing (the batches are read from the state file first);
- the floor of any transform in Python: the same batches, each record only read with the tool's
  reader (`jsontext.loads`), the same twelve fields picked, written as the tool writes a payload
  (`records.payload_text`) and hashed (`records.text_hash`). Whatever a record-by-record transform
  in Python does besides, it cannot go faster than this, on one core; two cores at most double it;
- SQL: one DuckDB statement (at the tool's memory cap, on every core) that does a part of the same
  work for the same persons: reads the twelve standard fields the contacts mapping reads, parses the
  timestamps and dates, builds a JSON payload, hashes it and writes it into a table. It does not
  normalise phone numbers, encode custom fields, join notes, check values or report issues, so a
  whole transform in SQL would be slower than it.

It prints the three rates and the ratios, and the time the query spends only parsing the records' JSON. The
persons' batches are held in memory for the tool's part: about 1 GB at a million records.

Last, the floor no SQL can lower: the two conversions only a library does exactly, over the whole account.
The tool's whole transform runs once in this process, keeping each phone number it normalises to E.164
(`phonenumbers`; contract §8 asks for E.164) and each distinct text it converts from HTML to Markdown
(`markdownify`); then the two are timed alone on those inputs. Any transform, in SQL or not, makes these
calls; their CPU time on two cores bounds its records/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STANDARD_FIELDS = [
    "first_name", "last_name", "job_title", "birthday", "owner_id", "org_id",
    "add_time", "update_time", "emails", "phones", "label_ids", "marketing_status",
]
PATHS = "[" + ", ".join(f"'$.{name}'" for name in STANDARD_FIELDS) + "]"
FIELDS = f"SELECT id, json_extract(data, {PATHS}) AS f FROM raw_persons WHERE NOT coalesce(is_deleted, false)"  # parsed once a person
PAYLOADS = f"""
CREATE TABLE ceiling AS
SELECT id, payload, md5(payload) AS payload_hash FROM (
    SELECT id, to_json(struct_pack(
        first_name := f[1]->>'$', last_name := f[2]->>'$', job_title := nullif(trim(f[3]->>'$'), ''),
        birthday := try_strptime(f[4]->>'$', '%Y-%m-%d')::DATE::VARCHAR,
        owner := f[5]->>'$', organization := f[6]->>'$',
        add_time := strftime(try_strptime(f[7]->>'$', '%Y-%m-%dT%H:%M:%SZ'), '%Y-%m-%dT%H:%M:%SZ'),
        update_time := strftime(try_strptime(f[8]->>'$', '%Y-%m-%dT%H:%M:%SZ'), '%Y-%m-%dT%H:%M:%SZ'),
        emails := f[9], phones := f[10], labels := f[11], marketing_status := f[12]->>'$'
    ))::VARCHAR AS payload
    FROM ({FIELDS})
)
"""
PARSE_ONLY = f"SELECT count(f[12]) FROM ({FIELDS})"


def measure(records: int, directory: Path) -> None:
    from benchmarks.pipeline import _generator
    from migrate.pipedrive.extract import SnapshotSource, extract
    from migrate.staging.store import Staging
    from migrate.transform.engine import Transformer
    from migrate.transform.mapping import load_mappings

    _generator().generate_account(directory / "account", seed=11, scale=records)
    with Staging(directory / "state.duckdb") as staging:
        run_id = staging.start_run("extract")
        staged = sum(extract(staging, SnapshotSource(directory / "account"), run_id).records.values())
        staging.finish_run(run_id, "ok", {})

        phones, markdown, phone_seconds, markdown_seconds = library_floor(staging, load_mappings())

        transformer = Transformer(staging, load_mappings())
        transformer._convert_notes(None)  # the notes' markdown, which the persons' batches carry
        batches = list(transformer._collection_batches("persons"))
        started = time.process_time()
        made = sum(transformer.maker.make(batch).made for batch in batches)
        tool_seconds = time.process_time() - started
        floor_seconds = python_floor(batches)

        started = time.perf_counter()
        staging.con.execute(PARSE_ONLY).fetchall()
        parse_seconds = time.perf_counter() - started
        started = time.perf_counter()
        staging.con.execute(PAYLOADS)
        sql_seconds = time.perf_counter() - started
        rows = staging.con.execute("SELECT count(*) FROM ceiling").fetchone()[0]
        threads = staging.con.execute("SELECT current_setting('threads')").fetchone()[0]

    print(f"persons read by the tool (deleted ones too)   {made:>12,}")
    print(f"persons written by the statement              {rows:>12,}")
    print(f"the tool: RecordMaker.make, one process      {made / tool_seconds:>12,.0f} persons/s  ({tool_seconds:.1f} s CPU)")
    print(f"floor of Python: read, pick, write, hash      {made / floor_seconds:>12,.0f} persons/s  ({floor_seconds:.1f} s CPU)")
    print(f"SQL: part of the work, DuckDB {threads} threads       {rows / sql_seconds:>12,.0f} persons/s  ({sql_seconds:.1f} s)")
    print(f"  of which parsing the records' JSON                   {parse_seconds:>8.1f} s")
    print(f"floor of Python ÷ tool                        {tool_seconds / floor_seconds:>12.1f}×")
    print(f"SQL ÷ tool                                    {(rows / sql_seconds) / (made / tool_seconds):>12.1f}×")
    print(f"records staged (as the pipeline counts)       {staged:>12,}")
    print(f"phone numbers to E.164 (phonenumbers)         {phones:>12,}  ({phone_seconds:.1f} s CPU, {phone_seconds / max(phones, 1) * 1e6:.1f} µs each)")
    print(f"texts from HTML to Markdown (distinct)        {markdown:>12,}  ({markdown_seconds:.1f} s CPU)")
    print(f"any transform, two cores, these two alone     {staged / ((phone_seconds + markdown_seconds) / 2):>12,.0f} records/s at most")
    print(f"  the phone numbers alone                     {staged / (phone_seconds / 2):>12,.0f} records/s at most")


def library_floor(staging: Any, mappings: Any) -> tuple[int, int, float, float]:
    """The tool's whole transform in this process, keeping the inputs of its two library conversions;
    then each timed alone on them: (phone numbers, texts, CPU seconds of each)."""
    from migrate.transform import notes, values
    from migrate.transform.engine import Transformer

    normalise, convert = values.normalise_phone, notes.markdown_of
    phones: list[tuple[str, str | None]] = []
    texts: list[tuple[str, str]] = []

    def kept_phone(raw: str, default_region: str | None = None) -> str | None:
        phones.append((raw, default_region))
        return normalise(raw, default_region)

    def kept_texts(batch: list[tuple[str, str]]) -> list[tuple[str, str]]:
        texts.extend(batch)
        return convert(batch)

    values.normalise_phone, notes.markdown_of = kept_phone, kept_texts
    try:
        Transformer(staging, mappings, workers=0).run()
    finally:
        values.normalise_phone, notes.markdown_of = normalise, convert
    started = time.process_time()
    for raw, region in phones:
        normalise(raw, region)
    phone_seconds = time.process_time() - started
    started = time.process_time()
    convert(texts)
    return len(phones), len(texts), phone_seconds, time.process_time() - started


def python_floor(batches: list) -> float:
    """CPU seconds to read every record of `batches`, pick the twelve fields and write and hash them."""
    from migrate import jsontext
    from migrate.transform.records import payload_text, text_hash

    started = time.process_time()
    for batch in batches:
        for text, _notes, _products in batch.records:
            record = jsontext.loads(text)
            text_hash(payload_text({name: record.get(name) for name in STANDARD_FIELDS}))
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="account size (default 100000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        measure(args.records, Path(tmp))


if __name__ == "__main__":
    main()
