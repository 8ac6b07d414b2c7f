"""Real processes: the Kubernetes target's Redis Sentinel scripts and templates, run on loopback ports.

Three "pods" (a directory each, standing in for the ConfigMap, the Secret, the emptyDir and the volume) run the
rendered start-redis.sh and start-sentinel.sh with Debian's redis-server, as the StatefulSet would, all at once.
A client built from ``redis_environment``'s URLs through prefect-redis and through Docket writes; the primary is
SIGKILLed; the Sentinels promote a replica; the same clients work again, and the killed pod, started again, joins
the new primary as a replica; a restarted Sentinel finds the primary; pre-stop.sh hands the primary role over
under a stream of writes; a primary cut off from its replicas stops taking writes; the project's exporter reads
the streams on the primary the Sentinels name, before and after the failover. Then a standalone pod and its
exporter.

Unlike the rest of tests/unit this starts processes (Debian's redis-server and prometheus-redis-exporter, on
free loopback ports; skipped without redis-server): the scripts only prove themselves by running. About 35 s;
every process is killed at the end, pass or fail.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from infra.config import load_config
from infra.containers.entrypoint import _redis_run_id
from infra.exporter.server import Sources, StackCollector, redis_client
from infra.kubernetes.redis import (
    MASTER_SET,
    MIN_REPLICAS_MAX_LAG_S,
    SECRET_KEY_MONITOR,
    SECRET_KEY_PASSWORD,
    config_files,
    exporter_env,
    redis_environment,
)
from infra.render.redis import DOCKET_DB, MESSAGING_DB, MONITOR_USER
from infra.secrets import Secrets, ensure_secrets
from tests.conftest import free_ports

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("prometheus-redis-exporter")
                                is None, reason="needs Debian's redis-server and prometheus-redis-exporter")

PODS = 3
LOOPBACK = "127.0.0.1"
SETTLE_TIMEOUT_S = 25.0
FAILOVER_TIMEOUT_S = 25.0
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    """Poll ``check`` until it returns something other than None (or False); fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except (redis.RedisError, OSError):
            result = None
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Pod:
    index: int
    redis_port: int
    sentinel_port: int
    root: Path
    password: str
    exporter_port: int = 0  # the standalone pod's exporter only
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, pods: list[Pod]) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "POD_NAME": f"redis-{self.index}",
            "ANNOUNCE_HOST": LOOPBACK,
            "REDIS_PORT": str(self.redis_port),
            "SENTINEL_PORT": str(self.sentinel_port),
            "REDIS_NODES": " ".join(f"{LOOPBACK}:{p.redis_port}" for p in pods),
            "SENTINELS": " ".join(f"{LOOPBACK}:{p.sentinel_port}" for p in pods),
            "MASTER_SET": MASTER_SET,
            "SCRIPTS_DIR": str(self.root / "scripts"),
            "SECRET_DIR": str(self.root / "secret"),
            "RUN_DIR": str(self.root / "run"),
            "EXPORTER_RUN_DIR": str(self.root / "exporter"),
            **exporter_env(self.exporter_port),
        }

    def start(self, script: str, pods: list[Pod]) -> None:
        log = (self.root / f"{script}.log").open("ab")
        self.processes[script] = subprocess.Popen(
            ["sh", str(self.root / "scripts" / f"start-{script}.sh")], env=self.env(pods), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def redis(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.redis_port, password=self.password, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)

    def sentinel(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.sentinel_port, password=self.password, socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)

    def run(self, script: str, pods: list[Pod], *args: str) -> int:
        return subprocess.run(["sh", str(self.root / "scripts" / script), *args], env=self.env(pods),
                              capture_output=True, timeout=40, check=False).returncode

    def probe(self, check: str, pods: list[Pod]) -> int:
        return self.run("probe.sh", pods, check)


def passes(pod: Pod, check: str, pods: list[Pod]) -> bool:
    return pod.probe(check, pods) == 0


def make_pods(tmp: Path, secrets: Secrets) -> list[Pod]:
    config = load_config(target="kubernetes")
    ports = free_ports(2 * PODS)
    pods = []
    for i in range(PODS):
        root = tmp / f"redis-{i}"
        pod = Pod(i, ports[2 * i], ports[2 * i + 1], root, secrets.get("redis"))
        for directory in ("scripts", "secret", "run", "data", "exporter"):
            (root / directory).mkdir(parents=True, mode=0o700)
        files = config_files(config, sentinel=True, redis_port=pod.redis_port, sentinel_port=pod.sentinel_port,
                             bind=LOOPBACK, data_dir=str(root / "data"), run_dir=str(root / "run"))
        for name, text in files.items():
            (root / "scripts" / name).write_text(text)
        (root / "secret" / SECRET_KEY_PASSWORD).write_text(secrets.get("redis"))
        (root / "secret" / SECRET_KEY_MONITOR).write_text(secrets.get("redis_monitor"))
        pods.append(pod)
    return pods


def primary_port(pod: Pod) -> int | None:
    with pod.sentinel() as client:
        answer = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_SET)
    return int(answer[1]) if answer else None


def settled(pods: list[Pod], primary: Pod) -> bool:
    """Every replica follows the primary and every Sentinel knows the primary, both replicas, both other Sentinels."""
    with primary.redis() as client:
        replication = client.info("replication")
    if replication["role"] != "master" or replication["connected_slaves"] != PODS - 1:
        return False
    # A connected replica still syncing is not a good one for min-replicas-to-write: writes would get NOREPLICAS.
    if any(replication[f"slave{i}"]["state"] != "online" for i in range(PODS - 1)):
        return False
    for pod in pods:
        with pod.sentinel() as client:
            state = client.execute_command("SENTINEL", "MASTER", MASTER_SET)
        state = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
        if int(state["num-slaves"]) != PODS - 1 or int(state["num-other-sentinels"]) != PODS - 1:
            return False
    return True


def loopback_url(url: str, pods: list[Pod]) -> str:
    """The rendered URL with the pods' DNS names replaced by this test's loopback Sentinels."""
    members = ",".join(f"{LOOPBACK}:{p.sentinel_port}" for p in pods)
    return re.sub(r"@[^/]+/", f"@{members}/", url, count=1)


async def until_ok(what: str, action: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """Run ``action`` until it succeeds: clients see one broken connection to the dead primary, then reconnect."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await action()
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} still failing after {timeout_s:.0f} s") from None
            await asyncio.sleep(0.2)


@dataclass
class Observations:
    pod_0_port: int = 0
    initial_primary: int = 0
    promoted_primary: int = 0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    run_ids: tuple[str | None, str | None] = (None, None)
    rejoined: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, bool] = field(default_factory=dict)
    replica_ready_without_primary: bool = True
    replica_alive_without_primary: bool = False
    restarted_sentinel_primary: int = 0
    switchover: dict[str, Any] = field(default_factory=dict)
    partition: dict[str, Any] = field(default_factory=dict)
    exporter_before: dict[str, Any] = field(default_factory=dict)
    exporter_after: dict[str, Any] = field(default_factory=dict)
    monitor_failover: str = ""


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)


def exporter_sources(pods: list[Pod], monitor_password: str) -> Sources:
    """The project's exporter as the Kubernetes target runs it in sentinel mode: the streams through the pods'
    Sentinels, as the monitor user (no PostgreSQL here: that source is reported down)."""
    return Sources(postgres_host=LOOPBACK, postgres_port=1, database="prefect", pgbouncer_host=None,
                   pgbouncer_port=0, redis_host=None, redis_port=0, postgres_password="",
                   redis_password=monitor_password, finished_runs_window_s=60, sslmode="disable",
                   redis_sentinels=tuple((LOOPBACK, p.sentinel_port) for p in pods), redis_master_set=MASTER_SET)


def exporter_reading(sources: Sources) -> dict[str, Any] | None:
    """What one scrape reads of Redis (None while the redis source is down), and which Redis its client reaches."""
    samples = {(s.name, s.labels.get("source", s.labels.get("stream"))): s.value
               for family in StackCollector(sources).collect() for s in family.samples}
    if samples.get(("prefect_exporter_source_up", "redis")) != 1.0:
        return None
    with redis_client(sources) as client:
        served_by = int(client.info("server")["tcp_port"])
    return {"events": samples.get(("prefect_event_stream_length", "events")), "served by": served_by}


async def scenario(pods: list[Pod], env: dict[str, str], stop_primary: Callable[[Pod], None],
                   restart: Callable[[Pod], None], restart_sentinel: Callable[[Pod], None],
                   exporter: Sources) -> Observations:
    from docket._redis import RedisConnection
    from prefect_redis.client import get_async_redis_client
    from prefect_redis.connection import aclose_redis_client

    seen = Observations()
    seen.pod_0_port = pods[0].redis_port
    seen.initial_primary = await asyncio.to_thread(primary_port, pods[1])
    messaging_url = env["PREFECT_REDIS_MESSAGING_URL"]
    docket_url = env["PREFECT_SERVER_DOCKET_URL"]
    prefect_client = get_async_redis_client(url=messaging_url)
    async with RedisConnection(docket_url) as docket, docket.client() as docket_client:
        await prefect_client.set("k8s-test:messaging", "before")
        await prefect_client.xadd("k8s-test:events", {"event": "before"})
        await docket_client.set("k8s-test:docket", "before")
        # Both replicas have it before the primary dies: the write is not lost in the failover.
        seen.before["replicas acknowledged"] = await prefect_client.execute_command("WAIT", PODS - 1, 5000)
        seen.before["messaging db"] = int((await prefect_client.client_info())["db"])
        seen.before["docket db"] = int((await docket_client.client_info())["db"])
        seen.run_ids = (await asyncio.to_thread(_redis_run_id, env), None)
        await prefect_client.xadd("events", {"event": "before"})
        seen.exporter_before = await asyncio.to_thread(
            wait_for, "the exporter to read the streams", lambda: exporter_reading(exporter), SETTLE_TIMEOUT_S)

        old = next(p for p in pods if p.redis_port == seen.initial_primary)
        stop_primary(old)
        replica = next(p for p in pods if p is not old)
        seen.replica_ready_without_primary = await asyncio.to_thread(replica.probe, "redis-ready", pods) == 0
        seen.replica_alive_without_primary = await asyncio.to_thread(replica.probe, "redis-alive", pods) == 0
        seen.promoted_primary = await asyncio.to_thread(
            wait_for, "a Sentinel to name a new primary",
            lambda: next((port for p in pods if p is not old and (port := primary_port(p)) != old.redis_port),
                         None), FAILOVER_TIMEOUT_S)

        seen.after["messaging read"] = await until_ok("prefect-redis read",
                                                      lambda: prefect_client.get("k8s-test:messaging"))
        seen.after["stream length"] = await until_ok("prefect-redis xlen",
                                                     lambda: prefect_client.xlen("k8s-test:events"))
        await until_ok("prefect-redis write", lambda: prefect_client.set("k8s-test:messaging", "after"))
        seen.after["messaging write"] = await prefect_client.get("k8s-test:messaging")
        seen.after["docket read"] = await until_ok("docket read", lambda: docket_client.get("k8s-test:docket"))
        await until_ok("docket write", lambda: docket_client.set("k8s-test:docket", "after"))
        seen.after["docket write"] = await docket_client.get("k8s-test:docket")
        seen.after["served by"] = int(
            (await until_ok("prefect-redis info", lambda: prefect_client.info("server")))["tcp_port"])
        seen.run_ids = (seen.run_ids[0], await asyncio.to_thread(_redis_run_id, env))
        seen.exporter_after = await asyncio.to_thread(
            wait_for, "the exporter to read the streams after the failover", lambda: exporter_reading(exporter),
            SETTLE_TIMEOUT_S)

    restart(old)

    def rejoined() -> dict[str, Any] | None:
        with old.redis() as client:
            info = client.info("replication")
        return info if info.get("master_link_status") == "up" else None

    info = await asyncio.to_thread(wait_for, "the old primary to rejoin as a replica", rejoined, SETTLE_TIMEOUT_S)
    seen.rejoined = {"role": info["role"], "master_port": int(info["master_port"])}

    # A restarted Sentinel learns the current primary from the others (start-sentinel.sh asks them).
    restart_sentinel(old)
    seen.restarted_sentinel_primary = await asyncio.to_thread(
        wait_for, "the restarted Sentinel to answer", lambda: primary_port(old), SETTLE_TIMEOUT_S)

    # A rollout: pre-stop.sh on the primary while a client keeps incrementing a counter.
    promoted = next(p for p in pods if p.redis_port == seen.promoted_primary)
    stop = asyncio.Event()
    tally = {"acknowledged": 0, "failed": 0}
    errors: list[str] = []
    started = time.monotonic()

    async def writer() -> None:
        while not stop.is_set():
            try:
                await prefect_client.incr("k8s-test:counter")
                tally["acknowledged"] += 1
            except (redis.RedisError, OSError) as exc:
                tally["failed"] += 1
                errors.append(f"{time.monotonic() - started:.2f} {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)

    writing = asyncio.create_task(writer())
    await until_ok("the first counted write", lambda: prefect_client.get("k8s-test:counter"))
    started = time.monotonic()
    seen.switchover["pre-stop exit"] = await asyncio.to_thread(promoted.run, "pre-stop.sh", pods)
    seen.switchover["pre-stop s"] = time.monotonic() - started
    before = tally["acknowledged"]
    # The writer goes on through the new primary: twenty more writes, bounded.
    await asyncio.wait_for(_until(lambda: tally["acknowledged"] >= before + 20), 10)
    stop.set()
    await writing
    seen.switchover["counter"] = int(await prefect_client.get("k8s-test:counter"))
    seen.switchover.update(tally)
    seen.switchover["errors"] = errors
    with promoted.redis() as client:
        seen.switchover["old primary role"] = client.info("replication")["role"]
    seen.switchover["new primary"] = primary_port(pods[0])
    await aclose_redis_client(prefect_client)
    for pod in pods:
        for check in ("redis-ready", "sentinel"):
            seen.probes[f"redis-{pod.index} {check}"] = await asyncio.to_thread(
                wait_for, f"probe {check} of redis-{pod.index}", functools.partial(passes, pod, check, pods),
                SETTLE_TIMEOUT_S)
    seen.monitor_failover = await asyncio.to_thread(monitor_failover, pods[0], exporter.redis_password)
    seen.partition = await asyncio.to_thread(partition, pods, seen.switchover["new primary"])
    return seen


def monitor_failover(pod: Pod, monitor_password: str) -> str:
    """What a Sentinel answers the monitor user asking for a failover."""
    with redis.Redis(host=LOOPBACK, port=pod.sentinel_port, username=MONITOR_USER, password=monitor_password,
                     socket_timeout=2, decode_responses=True) as client:
        try:
            return str(client.execute_command("SENTINEL", "FAILOVER", MASTER_SET))
        except redis.ResponseError as exc:
            return f"{type(exc).__name__}: {exc}"


def partition(pods: list[Pod], primary_port: int) -> dict[str, Any]:
    """The primary cut off from both replicas (SIGSTOP: they neither answer nor acknowledge), as on the minority
    side of a partition: it refuses writes within min-replicas-max-lag; it took them before."""
    primary = next(p for p in pods if p.redis_port == primary_port)
    replicas = [p for p in pods if p is not primary]
    seen: dict[str, Any] = {}
    with primary.redis() as client:
        seen["before"] = client.set("k8s-test:partition", "before")

        def refused() -> str | None:
            try:
                client.set("k8s-test:partition", "during")
            except redis.ResponseError as exc:
                return str(exc)
            return None

        for pod in replicas:
            os.kill(pod.processes["redis"].pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            seen["refused"] = wait_for("the partitioned primary to refuse writes", refused, SETTLE_TIMEOUT_S)
            seen["after s"] = time.monotonic() - started
        finally:
            for pod in replicas:
                os.kill(pod.processes["redis"].pid, signal.SIGCONT)
    return seen


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observations]:
    tmp = tmp_path_factory.mktemp("sentinel")
    secrets = ensure_secrets(tmp / "secrets")
    pods = make_pods(tmp, secrets)
    env = {name: loopback_url(url, pods) for name, url in
           redis_environment(load_config(target="kubernetes"), secrets).items()}
    try:
        # As the StatefulSet does (podManagementPolicy Parallel): every Redis and every Sentinel at once.
        for pod in pods:
            pod.start("redis", pods)
            pod.start("sentinel", pods)
        wait_for("the pods to settle (replication and Sentinel discovery)", lambda: settled(pods, pods[0]),
                 SETTLE_TIMEOUT_S)

        def stop_primary(pod: Pod) -> None:
            pod.processes["redis"].kill()  # SIGKILL: no shutdown, no goodbye to the replicas
            pod.processes["redis"].wait(10)

        def restart_sentinel(pod: Pod) -> None:
            pod.processes["sentinel"].kill()
            pod.processes["sentinel"].wait(10)
            pod.start("sentinel", pods)

        yield asyncio.run(scenario(pods, env, stop_primary, lambda pod: pod.start("redis", pods), restart_sentinel,
                                   exporter_sources(pods, secrets.get("redis_monitor"))))
    finally:
        for pod in pods:
            for process in pod.processes.values():
                if process.poll() is None:
                    process.kill()
                process.wait(10)


class TestSentinelFailover:
    def test_pod_0_is_the_first_primary(self, observed: Observations) -> None:
        assert observed.initial_primary == observed.pod_0_port

    def test_both_replicas_acknowledged_the_writes(self, observed: Observations) -> None:
        assert observed.before["replicas acknowledged"] == PODS - 1

    @pytest.mark.parametrize(("client", "db"), [("messaging db", MESSAGING_DB), ("docket db", DOCKET_DB)])
    def test_each_url_selects_its_database(self, observed: Observations, client: str, db: int) -> None:
        assert observed.before[client] == db

    def test_a_replica_is_promoted(self, observed: Observations) -> None:
        assert observed.promoted_primary != observed.initial_primary

    def test_clients_are_served_by_the_promoted_replica(self, observed: Observations) -> None:
        assert observed.after["served by"] == observed.promoted_primary

    @pytest.mark.parametrize(("fact", "expected"), [
        ("messaging read", "before"), ("stream length", 1), ("docket read", b"before"),
        ("messaging write", "after"), ("docket write", b"after"),  # Docket decodes nothing
    ])
    def test_same_url_works_after_failover(self, observed: Observations, fact: str, expected: object) -> None:
        assert observed.after[fact] == expected

    def test_entrypoint_sees_a_new_primary(self, observed: Observations) -> None:
        before, after = observed.run_ids
        assert before is not None and after is not None and before != after

    def test_old_primary_rejoins_as_replica(self, observed: Observations) -> None:
        assert observed.rejoined == {"role": "slave", "master_port": observed.promoted_primary}

    @pytest.mark.parametrize("probe", [f"redis-{i} {check}" for i in range(PODS)
                                       for check in ("redis-ready", "sentinel")])
    def test_probes_pass_after_rejoin(self, observed: Observations, probe: str) -> None:
        assert observed.probes[probe]

    def test_replica_without_primary_not_ready(self, observed: Observations) -> None:
        assert not observed.replica_ready_without_primary

    def test_replica_without_primary_alive(self, observed: Observations) -> None:
        assert observed.replica_alive_without_primary


class TestExporterFollowsThePrimary:
    """The project's exporter reads the event streams on the primary the Sentinels name, as the monitor user."""

    def test_reads_the_first_primary(self, observed: Observations) -> None:
        assert observed.exporter_before == {"events": 1.0, "served by": observed.initial_primary}

    def test_reads_the_promoted_replica_after_failover(self, observed: Observations) -> None:
        assert observed.exporter_after == {"events": 1.0, "served by": observed.promoted_primary}

    def test_monitor_user_cannot_fail_over(self, observed: Observations) -> None:
        assert observed.monitor_failover.startswith("NoPermissionError"), observed.monitor_failover


class TestRestartedSentinel:
    def test_learns_the_current_primary(self, observed: Observations) -> None:
        assert observed.restarted_sentinel_primary == observed.promoted_primary


class TestGracefulSwitchover:
    """pre-stop.sh on the primary, as a rollout or a drain runs it, under a steady stream of writes."""

    def test_pre_stop_succeeds(self, observed: Observations) -> None:
        assert observed.switchover["pre-stop exit"] == 0

    def test_another_pod_is_primary(self, observed: Observations) -> None:
        assert observed.switchover["new primary"] != observed.promoted_primary

    def test_old_primary_is_a_replica(self, observed: Observations) -> None:
        assert observed.switchover["old primary role"] == "slave"

    def test_no_acknowledged_write_lost(self, observed: Observations) -> None:
        assert observed.switchover["counter"] >= observed.switchover["acknowledged"]

    def test_only_the_write_in_flight_fails(self, observed: Observations) -> None:
        # The paused write is answered READONLY once the pod is a replica; prefect-redis builds its clients
        # without retries, so that one write fails (and was not applied). A SIGKILL fails writes for seconds.
        assert observed.switchover["failed"] <= 1, observed.switchover["errors"]

    def test_quick(self, observed: Observations) -> None:
        assert observed.switchover["pre-stop s"] < 20


class TestPartitionedPrimary:
    """min-replicas-to-write: a primary that reaches no replica stops taking writes a failover would discard."""

    def test_writes_before(self, observed: Observations) -> None:
        assert observed.partition["before"] is True

    def test_refuses_writes_without_replicas(self, observed: Observations) -> None:
        assert observed.partition["refused"].startswith("NOREPLICAS")

    def test_within_the_lag(self, observed: Observations) -> None:
        # Replicas acknowledge every second: the lag, one acknowledgement period, and slack for a busy machine.
        assert observed.partition["after s"] < MIN_REPLICAS_MAX_LAG_S + 3


@dataclass
class StandaloneObservations:
    role: str = ""
    min_replicas_to_write: str = ""
    ready: bool = False
    served: str | None = None
    metrics: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneObservations]:
    """The standalone mode's pod: one Redis from the same scripts, with the exporter beside it."""
    import urllib.request

    tmp = tmp_path_factory.mktemp("standalone")
    secrets = ensure_secrets(tmp / "secrets")
    config = load_config(target="kubernetes", kubernetes={"redis": {"mode": "standalone"}})
    redis_port, exporter_port = free_ports(2)
    pod = Pod(0, redis_port, 0, tmp / "redis-0", secrets.get("redis"), exporter_port)
    for directory in ("scripts", "secret", "run", "data", "exporter"):
        (pod.root / directory).mkdir(parents=True, mode=0o700)
    files = config_files(config, sentinel=False, redis_port=redis_port, bind=LOOPBACK,
                         data_dir=str(pod.root / "data"), run_dir=str(pod.root / "run"))
    for name, text in files.items():
        (pod.root / "scripts" / name).write_text(text)
    (pod.root / "secret" / SECRET_KEY_PASSWORD).write_text(secrets.get("redis"))
    (pod.root / "secret" / SECRET_KEY_MONITOR).write_text(secrets.get("redis_monitor"))
    url = redis_environment(config, secrets)["PREFECT_REDIS_MESSAGING_URL"]
    url = re.sub(r"@[^/]+/", f"@{LOOPBACK}:{redis_port}/", url, count=1)

    def metrics() -> dict[str, str] | None:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{exporter_port}/metrics", timeout=2) as response:
            lines = response.read().decode().splitlines()
        found = dict(line.rsplit(" ", 1) for line in lines if line.startswith(("redis_up ", "redis_stream_length")))
        return found if found.get("redis_up") == "1" and "redis_stream_length{db=\"db0\",stream=\"events\"}" in \
            found else None

    seen = StandaloneObservations()
    try:
        pod.start("redis", [pod])
        pod.start("exporter", [pod])
        seen.ready = wait_for("the standalone Redis to be ready", lambda: pod.probe("redis-ready", [pod]) == 0,
                              SETTLE_TIMEOUT_S)
        with pod.redis() as client:
            seen.role = client.info("replication")["role"]
            seen.min_replicas_to_write = client.config_get("min-replicas-to-write")["min-replicas-to-write"]
        with redis.Redis.from_url(url, socket_timeout=2, decode_responses=True) as client:
            client.xadd("events", {"event": "standalone"})
            seen.served = client.xrange("events")[0][1]["event"]
        seen.metrics = wait_for("the exporter to report the events stream", metrics, SETTLE_TIMEOUT_S)
        yield seen
    finally:
        for process in pod.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(10)


class TestStandalonePod:
    def test_primary(self, standalone: StandaloneObservations) -> None:
        assert standalone.role == "master"

    def test_ready(self, standalone: StandaloneObservations) -> None:
        assert standalone.ready

    def test_writes_need_no_replica(self, standalone: StandaloneObservations) -> None:
        assert standalone.min_replicas_to_write == "0"

    def test_url_serves(self, standalone: StandaloneObservations) -> None:
        assert standalone.served == "standalone"

    def test_exporter_reads_the_events_stream_as_the_monitor_user(self, standalone: StandaloneObservations) -> None:
        assert standalone.metrics['redis_stream_length{db="db0",stream="events"}'] == "1"
