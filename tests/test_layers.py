"""Keeps the import picture of ARCHITECTURE.md true: arrows point down only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What a sans-I/O core may never touch: no clock-driven I/O, no store, no faces.
_CORE_FORBIDDEN = (
    "sslvpn.runtime", "sslvpn.store", "sslvpn.cli", "client_profiles", "web", "asyncio",
    "socket", "threading", "subprocess", "sqlmodel", "sqlalchemy", "aiohttp", "pytun",
    "pyroute2",
)

# package prefix -> prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "sslvpn.net": ("sslvpn.openvpn", "sslvpn.ipsec", "sslvpn.runtime", "sslvpn.store",
                   "sslvpn.cli", "sslvpn.config", "client_profiles", "web", "asyncio", "socket"),
    "sslvpn.openvpn": ("sslvpn.ipsec", *_CORE_FORBIDDEN),
    "sslvpn.ipsec": ("sslvpn.openvpn", *_CORE_FORBIDDEN),
    "sslvpn.store": ("sslvpn.runtime", "sslvpn.cli", "sslvpn.openvpn", "sslvpn.ipsec",
                     "client_profiles", "web"),
    "sslvpn.config": ("sslvpn.runtime", "sslvpn.cli", "sslvpn.store", "client_profiles", "web"),
    "sslvpn.keyfiles": ("sslvpn.runtime", "sslvpn.cli", "sslvpn.store", "client_profiles", "web"),
    "sslvpn.runtime": ("sslvpn.cli", "client_profiles", "web"),
    "client_profiles": ("sslvpn.runtime", "sslvpn.cli", "web"),
    "web": ("sslvpn.cli",),
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("sslvpn", "client_profiles", "web"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    return found


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                is_package = path.name == "__init__.py"
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.add(node.module)
    return names


def _violations(module: str, imported: set[str]) -> list[str]:
    bad = []
    for owner, forbidden in FORBIDDEN.items():
        if module == owner or module.startswith(owner + "."):
            for name in imported:
                for prefix in forbidden:
                    stem = prefix.rstrip(".")
                    if name == stem or name.startswith(stem + "."):
                        bad.append(f"{module} imports {name}")
    return bad


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_module_imports_point_down(module: str, path: Path) -> None:
    assert _violations(module, _imports(path, module)) == []


def test_rule_catches_a_core_importing_asyncio() -> None:
    assert _violations("sslvpn.openvpn.session", {"asyncio"}) == [
        "sslvpn.openvpn.session imports asyncio"
    ]
    assert _violations("sslvpn.net.replay", {"sslvpn.net.buffer"}) == []
    assert _violations("sslvpn.net.replay", {"sslvpn.store.db"})
