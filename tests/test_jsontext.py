"""`jsontext.loads` reads every JSON text as `json.loads` does, bytes or str, fast path or not."""

from __future__ import annotations

import json

import pytest

from migrate import jsontext

TEXTS = [
    '{"id": 1, "name": "Zoë 日本 🙂", "n": [0.1, 5e-324, 1e16, -0.0, true, null]}',
    '{"big": 123456789012345678901234567890, "u64": 18446744073709551615}',  # past 64 bits: json reads them
    '{"digits in text": "0123456789012345678901234", "n": 1}',  # 19 digits in a row, in a string: json too
    '{"x": "\\ud800 lone surrogate"}',  # orjson refuses it
    '{"x": NaN, "y": Infinity, "z": 1e400}',  # orjson refuses these
    '{"escaped": "\\u00e9\\n\\"", "a": {"b": {"c": []}}}',
]


@pytest.mark.parametrize("text", TEXTS)
def test_loads_gives_what_json_gives_for_bytes_and_str(text):
    expected = json.loads(text)
    for given in (text, text.encode()):
        value = jsontext.loads(given)
        assert repr(value) == repr(expected)  # repr: NaN equals nothing, and 1 == 1.0 would hide a float
        assert [type(v) for v in value.values()] == [type(v) for v in expected.values()]


def test_a_text_json_cannot_read_raises_as_json_raises():
    with pytest.raises(json.JSONDecodeError):
        jsontext.loads('{"id": 1,')
    with pytest.raises(json.JSONDecodeError):
        jsontext.loads(b"<html>")


@pytest.mark.parametrize("value", [
    {"id": 1, "name": "Zoë 日本 🙂", "n": [0.1, 5e-324, 1e16, True, None]},
    {"big": 123456789012345678901234567890},  # orjson cannot write it: json does
])
def test_dumps_writes_what_loads_reads_back_equal(value):
    text = jsontext.dumps(value)
    assert jsontext.loads(text) == value and json.loads(text) == value


def test_dumps_writes_nan_and_infinities_null_beside_an_integer_only_json_writes():
    """The text is staged as it is, and DuckDB's JSON functions refuse NaN: it must be JSON."""
    value = {"big": 123456789012345678901234567890, "n": [float("nan"), 1.5], "x": {"y": float("-inf")}}
    text = jsontext.dumps(value)
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} written")) == {
        "big": 123456789012345678901234567890, "n": [None, 1.5], "x": {"y": None}}
    assert jsontext.dumps({"n": float("nan")}) == '{"n":null}'  # as orjson writes it alone


def test_dumps_refuses_a_lone_surrogate_and_says_where_it_is():
    value = json.loads('{"id": 7, "name": "Zo\\ud83d", "emails": [{"value": "a@b.c"}, {"label": "\\udc00x"}]}')
    with pytest.raises(jsontext.LoneSurrogateError, match=r"name, emails\.1\.label"):
        jsontext.dumps(value)
    replaced = jsontext.replace_lone_surrogates(value)
    assert replaced == {"id": 7, "name": "Zo\ufffd", "emails": [{"value": "a@b.c"}, {"label": "\ufffdx"}]}
    assert jsontext.loads(jsontext.dumps(replaced)) == replaced
    assert jsontext.dumps(json.loads('{"pair": "\\ud83d\\ude00"}')) == '{"pair":"\U0001f600"}'  # a whole pair is one character
