"""JSON read and written by orjson, with json's results.

orjson parses two to three times faster than json and writes nine times faster, which matters where
the GIL is held for every record (a Pipedrive page, the staging of its records, the transform's reads
of them). It differs from json at the edges: it reads an integer past 64 bits as a float, and it
neither reads nor writes lone surrogates; those texts and values go to json.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))  # every digit a "0", the rest " "
_LONG_NUMBER = b"0" * 19  # 19 digits in a row, as the translation writes them
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, a surrogate is always alone (json joins pairs)
_REPLACEMENT = "\ufffd"


class LoneSurrogateError(ValueError):
    """A string holds a lone UTF-16 surrogate (JSON's "\\ud800" escape), which no UTF-8 text holds;
    `paths` says where (dotted, list items by index)."""

    def __init__(self, paths: list[str]):
        super().__init__(f"lone surrogates in {', '.join(paths)}")
        self.paths = paths


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
    which no standard JSON text holds, are not carried exactly (orjson writes them null); a value with
    a lone surrogate, which no UTF-8 text holds, raises `LoneSurrogateError`. Not for text that is
    hashed: its spacing differs from `json.dumps`."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN or an infinity beside it, which json would write as no JSON text holds
            text = json.dumps(_finite(value), ensure_ascii=False)
    if _LONE_SURROGATE.search(text):
        raise LoneSurrogateError(_lone_surrogate_paths(value))
    return text


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities null, as orjson writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _lone_surrogate_paths(value: Any, path: str = "") -> list[str]:
    """Where `value` holds strings with lone surrogates: dotted paths (list items by index)."""
    if isinstance(value, str):
        return [path or "(the value)"] if _LONE_SURROGATE.search(value) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    found = []
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        found += [where] if isinstance(key, str) and _LONE_SURROGATE.search(key) else []
        found += _lone_surrogate_paths(item, where)
    return found


def replace_lone_surrogates(value: Any) -> Any:
    """`value` with each lone surrogate in its strings (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub(_REPLACEMENT, value)
    if isinstance(value, dict):
        return {replace_lone_surrogates(k): replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_lone_surrogates(v) for v in value]
    return value
