from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.customermates import VALID_KEY, FakeCustomermates
from tests.fakes.pipedrive import VALID_TOKEN, FakePipedrive

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "pipedrive"


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """A private copy of the bundled sample, safe to edit."""
    target = tmp_path / "snapshot"
    shutil.copytree(SAMPLE, target)
    return target


@pytest.fixture
def pipedrive(sample_dir: Path) -> Iterator[FakePipedrive]:
    with FakePipedrive(sample_dir, burst_limit=1000) as fake:
        yield fake


@pytest.fixture
def customermates() -> Iterator[FakeCustomermates]:
    with FakeCustomermates() as fake:
        yield fake


@pytest.fixture
def env(tmp_path: Path, pipedrive: FakePipedrive, customermates: FakeCustomermates) -> dict[str, str]:
    """Environment for `migrate` pointing at both fakes and a fresh state file."""
    return {
        "PIPEDRIVE_API_TOKEN": VALID_TOKEN,
        "PIPEDRIVE_BASE_URL": pipedrive.url,
        "CUSTOMERMATES_URL": customermates.url,
        "CUSTOMERMATES_API_KEY": VALID_KEY,
        "MIGRATE_STATE": str(tmp_path / "state.duckdb"),
    }
