"""Retention (`invoke backup.prune`) against the real stack: the dry run deletes nothing; --apply keeps the newest
backup and the newest verified one, and removes an interrupted upload (a folder without a manifest)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from infra.backup.logical import logical_prefix
from infra.backup.storage import BackupStore
from infra.config import load_config
from infra.secrets import load_secrets
from tests.integration.conftest import Stack

ORPHAN = "20000101T000000Z"  # an upload interrupted long ago: objects, no manifest
RETENTION = "PREFECT_STACK_BACKUPS__RETENTION__"
# Keep one day, no weeks, no months: of today's backups only the newest fills a slot.
ONE_DAY = {f"{RETENTION}KEEP_DAILY": "1", f"{RETENTION}KEEP_WEEKLY": "0", f"{RETENTION}KEEP_MONTHLY": "0"}
NO_GRACE = {f"{RETENTION}ORPHAN_GRACE_HOURS": "0"}  # the orphan was just written; it counts as abandoned anyway


def _invoke(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    saved = dict(stack.env)
    stack.env.update(env)
    try:
        result = stack.invoke(*args)
    finally:
        stack.env.clear()
        stack.env.update(saved)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def _listed(stack: Stack) -> list[str]:
    return [b["id"] for b in json.loads(stack.invoke("backup.list", "--json", check=True).stdout)]


def _orphan_keys(store: BackupStore) -> list[str]:
    return [key for key, _ in store.list_keys(logical_prefix(store, ORPHAN))]


@pytest.fixture(scope="module")
def pruned(stack: Stack) -> dict[str, Any]:
    store = BackupStore.from_config(load_config(), load_secrets(stack.layout.secrets))
    taken = [json.loads(_invoke(stack, "backup", "--json").stdout)["id"] for _ in range(3)]
    _invoke(stack, "backup.verify", "--id", taken[0])  # the newest verified is now older than the newest
    store._client.put_object(Bucket=store.bucket, Key=logical_prefix(store, ORPHAN) + "000.dat.zst", Body=b"partial")
    seen: dict[str, Any] = {"taken": taken, "before": _listed(stack)}
    seen["default_grace"] = json.loads(_invoke(stack, "backup.prune", "--json", **ONE_DAY).stdout)
    seen["dry_table"] = _invoke(stack, "backup.prune", COLUMNS="200", **ONE_DAY, **NO_GRACE)  # no wrapping
    dry = _invoke(stack, "backup.prune", "--json", **ONE_DAY, **NO_GRACE)
    seen["dry"], seen["dry_stderr"] = json.loads(dry.stdout), dry.stderr
    seen["after_dry"], seen["orphan_after_dry"] = _listed(stack), _orphan_keys(store)
    seen["applied"] = json.loads(_invoke(stack, "backup.prune", "--apply", "--json", **ONE_DAY, **NO_GRACE).stdout)
    seen["after"], seen["orphan_after"] = _listed(stack), _orphan_keys(store)
    return seen


def test_dry_run_deletes_nothing(pruned: dict[str, Any]) -> None:
    assert pruned["after_dry"] == pruned["before"]
    assert pruned["orphan_after_dry"] != []


def test_dry_run_says_so(pruned: dict[str, Any]) -> None:
    assert pruned["dry"]["dry_run"] is True
    assert "dry run: nothing deleted; run with --apply" in pruned["dry_stderr"]


def test_dry_run_plans_what_apply_then_does(pruned: dict[str, Any]) -> None:
    assert pruned["dry"]["delete"] == pruned["applied"]["delete"]
    # Other tests may leave real orphans (an interrupted upload): prune removes those too.
    assert pruned["dry"]["delete_orphans"] == pruned["applied"]["delete_orphans"]
    assert ORPHAN in pruned["applied"]["delete_orphans"]


def test_table_shows_every_backup_with_its_action(pruned: dict[str, Any]) -> None:
    table = pruned["dry_table"].stdout
    assert all(backup_id in table for backup_id in pruned["before"])
    assert "DELETE" in table and "KEEP" in table and "newest verified" in table


@pytest.mark.parametrize(("which", "reason"), [(-1, "newest"), (0, "newest verified")], ids=["newest", "verified"])
def test_reasons(pruned: dict[str, Any], which: int, reason: str) -> None:
    row = next(b for b in pruned["dry"]["backups"] if b["id"] == pruned["taken"][which])
    assert row["action"] == "keep"
    assert reason in row["reasons"]


def test_apply_keeps_the_newest_and_the_newest_verified(pruned: dict[str, Any]) -> None:
    assert pruned["after"] == [pruned["taken"][0], pruned["taken"][-1]]


def test_apply_deletes_the_rest(pruned: dict[str, Any]) -> None:
    deleted = set(pruned["before"]) - set(pruned["after"])
    assert pruned["taken"][1] in deleted
    assert set(pruned["applied"]["delete"]) == deleted
    assert pruned["applied"]["deleted"]["backups"] == len(deleted)


def test_apply_removes_the_interrupted_upload(pruned: dict[str, Any]) -> None:
    assert pruned["orphan_after"] == []
    assert pruned["applied"]["deleted"]["orphans"] == len(pruned["applied"]["delete_orphans"]) >= 1


def test_orphan_within_the_grace_is_kept(pruned: dict[str, Any]) -> None:
    orphan = next(o for o in pruned["default_grace"]["orphans"] if o["folder"] == ORPHAN)
    assert orphan["action"] == "keep"
    assert pruned["default_grace"]["delete_orphans"] == []
