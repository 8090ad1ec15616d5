"""How staged rows are keyed, ordered and marked: plain Python, no DuckDB, so that the
transform's worker processes (`transform.records`) read them without loading the database."""

from __future__ import annotations

import re
from typing import Any

REPLACED_CHARACTERS = "_replaced_characters"  # added to a staged record whose lone surrogates became U+FFFD: their fields
NUMERIC_ID = "[0-9]{1,18}"  # ids sorted as numbers (`order_key` and `stream_ordered` agree)
_NUMERIC_ID = re.compile(NUMERIC_ID)


def numeric_id(identity: str) -> int | None:
    """The id as a number when it is one (kept beside it as `num_id`, the sort key)."""
    return int(identity) if _NUMERIC_ID.fullmatch(identity) else None


def number_id(value: float) -> str | None:
    """An id given as a number, as text: a whole float by the integer it is (1.0 is id 1, as a tool
    that keeps a column of integers with nulls as floats writes it); ``None`` for a boolean or a
    fraction, which names no id. The one rule: the transform reads ids by it, a snapshot is staged by it."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        return None
    return str(int(value))


def with_whole_ids(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON object (a `json.loads` hook) with the ids it gives as whole floats (`"deal_id": 5.0`,
    from a spreadsheet or a JSON tool that writes every number as a float) as the integers they are
    (`number_id`): staged ids are keyed and joined as text, where '5.0' is no deal '5'. An id is
    `id` or a name ending in `_id`; a fraction or text stays as it came, for the transform to report."""
    for name, value in record.items():
        if type(value) is float and (name == "id" or name.endswith("_id")) and (text := number_id(value)) is not None:
            record[name] = int(text)
    return record


def order_key(identity: str) -> tuple[int, int, int, str]:
    """The order records are read in: numeric ids as numbers (shorter first on a tie, "12"
    before "012"), then the others (lead UUIDs) as text."""
    if _NUMERIC_ID.fullmatch(identity):
        return (0, int(identity), len(identity), identity)
    return (1, 0, 0, identity)


def is_deleted_record(record: dict[str, Any]) -> bool:
    """Whether a Pipedrive record, as the API gave it, is deleted there (as staging flags it). v1
    gives some booleans as 0/1 (contract §12.4)."""
    if record.get("is_deleted") in _TRUE or record.get("status") == "deleted" or record.get("deleted") in _TRUE:
        return True
    # v1 notes and activity types: active_flag false means deleted. v1 users carry is_deleted; an
    # inactive user is not a deleted one.
    return record.get("active_flag") in _FALSE and "is_deleted" not in record


_TRUE = (True, 1, "1")
_FALSE = (False, 0, "0")  # `None in _FALSE` is False: a flag not given is no flag
