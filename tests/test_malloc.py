import platform

import pytest

from migrate import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_limit_arenas_sets_glibcs_arena_cap():
    assert malloc.limit_arenas() is True


def test_limit_arenas_does_nothing_on_another_c_library(monkeypatch):
    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("", ""))
    assert malloc.limit_arenas() is False
