"""A real browser for the dashboard's tests: Debian's chromium, driven by playwright.

Never ``playwright install``: the browser is the system's (``.ci/run`` installs
``chromium``), launched headless by path. Locally a missing one skips; under
``CI=true`` it fails (tests.support.procs.require_binary).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.procs import CI, require_binary

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_binary("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "the playwright package is not installed (pip install -e '.[dev]')"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield chromium
        finally:
            chromium.close()
