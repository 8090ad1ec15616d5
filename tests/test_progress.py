"""Progress bars: one task per extracted collection and loaded entity, totals from the plan, and
one for the records transformed."""

from __future__ import annotations

from migrate.config import Settings
from migrate.pipeline import run_migration
from migrate.progress import ProgressDisplay
from tests.fakes.customermates import VALID_KEY
from tests.fakes.pipedrive import VALID_TOKEN


def test_progress_counts_every_extracted_transformed_and_loaded_record(pipedrive, customermates, tmp_path):
    settings = Settings(
        pipedrive_api_token=VALID_TOKEN, pipedrive_base_url=pipedrive.url, customermates_url=customermates.url,
        customermates_api_key=VALID_KEY, state=tmp_path / "s.duckdb", pipedrive_burst_limit=1000,
    )
    with ProgressDisplay(enabled=False) as progress:
        report = run_migration(settings, progress=progress)
    tasks = {t.description: t for t in progress._bars.tasks}
    assert tasks["extract persons"].completed == len(pipedrive.collections["persons"])
    made = report["transform"]["records_made"]
    assert made > 0 and tasks["transform records"].total == tasks["transform records"].completed == made
    for entity, row in report["entities"].items():
        task = tasks[f"load {entity}"]
        assert task.total == row["to_migrate"] == task.completed


def test_a_rerun_shows_tokens_spent_against_the_estimate_and_the_budget_left(pipedrive, customermates, tmp_path):
    settings = Settings(
        pipedrive_api_token=VALID_TOKEN, pipedrive_base_url=pipedrive.url, customermates_url=customermates.url,
        customermates_api_key=VALID_KEY, state=tmp_path / "s.duckdb", pipedrive_burst_limit=1000,
    )
    pipedrive.daily_token_budget = 50_000
    run_migration(settings)
    with ProgressDisplay(enabled=False) as progress:
        report = run_migration(settings, progress=progress)
    task = next(t for t in progress._bars.tasks if t.description == "pipedrive tokens")
    assert task.total == report["pipedrive"]["tokens_estimated"] == task.completed
    assert task.fields["rate"] == f"{50_000 - pipedrive.tokens_spent:,} left today"


def test_a_task_that_does_more_than_expected_grows_its_total_instead_of_running_past_it():
    with ProgressDisplay(enabled=False) as progress:
        progress.expect("load contacts", 10)
        progress("load contacts", 8)
        progress("load contacts", 4)
    [task] = progress._bars.tasks
    assert (task.completed, task.total) == (12, 12)
