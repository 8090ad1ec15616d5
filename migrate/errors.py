"""Errors the tool raises on purpose, each with the exit code the CLI turns it into.

Exit codes: 0 ok, 1 failed, 2 usage/config, 3 partial (quarantined records),
4 Pipedrive daily budget exhausted, 5 another run holds the lock,
130/143 interrupted by Ctrl-C / SIGTERM (checkpointed; run again to resume).
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


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C stopped the run. A BaseException (like KeyboardInterrupt) so that no
    `except MigrateError` on the way out swallows it; every transaction it crosses rolls back,
    and what was committed before stays in the state file for the next run to resume from."""

    def __init__(self, signal_name: str, signum: int):
        super().__init__(
            f"interrupted by {signal_name}; everything written so far is recorded in the state file: "
            "run the same command again to resume"
        )
        self.exit_code = 128 + signum
