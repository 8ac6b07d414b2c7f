"""How a worker process is started, the same on every target: its command line and its environment.

A worker is a client of the API like any other: it goes through the load balancer with the stack's credentials.
It never creates its pool (deploy provisions pools from the model; a worker that created one would give it the
bare default template) and never installs packages at run time (every package is pinned in the lock). Flow runs
inherit the worker's environment (process pools) or get it from the pool's template (Kubernetes), which is how
the heartbeat reaches every flow run the zombie-run automation watches.
"""

from __future__ import annotations

from infra.config import StackConfig, WorkerConfig

# Where flow code lives inside containers (compose mounts workers.flow_code_dir here when it is set elsewhere).
CONTAINER_FLOW_CODE_DIR = "/opt/prefect/flows"


def worker_command(prefect: str, pool_type: str, name: str, worker: WorkerConfig) -> tuple[str, ...]:
    """``prefect worker start`` for one worker: its pool, queues, limit and health endpoint."""
    command = [prefect, "worker", "start", "--pool", worker.pool, "--type", pool_type, "--name", name,
               "--with-healthcheck", "--install-policy", "never", "--no-create-pool-if-not-found"]
    for queue in worker.queues:
        command += ["--work-queue", queue]
    if worker.limit is not None:
        command += ["--limit", str(worker.limit)]
    return tuple(command)


def worker_settings(config: StackConfig, health_host: str, health_port: int) -> dict[str, str]:
    """The worker's settings from the model (no credentials: the target adds the API's address and secrets)."""
    workers = config.workers
    env = {
        "PREFECT_WORKER_WEBSERVER_HOST": health_host,
        "PREFECT_WORKER_WEBSERVER_PORT": str(health_port),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(workers.flow_heartbeat_s),
        "PREFECT_LOGGING_LEVEL": config.logs.levels.workers,
    }
    if workers.query_interval_s is not None:
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(workers.query_interval_s)
    if workers.prefetch_s is not None:
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = str(workers.prefetch_s)
    return env
