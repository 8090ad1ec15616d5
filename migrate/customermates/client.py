"""A small typed, synchronous client for the Customermates REST API (``/api/v1``).

Behaviour that matters to callers (see the Customermates contract, §1, §4, §10 and "Observed on the real server"):

* Writes (``create_many``, ``update_many``, ``delete_many``) are never retried here: the API has no idempotency key,
  so a repeated create could duplicate records. A write whose outcome is unknown (5xx, timeout, connection lost before
  an answer) raises :class:`UncertainWriteError`; the load layer reconciles by external id before trying again.
* Reads (``GET`` and ``POST …/search``) are retried on transport errors, timeouts, 5xx and 429 with bounded
  exponential backoff and jitter. The wait strategy is the ``read_wait`` attribute, so tests can make it instant.
* A write refused with 429 (the app has no rate limit, §10, but its host may) was not processed: it is sent again
  after the ``Retry-After`` the answer gives, or a backoff, as often as reads are retried.
* Every body is valid JSON; the real server answers an empty or malformed body with an empty 500.
* The API key is never put into a message, a log line or a repr.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self

import httpx
import structlog
import tenacity

from migrate import errors as _errors
from migrate.httpdate import parse_http_date, retry_after_seconds

__all__ = [
    "ENTITIES",
    "SINGULAR",
    "Issue",
    "parse_issues",
    "CustomermatesError",
    "AuthenticationError",
    "PermissionDeniedError",
    "BatchRejectedError",
    "RequestTooLargeError",
    "RequestRejectedError",
    "encoded_size",
    "PAGE_SIZES",
    "UncertainWriteError",
    "ServerError",
    "CustomermatesClient",
]

log = structlog.get_logger(__name__)

ENTITIES: tuple[str, ...] = ("organizations", "contacts", "services", "deals", "tasks")
"""Plural REST names, in dependency order (a later entity may reference an earlier one)."""

SINGULAR: dict[str, str] = {
    "contacts": "contact",
    "organizations": "organization",
    "deals": "deal",
    "services": "service",
    "tasks": "task",
}

MAX_BATCH = 100
"""Largest batch the server accepts for ``/many`` endpoints (§3.6)."""

MAX_REQUEST_BYTES = 2_000_000
"""Largest write body the loader sends. The app sets no limit, but Vercel functions (customermates.com) take
about 4.5 MB each way (§10), and the answer, the records with their notes as Tiptap JSON, is bigger than the
request. A hundred records with long notes (up to 65,535 characters each) are far over it."""

USER_READS = 4  # reads of a users list of several pages: two that agree, should users change while it is read (`list_users`)

PAGE_SIZES = (100, 25, 10, 5)
"""The page sizes search accepts, largest first (§4)."""

REJECTED_KEY_MESSAGE = (
    "Customermates rejected the API key (HTTP 500 with an empty body: the key is invalid, expired or disabled, "
    "or its user is not active)"
)

_BODY_PREVIEW = 200

try:  # pragma: no cover - depends on how the package is installed
    from importlib.metadata import version as _dist_version

    _TOOL_VERSION = _dist_version("pipedrive-to-customermates")
except Exception:  # pragma: no cover
    _TOOL_VERSION = "0.1.0"

USER_AGENT = f"pipedrive-to-customermates/{_TOOL_VERSION} (migrate; httpx/{httpx.__version__})"


# --------------------------------------------------------------------------------------------------------------------
# 400 bodies: zod's prettifyError text, sent as a JSON string
# --------------------------------------------------------------------------------------------------------------------

_ISSUE_MARK = "✖"
_PATH_LINE = re.compile(r"^\s*→ at (?P<path>.*)$")
_ITEM_INDEX = re.compile(r"^(?:[A-Za-z_$][\w$]*)?\[(\d+)\]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Issue:
    """One ``✖ <message>\\n  → at <path>`` block of a 400 body. ``path`` is ``""`` when the issue has none."""

    message: str
    path: str

    def item_index(self) -> int | None:
        """The index of the batch item the issue is about: ``contacts[3].emails[0]`` → 3, ``ids[1]`` → 1.

        ``None`` when the path does not start with an indexed element (``contacts``, ``id``, ``pagination.page``, "").
        Note the deal create-many quirk: an unknown serviceId in deal *k* is reported at ``deals[i].services[k]`` for
        every deal *i*, so for that message the index of the offending deal is the inner one.
        """
        match = _ITEM_INDEX.match(self.path)
        return int(match.group(1)) if match else None

    def is_id_not_found(self) -> bool:
        """The server's "<Entity> ID not found or not accessible.": an id it has not (a record, a linked
        record, a custom column), at the path of that id."""
        return "id not found" in self.message.lower()

    def __str__(self) -> str:
        return f"{self.message} at {self.path}" if self.path else self.message


def parse_issues(text: str) -> list[Issue]:
    """Split zod's pretty error text into issues.

    Handles several issues, messages that span several lines, issues without a path and two issues at the same
    path. Text without any ``✖`` marker becomes one issue holding the whole text (empty text gives no issue).
    """
    if not text or not text.strip():
        return []
    blocks: list[list[str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(_ISSUE_MARK):
            blocks.append([line[len(_ISSUE_MARK) :].lstrip(" ")])
        elif blocks:
            blocks[-1].append(line)
        else:  # text before the first marker: keep it as its own block
            blocks.append([line])
    issues = []
    for block in blocks:
        path = ""
        while block and not block[-1].strip():
            block.pop()
        if block and len(block) > 1 and (match := _PATH_LINE.match(block[-1])):
            path = match.group("path").strip()
            block = block[:-1]
        issues.append(Issue(message="\n".join(block).strip(), path=path))
    return issues


def _format_issues(issues: Sequence[Issue], limit: int = 5) -> str:
    shown = "; ".join(str(issue) for issue in issues[:limit])
    if len(issues) > limit:
        shown += f"; … and {len(issues) - limit} more"
    return shown


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


class CustomermatesError(_errors.CustomermatesError):
    """Base of every error this client raises. ``status`` is the HTTP status (None without a response)."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class AuthenticationError(CustomermatesError):
    """401, or (preflight ``me()`` only) the empty-bodied 500 the server gives for an invalid key."""


class PermissionDeniedError(CustomermatesError):
    """403: the key's user lacks a permission (or the deployment is in demo mode)."""


class _IssuesError(CustomermatesError):
    def __init__(self, message: str, *, issues: list[Issue], status: int | None = 400, body: str = "") -> None:
        super().__init__(message, status=status, body=body)
        self.issues = issues


class BatchRejectedError(_IssuesError):
    """400 on a write. Validation is all-or-nothing: nothing of the batch was written."""


class RequestTooLargeError(BatchRejectedError):
    """413 on a write: the host refused the body for its size before the app saw it (Vercel functions
    take about 4.5 MB, contract §10), so nothing was written. ``size`` is the body's length in bytes."""

    def __init__(self, message: str, *, size: int, body: str = "") -> None:
        super().__init__(message, issues=[], status=413, body=body)
        self.size = size


class RequestRejectedError(_IssuesError):
    """400 on a read (search, configuration): a bad filter, sort field, page size, …"""


class UncertainWriteError(CustomermatesError):
    """A write whose outcome is unknown (5xx, timeout, connection lost before an answer, unreadable 2xx).

    ``cause`` is the underlying exception, if any. Reconcile (look records up by external id) before retrying.
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: str = "", cause: BaseException | None = None
    ) -> None:
        super().__init__(message, status=status, body=body)
        self.cause = cause


class ServerError(CustomermatesError):
    """A read failed after its retries: 5xx, or (``status`` None) the server could not be reached."""


# --------------------------------------------------------------------------------------------------------------------
# Helpers shared with the MCP client
# --------------------------------------------------------------------------------------------------------------------


def _normalize_base_url(base_url: str) -> str:
    """``https://x.com``, ``https://x.com/``, ``…/api`` and ``…/api/v1`` all give ``https://x.com``."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise _errors.ConfigError("The Customermates base URL is empty")
    url = base_url.strip().rstrip("/")
    for suffix in ("/api/v1", "/api"):
        if url.lower().endswith(suffix):
            url = url[: -len(suffix)].rstrip("/")
            break
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise _errors.ConfigError(
            f"The Customermates base URL must start with http:// or https:// and name a host, got {base_url!r}"
        )
    return url


def _verify_option(verify: bool | str) -> bool | ssl.SSLContext:
    if isinstance(verify, str):
        import os

        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return verify


def _make_http(
    *, timeout: float, verify: bool | str, transport: httpx.BaseTransport | None, headers: Mapping[str, str]
) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout),
        verify=_verify_option(verify) if transport is None else True,
        transport=transport,
        headers=dict(headers),
        follow_redirects=False,
    )


def _dumps(body: Any) -> bytes:
    """Compact JSON. NaN/Infinity are refused (ValueError) since they would make the body invalid JSON."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encoded_size(value: Any) -> int:
    """Bytes `value` takes in a request body, as this client writes it."""
    return len(_dumps(value))


class _Scrubber:
    """Removes the api key from any text that leaves the client."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def __call__(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4 and self._secret in text:
            return text.replace(self._secret, "***")
        return text


def _describe_body(response: httpx.Response, text: str) -> str:
    """A short, human description of a response body for error messages."""
    if not text.strip():
        return "an empty body"
    content_type = response.headers.get("content-type", "")
    preview = text[:_BODY_PREVIEW]
    more = "…" if len(text) > _BODY_PREVIEW else ""
    try:
        value = json.loads(text)
    except ValueError:
        kind = "an HTML page" if ("html" in content_type or text.lstrip().startswith("<")) else "a non-JSON body"
        ct = f" ({content_type})" if content_type else ""
        return f"{kind}{ct} instead of JSON: {preview!r}{more}"
    if isinstance(value, str):
        return repr(value[:_BODY_PREVIEW] + ("…" if len(value) > _BODY_PREVIEW else ""))
    return f"{preview}{more}"


def _json_string(text: str) -> str | None:
    """The decoded value if ``text`` is a JSON string, else None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _default_read_wait() -> tenacity.wait.wait_base:
    """0.5 s, 1 s, 2 s, 4 s … capped at 8 s, each plus up to 0.5 s of random jitter."""
    return tenacity.wait_exponential(multiplier=0.5, max=8.0) + tenacity.wait_random(0, 0.5)


def _retryable_status(status: int) -> bool:
    return status >= 500 or status == 429


def _retryable_exception(exc: BaseException) -> bool:
    # UnsupportedProtocol and LocalProtocolError (e.g. an illegal header value) are ours: a retry sends the same
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError))


_Kind = Literal["read", "write", "preflight"]
_NO_BODY = object()


# --------------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------------


class HttpSession:
    """The lifecycle the REST and MCP clients share; the key never shows in a repr."""

    _base_url: str
    _http: httpx.Client

    @property
    def base_url(self) -> str:
        return self._base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r}, api_key='***')"


class CustomermatesClient(HttpSession):
    """Sync client for ``<base_url>/api/v1``. Thread-safe as far as httpx.Client is; use one per process.

    >>> with CustomermatesClient("https://customermates.com", key) as cm:   # doctest: +SKIP
    ...     cm.me()
    """

    read_wait: tenacity.wait.wait_base
    """Wait strategy between read retries (patch with ``tenacity.wait_none()`` in tests)."""
    last_read_date: datetime | None
    """The server's clock (its HTTP ``Date`` header, to the second) when it answered the last read; None if it sent none."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
        read_retries: int = 4,
    ) -> None:
        if read_retries < 0:
            raise ValueError("read_retries must be >= 0")
        self._base_url = _normalize_base_url(base_url)
        self._api = self._base_url + "/api/v1"
        self._scrub = _Scrubber(api_key or "")
        self.read_retries = read_retries
        self.read_wait = _default_read_wait()
        self.sleep = time.sleep  # between writes refused with 429 (tests make it instant)
        self.write_requests = 0
        self.last_read_date = None
        self._lock = threading.Lock()
        headers = {"accept": "application/json", "user-agent": USER_AGENT}
        if api_key:  # an empty key is the same as none for the server (401); send none
            headers["x-api-key"] = api_key
        self._http = _make_http(timeout=timeout, verify=verify, transport=transport, headers=headers)

    # -- reads ----------------------------------------------------------------------------------------------------

    def me(self) -> dict:
        """``GET /v1/users/me``: the key's user (no email). The preflight check of the key.

        An HTTP 500 with an empty body here is how the server answers an invalid, expired or disabled key (or an
        inactive user), so it raises :class:`AuthenticationError` at once instead of being retried.
        """
        data = self._read("GET", "/users/me", _NO_BODY, what="GET /users/me", kind="preflight")
        return self._expect(data, dict, "GET /users/me")

    def list_users(self) -> list[dict]:
        """Every user of the company (``POST /v1/users/search``, pages of 100, oldest first).

        Pages go by number (users search takes no filters to page by), so a user removed while
        they are read moves every later one a place back, and the next page starts one user late.
        Its pages' totals then disagree, unless a user was added too. So a list of more than one
        page is taken only when the next read gives the same users in the same order; a single
        page is one answer, nothing can move under it. Up to ``USER_READS`` reads."""
        before: list[Any] | None = None
        for _ in range(USER_READS):
            users, totals = self._users_once()
            if len(totals) == 1:
                return users
            ids = [u.get("id") for u in users] if len(set(totals)) == 1 else None
            if ids is not None and ids == before:
                return users
            if before is not None or ids is None:
                log.warning("customermates.users_moved", totals=totals)
            before = ids
        return users

    def _users_once(self) -> tuple[list[dict], list[Any]]:
        users: list[dict] = []
        totals = []
        page = 1
        while True:
            body = {"pagination": {"page": page, "pageSize": 100}, "sortDescriptor": _sort(("createdAt", "asc"))}
            data = self._expect(
                self._read("POST", "/users/search", body, what="POST /users/search"), dict, "POST /users/search"
            )
            items = data.get("items") or []
            users.extend(items)
            totals.append((data.get("pagination") or {}).get("total"))
            if not items or page >= _total_pages(data):
                return users, totals
            page += 1

    def configuration(self, entity: str) -> dict:
        """``GET /v1/<entity>/configuration``: ``{customColumns, filterableFields, sortableFields}``."""
        _check_entity(entity)
        what = f"GET /{entity}/configuration"
        return self._expect(self._read("GET", f"/{entity}/configuration", _NO_BODY, what=what), dict, what)

    def search(
        self,
        entity: str,
        *,
        filters: list[dict] | None = None,
        page: int = 1,
        page_size: int = 100,
        sort: tuple[str, str] = ("createdAt", "asc"),
        search_term: str | None = None,
    ) -> dict:
        """One page of ``POST /v1/<entity>/search``. Always sends pagination *and* a sort (default-ordering trap).

        ``page_size`` must be 5, 10, 25 or 100 and ``page`` ≥ 1; the server answers anything else with a 400
        (:class:`RequestRejectedError`).
        """
        _check_entity(entity)
        body: dict[str, Any] = {}
        if filters:
            body["filters"] = list(filters)
        if search_term is not None:
            body["searchTerm"] = search_term
        body["pagination"] = {"page": page, "pageSize": page_size}
        body["sortDescriptor"] = _sort(sort)
        what = f"POST /{entity}/search"
        return self._expect(self._read("POST", f"/{entity}/search", body, what=what), dict, what)

    def iter_records(
        self,
        entity: str,
        *,
        filters: list[dict] | None = None,
        sort: tuple[str, str] = ("createdAt", "asc"),
        page_size: int = 100,
    ) -> Iterator[dict]:
        """Every record matching ``filters``, page after page (full DTOs).

        A page the server keeps failing with a 5xx is read again in smaller pages, from there on: the host
        answers a response over its size limit with a 500 (Vercel, about 4.5 MB: a hundred records with
        long notes)."""
        offset, size = 0, page_size
        while True:
            data, size = self._page_at(entity, filters, offset, size, sort)
            last_page = offset // size + 1 >= _total_pages(data)
            items = data.get("items") or []
            yield from items
            offset += len(items)
            if not items or last_page:
                return

    def _page_at(self, entity: str, filters: list[dict] | None, offset: int, size: int, sort: tuple[str, str]) -> tuple[dict, int]:
        """The page of ``size`` records that starts at ``offset``, and its size: a page the server
        keeps failing with a 5xx is asked again in the next smaller size a page can start there with."""
        while True:
            try:
                return self.search(entity, filters=filters, page=offset // size + 1, page_size=size, sort=sort), size
            except ServerError as exc:
                smaller = next((s for s in PAGE_SIZES if s < size and offset % s == 0), None)
                if exc.status is None or smaller is None:
                    raise
                log.warning("customermates.smaller_pages", entity=entity, page_size=smaller, after=str(exc))
                size = smaller

    def iter_updated_since(self, entity: str, since: str, *, page_size: int = 100) -> Iterator[dict]:
        """Every record whose ``updatedAt`` is at or after ``since`` (a ``Z`` datetime), oldest change first.

        Paged by the last ``updatedAt`` read, not by page number: each search asks for page 1 of the
        records at or after it. Paged by number, a record deleted while the read goes on, or edited
        (which moves it to the end), moves every later record one place back, and the next page
        starts one record late, past a change never read. The records of the instant a page ended
        on come again at the top of the next and are not handed out twice; a record edited during
        the read is handed out again, as it is now. A full page of one instant (the server stamps
        rows about 1 ms apart, a few alike) cannot move the bound: that instant is read by page
        number (only its own records could shift), then the read goes on after it."""
        bound: dict[str, Any] = {"field": "updatedAt", "operator": "gte", "value": since}
        handed: set[tuple[str, Any]] = set()  # (id, updatedAt) of the records read at the bound's instant
        size = page_size
        while True:
            data, size = self._page_at(entity, [bound], 0, size, ("updatedAt", "asc"))
            items = data.get("items") or []
            yield from (item for item in items if (item["id"], item.get("updatedAt")) not in handed)
            if not items or _total_pages(data) <= 1:
                return
            last = items[-1].get("updatedAt")
            at_last = {(item["id"], last) for item in items if item.get("updatedAt") == last}
            one_instant = len(at_last) == len(items)  # the bound cannot move past it
            if not (_later(last, bound["value"]) or (bound["operator"] == "gte" and one_instant)):
                raise CustomermatesError(
                    f"Unexpected answer to POST /{entity}/search: asked for records with updatedAt {bound['operator']} "
                    f"{bound['value']} sorted by it, the page ends on {items[-1].get('id')} at {last!r}: cannot read on from there"
                )
            if one_instant:
                handed |= at_last
                instant = [{"field": "updatedAt", "operator": op, "value": last} for op in ("gte", "lte")]
                yield from (item for item in self.iter_records(entity, filters=instant) if (item["id"], last) not in handed)
                bound, handed = {"field": "updatedAt", "operator": "gt", "value": last}, set()
            else:
                bound, handed = {"field": "updatedAt", "operator": "gte", "value": last}, at_last

    def get(self, entity: str, record_id: str) -> dict | None:
        """``GET /v1/<entity>/{id}``: the record (a full DTO), or None when the company has none with that id.

        The answer's shape differs by entity (contract §2): contacts ``{contact, customColumns}``, the others
        ``{ok, data: {<singular>, customColumns}}``; an unknown id is no 404 but a null record."""
        _check_entity(entity)
        if not _UUID.fullmatch(record_id):
            raise ValueError(f"{record_id!r} is no Customermates record id (a UUID)")
        what = f"GET /{entity}/{{id}}"
        data = self._expect(self._read("GET", f"/{entity}/{record_id}", _NO_BODY, what=what), dict, what)
        if "ok" in data:
            if data["ok"] is not True:
                raise CustomermatesError(f"Unexpected answer to {what}: {json.dumps(data.get('error'))[:200]}")
            data = self._expect(data.get("data"), dict, what)
        record = data.get(SINGULAR[entity])
        return record if isinstance(record, dict) else None

    def find_by_column(self, entity: str, column_id: str, value: str, *, page_size: int = 5) -> list[dict]:
        """Records whose custom column ``column_id`` equals ``value`` exactly (case-sensitive).

        The §4 lookup by a stored external id: returns every match, so 0, 1, or several when there are duplicates.
        """
        if not isinstance(value, str):
            raise ValueError("custom column values are strings; pass the value as str")
        filters = [{"field": column_id, "operator": "equals", "value": value}]
        return list(self.iter_records(entity, filters=filters, sort=("createdAt", "asc"), page_size=page_size))

    # -- writes ---------------------------------------------------------------------------------------------------

    def create_many(self, entity: str, items: list[dict]) -> list[dict]:
        """``POST /v1/<entity>/many``: 1–100 items; returns the created DTOs in input order."""
        _check_entity(entity)
        items = _check_batch(items, "items")
        data = self._write("POST", f"/{entity}/many", {entity: items}, what=f"create {len(items)} {entity}")
        return self._expect_list(data, len(items), f"create {len(items)} {entity}")

    def update_many(self, entity: str, items: list[dict]) -> list[dict]:
        """``PUT /v1/<entity>/many``: 1–100 partial updates, each with ``id``; returns DTOs in input order."""
        _check_entity(entity)
        items = _check_batch(items, "items")
        for index, item in enumerate(items):
            if not item.get("id"):
                raise ValueError(f"update item #{index} has no id")
        data = self._write("PUT", f"/{entity}/many", {entity: items}, what=f"update {len(items)} {entity}")
        return self._expect_list(data, len(items), f"update {len(items)} {entity}")

    def delete_many(self, entity: str, ids: list[str]) -> list[str]:
        """``DELETE /v1/<entity>/many`` with ``{"ids": [...]}``: returns the deleted ids."""
        _check_entity(entity)
        ids = _check_batch(ids, "ids", element=str)
        data = self._write("DELETE", f"/{entity}/many", {"ids": ids}, what=f"delete {len(ids)} {entity}")
        return self._expect_list(data, len(ids), f"delete {len(ids)} {entity}")

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, content: bytes | None) -> httpx.Response:
        if content is None:
            return self._http.request(method, self._api + path)
        return self._http.request(
            method, self._api + path, content=content, headers={"content-type": "application/json"}
        )

    def _read(self, method: str, path: str, body: Any, *, what: str, kind: _Kind = "read") -> Any:
        content = None if body is _NO_BODY else _dumps(body)  # ValueError before sending (e.g. NaN)

        def should_retry_result(response: httpx.Response) -> bool:
            if kind == "preflight" and response.status_code == 500 and not response.content.strip():
                return False  # the bad-key signature: retrying cannot help
            return _retryable_status(response.status_code)

        def log_retry(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            if outcome is None:  # pragma: no cover
                return
            reason = (
                f"{type(outcome.exception()).__name__}: {self._scrub(str(outcome.exception()))}"
                if outcome.failed
                else f"HTTP {outcome.result().status_code}"
            )
            log.warning("customermates.read_retry", request=what, attempt=state.attempt_number, reason=reason)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.read_retries + 1),
            wait=self.read_wait,
            retry=tenacity.retry_if_exception(_retryable_exception) | tenacity.retry_if_result(should_retry_result),
            before_sleep=log_retry,
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            reraise=True,
        )
        try:
            response = retrying(self._send, method, path, content)
        except httpx.RequestError as exc:
            attempts = self.read_retries + 1
            raise ServerError(
                f"Could not get an answer from Customermates at {self._base_url} for {what} "
                f"after {attempts} attempt(s): {type(exc).__name__}: {self._scrub(str(exc)) or 'no detail'}"
            ) from exc
        self._raise_for_status(response, what=what, kind=kind)
        self.last_read_date = parse_http_date(response.headers.get("date"))
        return self._json(response, what=what, kind=kind)

    def _write(self, method: str, path: str, body: Any, *, what: str) -> Any:
        content = _dumps(body)  # ValueError before anything is sent (e.g. NaN)
        for attempt in range(self.read_retries + 1):
            response = self._write_once(method, path, content, what=what)
            if response.status_code != 429 or attempt == self.read_retries:
                break
            wait = min(60.0, retry_after_seconds(response.headers.get("retry-after")) or 0.5 * 2**attempt)
            log.warning("customermates.write_rate_limited", request=what, attempt=attempt + 1, wait_seconds=wait)
            self.sleep(wait)
        self._raise_for_status(response, what=what, kind="write")
        return self._json(response, what=what, kind="write")

    def _write_once(self, method: str, path: str, content: bytes, *, what: str) -> httpx.Response:
        with self._lock:
            self.write_requests += 1
        try:
            return self._send(method, path, content)
        except httpx.RequestError as exc:
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
                hint = "the connection could not be opened, so the request was most likely not sent"
            elif isinstance(exc, httpx.TimeoutException):
                hint = "no answer before the timeout; the server may still have written the batch"
            else:
                hint = "the connection broke before an answer; the server may have written the batch"
            raise UncertainWriteError(
                f"Outcome unknown for {what} ({method} {path}): {type(exc).__name__} "
                f"({self._scrub(str(exc)) or 'no detail'}); {hint}. Reconcile before retrying.",
                cause=exc,
            ) from exc

    def _raise_for_status(self, response: httpx.Response, *, what: str, kind: _Kind) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        text = self._scrub(response.text)
        described = _describe_body(response, text)
        if status == 401:
            # Customermates answers 401 only to a request without a key (CONTRACT: "Not authenticated"); a key sent
            # and refused so is another server's answer
            cause = (
                "no API key was sent, or it was empty" if _json_string(text) == "Not authenticated"
                else f"a key was sent; is {self.base_url} a Customermates server? It answers 401 only to a request without one"
            )
            raise AuthenticationError(
                f"Customermates refused {what}: HTTP 401 {described} ({cause})",
                status=status,
                body=text,
            )
        if status == 403:
            server_text = _json_string(text) or text[:_BODY_PREVIEW]
            raise PermissionDeniedError(
                f"Customermates denied {what} (HTTP 403): {server_text}. Use a key whose user has an admin "
                f"(system) role.",
                status=status,
                body=text,
            )
        if status == 413 and kind == "write":
            size = len(response.request.content)
            raise RequestTooLargeError(
                f"Customermates' host refused {what} (HTTP 413, nothing was written): the request body, "
                f"{size:,} bytes, is over its size limit",
                size=size,
                body=text,
            )
        if status == 429 and kind == "write":
            raise CustomermatesError(
                f"Customermates (or its host) refused {what} with HTTP 429, too many requests, {self.read_retries + 1} "
                "times; nothing of it was written. Run again later: the run resumes where it stopped",
                status=status,
                body=text,
            )
        if status == 400:
            message_text = _json_string(text)
            issues = parse_issues(message_text) if message_text is not None else []
            detail = _format_issues(issues) if issues else described
            if kind == "write":
                raise BatchRejectedError(
                    f"Customermates rejected {what} (HTTP 400, nothing was written): {detail}",
                    issues=issues,
                    body=text,
                )
            raise RequestRejectedError(
                f"Customermates rejected {what} (HTTP 400): {detail}", issues=issues, body=text
            )
        if status >= 500:
            if kind == "preflight" and status == 500 and not text.strip():
                raise AuthenticationError(REJECTED_KEY_MESSAGE, status=status, body=text)
            if kind == "write":
                raise UncertainWriteError(
                    f"Outcome unknown for {what}: HTTP {status} with {described}. Batches are all-or-nothing, so "
                    f"most likely nothing was written (e.g. a transaction timeout or a duplicate id in a relation "
                    f"array); reconcile before retrying, and try a smaller batch.",
                    status=status,
                    body=text,
                )
            raise ServerError(
                f"Customermates failed {what} after {self.read_retries + 1} attempt(s): HTTP {status} with {described}",
                status=status,
                body=text,
            )
        hint = " (is the base URL right?)" if status in (404, 405) else ""
        raise CustomermatesError(
            f"Customermates answered {what} with HTTP {status}{hint}: {described}", status=status, body=text
        )

    def _json(self, response: httpx.Response, *, what: str, kind: _Kind) -> Any:
        text = response.text
        try:
            return json.loads(text)
        except ValueError as exc:
            message = (
                f"Customermates answered {what} with HTTP {response.status_code} but "
                f"{_describe_body(response, self._scrub(text))}"
            )
            if kind == "write":
                raise UncertainWriteError(
                    message + "; the write may have happened. Reconcile before retrying.",
                    status=response.status_code,
                    body=self._scrub(text),
                    cause=exc,
                ) from exc
            raise CustomermatesError(message, status=response.status_code, body=self._scrub(text)) from exc

    @staticmethod
    def _expect(data: Any, kind: type, what: str) -> Any:
        if not isinstance(data, kind):
            raise CustomermatesError(
                f"Unexpected answer to {what}: expected a JSON {kind.__name__}, got {type(data).__name__}"
            )
        return data

    @staticmethod
    def _expect_list(data: Any, count: int, what: str) -> list:
        if not isinstance(data, list) or len(data) != count:
            got = f"a list of {len(data)}" if isinstance(data, list) else type(data).__name__
            raise UncertainWriteError(
                f"Unexpected answer to {what}: expected a list of {count}, got {got}; the write may have happened. "
                f"Reconcile before retrying."
            )
        return data


# --------------------------------------------------------------------------------------------------------------------
# Small validators
# --------------------------------------------------------------------------------------------------------------------


def _check_entity(entity: str) -> None:
    if entity not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}; expected one of {', '.join(ENTITIES)}")


def _check_batch(values: Sequence[Any], name: str, *, element: type = dict) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a list")
    values = list(values)
    if not 1 <= len(values) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} {name}, got {len(values)}")
    for index, value in enumerate(values):
        if not isinstance(value, element):
            raise ValueError(f"{name}[{index}] has the wrong type: {type(value).__name__}")
    return values


def _sort(sort: tuple[str, str]) -> dict[str, str]:
    field, direction = sort
    if direction not in ("asc", "desc"):
        raise ValueError(f"sort direction must be 'asc' or 'desc', got {direction!r}")
    return {"field": field, "direction": direction}


def _later(value: Any, than: str) -> bool:
    """Whether the ISO datetime `value` is after `than`; False when it is not a datetime."""
    try:
        return datetime.fromisoformat(value) > datetime.fromisoformat(than)
    except (TypeError, ValueError):
        return False


def _total_pages(data: Mapping[str, Any]) -> int:
    pagination = data.get("pagination") or {}
    try:
        return int(pagination.get("totalPages") or 1)
    except (TypeError, ValueError):
        return 1

