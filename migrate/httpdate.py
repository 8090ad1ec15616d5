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
