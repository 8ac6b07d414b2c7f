"""invoke images.push refuses clearly when there is nowhere to push (the push itself is tested against a real
registry in tests/compose/test_10_images.py)."""

from __future__ import annotations

import pytest

from infra.config import load_config
from infra.containers.registry import push_images
from infra.errors import UserError
from infra.progress import QuietProgress


def test_no_registry_names_the_setting() -> None:
    with pytest.raises(UserError, match=r"kubernetes\.image_registry") as caught:
        push_images(load_config(target="kubernetes"), client=None, progress=QuietProgress())
    assert "docker login" in (caught.value.fix or "")
