"""The Pipedrive collections we extract, declared as data (one row per API list).

`paging` is how the endpoint pages: "cursor" (v2 `cursor`/`next_cursor`), "offset" (v1
`start`/`next_start`) or "none" (one request without paging parameters; should an answer carry
v1 pagination after all, which contract §3 leaves open for /v1/users, the next pages are asked
from its `next_start`). `cost` is the documented token cost of one request (contract §4). Order
matters: field metadata and reference data first.

Field metadata falls back to the v1 endpoints when an account lacks the v2 ones (v2 Fields API
appeared in late 2025); archived deals, leads and lead labels are optional: an account without
them (plan or age) gets them reported as unavailable instead of failing the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Paging = Literal["cursor", "offset", "none"]


@dataclass(frozen=True)
class Collection:
    name: str
    path: str
    paging: Paging
    cost: int
    params: dict[str, str] = field(default_factory=dict)
    key: str = "id"  # the record's identity; v2 field metadata has no id, only field_code
    fallback: Collection | None = None  # read instead when the endpoint answers 404/410
    optional: bool = False  # a 404/410 means "not on this account" (reported), not a failure
    incremental: bool = False  # supports `updated_since`: a sync reads only what changed
    sortable: bool = True  # takes sort_by/sort_direction (contract §6 lists none for the v2 *Fields)


def field_metadata(kind: str) -> Collection:
    """`/api/v2/<kind>Fields`, keyed by field_code, falling back to v1 (keyed by key)."""
    name = f"{kind}Fields"
    return Collection(
        name, f"/api/v2/{name}", "cursor", 10, key="field_code", sortable=False,
        fallback=Collection(name, f"/api/v1/{name}", "offset", 20, key="key"),
    )


COLLECTIONS: tuple[Collection, ...] = (
    Collection("users", "/api/v1/users", "none", 20),
    Collection("activityTypes", "/api/v1/activityTypes", "none", 20),
    Collection("currencies", "/api/v1/currencies", "none", 20),
    Collection("leadLabels", "/api/v1/leadLabels", "none", 10, optional=True),
    *(field_metadata(kind) for kind in ("person", "organization", "deal", "product", "activity")),
    Collection("pipelines", "/api/v2/pipelines", "cursor", 5),
    Collection("stages", "/api/v2/stages", "cursor", 5),
    Collection("organizations", "/api/v2/organizations", "cursor", 10, incremental=True),
    # `marketing_status` is an optional response field (contract §7.2): sent only when asked for
    Collection("persons", "/api/v2/persons", "cursor", 10, {"include_fields": "marketing_status"}, incremental=True),
    Collection("products", "/api/v2/products", "cursor", 10, incremental=True),
    Collection(
        "deals", "/api/v2/deals", "cursor", 10,
        {"status": "open,won,lost,deleted", "include_fields": "products_count"}, incremental=True,
    ),
    Collection(
        "deals_archived", "/api/v2/deals/archived", "cursor", 20,
        {"status": "open,won,lost,deleted", "include_fields": "products_count"}, optional=True, incremental=True,
    ),
    Collection("activities", "/api/v2/activities", "cursor", 10, {"include_fields": "attendees"}, incremental=True),
    Collection("notes", "/api/v1/notes", "offset", 20, {"sort": "id ASC"}, incremental=True),
    Collection("leads", "/api/v1/leads", "offset", 20, optional=True, incremental=True),
    Collection("leads_archived", "/api/v1/leads/archived", "offset", 40, optional=True),
)

# Deal products are read per batch of staged deals: /api/v2/deals/products?deal_ids=<≤100 ids>.
DEAL_PRODUCTS = Collection("deal_products", "/api/v2/deals/products", "cursor", 10)
DEAL_IDS_PER_REQUEST = 100
PAGE_LIMIT = 500

BY_NAME = {c.name: c for c in (*COLLECTIONS, DEAL_PRODUCTS)}

# What an endpoint that is not on this account answers (contract §2): 404 unavailable, 410 removed, 415
# "feature not enabled" (an account without leads, say). An optional collection is then reported missing.
NOT_ON_THIS_ACCOUNT = (404, 410, 415)
