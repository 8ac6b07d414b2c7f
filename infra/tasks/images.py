"""Tasks on the project's container images: build what is missing, list what exists, push them for Kubernetes."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task
from rich.table import Table

from infra import console
from infra.config import load_config
from infra.containers.engine import docker_client, docker_host
from infra.containers.images import (
    DEBIAN_LOCK,
    ensure_images,
    image_refs,
    image_size,
    lock_debian_packages,
    pending_debian_updates,
)
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


@task(name="list", help={"updates": "Compare the locked Debian packages with the mirror (default); "
                                     "--no-updates lists the images only."})
@reports_user_errors
def list_(c: Context, updates: bool = True) -> None:
    """List the images this configuration uses and the locked Debian packages with newer versions on the mirror."""
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
    if not updates:
        return
    pending = pending_debian_updates(config, console.progress())
    if not pending:
        console.step(f"every package of {DEBIAN_LOCK} is at the newest version on the mirror")
        return
    newer = Table(box=None, pad_edge=False)
    for column in ("package", "locked", "on the mirror", "locked still served"):
        newer.add_column(column)
    for update in pending:
        served = "yes" if update.locked_served else "[red]no[/red]"
        newer.add_row(update.package, update.locked, update.available, served)
    console.step(f"{len(pending)} locked Debian packages have newer versions on the mirror")
    console.out.print(newer)
    console.note("invoke images.lock takes them (commit the lock); invoke deploy --target compose then builds the "
                 "new images and replaces the containers")
    if not all(update.locked_served for update in pending):
        console.note("the mirror no longer serves some locked versions: the system image cannot be built until the "
                     "lock is refreshed")


@task(name="lock")
@reports_user_errors
def lock(c: Context) -> None:
    """Resolve the system image's Debian packages (dependencies included) from the mirror and write their lock."""
    config = load_config()
    console.step(f"locking the Debian packages of the system image in {DEBIAN_LOCK}")
    old, new = lock_debian_packages(config, console.progress())
    if old is None:
        console.step(f"{len(new.packages)} packages locked")
        return
    changed = {name: (old.packages.get(name), version) for name, version in sorted(new.packages.items())
               if old.packages.get(name) != version}
    removed = sorted(set(old.packages) - set(new.packages))
    for name, (before, after) in changed.items():
        console.note(f"{name}: {before or '(new)'} -> {after}")
    for name in removed:
        console.note(f"{name}: {old.packages[name]} -> (removed)")
    if changed or removed:
        console.step(f"{len(new.packages)} packages locked, {len(changed) + len(removed)} changed: commit the lock; "
                     "the next build or deploy makes new images")
    else:
        console.step(f"{len(new.packages)} packages locked, none changed")


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
