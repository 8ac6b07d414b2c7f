"""The effective configuration of a deploy, written beside the rendered files for processes that read it later."""

from __future__ import annotations

import yaml

from infra.config import StackConfig
from infra.layout import StateLayout
from infra.render import RenderedFile


def effective_config_file(config: StackConfig, layout: StateLayout) -> RenderedFile:
    """The configuration this deploy applied, for processes that need it later (the backup scheduler)."""
    document = config.model_dump(mode="json")
    document["local"]["state_dir"] = str(config.state_dir)
    text = "# Rendered by prefect-stack: the effective configuration of the last deploy.\n"
    return RenderedFile(layout.etc / "stack.effective.yaml", text + yaml.safe_dump(document, sort_keys=False))
