"""Entry point for `invoke`: assembles one namespace per concern. The work lives in infra/."""

from invoke.collection import Collection

from infra.tasks import dev, secrets, stack

ns = Collection(stack.deploy, stack.status, stack.logs, stack.stop, stack.destroy, stack.env, dev.test, dev.lint)
ns.add_collection(Collection.from_module(secrets), name="secrets")
ns.configure({"run": {"echo": True}})
