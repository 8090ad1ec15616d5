"""Writes that may be sent again as they are: a sync's deletion marks (and their removal), its deletes and undo's.

At most 50 records a request, one request at a time, as the contract advises (§ Observed: a lone batch of
100 contacts took 6.7 s once, and the server's 5 s transaction limit failed it with a 500 that wrote
nothing). A request whose outcome is unknown is sent again in halves, and the batches after it are no
bigger (the loader adapts its batches likewise, `Loader._uncertain`). A refused batch wrote nothing (§3.6:
all-or-nothing), and its 400 names the records at fault: those the server says it does not have (deleted
there, by a user, or by a request of ours whose answer was lost) are set apart from the others it refuses,
and the rest is sent again.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from typing import TypeVar

import structlog

from migrate.customermates.client import BatchRejectedError, Issue, UncertainWriteError

log = structlog.get_logger(__name__)

T = TypeVar("T")
BATCH = 50
TRIES = 3  # a record alone whose write's outcome stays unknown this often: the server is failing, not the batch size
# where the server names an id it does not have: `ids[3]` of a delete, `contacts[3].id` of an update
# (a custom column it does not have is named at the column's own path, `contacts[3].customFieldValues[0].columnId`)
_ID_PATH = re.compile(r"ids\[\d+\]|[a-z]+\[\d+\]\.id")


def write_idempotent(
    items: Iterable[T],
    send: Callable[[list[T]], object],
    *,
    written: Callable[[list[T]], None],
    gone: Callable[[list[T], bool], None],
    refused: Callable[[list[tuple[T, str]]], None] | None = None,
) -> None:
    """`send` `items` a batch at a time, each settled before the next: `written` once the server took
    it. A batch whose outcome is unknown is sent again in halves (a record alone, as it is, `TRIES` times
    in all). Of a refused batch, the records the server does not have go to `gone` (with whether the batch
    was sent again after an unknown outcome: that request may have been the one that removed them),
    those it refuses for another reason to `refused` with its words, and the rest is sent again. A
    refusal naming no record of the batch, or one `refused` is not given for, is raised."""
    size = BATCH
    records = iter(items)
    while first := list(itertools.islice(records, size)):
        todo = [(first, False, 0)]  # (batch, sent again after an unknown outcome, unknown outcomes of this very batch)
        while todo:
            batch, resent, tries = todo.pop()
            try:
                send(batch)
            except UncertainWriteError as exc:
                if len(batch) == 1 and tries + 1 == TRIES:
                    raise
                log.warning("write.uncertain", items=len(batch), error=str(exc))
                if len(batch) == 1:
                    todo.append((batch, True, tries + 1))
                else:
                    half = len(batch) // 2
                    size = min(size, half)
                    todo += [(batch[half:], True, 0), (batch[:half], True, 0)]  # the first half first
                continue
            except BatchRejectedError as exc:
                rest = _set_apart(exc, batch, resent, gone, refused)
                if rest:
                    todo.append((rest, resent, tries))
                continue
            written(batch)


def _set_apart(
    error: BatchRejectedError,
    batch: list[T],
    resent: bool,
    gone: Callable[[list[T], bool], None],
    refused: Callable[[list[tuple[T, str]]], None] | None,
) -> list[T]:
    """Settle the records a refusal names (`write_idempotent`); returns the rest of the batch, to send again."""
    named = _named(error.issues, len(batch))
    missing = {n for n, issues in named.items() if any(_missing_record(i) for i in issues)}
    others = [(batch[n], "; ".join(i.message for i in issues)) for n, issues in sorted(named.items()) if n not in missing]
    if not named or (others and refused is None):
        raise error
    log.warning("write.set_apart", items=len(batch), missing=len(missing), refused=len(others))
    if missing:
        gone([batch[n] for n in sorted(missing)], resent)
    if others and refused is not None:
        refused(others)
    return [item for n, item in enumerate(batch) if n not in named]


def _named(issues: list[Issue], size: int) -> dict[int, list[Issue]]:
    """The issues of a refused batch by the index of the record they name (those of the batch)."""
    named: dict[int, list[Issue]] = {}
    for issue in issues:
        index = issue.item_index()
        if index is not None and index < size:
            named.setdefault(index, []).append(issue)
    return named


def _missing_record(issue: Issue) -> bool:
    """The server's "<Entity> ID not found or not accessible." at a record's id."""
    return issue.is_id_not_found() and _ID_PATH.fullmatch(issue.path) is not None
