"""A small TOON encoder (and a tolerant reader for ``key: value`` lines).

The real Customermates MCP server answers tool calls with text produced by
``@toon-format/toon``'s ``encode()`` (2-space indent, comma delimiter). The fake
must produce the same text, e.g. for ``create_plain_custom_column``::

    id: 9f66...
    label: Pipedrive ID
    message: "Custom field \\"Pipedrive ID\\" created successfully"

and for ``list_custom_columns`` a list of objects with a nested tabular array.

Only what the fake needs is implemented: objects, arrays of primitives, tabular
arrays of flat objects, mixed lists, and the quoting rules for strings and keys.
"""

from __future__ import annotations

import math
import re
from typing import Any

INDENT = "  "
DELIMITER = ","

_NUMERIC_LIKE = re.compile(r"^-?\d+(?:\.\d+)?(?:e[+-]?\d+)?$", re.IGNORECASE)
_LEADING_ZERO = re.compile(r"^0\d+$")
_SAFE_KEY = re.compile(r"^[A-Za-z_][\w.]*$")


def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int, float))


def format_number(value: float | int) -> str:
    """Format a number the way JavaScript's ``String(n)`` does for common values."""
    if isinstance(value, bool):  # pragma: no cover - guarded by callers
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return "null"
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        # JavaScript uses e.g. 1e-7 / 1.5e+21; TOON requires a plain decimal form.
        text = format(value, "f").rstrip("0").rstrip(".")
    return text


def _needs_quotes(value: str, delimiter: str = DELIMITER) -> bool:
    if value == "":
        return True
    if value != value.strip():
        return True
    if value in ("true", "false", "null"):
        return True
    if _NUMERIC_LIKE.match(value) or _LEADING_ZERO.match(value):
        return True
    if ":" in value or '"' in value or "\\" in value:
        return True
    if re.search(r"[\[\]{}]", value):
        return True
    if re.search(r"[\n\r\t]", value):
        return True
    if delimiter in value:
        return True
    if value.startswith("-"):
        return True
    return False


def _escape(value: str) -> str:
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )


def encode_string(value: str, delimiter: str = DELIMITER) -> str:
    if _needs_quotes(value, delimiter):
        return f'"{_escape(value)}"'
    return value


def encode_key(key: str) -> str:
    if _SAFE_KEY.match(key):
        return key
    return f'"{_escape(key)}"'


def encode_primitive(value: Any, delimiter: str = DELIMITER) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return format_number(value)
    return encode_string(str(value), delimiter)


def _tabular_fields(items: list) -> list[str] | None:
    """Return the header fields if ``items`` can be written as a table."""
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    fields = list(items[0].keys())
    if not fields:
        return None
    field_set = set(fields)
    for item in items:
        if set(item.keys()) != field_set:
            return None
        if not all(_is_primitive(v) for v in item.values()):
            return None
    return fields


def _encode_array(key: str | None, items: list, depth: int, lines: list[str]) -> None:
    prefix = INDENT * depth
    head = encode_key(key) if key is not None else ""
    n = len(items)
    if n == 0:
        lines.append(f"{prefix}{head}[0]:")
        return
    if all(_is_primitive(v) for v in items):
        joined = DELIMITER.join(encode_primitive(v) for v in items)
        lines.append(f"{prefix}{head}[{n}]: {joined}")
        return
    fields = _tabular_fields(items)
    if fields is not None:
        header = DELIMITER.join(encode_key(f) for f in fields)
        lines.append(f"{prefix}{head}[{n}]{{{header}}}:")
        for item in items:
            row = DELIMITER.join(encode_primitive(item[f]) for f in fields)
            lines.append(f"{INDENT * (depth + 1)}{row}")
        return
    lines.append(f"{prefix}{head}[{n}]:")
    for item in items:
        _encode_list_item(item, depth + 1, lines)


def _encode_list_item(item: Any, depth: int, lines: list[str]) -> None:
    prefix = INDENT * depth
    if _is_primitive(item):
        lines.append(f"{prefix}- {encode_primitive(item)}")
        return
    if isinstance(item, list):
        sub: list[str] = []
        _encode_array(None, item, 0, sub)
        lines.append(f"{prefix}- {sub[0]}")
        for extra in sub[1:]:
            lines.append(f"{prefix}{INDENT}{extra}")
        return
    if not item:
        lines.append(f"{prefix}-")
        return
    sub = []
    _encode_object(item, 0, sub)
    # The first field goes on the hyphen line, the others are indented one level
    # deeper than the hyphen.
    lines.append(f"{prefix}- {sub[0]}")
    for extra in sub[1:]:
        lines.append(f"{prefix}{INDENT}{extra}")


def _encode_object(obj: dict, depth: int, lines: list[str]) -> None:
    prefix = INDENT * depth
    for key, value in obj.items():
        if isinstance(value, dict):
            lines.append(f"{prefix}{encode_key(key)}:")
            _encode_object(value, depth + 1, lines)
        elif isinstance(value, list):
            _encode_array(key, value, depth, lines)
        else:
            lines.append(f"{prefix}{encode_key(key)}: {encode_primitive(value)}")


def encode(value: Any) -> str:
    """Encode ``value`` as TOON text (no trailing newline)."""
    lines: list[str] = []
    if isinstance(value, dict):
        _encode_object(value, 0, lines)
    elif isinstance(value, list):
        _encode_array(None, value, 0, lines)
    else:
        lines.append(encode_primitive(value))
    return "\n".join(lines)


def read_simple_fields(text: str) -> dict[str, str]:
    """Read top-level ``key: value`` lines of a TOON document (unquoting strings).

    Good enough to pick ``id``/``label``/``message`` out of a create-tool answer.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith(" ") or ":" not in line:
            continue
        key, _, raw = line.partition(":")
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            body = raw[1:-1]
            raw = re.sub(
                r"\\(.)",
                lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)),
                body,
            )
        out[key.strip().strip('"')] = raw
    return out
