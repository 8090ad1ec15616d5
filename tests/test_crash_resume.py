"""Exactly-once under SIGKILL: kill `migrate run` at random instants (some between a batch's
effect and its commit), resume, and compare field by field with an uninterrupted migration."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash_harness import CrashTally, crash_scenario, reference_run

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "pipedrive"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(SAMPLE, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_killed_runs_resume_to_the_same_target_without_duplicates(reference, tmp_path, seed):
    target, seconds = reference
    tally = CrashTally()
    crash_scenario(SAMPLE, tmp_path, kills=4, seed=seed, reference=target, clean_seconds=seconds, tally=tally)
    assert tally.kills + tally.finished_before_kill == 4
    assert tally.kills >= 1
    assert (tally.duplicates, tally.missing, tally.extra, tally.different) == (0, 0, 0, 0), tally.examples[:10]
