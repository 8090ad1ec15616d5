"""A small Pipedrive API client: token in the `x-api-token` header, paging, rate limits.

Retries (tenacity) cover burst 429s, 5xx and network errors. A 429 that means the daily
token budget is spent, a Cloudflare 403 page, and 401/402/403/404/410/415 stop at once with
one clear sentence: retrying them only makes things worse (contract §2, §4).
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from migrate import jsontext
from migrate.errors import BudgetExhaustedError, PipedriveError
from migrate.httpdate import parse_http_date, retry_after_seconds
from migrate.pipedrive.collections import PAGE_LIMIT, Collection

log = structlog.get_logger(__name__)

USER_AGENT = "pipedrive-to-customermates/0.1"
SHARED_MEMORY_WINDOWS = 10  # places are kept for another client on the token until this many windows of answers have not shown it
FIRST_STEP_BACK = 10  # rows an offset read steps back first when the list moved under it
MAX_BURST_WAIT = 60.0  # seconds a burst 429 waits at most, whatever its headers ask (the window is 2 s)


class _Retryable(Exception):
    def __init__(self, message: str, wait: float = 0.0):
        super().__init__(message)
        self.wait = wait


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    next_cursor: str | None  # the cursor (or start offset) of the next page, an offset list's with its last row (`_offset_cursor`); None at the end


class BurstLimiter:
    """Keeps requests under `limit` per rolling `window` seconds, shared by all callers.

    Pipedrive counts a request when it reaches it, somewhere between our send and its answer.
    A slot is therefore held while its request is in flight and then counted from the send plus
    `arrival_bound` (the latest we expect the request to have reached Pipedrive), or from the
    answer if that came sooner. The bound starts at 0.1 s and doubles (up to half the window)
    after every 429 that says we were early: threads queueing on a busy connection, a slow
    network. Counting from the answer instead would waste Pipedrive's whole response time in
    every window.

    Few requests are out at once, however many readers there are: when one draws a 429, the
    others already sent draw theirs too, and Pipedrive's firewall blocks clients that keep going
    after 429s (the fake blocks after 3 more). `max_in_flight` (4) at first; then as many as the
    window's rate needs at the time a request takes (limit ÷ window × seconds per request, a
    quarter more), up to a quarter of the limit: at Ultimate's 120 per 2 s and 0.35 s a request,
    4 at once would reach a sixth of the rate. Each one out beyond `max_in_flight` keeps the window
    one request short of the limit, so that requests reaching Pipedrive later than counted cannot
    make it see more than the limit unless more of them do so at once than are out beyond the
    four. After a 429, `max_in_flight` and the whole limit again, for good.

    The limit is per API token, and other integrations may use the same one: what Pipedrive counted
    (`x-ratelimit-remaining`, `observe`) beyond what this client's own requests can explain is
    theirs, and the window keeps that many places free for them, one more while they fill it, until
    `SHARED_MEMORY_WINDOWS` windows of answers have not shown them."""

    def __init__(self, limit: int, window: float = 2.0, arrival_bound: float = 0.1, max_in_flight: int = 4):
        self.limit = max(1, limit)
        self.window = window
        self.arrival_bound = arrival_bound
        self.max_in_flight = max_in_flight
        self._slots: list[list[float]] = []  # [counted from, sent at]; counted from = inf while in flight
        self._lock = threading.Condition()
        self._paused_until = 0.0
        self._request_seconds: float | None = None  # moving average, send to answer
        self._limited = False  # a 429 came: `max_in_flight` from then on
        self._recent: deque[list[float]] = deque()  # this client's recent slots; an answered one ends in its answer's time
        # (seen at, requests of other clients in Pipedrive's window), each counting more than every one seen after it:
        # the first is the most over the memory (`_shared_now`), read by every `acquire` without a walk of them all
        self._shared: deque[tuple[float, int]] = deque()
        self.shared_most = 0  # the most requests of other clients on this token seen in one window
        self._halted: Exception | None = None  # `halt`: every caller gets this from then on

    def in_flight_cap(self) -> int:
        """How many requests may be out at once now (see the class docstring)."""
        if self._limited or self._request_seconds is None:
            return self.max_in_flight
        needed = math.ceil(self.limit / self.window * self._request_seconds * 1.25)
        return max(self.max_in_flight, min(needed, self.limit // 4))

    def pause(self, seconds: float) -> None:
        """Hold every caller back (after a 429: the other threads must not keep sending), and
        allow more time for requests to reach Pipedrive from now on."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            self.arrival_bound = min(self.window / 2, self.arrival_bound * 2)
            self._limited = True

    def halt(self, error: Exception) -> None:
        """Send nothing more, from any caller: each `acquire` from now on raises `error`. For an
        answer that every later request would get too (the daily budget spent, the firewall's
        block), to which each request sent adds a 429 or a 403 (contract §4, §12)."""
        with self._lock:
            self._halted = error
            self._lock.notify_all()

    def acquire(self) -> list[float]:
        """Wait for a free slot; pass it to `done` when the answer is in."""
        while True:
            with self._lock:
                if self._halted is not None:
                    raise self._halted
                moment = time.monotonic()
                if moment < self._paused_until:
                    delay = self._paused_until - moment
                elif sum(1 for s in self._slots if s[0] == math.inf) >= (cap := self.in_flight_cap()):
                    self._lock.wait(timeout=1.0)  # `done` wakes us
                    continue
                else:
                    self._slots = [s for s in self._slots if moment - s[0] < self.window]
                    # at least one place: each answer's count is what tells when the other client has gone
                    if len(self._slots) < max(1, self.limit - (cap - self.max_in_flight) - self._shared_now()):
                        slot = [math.inf, moment]
                        self._slots.append(slot)
                        self._recent.append(slot)
                        return slot
                    oldest = min(s[0] for s in self._slots)
                    delay = 0.01 if oldest == math.inf else self.window - (moment - oldest) + 0.001
            time.sleep(delay)

    def done(self, slot: list[float]) -> None:
        with self._lock:
            moment = time.monotonic()
            slot[0] = min(moment, slot[1] + self.arrival_bound)
            slot.append(moment)  # answered
            took = moment - slot[1]
            self._request_seconds = took if self._request_seconds is None else 0.8 * self._request_seconds + 0.2 * took
            self._lock.notify_all()

    def observe(self, remaining_header: str | None, slot: list[float]) -> None:
        """Read Pipedrive's `x-ratelimit-remaining` on the answer to the request of `slot`.

        Pipedrive counted its window when the request arrived, after its send. A request of this
        client that it counted arrived less than a window before, so it was answered after this
        one's send less a window, or is still out. What Pipedrive counted beyond those is surely
        other clients': this client's own requests, however late they arrived, never look like
        another's. When there surely are others, the places kept for them are what Pipedrive counted
        beyond this client's requests but those sent after this one and still out (which it may
        not have counted yet); one more when its window was full, since they may want more than
        they got: a client that takes every place left to it is left one more each time, up to what
        it wants. This client's own answers count a place as free later than Pipedrive does (from
        the answer, not the arrival), and another client waiting for a place takes it first: left
        only what it had, it kept the window full and this client drew its 429s."""
        if not (remaining_header and remaining_header.isdigit()):
            return
        with self._lock:
            moment = time.monotonic()
            while self._recent and self._recent[0][0] != math.inf and moment - self._recent[0][2] > 2 * self.window:
                self._recent.popleft()
            since, sent = slot[1] - self.window, slot[1]
            mine_counted = out_after = 0  # this client's requests it may have counted; of them, those still out sent after
            for mine in self._recent:
                if mine[0] != math.inf:
                    mine_counted += mine[2] > since
                else:
                    mine_counted += 1
                    out_after += mine[1] > sent
            counted = self.limit - int(remaining_header)
            others = counted - mine_counted + out_after if counted > mine_counted else 0
            if others and counted >= self.limit:  # the window was full: they may want more than they got
                others += 1
            while self._shared and self._shared[-1][1] <= others:  # never the most again while this one is kept
                self._shared.pop()
            self._shared.append((moment, others))
            while moment - self._shared[0][0] > SHARED_MEMORY_WINDOWS * self.window:
                self._shared.popleft()
            if others > self.shared_most:
                self.shared_most = others
                log.info("pipedrive.shared_token", other_requests=others, limit=self.limit, window_seconds=self.window)

    def _shared_now(self) -> int:
        """Places kept for other clients: the most of theirs seen in Pipedrive's window over the
        `SHARED_MEMORY_WINDOWS` windows up to the last answer read, however long ago (a pause after a
        429 reads none)."""
        return self._shared[0][1] if self._shared else 0

    def learn(self, limit_header: str | None) -> None:
        if limit_header and limit_header.isdigit() and int(limit_header) != self.limit:
            with self._lock:
                self.limit = max(1, int(limit_header))


class PipedriveClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 60.0,
        verify: bool | str | ssl.SSLContext = True,
        burst_limit: int = 20,
        transport: httpx.BaseTransport | None = None,
        max_attempts: int = 6,
    ):
        if not token:
            raise PipedriveError("the Pipedrive API token is empty")
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"x-api-token": token, "accept": "application/json", "user-agent": USER_AGENT},
            timeout=timeout,
            verify=_ssl_verify(verify),
            transport=transport,
        )
        self.limiter = BurstLimiter(burst_limit)
        self.max_attempts = max_attempts
        self._backoff = wait_exponential_jitter(multiplier=0.5, max=20, jitter=0.5)
        self.requests_sent = 0
        self.tokens_spent = 0
        self.rate_limited = 0
        self.budget_remaining: int | None = None  # x-daily-ratelimit-token-remaining, when Pipedrive sends it
        self.on_tokens: Callable[[int], None] | None = None  # told the cost of every charged request
        self.first_answer_at: datetime | None = None  # Pipedrive's clock (its Date header) at the first answer
        self._counters = threading.Lock()  # extract reads several collections at once

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PipedriveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, params: dict[str, Any] | None = None, *, cost: int = 0) -> dict[str, Any]:
        """GET one page; returns the parsed envelope `{success, data, additional_data}`."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=lambda state: max(getattr(state.outcome.exception(), "wait", 0.0), self._backoff(state)),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._get_once(path, params or {}, cost)
        except _Retryable as exc:
            raise PipedriveError(f"Pipedrive {path}: gave up after {self.max_attempts} attempts: {exc}") from None
        raise AssertionError("unreachable")

    def _get_once(self, path: str, params: dict[str, Any], cost: int) -> dict[str, Any]:
        slot = self.limiter.acquire()
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({type(exc).__name__})") from None
        except httpx.ConnectError as exc:
            raise PipedriveError(f"cannot reach Pipedrive at {self.base_url}: {_reason(exc)}") from None
        except httpx.LocalProtocolError as exc:  # our side cannot form the request: retrying cannot help
            raise PipedriveError(f"cannot send a request to Pipedrive at {self.base_url}: {exc}") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection problem: {_reason(exc)}") from None
        finally:
            self.limiter.done(slot)
        with self._counters:
            self.requests_sent += 1
            if self.first_answer_at is None:
                self.first_answer_at = parse_http_date(response.headers.get("date"))
            remaining = response.headers.get("x-daily-ratelimit-token-remaining", "")
            if remaining.isdigit():  # optional: missing for a while after long inactivity (contract §4)
                self.budget_remaining = int(remaining)
        self.limiter.learn(response.headers.get("x-ratelimit-limit"))
        status = response.status_code
        self.limiter.observe(response.headers.get("x-ratelimit-remaining"), slot)  # a 429's too: the window was full
        if status == 429:
            with self._counters:
                self.rate_limited += 1
            if self._budget_spent(response, cost):
                spent = BudgetExhaustedError(
                    "Pipedrive's daily API token budget is used up (HTTP 429); what was extracted is checkpointed, "
                    "run again after the budget resets at midnight (Pipedrive server time)"
                )
                self.limiter.halt(spent)
                raise spent
            waits = (_seconds(response.headers.get("x-ratelimit-reset")), retry_after_seconds(response.headers.get("retry-after")))
            # Retry-After, when sent, is honoured (contract §4); a wait far past any 2 s window (a reset given
            # as a moment, not seconds) is capped, and the retries give up in the end if the 429s go on
            wait = min(MAX_BURST_WAIT, max((w for w in waits if w), default=2.0))
            self.limiter.pause(wait)
            log.warning("pipedrive.rate_limited", path=path, wait=wait)
            raise _Retryable("rate limited (HTTP 429)", wait=wait)
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {_snippet(response)}")
        if status != 200:
            error = PipedriveError(_explain(status, path, response), status=status)
            if status == 403 and _is_html(response):  # the firewall's block: every request adds to it
                self.limiter.halt(error)
            raise error
        with self._counters:
            self.tokens_spent += cost
        if self.on_tokens is not None and cost:
            self.on_tokens(cost)
        if _is_html(response):  # a login page, a captive portal, a web app at PIPEDRIVE_BASE_URL: not transient
            raise PipedriveError(
                f"Pipedrive {path}: HTTP 200 with {_snippet(response)} instead of JSON; check PIPEDRIVE_BASE_URL "
                "(https://<company>.pipedrive.com or https://api.pipedrive.com)"
            )
        try:
            body = jsontext.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Retryable(f"malformed JSON from {path}: {_snippet(response)}") from None
        if not isinstance(body, dict) or body.get("success") is False:
            raise PipedriveError(f"Pipedrive {path} answered without success: {_snippet(response)}")
        return body

    def _budget_spent(self, response: httpx.Response, cost: int) -> bool:
        """Whether a 429 is the daily budget's, not the burst window's. The budget header says so when
        it is there; it can be missing (contract §4), and then an earlier answer's budget left too
        little for this request, or the window had room left (a window 429 says 0 remaining)."""
        budget_left = response.headers.get("x-daily-ratelimit-token-remaining", "")
        if budget_left.isdigit():
            return int(budget_left) < max(cost, 1)
        if self.budget_remaining is not None and self.budget_remaining < cost:
            return True
        burst_left = response.headers.get("x-ratelimit-remaining", "")
        return burst_left.isdigit() and int(burst_left) > 0

    def pages(self, collection: Collection, start: str | None = None, extra: dict[str, Any] | None = None) -> Iterator[Page]:
        """Yield the collection page by page from `start` (a cursor, or an offset list's `next_cursor`).

        An unpaged list is asked once without paging parameters; when the answer carries v1
        pagination anyway, the next pages are asked with `start=<next_start>` alone, no `limit`:
        the page size stays the one Pipedrive chose, on an endpoint documented to take neither."""
        # offset paging: the last record handed out, by this read or (resuming) the one that made `start`
        cursor, last = _offset_and_last(start) if collection.paging == "offset" else (start, None)
        while True:
            begun = int(cursor or 0) if collection.paging != "cursor" else 0  # the offset this page is read for
            read_with = cursor
            params: dict[str, Any] = {**collection.params, **(extra or {})}
            if collection.paging == "cursor":
                params["limit"] = PAGE_LIMIT
                if cursor:
                    params["cursor"] = cursor
            elif collection.paging == "offset":
                params["limit"] = PAGE_LIMIT
                offset = int(cursor or 0)
                params["start"] = offset - 1 if last is not None and offset > 0 else offset  # a row early: see _join_on
            elif cursor:  # an unpaged list that answered with v1 pagination after all: on from its next_start
                params["start"] = int(cursor)
            asked = params.get("start", 0)
            body = self.get(collection.path, params, cost=collection.cost)
            data = _rows(body)
            if collection.paging == "offset" and last is not None:
                asked, body, data = self._join_on(collection, params, body, data, last)
            cursor = _next_cursor(collection, body, asked)
            if collection.paging == "cursor" and len(data) >= PAGE_LIMIT and "next_cursor" not in (body.get("additional_data") or {}):
                self._confirm_end(collection, params, data[-1])
            if cursor is not None and _stuck(collection, cursor, begun, data):
                raise PipedriveError(
                    f"Pipedrive {collection.path}: pagination.next_start {cursor} does not move past start "
                    f"{begun}; refusing to read the same rows again"
                )
            if collection.paging == "cursor" and cursor is not None and cursor == read_with:
                raise PipedriveError(
                    f"Pipedrive {collection.path}: next_cursor {cursor!r} is the cursor this page was read with; "
                    "refusing to read the same page again"
                )
            if data:
                last = data[-1]
            next_cursor = _offset_cursor(collection, params, cursor, last) if collection.paging == "offset" else cursor
            yield Page(records=data, next_cursor=next_cursor)
            if cursor is None:
                return

    def _confirm_end(self, collection: Collection, params: dict[str, Any], last: dict[str, Any]) -> None:
        """A full page without `next_cursor`: the end of the list (contract §3: null or absent at
        the end), or an answer cut short. One record asked in the other order tells: at the end,
        it is the page's last record. A list with no order to ask for (the v2 *Fields) is taken
        at its word."""
        if not collection.sortable:
            log.info("pipedrive.end_without_next_cursor", path=collection.path, records=PAGE_LIMIT)
            return
        probe = {k: v for k, v in params.items() if k != "cursor"}
        probe.update(limit=1, sort_by=params.get("sort_by", "id"), sort_direction="asc" if params.get("sort_direction") == "desc" else "desc")
        try:
            first = _rows(self.get(collection.path, probe, cost=collection.cost))
        except PipedriveError as exc:
            reason = f"asking for its last record failed: {exc}"
        else:
            if not first or first[0].get(collection.key) == last.get(collection.key):
                return
            reason = f"its last record in the other order is {first[0].get(collection.key)!r}, not {last.get(collection.key)!r}"
        raise PipedriveError(
            f"Pipedrive {collection.path}: a full page came without additional_data.next_cursor, and the list may go on "
            f"({reason}); refusing to guess whether more records exist"
        )

    def _join_on(
        self, collection: Collection, params: dict[str, Any], body: dict[str, Any], data: list[dict[str, Any]], last: dict[str, Any]
    ) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        """An offset page asked from one row early: the rows after `last`, the record handed out last,
        with the offset and answer they were read from.

        A row removed before the offset while the list is read (a deleted note, an archived lead,
        a row an edit moved to the end of an update_time order) shifts every later row back, and a
        page asked at the next offset would start past a row never read. So each page starts one
        row early; when that row is not `last`, the list moved, and the read steps back (10 rows,
        then twice as far each time) until the page holds `last`, or begins before it in the list's
        order (`last` itself is gone). Without a known order it steps back at most a page. Short
        first steps keep the read moving on even while rows go all the time."""
        key = collection.key
        if data and data[0].get(key) == last.get(key):
            return params["start"], body, data[1:]
        field = _ascending_sort_field(params)
        start = ask = params["start"]
        step = FIRST_STEP_BACK
        while ask > 0:
            ask = max(0, start - step)
            body = self.get(collection.path, {**params, "start": ask}, cost=collection.cost)
            data = _rows(body)
            at = next((n for n, row in enumerate(data) if row.get(key) == last.get(key)), None)
            if at is not None:
                data = data[at + 1 :]
                break
            if (data and field is not None and _not_after(data[0].get(field), last.get(field))) or (field is None and step >= PAGE_LIMIT):
                break
            step *= 2
        log.warning("pipedrive.list_moved", path=collection.path, last_id=last.get(key), read_again_from=ask)
        return ask, body, data


def _stuck(collection: Collection, next_start: str, begun: int, handed_out: list[dict[str, Any]]) -> bool:
    """Whether a v1 page read for offset `begun` leaves the read where it was: an unpaged list's
    next_start not past it; an offset list's the same, with no row handed out (a list that moved
    is read again from further back, `_join_on`, and its next_start may be behind the offset)."""
    if collection.paging == "none":
        return int(next_start) <= begun
    return collection.paging == "offset" and not handed_out and int(next_start) == begun


def _offset_cursor(collection: Collection, params: dict[str, Any], offset: str | None, last: dict[str, Any] | None) -> str | None:
    """An offset page's `next_cursor`: the offset, and the last record handed out as `_join_on` reads it
    (its key, and its value of the field the list is sorted by). Resumed from it (an extract's checkpoint),
    the read joins on that record as the next page of the same read does: rows that left the list
    before the offset meanwhile (a lead converted or archived overnight) do not make it skip others."""
    if offset is None or last is None:
        return offset
    fields = (collection.key, _ascending_sort_field(params))
    return json.dumps({"start": int(offset), "last": {name: last.get(name) for name in fields if name}})


def _offset_and_last(cursor: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """(offset, last record handed out) from an offset cursor; a plain offset (a checkpoint an earlier
    version wrote) has no record, and the read starts at the offset itself."""
    if cursor and cursor.startswith("{"):
        saved = json.loads(cursor)
        return str(saved["start"]), saved["last"]
    return cursor, None


def _rows(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data") or []
    return [data] if isinstance(data, dict) else data


def _ascending_sort_field(params: dict[str, Any]) -> str | None:
    """The field a v1 `sort` ("field ASC, field2 DESC") orders by first, when ascending."""
    first = str(params.get("sort") or "").split(",")[0].split()
    return first[0] if first and (len(first) == 1 or first[1].upper() == "ASC") else None


def _not_after(value: Any, bound: Any) -> bool:
    """`value` ≤ `bound` in a list's ascending order: numbers, or v1 timestamps (`YYYY-MM-DD HH:MM:SS`,
    ISO 8601). Values that cannot be compared count as not after (the step back stops there)."""
    if isinstance(value, (int, float)) and isinstance(bound, (int, float)):
        return value <= bound
    if isinstance(value, str) and isinstance(bound, str):
        return _instant(value) <= _instant(bound)
    return True


def _instant(text: str) -> str:
    """A timestamp as comparable text: `YYYY-MM-DDTHH:MM:SS.ffffff` (UTC, as Pipedrive writes them)."""
    clean = text.strip().replace(" ", "T", 1).removesuffix("Z").removesuffix("z")
    head, _, fraction = clean.partition(".")
    return f"{head}.{fraction.ljust(6, '0')[:6]}"


def _next_cursor(collection: Collection, body: dict[str, Any], asked: int) -> str | None:
    """The cursor of the page after `body`, or on a v1 list the offset it starts at (`body` was asked
    from offset `asked`); None at the end."""
    extra = body.get("additional_data") or {}
    if collection.paging == "cursor":
        return extra.get("next_cursor") or None
    # v1 puts pagination under additional_data.pagination, or flat in additional_data (contract §3). An
    # unpaged list follows it too if it ever comes: §3 leaves open whether /v1/users is paginated.
    pagination = extra.get("pagination") or extra
    if not pagination.get("more_items_in_collection"):
        return None
    if pagination.get("next_start") is not None:
        return str(pagination["next_start"])
    # the v1 schema of /v1/leads and the *Fields has no next_start (§3): on after the rows this answer holds
    if not _rows(body):
        raise PipedriveError(
            f"Pipedrive {collection.path}: a page from start {asked} with no rows, no next_start and more_items_in_collection; "
            "refusing to ask for the same page again"
        )
    return str(asked + len(_rows(body)))


def _ssl_verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """TLS verification is always on; a CA bundle path (--ca-bundle) becomes a context that trusts it."""
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    return verify


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
        return f"TLS verification failed ({text}); for a self-hosted certificate pass --ca-bundle"
    return text


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_HTML_START = re.compile(rb"\s*<(!doctype|html)", re.IGNORECASE)


def _is_html(response: httpx.Response) -> bool:
    return "html" in response.headers.get("content-type", "") or _HTML_START.match(response.content) is not None


def _snippet(response: httpx.Response) -> str:
    """The body in a few words: an HTML page by its title (or first text), anything else by its start."""
    if _is_html(response):
        match = _TITLE.search(response.text)
        words = " ".join(_TAG.sub(" ", match.group(1) if match else response.text).split())
        return f"an HTML page ({words[:120]!r})" if words else "an HTML page"
    text = response.text.strip().replace("\n", " ")
    return text[:200] or "(empty body)"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return _snippet(response)


def _explain(status: int, path: str, response: httpx.Response) -> str:
    if "text/html" in response.headers.get("content-type", ""):
        if status == 403:
            return (
                "Pipedrive blocked the requests (HTTP 403 HTML page from its firewall, usually after too many 429s); "
                "stop, wait a few minutes, and run again"
            )
        return f"Pipedrive {path}: HTTP {status} with {_snippet(response)} instead of JSON"
    messages = {
        401: "Pipedrive rejected the API token (HTTP 401): check PIPEDRIVE_API_TOKEN",
        402: "Pipedrive says the company account is not open (HTTP 402: trial expired or payment missing)",
        403: f"Pipedrive refused {path} (HTTP 403): {_error_text(response)}; use a global-admin user's token",
        404: f"Pipedrive has no {path} (HTTP 404): check PIPEDRIVE_BASE_URL",
        410: f"Pipedrive removed {path} (HTTP 410 Gone)",
        415: f"Pipedrive {path}: a feature this account has not enabled (HTTP 415): {_error_text(response)}",
    }
    return messages.get(status, f"Pipedrive {path}: HTTP {status}: {_error_text(response)}")
