"""An in-process fake of the Customermates REST API and MCP endpoint.

It follows ``/work/shared/contracts/customermates/CONTRACT.md`` and, where they
differ, the recordings of a real server in ``recorded/*.yaml`` (see the test
``tests/test_fake_customermates.py``, which replays every recorded exchange
against this fake). It is deliberately strict: it rejects what the real server
rejects, with the same status codes and error texts, so that the migration
tool's tests catch the same bugs the real server would.

Shape::

    with FakeCustomermates() as cm:
        client = httpx.Client(base_url=cm.url, headers={"x-api-key": VALID_KEY})
        client.post("/api/v1/contacts/many", json={"contacts": [...]})
        cm.records("contacts")

Built on ``http.server.ThreadingHTTPServer`` so that tests control sockets
(dropped connections, stalls, a hanging MCP endpoint).
"""

from __future__ import annotations

import copy
import functools
import html
import ipaddress
import json
import decimal
import math
import os
import random
import re
import socket
import threading
import time
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from tests.fakes import toon
from tests.fakes import zod_messages as zm

__all__ = [
    "FakeCustomermates",
    "RequestRecord",
    "VALID_KEY",
    "VALID_KEY_USER2",
    "DEFAULT_USERS",
    "CONTRACT_DIR",
    "markdown_to_tiptap",
]

def _default_contract_dir() -> Path:
    """Where openapi.json / mcp-tools.json / recorded/ live.

    ``$CUSTOMERMATES_CONTRACT_DIR`` wins; then a vendored copy in
    ``tests/fixtures/customermates``; then ``shared/`` beside the checkout (as CI lays it out);
    then the shared contract directory of the development machine.
    """
    env = os.environ.get("CUSTOMERMATES_CONTRACT_DIR")
    if env:
        return Path(env)
    vendored = Path(__file__).resolve().parents[1] / "fixtures" / "customermates"
    if (vendored / "openapi.json").is_file():
        return vendored
    beside_checkout = Path(__file__).resolve().parents[3] / "shared" / "contracts" / "customermates"
    if (beside_checkout / "openapi.json").is_file():
        return beside_checkout
    return Path("/work/shared/contracts/customermates")


CONTRACT_DIR = _default_contract_dir()

VALID_KEY = "cmFakeAdminKey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"
VALID_KEY_USER2 = "cmFakeJaneKey00123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"

ADMIN_ROLE_ID = "00000000-0000-4000-8000-000000000002"
USER_CREATED_AT = "2026-11-28T16:24:19.270Z"

DEFAULT_USERS: list[dict] = [
    {
        "id": "11111111-1111-4111-8111-111111111111",
        "email": "admin@example.com",
        "firstName": "Ada",
        "lastName": "Admin",
        "roleId": ADMIN_ROLE_ID,
        "roleName": "Admin",
        "status": "active",
        "country": "de",
        "avatarUrl": None,
        "createdAt": USER_CREATED_AT,
        "updatedAt": USER_CREATED_AT,
    },
    {
        "id": "22222222-2222-4222-8222-222222222222",
        "email": "jane.doe@example.com",
        "firstName": "Jane",
        "lastName": "Doe",
        "roleId": ADMIN_ROLE_ID,
        "roleName": "Admin",
        "status": "active",
        "country": "de",
        "avatarUrl": None,
        "createdAt": USER_CREATED_AT,
        "updatedAt": USER_CREATED_AT,
    },
]

UUID_RE = re.compile(
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
    r"|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)\Z"
)

ENTITY_TYPES = ("contact", "organization", "deal", "service", "task")
PLURAL = {
    "contact": "contacts",
    "organization": "organizations",
    "deal": "deals",
    "service": "services",
    "task": "tasks",
    "user": "users",
}
SINGULAR = {v: k for k, v in PLURAL.items()}
TITLE = {
    "contact": "Contact",
    "organization": "Organization",
    "deal": "Deal",
    "service": "Service",
    "task": "Task",
    "user": "User",
}
COMPONENT_NAME = {
    "contact": ("Contact", "Contacts"),
    "organization": ("Organization", "Organizations"),
    "deal": ("Deal", "Deals"),
    "service": ("Service", "Services"),
    "task": ("Task", "Tasks"),
}

# Relation fields per entity, in the order the server validates them.
RELATIONS: dict[str, list[tuple[str, str]]] = {
    "contact": [("organizationIds", "organization"), ("userIds", "user"), ("dealIds", "deal"), ("taskIds", "task")],
    "organization": [("contactIds", "contact"), ("userIds", "user"), ("dealIds", "deal"), ("taskIds", "task")],
    "deal": [
        ("organizationIds", "organization"),
        ("userIds", "user"),
        ("contactIds", "contact"),
        ("services", "service"),
        ("taskIds", "task"),
    ],
    "service": [("userIds", "user"), ("dealIds", "deal"), ("taskIds", "task")],
    "task": [
        ("userIds", "user"),
        ("contactIds", "contact"),
        ("organizationIds", "organization"),
        ("dealIds", "deal"),
        ("serviceIds", "service"),
    ],
}
# Relation arrays in the DTO, in DTO key order.
DTO_RELATIONS: dict[str, list[str]] = {
    "contact": ["organization", "user", "deal", "task"],
    "organization": ["contact", "user", "deal", "task"],
    "deal": ["organization", "user", "contact", "service", "task"],
    "service": ["user", "deal", "task"],
    "task": ["user", "contact", "organization", "deal", "service"],
}
# filterableFields: relation fields listed before the custom columns
FILTER_RELATIONS_BEFORE: dict[str, list[str]] = {
    "contact": ["organizationIds", "dealIds", "taskIds"],
    "organization": ["contactIds", "dealIds", "taskIds"],
    "deal": ["contactIds", "organizationIds", "serviceIds", "taskIds"],
    "service": ["dealIds", "taskIds"],
    "task": ["contactIds", "organizationIds", "dealIds", "serviceIds"],
}
FILTER_FIELD_TYPE = {
    "organizationIds": "organization",
    "contactIds": "contact",
    "dealIds": "deal",
    "serviceIds": "service",
    "taskIds": "task",
    "userIds": "user",
}
SORTABLE: dict[str, list[str]] = {
    "contact": ["name", "createdAt", "updatedAt"],
    "organization": ["name", "createdAt", "updatedAt"],
    "deal": ["name", "totalValue", "totalQuantity", "createdAt", "updatedAt"],
    "service": ["name", "amount", "createdAt", "updatedAt"],
    "task": ["createdAt", "updatedAt"],
}
DEFAULT_SORT = {
    "contact": {"field": "name", "direction": "asc"},
    "organization": {"field": "name", "direction": "asc"},
    "deal": {"field": "name", "direction": "asc"},
    "service": {"field": "name", "direction": "asc"},
    "task": {"field": "updatedAt", "direction": "desc"},
}
RELATION_OPERATORS = ["in", "notIn", "hasNone", "hasSome"]
DATE_OPERATORS = ["gt", "gte", "lt", "lte", "between", "inLastDays"]
EMAIL_OPERATORS = ["equals", "isNull", "isNotNull"]
COLUMN_OPERATORS = {
    "singleSelect": ["in", "notIn", "isNull", "isNotNull"],
    "currency": ["equals", "gt", "gte", "lt", "lte", "isNull", "isNotNull"],
    "date": ["gt", "gte", "lt", "lte", "between", "isNull", "isNotNull"],
    "dateTime": ["gt", "gte", "lt", "lte", "between", "isNull", "isNotNull"],
    "dateRange": ["contains", "gt", "gte", "lt", "lte", "between", "isNull", "isNotNull"],
    "dateTimeRange": ["contains", "gt", "gte", "lt", "lte", "between", "isNull", "isNotNull"],
    "email": ["equals", "contains", "isNull", "isNotNull"],
    "phone": ["equals", "contains", "isNull", "isNotNull"],
    "plain": ["equals", "contains", "isNull", "isNotNull"],
    "link": ["equals", "contains", "isNull", "isNotNull"],
}
COLUMN_TYPES = tuple(COLUMN_OPERATORS)
DATE_COLUMN_TYPES = ("date", "dateTime", "dateRange", "dateTimeRange")

MSG = {
    "organization": "Organization ID not found or not accessible.",
    "user": "User ID not found or not accessible.",
    "contact": "Contact ID not found or not accessible.",
    "deal": "Deal ID not found or not accessible.",
    "service": "Service ID not found or not accessible.",
    "task": "Task ID not found or not accessible.",
    "customColumnNotFound": "Custom column ID not found or not accessible. Available columns: {validValues}.",
    "customFieldInvalidCurrency": "The currency value is invalid. Must be a valid number.",
    "customFieldInvalidDate": (
        "The date value is invalid. Must be in ISO 8601 date format (e.g., 2024-01-15) or ISO 8601 "
        "datetime format (e.g., 2024-01-15T00:00:00Z)."
    ),
    "customFieldInvalidDateRange": (
        "The date range is invalid. Must be two ISO 8601 dates separated by a comma, with start on or "
        "before end (e.g., 2024-01-15,2024-01-22)."
    ),
    "customFieldInvalidDateTime": (
        "The date-time value is invalid. Must be in ISO 8601 datetime format with time "
        "(e.g., 2024-01-15T10:30:00Z)."
    ),
    "customFieldInvalidDateTimeRange": (
        "The date-time range is invalid. Must be two ISO 8601 datetimes separated by a comma, with start "
        "on or before end (e.g., 2024-01-15T09:00:00Z,2024-01-15T17:00:00Z)."
    ),
    "customFieldInvalidEmail": (
        "The email value is invalid. Must be a valid email address format (e.g., user@example.com). For "
        "multiple emails, separate by comma (e.g., user1@example.com, user2@example.com)."
    ),
    "customFieldInvalidPhone": (
        "The phone value is invalid. Must be in E.164 format (e.g., +491234567890). For multiple phone "
        "numbers, separate by comma (e.g., +491234567890, +499876543210)."
    ),
    "customFieldInvalidSingleSelect": (
        "The single select value is invalid. Must be one of the allowed options: {validValues}."
    ),
    "customFieldInvalidUrl": (
        "The URL value is invalid. Must be a valid URL format (e.g., https://example.com). For multiple "
        "URLs, separate by comma (e.g., https://example.com, https://example.org)."
    ),
    "invalidFilterField": "Filter field not found or not accessible. Available fields: {validValues}.",
    "invalidSortField": "Sort field not found or not accessible.",
    "filterBetweenInvalidArrayLength": "The 'between' operator requires an array with exactly 2 elements.",
    "notesInvalidFormat": "Invalid notes format. Must be valid Tiptap JSON or markdown text",
    "notesExceedsMaxLength": "Notes content exceeds maximum length",
}

MAX_NOTES_LENGTH = 65_535
MAX_NOTES_JSON_SIZE = 262_144
MCP_SUPPORTED_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05", "2024-10-07")
MCP_LATEST_VERSION = "2025-06-18"
UUID_PATTERN_TEXT = (
    "/^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
    "|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$/"
)


# ==========================================================================
# small helpers


def is_uuid(value: Any) -> bool:
    return isinstance(value, str) and bool(UUID_RE.match(value))


def js_len(text: str) -> int:
    """``String.prototype.length`` (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def jsonb(value: Any) -> Any:
    """Reorder object keys the way PostgreSQL ``jsonb`` stores them (shorter keys first)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode("utf-8")), k.encode("utf-8")))
        return {k: jsonb(value[k]) for k in keys}
    if isinstance(value, list):
        return [jsonb(v) for v in value]
    return value


def _js_numbers(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _js_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_js_numbers(v) for v in value]
    return value


def js_json(value: Any) -> str:
    """``JSON.stringify`` (compact, integral floats without ``.0``)."""
    return json.dumps(_js_numbers(value), ensure_ascii=False, separators=(",", ":"))


def fmt_ts(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_ISO_DATE = r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
_ISO_DATETIME_RE = re.compile(
    rf"^({_ISO_DATE})T((?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?)Z\Z", re.ASCII
)
_ISO_DATE_RE = re.compile(rf"^({_ISO_DATE})\Z", re.ASCII)


def _valid_calendar_date(text: str) -> bool:
    y, m, d = (int(p) for p in text.split("-"))
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return d <= (29 if leap else 28)
    if m in (4, 6, 9, 11):
        return d <= 30
    return True


def is_iso_date(value: str) -> bool:
    """zod ``z.iso.date()``."""
    m = _ISO_DATE_RE.match(value)
    return bool(m) and _valid_calendar_date(m.group(1))


def is_iso_datetime(value: str) -> bool:
    """zod ``z.iso.datetime()`` with default options (``Z`` required, no offset)."""
    m = _ISO_DATETIME_RE.match(value)
    return bool(m) and _valid_calendar_date(m.group(1))


def parse_js_date_ms(value: str) -> float:
    """``new Date(value).getTime()`` for the ISO forms accepted above (NaN otherwise)."""
    if is_iso_date(value):
        dt = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return dt.timestamp() * 1000
    m = _ISO_DATETIME_RE.match(value)
    if m:
        date_part, time_part = m.group(1), m.group(2)
        hh, mm = int(time_part[0:2]), int(time_part[3:5])
        ss, frac = 0, 0.0
        if len(time_part) > 5:
            sec = time_part[6:]
            if "." in sec:
                s, f = sec.split(".", 1)
                ss, frac = int(s), float("0." + f)
            else:
                ss = int(sec)
        dt = datetime.strptime(date_part, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        base = dt.timestamp() * 1000 + ((hh * 60 + mm) * 60 + ss) * 1000
        return base + math.floor(frac * 1000)
    return float("nan")


_JS_WS = " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_JS_DECIMAL = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z", re.ASCII)


def js_number_coerce(value: str) -> float:
    """``Number(value)`` for a string."""
    s = value.strip(_JS_WS)
    if s == "":
        return 0.0
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", s):
        return float(int(s[2:], 16))
    if re.fullmatch(r"0[bB][01]+", s):
        return float(int(s[2:], 2))
    if re.fullmatch(r"0[oO][0-7]+", s):
        return float(int(s[2:], 8))
    if s in ("Infinity", "+Infinity"):
        return float("inf")
    if s == "-Infinity":
        return float("-inf")
    if _JS_DECIMAL.match(s):
        try:
            return float(s)
        except (OverflowError, ValueError):  # pragma: no cover
            return float("nan")
    return float("nan")


ZOD_EMAIL_RE = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}\Z"
)
ZOD_E164_RE = re.compile(r"^\+(?:[0-9]){6,14}[0-9]\Z")
_SPECIAL_SCHEMES = {"http", "https", "ws", "wss", "ftp", "file"}
_FORBIDDEN_HOST = set(" #%/:<>?@[\\]^|\t\n\r")


def is_zod_email(value: str) -> bool:
    return bool(ZOD_EMAIL_RE.match(value))


def whatwg_url_ok(value: str) -> tuple[bool, str]:
    """Approximate ``new URL(value)``: returns (parses, scheme)."""
    s = value.strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f ")
    s = s.replace("\t", "").replace("\n", "").replace("\r", "")
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)\Z", s, re.S)
    if not m:
        return False, ""
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in _SPECIAL_SCHEMES:
        return True, scheme
    if scheme == "file":
        return True, scheme
    rest = rest.lstrip("/\\")
    authority = re.split(r"[/\\?#]", rest, maxsplit=1)[0]
    host_port = authority.rsplit("@", 1)[-1]
    if host_port.startswith("["):  # an IPv6 address, which the parser checks as such
        address, bracket, port = host_port[1:].partition("]")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return False, scheme
        ported = port[:1] == ":" and (port[1:] == "" or (re.fullmatch(r"[0-9]+", port[1:]) is not None and int(port[1:]) <= 65535))
        return bool(bracket) and (port == "" or ported), scheme
    host, _, port = host_port.partition(":")
    if not host:
        return False, scheme
    if any(ch in _FORBIDDEN_HOST for ch in unicodedata.normalize("NFKC", host)):  # after IDNA's mapping: U+00A0 → " "
        return False, scheme
    if _ends_in_a_number(host) and not _is_ipv4(host):  # an IPv4 address, to the parser, and not a valid one
        return False, scheme
    if port and (not re.fullmatch(r"[0-9]+", port) or int(port) > 65535):
        return False, scheme
    return True, scheme


def _host_labels(host: str) -> list[str]:
    """The host's labels as the URL parser splits them after IDNA (UTS #46: fullwidth digits, ideographic
    full stops), one trailing empty label dropped."""
    labels = unicodedata.normalize("NFKC", host).replace("\u3002", ".").split(".")
    return labels[:-1] if labels[-1] == "" and len(labels) > 1 else labels


def _ipv4_number(part: str) -> int | None:
    """WHATWG "IPv4 number parser": decimal, 0x/0X hex, leading-0 octal; None on failure."""
    if part == "":
        return None
    if len(part) >= 2 and part[:2] in ("0x", "0X"):
        part, radix, pattern = part[2:], 16, r"[0-9A-Fa-f]*"
    elif len(part) >= 2 and part[0] == "0":
        part, radix, pattern = part[1:], 8, r"[0-7]*"
    else:
        radix, pattern = 10, r"[0-9]*"
    if not re.fullmatch(pattern, part):
        return None
    return int(part, radix) if part else 0


def _ends_in_a_number(host: str) -> bool:
    """WHATWG "ends in a number checker": the last label is ASCII digits, or parses as an IPv4 number."""
    last = _host_labels(host)[-1]
    return bool(re.fullmatch(r"[0-9]+", last)) or _ipv4_number(last) is not None


def _is_ipv4(host: str) -> bool:
    """WHATWG "IPv4 parser" succeeds: at most four numbers, all but the last < 256, the last < 256**(5-n)."""
    numbers = [_ipv4_number(part) for part in _host_labels(host)]
    if len(numbers) > 4 or any(n is None for n in numbers):
        return False
    return all(n < 256 for n in numbers[:-1]) and numbers[-1] < 256 ** (5 - len(numbers))


def is_secure_url(value: str) -> bool:
    """zod ``z.url()`` plus the server's https/http/mailto/tel protocol check."""
    ok, scheme = whatwg_url_ok(value.strip())
    return ok and scheme in ("https", "http", "mailto", "tel")


def collate_key(text: str) -> tuple:
    """A locale-like sort key (case- and accent-insensitive first, then exact)."""
    base = "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    ).casefold()
    return (base, text)


def _label_sort(cols: list[dict]) -> list[dict]:
    # Equal labels: the most recently created column first (as recorded).
    return sorted(cols, key=lambda c: (collate_key(c["label"]), -c["_seq"]))


# ==========================================================================
# markdown -> Tiptap JSON (markdown-it + prosemirror-markdown, simplified)


class InvalidNotes(Exception):
    """The notes cannot be turned into a valid Tiptap document."""


TIPTAP_NODES = {
    "doc", "paragraph", "text", "heading", "blockquote", "bulletList", "orderedList", "listItem",
    "codeBlock", "hardBreak", "horizontalRule", "taskList", "taskItem",
}
TIPTAP_MARKS = {"bold", "italic", "strike", "code", "link", "underline"}
MARK_RANK = {"link": 0, "bold": 1, "code": 2, "italic": 3, "strike": 4, "underline": 5}

_FENCE_RE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)\Z")
_ATX_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*\Z")
_HR_RE = re.compile(r"^ {0,3}(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})\Z")
_BQ_RE = re.compile(r"^ {0,3}> ?(.*)\Z")
_BULLET_RE = re.compile(r"^( {0,3})([-+*])([ \t]+|\Z)(.*)\Z")
_ORDERED_RE = re.compile(r"^( {0,3})(\d{1,9})([.)])([ \t]+|\Z)(.*)\Z")
_SETEXT_RE = re.compile(r"^ {0,3}(=+|-+)[ \t]*\Z")
_TABLE_DELIM_RE = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*\Z")
_TASK_RE = re.compile(r"^\[([ xX])\] ")
_ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ENTITY_RE = re.compile(r"&(?:#[xX][0-9a-fA-F]{1,6}|#\d{1,7}|[A-Za-z][A-Za-z0-9]{1,31});")
_AUTOLINK_RE = re.compile(r"<([A-Za-z][A-Za-z0-9+.\-]{1,31}:[^<>\x00-\x20]*)>")
_EMAIL_AUTOLINK_RE = re.compile(
    r"<([a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*)>"
)
_BAD_PROTO_RE = re.compile(r"^(vbscript|javascript|file|data):", re.IGNORECASE)
_GOOD_DATA_RE = re.compile(r"^data:image/(gif|png|jpeg|webp);", re.IGNORECASE)


def _blank(line: str) -> bool:
    return line.strip(" \t") == ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _expand_tabs(line: str) -> str:
    if "\t" not in line:
        return line
    out = []
    col = 0
    for ch in line:
        if ch == "\t":
            pad = 4 - (col % 4)
            out.append(" " * pad)
            col += pad
        else:
            out.append(ch)
            col += 1
    return "".join(out)


def _split_cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return re.split(r"(?<!\\)\|", s)


def _is_table_start(lines: list[str], i: int) -> bool:
    if i + 1 >= len(lines):
        return False
    head, delim = lines[i], lines[i + 1]
    if "|" not in head or _indent(head) >= 4:
        return False
    if not _TABLE_DELIM_RE.match(delim) or ("|" not in delim and ":" not in delim):
        return False
    return len(_split_cells(head)) == len(_split_cells(delim))


def _list_marker(line: str):
    m = _BULLET_RE.match(line)
    if m:
        return ("bullet", m.group(2), m.group(1), m.group(2), m.group(3), m.group(4))
    m = _ORDERED_RE.match(line)
    if m:
        return ("ordered", m.group(3), m.group(1), m.group(2) + m.group(3), m.group(4), m.group(5), int(m.group(2)))
    return None


def _starts_block(line: str, interrupting_paragraph: bool = True) -> bool:
    if _blank(line):
        return True
    if _indent(line) >= 4:
        return False
    fence = _FENCE_RE.match(line)
    if fence:
        return not (fence.group(2)[0] == "`" and "`" in fence.group(3))
    if _ATX_RE.match(line) or _HR_RE.match(line) or _BQ_RE.match(line):
        return True
    mk = _list_marker(line)
    if mk:
        content = mk[5]
        if interrupting_paragraph:
            if content.strip() == "":
                return False
            if mk[0] == "ordered" and mk[6] != 1:
                return False
        return True
    return False


def _code_block(text: str, language: str | None) -> dict:
    node: dict = {"type": "codeBlock", "attrs": {"language": language}}
    if text:
        node["content"] = [{"type": "text", "text": text}]
    return node


def _parse_blocks(lines: list[str]) -> list[dict]:
    out: list[dict] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if _blank(line):
            i += 1
            continue
        if _indent(line) >= 4:
            buf = []
            while i < n and (_blank(lines[i]) or _indent(lines[i]) >= 4):
                buf.append(lines[i][4:] if len(lines[i]) >= 4 else "")
                i += 1
            while buf and _blank(buf[-1]):
                buf.pop()
            out.append(_code_block("\n".join(buf), None))
            continue
        m = _FENCE_RE.match(line)
        if m and not (m.group(2)[0] == "`" and "`" in m.group(3)):
            fence_indent, fence, info = len(m.group(1)), m.group(2), m.group(3).strip()
            i += 1
            buf = []
            close_re = re.compile(r"^ {0,3}(" + re.escape(fence[0]) + "{" + str(len(fence)) + r",})[ \t]*\Z")
            while i < n:
                if close_re.match(lines[i]):
                    i += 1
                    break
                ln = lines[i]
                strip = min(fence_indent, _indent(ln))
                buf.append(ln[strip:])
                i += 1
            info = _unescape_text(info)
            out.append(_code_block("\n".join(buf), info or None))
            continue
        m = _ATX_RE.match(line)
        if m:
            text = m.group(2) or ""
            text = re.sub(r"(?:^|[ \t]+)#+[ \t]*\Z", "", text).strip()
            node: dict = {"type": "heading", "attrs": {"level": len(m.group(1))}}
            content = _parse_inline(text)
            if content:
                node["content"] = content
            out.append(node)
            i += 1
            continue
        if _HR_RE.match(line):
            out.append({"type": "horizontalRule"})
            i += 1
            continue
        m = _BQ_RE.match(line)
        if m:
            buf = []
            while i < n:
                mm = _BQ_RE.match(lines[i])
                if mm:
                    buf.append(mm.group(1))
                    i += 1
                elif buf and not _blank(buf[-1]) and not _blank(lines[i]) and not _starts_block(lines[i]):
                    buf.append(lines[i])  # lazy continuation
                    i += 1
                else:
                    break
            inner = _parse_blocks(buf)
            out.append({"type": "blockquote", "content": inner or [{"type": "paragraph"}]})
            continue
        mk = _list_marker(line)
        if mk:
            node, i = _parse_list(lines, i)
            out.append(node)
            continue
        if _is_table_start(lines, i):
            raise InvalidNotes("Token type `table_open` not supported by Markdown parser")
        # paragraph (or setext heading)
        para = [line.lstrip(" ")]
        i += 1
        heading_level = 0
        while i < n:
            ln = lines[i]
            if _blank(ln):
                break
            sm = _SETEXT_RE.match(ln)
            if sm:
                heading_level = 1 if sm.group(1)[0] == "=" else 2
                i += 1
                break
            if _is_table_start(lines, i):
                raise InvalidNotes("Token type `table_open` not supported by Markdown parser")
            if _starts_block(ln):
                break
            para.append(ln.lstrip(" "))
            i += 1
        text = "\n".join(para)
        content = _parse_inline(text)
        if heading_level:
            hnode: dict = {"type": "heading", "attrs": {"level": heading_level}}
            if content:
                hnode["content"] = content
            out.append(hnode)
        elif content:
            out.append({"type": "paragraph", "content": content})
    return out


def _parse_list(lines: list[str], i: int) -> tuple[dict, int]:
    n = len(lines)
    first = _list_marker(lines[i])
    kind, delim = first[0], first[1]
    items: list[list[str]] = []
    while i < n:
        mk = _list_marker(lines[i])
        if not mk or mk[0] != kind or mk[1] != delim or _HR_RE.match(lines[i]):
            break
        lead, marker, spaces, rest = mk[2], mk[3], mk[4], mk[5]
        if rest == "":
            width = len(lead) + len(marker) + 1
            item_lines = [""]
        elif len(spaces) > 4:
            width = len(lead) + len(marker) + 1
            item_lines = [" " * (len(spaces) - 1) + rest]
        else:
            width = len(lead) + len(marker) + len(spaces)
            item_lines = [rest]
        i += 1
        while i < n:
            ln = lines[i]
            if _blank(ln):
                item_lines.append("")
                i += 1
                continue
            if _indent(ln) >= width:
                item_lines.append(ln[width:])
                i += 1
                continue
            prev = item_lines[-1]
            if not _blank(prev) and not _starts_block(ln) and not _list_marker(ln):
                item_lines.append(ln.lstrip(" "))  # lazy continuation
                i += 1
                continue
            break
        # a blank line followed by something that does not belong ends the item
        while item_lines and _blank(item_lines[-1]) and len(item_lines) > 1:
            item_lines.pop()
        items.append(item_lines)
        # blank lines between items
        j = i
        while j < n and _blank(lines[j]):
            j += 1
        if j < n and j != i:
            mk2 = _list_marker(lines[j])
            if mk2 and mk2[0] == kind and mk2[1] == delim and not _HR_RE.match(lines[j]):
                i = j
                continue
            break
    is_task = kind == "bullet" and any(_TASK_RE.match(it[0]) for it in items)
    content = []
    for it in items:
        checked = None
        if is_task:
            tm = _TASK_RE.match(it[0])
            if tm:
                checked = tm.group(1) in "xX"
                it = [it[0][tm.end():]] + it[1:]
            else:
                checked = False
        blocks = _parse_blocks(it) or [{"type": "paragraph"}]
        if is_task:
            content.append({"type": "taskItem", "attrs": {"checked": bool(checked)}, "content": blocks})
        else:
            content.append({"type": "listItem", "content": blocks})
    if is_task:
        node = {"type": "taskList", "content": content}
    elif kind == "bullet":
        node = {"type": "bulletList", "content": content}
    else:
        node = {"type": "orderedList", "attrs": {"type": None, "start": first[6]}, "content": content}
    return node, i


def _unescape_text(text: str) -> str:
    text = re.sub(r"\\([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])", r"\1", text)
    return _ENTITY_RE.sub(_decode_entity, text)


def _decode_entity(m: re.Match) -> str:
    ent = m.group(0)
    body = ent[1:-1]
    if body.startswith(("#x", "#X")):
        cp = int(body[2:], 16)
    elif body.startswith("#"):
        cp = int(body[1:])
    else:
        decoded = html.unescape(ent)
        return decoded
    if cp == 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return "\ufffd"
    return chr(cp)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _find_link_end(text: str, start: int) -> int:
    """Index of the ``]`` matching the ``[`` at ``start`` (-1 if none)."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "`":
            run = len(text[i:]) - len(text[i:].lstrip("`"))
            close = text.find("`" * run, i + run)
            if close != -1:
                i = close + run
                continue
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _parse_link_dest(text: str, pos: int) -> tuple[str, int] | None:
    """Parse ``(dest "title")`` starting at ``text[pos] == '('``; returns (href, end)."""
    if pos >= len(text) or text[pos] != "(":
        return None
    i = pos + 1
    while i < len(text) and text[i] in " \t\n":
        i += 1
    dest = ""
    if i < len(text) and text[i] == "<":
        close = text.find(">", i + 1)
        if close == -1 or "\n" in text[i + 1:close]:
            return None
        dest = text[i + 1:close]
        i = close + 1
    else:
        depth = 0
        start = i
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                i += 2
                continue
            if ch in " \t\n" or ord(ch) < 0x20:
                break
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            i += 1
        dest = text[start:i]
    while i < len(text) and text[i] in " \t\n":
        i += 1
    if i < len(text) and text[i] in "\"'(":
        closer = {"\"": "\"", "'": "'", "(": ")"}[text[i]]
        close = text.find(closer, i + 1)
        if close == -1:
            return None
        i = close + 1
        while i < len(text) and text[i] in " \t\n":
            i += 1
    if i >= len(text) or text[i] != ")":
        return None
    return _unescape_text(dest), i + 1


def _normalize_href(url: str) -> str:
    return quote(url, safe=";/?:@&=+$,-_.!~*'()#%[]")


def _valid_link(url: str) -> bool:
    if _BAD_PROTO_RE.match(url.strip()):
        return bool(_GOOD_DATA_RE.match(url.strip()))
    return True


def _link_mark(href: str) -> dict:
    return {
        "type": "link",
        "attrs": {"href": href, "target": None, "rel": "noopener noreferrer nofollow", "class": None, "title": None},
    }


_INLINE_SPECIAL = re.compile(r"[\\\n`!\[<&*_~]")


def _inline_items(text: str) -> list:
    """Tokenise inline markdown into text/break/code/link/delimiter items."""
    items: list = []
    buf: list[str] = []

    def flush():
        if buf:
            items.append(["text", "".join(buf)])
            buf.clear()

    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if not _INLINE_SPECIAL.match(ch):  # plain text up to the next character that may start something
            special = _INLINE_SPECIAL.search(text, i)
            j = special.start() if special else n
            buf.append(text[i:j])
            i = j
            continue
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "\n":
                flush()
                items.append(["br"])
                i += 2
                while i < n and text[i] == " ":
                    i += 1
                continue
            if nxt in _ASCII_PUNCT:
                buf.append(nxt)
                i += 2
                continue
            buf.append(ch)
            i += 1
            continue
        if ch == "\n":
            trailing = len("".join(buf)) - len("".join(buf).rstrip(" "))
            joined = "".join(buf).rstrip(" ")
            buf.clear()
            if joined:
                buf.append(joined)
            flush()
            items.append(["br"] if trailing >= 2 else ["soft"])
            i += 1
            while i < n and text[i] == " ":
                i += 1
            continue
        if ch == "`":
            run = len(text[i:]) - len(text[i:].lstrip("`"))
            j = i + run
            found = -1
            while True:
                k = text.find("`" * run, j)
                if k == -1:
                    break
                end_run = len(text[k:]) - len(text[k:].lstrip("`"))
                if end_run == run:
                    found = k
                    break
                j = k + end_run
            if found == -1:
                buf.append("`" * run)
                i += run
                continue
            code = text[i + run:found].replace("\n", " ")
            if code.startswith(" ") and code.endswith(" ") and code.strip(" "):
                code = code[1:-1]
            flush()
            items.append(["code", code])
            i = found + run
            continue
        if ch == "!" and i + 1 < n and text[i + 1] == "[":
            end = _find_link_end(text, i + 1)
            if end != -1 and _parse_link_dest(text, end + 1) is not None:
                raise InvalidNotes("Token type `image` not supported by Markdown parser")
            buf.append(ch)
            i += 1
            continue
        if ch == "[":
            end = _find_link_end(text, i)
            if end != -1:
                parsed = _parse_link_dest(text, end + 1)
                if parsed is not None and _valid_link(parsed[0]):
                    href, after = parsed
                    flush()
                    items.append(["link", _process_emphasis(_inline_items(text[i + 1:end])), _normalize_href(href)])
                    i = after
                    continue
            buf.append(ch)
            i += 1
            continue
        if ch == "<":
            m = _AUTOLINK_RE.match(text, i)
            if m and _valid_link(m.group(1)):
                flush()
                url = m.group(1)
                items.append(["link", [["text", url]], _normalize_href(url)])
                i = m.end()
                continue
            m = _EMAIL_AUTOLINK_RE.match(text, i)
            if m:
                flush()
                addr = m.group(1)
                items.append(["link", [["text", addr]], _normalize_href("mailto:" + addr)])
                i = m.end()
                continue
            buf.append(ch)
            i += 1
            continue
        if ch == "&":
            m = _ENTITY_RE.match(text, i)
            if m:
                decoded = _decode_entity(m)
                if decoded != m.group(0):
                    buf.append(decoded)
                    i = m.end()
                    continue
            buf.append(ch)
            i += 1
            continue
        if ch in "*_~":
            run = 1
            while i + run < n and text[i + run] == ch:
                run += 1
            prev = text[i - 1] if i > 0 else "\n"
            nxt = text[i + run] if i + run < n else "\n"
            prev_ws, next_ws = prev.isspace(), nxt.isspace()
            prev_p, next_p = _is_punct(prev), _is_punct(nxt)
            left = not next_ws and (not next_p or prev_ws or prev_p)
            right = not prev_ws and (not prev_p or next_ws or next_p)
            if ch == "_":
                can_open = left and (not right or prev_p)
                can_close = right and (not left or next_p)
            else:
                can_open, can_close = left, right
            if ch == "~":
                if run < 2:
                    buf.append("~")
                    i += 1
                    continue
                flush()
                if run % 2:
                    items.append(["text", "~"])
                for _ in range(run // 2):
                    items.append(["delim", "~", 2, can_open, can_close, 2, [], []])
                i += run
                continue
            flush()
            items.append(["delim", ch, run, can_open, can_close, run, [], []])
            i += run
            continue
        buf.append(ch)
        i += 1
    flush()
    return items


def _process_emphasis(items: list) -> list:
    """CommonMark 'process emphasis' over delimiter items (in place)."""
    # item layout for delimiters: ["delim", ch, count, can_open, can_close, orig, opens, closes]
    for ci, closer in enumerate(items):
        if closer[0] != "delim" or not closer[4]:
            continue
        while closer[2] > 0:
            opener_idx = -1
            for oi in range(ci - 1, -1, -1):
                op = items[oi]
                if op[0] != "delim" or op[1] != closer[1] or not op[3] or op[2] <= 0:
                    continue
                if closer[1] != "~" and (op[4] or closer[3]):
                    if (op[5] + closer[5]) % 3 == 0 and not (op[5] % 3 == 0 and closer[5] % 3 == 0):
                        continue
                opener_idx = oi
                break
            if opener_idx == -1:
                break
            op = items[opener_idx]
            if closer[1] == "~":
                use, mark = 2, "strike"
            else:
                use = 2 if op[2] >= 2 and closer[2] >= 2 else 1
                mark = "bold" if use == 2 else "italic"
            op[2] -= use
            closer[2] -= use
            op[6].append(mark)
            closer[7].append(mark)
            for mid in range(opener_idx + 1, ci):
                if items[mid][0] == "delim":
                    items[mid][3] = items[mid][4] = False
    return items


def _parse_inline(text: str) -> list[dict]:
    items = _process_emphasis(_inline_items(text))
    nodes: list[dict] = []
    active: Counter = Counter()
    link_stack: list[dict] = []

    def current_marks() -> list[dict]:
        marks = [{"type": m} for m, c in active.items() if c > 0]
        if link_stack:
            marks.append(copy.deepcopy(link_stack[-1]))
        return sorted(marks, key=lambda mk: MARK_RANK.get(mk["type"], 99))

    def emit_text(s: str, marks: list[dict] | None = None):
        if not s:
            return
        marks = current_marks() if marks is None else marks
        if nodes and nodes[-1]["type"] == "text" and nodes[-1].get("marks", []) == marks:
            nodes[-1]["text"] += s
            return
        node = {"type": "text", "text": s}
        if marks:
            node["marks"] = marks
        nodes.append(node)

    def walk(seq: list):
        for it in seq:
            kind = it[0]
            if kind == "text":
                emit_text(it[1])
            elif kind == "soft":
                emit_text(" ")
            elif kind == "br":
                node = {"type": "hardBreak"}
                marks = current_marks()
                if marks:
                    node["marks"] = marks
                nodes.append(node)
            elif kind == "code":
                emit_text(it[1], [{"type": "code"}])
                # the code mark excludes every other mark: prosemirror drops them
                active.clear()
                link_stack.clear()
            elif kind == "link":
                link_stack.append(_link_mark(it[2]))
                walk(it[1])
                if link_stack:
                    link_stack.pop()
            elif kind == "delim":
                for mark in it[7]:
                    if active[mark] > 0:
                        active[mark] -= 1
                emit_text(it[1] * it[2])
                for mark in reversed(it[6]):
                    active[mark] += 1

    walk(items)
    # markdown-it trims the paragraph; prosemirror drops empty text
    if nodes and nodes[0]["type"] == "text":
        nodes[0]["text"] = nodes[0]["text"].lstrip(" \t")
        if not nodes[0]["text"]:
            nodes.pop(0)
    if nodes and nodes[-1]["type"] == "text":
        nodes[-1]["text"] = nodes[-1]["text"].rstrip(" \t")
        if not nodes[-1]["text"]:
            nodes.pop()
    return nodes


def markdown_to_tiptap(markdown: str) -> dict:
    """Convert markdown to the Tiptap JSON the server stores (tables/images are rejected)."""
    text = markdown.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "\ufffd")
    lines = [_expand_tabs(line) for line in text.split("\n")]
    blocks = _parse_blocks(lines)
    return {"type": "doc", "content": blocks or [{"type": "paragraph"}]}


def check_tiptap_json(node: Any) -> None:
    """Approximate ``Node.fromJSON(editorSchema, node)``; raises InvalidNotes."""
    if not isinstance(node, dict) or not node:
        raise InvalidNotes("Invalid input for Node.fromJSON")
    marks = node.get("marks")
    if marks is not None:
        if not isinstance(marks, list):
            raise InvalidNotes("Invalid mark data for Node.fromJSON")
        for mark in marks:
            if not isinstance(mark, dict) or mark.get("type") not in TIPTAP_MARKS:
                raise InvalidNotes("There is no mark type in this schema")
    ntype = node.get("type")
    if not isinstance(ntype, str) or ntype not in TIPTAP_NODES:
        raise InvalidNotes(f"Unknown node type: {ntype}")
    if ntype == "text":
        if not isinstance(node.get("text"), str) or node.get("text") == "":
            raise InvalidNotes("Invalid text node in JSON")
        return
    content = node.get("content")
    if content:
        if not isinstance(content, list):
            raise InvalidNotes("Invalid input for Fragment.fromJSON")
        for child in content:
            check_tiptap_json(child)


def convert_notes(notes: Any) -> Any:
    """``validateNotes``: returns the value to store (Tiptap dict or None); raises ValueError(code)."""
    if notes is None:
        return None
    if isinstance(notes, (dict, list)):
        fmt = "json"
    elif isinstance(notes, str):
        fmt = "markdown"
        try:
            parsed = json.loads(notes)
            if isinstance(parsed, dict) and parsed.get("type") == "doc":
                fmt = "json"
        except (ValueError, RecursionError):
            pass
    else:
        raise ValueError("notesInvalidFormat")
    if fmt == "markdown":
        if notes.strip(_JS_WS) == "":
            return None
        if js_len(notes) > MAX_NOTES_LENGTH:
            raise ValueError("notesExceedsMaxLength")
        try:
            return jsonb(markdown_to_tiptap(notes))
        except (InvalidNotes, RecursionError):
            raise ValueError("notesInvalidFormat") from None
    parsed = json.loads(notes) if isinstance(notes, str) else notes
    try:
        check_tiptap_json(parsed)
    except (InvalidNotes, RecursionError):
        raise ValueError("notesInvalidFormat") from None
    if js_len(js_json(parsed)) > MAX_NOTES_JSON_SIZE:
        raise ValueError("notesExceedsMaxLength")
    return jsonb(parsed)


# ==========================================================================
# contract documents (schemas)


class _Spec:
    """openapi.json / mcp-tools.json, loaded once per process."""

    _lock = threading.Lock()
    _instance: "_Spec | None" = None

    def __init__(self, contract_dir: Path):
        self.contract_dir = contract_dir
        self.openapi_text = (contract_dir / "openapi.json").read_text(encoding="utf-8")
        self.openapi = json.loads(self.openapi_text)
        tools_doc = json.loads((contract_dir / "mcp-tools.json").read_text(encoding="utf-8"))
        self.tools: list[dict] = tools_doc["tools"]
        self.tools_by_name = {t["name"]: t for t in self.tools}
        comps = self.openapi["components"]["schemas"]
        self.schemas: dict[tuple[str, str], dict] = {}
        for etype in ENTITY_TYPES:
            one, many = COMPONENT_NAME[etype]
            self.schemas[("create", etype)] = self._prep(comps[f"Create{one}Schema"])
            self.schemas[("create_many", etype)] = self._prep(comps[f"CreateMany{many}Schema"])
            self.schemas[("update", etype)] = self._prep(comps[f"Update{one}Schema"])
            self.schemas[("update_many", etype)] = self._prep(comps[f"UpdateMany{many}Schema"])
            self.schemas[("delete", etype)] = self._prep(comps[f"Delete{one}Schema"])
            self.schemas[("delete_many", etype)] = self._prep(comps[f"DeleteMany{many}Schema"])
            self.schemas[("get", etype)] = self._prep(comps[f"Get{one}ByIdSchema"])
            search = self.openapi["paths"][f"/v1/{PLURAL[etype]}/search"]["post"]["requestBody"]
            self.schemas[("search", etype)] = self._prep(search["content"]["application/json"]["schema"])
        users = self.openapi["paths"]["/v1/users/search"]["post"]["requestBody"]
        self.schemas[("search", "user")] = self._prep(users["content"]["application/json"]["schema"])

    def _deref(self, node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and isinstance(node["$ref"], str) and node["$ref"].startswith("#/"):
                target: Any = self.openapi
                for part in node["$ref"][2:].split("/"):
                    target = target[part]
                return self._deref(target)
            return {k: self._deref(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self._deref(v) for v in node]
        return node

    def _prep(self, schema: dict) -> dict:
        schema = self._deref(schema)

        def strip(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if not (k == "additionalProperties" and v is False)}
            if isinstance(node, list):
                return [strip(v) for v in node]
            return node

        out = strip(schema)
        out.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        return out

    @classmethod
    def get(cls, contract_dir: Path | None = None) -> "_Spec":
        contract_dir = contract_dir or CONTRACT_DIR
        with cls._lock:
            if cls._instance is None or cls._instance.contract_dir != contract_dir:
                cls._instance = _Spec(contract_dir)
            return cls._instance


# ==========================================================================
# public records


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int | None
    body: Any
    item_count: int | None
    time: float
    headers: dict = field(default_factory=dict)
    response_body: bytes = b""
    outcome: str = "answered"  # answered | dropped | hung


@dataclass
class _Response:
    status: int | None
    body: bytes = b""
    content_type: str | None = None
    headers: dict = field(default_factory=dict)
    action: str = "send"  # send | drop | hang
    stall: float = 0.0


def _json_response(status: int, value: Any) -> _Response:
    return _Response(status, js_json(value).encode("utf-8"), "application/json")


def _empty(status: int) -> _Response:
    return _Response(status, b"", None)


def _bad_request(issues: list) -> _Response:
    return _json_response(400, zm.prettify(issues))


NOT_AUTHENTICATED = "Not authenticated"
VERCEL_BODY_LIMIT = 4_500_000  # "4.5 MB" read as the smaller of 4.5 × 10^6 and 4.5 × 2^20


@dataclass
class _Fault:
    kind: str
    remaining: int
    status: int = 500
    path_contains: str | None = None
    seconds: float = 0.0

    def matches(self, path: str) -> bool:
        return self.path_contains is None or self.path_contains in path


# ==========================================================================
# the relation join tables


_TYPE_ORDER = {t: i for i, t in enumerate(("contact", "organization", "deal", "service", "task", "user"))}


class _Links:
    """Symmetric join rows, kept in insertion order per side (like heap order in Postgres)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], tuple[dict, dict]] = {}

    def _table(self, t1: str, t2: str) -> tuple[dict, dict, bool]:
        key = (t1, t2) if _TYPE_ORDER[t1] <= _TYPE_ORDER[t2] else (t2, t1)
        if key not in self.tables:
            self.tables[key] = ({}, {})
        fwd, rev = self.tables[key]
        if key == (t1, t2):
            return fwd, rev, True
        return rev, fwd, False

    def neighbors(self, t: str, rid: str, other: str) -> list[tuple[str, dict]]:
        side, _, _ = self._table(t, other)
        return list(side.get(rid, {}).items())

    def has(self, t: str, rid: str, other: str, oid: str) -> bool:
        side, _, _ = self._table(t, other)
        return oid in side.get(rid, {})

    def link(self, t: str, rid: str, other: str, oid: str, data: dict | None = None) -> None:
        side, back, _ = self._table(t, other)
        row = dict(data or {})
        side.setdefault(rid, {})[oid] = row
        back.setdefault(oid, {})[rid] = row

    def unlink_all(self, t: str, rid: str, other: str) -> list[tuple[str, dict]]:
        side, back, _ = self._table(t, other)
        removed = list(side.pop(rid, {}).items())
        for oid, _row in removed:
            back.get(oid, {}).pop(rid, None)
        return removed

    def remove_record(self, t: str, rid: str) -> None:
        for other in _TYPE_ORDER:
            if other == t:
                continue
            self.unlink_all(t, rid, other)


# ==========================================================================
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "FakeCustomermates/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from base class
        return

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, by the fake server's clock."""
        fake: FakeCustomermates = self.server.fake  # type: ignore[attr-defined]
        return super().date_time_string(fake.now() if timestamp is None else timestamp)

    def _handle(self, method: str) -> None:
        fake: FakeCustomermates = self.server.fake  # type: ignore[attr-defined]
        body = self._read_body()
        response = fake._dispatch(self, method, body)
        if response.action == "drop":
            self._drop()
            return
        if response.action == "hang":
            fake._stop_event.wait(fake.mcp_hang_seconds)
            self._drop()
            return
        if response.stall:
            fake._stop_event.wait(response.stall)
        self.send_response(response.status or 500)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if method != "HEAD" and response.body:
            self.wfile.write(response.body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._handle("OPTIONS")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Broken pipes after dropped connections are expected; stay quiet.
        return


# ==========================================================================
# the fake server


_CREATE_TOOLS = {
    "create_plain_custom_column": "plain",
    "create_date_custom_column": "date",
    "create_datetime_custom_column": "dateTime",
    "create_date_range_custom_column": "dateRange",
    "create_datetime_range_custom_column": "dateTimeRange",
    "create_currency_custom_column": "currency",
    "create_single_select_custom_column": "singleSelect",
    "create_link_custom_column": "link",
    "create_email_custom_column": "email",
    "create_phone_custom_column": "phone",
}
_UPDATE_TOOLS = {name.replace("create_", "update_", 1): ctype for name, ctype in _CREATE_TOOLS.items()}

_MISSING = object()


def _norm_user(user: dict) -> dict:
    base = {
        "id": None,
        "email": None,
        "firstName": "",
        "lastName": "",
        "roleId": ADMIN_ROLE_ID,
        "roleName": "Admin",
        "status": "active",
        "country": "de",
        "avatarUrl": None,
        "createdAt": USER_CREATED_AT,
        "updatedAt": USER_CREATED_AT,
    }
    base.update(user)
    if not base["id"]:
        base["id"] = str(uuid.uuid4())
    return base


def _parse_json(raw: bytes) -> tuple[bool, Any]:
    if not raw:
        return False, None
    try:
        text = raw.decode("utf-8", errors="replace")

        def _reject(name: str) -> Any:
            raise ValueError(f"invalid JSON constant {name}")

        return True, json.loads(text, parse_constant=_reject)
    except (ValueError, RecursionError):
        return False, None


class FakeCustomermates:
    """A faithful in-process fake of one Customermates company (tenant).

    Parameters
    ----------
    api_key:
        The key that authenticates as the first user.
    users:
        The company's users (defaults to :data:`DEFAULT_USERS`). Missing fields get defaults.
    latency_per_item:
        Seconds of simulated database work per item of a write; spent while
        holding the company's transaction lock.
    transaction_timeout:
        Prisma's interactive-transaction limit. A write whose lock wait plus work
        exceeds it answers 500 with an empty body and writes nothing (P2028).
    api_keys:
        Optional explicit mapping ``key -> user id`` (overrides ``api_key``).
        By default ``api_key`` maps to the first user and :data:`VALID_KEY_USER2`
        to the second one.
    search_cache:
        Benchmark hook: a search's filtered and sorted records are kept for its next pages until
        the next request that may write (any but GET and search). Reading 100k records page by
        page then costs one sort, not one per page; the answers are the same.
    mcp_hang_seconds:
        How long a malformed-JSON request to ``/api/v1/mcp`` is held before the
        connection is closed without any response (the real server never answers).
    contract_dir:
        Where ``openapi.json`` and ``mcp-tools.json`` live (default :data:`CONTRACT_DIR`,
        overridable with the ``CUSTOMERMATES_CONTRACT_DIR`` environment variable).
    id_factory:
        Test hook: produces the ids of new records, columns and options (default: uuid4).
    max_body_bytes:
        The host's request-body limit. The app sets none; Vercel functions (customermates.com) take
        about 4.5 MB (contract §10), so a bigger body is refused with 413 before the app sees it,
        nothing written (the status and text are Vercel's ``FUNCTION_PAYLOAD_TOO_LARGE``; the
        contract names only the limit). ``None``: no limit (self-hosted without a proxy).
    max_response_bytes:
        The same limit on answers: Vercel fails a function whose response is over it with a 500
        (``FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE``), after a write has been applied. Search pages and
        write answers carry the notes as Tiptap JSON, so long notes reach it.
    """

    def __init__(
        self,
        *,
        api_key: str = VALID_KEY,
        users: list[dict] | None = None,
        latency_per_item: float = 0.0,
        transaction_timeout: float = 5.0,
        api_keys: dict[str, str] | None = None,
        mcp_hang_seconds: float = 30.0,
        contract_dir: Path | None = None,
        id_factory: "Callable[[], str] | None" = None,
        search_cache: bool = False,
        max_body_bytes: int | None = VERCEL_BODY_LIMIT,
        max_response_bytes: int | None = VERCEL_BODY_LIMIT,
    ) -> None:
        self._spec = _Spec.get(contract_dir)
        self.max_body_bytes = max_body_bytes
        self.max_response_bytes = max_response_bytes
        self.users: list[dict] = [_norm_user(u) for u in (users if users is not None else DEFAULT_USERS)]
        self._users_by_id = {u["id"]: u for u in self.users}
        if api_keys is None:
            api_keys = {}
            if self.users:
                api_keys[api_key] = self.users[0]["id"]
            if len(self.users) > 1:
                api_keys.setdefault(VALID_KEY_USER2, self.users[1]["id"])
        self.api_key = api_key
        self.api_keys: dict[str, str] = dict(api_keys)
        self.latency_per_item = latency_per_item
        self.search_cache = search_cache
        self.clock_offset = 0.0
        self._searched: dict[tuple[Any, ...], list[dict]] = {}  # (writes seen, query) → records in order
        self._writes_seen = 0
        self.transaction_timeout = transaction_timeout
        self.mcp_hang_seconds = mcp_hang_seconds
        self._id_factory = id_factory or (lambda: str(uuid.uuid4()))
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []  # unexpected exceptions inside the fake (for debugging)
        self.url = ""
        self._state = threading.RLock()
        self._tx = threading.Lock()
        self._req_lock = threading.Lock()
        self._faults: list[_Fault] = []
        self.refused_text: str | None = None  # `refuse_text`
        self._random_fault_rate = 0.0
        # test hook, called after a search was answered (under the state lock): (entity type, request body)
        self.after_search: Callable[[str, dict], None] | None = None
        self.webhooks: list[dict] = []  # what list_webhooks answers: {id, url, description, events, enabled, createdAt, updatedAt}
        self._random_faults = random.Random(0)
        self._random_stall = 3.0
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._last_ms = 0
        self._col_seq = 0
        self.reset()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeCustomermates":
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-customermates", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop_event.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeCustomermates":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty the tenant: no records, links or custom columns (users are kept)."""
        with self._state:
            self._data: dict[str, dict[str, dict]] = {t: {} for t in ENTITY_TYPES}
            self._links = _Links()
            self._columns: dict[str, dict] = {}

    def content(self) -> dict[str, Any]:
        """A copy of the tenant (records, links, custom columns, webhooks and the clocks that date and
        number them), for `restore`: tests that start from a finished migration copy one instead of
        migrating again."""
        with self._state:
            return copy.deepcopy(
                {
                    "data": self._data, "links": self._links, "columns": self._columns, "webhooks": self.webhooks,
                    "last_ms": self._last_ms, "col_seq": self._col_seq,
                }
            )

    def restore(self, content: dict[str, Any]) -> None:
        """Make the tenant what `content` copied (requests and faults are this fake's own)."""
        content = copy.deepcopy(content)
        with self._state:
            self._data, self._links, self._columns = content["data"], content["links"], content["columns"]
            self.webhooks, self._col_seq = content["webhooks"], content["col_seq"]
            self._last_ms = max(self._last_ms, content["last_ms"])
            self._writes_seen += 1  # no search answered before stands

    # ------------------------------------------------------------------ inspection

    def write_count(self) -> int:
        """POST/PUT/DELETE requests to REST entity endpoints (not search, not MCP)."""
        with self._req_lock:
            return sum(1 for r in self.requests if _is_write_path(r.method, r.path))

    def records(self, entity: str) -> list[dict]:
        """Current DTOs of ``contacts``/``organizations``/``deals``/``services``/``tasks``."""
        etype = SINGULAR.get(entity, entity)
        with self._state:
            return [self._dto(etype, rec) for rec in self._data[etype].values()]

    def columns(self, entity_type: str | None = None) -> list[dict]:
        """Custom columns (CustomColumnDto, as the configuration endpoint shows them)."""
        with self._state:
            if entity_type is None:
                cols = self._all_columns_sorted()
            else:
                cols = self._cols_for(SINGULAR.get(entity_type, entity_type))
            return [self._col_cfg(c) for c in cols]

    def clear_requests(self) -> None:
        with self._req_lock:
            self.requests.clear()

    # ------------------------------------------------------------------ faults

    def fail_next(self, count: int = 1, *, status: int = 500, path_contains: str | None = None) -> None:
        """The next ``count`` matching writes answer ``status`` with an empty body and write nothing."""
        with self._state:
            self._faults.append(_Fault("fail", count, status=status, path_contains=path_contains))

    def refuse_text(self, text: str | None) -> None:
        """Play a value Postgres refuses that nothing before it could foresee: from now on every
        write whose body holds ``text`` fails as the database would (an empty 500, rolled back).
        ``None`` ends it."""
        with self._state:
            self.refused_text = text

    def drop_after_apply(self, count: int = 1, *, path_contains: str | None = None) -> None:
        """The next ``count`` matching writes are processed, then the socket closes without a response."""
        with self._state:
            self._faults.append(_Fault("drop", count, path_contains=path_contains))

    def stall_next(self, seconds: float, count: int = 1) -> None:
        """The next ``count`` writes are processed normally, then wait ``seconds`` before answering."""
        with self._state:
            self._faults.append(_Fault("stall", count, seconds=seconds))

    def random_faults(self, rate: float, *, seed: int = 0, stall_seconds: float = 3.0) -> None:
        """From now on each write, with probability ``rate``, meets one fault drawn at random:
        a 500, 502 or 503 (nothing written), a connection reset before the write is applied,
        one after it is applied, or a stall of ``stall_seconds`` before the answer. ``rate=0``
        turns this off. Seeded, so a run's fault sequence is reproducible."""
        with self._state:
            self._random_fault_rate = rate
            self._random_faults = random.Random(seed)
            self._random_stall = stall_seconds

    def _random_fault(self) -> dict[str, _Fault]:
        if not self._random_fault_rate or self._random_faults.random() >= self._random_fault_rate:
            return {}
        kind = self._random_faults.choice(("500", "502", "503", "reset_before", "reset_after", "stall"))
        if kind in ("500", "502", "503"):
            return {"fail": _Fault("fail", 1, status=int(kind))}
        if kind == "reset_before":
            return {"reset": _Fault("reset", 1)}
        if kind == "reset_after":
            return {"drop": _Fault("drop", 1)}
        return {"stall": _Fault("stall", 1, seconds=self._random_stall)}

    def _take_faults(self, path: str) -> dict[str, _Fault]:
        taken: dict[str, _Fault] = {}
        with self._state:
            taken.update(self._random_fault())
            for fault in list(self._faults):
                if fault.kind in taken or not fault.matches(path):
                    continue
                taken[fault.kind] = fault
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
        return taken

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, h: _Handler, method: str, raw: bytes) -> _Response:
        path = urlsplit(h.path).path
        ok, parsed = _parse_json(raw)
        rec = RequestRecord(
            method=method,
            path=path,
            status=None,
            body=parsed if ok else None,
            item_count=None,
            time=time.time(),
            headers={k.lower(): v for k, v in h.headers.items()},
        )
        try:
            if self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
                response = _Response(413, b"Request Entity Too Large\n\nFUNCTION_PAYLOAD_TOO_LARGE\n", "text/plain; charset=utf-8")
            else:
                response = self._route(h, method, path, raw, rec)
            if self.max_response_bytes is not None and response.action == "send" and len(response.body) > self.max_response_bytes:
                response = _Response(500, b"FUNCTION_RESPONSE_PAYLOAD_TOO_LARGE\n", "text/plain; charset=utf-8")
        except Exception as exc:  # pragma: no cover - a bug in the fake
            import traceback

            self.errors.append(f"{method} {path}: {exc!r}\n{traceback.format_exc()}")
            response = _empty(500)
        rec.status = response.status if response.action == "send" else None
        rec.outcome = {"send": "answered", "drop": "dropped", "hang": "hung"}[response.action]
        rec.response_body = response.body
        with self._req_lock:
            self.requests.append(rec)
        return response

    def _route(self, h: _Handler, method: str, path: str, raw: bytes, rec: RequestRecord) -> _Response:
        if self.search_cache and method != "GET" and not path.endswith("/search"):
            self._writes_seen += 1  # before and after: a search made meanwhile is not kept past the write
            try:
                return self._route_request(h, method, path, raw, rec)
            finally:
                self._writes_seen += 1
        return self._route_request(h, method, path, raw, rec)

    def _route_request(self, h: _Handler, method: str, path: str, raw: bytes, rec: RequestRecord) -> _Response:
        if not path.startswith("/api/v1/"):
            return _Response(404, b"Not Found", "text/plain")
        parts = [p for p in path[len("/api/v1/"):].split("/") if p]
        if not parts:
            return _Response(404, b"Not Found", "text/plain")
        head = parts[0]
        if parts == ["openapi"]:
            if method != "GET":
                return _empty(405)
            return _Response(200, self._spec.openapi_text.encode("utf-8"), "application/json")
        if parts == ["mcp"]:
            return self._mcp(h, method, raw)
        if head == "users" and len(parts) == 2:
            if parts[1] == "me":
                return self._users_me(h) if method == "GET" else _empty(405)
            if parts[1] == "search":
                return self._users_search(h, raw) if method == "POST" else _empty(405)
            return _Response(404, b"Not Found", "text/plain")
        if head in SINGULAR and head != "users":
            etype = SINGULAR[head]
            if len(parts) == 1:
                if method == "POST":
                    return self._write(h, rec, "create", etype, raw)
                return _empty(405)
            if len(parts) == 2:
                sub = parts[1]
                if sub == "many":
                    op = {"POST": "create_many", "PUT": "update_many", "DELETE": "delete_many"}.get(method)
                    return self._write(h, rec, op, etype, raw) if op else _empty(405)
                if sub == "search":
                    return self._search(h, etype, raw) if method == "POST" else _empty(405)
                if sub == "configuration":
                    return self._configuration(h, etype) if method == "GET" else _empty(405)
                if method == "GET":
                    return self._get_by_id(h, etype, sub)
                if method == "PUT":
                    return self._write(h, rec, "update", etype, raw, path_id=sub)
                if method == "DELETE":
                    return self._write(h, rec, "delete", etype, raw, path_id=sub)
                return _empty(405)
        return _Response(404, b"Not Found", "text/plain")

    # ------------------------------------------------------------------ auth

    def _auth(self, h: _Handler) -> tuple[dict | None, str | None]:
        key = h.headers.get("x-api-key")
        if key is None or key == "":
            return None, "missing"
        uid = self.api_keys.get(key)
        user = self._users_by_id.get(uid) if uid else None
        if user is None:
            return None, "invalid"
        if user.get("status") != "active":
            return None, "inactive"
        return user, None

    def _rest_auth_error(self, h: _Handler) -> _Response | None:
        _user, err = self._auth(h)
        if err == "missing":
            return _json_response(401, NOT_AUTHENTICATED)
        if err:
            return _empty(500)  # better-auth's APIError / "User is not active" -> framework 500
        return None

    # ------------------------------------------------------------------ users

    def _users_me(self, h: _Handler) -> _Response:
        user, err = self._auth(h)
        if err:
            return self._rest_auth_error(h)  # type: ignore[return-value]
        return _json_response(
            200,
            {
                "id": user["id"],
                "firstName": user["firstName"],
                "lastName": user["lastName"],
                "country": user["country"],
                "avatarUrl": user["avatarUrl"],
                "roleId": user["roleId"],
                "roleName": user["roleName"],
            },
        )

    def _users_search(self, h: _Handler, raw: bytes) -> _Response:
        ok, payload = _parse_json(raw)
        if not ok:
            return _empty(500)
        err = self._rest_auth_error(h)
        if err:
            return err
        schema = self._spec.schemas[("search", "user")]
        issues = zm.validate(schema, payload)
        if not any(i.aborting for i in issues):
            sort = payload.get("sortDescriptor")
            if sort and sort.get("field") not in ("name", "createdAt", "updatedAt"):
                issues.append(zm.custom(["sortDescriptor", "field"], MSG["invalidSortField"]))
        if issues:
            return _bad_request(issues)
        has_state = any(k in payload for k in ("searchTerm", "sortDescriptor", "pagination"))
        sort = payload.get("sortDescriptor") or (None if has_state else {"field": "name", "direction": "asc"})
        users = list(self.users)
        term = payload.get("searchTerm")
        if term:
            tokens = term.strip().split()
            users = [
                u for u in users
                if all(any(t.lower() in (u.get(f) or "").lower() for f in ("firstName", "lastName")) for t in tokens)
            ]
        users.sort(key=lambda u: u["id"])
        if sort:
            desc = sort["direction"] == "desc"
            if sort["field"] == "name":
                users.sort(key=lambda u: (collate_key(u["firstName"]), collate_key(u["lastName"])), reverse=desc)
            else:
                users.sort(key=lambda u: u[sort["field"]], reverse=desc)
        page, size = self._page(payload.get("pagination"))
        total = len(users)
        start = int((page - 1) * size)
        out: dict[str, Any] = {}
        if "searchTerm" in payload:
            out["searchTerm"] = payload["searchTerm"]
        if sort:
            out["sortDescriptor"] = sort
        out["pagination"] = {"page": page, "pageSize": size, "totalPages": max(1, math.ceil(total / size)), "total": total}
        keys = ("id", "email", "firstName", "lastName", "roleId", "status", "country", "avatarUrl", "createdAt", "updatedAt")
        out["items"] = [{k: u.get(k) for k in keys} for u in users[start:start + int(size)]]
        return _json_response(200, out)

    @staticmethod
    def _page(pagination: dict | None) -> tuple[Any, Any]:
        if not pagination:
            return 1, 100
        return pagination.get("page") or 1, pagination.get("pageSize") or 100

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """The fake server's clock: the machine's, moved on by `advance_clock`."""
        return time.time() + self.clock_offset

    def add_user(self, user: dict) -> dict:
        """Test hook: a user joins the company (invited and accepted); missing fields get defaults."""
        with self._state:
            added = _norm_user(user)
            self.users.append(added)
            self._users_by_id[added["id"]] = added
            return added

    def remove_user(self, user_id: str) -> None:
        """Test hook: an admin removes a user from the company in the app; the records it was assigned to
        lose it (the contract is silent on what the real server does with those links)."""
        with self._state:
            self.users = [u for u in self.users if u["id"] != user_id]
            self._users_by_id.pop(user_id)
            self._links.remove_record("user", user_id)
            self._writes_seen += 1

    def delete_records(self, entity: str, ids: list[str]) -> None:
        """Test hook: a user deletes these records in the app (as `DELETE /v1/<entity>/many` would)."""
        with self._state:
            for rid in ids:
                self._delete_record(entity.removesuffix("s"), rid)
            self._writes_seen += 1

    def edit_records(self, entity: str, items: list[dict]) -> None:
        """Test hook: a user edits these records in the app (as `PUT /v1/<entity>/many` would, without
        its validation: `items` are valid update items, notes left as they are)."""
        with self._state:
            for item in items:
                self._update_record(entity.removesuffix("s"), item, False, None)
            self._writes_seen += 1

    def stamp_updated_at(self, entity: str, ids: list[str], when: str) -> None:
        """Test hook: these records were last written at one instant (`when`, a `Z` datetime), as
        rows of one batch sometimes are (contract, end: collisions of 2–3 rows)."""
        with self._state:
            for rid in ids:
                self._data[SINGULAR.get(entity, entity)][rid]["updatedAt"] = int(parse_js_date_ms(when))

    def advance_clock(self, seconds: float) -> None:
        """Test hook: let `seconds` pass for the server (its timestamps and its Date header)."""
        self.clock_offset += seconds

    def _tick(self) -> int:
        now = int(self.now() * 1000)
        self._last_ms = max(now, self._last_ms + 1)
        return self._last_ms

    # ------------------------------------------------------------------ columns

    def _cols_for(self, etype: str) -> list[dict]:
        return _label_sort([c for c in self._columns.values() if c["entityType"] == etype])

    def _all_columns_sorted(self) -> list[dict]:
        out: list[dict] = []
        for etype in ENTITY_TYPES:
            out.extend(self._cols_for(etype))
        return out

    @staticmethod
    def _col_cfg(col: dict) -> dict:
        out: dict[str, Any] = {"id": col["id"], "label": col["label"], "entityType": col["entityType"], "type": col["type"]}
        ctype, opts = col["type"], col["options"]
        if ctype == "plain":
            return out
        if opts is None:
            out["options"] = None
        elif ctype in DATE_COLUMN_TYPES:
            out["options"] = {"displayFormat": opts.get("displayFormat")}
        elif ctype == "currency":
            out["options"] = {"currency": opts.get("currency")}
        elif ctype == "singleSelect":
            out["options"] = {
                "options": [
                    {k: o.get(k) for k in ("value", "label", "color", "isDefault", "index")}
                    for o in opts.get("options", [])
                ]
            }
        else:
            out["options"] = {"color": opts.get("color"), "allowMultiple": opts.get("allowMultiple")}
        return out

    @staticmethod
    def _col_search(col: dict) -> dict:
        return {
            "id": col["id"],
            "label": col["label"],
            "type": col["type"],
            "entityType": col["entityType"],
            "options": jsonb(col["options"]) if col["options"] is not None else None,
        }

    def _filterable(self, etype: str) -> list[dict]:
        out = [{"field": f, "operators": list(RELATION_OPERATORS)} for f in FILTER_RELATIONS_BEFORE[etype]]
        for col in self._cols_for(etype):
            out.append({"field": col["id"], "operators": list(COLUMN_OPERATORS[col["type"]]), "label": col["label"]})
        if etype == "contact":
            out.append({"field": "emails", "operators": list(EMAIL_OPERATORS)})
        out.append({"field": "userIds", "operators": list(RELATION_OPERATORS)})
        out.append({"field": "updatedAt", "operators": list(DATE_OPERATORS)})
        out.append({"field": "createdAt", "operators": list(DATE_OPERATORS)})
        return out

    def _sortable(self, etype: str) -> list[dict]:
        out: list[dict] = [{"field": f} for f in SORTABLE[etype]]
        for col in self._cols_for(etype):
            out.append({"field": col["id"], "label": col["label"], "columnType": col["type"]})
        return out

    # ------------------------------------------------------------------ DTOs

    def _deal_totals(self, deal_id: str) -> tuple[float, float]:
        total_value: float = 0
        total_quantity: float = 0
        for sid, row in self._links.neighbors("deal", deal_id, "service"):
            service = self._data["service"].get(sid)
            if service is None:
                continue
            total_value += service["amount"] * row.get("quantity", 1)
            total_quantity += row.get("quantity", 1)
        return total_value, total_quantity

    def _ref(self, from_type: str, other: str, oid: str, row: dict) -> dict | None:
        if other == "user":
            u = self._users_by_id.get(oid)
            if u is None:
                return None
            return {"id": u["id"], "firstName": u["firstName"], "lastName": u["lastName"], "avatarUrl": u["avatarUrl"], "email": u["email"]}
        rec = self._data[other].get(oid)
        if rec is None:
            return None
        if other == "contact":
            return {"id": rec["id"], "firstName": rec["firstName"], "lastName": rec["lastName"]}
        if other == "task":
            return {"id": rec["id"], "name": rec["name"], "type": rec["type"]}
        if other == "service":
            ref = {"id": rec["id"], "name": rec["name"], "amount": rec["amount"]}
            if from_type == "deal":
                ref["quantity"] = row.get("quantity", 1)
            return ref
        return {"id": rec["id"], "name": rec["name"]}

    def _dto(self, etype: str, rec: dict) -> dict:
        out: dict[str, Any] = {"id": rec["id"]}
        if etype == "contact":
            out["firstName"] = rec["firstName"]
            out["lastName"] = rec["lastName"]
            out["emails"] = list(rec["emails"])
        else:
            out["name"] = rec["name"]
            if etype == "deal":
                value, quantity = self._deal_totals(rec["id"])
                out["totalValue"] = value
                out["totalQuantity"] = quantity
            elif etype == "service":
                out["amount"] = rec["amount"]
            elif etype == "task":
                out["type"] = rec["type"]
        out["notes"] = copy.deepcopy(rec["notes"])
        out["createdAt"] = fmt_ts(rec["createdAt"])
        out["updatedAt"] = fmt_ts(rec["updatedAt"])
        for other in DTO_RELATIONS[etype]:
            refs = []
            for oid, row in self._links.neighbors(etype, rec["id"], other):
                ref = self._ref(etype, other, oid, row)
                if ref is not None:
                    refs.append(ref)
            out[PLURAL[other]] = refs
        out["customFieldValues"] = [{"columnId": c, "value": v} for c, v in rec["_cfv"]]
        return out

    # ------------------------------------------------------------------ reads

    def _configuration(self, h: _Handler, etype: str) -> _Response:
        err = self._rest_auth_error(h)
        if err:
            return err
        with self._state:
            return _json_response(
                200,
                {
                    "customColumns": [self._col_cfg(c) for c in self._cols_for(etype)],
                    "filterableFields": self._filterable(etype),
                    "sortableFields": self._sortable(etype),
                },
            )

    def _get_by_id(self, h: _Handler, etype: str, rid: str) -> _Response:
        err = self._rest_auth_error(h)
        if err:
            return err
        if not is_uuid(rid):
            issue = zm.Issue("invalid_format", ["id"], "Invalid UUID", {"format": "uuid", "pattern": UUID_PATTERN_TEXT})
            if etype == "contact":
                return _bad_request([issue])
            return _json_response(200, {"ok": False, "error": {"name": "ZodError", "message": zm.issues_json([issue])}})
        with self._state:
            rec = self._data[etype].get(rid)
            dto = self._dto(etype, rec) if rec else None
            cols = [self._col_cfg(c) for c in self._cols_for(etype)]
        if etype == "contact":
            return _json_response(200, {"contact": dto, "customColumns": cols})
        return _json_response(200, {"ok": True, "data": {etype: dto, "customColumns": cols}})

    # ------------------------------------------------------------------ writes

    def _write(self, h: _Handler, rec: RequestRecord, op: str, etype: str, raw: bytes, path_id: str | None = None) -> _Response:
        if op in ("delete",):
            payload: Any = None
        else:
            ok, payload = _parse_json(raw)
            if not ok:
                return _empty(500)  # request.json() throws before validation
        rec.item_count = _item_count(op, etype, payload)
        err = self._rest_auth_error(h)
        if err:
            return err
        faults = self._take_faults(rec.path)
        if "fail" in faults:
            return _empty(faults["fail"].status)
        if "reset" in faults:
            return _Response(None, action="drop")
        response = self._write_inner(op, etype, payload, path_id)
        if "drop" in faults:
            response.action = "drop"
        if "stall" in faults:
            response.stall = faults["stall"].seconds
        return response

    def _write_inner(self, op: str, etype: str, payload: Any, path_id: str | None) -> _Response:
        with self._state:
            issues, plan = self._validate_write(op, etype, payload, path_id)
        if issues:
            return _bad_request(issues)
        started = time.monotonic()
        timeout = self.transaction_timeout
        if not self._tx.acquire(timeout=max(0.0, timeout)):
            return _empty(500)  # P2028: timed out waiting for the advisory lock
        try:
            work = self.latency_per_item * plan["count"]
            elapsed = time.monotonic() - started
            if elapsed + work > timeout:
                self._stop_event.wait(max(0.0, timeout - elapsed))
                return _empty(500)  # P2028: transaction exceeded its time limit; rolled back
            if work > 0:
                self._stop_event.wait(work)
            with self._state:
                issues, plan = self._validate_write(op, etype, payload, path_id)
                if issues or plan["db_error"] or self._db_refuses(op, etype, payload):
                    return _empty(500)  # unique-index violation / vanished reference / Postgres refusing a value -> rollback
                result = self._apply(op, etype, plan)
        finally:
            self._tx.release()
        status = 201 if op in ("create", "create_many") else 200
        return _json_response(status, result)

    def _db_refuses(self, op: str, etype: str, payload: Any) -> bool:
        """What passes validation but not Postgres, which rolls the batch back (a 500 naming nothing):
        U+0000 in any text, and a currency value past its `numericValue DECIMAL(20,4)` (contract §6)."""
        if _holds_nul(payload) or (self.refused_text is not None and self.refused_text in json.dumps(payload, ensure_ascii=False)):
            return True
        currency = {c["id"] for c in self._cols_for(etype) if c["type"] == "currency"}
        items = payload.get(PLURAL[etype]) if op in ("create_many", "update_many") and isinstance(payload, dict) else [payload]
        for item in items if isinstance(items, list) else []:
            for cv in (item.get("customFieldValues") or []) if isinstance(item, dict) else []:
                value = cv.get("value") if isinstance(cv, dict) and cv.get("columnId") in currency else None
                if isinstance(value, str) and value.strip() and _overflows_decimal_20_4(value):
                    return True
        return False

    def _validate_write(self, op: str, etype: str, payload: Any, path_id: str | None) -> tuple[list, dict]:
        if op == "update":
            data = dict(payload) if isinstance(payload, dict) else {}
            data["id"] = path_id
        elif op == "delete":
            data = {"id": path_id}
        else:
            data = payload
        issues = zm.validate(self._spec.schemas[(op, etype)], data)
        plan: dict[str, Any] = {"op": op, "items": [], "notes": {}, "db_error": False, "count": 1}
        if any(i.aborting for i in issues):
            return issues, plan
        wrapper = PLURAL[etype]
        if op == "delete_many":
            ids = data["ids"]
            for k, rid in enumerate(ids):
                if rid not in self._data[etype]:
                    issues.append(zm.custom(["ids", k], MSG[etype]))
            plan["ids"] = ids
            plan["count"] = len(ids)
            return issues, plan
        if op == "delete":
            if data["id"] not in self._data[etype]:
                issues.append(zm.custom(["id"], MSG[etype]))
            plan["ids"] = [data["id"]]
            return issues, plan
        if op in ("create_many", "update_many"):
            items = data[wrapper]
            prefixes = [[wrapper, i] for i in range(len(items))]
        else:
            items = [data]
            prefixes = [[]]
        update = op in ("update", "update_many")
        issues.extend(self._refine_items(etype, items, prefixes, update, plan, many=op in ("create_many", "update_many")))
        plan["items"] = items
        plan["count"] = len(items)
        return issues, plan

    def _exists(self, other: str, oid: Any) -> bool:
        if not isinstance(oid, str):
            return False
        if other == "user":
            return oid in self._users_by_id
        return oid in self._data[other]

    def _refine_items(self, etype: str, items: list, prefixes: list, update: bool, plan: dict, *, many: bool = False) -> list:
        issues: list = []
        cols = self._cols_for(etype)
        unknown_services: list[int] = []  # the inner index of each unknown serviceId, reported for every deal
        if etype == "deal":
            for k, item in enumerate(items):
                sids = list(dict.fromkeys(s.get("serviceId") for s in item.get("services") or []))
                # Quirk (create/update many deals, contract "Observed on the real server"): an unknown
                # serviceId in deal k is reported for every deal of the batch at deals[i].services[k], the
                # index of the offending deal; a single deal's at services[n], the service's own index. (The
                # recording has one service a deal, where the index among the batch's services is the same.)
                unknown_services += [k if many else n for n, sid in enumerate(sids) if not self._exists("service", sid)]
        for idx, item in enumerate(items):
            p = prefixes[idx]
            if update and item.get("id") not in self._data[etype]:
                issues.append(zm.custom(p + ["id"], MSG[etype]))
            for fld, other in RELATIONS[etype]:
                if fld == "services":
                    for k in unknown_services:
                        issues.append(zm.custom(p + ["services", k], MSG["service"]))
                    services = item.get("services") or []
                    sids = [s.get("serviceId") for s in services]
                    if len(sids) != len(set(sids)):
                        plan["db_error"] = True
                    continue
                values = item.get(fld)
                if not values:
                    continue
                for k, oid in enumerate(values):
                    if not self._exists(other, oid):
                        issues.append(zm.custom(p + [fld, k], MSG[other]))
                if len(values) != len(set(values)):
                    plan["db_error"] = True  # unique index on the join table
            cfv = item.get("customFieldValues")
            if cfv:
                issues.extend(self._check_cfv(cols, cfv, p + ["customFieldValues"]))
            if "notes" in item:
                try:
                    plan["notes"][idx] = convert_notes(item["notes"])
                except ValueError as exc:
                    issues.append(zm.custom(p + ["notes"], MSG[str(exc)]))
        return issues

    def _check_cfv(self, cols: list[dict], values: list, base: list) -> list:
        issues: list = []
        by_id = {c["id"]: c for c in cols}
        for i, cv in enumerate(values):
            col = by_id.get(cv.get("columnId"))
            if col is None:
                listing = ", ".join(f"{c['label']} ({c['id']})" for c in cols)
                issues.append(zm.custom(base + [i, "columnId"], MSG["customColumnNotFound"].replace("{validValues}", listing)))
                continue
            value = cv.get("value")
            if value is None or value == "":
                continue
            multiple = bool((col["options"] or {}).get("allowMultiple"))
            issues.extend(self._check_value(col, value, base + [i, "value"], multiple))
        return issues

    @staticmethod
    def _split_multi(value: str, multiple: bool) -> tuple[list[str], bool]:
        if multiple:
            parts = [p.strip(_JS_WS) for p in value.split(",")]
            return parts, len(parts) > 1
        return [value.strip(_JS_WS)], False

    def _check_value(self, col: dict, value: str, path: list, multiple: bool = False) -> list:
        ctype = col["type"]
        issues: list = []

        def add(code: str, sub: list | None = None, message: str | None = None) -> None:
            issues.append(zm.custom(path + (sub or []), message or MSG[code]))

        if ctype in ("email", "phone", "link"):
            parts, as_array = self._split_multi(value, multiple)
            check = {"email": is_zod_email, "phone": lambda v: bool(ZOD_E164_RE.match(v)), "link": is_secure_url}[ctype]
            code = {"email": "customFieldInvalidEmail", "phone": "customFieldInvalidPhone", "link": "customFieldInvalidUrl"}[ctype]
            for k, part in enumerate(parts):
                if not check(part):
                    add(code, [k] if as_array else None)
        elif ctype == "currency":
            number = js_number_coerce(value)
            if math.isnan(number) or math.isinf(number):
                add("customFieldInvalidCurrency")
        elif ctype == "singleSelect":
            options = (col["options"] or {}).get("options", [])
            if value not in [o.get("value") for o in options]:
                listing = ", ".join(f"{o.get('label')} ({o.get('value')})" for o in options)
                add("customFieldInvalidSingleSelect", message=MSG["customFieldInvalidSingleSelect"].replace("{validValues}", listing))
        elif ctype == "date":
            if not (is_iso_date(value) or is_iso_datetime(value)):
                add("customFieldInvalidDate")
        elif ctype == "dateTime":
            if not is_iso_datetime(value):
                add("customFieldInvalidDateTime")
        elif ctype in ("dateRange", "dateTimeRange"):
            code = "customFieldInvalidDateRange" if ctype == "dateRange" else "customFieldInvalidDateTimeRange"
            parts = [p.strip(_JS_WS) for p in value.split(",")]
            if len(parts) != 2 or any(not p for p in parts):
                add(code)
            else:
                ok = all((is_iso_date(p) or is_iso_datetime(p)) if ctype == "dateRange" else is_iso_datetime(p) for p in parts)
                if not ok:
                    add(code)
                elif parse_js_date_ms(parts[0]) > parse_js_date_ms(parts[1]):
                    add(code)
        return issues

    # ---- apply (inside the transaction, state lock held)

    def _apply(self, op: str, etype: str, plan: dict) -> Any:
        if op in ("create", "create_many"):
            recs = []
            for idx, item in enumerate(plan["items"]):
                recs.append(self._create_record(etype, item, plan["notes"].get(idx)))
            if etype == "deal":
                for rec in recs:  # updateDealTotals touches every new deal
                    rec["updatedAt"] = self._tick()
            dtos = [self._dto(etype, r) for r in recs]
            return dtos[0] if op == "create" else dtos
        if op in ("update", "update_many"):
            recs = []
            for idx, item in enumerate(plan["items"]):
                recs.append(self._update_record(etype, item, idx in plan["notes"], plan["notes"].get(idx)))
            dtos = [self._dto(etype, r) for r in recs]
            return dtos[0] if op == "update" else dtos
        ids = plan["ids"]
        for rid in dict.fromkeys(ids):
            self._delete_record(etype, rid)
        return ids[0] if op == "delete" else list(ids)

    def _linked_deals(self, service_id: str) -> list[str]:
        return [d for d, _ in self._links.neighbors("service", service_id, "deal")]

    def _bump_changed_deals(self, before: dict[str, tuple]) -> None:
        for did, totals in before.items():
            rec = self._data["deal"].get(did)
            if rec is not None and self._deal_totals(did) != totals:
                rec["updatedAt"] = self._tick()

    def _create_record(self, etype: str, item: dict, notes: Any) -> dict:
        rid = self._id_factory()
        ms = self._tick()
        rec: dict[str, Any] = {"id": rid, "createdAt": ms, "updatedAt": ms, "notes": notes, "_cfv": []}
        if etype == "contact":
            rec["firstName"] = item["firstName"]
            rec["lastName"] = item["lastName"]
            rec["emails"] = list(item.get("emails") or [])
        else:
            rec["name"] = item["name"]
            if etype == "service":
                rec["amount"] = item["amount"]
            if etype == "task":
                rec["type"] = "custom"
        self._data[etype][rid] = rec
        before: dict[str, tuple] = {}
        for fld, other in RELATIONS[etype]:
            values = item.get(fld) or []
            if fld == "services":
                for s in values:
                    self._links.link("deal", rid, "service", s["serviceId"], {"quantity": s.get("quantity", 1)})
            elif etype == "service" and fld == "dealIds":
                for did in values:
                    before.setdefault(did, self._deal_totals(did))
                    self._links.link("service", rid, "deal", did, {"quantity": 1})
            else:
                for oid in values:
                    self._links.link(etype, rid, other, oid)
        provided = list(item.get("customFieldValues") or [])
        provided_cols = {cv.get("columnId") for cv in provided}
        defaults = []
        for col in self._cols_for(etype):
            if col["type"] != "singleSelect" or col["id"] in provided_cols:
                continue
            default = next((o for o in (col["options"] or {}).get("options", []) if o.get("isDefault")), None)
            if default is not None:
                defaults.append({"columnId": col["id"], "value": default["value"]})
        self._replace_values(rec, provided + defaults)
        self._bump_changed_deals(before)
        return rec

    def _replace_values(self, rec: dict, values: list[dict]) -> None:
        if not values:
            return
        col_ids = {v.get("columnId") for v in values}
        rec["_cfv"] = [cv for cv in rec["_cfv"] if cv[0] not in col_ids]
        for v in values:
            value = v.get("value")
            if value is None or value == "" or v.get("columnId") not in self._columns:
                continue
            rec["_cfv"].append([v["columnId"], value])

    def _update_record(self, etype: str, item: dict, notes_present: bool, notes: Any) -> dict:
        rid = item["id"]
        rec = self._data[etype][rid]
        before: dict[str, tuple] = {}
        if etype == "service":
            for did in self._linked_deals(rid):
                before[did] = self._deal_totals(did)
        if etype == "contact":
            for key in ("firstName", "lastName"):
                if item.get(key) is not None:
                    rec[key] = item[key]
            if isinstance(item.get("emails"), list):
                rec["emails"] = list(item["emails"])
        else:
            if item.get("name") is not None:
                rec["name"] = item["name"]
            if etype == "service" and item.get("amount") is not None:
                rec["amount"] = item["amount"]
        if notes_present:
            rec["notes"] = notes
        for fld, other in RELATIONS[etype]:
            if fld not in item:
                continue
            values = item[fld] or []
            if fld == "services":
                self._links.unlink_all("deal", rid, "service")
                for s in values:
                    self._links.link("deal", rid, "service", s["serviceId"], {"quantity": s.get("quantity", 1)})
            elif etype == "service" and fld == "dealIds":
                existing = dict(self._links.unlink_all("service", rid, "deal"))
                for did in values:
                    before.setdefault(did, self._deal_totals(did))
                    qty = existing[did].get("quantity", 1) if did in existing else 1
                    self._links.link("service", rid, "deal", did, {"quantity": qty})
            else:
                self._links.unlink_all(etype, rid, other)
                for oid in values:
                    self._links.link(etype, rid, other, oid)
        if "customFieldValues" in item:
            if item["customFieldValues"] is None:
                rec["_cfv"] = []
            else:
                self._replace_values(rec, item["customFieldValues"])
        rec["updatedAt"] = self._tick()
        self._bump_changed_deals(before)
        return rec

    def _delete_record(self, etype: str, rid: str) -> None:
        before: dict[str, tuple] = {}
        if etype == "service":
            for did in self._linked_deals(rid):
                before[did] = self._deal_totals(did)
        self._links.remove_record(etype, rid)
        self._data[etype].pop(rid, None)
        self._bump_changed_deals(before)

    # ------------------------------------------------------------------ search

    def _search(self, h: _Handler, etype: str, raw: bytes) -> _Response:
        ok, payload = _parse_json(raw)
        if not ok:
            return _empty(500)
        err = self._rest_auth_error(h)
        if err:
            return err
        payload = _coerce_in_last_days(payload)
        with self._state:
            issues = zm.validate(self._spec.schemas[("search", etype)], payload)
            if not any(i.aborting for i in issues):
                for i, f in enumerate(payload.get("filters") or []):
                    if f.get("operator") == "between" and isinstance(f.get("value"), list) and len(f["value"]) != 2:
                        issues.append(zm.custom(["filters", i, "value"], MSG["filterBetweenInvalidArrayLength"]))
                issues.extend(self._refine_query(etype, payload))
            if issues:
                return _bad_request(issues)
            answer = self._run_search(etype, payload)
            if self.after_search is not None:
                self.after_search(etype, payload)
            return _json_response(200, answer)

    def _refine_query(self, etype: str, payload: dict) -> list:
        issues: list = []
        filterable = self._filterable(etype)
        for i, f in enumerate(payload.get("filters") or []):
            found = any(ff["field"] == f["field"] and f["operator"] in ff["operators"] for ff in filterable)
            if not found:
                listing = ", ".join(
                    (f"{ff['label']} - " if ff.get("label") else "") + f"{ff['field']} ({', '.join(ff['operators'])})"
                    for ff in filterable
                )
                issues.append(zm.custom(["filters", i, "field"], MSG["invalidFilterField"].replace("{validValues}", listing)))
                continue
            issues.extend(self._check_filter_value(etype, f, i))
        sort = payload.get("sortDescriptor")
        if sort:
            col_ids = {c["id"] for c in self._cols_for(etype)}
            if sort["field"] not in SORTABLE[etype] and sort["field"] not in col_ids:
                issues.append(zm.custom(["sortDescriptor", "field"], MSG["invalidSortField"]))
        return issues

    def _check_filter_value(self, etype: str, f: dict, i: int) -> list:
        if "value" not in f or f["operator"] in ("contains", "inLastDays"):
            return []
        issues: list = []
        path = ["filters", i, "value"]
        value = f["value"]
        is_list = isinstance(value, list)
        values = value if is_list else [value]
        fld = f["field"]
        if fld in FILTER_FIELD_TYPE:
            other = FILTER_FIELD_TYPE[fld]
            if values:
                for k, v in enumerate(values):
                    if not self._exists(other, v):
                        issues.append(zm.custom(path + [k] if is_list else path, MSG[other]))
        elif fld in ("createdAt", "updatedAt"):
            for k, v in enumerate(values):
                if not (isinstance(v, str) and is_iso_datetime(v)):
                    issues.append(zm.custom(path + [k] if is_list else path, MSG["customFieldInvalidDate"]))
        elif is_uuid(fld):
            cols = self._cols_for(etype)
            col = next((c for c in cols if c["id"] == fld), None)
            if col is None:
                listing = ", ".join(f"{c['label']} ({c['id']})" for c in cols)
                return [zm.custom(["filters", i, "field"], MSG["customColumnNotFound"].replace("{validValues}", listing))]
            probe = dict(col)
            if col["type"] == "dateRange":
                probe["type"] = "date"
            elif col["type"] == "dateTimeRange":
                probe["type"] = "dateTime"
            for k, v in enumerate(values):
                if v is None or v == "":
                    continue
                issues.extend(self._check_value(probe, v, path + [k] if is_list else path, False))
        return issues

    @staticmethod
    def _well_formed(f: dict, operators: list[str]) -> bool:
        op = f["operator"]
        if op in ("isNull", "isNotNull"):
            return True
        raw = f.get("value", _MISSING)
        if op == "inLastDays":
            try:
                n = float(raw)
            except (TypeError, ValueError):
                return False
            return n.is_integer() and n > 0
        if op == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                return False
        elif isinstance(raw, list):
            if not raw:
                return False
        elif raw is _MISSING or raw is None or raw == "":
            return False
        values = raw if isinstance(raw, list) else [raw]
        if "between" in operators:
            return all(isinstance(v, str) and not math.isnan(parse_js_date_ms(v)) for v in values)
        if any(o in operators for o in ("gt", "gte", "lt", "lte")):
            return all(isinstance(v, str) and not math.isnan(js_number_coerce(v)) for v in values)
        return True

    def _run_search(self, etype: str, payload: dict) -> dict:
        filterable = self._filterable(etype)
        ops_by_field = {ff["field"]: ff["operators"] for ff in filterable}
        filters = [
            f for f in payload.get("filters") or []
            if f["field"] in ops_by_field and f["operator"] in ops_by_field[f["field"]] and self._well_formed(f, ops_by_field[f["field"]])
        ]
        echo_filters = []
        for f in filters:
            f2 = dict(f)
            if f2["operator"] == "inLastDays":
                f2["value"] = int(float(f2["value"]))
            echo_filters.append(f2)
        has_state = any(k in payload for k in ("filters", "searchTerm", "sortDescriptor", "pagination"))
        sort = payload.get("sortDescriptor") if has_state else DEFAULT_SORT[etype]
        term = payload.get("searchTerm")
        query = (self._writes_seen, etype, json.dumps(echo_filters, sort_keys=True), term, json.dumps(sort, sort_keys=True))
        recs = self._searched.get(query) if self.search_cache else None
        if recs is None:
            recs = [r for r in self._data[etype].values() if all(self._match_filter(etype, r, f) for f in echo_filters)]
            if term:
                tokens = term.strip().split()
                if tokens:
                    recs = [r for r in recs if all(self._match_token(etype, r, t.lower()) for t in tokens)]
            recs.sort(key=lambda r: r["id"])  # what Postgres returned without ORDER BY in the recordings
            if sort:
                recs = self._sort(etype, recs, sort)
            if self.search_cache:
                self._searched = {query: recs}
        page, size = self._page(payload.get("pagination"))
        total = len(recs)
        start = int((page - 1) * size)
        out: dict[str, Any] = {
            "items": [self._dto(etype, r) for r in recs[start:start + int(size)]],
            "customColumns": [self._col_search(c) for c in self._cols_for(etype)],
            "filters": echo_filters,
        }
        if "searchTerm" in payload:
            out["searchTerm"] = payload["searchTerm"]
        if sort:
            out["sortDescriptor"] = sort
        out["pagination"] = {"page": page, "pageSize": size, "totalPages": max(1, math.ceil(total / size)), "total": total}
        out["filterableFields"] = filterable
        return out

    def _match_token(self, etype: str, rec: dict, token: str) -> bool:
        texts: list[str] = []
        if etype == "contact":
            texts = [rec["firstName"], rec["lastName"], " ".join(rec["emails"])]
            texts += [self._data["organization"][o]["name"] for o, _ in self._links.neighbors("contact", rec["id"], "organization") if o in self._data["organization"]]
        elif etype == "organization":
            texts = [rec["name"]]
            for cid, _ in self._links.neighbors("organization", rec["id"], "contact"):
                c = self._data["contact"].get(cid)
                if c:
                    texts += [c["firstName"], c["lastName"]]
        else:
            texts = [rec["name"]]
        return any(token in t.lower() for t in texts)

    def _match_filter(self, etype: str, rec: dict, f: dict) -> bool:
        fld, op = f["field"], f["operator"]
        value = f.get("value")
        if fld in FILTER_FIELD_TYPE:
            linked = {oid for oid, _ in self._links.neighbors(etype, rec["id"], FILTER_FIELD_TYPE[fld])}
            wanted = set(value if isinstance(value, list) else [value])
            hit = bool(linked & wanted)
            return hit if op in ("in", "hasSome") else not hit
        if fld == "emails":
            if op == "equals":
                return value in rec["emails"]
            return (not rec["emails"]) if op == "isNull" else bool(rec["emails"])
        if fld in ("createdAt", "updatedAt"):
            t = rec[fld]
            if op == "inLastDays":
                now = datetime.now(timezone.utc)
                start = datetime(now.year, now.month, now.day, tzinfo=timezone.utc).timestamp() * 1000
                return t >= start - float(value) * 86_400_000
            if op == "between":
                return parse_js_date_ms(value[0]) <= t <= parse_js_date_ms(value[1])
            return _compare(t, parse_js_date_ms(value), op)
        col = self._columns.get(fld)
        if col is None:
            return True
        rows = [v for c, v in rec["_cfv"] if c == fld]
        if op == "isNull":
            return not rows
        if op == "isNotNull":
            return bool(rows)
        ctype = col["type"]
        if ctype in ("dateRange", "dateTimeRange"):
            for row in rows:
                parts = [p.strip() for p in row.split(",")]
                if len(parts) != 2:
                    continue
                start, end = parts
                if op == "contains" and start <= value <= end:
                    return True
                if op in ("gt", "gte") and _compare(start, value, op):
                    return True
                if op in ("lt", "lte") and _compare(end, value, op):
                    return True
                if op == "between" and start >= value[0] and end <= value[1]:
                    return True
            return False
        if ctype == "currency":
            target = js_number_coerce(value)
            return any(_compare(js_number_coerce(r), target, op) for r in rows)
        if ctype == "singleSelect":
            hit = any(r in (value or []) for r in rows)
            return hit if op == "in" else not hit
        if op == "equals":
            return value in rows
        if op == "contains":
            return any(str(value).lower() in r.lower() for r in rows)
        if op == "between":
            return any(value[0] <= r <= value[1] for r in rows)
        return any(_compare(r, value, op) for r in rows)

    def _sort(self, etype: str, recs: list[dict], sort: dict) -> list[dict]:
        fld = sort["field"]
        desc = sort.get("direction") == "desc"
        col = self._columns.get(fld)
        if col is not None and col["entityType"] == etype:
            ctype = col["type"]

            def val(rec: dict) -> str | None:
                found = None
                for c, v in rec["_cfv"]:
                    if c == fld:
                        found = v
                return found

            def cmp(a: dict, b: dict) -> int:
                va, vb = val(a), val(b)
                if va in (None, ""):
                    return 0 if vb in (None, "") else 1
                if vb in (None, ""):
                    return -1
                if ctype == "currency":
                    x, y = js_number_coerce(va), js_number_coerce(vb)
                elif ctype in ("date", "dateTime"):
                    x, y = parse_js_date_ms(va), parse_js_date_ms(vb)
                else:
                    x, y = collate_key(va), collate_key(vb)
                result = (x > y) - (x < y)
                return -result if desc else result

            return sorted(recs, key=functools.cmp_to_key(cmp))
        if fld == "name":
            if etype == "contact":
                key = lambda r: (collate_key(r["firstName"]), collate_key(r["lastName"]))  # noqa: E731
            else:
                key = lambda r: collate_key(r["name"])  # noqa: E731
        elif fld in ("createdAt", "updatedAt"):
            key = lambda r: r[fld]  # noqa: E731
        elif fld == "amount":
            key = lambda r: r["amount"]  # noqa: E731
        elif fld == "totalValue":
            key = lambda r: self._deal_totals(r["id"])[0]  # noqa: E731
        elif fld == "totalQuantity":
            key = lambda r: self._deal_totals(r["id"])[1]  # noqa: E731
        else:
            return recs
        return sorted(recs, key=key, reverse=desc)

    # ------------------------------------------------------------------ MCP

    def _mcp(self, h: _Handler, method: str, raw: bytes) -> _Response:
        if method != "POST":
            return _Response(405, js_json({"jsonrpc": "2.0", "error": {"code": -32000, "message": "Method not allowed."}, "id": None}).encode())
        ok, payload = _parse_json(raw)
        if not ok:
            # mcp-handler's req.json() rejection is unhandled: the request never gets an answer.
            return _Response(None, action="hang")
        accept = h.headers.get("accept", "") or ""
        if "application/json" not in accept or "text/event-stream" not in accept:
            return _Response(406, js_json({
                "jsonrpc": "2.0",
                "error": {"code": -32000, "message": "Not Acceptable: Client must accept both application/json and text/event-stream"},
                "id": None,
            }).encode())
        ctype = h.headers.get("content-type", "") or ""
        if "application/json" not in ctype:
            return _Response(415, js_json({
                "jsonrpc": "2.0",
                "error": {"code": -32000, "message": "Unsupported Media Type: Content-Type must be application/json"},
                "id": None,
            }).encode())
        messages = payload if isinstance(payload, list) else [payload]
        if not messages or not all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in messages):
            return _Response(400, js_json({
                "jsonrpc": "2.0",
                "error": {"code": -32700, "message": "Parse error: Invalid JSON-RPC message"},
                "id": None,
            }).encode())
        is_init = any(m.get("method") == "initialize" for m in messages)
        version = h.headers.get("mcp-protocol-version")
        if not is_init and version is not None and version not in MCP_SUPPORTED_VERSIONS:
            return _Response(400, js_json({
                "jsonrpc": "2.0",
                "error": {
                    "code": -32000,
                    "message": "Bad Request: Unsupported protocol version (supported versions: "
                    + ", ".join(MCP_SUPPORTED_VERSIONS) + ")",
                },
                "id": None,
            }).encode())
        requests = [m for m in messages if "method" in m and "id" in m]
        if not requests:
            return _Response(202, b"")
        events = [self._mcp_message(h, m) for m in requests]
        body = "".join(f"event: message\ndata: {js_json(e)}\n\n" for e in events)
        return _Response(200, body.encode("utf-8"), "text/event-stream", headers={"Cache-Control": "no-cache"})

    def _mcp_message(self, h: _Handler, msg: dict) -> dict:
        mid = msg.get("id")
        method = msg.get("method")
        params = msg.get("params") or {}
        if method == "initialize":
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            result = {
                "protocolVersion": requested if requested in MCP_SUPPORTED_VERSIONS else MCP_LATEST_VERSION,
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "mcp-typescript server on vercel", "version": "0.1.0"},
            }
            return {"result": result, "jsonrpc": "2.0", "id": mid}
        if method == "ping":
            return {"result": {}, "jsonrpc": "2.0", "id": mid}
        if method == "tools/list":
            return {"result": {"tools": copy.deepcopy(self._spec.tools)}, "jsonrpc": "2.0", "id": mid}
        if method == "tools/call":
            text, is_error = self._mcp_tool(h, params if isinstance(params, dict) else {})
            result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
            if is_error:
                result["isError"] = True
            return {"result": result, "jsonrpc": "2.0", "id": mid}
        return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}}

    def _mcp_tool(self, h: _Handler, params: dict) -> tuple[str, bool]:
        name = params.get("name")
        tool = self._spec.tools_by_name.get(name) if isinstance(name, str) else None
        if tool is None:
            return f"MCP error -32602: Tool {name} not found", True
        args = params.get("arguments", _MISSING)
        if args is _MISSING:
            issues = [zm.Issue("invalid_type", [], "Invalid input: expected object, received undefined", {"expected": "object"})]
        else:
            issues = zm.validate(tool["inputSchema"], args)
        if issues:
            return (
                f"MCP error -32602: Input validation error: Invalid arguments for tool {name}: {zm.issues_json(issues)}",
                True,
            )
        _user, err = self._auth(h)
        if err == "missing":
            return "Error: Not authenticated", True
        if err == "invalid":
            return "Error: Invalid API key.", True
        if err == "inactive":
            return "Error: User is not active", True
        with self._tx:
            with self._state:
                if name in _CREATE_TOOLS:
                    return self._tool_create_column(_CREATE_TOOLS[name], args)
                if name in _UPDATE_TOOLS:
                    return self._tool_update_column(_UPDATE_TOOLS[name], args)
                if name == "list_custom_columns":
                    et = args.get("entityType")
                    cols = self._cols_for(et) if et else self._all_columns_sorted()
                    return toon.encode({"items": [self._col_cfg(c) for c in cols]}), False
                if name == "delete_custom_column":
                    return self._tool_delete_column(args["id"])
                if name == "list_webhooks":
                    term = str(args.get("searchTerm") or "").lower()
                    items = [w for w in self.webhooks if term in (w["url"] + " " + (w.get("description") or "")).lower()]
                    return toon.encode({"items": copy.deepcopy(items)}), False
        return f"Error: the fake Customermates server does not implement the tool {name}", True

    def _options_from_args(self, ctype: str, args: dict, existing: Any = None, update: bool = False) -> Any:
        if ctype == "plain":
            return None
        if ctype in DATE_COLUMN_TYPES:
            if args.get("displayFormat"):
                return {"displayFormat": args["displayFormat"]}
            return existing if update else None
        if ctype == "currency":
            return {"currency": args["currency"]}
        if ctype == "singleSelect":
            options = []
            for opt in args["options"]:
                item = {k: opt[k] for k in ("label", "color", "isDefault", "index")}
                item["value"] = opt.get("value") or self._id_factory()
                options.append(item)
            return {"options": options}
        return {"color": args["color"], "allowMultiple": args["allowMultiple"]}

    def _fill_default(self, col: dict) -> None:
        if col["type"] != "singleSelect":
            return
        default = next((o for o in (col["options"] or {}).get("options", []) if o.get("isDefault")), None)
        if default is None:
            return
        for rec in self._data[col["entityType"]].values():
            if not any(c == col["id"] for c, _ in rec["_cfv"]):
                rec["_cfv"].append([col["id"], default["value"]])

    def _tool_create_column(self, ctype: str, args: dict) -> tuple[str, bool]:
        self._col_seq += 1
        col = {
            "id": self._id_factory(),
            "label": args["label"],
            "entityType": args["entityType"],
            "type": ctype,
            "options": self._options_from_args(ctype, args),
            "_seq": self._col_seq,
        }
        self._columns[col["id"]] = col
        self._fill_default(col)
        return toon.encode({
            "id": col["id"],
            "label": col["label"],
            "message": f'Custom field "{col["label"]}" created successfully',
        }), False

    def _tool_update_column(self, ctype: str, args: dict) -> tuple[str, bool]:
        cid = args["id"]
        col = self._columns.get(cid)
        if col is None:
            return f"Validation error: Custom column {cid} not found", True
        if col["type"] != ctype:
            return (
                f'Validation error: Custom column {cid} is type "{col["type"]}", not "{ctype}". '
                f'Use update_{col["type"]}_custom_column instead.',
                True,
            )
        col["label"] = args["label"]
        col["options"] = self._options_from_args(ctype, args, existing=col["options"], update=True)
        if ctype == "singleSelect":
            options = col["options"]["options"]
            valid = {o["value"] for o in options}
            default = next((o["value"] for o in options if o.get("isDefault")), None)
            for rec in self._data[col["entityType"]].values():
                rows = []
                for c, v in rec["_cfv"]:
                    if c == cid and v not in valid:
                        if default is not None:
                            rows.append([c, default])
                        continue
                    rows.append([c, v])
                rec["_cfv"] = rows
            self._fill_default(col)
        return toon.encode({
            "id": col["id"],
            "label": col["label"],
            "message": f'Custom field "{col["label"]}" updated successfully',
        }), False

    def _tool_delete_column(self, cid: str) -> tuple[str, bool]:
        col = self._columns.pop(cid, None)
        if col is None:
            return "Error: No record was found for a query.", True
        for rec in self._data[col["entityType"]].values():
            rec["_cfv"] = [cv for cv in rec["_cfv"] if cv[0] != cid]
        return f"Deleted custom column {cid}", False


# ==========================================================================
# module helpers


def _compare(a: Any, b: Any, op: str) -> bool:
    try:
        if op == "gt":
            return a > b
        if op == "gte":
            return a >= b
        if op == "lt":
            return a < b
        if op == "lte":
            return a <= b
        if op == "equals":
            return a == b
    except TypeError:
        return False
    return False


_WRITE_RE = re.compile(r"^/api/v1/(contacts|organizations|deals|services|tasks)(/[^/]+)?/?\Z")


def _is_write_path(method: str, path: str) -> bool:
    if method not in ("POST", "PUT", "DELETE"):
        return False
    m = _WRITE_RE.match(path)
    if not m:
        return False
    sub = (m.group(2) or "").strip("/")
    if sub in ("search", "configuration"):
        return False
    if method == "POST" and sub not in ("", "many"):
        return False
    return True


def _coerce_in_last_days(payload: Any) -> Any:
    """``inLastDays`` values go through ``z.coerce.number()``: "7" and true are numbers to zod."""
    if not isinstance(payload, dict) or not isinstance(payload.get("filters"), list):
        return payload
    filters = []
    for f in payload["filters"]:
        if isinstance(f, dict) and f.get("operator") == "inLastDays" and isinstance(f.get("value"), (str, bool)):
            f = dict(f)
            raw = f["value"]
            number = float(raw) if isinstance(raw, bool) else js_number_coerce(raw)
            f["value"] = int(number) if number.is_integer() else number
        filters.append(f)
    return dict(payload, filters=filters)


def _overflows_decimal_20_4(text: str) -> bool:
    """Postgres rounds to 4 decimal places and then needs at most 16 digits before the point."""
    try:
        return abs(round(decimal.Decimal(text.strip(_JS_WS)), 4)) >= 10**16
    except (decimal.InvalidOperation, ValueError, OverflowError):  # JS-only spellings (hex, Infinity): as a float
        return abs(js_number_coerce(text)) >= 1e16


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _item_count(op: str, etype: str, payload: Any) -> int | None:
    if op in ("create_many", "update_many"):
        items = payload.get(PLURAL[etype]) if isinstance(payload, dict) else None
        return len(items) if isinstance(items, list) else None
    if op == "delete_many":
        ids = payload.get("ids") if isinstance(payload, dict) else None
        return len(ids) if isinstance(ids, list) else None
    return None
