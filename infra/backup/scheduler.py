"""The nightly job: backup, then verify it, once a day at backups.schedule (UTC).

Runs as ``python -m infra.backup.scheduler`` with PREFECT_STACK_CONFIG pointing at the deployment's effective
configuration: under supervisord on the local target, as the ``backup-scheduler`` service on compose. One loop,
one run at a time: runs never overlap (and the backup lock refuses a manual backup that would). A failure is
logged and recorded in the metrics; the loop goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

from infra.backup.jobs import backup_job, verify_job
from infra.config import CONFIG_FILE_ENV, ENV_PREFIX, StackConfig, load_config
from infra.errors import UserError
from infra.layout import StateLayout
from infra.progress import PlainProgress
from infra.targets import target_for

log = logging.getLogger("prefect-stack.backup-scheduler")


def next_run(schedule: str, now: datetime) -> datetime:
    hour, minute = (int(part) for part in schedule.split(":"))
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


def run_once(config: StackConfig) -> bool:
    directory = StateLayout(config.state_dir).secrets
    # As the target lays them out (in the Kubernetes CronJob: a mounted Secret volume, read-only, group-readable).
    secrets = target_for(config).load_secrets(directory)
    try:
        manifest = backup_job(config, secrets, PlainProgress(log.info))
        log.info("backup %s complete (%d bytes)", manifest.id, manifest.size)
        _, verdict = verify_job(config, secrets, manifest.id, PlainProgress(log.info))
    except UserError as exc:
        log.error("backup run failed: %s", exc)
        return False
    if not verdict.ok:
        log.error("backup %s FAILED verification: %s", manifest.id, verdict.detail)
    return verdict.ok


class _Stop:
    """SIGTERM (supervisord stopping us): exit at once when idle, after the current run when busy."""

    def __init__(self) -> None:
        self.requested = False
        self.busy = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if not self.busy:
            raise SystemExit(0)
        log.info("stop requested: finishing the current backup run first")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--once"]:
        # The Kubernetes CronJob: the schedule is the CronJob's (concurrencyPolicy Forbid: runs never overlap); one
        # backup and its verification, and the exit status says whether both succeeded.
        return 0 if run_once(load_config()) else 1
    if args:
        sys.stderr.write("usage: python -m infra.backup.scheduler [--once]\n")
        return 2
    # supervisord hands its children the environment of the deploy that started it, possibly stale: the
    # effective configuration file rendered by the latest deploy is the only source.
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX) and n != CONFIG_FILE_ENV]:
        del os.environ[name]
    stop = _Stop()
    config = load_config()
    if not config.backups.schedule_enabled:
        # The compose target's backup container: it hosts the on-demand tasks (docker compose exec) and schedules
        # nothing. A deploy that enables the schedule recreates it.
        log.info("nightly backups are off (backups.schedule_enabled: false): on-demand tasks only")
        while True:
            time.sleep(3600)
    log.info("backup scheduler started: daily at %s UTC, state %s", config.backups.schedule, config.state_dir)
    while not stop.requested:
        due = next_run(config.backups.schedule, datetime.now(UTC))
        log.info("next backup at %s", due.isoformat())
        while (remaining := (due - datetime.now(UTC)).total_seconds()) > 0:
            time.sleep(min(remaining, 60))  # short naps: a changed clock or a suspend cannot make it oversleep
            fresh = load_config()  # the last deploy's configuration, re-read: a new schedule applies at once
            if fresh.backups.schedule != config.backups.schedule:
                config = fresh
                due = next_run(config.backups.schedule, datetime.now(UTC))
                log.info("schedule changed: next backup at %s", due.isoformat())
        config = load_config()
        stop.busy = True
        run_once(config)
        stop.busy = False
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
