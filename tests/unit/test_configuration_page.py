"""docs/configuration.md is generated from the configuration model: the committed page is current, every leaf
field explains itself, and a secret's default is never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke.context import MockContext
from invoke.exceptions import Exit
from pydantic import BaseModel, SecretStr

from infra.render import configuration_page
from infra.render.configuration_page import PAGE, render_configuration_page, settings
from infra.tasks import dev

SETTINGS = {setting.key: setting for setting in settings()}


def test_committed_page_is_current() -> None:
    assert PAGE.read_text() == render_configuration_page(), (
        "docs/configuration.md is out of date with infra/config.py: run invoke docs and commit the page")


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_every_field_has_a_description(key: str) -> None:
    assert SETTINGS[key].description.strip(), f"give {key} a Field(description=...) in infra/config.py"


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_every_field_is_on_the_page(key: str) -> None:
    assert f"| `{key}` |" in render_configuration_page()


@pytest.mark.parametrize(("key", "env", "default"), [
    ("target", "PREFECT_STACK_TARGET", '`"local"`'),
    ("api.replicas", "PREFECT_STACK_API__REPLICAS", "`2`"),
    ("load_balancer.tls.mode", "PREFECT_STACK_LOAD_BALANCER__TLS__MODE", '`"auto"`'),
    # a section's own default for a nested model, not the nested model's class default
    ("kubernetes.api_resources.memory_limit", "PREFECT_STACK_KUBERNETES__API_RESOURCES__MEMORY_LIMIT", '`"1Gi"`'),
    ("backups.s3.endpoint_url", "PREFECT_STACK_BACKUPS__S3__ENDPOINT_URL", "`null`"),
])
def test_row(key: str, env: str, default: str) -> None:
    assert (SETTINGS[key].env, SETTINGS[key].default) == (env, default)


def test_bounds_in_the_type() -> None:
    assert SETTINGS["postgres.port"].type == "int, 1 to 65535"
    assert SETTINGS["compose.cpus"].type == "float, > 0, ≤ 64"


class _WithSecret(BaseModel):
    password: SecretStr = SecretStr("hunter2-not-to-be-printed")


def test_secret_default_is_never_printed() -> None:
    (row,) = settings(_WithSecret)
    assert row.default == "generated"
    assert "hunter2" not in repr(row)


def test_docs_task_check_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# stale\n")
    monkeypatch.setattr(configuration_page, "PAGE", stale)
    with pytest.raises(Exit) as failed:
        dev.docs(MockContext(), check=True)
    assert failed.value.code == 1 and "invoke docs" in str(failed.value.message)
    dev.docs(MockContext())
    assert stale.read_text() == render_configuration_page()
