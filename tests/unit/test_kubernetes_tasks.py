"""`invoke deploy|status|render --target kubernetes` through the real CLI, against the stand-in kubectl: the whole
rendering applied phase by phase, secrets only on standard input, and a failure that reads as an operator's
message (phase, problem, fix), never a traceback."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import REPO_ROOT, load_config
from infra.kubernetes.render import reference_rendering
from infra.secrets import load_secrets
from tests.fake_kubectl import StandIn

AWS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-example-secret"}


def _invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _healthy(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as a cluster would report it once it is ready (what status reads after a deploy)."""
    obj = json.loads(json.dumps(obj))
    replicas = obj.get("spec", {}).get("replicas", obj.get("spec", {}).get("instances", 1))
    ready = {"type": "Ready", "status": "True"}
    obj["status"] = {
        "Deployment": {"readyReplicas": replicas, "updatedReplicas": replicas, "observedGeneration": 1},
        "StatefulSet": {"readyReplicas": replicas, "updatedReplicas": replicas, "observedGeneration": 1},
        "Job": {"conditions": [{"type": "Complete", "status": "True"}]},
        "CronJob": {},
        "Cluster": {"conditions": [ready], "phase": "Cluster in healthy state", "readyInstances": replicas},
        "Pooler": {},
    }.get(obj["kind"], {})
    return obj


def _live_objects(stack_file: Path) -> list[dict[str, Any]]:
    """The rendered workloads, ready; each Pooler with the Deployment CloudNativePG makes for it."""
    os.environ["PREFECT_STACK_CONFIG"] = str(stack_file)
    try:
        config = load_config()
    finally:
        del os.environ["PREFECT_STACK_CONFIG"]
    live = [_healthy(o) for o in reference_rendering(config).objects()]
    for pooler in [o for o in live if o["kind"] == "Pooler"]:
        live.append(_healthy({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": pooler["metadata"],
                              "spec": {"replicas": pooler["spec"]["instances"]}}))
    return live


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[StandIn, dict[str, str], Path]:
    standin = StandIn.install(tmp_path, monkeypatch)
    config = tmp_path / "stack.yaml"
    state = tmp_path / "state"
    config.write_text(yaml.safe_dump({"target": "kubernetes", "local": {"state_dir": str(state)},
                                      "kubernetes": {"wait_timeout_s": 30}}))
    standin.script(objects=_live_objects(config))
    env = {**os.environ, **AWS, "PREFECT_STACK_CONFIG": str(config), "KUBECONFIG": str(tmp_path / "none"),
           "NO_COLOR": "1", "COLUMNS": "200"}
    return standin, env, state


class TestDeploy:
    def test_applies_every_phase_in_order(self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        standin, env, _ = cluster
        result = _invoke(["deploy"], env)
        assert result.returncode == 0, result.stdout + result.stderr
        applied = [yaml.safe_load_all(c.stdin) for c in standin.calls() if c.verb == "apply"]
        kinds = [[o["kind"] for o in objects] for objects in applied]
        assert kinds[0][0] == "Namespace"
        assert ["Job"] in kinds  # the migration alone, between the data layer and the apps
        assert "deployed to namespace prefect" in result.stdout + result.stderr

    def test_secrets_only_on_standard_input(self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        standin, env, state = cluster
        assert _invoke(["deploy"], env).returncode == 0
        secrets = load_secrets(state / "secrets")
        value = secrets.get("postgres_superuser")
        calls = standin.calls()
        encoded = base64.b64encode(value.encode()).decode()  # a Secret's data is base64
        assert any(encoded in c.stdin for c in calls if c.verb == "apply")
        for form in (value, encoded):
            assert not any(form in " ".join(c.argv) for c in calls)
            assert not any(form in " ".join(f"{k}={v}" for k, v in c.env.items()) for c in calls)

    def test_a_cluster_that_never_gets_ready_names_the_phase(
            self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        standin, env, _ = cluster
        standin.script(conditions={"cluster.postgresql.cnpg.io/prefect-db": {"condition=Ready": False}},
                       objects=[])
        result = _invoke(["deploy"], env)
        assert result.returncode == 1
        assert "data" in result.stderr and "fix:" in result.stderr
        assert "Traceback" not in result.stderr
        later = [c for c in standin.calls() if c.verb == "apply" and "kind: Job" in c.stdin]
        assert later == []

    def test_missing_aws_keys_stop_before_the_cluster(self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        standin, env, _ = cluster
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
        result = _invoke(["deploy"], env)
        assert result.returncode == 1 and "AWS_ACCESS_KEY_ID" in result.stderr
        assert not [c for c in standin.calls() if c.verb == "apply"]


class TestOtherTasks:
    def test_status_reads_the_cluster(self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        standin, env, _ = cluster
        _invoke(["status"], env)
        assert any(c.verb == "get" for c in standin.calls())

    def test_env_points_clients_at_the_ingress(self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        _, env, state = cluster
        assert _invoke(["deploy"], env).returncode == 0
        result = _invoke(["env"], env)
        assert result.returncode == 0, result.stderr
        assert "export PREFECT_API_URL=https://prefect.example.com/api" in result.stdout
        assert load_secrets(state / "secrets").get("prefect_auth") in result.stdout

    def test_unsupported_task_names_the_alternative(self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        _, env, _ = cluster
        result = _invoke(["stop"], env)
        assert result.returncode == 1 and "kubectl" in result.stderr and "Traceback" not in result.stderr

    def test_restore_asks_for_confirmation_naming_what_it_deletes(
            self, cluster: tuple[StandIn, dict[str, str], Path]) -> None:
        standin, env, _ = cluster
        result = _invoke(["restore", "--target", "kubernetes"], env)
        assert result.returncode == 1 and "--yes" in result.stderr and "archive" in result.stderr
        assert not [c for c in standin.calls() if c.verb in ("scale", "delete")]

    def test_render_out_writes_a_buildable_tree(self, cluster: tuple[StandIn, dict[str, str], Path],
                                                tmp_path: Path) -> None:
        _, env, _ = cluster
        out = tmp_path / "rendered"
        result = _invoke(["render", "--target", "kubernetes", "--out", str(out)], env)
        assert result.returncode == 0, result.stderr
        built = subprocess.run(["/usr/bin/kubectl", "kustomize", str(out / "overlays" / "example")],
                               capture_output=True, text=True, check=True, timeout=60).stdout
        assert "kind: Deployment" in built

