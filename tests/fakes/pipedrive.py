"""An in-process fake of the Pipedrive REST API (read side), faithful to the extraction contract.

    with FakePipedrive(Path("samples/pipedrive")) as fake:
        client = httpx.Client(base_url=fake.url, headers={"x-api-token": VALID_TOKEN})
        client.get("/api/v2/persons", params={"limit": 500})

It serves a snapshot (one ``<collection>.jsonl`` per collection, as written by
``samples/generate.py``) over a real HTTP socket on 127.0.0.1 (``ThreadingHTTPServer`` in a daemon
thread), so the client under test exercises its real transport, headers and retries.

What it models (contract section in brackets):

* v2 cursor lists [§3, §6]: ``/api/v2/{persons,organizations,deals,deals/archived,products,
  activities,pipelines,stages}``, ``/api/v2/deals/products?deal_ids=``, ``/api/v2/deals/{id}/products``,
  ``/api/v2/{person,organization,deal,product,activity}Fields`` and single ``/api/v2/{entity}/{id}``.
  ``limit`` default 100, max 500 (501 -> 400), opaque keyset cursors in ``additional_data.next_cursor``
  (null on the last page), ``sort_by`` (id, update_time, add_time; stages also order_nr) +
  ``sort_direction``, ``updated_since`` (>=) / ``updated_until`` (<) where the contract lists them,
  ``ids`` (<=100), deal ``status`` (comma list), ``owner_id``/``org_id``/``person_id``/... filters,
  ``custom_fields`` (restrict keys), ``include_option_labels``, ``include_fields``.
* v1 [§5]: ``/api/v1/users``, ``/api/v1/users/me``, ``/api/v1/activityTypes``, ``/api/v1/currencies``,
  ``/api/v1/leadLabels`` (not paginated); offset pages (``start``/``limit``,
  ``additional_data.pagination``) for ``/api/v1/notes``, ``/api/v1/leads``, ``/api/v1/leads/archived``
  and v1 ``/api/v1/{person,organization,deal,product,activity}Fields`` (converted from the v2 metadata).
  ``/v1/...`` is accepted as an alias of ``/api/v1/...``. Deprecated v1 lists (persons, deals, ...)
  answer 410 Gone; unknown paths 404; any method other than GET 405.
* auth [§1]: the ``x-api-token`` header only. A token in the ``api_token`` query parameter is
  refused with 401 even if the header is right (the tool must never put the token in URLs).
* rate limits [§4]: a rolling ``window_seconds`` window of ``burst_limit`` served requests; token
  costs per the §4 table; optional daily token budget; the Cloudflare 403 HTML page for clients that
  keep sending while limited.

Choices where the contract is unclear (documented here, asserted in tests/test_fake_pipedrive.py):

* Deleted rows: v2 persons/organizations/products/activities lists *include* rows with
  ``is_deleted: true`` (contract §13 leaves it open; including them is the harder case for the
  tool). Set ``fake.list_deleted_rows = False`` to hide them. Deals follow the documented ``status``
  filter: deleted deals (``status == "deleted"`` or ``is_deleted``) only when ``status`` names
  ``deleted``; the default is open,won,lost.
* Cursors are keyset cursors (last sort key + id, base64url JSON): rows edited between pages move
  as they would in Pipedrive (an ``update_time`` sort can return a row twice); a cursor used with
  another sort answers 400.
* Token accounting: only 2xx answers are charged (``RequestRecord.token_cost`` is what was
  charged, 0 for errors, injected answers, 429 and 403). The daily budget refuses a request only
  once it is fully spent (remaining <= 0), so the last request may overshoot by less than its own
  cost; ``x-daily-ratelimit-token-remaining`` never goes below 0. ``reset_daily_budget()`` plays
  "midnight".
* Burst window: only served requests (anything that got past the limiter, incl. 4xx) occupy the
  window; 401s, 429s and 403s do not. A request is counted at its arrival (the moment the server
  thread hands it over), not after the requests before it were served. ``x-ratelimit-reset`` is whole seconds until the oldest
  request leaves the window (>= 1). After a 429, more than 3 further 429s inside the window (the burst
  window's or the daily budget's: the contract does not tell them apart there) trip the Cloudflare
  block: 403 ``text/html`` for one full ``window_seconds`` from that moment. Every answer (also 401/403/404) carries the ``x-ratelimit-*`` headers.
* ``shared_rate`` plays another integration on the same API token (the burst limit is per token,
  contract §4): that many requests a second, evenly spaced from the tool's first request, each taking
  a place in the burst window when there is one; one the window refuses is sent again as soon as a
  place frees (a client that keeps to its rate and is never blocked). They are not in ``requests``;
  ``shared_served`` counts those the window took.
* v1 ``limit`` above 500 is silently capped to 500 (v2 answers 400). Pagination is nested under
  ``additional_data.pagination`` for every v1 list, with ``next_start`` when more items follow. The v1 schema
  of ``/v1/leads`` and the ``*Fields`` puts ``start``/``limit``/``more_items_in_collection`` flat in
  ``additional_data`` instead, without ``next_start`` (contract §3): ``fake.flat_pagination`` (a set of list
  names, e.g. ``{"leads", "dealFields"}``) serves those lists that way.
* A v2 list's last page has ``additional_data.next_cursor`` null, or without ``fake.end_cursor_null``
  leaves it out (contract §3: "``null``/absent at end").
* The v1 lists the spec calls unpaged (users, activityTypes, currencies, leadLabels) answer whole.
  Contract §3 leaves open whether ``/v1/users`` is paginated after all: ``fake.paginate_unpaged``
  (list name -> page size, e.g. ``{"users": 2}``) serves such a list in v1 offset pages of at most
  that many rows (``start``, ``limit`` up to the page size, the page size when none is sent) with
  nested ``additional_data.pagination``.
* ``include_fields``: a field its *Fields metadata marks ``is_optional_response_field`` (such as a
  person's ``marketing_status``) comes only when asked for, and so do activities' ``attendees``; deals carry
  ``products_count`` only when asked for (computed from the ``deal_products`` collection).
* ``RequestRecord.time`` is ``time.monotonic()``.

``after_serving`` (a callable, None by default) runs under the lock after each request is served:
a test edits ``collections`` there to play an account that changes between two pages.

``latency`` adds that many seconds to every answer, after it was counted and served (the
network and Pipedrive's own work; other requests are served meanwhile).

``frozen=True`` promises the snapshot is not edited while served (the benchmark's case): sorted
lists (in id order and the v1 lists' default orders when the fake is made, other orders on first
use) and deal products by deal are then built once and reused, so a page costs O(limit · log n)
rather than a sort of the whole collection. Tests that edit ``fake.collections``
between requests leave it False, and every page sees the edit.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

__all__ = ["FakePipedrive", "RequestRecord", "VALID_TOKEN", "CLOUDFLARE_HTML", "COMPANY"]

VALID_TOKEN = "3f2a9c5e7b1d4f6a8c0e2b4d6f8a1c3e5b7d9f0a"

COMPANY = {"company_id": 9876543, "company_name": "Nordlicht Systems GmbH", "company_domain": "nordlicht-systems"}

ERROR_INFO = "Please check developers.pipedrive.com"
UNAUTHORIZED = {"success": False, "error": "unauthorized access", "errorCode": 401, "error_info": ERROR_INFO}
OVER_LIMIT = {"success": False, "error": "Request over limit", "errorCode": 429}
CLOUDFLARE_HTML = """<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<html class="no-js" lang="en-US">
<head>
<title>Attention Required! | Cloudflare</title>
<meta charset="UTF-8" />
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head>
<body>
<div id="cf-wrapper">
  <div id="cf-error-details" class="cf-error-details-wrapper">
    <h1 data-translate="block_headline">Sorry, you have been blocked</h1>
    <h2 class="cf-subheadline">You are unable to access api.pipedrive.com</h2>
    <p>This website is using a security service to protect itself from online attacks.</p>
    <p>Cloudflare Ray ID: <strong class="font-semibold">8a1b2c3d4e5f6a7b</strong></p>
    <p>Performance &amp; security by Cloudflare</p>
  </div>
</div>
</body>
</html>
"""


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    status: int
    token_cost: int
    time: float
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Injection:
    status: int
    count: int
    path_contains: str | None
    body: str | bytes | None
    content_type: str | None
    headers: dict[str, str]


class _HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


def _bad_request(message: str) -> _HttpError:
    return _HttpError(400, {"success": False, "error": message, "code": "ERR_SCHEMA_VALIDATION_FAILED",
                            "error_info": ERROR_INFO, "data": None, "additional_data": None})


def _not_found(message: str = "Not found") -> _HttpError:
    return _HttpError(404, {"success": False, "error": message, "errorCode": 404, "error_info": ERROR_INFO,
                            "data": None, "additional_data": None})


# ---------------------------------------------------------------------------------------------
# endpoint table


@dataclass(frozen=True)
class _V2List:
    collection: str
    cost: int
    since: bool = False
    until: bool = False
    filters: tuple[str, ...] = ()
    sorts: tuple[str, ...] = ("id", "update_time", "add_time")
    status: bool = False
    custom_fields: str | None = None  # *Fields collection with the custom field metadata
    deletable: bool = False  # rows may carry is_deleted (see list_deleted_rows)
    positional: bool = False  # field metadata: no id, paged in stored order


V2_LISTS: dict[str, _V2List] = {
    "persons": _V2List("persons", 10, True, True, ("owner_id", "org_id"), custom_fields="personFields", deletable=True),
    "organizations": _V2List("organizations", 10, True, True, ("owner_id",), custom_fields="organizationFields", deletable=True),
    "deals": _V2List("deals", 10, True, True, ("owner_id", "person_id", "org_id", "pipeline_id", "stage_id"),
                     ("id", "update_time", "add_time"), True, "dealFields"),
    "deals/archived": _V2List("deals_archived", 20, True, True, ("owner_id", "person_id", "org_id", "pipeline_id", "stage_id"),
                              ("id", "update_time", "add_time"), True, "dealFields"),
    "products": _V2List("products", 10, True, False, ("owner_id",), custom_fields="productFields", deletable=True),
    "activities": _V2List("activities", 10, True, True, ("owner_id", "deal_id", "person_id", "org_id", "lead_id"), deletable=True),
    "pipelines": _V2List("pipelines", 5),
    "stages": _V2List("stages", 5, filters=("pipeline_id",), sorts=("id", "update_time", "add_time", "order_nr")),
    "personFields": _V2List("personFields", 10, sorts=(), positional=True),
    "organizationFields": _V2List("organizationFields", 10, sorts=(), positional=True),
    "dealFields": _V2List("dealFields", 10, sorts=(), positional=True),
    "productFields": _V2List("productFields", 10, sorts=(), positional=True),
    "activityFields": _V2List("activityFields", 10, sorts=(), positional=True),
}
FIELDS_OF = {  # the *Fields collection that describes a list's records
    "persons": "personFields", "organizations": "organizationFields", "deals": "dealFields", "deals_archived": "dealFields",
    "products": "productFields", "activities": "activityFields",
}
V2_SINGLE = {"persons": ("persons",), "organizations": ("organizations",), "deals": ("deals", "deals_archived"),
             "products": ("products",), "activities": ("activities",), "pipelines": ("pipelines",), "stages": ("stages",)}
V1_UNPAGED = {"users": ("users", 20), "activityTypes": ("activityTypes", 20), "currencies": ("currencies", 20),
              "leadLabels": ("leadLabels", 10)}
V1_FIELDS = ("personFields", "organizationFields", "dealFields", "productFields", "activityFields")
DEPRECATED_V1 = ("persons", "organizations", "deals", "activities", "products", "pipelines", "stages")
DEAL_STATUSES = ("open", "won", "lost", "deleted")
V1_DEFAULT_SORT = {"notes": "id ASC", "leads": "add_time ASC", "leads_archived": "add_time ASC"}


def _parse_time(value: Any) -> float | None:
    """RFC 3339 / ISO 8601 (with or without millis, Z or offset) or v1 `YYYY-MM-DD HH:MM:SS` (UTC)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _encode_cursor(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad_request("Validation failed: cursor: Invalid cursor") from None
    if not isinstance(payload, dict) or "k" not in payload:
        raise _bad_request("Validation failed: cursor: Invalid cursor")
    return payload


def _int_param(query: dict[str, str], name: str) -> int | None:
    if name not in query or query[name] == "":
        return None
    try:
        return int(query[name])
    except ValueError:
        raise _bad_request(f"Validation failed: {name}: Expected integer, received string") from None


def _id_list(text: str, name: str, max_items: int) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise _bad_request(f"Validation failed: {name}: Expected comma separated list of integers") from None
    if len(ids) > max_items:
        raise _bad_request(f"Validation failed: {name}: Array must contain at most {max_items} element(s)")
    return ids


def _sort_key(record: dict[str, Any], sort_by: str) -> list[Any]:
    value = record.get(sort_by)
    if sort_by in ("update_time", "add_time"):
        value = _parse_time(value)
    rid = record.get("id")
    if not isinstance(rid, (int, float)):
        rid = 0
    return [value is not None, value if value is not None else 0, rid]


def _with_labels(fields: dict[str, dict[str, Any]], custom: dict[str, Any]) -> dict[str, Any]:
    """Custom values with their option labels (`include_option_labels`); `fields` by field code."""
    out = {}
    for key, value in custom.items():
        field_meta = fields.get(key) or {}
        labels = {o.get("id"): o.get("label") for o in field_meta.get("options") or []}
        if field_meta.get("field_type") == "enum" and value is not None:
            value = {"id": value, "label": labels.get(value)}
        elif field_meta.get("field_type") == "set" and isinstance(value, list):
            value = [{"id": v, "label": labels.get(v)} for v in value]
        out[key] = value
    return out


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (the crash tests do that) resets its socket: expected, not news."""


class FakePipedrive:
    """See the module docstring. Thread-safe; state is guarded by one lock."""

    def __init__(
        self,
        snapshot_dir: Path | None = None,
        *,
        collections: dict[str, list[dict]] | None = None,
        token: str = VALID_TOKEN,
        burst_limit: int = 20,
        window_seconds: float = 2.0,
        daily_token_budget: int | None = None,
        frozen: bool = False,
        latency: float = 0.0,
        shared_rate: float = 0.0,
    ):
        self.frozen = frozen
        self.shared_rate = shared_rate
        self.shared_served = 0
        self._shared_next: float | None = None
        self.latency = latency  # seconds each answer takes besides the work, outside the lock (network, Pipedrive's own)
        self._built: dict[Any, Any] = {}  # frozen only: sorted lists and deal-product indexes, built once
        self.collections: dict[str, list[dict]] = {}
        if snapshot_dir is not None:
            for path in sorted(Path(snapshot_dir).glob("*.jsonl")):
                with path.open(encoding="utf-8") as handle:
                    self.collections[path.stem] = [json.loads(line) for line in handle if line.strip()]
        if collections:
            self.collections.update(collections)
        self.token = token
        self.burst_limit = burst_limit
        self.window_seconds = window_seconds
        self.daily_token_budget = daily_token_budget
        self.company = dict(COMPANY)
        self.list_deleted_rows = True
        self.paginate_unpaged: dict[str, int] = {}  # unpaged v1 list -> page size it is served in (module docstring)
        self.flat_pagination: set[str] = set()  # v1 lists paged as the v1 schema has it: flat, no next_start (module docstring)
        self.end_cursor_null = True  # a v2 list's last page says next_cursor null; False: leaves it out (module docstring)
        self.cloudflare_after = 3  # limited requests tolerated after a 429 before the 403 block
        self.requests: list[RequestRecord] = []
        self.tokens_spent = 0
        self.daily_tokens_spent = 0
        self._window: deque[float] = deque()
        self._limited: deque[float] = deque()
        self._blocked_until = 0.0
        self._injections: list[_Injection] = []
        # called under the lock after each request is served: a test edits the account between two pages
        self.after_serving: Callable[[RequestRecord], None] | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if frozen:
            self._build_indexes()

    # -- lifecycle ------------------------------------------------------------------------------

    def _build_indexes(self) -> None:
        """Frozen: the lists' default orders and deal products by deal, built before the first
        request, as a real server has its indexes ready. Built on the first request instead, a
        million-record account's sorts held every request of the benchmark's first seconds."""
        for spec in V2_LISTS.values():
            if not spec.positional:
                self._sorted(self.collections.get(spec.collection, []), "id", ("v2", spec.collection, "id"))
        for name, sort in V1_DEFAULT_SORT.items():
            self._built[("v1", name, sort)] = self._v1_sort(self.collections.get(name, []), sort, sort)
        self._products_by_deal()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakePipedrive is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakePipedrive:
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            owner = fake

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-pipedrive", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakePipedrive:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -----------------------------------------------------------------------------

    def inject(self, status: int, *, count: int = 1, path_contains: str | None = None, body: str | bytes | None = None,
               content_type: str | None = None, headers: dict | None = None) -> None:
        """The next `count` requests whose target (path + '?' + query) contains `path_contains`
        answer `status` with `body` instead of being served. Injections are checked before
        anything else (auth, limits), are not charged and do not occupy the burst window."""
        with self._lock:
            self._injections.append(_Injection(status, count, path_contains, body, content_type,
                                               {str(k).lower(): str(v) for k, v in (headers or {}).items()}))

    def reset_daily_budget(self) -> None:
        with self._lock:
            self.daily_tokens_spent = 0

    def reset_limits(self) -> None:
        """Forget the burst window and any Cloudflare block (e.g. between test phases)."""
        with self._lock:
            self._window.clear()
            self._limited.clear()
            self._blocked_until = 0.0
            self._shared_next = None

    def status_counts(self) -> Counter[int]:
        with self._lock:
            return Counter(r.status for r in self.requests)

    @property
    def count_429(self) -> int:
        return self.status_counts()[429]

    @property
    def count_403(self) -> int:
        return self.status_counts()[403]

    # -- request handling ------------------------------------------------------------------------

    def _take_shared(self, now: float) -> None:
        """The other integration's requests up to `now` (`shared_rate`), in the window where they fit."""
        if not self.shared_rate:
            return
        if self._shared_next is None:
            self._shared_next = now
        while self._shared_next <= now:
            moment = self._shared_next
            held = [t for t in self._window if moment - self.window_seconds < t <= moment]
            if len(held) < self.burst_limit:
                bisect.insort(self._window, moment)
                self.shared_served += 1
                self._shared_next += 1 / self.shared_rate
            else:  # refused: it tries again as the window frees a place
                self._shared_next = held[0] + self.window_seconds + 1e-6

    def _rate_headers(self, now: float) -> dict[str, str]:
        self._take_shared(now)
        while self._window and now - self._window[0] >= self.window_seconds:
            self._window.popleft()
        remaining = max(0, self.burst_limit - len(self._window))
        if self._window:
            reset = max(1, math.ceil(self._window[0] + self.window_seconds - now))
        else:
            reset = max(1, math.ceil(self.window_seconds))
        headers = {"x-ratelimit-limit": str(self.burst_limit), "x-ratelimit-remaining": str(remaining),
                   "x-ratelimit-reset": str(reset)}
        if self.daily_token_budget is not None:
            headers["x-daily-ratelimit-token-limit"] = str(self.daily_token_budget)
            headers["x-daily-ratelimit-token-remaining"] = str(max(0, self.daily_token_budget - self.daily_tokens_spent))
        return headers

    def handle(self, method: str, target: str, request_headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        now = time.monotonic()  # a request counts when it arrives, not when the requests before it are served
        with self._lock:
            parts = urlsplit(target)
            path = parts.path
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            status, headers, body, cost = self._dispatch(method, target, path, query, request_headers, now)
            self.requests.append(record := RequestRecord(method, path, query, status, cost, now, dict(request_headers)))
            if self.after_serving is not None:
                self.after_serving(record)
            return status, headers, body

    def _dispatch(self, method, target, path, query, request_headers, now):
        # 1. injected answers
        for injection in self._injections:
            if injection.count > 0 and (injection.path_contains is None or injection.path_contains in target):
                injection.count -= 1
                self._injections = [i for i in self._injections if i.count > 0]
                return self._injected(injection, now)
        # 2. Cloudflare block
        if now < self._blocked_until:
            return self._cloudflare(now)
        # 3. auth: header only, never the query parameter
        if "api_token" in query or request_headers.get("x-api-token") != self.token:
            return 401, self._json_headers(now), _json(UNAUTHORIZED), 0
        # 4. burst limit
        headers = self._rate_headers(now)
        if len(self._window) >= self.burst_limit:
            if self._trips_the_block(now):
                return self._cloudflare(now)
            headers["x-ratelimit-remaining"] = "0"
            return 429, {**headers, "content-type": "application/json"}, _json(OVER_LIMIT), 0
        bisect.insort(self._window, now)  # in arrival order (another thread may have arrived later and been served first)
        # 5. daily token budget
        if self.daily_token_budget is not None and self.daily_tokens_spent >= self.daily_token_budget:
            if self._trips_the_block(now):
                return self._cloudflare(now)
            headers = self._rate_headers(now)
            headers["x-daily-ratelimit-token-remaining"] = "0"
            body = {**OVER_LIMIT, "error_info": "Daily API token budget exhausted; it resets at midnight server time"}
            return 429, {**headers, "content-type": "application/json"}, _json(body), 0
        # 6. route
        if method != "GET":
            status, payload, cost = 405, {"success": False, "error": "Method not allowed", "errorCode": 405,
                                          "error_info": ERROR_INFO}, 0
        else:
            try:
                payload, cost = self._route(path, query)
                status = 200
            except _HttpError as exc:
                status, payload, cost = exc.status, exc.body, 0
        if status == 200 and cost:
            self.tokens_spent += cost
            self.daily_tokens_spent += cost
        return status, {**self._rate_headers(now), "content-type": "application/json"}, _json(payload), cost

    def _trips_the_block(self, now: float) -> bool:
        """Count a 429; True when it is one too many in the window, which starts the Cloudflare block."""
        while self._limited and now - self._limited[0] >= self.window_seconds:
            self._limited.popleft()
        self._limited.append(now)
        if len(self._limited) <= 1 + self.cloudflare_after:
            return False
        self._blocked_until = now + self.window_seconds
        self._limited.clear()
        return True

    def _json_headers(self, now: float) -> dict[str, str]:
        return {**self._rate_headers(now), "content-type": "application/json"}

    def _cloudflare(self, now: float):
        headers = {**self._rate_headers(now), "content-type": "text/html; charset=UTF-8", "server": "cloudflare",
                   "cf-ray": "8a1b2c3d4e5f6a7b-FRA"}
        return 403, headers, CLOUDFLARE_HTML.encode(), 0

    def _injected(self, injection: _Injection, now: float):
        headers = self._rate_headers(now)
        if injection.status == 429:
            headers["x-ratelimit-remaining"] = "0"
        body = injection.body
        if body is None:
            if injection.status == 429:
                body = _json(OVER_LIMIT)
            elif injection.status == 401:
                body = _json(UNAUTHORIZED)
            elif injection.status >= 500:
                body = _json({"success": False, "error": "Internal Server Error", "code": "ERR_UNKNOWN"})
            else:
                body = _json({"success": False, "error": f"HTTP {injection.status}", "errorCode": injection.status,
                              "error_info": ERROR_INFO})
        if isinstance(body, str):
            content_type = injection.content_type or ("text/html; charset=UTF-8" if body.lstrip().startswith("<")
                                                      else "application/json")
            body = body.encode()
        else:
            content_type = injection.content_type or "application/json"
        headers["content-type"] = content_type
        headers.update(injection.headers)
        return injection.status, headers, body, 0

    # -- routing ------------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str]) -> tuple[dict[str, Any], int]:
        if path.startswith("/v1/"):
            path = "/api" + path
        path = path.rstrip("/") or "/"
        if path.startswith("/api/v2/"):
            return self._route_v2(path[len("/api/v2/"):], query)
        if path.startswith("/api/v1/"):
            return self._route_v1(path[len("/api/v1/"):], query)
        raise _not_found()

    def _route_v2(self, rest: str, query: dict[str, str]) -> tuple[dict[str, Any], int]:
        if rest in V2_LISTS:
            spec = V2_LISTS[rest]
            return self._v2_list(spec, query), spec.cost
        if rest == "deals/products":
            if not query.get("deal_ids"):
                raise _bad_request("Validation failed: deal_ids: Required")
            deal_ids = _id_list(query["deal_ids"], "deal_ids", 100)
            return self._deal_products(query, deal_ids), 10
        segments = rest.split("/")
        if len(segments) == 3 and segments[0] == "deals" and segments[2] == "products" and segments[1].isdigit():
            deal_id = int(segments[1])
            return self._deal_products(query, [deal_id]), 10
        if len(segments) == 2 and segments[0] in V2_SINGLE and segments[1].isdigit():
            wanted = int(segments[1])
            for name in V2_SINGLE[segments[0]]:
                for record in self.collections.get(name, []):
                    if record.get("id") == wanted:
                        spec = V2_LISTS.get(segments[0])
                        data = self._presenter(spec, query)(record)
                        return {"success": True, "data": data, "additional_data": None}, 1
            raise _not_found(f"{segments[0][:-1].capitalize()} not found")
        raise _not_found()

    def _route_v1(self, rest: str, query: dict[str, str]) -> tuple[dict[str, Any], int]:
        head = rest.split("/")[0]
        if head in DEPRECATED_V1:
            raise _HttpError(410, {"success": False, "error": "This endpoint has been deprecated and is no longer "
                                   "available. Please use API v2.", "errorCode": 410, "error_info": ERROR_INFO})
        if rest in V1_UNPAGED:
            name, cost = V1_UNPAGED[rest]
            rows = self.collections.get(name, [])
            if rest == "currencies" and query.get("term"):
                term = query["term"].lower()
                rows = [r for r in rows if term in str(r.get("code", "")).lower() or term in str(r.get("name", "")).lower()]
            if rest in self.paginate_unpaged:
                size = self.paginate_unpaged[rest]
                limit = _int_param(query, "limit")
                limit = size if limit is None or limit < 1 else min(limit, size)
                return self._v1_page(name, rows, {**query, "limit": str(limit)}), cost
            return {"success": True, "data": rows}, cost
        if rest == "users/me":
            return {"success": True, "data": self._me()}, 2
        if rest == "notes":
            return self._v1_notes(query), 20
        if rest == "leads":
            return self._v1_leads("leads", query, allow_since=True), 20
        if rest == "leads/archived":
            return self._v1_leads("leads_archived", query, allow_since=False), 40
        if rest in V1_FIELDS:
            return self._v1_page(rest, self._v1_fields(rest), query), 20
        raise _not_found()

    # -- v2 --------------------------------------------------------------------------------------------

    def _limit(self, query: dict[str, str]) -> int:
        limit = _int_param(query, "limit")
        if limit is None:
            return 100
        if limit > 500:
            raise _bad_request("Validation failed: limit: Number must be less than or equal to 500")
        if limit < 1:
            raise _bad_request("Validation failed: limit: Number must be greater than or equal to 1")
        return limit

    def _v2_list(self, spec: _V2List, query: dict[str, str]) -> dict[str, Any]:
        limit = self._limit(query)
        rows: list[dict[str, Any]] = self.collections.get(spec.collection, [])
        if spec.positional:
            return self._page_positional(rows, query, limit)
        visible = self._visible(spec, query)
        if query.get("custom_fields"):
            keys = [k for k in query["custom_fields"].split(",") if k]
            if len(keys) > 15:
                raise _bad_request("Validation failed: custom_fields: at most 15 custom fields may be requested")
        filtered = bool(query.get("ids")) or any(query.get(name) for name in spec.filters) or bool(
            spec.since and query.get("updated_since")) or bool(spec.until and query.get("updated_until"))
        if self.frozen and not filtered:
            return self._page_keyset(spec, rows, query, limit, index_key=("v2", spec.collection), visible=visible)
        if visible is not None:
            rows = [r for r in rows if visible(r)]
        if "ids" in query and query["ids"]:
            ids = set(_id_list(query["ids"], "ids", 100))
            rows = [r for r in rows if r.get("id") in ids]
        for name in spec.filters:
            if name == "lead_id":
                if query.get("lead_id"):
                    rows = [r for r in rows if r.get("lead_id") == query["lead_id"]]
                continue
            value = _int_param(query, name)
            if value is not None:
                rows = [r for r in rows if r.get(name) == value]
        if spec.since and query.get("updated_since"):
            since = _parse_time(query["updated_since"])
            if since is None:
                raise _bad_request("Validation failed: updated_since: Invalid datetime (RFC 3339 expected)")
            rows = [r for r in rows if (t := _parse_time(r.get("update_time"))) is not None and t >= since]
        if spec.until and query.get("updated_until"):
            until = _parse_time(query["updated_until"])
            if until is None:
                raise _bad_request("Validation failed: updated_until: Invalid datetime (RFC 3339 expected)")
            rows = [r for r in rows if (t := _parse_time(r.get("update_time"))) is not None and t < until]
        return self._page_keyset(spec, rows, query, limit)

    def _visible(self, spec: _V2List, query: dict[str, str]) -> Callable[[dict[str, Any]], bool] | None:
        """Which rows the list shows, by deal status or deletion; None: all of them."""
        if spec.status:
            raw = query.get("status", "")
            wanted = [s.strip() for s in raw.split(",") if s.strip()] if raw else ["open", "won", "lost"]
            for status in wanted:
                if status not in DEAL_STATUSES:
                    raise _bad_request(f"Validation failed: status: Invalid enum value. Expected "
                                       f"'open' | 'won' | 'lost' | 'deleted', received '{status}'")
            shown = set(wanted)
            return lambda r: ("deleted" if r.get("is_deleted") or r.get("status") == "deleted" else r.get("status")) in shown
        if spec.deletable and not self.list_deleted_rows:
            return lambda r: not r.get("is_deleted")
        return None

    def _page_keyset(self, spec: _V2List | None, rows: list[dict[str, Any]], query: dict[str, str], limit: int,
                     sorts: tuple[str, ...] | None = None, index_key: tuple[Any, ...] | None = None,
                     visible: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """A page of `rows` in the query's order after its cursor; with `visible`, of those it shows."""
        sorts = sorts if sorts is not None else spec.sorts
        sort_by = query.get("sort_by") or "id"
        if sort_by not in sorts:
            raise _bad_request(f"Validation failed: sort_by: Invalid enum value. Expected {' | '.join(sorts)}, received '{sort_by}'")
        direction = query.get("sort_direction") or "asc"
        if direction not in ("asc", "desc"):
            raise _bad_request(f"Validation failed: sort_direction: Invalid enum value. Expected 'asc' | 'desc', received '{direction}'")
        keys, ordered = self._sorted(rows, sort_by, None if index_key is None else (*index_key, sort_by))
        start, end = 0, len(keys)
        if query.get("cursor"):
            cursor = _decode_cursor(query["cursor"])
            if cursor.get("s") != sort_by or cursor.get("d") != direction:
                raise _bad_request("Validation failed: cursor: cursor does not match sort_by/sort_direction")
            if direction == "asc":
                start = bisect.bisect_right(keys, cursor["k"])
            else:
                end = bisect.bisect_left(keys, cursor["k"])
        positions = range(start, end) if direction == "asc" else range(end - 1, start - 1, -1)
        shown = (i for i in positions if visible is None or visible(ordered[i]))
        page = [(keys[i], ordered[i]) for i in itertools.islice(shown, limit)]
        more = next(shown, None) is not None
        next_cursor = _encode_cursor({"s": sort_by, "d": direction, "k": page[-1][0]}) if more and page else None
        present = self._presenter(spec, query)
        data = [present(r) for _, r in page]
        return {"success": True, "data": data, "additional_data": self._cursor_data(next_cursor)}

    def _cursor_data(self, next_cursor: str | None) -> dict[str, Any]:
        return {"next_cursor": next_cursor} if next_cursor is not None or self.end_cursor_null else {}

    def _sorted(self, rows: list[dict[str, Any]], sort_by: str, cache_key: tuple[Any, ...] | None
                ) -> tuple[list[list[Any]], list[dict[str, Any]]]:
        """Sort keys ascending and the rows in that order; built once per cache_key when frozen."""
        if self.frozen and cache_key is not None and cache_key in self._built:
            return self._built[cache_key]
        keyed = sorted(((_sort_key(r, sort_by), r) for r in rows), key=lambda kr: kr[0])
        result = ([k for k, _ in keyed], [r for _, r in keyed])
        if self.frozen and cache_key is not None:
            self._built[cache_key] = result
        return result

    def _products_by_deal(self) -> dict[Any, list[dict[str, Any]]]:
        if self.frozen and "products_by_deal" in self._built:
            return self._built["products_by_deal"]
        grouped: dict[Any, list[dict[str, Any]]] = {}
        for row in self.collections.get("deal_products", []):
            grouped.setdefault(row.get("deal_id"), []).append(row)
        if self.frozen:
            self._built["products_by_deal"] = grouped
        return grouped

    def _page_positional(self, rows: list[dict[str, Any]], query: dict[str, str], limit: int) -> dict[str, Any]:
        position = 0
        if query.get("cursor"):
            cursor = _decode_cursor(query["cursor"])
            if cursor.get("s") != "position" or not isinstance(cursor.get("k"), int):
                raise _bad_request("Validation failed: cursor: Invalid cursor")
            position = cursor["k"]
        page = rows[position:position + limit]
        more = position + limit < len(rows)
        next_cursor = _encode_cursor({"s": "position", "k": position + limit}) if more else None
        return {"success": True, "data": page, "additional_data": self._cursor_data(next_cursor)}

    def _deal_products(self, query: dict[str, str], deal_ids: list[int]) -> dict[str, Any]:
        limit = self._limit(query)
        by_deal = self._products_by_deal()
        rows = [r for deal_id in dict.fromkeys(deal_ids) for r in by_deal.get(deal_id, [])]
        return self._page_keyset(None, rows, query, limit, sorts=("id", "deal_id", "add_time", "update_time"))

    def _presenter(self, spec: _V2List | None, query: dict[str, str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """How this request shows a record: the query's field choices read once, not per record."""
        if spec is None:
            return lambda record: record
        include = {x.strip() for x in query.get("include_fields", "").split(",") if x.strip()}
        withheld = {  # contract §8.2: a field marked `is_optional_response_field` comes only when asked for
            f.get("field_code") for f in self.collections.get(FIELDS_OF.get(spec.collection, ""), []) if f.get("is_optional_response_field")
        } - include - {"products_count"}
        if spec.collection == "activities" and "attendees" not in include:
            withheld.add("attendees")
        deals = spec.collection in ("deals", "deals_archived")
        count_products = deals and "products_count" in include
        custom_keys = {k for k in query["custom_fields"].split(",") if k} if query.get("custom_fields") else None
        labelled = query.get("include_option_labels") == "true" and spec.custom_fields
        fields = {f.get("field_code"): f for f in self.collections.get(spec.custom_fields, [])} if labelled else {}

        def present(record: dict[str, Any]) -> dict[str, Any]:
            out = dict(record)
            for name in withheld:
                out.pop(name, None)
            if count_products:
                out["products_count"] = len(self._products_by_deal().get(record.get("id"), []))
            elif deals:
                out.pop("products_count", None)
            if isinstance(out.get("custom_fields"), dict):
                custom = dict(out["custom_fields"])
                if custom_keys is not None:
                    custom = {k: v for k, v in custom.items() if k in custom_keys}
                if labelled:
                    custom = _with_labels(fields, custom)
                out["custom_fields"] = custom
            return out

        return present

    # -- v1 --------------------------------------------------------------------------------------------

    def _me(self) -> dict[str, Any]:
        users = self.collections.get("users", [])
        me = next((u for u in users if u.get("is_you")), None)
        if me is None:
            me = next((u for u in users if any(a.get("admin") for a in u.get("access") or [])), None)
        if me is None:
            me = users[0] if users else {"id": 1, "name": "Admin", "email": "admin@example.com", "active_flag": True,
                                         "is_you": True, "is_deleted": False}
        return {**me, **self.company, "language": {"language_code": "de", "country_code": "DE"}}

    def _v1_page(self, name: str, rows: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        start = _int_param(query, "start") or 0
        if start < 0:
            raise _HttpError(400, {"success": False, "error": "start must be a non-negative integer", "errorCode": 400,
                                   "error_info": ERROR_INFO})
        limit = _int_param(query, "limit")
        limit = 100 if limit is None or limit < 1 else min(limit, 500)
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if name in self.flat_pagination:
            return {"success": True, "data": page, "additional_data": pagination}
        if more:
            pagination["next_start"] = start + limit
        return {"success": True, "data": page, "additional_data": {"pagination": pagination}}

    def _v1_sort(self, rows: list[dict[str, Any]], sort: str | None, default: str) -> list[dict[str, Any]]:
        spec = (sort or default).strip()
        rows = list(rows)
        for part in reversed([p.strip() for p in spec.split(",") if p.strip()]):
            bits = part.split()
            name = bits[0]
            desc = len(bits) > 1 and bits[1].upper() == "DESC"
            if name.endswith("_time"):
                rows.sort(key=lambda r: (_parse_time(r.get(name)) is not None, _parse_time(r.get(name)) or 0), reverse=desc)
            else:
                rows.sort(key=lambda r: (r.get(name) is not None, r.get(name) if r.get(name) is not None else 0), reverse=desc)
        return rows

    def _v1_since(self, rows: list[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
        if not query.get("updated_since"):
            return rows
        since = _parse_time(query["updated_since"])
        if since is None:
            raise _HttpError(400, {"success": False, "error": "updated_since: invalid date", "errorCode": 400,
                                   "error_info": ERROR_INFO})
        return [r for r in rows if (t := _parse_time(r.get("update_time"))) is not None and t >= since]

    def _v1_built(self, name: str, query: dict[str, str], filters: tuple[str, ...]) -> tuple[Any, list | None]:
        """Frozen and unfiltered: the cache key of the sorted list, and the list when built already."""
        if not self.frozen or any(query.get(f) for f in filters):
            return None, None
        key = ("v1", name, (query.get("sort") or V1_DEFAULT_SORT[name]).strip())
        return key, self._built.get(key)

    def _v1_notes(self, query: dict[str, str]) -> dict[str, Any]:
        filters = ("user_id", "deal_id", "person_id", "org_id", "project_id", "lead_id", "start_date", "end_date", "updated_since")
        cache_key, built = self._v1_built("notes", query, filters)
        if built is not None:
            return self._v1_page("notes", built, query)
        rows = list(self.collections.get("notes", []))
        for name in ("user_id", "deal_id", "person_id", "org_id", "project_id"):
            value = _int_param(query, name)
            if value is not None:
                rows = [r for r in rows if r.get(name) == value]
        if query.get("lead_id"):
            rows = [r for r in rows if r.get("lead_id") == query["lead_id"]]
        if query.get("start_date"):
            rows = [r for r in rows if str(r.get("add_time", ""))[:10] >= query["start_date"]]
        if query.get("end_date"):
            rows = [r for r in rows if str(r.get("add_time", ""))[:10] <= query["end_date"]]
        rows = self._v1_since(rows, query)
        rows = self._v1_sort(rows, query.get("sort"), V1_DEFAULT_SORT["notes"])
        if cache_key is not None:
            self._built[cache_key] = rows
        return self._v1_page("notes", rows, query)

    def _v1_leads(self, name: str, query: dict[str, str], *, allow_since: bool) -> dict[str, Any]:
        cache_key, built = self._v1_built(name, query, ("owner_id", "person_id", "organization_id", "updated_since"))
        if built is not None:
            return self._v1_page(name, built, query)
        rows = list(self.collections.get(name, []))
        for key in ("owner_id", "person_id", "organization_id"):
            value = _int_param(query, key)
            if value is not None:
                rows = [r for r in rows if r.get(key) == value]
        if allow_since:
            rows = self._v1_since(rows, query)
        rows = self._v1_sort(rows, query.get("sort"), V1_DEFAULT_SORT[name])
        if cache_key is not None:
            self._built[cache_key] = rows
        return self._v1_page(name, rows, query)

    def _v1_fields(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for index, f in enumerate(self.collections.get(name, []), start=1):
            key = f.get("field_code")
            out.append({
                "id": index, "key": key, "name": f.get("field_name"), "order_nr": index, "field_type": f.get("field_type"),
                "add_time": "2021-01-04 09:00:00", "update_time": "2021-01-04 09:00:00", "last_updated_by_user_id": None,
                "created_by_user_id": None, "active_flag": True, "edit_flag": bool(f.get("is_custom_field")),
                "index_visible_flag": True, "details_visible_flag": True, "add_visible_flag": True, "important_flag": False,
                "bulk_edit_allowed": True, "searchable_flag": False, "filtering_allowed": True, "sortable_flag": True,
                "mandatory_flag": False, "options": f.get("options"),
            })
            for sub in f.get("subfields") or []:
                if sub.get("field_code") == "value":
                    continue
                out.append({"id": None, "key": f"{key}_{sub.get('field_code')}", "name": sub.get("field_name"),
                            "field_type": sub.get("field_type"), "is_subfield": True, "parent_id": index,
                            "id_suffix": sub.get("field_code"), "edit_flag": bool(f.get("is_custom_field")),
                            "active_flag": True, "options": None})
        return out


def _json(payload: Any) -> bytes:
    """Compact UTF-8 JSON: by orjson, eight times json.dumps' speed, so that a benchmark's "fake
    serving" is not mostly the fake encoding pages; by json.dumps what orjson will not write. A lone
    surrogate (half of an emoji cut in two) is escaped, "\\ud83d", as JavaScript's JSON.stringify
    writes it: no UTF-8 text holds it raw."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Handler(BaseHTTPRequestHandler):
    owner: FakePipedrive
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive connections
    wbufsize = -1  # headers and body leave in one write (flushed by handle_one_request)
    server_version = "FakePipedrive/1.0"
    sys_version = ""

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        request_headers = {k.lower(): v for k, v in self.headers.items()}
        status, headers, body = self.owner.handle(self.command, self.path, request_headers)
        if self.owner.latency:
            time.sleep(self.owner.latency)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass
