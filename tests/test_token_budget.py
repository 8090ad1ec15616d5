"""Pipedrive tokens: estimated before an extract, watched while it runs, reported after (contract §4)."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from migrate.cli import cli
from migrate.pipedrive.budget import estimate_from_staging, extract_cost
from migrate.pipedrive.client import PipedriveClient
from migrate.pipedrive.collections import COLLECTIONS, DEAL_PRODUCTS, PAGE_LIMIT
from migrate.pipedrive.extract import extract
from migrate.staging.store import Staging
from tests.fakes.pipedrive import VALID_TOKEN


def invoke(env, *args):
    return CliRunner().invoke(cli, list(args), env={**env, "COLUMNS": "400"}, catch_exceptions=False)  # one line per check


def run_report(env, tmp_path, name):
    result = invoke(env, "run", "--report-dir", str(tmp_path / name))
    assert result.exit_code == 0, result.output
    return result.output, json.loads((tmp_path / name / "report.json").read_text(encoding="utf-8"))


def test_the_report_counts_the_requests_and_tokens_the_api_charged(env, pipedrive, tmp_path):
    pipedrive.daily_token_budget = 30_000
    output, report = run_report(env, tmp_path, "first")
    usage = report["pipedrive"]
    assert usage["requests"] == len(pipedrive.requests)
    assert usage["tokens_spent"] == pipedrive.tokens_spent
    assert usage["budget_remaining"] == 30_000 - pipedrive.tokens_spent
    assert usage["tokens_estimated"] is None  # a first run spends nothing on estimating
    assert f"{usage['tokens_spent']:,} tokens; {usage['budget_remaining']:,} tokens left today" in output


def test_the_report_says_when_another_client_used_the_same_api_token(env, pipedrive, tmp_path):
    """The burst limit is per token: the run leaves another integration its places, and says so."""
    pipedrive.shared_rate = 300  # of the fake's 1,000 requests per 2 s
    output, report = run_report(env, tmp_path, "shared")
    usage = report["pipedrive"]
    assert usage["shared_token_requests"] > 0 and usage["burst_limit"] == 1000
    assert pipedrive.count_429 == 0
    assert f"another client on this API token used up to {usage['shared_token_requests']:,} of its 1,000 requests per 2 s" in output
    pipedrive.shared_rate = 0
    pipedrive.reset_limits()
    _, alone = run_report(env, tmp_path, "alone")
    assert alone["pipedrive"]["shared_token_requests"] == 0


def test_the_estimate_from_the_previous_extract_is_what_the_next_one_costs(env, pipedrive, tmp_path):
    run_report(env, tmp_path, "first")
    spent_before = pipedrive.tokens_spent
    output, report = run_report(env, tmp_path, "second")
    usage = report["pipedrive"]
    assert usage["tokens_estimated"] == pipedrive.tokens_spent - spent_before - 2  # users/me is the preflight's
    assert usage["estimate_basis"] == "sizes of the previous extract"
    assert f"(estimated {usage['tokens_estimated']:,} from the previous extract)" in output


def test_the_estimate_counts_as_many_requests_for_a_paged_user_list_as_the_previous_extract_took(pipedrive, tmp_path):
    pipedrive.paginate_unpaged = {"users": 2, "currencies": 5}  # contract §3: /v1/users may be paginated after all
    with PipedriveClient(pipedrive.url, VALID_TOKEN) as client:
        with Staging(tmp_path / "s.duckdb") as staging:
            extract(staging, client, "first")
        with Staging(tmp_path / "s.duckdb") as staging:  # as the next run opens it
            estimate = estimate_from_staging(staging)
            requests_before, spent_before = len(pipedrive.requests), pipedrive.tokens_spent
            extract(staging, client, "second")
    assert estimate.requests == len(pipedrive.requests) - requests_before
    assert estimate.tokens == pipedrive.tokens_spent - spent_before


def test_extract_cost_counts_pages_of_500_one_request_per_unpaged_list_and_deal_products_per_100_deals():
    counts = {"persons": 1_001, "deals": 250, "notes": 0}
    requests, tokens = extract_cost(counts, deals_with_products=201)
    pages = {c.name: 1 if c.paging == "none" else max(1, math.ceil(counts.get(c.name, 0) / PAGE_LIMIT)) for c in COLLECTIONS}
    assert pages["persons"] == 3 and pages["notes"] == 1
    assert requests == sum(pages.values()) + 3
    assert tokens == sum(pages[c.name] * c.cost for c in COLLECTIONS) + 3 * DEAL_PRODUCTS.cost


def test_doctor_bounds_a_first_extract_from_the_highest_ids_and_warns_when_the_budget_is_short(env, pipedrive):
    pipedrive.daily_token_budget = 300
    result = invoke(env, "doctor")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "Pipedrive budget" in line)
    assert line.startswith("WARN Pipedrive budget: estimated Pipedrive cost:")
    assert "(upper bound from the highest ids)" in line and "NOT ENOUGH" in line
    estimated = int(line.split("estimated Pipedrive cost: ")[1].split(" tokens")[0].replace(",", ""))

    pipedrive.daily_token_budget = None
    spent_before = pipedrive.tokens_spent
    assert invoke(env, "extract").exit_code == 0
    assert pipedrive.tokens_spent - spent_before - 2 <= estimated  # an upper bound indeed


def test_doctor_sizes_from_the_state_file_once_there_is_one(env, pipedrive):
    pipedrive.daily_token_budget = 100_000
    assert invoke(env, "extract").exit_code == 0
    probes_before = len(pipedrive.requests)
    result = invoke(env, "doctor")
    assert "ok   Pipedrive budget: estimated Pipedrive cost:" in result.output
    assert "(sizes of the previous extract); budget left today:" in result.output
    assert len(pipedrive.requests) - probes_before == 1  # users/me only: no probes
