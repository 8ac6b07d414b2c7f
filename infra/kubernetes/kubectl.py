"""The one way this project talks to a Kubernetes cluster: the ``kubectl`` binary, run with an argv list.

``Kubectl`` adds the context and namespace of the configuration to every call, captures the output, and turns a
failure into a ``KubectlError`` that carries kubectl's own stderr (which names the object and the reason). Objects
always reach kubectl on standard input (``apply -f -``): a Secret is never on an argv, which every user of the
machine can read in /proc, nor in a file. KUBECONFIG is honoured by kubectl itself; ``kubernetes.context`` pins
the context so a deploy cannot land on whatever cluster the shell last pointed at.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from infra.config import StackConfig
from infra.errors import UserError

BINARY = "kubectl"
# Server-side apply records every field we set under this manager; prune only touches objects it applied.
FIELD_MANAGER = "prefect-stack"
# `kubectl version` against a reachable API server answers in well under a second.
REACHABLE_TIMEOUT_S = 15
# Ordinary reads and writes (get, apply, delete); waits get their own bound plus this grace.
CALL_TIMEOUT_S = 120
WAIT_GRACE_S = 30
# `kubectl wait --for=create` (a Pooler's Deployment appears after the Pooler) arrived in kubectl 1.31.
MIN_CLIENT_MINOR = 31

INSTALL_FIX = ("install kubectl (https://kubernetes.io/docs/tasks/tools/, a version within one minor of the "
               "cluster's) and put it on PATH")


class KubectlError(UserError):
    """kubectl exited non-zero (or did not finish): its argv (never secret) and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, stdout: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.stdout = stdout
        verb = " ".join(a for a in self.argv[1:] if not a.startswith("--"))[:120]
        super().__init__(f"kubectl {verb} failed: {self.tail()}",
                         fix="read kubectl's message above; `kubectl get events -n NAMESPACE` shows the cluster's side")

    def tail(self, lines: int = 15) -> str:
        text = self.stderr or self.stdout.strip() or f"exit status {self.returncode}"
        return "\n    ".join(text.splitlines()[-lines:])

    @property
    def timed_out(self) -> bool:
        return self.returncode is None or "timed out waiting" in self.stderr


def yaml_stream(objects: Iterable[dict[str, Any]]) -> bytes:
    """Objects as one YAML stream, as ``kubectl apply -f -`` reads it."""
    return yaml.safe_dump_all(list(objects), sort_keys=False).encode()


def resource(api_version: str, kind: str) -> str:
    """The fully qualified resource kubectl resolves unambiguously: ``deployment.apps``,
    ``cluster.postgresql.cnpg.io``, ``service`` (core). Another operator's ``Cluster`` cannot be mistaken for it."""
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return f"{kind.lower()}.{group}" if group else kind.lower()


def resource_of(obj: dict[str, Any]) -> str:
    return resource(str(obj["apiVersion"]), str(obj["kind"]))


@dataclass(frozen=True)
class Kubectl:
    """kubectl for one stack: its context and namespace on every call."""

    namespace: str
    context: str | None = None
    binary: str = BINARY

    @classmethod
    def for_config(cls, config: StackConfig) -> Kubectl:
        return cls(namespace=config.kubernetes.namespace, context=config.kubernetes.context)

    def argv(self, *args: str, namespaced: bool = True) -> list[str]:
        found = shutil.which(self.binary)
        if found is None:
            raise UserError(f"{self.binary} is not on PATH: the kubernetes target deploys and operates through it",
                            fix=INSTALL_FIX)
        head = [found]
        if self.context:
            head.append(f"--context={self.context}")
        if namespaced:
            head.append(f"--namespace={self.namespace}")
        return [*head, *args]

    def run(self, *args: str, stdin: bytes | None = None, timeout_s: float = CALL_TIMEOUT_S,
            namespaced: bool = True) -> str:
        """kubectl ARGS; its stdout. Secrets go in ``stdin`` only."""
        argv = self.argv(*args, namespaced=namespaced)
        try:
            # No input: /dev/null, so kubectl can never sit waiting on the operator's terminal.
            feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            result: subprocess.CompletedProcess[bytes] = subprocess.run(
                argv, capture_output=True, check=False, timeout=timeout_s, **feed)
        except FileNotFoundError:
            raise UserError(f"{self.binary} disappeared from PATH", fix=INSTALL_FIX) from None
        except subprocess.TimeoutExpired:
            raise KubectlError(argv, None, f"no answer within {timeout_s:.0f} s") from None
        stdout = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise KubectlError(argv, result.returncode, result.stderr.decode(errors="replace"), stdout)
        return stdout

    def ensure_reachable(self) -> str:
        """The API server's version, or a UserError naming KUBECONFIG and the context."""
        try:
            out = self.run("version", "--output=json", f"--request-timeout={REACHABLE_TIMEOUT_S}s",
                           namespaced=False, timeout_s=REACHABLE_TIMEOUT_S + WAIT_GRACE_S)
        except KubectlError as exc:
            where = f"context {self.context!r}" if self.context else "the current context"
            raise UserError(f"no Kubernetes API server answers for {where} "
                            f"(KUBECONFIG={os.environ.get('KUBECONFIG', '~/.kube/config')}): {exc.tail(3)}",
                            fix="point KUBECONFIG at your cluster's kubeconfig and check `kubectl cluster-info`; "
                                "set kubernetes.context to pick a context of it") from None
        versions = json.loads(out or "{}")
        client = str(versions.get("clientVersion", {}).get("gitVersion", ""))
        found = re.match(r"v1\.(\d+)\.", client)
        if found and int(found.group(1)) < MIN_CLIENT_MINOR:
            raise UserError(f"kubectl {client} is too old: deploy waits with `kubectl wait --for=create`, "
                            f"new in 1.{MIN_CLIENT_MINOR}", fix=INSTALL_FIX)
        return str(versions.get("serverVersion", {}).get("gitVersion", "unknown"))

    def apply(self, objects: Sequence[dict[str, Any]]) -> str:
        """Server-side apply of ``objects`` (a YAML stream on stdin), taking over fields other managers set."""
        return self.run("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
                        "--filename=-", stdin=yaml_stream(objects))

    def get(self, what: str, *names: str, selector: str | None = None, managed_fields: bool = False,
            namespaced: bool = True) -> list[dict[str, Any]]:
        """The live objects of a resource (``deployment.apps``), by name or label selector."""
        args = ["get", what, *names, "--output=json"]
        if selector:
            args.append(f"--selector={selector}")
        if names:
            args.append("--ignore-not-found")
        if managed_fields:
            args.append("--show-managed-fields")
        out = self.run(*args, namespaced=namespaced)
        if not out.strip():
            return []
        document = json.loads(out)
        return list(document["items"]) if "items" in document else [document]

    def delete(self, what: str, *names: str, timeout_s: float) -> None:
        """Delete objects by name, waiting (bounded) until they are gone."""
        self.run("delete", what, *names, "--ignore-not-found", f"--timeout={timeout_s:.0f}s",
                 timeout_s=timeout_s + WAIT_GRACE_S)

    def delete_named_if_selected(self, what: str, name: str, selector: str, timeout_s: float) -> bool:
        """Delete the object ``name`` only if it carries ``selector``'s labels, without reading it (a Secret's data
        never leaves the cluster); True when one was deleted."""
        out = self.run("delete", what, f"--selector={selector}", f"--field-selector=metadata.name={name}",
                       "--ignore-not-found", f"--timeout={timeout_s:.0f}s", timeout_s=timeout_s + WAIT_GRACE_S)
        return "deleted" in out

    def wait(self, target: str, condition: str, timeout_s: float) -> None:
        """``kubectl wait --for=CONDITION TARGET``: returns when it holds, KubectlError when it does not in time."""
        self.run("wait", f"--for={condition}", target, f"--timeout={timeout_s:.0f}s",
                 timeout_s=timeout_s + WAIT_GRACE_S)

    def wait_any(self, target: str, conditions: Sequence[str], timeout_s: float) -> str | None:
        """The first of ``conditions`` (``condition=complete``, ``condition=failed``) to hold on ``target``, or
        None when none does in time: a failed Job is known at once instead of after the whole timeout."""
        argvs = {c: self.argv("wait", f"--for={c}", target, f"--timeout={timeout_s:.0f}s") for c in conditions}
        processes = {c: subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                     for c, argv in argvs.items()}
        finished: queue.Queue[tuple[str, int | None]] = queue.Queue()

        def watch(condition: str, process: subprocess.Popen[bytes]) -> None:
            try:
                finished.put((condition, process.wait(timeout=timeout_s + WAIT_GRACE_S)))
            except subprocess.TimeoutExpired:
                finished.put((condition, None))

        for condition, process in processes.items():
            threading.Thread(target=watch, args=(condition, process), daemon=True).start()
        try:
            for _ in processes:
                condition, code = finished.get()
                if code == 0:
                    return condition
            return None
        finally:
            for process in processes.values():  # the other waits would only run out their timeout
                if process.poll() is None:
                    process.kill()
                    process.wait()

    def rollout_status(self, target: str, timeout_s: float) -> None:
        self.run("rollout", "status", target, f"--timeout={timeout_s:.0f}s", timeout_s=timeout_s + WAIT_GRACE_S)

    def logs_tail(self, target: str, lines: int) -> str:
        """The last lines a workload's pod wrote (all its containers), for an error message."""
        return self.run("logs", target, f"--tail={lines}", "--all-containers", "--prefix")

    def stream(self, *args: str) -> int:
        """Run kubectl with its output on this terminal (logs --follow); its exit status. Ctrl-C ends it quietly."""
        try:
            return subprocess.run(self.argv(*args), check=False).returncode
        except KeyboardInterrupt:
            return 0
