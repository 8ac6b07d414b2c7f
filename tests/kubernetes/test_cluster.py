"""The Kubernetes target on a real cluster: what no offline test can show (see conftest.py for what it needs)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
import yaml

from tests.kubernetes.conftest import ClusterStack, load_during

pytestmark = pytest.mark.kubernetes_cluster


def test_every_component_is_ready(cluster_stack: ClusterStack) -> None:
    result = cluster_stack.invoke("status", "--target", "kubernetes", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_second_deploy_changes_nothing_and_succeeds(cluster_stack: ClusterStack) -> None:
    result = cluster_stack.invoke("deploy", "--target", "kubernetes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pruned 0 objects" in result.stderr


# The flow's code reaches the flow-run pod the way a deployment's pull steps bring code: written into its working
# directory (an emptyDir) by a pull step, so the test needs no registry or git server of its own.
FLOW_CODE = """
from prefect import flow, get_run_logger


@flow
def hello_from_a_job() -> str:
    get_run_logger().info("hello from a Kubernetes Job")
    return "done"
"""


def test_a_flow_runs_as_a_job_through_the_provisioned_pool(cluster_stack: ClusterStack) -> None:
    encoded = base64.b64encode(FLOW_CODE.encode()).decode()
    write = (f"python -c \"import base64, pathlib; pathlib.Path('k8s_flow.py')"
             f".write_bytes(base64.b64decode('{encoded}'))\"")
    with cluster_stack.client() as client:
        pool = client.get("/work_pools/default")
        assert pool.status_code == 200 and pool.json()["type"] == "kubernetes", pool.text
        flow_id = client.post("/flows/", json={"name": "hello-from-a-job"}).json()["id"]
        deployment = client.post("/deployments/", json={
            "name": "cluster-test", "flow_id": flow_id, "work_pool_name": "default",
            "entrypoint": "k8s_flow.py:hello_from_a_job",
            "pull_steps": [{"prefect.deployments.steps.run_shell_script": {"script": write}}]})
        assert deployment.status_code in (200, 201), deployment.text
        run = client.post(f"/deployments/{deployment.json()['id']}/create_flow_run", json={}).json()["id"]
        deadline = time.monotonic() + 600
        state = None
        while time.monotonic() < deadline:
            state = client.get(f"/flow_runs/{run}").json()["state"]["type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(3)
        assert state == "COMPLETED", f"flow run {run} ended {state}"
        logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run]}}}).json()
        assert any("hello from a Kubernetes Job" in line["message"] for line in logs)
    # It ran as a Job of the pool's template: in the flow-run namespace, hardened, without a token.
    jobs = cluster_stack.get("job", "-l", f"prefect.io/flow-run-id={run}")["items"]
    assert len(jobs) == 1
    pod = jobs[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{cluster_stack.name}-flow-run"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    auth = next(e for e in pod["containers"][0]["env"] if e["name"] == "PREFECT_API_AUTH_STRING")
    assert "value" not in auth and auth["valueFrom"]["secretKeyRef"]["key"] == "prefect_auth"


def test_rollout_under_load_fails_no_request(cluster_stack: ClusterStack) -> None:
    api = f"deployment/{cluster_stack.name}-api"

    def rollout() -> None:
        cluster_stack.kubectl("rollout", "restart", api)
        cluster_stack.kubectl("rollout", "status", api, "--timeout=600s")

    result = load_during(cluster_stack, rollout)
    assert result.failures == []


def test_an_api_pod_killed_under_load_fails_no_request(cluster_stack: ClusterStack) -> None:
    pods = cluster_stack.get("pod", "-l", f"app.kubernetes.io/name=api,app.kubernetes.io/instance={cluster_stack.name}")
    victim = pods["items"][0]["metadata"]["name"]

    def kill() -> None:
        cluster_stack.kubectl("delete", "pod", victim, "--grace-period=0", "--force")
        cluster_stack.kubectl("rollout", "status", f"deployment/{cluster_stack.name}-api", "--timeout=600s")

    result = load_during(cluster_stack, kill)
    assert result.failures == []


def test_database_switchover_keeps_every_run(cluster_stack: ClusterStack) -> None:
    cluster = f"{cluster_stack.name}-db"
    status = cluster_stack.get("cluster.postgresql.cnpg.io", cluster)["status"]
    primary = status["currentPrimary"]
    replica = next(p for p in status["instancesStatus"]["healthy"] if p != primary)

    def switchover() -> None:
        # What `kubectl cnpg promote` does: the operator switches over to the named instance.
        cluster_stack.kubectl("patch", "cluster.postgresql.cnpg.io", cluster, "--type=merge", "--subresource=status",
                              "-p", f'{{"status":{{"targetPrimary":"{replica}"}}}}')
        cluster_stack.wait_until("the switchover", lambda: cluster_stack.get(
            "cluster.postgresql.cnpg.io", cluster)["status"].get("currentPrimary") == replica)

    result = load_during(cluster_stack, switchover)
    with cluster_stack.client() as client:
        missing = [run for run in result.created if client.get(f"/flow_runs/{run}").status_code != 200]
        assert client.post("/flows/", json={"name": "after-switchover"}).status_code in (200, 201)
    assert missing == [], f"{len(missing)} acknowledged runs lost ({len(result.failures)} requests failed)"


def test_redis_primary_killed_services_keep_persisting_events(cluster_stack: ClusterStack) -> None:
    name = cluster_stack.name
    pods = cluster_stack.get("pod", "-l", f"app.kubernetes.io/name=redis,app.kubernetes.io/instance={name}")["items"]
    roles = {p["metadata"]["name"]: cluster_stack.kubectl(
        "exec", p["metadata"]["name"], "-c", "redis", "--", "sh", "-c",
        'REDISCLI_AUTH="$(cat /etc/redis-secret/password)" redis-cli role | head -1') for p in pods}
    primary = next(pod for pod, role in roles.items() if role.strip() == "master")
    cluster_stack.kubectl("delete", "pod", primary, "--grace-period=0", "--force")

    def new_primary() -> bool:
        for pod in roles:
            if pod == primary:
                continue
            role = cluster_stack.kubectl("exec", pod, "-c", "redis", "--", "sh", "-c",
                                         'REDISCLI_AUTH="$(cat /etc/redis-secret/password)" redis-cli role | head -1',
                                         check=False)
            if role.strip() == "master":
                return True
        return False

    cluster_stack.wait_until("a replica promoted by the Sentinels", new_primary, timeout_s=120)
    with cluster_stack.client() as client:
        flow = client.post("/flows/", json={"name": "after-redis-failover"}).json()["id"]
        run = client.post("/flow_runs/", json={"flow_id": flow, "state": {"type": "PENDING"}}).json()["id"]
        assert client.post(f"/flow_runs/{run}/set_state", json={"state": {"type": "RUNNING"}}).is_success

        def event_persisted() -> bool:
            body = {"filter": {"resource": {"id": [f"prefect.flow-run.{run}"]}}}
            return bool(client.post("/events/filter", json=body).json().get("events"))

        cluster_stack.wait_until("the state change persisted as an event", event_persisted, timeout_s=180)


def test_backup_job_backs_up_and_verifies(cluster_stack: ClusterStack) -> None:
    job = f"{cluster_stack.name}-backup-now"
    cluster_stack.kubectl("create", "job", job, f"--from=cronjob/{cluster_stack.name}-backup")
    cluster_stack.kubectl("wait", "--for=condition=complete", f"job/{job}", "--timeout=1800s", timeout=1900)
    s3 = boto3.client("s3", endpoint_url=os.environ["PREFECT_STACK_TEST_S3_ENDPOINT"])
    listed = s3.list_objects_v2(Bucket=os.environ["PREFECT_STACK_TEST_S3_BUCKET"],
                                Prefix=f"{cluster_stack.namespace}/logical/")
    assert any(item["Key"].endswith("manifest.json") for item in listed.get("Contents", []))


def test_point_in_time_recovery_brings_back_exactly_the_past(cluster_stack: ClusterStack) -> None:
    """Last: it replaces the session's database. Needs the Barman Cloud plugin in the cluster."""
    if os.environ.get("PREFECT_STACK_TEST_PHYSICAL_BACKUPS") != "1":
        pytest.skip("set PREFECT_STACK_TEST_PHYSICAL_BACKUPS=1 when the cluster has the Barman Cloud plugin")
    name = cluster_stack.name
    with cluster_stack.client() as client:
        before = client.post("/flows/", json={"name": "before-the-mistake"}).json()["id"]
    # A base backup now (what the ScheduledBackup does nightly), then the moment to return to.
    backup = {"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup",
              "metadata": {"name": f"{name}-pitr-base", "namespace": cluster_stack.namespace},
              "spec": {"cluster": {"name": f"{name}-db"}, "method": "plugin",
                       "pluginConfiguration": {"name": "barman-cloud.cloudnative-pg.io"}}}
    subprocess.run(["kubectl", "apply", "-f", "-"], input=json.dumps(backup), text=True, check=True,
                   env=cluster_stack.env, timeout=120)
    cluster_stack.wait_until("the base backup", lambda: cluster_stack.get(
        "backup.postgresql.cnpg.io", f"{name}-pitr-base").get("status", {}).get("phase") == "completed",
        timeout_s=1200)
    target = datetime.now(UTC).isoformat(timespec="seconds")
    cluster_stack.wait_until("a second past the target", lambda: datetime.now(UTC).isoformat() > target)
    with cluster_stack.client() as client:
        after = client.post("/flows/", json={"name": "the-mistake"}).json()["id"]
    # The WAL holding `after` must reach the archive (archive_timeout is 60 s) before it can be left out on purpose.
    cluster_stack.kubectl("exec", f"{name}-db-1", "-c", "postgres", "--", "psql", "-c", "SELECT pg_switch_wal()",
                          check=False)
    config_file = Path(cluster_stack.env["PREFECT_STACK_CONFIG"])
    config = yaml.safe_load(config_file.read_text())
    config["kubernetes"]["postgres"] = {"recovery": {"enabled": True, "target_time": target,
                                                     "server_name": f"{name}-db-r1"}}
    config_file.write_text(yaml.safe_dump(config))
    result = cluster_stack.invoke("restore", "--target", "kubernetes", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    with cluster_stack.client() as client:
        assert client.get(f"/flows/{before}").status_code == 200
        assert client.get(f"/flows/{after}").status_code == 404
