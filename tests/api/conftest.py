from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.client import Api, start


@pytest.fixture
async def api(aiohttp_client: Callable[..., Any], db_path: Path) -> Api:
    """The real daemon application with the API mounted, on a test server."""
    return await start(aiohttp_client, db_path)
