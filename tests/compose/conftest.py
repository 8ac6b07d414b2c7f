"""A Docker engine and the compose target's images, once per test session.

Which engine (the rule): DOCKER_HOST when it is set, else the default socket (/var/run/docker.sock). If that engine
answers, the tests use it (its images are reused: an unchanged image is not rebuilt). If it does not answer - no
engine on this machine, or DOCKER_HOST set to something unreachable on purpose, e.g.
``DOCKER_HOST=unix:///nonexistent.sock`` - the session starts a private dockerd under a temporary directory (needs
root; installs Debian's docker.io if dockerd is missing) and stops it at the end, so CI needs no engine set up.
A private engine starts empty: the session then builds every image from scratch (a few minutes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from infra.compose.engine import DEFAULT_DOCKER_HOST, PrivateDockerEngine, ping
from infra.compose.images import ImageRefs, ImageResult, ensure_images
from infra.config import ENV_PREFIX, StackConfig
from infra.errors import UserError
from infra.progress import PlainProgress


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """The DOCKER_HOST the compose tests use (see the module's docstring for the rule)."""
    wanted = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    if ping(wanted) is not None:
        yield wanted
        return
    # Short path: a unix socket path is limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="prefect-stack-dockerd-", dir="/tmp"))
    try:
        with PrivateDockerEngine(directory) as url:
            yield url
    except UserError as exc:
        pytest.fail(f"no Docker engine at {wanted}, and a private one could not start: {exc}", pytrace=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_client(docker_engine: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_engine, timeout=900)
    yield client
    client.close()


@pytest.fixture(scope="session")
def compose_config(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """The compose target on that engine, Debian base by debootstrap (no registry here), state in a tmp dir."""
    state = tmp_path_factory.mktemp("compose-state")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                patch.delenv(name)
        yield StackConfig(target="compose", local={"state_dir": state},
                          compose={"base": "debootstrap", "docker_host": docker_engine})


@pytest.fixture(scope="session")
def compose_build(compose_config: StackConfig, docker_client: docker.DockerClient) -> list[ImageResult]:
    """What the session's first ensure_images did (built, imported or found up to date), with durations."""
    results = ensure_images(compose_config, docker_client, PlainProgress(print))
    for result in results:
        print(result.describe())
    return results


@pytest.fixture(scope="session")
def compose_images(compose_build: list[ImageResult]) -> ImageRefs:
    """The image references, every image present on the engine."""
    refs = {result.role: result.ref for result in compose_build}
    return ImageRefs(base=refs["base"], system=refs["system"], prefect=refs["prefect"])
