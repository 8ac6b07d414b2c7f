"""Tasks on the project's container images: build what is missing, list what exists, push them for Kubernetes."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.config import load_config
from infra.containers.engine import docker_client, docker_host
from infra.containers.images import ensure_images, image_refs, image_size
from infra.tasks import reports_user_errors


@task(help={"force": "Rebuild every image (and re-run debootstrap) even when its tag already exists."})
@reports_user_errors
def build(c: Context, force: bool = False) -> None:
    """Build the compose target's images (Debian base, system, prefect); an image whose tag exists is kept."""
    config = load_config()
    client = docker_client(config)
    console.step(f"images for the compose target on {docker_host(config)} (base: {config.compose.base})")
    results = ensure_images(config, client, console.progress(), force=force)
    for result in results:
        console.note(result.describe())
    built = sum(r.seconds for r in results if r.action != "up to date")
    console.step(f"images ready ({built:.1f}s of building)" if built else "images up to date: nothing built")


@task(name="list")
@reports_user_errors
def list_(c: Context) -> None:
    """List the images this configuration uses: reference, present on the engine or not, size."""
    config = load_config()
    refs = image_refs(config)
    client = docker_client(config)
    table = Table(box=None, pad_edge=False)
    for column in ("image", "reference", "present", "size"):
        table.add_column(column)
    for role, ref in refs.all().items():
        size = image_size(client, ref)
        present = "[green]yes[/green]" if size is not None else "[red]no[/red]"
        table.add_row(role, ref, present, f"{size / 1e6:.0f} MB" if size is not None else "-")
    console.out.print(table)


@task
@reports_user_errors
def push(c: Context) -> None:
    """Push the built images to kubernetes.image_registry (what the Kubernetes manifests name)."""
    from infra.containers.registry import push_images

    config = load_config()
    pushed = push_images(config, docker_client(config), console.progress())
    for ref in pushed:
        console.note(ref)
    console.step(f"pushed {len(pushed)} images to {config.kubernetes.image_registry}")
