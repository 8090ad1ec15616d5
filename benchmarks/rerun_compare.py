"""What a rerun's comparison costs at N migrated records: time and peak memory of the plan.

    .venv/bin/python benchmarks/rerun_compare.py [--records 100000 1000000]

Every rerun, `plan` and `sync` compares each transformed record with what was last written and
with what the target holds now. `benchmarks/pipeline.py` cannot measure that at a million
records (the load alone would take three hours against the fake). So this script builds, in SQL,
the state file a finished migration of N records leaves: transformed records (contacts,
organizations and deals with links and custom values), the id map, the payloads last written,
and the target as read back (`target_snapshot`, each record as Customermates returns it). It
then runs the plan a run makes (`build_plan(conflicts_only=True)`: it compares only the records
whose payload changed since last written, here none, which it must find in SQL), and apart from
it what `migrate plan --report-dir` does (every record compared and spooled to the state file,
then plan.json, plan.md and plan.html written from there; every record must come out
`unchanged`), and prints their wall time, records/s and the peak RSS of the process, one child
process each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARES = {"organizations": 0.2, "contacts": 0.5, "deals": 0.3}  # of N
VALUES = ("c1", "c2", "c3")  # plain custom columns on every record, besides the Pipedrive ID


def _payload_sql(entity: str, orgs: int) -> tuple[str, str]:
    """(transformed payload, target DTO) of record i, as DuckDB format(...) expressions."""
    values = {"c1": "Value one {i}", "c2": "{i7}", "c3": "2024-01-{day}", "pipedrive_id": "{i}"}
    if entity == "contacts":
        fields = '"emails": ["p{i}@example.com"], "firstName": "First{i}", "lastName": "Last{i}"'
        links, dto_links = '"organizationIds": ["{org}"]', '"organizations": [{{"id": "organizations-{org}"}}], '
    elif entity == "deals":
        fields = '"name": "Deal {i}"'
        links = '"contactIds": ["{i}"], "organizationIds": ["{org}"]'
        dto_links = '"contacts": [{{"id": "contacts-{i}"}}], "organizations": [{{"id": "organizations-{org}"}}], '
    else:
        fields, links, dto_links = '"name": "Organization {i}"', "", ""
    payload_values = ", ".join(f'"{key}": "{value}"' for key, value in values.items())
    cells = ", ".join(f'{{{{"columnId": "col-{entity}-{key}", "value": "{value}"}}}}' for key, value in values.items())
    payload = (
        f'{{{{"fields": {{{{{fields}}}}}, "links": {{{{{links}}}}}, "notes": null, "services": [], "users": [], '
        f'"values": {{{{{payload_values}}}}}}}}}'
    )
    dto = f'{{{{"id": "{entity}-{{i}}", {fields}, {dto_links}"users": [], "notes": null, "customFieldValues": [{cells}]}}}}'
    named = {"i": "i", "i7": "i * 7", "day": "lpad((i % 28 + 1)::VARCHAR, 2, '0')", "org": f"i % {orgs} + 1"}
    return _ordered_format(payload, named), _ordered_format(dto, named)


def _ordered_format(template: str, named: dict[str, str]) -> str:
    """`template` with {name} placeholders (and {{ }} escapes) as a DuckDB format(...) call."""
    pieces: list[str] = []
    args: list[str] = []
    i = 0
    while i < len(template):
        if template.startswith("{{", i) or template.startswith("}}", i):
            pieces.append(template[i : i + 2])
            i += 2
            continue
        if template[i] == "{":
            end = template.index("}", i)
            args.append(named[template[i + 1 : end]])
            pieces.append("{}")
            i = end + 1
            continue
        pieces.append(template[i])
        i += 1
    text = "".join(pieces).replace("'", "''")
    return f"format('{text}', {', '.join(args)})"


def build_state(path: Path, size: int) -> dict[str, int]:
    from migrate.staging.store import Staging

    counts = {entity: max(1, int(size * share)) for entity, share in SHARES.items()}
    with Staging(path) as staging:
        con = staging.con
        seq = 0
        for entity, n in counts.items():
            payload, dto = _payload_sql(entity, counts["organizations"])
            con.execute(
                "INSERT INTO target_records (entity, source_id, payload, payload_hash, num_id) "
                f"SELECT '{entity}', i::VARCHAR, {payload}::JSON, md5(i::VARCHAR), i FROM range(1, {n + 1}) t(i)"
            )
            con.execute(
                f"INSERT INTO id_map SELECT '{entity}', i::VARCHAR, '{entity}-' || i, md5(i::VARCHAR), 'bench', now(), 'bench' "
                f"FROM range(1, {n + 1}) t(i)"
            )
            con.execute(f"INSERT INTO written_payloads SELECT '{entity}', i::VARCHAR, {payload}::JSON FROM range(1, {n + 1}) t(i)")
            con.execute(
                f"INSERT INTO target_snapshot SELECT '{entity}', {seq} + i, '{entity}-' || i, i::VARCHAR, {dto}::JSON FROM range(1, {n + 1}) t(i)"
            )
            seq += n
    return counts


def measure(size: int, files: bool) -> dict[str, object]:
    """The run's plan (its conflicts, among the records changed since last written), or with `files`
    what `migrate plan --report-dir` does: the plan with every record spooled to the state file,
    then plan.json, plan.md and plan.html."""
    from migrate.customermates.columns import ColumnIndex
    from migrate.customermates.target import TargetState
    from migrate.report.plan import SpooledRecords, build_plan
    from migrate.report.plan_output import write_plan
    from migrate.staging.store import Staging

    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp:
        state = Path(tmp) / "state.duckdb"
        started = time.perf_counter()
        counts = build_state(state, size)
        built = time.perf_counter() - started
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        columns = ColumnIndex(ids={(e, k): f"col-{e}-{k}" for e in counts for k in (*VALUES, "pipedrive_id")})
        with Staging(state) as staging:
            started = time.perf_counter()
            target = TargetState(staging, "bench")
            if files:
                plan = build_plan(staging, columns, target, {}, {}, spool=True)
                written = write_plan(plan, SpooledRecords(staging), Path(tmp) / "plan")
            else:
                plan = build_plan(staging, columns, target, {}, {}, conflicts_only=True)
            seconds = time.perf_counter() - started
        compared = {e: sum(plan["summary"][e].values()) for e in counts}
        expected = {e: plan["summary"][e]["unchanged"] if files else 0 for e in counts}
        if compared != expected or (files and sum(compared.values()) != sum(counts.values())):
            raise SystemExit(f"the comparison went wrong: {plan['summary']}")
        return {
            "size": sum(counts.values()),
            "build_seconds": built,
            "state_mb": state.stat().st_size / 2**20,
            "plan_seconds": seconds,
            "records_per_second": sum(counts.values()) / seconds,
            "peak_rss_before_plan_mb": rss_before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "files_mb": sum(path.stat().st_size for path in written) / 2**20 if files else 0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--files", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.files)))
        return
    print(f"{'':>27} {'migrated records':>16} {'time':>8} {'records/s':>10} {'peak RSS':>9} {'before it':>10} {'state file':>11} {'files':>8}")
    for size in args.records:
        for files, what in ((False, "a run's comparison"), (True, "migrate plan --report-dir")):
            command = [sys.executable, __file__, "--one", str(size), *(["--files"] if files else [])]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{what:>27} {r['size']:>16,} {r['plan_seconds']:>7.1f}s {r['records_per_second']:>10,.0f} {r['peak_rss_mb']:>6,.0f} MB "
                f"{r['peak_rss_before_plan_mb']:>7,.0f} MB {r['state_mb']:>8,.0f} MB {r['files_mb']:>5,.0f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
