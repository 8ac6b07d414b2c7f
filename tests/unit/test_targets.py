"""The one Target interface: the registry chooses the implementation from the configuration, every implementation
has every operation, a task a target has no form of is refused with the alternative, and no code outside the
registry and the configuration model compares the target with a name."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from infra.config import REPO_ROOT, StackConfig
from infra.errors import UserError
from infra.targets import REGISTRY, Target, target_for

TARGETS = sorted(REGISTRY)
# Where a comparison of the target with its name is allowed: the model that declares the names, and the registry.
ALLOWED = {Path("infra/config.py"), Path("infra/targets.py")}
OPERATIONS = sorted(name for name, member in inspect.getmembers(Target, inspect.isfunction)
                    if not name.startswith("_"))


def test_the_registry_names_every_target_of_the_model() -> None:
    names = StackConfig.model_fields["target"].annotation.__args__  # type: ignore[union-attr]
    assert sorted(names) == TARGETS


@pytest.mark.parametrize("name", TARGETS)
def test_the_configuration_chooses_the_implementation(name: str) -> None:
    chosen = target_for(StackConfig(target=name))
    module, _, cls = REGISTRY[name].partition(":")
    assert type(chosen).__module__ == module and type(chosen).__name__ == cls
    assert chosen.config.target == name


@pytest.mark.parametrize("name", TARGETS)
def test_every_implementation_has_every_operation_with_its_signature(name: str) -> None:
    implementation = type(target_for(StackConfig(target=name)))
    for operation in OPERATIONS:
        ours = inspect.signature(getattr(Target, operation))
        theirs = inspect.signature(getattr(implementation, operation))
        assert list(theirs.parameters) == list(ours.parameters), f"{name}.{operation}"


def test_an_unknown_target_is_refused_with_the_choices() -> None:
    config = StackConfig.model_construct(target="nomad")
    with pytest.raises(UserError, match="unknown target 'nomad'") as raised:
        target_for(config)
    assert raised.value.fix and "kubernetes" in raised.value.fix


@pytest.mark.parametrize("task", ["stop", "alerts", "drill", "backup", "backup.verify", "backup.prune"])
def test_kubernetes_refuses_the_tasks_it_has_no_form_of_and_names_kubectl(task: str) -> None:
    with pytest.raises(UserError, match="no kubernetes form") as raised:
        target_for(StackConfig(target="kubernetes")).check_supported(task)
    assert raised.value.fix and "kubectl" in raised.value.fix


@pytest.mark.parametrize("task", ["deploy", "status", "logs", "restart", "destroy", "env", "render", "backup.list",
                                  "restore"])
def test_kubernetes_has_a_form_of_the_cluster_tasks(task: str) -> None:
    target_for(StackConfig(target="kubernetes")).check_supported(task)


@pytest.mark.parametrize("name", ["local", "compose"])
def test_the_host_targets_have_every_task(name: str) -> None:
    for task in ("deploy", "stop", "alerts", "drill", "backup", "backup.verify", "backup.prune", "restore"):
        target_for(StackConfig(target=name)).check_supported(task)


def test_physical_backups_are_refused_on_compose_only() -> None:
    with pytest.raises(UserError, match="not supported on the compose target"):
        target_for(StackConfig(target="compose")).check_physical()
    target_for(StackConfig(target="local")).check_physical()


def _target_comparisons(path: Path) -> list[str]:
    """`x.target == "compose"`, `"local" != config.target`, `config.target in ("local", ...)` and the like."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
        for o in operands:
            if isinstance(o, ast.Tuple | ast.List | ast.Set):
                names |= {e.value for e in o.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        on_target = any(isinstance(o, ast.Attribute) and o.attr == "target" for o in operands)
        if on_target and names & set(REGISTRY):
            found.append(f"{path}:{node.lineno}")
    return found


def test_no_code_outside_the_registry_and_the_model_compares_the_target_with_a_name() -> None:
    sources = [p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "infra").rglob("*.py")] + [Path("tasks.py")]
    found = [hit for p in sources if p not in ALLOWED for hit in _target_comparisons(REPO_ROOT / p)]
    assert not found, "compare through the Target interface (infra/targets.py) instead: " + ", ".join(found)


def test_the_comparison_finder_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('if config.target == "compose":\n    pass\nok = "kubernetes" != c.target\n'
                      'many = cfg.target in ("local", "compose")\nfine = config.target == name\n')
    assert [hit.rsplit(":", 1)[1] for hit in _target_comparisons(sample)] == ["1", "3", "4"]
