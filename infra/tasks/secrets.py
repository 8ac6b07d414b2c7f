"""Tasks on generated credentials."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from infra import console
from infra.config import load_config
from infra.layout import StateLayout
from infra.secrets import SECRET_NAMES, rotate_secret
from infra.tasks import reports_user_errors


@task(positional=["name"], help={"name": "Which secret: " + ", ".join(SECRET_NAMES)})
@reports_user_errors
def rotate(c: Context, name: str) -> None:
    """Replace one secret with a new random value; the next invoke deploy applies it everywhere."""
    layout = StateLayout(load_config().state_dir)
    rotate_secret(layout.secrets, name)
    console.step(f"rotated {name} ({SECRET_NAMES[name]}); run invoke deploy to apply it")


@task(name="list")
def list_(c: Context) -> None:
    """List the secrets the stack generates and what each protects (never their values)."""
    for name, what in SECRET_NAMES.items():
        console.out.print(f"{name:20} {what}")
