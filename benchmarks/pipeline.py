"""The project's performance table: extract, transform and load of synthetic accounts of N records.

    .venv/bin/python benchmarks/pipeline.py [--records 10000 100000] [--plan lite|growth|premium|ultimate]
                                            [--load-latency 0.011] [--skip-load] [--load-rate R] [--shared S]

For each size N: generates a synthetic Pipedrive account of about N records (samples/generate.py,
scale mode, streamed to a temp dir), serves it from the fake Pipedrive with the plan's burst limit
(Lite 20, Growth 40, Premium 100, Ultimate 120 requests per rolling 2 s; the tool's
`pipedrive_burst_limit` is set to the same value) and its per-endpoint token costs, and runs the
real pipeline into the fake Customermates with `latency_per_item` seconds of work per written item
(default 0.011 s: about 1.1 s per batch of 100, as measured on a real server).

Phases are timed one by one: `run_extract` on a fresh state file, then `transform` on the staged
data, then `run_migration(use_staged=True)` (the load; it transforms again, which is cheap next to
the writes), then a sync with nothing changed (`run_migration(incremental=True)`: the first after the run, which
reads back every record the run wrote), then a full `run_migration` again (the no-op rerun, which
extracts again), then a sync again (the syncs and the rerun come ten minutes after the load by the
fake Customermates' clock), then the bare loop: 20 of the load's own create-many requests, spread over every entity, sent again to the
same fake one after another with nothing else around them. "load ÷ bare" compares records/s over
the whole load (users, columns, bodies, writes, the state file) with that loop's; the fake also
times its own side of every write (parse, validate, the per-item work), so the table says how much
of the load's wall time the server was writing.

Each size runs in its own child process, so that its peak RSS is its own, and each fake runs in a
process of its own besides (the fake Pipedrive serves a frozen snapshot, indexed once), so that
the RSS and the extract timings are the tool's, not the fakes'.

--skip-load: for sizes above 10,000, the load and rerun rows are skipped and the load time is
projected at the 10,000-record load rate, measured in the same invocation (a 10,000 column is
added when none was asked for) unless --load-rate gives that rate from an earlier run.

--shared S: another integration uses the same API token all along, a share S of the burst limit (the fake's
`shared_rate`; it waits for a place when the window is full). The floor is then the tool's requests at
the rest of the limit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLANS = {"lite": 20, "growth": 40, "premium": 100, "ultimate": 120}  # requests per rolling window
WINDOW_SECONDS = 2.0
CALIBRATION_SIZE = 10_000  # --skip-load projects bigger sizes at the load rate measured here
BARE_LOOP_REQUESTS = 20  # the load's create-many requests replayed by the bare loop, spread over the load
RESULT_TAG = "RESULT "
RERUN_AFTER_SECONDS = 600  # the no-op rerun and the sync, this long after the load by the fake Customermates' clock


# ---------------------------------------------------------------------------------------------
# one size, in a child process


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "samples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _touch(staging: Any, one_in: int) -> int:
    """Change one row in `one_in` of every record collection and the notes (0: none), in a key no
    mapping reads: the rows' digests change, their payloads do not (a later rerun writes nothing)."""
    from migrate.staging.store import raw_table

    touched = 0
    for collection in ("persons", "organizations", "products", "deals", "activities", "notes"):
        if one_in and staging.has_collection(collection):
            touched += staging.con.execute(
                f"UPDATE {raw_table(collection)} SET data = json_merge_patch(data, '{{\"benchmark_touch\": 1}}') WHERE hash(id) % {one_in} = 0"
            ).fetchone()[0]
    return touched


def _again(figures: tuple[float, int, int, str | None]) -> str:
    seconds, touched, made, full_reason = figures
    return f"{_s(seconds)}: {_n(touched)} rows → {_n(made)} made" + (f" (full: {full_reason})" if full_reason else "")


def _children_cpu() -> float:
    """CPU seconds of the children that ended (the transform's workers; the fakes live on)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def minimum_extract(collections: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
    """(requests, tokens) the extract needs at least, by `migrate.pipedrive.budget.extract_cost`:
    every list collection in pages of 500 (one request when empty), unpaged ones in one request,
    and deal products in requests of 100 deal ids, for the deals (not deleted) that have products.
    Counted from the fake's loaded snapshot, which is what the API serves."""
    from migrate.pipedrive.budget import extract_cost

    live = {
        d.get("id")
        for name in ("deals", "deals_archived")
        for d in collections.get(name, [])
        if not d.get("is_deleted") and d.get("status") != "deleted"
    }
    with_products = {line.get("deal_id") for line in collections.get("deal_products", []) if line.get("deal_id") in live}
    return extract_cost({name: len(rows) for name, rows in collections.items()}, len(with_products))


class _Timer:
    """Wraps a callable and adds up the seconds spent inside it (from any thread)."""

    def __init__(self, func: Any):
        self.func = func
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.func(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


class _ToolMemory:
    """Peak RSS of this process and its children but the fakes (the transform's worker processes),
    summed, sampled five times a second in a thread: `ru_maxrss` sees one process only.
    `mark()` starts a new phase peak (`phase_mb`); `peak_mb` is over the whole run."""

    def __init__(self, fakes: list[FakeProcess]):
        self._excluded = {fake.pid for fake in fakes}
        self.peak_mb = self.phase_mb = 0.0
        self.phase_split = (0.0, 0.0)  # (this process, its children) at the phase's peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mark(self) -> None:
        self.phase_mb, self.phase_split = 0.0, (0.0, 0.0)

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.2):
            children = [pid for pid in _child_pids(me) if pid not in self._excluded]
            mine, theirs = _rss_of(me), sum(_rss_of(pid) for pid in children)
            if mine + theirs > self.phase_mb:
                self.phase_mb, self.phase_split = mine + theirs, (mine, theirs)
            self.peak_mb = max(self.peak_mb, mine + theirs)


def _child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux /proc; none elsewhere)."""
    found: list[int] = []
    if not Path("/proc/self/stat").exists():
        return found
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _rss_of(pid: int | str) -> float:
    """A process's resident set size now, in MB ("self": this one; Linux /proc, 0 elsewhere)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class FakeProcess:
    """One fake server in a process of its own, so that its CPU time, GIL and memory are not the
    tool's: the peak RSS and the extract timings measured in the benchmark process are the tool's.

    `ask("stats")` returns the fake's counters (see `_stats`)."""

    def __init__(self, kind: str, **kwargs: Any):
        import multiprocessing

        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=_serve, args=(kind, kwargs, child), daemon=True)

    def __enter__(self) -> FakeProcess:
        self._process.start()
        self.url = self._conn.recv()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def ask(self, question: str) -> dict[str, Any]:
        self._conn.send(question)
        return self._conn.recv()

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(timeout=30)


def _serve(kind: str, kwargs: dict[str, Any], conn: Any) -> None:
    from tests.fakes.customermates import FakeCustomermates
    from tests.fakes.pipedrive import FakePipedrive

    fake: Any = FakePipedrive(**kwargs) if kind == "pipedrive" else FakeCustomermates(**kwargs)
    if kind == "pipedrive":
        fake._dispatch = _Timer(fake._dispatch)  # the fake's own work per request, its lock held
    else:
        fake._write = _Timer(fake._write)  # a write's time in the server: parse, validate, the per-item work, apply
        fake._search = _Timer(fake._search)  # a search's: filter, sort and page every record of the entity, in Python
    with fake:
        conn.send(fake.url)
        while (question := conn.recv()) != "stop":
            conn.send(_stats(kind, fake, question))


def _stats(kind: str, fake: Any, question: str) -> dict[str, Any]:
    if kind == "customermates" and question.startswith("sample_creates "):
        answered = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/many") and r.status == 201]
        step = max(1, len(answered) // int(question.split()[1]))
        return {"requests": [(r.path, r.body) for r in answered[::step]]}
    if kind == "customermates" and question.startswith("advance_clock "):
        fake.advance_clock(float(question.split()[1]))
    if kind == "customermates":
        return {"writes": fake.write_count(), "write_seconds": fake._write.seconds, "search_seconds": fake._search.seconds,
                "reads": sum(1 for r in fake.requests if r.path.endswith("/search"))}
    if question == "minimum":
        requests, tokens = minimum_extract(fake.collections)
        return {"requests": requests, "tokens": tokens, "rss_mb": _rss_of("self")}
    return {"requests": len(fake.requests), "tokens": fake.tokens_spent, "count_429": fake.count_429,
            "count_403": fake.count_403, "serving_seconds": fake._dispatch.seconds, "cpu_seconds": time.process_time(),
            "shared_served": fake.shared_served}


def _sync(settings: Any, cm: FakeProcess, pipedrive: FakeProcess) -> dict[str, Any]:
    """`migrate sync` (deletions marked), timed: wall, its read of Customermates (what changed there
    since the last read began), its transform, and the requests it made to either side."""
    from migrate.customermates.target import TargetState
    from migrate.pipeline import run_migration

    target_read = _Timer(TargetState.__dict__["read_changes"].__func__)
    TargetState.read_changes = classmethod(target_read)  # type: ignore[method-assign, assignment]
    try:
        cm_before, before = cm.ask("stats"), pipedrive.ask("stats")
        started = time.perf_counter()
        synced = run_migration(settings, incremental=True, deletes="mark")
        seconds = time.perf_counter() - started
    finally:
        TargetState.read_changes = classmethod(target_read.func)  # type: ignore[method-assign, assignment]
    cm_after = cm.ask("stats")
    return {
        "seconds": seconds, "status": synced["status"], "target_read_seconds": target_read.seconds,
        "transform": (synced["transform"]["seconds"], synced["transform"]["records_made"]),
        "pipedrive_requests": pipedrive.ask("stats")["requests"] - before["requests"],
        "reads": cm_after["reads"] - cm_before["reads"], "writes": cm_after["writes"] - cm_before["writes"],
        "search_seconds": cm_after["search_seconds"] - cm_before["search_seconds"],
    }


def bare_loop(cm: FakeProcess, requests: int) -> tuple[float, float]:
    """The load's own create-many requests, `requests` of them spread over the load (every entity,
    the same bodies, links and custom values), sent again to the same fake by a plain sequential
    loop: its records/s, and the share of its wall time the server spent on the writes."""
    import httpx

    from tests.fakes.customermates import VALID_KEY

    sample = cm.ask(f"sample_creates {requests}")["requests"]
    server_before = cm.ask("stats")["write_seconds"]
    items = 0
    with httpx.Client(base_url=cm.url, headers={"x-api-key": VALID_KEY}, timeout=60) as http:
        started = time.perf_counter()
        for path, body in sample:
            http.post(path, json=body).raise_for_status()
            items += len(next(iter(body.values())))
        wall = time.perf_counter() - started
    return items / wall, (cm.ask("stats")["write_seconds"] - server_before) / wall


def measure(size: int, burst: int, latency: float, load: bool, pipedrive_latency: float = 0.0, shared: float = 0.0) -> dict[str, Any]:
    from migrate.config import Settings
    from migrate.logs import configure
    from migrate.pipedrive import client as pipedrive_client
    from migrate.pipeline import run_extract, run_migration
    from migrate.staging.store import Staging
    from migrate.transform.engine import Transformer, transform
    from migrate.transform.mapping import load_mappings
    from tests.fakes.customermates import VALID_KEY
    from tests.fakes.pipedrive import VALID_TOKEN

    configure("console", "error")  # 429s are counted in the table, not logged line by line
    out: dict[str, Any] = {"size": size, "load": load}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        account = Path(tmp) / "account"
        started = time.perf_counter()
        counts = _generator().generate_account(account, seed=11, scale=size)
        out["generate_seconds"] = time.perf_counter() - started
        out["source_records"] = sum(counts.values())
        out["snapshot_mb"] = sum(p.stat().st_size for p in account.glob("*.jsonl")) / 2**20

        with FakeProcess("pipedrive", snapshot_dir=account, burst_limit=burst, window_seconds=WINDOW_SECONDS,
                         frozen=True, latency=pipedrive_latency, shared_rate=shared * burst / WINDOW_SECONDS) as pipedrive, FakeProcess("customermates", latency_per_item=latency, search_cache=True) as cm, \
                _ToolMemory([pipedrive, cm]) as memory:
            minimum = pipedrive.ask("minimum")
            out["min_requests"], out["min_tokens"] = minimum["requests"], minimum["tokens"]
            out["fake_pipedrive_rss_mb"] = minimum["rss_mb"]
            settings = Settings(
                pipedrive_api_token=VALID_TOKEN,
                pipedrive_base_url=pipedrive.url,
                customermates_url=cm.url,
                customermates_api_key=VALID_KEY,
                state=Path(tmp) / "state.duckdb",
                pipedrive_burst_limit=burst,
            )

            # -- extract, on a fresh state file; instrumented to say where the time goes
            limiter = _Timer(pipedrive_client.BurstLimiter.acquire)
            pipedrive_client.BurstLimiter.acquire = lambda self: limiter(self)  # type: ignore[method-assign]
            try:
                with Staging(settings.state) as staging:
                    staged = staging.write_pages = _Timer(staging.write_pages)
                    run_id = staging.start_run("extract")
                    fake_cpu = pipedrive.ask("stats")["cpu_seconds"]
                    started, cpu = time.perf_counter(), time.process_time()
                    summary = run_extract(settings, staging, run_id)
                    out["extract_seconds"] = time.perf_counter() - started
                    out["extract_cpu_seconds"] = time.process_time() - cpu
                    staging.finish_run(run_id, "ok", {"records": summary.records})
            finally:
                pipedrive_client.BurstLimiter.acquire = limiter.func  # type: ignore[method-assign]
            served = pipedrive.ask("stats")
            out["extract_fake_seconds"] = served["serving_seconds"]
            out["extract_fake_cpu_seconds"] = served["cpu_seconds"] - fake_cpu
            out["extract_limiter_seconds"] = limiter.seconds
            out["extract_staging_seconds"] = staged.seconds
            out["staged_records"] = sum(summary.records.values())
            out["requests"] = served["requests"]
            out["tokens"] = served["tokens"]
            out["count_429"] = served["count_429"]
            out["count_403"] = served["count_403"]
            out["shared"] = shared
            out["shared_served"] = served["shared_served"]
            out["shared_seen"] = (summary.pipedrive or {}).get("shared_token_requests")
            out["extract_peak_rss_mb"] = _peak_rss_mb()

            # -- transform, on the staged data (with worker processes from 20,000 records: the
            # CPU time of this process and of the workers, and the note conversion phase, timed)
            html = _Timer(Transformer._convert_notes)
            Transformer._convert_notes = lambda self, pool: html(self, pool)  # type: ignore[method-assign]
            try:
                with Staging(settings.state) as staging:
                    mappings = load_mappings(settings.mappings)
                    memory.mark()
                    started, cpu, workers_cpu = time.perf_counter(), time.process_time(), _children_cpu()
                    transformed = transform(staging, mappings, settings.phone_region)
                    out["transform_seconds"] = time.perf_counter() - started
                    out["transform_cpu"] = (time.process_time() - cpu, _children_cpu() - workers_cpu)
                    out["transform_html_seconds"] = html.seconds
                    out["transform_sampled_rss_mb"] = (memory.phase_mb, *memory.phase_split)
                    # the next transforms make again only what changed: none, then 1 % of the rows
                    for key, share in (("transform_unchanged", 0), ("transform_one_percent", 100)):
                        touched = _touch(staging, share)
                        started = time.perf_counter()
                        again = transform(staging, mappings, settings.phone_region)
                        out[key] = (time.perf_counter() - started, touched, again.made, again.full_reason)
            finally:
                Transformer._convert_notes = html.func  # type: ignore[method-assign]
            out["target_records"] = sum(transformed.records.values())
            out["transform_peak_rss_mb"] = _peak_rss_mb()

            # -- load, then the no-op rerun (a full `migrate run`: it extracts again)
            if load:
                server_before = cm.ask("stats")["write_seconds"]
                started = time.perf_counter()
                report = run_migration(settings, use_staged=True)
                out["load_phase_seconds"] = time.perf_counter() - started
                out["load_status"] = report["status"]
                out["records_written"] = report["load"]["records_written"]
                out["write_requests"] = report["load"]["write_requests"]
                out["write_seconds"] = report["load"]["write_seconds"]
                out["load_rps"] = report["load"]["records_per_second"]
                out["load_seconds"] = report["load"]["seconds"]
                out["load_overall_rps"] = report["load"]["records_per_second_overall"]
                out["load_server_seconds"] = cm.ask("stats")["write_seconds"] - server_before
                out["load_peak_rss_mb"] = _peak_rss_mb()

                # the first sync, the rerun and the later sync come ten minutes after the load, by the server's
                # clock: a sync reads back what changed since the last read began, less five minutes (TargetState)
                cm.ask(f"advance_clock {RERUN_AFTER_SECONDS}")
                # -- the first sync after the run: every record the run wrote changed since its read of the target
                out["first_sync"] = _sync(settings, cm, pipedrive)
                writes_before, before = cm.ask("stats")["writes"], pipedrive.ask("stats")
                last_extract = [0.0]

                def progress(name: str, records: int) -> None:
                    if name.startswith("extract "):
                        last_extract[0] = time.perf_counter()

                started = time.perf_counter()
                rerun = run_migration(settings, progress=progress)
                out["rerun_seconds"] = time.perf_counter() - started
                out["rerun_extract_seconds"] = last_extract[0] - started if last_extract[0] else None
                out["rerun_transform"] = (rerun["transform"]["seconds"], rerun["transform"]["records_made"])
                out["rerun_status"] = rerun["status"]
                after = pipedrive.ask("stats")
                out["rerun_writes"] = cm.ask("stats")["writes"] - writes_before
                out["rerun_requests"] = after["requests"] - before["requests"]
                out["rerun_429"] = after["count_429"] - before["count_429"]

                # -- a sync with nothing changed (what `migrate sync --every 15m` does each time)
                out["sync"] = _sync(settings, cm, pipedrive)

                # -- the bare loop last: it writes its records a second time
                out["bare_rps"], out["bare_server_share"] = bare_loop(cm, BARE_LOOP_REQUESTS)
            out["sampled_rss_mb"] = memory.peak_mb
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# ---------------------------------------------------------------------------------------------
# the table


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _s(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.1f} s" if value < 600 else f"{value:,.0f} s ({value / 60:,.0f} min)"


def rows_for(results: list[dict[str, Any]], burst: int, projection_rate: tuple[float, float, str] | None) -> list[tuple[str, list[str]]]:
    shared = results[0].get("shared", 0.0) if results else 0.0
    rate = burst * (1 - shared) / WINDOW_SECONDS  # what another client on the token (--shared) leaves
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("—")
        rows.append((label, cells))

    row("source records (generated)", lambda r: _n(r["source_records"]))
    row("  snapshot on disk", lambda r: f"{r['snapshot_mb']:,.0f} MB")
    row("  generation time", lambda r: _s(r["generate_seconds"]))
    row("EXTRACT wall time", lambda r: _s(r["extract_seconds"]))
    row("  floor: requests ÷ (burst/2 s)" if not shared else f"  floor: requests ÷ ({1 - shared:.0%} of burst/2 s)", lambda r: _s(r["requests"] / rate))
    row("  wall ÷ floor", lambda r: f"{r['extract_seconds'] / (r['requests'] / rate):.2f}×")
    # In a rolling window the first `burst` requests go at once: request i waits for window × ⌊i/burst⌋.
    places = max(1, round(burst * (1 - shared)))  # a window's places the tool has
    row("  rolling-window floor", lambda r: _s(WINDOW_SECONDS * ((r["requests"] - 1) // places)))
    row("  wall ÷ rolling-window floor",
        lambda r: f"{r['extract_seconds'] / (WINDOW_SECONDS * ((r['requests'] - 1) // places)):.2f}×")
    row("  of which waiting in limiter", lambda r: _s(r["extract_limiter_seconds"]))
    row("  of which fake serving (its lock held)", lambda r: _s(r["extract_fake_seconds"]))
    row("  of which DuckDB page writes", lambda r: _s(r["extract_staging_seconds"]))
    row("  CPU time: the tool, all threads", lambda r: _s(r["extract_cpu_seconds"]))
    row("  CPU time: the fake Pipedrive", lambda r: _s(r["extract_fake_cpu_seconds"]))
    row("  records staged", lambda r: _n(r["staged_records"]))
    row("requests (fake: len(requests))", lambda r: _n(r["requests"]))
    row("  minimum requests (pages of 500)", lambda r: _n(r["min_requests"]))
    row("tokens spent (fake)", lambda r: _n(r["tokens"]))
    row("  minimum tokens", lambda r: _n(r["min_tokens"]))
    row("  spent ÷ minimum", lambda r: f"{r['tokens'] / r['min_tokens']:.2f}×")
    row("429s at the fake", lambda r: _n(r["count_429"]))
    row("403s at the fake", lambda r: _n(r["count_403"]))
    row("  % of requests 429ed", lambda r: f"{100 * r['count_429'] / r['requests']:.1f} %")
    if shared:
        row("another client on the token: requests served", lambda r: _n(r["shared_served"]))
        row("  most of its requests the tool saw in a window", lambda r: _n(r["shared_seen"]))
    row("TRANSFORM time", lambda r: _s(r["transform_seconds"]))
    row("  staged records/s", lambda r: f"{r['staged_records'] / r['transform_seconds']:,.0f}")
    row("  target records out", lambda r: _n(r["target_records"]))
    row("  of which notes to markdown (phase)", lambda r: _s(r["transform_html_seconds"]))
    row("  CPU: this process / worker processes", lambda r: f"{_s(r['transform_cpu'][0])} / {_s(r['transform_cpu'][1])}")
    row("  peak RSS with the workers (sampled)‡",
        lambda r: "{:,.0f} MB (this process {:,.0f}, the others {:,.0f})".format(*r["transform_sampled_rss_mb"]))
    row("TRANSFORM again, nothing changed", lambda r: _again(r["transform_unchanged"]))
    row("  again, 1 % of rows changed", lambda r: _again(r["transform_one_percent"]))

    def loaded(fn: Any) -> Any:
        return lambda r: fn(r) if r["load"] else "skipped"

    row("LOAD records written", loaded(lambda r: f"{_n(r['records_written'])} ({r['load_status']})"))
    row("  write requests", loaded(lambda r: _n(r["write_requests"])))
    row("  load wall (Loader: users, bodies, writes, state)", loaded(lambda r: _s(r["load_seconds"])))
    row("  load rate (over the load wall)", loaded(lambda r: f"{r['load_overall_rps']:,.1f} rec/s"))
    row("  load rate (inside the write requests)", loaded(lambda r: f"{r['load_rps']:,.1f} rec/s"))
    row("  bare create-many loop (the load's bodies)", loaded(lambda r: f"{r['bare_rps']:,.1f} rec/s"))
    row("  load ÷ bare", loaded(lambda r: f"{r['load_overall_rps'] / r['bare_rps']:.2f}"))
    row("  inside the write requests ÷ bare", loaded(lambda r: f"{r['load_rps'] / r['bare_rps']:.2f}"))
    row("  the server's write time (fake: parse, validate, work)", loaded(lambda r: _s(r["load_server_seconds"])))
    row("  share of the load wall the server writes: load", loaded(lambda r: f"{r['load_server_seconds'] / r['load_seconds']:.2f}"))
    row("  the same share: bare loop", loaded(lambda r: f"{r['bare_server_share']:.2f}"))
    row("  load phase wall (run --use-staged)", loaded(lambda r: _s(r["load_phase_seconds"])))
    if projection_rate is not None and any(not r["load"] for r in results):
        write_rate, phase_rate, source = projection_rate

        def projected(rate_: float) -> Any:
            return lambda r: _s(r["target_records"] / rate_) if not r["load"] else "(measured)"

        row(f"  projected writing @ {write_rate:,.1f} rec/s", projected(write_rate))
        row(f"  projected load phase @ {phase_rate:,.1f} rec/s", projected(phase_rate))
        rows.append((f"    (rates: {source})", ["" for _ in results]))
    row("NO-OP RERUN wall (full run)", loaded(lambda r: _s(r["rerun_seconds"])))
    row("  of which re-extract", loaded(lambda r: _s(r["rerun_extract_seconds"])))
    row("  of which transform (records made)", loaded(lambda r: f"{_s(r['rerun_transform'][0])} ({_n(r['rerun_transform'][1])})"))
    row("  write requests", loaded(lambda r: f"{_n(r['rerun_writes'])} ({r['rerun_status']})"))
    row("  Pipedrive requests / 429s", loaded(lambda r: f"{_n(r['rerun_requests'])} / {_n(r['rerun_429'])}"))
    for key, label in (("first_sync", "FIRST SYNC after the run, nothing changed†"), ("sync", "SYNC, nothing changed (migrate sync)†")):
        row(label, loaded(lambda r, k=key: f"{_s(r[k]['seconds'])} ({r[k]['status']})"))
        row("  of which reading Customermates back",
            loaded(lambda r, k=key: f"{_s(r[k]['target_read_seconds'])} ({_n(r[k]['reads'])} search requests)"))
        row("    of which the fake answering the searches", loaded(lambda r, k=key: _s(r[k]["search_seconds"])))
        row("  of which transform (records made)", loaded(lambda r, k=key: f"{_s(r[k]['transform'][0])} ({_n(r[k]['transform'][1])})"))
        row("  Pipedrive requests / write requests", loaded(lambda r, k=key: f"{_n(r[k]['pipedrive_requests'])} / {_n(r[k]['writes'])}"))
    row("PEAK RSS of the tool*", lambda r: f"{r['peak_rss_mb']:,.0f} MB")
    row("  with the transform workers (sampled)‡", lambda r: f"{r['sampled_rss_mb']:,.0f} MB")
    row("  of which by the end of extract", lambda r: f"{r['extract_peak_rss_mb']:,.0f} MB")
    row("  of which by the end of transform", lambda r: f"{r['transform_peak_rss_mb']:,.0f} MB")
    row("  of which by the end of the load", loaded(lambda r: f"{r['load_peak_rss_mb']:,.0f} MB"))
    row("  fake Pipedrive process (not the tool)", lambda r: f"{r['fake_pipedrive_rss_mb']:,.0f} MB")
    return rows


def print_table(results: list[dict[str, Any]], rows: list[tuple[str, list[str]]]) -> None:
    header = ["figure"] + [f"N = {r['size']:,}" for r in results]
    width0 = max(len(header[0]), *(len(label) for label, _ in rows))
    widths = [max(len(header[i + 1]), *(len(cells[i]) for _, cells in rows)) for i in range(len(results))]
    print(f"{header[0]:<{width0}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(header[1:], widths, strict=True)))
    print("-" * (width0 + sum(w + 2 for w in widths)))
    for label, cells in rows:
        print(f"{label:<{width0}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))


def run_child(size: int, args: argparse.Namespace, load: bool) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(size), "--plan", args.plan,
               "--load-latency", str(args.load_latency), "--pipedrive-latency", str(args.pipedrive_latency), "--shared", str(args.shared)]
    if not load:
        command.append("--no-load")
    print(f"[{time.strftime('%H:%M:%S')}] N = {size:,}: {'extract, transform, load, rerun' if load else 'extract, transform'} ...",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"error: the measurement of N = {size:,} failed (exit code {done.returncode})")
    result = next(json.loads(line[len(RESULT_TAG):]) for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT_TAG))
    print(f"[{time.strftime('%H:%M:%S')}] N = {size:,}: done in {time.perf_counter() - started:,.0f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[10_000, 100_000], help="account sizes (default 10000 100000)")
    parser.add_argument("--plan", choices=sorted(PLANS, key=PLANS.get), default="lite", help="Pipedrive plan: its burst limit")
    parser.add_argument("--load-latency", type=float, default=0.011, help="fake Customermates seconds per written item")
    parser.add_argument("--pipedrive-latency", type=float, default=0.0,
                        help="seconds the fake Pipedrive adds to every answer (network and server time; a real page of 500 "
                             "takes a few hundred ms)")
    parser.add_argument("--skip-load", action="store_true",
                        help=f"sizes above {CALIBRATION_SIZE:,}: no load or rerun; project the load at the {CALIBRATION_SIZE:,} rate")
    parser.add_argument("--load-rate", type=float, nargs=2, metavar=("WRITING", "PHASE"),
                        help="with --skip-load: the 10k rates (records/s while writing, and over the load phase) of an earlier "
                             "run, instead of measuring them now")
    parser.add_argument("--shared", type=float, default=0.0,
                        help="share of the burst limit another integration on the same API token uses all along (default 0)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: measure one size, print RESULT json
    parser.add_argument("--no-load", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    burst = PLANS[args.plan]

    if args.one is not None:
        from migrate.malloc import limit_arenas

        limit_arenas()  # as the `migrate` command does first
        result = measure(args.one, burst, args.load_latency, load=not args.no_load, pipedrive_latency=args.pipedrive_latency,
                         shared=args.shared)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    sizes = sorted(set(args.records))
    if any(n <= 0 for n in sizes):
        parser.error("--records: sizes must be positive")
    if not 0 <= args.shared < 1:
        parser.error("--shared: a share of the burst limit, at least 0 and below 1")
    if args.skip_load and args.load_rate is None and any(n > CALIBRATION_SIZE for n in sizes) and CALIBRATION_SIZE not in sizes:
        sizes = sorted({*sizes, CALIBRATION_SIZE})  # the measured rate the projection needs

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: nproc {cpus}, Python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.system()} {platform.release()} {platform.machine()}")
    print(f"Pipedrive plan {args.plan}: burst limit {burst} requests per rolling {WINDOW_SECONDS:g} s "
          f"(= {burst / WINDOW_SECONDS:g} req/s; tool's pipedrive_burst_limit = {burst}); "
          f"Customermates write latency {args.load_latency * 1000:g} ms per item; "
          f"Pipedrive answers take {args.pipedrive_latency * 1000:g} ms more than serving them"
          + (f"; another client uses {args.shared:.0%} of the burst limit on the same token" if args.shared else ""))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}", flush=True)

    results = []
    for size in sizes:
        load = not (args.skip_load and size > CALIBRATION_SIZE)
        results.append(run_child(size, args, load))

    projection = None
    if args.load_rate is not None:
        projection = (args.load_rate[0], args.load_rate[1], "given by --load-rate")
    else:
        calibration = next((r for r in results if r["size"] == CALIBRATION_SIZE and r["load"]), None)
        if calibration is not None:
            projection = (calibration["load_rps"], calibration["target_records"] / calibration["load_phase_seconds"],
                          f"measured at N = {CALIBRATION_SIZE:,} in this run")
    print()
    print_table(results, rows_for(results, burst, projection))
    print()
    print("* peak RSS of the benchmark process of that size: the generator, the tool and DuckDB. Each fake runs in a")
    print("  process of its own (the fake Pipedrive holds the whole snapshot in Python dicts), not counted here.")
    print("‡ the RSS of the benchmark process and of its children but the fakes (the transform's worker processes and")
    print("  multiprocessing's resource tracker), added up five times a second: a peak shorter than 0.2 s can be missed.")
    print("Extract figures come from the fake Pipedrive serving a frozen snapshot from memory on loopback, in its own")
    print("process: 'fake serving' is CPU time the real Pipedrive would spend on its side, replaced there by network")
    print("latency per request (add some with --pipedrive-latency). The extractor runs eight readers under one burst")
    print("limiter, the big collections from both ends. The two processes share this machine's cores: when their CPU")
    print(f"times add up to more than {os.cpu_count()} × the floor, the floor cannot be reached here, whatever the tool does.")
    print("Rolling-window floor: the first `burst` requests of a rolling window go at once, so request i cannot leave")
    print("before 2 s × ⌊i/burst⌋; it is below requests ÷ (burst/2 s) by up to one window, which matters at small N.")
    print(f"† the syncs and the rerun run {RERUN_AFTER_SECONDS // 60} minutes after the load by the fake Customermates' clock (advanced,")
    print("  not waited for): a sync reads back the records changed there since the last read began, less five minutes.")
    print("Minimum requests/tokens: every collection in pages of 500 (one request when empty); deal products in")
    print("requests of 100 deal ids for the non-deleted deals that have products.")
    if any(r["size"] >= 1_000_000 for r in results):
        print("N >= 1,000,000: the extract figures measure the fake's in-memory serving of a 1M-record snapshot,")
        print("not a real Pipedrive; they bound the tool's own overhead, not the real API's latency.")


if __name__ == "__main__":
    main()
