"""The automations that turn a dead flow run Crashed and run a crashed deployment run again, from the model.

Prefect has no server service that notices a flow run whose process vanished (a worker host lost, a pod evicted):
the run stays RUNNING for ever. Its documented answer is flow-run heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
set on every worker by the targets) watched by a proactive automation: no heartbeat and no final state within
``flow_heartbeat_s x missed_heartbeats`` after the last heartbeat marks the run Crashed.

Prefect's flow retries act on a failure inside a running flow, never on Crashed. The second automation schedules a
crashed run of a provisioned pool again (the same run: its parameters and its history kept). It is bounded by the
run count the state-change event carries (``prefect.run-count``): a run that crashed on its n-th attempt is
scheduled again only while n <= crashed_run_retries, so a run that always crashes stops, Crashed, and the
PrefectFlowRunsCrashing alert tells someone. A run that crashed before it ever started (run count 0: its
infrastructure never came up) is not retried either: another attempt would fail the same way.
"""

from __future__ import annotations

from typing import Any

from infra.config import StackConfig

# Provisioned automations carry this prefix: deploy owns exactly these and leaves every other automation alone.
NAME_PREFIX = "prefect-stack: "
ZOMBIE = NAME_PREFIX + "mark flow runs without heartbeats Crashed"
RETRY_CRASHED = NAME_PREFIX + "schedule crashed deployment runs again"

FINAL_STATES = ("Completed", "Failed", "Cancelled", "Crashed")


def desired_automations(config: StackConfig) -> list[dict[str, Any]]:
    """The automations as the API's AutomationCreate bodies, in a stable order."""
    if not config.workers.enabled:
        return []
    workers = config.workers
    automations: list[dict[str, Any]] = [{
        "name": ZOMBIE,
        "description": f"A running flow run sends a heartbeat every {workers.flow_heartbeat_s} s "
                       f"(workers.flow_heartbeat_s); {workers.missed_heartbeats} missed in a row "
                       "(workers.missed_heartbeats) mean its process is gone. Provisioned by invoke deploy.",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in FINAL_STATES)],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": workers.flow_heartbeat_timeout_s,
        },
        "actions": [{
            "type": "change-flow-run-state",
            "state": "CRASHED",
            "message": f"No heartbeat for {workers.flow_heartbeat_timeout_s} s: the flow run's process is gone "
                       "(marked by the stack's zombie-run automation).",
        }],
    }]
    if workers.crashed_run_retries > 0:
        attempts = [str(count) for count in range(1, workers.crashed_run_retries + 1)]
        automations.append({
            "name": RETRY_CRASHED,
            "description": f"A deployment run of a provisioned pool that crashed is scheduled again, at most "
                           f"{workers.crashed_run_retries} time(s) (workers.crashed_run_retries). Provisioned by "
                           "invoke deploy.",
            "enabled": True,
            "trigger": {
                "type": "event",
                "posture": "Reactive",
                "expect": ["prefect.flow-run.Crashed"],
                "match": {"prefect.resource.id": ["prefect.flow-run.*"], "prefect.run-count": attempts},
                "match_related": {"prefect.resource.role": "work-pool",
                                  "prefect.resource.name": [pool.name for pool in workers.pools]},
                "for_each": ["prefect.resource.id"],
                "threshold": 1,
                "within": 0,
            },
            "actions": [{
                "type": "change-flow-run-state",
                "state": "SCHEDULED",
                "name": "AwaitingRetry",
                # A final state leaves only by force (Prefect's UI retries the same way).
                "force": True,
                "message": "Scheduled again after a crash by the stack's crashed-run automation "
                           f"(at most {workers.crashed_run_retries} time(s)).",
            }],
        })
    return automations
