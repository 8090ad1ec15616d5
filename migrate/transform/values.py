"""Pure value conversions from Pipedrive encodings to what Customermates accepts.

Every function here is side-effect free. Functions that cannot make sense of their input raise
``ValueError`` with the offending value in the message (so a caller can quarantine the record),
except where the docstring says the function answers ``None`` instead.
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import phonenumbers

from migrate.staging.keys import number_id

__all__ = [
    "CUSTOMERMATES_CURRENCIES",
    "EMAIL_PATTERN",
    "as_list",
    "as_plain_text",
    "combine_date_time",
    "date_range",
    "decimal_string",
    "finite_number",
    "format_address",
    "format_time_range",
    "format_time_value",
    "is_valid_email",
    "normalise_phone",
    "number_id",
    "split_name",
    "to_date",
    "to_utc_datetime",
    "truncate_plain",
]

#: Currencies a Customermates currency column can carry (CONTRACT §5, prisma enum Currency).
CUSTOMERMATES_CURRENCIES: frozenset[str] = frozenset(
    "eur usd gbp jpy cny inr brl cad aud chf sek nok dkk pln czk huf try twd zar mxn krw hkd sgd nzd aed sar ils".split()
)

#: zod's default email pattern, exactly as the Customermates OpenAPI document states it (ASCII only).
EMAIL_PATTERN: re.Pattern[str] = re.compile(
    r"^(?!\.)(?!.*\.\.)([A-Za-z0-9_'+\-\.]*)[A-Za-z0-9_+-]@([A-Za-z0-9][A-Za-z0-9\-]*\.)+[A-Za-z]{2,}$"
)

_E164 = re.compile(r"\+[0-9]{7,15}", re.ASCII)
# Digits (any script; phonenumbers normalises them), one leading "+", and the usual visual separators.
_PHONE_CHARS = re.compile(r"\+?[\d\s\-\u2010-\u2015().\/]+")

_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})", re.ASCII)
_DATETIME = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<frac>[0-9]+))?)?"
    r" ?(?P<tz>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?",
    re.ASCII,
)
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?", re.ASCII)
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_SPACES = re.compile(r"\s+")
_LINE_BREAKS = re.compile(r"[\r\n]+")
_NON_DIGITS = re.compile(r"\D")

# Countries whose addresses put the house number before the street name (used only when Pipedrive
# gave address parts but neither `formatted_address` nor `value`).
_NUMBER_FIRST_COUNTRIES = frozenset({
    "us", "usa", "united states", "united states of america", "uk", "gb", "united kingdom",
    "ie", "ireland", "ca", "canada", "au", "australia", "nz", "new zealand", "fr", "france",
})


def is_valid_email(value: str) -> bool:
    """True if Customermates would accept ``value`` as an email (zod's ASCII pattern, whole string)."""
    return isinstance(value, str) and EMAIL_PATTERN.fullmatch(value) is not None


def normalise_phone(raw: str, default_region: str | None = None) -> str | None:
    """A phone number in E.164 (``+491234567890``) or ``None`` when it cannot be made exact.

    ``None`` for: empty input, letters (vanity numbers, ``ext``), extensions, any character other
    than digits, a leading ``+``, spaces, dashes, dots, slashes and parentheses (so two numbers in one
    string are refused), numbers without a country code when no ``default_region`` is given, and
    numbers that are neither valid nor possible as a full (not local-only) number. A leading ``00``
    is read as the international prefix when the region's own rules do not already explain it.
    """
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if not text or _PHONE_CHARS.fullmatch(text) is None:
        return None
    candidates = [(text, default_region)]
    if not text.startswith("+"):
        digits_only = _NON_DIGITS.sub("", text)
        if digits_only.startswith("00"):
            candidates.append(("+" + digits_only[2:], None))
    for candidate, region in candidates:
        result = _parse_phone(candidate, region)
        if result is not None:
            return result
    return None


def _parse_phone(text: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(text, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    if number.extension:
        return None
    # Possible (its length fits the region) or valid (it matches a number type's pattern). The
    # length check first: it costs a fifth of the pattern matching, and settles most numbers.
    possible = phonenumbers.is_possible_number_with_reason(number) == phonenumbers.ValidationResult.IS_POSSIBLE
    if not possible and not phonenumbers.is_valid_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164 if _E164.fullmatch(e164) else None


def _parse_datetime(value: str) -> tuple[datetime, date]:
    """Parse one of Pipedrive's timestamp shapes into (aware UTC datetime, date as written)."""
    match = _DATETIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a recognised timestamp: {value!r}")
    g = match.groupdict()
    try:
        second = int(g["s"] or 0)
        leap = second == 60  # RFC 3339 allows a leap second; clamp it rather than fail
        local = datetime(
            int(g["y"]), int(g["mo"]), int(g["d"]), int(g["h"]), int(g["mi"]), 59 if leap else second
        )
        written_date = local.date()
        tz = g["tz"]
        if tz and tz not in "Zz":
            sign = 1 if tz[0] == "+" else -1
            digits = tz[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            local = local.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
        else:  # "Z", or no zone at all: Pipedrive v1 times are UTC
            local = local.replace(tzinfo=timezone.utc)
        return local.astimezone(timezone.utc), written_date
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {value!r} ({exc})") from None


def _format_utc(moment: datetime) -> str:
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def to_utc_datetime(value: str | None, *, fraction: bool = False) -> str | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC from a Pipedrive timestamp; ``None`` for ``None``/blank.

    Accepts v2 RFC 3339 (with or without fractional seconds, ``Z`` or an offset), v1
    ``YYYY-MM-DD HH:MM:SS`` (UTC), lead ISO with milliseconds. A timestamp without a zone is UTC.
    Fractional seconds are dropped, or with ``fraction`` kept as written (``…:36.551Z``: a value
    carried exactly; a note's date in its header is to the second). Anything else raises ``ValueError``.
    """
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a recognised timestamp: {value!r}")
    text, digits = _utc_text(value)
    return f"{text[:-1]}.{digits}Z" if fraction and digits else text


@functools.lru_cache(maxsize=1 << 16)
def _utc_text(value: str) -> tuple[str, str | None]:
    """(the timestamp to the second, its fractional digits). Timestamps repeat (add_time, due
    dates, imports made in one go): each is parsed once. Most are UTC already (v1 `YYYY-MM-DD
    HH:MM:SS`, v2 `…Z`): checked as a calendar date and time, their text is the answer; the
    others (offsets, a leap second) are converted (an offset is whole minutes: the fraction stays)."""
    match = _DATETIME.fullmatch(value.strip())
    if match is not None and match["tz"] in (None, "Z", "z") and match["s"] != "60":
        y, mo, d, h, mi, s = match["y"], match["mo"], match["d"], match["h"], match["mi"], match["s"] or "00"
        try:
            datetime(int(y), int(mo), int(d), int(h), int(mi), int(s))
        except ValueError:
            pass  # the general path raises it with its reason
        else:
            return f"{y}-{mo}-{d}T{h}:{mi}:{s}Z", match["frac"]
    moment, _ = _parse_datetime(value)
    return _format_utc(moment), match["frac"] if match is not None else None


def _parse_date(value: str) -> date:
    text = value.strip()
    match = _DATE.fullmatch(text)
    if match is None:
        if _DATETIME.fullmatch(text):
            return _parse_datetime(text)[1]
        raise ValueError(f"not a recognised date: {value!r}")
    try:
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError as exc:
        raise ValueError(f"not a valid date: {value!r} ({exc})") from None


def to_date(value: str | None) -> str | None:
    """``YYYY-MM-DD`` (a real calendar date); ``None`` for ``None``/blank.

    A timestamp is accepted too and keeps the date part *as written* (no conversion to UTC).
    Anything else raises ``ValueError``.
    """
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a recognised date: {value!r}")
    return _parse_date(value).isoformat()


def past_decimal_20_4(text: str) -> bool:
    """A plain decimal string (`decimal_string`) that Customermates' `numericValue DECIMAL(20,4)`
    cannot hold: rounded to 4 places, 10^16 or more. Postgres refuses it, failing the whole batch."""
    if len(text) <= 16:
        return False
    with localcontext() as ctx:
        ctx.prec = 1100  # `decimal_string` writes at most 1,000 digits either side of the point
        return abs(round(Decimal(text), 4)) >= 10**16


PIPEDRIVE_PRECISION = 16  # significant digits of a Pipedrive number (contract §8.3)


def decimal_string(value: float | int | str | Decimal | None) -> str | None:
    """A plain decimal string (no exponent, no trailing zeros) for a currency/number value.

    ``1e3`` → ``"1000"``, ``12.50`` → ``"12.5"``, ``0.1 + 0.2`` → ``"0.3"``. A float is written as
    the shortest decimal that reads back as the same double, which is the number Pipedrive sent,
    of up to 16 significant digits (contract §8.3: "double (precision 16)"). One that needs 17 is no
    number typed into Pipedrive but the binary noise of a sum (``0.30000000000000004``), rounded
    to 15 digits. However small a float is, its digits are kept (``1.234e-11`` →
    ``"0.00000000001234"``).
    Ints and strings are exact. ``None``/blank → ``None``. Booleans, NaN,
    infinities and strings that are not plain numbers (``"1,234.56"``, ``"$12"``) raise ``ValueError``.
    """
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise ValueError(f"a boolean is not a number: {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        number = Decimal(repr(value))
        if len(number.normalize().as_tuple().digits) > PIPEDRIVE_PRECISION:
            with localcontext() as ctx:
                ctx.prec = 400
                number = number.quantize(Decimal(1).scaleb(number.adjusted() - 14), rounding=ROUND_HALF_EVEN)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if _DECIMAL_TEXT.fullmatch(text) is None:
            raise ValueError(f"not a plain number: {value!r}")
        number = Decimal(text)
    else:
        raise ValueError(f"not a number: {value!r}")
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    if abs(number.adjusted()) > 1000:
        raise ValueError(f"number out of range: {value!r}")
    if not number:
        return "0"
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _parse_time(value: str) -> tuple[int, int, int]:
    match = _TIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a recognised time: {value!r}")
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"not a valid time: {value!r}")
    return hour, minute, second


def combine_date_time(due_date: str | None, due_time: str | None) -> str | None:
    """Pipedrive activity ``due_date`` + ``due_time`` (UTC) → ``YYYY-MM-DDTHH:MM:SSZ``.

    ``due_time`` may be ``HH:MM`` or ``HH:MM:SS``; without a time the result is just
    ``YYYY-MM-DD`` (which a Customermates ``date`` column accepts, as it accepts the datetime).
    No date → ``None``. Invalid input raises ``ValueError``.
    """
    day = to_date(due_date)
    if day is None:
        return None
    if _blank(due_time):
        return day
    hour, minute, second = _parse_time(due_time)  # type: ignore[arg-type]
    return f"{day}T{hour:02d}:{minute:02d}:{second:02d}Z"


def date_range(start: str | None, end: str | None) -> str | None:
    """``"YYYY-MM-DD,YYYY-MM-DD"`` for a Customermates ``dateRange`` column.

    Both parts go through :func:`to_date`. When only one side is given it is used for both (a
    one-day range) so the value is not lost. Nothing given → ``None``. ``start > end`` raises
    ``ValueError`` (the sides are never swapped).
    """
    first, last = to_date(start), to_date(end)
    if first is None and last is None:
        return None
    first = first or last
    last = last or first
    if first > last:  # type: ignore[operator]
        raise ValueError(f"date range starts after it ends: {start!r} > {end!r}")
    return f"{first},{last}"


def _one_line(text: object) -> str:
    """Text as a single line: line breaks become ", ", runs of spaces collapse."""
    parts = [_SPACES.sub(" ", part).strip() for part in _LINE_BREAKS.split(str(text))]
    return ", ".join(part for part in parts if part)


# the parts of a Pipedrive address (contract §9) its one line can leave out: a line without one is given it
LEFT_OUT_ADDRESS_PARTS = ("subpremise", "sublocality", "admin_area_level_2", "admin_area_level_1")


def format_address(address: dict | str | None) -> str | None:
    """The best one-line string for a Pipedrive address (§9 object, or a plain string).

    Prefers ``formatted_address``, then ``value``, with the parts such a line can leave out that
    it does not hold (subpremise, sublocality, county, state) after it in brackets:
    ``"Carl-Zeiss-Ring 140, 04109 Leipzig, Deutschland (Gebäude B, Sachsen)"``. Else the parts
    joined (street and number, subpremise, sublocality, postal code and locality, region,
    country). ``None`` when nothing is there.
    """
    if address is None:
        return None
    if isinstance(address, str):
        return _one_line(address) or None
    if not isinstance(address, dict):
        raise ValueError(f"not an address: {address!r}")

    def part(key: str) -> str:
        raw = address.get(key)
        if isinstance(raw, (dict, list)):
            raise ValueError(f"the address's {key} is not text: {raw!r}")
        return "" if raw is None else _one_line(raw)

    for key in ("formatted_address", "value"):
        if line := part(key):
            left_out: list[str] = []
            for piece in map(part, LEFT_OUT_ADDRESS_PARTS):
                if piece and piece.casefold() not in line.casefold() and piece not in left_out:
                    left_out.append(piece)
            return f"{line} ({', '.join(left_out)})" if left_out else line
    country = part("country")
    street, number = part("route"), part("street_number")
    if country.lower() in _NUMBER_FIRST_COUNTRIES:
        line1 = " ".join(p for p in (number, street) if p)
    else:
        line1 = " ".join(p for p in (street, number) if p)
    locality = " ".join(p for p in (part("postal_code"), part("locality") or part("admin_area_level_2")) if p)
    pieces: list[str] = []
    for piece in (line1, part("subpremise"), part("sublocality"), locality, part("admin_area_level_1"), country):
        if piece and piece not in pieces:
            pieces.append(piece)
    return ", ".join(pieces) or None


def _clock(value: str) -> str:
    hour, minute, second = _parse_time(value)
    return f"{hour:02d}:{minute:02d}" + (f":{second:02d}" if second else "")


def _timezone_name(value: object) -> str:
    if isinstance(value, dict):
        name = value.get("timezone_name")
        if isinstance(name, str):
            return name.strip()
    return ""


def format_time_value(value: dict | str | None) -> str | None:
    """A Pipedrive ``time`` field as text: v2 ``{value, timezone_name}`` → ``"09:00 Europe/London"``;
    v1 ``"09:00:00"`` → ``"09:00"`` (seconds kept only when not zero). ``None``/blank → ``None``.
    """
    if isinstance(value, dict):
        clock = value.get("value")
    else:
        clock = value
    if _blank(clock):
        return None
    if not isinstance(clock, str):
        raise ValueError(f"not a recognised time: {value!r}")
    text = _clock(clock)
    zone = _timezone_name(value)
    return f"{text} {zone}" if zone else text


def format_time_range(value: dict | str | None) -> str | None:
    """A Pipedrive ``timerange`` as text: ``"09:00–11:00 Europe/London"``.

    The object ``{value, until, timezone_name}`` (v1's flat ``_until`` sibling joined to it by the
    reader, `records._v1_value`), or a start alone. Only a start → ``"09:00"``; only an end →
    ``"–11:00"``; neither → ``None``. An end before the start is an overnight range (22:00–02:00),
    written as it is.
    """
    start, end = (value.get("value"), value.get("until")) if isinstance(value, dict) else (value, None)
    parts = []
    for clock in (start, end):
        if _blank(clock):
            parts.append("")
        elif isinstance(clock, str):
            parts.append(_clock(clock))
        else:
            raise ValueError(f"not a recognised time: {clock!r}")
    if not any(parts):
        return None
    text = parts[0] if not parts[1] else f"{parts[0]}–{parts[1]}"
    zone = _timezone_name(value)
    return f"{text} {zone}" if zone else text


def as_plain_text(value: Any) -> str:
    """A value that should be text (a name, a title, a note) as text. Pipedrive sends text; anything
    else is carried rather than lost or fatal: a number as written, a list or object as its JSON;
    nothing (None, false, empty) as ""."""
    if isinstance(value, str):
        return value
    if value is None or value is False or value == [] or value == {}:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def finite_number(value: Any) -> float | None:
    """A value that should be a number (a price, a quantity, an order number) as a finite float;
    ``None`` when it is none: missing, text such as ``"12,50"``, a boolean, NaN, or past what a
    double holds. Text is a number only as `decimal_string` reads it: float() also takes ``"1_000"``
    and other scripts' digits (``"٣٤"``)."""
    if isinstance(value, bool) or (isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()) is None):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past what a double holds
        return None
    return number if math.isfinite(number) else None


def as_list(value: Any) -> list[Any]:
    """A value that should be a list (emails, prices, participants): one item alone becomes a list of
    it, nothing an empty list."""
    if isinstance(value, list):
        return value
    return [] if value is None or value == "" else [value]


def split_name(name: str | None, first: str | None, last: str | None) -> tuple[str, str]:
    """(firstName, lastName) for a Customermates contact.

    Pipedrive's own ``first_name``/``last_name`` win when ``first_name`` is non-empty. Otherwise
    ``name`` is split on its last space (``"Anna Maria Schmidt"`` → ``("Anna Maria", "Schmidt")``,
    one word → ``(word, "")``); with no ``name`` either, a lone ``last_name`` becomes the first name.
    Whitespace is collapsed. ``("", "")`` when nothing is usable; the caller applies its rule.
    """

    def clean(text: str | None) -> str:
        return _SPACES.sub(" ", text).strip() if isinstance(text, str) else ""

    first_c, last_c, name_c = clean(first), clean(last), clean(name)
    if first_c:
        return first_c, last_c
    if name_c:
        head, _, tail = name_c.rpartition(" ")
        return (head, tail) if head else (tail, "")
    if last_c:
        return last_c, ""
    return "", ""


def truncate_plain(value: str, limit: int) -> tuple[str, bool]:
    """``value`` cut to at most ``limit`` characters, ending in "…" when cut; returns (text, was_cut).

    The cut prefers the last space in the final fifth of the allowed length, so a word is not split
    when that costs little. ``limit`` must be at least 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if len(value) <= limit:
        return value, False
    room = limit - 1
    head = value[:room]
    space = head.rfind(" ")
    if space >= room - room // 5 and space > 0:
        head = head[:space]
    return head.rstrip() + "…", True
