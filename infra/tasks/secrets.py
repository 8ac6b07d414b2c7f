"""Tasks on generated credentials."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from infra import console
from infra.config import load_config
from infra.layout import StateLayout
from infra.rotation import rotate as rotate_and_apply
from infra.secrets import (
    NOT_ROTATED,
    SECRET_NAMES,
    TWO_PHASE,
    rotate_secret,
    rotation_under_way,
)
from infra.tasks import reports_user_errors
from infra.tasks.stack import TARGET_HELP, _target

ROTATABLE = [name for name in SECRET_NAMES if name not in NOT_ROTATED]


@task(positional=["name"], help={
    "name": "Which secret: " + ", ".join(ROTATABLE),
    "apply": "Apply it to the running stack now (default); --no-apply only replaces the file for the next deploy.",
    "target": TARGET_HELP,
})
@reports_user_errors
def rotate(c: Context, name: str, apply: bool = True, target: str | None = None) -> None:
    """Replace one secret with a new random value and apply it to the running stack."""
    if not apply:
        rotate_secret(StateLayout(load_config().state_dir).secrets, name)
        then = f", then invoke secrets.rotate {name} to stop accepting the old one" if name in TWO_PHASE else ""
        console.step(f"rotated {name} ({SECRET_NAMES[name]}); run invoke deploy to apply it{then}")
        return
    chosen = _target(target, "deploy")
    how = "two phases: old and new accepted while clients move" if name in TWO_PHASE else "one deploy"
    console.step(f"rotating {name} on target {chosen.config.target} ({how})")
    outcome = rotate_and_apply(chosen, name, console.progress(), console.step)
    for deployed in outcome.deploys:
        for note in deployed.notes:
            console.note(note)
    console.step(outcome.summary)


@task(name="list")
@reports_user_errors
def list_(c: Context) -> None:
    """List the secrets the stack generates and what each protects (never their values)."""
    directory = StateLayout(load_config().state_dir).secrets
    for name, what in SECRET_NAMES.items():
        under_way = rotation_under_way(directory, name)
        console.out.print(f"{name:20} {what}", soft_wrap=True)
        if under_way:  # the old value is still accepted
            console.out.print(f"{'':20} rotation under way: invoke secrets.rotate {name} finishes it", soft_wrap=True)
