"""How staged rows are keyed, ordered and marked: plain Python, no DuckDB, so that the
transform's worker processes (`transform.records`) read them without loading the database."""

from __future__ import annotations

import re

REPLACED_CHARACTERS = "_replaced_characters"  # added to a staged record whose lone surrogates became U+FFFD: their fields
NUMERIC_ID = "[0-9]{1,18}"  # ids sorted as numbers (`order_key` and `stream_ordered` agree)
_NUMERIC_ID = re.compile(NUMERIC_ID)


def numeric_id(identity: str) -> int | None:
    """The id as a number when it is one (kept beside it as `num_id`, the sort key)."""
    return int(identity) if _NUMERIC_ID.fullmatch(identity) else None


def order_key(identity: str) -> tuple[int, int, int, str]:
    """The order records are read in: numeric ids as numbers (shorter first on a tie, "12"
    before "012"), then the others (lead UUIDs) as text."""
    if _NUMERIC_ID.fullmatch(identity):
        return (0, int(identity), len(identity), identity)
    return (1, 0, 0, identity)
