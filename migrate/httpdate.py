"""HTTP dates, as both APIs' `Date` and `Retry-After` headers carry them."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP date (`Sun, 29 Nov 2026 23:40:00 GMT`) as an aware UTC datetime; None if absent or
    unreadable. A date without a zone (`-0000`) is taken as UTC."""
    try:
        moment = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (seconds, or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = parse_http_date(value)
        return None if when is None else max(0.0, (when - datetime.now(UTC)).total_seconds())
