"""Kill `migrate run` with SIGKILL at random instants, resume, and compare with a clean run.

Used by tests/test_crash_resume.py (a handful of kill points) and benchmarks/crash_resume.py
(hundreds, with a printed tally). The fakes run in this process; `migrate` runs as a child
process that is killed, so everything it knows must come from its state file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.customermates import VALID_KEY, FakeCustomermates
from tests.fakes.pipedrive import VALID_TOKEN, FakePipedrive

ROOT = Path(__file__).resolve().parents[1]
ENTITIES = ("organizations", "contacts", "services", "deals", "tasks")
SINGULAR = {"contacts": "contact", "organizations": "organization", "deals": "deal", "services": "service", "tasks": "task"}
RELATIONS = {"organizations": "organizations", "contacts": "contacts", "deals": "deals", "services": "services", "tasks": "tasks"}


def fakes_env(pipedrive: FakePipedrive, customermates: FakeCustomermates, state: Path) -> dict[str, str]:
    """The settings that point `migrate` at both fakes and a state file (for `CliRunner`, in process)."""
    return {
        "PIPEDRIVE_API_TOKEN": VALID_TOKEN,
        "PIPEDRIVE_BASE_URL": pipedrive.url,
        "CUSTOMERMATES_URL": customermates.url,
        "CUSTOMERMATES_API_KEY": VALID_KEY,
        "MIGRATE_STATE": str(state),
    }


def migrate_env(pipedrive: FakePipedrive, customermates: FakeCustomermates, state: Path) -> dict[str, str]:
    """`fakes_env` for `migrate` run as a child process: with what it needs to start."""
    return {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR")},
        "PYTHONPATH": str(ROOT),
        **fakes_env(pipedrive, customermates, state),
    }


def run_migrate(env: dict[str, str], kill_after: float | None = None, timeout: float = 300, command: str = "run") -> int | None:
    """Run `migrate run` (or `command`); with `kill_after`, SIGKILL it after that many seconds.
    Returns the exit code, or None when it was killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "migrate", command, "--log-format", "json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    try:
        proc.wait(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        return None
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise AssertionError(f"migrate {command} exited {proc.returncode}: {stderr[-2000:]}")
    return proc.returncode


def snapshot(customermates: FakeCustomermates) -> dict[str, dict[str, Any]]:
    """The target's content keyed by Pipedrive ID, with Customermates ids replaced by Pipedrive
    ids so that two independent migrations can be compared field by field. Duplicated Pipedrive
    IDs are kept as lists so a comparison sees them."""
    columns = {c["id"]: c for c in customermates.columns()}
    pid_of: dict[str, str] = {}
    for entity in ENTITIES:
        for record in customermates.records(entity):
            pid = _pipedrive_id(record, columns)
            pid_of[record["id"]] = f"{entity}:{pid}"
    result: dict[str, dict[str, Any]] = {}
    for entity in ENTITIES:
        rows: dict[str, Any] = {}
        for record in customermates.records(entity):
            pid = _pipedrive_id(record, columns)
            values = values_by_label(record, columns)
            normal = {
                key: record[key] for key in ("name", "firstName", "lastName", "emails", "amount", "notes") if key in record
            }
            normal["values"] = values
            for relation in ("organizations", "contacts", "deals", "services"):
                if relation in record and relation != entity:
                    normal[relation] = sorted(pid_of[r["id"]] for r in record[relation])
            if entity == "deals":
                normal["quantities"] = sorted((pid_of[s["id"]], s.get("quantity")) for s in record.get("services") or [])
            rows.setdefault(pid, []).append(normal)
        result[entity] = rows
    return result


def values_by_label(record: dict[str, Any], columns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A target record's custom values by column label, single selects as their option label."""
    values = {}
    for cell in record["customFieldValues"]:
        column = columns[cell["columnId"]]
        value = cell["value"]
        if column["type"] == "singleSelect":
            value = next(o["label"] for o in column["options"]["options"] if o["value"] == value)
        values[column["label"]] = value
    return values


def _pipedrive_id(record: dict[str, Any], columns: dict[str, dict[str, Any]]) -> str | None:
    return next(
        (c["value"] for c in record["customFieldValues"] if columns[c["columnId"]]["label"] == "Pipedrive ID"), None
    )


@dataclass
class CrashTally:
    kills: int = 0
    runs: int = 0
    finished_before_kill: int = 0
    duplicates: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    examples: list[str] = field(default_factory=list)


def compare(reference: dict[str, dict[str, Any]], target: dict[str, dict[str, Any]], tally: CrashTally) -> None:
    for entity in ENTITIES:
        want, got = reference[entity], target[entity]
        for pid, rows in got.items():
            if len(rows) > 1:
                tally.duplicates += len(rows) - 1
                tally.examples.append(f"{entity} {pid}: {len(rows)} copies")
        for pid in want.keys() - got.keys():
            tally.missing += 1
            tally.examples.append(f"{entity} {pid}: missing")
        tally.extra += len(got.keys() - want.keys())
        for pid in want.keys() & got.keys():
            if json.dumps(want[pid][0], sort_keys=True, default=str) != json.dumps(got[pid][0], sort_keys=True, default=str):
                tally.different += 1
                tally.examples.append(f"{entity} {pid}: content differs")


def crash_scenario(
    snapshot_dir: Path,
    workdir: Path,
    *,
    kills: int,
    seed: int,
    reference: dict[str, dict[str, Any]],
    clean_seconds: float,
    tally: CrashTally,
) -> None:
    """One migration started `kills` times and killed at a random instant each time (a run that
    finishes first counts as such; the next start is then a rerun, itself a kill target), then
    run to completion."""
    rng = random.Random(seed)
    state = workdir / f"crash-{seed}.duckdb"
    with FakePipedrive(snapshot_dir, burst_limit=10_000) as pipedrive, FakeCustomermates(latency_per_item=0.002) as cm:
        env = migrate_env(pipedrive, cm, state)
        for _ in range(kills):
            if rng.random() < 0.5:
                # apply the next write, then hold the answer: a kill now lands between effect and commit
                cm.stall_next(5.0, count=1)
            code = run_migrate(env, kill_after=rng.uniform(0.2, 0.9 * clean_seconds))
            tally.runs += 1
            if code is None:
                tally.kills += 1
            else:
                tally.finished_before_kill += 1
        code = run_migrate(env)
        tally.runs += 1
        compare(reference, snapshot(cm), tally)


def reference_run(snapshot_dir: Path, workdir: Path) -> tuple[dict[str, dict[str, Any]], float]:
    with FakePipedrive(snapshot_dir, burst_limit=10_000) as pipedrive, FakeCustomermates(latency_per_item=0.002) as cm:
        started = time.monotonic()
        run_migrate(migrate_env(pipedrive, cm, workdir / "reference.duckdb"))
        return snapshot(cm), time.monotonic() - started
