"""The configuration model: where values come from, that the commented file documents the real defaults,
and that a bad value is refused with the field's name and a fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from infra import config as config_module
from infra.config import CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE, StackConfig, load_config
from infra.errors import UserError

STACK_YAML: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
SECTIONS = [name for name, field in StackConfig.model_fields.items() if isinstance(field.default, pydantic.BaseModel)]
MODEL_KEYS = {name for name in StackConfig.model_fields if name not in SECTIONS} | {
    f"{section}.{key}" for section in SECTIONS for key in type(StackConfig.model_fields[section].default).model_fields
}


def _yaml_entries() -> list[tuple[str, str | None, Any]]:
    """(section, key, value) for every leaf of stack.yaml; key is None for a top-level scalar."""
    entries: list[tuple[str, str | None, Any]] = []
    for section, body in STACK_YAML.items():
        if isinstance(body, dict):
            entries += [(section, key, value) for key, value in body.items()]
        else:
            entries.append((section, None, body))
    return entries


def _dotted(section: str, key: str | None) -> str:
    return f"{section}.{key}" if key else section


YAML_ENTRIES = [pytest.param(s, k, v, id=_dotted(s, k)) for s, k, v in _yaml_entries()]


def _model_default(section: str, key: str | None) -> Any:
    default = StackConfig.model_fields[section].default
    if key is None:
        return default
    return default.model_dump(mode="json")[key]


def _write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    return path


class TestStackYaml:
    """infra/stack.yaml is the commented reference: every key real, every value the default."""

    @pytest.mark.parametrize(("section", "key", "value"), YAML_ENTRIES)
    def test_key_is_a_field(self, section: str, key: str | None, value: Any) -> None:
        assert _dotted(section, key) in MODEL_KEYS

    @pytest.mark.parametrize(("section", "key", "value"), YAML_ENTRIES)
    def test_value_is_the_model_default(self, section: str, key: str | None, value: Any) -> None:
        if key is not None and isinstance(value, list):
            # A list of sections (workers.pools) shows only the fields it sets: compare what the model reads.
            section_model = type(StackConfig.model_fields[section].default)
            value = section_model.model_validate({key: value}).model_dump(mode="json")[key]
        assert value == _model_default(section, key)

    @pytest.mark.parametrize(
        ("section", "key"),
        [
            pytest.param(
                section,
                key,
                id=f"{section}.{key}",
            )
            for section in SECTIONS
            for key in type(StackConfig.model_fields[section].default).model_fields
        ],
    )
    def test_every_field_is_documented(self, section: str, key: str) -> None:
        assert key in STACK_YAML.get(section, {})

    def test_whole_file_validates(self) -> None:
        assert isinstance(load_config(**STACK_YAML), StackConfig)


class TestSources:
    def test_defaults_come_from_the_default_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        default_file = tmp_path / "default.yaml"
        default_file.write_text("api:\n  replicas: 5\n")
        monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", default_file)
        assert load_config().api.replicas == 5

    def test_default_file_loads(self) -> None:
        assert load_config().api.replicas == STACK_YAML["api"]["replicas"]

    def test_env_overrides_a_nested_field(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "3")
        assert load_config().api.replicas == 3

    def test_config_file_from_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write_config(tmp_path, monkeypatch, "api:\n  replicas: 4\nredis:\n  port: 26379\n")
        assert load_config().redis.port == 26379

    def test_config_file_keeps_defaults_for_absent_keys(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write_config(tmp_path, monkeypatch, "api:\n  replicas: 4\n")
        assert load_config().api.base_port == STACK_YAML["api"]["base_port"]

    def test_env_beats_config_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _write_config(tmp_path, monkeypatch, "api:\n  replicas: 4\n")
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "3")
        assert load_config().api.replicas == 3

    def test_arguments_beat_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "3")
        assert load_config(api={"replicas": 5}).api.replicas == 5

    def test_state_dir_from_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_LOCAL__STATE_DIR", str(tmp_path / "state"))
        assert load_config().state_dir == (tmp_path / "state").resolve()

    def test_model_is_frozen(self) -> None:
        config = load_config()
        with pytest.raises(pydantic.ValidationError):
            config.target = "compose"  # type: ignore[misc]


# (environment variables, YAML file text or None, strings the message must contain)
BAD_CONFIGS: dict[str, tuple[dict[str, str], str | None, tuple[str, ...]]] = {
    "replicas-not-a-number": ({"PREFECT_STACK_API__REPLICAS": "abc"}, None, ("api.replicas",)),
    "replicas-zero": ({"PREFECT_STACK_API__REPLICAS": "0"}, None, ("api.replicas",)),
    "port-above-65535": ({"PREFECT_STACK_REDIS__PORT": "70000"}, None, ("redis.port",)),
    "log-level-unknown": ({"PREFECT_STACK_LOGS__LEVELS__API": "LOUD"}, None, ("logs.levels.api",)),
    "log-level-malformed-in-file": ({}, "logs: {levels: {redis: verbose}}\n", ("logs.levels.redis",)),
    "unknown-key-in-section": ({}, "api: {replica: 2}\n", ("api.replica", "unknown key")),
    "unknown-top-level-key": ({}, "bogus: 1\n", ("bogus", "unknown key")),
    "section-not-a-mapping": ({}, "api: 3\n", ("api",)),
    "same-port-twice": ({"PREFECT_STACK_REDIS__PORT": "15432"}, None, ("redis.port", "postgres.port")),
    "api-replica-on-another-port": (
        {"PREFECT_STACK_API__BASE_PORT": "16378", "PREFECT_STACK_API__REPLICAS": "2"},
        None,
        ("redis.port", "api.base_port"),
    ),
    "missing-config-file": ({CONFIG_FILE_ENV: "{tmp}/missing.yaml"}, None, (CONFIG_FILE_ENV, "missing.yaml")),
    "yaml-syntax-error": ({}, "api: [replicas: 2\n  : x\n", ("stack.yaml",)),
    "yaml-tab-indent": ({}, "api:\n\treplicas: 2\n", ("stack.yaml",)),
    "api-port-beyond-65535": (
        {"PREFECT_STACK_API__BASE_PORT": "65535", "PREFECT_STACK_API__REPLICAS": "2"},
        None,
        ("api.base_port",),
    ),
}

BAD_CASES = [pytest.param(*case, id=name) for name, case in BAD_CONFIGS.items()]


def _load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], yaml_text: str | None
) -> UserError:
    if yaml_text is not None:
        _write_config(tmp_path, monkeypatch, yaml_text)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    with pytest.raises(UserError) as caught:
        load_config()
    return caught.value


class TestBadValues:
    @pytest.mark.parametrize(("env", "yaml_text", "expected"), BAD_CASES)
    def test_message_names_the_field(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        env: dict[str, str],
        yaml_text: str | None,
        expected: tuple[str, ...],
    ) -> None:
        message = str(_load_error(tmp_path, monkeypatch, env, yaml_text))
        assert [text for text in expected if text not in message] == []

    @pytest.mark.parametrize(("env", "yaml_text", "expected"), BAD_CASES)
    def test_error_carries_a_fix(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        env: dict[str, str],
        yaml_text: str | None,
        expected: tuple[str, ...],
    ) -> None:
        assert _load_error(tmp_path, monkeypatch, env, yaml_text).fix

    def test_bad_env_value_names_its_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "abc")
        with pytest.raises(UserError) as caught:
            load_config()
        assert "PREFECT_STACK_API__REPLICAS" in str(caught.value)

    def test_bad_value_shows_what_was_given(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "abc")
        with pytest.raises(UserError) as caught:
            load_config()
        assert "'abc'" in str(caught.value)

    def test_fix_names_the_config_file_in_use(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = _write_config(tmp_path, monkeypatch, "api: {replica: 2}\n")
        with pytest.raises(UserError) as caught:
            load_config()
        assert str(path) in (caught.value.fix or "")

    def test_error_is_not_a_traceback_of_pydantic(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "abc")
        with pytest.raises(UserError) as caught:
            load_config()
        assert "errors.pydantic.dev" not in str(caught.value)


class TestPorts:
    @pytest.mark.parametrize("replicas", [1, 2, 3])
    def test_one_port_field_per_replica(self, replicas: int) -> None:
        fields = load_config(api={"replicas": replicas}).port_fields()
        assert len([name for name in fields if name.startswith("api.")]) == replicas

    @pytest.mark.parametrize(
        "name", ["postgres.port", "pgbouncer.port", "redis.port", "load_balancer.port", "load_balancer.stats_port"]
    )
    def test_port_field_listed(self, name: str) -> None:
        assert name in load_config().port_fields()

    @pytest.mark.parametrize(("replica", "port"), [(1, 24300), (2, 24301), (3, 24302)])
    def test_api_port(self, replica: int, port: int) -> None:
        assert load_config(api={"replicas": 3, "base_port": 24300}).api_port(replica) == port

    @pytest.mark.parametrize("replica", [1, 2, 3])
    def test_port_fields_agree_with_api_port(self, replica: int) -> None:
        config = load_config(api={"replicas": 3, "base_port": 24300})
        assert config.port_fields()[f"api.base_port (replica {replica})"] == config.api_port(replica)

    def test_defaults_use_distinct_ports(self) -> None:
        ports = list(load_config().port_fields().values())
        assert len(ports) == len(set(ports))


class TestUrls:
    @pytest.mark.parametrize(
        ("bind", "url"),
        [
            ("127.0.0.1", "http://127.0.0.1:24200/api"),
            ("::1", "http://[::1]:24200/api"),
            # A non-loopback bind turns TLS on (mode auto); clients on this host still use loopback.
            ("0.0.0.0", "https://127.0.0.1:24200/api"),  # noqa: S104 - a URL under test, not a bind
            ("::", "https://127.0.0.1:24200/api"),
            ("10.1.2.3", "https://10.1.2.3:24200/api"),
        ],
    )
    def test_api_url_goes_through_the_load_balancer(self, bind: str, url: str) -> None:
        assert load_config(load_balancer={"bind_address": bind, "port": 24200}).api_url == url

    def test_public_url_defaults_to_api_url(self) -> None:
        config = load_config()
        assert config.public_api_url == config.api_url

    def test_public_url_when_set(self) -> None:
        url = "https://prefect.example.com/api"
        assert load_config(load_balancer={"public_url": url}).public_api_url == url


class TestTls:
    @pytest.mark.parametrize(
        ("target", "bind", "mode", "enabled"),
        [
            ("local", "127.0.0.1", "auto", False),
            ("local", "localhost", "auto", False),
            ("local", "::1", "auto", False),
            ("local", "0.0.0.0", "auto", True),  # noqa: S104 - configuration under test, not a bind
            ("local", "10.1.2.3", "auto", True),
            ("local", "prefect.internal", "auto", True),
            ("compose", "127.0.0.1", "auto", True),
            ("kubernetes", "127.0.0.1", "auto", True),
            ("local", "127.0.0.1", "on", True),
            ("local", "127.0.0.1", "off", False),
        ],
    )
    def test_mode_resolves(self, target: str, bind: str, mode: str, enabled: bool) -> None:
        config = load_config(target=target, load_balancer={"bind_address": bind, "tls": {"mode": mode}})
        assert config.tls_enabled is enabled

    def test_urls_are_https_when_on(self) -> None:
        config = load_config(load_balancer={"port": 24200, "tls": {"mode": "on"}})
        assert (config.api_url, config.public_api_url) == ("https://127.0.0.1:24200/api",) * 2

    @pytest.mark.parametrize(
        ("target", "bind", "named"),
        [
            ("local", "0.0.0.0", "load_balancer.bind_address 0.0.0.0 is not loopback"),  # noqa: S104
            ("local", "10.1.2.3", "load_balancer.bind_address 10.1.2.3 is not loopback"),
            ("compose", "127.0.0.1", "target compose serves clients over a network"),
        ],
    )
    def test_plaintext_on_the_network_is_refused(self, target: str, bind: str, named: str) -> None:
        with pytest.raises(UserError) as caught:
            load_config(target=target, load_balancer={"bind_address": bind, "tls": {"mode": "off"}})
        message = str(caught.value)
        for words in (named, "load_balancer.tls.mode", "load_balancer.tls.allow_plaintext_on_network"):
            assert words in message

    def test_opt_out_allows_plaintext_on_the_network(self) -> None:
        config = load_config(load_balancer={"bind_address": "0.0.0.0",  # noqa: S104 - configuration, not a bind
                                            "tls": {"mode": "off", "allow_plaintext_on_network": True}})
        assert config.api_url.startswith("http://")

    def test_plaintext_on_loopback_needs_no_opt_out(self) -> None:
        assert not load_config(load_balancer={"tls": {"mode": "off"}}).tls_enabled

    @pytest.mark.parametrize(("given", "missing"), [("cert_file", "key_file"), ("key_file", "cert_file")])
    def test_certificate_and_key_go_together(self, given: str, missing: str) -> None:
        with pytest.raises(UserError, match=f"load_balancer.tls.{given} is set but load_balancer.tls.{missing}"):
            load_config(load_balancer={"tls": {given: "/etc/ssl/prefect.pem"}})

    def test_nested_environment_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_LOAD_BALANCER__TLS__MODE", "on")
        assert load_config().tls_enabled


class TestStateDir:
    def test_configured_state_dir_is_absolute(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        assert load_config(local={"state_dir": "relative"}).state_dir == tmp_path.resolve() / "relative"

    def test_default_state_dir(self) -> None:
        expected = Path("/var/lib/prefect-stack") if os.geteuid() == 0 else Path.home() / ".local/state/prefect-stack"
        assert load_config().state_dir == expected


# (target, overrides, the setting and the limit the message must name)
TOO_CLOSE_TO_THE_LIMIT = {
    "compose-maxmemory-at-the-limit": ("compose", {"redis": {"maxmemory": "1gb"}},
                                       ("redis.maxmemory", "compose.redis_memory", "at most 512mb", "at least 2g")),
    "compose-maxmemory-above-the-limit": ("compose", {"redis": {"maxmemory": "600mb"},
                                                      "compose": {"redis_memory": "512m"}},
                                          ("redis.maxmemory", "compose.redis_memory", "at most 256mb")),
    "kubernetes-maxmemory-near-the-limit": ("kubernetes", {"redis": {"maxmemory": "1gb"},
                                                           "kubernetes": {"redis": {"resources": {
                                                               "memory_request": "1536Mi",
                                                               "memory_limit": "1536Mi"}}}},
                                            ("redis.maxmemory", "kubernetes.redis.resources.memory_limit",
                                             "at most 768mb", "at least 2Gi")),
    "compose-shared-buffers": ("compose", {"postgres": {"shared_buffers": "512MB"}},
                               ("postgres.shared_buffers", "compose.postgres_memory", "at most 409MB")),
    "kubernetes-shared-buffers": ("kubernetes", {"postgres": {"shared_buffers": "1GB"}},
                                  ("postgres.shared_buffers", "kubernetes.postgres.resources.memory_limit")),
}


class TestDataMemoryFitsItsLimit:
    """Redis's maxmemory and PostgreSQL's shared_buffers leave room under the container's memory limit."""

    @pytest.mark.parametrize("target", ["local", "compose", "kubernetes"])
    def test_defaults_fit_every_target(self, target: str) -> None:
        load_config(target=target)

    @pytest.mark.parametrize(("target", "overrides", "named"), list(TOO_CLOSE_TO_THE_LIMIT.values()),
                             ids=list(TOO_CLOSE_TO_THE_LIMIT))
    def test_refused_naming_the_setting_the_limit_and_the_fix(self, target: str, overrides: dict[str, Any],
                                                              named: tuple[str, ...]) -> None:
        with pytest.raises(UserError) as caught:
            load_config(target=target, **overrides)
        assert [text for text in named if text not in str(caught.value)] == []

    def test_half_the_limit_is_accepted(self) -> None:
        load_config(target="compose", redis={"maxmemory": "1gb"}, compose={"redis_memory": "2g"})

    def test_no_limit_on_the_local_target(self) -> None:
        load_config(target="local", redis={"maxmemory": "8gb"}, postgres={"shared_buffers": "4GB"})

    def test_an_external_redis_is_not_ours_to_size(self) -> None:
        load_config(target="kubernetes", redis={"maxmemory": "8gb"},
                    kubernetes={"redis": {"mode": "external", "external_url": "redis://redis.example.com:6379"}})

    def test_compose_runs_the_data_containers_under_their_own_limits(self) -> None:
        from infra.compose.project import reference_rendering

        config = load_config(target="compose", compose={"redis_memory": "3g", "postgres_memory": "5g"})
        services = reference_rendering(config).document["services"]
        limits = {name: services[name]["deploy"]["resources"]["limits"]["memory"] for name in ("redis", "postgres")}
        assert limits == {"redis": "3g", "postgres": "5g"}


# (section, resources, the field the message names)
NOT_GUARANTEED = {
    "redis-memory": ("redis", {"memory_request": "512Mi", "memory_limit": "1Gi"}, "memory_request"),
    "redis-no-cpu-limit": ("redis", {"cpu_limit": None}, "cpu_limit null"),
    "postgres-cpu": ("postgres", {"cpu_request": "500m", "cpu_limit": "1"}, "cpu_limit 1"),
}


class TestDataPodsAreGuaranteed:
    @pytest.mark.parametrize(("section", "resources", "named"), list(NOT_GUARANTEED.values()), ids=list(NOT_GUARANTEED))
    def test_requests_below_limits_refused(self, section: str, resources: dict[str, Any], named: str) -> None:
        with pytest.raises(UserError, match=f"kubernetes.{section}.resources.{named}.*Guaranteed QoS"):
            load_config(target="kubernetes", kubernetes={section: {"resources": resources}})

    def test_equal_quantities_spelt_differently_are_equal(self) -> None:
        load_config(target="kubernetes", kubernetes={"postgres": {"resources": {
            "cpu_request": "1", "cpu_limit": "1000m", "memory_request": "2048Mi", "memory_limit": "2Gi"}}})


def test_a_backup_pod_too_small_for_verifications_temporary_server_is_refused() -> None:
    with pytest.raises(UserError, match=r"backup_resources.memory_limit 512Mi.*temporary PostgreSQL server"):
        load_config(target="kubernetes", kubernetes={"backup_resources": {"memory_request": "512Mi",
                                                                          "memory_limit": "512Mi"}})


@pytest.mark.parametrize(("env", "expected"), [
    ({"PREFECT_STACK_PGBOUNCER__QUERY_WAIT_TIMEOUT_S": "30"}, "pgbouncer.query_wait_timeout_s (30) must be less than "
                                                             "api.db_timeout_s (30)"),
    ({"PREFECT_STACK_PGBOUNCER__QUERY_TIMEOUT_S": "45"}, "pgbouncer.query_timeout_s (45) must be less than"),
    ({"PREFECT_STACK_API__DB_TIMEOUT_S": "90"}, "api.db_timeout_s (90) must be less than "
                                                "load_balancer.timeout_server_s (60)"),
])
def test_the_pooler_and_the_load_balancer_must_answer_in_an_order_clients_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str) -> None:
    error = _load_error(tmp_path, monkeypatch, env, None)
    assert expected in str(error)
