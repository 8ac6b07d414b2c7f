"""Entry point for `invoke`: assembles one namespace per concern. The work lives in infra/."""

from invoke.collection import Collection

from infra.tasks import backup, bench, dev, images, secrets, stack

ns = Collection(
    stack.deploy, stack.status, stack.alerts, stack.logs, stack.restart, stack.stop, stack.destroy, stack.env,
    stack.render,
    dev.test, dev.lint, dev.docs,
)
ns.add_collection(Collection.from_module(secrets), name="secrets")
ns.add_collection(Collection.from_module(bench), name="bench")
ns.add_collection(Collection.from_module(images), name="images")
backups = Collection.from_module(backup)
backups.tasks.pop("restore")  # an operator's word, not a backup sub-step: it stands at the top level
ns.add_collection(backups, name="backup")
ns.add_task(backup.restore)
ns.add_task(stack.drill)
ns.configure({"run": {"echo": True}})
