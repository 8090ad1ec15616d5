"""plan.html: a self-contained page, checked as text and in a real browser (Debian's Chromium via Playwright).

The browser tests open the file with file:// and check what a person sees: tabs and their counts, the chart,
search, the action filter, the expandable diffs, and that the page neither logs an error nor fetches anything.
"""

from __future__ import annotations

import copy
import io
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from migrate.cli import cli
from migrate.report.plan import ACTIONS, ListedRecords
from migrate.report.plan_html import write_plan_html
from migrate.report.plan_output import write_plan
from tests.fakes.customermates import VALID_KEY
from tests.test_end_to_end import by_pipedrive_id

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
NASTY_FIRST = '<script>alert("pwned")</script> &amp; Zoë'
NASTY_LAST = "O'Brien \"😀\" שלום"
NASTY_NAME = f"{NASTY_FIRST} {NASTY_LAST}"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium; .ci/run installs it)"
)


def invoke(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def num(n: int) -> str:
    return f"{n:,}"


# -- a real plan ------------------------------------------------------------------------------


@pytest.fixture
def edited_plan(env, pipedrive, customermates, tmp_path) -> dict[str, Any]:
    """Migrate, then edit both sides so the plan holds every action: a source-only edit (update), an edit on
    both sides (conflict), a target-only edit (unchanged, edit kept), a new person with a hostile name (create),
    a contact deleted in Customermates and the sample's persons deleted in Pipedrive (skip)."""
    assert invoke(env, "run").exit_code == 0
    persons = [p for p in pipedrive.collections["persons"] if not p.get("is_deleted") and p.get("first_name")]
    source_only, target_only, both, deleted = persons[20], persons[21], persons[22], persons[23]
    for person in (source_only, both):
        person["first_name"] += "-Src"
        person["name"] = f"{person['first_name']} {person.get('last_name') or ''}".strip()
    newcomer = copy.deepcopy(persons[24])
    newcomer.update(
        id=max(p["id"] for p in pipedrive.collections["persons"]) + 1,
        first_name=NASTY_FIRST, last_name=NASTY_LAST, name=NASTY_NAME,
        emails=[{"value": "newcomer@example.com", "primary": True, "label": "work"}],
    )
    pipedrive.collections["persons"].append(newcomer)
    contacts = by_pipedrive_id(customermates, "contacts")
    for person in (target_only, both):
        response = httpx.put(
            f"{customermates.url}/api/v1/contacts/many",
            json={"contacts": [{"id": contacts[str(person["id"])][0]["id"], "lastName": "Edited-In-Target"}]},
            headers={"x-api-key": VALID_KEY},
        )
        assert response.status_code == 200, response.text
    response = httpx.request(
        "DELETE", f"{customermates.url}/api/v1/contacts/many",
        json={"ids": [contacts[str(deleted["id"])][0]["id"]]}, headers={"x-api-key": VALID_KEY},
    )
    assert response.status_code == 200, response.text
    result = invoke(env, "plan", "--report-dir", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text(encoding="utf-8"))
    ids = {"update": str(source_only["id"]), "conflict": str(both["id"]), "kept": str(target_only["id"]),
           "create": str(newcomer["id"]), "deleted": str(deleted["id"])}
    contacts_by_id = {r["source_id"]: r for r in plan["records"]["contacts"]}
    assert contacts_by_id[ids["update"]]["action"] == "update"
    assert contacts_by_id[ids["conflict"]]["action"] == "conflict"
    assert contacts_by_id[ids["create"]]["action"] == "create"
    assert contacts_by_id[ids["deleted"]]["action"] == "skip"
    return {"plan": plan, "path": tmp_path / "p" / "plan.html", "ids": ids, "persons": {"update": source_only, "conflict": both}}


# -- the browser -------------------------------------------------------------------------------


class Page:
    """A Playwright page that records console errors, page errors, dialogs and every request."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs
        assert self.requests, "the page load itself was not recorded"
        assert all(u.startswith(("file://", "data:")) for u in self.requests), self.requests


@pytest.fixture
def browser_page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            yield Page(context.new_page())
        finally:
            browser.close()


def shown_ids(page) -> list[str]:
    return page.locator("#rows tr").evaluate_all("rows => rows.map(r => r.getAttribute('data-id'))")


def set_actions(page, *actions: str) -> None:
    page.click("#no-actions")
    for action in actions:
        page.check(f'#action-filter input[value="{action}"]')


@needs_chromium
def test_plan_html_in_a_real_browser(edited_plan, browser_page, tmp_path):
    from playwright.sync_api import expect

    plan, ids, p = edited_plan["plan"], edited_plan["ids"], browser_page
    page = p.page
    page.goto(edited_plan["path"].as_uri())
    expect(page.locator("h1")).to_have_text("Migration plan")

    # header: time, fingerprints, totals per action
    header = page.locator("#summary").inner_text()
    assert plan["generated_at"] in header
    assert plan["fingerprints"]["source"] in header and plan["fingerprints"]["target"] in header
    for action in ACTIONS:
        total = sum(counts[action] for counts in plan["summary"].values())
        expect(page.locator(f'#totals .card[data-action="{action}"] .card-n')).to_have_text(num(total))

    # the chart: one bar row per entity, coloured segments, a legend with all five actions
    chart = page.locator("#chart")
    expect(chart).to_be_visible()
    assert chart.bounding_box()["width"] > 300
    expect(page.locator("#chart .chart-row")).to_have_count(len(plan["summary"]))
    assert page.locator('#chart rect[data-action="create"]').count() > 0
    expect(page.locator("#legend li")).to_have_text(list(ACTIONS))

    # tabs: each shows its record count; switching shows that entity's rows
    for entity, records in plan["records"].items():
        expect(page.locator(f'.tab[data-entity="{entity}"] .count')).to_have_text(num(len(records)))
    for entity in ("organizations", "contacts", "services", "deals", "tasks"):
        records = plan["records"][entity]
        page.click(f'.tab[data-entity="{entity}"]')
        expect(page.locator(f'.tab[data-entity="{entity}"]')).to_have_attribute("aria-selected", "true")
        expect(page.locator("#rows tr")).to_have_count(min(200, len(records)))
        expect(page.locator("#status")).to_contain_text(f"of {num(len(records))} {entity}")
        assert set(shown_ids(page)) <= {r["source_id"] for r in records}

    page.click('.tab[data-entity="contacts"]')
    contacts = plan["records"]["contacts"]
    counts = plan["summary"]["contacts"]
    assert shown_ids(page)[: counts["conflict"]] == [ids["conflict"]]  # what needs a decision comes first

    # search by name: only matching rows remain; the hostile name is text, not markup
    person = edited_plan["persons"]["update"]
    page.fill("#search", person["name"].lower())
    expect(page.locator("#rows tr")).to_have_count(1)
    assert shown_ids(page) == [ids["update"]]
    expect(page.locator('.tab[data-entity="contacts"] .count')).to_have_text(f"1 / {num(len(contacts))}")
    page.fill("#search", "<script>")
    expect(page.locator("#rows tr")).to_have_count(1)
    assert shown_ids(page) == [ids["create"]]
    expect(page.locator("#rows tr td.name bdi")).to_have_text(NASTY_NAME)
    assert page.locator("#rows script").count() == 0
    page.fill("#search", ids["kept"])  # by Pipedrive id
    assert ids["kept"] in shown_ids(page)
    assert all(ids["kept"] in json.dumps(r, ensure_ascii=False) for r in contacts if r["source_id"] in shown_ids(page))
    page.fill("#search", "Edited-In-Target")  # by field text: the conflict's diff and the kept edit
    expect(page.locator("#rows tr")).to_have_count(2)
    assert set(shown_ids(page)) == {ids["conflict"], ids["kept"]}

    # search and action filter together
    set_actions(page, "conflict")
    assert shown_ids(page) == [ids["conflict"]]
    page.fill("#search", "")
    conflicts = [r["source_id"] for r in contacts if r["action"] == "conflict"]
    expect(page.locator("#rows tr")).to_have_count(len(conflicts))
    assert shown_ids(page) == conflicts
    expect(page.locator('.tab[data-entity="contacts"] .count')).to_have_text(f"{len(conflicts)} / {num(len(contacts))}")
    for entity, records in plan["records"].items():  # the other tabs count their conflicts too
        expected = sum(r["action"] == "conflict" for r in records)
        expect(page.locator(f'.tab[data-entity="{entity}"] .count')).to_have_text(f"{expected} / {num(len(records))}")

    # a conflict expands to the diff and to the target's own edits
    row = page.locator(f'#rows tr[data-id="{ids["conflict"]}"]')
    expect(row.locator("ul.diff").first).to_be_hidden()
    row.locator("summary").click()
    expect(row.locator(".edits")).to_be_visible()
    conflict_person = edited_plan["persons"]["conflict"]
    expect(row.locator(".edits")).to_contain_text(f"lastName: {conflict_person.get('last_name') or '∅'} → Edited-In-Target")

    # an update expands to "field: before → after"
    set_actions(page, "update")
    row = page.locator(f'#rows tr[data-id="{ids["update"]}"]')
    expect(row).to_have_count(1)
    row.locator("summary").click()
    before = person["first_name"][: -len("-Src")]
    expect(row.locator("ul.diff")).to_be_visible()
    expect(row.locator("ul.diff")).to_have_text(f"firstName: {before} → {person['first_name']}")

    # skips show their reason
    set_actions(page, "skip")
    skipped = [r for r in contacts if r["action"] == "skip"]
    expect(page.locator("#rows tr")).to_have_count(len(skipped))
    expect(page.locator(f'#rows tr[data-id="{ids["deleted"]}"] .reason')).to_have_text("deleted in Customermates after it was migrated")
    assert page.locator('#rows .reason:text-is("deleted in Pipedrive")').count() == sum(r.get("reason") == "deleted in Pipedrive" for r in skipped)

    # a create is one row: the new record is the source's (no per-field list, to keep plans small)
    set_actions(page, "create")
    row = page.locator(f'#rows tr[data-id="{ids["create"]}"]')
    expect(row).to_contain_text(NASTY_LAST)
    assert row.locator("details").count() == 0

    page.click("#all-actions")
    expect(page.locator("#rows tr")).to_have_count(min(200, len(contacts)))
    page.screenshot(path=str(tmp_path / "plan-contacts.png"), full_page=True)
    p.assert_clean()


@needs_chromium
def test_plan_html_against_an_empty_target_lists_schema_lossy_values_and_coverage(env, browser_page, tmp_path):
    from playwright.sync_api import expect

    assert invoke(env, "plan", "--report-dir", str(tmp_path / "p")).exit_code == 0
    plan = json.loads((tmp_path / "p" / "plan.json").read_text(encoding="utf-8"))
    page = browser_page.page
    page.goto((tmp_path / "p" / "plan.html").as_uri())
    for entity, records in plan["records"].items():
        expect(page.locator(f'.tab[data-entity="{entity}"] .count')).to_have_text(num(len(records)))
    expect(page.locator('#totals .card[data-action="create"] .card-n')).to_have_text(num(sum(c["create"] for c in plan["summary"].values())))

    columns = plan["schema"]["columns_to_create"]
    assert columns
    expect(page.locator("#schema-columns li")).to_have_count(len(columns))
    expect(page.locator("#schema")).to_contain_text("Pipedrive ID (")

    rows = page.locator("table.lossy tbody tr")
    expect(rows).to_have_count(len(plan["lossy"]))
    for n, (rule, info) in enumerate(plan["lossy"].items()):
        expect(rows.nth(n).locator("td").nth(0)).to_have_text(rule)
        expect(rows.nth(n).locator("td").nth(1)).to_have_text(num(info["count"]))
        expect(rows.nth(n).locator("li")).to_have_count(len(info["examples"]))

    if plan.get("coverage"):
        table = page.locator("#coverage table")
        expect(table.locator("tbody tr")).to_have_count(len(plan["coverage"]))
        expect(table.locator("thead th")).to_have_text(list(dict.fromkeys(k for r in plan["coverage"] for k in r)))
    browser_page.assert_clean()


def synthetic_plan(records_per_entity: int, *, coverage: Any = None) -> dict[str, Any]:
    records: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, dict[str, int]] = {}
    for entity in ("organizations", "contacts", "services", "deals", "tasks"):
        rows = []
        for n in range(records_per_entity):
            action = ACTIONS[n % len(ACTIONS)]
            row: dict[str, Any] = {"source_id": str(n), "name": f"{entity[:-1]} {n}", "action": action, "changes": []}
            if action in ("update", "conflict"):
                row["changes"] = [{"field": "name", "before": f"old {n}", "after": f"{entity[:-1]} {n}"}]
            if action == "skip":
                row["reason"] = "deleted in Pipedrive"
            rows.append(row)
        records[entity] = rows
        summary[entity] = {a: sum(r["action"] == a for r in rows) for a in ACTIONS}
    plan = {
        "summary": summary, "version": 1, "generated_at": "2025-01-01T00:00:00+00:00",
        "fingerprints": {"source": "s" * 32, "target": "t" * 32},
        "schema": {"columns_to_create": [], "columns_to_rename": [], "options_to_add": [], "options_to_rename": []}, "lossy": {}, "records": records,
    }
    if coverage is not None:
        plan["coverage"] = coverage
    return plan


def html_of(plan: dict[str, Any]) -> str:
    out = io.StringIO()
    write_plan_html(out, plan, ListedRecords(plan["records"]))
    return out.getvalue()


@needs_chromium
def test_plan_html_pages_and_stays_fast_with_100k_records(browser_page, tmp_path):
    from playwright.sync_api import expect

    plan = synthetic_plan(20_000)
    path = tmp_path / "plan.html"
    path.write_text(html_of(plan), encoding="utf-8")
    page = browser_page.page
    page.goto(path.as_uri())
    expect(page.locator("#rows tr")).to_have_count(200, timeout=10_000)
    expect(page.locator("#page")).to_have_text("page 1 of 100")
    page.click("#next")
    expect(page.locator("#page")).to_have_text("page 2 of 100")
    assert shown_ids(page)[0] != "0"
    assert page.evaluate("performance.now()") < 10_000  # parsed and drawn well within the time to read the header
    page.fill("#search", "organization 1999")
    expect(page.locator("#rows tr")).to_have_count(11)  # 1999 and 19990 … 19999
    expect(page.locator("#page")).to_have_text("page 1 of 1")
    browser_page.assert_clean()


# -- the file itself ----------------------------------------------------------------------------


def test_the_page_is_self_contained_and_escapes_everything():
    plan = synthetic_plan(5)
    hostile = '</script><script>alert(1)</script><!-- & "quotes" \'single\' 😀 مرحبا'
    plan["records"]["contacts"][1].update(name=hostile, changes=[{"field": "notes<b>", "before": hostile, "after": None}])
    plan["schema"] = {
        "columns_to_create": [f"contacts: {hostile} (plain)"], "options_to_add": ["deals: Stage → <img src=x>"],
        "options_to_rename": ["contacts: Anrede: <img src=y> → Mister"], "columns_to_rename": ["contacts: <img src=z> → Salutation"],
    }
    plan["lossy"] = {"email_invalid": {"count": 1, "examples": [{"entity": "contacts", "source_id": "1", "field": "emails", "detail": hostile}]}}
    page = html_of(plan)
    assert page.count("<script") == 2  # the data block and the code, nothing from the plan
    assert "<img" not in page and "alert(1)</script>" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page  # schema and lossy, escaped
    assert "Options to rename" in page and "Anrede: &lt;img src=y&gt; → Mister" in page
    assert "Columns to rename" in page and "&lt;img src=z&gt; → Salutation" in page
    data = re.search(r'<script type="application/json" id="plan-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    rows = json.loads(data)["records"]["contacts"]
    assert [r[1] for r in rows if r[2] == "1"] == [hostile]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page


def test_coverage_is_a_table_when_present_and_absent_otherwise():
    assert 'id="coverage"' not in html_of(synthetic_plan(1))
    rows = [{"entity": "contacts", "pipedrive_field": "Email", "goes_to": "emails", "fields": 3}, {"entity": "deals", "extra": "<x>"}]
    page = html_of(synthetic_plan(1, coverage=rows))
    section = page[page.index('id="coverage"'):]
    assert re.findall(r"<th>([^<]*)</th>", section[: section.index("</thead>")]) == ["entity", "pipedrive_field", "goes_to", "fields", "extra"]
    assert "&lt;x&gt;" in section and section.count("<tr>") == 3


def test_write_plan_writes_plan_html_private(tmp_path):
    paths = write_plan(plan := synthetic_plan(3), ListedRecords(plan["records"]), tmp_path / "out")
    assert [p.name for p in paths] == ["plan.json", "plan.md", "plan.html"]
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (tmp_path / "out" / "plan.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_plan_spooled_in_the_state_file_writes_the_same_files_as_one_held_in_memory(tmp_path):
    from migrate.report.plan import SpooledRecords
    from migrate.staging.store import Staging

    plan = synthetic_plan(40)
    plan["records"]["contacts"][3]["name"] = '</script> "Zoë" & <b>'
    held = write_plan(plan, ListedRecords(plan["records"]), tmp_path / "held")
    header = {k: v for k, v in plan.items() if k != "records"}
    with Staging(tmp_path / "state.duckdb") as staging:
        staging.add_plan_records(
            [(e, n, r["action"], json.dumps(r)) for n, (e, r) in enumerate((e, r) for e, rs in plan["records"].items() for r in rs)]
        )
        spooled = write_plan(header, SpooledRecords(staging), tmp_path / "spooled")
    for a, b in zip(held, spooled, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert json.loads(held[0].read_text(encoding="utf-8")) == plan  # plan.json, written record by record, is the plan
