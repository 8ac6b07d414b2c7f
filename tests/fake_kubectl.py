"""A stand-in ``kubectl`` for tests: records every call and answers from a scripted cluster state.

``StandIn.install(tmp_path, monkeypatch)`` puts an executable ``kubectl`` first on PATH that runs this file. Each
call appends one JSON line to ``calls.jsonl`` (argv without the binary, stdin, environment); answers come from
``state.json``, which the test writes through ``StandIn.script``:

- ``unreachable``: ``kubectl version`` fails as with no API server; ``client_version``: what it reports for itself;
- ``missing_kinds``: an apply holding one of these kinds fails with kubectl's "no matches for kind" error;
- ``apply_errors``: {substring of stdin: stderr}: an apply whose input contains it fails with that message;
- ``conditions``: {target: {"condition=Ready": false}}: that ``kubectl wait`` times out (any other holds at once,
  except ``condition=failed``, which holds only when scripted true);
- ``rollouts``: {target: false}: that ``kubectl rollout status`` times out;
- ``objects``: the live objects ``kubectl get`` lists (by resource, names and label selector), and that a
  ``kubectl delete`` by ``--field-selector=metadata.name=`` and label selector finds (otherwise it deletes nothing);
- ``unknown_resources``: resources the cluster does not serve (no CRD);
- ``logs``: {target or selector: text} for ``kubectl logs``.

As a script it uses the standard library only and runs under ``python -I -S`` so each call stays fast.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Flags that carry their value in the next argument when not written --flag=value.
_VALUE_FLAGS = {"-n", "--namespace", "--context", "--kubeconfig", "-l", "--selector", "-o", "--output", "-f",
                "--filename", "--for", "--timeout", "--tail", "--field-manager"}


def _parse(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            if "=" in arg:
                key, value = arg.split("=", 1)
                flags[key] = value
            elif arg in _VALUE_FLAGS and i + 1 < len(argv):
                flags[arg] = argv[i + 1]
                i += 1
            else:
                flags[arg] = ""
        else:
            positional.append(arg)
        i += 1
    return positional, flags


def _resource(obj: dict[str, Any]) -> str:
    api_version, kind = obj["apiVersion"], obj["kind"].lower()
    return f"{kind}.{api_version.rsplit('/', 1)[0]}" if "/" in api_version else kind


def _selected(obj: dict[str, Any], selector: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _answer(argv: list[str], stdin: str, state: dict[str, Any]) -> tuple[int, str, str]:
    positional, flags = _parse(argv)
    verb = positional[0] if positional else ""
    namespace = flags.get("--namespace", flags.get("-n", "default"))
    if verb == "version":
        if state.get("unreachable"):
            return 1, "", ("The connection to the server 127.0.0.1:6443 was refused - did you specify the right "
                           "host or port?")
        return 0, json.dumps({"clientVersion": {"gitVersion": state.get("client_version", "v1.32.4")},
                              "serverVersion": {"gitVersion": "v1.32.4"}}), ""
    if verb == "apply":
        for needle, message in (state.get("apply_errors") or {}).items():
            if needle in stdin:
                return 1, "", message
        versions = re.findall(r"^apiVersion: (\S+)$", stdin, re.MULTILINE)
        kinds = re.findall(r"^kind: (\S+)$", stdin, re.MULTILINE)
        names = re.findall(r"^  name: (\S+)$", stdin, re.MULTILINE)
        missing = [f'error: resource mapping not found for name: "{name}" namespace: "{namespace}" from "STDIN": '
                   f'no matches for kind "{kind}" in version "{version}"\nensure CRDs are installed first'
                   for version, kind, name in zip(versions, kinds, names, strict=False)
                   if kind in state.get("missing_kinds", [])]
        if missing:
            return 1, "", "\n".join(missing)
        return 0, "".join(f"{k.lower()}/{n} serverside-applied\n" for k, n in zip(kinds, names, strict=False)), ""
    if verb == "get":
        wanted = positional[1].split(",")
        unknown = [w for w in wanted if w in state.get("unknown_resources", [])]
        if unknown:
            return 1, "", f'error: the server doesn\'t have a resource type "{unknown[0].split(".")[0]}"'
        names = positional[2:]
        selector = flags.get("--selector", flags.get("-l", ""))
        items = [o for o in state.get("objects", []) if _resource(o) in wanted or o["kind"].lower() in wanted]
        items = [o for o in items if (not names or o["metadata"]["name"] in names) and _selected(o, selector)]
        return 0, json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), ""
    if verb == "wait":
        condition, target = flags.get("--for", ""), positional[1]
        scripted = (state.get("conditions") or {}).get(target, {})
        holds = scripted.get(condition, not condition.lower().endswith("failed"))
        if holds:
            return 0, f"{target} condition met\n", ""
        return 1, "", f"error: timed out waiting for the condition on {target}"
    if verb == "rollout":
        action, target = positional[1], positional[2]
        if action == "status":
            if (state.get("rollouts") or {}).get(target, True):
                return 0, f'{target} successfully rolled out\n', ""
            return 1, "", "error: timed out waiting for the condition"
        return 0, f"{target} restarted\n", ""
    if verb == "logs":
        key = positional[1] if len(positional) > 1 else flags.get("--selector", flags.get("-l", ""))
        return 0, (state.get("logs") or {}).get(key, ""), ""
    if verb == "delete":
        if "--field-selector" in flags:  # by name among the selected live objects: only what matches is deleted
            name = flags["--field-selector"].removeprefix("metadata.name=")
            selector = flags.get("--selector", flags.get("-l", ""))
            found = [o for o in state.get("objects", []) if positional[1] in (_resource(o), o["kind"].lower())
                     and o["metadata"]["name"] == name and _selected(o, selector)]
            return (0, f'{positional[1]} "{name}" deleted\n', "") if found else (0, "", "No resources found\n")
        return 0, f'{positional[1]} "{positional[2] if len(positional) > 2 else ""}" deleted\n', ""
    return 0, "", ""


def main() -> int:
    argv = sys.argv[1:]
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    directory = Path(os.environ["FAKE_KUBECTL_DIR"])
    state_file = directory / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    code, out, err = _answer(argv, stdin, state)
    record = {"argv": argv, "stdin": stdin, "env": dict(os.environ), "returncode": code}
    with (directory / "calls.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


@dataclass(frozen=True)
class Call:
    argv: list[str]
    stdin: str
    env: dict[str, str]
    returncode: int

    @property
    def args(self) -> list[str]:
        """The argv without the global flags (context, namespace) kubectl is always given."""
        return [a for a in self.argv if not a.startswith(("--context=", "--namespace=", "--kubeconfig="))]

    @property
    def verb(self) -> str:
        return " ".join(self.args[:2]) if self.args and self.args[0] == "rollout" else (self.args or [""])[0]


@dataclass(frozen=True)
class StandIn:
    directory: Path

    @classmethod
    def install(cls, tmp_path: Path, monkeypatch: Any) -> StandIn:
        directory = tmp_path / "kubectl-standin"
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True)
        script = bin_dir / "kubectl"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{Path(__file__).resolve()}" "$@"\n')
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_KUBECTL_DIR", str(directory))
        return cls(directory)

    def script(self, **state: Any) -> None:
        path = self.directory / "state.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(state)
        path.write_text(json.dumps(current))

    def calls(self) -> list[Call]:
        path = self.directory / "calls.jsonl"
        if not path.exists():
            return []
        return [Call(**json.loads(line)) for line in path.read_text().splitlines()]

    def files(self) -> list[Path]:
        """Every file in the stand-in's directory tree (what a leaked secret file would show up in)."""
        return [p for p in self.directory.rglob("*") if p.is_file()]


if __name__ == "__main__":
    sys.exit(main())
