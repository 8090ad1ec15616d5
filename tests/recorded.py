"""Where the real Customermates server's recorded exchanges are, and the constants they use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.customermates import CONTRACT_DIR

CASSETTES = Path(os.environ.get("CUSTOMERMATES_CASSETTES", CONTRACT_DIR / "recorded"))
SERVER = "http://127.0.0.1:4000"  # the recorded server's address
ADMIN_KEY = "REDACTED"  # what the recording stored in place of the admin's real key
WRONG_KEY = "cmWrongKey0123456789abcdef0123456789abcdef0123456789abcdefXXXXXX"

needs_cassettes = pytest.mark.skipif(not CASSETTES.is_dir(), reason=f"recorded cassettes not found at {CASSETTES}")
