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
    {"x": "\ud800 lone surrogate"},  # nor this
])
def test_dumps_writes_what_loads_reads_back_equal(value):
    text = jsontext.dumps(value)
    assert jsontext.loads(text) == value and json.loads(text) == value
