"""Entry point for `invoke`: assembles one namespace per concern. The work lives in infra/."""

from invoke.collection import Collection

from infra.tasks import backup, bench, dev, faults, images, secrets, stack

ns = Collection(
    stack.deploy, stack.status, stack.alerts, stack.logs, stack.restart, stack.stop, stack.destroy, stack.env,
    stack.render,
    # An operator's words, not backup sub-steps: restore and the disaster drill stand at the top level.
    backup.restore, stack.drill,
    # Hurts the running stack on purpose, under load (docs/fault-drills.md).
    faults.fault_drill,
    dev.test, dev.lint, dev.docs,
)
ns.add_collection(Collection.from_module(secrets), name="secrets")
ns.add_collection(Collection.from_module(bench), name="bench")
ns.add_collection(Collection.from_module(images), name="images")
# `invoke backup` takes one now (the collection's default); its siblings list, verify and prune what was taken.
ns.add_collection(Collection("backup", backup.backup, backup.list_, backup.verify, backup.prune))
ns.configure({"run": {"echo": True}})
