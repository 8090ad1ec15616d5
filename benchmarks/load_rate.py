"""Load rate of `migrate run` against the fake Customermates with the real server's latency.

    .venv/bin/python benchmarks/load_rate.py --records 5000

Generates a synthetic Pipedrive account (samples/generate.py, scale mode), serves it from
the fake Pipedrive, and migrates it into the fake Customermates with a per-item write latency
(default 11 ms: about 1.1 s per batch of 100, as measured on a real server). Prints the
end-to-end time, the load's records/s while writing, and the same fake's bare create-many loop
(100 contacts per request, one request at a time) for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrate.config import Settings  # noqa: E402
from migrate.logs import configure  # noqa: E402
from migrate.pipeline import run_migration  # noqa: E402
from tests.fakes.customermates import VALID_KEY, FakeCustomermates  # noqa: E402
from tests.fakes.pipedrive import VALID_TOKEN, FakePipedrive  # noqa: E402


def generate(out: Path, records: int) -> dict[str, int]:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "samples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_account(out, seed=11, scale=records)


def bare_loop(latency: float, records: int) -> float:
    """records/s of a plain create-many loop: 100 minimal contacts per request, sequential."""
    with FakeCustomermates(latency_per_item=latency) as fake, httpx.Client(base_url=fake.url, headers={"x-api-key": VALID_KEY}) as http:
        started = time.monotonic()
        for start in range(0, records, 100):
            batch = [{"firstName": f"P{i}", "lastName": "X"} for i in range(start, min(records, start + 100))]
            http.post("/api/v1/contacts/many", json={"contacts": batch}).raise_for_status()
        return records / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.011, help="seconds per written item")
    args = parser.parse_args()
    configure("console", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        counts = generate(Path(tmp) / "account", args.records)
        with FakePipedrive(Path(tmp) / "account", burst_limit=10_000) as pipedrive, FakeCustomermates(latency_per_item=args.latency) as cm:
            settings = Settings(
                pipedrive_api_token=VALID_TOKEN,
                pipedrive_base_url=pipedrive.url,
                customermates_url=cm.url,
                customermates_api_key=VALID_KEY,
                state=Path(tmp) / "state.duckdb",
                pipedrive_burst_limit=10_000,
            )
            started = time.monotonic()
            report = run_migration(settings)
            total = time.monotonic() - started
            writes_first = cm.write_count()
            started = time.monotonic()
            rerun = run_migration(settings)
            rerun_seconds = time.monotonic() - started
            rerun_writes = cm.write_count() - writes_first
    load = report["load"]
    bare = bare_loop(args.latency, min(load["records_written"], 3000))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("source records", f"{sum(counts.values()):,}"),
        ("records migrated", f"{load['records_written']:,}"),
        ("write requests", f"{load['write_requests']:,}"),
        ("end-to-end time", f"{total:.1f} s"),
        ("load rate (while writing)", f"{load['records_per_second']:.1f} records/s"),
        ("bare create-many loop", f"{bare:.1f} records/s"),
        ("ratio", f"{load['records_per_second'] / bare:.2f}"),
        ("no-op rerun", f"{rerun_seconds:.1f} s, {rerun_writes} writes, status {rerun['status']}"),
        ("peak RSS (this process)", f"{rss:.0f} MB"),
    ]
    for name, value in rows:
        print(f"{name:<28}{value}")


if __name__ == "__main__":
    main()
