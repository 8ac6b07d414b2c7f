"""What every backup and verification leaves for Prometheus (the rules reading it: infra/render/backup_alerts.py).

Metrics go to a node_exporter textfile (``<state>/metrics/prefect_backup.prom``), rewritten atomically after
each run, scheduled or manual, so an alert fires when the last good backup is too old, whoever took it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

FILE_NAME = "prefect_backup.prom"

_HELP = {
    "prefect_backup_last_success_timestamp_seconds": "Unix time the last successful backup finished.",
    "prefect_backup_last_attempt_timestamp_seconds": "Unix time the last backup attempt ended.",
    "prefect_backup_last_attempt_success": "1 if the last backup attempt succeeded, else 0.",
    "prefect_backup_last_duration_seconds": "Duration of the last successful backup.",
    "prefect_backup_last_size_bytes": "Stored size of the last successful backup.",
    "prefect_backup_last_verification_success": "1 if the last verification passed, else 0.",
    "prefect_backup_last_verification_timestamp_seconds": "Unix time of the last verification.",
    "prefect_backup_last_verified_backup_timestamp_seconds": "Unix time the newest verified backup was taken.",
}
_LINE = re.compile(r"^(\w+)\{method=\"(\w+)\"\} (\S+)$")


def read_metrics(directory: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    try:
        text = (directory / FILE_NAME).read_text()
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            values[match.group(1)] = float(match.group(3))
    return values


def record(directory: Path, updates: dict[str, float], method: str = "logical") -> None:
    """Merge ``updates`` into the metrics file and rewrite it atomically (readers never see half a file)."""
    unknown = set(updates) - {name.removeprefix("prefect_backup_") for name in _HELP}
    if unknown:
        raise ValueError(f"unknown backup metrics: {sorted(unknown)}")
    directory.mkdir(parents=True, exist_ok=True)
    values = read_metrics(directory)
    values.update({f"prefect_backup_{k}": v for k, v in updates.items()})
    lines = []
    for name, help_text in _HELP.items():
        if name in values:
            sample = f'{name}{{method="{method}"}} {values[name]:.17g}'
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", sample]
    tmp = directory / f".{FILE_NAME}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / FILE_NAME)


def now() -> float:
    return time.time()
