"""Backup tasks: take, list, verify and prune backups of the Prefect database.

Where the work runs is the target's: on this host, in the compose target's backup container (the host hands the
task over, ``Target.run_elsewhere``), in the Kubernetes CronJob; a restore's downtime is driven from the host.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.backup.catalog import list_backups
from infra.backup.jobs import backup_job, verify_job
from infra.backup.restore import RestoreReport
from infra.backup.retention import run_prune
from infra.backup.storage import BackupStore
from infra.errors import UserError
from infra.layout import StateLayout
from infra.progress import human_bytes
from infra.secrets import load_secrets
from infra.targets import RestoreRequest, Target
from infra.tasks import reports_user_errors
from infra.tasks.stack import TARGET_HELP, _target


def _here(chosen: Target, argv: list[str]) -> None:
    """Run ``invoke ARGV`` where the target runs backup work and exit with its status, unless that is here."""
    code = chosen.run_elsewhere(argv)
    if code is not None:
        raise Exit(code=code)


@task(default=True, help={
    "method": "logical (pg_dump, the default) or physical (pgBackRest, with point-in-time recovery).",
    "type": "physical only: full, diff or incr (default incr; pgBackRest takes a full one when none exists).",
    "json": "Print the result as JSON ({\"id\": ..., ...}).",
    "target": TARGET_HELP,
})
@reports_user_errors
def backup(c: Context, method: str = "logical", type: str = "incr", json_: bool = False,
           target: str | None = None) -> None:
    """Back up the Prefect database to S3 now; prints the backup id."""
    chosen = _target(target, "backup")
    config = chosen.config
    if method == "physical":
        chosen.check_physical()
    _here(chosen, ["backup", "--method", method, "--type", type, *(["--json"] if json_ else [])])
    layout = StateLayout(config.state_dir)
    secrets = load_secrets(layout.secrets)
    if method == "physical":
        taken = chosen.physical_backup(type, console.progress())
        print(json.dumps(taken) if json_ else taken["id"])
        if not json_:
            console.step(f"physical {taken['type']} backup {taken['id']}: {human_bytes(taken['size'])} stored")
        return
    if method != "logical":
        raise UserError(f"unknown backup method {method!r}", fix="use --method logical or --method physical")
    manifest = backup_job(config, secrets, console.progress())
    result = {
        "id": manifest.id, "method": manifest.method, "location": manifest.location,
        "size": manifest.size, "raw_size": manifest.raw_size, "objects": len(manifest.objects),
        "duration_s": round(manifest.duration_s, 2), "rows": sum(manifest.row_counts.values()),
    }
    if json_:
        print(json.dumps(result))
    else:
        console.step(
            f"backup {manifest.id} complete: {human_bytes(manifest.size)} stored "
            f"({human_bytes(manifest.raw_size)} dumped), {result['rows']} rows, {manifest.duration_s:.1f}s"
        )
        print(manifest.id)


@task(name="list", help={"json": "Print JSON: a list of {id, method, time, size, verified, location, ...}.",
                         "target": TARGET_HELP})
@reports_user_errors
def list_(c: Context, json_: bool = False, target: str | None = None) -> None:
    """List complete backups (those with a manifest), oldest first, with their verification state."""
    chosen = _target(target, "backup.list")
    config = chosen.config
    _here(chosen, ["backup.list", *(["--json"] if json_ else [])])
    store = BackupStore.from_config(config, load_secrets(StateLayout(config.state_dir).secrets))
    entries = list_backups(store)
    rows = [e.as_dict(store.location) for e in entries]
    physical, elsewhere = chosen.listed_physical_backups(store)
    rows += physical
    if elsewhere:
        console.note(elsewhere)
    if json_:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, pad_edge=False, title=f"backups in {store.location}")
    for column in ("id", "method", "finished", "size", "took", "verified"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["method"], row["time"][:19], human_bytes(row["size"]),
                      f"{row['duration_s']}s", row["verified"])
    console.out.print(table if rows else f"no backups in {store.location}")


@task(help={"id": "The backup to verify (see invoke backup.list).", "latest": "Verify the newest backup.",
            "target": TARGET_HELP})
@reports_user_errors
def verify(c: Context, id: str | None = None, latest: bool = False, target: str | None = None) -> None:
    """Prove a backup restores: checksums, pg_restore, pg_amcheck, row counts, a Prefect API on the copy."""
    chosen = _target(target, "backup.verify")
    config = chosen.config
    _here(chosen, ["backup.verify", *(["--id", id] if id else []), *(["--latest"] if latest else [])])
    layout = StateLayout(config.state_dir)
    secrets = load_secrets(layout.secrets)
    console.step(f"verifying backup {id or 'latest'}")
    entry, verdict = verify_job(config, secrets, id, console.progress())
    if not verdict.ok:
        raise Exit(f"error: backup {entry.manifest.id} FAILED verification: {verdict.detail}\n"
                   "  fix: do not rely on this backup; take a new one (invoke backup) and verify it", code=1)
    console.step(f"backup {entry.manifest.id} verified in {verdict.duration_s:.1f}s: {verdict.detail}")


@task(help={
    "id": "The backup to restore (see invoke backup.list).",
    "latest": "Restore the newest backup.",
    "yes": "Confirm: replace the live Prefect database (a safety backup is taken first).",
    "keep_previous": "Keep the replaced database (renamed prefect_before_<time>) instead of dropping it.",
    "to_time": "Point-in-time recovery (physical backups): e.g. '2026-11-23 20:15:00+00'.",
    "method": "logical (default) or physical (pgBackRest; implied by --to-time).",
    "cleanup": "Kubernetes: delete (in the foreground) the old Clusters a point-in-time recovery kept; with --yes.",
    "json": "Print the result as JSON.",
    "target": TARGET_HELP,
})
@reports_user_errors
def restore(c: Context, id: str | None = None, latest: bool = False, yes: bool = False,
            keep_previous: bool = False, to_time: str | None = None, method: str = "logical",
            cleanup: bool = False, json_: bool = False, target: str | None = None) -> None:
    """Restore the Prefect database from a backup, with a safety backup first and row counts checked after."""
    chosen = _target(target, "restore")
    request = RestoreRequest(backup_id=id, latest=latest, yes=yes, keep_previous=keep_previous, to_time=to_time,
                             method=method, cleanup=cleanup)
    outcome = chosen.restore(request, console.progress(), console.step)
    if outcome.report is not None:
        _report_restore(outcome.report, outcome.expected_rows, json_)
        return
    if outcome.print_summary_always:
        print(json.dumps(outcome.summary) if json_ else "")
    elif json_:
        print(json.dumps(outcome.summary))
    console.step(outcome.message)


def _report_restore(report: RestoreReport, expected: dict[str, int], json_: bool) -> None:
    lost = {t: (n, report.row_counts.get(t, 0)) for t, n in expected.items() if report.row_counts.get(t, 0) < n}
    result = {
        "id": report.backup_id, "safety_backup_id": report.safety_backup_id, "migrated": report.migrated,
        "downtime_s": round(report.downtime_s, 2), "recovery_time_s": round(report.total_s, 2),
        "rows_expected": sum(expected.values()), "rows_found": sum(report.row_counts.get(t, 0) for t in expected),
        "tables_short": sorted(lost),
    }
    if json_:
        print(json.dumps(result))
    else:
        table = Table(box=None, pad_edge=False, title="row counts: backup manifest vs restored database")
        for column in ("table", "in backup", "restored"):
            table.add_column(column)
        for name in sorted(expected):
            if expected[name]:
                table.add_row(name, str(expected[name]), str(report.row_counts.get(name, 0)))
        console.out.print(table)
        console.step(
            f"restored {report.backup_id} in {report.total_s:.1f}s (API down {report.downtime_s:.1f}s); "
            f"safety backup: {report.safety_backup_id or 'none'}"
        )
    if lost:
        raise Exit(f"error: rows missing after restore in {sorted(lost)}", code=1)


@task(help={
    "apply": "Delete what the plan marks DELETE. Without it: a dry run that shows the plan and deletes nothing.",
    "json": "Print JSON: {dry_run, backups: [{id, ..., action, reasons}], orphans: [...], keep, delete, deleted}.",
    "target": TARGET_HELP,
})
@reports_user_errors
def prune(c: Context, apply: bool = False, json_: bool = False, target: str | None = None) -> None:
    """Apply the retention rules (backups.retention): keep N daily, weekly, monthly; a dry run unless --apply."""
    chosen = _target(target, "backup.prune")
    config = chosen.config
    _here(chosen, ["backup.prune", *(["--apply"] if apply else []), *(["--json"] if json_ else [])])
    layout = StateLayout(config.state_dir)
    store = BackupStore.from_config(config, load_secrets(layout.secrets))
    rules = config.backups.retention
    survey, report = run_prune(store, layout.run, apply, console.progress())
    now = datetime.now(UTC)
    backups = [{**e.as_dict(store.location), "action": "delete" if e.manifest.id in report.backups else "keep",
                "reasons": survey.plan.keep.get(e.manifest.id, [])} for e in survey.entries]
    orphans = [{"folder": o.name, "objects": o.objects, "size": o.size, "last_written": o.last_written.isoformat(),
                "action": "delete" if o.name in report.orphans else "keep"} for o in survey.orphans]
    if json_:
        print(json.dumps({
            "dry_run": report.dry_run, "rules": rules.model_dump(), "backups": backups, "orphans": orphans,
            "keep": list(survey.plan.keep), "delete": report.backups, "delete_orphans": report.orphans,
            "deleted": {"backups": 0 if report.dry_run else len(report.backups),
                        "orphans": 0 if report.dry_run else len(report.orphans), "objects": report.objects},
        }, indent=2))
    else:
        table = Table(box=None, pad_edge=False, title=(
            f"retention in {store.location}: keep {rules.keep_daily} daily, {rules.keep_weekly} weekly, "
            f"{rules.keep_monthly} monthly"))
        for column in ("id", "finished", "size", "verified", "action"):
            table.add_column(column, no_wrap=True)  # on a narrow terminal only the reasons wrap
        table.add_column("why")
        deleting = "[red]DELETE[/red]" if report.dry_run else "[red]deleted[/red]"
        for row in backups:
            table.add_row(row["id"], row["time"][:16].replace("T", " "), human_bytes(row["size"]), row["verified"],
                          deleting if row["action"] == "delete" else "KEEP",
                          ", ".join(row["reasons"]) or "no rule keeps it")
        for orphan in survey.orphans:
            hours = (now - orphan.last_written).total_seconds() / 3600
            removed = orphan.name in report.orphans
            table.add_row(orphan.name, "", human_bytes(orphan.size), "no manifest",
                          deleting if removed else "KEEP",
                          f"interrupted upload, last written {hours:.1f} h ago" + (
                              "" if removed else f": within the {rules.orphan_grace_hours} h grace, may be uploading"))
        console.out.print(table if backups or orphans else f"no backups in {store.location}")
    if report.dry_run:
        console.step(f"dry run: nothing deleted; run with --apply to delete {len(report.backups)} backup(s) "
                     f"and {len(report.orphans)} orphan folder(s)")
    else:
        console.step(f"deleted {len(report.backups)} backup(s) and {len(report.orphans)} orphan folder(s) "
                     f"({report.objects} objects); kept {len(survey.plan.keep)} backup(s)")
