"""The shell scripts the targets ship into their containers (Redis on Kubernetes, PostgreSQL on Compose).

Each is a ``.sh`` file here, under shellcheck (``invoke lint``, tests/unit/test_shell_scripts.py), shipped as
package data. A script takes its values (ports, paths, names) from its container's environment, which the rendered
manifest or compose service sets from the configuration model; nothing is formatted into it, and no secret is in an
environment listing: the scripts read secrets from mounted files.
"""

from __future__ import annotations

from importlib.resources import files


def script(name: str) -> str:
    """The text of the script ``name``, relative to this package: ``script("redis/common.sh")``."""
    return files(__name__).joinpath(*name.split("/")).read_text(encoding="utf-8")
