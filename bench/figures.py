"""One line per figure, so that `make bench` (bench/all.py) can gather every benchmark into one table.

FIGURE {"name": ..., "value": ..., "unit": ..., "baseline": ..., "target": ..., "met": true|false|null}
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "FIGURE "


def figure(
    name: str, value: float, unit: str, baseline: float | str | None, target: str | None, met: bool | None
) -> None:
    print(
        PREFIX
        + json.dumps({"name": name, "value": value, "unit": unit, "baseline": baseline, "target": target, "met": met}),
        flush=True,
    )


def parse(output: str) -> list[dict[str, Any]]:
    return [json.loads(line.removeprefix(PREFIX)) for line in output.splitlines() if line.startswith(PREFIX)]
