"""The supervised exporter process: ``python -m infra.exporter.server --config FILE``.

It reads the effective configuration the last deploy rendered (addresses, ports, the trailing window) and the
monitor role's password files, then serves every collector on one loopback port. Each scrape reads every
source afresh; a source that fails is reported as down (``prefect_exporter_source_up{source=...} 0``) while the
others are still served, so one broken dependency never blinds the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.sentinel import Sentinel

from infra.exporter.event_streams import collect_event_streams
from infra.exporter.flow_runs import collect_flow_runs, collect_work_pools
from infra.exporter.pgbouncer import collect_pools
from infra.render.postgres import MONITOR_ROLE
from infra.render.redis import MESSAGING_DB, MONITOR_USER

log = logging.getLogger("prefect-stack.exporter")
CONNECT_TIMEOUT_S = 3
# A scrape must never hang Prometheus' scrape loop: every query is cut off after this.
STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Sources:
    postgres_host: str
    postgres_port: int
    database: str
    pgbouncer_host: str | None  # None: no PgBouncer of ours (Kubernetes: CloudNativePG's Poolers export their own)
    pgbouncer_port: int
    redis_host: str | None  # None: no Redis at a fixed address (none at all, or one behind redis_sentinels)
    redis_port: int
    postgres_password: str
    redis_password: str
    finished_runs_window_s: int
    # libpq's sslmode for PostgreSQL and PgBouncer: "prefer" (libpq's default) on loopback; "require" or stricter
    # where the database is across a network (Kubernetes).
    sslmode: str = "prefer"
    sslrootcert: str | None = None  # the CA file the verify modes check the server against (None: libpq's default)
    redis_tls: bool = False
    # Sentinels (host, port) naming the primary of redis_master_set, asked as the monitor user with its password:
    # the streams are read on whichever Redis is the primary now (a replica's lag lags; a dead pod answers nothing).
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_master_set: str | None = None

    @property
    def reads_redis(self) -> bool:
        return self.redis_host is not None or bool(self.redis_sentinels)


@contextlib.contextmanager
def redis_client(s: Sources) -> Iterator[redis.Redis]:
    """A client of the messaging database as the monitor user, closed afterwards: on the primary the Sentinels
    name when there are Sentinels (asked at each connection, so a failover is followed), else on the fixed
    address."""
    if not s.redis_sentinels:
        client = redis.Redis(host=s.redis_host or "", port=s.redis_port, db=MESSAGING_DB, username=MONITOR_USER,
                             password=s.redis_password, socket_timeout=CONNECT_TIMEOUT_S,
                             socket_connect_timeout=CONNECT_TIMEOUT_S, ssl=s.redis_tls)
        with client:
            yield client
        return
    auth = {"username": MONITOR_USER, "password": s.redis_password, "socket_timeout": CONNECT_TIMEOUT_S,
            "socket_connect_timeout": CONNECT_TIMEOUT_S}
    # redis-py's Sentinel API carries no type annotations.
    sentinel = Sentinel(list(s.redis_sentinels), sentinel_kwargs=auth)  # type: ignore[no-untyped-call]
    primary: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        s.redis_master_set or "", db=MESSAGING_DB, ssl=s.redis_tls, **auth)
    try:
        yield primary
    finally:
        primary.connection_pool.disconnect()  # a pool given to a client is not closed with it
        for client in sentinel.sentinels:
            client.close()


class StackCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def _database(self) -> psycopg.Connection[tuple[object, ...]]:
        s = self.sources
        return psycopg.connect(host=s.postgres_host, port=s.postgres_port, dbname=s.database, user=MONITOR_ROLE,
                               password=s.postgres_password, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True,
                               sslmode=s.sslmode, sslrootcert=s.sslrootcert,
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                               application_name="prefect-stack-exporter")

    def _pgbouncer(self) -> psycopg.Connection[tuple[object, ...]]:
        s = self.sources
        return psycopg.connect(host=s.pgbouncer_host, port=s.pgbouncer_port, dbname="pgbouncer", user=MONITOR_ROLE,
                               password=s.postgres_password, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True,
                               sslmode=s.sslmode, sslrootcert=s.sslrootcert, cursor_factory=psycopg.ClientCursor)

    def _prefect(self) -> Iterator[Metric]:
        with self._database() as conn:
            yield from collect_flow_runs(conn, self.sources.finished_runs_window_s)
            yield from collect_work_pools(conn, self.sources.finished_runs_window_s)

    def _streams(self) -> Iterator[Metric]:
        if not self.sources.reads_redis:  # not a source then (collect() does not list it)
            return
        with redis_client(self.sources) as client:
            yield from collect_event_streams(client)

    def _pools(self) -> Iterator[Metric]:
        with self._pgbouncer() as conn:
            yield from collect_pools(conn)

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        up = GaugeMetricFamily("prefect_exporter_source_up", "1 when the last scrape could read this source.",
                               labels=["source"])
        sources: dict[str, Callable[[], Iterator[Metric]]] = {"postgres": self._prefect}
        if self.sources.reads_redis:
            sources["redis"] = self._streams
        if self.sources.pgbouncer_host is not None:
            sources["pgbouncer"] = self._pools
        for name, read in sources.items():
            try:
                metrics = list(read())  # all or nothing per source: no half-read families
            except Exception as exc:  # any failure of a source is reported, never raised into the scrape
                log.warning("cannot read %s: %s", name, exc)
                up.add_metric([name], 0.0)
                if name == "pgbouncer":
                    yield GaugeMetricFamily("pgbouncer_up", "1 when PgBouncer's console answered.", value=0.0)
                continue
            up.add_metric([name], 1.0)
            if name == "pgbouncer":
                yield GaugeMetricFamily("pgbouncer_up", "1 when PgBouncer's console answered.", value=1.0)
            yield from metrics
        yield up
        all_up = all(sample.value == 1.0 for sample in up.samples)
        yield GaugeMetricFamily("prefect_exporter_up", "1 when every source was read.", value=1.0 if all_up else 0.0)
        yield GaugeMetricFamily("prefect_exporter_scrape_duration_seconds", "Time the last scrape took.",
                                value=time.monotonic() - started)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    return host, int(port)


def parse_arguments(argv: list[str] | None = None) -> tuple[tuple[str, int], Sources]:
    """Where to listen and what to read, from the command line (password files are read here, once)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", type=_host_port, required=True, help="host:port to serve /metrics on")
    parser.add_argument("--postgres", required=True, help="host:port/database of PostgreSQL (direct, not pooled)")
    parser.add_argument("--pgbouncer", type=_host_port, help="host:port of PgBouncer (omitted: no PgBouncer source)")
    parser.add_argument("--redis", type=_host_port, help="host:port of Redis (omitted: no event-stream source, "
                                                         "unless --redis-sentinels)")
    parser.add_argument("--redis-sentinels", type=lambda text: tuple(_host_port(t) for t in text.split(",")),
                        default=(), help="host:port,... of Sentinels naming the Redis primary (instead of --redis)")
    parser.add_argument("--redis-master-set", help="the Sentinels' name for the primary (with --redis-sentinels)")
    parser.add_argument("--postgres-password-file", type=Path, required=True)
    parser.add_argument("--redis-password-file", type=Path)
    parser.add_argument("--sslmode", default="prefer",
                        choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
                        help="libpq sslmode for PostgreSQL and PgBouncer (default prefer)")
    parser.add_argument("--sslrootcert", help="CA certificate file the verify sslmodes check the server against")
    parser.add_argument("--redis-tls", action="store_true", help="connect to Redis over TLS (rediss://)")
    parser.add_argument("--finished-runs-window", type=int, default=3600,
                        help="seconds of finished runs and of workers' claims to report (default 3600)")
    args = parser.parse_args(argv)
    if args.redis is not None and args.redis_sentinels:
        parser.error("give --redis or --redis-sentinels, not both")
    if (args.redis is not None or args.redis_sentinels) and args.redis_password_file is None:
        parser.error("--redis and --redis-sentinels need --redis-password-file")
    if bool(args.redis_sentinels) != bool(args.redis_master_set):
        parser.error("--redis-sentinels and --redis-master-set go together")
    postgres, _, database = args.postgres.partition("/")
    postgres_host, postgres_port = _host_port(postgres)
    sources = Sources(
        postgres_host=postgres_host, postgres_port=postgres_port, database=database or "prefect",
        pgbouncer_host=args.pgbouncer[0] if args.pgbouncer else None,
        pgbouncer_port=args.pgbouncer[1] if args.pgbouncer else 0,
        redis_host=args.redis[0] if args.redis else None, redis_port=args.redis[1] if args.redis else 0,
        postgres_password=args.postgres_password_file.read_text().strip(),
        redis_password=args.redis_password_file.read_text().strip() if args.redis_password_file else "",
        finished_runs_window_s=args.finished_runs_window, sslmode=args.sslmode,
        sslrootcert=args.sslrootcert, redis_tls=args.redis_tls,
        redis_sentinels=args.redis_sentinels, redis_master_set=args.redis_master_set,
    )
    return args.listen, sources


def main(argv: list[str] | None = None) -> int:
    (host, port), sources = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    REGISTRY.register(StackCollector(sources))
    start_http_server(port, addr=host)
    log.info("serving metrics on http://%s:%d/metrics", host, port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
