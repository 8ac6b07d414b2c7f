"""`invoke secrets.rotate NAME`: replace one credential and apply it to the running stack.

A credential whose server can hold two values (``TWO_PHASE``: Redis's users) is rotated in two deploys:

1. the new value is generated and the old one kept as ``NAME.previous``; deploy makes the server accept both (Redis:
   ``ACL SETUSER``, no restart), then moves every client to the new one (API replicas one at a time, drained first);
2. the old value is dropped; deploy makes the server accept only the new one. No client used it any more.

Every other credential is replaced in one deploy, which applies it in dependency order: the server first
(PostgreSQL's role, PgBouncer's list), then the clients (a rolling restart of the API replicas). Those whose clients
notice (``CLIENTS_NOTICE``: one password per user in PgBouncer, one auth string in Prefect) are said before the
deploy. An interrupted two-phase rotation is resumed by running the same command again: the retiring value is still
on disk, so nothing is stranded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infra.errors import UserError
from infra.layout import StateLayout
from infra.progress import Progress
from infra.secrets import (
    SECRET_NAMES,
    TWO_PHASE,
    check_rotatable,
    finish_rotation,
    rotate_secret,
    rotation_under_way,
)
from infra.targets import DeployOutcome, Target

# Credentials whose rotation clients notice, and why: said before the deploy, so an operator can stop and pick a
# maintenance window instead of learning it from the errors.
CLIENTS_NOTICE = {
    "postgres_prefect": "API requests fail until every replica has moved to the new password (PgBouncer and "
                        "PostgreSQL hold one password per user)",
    "prefect_auth": "every Prefect client and worker needs the new value (eval \"$(invoke env)\"); until then "
                    "its requests are refused",
}


@dataclass(frozen=True)
class RotationOutcome:
    name: str
    two_phase: bool
    resumed: bool
    deploys: tuple[DeployOutcome, ...]

    @property
    def summary(self) -> str:
        how = "in two phases (old and new accepted while the clients moved)" if self.two_phase else "in one deploy"
        again = " (resumed an interrupted rotation)" if self.resumed else ""
        return f"rotated {self.name} ({SECRET_NAMES[self.name]}) {how}{again}"


def _deployed(outcome: DeployOutcome, name: str, phase: str) -> None:
    if not outcome.healthy:
        unhealthy = ", ".join(s.name for s in outcome.statuses if not s.healthy)
        raise UserError(
            f"the rotation of {name} stopped after its {phase}: unhealthy {unhealthy}",
            fix=f"see invoke status and invoke logs; once fixed, run invoke secrets.rotate {name} again to finish "
                "(the old value is kept until then)" if name in TWO_PHASE else
                "see invoke status and invoke logs, then run invoke deploy to finish applying the new value",
        )


def rotate(target: Target, name: str, progress: Progress, step: Callable[[str], None]) -> RotationOutcome:
    """Rotate ``name`` and apply it through ``target``'s deploy (one deploy, or two for a two-phase credential)."""
    check_rotatable(name)
    directory = StateLayout(target.config.state_dir).secrets
    if not (directory / "prefect_auth").is_file():
        raise UserError(f"nothing is deployed from {target.config.state_dir}: there is no {name} to rotate",
                        fix="run invoke deploy first (it generates every secret)")
    two_phase = name in TWO_PHASE
    resumed = two_phase and rotation_under_way(directory, name)
    if name in CLIENTS_NOTICE:
        step(f"warning: rotating {name} is not seamless: {CLIENTS_NOTICE[name]}")
    rotate_secret(directory, name)
    deploys: list[DeployOutcome] = []
    if two_phase:
        step(f"phase 1 of 2: the server accepts the old and the new {name}; the clients move to the new one")
        deploys.append(target.deploy(progress))
        _deployed(deploys[-1], name, "first phase")
        finish_rotation(directory, name)
        step(f"phase 2 of 2: every client uses the new {name}; the server stops accepting the old one")
        deploys.append(target.deploy(progress))
        _deployed(deploys[-1], name, "second phase")
    else:
        step(f"applying the new {name}: the server first, then its clients")
        deploys.append(target.deploy(progress))
        _deployed(deploys[-1], name, "deploy")
    return RotationOutcome(name=name, two_phase=two_phase, resumed=resumed, deploys=tuple(deploys))
