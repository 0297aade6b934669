"""Cold import time of each handler, in fresh processes, against the floor of a bare ``import boto3``.

    python bench/cold_import.py

A handler's import is what Lambda runs in its init phase: Powertools, the core package and the
handler module. Clients and the catalogue are built on the first invocation, not at import.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "handler.py").is_file())
TIMED = ("import sys, time; sys.path[:0] = {paths!r}; started = time.perf_counter(); {statement}; "
         "print((time.perf_counter() - started) * 1000)")


def import_ms(statement: str, paths: list[str], runs: int) -> float:
    environment = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "bench"}
    times = []
    for _ in range(runs):
        output = subprocess.run([sys.executable, "-c", TIMED.format(paths=paths, statement=statement)],
                                capture_output=True, text=True, check=True, env=environment, cwd="/")
        times.append(float(output.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def measure(runs: int = 5) -> dict[str, float]:
    figures = {"boto3_floor": import_ms("import boto3", [], runs)}
    core = str(ROOT / "layers" / "cdp" / "python")
    for folder in FUNCTIONS:
        figures[folder] = import_ms("import handler", [str(ROOT / "functions" / folder), core], runs)
    return figures


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
