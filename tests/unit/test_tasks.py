"""Invoke tasks: a user error is a message and exit status 1, destroy refuses without --yes, and the task list
and help teach the tool. Only tasks that need no running stack are called."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from invoke import MockContext, Result
from invoke.collection import Collection
from invoke.exceptions import Exit

from infra.config import ENV_PREFIX, REPO_ROOT
from infra.errors import UserError
from infra.layout import StateLayout
from infra.secrets import ensure_secrets
from infra.tasks import dev, reports_user_errors
from infra.tasks.secrets import list_, rotate
from infra.tasks.stack import destroy, env, logs, status

INVOKE = Path(sys.executable).parent / "invoke"
STACK_TASKS = ["deploy", "status", "logs", "restart", "stop", "destroy", "env"]


def _load_namespace() -> Collection:
    spec = importlib.util.spec_from_file_location("prefect_stack_tasks", REPO_ROOT / "tasks.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    namespace: Collection = module.ns
    return namespace


def _argument_help(name: str) -> dict[str, str | None]:
    """Each argument's --help text. Task.get_arguments consumes the task's help dict: ask a copy."""
    task = copy.copy(NAMESPACE[name])
    task.help = dict(task.help)
    return {arg.name: arg.help for arg in task.get_arguments()}


NAMESPACE = _load_namespace()
TASK_NAMES = sorted(NAMESPACE.task_names)
ARGUMENTS = [(name, argument) for name in TASK_NAMES for argument in _argument_help(name)]


def _invoke(*args: str) -> subprocess.CompletedProcess[str]:
    # The module-scoped callers run before the autouse fixture: strip the operator's settings here too.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [str(INVOKE), *args], cwd=REPO_ROOT, env=clean, capture_output=True, text=True, timeout=60, check=False
    )


@functools.cache
def _help(name: str) -> str:
    """`invoke --help NAME`, run once per task for the whole session."""
    return _invoke("--help", name).stdout


@pytest.fixture(scope="module")
def listing() -> subprocess.CompletedProcess[str]:
    return _invoke("--list")


@pytest.fixture
def state(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory with something in it, chosen the way an operator would: through the environment."""
    state_dir.mkdir(parents=True)
    (state_dir / "keep-me").write_text("data\n")
    monkeypatch.setenv("PREFECT_STACK_LOCAL__STATE_DIR", str(state_dir))
    return state_dir


class TestReportsUserErrors:
    @staticmethod
    @reports_user_errors
    def _fails() -> None:
        """Fail the way the library does."""
        raise UserError("the database is on fire", fix="call the fire brigade")

    def test_exit_code_1(self) -> None:
        with pytest.raises(Exit) as caught:
            self._fails()
        assert caught.value.code == 1

    def test_message_has_the_problem(self) -> None:
        with pytest.raises(Exit) as caught:
            self._fails()
        assert "the database is on fire" in str(caught.value.message)

    def test_message_has_the_fix(self) -> None:
        with pytest.raises(Exit) as caught:
            self._fails()
        assert "fix: call the fire brigade" in str(caught.value.message)

    def test_no_traceback_chained(self) -> None:
        with pytest.raises(Exit) as caught:
            self._fails()
        assert caught.value.__suppress_context__ is True

    def test_interrupt_exits_130(self) -> None:
        @reports_user_errors
        def interrupted() -> None:
            raise KeyboardInterrupt

        with pytest.raises(Exit) as caught:
            interrupted()
        assert caught.value.code == 130

    def test_other_errors_propagate(self) -> None:
        @reports_user_errors
        def broken() -> None:
            raise RuntimeError("a bug, not a user error")

        with pytest.raises(RuntimeError):
            broken()

    def test_result_passes_through(self) -> None:
        assert reports_user_errors(lambda: 42)() == 42

    def test_keeps_the_docstring(self) -> None:
        # invoke shows the docstring as the task's help.
        assert self._fails.__doc__ == "Fail the way the library does."


class TestDestroy:
    def test_refused_without_yes(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            destroy(MockContext())
        assert caught.value.code == 1

    def test_refusal_says_how_to_confirm(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            destroy(MockContext())
        assert "fix:" in str(caught.value.message) and "--yes" in str(caught.value.message)

    def test_refusal_names_the_state_dir(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            destroy(MockContext())
        assert str(state.resolve()) in str(caught.value.message)

    def test_refusal_deletes_nothing(self, state: Path) -> None:
        with pytest.raises(Exit):
            destroy(MockContext())
        assert (state / "keep-me").read_text() == "data\n"


class TestLogsOptions:
    @pytest.mark.parametrize(("option", "value"), [("since", "5 minutes"), ("until", "noonish"), ("level", "LOUD")])
    def test_a_bad_value_exits_1(self, state: Path, option: str, value: str) -> None:
        with pytest.raises(Exit) as caught:
            logs(MockContext(), "all", **{option: value})
        assert caught.value.code == 1

    @pytest.mark.parametrize(("option", "value"), [("since", "5 minutes"), ("until", "noonish"), ("level", "LOUD")])
    def test_a_bad_value_names_the_option_and_the_fix(self, state: Path, option: str, value: str) -> None:
        with pytest.raises(Exit) as caught:
            logs(MockContext(), "all", **{option: value})
        assert f"--{option}" in str(caught.value.message) and "fix:" in str(caught.value.message)


class TestTasksWithoutAStack:
    @pytest.mark.parametrize("task", [status, env])
    def test_an_unknown_target_on_the_command_line_names_the_choices(self, state: Path, task: Any) -> None:
        with pytest.raises(Exit) as caught:
            task(MockContext(), target="nomad")
        assert caught.value.code == 1
        assert "unknown target 'nomad'" in str(caught.value.message)
        assert "use --target local, compose or kubernetes" in str(caught.value.message)

    def test_rotate_unknown_secret_exits_1(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            rotate(MockContext(), "nope")
        assert caught.value.code == 1

    def test_rotate_unknown_secret_says_fix(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            rotate(MockContext(), "nope")
        assert "fix:" in str(caught.value.message)

    def test_rotate_before_deploy_says_deploy_first(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            rotate(MockContext(), "redis")
        assert caught.value.code == 1 and "invoke deploy" in str(caught.value.message)

    def test_rotate_refuses_the_backup_key_naming_why(self, state: Path) -> None:
        ensure_secrets(StateLayout(state).secrets)
        with pytest.raises(Exit) as caught:
            rotate(MockContext(), "backup_encryption", apply=False)
        assert caught.value.code == 1 and "old backups still need it" in str(caught.value.message)

    def test_list_shows_a_rotation_under_way(self, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
        secrets = ensure_secrets(StateLayout(state).secrets)
        rotate(MockContext(), "redis", apply=False)
        list_(MockContext())
        out = capsys.readouterr().out
        assert "rotation under way: invoke secrets.rotate redis finishes it" in out
        assert secrets.get("redis") not in out

    def test_env_before_deploy_exits_1(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            env(MockContext())
        assert caught.value.code == 1

    def test_env_before_deploy_says_deploy_first(self, state: Path) -> None:
        with pytest.raises(Exit) as caught:
            env(MockContext())
        assert "invoke deploy" in str(caught.value.message)

    def test_env_prints_client_exports(self, state: Path, capsys: pytest.CaptureFixture[str]) -> None:
        secrets = ensure_secrets(StateLayout(state).secrets)
        env(MockContext())
        assert capsys.readouterr().out.splitlines() == [
            "export PREFECT_API_URL=http://127.0.0.1:4200/api",
            f"export PREFECT_API_AUTH_STRING={secrets.get('prefect_auth')}",
        ]

    def test_env_with_tls_exports_the_ca(self, state: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
        monkeypatch.setenv("PREFECT_STACK_LOAD_BALANCER__TLS__MODE", "on")
        ensure_secrets(StateLayout(state).secrets)
        (StateLayout(state).etc).mkdir()
        (StateLayout(state).etc / "lb-ca.crt").write_text("the deployment's CA\n")
        env(MockContext())
        lines = capsys.readouterr().out.splitlines()
        assert (lines[0], lines[-1]) == ("export PREFECT_API_URL=https://127.0.0.1:4200/api",
                                         f"export PREFECT_API_SSL_CERT_FILE={StateLayout(state).etc / 'lb-ca.crt'}")

    def test_env_with_tls_before_deploy_says_deploy_first(self, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_LOAD_BALANCER__TLS__MODE", "on")
        ensure_secrets(StateLayout(state).secrets)
        with pytest.raises(Exit) as caught:
            env(MockContext())
        assert "invoke deploy" in str(caught.value.message)

    def test_bad_configuration_exits_1(self, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "abc")
        with pytest.raises(Exit) as caught:
            destroy(MockContext(), yes=True)
        assert caught.value.code == 1

    def test_bad_configuration_destroys_nothing(self, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PREFECT_STACK_API__REPLICAS", "abc")
        with pytest.raises(Exit):
            destroy(MockContext(), yes=True)
        assert (state / "keep-me").exists()


class TestCommandLine:
    def test_list_succeeds(self, listing: subprocess.CompletedProcess[str]) -> None:
        assert listing.returncode == 0, listing.stderr

    @pytest.mark.parametrize("name", [*STACK_TASKS, "secrets.rotate", "secrets.list"])
    def test_listed(self, listing: subprocess.CompletedProcess[str], name: str) -> None:
        assert name in [line.split()[0] for line in listing.stdout.splitlines() if line.startswith("  ")]

    @pytest.mark.parametrize("name", ["deploy", "status", "destroy", "logs"])
    def test_help_shows_the_docstring(self, name: str) -> None:
        summary = NAMESPACE[name].__doc__.split(".")[0]
        assert summary in " ".join(_help(name).split())

    @pytest.mark.parametrize(("name", "option"), [("status", "--json"), ("destroy", "--yes"), ("logs", "--lines")])
    def test_help_shows_the_option(self, name: str, option: str) -> None:
        assert option in _help(name)


class TestNamespace:
    @pytest.mark.parametrize("name", TASK_NAMES)
    def test_has_a_docstring(self, name: str) -> None:
        assert (NAMESPACE[name].__doc__ or "").strip()

    @pytest.mark.parametrize(("name", "argument"), ARGUMENTS)
    def test_argument_has_help(self, name: str, argument: str) -> None:
        assert _argument_help(name)[argument]

    def test_restore_and_the_drill_stand_at_the_top_level_not_under_backup(self) -> None:
        assert {"restore", "drill"} <= set(NAMESPACE.task_names)
        backup = NAMESPACE.collections["backup"]
        assert sorted(backup.task_names) == ["backup", "list", "prune", "verify"]
        assert backup.default == "backup"  # `invoke backup` takes one


class TestTestTask:
    """invoke test: the stress variant and repeated runs, checked with invoke's MockContext (nothing runs)."""

    @pytest.fixture(autouse=True)
    def _shellcheck_found(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The lint step looks shellcheck up; nothing runs here, so a machine without it passes too."""
        monkeypatch.setattr(dev.shutil, "which", lambda name: f"/usr/bin/{name}")

    def test_lint_runs_shellcheck_over_every_shell_script(self) -> None:
        context = self._context()
        dev.lint(context)
        commands = [c.args[0] for c in context.run.call_args_list]  # type: ignore[attr-defined]
        assert any(c.startswith("/usr/bin/shellcheck ") and c.endswith("/.ci/run") for c in commands)

    def test_lint_without_shellcheck_says_how_to_install_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(dev.shutil, "which", lambda name: None)
        with pytest.raises(Exit) as caught:
            dev.lint(self._context())
        assert caught.value.code == 1 and "bootstrap.sh --dev" in str(caught.value.message)

    @staticmethod
    def _context() -> MockContext:
        return MockContext(run={re.compile(".*"): Result(exited=0)}, repeat=True)

    def test_stress_runs_the_integration_suite_under_load_with_the_slowest_tests(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        loads: list[int] = []

        @contextlib.contextmanager
        def fake_load(workers: int | None = None) -> Iterator[list[int]]:
            loads.append(1)
            yield [1, 2]

        monkeypatch.setattr(dev, "cpu_load", fake_load)
        context = self._context()
        dev.test(context, stress=True, runs=3)
        pytest_runs = [c.args[0] for c in context.run.call_args_list if "pytest" in c.args[0]]  # type: ignore[attr-defined]
        assert len(pytest_runs) == 3 and len(loads) == 3
        assert all("tests/integration" in r and "--durations=10" in r for r in pytest_runs)

    def test_a_failed_run_fails_the_task(self) -> None:
        context = MockContext(run={re.compile(".*pytest.*"): Result(exited=1), re.compile(".*"): Result(exited=0)},
                              repeat=True)
        with pytest.raises(Exit) as caught:
            dev.test(context)
        assert caught.value.code == 1

    @pytest.mark.parametrize("kwargs", [{"unit": True, "stress": True}, {"runs": 0}])
    def test_contradictory_options_are_refused_with_the_fix(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(Exit) as caught:
            dev.test(self._context(), **kwargs)  # type: ignore[arg-type]
        assert caught.value.code == 1 and "fix:" in str(caught.value.message)
