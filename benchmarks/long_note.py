"""How long one very long note takes: HTML to markdown, then composed into a record's notes.

    .venv/bin/python benchmarks/long_note.py [--megabytes 1 2 3]

A note pasted from an email thread can run to megabytes of HTML. The transform converts it whole
(the markdown is kept in the state file by the text's digest, so a rerun does not convert it again)
and cuts the record's notes at Customermates' 65,535 characters. For each size this prints the
seconds of the conversion and of the composition, and the seconds per megabyte, which stay about the
same from size to size when the time grows in proportion to the note.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from migrate.transform.notes import (
    NoteEntry,
    compose_notes,
    html_to_markdown,
    notes_length,
)

CHUNK = (
    '<div>Call with <b>client</b> about <a href="https://example.com/offer">the offer</a> &amp; pricing | terms</div>'
    "<div>Second line 🚀 with <i>italic</i><br>after a break</div>"
    "<table><tr><th>Item</th><th>Qty</th></tr><tr><td>CRM</td><td>3</td></tr></table>"
    "<ul><li>point a</li><li>point b</li></ul><p><img src='https://img.example/x.png' alt='pic'></p>"
)


def long_note(megabytes: float) -> str:
    """HTML of at least `megabytes` million characters, the same mix of markup throughout."""
    size = int(megabytes * 1_000_000)
    return CHUNK * (size // len(CHUNK) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megabytes", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    args = parser.parse_args()
    print(f"{'HTML chars':>12} {'markdown chars':>15} {'convert s':>10} {'compose s':>10} {'s per MB':>9} {'notes chars':>12}")
    for megabytes in args.megabytes:
        html = long_note(megabytes)
        started = time.perf_counter()
        markdown = html_to_markdown(html)
        converted = time.perf_counter()
        notes, truncated = compose_notes([NoteEntry("Anna Schmidt", "2024-03-01T10:20:00Z", html, markdown=markdown)])
        composed = time.perf_counter()
        assert truncated
        total = composed - started
        print(
            f"{len(html):>12,} {len(markdown):>15,} {converted - started:>10.2f} {composed - converted:>10.2f} "
            f"{total / (len(html) / 1_000_000):>9.2f} {notes_length(notes):>12,}"
        )


if __name__ == "__main__":
    main()
