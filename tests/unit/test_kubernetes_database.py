"""The database part of the Kubernetes rendering (infra/kubernetes/database.py): the CloudNativePG Cluster, its
Poolers, physical backups, PodMonitors and NetworkPolicies, validated against the CRDs and Kubernetes' schemas."""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import yaml

from infra.compose.project import placeholder_secrets
from infra.config import ENV_PREFIX, StackConfig, load_config
from infra.errors import UserError
from infra.kubernetes.database import database_endpoints, database_manifests
from infra.kubernetes.objects import Manifest, Names, selector
from infra.kubernetes.render import PlaceholderImages
from infra.kubernetes.secrets import external_secrets
from infra.secrets import SECRET_NAMES
from tests import kubernetes_checks as checks


def schema_errors(obj: dict[str, Any]) -> list[str]:
    return checks.schema_problems(obj, "1.32")


def config_of(**overrides: Any) -> StackConfig:
    """A configuration from the defaults and ``overrides`` only. Also used at collection time (the parameters are
    the rendered objects), before the hermetic_env fixture runs: the operator's PREFECT_STACK_* variables and
    configuration file are set aside here too."""
    saved = {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)}
    for name in saved:
        del os.environ[name]
    try:
        return load_config(target="kubernetes", **overrides)
    finally:
        os.environ.update(saved)


CONFIGS = {
    "default": {},
    "physical": {"backups": {"physical": {"enabled": True}}},
    "iam-role": {"backups": {"physical": {"enabled": True}}, "kubernetes": {"s3_credentials": "iam-role"}},
    "one-instance": {"kubernetes": {"postgres": {"instances": 1}}},
    "five-instances": {"kubernetes": {"postgres": {"instances": 5}}},
    "storage-class": {"kubernetes": {"storage_class": "fast-ssd"}},
}
EXTERNAL = {"kubernetes": {"postgres": {"mode": "external", "host": "db.example.com", "port": 6432,
                                         "sslmode": "verify-full"}}}


@functools.cache
def rendered(case: str) -> tuple[StackConfig, list[Manifest]]:
    overrides = EXTERNAL if case == "external" else CONFIGS[case]
    config = config_of(**overrides)
    return config, database_manifests(config, PlaceholderImages())


def objects(case: str, kind: str) -> list[dict[str, Any]]:
    return [m.obj for m in rendered(case)[1] if m.kind == kind]


def the(case: str, kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects(case, kind) if name is None or o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} objects named {name}"
    return matches[0]


def manifest(case: str, kind: str, name: str) -> Manifest:
    (result,) = [m for m in rendered(case)[1] if m.kind == kind and m.name == name]
    return result


NAMES = Names("prefect")
ALL_OBJECTS = [(case, i) for case in CONFIGS for i in range(len(rendered(case)[1]))]


class TestSchemas:
    @pytest.mark.parametrize(("case", "index"), ALL_OBJECTS,
                             ids=[f"{c}-{rendered(c)[1][i].file_name}" for c, i in ALL_OBJECTS])
    def test_valid(self, case: str, index: int) -> None:
        assert schema_errors(rendered(case)[1][index].obj) == []

    @pytest.mark.parametrize("case", CONFIGS)
    def test_in_the_namespace(self, case: str) -> None:
        assert {m.obj["metadata"]["namespace"] for m in rendered(case)[1]} == {"prefect"}

    @pytest.mark.parametrize("case", CONFIGS)
    def test_no_secret_values(self, case: str) -> None:
        # Passwords are only named, by the Secrets that hold them (managed roles' passwordSecret).
        text = yaml.safe_dump_all([m.obj for m in rendered(case)[1]]).replace("passwordSecret:", "")
        assert "password" not in text.lower()

    @pytest.mark.parametrize("case", CONFIGS)
    def test_no_generated_secret_in_the_objects(self, case: str) -> None:
        generated = placeholder_secrets()
        assert checks.no_secret_values([m.obj for m in rendered(case)[1]],
                                       [generated.get(name) for name in SECRET_NAMES]) == []

    @pytest.mark.parametrize("case", CONFIGS)
    def test_no_yaml_aliases(self, case: str) -> None:
        # A dict shared between two places of an object is written as an anchor and an alias.
        assert "&id" not in yaml.safe_dump_all([m.obj for m in rendered(case)[1]])

    def test_strict_schema_rejects_an_unknown_field(self) -> None:
        obj = the("default", "Cluster")
        assert schema_errors({**obj, "spec": {**obj["spec"], "instancez": 3}}) != []


class TestCluster:
    def test_name(self) -> None:
        assert the("default", "Cluster")["metadata"]["name"] == NAMES.database

    def test_base_data_phase(self) -> None:
        m = manifest("default", "Cluster", NAMES.database)
        assert (m.phase, m.component) == ("data", None)

    @pytest.mark.parametrize(("case", "instances"), [("default", 3), ("one-instance", 1), ("five-instances", 5)])
    def test_instances(self, case: str, instances: int) -> None:
        assert the(case, "Cluster")["spec"]["instances"] == instances

    def test_image(self) -> None:
        config, _ = rendered("default")
        assert the("default", "Cluster")["spec"]["imageName"] == config.kubernetes.postgres.image

    @pytest.mark.parametrize(("volume", "size"), [("storage", "20Gi"), ("walStorage", "10Gi")])
    def test_volume_size(self, volume: str, size: str) -> None:
        assert the("default", "Cluster")["spec"][volume]["size"] == size

    @pytest.mark.parametrize("volume", ["storage", "walStorage"])
    def test_default_storage_class(self, volume: str) -> None:
        assert "storageClass" not in the("default", "Cluster")["spec"][volume]

    @pytest.mark.parametrize("volume", ["storage", "walStorage"])
    def test_storage_class(self, volume: str) -> None:
        assert the("storage-class", "Cluster")["spec"][volume]["storageClass"] == "fast-ssd"

    @pytest.mark.parametrize(("field", "value"), [("database", "prefect"), ("owner", "prefect"),
                                                  ("secret", {"name": NAMES.secret_db_app})])
    def test_initdb(self, field: str, value: Any) -> None:
        assert the("default", "Cluster")["spec"]["bootstrap"]["initdb"][field] == value

    def test_pg_trgm(self) -> None:
        sql = the("default", "Cluster")["spec"]["bootstrap"]["initdb"]["postInitApplicationSQL"]
        assert "CREATE EXTENSION IF NOT EXISTS pg_trgm" in sql

    def test_superuser_secret(self) -> None:
        assert the("default", "Cluster")["spec"]["superuserSecret"] == {"name": NAMES.secret_db_superuser}

    @pytest.mark.parametrize(("role", "secret"), [("prefect", NAMES.secret_db_app),
                                                  ("prefect_monitor", NAMES.secret_db_monitor)])
    def test_managed_role_password_from_its_secret(self, role: str, secret: str) -> None:
        roles = {r["name"]: r for r in the("default", "Cluster")["spec"]["managed"]["roles"]}
        assert (roles[role]["login"], roles[role]["passwordSecret"]) == (True, {"name": secret})

    def test_owner_role_has_no_memberships_nor_powers(self) -> None:
        """Attributes left out are PostgreSQL's defaults, which CloudNativePG enforces: no superuser, createdb,
        createrole, replication."""
        (owner,) = [r for r in the("default", "Cluster")["spec"]["managed"]["roles"] if r["name"] == "prefect"]
        assert set(owner) == {"name", "ensure", "login", "passwordSecret"}

    def test_monitor_role_reads_the_statistics(self) -> None:
        (monitor,) = [r for r in the("default", "Cluster")["spec"]["managed"]["roles"]
                      if r["name"] == "prefect_monitor"]
        assert monitor["inRoles"] == ["pg_monitor"]

    def test_managed_role_secrets_are_made_by_deploy(self) -> None:
        config = rendered("default")[0]
        made = external_secrets(config)
        assert {NAMES.secret_db_app, NAMES.secret_db_monitor} <= set(made)

    def test_superuser_access(self) -> None:
        assert the("default", "Cluster")["spec"]["enableSuperuserAccess"] is True

    @pytest.mark.parametrize(("parameter", "value"), [("max_connections", "200"), ("shared_buffers", "256MB"),
                                                      ("max_slot_wal_keep_size", "5120MB")])
    def test_parameter(self, parameter: str, value: str) -> None:
        assert the("default", "Cluster")["spec"]["postgresql"]["parameters"][parameter] == value

    def test_parameters_follow_the_model(self) -> None:
        config = config_of(postgres={"max_connections": 400, "shared_buffers": "512MB"})
        (cluster,) = [m.obj for m in database_manifests(config, PlaceholderImages()) if m.kind == "Cluster"]
        assert cluster["spec"]["postgresql"]["parameters"]["max_connections"] == "400"

    @pytest.mark.parametrize(("case", "present"), [("default", False), ("physical", True)])
    def test_archive_timeout_with_physical_backups(self, case: str, present: bool) -> None:
        assert ("archive_timeout" in the(case, "Cluster")["spec"]["postgresql"]["parameters"]) is present

    def test_plaintext_connections_rejected(self) -> None:
        assert the("default", "Cluster")["spec"]["postgresql"]["pg_hba"] == ["hostnossl all all all reject"]

    @pytest.mark.parametrize(("case", "present"), [("default", True), ("five-instances", True),
                                                   ("one-instance", False)])
    def test_synchronous_replication(self, case: str, present: bool) -> None:
        assert ("synchronous" in the(case, "Cluster")["spec"]["postgresql"]) is present

    def test_resources(self) -> None:
        assert the("default", "Cluster")["spec"]["resources"] == {
            "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}

    @pytest.mark.parametrize(("field", "value"), [("enablePodAntiAffinity", True),
                                                  ("topologyKey", "kubernetes.io/hostname")])
    def test_anti_affinity(self, field: str, value: Any) -> None:
        assert the("default", "Cluster")["spec"]["affinity"][field] == value

    @pytest.mark.parametrize(("case", "kind"), [("default", "required"), ("five-instances", "required"),
                                                ("one-instance", "preferred")])
    def test_anti_affinity_type(self, case: str, kind: str) -> None:
        assert the(case, "Cluster")["spec"]["affinity"]["podAntiAffinityType"] == kind

    def test_zone_spread_selects_instances(self) -> None:
        (constraint,) = the("default", "Cluster")["spec"]["topologySpreadConstraints"]
        assert constraint["labelSelector"]["matchLabels"] == {"cnpg.io/cluster": NAMES.database,
                                                              "cnpg.io/podRole": "instance"}

    def test_unsupervised_updates(self) -> None:
        assert the("default", "Cluster")["spec"]["primaryUpdateStrategy"] == "unsupervised"

    @pytest.mark.parametrize(("case", "method"), [("default", "switchover"), ("one-instance", "restart")])
    def test_primary_update_method(self, case: str, method: str) -> None:
        assert the(case, "Cluster")["spec"]["primaryUpdateMethod"] == method

    def test_no_prune_labels_inherited(self) -> None:
        # Operator-made objects (PVCs above all) must never match deploy's prune selector.
        inherited = the("default", "Cluster")["spec"]["inheritedMetadata"]["labels"]
        assert "app.kubernetes.io/managed-by" not in inherited

    def test_no_plugin_without_physical_backups(self) -> None:
        assert "plugins" not in the("default", "Cluster")["spec"]

    def test_barman_plugin(self) -> None:
        assert the("physical", "Cluster")["spec"]["plugins"] == [{
            "name": "barman-cloud.cloudnative-pg.io", "enabled": True, "isWALArchiver": True,
            "parameters": {"barmanObjectName": NAMES.database_backups}}]


POOLERS = [(NAMES.pooler_transaction, "transaction"), (NAMES.pooler_session, "session")]


class TestPoolers:
    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_pool_mode(self, name: str, mode: str) -> None:
        assert the("default", "Pooler", name)["spec"]["pgbouncer"]["poolMode"] == mode

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_base_data_phase(self, name: str, mode: str) -> None:
        m = manifest("default", "Pooler", name)
        assert (m.phase, m.component) == ("data", None)

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_cluster(self, name: str, mode: str) -> None:
        assert the("default", "Pooler", name)["spec"]["cluster"] == {"name": NAMES.database}

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_read_write(self, name: str, mode: str) -> None:
        assert the("default", "Pooler", name)["spec"]["type"] == "rw"

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_instances(self, name: str, mode: str) -> None:
        assert the("default", "Pooler", name)["spec"]["instances"] == 2

    @pytest.mark.parametrize(("parameter", "value"), [("default_pool_size", "40"), ("max_client_conn", "1000")])
    def test_parameters(self, parameter: str, value: str) -> None:
        for name, _ in POOLERS:
            assert the("default", "Pooler", name)["spec"]["pgbouncer"]["parameters"][parameter] == value

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_container_is_cnpgs(self, name: str, mode: str) -> None:
        (container,) = the("default", "Pooler", name)["spec"]["template"]["spec"]["containers"]
        assert container["name"] == "pgbouncer"

    @pytest.mark.parametrize(("field", "value"), [("allowPrivilegeEscalation", False),
                                                  ("readOnlyRootFilesystem", True), ("runAsNonRoot", True),
                                                  ("capabilities", {"drop": ["ALL"]}),
                                                  ("seccompProfile", {"type": "RuntimeDefault"})])
    def test_container_hardening(self, field: str, value: Any) -> None:
        for name, _ in POOLERS:
            (container,) = the("default", "Pooler", name)["spec"]["template"]["spec"]["containers"]
            assert container["securityContext"][field] == value

    @pytest.mark.parametrize("bound", ["requests", "limits"])
    def test_container_resources(self, bound: str) -> None:
        for name, _ in POOLERS:
            (container,) = the("default", "Pooler", name)["spec"]["template"]["spec"]["containers"]
            assert container["resources"][bound]["memory"]

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_spread_selects_own_pods(self, name: str, mode: str) -> None:
        constraints = the("default", "Pooler", name)["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints if c["labelSelector"]["matchLabels"] == {
            "cnpg.io/poolerName": name}} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_no_unavailable_pooler_during_rollout(self, name: str, mode: str) -> None:
        strategy = the("default", "Pooler", name)["spec"]["deploymentStrategy"]
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0

    @pytest.mark.parametrize(("name", "mode"), POOLERS)
    def test_disruption_budget_selects_pooler(self, name: str, mode: str) -> None:
        pdb = the("default", "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == {"cnpg.io/poolerName": name}

    def test_no_disruption_budget_for_one_pod(self) -> None:
        config = config_of(kubernetes={"postgres": {"pooler_instances": 1}})
        assert [m for m in database_manifests(config, PlaceholderImages()) if m.kind == "PodDisruptionBudget"] == []

    def test_connection_budget(self) -> None:
        config = config_of(kubernetes={"postgres": {"pooler_instances": 4}})
        with pytest.raises(UserError, match="max_connections"):
            database_manifests(config, PlaceholderImages())


class TestPhysicalBackups:
    @pytest.mark.parametrize("kind", ["ObjectStore", "ScheduledBackup"])
    def test_absent_by_default(self, kind: str) -> None:
        assert objects("default", kind) == []

    @pytest.mark.parametrize("kind", ["ObjectStore", "ScheduledBackup"])
    def test_component_and_phase(self, kind: str) -> None:
        (m,) = [m for m in rendered("physical")[1] if m.kind == kind]
        assert (m.phase, m.component) == ("data", "physical-backups")

    def test_object_store_name(self) -> None:
        assert the("physical", "ObjectStore")["metadata"]["name"] == NAMES.database_backups

    def test_destination(self) -> None:
        configuration = the("physical", "ObjectStore")["spec"]["configuration"]
        assert configuration["destinationPath"] == "s3://prefect-backups/prefect/cnpg"

    def test_endpoint(self) -> None:
        configuration = the("physical", "ObjectStore")["spec"]["configuration"]
        assert configuration["endpointURL"] == "https://s3.us-east-1.amazonaws.com"

    def test_configured_endpoint(self) -> None:
        config = config_of(backups={"physical": {"enabled": True},
                                    "s3": {"endpoint_url": "https://minio.example.com:9000", "prefix": ""}})
        (store,) = [m.obj for m in database_manifests(config, PlaceholderImages()) if m.kind == "ObjectStore"]
        assert store["spec"]["configuration"]["endpointURL"] == "https://minio.example.com:9000"

    def test_secret_credentials(self) -> None:
        assert the("physical", "ObjectStore")["spec"]["configuration"]["s3Credentials"] == {
            "accessKeyId": {"name": NAMES.secret_s3, "key": "ACCESS_KEY_ID"},
            "secretAccessKey": {"name": NAMES.secret_s3, "key": "ACCESS_SECRET_KEY"}}

    def test_iam_role_credentials(self) -> None:
        credentials = the("iam-role", "ObjectStore")["spec"]["configuration"]["s3Credentials"]
        assert credentials == {"inheritFromIAMRole": True}

    @pytest.mark.parametrize(("stream", "compression"), [("wal", "zstd"), ("data", "lz4")])
    def test_compression(self, stream: str, compression: str) -> None:
        assert the("physical", "ObjectStore")["spec"]["configuration"][stream]["compression"] == compression

    @pytest.mark.parametrize("stream", ["wal", "data"])
    def test_server_side_encryption(self, stream: str) -> None:
        assert the("physical", "ObjectStore")["spec"]["configuration"][stream]["encryption"] == "AES256"

    @pytest.mark.parametrize(("retention_full", "policy"), [(2, "2d"), (7, "7d")])
    def test_retention_policy(self, retention_full: int, policy: str) -> None:
        config = config_of(backups={"physical": {"enabled": True, "retention_full": retention_full}})
        (store,) = [m.obj for m in database_manifests(config, PlaceholderImages()) if m.kind == "ObjectStore"]
        assert store["spec"]["retentionPolicy"] == policy

    @pytest.mark.parametrize(("schedule", "cron"), [("02:30", "0 30 2 * * *"), ("23:05", "0 5 23 * * *")])
    def test_schedule_has_seconds(self, schedule: str, cron: str) -> None:
        config = config_of(backups={"physical": {"enabled": True}, "schedule": schedule})
        (backup,) = [m.obj for m in database_manifests(config, PlaceholderImages()) if m.kind == "ScheduledBackup"]
        assert backup["spec"]["schedule"] == cron

    @pytest.mark.parametrize(("field", "value"), [("method", "plugin"), ("cluster", {"name": NAMES.database}),
                                                  ("pluginConfiguration", {"name": "barman-cloud.cloudnative-pg.io"}),
                                                  ("suspend", False)])
    def test_scheduled_backup(self, field: str, value: Any) -> None:
        assert the("physical", "ScheduledBackup")["spec"][field] == value

    def test_schedule_disabled_suspends(self) -> None:
        config = config_of(backups={"physical": {"enabled": True}, "schedule_enabled": False})
        (backup,) = [m.obj for m in database_manifests(config, PlaceholderImages()) if m.kind == "ScheduledBackup"]
        assert backup["spec"]["suspend"] is True


MONITORED = [(NAMES.database, {"cnpg.io/cluster": NAMES.database, "cnpg.io/podRole": "instance"}),
             (NAMES.pooler_transaction, {"cnpg.io/poolerName": NAMES.pooler_transaction}),
             (NAMES.pooler_session, {"cnpg.io/poolerName": NAMES.pooler_session})]


class TestMonitoring:
    @pytest.mark.parametrize(("name", "labels"), MONITORED)
    def test_selector(self, name: str, labels: dict[str, str]) -> None:
        assert the("default", "PodMonitor", name)["spec"]["selector"] == {"matchLabels": labels}

    @pytest.mark.parametrize(("name", "labels"), MONITORED)
    def test_release_label(self, name: str, labels: dict[str, str]) -> None:
        assert the("default", "PodMonitor", name)["metadata"]["labels"]["release"] == "kube-prometheus-stack"

    @pytest.mark.parametrize(("name", "labels"), MONITORED)
    def test_metrics_port(self, name: str, labels: dict[str, str]) -> None:
        (endpoint,) = the("default", "PodMonitor", name)["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics"

    @pytest.mark.parametrize(("name", "labels"), MONITORED)
    def test_component_and_phase(self, name: str, labels: dict[str, str]) -> None:
        m = manifest("default", "PodMonitor", name)
        assert (m.phase, m.component) == ("monitoring", "monitoring")

    def test_absent_without_monitoring(self) -> None:
        config = config_of(monitoring={"enabled": False})
        assert [m for m in database_manifests(config, PlaceholderImages()) if m.kind == "PodMonitor"] == []


def _allows_in(policy: dict[str, Any], peer: dict[str, Any], port: int) -> bool:
    return any(peer in rule["from"] and {"protocol": "TCP", "port": port} in rule["ports"]
               for rule in policy["spec"]["ingress"])


def _allows_out(policy: dict[str, Any], peer: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    """A rule without peers (``to``) admits every destination on its ports."""
    return any(("to" not in rule or peer in rule["to"]) and {"protocol": protocol, "port": port} in rule["ports"]
               for rule in policy["spec"]["egress"])


def _port_rules(policy: dict[str, Any], port: int) -> list[dict[str, Any]]:
    return [rule for rule in policy["spec"]["egress"] if any(p["port"] == port for p in rule["ports"])]


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


CONFIG = config_of()
# The instances and the operator's initdb/join/recovery Jobs (no pod role), not the Poolers.
DATABASE_PODS = {"matchExpressions": [{"key": "cnpg.io/cluster", "operator": "In", "values": [NAMES.database]},
                                      {"key": "cnpg.io/poolerName", "operator": "DoesNotExist"}]}
INSTANCES = {"podSelector": DATABASE_PODS}
POOLER_PODS = {"podSelector": {"matchExpressions": [
    {"key": "cnpg.io/poolerName", "operator": "In", "values": [NAMES.pooler_transaction, NAMES.pooler_session]}]}}
INSTANCE_INGRESS = {
    "poolers": (POOLER_PODS, 5432),
    "replication": (INSTANCES, 5432),
    "instance-managers": (INSTANCES, 8000),
    "migrate": ({"podSelector": {"matchLabels": selector(CONFIG, "migrate")}}, 5432),
    "backup": ({"podSelector": {"matchLabels": selector(CONFIG, "backup")}}, 5432),
    "operator-status": (_namespace("cnpg-system"), 8000),
    "operator-postgres": (_namespace("cnpg-system"), 5432),
    "prometheus": (_namespace("monitoring"), 9187),
}
POOLER_INGRESS = [
    (NAMES.pooler_transaction, {"podSelector": {"matchLabels": selector(CONFIG, "api")}}, 5432),
    (NAMES.pooler_session, {"podSelector": {"matchLabels": selector(CONFIG, "services")}}, 5432),
    (NAMES.pooler_transaction, _namespace("cnpg-system"), 5432),
    (NAMES.pooler_session, _namespace("cnpg-system"), 5432),
    (NAMES.pooler_transaction, _namespace("monitoring"), 9127),
    (NAMES.pooler_session, _namespace("monitoring"), 9127),
]
ALL_POLICIES = [NAMES.database, NAMES.pooler_transaction, NAMES.pooler_session]
ANYWHERE = {"ipBlock": {"cidr": "0.0.0.0/0"}}


class TestNetworkPolicies:
    @pytest.mark.parametrize("name", ALL_POLICIES)
    def test_component_and_phase(self, name: str) -> None:
        m = manifest("default", "NetworkPolicy", name)
        assert (m.phase, m.component) == ("namespace", "network-policies")

    @pytest.mark.parametrize(("name", "selected"), [
        (NAMES.database, DATABASE_PODS),
        (NAMES.pooler_transaction, {"matchLabels": {"cnpg.io/poolerName": NAMES.pooler_transaction}}),
        (NAMES.pooler_session, {"matchLabels": {"cnpg.io/poolerName": NAMES.pooler_session}})])
    def test_selects(self, name: str, selected: dict[str, Any]) -> None:
        assert the("default", "NetworkPolicy", name)["spec"]["podSelector"] == selected

    @pytest.mark.parametrize(("peer", "port"), INSTANCE_INGRESS.values(), ids=INSTANCE_INGRESS.keys())
    def test_instance_ingress(self, peer: dict[str, Any], port: int) -> None:
        assert _allows_in(the("default", "NetworkPolicy", NAMES.database), peer, port)

    @pytest.mark.parametrize(("name", "peer", "port"), POOLER_INGRESS)
    def test_pooler_ingress(self, name: str, peer: dict[str, Any], port: int) -> None:
        assert _allows_in(the("default", "NetworkPolicy", name), peer, port)

    @pytest.mark.parametrize(("name", "client"), [(NAMES.pooler_transaction, "services"),
                                                  (NAMES.pooler_session, "api")])
    def test_pooler_closed_to_the_other_component(self, name: str, client: str) -> None:
        peer = {"podSelector": {"matchLabels": selector(CONFIG, client)}}
        assert not _allows_in(the("default", "NetworkPolicy", name), peer, 5432)

    @pytest.mark.parametrize("name", ALL_POLICIES)
    @pytest.mark.parametrize("protocol", ["UDP", "TCP"])
    def test_dns(self, name: str, protocol: str) -> None:
        assert _allows_out(the("default", "NetworkPolicy", name), _namespace("kube-system"), 53, protocol)

    @pytest.mark.parametrize("name", ALL_POLICIES)
    @pytest.mark.parametrize("port", [53, 6443])
    def test_dns_and_the_api_server_by_port_alone(self, name: str, port: int) -> None:
        """NodeLocal DNSCache and OpenShift's DNS are not kube-system pods; Cilium matches no in-cluster API server
        by CIDR: a peer of any kind would cut the pods off on some clusters."""
        rules = _port_rules(the("default", "NetworkPolicy", name), port)
        assert rules and all("to" not in rule for rule in rules)

    @pytest.mark.parametrize("name", ALL_POLICIES)
    def test_egress_to_instances(self, name: str) -> None:
        assert _allows_out(the("default", "NetworkPolicy", name), INSTANCES, 5432)

    @pytest.mark.parametrize("name", ALL_POLICIES)
    @pytest.mark.parametrize("port", [443, 6443])
    def test_api_server(self, name: str, port: int) -> None:
        assert _allows_out(the("default", "NetworkPolicy", name), ANYWHERE, port)

    @pytest.mark.parametrize(("case", "rules"), [("default", 4), ("physical", 5)])
    def test_s3_egress_only_with_physical_backups(self, case: str, rules: int) -> None:
        assert len(the(case, "NetworkPolicy", NAMES.database)["spec"]["egress"]) == rules

    def test_s3_port_from_the_endpoint(self) -> None:
        config = config_of(backups={"physical": {"enabled": True}, "s3": {"endpoint_url": "http://minio:9000"}})
        (policy,) = [m.obj for m in database_manifests(config, PlaceholderImages())
                     if m.kind == "NetworkPolicy" and m.name == NAMES.database]
        assert _allows_out(policy, ANYWHERE, 9000)

    def test_absent_when_turned_off(self) -> None:
        config = config_of(kubernetes={"network_policies": False})
        assert [m for m in database_manifests(config, PlaceholderImages()) if m.kind == "NetworkPolicy"] == []


class TestExternal:
    def test_no_objects(self) -> None:
        assert rendered("external")[1] == []

    @pytest.mark.parametrize("kind", ["api", "services", "direct"])
    def test_endpoint(self, kind: str) -> None:
        assert getattr(database_endpoints(rendered("external")[0]), kind) == ("db.example.com", 6432)

    def test_sslmode(self) -> None:
        assert database_endpoints(rendered("external")[0]).sslmode == "verify-full"

    def test_physical_backups_refused(self) -> None:
        config = config_of(**EXTERNAL, backups={"physical": {"enabled": True}})
        with pytest.raises(UserError, match="physical"):
            database_manifests(config, PlaceholderImages())


class TestEndpoints:
    @pytest.mark.parametrize(("kind", "host"), [("api", NAMES.pooler_transaction), ("services", NAMES.pooler_session),
                                                ("direct", NAMES.database_rw)])
    def test_cnpg(self, kind: str, host: str) -> None:
        assert getattr(database_endpoints(CONFIG), kind) == (host, 5432)

    def test_cnpg_tls_verifies_the_server_against_the_clusters_ca(self) -> None:
        endpoints = database_endpoints(CONFIG)
        assert (endpoints.sslmode, endpoints.root_cert) == ("verify-ca", "/etc/prefect-stack/db-ca/ca.crt")
