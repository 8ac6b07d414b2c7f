"""The local target's workers: one supervised ``prefect worker start`` per worker of the model, its Python
environment, its working directory for flow code, and its environment (a client of the API, nothing more).

A worker and the flow runs it starts are clients of the API like any other: they reach it through the load balancer
with the stack's credentials and never get the database URL or Redis password the server processes hold (a flow is
user code). Flow runs are child processes of their worker and inherit its environment, its Python environment and
its user.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from infra.config import REPO_ROOT, StackConfig
from infra.errors import UserError
from infra.executables import venv_bin
from infra.layout import TRUSTED_CA, StateLayout
from infra.render.prefect_logging import component_environment, logging_environment, logging_files
from infra.render.supervisor import Program
from infra.render.workers import worker_command, worker_settings
from infra.secrets import Secrets

COMPONENT = "worker"
# On SIGTERM a worker stops polling and interrupts the flow runs it started; what is still running after this many
# seconds is killed with its process group. A flow run cut short this way turns Crashed (zombie-run automation) and is
# scheduled again (crashed-run automation).
STOP_WAIT_S = 30
VERSION_TIMEOUT_S = 60


def flow_code_dir(config: StackConfig) -> Path:
    """Where flow code lives: workers.flow_code_dir, or <state_dir>/flows. The workers' working directory."""
    return config.workers.flow_code_dir or config.state_dir / "flows"


def workers_bin(config: StackConfig) -> Path:
    """The bin directory of the Python environment that runs the workers and so the flows."""
    return config.workers.python / "bin" if config.workers.python is not None else venv_bin()


def temporary_dir(layout: StateLayout) -> Path:
    """The workers' and their flow runs' TMPDIR, owned by the service user. Not the shared /tmp: Prefect's runner
    keeps its storage in <tmp>/runner_storage, which whoever creates it first owns (another user could block or
    read it)."""
    return layout.prefect_home / "tmp"


def program_name(worker: str) -> str:
    """``worker-default-1``: the supervised program (and log, and status row) of worker ``default-1``."""
    return f"{COMPONENT}-{worker}"


def client_environment(config: StackConfig, secrets: Secrets, layout: StateLayout) -> dict[str, str]:
    """What a Prefect client on this host needs: the API through the load balancer, the stack's credentials, the
    certificate to trust. Deliberately not the services' environment: no database URL, no Redis password."""
    env = {
        "PREFECT_HOME": str(layout.prefect_home),
        "HOME": str(layout.prefect_home),
        "PREFECT_API_URL": config.api_url,
        "PREFECT_API_AUTH_STRING": secrets.get("prefect_auth"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    if config.tls_enabled:
        env["PREFECT_API_SSL_CERT_FILE"] = str(layout.etc / TRUSTED_CA)
    return env


def worker_programs(config: StackConfig, secrets: Secrets, layout: StateLayout) -> list[Program]:
    """One supervised program per worker of the model (none when workers are disabled)."""
    if not config.workers.enabled:
        return []
    pools = {pool.name: pool for pool in config.workers.pools}
    prefect = str(workers_bin(config) / "prefect")
    client = {**client_environment(config, secrets, layout), "TMPDIR": str(temporary_dir(layout)),
              **logging_environment(config, layout.etc)}
    if config.workers.python is not None and config.logs.format == "json":
        # The JSON formatter (infra.logs.prefect_format) is imported by the worker and its flow runs: another
        # environment than the stack's own has no infra package installed.
        client["PYTHONPATH"] = str(REPO_ROOT)
    programs = []
    for i, (name, worker) in enumerate(config.workers.numbered(), start=1):
        port = config.worker_health_port(i)
        programs.append(Program(
            name=program_name(name),
            component=COMPONENT,
            command=worker_command(prefect, config.pool_type(pools[worker.pool]), name, worker),
            environment={**client, **worker_settings(config, "127.0.0.1", port),
                         **component_environment(program_name(name))},
            files=logging_files(config, layout),
            port=port,
            stop_wait_s=STOP_WAIT_S,
            start_secs=5,
            directory=flow_code_dir(config),
        ))
    return programs


@functools.cache
def prefect_version(python: Path) -> str | None:
    """The prefect version importable by ``python``, or None when it has none (or does not run)."""
    try:
        result = subprocess.run(
            [str(python), "-c", "import prefect; print(prefect.__version__)"],
            capture_output=True, text=True, check=False, timeout=VERSION_TIMEOUT_S, cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.strip().splitlines()
    return lines[-1] if result.returncode == 0 and lines else None


def workers_prefect_version(config: StackConfig) -> str:
    """The prefect version the workers run (the stack's own unless workers.python names another environment)."""
    import prefect

    if config.workers.python is None:
        return prefect.__version__
    return prefect_version(workers_bin(config) / "python") or "unknown"


def check_worker_python(config: StackConfig) -> None:
    """workers.python must be a virtualenv with the stack's prefect version: a worker of another version may not
    understand the server, and flow runs would fail only once scheduled. Checked before a deploy changes anything."""
    if not config.workers.enabled or config.workers.python is None:
        return
    import prefect

    environment = config.workers.python
    if not (workers_bin(config) / "prefect").is_file():
        raise UserError(f"workers.python ({environment}) has no bin/prefect",
                        fix=f"create a virtualenv there with prefect=={prefect.__version__} and your flows' "
                            "dependencies installed, or set workers.python to null to use the stack's own")
    found = prefect_version(workers_bin(config) / "python")
    if found != prefect.__version__:
        raise UserError(f"workers.python ({environment}) has prefect {found or 'that does not import'}, the stack "
                        f"runs {prefect.__version__}",
                        fix=f"install prefect=={prefect.__version__} there ({environment}/bin/pip install "
                            f"prefect=={prefect.__version__})")
