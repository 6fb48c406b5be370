"""ARCHITECTURE.md's layers, enforced: each part of ``hub`` imports only downward.

    sse  <-  core  <-  inputs  <-  brokers  <-  http  <-  server  <-  cli

The core owns the broker port (hub.core.broker); brokers implement it; only
the composition root (hub.http.app) picks one. Importing the core loads no
framework, no Redis client and no settings.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "hub"

# What each part may import from hub (besides itself).
ALLOWED: dict[str, set[str]] = {
    "hub.sse": set(),
    "hub.settings": set(),
    "hub.housekeeping": set(),
    "hub.core": {"hub.sse"},
    "hub.inputs": {"hub.sse", "hub.core"},
    "hub.brokers": {"hub.sse", "hub.core", "hub.inputs"},
    # The producers' library: the Redis codec, not the server.
    "hub.publisher": {"hub.sse", "hub.core", "hub.inputs", "hub.brokers"},
    "hub.client": {"hub.sse", "hub.producer"},
    # The HTTP producers' library: httpx and the stdlib only.
    "hub.producer": set(),
    # Minting JWTs: PyJWT only.
    "hub.tokens": set(),
    "hub.http": {"hub.sse", "hub.core", "hub.inputs", "hub.brokers", "hub.settings", "hub.housekeeping"},
    "hub.server": {"hub.http", "hub.settings"},
    "hub.cli": {
        "hub.server",
        "hub.settings",
        "hub.client",
        "hub.publisher",
        "hub.sse",
        "hub.inputs",
        "hub.tokens",
    },
    "hub.__main__": {"hub.cli"},
    "hub": set(),
}
# Only the composition root may name a broker implementation.
COMPOSITION_ROOT = "hub.http.app"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    raise AssertionError(f"{module} belongs to no layer: add it to ALLOWED and ARCHITECTURE.md")


def hub_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "hub")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "hub":  # from hub import sse
                found.update(f"hub.{a.name}" for a in node.names)
            elif node.module.startswith("hub."):
                found.add(node.module)
    return found


MODULES = sorted(HUB.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_each_module_imports_only_downward(path: Path) -> None:
    module = module_name(path)
    part = part_of(module)
    for imported in hub_imports(path):
        target = part_of(imported)
        if target == part:
            continue
        assert target in ALLOWED[part], f"{module} imports {imported}: {part} may not import {target}"
        if target == "hub.brokers" and part == "hub.http":
            assert module == COMPOSITION_ROOT, f"{module} names a broker: only {COMPOSITION_ROOT} may"


def test_the_layer_table_names_every_module() -> None:
    for path in MODULES:
        part_of(module_name(path))


def test_importing_the_core_loads_no_framework_redis_or_settings() -> None:
    code = (
        "import sys, hub.core.hub, hub.core.broker, hub.core.subscriber, hub.core.ring;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('fastapi', 'starlette', 'pydantic', 'pydantic_settings', 'redis', 'uvicorn', 'hub.settings')"
        " or m in ('hub.settings', 'hub.inputs') or m.startswith(('hub.brokers', 'hub.http')));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing hub.core loaded {out.stdout.strip()}"
