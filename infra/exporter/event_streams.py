"""Prefect's event pipeline in Redis: stream lengths and each consumer group's lag.

The background services (event persister, triggers, task-run recorder) read Prefect's ``events`` stream in
consumer groups. After a Redis restart or failover they can stop consuming while still "running": the lag
(entries added to the stream that the group has not read) then grows. Idle time is no signal: it is large on
any quiet stack. Stream length is the memory-growth signal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

# prefect-redis's streams (messaging database 0): events, and automation actions.
STREAMS = ("events", "actions")


def _lag(group: dict[str, Any], stream: dict[str, Any]) -> float:
    """Redis 7 reports the lag itself; it is None when it cannot tell (after deletions): then fall back to ids."""
    lag = group.get("lag")
    if lag is not None:
        return float(lag)
    if group.get("last-delivered-id") == stream.get("last-generated-id"):
        return 0.0
    return float(stream.get("length", 0))


def collect_event_streams(client: redis.Redis) -> Iterator[Metric]:
    length = GaugeMetricFamily("prefect_event_stream_length", "Entries in Prefect's Redis stream.", labels=["stream"])
    lag = GaugeMetricFamily("prefect_event_consumer_lag",
                            "Entries added to the stream that the consumer group has not read yet.",
                            labels=["stream", "group"])
    pending = GaugeMetricFamily("prefect_event_consumer_pending",
                                "Entries delivered to the group's consumers but not acknowledged.",
                                labels=["stream", "group"])
    for stream in STREAMS:
        if not client.exists(stream):
            continue  # created by the first event; a fresh stack has none yet
        info: dict[str, Any] = client.xinfo_stream(stream)
        length.add_metric([stream], float(info.get("length", 0)))
        for group in client.xinfo_groups(stream):
            name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
            lag.add_metric([stream, name], _lag(group, info))
            pending.add_metric([stream, name], float(group.get("pending", 0)))
    yield length
    yield lag
    yield pending
