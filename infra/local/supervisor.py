"""Talking to supervisord over its private Unix socket (XML-RPC), and starting it when it is not running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from infra.errors import UserError
from infra.layout import StateLayout

RUNNING = "RUNNING"
# Supervisor fault codes (supervisor/xmlrpc.py Faults) the deploy handles rather than reports.
ALREADY_STARTED = 60
NOT_RUNNING = 70
BAD_NAME = 10
ALREADY_ADDED = 90
STILL_RUNNING = 91


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str
    pid: int
    uptime_s: int
    description: str

    @property
    def running(self) -> bool:
        return self.state == RUNNING


class Supervisor:
    """One supervisord per state directory; its socket is mode 0700 inside <state>/run."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        transport = SupervisorTransport(None, None, f"unix://{layout.supervisor_socket}")
        self._proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    @property
    def rpc(self) -> Any:
        return self._proxy.supervisor

    def is_running(self) -> bool:
        if not self.layout.supervisor_socket.exists():
            return False
        try:
            return cast(str, self.rpc.getState()["statename"]) == RUNNING
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    def ensure_running(self, conf: Path) -> bool:
        """Start supervisord if needed. Returns True when it was started now."""
        if self.is_running():
            return False
        self.layout.supervisor_socket.unlink(missing_ok=True)
        supervisord = Path(sys.executable).parent / "supervisord"
        result = subprocess.run(
            [str(supervisord), "-c", str(conf)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise UserError(
                f"supervisord did not start: {result.stderr.strip() or result.stdout.strip()}",
                fix=f"read {self.layout.logs / 'supervisord.log'}",
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.is_running():
                return True
            time.sleep(0.2)
        raise UserError("supervisord started but its socket never answered", fix="read the supervisord log")

    def processes(self) -> dict[str, ProcessInfo]:
        infos = {}
        for raw in self.rpc.getAllProcessInfo():
            uptime = raw["now"] - raw["start"] if raw["statename"] == RUNNING else 0
            infos[raw["name"]] = ProcessInfo(
                raw["name"], raw["statename"], int(raw["pid"]), int(uptime), raw["description"]
            )
        return infos

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the configuration file: (added, changed, removed) program names."""
        added, changed, removed = self.rpc.reloadConfig()[0]
        return list(added), list(changed), list(removed)

    def add(self, name: str) -> None:
        try:
            self.rpc.addProcessGroup(name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != ALREADY_ADDED:
                raise

    def remove(self, name: str) -> None:
        self.stop(name)
        try:
            self.rpc.removeProcessGroup(name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != BAD_NAME:
                raise

    def start(self, name: str, wait: bool = True) -> None:
        try:
            self.rpc.startProcess(name, wait)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == ALREADY_STARTED:
                return
            raise UserError(
                f"{name} failed to start ({fault.faultString})",
                fix=f"read its log: invoke logs {name}",
            ) from None

    def stop(self, name: str) -> None:
        try:
            self.rpc.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode not in (NOT_RUNNING, BAD_NAME):
                raise

    def signal(self, name: str, signal_name: str) -> None:
        self.rpc.signalProcess(name, signal_name)

    def shutdown(self) -> None:
        """Stop every program (each with its own stop signal) and supervisord itself."""
        if not self.is_running():
            return
        pid_text = self.layout.supervisor_pidfile.read_text().strip() if self.layout.supervisor_pidfile.exists() else ""
        self.rpc.stopAllProcesses(True)
        self.rpc.shutdown()
        if pid_text.isdigit():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    os.kill(int(pid_text), 0)
                except ProcessLookupError:
                    return
                time.sleep(0.2)
