"""`make bench`: every benchmark in bench/, then one table of their figures beside targets and baselines.

Each benchmark runs as its own process (as a user would run it) and prints its own table first; the
summary gathers their FIGURE lines. Machines are noisy: compare a figure with its baseline, measured
in the same run, rather than with another run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.figures import parse  # noqa: E402

BENCHMARKS = [
    # The 10M-event store the storage and query benchmarks read: built on the first run (~25 min on an
    # idle 2-core machine, twice that on a busy one), then cached under var/bench/ until the schema
    # changes.
    ("bigstore", ["bench/bigstore.py"]),
    ("ingest", ["bench/ingest.py"]),
    ("notify", ["bench/notify.py", "--count", "30"]),
    ("poll", ["bench/poll.py"]),
    ("store", ["bench/store.py"]),
    ("metrics", ["bench/metrics.py", "--scrapes", "5"]),
    ("query", ["bench/query.py"]),
    ("board", ["bench/board.py"]),
]


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def main() -> int:
    figures = []
    for name, command in BENCHMARKS:
        print(f"== {name}: {' '.join(command)}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
        output = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("FIGURE "))
        print(output)
        if result.returncode != 0:
            print(result.stderr[-3000:])
            print(f"{name} FAILED (exit {result.returncode})")
        figures += [(name, f) for f in parse(result.stdout)]
        print(f"({time.monotonic() - started:.0f} s)\n", flush=True)
    print("== summary")
    print(f"{'bench':<7} {'figure':<46} {'value':>10} {'unit':<8} {'baseline':>10}  {'target':<16} verdict")
    for bench, f in figures:
        verdict = {True: "met", False: "MISSED", None: ""}[f["met"]]
        print(
            f"{bench:<7} {f['name']:<46} {fmt(f['value']):>10} {f['unit']:<8} {fmt(f['baseline']):>10}  "
            f"{f['target'] or '':<16} {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
