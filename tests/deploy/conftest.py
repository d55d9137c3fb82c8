"""Fixtures: each overlay rendered once per session (see deploy_render.py)."""

from __future__ import annotations

import pytest
from deploy_render import DEPLOY, Rendering, render

_cache: dict[str, Rendering] = {}


@pytest.fixture(scope="session")
def rendered():
    """rendered("prod") -> Rendering of deploy/overlays/prod (cached)."""

    def _get(overlay: str) -> Rendering:
        if overlay not in _cache:
            _cache[overlay] = render(DEPLOY / "overlays" / overlay)
        return _cache[overlay]

    return _get


@pytest.fixture(scope="session")
def prod(rendered) -> Rendering:
    return rendered("prod")
