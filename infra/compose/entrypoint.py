"""Start a Prefect process with its environment read from a mounted secret file.

Prefect reads its database URL, Redis password and API credentials from environment variables. Put in the compose
file, they would show in ``docker inspect``; here they live in a compose secret (JSON) and only this process's
environment holds them. Usage: ``python -m infra.compose.entrypoint ENV_FILE -- COMMAND [ARGS...]``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m infra.compose.entrypoint ENV_FILE -- COMMAND [ARGS...]\n")
        return 2
    env_file, command = Path(argv[0]), argv[2:]
    try:
        extra = json.loads(env_file.read_text())
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"cannot read the environment file {env_file}: {exc}; redeploy to render it again\n")
        return 1
    os.execvpe(command[0], command, {**os.environ, **{str(k): str(v) for k, v in extra.items()}})  # noqa: S606


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
