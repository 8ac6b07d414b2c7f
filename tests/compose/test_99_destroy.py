"""Last of the compose tests: destroy removes every container, network and volume of the project."""

from __future__ import annotations

import pytest

from tests.compose.conftest import ComposeStack

pytestmark = pytest.mark.compose


def test_destroy_leaves_nothing_of_the_project(compose_stack: ComposeStack) -> None:
    project = compose_stack.config.compose.project
    result = compose_stack.invoke("destroy", "--yes")
    assert result.returncode == 0, result.stderr
    labelled = {"label": f"com.docker.compose.project={project}"}
    assert compose_stack.docker.containers.list(all=True, filters=labelled) == []
    assert compose_stack.docker.volumes.list(filters=labelled) == []
    assert compose_stack.docker.networks.list(filters=labelled) == []
    assert not compose_stack.config.state_dir.exists()
