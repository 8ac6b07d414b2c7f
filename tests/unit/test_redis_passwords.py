"""Rotating Redis's passwords: the rendered redis.conf mid-rotation, and the hand-over to a running Debian
redis-server (ACL SETUSER) that keeps its connections and never restarts it. Starts one redis-server on a free
loopback port (skipped without it); about a second."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from infra.config import load_config
from infra.layout import StateLayout
from infra.redis_passwords import apply_passwords
from infra.render.redis import MONITOR_USER, redis_conf
from infra.render.supervisor import Program
from infra.secrets import Secrets, ensure_secrets, finish_rotation, rotate_secret
from tests.conftest import free_ports


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    ensure_secrets(directory)
    return directory


def _conf(tmp_path: Path, secrets: Secrets, port: int = 6379) -> str:
    config = load_config(local={"state_dir": str(tmp_path / "state")}, redis={"port": port})
    return redis_conf(config, secrets, StateLayout(config.state_dir)).content


class TestRenderedMidRotation:
    def test_one_password_is_requirepass(self, tmp_path: Path, secrets_dir: Path) -> None:
        secrets = ensure_secrets(secrets_dir)
        assert f"requirepass {secrets.get('redis')}\n" in _conf(tmp_path, secrets)

    def test_mid_rotation_the_default_user_takes_both(self, tmp_path: Path, secrets_dir: Path) -> None:
        old = ensure_secrets(secrets_dir).get("redis")
        rotate_secret(secrets_dir, "redis")
        secrets = ensure_secrets(secrets_dir)
        text = _conf(tmp_path, secrets)
        assert f"user default on >{secrets.get('redis')} >{old} ~* &* +@all\n" in text
        assert "requirepass" not in text

    def test_mid_rotation_the_monitor_user_takes_both(self, tmp_path: Path, secrets_dir: Path) -> None:
        old = ensure_secrets(secrets_dir).get("redis_monitor")
        rotate_secret(secrets_dir, "redis_monitor")
        secrets = ensure_secrets(secrets_dir)
        assert f"user {MONITOR_USER} on >{secrets.get('redis_monitor')} >{old} ~*" in _conf(tmp_path, secrets)

    def test_a_password_change_leaves_the_settings_fingerprint(self, tmp_path: Path, secrets_dir: Path) -> None:
        """deploy hands Redis new passwords instead of restarting it only when nothing else changed."""
        def program(secrets: Secrets, maxmemory: str = "512mb") -> Program:
            config = load_config(local={"state_dir": str(tmp_path / "state")}, redis={"maxmemory": maxmemory})
            return Program("redis", "redis", ("redis-server",), files=(
                redis_conf(config, secrets, StateLayout(config.state_dir)),))

        before = program(ensure_secrets(secrets_dir))
        rotate_secret(secrets_dir, "redis")
        after = program(ensure_secrets(secrets_dir))
        assert after.fingerprint() != before.fingerprint()
        assert after.settings_fingerprint() == before.settings_fingerprint()
        assert program(ensure_secrets(secrets_dir), "256mb").settings_fingerprint() != before.settings_fingerprint()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs Debian's redis-server")
class TestHandOver:
    @pytest.fixture
    def server(self, tmp_path: Path, secrets_dir: Path) -> Iterator[int]:
        port = free_ports(1)[0]
        StateLayout(tmp_path / "state").redis_data.mkdir(parents=True)
        conf = tmp_path / "redis.conf"
        conf.write_text(_conf(tmp_path, ensure_secrets(secrets_dir), port).replace("appendonly yes", "appendonly no"))
        process = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    redis.Redis(port=port, password=ensure_secrets(secrets_dir).get("redis")).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.1)
            yield port
        finally:
            process.kill()
            process.wait()

    @staticmethod
    def _accepts(port: int, password: str, user: str = "default") -> bool:
        try:
            redis.Redis(port=port, username=user, password=password).ping()
        except redis.AuthenticationError:
            return False
        return True

    def test_two_phases_keep_every_connection(self, server: int, secrets_dir: Path) -> None:
        old, old_monitor = (ensure_secrets(secrets_dir).get(n) for n in ("redis", "redis_monitor"))
        held = redis.Redis(port=server, password=old, single_connection_client=True)
        held.ping()

        def connect(password: str) -> redis.Redis:
            return redis.Redis(port=server, password=password)

        rotate_secret(secrets_dir, "redis")
        rotate_secret(secrets_dir, "redis_monitor")
        new, new_monitor = (ensure_secrets(secrets_dir).get(n) for n in ("redis", "redis_monitor"))
        assert apply_passwords(connect, ensure_secrets(secrets_dir))
        assert [self._accepts(server, p) for p in (old, new)] == [True, True]
        assert [self._accepts(server, p, MONITOR_USER) for p in (old_monitor, new_monitor)] == [True, True]

        finish_rotation(secrets_dir, "redis")
        finish_rotation(secrets_dir, "redis_monitor")
        assert apply_passwords(connect, ensure_secrets(secrets_dir))
        assert [self._accepts(server, p) for p in (old, new)] == [False, True]
        assert [self._accepts(server, p, MONITOR_USER) for p in (old_monitor, new_monitor)] == [False, True]
        assert held.ping()  # authenticated before: kept through both phases

    def test_the_monitor_user_keeps_its_limits(self, server: int, secrets_dir: Path) -> None:
        rotate_secret(secrets_dir, "redis_monitor")
        secrets = ensure_secrets(secrets_dir)
        assert apply_passwords(lambda p: redis.Redis(port=server, password=p), secrets)
        monitor = redis.Redis(port=server, username=MONITOR_USER, password=secrets.get("redis_monitor"))
        assert monitor.info("server")["redis_version"]
        with pytest.raises(redis.exceptions.NoPermissionError):
            monitor.set("key", "value")

    def test_unknown_to_the_server_is_reported_not_forced(self, server: int, tmp_path: Path) -> None:
        """Secrets replaced by hand (none of their values is what Redis accepts): False, so deploy restarts it."""
        strangers = ensure_secrets(tmp_path / "other-secrets")
        assert not apply_passwords(lambda p: redis.Redis(port=server, password=p), strangers)
