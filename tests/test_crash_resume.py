"""Exactly-once under SIGKILL: kill `migrate run` at random instants (some between a batch's
effect and its commit), resume, and compare field by field with an uninterrupted migration."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.crash_harness import (
    CrashTally,
    compare,
    crash_scenario,
    migrate_env,
    reference_run,
    run_migrate,
    snapshot,
)
from tests.fakes.customermates import FakeCustomermates
from tests.fakes.pipedrive import FakePipedrive

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pipedrive"
CHANGED_AT = "2026-11-28T12:00:00Z"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(SAMPLE, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("seed", [1, 2, 3])  # benchmarks/crash_resume.py kills 200 times
def test_killed_runs_resume_to_the_same_target_without_duplicates(reference, tmp_path, seed):
    target, seconds = reference
    tally = CrashTally()
    crash_scenario(SAMPLE, tmp_path, kills=4, seed=seed, reference=target, clean_seconds=seconds, tally=tally)
    assert tally.kills + tally.finished_before_kill == 4
    assert tally.kills >= 1
    assert (tally.duplicates, tally.missing, tally.extra, tally.different) == (0, 0, 0, 0), tally.examples[:10]


@pytest.mark.parametrize("seed", [1, 2])
def test_killed_syncs_after_edits_converge_to_a_fresh_migration(tmp_path, seed):
    """After a complete run, a fifth of the persons and deals change in Pipedrive; `migrate sync`
    (which reads and rebuilds only what changed) is killed at random instants, then finishes.
    The target must equal a fresh migration of the changed account, with no duplicate."""
    rng = random.Random(seed)
    with FakePipedrive(SAMPLE, burst_limit=10_000) as pipedrive, FakeCustomermates(latency_per_item=0.002) as cm:
        env = migrate_env(pipedrive, cm, tmp_path / "state.duckdb")
        run_migrate(env)
        for person in rng.sample([p for p in pipedrive.collections["persons"] if not p.get("is_deleted")], 25):
            person["first_name"] = f"{person.get('first_name') or 'X'}-s{seed}"
            person["name"], person["update_time"] = f"{person['first_name']} {person.get('last_name') or ''}".strip(), CHANGED_AT
        for deal in rng.sample([d for d in pipedrive.collections["deals"] if d.get("status") == "open"], 10):
            deal["title"], deal["update_time"] = f"{deal['title']} (s{seed})", CHANGED_AT
        kills = 0
        for _ in range(3):
            if rng.random() < 0.5:
                cm.stall_next(5.0, count=1)  # a kill now may land between a write's effect and its commit
            kills += run_migrate(env, kill_after=rng.uniform(0.5, 2.5), command="sync") is None
        run_migrate(env, command="sync")
        with FakeCustomermates(latency_per_item=0.002) as fresh:
            run_migrate(migrate_env(pipedrive, fresh, tmp_path / "fresh.duckdb"))
            tally = CrashTally()
            compare(snapshot(fresh), snapshot(cm), tally)
    assert kills >= 1
    assert (tally.duplicates, tally.missing, tally.extra, tally.different) == (0, 0, 0, 0), tally.examples[:10]


def test_a_batch_is_recorded_whole_or_not_at_all_id_map_rows_and_written_payloads_together(tmp_path: Path):
    """The id map and the payloads last written (the plan's 'written' state) change in one
    transaction: when the second part fails, the first is rolled back and the batch stays pending,
    so the next run settles it from the target."""
    from migrate.staging.store import Staging

    with Staging(tmp_path / "state.duckdb") as staging:
        run_id = staging.start_run("run")
        batch = staging.record_pending("contacts", "create", ["1", "2"], ["h1", "h2"], run_id)
        written = [("1", "t-1", "h1"), ("2", "t-2", "h2")]
        with pytest.raises(TypeError):
            staging.commit_batch(batch, "contacts", written, run_id, [("1", {"name": "A"}), ("2", {"bad": {1, 2}})])
        assert staging.id_map_for("contacts", ["1", "2"]) == {}
        assert staging.written_for("contacts", ["1", "2"]) == {}
        assert [b["batch_id"] for b in staging.pending_batches()] == [batch]

        staging.commit_batch(batch, "contacts", written, run_id, [("1", {"name": "A"}), ("2", {"name": "B"})])
        assert {sid: row[0] for sid, row in staging.id_map_for("contacts", ["1", "2"]).items()} == {"1": "t-1", "2": "t-2"}
        assert staging.written_for("contacts", ["1", "2"]) == {"1": {"name": "A"}, "2": {"name": "B"}}
        assert staging.pending_batches() == []
