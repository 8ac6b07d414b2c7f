"""The Kubernetes target's Redis objects and URLs, rendered once per mode and checked as plain dicts."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from infra.config import StackConfig, load_config
from infra.containers.entrypoint import _redis_run_id
from infra.errors import UserError
from infra.kubernetes.objects import LABEL_NAME, Manifest, Names, selector
from infra.kubernetes.redis import (
    DOWN_AFTER_MS,
    MASTER_SET,
    PASSWORD_PLACEHOLDER,
    SENTINEL_PORT,
    min_replicas_to_write,
    quorum,
    redis_environment,
    redis_manifests,
)
from infra.kubernetes.render import PlaceholderImages
from infra.render.redis import DOCKET_DB, MESSAGING_DB
from infra.secrets import Secrets, ensure_secrets
from tests import kubernetes_checks as checks

SENTINEL = {"kubernetes": {"redis": {"mode": "sentinel"}}}
STANDALONE = {"kubernetes": {"redis": {"mode": "standalone"}}}
EXTERNAL = {"kubernetes": {"redis": {"mode": "external", "external_url": "redis://redis.example.com:6380"}}}


def config(**overrides: Any) -> StackConfig:
    return load_config(target="kubernetes", **overrides)


@cache
def rendered(mode: str) -> tuple[Manifest, ...]:
    overrides = {"sentinel": SENTINEL, "standalone": STANDALONE, "external": EXTERNAL}[mode]
    return tuple(redis_manifests(config(**overrides), PlaceholderImages()))


def one(mode: str, kind: str) -> Manifest:
    [manifest] = [m for m in rendered(mode) if m.kind == kind]
    return manifest


def pod_spec_of(mode: str) -> dict[str, Any]:
    return one(mode, "StatefulSet").obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(mode: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec_of(mode)["containers"]}


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    return ensure_secrets(tmp_path_factory.mktemp("redis") / "secrets")


class TestSentinelMode:
    @pytest.mark.parametrize(("kind", "phase", "component"), [
        ("ConfigMap", "data", "redis-sentinel"),
        ("StatefulSet", "data", "redis-sentinel"),
        ("PodDisruptionBudget", "data", "redis-sentinel"),
        ("NetworkPolicy", "namespace", "network-policies"),
        ("PodMonitor", "monitoring", "monitoring"),
    ])
    def test_phase_and_component(self, kind: str, phase: str, component: str) -> None:
        manifest = one("sentinel", kind)
        assert (manifest.phase, manifest.component) == (phase, component)

    @pytest.mark.parametrize("name", [Names("prefect").redis_headless, Names("prefect").redis_sentinel])
    def test_services(self, name: str) -> None:
        services = {m.name: m for m in rendered("sentinel") if m.kind == "Service"}
        assert services[name].component == "redis-sentinel"

    def test_replicas(self) -> None:
        assert one("sentinel", "StatefulSet").obj["spec"]["replicas"] == 3

    def test_containers(self) -> None:
        assert list(containers("sentinel")) == ["redis", "sentinel", "exporter"]

    def test_quorum_is_a_majority(self) -> None:
        sentinel_conf = one("sentinel", "ConfigMap").obj["data"]["sentinel.conf"]
        assert f"sentinel monitor {MASTER_SET} @MASTER_HOST@ @MASTER_PORT@ 2\n" in sentinel_conf

    @pytest.mark.parametrize(("replicas", "expected"), [(3, 2), (4, 3), (5, 3), (9, 5)])
    def test_quorum(self, replicas: int, expected: int) -> None:
        assert quorum(replicas) == expected

    @pytest.mark.parametrize("setting", ["sentinel resolve-hostnames yes", "sentinel announce-hostnames yes",
                                         f"sentinel auth-pass {MASTER_SET} {PASSWORD_PLACEHOLDER}",
                                         f"requirepass {PASSWORD_PLACEHOLDER}"])
    def test_sentinel_setting(self, setting: str) -> None:
        assert setting in one("sentinel", "ConfigMap").obj["data"]["sentinel.conf"].splitlines()

    @pytest.mark.parametrize("setting", ["appendonly yes", "maxmemory 512mb", "maxmemory-policy noeviction",
                                         f"requirepass {PASSWORD_PLACEHOLDER}", f"masterauth {PASSWORD_PLACEHOLDER}",
                                         "replica-announce-ip @ANNOUNCE_HOST@", "dir /data"])
    def test_redis_setting(self, setting: str) -> None:
        assert setting in one("sentinel", "ConfigMap").obj["data"]["redis.conf"].splitlines()

    def test_monitor_user_in_redis_conf(self) -> None:
        redis_conf = one("sentinel", "ConfigMap").obj["data"]["redis.conf"]
        assert "user monitor on >@MONITOR_PASSWORD@ ~* resetchannels -@all +ping +info" in redis_conf

    def test_headless_service_publishes_unready_pods(self) -> None:
        [service] = [m for m in rendered("sentinel") if m.name == Names("prefect").redis_headless]
        assert service.obj["spec"]["clusterIP"] == "None" and service.obj["spec"]["publishNotReadyAddresses"]

    def test_stateful_set_uses_the_headless_service(self) -> None:
        assert one("sentinel", "StatefulSet").obj["spec"]["serviceName"] == Names("prefect").redis_headless

    def test_sentinel_service_port(self) -> None:
        [service] = [m for m in rendered("sentinel") if m.name == Names("prefect").redis_sentinel]
        assert [p["port"] for p in service.obj["spec"]["ports"]] == [SENTINEL_PORT]

    def test_pdb_allows_one_disruption(self) -> None:
        assert one("sentinel", "PodDisruptionBudget").obj["spec"]["maxUnavailable"] == 1

    def test_pdb_selects_exactly_the_stateful_set_pods(self) -> None:
        pdb = one("sentinel", "PodDisruptionBudget").obj["spec"]["selector"]["matchLabels"]
        stateful_set = one("sentinel", "StatefulSet").obj["spec"]
        assert pdb == stateful_set["selector"]["matchLabels"]

    def test_pod_labels_match_the_selector(self) -> None:
        stateful_set = one("sentinel", "StatefulSet").obj["spec"]
        pod_labels = stateful_set["template"]["metadata"]["labels"]
        assert stateful_set["selector"]["matchLabels"].items() <= pod_labels.items()

    def test_volume_claim(self) -> None:
        [claim] = one("sentinel", "StatefulSet").obj["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"

    def test_storage_class(self) -> None:
        manifests = redis_manifests(config(kubernetes={"storage_class": "fast-ssd"}), PlaceholderImages())
        [stateful_set] = [m for m in manifests if m.kind == "StatefulSet"]
        assert stateful_set.obj["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"

    def test_spread_across_zones_preferred(self) -> None:
        [zones] = pod_spec_of("sentinel")["topologySpreadConstraints"]
        assert (zones["topologyKey"], zones["whenUnsatisfiable"]) == ("topology.kubernetes.io/zone", "ScheduleAnyway")

    def test_one_redis_per_node_required(self) -> None:
        """Two of three on one node would lose the Sentinels' majority with that node: no failover then."""
        anti_affinity = pod_spec_of("sentinel")["affinity"]["podAntiAffinity"]
        assert "preferredDuringSchedulingIgnoredDuringExecution" not in anti_affinity
        [term] = anti_affinity["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == selector(config(), "redis")

    def test_redis_resources_from_the_model(self) -> None:
        assert containers("sentinel")["redis"]["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                               "limits": {"cpu": "500m", "memory": "1Gi"}}

    @pytest.mark.parametrize("name", ["redis", "sentinel"])
    def test_announces_the_pod_dns_name(self, name: str) -> None:
        env = {e["name"]: e.get("value") for e in containers("sentinel")[name]["env"]}
        assert env["ANNOUNCE_HOST"] == "$(POD_NAME).prefect-redis-headless.prefect.svc"

    @pytest.mark.parametrize("name", ["redis", "sentinel", "exporter"])
    def test_pod_name_defined_first(self, name: str) -> None:
        # $(POD_NAME) expands only in variables defined after it.
        assert containers("sentinel")[name]["env"][0]["name"] == "POD_NAME"

    def test_pre_stop_hands_over_the_primary(self) -> None:
        assert containers("sentinel")["redis"]["lifecycle"]["preStop"]["exec"]["command"] == \
            ["sh", "/etc/redis-scripts/pre-stop.sh"]

    def test_grace_period_outlasts_the_pre_stop(self) -> None:
        # pre-stop.sh: 3 s for a replica to catch up, a failover, 10 s for the Sentinels to agree.
        assert pod_spec_of("sentinel")["terminationGracePeriodSeconds"] >= 30

    def test_readiness_checks_replication(self) -> None:
        probe = containers("sentinel")["redis"]["readinessProbe"]["exec"]["command"]
        assert probe[-1] == "redis-ready"

    def test_exporter_does_not_decide_readiness(self) -> None:
        # A sidecar's failing readiness probe would take the whole Redis pod out of rotation.
        exporter = containers("sentinel")["exporter"]
        assert ("readinessProbe" in exporter, exporter["livenessProbe"]["tcpSocket"]) == (False, {"port": "metrics"})

    def test_readiness_script_requires_the_link_of_a_replica(self) -> None:
        assert "master_link_status:up" in one("sentinel", "ConfigMap").obj["data"]["probe.sh"]

    def test_no_exporter_without_monitoring(self) -> None:
        manifests = redis_manifests(config(monitoring={"enabled": False}), PlaceholderImages())
        [stateful_set] = [m for m in manifests if m.kind == "StatefulSet"]
        assert [c["name"] for c in stateful_set.obj["spec"]["template"]["spec"]["containers"]] == ["redis",
                                                                                                  "sentinel"]

    def test_no_pod_monitor_without_monitoring(self) -> None:
        manifests = redis_manifests(config(monitoring={"enabled": False}), PlaceholderImages())
        assert "PodMonitor" not in {m.kind for m in manifests}

    def test_pod_monitor_release_label(self) -> None:
        assert one("sentinel", "PodMonitor").obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    def test_pod_monitor_port_is_the_exporter_port(self) -> None:
        [endpoint] = one("sentinel", "PodMonitor").obj["spec"]["podMetricsEndpoints"]
        assert {"name": endpoint["port"], "containerPort": 9121, "protocol": "TCP"} in \
            containers("sentinel")["exporter"]["ports"]

    def test_pod_monitor_matches_its_crd(self) -> None:
        assert checks.schema_problems(one("sentinel", "PodMonitor").obj, "1.32") == []

    def test_config_change_rolls_the_pods(self) -> None:
        other = redis_manifests(config(redis={"maxmemory": "256mb"}), PlaceholderImages())
        [stateful_set] = [m for m in other if m.kind == "StatefulSet"]
        annotation = "prefect-stack/config-hash"
        assert stateful_set.obj["spec"]["template"]["metadata"]["annotations"][annotation] != \
            one("sentinel", "StatefulSet").obj["spec"]["template"]["metadata"]["annotations"][annotation]


class TestStandaloneMode:
    def test_one_replica(self) -> None:
        assert one("standalone", "StatefulSet").obj["spec"]["replicas"] == 1

    def test_in_the_base(self) -> None:
        assert {m.component for m in rendered("standalone") if m.kind != "NetworkPolicy"
                and m.kind != "PodMonitor"} == {None}

    def test_service(self) -> None:
        service = one("standalone", "Service").obj
        assert (service["metadata"]["name"], [p["port"] for p in service["spec"]["ports"]]) == ("prefect-redis",
                                                                                                [6379])

    def test_no_pdb(self) -> None:
        assert "PodDisruptionBudget" not in {m.kind for m in rendered("standalone")}

    def test_no_sentinel(self) -> None:
        assert "sentinel" not in containers("standalone")

    def test_no_sentinel_config(self) -> None:
        assert "sentinel.conf" not in one("standalone", "ConfigMap").obj["data"]

    def test_no_pre_stop(self) -> None:
        assert "lifecycle" not in containers("standalone")["redis"]

    def test_no_replication_settings(self) -> None:
        assert "masterauth" not in one("standalone", "ConfigMap").obj["data"]["redis.conf"]

    def test_writes_need_no_replica(self) -> None:
        # Redis's default min-replicas-to-write is 0: a single Redis must keep it.
        assert "min-replicas" not in one("standalone", "ConfigMap").obj["data"]["redis.conf"]


class TestWritesNeedAMajority:
    """A primary partitioned away from the Sentinels' majority stops accepting writes the failover would drop."""

    @pytest.mark.parametrize(("replicas", "needed"), [(3, 1), (4, 2), (5, 2), (7, 3)])
    def test_replicas_a_primary_must_reach(self, replicas: int, needed: int) -> None:
        redis_conf = redis_manifests(config(kubernetes={"redis": {"replicas": replicas}}),
                                     PlaceholderImages())[0].obj["data"]["redis.conf"]
        assert f"min-replicas-to-write {needed}" in redis_conf.splitlines()

    def test_lag_is_the_sentinels_down_after(self) -> None:
        lines = one("sentinel", "ConfigMap").obj["data"]["redis.conf"].splitlines()
        assert f"min-replicas-max-lag {DOWN_AFTER_MS // 1000}" in lines

    @pytest.mark.parametrize("replicas", [3, 4, 5, 9])
    def test_a_minority_side_cannot_write_a_majority_side_can(self, replicas: int) -> None:
        # A primary reaches the replicas on its side: at most replicas // 2 - 1 in a group without a majority
        # (replicas // 2 pods), at least quorum - 1 in a majority.
        assert replicas // 2 - 1 < min_replicas_to_write(replicas) <= quorum(replicas) - 1


class TestExternalMode:
    def test_no_objects(self) -> None:
        assert rendered("external") == ()


ALL_MODES = ["sentinel", "standalone"]


def all_objects() -> list[tuple[str, Manifest]]:
    return [(mode, m) for mode in ALL_MODES for m in rendered(mode)]


class TestEveryObject:
    @pytest.mark.parametrize(("mode", "manifest"), [(mode, m) for mode, m in all_objects()
                                                    if not m.api_version.startswith("monitoring.coreos.com")],
                             ids=lambda v: getattr(v, "file_name", v))
    def test_valid_for_kubernetes(self, mode: str, manifest: Manifest) -> None:
        assert checks.schema_problems(manifest.obj, "1.32") == []

    @pytest.mark.parametrize(("mode", "manifest"), all_objects(), ids=lambda v: getattr(v, "file_name", v))
    def test_no_secret_value(self, mode: str, manifest: Manifest, secrets: Secrets) -> None:
        text = json.dumps(manifest.obj)
        assert not [name for name in ("redis", "redis_monitor") if secrets.get(name) in text]

    @pytest.mark.parametrize(("mode", "manifest"), all_objects(), ids=lambda v: getattr(v, "file_name", v))
    def test_namespaced(self, mode: str, manifest: Manifest) -> None:
        assert manifest.obj["metadata"]["namespace"] == "prefect"

    @pytest.mark.parametrize(("mode", "name"), [(mode, name) for mode in ALL_MODES for name in containers(mode)])
    def test_container_hardened(self, mode: str, name: str) -> None:
        context = containers(mode)[name]["securityContext"]
        assert (context["readOnlyRootFilesystem"], context["allowPrivilegeEscalation"], context["runAsUser"],
                context["capabilities"]) == (True, False, 10001, {"drop": ["ALL"]})

    @pytest.mark.parametrize(("mode", "name"), [(mode, name) for mode in ALL_MODES for name in containers(mode)])
    def test_container_has_limits(self, mode: str, name: str) -> None:
        assert "memory" in containers(mode)[name]["resources"]["limits"]

    @pytest.mark.parametrize("mode", ALL_MODES)
    def test_no_service_account_token(self, mode: str) -> None:
        assert pod_spec_of(mode)["automountServiceAccountToken"] is False

    @pytest.mark.parametrize("mode", ALL_MODES)
    def test_secret_mounted_by_name(self, mode: str) -> None:
        secret_names = {v["secret"]["secretName"] for v in pod_spec_of(mode)["volumes"] if "secret" in v}
        assert secret_names == {Names("prefect").secret_redis}

    @pytest.mark.parametrize("mode", ALL_MODES)
    def test_config_map_mounted_exists(self, mode: str) -> None:
        mounted = {v["configMap"]["name"] for v in pod_spec_of(mode)["volumes"] if "configMap" in v}
        assert mounted == {m.name for m in rendered(mode) if m.kind == "ConfigMap"}

    @pytest.mark.parametrize("mode", ALL_MODES)
    def test_services_select_the_pods(self, mode: str) -> None:
        pod_labels = one(mode, "StatefulSet").obj["spec"]["template"]["metadata"]["labels"]
        assert all(m.obj["spec"]["selector"].items() <= pod_labels.items()
                   for m in rendered(mode) if m.kind == "Service")


class TestScripts:
    @pytest.mark.parametrize(("mode", "script"), [(mode, name) for mode in ALL_MODES
                                                  for name in one(mode, "ConfigMap").obj["data"]
                                                  if name.endswith(".sh")])
    def test_parses_as_posix_sh(self, mode: str, script: str) -> None:
        text = one(mode, "ConfigMap").obj["data"][script]
        result = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr

    @pytest.mark.parametrize("mode", ALL_MODES)
    def test_no_placeholder_unfilled(self, mode: str) -> None:
        data = one(mode, "ConfigMap").obj["data"]
        templates = data["redis.conf"] + data.get("sentinel.conf", "")
        placeholders = set(re.findall(r"@([A-Z_]+)@", templates))
        filled = set(re.findall(r"@([A-Z_]+)@|([A-Z_]+)=\$", data["common.sh"] + data["start-redis.sh"]
                                + data.get("start-sentinel.sh", "")))
        assert placeholders <= {name for pair in filled for name in pair if name}


def network_policy(mode: str = "sentinel") -> dict[str, Any]:
    return one(mode, "NetworkPolicy").obj["spec"]  # type: ignore[no-any-return]


class TestNetworkPolicy:
    def test_selects_the_redis_pods(self) -> None:
        assert network_policy()["podSelector"]["matchLabels"] == selector(config(), "redis")

    @pytest.mark.parametrize("client", ["api", "services", "exporter", "redis"])
    def test_clients_allowed_in(self, client: str) -> None:
        [rule] = [r for r in network_policy()["ingress"] if {"port": 6379, "protocol": "TCP"} in r["ports"]]
        assert {"podSelector": {"matchLabels": selector(config(), client)}} in rule["from"]

    def test_sentinel_port_open_to_clients(self) -> None:
        [rule] = [r for r in network_policy()["ingress"] if {"port": 6379, "protocol": "TCP"} in r["ports"]]
        assert {"port": SENTINEL_PORT, "protocol": "TCP"} in rule["ports"]

    def test_no_sentinel_port_in_standalone(self) -> None:
        ports = [p["port"] for r in network_policy("standalone")["ingress"] for p in r["ports"]]
        assert SENTINEL_PORT not in ports

    def test_prometheus_namespace_reaches_the_exporter(self) -> None:
        [rule] = [r for r in network_policy()["ingress"] if {"port": 9121, "protocol": "TCP"} in r["ports"]]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    def test_egress_dns(self) -> None:
        assert {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]} in \
            network_policy()["egress"]

    def test_egress_to_the_redis_pods(self) -> None:
        [rule] = [r for r in network_policy()["egress"] if "to" in r]
        assert rule["to"] == [{"podSelector": {"matchLabels": {LABEL_NAME: "redis", "app.kubernetes.io/instance":
                                                               "prefect"}}}]

    def test_none_when_turned_off(self) -> None:
        manifests = redis_manifests(config(kubernetes={"network_policies": False}), PlaceholderImages())
        assert "NetworkPolicy" not in {m.kind for m in manifests}


def parsed_by_prefect_redis(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    from prefect_redis.connection import _parse_sentinel_url

    return _parse_sentinel_url(url)  # type: ignore[no-any-return]


class TestEnvironment:
    @pytest.mark.parametrize("name", ["PREFECT_REDIS_MESSAGING_URL", "PREFECT_SERVER_DOCKET_URL"])
    def test_sentinel_members_are_every_pod(self, name: str, secrets: Secrets) -> None:
        members, _, _, _ = parsed_by_prefect_redis(redis_environment(config(**SENTINEL), secrets)[name])
        assert members == [(f"prefect-redis-{i}.prefect-redis-headless.prefect.svc", 26379) for i in range(3)]

    @pytest.mark.parametrize("name", ["PREFECT_REDIS_MESSAGING_URL", "PREFECT_SERVER_DOCKET_URL"])
    def test_sentinel_master_name(self, name: str, secrets: Secrets) -> None:
        _, master, _, _ = parsed_by_prefect_redis(redis_environment(config(**SENTINEL), secrets)[name])
        assert master == MASTER_SET

    @pytest.mark.parametrize("name", ["PREFECT_REDIS_MESSAGING_URL", "PREFECT_SERVER_DOCKET_URL"])
    def test_sentinel_password(self, name: str, secrets: Secrets) -> None:
        _, _, sentinel_kwargs, _ = parsed_by_prefect_redis(redis_environment(config(**SENTINEL), secrets)[name])
        assert sentinel_kwargs == {"password": secrets.get("redis")}

    @pytest.mark.parametrize("name", ["PREFECT_REDIS_MESSAGING_URL", "PREFECT_SERVER_DOCKET_URL"])
    def test_data_node_password(self, name: str, secrets: Secrets) -> None:
        _, _, _, options = parsed_by_prefect_redis(redis_environment(config(**SENTINEL), secrets)[name])
        assert options["password"] == secrets.get("redis")

    @pytest.mark.parametrize(("name", "db"), [("PREFECT_REDIS_MESSAGING_URL", MESSAGING_DB),
                                              ("PREFECT_SERVER_DOCKET_URL", DOCKET_DB)])
    def test_sentinel_db(self, name: str, db: int, secrets: Secrets) -> None:
        _, _, _, options = parsed_by_prefect_redis(redis_environment(config(**SENTINEL), secrets)[name])
        assert options["db"] == db

    def test_docket_parses_the_same(self, secrets: Secrets) -> None:
        from docket._redis_sentinel import parse_sentinel_url

        parsed = parse_sentinel_url(redis_environment(config(**SENTINEL), secrets)["PREFECT_SERVER_DOCKET_URL"])
        assert (parsed.service_name, parsed.db, parsed.sentinel_kwargs["password"],
                parsed.connection_kwargs["password"]) == (MASTER_SET, DOCKET_DB, secrets.get("redis"),
                                                          secrets.get("redis"))

    @pytest.mark.parametrize(("name", "db"), [("PREFECT_REDIS_MESSAGING_URL", MESSAGING_DB),
                                              ("PREFECT_SERVER_DOCKET_URL", DOCKET_DB)])
    def test_standalone(self, name: str, db: int, secrets: Secrets) -> None:
        assert redis_environment(config(**STANDALONE), secrets)[name] == \
            f"redis://:{secrets.get('redis')}@prefect-redis.prefect.svc:6379/{db}"

    @pytest.mark.parametrize(("name", "db"), [("PREFECT_REDIS_MESSAGING_URL", MESSAGING_DB),
                                              ("PREFECT_SERVER_DOCKET_URL", DOCKET_DB)])
    def test_external(self, name: str, db: int, secrets: Secrets) -> None:
        assert redis_environment(config(**EXTERNAL), secrets)[name] == \
            f"redis://:{secrets.get('redis')}@redis.example.com:6380/{db}"

    def test_external_sentinel(self, secrets: Secrets) -> None:
        external = {"kubernetes": {"redis": {"mode": "external",
                                             "external_url": "redis+sentinel://s1:26379,s2:26379/main"}}}
        assert redis_environment(config(**external), secrets)["PREFECT_SERVER_DOCKET_URL"] == \
            f"redis+sentinel://:{secrets.get('redis')}@s1:26379,s2:26379/main/{DOCKET_DB}"

    def test_external_with_a_database_is_refused(self, secrets: Secrets) -> None:
        external = {"kubernetes": {"redis": {"mode": "external", "external_url": "redis://r:6379/3"}}}
        with pytest.raises(UserError, match="must not name a database"):
            redis_environment(config(**external), secrets)

    @pytest.mark.parametrize("mode", [SENTINEL, STANDALONE, EXTERNAL])
    def test_no_discrete_settings(self, mode: dict[str, Any], secrets: Secrets) -> None:
        # prefect-redis warns and ignores HOST/PORT/... beside a URL.
        discrete = {"HOST", "PORT", "DB", "USERNAME", "PASSWORD", "SSL"}
        assert not [k for k in redis_environment(config(**mode), secrets)
                    if k.removeprefix("PREFECT_REDIS_MESSAGING_") in discrete]

    @pytest.mark.parametrize("mode", [SENTINEL, STANDALONE, EXTERNAL])
    @pytest.mark.parametrize("name", ["PREFECT_SERVER_EVENTS_MESSAGING_BROKER", "PREFECT_SERVER_EVENTS_MESSAGING_CACHE",
                                      "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING",
                                      "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"])
    def test_redis_backends(self, mode: dict[str, Any], name: str, secrets: Secrets) -> None:
        assert redis_environment(config(**mode), secrets)[name].startswith("prefect_redis.")

    def test_settings_prefect_accepts(self, secrets: Secrets, monkeypatch: pytest.MonkeyPatch) -> None:
        from prefect_redis.client import RedisMessagingSettings

        env = redis_environment(config(**SENTINEL), secrets)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = RedisMessagingSettings()
        assert (settings.url, settings.socket_connect_timeout) == (env["PREFECT_REDIS_MESSAGING_URL"], 5.0)


class TestEntrypointFollowsTheUrl:
    def test_unreachable_sentinels_mean_no_run_id(self, tmp_path: Path) -> None:
        # A closed loopback port: refused at once, as while every Sentinel restarts.
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"redis+sentinel://127.0.0.1:{port}/{MASTER_SET}/0"
        assert _redis_run_id({"PREFECT_REDIS_MESSAGING_URL": url}) is None
