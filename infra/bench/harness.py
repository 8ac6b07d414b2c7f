"""What every benchmark shares: a temporary directory, free ports, a temporary local stack deployed on them and
destroyed afterwards, the API's credentials, clean-up that never hides the error it follows, log tails, and the
verdicts and figures of the reports.

Benchmarks measure a real deployment on this host, never the operator's: everything here takes free loopback
ports away from the defaults and keeps its state under one directory in /tmp, removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from infra import console
from infra.config import StackConfig, load_config
from infra.errors import UserError
from infra.local.deploy import deploy
from infra.local.operate import client_environment, destroy
from infra.local.plan import LocalPlan

# ApiConfig.replicas accepts at most this many, so a default deployment may use base_port..base_port+31.
MAX_API_REPLICAS = 32
TEMP_ROOT = Path("/tmp")  # noqa: S108 - deliberate: the service user must traverse every parent (not $TMPDIR)


# ---------------------------------------------------------------- verdicts and figures of the reports

# "not applicable": measured, but the goal concerns a method that does not exist yet (bench.backup).
# "inconclusive": measured, but the spread between like rounds is larger than the effect claimed.
VerdictStatus = Literal["pass", "fail", "not measured", "not applicable", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    goal: str
    status: VerdictStatus
    measured: str
    ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.ratio is not None:
            data["ratio"] = round(self.ratio, 3)
        return data


def format_ms(value: float | None) -> str:
    """'12.3 ms', or '-' for a latency that was not measured."""
    return "-" if value is None else f"{value:.1f} ms"


# ---------------------------------------------------------------- clean-up and logs


@contextlib.contextmanager
def cleaned_up(what: str, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` however the block ends. Its failure is raised, unless it would hide the block's own error."""
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        try:
            action()
        except Exception as exc:
            if not failed:
                raise
            console.note(f"[red]cleanup failed[/red]: {what}: {exc}")


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a log, indented to follow an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n    ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


@contextlib.contextmanager
def temporary_workdir(prefix: str, ignore_errors: bool = False) -> Iterator[Path]:
    """A new directory under /tmp for one run, removed afterwards whatever happened."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=TEMP_ROOT))
    # The stack's service user must traverse it to reach its state directory; nothing secret sits at this level.
    os.chmod(workdir, 0o755)  # noqa: S103
    with cleaned_up(f"remove {workdir}", lambda: shutil.rmtree(workdir, ignore_errors=ignore_errors)):
        yield workdir


# ---------------------------------------------------------------- ports


def _default_ports() -> frozenset[int]:
    """Every port a deployment on the defaults may listen on: the benchmark never takes one of them."""
    defaults = StackConfig.model_construct()
    base = defaults.api.base_port
    return frozenset(defaults.port_fields().values()) | frozenset(range(base, base + MAX_API_REPLICAS))


DEFAULT_PORTS = _default_ports()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(taken: set[int], run: int = 1) -> int:
    """A free loopback port (the first of ``run`` consecutive free ones), neither taken nor a default port.

    The port is recorded in ``taken``; it is free now, not reserved: use it soon.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            first = int(sock.getsockname()[1])
        ports = range(first, first + run)
        if ports[-1] > 65535 or any(p in taken or p in DEFAULT_PORTS for p in ports):
            continue
        if all(_bindable(p) for p in ports[1:]):
            taken.update(ports)
            return first
    raise UserError(f"found no {run} consecutive free port(s) on 127.0.0.1", fix="free some ports and retry")


@dataclass(frozen=True)
class StackPorts:
    load_balancer: int
    stats: int
    postgres: int
    pgbouncer: int
    redis: int
    s3: int
    api_base: int
    # prometheus, alertmanager, node, postgres, redis and prefect exporters, HAProxy's API metrics listener
    monitoring: tuple[int, int, int, int, int, int, int]


def allocate_stack_ports(replicas: int, taken: set[int]) -> StackPorts:
    return StackPorts(
        load_balancer=free_port(taken), stats=free_port(taken), postgres=free_port(taken),
        pgbouncer=free_port(taken), redis=free_port(taken), s3=free_port(taken),
        api_base=free_port(taken, run=replicas),
        monitoring=(free_port(taken), free_port(taken), free_port(taken), free_port(taken), free_port(taken),
                    free_port(taken), free_port(taken)),
    )


# ---------------------------------------------------------------- the temporary local stack


def stack_config(
    state_dir: Path, ports: StackPorts, replicas: int, monitoring: bool = False,
    tls_mode: Literal["auto", "on", "off"] = "auto",
) -> StackConfig:
    """The operator's configuration (pool sizes, timeouts...) with the benchmark's own ports and state directory.

    Monitoring is off unless asked for: the API and backup benchmarks compare the stack itself with its baselines.
    TLS at the load balancer follows ``tls_mode`` (auto: off on loopback; the compose comparison turns it on).
    """
    prom, am, node, pg_exporter, redis_exporter, prefect_exporter, api_metrics = ports.monitoring
    return load_config(
        monitoring={"enabled": monitoring, "prometheus_port": prom, "alertmanager_port": am,
                    "node_exporter_port": node, "postgres_exporter_port": pg_exporter,
                    "redis_exporter_port": redis_exporter, "prefect_exporter_port": prefect_exporter,
                    "api_metrics_port": api_metrics},
        target="local",
        local={"state_dir": str(state_dir)},
        load_balancer={"bind_address": "127.0.0.1", "port": ports.load_balancer, "stats_port": ports.stats,
                       "tls": {"mode": tls_mode}},
        postgres={"port": ports.postgres},
        pgbouncer={"port": ports.pgbouncer},
        redis={"port": ports.redis},
        api={"replicas": replicas, "base_port": ports.api_base},
        backups={"s3": {"local_port": ports.s3}},
    )


@dataclass(frozen=True)
class TemporaryStack:
    config: StackConfig
    plan: LocalPlan
    deploy_s: float  # how long the deploy took


@contextlib.contextmanager
def temporary_stack(config: StackConfig, name: str = "temporary stack") -> Iterator[TemporaryStack]:
    """Deploy the local stack ``config`` describes; destroy it when the block ends, whatever happened."""
    console.step(f"deploying a {name} ({config.api.replicas} API replicas) in {config.state_dir}")
    with cleaned_up(f"destroy the {name} in {config.state_dir}", lambda: destroy(config)):
        started = time.monotonic()
        plan, _ = deploy(config)
        yield TemporaryStack(config, plan, time.monotonic() - started)
        console.step(f"destroying the {name}")


def basic_auth(auth_string: str) -> tuple[str, str]:
    """'user:password' -> (user, password), as httpx takes it."""
    user, _, password = auth_string.partition(":")
    return user, password


def api_auth(config: StackConfig) -> tuple[str, str]:
    """The credentials a client of the deployed stack's API sends."""
    return basic_auth(client_environment(config)["PREFECT_API_AUTH_STRING"])
