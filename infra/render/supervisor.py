"""supervisord.conf for the local target: every long-running process, restarted when it dies.

Programs do not autostart: ``invoke deploy`` starts them in dependency order (database before migrations,
migrations before replicas) and restarts only what changed. Once started, supervisord restarts any that dies.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.config import LogRotationConfig
from infra.layout import StateLayout
from infra.render import RenderedFile


@dataclass(frozen=True)
class Program:
    """One supervised process and everything that, when it changes, means the process must restart."""

    name: str
    component: str  # postgres, pgbouncer, redis, api, services, haproxy, worker, ...
    command: tuple[str, ...]
    files: tuple[RenderedFile, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    stop_signal: str = "TERM"
    stop_wait_s: int = 30
    start_secs: int = 2
    # Runs as the operator (root), not the service user: it reads the secrets directory (backup scheduler).
    as_operator: bool = False
    # Its working directory (workers: where flow code lives); None: the state directory.
    directory: Path | None = None

    def fingerprint(self) -> str:
        return self._digest(lambda rendered: rendered.content)

    def settings_fingerprint(self) -> str:
        """The fingerprint without the credentials the process can take at runtime: when only the full one changed,
        deploy hands it the new credentials instead of restarting it."""
        return self._digest(lambda rendered: rendered.settings)

    def _digest(self, text: Callable[[RenderedFile], str]) -> str:
        digest = hashlib.sha256()
        for part in (self.name, shlex.join(self.command), self.stop_signal, str(self.stop_wait_s)):
            digest.update(part.encode() + b"\0")
        if self.directory is not None:  # only when set: programs without one keep their recorded fingerprints
            digest.update(f"directory={self.directory}".encode() + b"\0")
        for key in sorted(self.environment):
            digest.update(f"{key}={self.environment[key]}".encode() + b"\0")
        for rendered in self.files:
            digest.update(str(rendered.path).encode() + b"\0" + text(rendered).encode() + b"\0")
        return digest.hexdigest()


# supervisord stops programs in reverse priority order (on invoke stop, destroy, or its own shutdown). PostgreSQL
# must stop while the S3 endpoint and HAProxy's TLS front are still up: with WAL archiving on, its shutdown waits
# for the archiver to push the last segments. Clients of a component stop before it (workers before the API they
# poll). Unknown components: last.
STOP_LAST_FIRST = ("s3", "haproxy", "postgres", "pgbouncer", "redis", "api", "services", "backup-scheduler", "worker")


def priority(component: str) -> int:
    """supervisord priority: lower starts first and stops last."""
    order = STOP_LAST_FIRST.index(component) if component in STOP_LAST_FIRST else len(STOP_LAST_FIRST)
    return 100 + 10 * order


def _escape(value: str) -> str:
    """supervisord expands %(name)s in every value: a literal % must be doubled."""
    return value.replace("%", "%%")


def _quote_env(value: str) -> str:
    # supervisord splits environment= with a non-POSIX shlex: quotes group a value (commas, spaces) but there
    # is no escape character, and surrounding quote characters are stripped. So a value is quoted with the
    # quote character it does not contain, and one that needs both cannot be represented at all.
    quote = "'" if '"' in value else '"'
    if quote in value or value[-1:] in ("'", '"') or value[:1] in ("'", '"'):
        raise ValueError(f"supervisord cannot carry this environment value unchanged: {value!r}")
    return quote + value + quote


def supervisord_conf(programs: list[Program], layout: StateLayout, run_as: str | None,
                     rotation: LogRotationConfig | None = None) -> RenderedFile:
    """``rotation``: each program's file is rotated at max_size_mb and ``keep`` rotated files are kept (the log
    pruner removes those older than max_age_days); None: the model's defaults."""
    rotation = rotation or LogRotationConfig()
    lines = [
        "; Rendered by prefect-stack from the configuration model; edit the model, not this file.",
        "[unix_http_server]",
        f"file={layout.supervisor_socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={layout.logs / 'supervisord.log'}",
        "logfile_maxbytes=20MB",
        "logfile_backups=3",
        f"pidfile={layout.supervisor_pidfile}",
        f"childlogdir={layout.logs}",
        f"directory={layout.root}",
        "identifier=prefect-stack",
        "minfds=4096",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{layout.supervisor_socket}",
    ]
    for program in programs:
        lines += [
            "",
            f"[program:{program.name}]",
            f"command={shlex.join(program.command)}",
            f"directory={program.directory or layout.root}",
            "autostart=false",
            "autorestart=true",
            f"priority={priority(program.component)}",
            f"startsecs={program.start_secs}",
            "startretries=10",
            f"stopsignal={program.stop_signal}",
            f"stopwaitsecs={program.stop_wait_s}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={layout.log_file(program.name)}",
            f"stdout_logfile_maxbytes={rotation.max_size_mb}MB",
            f"stdout_logfile_backups={rotation.keep}",
        ]
        if run_as and not program.as_operator:
            lines.append(f"user={run_as}")
        if program.environment:
            pairs = ",".join(f"{k}={_quote_env(v)}" for k, v in sorted(program.environment.items()))
            lines.append(f"environment={pairs}")
    # We never use supervisord's %(name)s expansion, so every % in a path, command or value is literal.
    text = "\n".join(_escape(line) for line in lines) + "\n"
    # Holds every secret the programs need in their environment: readable by the supervisor's owner only.
    return RenderedFile(layout.supervisor_conf, text, secret=True)
