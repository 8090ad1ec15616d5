from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from migrate.cli import cli
from tests.crash_harness import fakes_env
from tests.fakes.customermates import FakeCustomermates
from tests.fakes.pipedrive import FakePipedrive

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
    return fakes_env(pipedrive, customermates, tmp_path / "state.duckdb")


@pytest.fixture(scope="session")
def sample_migration(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`migrate run` of the bundled sample, once per test process: its state file and the
    Customermates fake's content after it."""
    state = tmp_path_factory.mktemp("sample-migration") / "state.duckdb"
    with FakePipedrive(SAMPLE, burst_limit=1000) as pipedrive, FakeCustomermates() as customermates:
        result = CliRunner().invoke(cli, ["run"], env=fakes_env(pipedrive, customermates, state), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return state, customermates.content()


@pytest.fixture
def migrated(env: dict[str, str], customermates: FakeCustomermates, sample_migration: tuple[Path, dict]) -> dict[str, str]:
    """`env` once `migrate run` has migrated the sample: a copy of that run's state file, and its
    content in `customermates` (`pipedrive` serves the sample as it was read). The run is made once
    per test process (a run is about 3 s, and some 70 tests start from one)."""
    state, content = sample_migration
    shutil.copyfile(state, env["MIGRATE_STATE"])
    customermates.restore(content)
    return env
