"""Errors the tool raises on purpose, each with the exit code the CLI turns it into.

Exit codes: 0 ok, 1 failed, 2 usage/config, 3 partial (quarantined records),
4 Pipedrive daily budget exhausted, 5 another run holds the lock.
"""

from __future__ import annotations


class MigrateError(Exception):
    """A failure with a message meant for the person running the tool."""

    exit_code = 1


class ConfigError(MigrateError):
    exit_code = 2


class LockHeldError(MigrateError):
    exit_code = 5


class BudgetExhaustedError(MigrateError):
    """Pipedrive's daily token budget ran out; work done so far is checkpointed."""

    exit_code = 4


class PipedriveError(MigrateError):
    """Pipedrive answered something we cannot go on with."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class CustomermatesError(MigrateError):
    """Customermates answered something we cannot go on with."""
