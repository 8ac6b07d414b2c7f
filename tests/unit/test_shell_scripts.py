"""The shell scripts: every one in the repository passes shellcheck (as invoke lint runs it), every suppressed
warning says why, and the shipped scripts (infra/scripts) are what the renderings carry, with every variable they
read set on their container."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.compose.project import placeholder_tls, render_project
from infra.config import REPO_ROOT, StackConfig, load_config
from infra.kubernetes.redis import config_files, redis_manifests
from infra.kubernetes.render import PlaceholderImages
from infra.scripts import script
from infra.secrets import Secrets, ensure_secrets
from infra.tasks.dev import SHELLCHECK_OPTIONS, shell_scripts

SCRIPTS = shell_scripts()
SHIPPED = REPO_ROOT / "infra" / "scripts"
# A directive that suppresses a warning, and what follows it on its line.
DISABLE = re.compile(r"#\s*shellcheck\s+disable=\S+(.*)$")
# A variable a script reads from its environment: the upper-case names (the scripts' own variables are lower case).
READ = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
ASSIGNED = re.compile(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def _name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def test_the_shipped_and_the_repository_scripts_are_found() -> None:
    found = {_name(p) for p in SCRIPTS}
    assert {"infra/scripts/redis/common.sh", "infra/scripts/postgres/start.sh", "scripts/bootstrap.sh",
            ".ci/run"} <= found


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (scripts/bootstrap.sh --dev installs it)")
@pytest.mark.parametrize("path", SCRIPTS, ids=_name)
def test_shellcheck_passes(path: Path) -> None:
    result = subprocess.run(["shellcheck", *SHELLCHECK_OPTIONS, str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=_name)
def test_every_disabled_warning_says_why(path: Path) -> None:
    unexplained = [line.strip() for line in path.read_text().splitlines()
                   if (found := DISABLE.search(line)) and not found.group(1).strip().lstrip("#").strip()]
    assert not unexplained


@pytest.mark.parametrize("path", sorted(SHIPPED.rglob("*.sh")), ids=_name)
def test_shipped_script_is_package_data(path: Path) -> None:
    assert script(path.relative_to(SHIPPED).as_posix()) == path.read_text()


def _reads(text: str) -> set[str]:
    return set(READ.findall(text)) - set(ASSIGNED.findall(text))


def _env_names(container: dict[str, Any]) -> set[str]:
    return {entry["name"] for entry in container["env"]}


@pytest.mark.parametrize("mode", ["sentinel", "standalone"])
def test_redis_containers_set_every_variable_the_scripts_read(mode: str) -> None:
    config = load_config(target="kubernetes", kubernetes={"redis": {"mode": mode}}, monitoring={"enabled": True})
    files = config_files(config, sentinel=mode == "sentinel")
    common = _reads(files["common.sh"])
    stateful_set = next(m.obj for m in redis_manifests(config, PlaceholderImages()) if m.kind == "StatefulSet")
    for container in stateful_set["spec"]["template"]["spec"]["containers"]:
        # What it runs: its start script, its probes and its preStop hook.
        runs = set(re.findall(r"/([a-z-]+\.sh)", json.dumps(container)))
        needed = set().union(*(_reads(files[name]) | (common if "common.sh" in files[name] else set())
                               for name in runs))
        assert needed and needed <= _env_names(container), container["name"]


def test_redis_configmap_carries_the_shipped_files() -> None:
    files = config_files(load_config(target="kubernetes", monitoring={"enabled": True}), sentinel=True)
    shipped = {p.name for p in (SHIPPED / "redis").glob("*.sh")}
    assert {name: files[name] for name in shipped} == {name: script(f"redis/{name}") for name in shipped}


@dataclass(frozen=True)
class Images:
    system: str = "prefect-stack/system:0123456789ab"
    prefect: str = "prefect-stack/prefect:0123456789ab"


def test_compose_postgres_sets_every_variable_its_start_script_reads(tmp_path: Path) -> None:
    secrets: Secrets = ensure_secrets(tmp_path / "secrets")
    project = render_project(StackConfig(target="compose"), secrets, Images(), placeholder_tls())
    started = next(f for f in project.files if f.path.name == "postgres-start.sh")
    assert started.content == script("postgres/start.sh")
    environment = project.document["services"]["postgres"]["environment"]
    assert _reads(started.content) <= set(environment)
