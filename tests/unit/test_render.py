"""Rendered configuration, checked as text and, where the component ships a parser, by that parser.

Every file is rendered from a configuration whose ports, names and sizes all differ from the defaults
(NON_DEFAULT below), so a renderer that ignores the model fails here.
"""

from __future__ import annotations

import base64
import configparser
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from infra.config import LogRotationConfig, StackConfig, load_config
from infra.errors import UserError
from infra.layout import TRUSTED_CA, StateLayout
from infra.local.deploy import write_files
from infra.local.plan import LocalPlan, build_plan, os_user_name, service_user
from infra.render import Addresses, RenderedFile
from infra.render.haproxy import OPERATOR_TLS_PEM, TLS_PEM, haproxy_cfg
from infra.render.pgbackrest import STANZA, DirectoryRepository, pgbackrest_conf
from infra.render.pgbouncer import pgbouncer_ini, pgbouncer_userlist
from infra.render.postgres import pg_hba_conf, pg_ident_conf, postgresql_conf
from infra.render.prefect import api_environment, migration_environment, services_environment
from infra.render.redis import DOCKET_DB, MESSAGING_DB, redis_conf
from infra.render.supervisor import Program, supervisord_conf
from infra.secrets import SECRET_NAMES, Secrets, ensure_secrets, rotate_secret
from tests.certificates import issue_self_signed

# Ports, names and sizes that all differ from the defaults. Nothing listens on these ports: they are only text.
NON_DEFAULT: dict[str, dict[str, Any]] = {
    "postgres": {"port": 25432, "database": "flows", "user": "flowrunner"},
    "pgbouncer": {"port": 26432, "default_pool_size": 17},
    "redis": {"port": 26379, "maxmemory": "300mb"},
    "api": {"replicas": 3, "base_port": 24300, "keepalive_timeout": 77},
    "services": {"replicas": 2, "events_retention": "P3D"},
    "load_balancer": {"port": 24200, "stats_port": 28404, "retries": 5, "timeout_tunnel_s": 1800},
    "monitoring": {"api_metrics_port": 29201},
}
API_REPLICAS = NON_DEFAULT["api"]["replicas"]
SERVICES_REPLICAS = NON_DEFAULT["services"]["replicas"]
API_PROGRAMS = [f"api-{i}" for i in range(1, API_REPLICAS + 1)]
SERVICES_PROGRAMS = [f"services-{i}" for i in range(1, SERVICES_REPLICAS + 1)]
MONITORING_PROGRAMS = ["prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter",
                       "prefect-exporter"]
WORKER_PROGRAMS = ["worker-default-1"]
PROGRAMS = ["postgres", "pgbouncer", "redis", "s3", "backup-scheduler", *API_PROGRAMS, *SERVICES_PROGRAMS, "haproxy",
            *WORKER_PROGRAMS, *MONITORING_PROGRAMS, "log-pruner"]
# Programs that run as the operator, not the service user: the scheduler reads the secrets directory, the log
# pruner deletes supervisord's files.
OPERATOR_PROGRAMS = {"backup-scheduler", "log-pruner"}
RENDERED_FILES = [
    "stack.effective.yaml",
    "prometheus.yml",
    "prometheus-rules.yml",
    "prometheus-scrape-password",
    "alertmanager.yml",
    "exporter-postgres-password",
    "exporter-redis-password",
    "exporter-redis-passwords.json",
    "postgresql.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "pgbouncer.ini",
    "pgbouncer-userlist.txt",
    "redis.conf",
    "haproxy.cfg",
    "haproxy-maintenance.map",
    "prefect-logging.yaml",
    "supervisord.conf",
]
SECRET_FILES = ["pgbouncer-userlist.txt", "redis.conf", "haproxy.cfg", "supervisord.conf", "prometheus-scrape-password",
                "exporter-postgres-password", "exporter-redis-password", "exporter-redis-passwords.json"]


def settings(text: str, separator: str = " ") -> dict[str, str]:
    """'key<sep>value' lines of a flat config file (comments and blank lines skipped); the last one wins."""
    pairs = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition(separator)
            pairs[key.strip()] = value.strip()
    return pairs


def pairs(value: str) -> dict[str, str]:
    """'host=h port=1' -> {'host': 'h', 'port': '1'} (a pgbouncer [databases] entry)."""
    return dict(item.split("=", 1) for item in value.split())


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """'frontend stats' -> its indented lines, stripped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = sections.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return sections


@pytest.fixture
def make_config(state_dir: Path) -> Callable[..., StackConfig]:
    """A validated configuration from NON_DEFAULT, with per-section overrides merged in."""

    def make(**overrides: dict[str, Any]) -> StackConfig:
        sections: dict[str, Any] = {name: dict(values) for name, values in NON_DEFAULT.items()}
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        sections["local"] = {"state_dir": str(state_dir)}
        return load_config(**sections)

    return make


@pytest.fixture
def config(make_config: Callable[..., StackConfig]) -> StackConfig:
    return make_config()


@pytest.fixture
def secrets(layout: StateLayout) -> Secrets:
    return ensure_secrets(layout.secrets)


@pytest.fixture
def plan(config: StackConfig, secrets: Secrets) -> LocalPlan:
    return build_plan(config, secrets)


def _file(plan: LocalPlan, name: str) -> RenderedFile:
    return next(f for f in plan.files if f.path.name == name)


class TestFiles:
    """What holds for every rendered file."""

    def test_plan_renders_every_file(self, plan: LocalPlan, layout: StateLayout) -> None:
        grafana = layout.etc / "grafana"
        assert sorted(f.path.name for f in plan.files if grafana not in f.path.parents) == sorted(RENDERED_FILES)

    def test_grafana_dashboards_and_provisioning_are_rendered(self, plan: LocalPlan, layout: StateLayout) -> None:
        grafana = layout.etc / "grafana"
        paths = {f.path.relative_to(grafana).as_posix() for f in plan.files if grafana in f.path.parents}
        assert "provisioning/datasources/prefect-stack.yaml" in paths
        assert "provisioning/dashboards/prefect-stack.yaml" in paths
        assert {p for p in paths if p.startswith("dashboards/")} == {
            f"dashboards/prefect-{name}.json" for name in ("overview", "api", "postgres", "redis", "backups", "host")}

    @pytest.mark.parametrize("name", RENDERED_FILES)
    def test_under_etc(self, plan: LocalPlan, layout: StateLayout, name: str) -> None:
        assert _file(plan, name).path.parent == layout.etc

    @pytest.mark.parametrize("name", RENDERED_FILES)
    def test_secret_only_if_it_holds_a_secret(self, plan: LocalPlan, secrets: Secrets, name: str) -> None:
        rendered = _file(plan, name)
        holds = [s for s in SECRET_NAMES if secrets.get(s).removeprefix("admin:") in rendered.content]
        assert rendered.secret == bool(holds)

    @pytest.mark.parametrize("name", SECRET_FILES)
    def test_secret_file_mode(self, plan: LocalPlan, name: str) -> None:
        assert _file(plan, name).mode == 0o600

    @pytest.mark.parametrize("name", sorted(set(RENDERED_FILES) - set(SECRET_FILES)))
    def test_plain_file_mode(self, plan: LocalPlan, name: str) -> None:
        assert _file(plan, name).mode == 0o644


class TestPostgres:
    @pytest.fixture
    def conf(self, config: StackConfig, layout: StateLayout) -> dict[str, str]:
        return settings(postgresql_conf(config, layout).content, separator="=")

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("port", "25432"),
            ("listen_addresses", "'127.0.0.1'"),
            ("password_encryption", "scram-sha-256"),
            ("max_connections", "200"),
            ("unix_socket_permissions", "0700"),
            ("wal_level", "replica"),
        ],
    )
    def test_setting(self, conf: dict[str, str], key: str, expected: str) -> None:
        assert conf[key] == expected

    @pytest.mark.parametrize(
        ("key", "path"),
        [
            ("unix_socket_directories", "run"),
            ("data_directory", "postgres_data"),
        ],
    )
    def test_state_path(self, conf: dict[str, str], layout: StateLayout, key: str, path: str) -> None:
        assert conf[key] == f"'{getattr(layout, path)}'"

    @pytest.mark.parametrize("name", ["hba_file", "ident_file"])
    def test_auth_files_under_etc(self, conf: dict[str, str], layout: StateLayout, name: str) -> None:
        assert Path(conf[name].strip("'")).parent == layout.etc

    def test_listen_address_is_a_parameter(self, config: StackConfig, layout: StateLayout) -> None:
        conf = settings(postgresql_conf(config, layout, listen="*").content, separator="=")
        assert conf["listen_addresses"] == "'*'"

    def test_local_json_logs_go_to_jsonlog_files_rotated_by_size(self, make_config: Callable[..., StackConfig],
                                                                 layout: StateLayout) -> None:
        config = make_config(logs={"rotation": {"max_size_mb": 12}})
        conf = settings(postgresql_conf(config, layout, collector=True).content, separator="=")
        assert (conf["logging_collector"], conf["log_destination"]) == ("on", "'jsonlog'")
        assert conf["log_directory"] == f"'{layout.postgres_logs}'"
        assert (conf["log_rotation_size"], conf["log_rotation_age"]) == ("12MB", "0")
        assert conf["log_file_mode"] == "0600"
        assert layout.postgres_logs in layout.service_owned_dirs()  # PostgreSQL, as the service user, writes there

    @pytest.mark.parametrize("elsewhere", ["text", "compose"])
    def test_stderr_elsewhere(self, make_config: Callable[..., StackConfig], layout: StateLayout,
                              elsewhere: str) -> None:
        """Text logs stay on stderr (the supervisor's file); on compose the container runtime captures stderr."""
        config = make_config(logs={"format": "text"}) if elsewhere == "text" else make_config()
        conf = settings(postgresql_conf(config, layout, collector=elsewhere == "text").content, separator="=")
        assert conf["logging_collector"] == "off" and "log_destination" not in conf


class TestPgHba:
    @pytest.fixture
    def rules(self, config: StackConfig, layout: StateLayout) -> list[list[str]]:
        text = pg_hba_conf(config, layout).content
        return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    @pytest.mark.parametrize("word", ["trust", "md5"])
    def test_word_absent(self, config: StackConfig, layout: StateLayout, word: str) -> None:
        assert re.search(rf"\b{word}\b", pg_hba_conf(config, layout).content) is None

    @pytest.mark.parametrize("method", ["trust", "md5", "password", "ident", "reject"])
    def test_method_unused(self, rules: list[list[str]], method: str) -> None:
        assert [rule for rule in rules if method in rule] == []

    def test_tcp_rules_use_scram(self, rules: list[list[str]]) -> None:
        assert {rule[-1] for rule in rules if rule[0] == "host"} == {"scram-sha-256"}

    def test_tcp_rules_are_loopback_only(self, rules: list[list[str]]) -> None:
        assert {rule[3] for rule in rules if rule[0] == "host"} == {"127.0.0.1/32", "::1/128"}

    def test_passwordless_access_is_mapped(self, rules: list[list[str]]) -> None:
        assert [rule for rule in rules if "peer" in rule] == [["local", "all", "postgres", "peer", "map=admins"]]

    def test_ident_map_lists_the_admins(self, layout: StateLayout) -> None:
        text = pg_ident_conf(["bob", "alice", "bob"], layout).content
        assert [line.split() for line in text.splitlines() if not line.startswith("#")] == [
            ["admins", "alice", "postgres"],
            ["admins", "bob", "postgres"],
        ]


class TestPgBouncer:
    @pytest.fixture
    def ini(self, config: StackConfig, layout: StateLayout) -> configparser.RawConfigParser:
        parser = configparser.RawConfigParser()
        parser.read_string(pgbouncer_ini(config, layout, Addresses()).content)
        return parser

    def test_two_pools(self, ini: configparser.RawConfigParser) -> None:
        assert sorted(ini["databases"]) == ["flows", "flows_session"]

    @pytest.mark.parametrize(("pool", "mode"), [("flows", "transaction"), ("flows_session", "session")])
    def test_pool_mode(self, ini: configparser.RawConfigParser, pool: str, mode: str) -> None:
        assert pairs(ini["databases"][pool])["pool_mode"] == mode

    @pytest.mark.parametrize("pool", ["flows", "flows_session"])
    def test_pool_reaches_the_database(self, ini: configparser.RawConfigParser, pool: str) -> None:
        server = pairs(ini["databases"][pool])
        assert (server["host"], server["port"], server["dbname"]) == ("127.0.0.1", "25432", "flows")

    def test_postgres_address_from_addresses(self, config: StackConfig, layout: StateLayout) -> None:
        text = pgbouncer_ini(config, layout, Addresses(postgres="db.internal")).content
        assert "host=db.internal port=25432" in text

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("listen_addr", "127.0.0.1"),
            ("listen_port", "26432"),
            ("auth_type", "scram-sha-256"),
            ("pool_mode", "transaction"),
            ("default_pool_size", "17"),
            ("admin_users", "flowrunner"),
            ("ignore_startup_parameters", "extra_float_digits"),
        ],
    )
    def test_setting(self, ini: configparser.RawConfigParser, key: str, expected: str) -> None:
        assert ini["pgbouncer"][key] == expected

    def test_auth_file_is_the_userlist(
        self, ini: configparser.RawConfigParser, config: StackConfig, secrets: Secrets, layout: StateLayout
    ) -> None:
        assert Path(ini["pgbouncer"]["auth_file"]) == pgbouncer_userlist(config, secrets, layout).path

    def test_userlist_is_secret(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> None:
        assert pgbouncer_userlist(config, secrets, layout).mode == 0o600

    def test_userlist_holds_the_prefect_password(
        self, config: StackConfig, secrets: Secrets, layout: StateLayout
    ) -> None:
        expected = f'"flowrunner" "{secrets.get("postgres_prefect")}"\n'
        assert pgbouncer_userlist(config, secrets, layout).content.startswith(expected)

    def test_userlist_holds_the_monitor_role_for_the_exporter(
        self, config: StackConfig, secrets: Secrets, layout: StateLayout
    ) -> None:
        assert f'"prefect_monitor" "{secrets.get("postgres_monitor")}"\n' in pgbouncer_userlist(
            config, secrets, layout).content

    def test_superuser_password_absent(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> None:
        assert secrets.get("postgres_superuser") not in pgbouncer_userlist(config, secrets, layout).content


class TestRedis:
    @pytest.fixture
    def rendered(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> RenderedFile:
        return redis_conf(config, secrets, layout)

    def test_requirepass_is_the_secret(self, rendered: RenderedFile, secrets: Secrets) -> None:
        assert settings(rendered.content)["requirepass"] == secrets.get("redis")

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("maxmemory-policy", "noeviction"),
            ("bind", "127.0.0.1"),
            ("port", "26379"),
            ("maxmemory", "300mb"),
            ("protected-mode", "yes"),
            ("appendonly", "yes"),
            ("daemonize", "no"),
        ],
    )
    def test_setting(self, rendered: RenderedFile, key: str, expected: str) -> None:
        assert settings(rendered.content)[key] == expected

    def test_data_dir(self, rendered: RenderedFile, layout: StateLayout) -> None:
        assert settings(rendered.content)["dir"] == str(layout.redis_data)

    def test_file_is_secret(self, rendered: RenderedFile) -> None:
        assert rendered.mode == 0o600


class TestPgBackRest:
    """The stack's S3 repository, and the directory repository the backup benchmark renders the same file for."""

    @pytest.fixture
    def s3(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> RenderedFile:
        return pgbackrest_conf(config, secrets, layout)

    @pytest.fixture
    def directory(self, config: StackConfig, secrets: Secrets, layout: StateLayout, tmp_path: Path) -> RenderedFile:
        return pgbackrest_conf(config, secrets, layout, DirectoryRepository(tmp_path / "pgbr", process_max=3))

    @pytest.mark.parametrize(
        ("key", "expected"),
        [("repo1-type", "s3"), ("repo1-path", "/prefect/physical"), ("repo1-s3-bucket", "prefect-backups"),
         ("repo1-s3-endpoint", "127.0.0.1"), ("repo1-s3-key-type", "shared"), ("compress-type", "zst"),
         ("pg1-port", "25432")],
    )
    def test_s3_setting(self, s3: RenderedFile, key: str, expected: str) -> None:
        assert settings(s3.content, "=")[key] == expected

    def test_s3_file_is_secret(self, s3: RenderedFile, secrets: Secrets, layout: StateLayout) -> None:
        assert settings(s3.content, "=")["repo1-s3-key-secret"] == secrets.get("s3_local")
        assert (s3.path, s3.mode) == (layout.etc / "pgbackrest.conf", 0o600)

    @pytest.mark.parametrize(
        ("key", "expected"),
        [("repo1-type", "posix"), ("repo1-retention-full", "1"), ("compress-type", "zst"), ("process-max", "3"),
         ("start-fast", "y"), ("pg1-port", "25432"), ("pg1-user", "postgres")],
    )
    def test_directory_setting(self, directory: RenderedFile, key: str, expected: str) -> None:
        assert settings(directory.content, "=")[key] == expected

    @pytest.mark.parametrize("key", ["repo1-path", "log-path", "lock-path", "spool-path"])
    def test_directory_writes_only_below_its_root(self, directory: RenderedFile, tmp_path: Path, key: str) -> None:
        assert Path(settings(directory.content, "=")[key]).is_relative_to(tmp_path / "pgbr")

    def test_directory_has_no_s3_option(self, directory: RenderedFile) -> None:
        assert not [key for key in settings(directory.content, "=") if key.startswith("repo1-s3-")]

    def test_directory_file_is_readable_beside_its_repository(self, directory: RenderedFile, tmp_path: Path) -> None:
        assert (directory.path, directory.mode) == (tmp_path / "pgbr" / "pgbackrest.conf", 0o644)

    @pytest.mark.parametrize("repository", ["s3", "directory"])
    def test_stanza_is_the_stack_cluster(self, request: pytest.FixtureRequest, layout: StateLayout,
                                         repository: str) -> None:
        text = request.getfixturevalue(repository).content
        stanza = text.split(f"[{STANZA}]\n", 1)[1]
        assert (settings(stanza, "=")["pg1-path"], settings(stanza, "=")["pg1-socket-path"]) == (
            str(layout.postgres_data), str(layout.run))


class TestHaproxy:
    @pytest.fixture
    def text(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> str:
        return haproxy_cfg(config, secrets, layout, Addresses()).content

    @pytest.fixture
    def sections(self, text: str) -> dict[str, list[str]]:
        return haproxy_sections(text)

    @pytest.mark.parametrize("replicas", [1, 2, 3])
    def test_one_server_per_replica(
        self, make_config: Callable[..., StackConfig], secrets: Secrets, layout: StateLayout, replicas: int
    ) -> None:
        text = haproxy_cfg(make_config(api={"replicas": replicas}), secrets, layout, Addresses()).content
        servers = [line for line in haproxy_sections(text)["backend prefect_api"] if line.startswith("server ")]
        assert servers == [f"server api-{i} 127.0.0.1:{24300 + i - 1} check" for i in range(1, replicas + 1)]

    def test_replica_hosts_from_addresses(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> None:
        text = haproxy_cfg(config, secrets, layout, Addresses(api=("a", "b", "c"))).content
        assert "server api-3 c:24302 check" in haproxy_sections(text)["backend prefect_api"]

    @pytest.mark.parametrize(
        "line",
        [
            "option httpchk GET /api/ready",
            "http-check expect status 200",
            "balance leastconn",
        ],
    )
    def test_backend(self, sections: dict[str, list[str]], line: str) -> None:
        assert line in sections["backend prefect_api"]

    @pytest.mark.parametrize("condition", ["conn-failure", "empty-response"])
    def test_retry_on(self, sections: dict[str, list[str]], condition: str) -> None:
        retry_on = next(line for line in sections["defaults"] if line.startswith("retry-on "))
        assert condition in retry_on.split()[1:]

    def test_no_retry_on_response_timeout(self, sections: dict[str, list[str]]) -> None:
        # A slow replica may still commit: retrying it elsewhere would execute the request twice.
        retry_on = next(line for line in sections["defaults"] if line.startswith("retry-on "))
        assert "response-timeout" not in retry_on

    @pytest.mark.parametrize(
        "line",
        [
            "option redispatch 1",
            "option http-buffer-request",
            "timeout tunnel 1800s",
            "retries 5",
            "mode http",
        ],
    )
    def test_defaults(self, sections: dict[str, list[str]], line: str) -> None:
        assert line in sections["defaults"]

    def test_frontend_binds_the_api_port(self, sections: dict[str, list[str]]) -> None:
        assert "bind 127.0.0.1:24200" in sections["frontend prefect"]

    def test_stats_binds_the_stats_port(self, sections: dict[str, list[str]]) -> None:
        assert "bind 127.0.0.1:28404" in sections["frontend stats"]

    def test_prometheus_exporter_on_stats_port(self, sections: dict[str, list[str]]) -> None:
        assert "http-request use-service prometheus-exporter if { path /metrics }" in sections["frontend stats"]

    def test_stats_auth_uses_the_secret(self, sections: dict[str, list[str]], secrets: Secrets) -> None:
        assert f"stats auth {secrets.get('haproxy_stats')}" in sections["frontend stats"]

    def test_admin_socket_in_run_dir(self, sections: dict[str, list[str]], layout: StateLayout) -> None:
        assert any(line.startswith(f"stats socket {layout.haproxy_socket} mode 600") for line in sections["global"])

    def test_file_is_secret(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> None:
        assert haproxy_cfg(config, secrets, layout, Addresses()).mode == 0o600

    @pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({}, id="non-default"),
            pytest.param({"api": {"replicas": 1}}, id="one-replica"),
            pytest.param(
                {"load_balancer": {"bind_address": "0.0.0.0", "retries": 0}},  # noqa: S104 - rendered text, not a bind
                id="all-interfaces",  # TLS on by itself, the stats listener too
            ),
            pytest.param({"load_balancer": {"tls": {"mode": "on"}}}, id="tls-on-loopback"),
            pytest.param({"backups": {"physical": {"enabled": True}}, "load_balancer": {"tls": {"mode": "on"}}},
                         id="tls-and-s3-tls"),
        ],
    )
    def test_haproxy_accepts_it(
        self,
        make_config: Callable[..., StackConfig],
        secrets: Secrets,
        layout: StateLayout,
        tmp_path: Path,
        overrides: dict[str, dict[str, object]],
    ) -> None:
        # `haproxy -c` parses and validates without binding a port or creating the stats socket; it does load the
        # certificates, so the plan's files are written where the configuration names them.
        config = make_config(**overrides)
        for rendered in build_plan(config, secrets).program("haproxy").files:
            rendered.path.parent.mkdir(parents=True, exist_ok=True)
            rendered.path.write_text(rendered.content)
        path = tmp_path / "haproxy.cfg"
        path.write_text(haproxy_cfg(config, secrets, layout, Addresses()).content)
        result = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr


class TestHaproxyApiMetrics:
    """The metrics-only listener Prometheus scrapes the replicas through: only GET of /api-N/metrics, only with
    Prometheus's own credential, and the API admin's Authorization added only toward the replicas."""

    @pytest.fixture
    def sections(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> dict[str, list[str]]:
        return haproxy_sections(haproxy_cfg(config, secrets, layout, Addresses()).content)

    @staticmethod
    def admin_header(secrets: Secrets) -> str:
        return "Basic " + base64.b64encode(secrets.get("prefect_auth").encode()).decode()

    def test_binds_its_port_on_loopback(self, sections: dict[str, list[str]], config: StackConfig) -> None:
        assert sections["frontend api_metrics"][0] == f"bind 127.0.0.1:{config.monitoring.api_metrics_port}"

    def test_binds_every_interface_of_a_container(self, config: StackConfig, secrets: Secrets,
                                                  layout: StateLayout) -> None:
        text = haproxy_cfg(config, secrets, layout, Addresses(listen="0.0.0.0")).content  # noqa: S104 - rendered
        assert f"bind 0.0.0.0:{config.monitoring.api_metrics_port}" in haproxy_sections(text)["frontend api_metrics"]

    def test_prometheus_user_with_its_own_secret(self, sections: dict[str, list[str]], secrets: Secrets) -> None:
        assert sections["userlist prometheus_scrape"] == [
            f"user prometheus insecure-password {secrets.get('prometheus_scrape')}"]

    def test_authenticates_before_anything_else(self, sections: dict[str, list[str]]) -> None:
        rules = [line for line in sections["frontend api_metrics"] if line.startswith("http-request ")]
        assert rules[0] == "http-request auth realm prometheus-scrape unless scraper"
        assert "acl scraper http_auth(prometheus_scrape)" in sections["frontend api_metrics"]

    def test_only_get(self, sections: dict[str, list[str]]) -> None:
        assert "http-request deny deny_status 405 unless { method GET }" in sections["frontend api_metrics"]

    def test_only_the_replicas_metrics_paths(self, sections: dict[str, list[str]]) -> None:
        frontend = sections["frontend api_metrics"]
        assert "acl replica_metrics path /api-1/metrics /api-2/metrics /api-3/metrics" in frontend
        assert "http-request deny deny_status 404 unless replica_metrics" in frontend
        assert not any(line.startswith("default_backend") for line in frontend)

    @pytest.mark.parametrize("replica", range(1, API_REPLICAS + 1))
    def test_each_path_reaches_its_replicas_metrics(self, sections: dict[str, list[str]], replica: int) -> None:
        assert (f"use_backend api_metrics_{replica} if {{ path /api-{replica}/metrics }}"
                in sections["frontend api_metrics"])
        backend = sections[f"backend api_metrics_{replica}"]
        assert "http-request set-path /api/metrics" in backend
        assert [line for line in backend if line.startswith("server ")] == [
            f"server api-{replica} 127.0.0.1:{24300 + replica - 1}"]

    def test_prometheus_credential_never_forwarded(self, sections: dict[str, list[str]]) -> None:
        assert "http-request del-header Authorization" in sections["frontend api_metrics"]

    def test_admin_header_set_only_toward_the_replicas(self, config: StackConfig, secrets: Secrets,
                                                       layout: StateLayout) -> None:
        text = haproxy_cfg(config, secrets, layout, Addresses()).content
        header = f'http-request set-header Authorization "{self.admin_header(secrets)}"'
        holding = [name for name, lines in haproxy_sections(text).items() if header in lines]
        assert holding == [f"backend api_metrics_{i}" for i in range(1, API_REPLICAS + 1)]
        assert text.count(self.admin_header(secrets)) == API_REPLICAS

    def test_not_rendered_without_monitoring(self, make_config: Callable[..., StackConfig], secrets: Secrets,
                                             layout: StateLayout) -> None:
        text = haproxy_cfg(make_config(monitoring={"enabled": False}), secrets, layout, Addresses()).content
        assert "api_metrics" not in text and secrets.get("prometheus_scrape") not in text

    def test_tls_like_the_stats_listener(self, make_config: Callable[..., StackConfig], secrets: Secrets,
                                         layout: StateLayout) -> None:
        config = make_config(load_balancer={"bind_address": "0.0.0.0"})  # noqa: S104 - rendered text, not a bind
        sections = haproxy_sections(haproxy_cfg(config, secrets, layout, Addresses()).content)
        assert sections["frontend api_metrics"][0] == (
            f"bind 127.0.0.1:{config.monitoring.api_metrics_port} ssl crt {layout.etc / TLS_PEM} alpn http/1.1")

    def test_port_must_not_collide(self, make_config: Callable[..., StackConfig]) -> None:
        with pytest.raises(UserError, match=r"monitoring\.api_metrics_port"):
            make_config(monitoring={"api_metrics_port": 28404})


def test_deploy_deletes_the_file_that_held_the_admins_password_for_prometheus(plan: LocalPlan) -> None:
    retired = plan.layout.etc / "prometheus-api-password"
    retired.parent.mkdir(parents=True, exist_ok=True)
    retired.write_text("admin password of an earlier version")
    write_files(dataclasses.replace(plan, run_as=None))
    assert not retired.exists() and (plan.layout.etc / "prometheus-scrape-password").exists()


class TestHaproxyTls:
    """TLS at the load balancer: on loopback by choice (mode on), and on all interfaces (auto)."""

    @pytest.fixture
    def on_loopback(self, make_config: Callable[..., StackConfig], secrets: Secrets) -> LocalPlan:
        return build_plan(make_config(load_balancer={"tls": {"mode": "on"}}), secrets)

    @pytest.fixture
    def on_network(self, make_config: Callable[..., StackConfig], secrets: Secrets) -> LocalPlan:
        return build_plan(make_config(load_balancer={"bind_address": "0.0.0.0"}), secrets)  # noqa: S104 - text

    @staticmethod
    def _sections(plan: LocalPlan) -> dict[str, list[str]]:
        return haproxy_sections(_file(plan, "haproxy.cfg").content)

    def test_api_frontend_serves_the_certificate(self, on_loopback: LocalPlan, layout: StateLayout) -> None:
        bind = f"bind 127.0.0.1:24200 ssl crt {layout.etc / TLS_PEM} alpn http/1.1"
        assert bind in self._sections(on_loopback)["frontend prefect"]

    def test_forwarded_proto_is_https(self, on_loopback: LocalPlan) -> None:
        assert "http-request set-header X-Forwarded-Proto https" in self._sections(on_loopback)["frontend prefect"]

    def test_stats_on_loopback_stays_plain(self, on_loopback: LocalPlan) -> None:
        assert "bind 127.0.0.1:28404" in self._sections(on_loopback)["frontend stats"]

    def test_stats_on_the_network_uses_tls(self, on_network: LocalPlan, layout: StateLayout) -> None:
        bind = f"bind 0.0.0.0:28404 ssl crt {layout.etc / TLS_PEM} alpn http/1.1"
        assert bind in self._sections(on_network)["frontend stats"]

    @pytest.mark.parametrize("line", ["ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets"])
    def test_global_tls_defaults(self, on_loopback: LocalPlan, line: str) -> None:
        assert line in self._sections(on_loopback)["global"]

    def test_only_forward_secret_aead_ciphers(self, on_loopback: LocalPlan) -> None:
        line = next(line for line in self._sections(on_loopback)["global"]
                    if line.startswith("ssl-default-bind-ciphers "))
        weak = [c for c in line.split()[1].split(":")
                if not (c.startswith("ECDHE-") and c.endswith(("GCM-SHA256", "GCM-SHA384", "CHACHA20-POLY1305")))]
        assert weak == []

    def test_plaintext_frontend_when_off(self, plan: LocalPlan) -> None:
        assert "bind 127.0.0.1:24200" in self._sections(plan)["frontend prefect"]
        assert all(f.path.name not in (TLS_PEM, TRUSTED_CA) for f in plan.files)

    def test_pem_is_a_secret(self, on_loopback: LocalPlan) -> None:
        assert _file(on_loopback, TLS_PEM).mode == 0o600

    def test_pem_is_haproxys(self, on_loopback: LocalPlan, layout: StateLayout) -> None:
        assert layout.etc / TLS_PEM in [f.path for f in on_loopback.program("haproxy").files]

    def test_trusted_ca_is_readable_and_holds_no_key(self, on_loopback: LocalPlan) -> None:
        trusted = _file(on_loopback, TRUSTED_CA)
        assert (trusted.mode, "PRIVATE KEY" in trusted.content) == (0o644, False)

    @pytest.mark.parametrize("kind", ["api", "services", "migration"])
    def test_prefect_processes_trust_the_ca(self, on_loopback: LocalPlan, layout: StateLayout, kind: str) -> None:
        env = ENVIRONMENTS[kind](on_loopback.config, ensure_secrets(layout.secrets), layout, Addresses())
        assert (env["PREFECT_API_URL"].startswith("https://"), env["PREFECT_API_SSL_CERT_FILE"]) == (
            True, str(layout.etc / TRUSTED_CA))

    @pytest.mark.parametrize("kind", ["api", "services", "migration"])
    def test_no_ca_setting_when_off(self, config: StackConfig, secrets: Secrets, layout: StateLayout,
                                    kind: str) -> None:
        assert "PREFECT_API_SSL_CERT_FILE" not in ENVIRONMENTS[kind](config, secrets, layout, Addresses())

    @pytest.fixture
    def with_operator_certificate(self, make_config: Callable[..., StackConfig], secrets: Secrets,
                                  tmp_path: Path) -> LocalPlan:
        cert, key = issue_self_signed(tmp_path / "operator", ["prefect.example.com"])
        return build_plan(make_config(load_balancer={"tls": {"mode": "on", "cert_file": str(cert),
                                                             "key_file": str(key)}}), secrets)

    def test_operator_certificate_by_sni(self, with_operator_certificate: LocalPlan, layout: StateLayout) -> None:
        # The generated certificate first: HAProxy's default, for clients without SNI (the stack's own, on 127.0.0.1).
        bind = (f"bind 127.0.0.1:24200 ssl crt {layout.etc / TLS_PEM} crt {layout.etc / OPERATOR_TLS_PEM} "
                "alpn http/1.1")
        assert bind in self._sections(with_operator_certificate)["frontend prefect"]

    def test_operator_pem_is_a_secret(self, with_operator_certificate: LocalPlan) -> None:
        assert _file(with_operator_certificate, OPERATOR_TLS_PEM).mode == 0o600

    @pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
    def test_haproxy_accepts_the_operator_certificate(self, with_operator_certificate: LocalPlan) -> None:
        for rendered in with_operator_certificate.program("haproxy").files:
            rendered.path.parent.mkdir(parents=True, exist_ok=True)
            rendered.path.write_text(rendered.content)
        config_file = str(_file(with_operator_certificate, "haproxy.cfg").path)
        result = subprocess.run(["haproxy", "-c", "-f", config_file], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_prometheus_scrapes_stats_over_tls(self, on_network: LocalPlan, layout: StateLayout) -> None:
        document = yaml.safe_load(_file(on_network, "prometheus.yml").content)
        job = next(j for j in document["scrape_configs"] if j["job_name"] == "haproxy")
        assert (job["scheme"], job["tls_config"]["ca_file"]) == ("https", str(layout.etc / TRUSTED_CA))


ENVIRONMENTS = {"api": api_environment, "services": services_environment, "migration": migration_environment}
REDIS_HA = {
    "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}


class TestPrefectEnvironment:
    @pytest.fixture
    def envs(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> dict[str, dict[str, str]]:
        return {kind: render(config, secrets, layout, Addresses()) for kind, render in ENVIRONMENTS.items()}

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    @pytest.mark.parametrize(("key", "value"), REDIS_HA.items())
    def test_redis_ha_setting(self, envs: dict[str, dict[str, str]], kind: str, key: str, value: str) -> None:
        assert envs[kind][key] == value

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    def test_docket_url(self, envs: dict[str, dict[str, str]], secrets: Secrets, kind: str) -> None:
        url = urlsplit(envs[kind]["PREFECT_SERVER_DOCKET_URL"])
        assert (url.scheme, url.password, url.hostname, url.port, url.path) == (
            "redis",
            secrets.get("redis"),
            "127.0.0.1",
            26379,
            f"/{DOCKET_DB}",
        )

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("PREFECT_REDIS_MESSAGING_HOST", "127.0.0.1"),
            ("PREFECT_REDIS_MESSAGING_PORT", "26379"),
            ("PREFECT_REDIS_MESSAGING_DB", str(MESSAGING_DB)),
        ],
    )
    def test_redis_messaging(self, envs: dict[str, dict[str, str]], kind: str, key: str, expected: str) -> None:
        assert envs[kind][key] == expected

    def test_messaging_and_docket_use_separate_dbs(self) -> None:
        assert MESSAGING_DB != DOCKET_DB

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    def test_redis_password(self, envs: dict[str, dict[str, str]], secrets: Secrets, kind: str) -> None:
        assert envs[kind]["PREFECT_REDIS_MESSAGING_PASSWORD"] == secrets.get("redis")

    @pytest.mark.parametrize("kind", ["api", "services"])
    @pytest.mark.parametrize(
        "key", ["PREFECT_SERVER_DATABASE_MIGRATE_ON_START", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START"]
    )
    def test_no_start_up_work(self, envs: dict[str, dict[str, str]], kind: str, key: str) -> None:
        assert envs[kind][key] == "false"

    @pytest.mark.parametrize(
        "key",
        [
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_STATEMENT_CACHE_SIZE",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_PREPARED_STATEMENT_CACHE_SIZE",
        ],
    )
    def test_api_statement_caches_off(self, envs: dict[str, dict[str, str]], key: str) -> None:
        assert envs["api"][key] == "0"

    @pytest.mark.parametrize(
        ("kind", "port", "database"),
        [
            ("api", 26432, "flows"),  # PgBouncer, transaction pool
            ("services", 26432, "flows_session"),  # PgBouncer, session pool (LISTEN)
            ("migration", 25432, "flows"),  # PostgreSQL itself
        ],
    )
    def test_database_url(
        self, envs: dict[str, dict[str, str]], secrets: Secrets, kind: str, port: int, database: str
    ) -> None:
        url = urlsplit(envs[kind]["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
        assert (url.scheme, url.username, url.password, url.hostname, url.port, url.path) == (
            "postgresql+asyncpg",
            "flowrunner",
            secrets.get("postgres_prefect"),
            "127.0.0.1",
            port,
            f"/{database}",
        )

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    @pytest.mark.parametrize("key", ["PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"])
    def test_auth_string(self, envs: dict[str, dict[str, str]], secrets: Secrets, kind: str, key: str) -> None:
        assert envs[kind][key] == secrets.get("prefect_auth")

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    def test_clients_go_through_the_load_balancer(self, envs: dict[str, dict[str, str]], kind: str) -> None:
        assert envs[kind]["PREFECT_API_URL"] == "http://127.0.0.1:24200/api"

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    def test_home_in_state_dir(self, envs: dict[str, dict[str, str]], layout: StateLayout, kind: str) -> None:
        assert envs[kind]["PREFECT_HOME"] == str(layout.prefect_home)

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    def test_values_are_strings(self, envs: dict[str, dict[str, str]], kind: str) -> None:
        assert [key for key, value in envs[kind].items() if not isinstance(value, str)] == []

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("PREFECT_SERVER_METRICS_ENABLED", "true"),
            ("PREFECT_SERVER_API_KEEPALIVE_TIMEOUT", "77"),
            ("PREFECT_SERVER_UI_API_URL", "http://127.0.0.1:24200/api"),
            ("PREFECT_SERVER_LOGGING_LEVEL", "INFO"),
        ],
    )
    def test_api_setting(self, envs: dict[str, dict[str, str]], key: str, expected: str) -> None:
        assert envs["api"][key] == expected

    def test_events_retention(self, envs: dict[str, dict[str, str]]) -> None:
        assert envs["services"]["PREFECT_SERVER_EVENTS_RETENTION_PERIOD"] == "P3D"

    def test_ui_api_url_is_the_public_url(
        self, make_config: Callable[..., StackConfig], secrets: Secrets, layout: StateLayout
    ) -> None:
        config = make_config(load_balancer={"public_url": "https://prefect.example.com/api"})
        env = api_environment(config, secrets, layout, Addresses())
        assert env["PREFECT_SERVER_UI_API_URL"] == "https://prefect.example.com/api"

    def test_addresses_reach_services_by_name(self, config: StackConfig, secrets: Secrets, layout: StateLayout) -> None:
        env = api_environment(config, secrets, layout, Addresses(pgbouncer="pgbouncer", redis="redis"))
        hosts = (
            urlsplit(env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]).hostname,
            urlsplit(env["PREFECT_SERVER_DOCKET_URL"]).hostname,
            env["PREFECT_REDIS_MESSAGING_HOST"],
        )
        assert hosts == ("pgbouncer", "redis", "redis")


class TestPrefectAcceptsTheEnvironment:
    """The names above mean nothing unless Prefect reads them: an unknown PREFECT_* variable is silently ignored."""

    @pytest.fixture
    def apply(
        self,
        config: StackConfig,
        secrets: Secrets,
        layout: StateLayout,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> Callable[[str], dict[str, str]]:
        def apply(kind: str) -> dict[str, str]:
            # Prefect also reads profiles, .env and prefect.toml from the working directory: keep both private.
            for name in list(os.environ):
                if name.startswith("PREFECT_"):
                    monkeypatch.delenv(name)
            monkeypatch.chdir(tmp_path)
            env = ENVIRONMENTS[kind](config, secrets, layout, Addresses())
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            return env

        return apply

    @pytest.mark.parametrize("kind", ENVIRONMENTS)
    def test_every_server_variable_is_a_prefect_setting(
        self, apply: Callable[[str], dict[str, str]], kind: str
    ) -> None:
        from prefect.settings import Settings
        from prefect.settings.legacy import _get_valid_setting_names  # the list `prefect config` validates against

        env = apply(kind)
        known = _get_valid_setting_names(Settings)
        unknown = [k for k in env if k.startswith("PREFECT_") and not k.startswith("PREFECT_REDIS_") and k not in known]
        assert unknown == []

    @pytest.mark.parametrize(
        ("accessor", "expected"),
        [
            ("server.events.messaging_broker", "prefect_redis.messaging"),
            ("server.events.messaging_cache", "prefect_redis.messaging"),
            ("server.events.causal_ordering", "prefect_redis.ordering"),
            ("server.concurrency.lease_storage", "prefect_redis.lease_storage"),
            ("server.database.migrate_on_start", False),
            ("server.register_blocks_on_start", False),
            ("server.metrics_enabled", True),
            ("server.analytics_enabled", False),
            ("server.database.sqlalchemy.connect_args.statement_cache_size", 0),
            ("server.database.sqlalchemy.connect_args.prepared_statement_cache_size", 0),
            ("server.database.sqlalchemy.pool_size", 10),
            ("server.api.keepalive_timeout", 77),
        ],
    )
    def test_api_setting_read_by_prefect(
        self, apply: Callable[[str], dict[str, str]], accessor: str, expected: object
    ) -> None:
        from prefect.settings import Settings

        apply("api")
        value: object = Settings()
        for part in accessor.split("."):
            value = getattr(value, part)
        assert value == expected

    def test_docket_url_read_by_prefect(self, apply: Callable[[str], dict[str, str]]) -> None:
        from prefect.settings import Settings

        env = apply("api")
        assert Settings().server.docket.url == env["PREFECT_SERVER_DOCKET_URL"]

    @pytest.mark.parametrize(
        ("field", "key"),
        [
            ("host", "PREFECT_REDIS_MESSAGING_HOST"),
            ("port", "PREFECT_REDIS_MESSAGING_PORT"),
            ("db", "PREFECT_REDIS_MESSAGING_DB"),
            ("password", "PREFECT_REDIS_MESSAGING_PASSWORD"),
        ],
    )
    def test_redis_setting_read_by_prefect_redis(
        self, apply: Callable[[str], dict[str, str]], field: str, key: str
    ) -> None:
        from prefect_redis.client import RedisMessagingSettings

        env = apply("services")
        assert str(getattr(RedisMessagingSettings(), field)) == env[key]


class TestSupervisord:
    @pytest.fixture
    def parsed(self, plan: LocalPlan) -> configparser.RawConfigParser:
        parser = configparser.RawConfigParser()
        parser.read_string(plan.supervisor_conf.content)
        return parser

    def test_plan_programs_in_start_order(self, plan: LocalPlan) -> None:
        assert [p.name for p in plan.programs] == PROGRAMS

    def test_one_section_per_program(self, parsed: configparser.RawConfigParser) -> None:
        assert [s.removeprefix("program:") for s in parsed.sections() if s.startswith("program:")] == PROGRAMS

    @pytest.mark.parametrize("program", PROGRAMS)
    @pytest.mark.parametrize(("key", "expected"), [("autostart", "false"), ("autorestart", "true")])
    def test_program_setting(self, parsed: configparser.RawConfigParser, program: str, key: str, expected: str) -> None:
        assert parsed[f"program:{program}"][key] == expected

    @pytest.mark.parametrize("program", PROGRAMS)
    def test_user_only_as_root(self, parsed: configparser.RawConfigParser, config: StackConfig, program: str) -> None:
        expected = None if program in OPERATOR_PROGRAMS else service_user(config)
        assert parsed[f"program:{program}"].get("user") == expected

    def test_service_user_as_root(self, config: StackConfig) -> None:
        assert service_user(config) == (config.local.run_as if os.geteuid() == 0 else None)

    @pytest.mark.parametrize("run_as", [None, "someone"])
    def test_user_line_follows_run_as(self, plan: LocalPlan, layout: StateLayout, run_as: str | None) -> None:
        text = supervisord_conf(list(plan.programs), layout, run_as).content
        users = [line for line in text.splitlines() if line.startswith("user=")]
        assert users == ([f"user={run_as}"] * len(set(PROGRAMS) - OPERATOR_PROGRAMS) if run_as else [])

    @pytest.mark.parametrize("program", PROGRAMS)
    def test_log_file(self, parsed: configparser.RawConfigParser, layout: StateLayout, program: str) -> None:
        assert parsed[f"program:{program}"]["stdout_logfile"] == str(layout.log_file(program))

    def test_log_rotation_follows_the_model(self, plan: LocalPlan, layout: StateLayout) -> None:
        rotation = LogRotationConfig(max_size_mb=7, keep=3, max_age_days=2)
        parsed = configparser.RawConfigParser()
        parsed.read_string(supervisord_conf(list(plan.programs), layout, None, rotation).content)
        for program in PROGRAMS:
            assert parsed[f"program:{program}"]["stdout_logfile_maxbytes"] == "7MB"
            assert parsed[f"program:{program}"]["stdout_logfile_backups"] == "3"

    def test_the_log_pruner_applies_the_age_and_count(self, config: StackConfig, plan: LocalPlan,
                                                      layout: StateLayout) -> None:
        command = plan.program("log-pruner").command
        assert command[1:3] == ("-m", "infra.logs.prune")
        rotation = config.logs.rotation
        assert [*command[3:]] == ["--dir", str(layout.logs), "--max-age-days", str(rotation.max_age_days),
                                  "--keep", str(rotation.keep)]

    @pytest.mark.parametrize(("program", "signal"), [("postgres", "INT"), ("pgbouncer", "INT"), ("haproxy", "USR1")])
    def test_graceful_stop_signal(self, parsed: configparser.RawConfigParser, program: str, signal: str) -> None:
        assert parsed[f"program:{program}"]["stopsignal"] == signal

    def test_control_socket_in_run_dir(self, parsed: configparser.RawConfigParser, layout: StateLayout) -> None:
        assert parsed["unix_http_server"]["file"] == str(layout.supervisor_socket)

    def test_control_socket_private(self, parsed: configparser.RawConfigParser) -> None:
        assert parsed["unix_http_server"]["chmod"] == "0700"

    def test_file_is_secret(self, plan: LocalPlan) -> None:
        assert plan.supervisor_conf.mode == 0o600

    def test_percent_escaped(self, layout: StateLayout) -> None:
        program = Program(name="p", component="api", command=("/bin/true",), environment={"RATE": "50%"})
        assert 'environment=RATE="50%%"' in supervisord_conf([program], layout, None).content.splitlines()


def _supervisor_options(path: Path, layout: StateLayout) -> Any:
    from supervisor.options import ServerOptions

    # The parser checks that the directories of the pid and log files exist.
    for directory in layout.service_owned_dirs():
        directory.mkdir(parents=True, exist_ok=True)

    options = ServerOptions()
    options.configfile = str(path)
    options.process_config(do_usage=False)
    return options


class TestSupervisordParser:
    """supervisord's own parser reads the file back: sections, flags and every environment value intact."""

    @pytest.fixture
    def options(self, plan: LocalPlan, layout: StateLayout, tmp_path: Path) -> dict[str, Any]:
        # The parser resolves user= to a uid: render for a user that exists here (the file differs from the
        # deployed one only in that line).
        path = tmp_path / "supervisord.conf"
        path.write_text(supervisord_conf(list(plan.programs), layout, os_user_name()).content)
        groups = _supervisor_options(path, layout).process_group_configs
        return {group.name: group.process_configs[0] for group in groups}

    def test_every_program(self, options: dict[str, Any]) -> None:
        assert sorted(options) == sorted(PROGRAMS)

    @pytest.mark.parametrize("program", PROGRAMS)
    def test_not_autostarted(self, options: dict[str, Any], program: str) -> None:
        assert options[program].autostart is False

    @pytest.mark.parametrize("program", PROGRAMS)
    def test_environment_round_trips(self, options: dict[str, Any], plan: LocalPlan, program: str) -> None:
        assert (options[program].environment or {}) == plan.program(program).environment

    @pytest.mark.parametrize("program", PROGRAMS)
    def test_command_round_trips(self, options: dict[str, Any], plan: LocalPlan, program: str) -> None:
        assert options[program].command == shlex.join(plan.program(program).command)

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("50%", id="percent"),
            pytest.param("%(here)s", id="interpolation"),
            pytest.param("a,B=c", id="comma"),
            pytest.param("two words", id="space"),
            pytest.param("C:\\dir\\", id="backslash"),
            pytest.param("it's", id="single-quote"),
            pytest.param('say "hi" now', id="double-quote"),
        ],
    )
    def test_tricky_value_round_trips(self, layout: StateLayout, tmp_path: Path, value: str) -> None:
        program = Program(name="p", component="api", command=("/bin/true",), environment={"X": value})
        path = tmp_path / "supervisord.conf"
        path.write_text(supervisord_conf([program], layout, None).content)
        process = _supervisor_options(path, layout).process_group_configs[0].process_configs[0]
        assert process.environment == {"X": value}


@pytest.mark.parametrize("value", ["""it's "both\"""", '"quoted"', "'quoted'"])
def test_value_supervisord_cannot_carry_is_refused(layout: StateLayout, value: str) -> None:
    program = Program(name="p", component="api", command=("/bin/true",), environment={"X": value})
    with pytest.raises(ValueError, match="cannot carry"):
        supervisord_conf([program], layout, None)


def _changed(before: LocalPlan, after: LocalPlan) -> list[str]:
    """Programs present in both plans whose fingerprint differs: what `invoke deploy` restarts or reloads."""
    old = {p.name: p.fingerprint() for p in before.programs}
    return [p.name for p in after.programs if p.name in old and old[p.name] != p.fingerprint()]


class TestFingerprint:
    def test_identical_plans_agree(self, config: StackConfig, secrets: Secrets) -> None:
        assert _changed(build_plan(config, secrets), build_plan(config, secrets)) == []

    def test_programs_differ(self, plan: LocalPlan) -> None:
        fingerprints = [p.fingerprint() for p in plan.programs]
        assert len(set(fingerprints)) == len(fingerprints)

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"environment": {"PREFECT_SERVER_LOGGING_LEVEL": "DEBUG"}}, id="environment"),
            pytest.param({"command": ("/bin/false",)}, id="command"),
            pytest.param({"stop_signal": "KILL"}, id="stop-signal"),
            pytest.param({"stop_wait_s": 1}, id="stop-wait"),
        ],
    )
    def test_program_change(self, plan: LocalPlan, change: dict[str, object]) -> None:
        program = plan.program("api-1")
        assert dataclasses.replace(program, **change).fingerprint() != program.fingerprint()  # type: ignore[arg-type]

    def test_file_content_change(self, plan: LocalPlan) -> None:
        program = plan.program("redis")
        edited = dataclasses.replace(program.files[0], content=program.files[0].content + "# edited\n")
        assert dataclasses.replace(program, files=(edited,)).fingerprint() != program.fingerprint()

    def test_file_path_change(self, plan: LocalPlan) -> None:
        program = plan.program("redis")
        moved = dataclasses.replace(program.files[0], path=Path("/elsewhere/redis.conf"))
        assert dataclasses.replace(program, files=(moved,)).fingerprint() != program.fingerprint()

    def test_environment_order_ignored(self, plan: LocalPlan) -> None:
        program = plan.program("api-1")
        reordered = dict(reversed(list(program.environment.items())))
        assert dataclasses.replace(program, environment=reordered).fingerprint() == program.fingerprint()

    @pytest.mark.parametrize(
        ("overrides", "expected"),
        [
            pytest.param({"load_balancer": {"retries": 2}}, ["haproxy"], id="load_balancer.retries"),
            # Prometheus scrapes HAProxy's exporter on the stats port, and each API replica.
            pytest.param({"load_balancer": {"stats_port": 28405}}, ["haproxy", "prometheus"],
                         id="load_balancer.stats_port"),
            pytest.param({"logs": {"levels": {"api": "DEBUG"}}}, API_PROGRAMS, id="logs.levels.api"),
            pytest.param({"logs": {"levels": {"services": "DEBUG"}}}, SERVICES_PROGRAMS, id="logs.levels.services"),
            pytest.param({"api": {"db_pool_size": 5}}, API_PROGRAMS, id="api.db_pool_size"),
            pytest.param({"api": {"replicas": API_REPLICAS + 1}}, ["haproxy", "prometheus"], id="api.replicas"),
            pytest.param({"services": {"replicas": 1}}, [], id="services.replicas"),
            pytest.param({"redis": {"maxmemory": "2gb"}}, ["redis"], id="redis.maxmemory"),
            pytest.param({"pgbouncer": {"default_pool_size": 30}}, ["pgbouncer"], id="pgbouncer.default_pool_size"),
            pytest.param({"postgres": {"max_connections": 300}}, ["postgres"], id="postgres.max_connections"),
        ],
    )
    def test_config_change_touches_only_its_programs(
        self,
        make_config: Callable[..., StackConfig],
        secrets: Secrets,
        overrides: dict[str, dict[str, object]],
        expected: list[str],
    ) -> None:
        before = build_plan(make_config(), secrets)
        after = build_plan(make_config(**overrides), secrets)
        assert _changed(before, after) == expected

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("redis", ["redis", *API_PROGRAMS, *SERVICES_PROGRAMS]),
            ("postgres_prefect", ["pgbouncer", *API_PROGRAMS, *SERVICES_PROGRAMS]),
            # HAProxy's metrics listener adds it toward the replicas; Prometheus never holds it.
            ("prefect_auth", [*API_PROGRAMS, *SERVICES_PROGRAMS, "haproxy", *WORKER_PROGRAMS]),
            ("prometheus_scrape", ["haproxy", "prometheus"]),
            ("postgres_monitor", ["pgbouncer", "postgres-exporter", "prefect-exporter"]),
            ("redis_monitor", ["redis", "redis-exporter", "prefect-exporter"]),
            ("haproxy_stats", ["haproxy"]),
            ("postgres_superuser", []),
        ],
    )
    def test_rotation_touches_only_its_users(
        self, config: StackConfig, layout: StateLayout, name: str, expected: list[str]
    ) -> None:
        before = build_plan(config, ensure_secrets(layout.secrets))
        rotate_secret(layout.secrets, name)
        after = build_plan(config, ensure_secrets(layout.secrets))
        assert _changed(before, after) == expected


def test_postgres_stops_before_the_backup_endpoint_and_after_its_clients() -> None:
    from infra.render.supervisor import priority

    # Higher priority numbers stop first: clients, then PostgreSQL (its archiver still reaching S3), then S3.
    assert priority("api") > priority("pgbouncer") > priority("postgres") > priority("haproxy") > priority("s3")
    assert priority("backup-scheduler") > priority("postgres")
    assert priority("some-new-component") > priority("services")


class TestLogLevels:
    """logs.levels on each component's own scale."""

    @pytest.mark.parametrize(("level", "expected"), [("DEBUG", "debug1"), ("WARNING", "warning"), ("ERROR", "error")])
    def test_postgres_log_min_messages(self, make_config: Callable[..., StackConfig], layout: StateLayout,
                                       level: str, expected: str) -> None:
        text = postgresql_conf(make_config(logs={"levels": {"postgres": level}}), layout).content
        assert settings(text, separator="=")["log_min_messages"] == expected

    @pytest.mark.parametrize(("level", "expected"), [("DEBUG", "debug"), ("INFO", "notice"), ("ERROR", "warning")])
    def test_redis_loglevel(self, make_config: Callable[..., StackConfig], secrets: Secrets, layout: StateLayout,
                            level: str, expected: str) -> None:
        text = redis_conf(make_config(logs={"levels": {"redis": level}}), secrets, layout).content
        assert settings(text)["loglevel"] == expected

    @pytest.mark.parametrize(("level", "expected"), [("DEBUG", ("1", "1")), ("INFO", ("0", "1")),
                                                     ("WARNING", ("0", "0"))])
    def test_pgbouncer_verbosity_and_connection_lines(self, make_config: Callable[..., StackConfig],
                                                      layout: StateLayout, level: str,
                                                      expected: tuple[str, str]) -> None:
        parser = configparser.RawConfigParser()
        parser.read_string(pgbouncer_ini(make_config(logs={"levels": {"pgbouncer": level}}), layout,
                                         Addresses()).content)
        section = parser["pgbouncer"]
        assert (section["verbose"], section["log_connections"]) == expected
        assert section["log_disconnections"] == expected[1]

    def test_pgbouncer_logs_in_again_at_once_and_answers_a_stuck_client_before_the_replica_gives_up(
            self, make_config: Callable[..., StackConfig], layout: StateLayout) -> None:
        parser = configparser.RawConfigParser()
        config = make_config()
        parser.read_string(pgbouncer_ini(config, layout, Addresses()).content)
        section = parser["pgbouncer"]
        assert section["server_login_retry"] == "1"
        assert int(section["query_wait_timeout"]) < config.api.db_timeout_s
        assert section["query_timeout"] == "0"

    @pytest.mark.parametrize("program", ["prometheus", "alertmanager"])
    def test_monitoring_log_level(self, make_config: Callable[..., StackConfig], secrets: Secrets,
                                  program: str) -> None:
        plan = build_plan(make_config(logs={"levels": {"monitoring": "WARNING"}}, monitoring={"enabled": True}),
                          secrets)
        assert "--log.level=warn" in plan.program(program).command
