"""The Pipedrive collections we extract, declared as data (one row per API list).

`paging` is how the endpoint pages: "cursor" (v2 `cursor`/`next_cursor`), "offset" (v1
`start`/`next_start`) or "none". `cost` is the documented token cost of one request
(contract §4). Order matters: field metadata and reference data first.
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


COLLECTIONS: tuple[Collection, ...] = (
    Collection("users", "/api/v1/users", "none", 20),
    Collection("activityTypes", "/api/v1/activityTypes", "none", 20),
    Collection("currencies", "/api/v1/currencies", "none", 20),
    Collection("leadLabels", "/api/v1/leadLabels", "none", 10),
    Collection("personFields", "/api/v2/personFields", "cursor", 10, key="field_code"),
    Collection("organizationFields", "/api/v2/organizationFields", "cursor", 10, key="field_code"),
    Collection("dealFields", "/api/v2/dealFields", "cursor", 10, key="field_code"),
    Collection("productFields", "/api/v2/productFields", "cursor", 10, key="field_code"),
    Collection("activityFields", "/api/v2/activityFields", "cursor", 10, key="field_code"),
    Collection("pipelines", "/api/v2/pipelines", "cursor", 5),
    Collection("stages", "/api/v2/stages", "cursor", 5),
    Collection("organizations", "/api/v2/organizations", "cursor", 10),
    Collection("persons", "/api/v2/persons", "cursor", 10),
    Collection("products", "/api/v2/products", "cursor", 10),
    Collection(
        "deals", "/api/v2/deals", "cursor", 10,
        {"status": "open,won,lost,deleted", "include_fields": "products_count"},
    ),
    Collection(
        "deals_archived", "/api/v2/deals/archived", "cursor", 20,
        {"status": "open,won,lost,deleted", "include_fields": "products_count"},
    ),
    Collection("activities", "/api/v2/activities", "cursor", 10, {"include_fields": "attendees"}),
    Collection("notes", "/api/v1/notes", "offset", 20),
    Collection("leads", "/api/v1/leads", "offset", 20),
    Collection("leads_archived", "/api/v1/leads/archived", "offset", 40),
)

# Deal products are read per batch of staged deals: /api/v2/deals/products?deal_ids=<≤100 ids>.
DEAL_PRODUCTS = Collection("deal_products", "/api/v2/deals/products", "cursor", 10)
DEAL_IDS_PER_REQUEST = 100
PAGE_LIMIT = 500

BY_NAME = {c.name: c for c in (*COLLECTIONS, DEAL_PRODUCTS)}
