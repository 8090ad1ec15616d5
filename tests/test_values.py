"""Tests for migrate.transform.values: Pipedrive values → what Customermates accepts."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest

from migrate.transform.values import (
    CUSTOMERMATES_CURRENCIES,
    EMAIL_PATTERN,
    combine_date_time,
    date_range,
    decimal_string,
    finite_number,
    format_address,
    format_time_range,
    format_time_value,
    is_valid_email,
    normalise_phone,
    split_name,
    to_date,
    to_utc_datetime,
    truncate_plain,
)
from tests.fakes.customermates import is_iso_datetime

CONTRACTS = Path(__file__).resolve().parents[2] / "shared" / "contracts" / "customermates"

# --------------------------------------------------------------------------------------------
# currencies and emails


def test_currency_list_is_the_27_lowercase_codes():
    assert len(CUSTOMERMATES_CURRENCIES) == 27
    assert all(re.fullmatch(r"[a-z]{3}", code) for code in CUSTOMERMATES_CURRENCIES)
    assert {"eur", "usd", "gbp", "chf", "ils", "try"} <= CUSTOMERMATES_CURRENCIES
    assert "btc" not in CUSTOMERMATES_CURRENCIES and "EUR" not in CUSTOMERMATES_CURRENCIES


def test_currency_list_matches_contract_text():
    contract = CONTRACTS / "CONTRACT.md"
    if not contract.exists():
        pytest.skip("shared contracts not checked out beside the project")
    line = next(l for l in contract.read_text().splitlines() if l.startswith("| `currency` | `{currency}`"))
    listed = set(re.search(r"ISO codes `([a-z, ]+)`", line).group(1).replace(" ", "").split(","))
    assert listed == CUSTOMERMATES_CURRENCIES


def test_email_pattern_is_exactly_the_openapi_pattern():
    spec = CONTRACTS / "openapi.json"
    if not spec.exists():
        pytest.skip("shared contracts not checked out beside the project")
    patterns: set[str] = set()
    stack: list = [json.loads(spec.read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            pattern = node.get("pattern")
            if isinstance(pattern, str) and pattern.startswith("^(?!\\.)"):
                patterns.add(pattern)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    assert patterns == {EMAIL_PATTERN.pattern}


@pytest.mark.parametrize(
    "email",
    [
        "user@example.com",
        "first.last+tag@sub.example.co",
        "o'brien@example.ie",
        "a_b-c@x-y.example",
        "hannah.becker@brightwater.example",  # accepted by the real server (06_create_many_failures)
        "sofia.rossi@brightwater.example",
        "UPPER@EXAMPLE.COM",
    ],
)
def test_ascii_email_accepted(email):
    assert is_valid_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "Üser@exämple.de",  # rejected by the real server (06_create_many_failures)
        "user@exämple.de",
        "üser@example.de",
        "josé@example.com",
    ],
)
def test_non_ascii_email_rejected(email):
    assert not is_valid_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "omar.haddad(at)brightwater.example",  # rejected by the real server
        "not-an-email",  # rejected by the real server
        '"quoted"@example.com',
        ".lead@example.com",
        "a..b@example.com",
        "trail.@example.com",
        "user@example",
        "user@example.c",
        "user@-example.com",
        "user@example.com\n",
        " user@example.com",
        "a@b@example.com",
        "",
        None,
    ],
)
def test_malformed_email_rejected(email):
    assert not is_valid_email(email)


# --------------------------------------------------------------------------------------------
# phones

E164 = re.compile(r"\+[0-9]{7,15}")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+49 30 1234567", None, "+49301234567"),
        ("+49-30-1234567", None, "+49301234567"),
        ("+49 (0)30 1234567", None, "+49301234567"),
        ("030 1234567", "DE", "+49301234567"),
        ("030 1234567", "de", "+49301234567"),
        ("(650) 253-0000", "US", "+16502530000"),
        ("+44 20 7946 0958", "DE", "+442079460958"),  # an explicit country code wins over the region
        ("0049 30 1234567", None, "+49301234567"),  # 00 read as the international prefix
        ("0011 61 2 9876 5432", "AU", "+61298765432"),  # the region's own international prefix
        ("  +49 30 1234567  ", None, "+49301234567"),
        # the real server rejected this spelling (spaces); the digits form a possible, if not
        # valid, German number, so the rule "valid or at least possible" keeps it
        ("+49 123 456", None, "+49123456"),
    ],
)
def test_phone_normalised_to_e164(raw, region, expected):
    result = normalise_phone(raw, region)
    assert result == expected
    assert E164.fullmatch(result)


@pytest.mark.parametrize(
    "raw",
    [
        "+1 650-253-0000 x123",
        "+49 30 1234567 ext. 12",
        "+49 30 1234567;ext=3",
        "+49 30 1234567#12",
    ],
)
def test_phone_with_extension_is_not_normalised(raw):
    assert normalise_phone(raw, "DE") is None


@pytest.mark.parametrize("raw", ["+1 800 FLOWERS", "call me", "+49 30 12345 mobil", "+49 30 1234567 (Büro)"])
def test_phone_with_letters_is_not_normalised(raw):
    assert normalise_phone(raw, "DE") is None


def test_phone_without_country_code_needs_a_region():
    assert normalise_phone("030 1234567") is None
    assert normalise_phone("030 1234567", "DE") == "+49301234567"


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("", None),
        ("   ", "DE"),
        ("12", "DE"),
        ("+1 555 0100", None),  # possible only as a local number
        ("+49 30 1234567, +49 30 7654321", None),  # two numbers in one string
        (None, "DE"),
    ],
)
def test_phone_that_cannot_be_made_exact_is_none(raw, region):
    assert normalise_phone(raw, region) is None


# --------------------------------------------------------------------------------------------
# timestamps and dates


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00Z"),
        ("2020-10-14T11:30:36.551Z", "2020-10-14T11:30:36Z"),  # lead timestamps: to the second (a note's date)
        ("2024-01-01T10:00Z", "2024-01-01T10:00:00Z"),
        ("2024-03-01 10:20:00", "2024-03-01T10:20:00Z"),  # v1, UTC without a zone marker
        ("1970-01-01 00:00:00", "1970-01-01T00:00:00Z"),
        ("1970-01-01T01:00:00+01:00", "1970-01-01T00:00:00Z"),
        ("2099-12-31T23:59:59Z", "2099-12-31T23:59:59Z"),
        ("2024-02-29T12:00:00+0530", "2024-02-29T06:30:00Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59Z"),  # leap second clamped
        ("2024-01-01t00:00:00z", "2024-01-01T00:00:00Z"),
        ("2024-02-29 23:59:59.999999", "2024-02-29T23:59:59Z"),
    ],
)
def test_timestamp_converted_to_utc_z(value, expected):
    assert to_utc_datetime(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-10-14T11:30:36.551Z", "2020-10-14T11:30:36.551Z"),
        ("2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.000Z"),
        ("2024-10-27T02:30:00.25+02:00", "2024-10-27T00:30:00.25Z"),
        ("2024-02-29 23:59:59,999999", "2024-02-29T23:59:59.999999Z"),
        ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:59.5Z"),
        ("2024-03-01 10:20:00", "2024-03-01T10:20:00Z"),
    ],
)
def test_a_timestamp_carried_exactly_keeps_its_fractional_seconds_as_written(value, expected):
    assert to_utc_datetime(value, fraction=True) == expected
    assert is_iso_datetime(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Europe's spring-forward day: 03:30 CEST (+02:00) is 01:30 UTC
        ("2024-03-31T03:30:00+02:00", "2024-03-31T01:30:00Z"),
        # the night the clocks go back: 02:30 appears twice; the offset decides which one
        ("2024-10-27T02:30:00+02:00", "2024-10-27T00:30:00Z"),
        ("2024-10-27T02:30:00+01:00", "2024-10-27T01:30:00Z"),
        # offsets that cross the day and the year
        ("2024-06-01T00:30:00+02:00", "2024-05-31T22:30:00Z"),
        ("2024-12-31T23:30:00-05:00", "2025-01-01T04:30:00Z"),
        ("2024-03-10T01:59:59-05:00", "2024-03-10T06:59:59Z"),
    ],
)
def test_offset_timestamp_around_dst_converts_to_z(value, expected):
    assert to_utc_datetime(value) == expected


def test_v1_timestamp_is_utc(monkeypatch):
    """A v1 timestamp has no zone and is UTC: the machine's time zone must not shift it."""
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset")
    results = []
    for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        results.append(to_utc_datetime("2024-07-01 23:30:00"))
    monkeypatch.delenv("TZ")
    time.tzset()
    assert results == ["2024-07-01T23:30:00Z"] * 3


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_timestamp_is_none(value):
    assert to_utc_datetime(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2023-02-30 10:00:00",
        "0000-01-01 00:00:00",
        "2024-13-01T00:00:00Z",
        "2024-01-01T25:00:00Z",
        "2024-01-01T10:61:00Z",
        "2024-01-01",  # a date is not a timestamp
        "01/02/2024 10:00",
        "2024-01-01T10:00:00+25:00",
        "0001-01-01T00:30:00+01:00",  # before year 1 in UTC
        "２０２４-01-01T00:00:00Z",
    ],
)
def test_garbage_timestamp_raises_naming_the_value(value):
    with pytest.raises(ValueError) as error:
        to_utc_datetime(value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01", "2024-01-01"),
        ("1970-01-01", "1970-01-01"),
        ("2099-12-31", "2099-12-31"),
        ("2024-02-29", "2024-02-29"),
        (" 2024-05-06 ", "2024-05-06"),
        ("2024-03-01 10:20:00", "2024-03-01"),
        ("2024-06-01T23:30:00-02:00", "2024-06-01"),  # the date as written, not shifted to UTC
        ("2020-10-14T11:30:36.551Z", "2020-10-14"),
        (None, None),
        ("", None),
    ],
)
def test_date_is_validated_iso_date(value, expected):
    assert to_date(value) == expected


@pytest.mark.parametrize("value", ["2023-02-29", "2023-02-30", "2024-04-31", "2024-00-10", "01/02/2024", "2024-1-5", "20240105"])
def test_invalid_date_raises(value):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        to_date(value)


# --------------------------------------------------------------------------------------------
# numbers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e3, "1000"),
        (12.50, "12.5"),
        (0.1 + 0.2, "0.3"),
        (1000, "1000"),
        (0, "0"),
        (-0.0, "0"),
        (-12.5, "-12.5"),
        (1234.5678, "1234.5678"),
        (38901.25, "38901.25"),
        (1e-7, "0.0000001"),
        (3 * 1.1, "3.3"),
        (267.49999999999994, "267.5"),
        (0.1 + 0.7, "0.7999999999999999"),  # 16 digits: a number Pipedrive can hold, kept
        (1 / 3, "0.3333333333333333"),
        (1.234e-11, "0.00000000001234"),
        (0.1234567890123456, "0.1234567890123456"),  # a double field's 16 digits (contract §8.3)
        (123456789012345.6, "123456789012345.6"),
        (-2.5e-300, "-0." + "0" * 299 + "25"),
        (123456789012.34, "123456789012.34"),
        (1e22, "10000000000000000000000"),
        (2**70, "1180591620717411303424"),
        ("12.50", "12.5"),
        ("1e3", "1000"),
        ("-1.5E-3", "-0.0015"),
        (" 42 ", "42"),
        ("0.000", "0"),
        ("+7", "7"),
        (".5", "0.5"),
        ("123456789012345678901234567890.123456789", "123456789012345678901234567890.123456789"),
        (Decimal("1.10"), "1.1"),
        (None, None),
        ("", None),
    ],
)
def test_decimal_string_is_plain(value, expected):
    result = decimal_string(value)
    assert result == expected
    if result is not None:
        assert "e" not in result.lower()
        assert not (("." in result) and result.endswith("0"))


@pytest.mark.parametrize(
    "value",
    [True, False, float("nan"), float("inf"), float("-inf"), "1,234.56", "$1234", "abc", "NaN", "Infinity", "1_000", "1e5000", [1]],
)
def test_decimal_string_rejects_non_numbers_and_bools(value):
    with pytest.raises(ValueError):
        decimal_string(value)


# --------------------------------------------------------------------------------------------
# activity due date/time and ranges


@pytest.mark.parametrize(
    ("due_date", "due_time", "expected"),
    [
        ("2024-03-01", "15:00", "2024-03-01T15:00:00Z"),
        ("2024-03-01", "15:00:00", "2024-03-01T15:00:00Z"),
        ("2024-03-01", "9:05", "2024-03-01T09:05:00Z"),
        ("2024-03-01", "00:00", "2024-03-01T00:00:00Z"),
        ("2099-12-31", "23:59", "2099-12-31T23:59:00Z"),
        ("2024-03-01", None, "2024-03-01"),
        ("2024-03-01", "", "2024-03-01"),
        (None, "10:00", None),
        ("", None, None),
    ],
)
def test_due_date_and_time_combined(due_date, due_time, expected):
    assert combine_date_time(due_date, due_time) == expected


@pytest.mark.parametrize(("due_date", "due_time"), [("2024-03-01", "25:00"), ("2024-03-01", "10:60"), ("2023-02-30", "10:00"), ("2024-03-01", "noon")])
def test_invalid_due_date_or_time_raises(due_date, due_time):
    with pytest.raises(ValueError):
        combine_date_time(due_date, due_time)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2024-01-01", "2024-02-01", "2024-01-01,2024-02-01"),
        ("2024-01-01", "2024-01-01", "2024-01-01,2024-01-01"),
        ("1970-01-01", "2099-12-31", "1970-01-01,2099-12-31"),
        ("2024-01-01", None, "2024-01-01,2024-01-01"),
        (None, "2024-01-01", "2024-01-01,2024-01-01"),
        (None, None, None),
    ],
)
def test_date_range_value(start, end, expected):
    assert date_range(start, end) == expected


def test_date_range_start_after_end_raises_without_swapping():
    with pytest.raises(ValueError):
        date_range("2024-02-01", "2024-01-01")


# --------------------------------------------------------------------------------------------
# addresses and time fields


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ({"value": "530 Fifth Ave", "formatted_address": "530 5th Ave, New York, NY 10036, USA"}, "530 5th Ave, New York, NY 10036, USA"),
        ({"value": "Hauptstraße 5, Berlin", "formatted_address": None}, "Hauptstraße 5, Berlin"),
        (  # parts the line leaves out (contract §9): they were dropped
            {"formatted_address": "Carl-Zeiss-Ring 140, 04109 Leipzig, Deutschland", "subpremise": "Gebäude B",
             "admin_area_level_1": "Sachsen", "locality": "Leipzig", "country": "Deutschland"},
            "Carl-Zeiss-Ring 140, 04109 Leipzig, Deutschland (Gebäude B, Sachsen)",
        ),
        ({"value": "Marienplatz 1, München", "sublocality": "Altstadt", "admin_area_level_2": "München"}, "Marienplatz 1, München (Altstadt)"),
        ({"value": "Line 1\nLine 2\n\n  10115 Berlin "}, "Line 1, Line 2, 10115 Berlin"),
        (
            {"value": None, "route": "Hauptstraße", "street_number": "5", "postal_code": "10115", "locality": "Berlin", "country": "Germany"},
            "Hauptstraße 5, 10115 Berlin, Germany",
        ),
        (
            {"route": "Fifth Ave", "street_number": "530", "locality": "New York", "admin_area_level_1": "NY", "postal_code": 10036, "country": "United States"},
            "530 Fifth Ave, 10036 New York, NY, United States",
        ),
        ({"subpremise": "Apt 4", "sublocality": "Mitte", "locality": "Berlin"}, "Apt 4, Mitte, Berlin"),
        ({"value": "", "formatted_address": "   "}, None),
        ({}, None),
        ("Somewhere 1, 12345 Town", "Somewhere 1, 12345 Town"),
        ("  ", None),
        (None, None),
    ],
)
def test_address_becomes_one_line(address, expected):
    assert format_address(address) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"value": "09:00:00", "timezone_id": 318, "timezone_name": "Europe/London"}, "09:00 Europe/London"),
        ({"value": "09:00:00", "timezone_id": None, "timezone_name": None}, "09:00"),
        ({"value": None, "timezone_name": "Europe/London"}, None),
        ("09:00:00", "09:00"),
        ("09:00", "09:00"),
        ("09:00:30", "09:00:30"),
        (None, None),
        ("", None),
    ],
)
def test_time_field_as_text(value, expected):
    assert format_time_value(value) == expected


def test_invalid_time_field_raises():
    with pytest.raises(ValueError):
        format_time_value("25:00:00")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"value": "09:00:00", "until": "11:00:00", "timezone_id": 318, "timezone_name": "Europe/London"}, "09:00–11:00 Europe/London"),
        ({"value": "09:00:00", "until": "11:30:00"}, "09:00–11:30"),  # v1: the `_until` sibling, joined by the reader
        ("09:00:00", "09:00"),
        ({"value": "09:00:00", "until": None, "timezone_name": "Europe/Berlin"}, "09:00 Europe/Berlin"),
        ({"value": None, "until": "11:00:00"}, "–11:00"),
        ({"value": None, "until": None}, None),
        (None, None),
    ],
)
def test_time_range_as_text(value, expected):
    assert format_time_range(value) == expected


# --------------------------------------------------------------------------------------------
# names and plain truncation


@pytest.mark.parametrize(
    ("name", "first", "last", "expected"),
    [
        ("Anna Schmidt", "Anna", "Schmidt", ("Anna", "Schmidt")),
        ("Anna Maria Schmidt", None, None, ("Anna Maria", "Schmidt")),
        ("Anna Maria Schmidt", "", "", ("Anna Maria", "Schmidt")),
        ("Jean-Luc   Picard ", None, None, ("Jean-Luc", "Picard")),
        ("Madonna", "Madonna", "", ("Madonna", "")),
        ("Madonna", None, None, ("Madonna", "")),
        ("Anna", "Anna", None, ("Anna", "")),
        (None, None, "Schmidt", ("Schmidt", "")),
        ("Schmidt", "", "Schmidt", ("Schmidt", "")),
        ("محمد علي", None, None, ("محمد", "علي")),
        ("李 小龙", None, None, ("李", "小龙")),
        ("  ", None, None, ("", "")),
        (None, None, None, ("", "")),
        ("", " ", " ", ("", "")),
    ],
)
def test_name_split_for_contact(name, first, last, expected):
    assert split_name(name, first, last) == expected


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("short", 10, ("short", False)),
        ("exactly10!", 10, ("exactly10!", False)),
        ("hello world foo", 12, ("hello world…", True)),
        ("abcdefghijklmnop", 5, ("abcd…", True)),
        ("🚀🚀🚀🚀", 3, ("🚀🚀…", True)),
        ("ab", 1, ("…", True)),
    ],
)
def test_truncate_plain(value, limit, expected):
    result = truncate_plain(value, limit)
    assert result == expected
    assert len(result[0]) <= limit


def test_truncate_plain_needs_a_positive_limit():
    with pytest.raises(ValueError):
        truncate_plain("x", 0)



@pytest.mark.parametrize(
    ("value", "number"),
    [(12, 12.0), ("12.50", 12.5), (-0.5, -0.5), ("12,50", None), (True, None), ("NaN", None), ("1e999", None), (10**400, None), (None, None), ([1], None),
     ("1_000", None), ("-1_000", None), ("\u0660", None), ("\u0661\u0662", None), ("infinity", None)],
)
def test_finite_number_reads_numbers_and_numeric_text_and_nothing_else(value, number):
    """Numeric text as `decimal_string` reads it: Python's float() also takes underscores and other
    scripts' digits, which a value written as text then cannot be (`decimal_string` refuses them)."""
    assert finite_number(value) == number
