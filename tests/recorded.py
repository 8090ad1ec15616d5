"""Where the real Customermates server's recorded exchanges are, and the constants they use."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fakes.customermates import CONTRACT_DIR

CASSETTES = Path(os.environ.get("CUSTOMERMATES_CASSETTES", CONTRACT_DIR / "recorded"))
SERVER = "http://127.0.0.1:4000"  # the recorded server's address
ADMIN_KEY = "REDACTED"  # what the recording stored in place of the admin's real key
WRONG_KEY = "cmWrongKey0123456789abcdef0123456789abcdef0123456789abcdefXXXXXX"

needs_cassettes = pytest.mark.skipif(not CASSETTES.is_dir(), reason=f"recorded cassettes not found at {CASSETTES}")


def _parsed_body(request) -> object:
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body


def json_body(r1, r2) -> None:
    """vcrpy matcher: request bodies are equal as parsed JSON (key order and whitespace do not matter)."""
    b1, b2 = _parsed_body(r1), _parsed_body(r2)
    assert b1 == b2, f"{b1!r} != {b2!r}"


def _key(request) -> str | None:
    value = request.headers.get("x-api-key")
    if isinstance(value, list):
        value = value[0] if value else None
    return value or None  # an empty header counts as none, as on the server


def api_key(r1, r2) -> None:
    """vcrpy matcher: the same x-api-key (the admin's, a wrong one, or none)."""
    assert _key(r1) == _key(r2), "x-api-key differs"
