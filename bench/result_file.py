"""The one way a benchmark script reports: its result as one JSON line on stdout, and in
``--out FILE`` when given (bench/run.sh collects those files for bench/report.py)."""

from __future__ import annotations

import json
from typing import Any


def emit(result: dict[str, Any], out: str | None) -> None:
    """Print ``result`` as one JSON line; also write it to ``out`` if set."""
    text = json.dumps(result)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
