"""Where a deployment keeps its state on a host: one directory, laid out the same for every local deploy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The certificate HTTPS clients of the load balancer trust, rendered into etc/ (the CA of the generated one).
TRUSTED_CA = "lb-ca.crt"


@dataclass(frozen=True)
class StateLayout:
    """Paths below the state directory. Nothing here is in git; secrets and data never leave it."""

    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def etc(self) -> Path:
        """Rendered configuration files (derived from the model; never edit by hand)."""
        return self.root / "etc"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def postgres_data(self) -> Path:
        return self.data / "postgres"

    @property
    def redis_data(self) -> Path:
        return self.data / "redis"

    @property
    def prometheus_data(self) -> Path:
        return self.data / "prometheus"

    @property
    def alertmanager_data(self) -> Path:
        return self.data / "alertmanager"

    @property
    def run(self) -> Path:
        """Sockets and pid files."""
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def postgres_logs(self) -> Path:
        """PostgreSQL's collector writes its jsonlog files here (logs.format json, local target)."""
        return self.logs / "postgres"

    @property
    def prefect_home(self) -> Path:
        return self.root / "home"

    @property
    def supervisor_conf(self) -> Path:
        return self.etc / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run / "supervisor.sock"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.run / "supervisord.pid"

    @property
    def haproxy_socket(self) -> Path:
        return self.run / "haproxy.sock"

    @property
    def metrics(self) -> Path:
        """Prometheus textfile-collector files (node_exporter --collector.textfile.directory)."""
        return self.root / "metrics"

    @property
    def deployed_state(self) -> Path:
        """What the last successful deploy applied: fingerprints per component, versions, ports."""
        return self.root / "deployed.json"

    def log_file(self, program: str) -> Path:
        return self.logs / f"{program}.log"

    def service_owned_dirs(self) -> list[Path]:
        """Directories the unprivileged service user must own."""
        return [self.etc, self.data, self.postgres_data, self.redis_data, self.prometheus_data, self.alertmanager_data,
                self.run, self.logs, self.prefect_home,
                self.logs / "pgbackrest", self.run / "pgbackrest", self.postgres_logs]
