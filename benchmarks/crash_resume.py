"""Kill `migrate run` with SIGKILL at many random instants and print the tally.

    .venv/bin/python benchmarks/crash_resume.py --kills 200

Each scenario migrates the bundled sample into a fresh fake Customermates, killing the run
--per-scenario times at random instants (half of them while a write is applied but not yet
answered), then lets it finish and compares the target with an uninterrupted migration,
field by field. Duplicates and missing records must both be 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.crash_harness import CrashTally, crash_scenario, reference_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="kill attempts in all")
    parser.add_argument("--per-scenario", type=int, default=4)
    parser.add_argument("--source", type=Path, default=ROOT / "samples" / "pipedrive")
    args = parser.parse_args()
    tally = CrashTally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        reference, seconds = reference_run(args.source, Path(tmp))
        print(f"clean run: {seconds:.1f} s")
        scenarios = max(1, args.kills // args.per_scenario)
        for seed in range(scenarios):
            crash_scenario(args.source, Path(tmp), kills=args.per_scenario, seed=seed, reference=reference, clean_seconds=seconds, tally=tally)
            print(f"scenario {seed + 1}/{scenarios}: kills {tally.kills}, duplicates {tally.duplicates}, missing {tally.missing}", flush=True)
    print()
    print(f"{'kill attempts':<28}{tally.kills + tally.finished_before_kill}")
    print(f"{'runs killed':<28}{tally.kills}")
    print(f"{'runs finished before kill':<28}{tally.finished_before_kill}")
    print(f"{'runs in all':<28}{tally.runs}")
    print(f"{'duplicates':<28}{tally.duplicates}")
    print(f"{'missing':<28}{tally.missing}")
    print(f"{'extra':<28}{tally.extra}")
    print(f"{'records differing':<28}{tally.different}")
    print(f"{'wall time':<28}{time.monotonic() - started:.0f} s")
    for example in tally.examples[:20]:
        print("  ", example)
    sys.exit(1 if tally.duplicates or tally.missing or tally.different or tally.extra else 0)


if __name__ == "__main__":
    main()
