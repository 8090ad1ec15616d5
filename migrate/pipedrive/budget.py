"""What a full extract costs in Pipedrive API tokens (contract §4), known before it runs.

The daily budget (30,000 × plan multiplier × seats) is shared with every other integration of
the company, and running out stops the extract until midnight, server time. So a run says up
front what it will spend, against what Pipedrive says is left today.

Pipedrive has no cheap count endpoint (the v1 `/summary` lists are gone), so the sizes come
from the previous extract in the state file when there is one. Before a first extract,
`migrate doctor` (asked, never a run: a run spends no tokens on estimating) sends one `limit=1`
request per growing collection, sorted by id descending: the highest id bounds the count from
above (ids count from 1 per company, deleted records' ids count too; the contract is silent on id
allocation, so this is an upper bound, labelled as such). Lead ids are UUIDs and cannot be
bounded that way: leads are counted as one page each until staged once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from migrate.pipedrive.client import PipedriveClient, PipedriveError
from migrate.pipedrive.collections import COLLECTIONS, DEAL_IDS_PER_REQUEST, DEAL_PRODUCTS, NOT_ON_THIS_ACCOUNT, PAGE_LIMIT, Collection
from migrate.staging.store import Staging

UNBOUNDED = frozenset({"leads", "leads_archived"})  # UUID ids: no highest id to read


@dataclass(frozen=True)
class CostEstimate:
    requests: int
    tokens: int
    basis: str  # where the collection sizes came from
    probe_tokens: int = 0  # spent finding the sizes out (already spent, not part of `tokens`)

    def describe(self, remaining: int | None) -> str:
        text = f"estimated Pipedrive cost: {self.tokens:,} tokens in {self.requests:,} requests ({self.basis})"
        if self.probe_tokens:
            text += f"; sizing it cost {self.probe_tokens:,} tokens"
        if remaining is None:
            return text + "; budget left today: unknown (Pipedrive sent no x-daily-ratelimit-token-remaining)"
        text += f"; budget left today: {remaining:,} tokens"
        if self.tokens > remaining:
            text += (
                " — NOT ENOUGH: the extract will stop at the budget (exit code 4) with what it read checkpointed, "
                "and the next run after midnight (Pipedrive server time) goes on from there"
            )
        return text


def extract_cost(
    counts: Mapping[str, int], deals_with_products: int | None = None, unpaged_pages: Mapping[str, int] | None = None
) -> tuple[int, int]:
    """(requests, tokens) of a full extract for these collection sizes: every list in pages of
    500 (one request when empty; v1 pages after the first overlap the one before by a row), unpaged lists in one request
    (or in the pages `unpaged_pages` says one took last time: Pipedrive may page /v1/users after all, contract §3, in pages
    of its choosing), deal products in requests of 100 deal ids for the deals that have products (all live deals when that
    is unknown)."""
    requests = tokens = 0
    for collection in COLLECTIONS:
        pages = _pages(collection, counts.get(collection.name, 0))
        if collection.paging == "none" and unpaged_pages:
            pages = max(pages, unpaged_pages.get(collection.name, 0))
        requests += pages
        tokens += pages * collection.cost
    if deals_with_products is None:
        deals_with_products = counts.get("deals", 0) + counts.get("deals_archived", 0)
    product_requests = math.ceil(deals_with_products / DEAL_IDS_PER_REQUEST)
    return requests + product_requests, tokens + product_requests * DEAL_PRODUCTS.cost


def _pages(collection: Collection, count: int) -> int:
    if collection.paging == "none":
        return 1
    if collection.paging == "offset" and count > PAGE_LIMIT:  # each page after the first starts a row early
        return 1 + math.ceil((count - PAGE_LIMIT) / (PAGE_LIMIT - 1))
    return max(1, math.ceil(count / PAGE_LIMIT))


def estimate_from_staging(staging: Staging) -> CostEstimate | None:
    """The previous extract's sizes, or None when nothing was staged yet."""
    counts = {c.name: staging.count_raw(c.name)[0] for c in COLLECTIONS}
    if not any(counts.values()):
        return None
    unpaged = {c.name: checkpoint.pages for c in COLLECTIONS if c.paging == "none" and (checkpoint := staging.checkpoint(c.name))}
    requests, tokens = extract_cost(counts, staging.deals_with_products(), unpaged)
    return CostEstimate(requests, tokens, "sizes of the previous extract")


def estimate_by_probing(client: PipedriveClient) -> CostEstimate:
    """Sizes bounded by each growing collection's highest id (see the module docstring)."""
    spent_before = client.tokens_spent
    counts: dict[str, int] = {}
    for collection in COLLECTIONS:
        if collection.paging == "none" or collection.name in UNBOUNDED or not collection.incremental:
            continue  # reference data and field metadata: one or two pages, counted as one
        params = {**collection.params, "limit": 1}
        if collection.paging == "cursor":
            params.update(sort_by="id", sort_direction="desc")
        else:
            params["sort"] = "id DESC"
        params.pop("include_fields", None)
        try:
            rows = client.get(collection.path, params, cost=collection.cost).get("data") or []
        except PipedriveError as exc:
            if collection.optional and exc.status in NOT_ON_THIS_ACCOUNT:
                continue
            raise
        top = rows[0].get("id") if rows and isinstance(rows[0], dict) else None
        counts[collection.name] = int(top) if isinstance(top, int) else 0
    requests, tokens = extract_cost(counts)
    return CostEstimate(requests, tokens, "upper bound from the highest ids", client.tokens_spent - spent_before)


