"""What the two targets on one host (local and compose) do the same way: clients reach the API through HAProxy,
Prometheus and Alertmanager are the stack's own on loopback, secrets are files under the state directory, and
destroy deletes that directory's data. Each of those targets builds on this; Kubernetes does none of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.alerts import FiringAlert, alertmanager_url, firing_alerts, prometheus_url
from infra.api_client import load_balancer_environment
from infra.backup.environment import backup_environment
from infra.config import StackConfig
from infra.errors import UserError
from infra.secrets import Secrets, load_secrets
from infra.targets import RestoreRequest


@dataclass
class HostStack:
    config: StackConfig

    def before_deploy(self) -> list[str]:
        return []

    def destroy_refusal(self, volumes: bool) -> UserError:
        return UserError(f"this deletes every flow run, log and secret in {self.config.state_dir}",
                         fix="take a backup first, then run: invoke destroy --yes")

    def client_environment(self) -> dict[str, str]:
        return load_balancer_environment(self.config)

    def backup_environment(self) -> dict[str, str]:
        return backup_environment(self.config)

    def monitoring_environment(self) -> dict[str, str]:
        return {"PROMETHEUS_URL": prometheus_url(self.config), "ALERTMANAGER_URL": alertmanager_url(self.config)}

    def firing_alerts(self) -> list[FiringAlert]:
        return firing_alerts(self.config)

    def load_secrets(self, directory: Path) -> Secrets:
        return load_secrets(directory)

    def refuse_cleanup(self, request: RestoreRequest) -> None:
        """``restore --cleanup`` deletes the Clusters a Kubernetes recovery kept: nothing of the kind on one host."""
        if request.cleanup:
            raise UserError("--cleanup deletes the Clusters a Kubernetes recovery kept; this target has none",
                            fix="leave out --cleanup (or use --target kubernetes)")
