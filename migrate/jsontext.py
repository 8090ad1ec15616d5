"""JSON read and written by orjson, with json's results.

orjson parses two to three times faster than json and writes nine times faster, which matters where
the GIL is held for every record (a Pipedrive page, the staging of its records, the transform's reads
of them). It differs from json at the edges: it reads an integer past 64 bits as a float, and it
neither reads nor writes lone surrogates; those texts and values go to json.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))  # every digit a "0", the rest " "
_LONG_NUMBER = b"0" * 19  # 19 digits in a row, as the translation writes them


def loads(text: bytes | str) -> Any:
    """The value of a JSON text, equal to what `json.loads` gives for it. A text with 19 digits in a
    row anywhere (found in well under a microsecond a kilobyte), or one orjson refuses, is read by json."""
    content = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if _LONG_NUMBER not in content.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def dumps(value: Any) -> str:
    """Compact JSON text of `value` (a raw record), which `loads` reads back equal. NaN and infinities,
    which no standard JSON text holds, are not carried exactly (orjson writes them null). Not for text
    that is hashed: its spacing differs from `json.dumps`."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate
        return json.dumps(value, ensure_ascii=False)
