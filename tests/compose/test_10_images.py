"""The compose target's images, built for real: what each contains, who it runs as, and that an unchanged image
is never rebuilt. The engine itself is checked the way Compose will use it (service names, published ports)."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from infra.config import StackConfig
from infra.containers.engine import compose_binary
from infra.containers.images import (
    APP_DIRS,
    APP_PRIVATE_DIRS,
    APP_ROOT,
    APP_UID,
    ImageRefs,
    ImageResult,
    ensure_images,
    load_debian_lock,
)
from infra.containers.registry import push_images
from infra.progress import QuietProgress
from tests.conftest import free_ports

pytestmark = pytest.mark.compose

# Each Debian component's binary, and what its version output contains.
BINARIES = {
    "postgres": ("/usr/lib/postgresql/15/bin/postgres --version", "(PostgreSQL) 15."),
    "psql": ("psql --version", "(PostgreSQL) 15."),
    "pgbouncer": ("pgbouncer --version", "PgBouncer 1."),
    "redis-server": ("redis-server --version", "Redis server v=7."),
    "haproxy": ("haproxy -v", "HAProxy version 2.6"),
    "pgbackrest": ("pgbackrest version", "pgBackRest 2."),
    "prometheus": ("prometheus --version", "prometheus, version 2."),
    "alertmanager": ("prometheus-alertmanager --version", "alertmanager, version 0."),
    "node-exporter": ("prometheus-node-exporter --version", "node_exporter, version"),
    "postgres-exporter": ("prometheus-postgres-exporter --version", "postgres_exporter"),
    "redis-exporter": ("prometheus-redis-exporter --version", "Redis Metrics Exporter"),
    "tini": ("tini --version", "tini version"),
}


def _run(client: docker.DockerClient, image: str, command: str) -> str:
    output: bytes = client.containers.run(image, ["sh", "-c", command], remove=True, network_mode="none",
                                          stderr=True)
    return output.decode()


def test_first_ensure_built_or_found_every_image(compose_build: list[ImageResult]) -> None:
    assert [r.role for r in compose_build] == ["base", "system", "prefect"]


def test_second_ensure_builds_nothing(compose_images: ImageRefs, compose_config: StackConfig,
                                      docker_client: docker.DockerClient) -> None:
    again = ensure_images(compose_config, docker_client, QuietProgress())
    assert [(r.ref, r.action) for r in again] == [(ref, "up to date") for ref in compose_images.all().values()]


def test_prefect_imports_prefect_and_the_project(compose_images: ImageRefs,
                                                 docker_client: docker.DockerClient) -> None:
    command = 'python -c "import prefect, infra; print(prefect.__version__)"'
    output = _run(docker_client, compose_images.prefect, command)
    assert output.strip() == "3.8.8"


def test_prefect_has_no_dev_tools(compose_images: ImageRefs, docker_client: docker.DockerClient) -> None:
    output = _run(docker_client, compose_images.prefect, 'python -c "import pytest" 2>&1; echo "exit $?"')
    assert output.strip().endswith("exit 1")


def test_prefect_runs_the_projects_tasks(compose_images: ImageRefs, docker_client: docker.DockerClient) -> None:
    assert "images.build" in _run(docker_client, compose_images.prefect, "invoke --list")


@pytest.mark.parametrize("binary", BINARIES)
def test_system_has(compose_images: ImageRefs, docker_client: docker.DockerClient, binary: str) -> None:
    command, expected = BINARIES[binary]
    assert expected in _run(docker_client, compose_images.system, command)


@pytest.fixture(scope="module")
def installed_packages(compose_images: ImageRefs, docker_client: docker.DockerClient) -> dict[str, str]:
    """Package and version of everything dpkg has installed in the system image, read by one container."""
    output = _run(docker_client, compose_images.system,
                  r"dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n'")
    return {line.split()[1]: line.split()[2] for line in output.splitlines() if line.startswith("ii ")}


def test_system_has_the_locked_debian_versions(installed_packages: dict[str, str]) -> None:
    locked = dict(load_debian_lock().packages)
    assert {name: installed_packages.get(name) for name in locked} == locked


def test_system_has_no_unlocked_debian_package(installed_packages: dict[str, str]) -> None:
    # The base's packages are locked too: nothing in the image escapes the lock (and so its tag).
    assert sorted(set(installed_packages) - set(load_debian_lock().packages)) == []


def test_no_postgres_cluster_created(compose_images: ImageRefs, docker_client: docker.DockerClient) -> None:
    assert _run(docker_client, compose_images.system, "ls /etc/postgresql 2>/dev/null | wc -l").strip() == "0"


@pytest.mark.parametrize("image", ["system", "prefect"])
def test_runs_as_the_unprivileged_user(compose_images: ImageRefs, docker_client: docker.DockerClient,
                                       image: str) -> None:
    assert _run(docker_client, getattr(compose_images, image), "id -u").strip() == str(APP_UID)


@pytest.fixture(scope="module")
def layout(compose_images: ImageRefs, docker_client: docker.DockerClient) -> dict[str, str]:
    """Owner, group and mode of every layout directory in the system image, read by one container."""
    paths = " ".join(str(APP_ROOT / d) for d in (*APP_DIRS, *APP_PRIVATE_DIRS))
    output = _run(docker_client, compose_images.system, f"stat -c '%n %u %g %a' {paths}")
    return {line.split()[0]: " ".join(line.split()[1:]) for line in output.splitlines()}


@pytest.mark.parametrize("directory", APP_DIRS + APP_PRIVATE_DIRS)
def test_layout_directory(layout: dict[str, str], directory: str) -> None:
    mode = "700" if directory in APP_PRIVATE_DIRS else "755"
    assert layout.get(str(APP_ROOT / directory)) == f"{APP_UID} {APP_UID} {mode}"


def test_compose_network_and_published_port(compose_images: ImageRefs, docker_engine: str, tmp_path: Path) -> None:
    """Compose on this engine: a service reaches another by name, and a port published on 127.0.0.1 answers."""
    port = free_ports(1)[0]
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(textwrap.dedent(f"""\
        name: prefect-stack-engine-check
        services:
          web:
            image: {compose_images.system}
            command: ["python3", "-m", "http.server", "8000", "--directory", "/var/lib/prefect-stack"]
            ports: ["127.0.0.1:{port}:8000"]
          client:
            image: {compose_images.system}
            command: ["sh", "-c", "until curl -sf http://web:8000/ >/dev/null; do sleep 0.2; done; sleep infinity"]
            healthcheck:
              test: ["CMD", "curl", "-sf", "http://web:8000/"]
              interval: 1s
              retries: 30
    """))
    compose = [*compose_binary(), "-f", str(compose_file)]
    env = {"DOCKER_HOST": docker_engine, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        up = subprocess.run([*compose, "up", "-d", "--wait", "--wait-timeout", "60"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
        assert up.returncode == 0, up.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        subprocess.run([*compose, "down", "-t", "1"], env=env, capture_output=True, timeout=120, check=False)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry (the distribution registry) on a free loopback port: what a cluster pulls from.
    Docker treats a 127.0.0.0/8 registry as insecure (plain HTTP) by default, so no engine setting is needed."""
    binary = Path("/usr/bin/docker-registry")
    if not binary.exists():
        pytest.fail("docker-registry is missing: scripts/bootstrap.sh --dev installs it", pytrace=False)
    (port,) = free_ports(1)
    config = tmp_path / "registry.yml"
    config.write_text(textwrap.dedent(f"""\
        version: 0.1
        storage:
          filesystem:
            rootdirectory: {tmp_path / "data"}
        http:
          addr: 127.0.0.1:{port}
        """))
    log = (tmp_path / "registry.log").open("w")
    process = subprocess.Popen([str(binary), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_push_for_kubernetes_puts_the_pinned_tags_in_the_registry(
        compose_images: ImageRefs, compose_config: StackConfig, docker_client: docker.DockerClient,
        registry: str) -> None:
    config = compose_config.model_copy(update={"kubernetes": compose_config.kubernetes.model_copy(
        update={"image_registry": f"{registry}/pstest"})})
    pushed = push_images(config, docker_client, QuietProgress())
    for ref in (compose_images.system, compose_images.prefect):
        repository, tag = ref.rsplit(":", 1)
        tags = httpx.get(f"http://{registry}/v2/pstest/{repository}/tags/list", timeout=10).json()["tags"]
        assert tag in tags
    assert pushed == [f"{registry}/pstest/{compose_images.system}", f"{registry}/pstest/{compose_images.prefect}"]
